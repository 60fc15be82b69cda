"""Multi-label classification: any number of labels per text, none included.

One sigmoid per label, binary cross-entropy (optionally with positive-class weights for rare labels),
and a decision threshold per label (or one for all) tuned on validation after training. Gold labels
are a 0/1 matrix (texts x labels); outputs are per-label probabilities.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..metrics import MULTI_LABEL_HEADLINE, multilabel_metrics
from .base import LABEL_JOIN, Task, check_finite, refuse_single_label_options, sigmoid

POS_WEIGHT_CAP = 100.0  # 'balanced': a label seen 3 times in 40k texts must not dominate the loss
THRESHOLD_GRID = np.round(np.linspace(0.01, 0.99, 99), 2)


class MultiLabel(Task):
    name = "multi-label"
    headline = MULTI_LABEL_HEADLINE
    selectable = ("average_precision", "macro_f1", "micro_f1", "weighted_f1", "samples_f1", "subset_accuracy",
                  "hamming_loss", "roc_auc", "loss")
    # Threshold-free: model selection during training does not depend on thresholds tuned afterwards.
    default_metric = "average_precision"
    problem_type = "multi_label_classification"

    def __init__(self, labels: Sequence[str], state: Optional[dict] = None):
        super().__init__(labels)
        saved = (state or {}).get("thresholds")
        self.thresholds = (np.array([saved[n] for n in self.labels], dtype=np.float64) if saved
                           else np.full(len(self.labels), 0.5))

    def state(self) -> dict:
        return {"thresholds": {n: float(t) for n, t in zip(self.labels, self.thresholds)}}

    def set_thresholds(self, values: dict) -> None:
        """Thresholds from a user's file (`loraclf predict --thresholds`): one per label, each in (0, 1)."""
        if not isinstance(values, dict) or set(values) != set(self.labels):
            got = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise ConfigError(f"the thresholds must name exactly the model's labels ({', '.join(self.labels)}); "
                              f"got {got}")
        bad = [n for n, v in values.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1]
        if bad:
            raise ConfigError(f"threshold of {bad[0]!r} must be a number between 0 and 1 (exclusive)")
        self.thresholds = np.array([float(values[n]) for n in self.labels])

    def check_config(self, cfg) -> None:
        super().check_config(cfg)
        refuse_single_label_options(cfg, self.name)
        w = cfg.train.pos_weight
        if isinstance(w, list) and len(w) != len(self.labels):
            raise ConfigError(f"train.pos_weight has {len(w)} values but there are {len(self.labels)} labels")

    def loss_function(self, tcfg, train_labels: np.ndarray, device) -> torch.nn.Module:
        w = positive_weights(tcfg.pos_weight, train_labels)
        loss = torch.nn.BCEWithLogitsLoss(pos_weight=w.to(device) if w is not None else None)
        return lambda logits, labels: loss(logits, labels.float())

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits.astype(np.float64))

    def evaluate(self, logits: np.ndarray, gold: np.ndarray) -> tuple[dict, np.ndarray]:
        check_finite(logits)
        probs = self.probabilities(logits)
        loss = float(torch.nn.functional.binary_cross_entropy_with_logits(
            torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(gold, dtype=torch.float64))) \
            if len(gold) else float("nan")
        return multilabel_metrics(gold, probs, self.thresholds, self.labels, loss=loss), probs

    def fit(self, tcfg, logits: np.ndarray, gold: np.ndarray) -> Optional[dict]:
        probs = self.probabilities(logits)
        gold = np.asarray(gold, dtype=np.int64)
        if tcfg.thresholds == "fixed" or len(gold) == 0:
            self.thresholds = np.full(len(self.labels), 0.5)
        else:
            self.thresholds = tune_thresholds(gold, probs, tcfg.thresholds, tcfg.threshold_objective)
        return {"mode": tcfg.thresholds, "objective": tcfg.threshold_objective, "chosen_on": "validation",
                "values": self.state()["thresholds"]}

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        return probs >= self.thresholds[None, :]

    def predicted(self, probs: np.ndarray) -> list[str]:
        return [LABEL_JOIN.join(self.labels[j] for j in np.flatnonzero(row)) for row in self.decisions(probs)]

    def values(self, probs: np.ndarray) -> list:
        return [[self.labels[j] for j in np.flatnonzero(row)] for row in self.decisions(probs)]

    def answer_columns(self) -> list[str]:
        return ["labels"] + [f"p_{n}" for n in self.labels]

    def answers(self, probs: np.ndarray) -> list[list]:
        return [[names] + [f"{x:.6f}" for x in row] for names, row in zip(self.predicted(probs), probs)]

    def records(self, probs: np.ndarray) -> list[dict]:
        return [{"labels": [self.labels[j] for j in np.flatnonzero(row)],
                 "probabilities": {lab: float(p) for lab, p in zip(self.labels, prow)}}
                for row, prow in zip(self.decisions(probs), probs)]

    def gold_names(self, gold: np.ndarray) -> list[str]:
        return [LABEL_JOIN.join(self.labels[j] for j in np.flatnonzero(row)) for row in gold]

    def correct(self, gold: np.ndarray, probs: np.ndarray) -> list:
        return (self.decisions(probs) == (np.asarray(gold) > 0)).all(axis=1).astype(int).tolist()


