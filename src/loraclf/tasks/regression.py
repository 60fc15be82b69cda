"""Regression: one continuous score per text (a rating, a similarity from 0 to 5).

The model has one output. With `train.normalize_target` it learns the train target standardised
(mean 0, std 1), which keeps the loss and learning rate on the scale classification uses; the
scale is part of the task's state, so outputs are always in the target's own units.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..metrics import REGRESSION_HEADLINE, regression_metrics
from .base import Task, check_finite, refuse_single_label_options


class Regression(Task):
    name = "regression"
    headline = REGRESSION_HEADLINE
    selectable = ("rmse", "mae", "r2", "pearson", "spearman", "loss")
    default_metric = "rmse"
    problem_type = "regression"

    def __init__(self, labels: Sequence[str], state: Optional[dict] = None):
        super().__init__(labels)
        state = state or {}
        self.mean, self.std = float(state.get("target_mean", 0.0)), float(state.get("target_std", 1.0))

    @property
    def num_outputs(self) -> int:
        return 1

    def state(self) -> dict:
        return {"target_mean": self.mean, "target_std": self.std}

    def output_affine(self) -> Optional[tuple[float, float]]:
        return (self.std, self.mean) if (self.std, self.mean) != (1.0, 0.0) else None

    def folded_state(self) -> dict:
        return {"target_mean": 0.0, "target_std": 1.0}

    def check_config(self, cfg) -> None:
        super().check_config(cfg)
        refuse_single_label_options(cfg, self.name)
        if cfg.train.pos_weight is not None:
            from ..errors import ConfigError

            raise ConfigError("train.pos_weight weighs positive labels of a multi-label task; regression has none")

    def set_scale(self, train: np.ndarray, normalise: bool) -> None:
        """The target scale learnt from train: standardised with `normalise`, else as it is."""
        std = float(np.std(train))
        self.mean, self.std = (float(np.mean(train)), std if std > 0 else 1.0) if normalise else (0.0, 1.0)

    def loss_function(self, tcfg, train_labels: np.ndarray, device) -> torch.nn.Module:
        self.set_scale(train_labels, tcfg.normalize_target)
        base = torch.nn.HuberLoss(delta=tcfg.huber_delta) if tcfg.regression_loss == "huber" else torch.nn.MSELoss()
        mean, std = self.mean, self.std
        return lambda logits, labels: base(logits[:, 0].float(), (labels.float() - mean) / std)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return logits[:, 0].astype(np.float64) * self.std + self.mean

    def evaluate(self, logits: np.ndarray, gold: np.ndarray) -> tuple[dict, np.ndarray]:
        check_finite(logits)
        scores = self.probabilities(logits)
        metrics = regression_metrics(gold, scores)
        if metrics["n"]:  # the loss as training sees it: MSE on the standardised target (RMSE is in its units)
            metrics["loss"] = float(np.mean(((scores - np.asarray(gold, dtype=np.float64)) / self.std) ** 2))
        return metrics, scores

    def predicted(self, scores: np.ndarray) -> list[str]:
        return [f"{v:.4f}" for v in scores]

    def values(self, scores: np.ndarray) -> list:
        return [float(v) for v in scores]

    def answer_columns(self) -> list[str]:
        return [self.labels[0]]

    def answers(self, scores: np.ndarray) -> list[list]:
        return [[f"{v:.6f}"] for v in scores]

    def records(self, scores: np.ndarray) -> list[dict]:
        return [{"score": float(v)} for v in scores]

    def gold_names(self, gold: np.ndarray) -> list[str]:
        return [f"{v:.4f}" for v in gold]

    def correct(self, gold: np.ndarray, scores: np.ndarray) -> list:
        return [f"{e:.4f}" for e in scores - gold]

    def prediction_columns(self) -> list[str]:
        return ["error"]

    def output_cells(self, scores: np.ndarray) -> list[list[str]]:
        return [[] for _ in scores]
