"""The Task protocol and what every task shares."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError, TrainingDiverged

LABEL_JOIN = ";"  # how a label set is written in predictions files and `loraclf predict` output

# Options that belong to some tasks: (section, field) -> (the tasks it applies to, values any task accepts).
# Setting one for another task is refused rather than silently ignored.
TASK_OPTIONS = {
    ("train", "thresholds"): ({"multi-label"}, ("per-label",)),
    ("train", "threshold_objective"): ({"multi-label"}, ("macro_f1",)),
    ("train", "regression_loss"): ({"regression"}, ("mse",)),
    ("train", "huber_delta"): ({"regression"}, (1.0,)),
    ("train", "normalize_target"): ({"regression"}, (True,)),
    ("train", "calibrate"): ({"single-label"}, ("auto", "none")),  # temperature and bias: single-label only
    ("data", "label_names"): ({"single-label", "multi-label"}, (None,)),
}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # no overflow warnings for large |logits|


class Task:
    """The protocol every task implements."""

    name: str = ""
    headline: Sequence[str] = ()  # metric keys a split is summarised by (history records, artifact meta)
    selectable: Sequence[str] = ()  # metric keys usable as train.metric
    default_metric: str = ""  # train.metric: auto
    problem_type: str = ""  # transformers' config.problem_type: plain transformers reloads the model the same way

    def __init__(self, labels: Sequence[str], state: Optional[dict] = None):
        self.labels = list(labels)

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    def state(self) -> dict:
        """What the task fitted (temperature, thresholds, target scale), for loraclf.json."""
        return {}

    def output_affine(self) -> Optional[tuple[float, float]]:
        """(scale, shift) the task applies to raw logits before its activation, when it applies one
        (a temperature, a target scale): an export folds it into the model's last layer."""
        return None

    def folded_state(self) -> dict:
        """The state once :meth:`output_affine` is folded into the weights."""
        return self.state()

    def check_config(self, cfg) -> None:
        """Refuse options that do not fit this task or its labels, before anything is written."""
        t = cfg.train
        if t.metric != "auto" and t.metric not in self.selectable:
            raise ConfigError(f"train.metric={t.metric} does not score a {self.name} task; use one of "
                              f"{', '.join(self.selectable)}")
        for (section, field), (tasks, neutral) in TASK_OPTIONS.items():
            value = getattr(getattr(cfg, section), field)
            if self.name not in tasks and value not in neutral:
                raise ConfigError(f"{section}.{field}={value} applies to {' and '.join(sorted(tasks))} tasks; "
                                  f"this run is {self.name}")
        if cfg.model.head != "classifier" and self.name != "single-label":
            raise ConfigError(f"model.head={cfg.model.head} scores one label word per class: it needs task "
                              f"single-label, not {self.name}; use model.head=classifier")

    def loss_function(self, tcfg, train_labels: np.ndarray, device) -> torch.nn.Module:
        """The training loss over (logits, labels) batches, built once per run."""
        raise NotImplementedError

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The task's outputs: class probabilities, label probabilities, or scores."""
        raise NotImplementedError

    def evaluate(self, logits: np.ndarray, gold: np.ndarray) -> tuple[dict, np.ndarray]:
        """(metrics, outputs) of one split."""
        raise NotImplementedError

    def fit(self, tcfg, logits: np.ndarray, gold: np.ndarray) -> Optional[dict]:
        """After training, fit what the task chooses on validation (never on test); returns what
        metrics.json records about it (None: nothing to fit)."""
        return None

    def predicted(self, outputs: np.ndarray) -> list[str]:
        """The answer per row, as users read it."""
        raise NotImplementedError

    def answer_columns(self) -> list[str]:
        """Columns `loraclf predict` writes after the text."""
        raise NotImplementedError

    def answers(self, outputs: np.ndarray) -> list[list]:
        """One row of those columns per text."""
        raise NotImplementedError

    def values(self, outputs: np.ndarray) -> list:
        """The answer per row as Python values (`Classifier.predict`): a label name, a list of names, a float."""
        return self.predicted(outputs)

    def records(self, outputs: np.ndarray) -> list[dict]:
        """One JSON object per text, as the HTTP server answers."""
        raise NotImplementedError

    def gold_names(self, gold: np.ndarray) -> list[str]:
        """The gold answer per row, written as :meth:`predicted` writes answers."""
        raise NotImplementedError

    def correct(self, gold: np.ndarray, outputs: np.ndarray) -> list:
        """The predictions file's last fixed column: right (1/0) or, for scores, the signed error."""
        raise NotImplementedError

    def prediction_columns(self) -> list[str]:
        return ["correct"] + [f"p_{n}" for n in self.labels]

    def output_cells(self, outputs: np.ndarray) -> list[list[str]]:
        return [[f"{p:.6f}" for p in row] for row in outputs]

    def write_predictions(self, path: Path, texts: Sequence[str], gold: np.ndarray, outputs: np.ndarray,
                          pairs: Optional[Sequence[str]] = None) -> None:
        """predictions/<split>.csv: text (and its pair), gold, predicted, right or error, every output."""
        cells = self.output_cells(outputs)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text"] + (["text_pair"] if pairs is not None else []) + ["gold", "predicted"]
                       + self.prediction_columns())
            for i, (g, p, c) in enumerate(zip(self.gold_names(gold), self.predicted(outputs),
                                              self.correct(gold, outputs))):
                w.writerow([texts[i]] + ([pairs[i]] if pairs is not None else []) + [g, p, c] + cells[i])


def refuse_single_label_options(cfg, task: str) -> None:
    t = cfg.train
    if t.class_weights is not None:
        raise ConfigError(f"train.class_weights weighs classes of a single-label task; a {task} task "
                          + ("uses train.pos_weight" if task == "multi-label" else "has no classes"))
    if t.label_smoothing:
        raise ConfigError(f"train.label_smoothing applies to single-label cross-entropy, not to a {task} task")


def check_finite(logits: np.ndarray) -> None:
    if not np.isfinite(logits).all():
        raise TrainingDiverged("the model's outputs are not finite numbers (NaN or inf): training diverged; "
                               "lower train.lr (or set train.max_grad_norm)")
