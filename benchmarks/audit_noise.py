"""How well `loraclf audit` finds planted label errors, and how much of the accuracy they cost comes back.

A stratified slice of a dataset's train split (SST-2 unless --dataset names another; seeded), 10% of
its labels moved to another class drawn at random (seeded). The audit trains a k-fold
cross-validation of the bundled MiniLM on the noisy slice and ranks the labels that are probably
wrong. Then four models are trained with the same config and scored on the full test split: on the
clean slice, on the noisy slice, on the noisy slice without the flagged rows, and on the noisy slice
with the flagged rows relabelled as the audit suggests.

    python benchmarks/audit_noise.py --rows 4000 --noise 0.1 --folds 5 --out runs/audit-noise
    python benchmarks/audit_noise.py --dataset ag_news --rows 4000 --out runs/audit-noise-ag
    python benchmarks/audit_noise.py --rows 60610 --epochs 1 --cuts 0.5 1 --out runs/audit-full  # all of SST-2's train

Prints a JSON summary: precision and recall of the flagged set against the flipped rows, precision
where the ranking first reaches a recall of 0.3, 0.5, 0.6 and 0.7, the four test accuracies and the
share of the lost accuracy recovered (which means little when the noise costs less than the test
split's standard error). Nothing is chosen on test.

--cuts acts on the top of the ranking only: for each share of the flagged rows (e.g. 0.25 0.5 1), a model is
trained without that many of the highest-ranked suspects, and the share is chosen by accuracy on a seeded
sample of the dataset's validation split (--validation-n rows, clean labels, never test). --relabel-cuts does
the same with those rows relabelled as suggested instead of dropped; validation then chooses among both. Every model of
such a run, the clean and noisy ones too, is validated on that same sample rather than on rows carved from
its own train, so the comparisons hold. The audit itself folds over the noisy rows alone (before
2026-12-05 it also folded over that clean sample and ranked its rows among the train rows': see
docs/few-labels.md). A rerun with the same --out reuses the audit and the models that finished (a model's
folder without metrics.json is trained again); without runs/audit/audit.csv, the finished cross-validation
is ranked again (e.g. with other --neighbours) rather than retrained. Give another --out for other settings.

--teacher 0.5 0.8 trains on the noisy slice as it is with train.teacher: each row's target blends its given
label with the audit's out-of-fold probabilities for it, at each weight; validation chooses among those
models and the cuts alike.

With --cuts, the models are also scored on two larger sets nobody chose on, with the paired standard error
of each difference from the noisy model: the validation rows outside the sample that chooses
("unused_validation"), and the train rows outside the slice whose text is not in it ("unused_train",
--unused-train caps them; SST-2's validation split is itself carved from GLUE's train, so both are
phrases like train's). On a 16,000-row slice of SST-2 that is 44,479 rows, where a standard error is a
third of the 4,739 unused validation rows'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from loraclf.config import load_config  # noqa: E402
from loraclf.data import datasets_root  # noqa: E402
from loraclf.studies.neighbours import NEIGHBOURS, WEIGHT  # noqa: E402


def train_slice(dataset: str, rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stratified, seeded slice of `dataset`'s train split (in its shuffled order, train's row numbers as
    index), and the rest of train."""
    train = pd.read_csv(datasets_root() / dataset / "train.csv")
    part = pd.concat([g.sample(int(round(rows * len(g) / len(train))), random_state=seed)
                      for _, g in train.groupby("label")]).sample(frac=1, random_state=seed)
    return part, train.drop(index=part.index)


def noisy_slice(dataset: str, rows: int, noise: float, seed: int) -> tuple[pd.DataFrame, set]:
    """A stratified slice of `dataset`'s train split, with a `noise` share of its labels moved to another
    class drawn uniformly (seeded); `clean` keeps the true label."""
    part = train_slice(dataset, rows, seed)[0].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(part), int(round(noise * len(part))), replace=False).tolist()
    labels = sorted(part["label"].unique())
    part["clean"] = part["label"]
    for i in flipped:  # with two classes the other one, as before
        others = [x for x in labels if x != part.at[i, "label"]]
        part.at[i, "label"] = others[int(rng.integers(len(others)))]
    return part, set(flipped)


