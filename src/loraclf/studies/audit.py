"""`loraclf audit`: which labels in a dataset are probably wrong.

A label-error finder needs, for every labelled text, a prediction from a model that never trained on
it: the out-of-fold predictions of a k-fold cross-validation (``train.cv_folds``). The audit trains
one (or reads one already made), blends each text's out-of-fold probabilities with the labels of its
nearest neighbours in the data (studies/neighbours.py; `neighbours=0` leaves them as they are), hands them
and the given label to its task (confident learning by cleanlab for classes and label sets), and writes
what it finds:

    <cv run>/audit.csv        source file, row in it (0-based, after the header), fold, text, given and suggested
                              label, their blended probabilities, label quality, the share of the text's
                              neighbours labelled as it is; likeliest first
    <cv run>/metrics.json     "audit": how many rows were flagged, and the first ones
    <cv run>/report.html      a "Probable label errors" section
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, LoraclfError
from ..schema import RunDir, write_text_atomic
from ..tasks import task_of
from .neighbours import NEIGHBOURS, WEIGHT, blend_with_neighbours

SHOWN = 50  # suspects listed in metrics.json and the report; audit.csv has all of them


def audit_run(run_dir: str | Path, quiet: bool = True, neighbours: int = NEIGHBOURS, weight: float = WEIGHT) -> dict:
    """Rank the probable label errors of a finished cross-validation run; returns metrics.json's "audit"."""
    rd = RunDir(run_dir)
    m = rd.read_metrics()
    if "cv" not in m:
        raise LoraclfError(f"{rd.path} is not a cross-validation run (no out-of-fold predictions); audit the data, "
                           "or train it with train.cv_folds")
    task = task_of(m)
    table = rd.read_predictions("oof")
    if table is None:
        raise LoraclfError(f"{rd.path}: no predictions/oof.csv to audit")
    p = task.parse_predictions(table, rd.predictions_path("oof"))
    p, agree, near = _with_neighbours(p, rd, neighbours, weight, quiet)
    issues = task.label_issues(p)
    rows, folds, texts, sources = (table[c].tolist() for c in ("row", "fold", "text", "source"))
    for x in issues:
        i = x["row"]
        x.update(row=int(rows[i]), fold=int(folds[i]), text=texts[i], source=sources[i],
                 neighbours_agree=None if agree is None else round(float(agree[i]), 4))
    _write_csv(rd.path / "audit.csv", issues)
    method = "confident learning (cleanlab.filter.find_label_issues) on out-of-fold probabilities"
    if near:
        method += (f" blended with the labels of each text's {near['k']} nearest neighbours "
                   f"(weight {near['weight']:g}, {near['model']} embeddings)")
    summary = {"rows": len(table), "flagged": len(issues), "share": len(issues) / max(len(table), 1),
               "method": method, "neighbours": near, "file": "audit.csv", "first": issues[:SHOWN]}
    rd.update_metrics("audit", summary)
    from ..evaluation.report import cv_report

    cv_report(rd.path, quiet=True)
    if not quiet:
        print(f"audit: {len(issues):,} of {len(table):,} labels are probably wrong ({summary['share']:.1%}); "
              f"likeliest first in {rd.path / 'audit.csv'}; fix or review from the top (further down, more of "
              "the labels are right: dropping every flagged row also drops the hardest right ones)")
    return summary


def _with_neighbours(p, rd: RunDir, k: int, weight: float, quiet: bool):
    """`p` blended with its neighbours' labels, each text's share of neighbours that agree, and what was done
    (`p`, None, None when k is 0, weight 0, or there are too few texts)."""
    if k < 1 or weight <= 0 or len(p.texts) < 2:
        return p, None, None
    from ..config import load_config

    cfg = load_config(rd.config_path)
    return blend_with_neighbours(p, cfg.model, k, weight, cfg.data.max_length, quiet)


def _write_csv(path: Path, issues: list[dict]) -> None:
    fields = ["rank", "source", "row", "fold", "text", "given", "suggested", "p_given", "p_suggested", "quality",
              "neighbours_agree"]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")  # not '\r\n'
    w.writeheader()
    for rank, x in enumerate(issues, 1):
        w.writerow({**x, "rank": rank})
    write_text_atomic(path, buf.getvalue())


def audit(target: str, config: Optional[str] = None, sets: Optional[list[str]] = None, folds: int = 5,
          quiet: bool = False, neighbours: int = NEIGHBOURS, weight: float = WEIGHT) -> dict:
    """Audit a cross-validation run directory, or a dataset (trained here as a `folds`-fold
    cross-validation of `config` with `sets`, its run directory named like any run)."""
    if neighbours < 0 or not 0 <= weight <= 1:
        raise ConfigError(f"audit: neighbours must be 0 or more (got {neighbours}) and their weight from 0 to 1 "
                          f"(got {weight})")
    if RunDir(target).finished:
        return audit_run(target, quiet, neighbours, weight)
    from ..config import load_config
    from ..training.run import train

    cfg = load_config(config, [f"data.path={target}", f"train.cv_folds={folds}", *(sets or [])])
    return audit_run(train(cfg, quiet=quiet).path, quiet, neighbours, weight)
