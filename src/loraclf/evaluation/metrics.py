"""Metrics as pure functions: (y_true, probs, label names) -> plain dict (JSON-ready)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Metric:
    """One metric: its metrics.json key, how people write it, which way is better, how many decimals it
    is shown with, and how the Hub's model-index names it (a Hugging Face `evaluate` metric id and its
    arguments). Every table, plot, card and report reads this one list."""

    key: str
    name: str
    direction: str  # "max": larger is better; "min": smaller is better
    digits: int = 4
    hub: Optional[tuple[str, Optional[dict]]] = None  # (metric type, arguments); None: the key itself

    def format(self, value) -> str:
        return "-" if value is None else f"{value:.{self.digits}f}"


METRICS: dict[str, Metric] = {}
# Metrics usable for model selection, and whether larger is better.
METRIC_DIRECTIONS: dict[str, str] = {}


def register_metric(m: Metric) -> Metric:
    """Add a metric row (a task's own metrics are registered with the task)."""
    METRICS[m.key] = m
    METRIC_DIRECTIONS[m.key] = m.direction
    return m


for _m in (
    Metric("accuracy", "accuracy", "max", hub=("accuracy", None)),
    Metric("macro_f1", "macro-F1", "max", hub=("f1", {"average": "macro"})),
    Metric("weighted_f1", "weighted-F1", "max", hub=("f1", {"average": "weighted"})),
    Metric("macro_recall", "macro recall", "max", hub=("recall", {"average": "macro"})),
    Metric("roc_auc", "ROC-AUC", "max", hub=("roc_auc", None)),
    Metric("ece", "ECE", "min", hub=("ece", None)),
    Metric("loss", "loss", "min"),
    # multi-label
    Metric("micro_f1", "micro-F1", "max", hub=("f1", {"average": "micro"})),
    Metric("samples_f1", "samples-F1", "max", hub=("f1", {"average": "samples"})),
    Metric("subset_accuracy", "subset accuracy", "max", hub=("exact_match", None)),
    Metric("hamming_loss", "Hamming loss", "min", hub=("hamming_loss", None)),
    Metric("average_precision", "AP", "max"),
    # regression (RMSE is `evaluate`'s "mse" with squared=False)
    Metric("rmse", "RMSE", "min", hub=("mse", {"squared": False})),
    Metric("mae", "MAE", "min", hub=("mae", None)),
    Metric("r2", "R²", "max", hub=("r_squared", None)),
    Metric("pearson", "Pearson r", "max", hub=("pearsonr", None)),
    Metric("spearman", "Spearman ρ", "max", hub=("spearmanr", None)),
):
    register_metric(_m)


def metric(key: str) -> Metric:
    """The display row of a metric key (an unknown key is shown by its name, larger is better)."""
    return METRICS.get(key) or Metric(key, key, "max")


# The metrics a split is summarised by, in display order (loss is logged, not headlined), per task.
HEADLINE = ("accuracy", "macro_f1", "weighted_f1", "macro_recall", "roc_auc", "ece")
MULTI_LABEL_HEADLINE = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "roc_auc")
REGRESSION_HEADLINE = ("rmse", "mae", "r2", "pearson", "spearman")


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


# ---------------------------------------------------------------- ranking: ROC and precision-recall
# One implementation, scikit-learn's, for the metrics, the error analysis and the curves in the report.


def ranking_scores(pos: np.ndarray, score: np.ndarray) -> tuple[Optional[float], Optional[float]]:
    """(ROC-AUC, average precision) of one class or label; None where the split cannot define them
    (ROC-AUC needs both classes, average precision a positive)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    pos = np.asarray(pos).astype(bool)
    if pos.sum() == 0:
        return None, None
    ap = float(average_precision_score(pos, score))
    return (float(roc_auc_score(pos, score)) if pos.sum() < len(pos) else None), ap


def roc_points(pos: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates at every distinct threshold, and the area under them. `pos`
    needs both classes."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(pos, score, drop_intermediate=False)
    return fpr, tpr, ranking_scores(pos, score)[0]


def pr_points(pos: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision and recall at every distinct threshold, by increasing recall from (0, 1), and the
    average precision. `pos` needs a positive."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(pos, score)
    return precision[::-1], recall[::-1], ranking_scores(pos, score)[1]


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary ROC-AUC, or macro one-vs-rest over the classes present in y_true."""
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return ranking_scores(y_true == 1, probs[:, 1])[0]
    return float(np.mean([ranking_scores(y_true == c, probs[:, c])[0] for c in present]))


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