def precision_at_recall(ranked: list[int], truth: set, recall: float) -> float | None:
    hit = 0
    for n, row in enumerate(ranked, 1):
        hit += row in truth
        if hit >= recall * len(truth):
            return hit / n
    return None


def train_on(frame: pd.DataFrame | None, out: Path, name: str, sets: list[str], dataset: str,
             train_file: Path | None = None) -> dict:
    """Validation and test accuracy of a model trained on `frame` (or on `train_file` as it is), reused when it
    finished before."""
    import shutil

    import loraclf

    finished = out / "runs" / name / "metrics.json"
    if finished.exists():
        return accuracies(json.loads(finished.read_text()))
    shutil.rmtree(finished.parent, ignore_errors=True)  # what an interrupted attempt left
    if train_file is None:
        train_file = out / "data" / name / "train.csv"
        train_file.parent.mkdir(parents=True, exist_ok=True)
        frame[["text", "label"]].to_csv(train_file, index=False)
    cfg = load_config(None, [f"data.train={train_file}", f"data.test={datasets_root() / dataset / 'test.csv'}",
                             f"output_dir={out / 'runs'}", f"name={name}", "report.enabled=false", *sets])
    return accuracies(loraclf.train(cfg, quiet=True).metrics)


def accuracies(metrics: dict) -> dict:
    return {split: metrics[split]["accuracy"] for split in ("validation", "test") if split in metrics}


def relabelled(part: pd.DataFrame, rows: list[int], labels: list) -> pd.DataFrame:
    out = part.copy()
    out.loc[rows, "label"] = labels
    return out


def cut_name(cut: float, relabel: bool = False) -> str:
    """The model acting on the top `cut` share of the ranking; all of it is the "dropped" or "relabelled" model."""
    if relabel:
        return "relabelled" if cut == 1 else f"relabel-top{cut:g}"
    return "dropped" if cut == 1 else f"drop-top{cut:g}"


def cut_models(part: pd.DataFrame, ranked: list[int], cuts: list[float], train, suggested: list | None = None) -> dict:
    """Models trained without the top `cut` share of the ranking (or, given the `suggested` labels in the
    ranking's order, with those rows relabelled); the share with the best validation accuracy is chosen
    (ties: the smaller cut)."""
    size = {cut: int(round(cut * len(ranked))) for cut in cuts}
    relabel = suggested is not None

    def acted(cut: float) -> pd.DataFrame:
        if relabel:
            return relabelled(part, ranked[:size[cut]], suggested[:size[cut]])
        return part.drop(index=ranked[:size[cut]])

    runs = {cut: train(acted(cut), cut_name(cut, relabel)) for cut in cuts}
    best = max(sorted(runs), key=lambda c: runs[c]["validation"])
    return {"cuts": {f"{c:g}": {"rows_" + ("relabelled" if relabel else "dropped"): size[c], **a}
                     for c, a in runs.items()},
            "chosen_cut": best, "chosen": runs[best], "chosen_model": cut_name(best, relabel)}


def teacher_name(weight: float) -> str:
    return f"teacher-w{weight:g}"


def teacher_models(noisy: Path, cv_run: Path, weights: list[float], sets: list[str], out: Path, dataset: str) -> dict:
    """Models trained on the noisy slice itself (the file the audit folded over, so its rows are the teacher's)
    with each row's target blended with the audit's out-of-fold probabilities (train.teacher) at each weight;
    the weight with the best validation accuracy is chosen (ties: the smaller)."""
    runs = {w: train_on(None, out, teacher_name(w), [*sets, f"train.teacher={cv_run}", f"train.teacher_weight={w}"],
                        dataset, noisy / "train.csv") for w in weights}
    best = max(sorted(runs), key=lambda w: runs[w]["validation"])
    return {"weights": {f"{w:g}": a for w, a in runs.items()}, "chosen_weight": best, "chosen": runs[best],
            "chosen_model": teacher_name(best)}


def validation_sample(dataset: str, n: int, seed: int, out: Path) -> Path:
    path = out / "data" / "validation.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    val = pd.read_csv(datasets_root() / dataset / "validation.csv")
    val.sample(min(n, len(val)), random_state=seed)[["text", "label"]].to_csv(path, index=False)
    return path


