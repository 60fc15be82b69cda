#!/usr/bin/env bash
# Stage, on this (online, CPU) machine, what benchmarks/gpu.sh needs on a GPU machine that has no
# internet and no weights: copies of the SST-2 and IMDB folders and two tokenizers, in .bench/
# (git-ignored, about 35 MB). Then carry .bench with the working tree and run benchmarks/gpu.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${LORACLF_DATASETS:-../shared/datasets}"
PY="${PY:-.venv/bin/python}"
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
du -sh .bench
