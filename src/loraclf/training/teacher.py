"""Soft targets from a teacher's out-of-fold predictions (``train.teacher``).

A cross-validation run over the same data files (``train.cv_folds``, or the one ``loraclf audit`` trains)
holds, for every labelled row, the probabilities of a model that never trained on it
(predictions/oof.csv, with each row's file and row number). With a teacher, each train row's target is
(1 - w) x its label + w x those probabilities: a label the other folds doubt weighs less, without anyone
deciding it is wrong, a softer act than relabelling or dropping it (``loraclf audit --fix``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import Split
from ..errors import ConfigError, DataError
from ..schema import RunDir
from ..tasks import Task, task_of


def teacher_probabilities(run: str, task: Task) -> tuple[dict, np.ndarray]:
    """{(resolved file, row): index} and the teacher's out-of-fold probabilities, in `task`'s label order."""
    if type(task).soft_targets is Task.soft_targets:  # the task has no labels to blend
        task.soft_targets(np.zeros(0), np.zeros((0, 0)), 0.0)
    rd = RunDir(run)
    metrics = rd.read_metrics() if rd.finished else {}
    table = rd.read_predictions("oof") if "cv" in metrics else None
    if table is None:
        raise ConfigError(f"train.teacher: {rd.path} is not a finished cross-validation run (no predictions/oof.csv); "
                          "train one with train.cv_folds, or give loraclf audit's run")
    teacher = task_of(metrics)
    if type(teacher) is not type(task) or sorted(teacher.labels) != sorted(task.labels):
        raise ConfigError(f"train.teacher: {rd.path} learned a {teacher.name} task over {teacher.labels}; this run "
                          f"learns a {task.name} task over {task.labels}")
    probs = teacher.parse_predictions(table, rd.predictions_path("oof")).outputs
    probs = probs[:, [teacher.labels.index(n) for n in task.labels]]
    where = {(str(Path(s).resolve()), int(r)): i for i, (s, r) in enumerate(zip(table["source"], table["row"]))}
    return where, probs


def _keys(split: Split) -> list[tuple[str, int]]:
    """Each row of `split` as the teacher's predictions name it: (resolved file, row in it)."""
    source = str(Path(split.source).resolve())
    rows = split.rows if split.rows is not None else np.arange(len(split))
    return [(source, int(r)) for r in rows]


def teacher_rows(run: str, where: dict, train: Split) -> np.ndarray:
    """Each train row's index among the teacher's predictions; refused when one has none."""
    keys = _keys(train)
    idx = np.array([where.get(k, -1) for k in keys], dtype=np.int64)
    if (idx < 0).any():
        first = keys[int(np.flatnonzero(idx < 0)[0])][1]
        raise DataError(f"train.teacher: {int((idx < 0).sum()):,} of the {len(idx):,} train rows of {train.source} "
                        f"have no out-of-fold prediction in {run} (the first: row {first + 1}); the teacher must be a "
                        "cross-validation run over the same files")
    return idx


def seen_by_teacher(where: dict, split: Split) -> int:
    """How many rows of `split` the teacher's fold models trained on (all but the fold that held each out)."""
    return sum(k in where for k in _keys(split))


def soft_targets(run: str, weight: float, task: Task, train: Split, teacher: tuple[dict, np.ndarray]
                 ) -> tuple[np.ndarray, str]:
    """Each train row's target blended with the `teacher`'s out-of-fold probabilities for it (as
    :func:`teacher_probabilities` reads them from `run`), and a line that says how much it doubts the labels."""
    where, probs = teacher
    theirs = probs[teacher_rows(run, where, train)]
    targets = task.soft_targets(train.labels, theirs, weight)
    gold = task.soft_targets(train.labels, theirs, 0.0)
    doubted = float(np.mean(np.abs(theirs - gold).max(axis=1) > 0.5))
    note = (f"train.teacher: targets blend each label with {run}'s out-of-fold probabilities (weight {weight:g}); "
            f"it doubts {doubted:.1%} of the train labels (more than 0.5 away from them)")
    return targets, note
