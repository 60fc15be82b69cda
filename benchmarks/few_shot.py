"""Few labels: loraclf's defaults against SetFit 1.2's defaults, same examples, same backbone.

For every dataset, K (examples per class) and seed, K rows of each class are drawn from train (seeded,
the same rows for both), and both tools train on them with their defaults on the bundled
all-MiniLM-L6-v2. loraclf is given the same rows as validation (it carves nothing from them; the
few-shot recipe evaluates once, at the end, and chooses nothing on it), as SetFit has no validation.
Both are scored on one seeded sample of the test split (the same rows for every run). Nothing is
chosen on test: ablations and any choice of the recipe score with `--score-on heldout` instead, a
seeded sample of the train split's other rows (never one of the K a class).

Training time is the wall time from loading the model to a trained model in memory: SetFit's
`from_pretrained` + `Trainer.train()`, loraclf's `loraclf.train` (it also writes its run folder and
artifact; its report is off and it scores no test split there). Prediction on test is timed apart.
Both run in this process, one after the other, with torch's default threads; the libraries both use
(torch, transformers, and each tool's own) are imported before the first timed run, so neither pays the
one-off import inside its time.

    pip install -e '.[bench]'          # SetFit 1.2 (sentence-transformers) beside loraclf
    python benchmarks/few_shot.py --datasets sst2 ag_news tweet_eval_sentiment --k 8 16 32 64 \
        --seeds 0 1 2 3 4 --out runs/few-shot

Each run appends a line to <out>/results.jsonl (a rerun skips what is there), and the summary table
(mean and standard deviation over seeds) is printed and written to <out>/summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from loraclf.data import datasets_root  # noqa: E402
from loraclf.models.registry import resolve  # noqa: E402

TEST_SEED = 123


def few_index(train: pd.DataFrame, k: int, seed: int) -> list:
    """Index of K rows of each class, seeded (all of a class smaller than K)."""
    return [i for _, g in train.groupby("label") for i in g.sample(min(k, len(g)), random_state=seed).index]


def few(train: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """K rows of each class, seeded; shuffled."""
    return train.loc[few_index(train, k, seed)].sample(frac=1, random_state=seed).reset_index(drop=True)


def test_sample(test: pd.DataFrame, n: int) -> pd.DataFrame:
    return test if n <= 0 or len(test) <= n else test.sample(n, random_state=TEST_SEED).reset_index(drop=True)


def heldout_sample(train: pd.DataFrame, n: int, ks: list[int], seeds: list[int]) -> pd.DataFrame:
    """Train rows that no run of this invocation trains on (any K, any seed), seeded: where variants are
    compared and the recipe is chosen, so that test chooses nothing."""
    used = {i for k in ks for seed in seeds for i in few_index(train, k, seed)}
    return test_sample(train.drop(index=sorted(used)).reset_index(drop=True), n)


def score(pred: np.ndarray, test: pd.DataFrame) -> dict:
    """Accuracy, and each class's recall: where a test split's label mix differs from train's (TweetEval's
    test has twice train's share of negative tweets), the recalls say which class an accuracy gap is in."""
    gold = test["label"].astype(str).to_numpy()
    return {"accuracy": float((pred == gold).mean()),
            "recall": {c: float((pred[gold == c] == c).mean()) for c in sorted(set(gold))}}


def run_setfit(rows: pd.DataFrame, test: pd.DataFrame, seed: int, work: Path) -> dict:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    t0 = time.perf_counter()
    model = SetFitModel.from_pretrained(resolve("minilm", quiet=True).path)
    train = Dataset.from_pandas(rows[["text", "label"]].astype({"label": str}), preserve_index=False)
    # output_dir only moves SetFit's checkpoints and logs out of the working directory; every training
    # argument stays at SetFit's default.
    # report_to="none": SetFit reports to every installed tracker by default (W&B then asks for a login); the
    # recipe is untouched
    Trainer(model=model, train_dataset=train,
            args=TrainingArguments(seed=seed, output_dir=str(work), report_to="none")).train()
    t1 = time.perf_counter()
    pred = np.asarray(model.predict(test["text"].tolist())).astype(str)
    t2 = time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)  # its checkpoint: a copy of the model, ~90 MB a run
    return {**score(pred, test), "train_seconds": t1 - t0, "predict_seconds": t2 - t1}


