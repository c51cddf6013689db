#!/usr/bin/env bash
# Issue 16's quality gate, second half: the simulator's headline figures (online reward,
# AIQ, cost for 95%) with each embedding backend, the default hybrid, 3 seeds, all 384
# dimensions. Each backend keeps its own embedding cache. Reports land in
# OUT/gate-<backend>-<set>/report.md. Usage: bash benchmarks/backend_gate.sh [OUT]
# (mmlu_pro needs ../shared/data; about 12 minutes a set and backend on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out}
run() {  # run SET_PATH NAME LAMS
  for b in onnx torch; do
    echo "== $2 $b" >&2
    BANDITROUTE_EMBED_BACKEND=$b .venv/bin/banditroute simulate --data "$1" \
      --out "$OUT/gate-$b-$2" --seeds 3 --lams "$3" --policies hybrid --jobs 1
  done
}
L=0,0.05,0.1,0.2,0.5,1,2,5
run data/llmrouter_14tasks.parquet llmrouter_14tasks $L
run data/routerbench_arc_mbpp_winogrande.parquet routerbench_arc_mbpp_winogrande $L
# 29 models at 384 dimensions: the shorter sweep of benchmarks/learning.sh
run ../shared/data/mmlu_pro_29models.parquet mmlu 0,0.2,1,5