def positive_weights(spec, train: np.ndarray) -> Optional[torch.Tensor]:
    """train.pos_weight: None, 'balanced' (negatives / positives per label in train, capped at
    POS_WEIGHT_CAP) or a list in label order."""
    if spec is None:
        return None
    if spec == "balanced":
        pos = train.sum(axis=0)
        w = np.clip((len(train) - pos) / np.maximum(pos, 1), 1.0, POS_WEIGHT_CAP)
        return torch.tensor(w, dtype=torch.float32)
    return torch.tensor([float(x) for x in spec], dtype=torch.float32)


def _f1_grid(gold: np.ndarray, probs: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label and candidate threshold: true positives, predicted positives, gold positives.
    One label at a time, so memory stays (texts x grid) however many labels there are."""
    k = gold.shape[1]
    tp, pp = np.zeros((k, len(grid)), dtype=np.int64), np.zeros((k, len(grid)), dtype=np.int64)
    for j in range(k):
        pred = probs[:, j, None] >= grid[None, :]
        tp[j], pp[j] = (pred & (gold[:, j, None] > 0)).sum(axis=0), pred.sum(axis=0)
    return tp, pp, np.broadcast_to(gold.sum(axis=0)[:, None], tp.shape)


def _best(scores: np.ndarray, grid: np.ndarray) -> float:
    """The best-scoring threshold; ties go to the one nearest 0.5 (the least surprising choice)."""
    ties = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(grid[ties[np.argmin(np.abs(grid[ties] - 0.5))]])


def tune_thresholds(gold: np.ndarray, probs: np.ndarray, mode: str, objective: str,
                    grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Thresholds maximising validation macro- or micro-F1 over a 0.01 grid.

    per-label + macro-F1: macro-F1 is the mean of per-label F1, so each label's best threshold is
    found alone (exact). per-label + micro-F1: coordinate ascent on the pooled counts, starting from
    those. global: one threshold for every label."""
    tp, pp, gp = _f1_grid(gold, probs, grid)
    k = gold.shape[1]
    if mode == "global":
        if objective == "micro_f1":
            t, p, g = tp.sum(axis=0), pp.sum(axis=0), gp.sum(axis=0)
            score = 2 * t / np.maximum(p + g, 1)
        else:
            score = (2 * tp / np.maximum(pp + gp, 1)).mean(axis=0)
        return np.full(k, _best(score, grid))
    per_label = 2 * tp / np.maximum(pp + gp, 1)
    idx = np.array([np.flatnonzero(grid == _best(per_label[j], grid))[0] for j in range(k)])
    if objective == "micro_f1":
        idx = _coordinate_ascent(tp, pp, gp, idx)
    return grid[idx].astype(np.float64)


def _coordinate_ascent(tp, pp, gp, idx: np.ndarray, rounds: int = 3) -> np.ndarray:
    rows = np.arange(len(idx))
    for _ in range(rounds):
        changed = False
        for j in range(len(idx)):
            t_rest = tp[rows, idx].sum() - tp[j, idx[j]]
            p_rest = pp[rows, idx].sum() - pp[j, idx[j]]
            score = 2 * (t_rest + tp[j]) / np.maximum(p_rest + pp[j] + gp[:, 0].sum(), 1)
            best = int(np.argmax(score))
            if score[best] > score[idx[j]] + 1e-12:
                idx[j], changed = best, True
        if not changed:
            break
    return idx
