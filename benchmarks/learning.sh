#!/usr/bin/env bash
# The figures of README "Simulator results": every shared set through the simulator
# with the default policy and settings, the strong/weak pairs (APGR), and honest tuning.
# Usage: bash benchmarks/learning.sh [OUT] (mmlu_pro is not shipped: needs ../shared/data; ~40 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out}
S=../shared/data  # mmlu_pro is not shipped in data/
D=data
BR=.venv/bin/banditroute
L=0,0.05,0.1,0.2,0.5,1,2,5
$BR simulate --data $D/llmrouter_14tasks.parquet --out $OUT/sim-llmrouter --seeds 3 --lams $L --policies hybrid,linucb,vw
$BR simulate --data $D/routerbench_arc_mbpp_winogrande.parquet --out $OUT/sim-routerbench --seeds 3 --lams $L --policies hybrid,linucb,vw
$BR simulate --data $S/mmlu_pro_29models.parquet --out $OUT/sim-mmlu --seeds 3 --lams $L --policies hybrid,vw
# strong/weak pairs: the cheapest and the strongest model of each set
$BR simulate --data $D/llmrouter_14tasks.parquet --models gemma-2-9b-it,llama-3.1-nemotron-51b-instruct --out $OUT/pair-llmrouter --seeds 3 --lams $L --policies hybrid
$BR simulate --data $D/routerbench_arc_mbpp_winogrande.parquet --models mistralai/mistral-7b-chat,gpt-4-1106-preview --out $OUT/pair-routerbench --seeds 3 --lams $L --policies hybrid
$BR simulate --data $S/mmlu_pro_29models.parquet --models gemini-1.5-flash-002,gemini-1.5-pro-002 --out $OUT/pair-mmlu --seeds 3 --lams $L --policies hybrid
# honest tuning: chosen on train, reported on test
$BR tune --data $D/llmrouter_14tasks.parquet --prices $D/llmrouter_14tasks_prices.csv --out $OUT/tune-llmrouter --policies hybrid,linucb --projection-dims 0 --alpha 0.05,0.1,0.2 --gamma 1 --learn-lams 0.2
