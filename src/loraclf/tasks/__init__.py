"""What a model's outputs mean, from the label column to the report.

A head (models/heads.py) decides how inputs are encoded and where logits come from; its task decides
everything after the logits, and everything a reader of the run needs to know about them. Three tasks
are built in:

- :class:`SingleLabel`: one class per text; softmax, cross-entropy, optionally a temperature fitted
  on validation after training (calibration).
- :class:`MultiLabel`: any number of labels per text (none is valid); a sigmoid per label, binary
  cross-entropy, decision thresholds tuned on validation after training.
- :class:`Regression`: one continuous score; MSE or Huber on a normalised target, mapped back.

The loop, evaluation, the run directory, the report, the model card, comparisons, prediction and
serving only call Task methods or read its declared attributes. What a task fits after training
(temperature, thresholds, target scale) is its *state*: it is stored in the artifact's
``loraclf.json`` and restored by :func:`make_task`. A new task is one module and one
:func:`register_task` line.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import LoraclfError
from .base import LABEL_JOIN, TASKS, Predictions, Task, check_finite, sigmoid, softmax
from .multilabel import MultiLabel
from .regression import Regression
from .single import SingleLabel, class_weights, fit_temperature, fit_temperature_bias, nll

# Runs written before tasks existed have no "task" in metrics.json or loraclf.json: they are single-label.
DEFAULT_TASK = SingleLabel.name


def register_task(cls: type[Task]) -> type[Task]:
    """Make `cls` a choice of the config's `task`, with the metrics it declares."""
    from ..evaluation.metrics import register_metric

    for row in cls.metric_rows:
        register_metric(row)
    TASKS[cls.name] = cls
    return cls


for _cls in (SingleLabel, MultiLabel, Regression):
    register_task(_cls)


def task_class(name: Optional[str]) -> type[Task]:
    """The task class a run or artifact names (a missing name: a run from before tasks, single-label)."""
    name = name or DEFAULT_TASK
    if name not in TASKS:
        raise LoraclfError(f"task {name!r} is not known to this loraclf (tasks: {', '.join(TASKS)})")
    return TASKS[name]


def make_task(name: Optional[str], labels: Sequence[str], state: Optional[dict] = None) -> Task:
    """A task by name, with the state its artifact stored (loraclf.json's ``task_state``)."""
    return task_class(name)(labels, state)


def task_of(metrics: dict) -> Task:
    """The task of a finished run, from its metrics.json (labels and what was fitted)."""
    return make_task(metrics.get("task"), metrics.get("labels") or [])


__all__ = ["DEFAULT_TASK", "LABEL_JOIN", "TASKS", "MultiLabel", "Predictions", "Regression", "SingleLabel", "Task",
           "check_finite", "class_weights", "fit_temperature", "fit_temperature_bias", "make_task", "nll",
           "register_task", "sigmoid", "softmax", "task_class", "task_of"]
