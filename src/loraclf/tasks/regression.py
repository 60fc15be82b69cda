"""Regression: one continuous score per text (a rating, a similarity from 0 to 5).

The model has one output. With `train.normalize_target` it learns the train target standardised
(mean 0, std 1), which keeps the loss and learning rate on the scale classification uses; the
scale is part of the task's state, so outputs are always in the target's own units. The reading side
(scores, the predictions file, error analysis, findings, plots; templates/regression.html.j2 and
templates/card_regression.md.j2) lives here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..errors import ConfigError, DataError, LoraclfError
from ..evaluation import analysis as an
from ..evaluation.metrics import REGRESSION_HEADLINE, regression_metrics
from .base import Predictions, Task, check_finite, refuse_single_label_options, state_number
from .labels import LabelSet, scores

if TYPE_CHECKING:
    import torch


class Regression(Task):
    name = "regression"
    headline = REGRESSION_HEADLINE
    selectable = ("rmse", "mae", "r2", "pearson", "spearman", "loss")
    default_metric = "rmse"
    problem_type = "regression"
    row_metrics = ("rmse", "mae", "pearson", "spearman")
    label_noun = "target"
    exact_answers = False  # a score is never exactly right: comparisons mark no "(wrong)"
    distinct_needed = 2  # label_set only checks that the scores vary
    fixed_outputs = 1
    options = frozenset({"train.regression_loss", "train.huber_delta", "train.normalize_target"})
    report_template = "regression.html.j2"
    card_template = "card_regression.md.j2"
    card_task_name = "Text Regression"
    card_tags = ("regression",)

    def __init__(self, labels: Sequence[str], state: Optional[dict] = None):
        super().__init__(labels)
        state = state or {}
        self.mean = state_number(state, "target_mean", 0.0)
        self.std = state_number(state, "target_std", 1.0, positive=True)

    @classmethod
    def read_labels(cls, df, cfg, names: Optional[list[str]], where: str) -> list:
        return scores(df, cfg.label_column, where)

    @classmethod
    def keep_labels(cls, texts: list[list[str]], labels: list, keep: list[str], where: str):
        raise DataError("data.include_labels selects classes; a regression task has none")

    @classmethod
    def label_set(cls, cfg, train: list, names_cfg: Optional[list], keep: Optional[list[str]],
                  where: str) -> LabelSet:
        if len(set(train)) < 2:
            raise DataError(f"{where}: every train score is {train[0]}; regression needs at least two values")
        return LabelSet([cfg.label_column])

    @classmethod
    def label_array(cls, rows: list, labels: LabelSet, where: str, split: str) -> np.ndarray:
        return np.asarray(rows, dtype=np.float32)

    @classmethod
    def strata(cls, labels: np.ndarray) -> Optional[np.ndarray]:
        """A decile bin of the score, so a sample keeps the target's spread."""
        edges = np.unique(np.quantile(labels, np.linspace(0, 1, 11)[1:-1]))
        return np.digitize(labels, edges)

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
            raise ConfigError("train.pos_weight weighs positive labels of a multi-label task; regression has none")

    def set_scale(self, train: np.ndarray, normalise: bool) -> None:
        """The target scale learnt from train: standardised with `normalise`, else as it is."""
        std = float(np.std(train))
        self.mean, self.std = (float(np.mean(train)), std if std > 0 else 1.0) if normalise else (0.0, 1.0)

    def loss_function(self, tcfg, train_labels: np.ndarray, device) -> "torch.nn.Module":
        import torch

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

    def prediction_columns(self, gold: np.ndarray, scores: np.ndarray) -> dict[str, list]:
        return {"error": self.correct(gold, scores)}

    # ---------------------------------------------------------------- reading a run
    def parse_predictions(self, table, path) -> Predictions:
        try:
            return Predictions(table["text"].tolist(), table["gold"].astype(np.float64).to_numpy(),
                               table["predicted"].astype(np.float64).to_numpy())
        except ValueError:
            raise LoraclfError(f"{path}: gold and predicted must be numbers in a regression run") from None

    def analyse(self, p: Predictions, metrics: dict, opts: dict) -> dict:
        return an.analyse_regression_split(p.texts, p.gold, p.outputs, opts["top_errors"], opts["length_buckets"])

    def findings(self, metrics: dict, analysis: dict, split: str) -> list[str]:
        m, a = metrics[split], analysis[split]
        std, fmt = m.get("gold_std") or 0.0, an.fmt3
        out: list[str] = []
        if std > 0 and m.get("pred_mean") is not None and abs(m["pred_mean"] - m["gold_mean"]) > 0.1 * std:
            out.append(f"Predictions are biased {'high' if m['pred_mean'] > m['gold_mean'] else 'low'}: mean "
                       f"{fmt(m['pred_mean'])} against {fmt(m['gold_mean'])} in gold.")
        if std > 0 and m.get("pred_std") is not None and m["pred_std"] < 0.8 * std:
            out.append(f"Predictions are compressed toward the mean: their standard deviation is "
                       f"{fmt(m['pred_std'])} against {fmt(std)} in gold.")
        out += _extreme_findings(a.get("by_gold") or [], std) + _length_errors(a, m.get("mae"))
        return out + an.length_shift(analysis, split) + an.truncation(metrics, split, m["n"])

    def plots(self, emit, run, ea: dict, split: str, suffix: str) -> None:
        from ..evaluation import plots as pl

        m, a, target = run.metrics[split], ea.get(split) or {}, self.labels[0]
        if split in run.predictions:
            p = run.predictions[split]
            emit(pl.regression_scatter(p.gold, p.outputs, suffix, target), "predicted_vs_gold.png", "evaluation",
                 "Predicted against gold", "Each text's predicted score against its gold score; on the dashed "
                 "identity line the prediction is exact.")
            emit(pl.residuals_by_gold(p.gold, p.outputs, suffix, target), "residuals.png", "evaluation",
                 "Residuals by gold value", "Predicted minus gold against gold, with the mean per gold bin: below 0 "
                 "on the right and above 0 on the left means the extremes are pulled toward the mean.")
        emit(pl.length_distribution(ea.get("text_lengths") or {}), "lengths.png", "errors", "Text length per split",
             "Length in words of every split (train as loaded for training).")
        if a.get("by_length"):
            emit(pl.errors_by_length(a["by_length"], m.get("mae"), suffix), "errors_by_length.png", "errors",
                 "Errors by length", "Mean absolute error and mean signed error per word-length bucket (about equal "
                 "numbers of texts each).")

    def loss_note(self) -> str:
        return (" Both are on the standardised target when train.normalize_target is on (validation: its mean "
                "squared error; train: the chosen loss, MSE or Huber).")

    def subtitle(self) -> str:
        return f"regression of {', '.join(self.labels)}"

    def report_context(self, run, ea: dict, split: Optional[str]) -> dict:
        return {"target": self.labels[0] if self.labels else "score"}


