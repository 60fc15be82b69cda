"""`loraclf audit`: which labels in a dataset are probably wrong.

A label-error finder needs, for every labelled text, a prediction from a model that never trained on
it: the out-of-fold predictions of a k-fold cross-validation (``train.cv_folds``). The audit trains
one (or reads one already made), hands each text's out-of-fold probabilities and given label to its
task (confident learning by cleanlab for classes and label sets), and writes what it finds:

    <cv run>/audit.csv        source file, row in it (0-based, after the header), fold, text, given and suggested
                              label, their out-of-fold probabilities, label quality; likeliest first
    <cv run>/metrics.json     "audit": how many rows were flagged, and the first ones
    <cv run>/report.html      a "Probable label errors" section
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from ..errors import LoraclfError
from ..schema import RunDir, write_text_atomic
from ..tasks import task_of

SHOWN = 50  # suspects listed in metrics.json and the report; audit.csv has all of them


def audit_run(run_dir: str | Path, quiet: bool = True) -> dict:
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
    issues = task.label_issues(task.parse_predictions(table, rd.predictions_path("oof")))
    rows, folds, texts, sources = (table[c].tolist() for c in ("row", "fold", "text", "source"))
    for x in issues:
        i = x["row"]
        x.update(row=int(rows[i]), fold=int(folds[i]), text=texts[i], source=sources[i])
    _write_csv(rd.path / "audit.csv", issues)
    summary = {"rows": len(table), "flagged": len(issues), "share": len(issues) / max(len(table), 1),
               "method": "confident learning (cleanlab.filter.find_label_issues) on out-of-fold probabilities",
               "file": "audit.csv", "first": issues[:SHOWN]}
    rd.update_metrics("audit", summary)
    from ..evaluation.report import cv_report

    cv_report(rd.path, quiet=True)
    if not quiet:
        print(f"audit: {len(issues):,} of {len(table):,} labels are probably wrong ({summary['share']:.1%}); "
              f"likeliest first in {rd.path / 'audit.csv'}")
    return summary


def _write_csv(path: Path, issues: list[dict]) -> None:
    fields = ["rank", "source", "row", "fold", "text", "given", "suggested", "p_given", "p_suggested", "quality"]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")  # not '\r\n'
    w.writeheader()
    for rank, x in enumerate(issues, 1):
        w.writerow({**x, "rank": rank})
    write_text_atomic(path, buf.getvalue())


def audit(target: str, config: Optional[str] = None, sets: Optional[list[str]] = None, folds: int = 5,
          quiet: bool = False) -> dict:
    """Audit a cross-validation run directory, or a dataset (trained here as a `folds`-fold
    cross-validation of `config` with `sets`, its run directory named like any run)."""
    if RunDir(target).finished:
        return audit_run(target, quiet)
    from ..config import load_config
    from ..training.run import train

    cfg = load_config(config, [f"data.path={target}", f"train.cv_folds={folds}", *(sets or [])])
    return audit_run(train(cfg, quiet=quiet).path, quiet)
