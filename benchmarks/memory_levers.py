"""Peak memory and training samples/s of a small SmolLM2 LoRA run with each memory lever.

    .venv/bin/python benchmarks/memory_levers.py [--train 32] [--few-shot 4] [--levers none ckpt 8bit 4bit]

Each lever trains the same LoRA verbalizer (examples/decoders/tweeteval-base.yaml, `--train` tweets,
one epoch) in a fresh `loraclf train` process, so each peak RSS (or CUDA peak) is that run's own;
the figures are read from the run's metrics.json (timing.peak_*, timing.train_samples_per_s).
Few-shot examples lengthen the prompts so that activations, what checkpointing saves, show.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEVERS = {"none": [], "ckpt": ["train.gradient_checkpointing=true"], "8bit": ["model.quantize=8bit"],
          "4bit": ["model.quantize=4bit"], "4bit+ckpt": ["model.quantize=4bit", "train.gradient_checkpointing=true"]}


def run_lever(name: str, args, out: Path) -> dict:
    sets = [f"data.max_train_samples={args.train}", "data.max_eval_samples=8", "data.max_test_samples=8",
            f"model.few_shot={args.few_shot}", "data.max_length=512", f"model.name={args.model}",
            f"output_dir={out}", f"name={name}", "report.enabled=false", "report.trackers=none", *LEVERS[name]]
    cmd = [sys.executable, "-m", "loraclf", "train", "-c", str(REPO / "examples" / "decoders" / "tweeteval-base.yaml")]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONWARNINGS": "ignore"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m = json.loads((out / name / "metrics.json").read_text())
    t = m["timing"]
    return {"lever": name, "peak_mb": t["peak_memory_mb"],
            "train_samples_per_s": t["train_samples_per_s"], "trainable": m["params"]["trainable"],
            "device": m["environment"]["device"]}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--train", type=int, default=32)
    ap.add_argument("--few-shot", type=int, default=4)
    ap.add_argument("--levers", nargs="+", default=["none", "ckpt", "8bit", "4bit"], choices=list(LEVERS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_lever(name, args, Path(tmp)) for name in args.levers]
    base = rows[0]
    print("| lever | peak memory (MB) | vs first | train samples/s | vs first |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lever']} | {r['peak_mb']:.0f} | {r['peak_mb'] / base['peak_mb']:.2f}x | "
              f"{r['train_samples_per_s']:.2f} | {r['train_samples_per_s'] / base['train_samples_per_s']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
