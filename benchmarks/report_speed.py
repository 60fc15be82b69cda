"""How long a run's report takes: plots, error analysis, report.html and model card, for synthetic
run directories with a 25,000-row test set (short SST-2-like texts, long IMDB-like texts, 20 classes).

    .venv/bin/python benchmarks/report_speed.py [--rows 25000] [--repeat 3] [--max-seconds 10]

Prints a Markdown table: seconds of `make_report` inside a Python process that has loraclf and
matplotlib imported already (as after training), wall clock and CPU time of that process, and the
wall clock of a fresh `loraclf report <run>` command (imports included). Median of --repeat runs.
With --max-seconds, exits 1 when the first case (binary, short texts: what most runs look like)
takes longer in process: the report's speed target, checked here rather than in the test suite,
whose timings depend on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from reportdata import fake_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=25_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="exit 1 when the first case's in-process median exceeds this")
    args = ap.parse_args()
    from loraclf.evaluation.report import make_report

    cases = [("binary, short texts (SST-2-like, median ~14 words)", dict(labels=["negative", "positive"])),
             ("binary, long texts (IMDB-like, median ~150 words)",
              dict(labels=["negative", "positive"], long_texts=True)),
             ("20 classes, long class names", dict(labels=[f"category {i}: a long descriptive class name"
                                                           for i in range(20)]))]
    exe = Path(sys.executable).with_name("loraclf")
    medians = []
    print("| case | test rows | in process: wall (s) | in process: CPU (s) | `loraclf report`: wall (s) |\n"
          "|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, kw) in enumerate(cases):
            d = fake_run(Path(tmp), n_test=args.rows, n_val=1000, name=f"case{i}", **kw)
            make_report(d)  # warm up imports and file caches
            inproc, cpu, fresh = [], [], []
            for _ in range(args.repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                make_report(d)
                inproc.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                t0 = time.perf_counter()
                subprocess.run([str(exe), "report", str(d)], check=True, capture_output=True, env={**os.environ})
                fresh.append(time.perf_counter() - t0)
            medians.append(statistics.median(inproc))
            print(f"| {name} | {args.rows:,} | {medians[-1]:.1f} | {statistics.median(cpu):.1f} "
                  f"| {statistics.median(fresh):.1f} |")
    if args.max_seconds is not None and medians[0] > args.max_seconds:
        sys.exit(f"too slow: {cases[0][0]} took {medians[0]:.1f} s in process (limit {args.max_seconds:g} s)")


if __name__ == "__main__":
    main()