# ------------------------------------------------------------------------------------ multi-label


def samples_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    """Mean over texts of 2|gold ∩ predicted| / (|gold| + |predicted|); a text with no gold label and
    no predicted label is right (1), not undefined."""
    inter = (gold * pred).sum(axis=1)
    size = gold.sum(axis=1) + pred.sum(axis=1)
    return float(np.where(size > 0, 2 * inter / np.maximum(size, 1), 1.0).mean()) if len(gold) else float("nan")


def _ratio(num, den):
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def label_counts(gold: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives and false negatives per label of 0/1 (n, k) arrays. Counted
    here rather than by scikit-learn, which reads a one-label (n, 1) array as a binary column and
    would score the *absence* of the label too."""
    gold, pred = np.asarray(gold) > 0, np.asarray(pred) > 0
    return (gold & pred).sum(axis=0), (~gold & pred).sum(axis=0), (gold & ~pred).sum(axis=0)


def multilabel_decisions(gold: np.ndarray, pred: np.ndarray) -> dict:
    """The threshold-dependent metrics of 0/1 (n, k) gold and predictions."""
    tp, fp, fn = label_counts(gold, pred)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    support = tp + fn
    return {
        "micro_f1": float(_ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "macro_f1": float(f1.mean()) if len(f1) else float("nan"),
        "weighted_f1": float(_ratio((f1 * support).sum(), support.sum())),
        "samples_f1": samples_f1(gold, pred),
        "subset_accuracy": float((gold == pred).all(axis=1).mean()) if len(gold) else float("nan"),
        "hamming_loss": float((gold != pred).mean()) if len(gold) else float("nan"),
    }


def _mean_defined(values) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def multilabel_metrics(gold: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, labels: Sequence[str],
                       loss: Optional[float] = None) -> dict:
    """Everything a multi-label run reports for one split: decisions at the tuned thresholds (and at
    0.5, for comparison), threshold-free ranking scores, and per-label figures."""
    gold = np.asarray(gold, dtype=np.int64)
    pred = (probs >= thresholds[None, :]).astype(np.int64)
    tp, fp, fn = label_counts(gold, pred)
    p, r, f, s = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn), tp + fn
    ranking = [ranking_scores(gold[:, j], probs[:, j]) for j in range(len(labels))]
    out = {"n": int(len(gold)), **multilabel_decisions(gold, pred),
           "roc_auc": _mean_defined(a for a, _ in ranking),
           "average_precision": _mean_defined(ap for _, ap in ranking),
           "label_cardinality": float(gold.sum(axis=1).mean()) if len(gold) else float("nan"),
           "predicted_cardinality": float(pred.sum(axis=1).mean()) if len(gold) else float("nan"),
           "empty_gold": int((gold.sum(axis=1) == 0).sum()),
           "empty_predicted": int((pred.sum(axis=1) == 0).sum()),
           "per_label": {name: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                                "support": int(s[j]), "roc_auc": ranking[j][0], "average_precision": ranking[j][1],
                                "threshold": float(thresholds[j]), "predicted": int(pred[:, j].sum())}
                         for j, name in enumerate(labels)},
           "at_0.5": multilabel_decisions(gold, (probs >= 0.5).astype(np.int64))}
    if loss is not None:
        out["loss"] = float(loss)
    return out


# ------------------------------------------------------------------------------------ regression


def _correlation(fn, a: np.ndarray, b: np.ndarray) -> Optional[float]:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None  # undefined for a constant column: not a number to select a model by
    return float(fn(a, b)[0])


def regression_metrics(gold: np.ndarray, pred: np.ndarray) -> dict:
    """RMSE, MAE, R², Pearson and Spearman of predicted against gold scores (in target units)."""
    from scipy.stats import pearsonr, spearmanr

    gold, pred = np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if len(gold) == 0:
        return {"n": 0, **{k: None for k in ("rmse", "mae", "r2", "pearson", "spearman", "loss")}}
    err = pred - gold
    mse = float((err ** 2).mean())
    var = float(gold.var())
    return {"n": int(len(gold)), "loss": mse, "rmse": math.sqrt(mse), "mae": float(np.abs(err).mean()),
            "r2": 1.0 - mse / var if var > 0 else None,
            "pearson": _correlation(pearsonr, gold, pred), "spearman": _correlation(spearmanr, gold, pred),
            "gold_mean": float(gold.mean()), "gold_std": float(gold.std()),
            "pred_mean": float(pred.mean()), "pred_std": float(pred.std())}
