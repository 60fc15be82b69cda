#!/usr/bin/env bash
# Stage, on this (online, CPU) machine, what a GPU machine with no internet and no weights needs:
#   bash benchmarks/gpu_prepare.sh            # speed rows (benchmarks/gpu.sh): SST-2, IMDB and two tokenizers
#                                             #   in .bench/ (about 35 MB)
#   bash benchmarks/gpu_prepare.sh few-shot   # few-shot cells (benchmarks/gpu_few_shot.sh): the bundled MiniLM
#                                             #   stored in fp16 (45 MB; the carry limit is 64 MiB, its fp32 file is
#                                             #   91 MB) with AG News and TweetEval, in .bench-fs/
# Both also put in .whl/ the wheels of what loraclf and SetFit need that a bare CUDA image may lack or hold in
# another version (datasets, cleanlab, peft, setfit, sentence-transformers...). Carry the folder and .whl with the
# working tree, then run the matching script there.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${LORACLF_DATASETS:-../shared/datasets}"
PY="${PY:-.venv/bin/python}"
MODE="${1:-speed}"

rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  setfit==1.2.0 sentence-transformers==6.3.0 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 \
  fsspec==2026.9.0 cleanlab==2.9.0 termcolor==3.3.0 iterative-stratification==0.1.9 peft==0.21.2

if [ "$MODE" = few-shot ]; then
  rm -rf .bench-fs && mkdir -p .bench-fs/datasets
  for d in ag_news tweet_eval_sentiment; do
    mkdir -p ".bench-fs/datasets/$d" && cp "$DATA/$d/train.csv" "$DATA/$d/test.csv" ".bench-fs/datasets/$d/"
  done
  "$PY" - <<'PYEOF'
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from loraclf.models.registry import ALIASES, _package_dir

# The package folder as installed, with its weights in fp16: gpu_few_shot.sh turns them back into fp32 there.
# fp16 keeps 11 bits of mantissa: the largest relative change of a tensor is 2e-4 (15 of 22.7M weights round
# to zero), below the bf16 and TF32 arithmetic of a GPU run.
pkg = _package_dir(ALIASES["minilm"])
dest = Path(".bench-fs/pkgs") / pkg.name
shutil.copytree(pkg, dest, ignore=shutil.ignore_patterns("model.safetensors", "__pycache__"))
weights = load_file(str(pkg / "model" / "model.safetensors"))
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
          str(dest / "model" / "model.fp16.safetensors"))
PYEOF
else
  rm -rf .bench && mkdir -p .bench/datasets .bench/tok
  cp -r "$DATA/sst2" "$DATA/imdb" .bench/datasets/
  "$PY" - <<'PYEOF'
from loraclf.models import resolve
from loraclf.models.build import load_tokenizer

# BERT's WordPiece vocabulary stands in for RoBERTa's (speed rows use random weights); SmolLM2-135M
# shares SmolLM2-360M's tokenizer.
for alias, out in [("minilm", ".bench/tok/bert"), ("smollm2-135m", ".bench/tok/smollm2")]:
    load_tokenizer(resolve(alias).path).save_pretrained(out)
PYEOF
fi
du -sh .whl .bench* 2>/dev/null
