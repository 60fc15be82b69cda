#!/usr/bin/env bash
# Every GPU row of docs/benchmarks.md: the peer (Trainer + PEFT, pad to max_length, fp16) and loraclf
# in the same process for each row, on random-weight models of the real architectures' sizes.
# Run from the repository root of a GPU machine, after benchmarks/gpu_prepare.sh staged .bench/:
#   bash benchmarks/gpu.sh            # results (JSON + logs) in $OUT, else bench-out/
# ROWS picks rows by name (default: all four, in this order).
# SMOKE=1 runs the same rows on tiny shapes and a few hundred rows: a check of this script on CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export LORACLF_DATASETS=.bench/datasets HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY="${PY:-python3}"
OUT="${OUT:-bench-out}"
mkdir -p "$OUT"
source benchmarks/gpu_wheels.sh
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "${SMOKE:-0}" = 1 ]; then
  ENC=tiny-roberta; DEC=tiny-llama; N_ENC=300; N_DEC=300; N_IMDB=100; N_PRED=500; IMDB_LEN=128
else
  ENC=roberta-base; DEC=smollm2-360m; N_ENC=20000; N_DEC=8000; N_IMDB=5000; N_PRED=25000; IMDB_LEN=512
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  "$PY" -c "import torch, transformers, peft, accelerate as a; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', a.__version__)"
} | tee "$OUT/env.txt"

status=0
ROWS="${ROWS:-enc-sst2 enc-sst2-compiled dec-sst2 enc-imdb}"
row() {  # row NAME ARGS...: one harness run; its table goes to the log, its figures to NAME.json
  local name=$1; shift
  [[ " $ROWS " == *" $name "* ]] || return 0
  echo "== $name: $*" | tee "$OUT/$name.log"
  "$PY" benchmarks/speed.py --json "$OUT/$name.json" "$@" >>"$OUT/$name.log" 2>&1 || { status=1; echo "FAILED: $name"; }
  sed -n '/^| |/,$p' "$OUT/$name.log"
}
row enc-sst2 --shape $ENC --tokenizer .bench/tok/bert --data sst2 --train-samples $N_ENC --epochs 1 --predict-rows $N_PRED
row enc-sst2-compiled --shape $ENC --tokenizer .bench/tok/bert --data sst2 --train-samples $N_ENC --epochs 1 \
  --set train.compile=reduce-overhead
row dec-sst2 --shape $DEC --tokenizer .bench/tok/smollm2 --data sst2 --train-samples $N_DEC --epochs 1
row enc-imdb --shape $ENC --tokenizer .bench/tok/bert --data imdb --max-length $IMDB_LEN --train-samples $N_IMDB --epochs 1
exit $status
