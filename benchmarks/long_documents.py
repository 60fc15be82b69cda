"""IMDB, long reviews: data.long_text strategies side by side (the IMDB row of docs/results.md).

Each strategy is one `loraclf train` run of the bundled MiniLM with LoRA defaults on the same 5,000
training reviews (a stratified sample of the folder's train, seed 42), model selection on 500 reviews of
the folder's validation (itself carved from the official train; stratified cap, seed 42), and the full
25,000-review official test split. Runs go one after another in fresh processes, each with the default
threads, so their times compare.

    python benchmarks/long_documents.py --out runs/long-docs                 # truncate, head-tail, chunks at 128
    python benchmarks/long_documents.py --out runs/long-docs --only truncate-512

    python benchmarks/long_documents.py --out runs/long-docs-cost --cost       # speed only, every strategy

--cost measures what each strategy costs, side by side in one process with the default threads: a short
training (--cost-train reviews, one epoch; its samples/s) and the prediction of the same --cost-predict
test reviews by the artifact it saved (reviews/s, default batch size). Accuracy is not its point: it is
the only way truncate-512, whose full training does not fit a session on 2 CPU cores, gets a cost.

A rerun with the same --out keeps the runs that finished (a run folder with metrics.json). Prints one
JSON summary and writes it to <out>/summary.json: test accuracy, macro-F1, training and evaluation
seconds, and test accuracy by review length (the report's word-length buckets).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

STRATEGIES = {  # name: settings beyond the shared ones
    "truncate-128": ["data.long_text=truncate", "data.max_length=128"],
    "head-tail-128": ["data.long_text=head-tail", "data.max_length=128"],
    "chunks-128": ["data.long_text=chunks", "data.max_length=128"],
    "truncate-512": ["data.long_text=truncate", "data.max_length=512"],
    "chunks-256": ["data.long_text=chunks", "data.max_length=256"],  # fewer, longer windows
    # the fewest windows of one width (a 300-token review: two of 150, not two of 254)
    "chunks-128-even": ["data.long_text=chunks", "data.max_length=128", "data.chunk_windows=even"],
    "chunks-256-even": ["data.long_text=chunks", "data.max_length=256", "data.chunk_windows=even"],
    # at most 508 text tokens a review, as truncate-512 reads: a longer one is its first and last windows
    "chunks-256-even-2": ["data.long_text=chunks", "data.max_length=256", "data.chunk_windows=even",
                          "data.max_chunks=2"],
    "chunks-128-even-4": ["data.long_text=chunks", "data.max_length=128", "data.chunk_windows=even",
                          "data.max_chunks=4"],
}
DEFAULT = ["chunks-128", "truncate-128", "head-tail-128"]


def run(name: str, out: Path, train_rows: int, eval_rows: int, seed: int, extra: list[str]) -> dict:
    folder = out / name
    if not (folder / "metrics.json").exists():
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished run starts again
        sets = [f"data.max_train_samples={train_rows}", f"data.max_eval_samples={eval_rows}", f"seed={seed}",
                f"output_dir={out}", f"name={name}", *STRATEGIES[name], *extra]
        cmd = [sys.executable, "-m", "loraclf", "train", "--data", "imdb", "--model", "minilm"]
        for s in sets:
            cmd += ["--set", s]
        print(" ".join(cmd[1:]), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    return summarise(name, json.loads((folder / "metrics.json").read_text()))


def summarise(name: str, m: dict) -> dict:
    test = m["test"]
    buckets = m.get("error_analysis", {}).get("test", {}).get("by_length", [])
    return {"strategy": name, "accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "n_test": test["n"],
            "train_seconds": m["timing"]["train_seconds"], "eval_seconds": m["timing"]["eval_seconds"],
            "best_epoch_step": m["best"]["step"], "long_text": test.get("long_text"),
            "by_length": [{"words": f"{b['lo']}-{b['hi']}", "n": b["n"], "accuracy": b["accuracy"]}
                          for b in buckets]}


def cost(out: Path, names: list[str], train_rows: int, predict_rows: int, seed: int) -> list[dict]:
    """Training and prediction speed of each strategy, measured one after another in this process."""
    import pandas as pd

    import loraclf
    from loraclf.data import datasets_root

    test = pd.read_csv(datasets_root() / "imdb" / "test.csv.gz").sample(predict_rows, random_state=seed)
    texts = test["text"].tolist()
    rows = []
    for name in names:
        sets = [f"data.max_train_samples={train_rows}", "data.max_eval_samples=64", "data.max_test_samples=64",
                "train.epochs=1", f"seed={seed}", "report.enabled=false", f"output_dir={out}", f"name={name}",
                "data.path=imdb", "model.name=minilm", *STRATEGIES[name]]
        shutil.rmtree(out / name, ignore_errors=True)
        run = loraclf.train(None, sets, quiet=True)
        clf = loraclf.load(run.path)
        clf.predict_proba(texts[:32])  # warm-up: first-call allocations
        t = time.perf_counter()
        clf.predict_proba(texts)
        seconds = time.perf_counter() - t
        m = run.metrics
        rows.append({"strategy": name, "train_samples_per_s": m["timing"]["train_samples_per_s"],
                     "predict_reviews_per_s": len(texts) / seconds, "predict_seconds": seconds,
                     "train_rows": m["data"]["sizes"]["train"], "predict_rows": len(texts)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/long-docs")
    ap.add_argument("--only", nargs="*", choices=list(STRATEGIES), default=DEFAULT)
    ap.add_argument("--train-rows", type=int, default=5000)
    ap.add_argument("--eval-rows", type=int, default=500)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--set", action="append", default=[], help="more config settings for every run")
    ap.add_argument("--cost", action="store_true", help="speed only: a short training and a timed prediction")
    ap.add_argument("--cost-train", type=int, default=320)
    ap.add_argument("--cost-predict", type=int, default=500)
    a = ap.parse_args()
    os.environ.setdefault("LORACLF_DATASETS", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.cost:
        rows = cost(out, a.only if a.only != DEFAULT else list(STRATEGIES), a.cost_train, a.cost_predict, a.seed)
    else:
        rows = [run(n, out, a.train_rows, a.eval_rows, a.seed, a.set) for n in a.only]
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
