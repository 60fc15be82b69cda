"""Label columns per task: which task a label column implies, and how each task's labels are read.

Single-label labels are names (integer ids map through ``data.label_names``). Multi-label labels are
sets of names: a JSON list, names joined by ``data.label_separator``, an empty cell (no label), or
several 0/1 columns (``data.label_columns``). Regression labels are numbers. Every error names the
file and row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import DataError


@dataclass
class LabelSet:
    """Label names in id order, with lookups both ways."""

    names: list[str]

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        if len(set(self.names)) != len(self.names):
            raise DataError(f"label names must be unique, got {self.names}")
        self.to_id = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))


def unknown_label(where: str, row: int, label, split: str, names) -> DataError:
    """A label train does not have (or, in train, one data.label_names lacks), naming the file and row."""
    what = "train lacks it" if split != "train" else "not in data.label_names"
    return DataError(f"{where}: row {row} has label {label!r}, which {what} (labels: {', '.join(names)})")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())


def _json_list(v) -> Optional[list]:
    if isinstance(v, (list, tuple, np.ndarray)):
        return list(v)
    if isinstance(v, str) and v.strip().startswith("["):
        try:
            parsed = json.loads(v)
        except ValueError:
            return None
        return parsed if isinstance(parsed, list) else None
    return None


def detect_task(task: str, cfg, df, where: str) -> tuple[str, Optional[str]]:
    """The task a config asks for; with `auto`, multi-label when the labels are lists (and a note
    that says so, printed with the run). Scores are never taken for classes silently."""
    if task != "auto":
        return task, None
    if cfg.label_columns:
        return "multi-label", f"task: multi-label (data.label_columns gives {len(cfg.label_columns)} 0/1 columns)"
    if cfg.label_column not in df.columns:
        return "single-label", None  # the reader names the missing column
    values = [v for v in df[cfg.label_column].tolist() if not _missing(v)]
    for v in values:
        if _json_list(v) is not None or (isinstance(v, str) and cfg.label_separator in v):
            return "multi-label", (f"task: multi-label, detected: the label column holds lists (e.g. {str(v)[:40]!r}); "
                                   "set task: multi-label to confirm, or task: single-label if "
                                   f"{cfg.label_separator!r} belongs to label names")
    scores = [v for v in values if _fractional(v)]
    if scores and not cfg.label_names:
        raise DataError(f"{where}: labels look like continuous scores (e.g. {scores[0]}); set task: regression "
                        "(or task: single-label to treat each value as a class)")
    return "single-label", None


def detect_task_in_chunks(cfg, frames, where: str) -> tuple[str, Optional[str]]:
    """:func:`detect_task` with `auto` over a label column read in chunks: lists anywhere make it multi-label,
    as they would over the whole column; scores refuse only when no chunk holds lists."""
    refusal = None
    for df in frames:
        try:
            name, note = detect_task("auto", cfg, df, where)
        except DataError as e:
            refusal = refusal or e
            continue
        if name != "single-label":
            return name, note
    if refusal is not None:
        raise refusal
    return "single-label", None


def _fractional(v) -> bool:
    """A number with a fractional part (3.8, "0.25"): a score rather than a class id."""
    if isinstance(v, bool):
        return False
    try:
        x = float(v)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(x)) and not x.is_integer()


def _flag(v, col: str, where: str, row: int) -> int:
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    s = str(v).strip().lower()
    if s in ("1", "1.0", "true"):
        return 1
    if s in ("0", "0.0", "false"):
        return 0
    raise DataError(f"{where}: row {row} has {v!r} in label column '{col}'; data.label_columns hold 0 or 1")


def _from_columns(df, columns: list[str], where: str) -> list[list[str]]:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{where}: no column '{missing[0]}' (columns: {', '.join(map(str, df.columns))}); "
                        "check data.label_columns")
    flags = [[_flag(v, c, where, i + 1) for i, v in enumerate(df[c].tolist())] for c in columns]
    return [[c for c, f in zip(columns, row) if f] for row in zip(*flags)]


def label_sets(df, cfg, names: Optional[list[str]], where: str) -> list[list[str]]:
    """Every row's label set as names, in the order given, duplicates dropped."""
    if cfg.label_columns:
        return _from_columns(df, list(cfg.label_columns), where)
    if cfg.label_column not in df.columns:
        raise DataError(f"{where}: no column '{cfg.label_column}' (columns: {', '.join(map(str, df.columns))}); "
                        "set data.label_column")
    out = []
    for i, v in enumerate(df[cfg.label_column].tolist()):
        items = _json_list(v)
        if items is None:
            if isinstance(v, str) and v.strip().startswith("["):
                raise DataError(f"{where}: row {i + 1} has {v[:60]!r}, which is not a valid JSON list of labels")
            items = [] if _missing(v) else [p for p in str(v).split(cfg.label_separator) if p.strip()]
        try:
            row = [normalise_label(x, names) for x in items]
        except KeyError as e:
            raise DataError(f"{where}: row {i + 1}: {e.args[0]}") from None
        out.append(list(dict.fromkeys(row)))
    return out


