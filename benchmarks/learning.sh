#!/usr/bin/env bash
# The figures of README "Simulator results": every shared set through the simulator
# with the default policy and settings, the strong/weak pairs (APGR), and honest tuning.
# Usage: bash benchmarks/learning.sh [OUT] [FROM]: FROM skips the steps before it (1-7)
# (mmlu_pro is not shipped: it needs ../shared/data; about an hour on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out}
S=../shared/data  # mmlu_pro is not shipped in data/
D=data
FROM=${2:-1}
step() {  # step N ARGS...: run `banditroute ARGS` unless N < FROM
  local n=$1
  shift
  if [ "$n" -ge "$FROM" ]; then echo "== step $n: banditroute $*" >&2; .venv/bin/banditroute "$@"; fi
}
L=0,0.05,0.1,0.2,0.5,1,2,5
step 1 simulate --data $D/llmrouter_14tasks.parquet --out $OUT/sim-llmrouter --seeds 3 --lams $L --policies hybrid,linucb,vw
step 2 simulate --data $D/routerbench_arc_mbpp_winogrande.parquet --out $OUT/sim-routerbench --seeds 3 --lams $L --policies hybrid,linucb,vw
# mmlu_pro: 29 models at 384 dimensions make the hybrid learner's choice ~5 ms, so a
# shorter sweep keeps this run near 15 minutes
step 3 simulate --data $S/mmlu_pro_29models.parquet --out $OUT/sim-mmlu --seeds 3 --lams 0,0.2,1,5 --policies hybrid,vw
# strong/weak pairs: the cheapest and the strongest model of each set
step 4 simulate --data $D/llmrouter_14tasks.parquet --models gemma-2-9b-it,llama-3.1-nemotron-51b-instruct --out $OUT/pair-llmrouter --seeds 3 --lams $L --policies hybrid
step 5 simulate --data $D/routerbench_arc_mbpp_winogrande.parquet --models mistralai/mistral-7b-chat,gpt-4-1106-preview --out $OUT/pair-routerbench --seeds 3 --lams $L --policies hybrid
step 6 simulate --data $S/mmlu_pro_29models.parquet --models gemini-1.5-flash-002,gemini-1.5-pro-002 --out $OUT/pair-mmlu --seeds 3 --lams $L --policies hybrid
# honest tuning: chosen on train, reported on test
step 7 tune --data $D/llmrouter_14tasks.parquet --prices $D/llmrouter_14tasks_prices.csv --out $OUT/tune-llmrouter --policies hybrid,linucb --projection-dims 0 --alpha 0.05,0.1,0.2 --gamma 1 --learn-lams 0.2