def unused_validation(dataset: str, n: int, seed: int) -> pd.DataFrame:
    """The validation split's rows outside the seeded sample the cuts are chosen on: never used to choose."""
    val = pd.read_csv(datasets_root() / dataset / "validation.csv")
    return val.drop(index=val.sample(min(n, len(val)), random_state=seed).index)


def accuracy_on(frame: pd.DataFrame, runs: Path, names: list[str]) -> dict:
    """Each finished model's accuracy on `frame`, and the paired standard error of its difference from
    the noisy model's (the spread of the per-row differences over the square root of the rows)."""
    import loraclf

    texts, gold = frame["text"].astype(str).tolist(), frame["label"].astype(str).to_numpy()
    right = {name: np.asarray(loraclf.load(runs / name).predict(texts)) == gold for name in names}
    return {name: {"accuracy": float(r.mean()),
                   "se_vs_noisy": float((r.astype(float) - right["noisy"]).std(ddof=1) / np.sqrt(len(r)))}
            for name, r in right.items()}


def unused_train(dataset: str, rows: int, seed: int, cap: int | None) -> pd.DataFrame:
    """The train split's rows outside the slice, their texts not in it (clean labels; never trained or chosen
    on), at most `cap` of them (a seeded sample)."""
    part, rest = train_slice(dataset, rows, seed)
    rest = rest[~rest["text"].isin(set(part["text"]))]
    return rest if cap is None or cap >= len(rest) else rest.sample(cap, random_state=seed)


def recovery_elsewhere(args: argparse.Namespace, out: Path, chosen: str, rest: pd.DataFrame) -> dict:
    """The models again on rows nobody chose on (the validation rows outside the sample that chooses, or the
    train rows outside the slice): many more rows than SST-2's 872-text test split, so the share of the
    loss won back is measured with less noise (same distribution as train)."""
    acted = [*dict.fromkeys([cut_name(c, True) for c in [1, *(args.relabel_cuts or [])]]
                            + [cut_name(c) for c in [1, *args.cuts]] + [teacher_name(w) for w in args.teacher or []])]
    acc = accuracy_on(rest, out / "runs", ["clean", "noisy", *acted])
    lost = acc["clean"]["accuracy"] - acc["noisy"]["accuracy"]
    share = {name: (acc[name]["accuracy"] - acc["noisy"]["accuracy"]) / lost if lost > 0 else None for name in acted}
    return {"rows": len(rest), "accuracy": acc, "lost": lost, "recovered": share, "chosen": chosen}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="sst2", help="a folder of $LORACLF_DATASETS with text,label")
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--cuts", type=float, nargs="+", help="shares of the flagged rows to drop from the top, the "
                   "one kept chosen on validation (then every model validates on --validation-n rows)")
    p.add_argument("--relabel-cuts", type=float, nargs="+", help="with --cuts: shares of the flagged rows to "
                   "relabel as suggested from the top, chosen on validation with the cuts")
    p.add_argument("--teacher", type=float, nargs="+", metavar="WEIGHT", help="with --cuts: also train on the "
                   "noisy slice with train.teacher (the audit's out-of-fold probabilities) at these weights")
    p.add_argument("--validation-n", type=int, default=2000)
    p.add_argument("--unused-train", type=int, default=None, metavar="N", help="with --cuts: score the models on "
                   "at most N train rows outside the slice as well (default: all of them; 0: none)")
    p.add_argument("--neighbours", type=int, default=NEIGHBOURS, help="as loraclf audit's (0: the fold models alone)")
    p.add_argument("--neighbour-weight", type=float, default=WEIGHT)
    p.add_argument("--out", default="runs/audit-noise")
    args = p.parse_args()
    if (args.relabel_cuts or args.teacher) and not args.cuts:
        p.error("--relabel-cuts and --teacher need --cuts (the clean validation sample that chooses among them)")
    return args


