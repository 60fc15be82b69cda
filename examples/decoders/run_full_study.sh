#!/usr/bin/env bash
# The full-split decoder study of docs/decoders.md: SmolLM2-135M-Instruct on TweetEval sentiment,
# 3-class and binary negative/positive, zero-shot (verbalizer) against LoRA (classifier and verbalizer
# heads) trained on 2,000 tweets, scored on the whole test split; then MiniLM on the same slice.
# Run from the repository root after `make install`.
#
# About 2 hours per half on one CPU core: on 2 cores run `HALF=0` and `HALF=1` at once, each pinned to
# its core with one torch thread. Finished runs are skipped; an interrupted LoRA run
# continues with `loraclf train --resume runs/decoders-full/<name>` (zero-shot runs have no training
# to resume and start over).
set -u
OUT=${OUT:-runs/decoders-full}
HALF=${HALF:-all}
CFG="-c examples/decoders/tweeteval-full.yaml"
MINI="-c examples/tasks/tweeteval-minilm.yaml --set data.max_eval_samples=500"
BIN=(--set "data.include_labels=[negative, positive]")
PIN=(); [ "$HALF" != all ] && PIN=(taskset -c "$HALF")

run() {  # name, then train arguments
  local name=$1; shift
  [ -f "$OUT/$name/metrics.json" ] && return
  echo "=== $name $(date +%T)"
  "${PIN[@]}" .venv/bin/loraclf train -q --set train.num_threads="${THREADS:-1}" --output-dir "$OUT" \
    --name "$name" "$@" || echo "FAILED $name"
}

if [ "$HALF" = all ] || [ "$HALF" = 0 ]; then
  run 3class-zero-shot-verbalizer $CFG --set model.method=zero-shot --set model.head=verbalizer
  run binary-zero-shot-verbalizer $CFG "${BIN[@]}" --set model.method=zero-shot --set model.head=verbalizer
  run binary-lora-verbalizer $CFG "${BIN[@]}" --set model.head=verbalizer
  run 3class-minilm-lora-2k $MINI --set data.max_train_samples=2000
  run binary-minilm-lora-2k $MINI "${BIN[@]}" --set data.max_train_samples=2000
fi
if [ "$HALF" = all ] || [ "$HALF" = 1 ]; then
  run 3class-lora-classifier $CFG
  run binary-lora-classifier $CFG "${BIN[@]}"
  run 3class-lora-verbalizer $CFG --set model.head=verbalizer --set train.epochs=2  # 2: time-bound, see docs
fi
