"""Peak memory of `loraclf predict` as the input grows: streaming keeps it flat.

    .venv/bin/python benchmarks/predict_memory.py [--sizes 25000 100000 1000000] [--max-spread 0.10]

Trains a tiny random BERT (built from a config, as the tests do) on a synthetic task, writes CSV
inputs of short texts of each size, and runs the real `loraclf predict -i in.csv -o out.csv` command
once per size in a fresh process, reading that process's own peak RSS (os.wait4). The model is
tiny on purpose: what is measured is how memory scales with the input, and a 1M-text run with a
real encoder would take most of an hour on 2 cores. Prints a Markdown table; with --max-spread, exits
1 when the largest peak exceeds the smallest by more than that fraction (the goal: 10%).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import build_tiny, synthetic_rows, tiny_overrides, write_csv  # noqa: E402


def _inputs(path: Path, n: int) -> None:
    words = "good bad film plot actor lovely dull music the a was very".split()
    rng = random.Random(n)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text"])
        for _ in range(n):
            w.writerow([" ".join(rng.choice(words) for _ in range(rng.randint(3, 16)))])


def _peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one command, measured on that process alone."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in kB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000, 1_000_000])
    ap.add_argument("--max-spread", type=float, help="fail when max/min peak RSS - 1 exceeds this")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny("bert", root / "bert")
        write_csv(root / "data" / "train.csv", synthetic_rows(240, 1))
        write_csv(root / "data" / "validation.csv", synthetic_rows(60, 2))
        from loraclf.training.run import train

        run = train(None, tiny_overrides(model, root / "data", root / "runs", **{"train.epochs": 1}), quiet=True)
        rows = []
        for n in args.sizes:
            _inputs(root / "in.csv", n)
            peak, seconds = _peak_rss_mb([sys.executable, "-m", "loraclf", "predict", str(run.path), "-q",
                                          "-i", str(root / "in.csv"), "-o", str(root / "out.csv")])
            with open(root / "out.csv", encoding="utf-8") as fh:
                written = sum(1 for _ in fh) - 1
            assert written == n, (written, n)
            rows.append((n, peak, seconds))
    low = min(r[1] for r in rows)
    print("| texts | peak RSS (MB) | vs smallest | seconds | texts/s |")
    print("|---:|---:|---:|---:|---:|")
    for n, peak, seconds in rows:
        print(f"| {n:,} | {peak:,.0f} | {peak / low - 1:+.1%} | {seconds:.1f} | {n / seconds:,.0f} |")
    spread = max(r[1] for r in rows) / low - 1
    print(f"\nspread of peak RSS: {spread:.1%}")
    return 1 if args.max_spread is not None and spread > args.max_spread else 0


if __name__ == "__main__":
    sys.exit(main())
