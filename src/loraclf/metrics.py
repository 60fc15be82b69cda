"""Metrics as pure functions: (y_true, probs, label names) -> plain dict (JSON-ready)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Metric:
    """One headline metric: its metrics.json key, how people write it, which way is better, and how
    many decimals it is shown with. Every table, plot, card and report reads this one list."""

    key: str
    name: str
    direction: str  # "max": larger is better; "min": smaller is better
    digits: int = 4

    def format(self, value) -> str:
        return "-" if value is None else f"{value:.{self.digits}f}"


METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("accuracy", "accuracy", "max"),
    Metric("macro_f1", "macro-F1", "max"),
    Metric("weighted_f1", "weighted-F1", "max"),
    Metric("macro_recall", "macro recall", "max"),
    Metric("roc_auc", "ROC-AUC", "max"),
    Metric("ece", "ECE", "min"),
    Metric("loss", "loss", "min"),
)}
# The metrics a split is summarised by, in display order (loss is logged, not headlined).
HEADLINE = ("accuracy", "macro_f1", "weighted_f1", "macro_recall", "roc_auc", "ece")
# Metrics usable for model selection, and whether larger is better.
METRIC_DIRECTIONS = {k: m.direction for k, m in METRICS.items()}


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Equal-width confidence bins: each bin's range, count, accuracy and mean confidence."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = bins == b
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(sel.sum()),
                    "accuracy": float(correct[sel].mean()) if sel.any() else None,
                    "confidence": float(confidence[sel].mean()) if sel.any() else None})
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE: over the reliability bins, |accuracy - confidence| weighted by each bin's share of texts."""
    if len(confidence) == 0:
        return float("nan")
    n = len(confidence)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(confidence, correct, n_bins) if b["count"]))


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary ROC-AUC, or macro one-vs-rest over the classes present in y_true."""
    from sklearn.metrics import roc_auc_score

    k = probs.shape[1]
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if k == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    scores = []
    for c in present:
        scores.append(roc_auc_score((y_true == c).astype(int), probs[:, c]))
    return float(np.mean(scores))


def compute_metrics(y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str],
                    loss: float | None = None) -> dict:
    """Everything the run reports for one split."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, recall_score

    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(labels)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    correct = (pred == y).astype(np.float64)
    ids = list(range(k))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=ids, zero_division=0)
    out = {
        "n": int(len(y)),
        "accuracy": float(correct.mean()) if len(y) else float("nan"),
        "macro_f1": float(f1_score(y, pred, labels=ids, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=ids, average="weighted", zero_division=0)),
        "macro_recall": float(recall_score(y, pred, labels=ids, average="macro", zero_division=0)),
        "roc_auc": roc_auc(y, probs),
        "ece": expected_calibration_error(conf, correct),
        "per_class": {
            labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i in ids
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=ids).tolist(),
        "confidence": {
            "mean": float(conf.mean()),
            "mean_correct": float(conf[correct == 1].mean()) if correct.any() else None,
            "mean_wrong": float(conf[correct == 0].mean()) if (correct == 0).any() else None,
            "share_above_0.9": float((conf > 0.9).mean()),
            "wrong_above_0.9": int(((conf > 0.9) & (correct == 0)).sum()),
        },
        "predicted_distribution": {labels[i]: int((pred == i).sum()) for i in ids},
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


def is_better(metric: str, new: float, best: float | None) -> bool:
    if new is None or (isinstance(new, float) and np.isnan(new)):
        return False  # e.g. ROC-AUC of a one-class split: not a measurement, never "better"
    if best is None:
        return True
    return new > best if METRIC_DIRECTIONS[metric] == "max" else new < best
