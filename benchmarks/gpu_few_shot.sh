#!/usr/bin/env bash
# The few-shot cells that take too long on CPU (SetFit alone needs 10 to 30+ minutes a run there), on a GPU
# machine: loraclf's defaults against SetFit 1.2's defaults, same rows, same backbone, 5 seeds, as
# benchmarks/few_shot.py does everywhere. Run from the repository root, after
# `bash benchmarks/gpu_prepare.sh few-shot` staged .bench-fs/ and .whl/ (carry both):
#   bash benchmarks/gpu_few_shot.sh          # results.jsonl + summary.md in $OUT, else bench-out/
# CELLS picks the cells ("dataset:K ..."), in order; BUDGET_S stops starting new cells after that many seconds
# (every finished seed is kept: few_shot.py appends each run to results.jsonl and skips what is there).
# A check of this script on CPU: WHEELS=0 PY=.venv/bin/python CELLS=tweet_eval_sentiment:8 SEEDS=0 TEST_N=100
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false LORACLF_DATASETS=.bench-fs/datasets
PY="${PY:-python3}"
OUT="${OUT:-bench-out}"
CELLS="${CELLS:-ag_news:32 tweet_eval_sentiment:64 ag_news:64}"
BUDGET_S="${BUDGET_S:-420}"
SEEDS="${SEEDS:-0 1 2 3 4}"
mkdir -p "$OUT"
source benchmarks/gpu_wheels.sh
export PYTHONPATH="$PWD/src:$PWD/.bench-fs/pkgs${PYTHONPATH:+:$PYTHONPATH}"
model=$(echo .bench-fs/pkgs/*/model)
[ -f "$model/model.safetensors" ] || "$PY" - "$model" <<'PYEOF' || exit 1
import sys

import torch
from safetensors.torch import load_file, save_file

folder = sys.argv[1]
weights = load_file(f"{folder}/model.fp16.safetensors")
save_file({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in weights.items()},
          f"{folder}/model.safetensors")
PYEOF
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  "$PY" -c "import torch, transformers, peft, setfit, sentence_transformers as st; print('torch', torch.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'setfit', setfit.__version__,
'sentence-transformers', st.__version__)"
} | tee "$OUT/env.txt"

status=0
for cell in $CELLS; do
  left=$((BUDGET_S - SECONDS))
  [ "$left" -gt 30 ] || { echo "budget spent: $cell not started"; status=1; break; }
  echo "== $cell ($left s left)"
  timeout "$left" "$PY" benchmarks/few_shot.py --datasets "${cell%%:*}" --k "${cell##*:}" --seeds $SEEDS \
    --test-n "${TEST_N:-1000}" --out .bench-fs/out 2>&1 | grep -v -E "it/s\]|s/it\]" | tail -n 40 || status=1
  cp .bench-fs/out/results.jsonl "$OUT/" 2>/dev/null
done
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import few_shot; print(few_shot.summarize(__import__('pathlib').Path('.bench-fs/out/results.jsonl')))" \
  | tee "$OUT/summary.md"
exit $status