def run_loraclf(rows: pd.DataFrame, test: pd.DataFrame, seed: int, work: Path, sets: list[str]) -> dict:
    import loraclf

    shutil.rmtree(work, ignore_errors=True)  # what an interrupted attempt left
    work.mkdir(parents=True)
    rows[["text", "label"]].to_csv(work / "train.csv", index=False)
    t0 = time.perf_counter()
    run = loraclf.train(None, [f"data.train={work / 'train.csv'}", f"data.validation={work / 'train.csv'}",
                               f"output_dir={work}", "name=run", f"seed={seed}", "report.enabled=false", *sets],
                        quiet=True)
    t1 = time.perf_counter()
    clf = loraclf.load(run.path / "artifact")
    pred = np.asarray(clf.predict(test["text"].tolist())).astype(str)
    t2 = time.perf_counter()
    return {**score(pred, test), "train_seconds": t1 - t0, "predict_seconds": t2 - t1,
            "recipe": run.metrics.get("recipe")}


def import_libraries(tools: list[str]) -> None:
    """Imports what the timed runs use, once, before any is timed."""
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import loraclf  # noqa: F401
    from loraclf.training import run  # noqa: F401

    if "setfit" in tools:
        import setfit  # noqa: F401


def done_keys(path: Path) -> set:
    if not path.exists():
        return set()
    return {(r["dataset"], r["k"], r["seed"], r["tool"], r.get("scored_on", "test"))
            for r in map(json.loads, path.read_text().splitlines())}


def summarize(path: Path) -> str:
    """One row per dataset, K and loraclf variant, against SetFit on the seeds both ran."""
    df = pd.DataFrame([{"scored_on": "test", **json.loads(x)} for x in path.read_text().splitlines()])
    lines = ["| dataset | scored on | K | loraclf variant | SetFit 1.2 acc (sd) | loraclf acc (sd) | diff "
             "| SetFit train s | loraclf train s | time ratio | seeds |", "|---" * 11 + "|"]
    for (ds, on, k), g in df.groupby(["dataset", "scored_on", "k"], sort=False):
        for tool in [t for t in g.tool.unique() if t != "setfit"]:
            seeds = set(g[g.tool == "setfit"].seed) & set(g[g.tool == tool].seed)
            s, lo = (g[(g.tool == t) & g.seed.isin(seeds)] for t in ("setfit", tool))
            if not seeds:
                continue
            diff = lo.accuracy.mean() - s.accuracy.mean()
            lines.append(f"| {ds} | {on} | {k} | {tool} | {s.accuracy.mean():.3f} ({s.accuracy.std(ddof=0):.3f}) | "
                         f"{lo.accuracy.mean():.3f} ({lo.accuracy.std(ddof=0):.3f}) | {diff:+.3f} | "
                         f"{s.train_seconds.mean():.1f} | {lo.train_seconds.mean():.1f} | "
                         f"{lo.train_seconds.mean() / s.train_seconds.mean():.2f} | {len(seeds)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["sst2", "ag_news", "tweet_eval_sentiment"])
    p.add_argument("--k", nargs="+", type=int, default=[8, 16, 32, 64])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--tools", nargs="+", default=["setfit", "loraclf"], choices=["setfit", "loraclf"])
    p.add_argument("--test-n", type=int, default=2000, help="seeded sample of the test split (0: all of it)")
    p.add_argument("--score-on", choices=["test", "heldout"], default="test",
                   help="heldout: score on other train rows instead of test (ablations, choosing the recipe)")
    p.add_argument("--out", default="runs/few-shot")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a loraclf override (repeatable), for ablations; name the variant with --label")
    p.add_argument("--label", default=None, help="the loraclf variant's name in the results (default: loraclf)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = done_keys(results)
    import_libraries(args.tools)
    for ds in args.datasets:
        train = pd.read_csv(datasets_root() / ds / "train.csv")
        test = heldout_sample(train, args.test_n, args.k, args.seeds) if args.score_on == "heldout" else \
            test_sample(pd.read_csv(datasets_root() / ds / "test.csv"), args.test_n)
        for k in args.k:
            for seed in args.seeds:
                rows = few(train, k, seed)
                for tool in args.tools:
                    if tool == "loraclf" and args.label:
                        tool = f"loraclf:{args.label}"
                    if (ds, k, seed, tool, args.score_on) in done:
                        continue
                    work = out / "work" / f"{ds}-k{k}-s{seed}-{tool.replace(':', '-')}"
                    r = run_setfit(rows, test, seed, work) if tool == "setfit" else \
                        run_loraclf(rows, test, seed, work, args.sets)
                    rec = {"dataset": ds, "k": k, "seed": seed, "tool": tool, "scored_on": args.score_on,
                           "n_train": len(rows),
                           "n_test": len(test), **r}
                    print(json.dumps({x: v for x, v in rec.items() if x != "recipe"}), flush=True)
                    with open(results, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
    table = summarize(results)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
