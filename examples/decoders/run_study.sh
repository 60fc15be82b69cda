#!/usr/bin/env bash
# The decoder study of docs/decoders.md: SmolLM2-135M-Instruct on TweetEval sentiment, 3-class and the
# binary negative/positive subset, zero-shot (verbalizer) against LoRA with each trainable head.
# Run from the repository root after `make install`. Reruns skip finished runs. ~35 min on 2 CPU cores.
set -u
CFG=examples/decoders/tweeteval-base.yaml
OUT=${OUT:-runs/decoders}
for task in 3class binary; do
  extra=()
  [ "$task" = binary ] && extra=(--set "data.include_labels=[negative, positive]")
  for spec in "zero-shot verbalizer" "lora classifier" "lora verbalizer" "lora generate"; do
    set -- $spec
    name="$task-$1-$2"
    [ -f "$OUT/$name/metrics.json" ] && continue
    echo "=== $name $(date +%T)"
    .venv/bin/loraclf train -q -c $CFG --set model.method=$1 --set model.head=$2 "${extra[@]}" \
      --output-dir "$OUT" --name "$name" || echo "FAILED $name"
  done
done
for task in 3class binary; do
  .venv/bin/loraclf compare "$OUT/$task-zero-shot-verbalizer" "$OUT/$task-lora-classifier" \
    "$OUT/$task-lora-verbalizer" "$OUT/$task-lora-generate" --examples 5
done