def main() -> None:
    args = parse_args()
    from loraclf.studies.audit import audit

    out = Path(args.out)
    sets = [f"train.epochs={args.epochs}", f"seed={args.seed}"]
    audit_sets = [f"output_dir={out / 'runs'}", "name=audit", "report.enabled=false", *sets]
    if args.cuts:  # the retrained models validate on clean rows; the audit folds over the noisy rows alone
        sets.append(f"data.validation={validation_sample(args.dataset, args.validation_n, args.seed, out)}")
    part, flipped = noisy_slice(args.dataset, args.rows, args.noise, args.seed)
    noisy = out / "data" / "noisy-audit"
    noisy.mkdir(parents=True, exist_ok=True)
    part[["text", "label"]].to_csv(noisy / "train.csv", index=False)
    t0 = time.perf_counter()
    cv_run = out / "runs" / "audit"
    if not (cv_run / "audit.csv").exists():  # a finished cross-validation is ranked again, not retrained
        target = cv_run if (cv_run / "metrics.json").exists() else noisy
        audit(str(target), None, audit_sets, folds=args.folds, quiet=True, neighbours=args.neighbours,
              weight=args.neighbour_weight)
    audit_s = time.perf_counter() - t0  # ~0 when reused: the first run's log has it
    suspects = pd.read_csv(cv_run / "audit.csv")
    suspects = suspects[suspects["source"].map(lambda s: Path(s).resolve() == (noisy / "train.csv").resolve())]
    ranked = suspects["row"].tolist()
    found = set(ranked) & flipped
    suggested = suspects["suggested"].tolist()
    train = lambda frame, name: train_on(frame, out, name, sets, args.dataset)  # noqa: E731
    # named as cut_models names a cut of 1, so --cuts 1 and --relabel-cuts 1 reuse these models, not retrain them
    acc = {name: train(frame, name) for name, frame in
           (("clean", part.assign(label=part["clean"])), ("noisy", part), (cut_name(1), part.drop(index=ranked)),
            (cut_name(1, relabel=True), relabelled(part, ranked, suggested)))}
    test = {name: a["test"] for name, a in acc.items()}
    lost = test["clean"] - test["noisy"]
    summary = {"rows": len(part), "flipped": len(flipped), "flagged": len(ranked),
               "precision": len(found) / max(len(ranked), 1), "recall": len(found) / len(flipped),
               "precision_at_recall": {r: precision_at_recall(ranked, flipped, r) for r in (0.3, 0.5, 0.6, 0.7)},
               "test_accuracy": test, "validation_accuracy": {n: a.get("validation") for n, a in acc.items()},
               "lost": lost,
               "recovered_dropped": (test["dropped"] - test["noisy"]) / lost if lost > 0 else None,
               "recovered_relabelled": (test["relabelled"] - test["noisy"]) / lost if lost > 0 else None,
               "audit_seconds": audit_s, "dataset": args.dataset, "folds": args.folds, "seed": args.seed,
               "epochs": args.epochs, "threads": os.environ.get("OMP_NUM_THREADS"),
               "neighbours": args.neighbours, "neighbour_weight": args.neighbour_weight}
    if args.cuts:
        summary["top_cut"] = cut_models(part, ranked, args.cuts, train)
        if args.relabel_cuts:
            summary["relabel_cut"] = cut_models(part, ranked, args.relabel_cuts, train, suggested)
        if args.teacher:
            summary["teacher"] = teacher_models(noisy, cv_run, args.teacher, sets, out, args.dataset)
        chosen = max((summary[k] for k in ("top_cut", "relabel_cut", "teacher") if k in summary),
                     key=lambda c: c["chosen"]["validation"])  # ties: dropping, the first one
        summary["chosen"] = chosen["chosen_model"]
        summary["recovered_top_cut"] = (chosen["chosen"]["test"] - test["noisy"]) / lost if lost > 0 else None
        summary["unused_validation"] = recovery_elsewhere(
            args, out, summary["chosen"], unused_validation(args.dataset, args.validation_n, args.seed))
        rest = unused_train(args.dataset, args.rows, args.seed, args.unused_train)
        if len(rest) and args.unused_train != 0:
            summary["unused_train"] = recovery_elsewhere(args, out, summary["chosen"], rest)
    print(json.dumps(summary, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
