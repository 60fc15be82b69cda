"""A task loraclf does not ship, written as a user would: single-label classification that also scores
top-2 accuracy (is the right label among the two most probable?), reported, selectable and carded.

Everything it adds lives in this file; tests/extension/test_extension.py registers it with one line.
"""

import numpy as np

from loraclf.evaluation.metrics import HEADLINE, Metric
from loraclf.tasks import SingleLabel


def top2_accuracy(gold: np.ndarray, probs: np.ndarray) -> float:
    top2 = np.argsort(-probs, axis=1)[:, :2]
    return float((top2 == np.asarray(gold)[:, None]).any(axis=1).mean()) if len(gold) else float("nan")


class TopTwo(SingleLabel):
    name = "single-label-top2"
    headline = (*HEADLINE, "top2_accuracy")
    selectable = (*SingleLabel.selectable, "top2_accuracy")
    metric_rows = (Metric("top2_accuracy", "top-2 accuracy", "max", hub=("top_k_accuracy", {"k": 2})),)
    row_metrics = ("accuracy", "top2_accuracy")

    def evaluate(self, logits, gold):
        metrics, probs = super().evaluate(logits, gold)
        metrics["top2_accuracy"] = top2_accuracy(gold, probs)
        return metrics, probs

    def findings(self, metrics, analysis, split):
        m = metrics[split]
        return super().findings(metrics, analysis, split) + [
            f"The right label is among the two most probable for {m['top2_accuracy']:.1%} of {split} texts "
            f"(accuracy {m['accuracy']:.1%})."]