# Targets train in float32 and are standardised with their mean and spread: scores past 1e30 would overflow
# to infinity there (float32 ends at 3.4e38, and squares of the spread come first).
SCORE_LIMIT = 1e30


def scores(df, col: str, where: str) -> list[float]:
    """Every row's target as a finite number."""
    if col not in df.columns:
        raise DataError(f"{where}: no column '{col}' (columns: {', '.join(map(str, df.columns))}); "
                        "set data.label_column")
    out = []
    for i, v in enumerate(df[col].tolist()):
        if _missing(v):
            raise DataError(f"{where}: row {i + 1} has no '{col}' value (regression needs a score on every row)")
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = float("nan")
        if isinstance(v, bool) or not np.isfinite(x):
            raise DataError(f"{where}: row {i + 1} has {str(v)[:40]!r} in '{col}', which is not a finite number")
        if abs(x) > SCORE_LIMIT:
            raise DataError(f"{where}: row {i + 1} has {x:g} in '{col}', beyond the ±{SCORE_LIMIT:.0e} a score "
                            "may take; rescale the target")
        out.append(x)
    return out


def multi_hot(rows: list[list[str]], to_id: dict[str, int], where: str, split: str) -> np.ndarray:
    """Label sets as a 0/1 matrix; a label unknown to the label set names its row."""
    m = np.zeros((len(rows), len(to_id)), dtype=np.float32)
    for i, row in enumerate(rows):
        for name in row:
            if name not in to_id:
                raise unknown_label(where, i + 1, name, split, to_id)
            m[i, to_id[name]] = 1.0
    return m


def _raw_labels(df, col: str, where: str) -> list:
    if col not in df.columns:
        raise DataError(
            f"{where}: no column '{col}' (columns: {', '.join(map(str, df.columns))}); set data.label_column"
        )
    values = df[col].tolist()
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()):
            raise DataError(f"{where}: row {i + 1} has no '{col}' value")
    return values


def _is_number(v) -> bool:
    try:
        float(v)
        return not isinstance(v, bool)
    except (TypeError, ValueError):
        return False


def normalise_label(v, names: Optional[list[str]]) -> str:
    """Integer labels (or digit strings) map through label_names when given."""
    if isinstance(v, (bool, np.bool_)):
        v = int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        v = int(v)
    if names is not None:
        if isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()):
            i = int(v)
            if not 0 <= i < len(names):
                raise KeyError(f"label id {i} outside 0..{len(names) - 1} of data.label_names")
            return str(names[i])
        if _is_number(v) and str(v).strip() not in names:  # 0.5 with names: a score, not a class id
            raise KeyError(f"label {str(v).strip()} is not an integer label id (data.label_names maps ids "
                           f"0..{len(names) - 1} to names)")
    return str(v).strip() if isinstance(v, str) else str(v)


def raw_label(name: str, like, names: Optional[list[str]]):
    """`name` written the way the file wrote `like`, another label of the same column: its integer id
    (an int, or a digit string where `like` is a string) when `like` is one and data.label_names maps ids."""
    if isinstance(like, (float, np.floating)) and float(like).is_integer():
        like = int(like)
    is_id = (isinstance(like, (int, np.integer)) and not isinstance(like, (bool, np.bool_))) or (
        isinstance(like, str) and like.strip().lstrip("-").isdigit())
    if names is None and is_id and not isinstance(like, str) and name.lstrip("-").isdigit():
        return int(name)  # integer labels without names stay integers
    if names is None or not is_id or name not in names:
        return name
    return str(names.index(name)) if isinstance(like, str) else names.index(name)


def written_set(names: list[str], like, cfg, ids: Optional[list[str]]):
    """A label set written the way the file wrote `like`, another row's set in the same column: a JSON
    list (a string, or a list where the file holds lists), else names joined by data.label_separator."""
    items = _json_list(like)
    first = items[0] if items else (None if _missing(like) else str(like).split(cfg.label_separator)[0])
    raw = [raw_label(n, first, ids) for n in names]
    if items is None:
        return cfg.label_separator.join(str(x) for x in raw)
    return json.dumps(raw) if isinstance(like, str) else raw


def label_names(df, col: str, names: Optional[list[str]], where: str) -> list[str]:
    """Every row's label as a name (integer ids map through `names`); errors name the row."""
    out = []
    for i, v in enumerate(_raw_labels(df, col, where)):
        try:
            out.append(normalise_label(v, names))
        except KeyError as e:
            raise DataError(f"{where}: row {i + 1}: {e.args[0]}") from None
    return out
