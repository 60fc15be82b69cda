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
    <cv run>/fixed/           with --fix: the data again, the top of the ranking relabelled or dropped (fix_data)
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, DataError, LoraclfError
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


FIXES = ("relabel", "drop")
# The share of the ranking acted on by default: the top half did best wherever it was measured (relabelled at
# three epochs on 16,000 SST-2 rows, dropped at one epoch on all 60,610; docs/few-labels.md). Further down,
# more of the flagged labels are right.
FIX_TOP = 0.5


def fix_data(run_dir: str | Path, action: str, top: float = FIX_TOP, to: Optional[str | Path] = None,
             quiet: bool = True) -> dict:
    """A copy of an audited dataset with the top `top` share of audit.csv's suspects relabelled as suggested
    (`action` "relabel") or dropped ("drop"): every split file of the run's config, each under its split's
    name in its own format (test and untouched files copied as they are), plus fixes.csv, what was changed.
    Written under `to` (default <run>/fixed/), a folder `loraclf train` reads like the original."""
    check_fix(action, top)
    rd = RunDir(run_dir)
    if not (rd.path / "audit.csv").exists():
        raise LoraclfError(f"{rd.path}: no audit.csv; audit the run first")
    import pandas as pd

    from ..config import load_config
    from ..data import find_files

    suspects = pd.read_csv(rd.path / "audit.csv", dtype=str, keep_default_na=False)
    chosen = suspects.head(int(round(top * len(suspects))))
    cfg = load_config(rd.config_path).data
    files = find_files(cfg)
    out = Path(to) if to is not None else rd.path / "fixed"
    _check_sources(chosen, files)
    if any(out.resolve() == p.parent.resolve() for p in files.values()):
        raise ConfigError(f"audit: {out} holds the audited files; the fix writes a copy, give another folder")
    written = _write_fixed(files, chosen, action, task_of(rd.read_metrics()), cfg, out)
    summary = {"action": action, "top": top, "fixed": len(chosen), "flagged": len(suspects), "folder": str(out),
               "files": written}
    if not quiet:
        done = "relabelled as suggested" if action == "relabel" else "dropped"
        print(f"fix: the top {len(chosen):,} of {len(suspects):,} flagged rows {done}; train on {out} "
              f"(each change in {out / 'fixes.csv'})")
    return summary


def check_fix(action: str, top: float) -> None:
    if action not in FIXES:
        raise ConfigError(f"audit: the fix is one of {', '.join(FIXES)} (got {action!r})")
    if not 0 < top <= 1:
        raise ConfigError(f"audit: the share of the flagged rows to fix is above 0 and at most 1 (got {top:g})")


def _check_sources(chosen, files: dict[str, Path]) -> None:
    """Every suspect comes from one of the config's split files (a local file: fixing writes a copy of it)."""
    known = {str(p.resolve()) for p in files.values()}
    for source in dict.fromkeys(chosen["source"]):
        if not Path(source).exists() or str(Path(source).resolve()) not in known:
            raise LoraclfError(f"{source}: the audited file is not a local file of the run's data; fixing writes a "
                               "corrected copy of each file, so the files must be where the audit read them")


def _write_fixed(files: dict[str, Path], chosen, action: str, task, cfg, out: Path) -> list[str]:
    """Each split file fixed (or copied) into a staging folder, then moved into `out` with fixes.csv."""
    import shutil
    import tempfile

    import pandas as pd

    from ..data.files import write_table

    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".partial-"))
    names = list(cfg.label_names) if cfg.label_names else None
    log = []
    try:
        for split, path in files.items():
            target = stage / (split + "".join(path.suffixes))
            mine = chosen[chosen["source"].map(lambda s, p=path: Path(s).resolve() == p.resolve())]
            if mine.empty:
                shutil.copyfile(path, target)
                continue
            write_table(_fixed_table(path, mine, action, task, cfg, names), target, path, cfg.format)
            log += [{"rank": r.rank, "file": target.name, "source": r.source, "row": r.row, "action": action,
                     "given": r.given, "now": r.suggested if action == "relabel" else ""} for r in mine.itertuples()]
        columns = ["rank", "file", "source", "row", "action", "given", "now"]
        pd.DataFrame(log, columns=columns).to_csv(stage / "fixes.csv", index=False)
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [str(out / (split + "".join(p.suffixes))) for split, p in files.items()]


def _fixed_table(path: Path, mine, action: str, task, cfg, names):
    """`path`'s table with the rows of `mine` relabelled or dropped, once their label is still the audited one."""
    from ..data import read_table
    from ..data.remote import shown
    from ..tasks import LABEL_JOIN

    # rows are positions (a Parquet file may carry an index of its own)
    df, where = read_table(path, cfg.format).reset_index(drop=True), shown(path)
    rows = [int(r) for r in mine["row"]]
    if max(rows) >= len(df):
        raise DataError(f"{where} has {len(df):,} rows and the audit names row {max(rows) + 1:,}; the file changed "
                        "since the audit: audit it again")
    labels = task.read_labels(df, cfg, names, where)
    keep = {str(x) for x in cfg.include_labels} if cfg.include_labels else None
    for row, given in zip(rows, mine["given"]):
        now = labels[row] if not isinstance(labels[row], list) else \
            LABEL_JOIN.join(x for x in labels[row] if keep is None or x in keep)  # the set the audit saw
        same = set(now.split(LABEL_JOIN)) == set(given.split(LABEL_JOIN)) if isinstance(labels[row], list) else \
            str(now) == given  # a set in any order
        if not same:
            raise DataError(f"{where}: row {row + 1} is labelled {now!r}, not {given!r} as audited; the file "
                            "changed since the audit: audit it again")
    if action == "drop":
        return df.drop(index=rows)
    task.write_labels(df, rows, list(mine["suggested"]), cfg, names)
    return df


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
          quiet: bool = False, neighbours: int = NEIGHBOURS, weight: float = WEIGHT, fix: Optional[str] = None,
          fix_top: float = FIX_TOP, fixed_to: Optional[str] = None) -> dict:
    """Audit a cross-validation run directory, or a dataset (trained here as a `folds`-fold
    cross-validation of `config` with `sets`, its run directory named like any run); with `fix`, then write
    the data with the top `fix_top` share of the suspects relabelled or dropped (see :func:`fix_data`)."""
    if neighbours < 0 or not 0 <= weight <= 1:
        raise ConfigError(f"audit: neighbours must be 0 or more (got {neighbours}) and their weight from 0 to 1 "
                          f"(got {weight})")
    if fix is not None:  # refused before any training
        check_fix(fix, fix_top)
    elif fixed_to is not None:
        raise ConfigError("audit: --fixed-to says where --fix writes; give --fix relabel or --fix drop")
    if RunDir(target).finished:
        run = Path(target)
    else:
        from ..config import load_config
        from ..training.run import train

        cfg = load_config(config, [f"data.path={target}", f"train.cv_folds={folds}", *(sets or [])])
        run = train(cfg, quiet=quiet).path
    summary = audit_run(run, quiet, neighbours, weight)
    if fix is not None:
        summary = {**summary, "fix": fix_data(run, fix, fix_top, fixed_to, quiet)}
    return summary
