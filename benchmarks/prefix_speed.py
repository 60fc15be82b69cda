"""Zero-shot verbalizer throughput with the shared prompt prefix off and on, in one process.

    .venv/bin/python benchmarks/prefix_speed.py [--n 432] [--few-shot 0 4] [--model smollm2-135m] [--threads 1]

Scores the same N test texts (a seeded stratified sample) with `model.shared_prefix` off, then on,
for each few-shot setting, through `loop.predict_logits` (what evaluation and `loraclf predict`
use). Prints samples/s, the ratio, the prefix's share of the prompt tokens, and the largest
difference between the two runs' class scores (they must agree within 1e-4).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _setting(args, few_shot: int) -> dict:
    import numpy as np
    import torch

    from loraclf.config import load_config
    from loraclf.data import load_data
    from loraclf.training.loop import predict_logits
    from loraclf.training.run import build_head

    cfg = load_config(None, {"data.path": args.data, "data.max_test_samples": args.n, "model.name": args.model,
                             "model.method": "zero-shot", "model.head": "verbalizer", "model.few_shot": few_shot,
                             "data.max_length": args.max_length, "train.eval_batch_size": args.batch})
    data = load_data(cfg.data, cfg.seed)
    cfg, head, *_ = build_head(cfg, data, quiet=True)
    test = data.splits["test"]
    enc = head.encode(test.texts, test.labels, cfg.data.max_length)
    warm = head.encode(test.texts[:4], test.labels[:4], cfg.data.max_length)
    prefix = head.model.prefix
    out: dict = {"few_shot": few_shot, "n": len(enc), "prefix_tokens": len(prefix.ids),
                 "mean_prompt_tokens": float(np.mean(enc.lengths))}
    out["prefix_share"] = out["prefix_tokens"] / out["mean_prompt_tokens"]
    scores = {}
    for name, p in (("off", None), ("on", prefix)):
        head.model.prefix = p
        predict_logits(head, warm, args.batch)  # warm-up: first-call allocations are not measured
        t0 = time.perf_counter()
        scores[name] = predict_logits(head, enc, args.batch)
        out[f"{name}_per_s"] = len(enc) / (time.perf_counter() - t0)
    out["ratio"] = out["on_per_s"] / out["off_per_s"]
    out["max_abs_diff"] = float(np.abs(scores["on"] - scores["off"]).max())
    del head
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="tweet_eval_sentiment")
    ap.add_argument("--n", type=int, default=432, help="test texts scored (stratified, seeded)")
    ap.add_argument("--few-shot", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's); pin with taskset")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = [_setting(args, k) for k in args.few_shot]
    print("| few_shot | N | prefix tokens | prefix share | off samples/s | on samples/s | ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['few_shot']} | {r['n']} | {r['prefix_tokens']} | {r['prefix_share']:.0%} | {r['off_per_s']:.2f} "
              f"| {r['on_per_s']:.2f} | {r['ratio']:.2f}x | {r['max_abs_diff']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
