"""k-fold cross-validation as a run (``train.cv_folds: k``).

Every labelled row outside test (train and validation together) falls in exactly one of k folds,
stratified as the task says (classes, score bins, or iterative stratification of label sets). Fold
i's model trains on the other k-1 folds, with its validation carved from them (model selection and
calibration never see fold i), and is scored on fold i. The run directory::

    runs/<name>/
      config.yaml              the config, as given (each fold resolves its own `auto`s)
      folds/fold-<i>/          an ordinary run directory per fold (its `test` split is fold i)
      predictions/oof.csv      every row's out-of-fold prediction, with its fold, file and row in that file
      metrics.json             {"cv": per fold, mean and standard deviation of every metric}, ...
      report.html

Nothing of one fold's held-out rows reaches another fold's training: the folds are disjoint and
cover every row (tested).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..config import Config, replace_fields
from ..data import Data, Split, carve_validation, load_data
from ..errors import LoraclfError
from ..schema import PREDICTIONS_DIR, RunDir
from ..tasks import task_class

FOLDS_DIR = "folds"


def fold_data(data: Data, held: np.ndarray, fraction: float, seed: int) -> Data:
    """The data of one fold: `held` rows (of train and validation pooled) as its test split, the rest
    as train with a validation carved from it."""
    pooled = _pooled(data)
    rest = np.setdiff1d(np.arange(len(pooled)), held)
    task = task_class(data.task)
    train, validation = carve_validation(pooled.take(rest), fraction, seed, task)
    return Data({"train": train, "validation": validation, "test": pooled.take(held)}, data.labels,
                [f"cross-validation fold: {len(held):,} held-out rows scored, validation carved from the other "
                 f"{len(rest):,}"], data.task)


def _pooled(data: Data) -> Split:
    """Train and validation as one split: the rows cross-validation divides into folds."""
    tr, va = data.splits["train"], data.splits["validation"]
    pairs = None if tr.pairs is None else tr.pairs + (va.pairs or [])
    labels = np.concatenate([tr.labels, va.labels]) if len(va) else tr.labels
    return Split(tr.texts + va.texts, labels, pairs, tr.source, np.concatenate([tr.rows, va.rows]))


def _origins(data: Data) -> list[tuple[str, int]]:
    """(file, row) of each pooled text, in pooled order: where a user finds it (a carved validation
    comes from the train file)."""
    return [(s.source, int(r)) for name in ("train", "validation") for s in [data.splits[name]] for r in s.rows]


def cv_table(metrics: dict) -> str:
    """The terminal summary of a cross-validation run's metrics.json: each headline metric's mean and standard
    deviation over the folds, on every row held out once."""
    from ..evaluation.metrics import METRICS
    from ..evaluation.tables import text_table

    cv = metrics["cv"]
    keys = [k for k in (*task_class(metrics.get("task")).headline, "loss") if k in cv["mean"]]
    rows = [["metric", "mean", "sd"]] + [[METRICS[k].name if k in METRICS else k, METRICS[k].format(cv["mean"][k])
                                          if k in METRICS else f"{cv['mean'][k]:.4f}", f"{cv['sd'][k]:.4f}"]
                                         for k in keys]
    return "\n".join([f"cross-validation: {cv['folds']} folds, {cv['rows']:,} rows each scored once by the model "
                      "that did not see it", *text_table(rows, right_from=1)])


def summarize(folds: list[dict], keys) -> dict:
    """Mean and standard deviation (over folds, ddof=1) of every metric the folds scored."""
    mean, sd = {}, {}
    for k in keys:
        vals = [f[k] for f in folds if isinstance(f.get(k), (int, float)) and math.isfinite(f[k])]
        if vals:
            mean[k] = float(np.mean(vals))
            sd[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "sd": sd}


def cross_validate(cfg: Config, train_one: Callable, quiet: bool = False,
                   callback: Optional[Callable[[dict], None]] = None) -> Path:
    """Train k fold models of `cfg` (train.cv_folds = k; `cfg.name` set) with `train_one` (training.run.train)
    and write the cross-validation run directory; returns it."""
    from .rundir import open_new

    t0 = time.perf_counter()
    k = cfg.train.cv_folds
    run_dir = Path(cfg.output_dir) / cfg.name
    data = load_data(cfg.data, cfg.seed, cfg.task)
    pooled = _pooled(data)
    if len(pooled) < 2 * k:
        raise LoraclfError(f"train.cv_folds={k} needs at least {2 * k} labelled rows; there are {len(pooled)}")
    folds = task_class(data.task).folds(pooled.labels, k, cfg.seed)
    lock = open_new(run_dir)
    try:
        RunDir(run_dir).write_config(cfg)
        runs = []
        for i, held in enumerate(folds, 1):
            fold_cfg = replace_fields(cfg, {"name": f"fold-{i}", "output_dir": str(run_dir / FOLDS_DIR),
                                            "train.cv_folds": None})
            if not quiet:
                print(f"loraclf: cross-validation fold {i} of {k}: {len(held):,} rows held out")
            run = train_one(fold_cfg, quiet=quiet, callback=callback,
                            data=fold_data(data, held, cfg.data.validation_fraction, cfg.seed + i))
            run.update_metrics("cv_fold", {"fold": i, "of": k, "rows": [int(r) for r in held]})
            runs.append(run)
        _write_summary(RunDir(run_dir), cfg, runs, _origins(data), time.perf_counter() - t0)
        if not quiet:
            print(cv_table(RunDir(run_dir).read_metrics()))
        if cfg.report.enabled:
            from ..evaluation.report import cv_report

            cv_report(run_dir, quiet=quiet)
    except BaseException:
        lock.remove_created()
        raise
    finally:
        lock.release()
    return run_dir


def _write_summary(rd: RunDir, cfg: Config, runs: list, origins: list[tuple[str, int]], seconds: float) -> None:
    import pandas as pd

    metrics = [r.read_metrics() for r in runs]
    task = task_class(metrics[0].get("task"))
    per_fold = [{"fold": i, **{k: v for k, v in m["test"].items() if isinstance(v, (int, float))}}
                for i, m in enumerate(metrics, 1)]
    keys = [k for k in (*task.headline, "loss") if any(k in f for f in per_fold)]
    first = metrics[0]
    (rd.path / PREDICTIONS_DIR).mkdir(exist_ok=True)
    oof = []
    for i, (r, m) in enumerate(zip(runs, metrics), 1):
        table = r.read_predictions("test")
        held = m["cv_fold"]["rows"]
        table["fold"], table["index"] = i, held
        table["source"], table["row"] = [origins[j][0] for j in held], [origins[j][1] for j in held]
        oof.append(table)
    pd.concat(oof).sort_values("index").drop(columns="index").to_csv(rd.path / PREDICTIONS_DIR / "oof.csv",
                                                                       index=False, lineterminator="\n")
    rd.write_metrics({
        "run": cfg.name, "task": first["task"], "labels": first["labels"], "model": first.get("model"),
        "params": first.get("params"),
        "cv": {"folds": len(runs), "rows": sum(m["test"]["n"] for m in metrics), "seed": cfg.seed,
               "metric": first["best"]["metric"], "per_fold": per_fold, **summarize(per_fold, keys),
               "runs": [str(Path(FOLDS_DIR) / r.path.name) for r in runs]},
        "timing": {"train_seconds": sum(m["timing"]["train_seconds"] for m in metrics), "total_seconds": seconds}})
