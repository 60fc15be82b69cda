"""What a model's outputs mean: the loss they train with, how logits become probabilities, which
metrics score them and how predictions are written.

A head (models/heads.py) decides how inputs are encoded and where logits come from; its task decides
everything after the logits. Single-label classification is the task today. Multi-label
(sigmoid outputs, per-label thresholds) and regression (one output, MSE, no classes) are further
subclasses of :class:`Task`: the loop, evaluation and the run directory only call these methods.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import ConfigError, TrainingDiverged
from .metrics import HEADLINE, compute_metrics


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Task:
    """The protocol every task implements."""

    name: str = ""
    headline: Sequence[str] = ()  # metric keys a split is summarised by (history records, artifact meta)

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)

    def check_config(self, tcfg) -> None:
        """Refuse train options that do not fit this task or its labels, before anything is written."""

    def loss_function(self, tcfg, train_labels: np.ndarray, device) -> torch.nn.Module:
        """The training loss over (logits, labels) batches, built once per run."""
        raise NotImplementedError

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def evaluate(self, logits: np.ndarray, gold: np.ndarray) -> tuple[dict, np.ndarray]:
        """(metrics, probabilities) of one split."""
        raise NotImplementedError

    def predicted(self, probs: np.ndarray) -> list[str]:
        """The answer per row, as users read it."""
        raise NotImplementedError

    def answer_columns(self) -> list[str]:
        """Columns `loraclf predict` writes after the text."""
        raise NotImplementedError

    def answers(self, probs: np.ndarray) -> list[list]:
        """One row of those columns per text."""
        raise NotImplementedError

    def write_predictions(self, path: Path, texts: Sequence[str], gold: np.ndarray, probs: np.ndarray) -> None:
        """predictions/<split>.csv: text, gold, predicted, whether it is right, every output column."""
        raise NotImplementedError


class SingleLabel(Task):
    """One class per text: softmax over the classes, cross-entropy, classification metrics."""

    name = "single-label"
    headline = HEADLINE

    def check_config(self, tcfg) -> None:
        w = tcfg.class_weights
        if isinstance(w, list) and len(w) != len(self.labels):
            raise ConfigError(f"train.class_weights has {len(w)} values but there are {len(self.labels)} labels "
                              f"({', '.join(self.labels)})")

    def loss_function(self, tcfg, train_labels: np.ndarray, device) -> torch.nn.Module:
        weights = class_weights(tcfg.class_weights, train_labels, len(self.labels))
        return torch.nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None,
                                         label_smoothing=tcfg.label_smoothing)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits)

    def evaluate(self, logits: np.ndarray, gold: np.ndarray) -> tuple[dict, np.ndarray]:
        check_finite(logits)
        probs = self.probabilities(logits)
        loss = float(-np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-12, None)).mean())
        return compute_metrics(gold, probs, self.labels, loss=loss), probs

    def predicted(self, probs: np.ndarray) -> list[str]:
        return [self.labels[i] for i in probs.argmax(axis=1)]

    def answer_columns(self) -> list[str]:
        return ["label", "confidence"] + [f"p_{n}" for n in self.labels]

    def answers(self, probs: np.ndarray) -> list[list]:
        pred = probs.argmax(axis=1)
        return [[self.labels[p], f"{row[p]:.6f}"] + [f"{x:.6f}" for x in row] for p, row in zip(pred, probs)]

    def write_predictions(self, path: Path, texts: Sequence[str], gold: np.ndarray, probs: np.ndarray) -> None:
        pred = probs.argmax(axis=1)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "gold", "predicted", "correct"] + [f"p_{n}" for n in self.labels])
            for i, text in enumerate(texts):
                w.writerow([text, self.labels[gold[i]], self.labels[pred[i]], int(pred[i] == gold[i])]
                           + [f"{p:.6f}" for p in probs[i]])


def class_weights(spec, labels: np.ndarray, k: int) -> Optional[torch.Tensor]:
    """train.class_weights as a tensor: None, 'balanced' (scikit-learn's inverse frequency) or a list
    (its length is checked by :meth:`SingleLabel.check_config`)."""
    if spec is None:
        return None
    if spec == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)
        w = np.ones(k, dtype=np.float64)  # a class absent from train keeps weight 1
        w[present] = compute_class_weight("balanced", classes=present, y=labels) * len(present) / k
        return torch.tensor(w, dtype=torch.float32)
    return torch.tensor([float(x) for x in spec], dtype=torch.float32)


def check_finite(logits: np.ndarray) -> None:
    if not np.isfinite(logits).all():
        raise TrainingDiverged("the model's outputs are not finite numbers (NaN or inf): training diverged; "
                               "lower train.lr (or set train.max_grad_norm)")


TASKS = {SingleLabel.name: SingleLabel}


def make_task(name: str, labels: Sequence[str]) -> Task:
    return TASKS[name](labels)
