"""What a model's outputs mean: the loss they train with, how logits become outputs (probabilities
or scores), which metrics score them, what is fitted on validation after training, and how
predictions are written.

A head (models/heads.py) decides how inputs are encoded and where logits come from; its task decides
everything after the logits. Three tasks exist:

- :class:`SingleLabel`: one class per text; softmax, cross-entropy, optionally a temperature fitted
  on validation after training (calibration).
- :class:`MultiLabel`: any number of labels per text (none is valid); a sigmoid per label, binary
  cross-entropy, decision thresholds tuned on validation after training.
- :class:`Regression`: one continuous score; MSE or Huber on a normalised target, mapped back.

The loop, evaluation, the run directory, prediction and serving only call these methods. What a
task fits after training (temperature, thresholds, target scale) is its *state*: it is stored in the
artifact's ``loraclf.json`` and restored by :func:`make_task`.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .base import LABEL_JOIN, Task, check_finite, sigmoid, softmax
from .multilabel import MultiLabel
from .regression import Regression
from .single import SingleLabel, class_weights, fit_temperature, fit_temperature_bias, nll

TASKS = {t.name: t for t in (SingleLabel, MultiLabel, Regression)}
HEADLINES = {name: t.headline for name, t in TASKS.items()}

__all__ = ["LABEL_JOIN", "HEADLINES", "TASKS", "MultiLabel", "Regression", "SingleLabel", "Task", "check_finite",
           "class_weights", "fit_temperature", "fit_temperature_bias", "make_task", "nll", "sigmoid", "softmax"]


def make_task(name: str, labels: Sequence[str], state: Optional[dict] = None) -> Task:
    """A task by name, with the state its artifact stored (loraclf.json's ``task_state``)."""
    return TASKS[name](labels, state)