def _extreme_findings(bins: list[dict], std: float) -> list[str]:
    """Whether the highest and lowest gold scores are pulled toward the mean."""
    out: list[str] = []
    if std <= 0 or len(bins) < 2:
        return out
    top, bottom = bins[-1], bins[0]
    if top["mean_error"] < -0.25 * std:
        out.append(f"High scores are under-predicted: texts with gold {top['range']} (n={top['n']:,}) are "
                   f"predicted {-top['mean_error']:.3f} too low on average.")
    if bottom["mean_error"] > 0.25 * std:
        out.append(f"Low scores are over-predicted: texts with gold {bottom['range']} (n={bottom['n']:,}) are "
                   f"predicted {bottom['mean_error']:.3f} too high on average.")
    return out


def _length_errors(a: dict, mae: Optional[float]) -> list[str]:
    buckets = [b for b in a.get("by_length") or [] if b["n"]]
    if len(buckets) < 2 or not mae:
        return []
    worst = max(buckets, key=lambda b: b["mae"])
    if worst["mae"] > 1.25 * mae:
        return [f"Texts of {worst['range']} words have the largest errors: MAE {an.fmt3(worst['mae'])} "
                f"(n={worst['n']:,}) against {an.fmt3(mae)} overall."]
    return [f"Errors do not clearly depend on length: every length bucket's MAE is within 25% of the "
            f"overall {an.fmt3(mae)}."]
