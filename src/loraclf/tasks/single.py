"""Single-label classification, with temperature calibration and, on request, per-class bias correction."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..metrics import HEADLINE, compute_metrics, expected_calibration_error, reliability_bins
from .base import Task, check_finite, softmax


class SingleLabel(Task):
    """One class per text: softmax over the classes, cross-entropy, classification metrics, and an
    optional temperature fitted on validation (divides the logits; argmax, hence accuracy, is unchanged).
    `train.calibrate: bias` also fits one additive bias per class, which does move the argmax: it undoes
    a model's lean towards some answers (a zero-shot LLM that says "positive" to everything)."""

    name = "single-label"
    headline = HEADLINE
    selectable = ("accuracy", "macro_f1", "weighted_f1", "macro_recall", "roc_auc", "ece", "loss")
    default_metric = "accuracy"
    problem_type = "single_label_classification"

    def __init__(self, labels: Sequence[str], state: Optional[dict] = None):
        super().__init__(labels)
        self.temperature: Optional[float] = (state or {}).get("temperature")
        bias = (state or {}).get("bias")
        self.bias: Optional[np.ndarray] = None if bias is None else np.asarray(bias, dtype=np.float64)

    def state(self) -> dict:
        out = {"temperature": self.temperature} if self.temperature is not None else {}
        if self.bias is not None:
            out["bias"] = [float(b) for b in self.bias]
        return out

    def output_affine(self) -> Optional[tuple[float, object]]:
        if not self.temperature:
            return None
        return (1.0 / self.temperature, [float(b) for b in self.bias] if self.bias is not None else 0.0)

    def adjusted(self, logits: np.ndarray) -> np.ndarray:
        """The logits the probabilities come from: divided by the temperature, plus the class biases."""
        z = logits / self.temperature if self.temperature else logits
        return z + self.bias if self.bias is not None else z

    def folded_state(self) -> dict:
        return {}

    def check_config(self, cfg) -> None:
        super().check_config(cfg)
        w = cfg.train.class_weights
        if isinstance(w, list) and len(w) != len(self.labels):
            raise ConfigError(f"train.class_weights has {len(w)} values but there are {len(self.labels)} labels "
                              f"({', '.join(self.labels)})")
        if cfg.train.calibrate == "bias" and cfg.model.head == "generate":
            raise ConfigError("train.calibrate=bias needs class scores; the generate head's scores are its parsed "
                              "answer, so biases would only remap labels: use the verbalizer head")
        if cfg.train.pos_weight is not None:
            raise ConfigError("train.pos_weight weighs positives of each label in a multi-label task; "
                              "for single-label use train.class_weights")

    def loss_function(self, tcfg, train_labels: np.ndarray, device) -> torch.nn.Module:
        weights = class_weights(tcfg.class_weights, train_labels, len(self.labels))
        return torch.nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None,
                                         label_smoothing=tcfg.label_smoothing)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(self.adjusted(logits))

    def evaluate(self, logits: np.ndarray, gold: np.ndarray) -> tuple[dict, np.ndarray]:
        check_finite(logits)
        probs = self.probabilities(logits)
        metrics = compute_metrics(gold, probs, self.labels, loss=nll(probs, gold))
        if self.temperature is not None:
            metrics["calibration"] = calibration_effect(softmax(logits), probs, gold,
                                                        self.labels if self.bias is not None else None)
        return metrics, probs

    def fit(self, tcfg, logits: np.ndarray, gold: np.ndarray) -> Optional[dict]:
        """Temperature scaling (Guo et al., 2017): the T minimising validation NLL of softmax(logits / T).
        With `auto` it is kept only when it lowers validation NLL; `temperature` keeps it regardless.
        `bias` fits T and one bias per class together (softmax(logits / T + b), the same NLL) and keeps
        them: the user asked for predictions to move."""
        self.temperature, self.bias = None, None
        if tcfg.calibrate == "none" or len(gold) == 0:
            return None
        if tcfg.calibrate == "bias":
            t, b = fit_temperature_bias(logits, gold)
            before, after = nll(softmax(logits), gold), nll(softmax(logits / t + b), gold)
            self.temperature, self.bias = t, b
            return {"method": "bias", "temperature": t, "bias": dict(zip(self.labels, map(float, b))),
                    "applied": True, "reason": "train.calibrate: bias",
                    "validation_nll_before": before, "validation_nll_after": after}
        t = fit_temperature(logits, gold)
        before, after = nll(softmax(logits), gold), nll(softmax(logits / t), gold)
        applied = tcfg.calibrate == "temperature" or after < before
        if applied:
            self.temperature = t
        reason = ("train.calibrate: temperature" if tcfg.calibrate == "temperature" else
                  "lowers validation NLL" if applied else "would not lower validation NLL")
        return {"method": "temperature", "temperature": t, "applied": applied, "reason": reason,
                "validation_nll_before": before, "validation_nll_after": after}

    def predicted(self, probs: np.ndarray) -> list[str]:
        return [self.labels[i] for i in probs.argmax(axis=1)]

    def answer_columns(self) -> list[str]:
        return ["label", "confidence"] + [f"p_{n}" for n in self.labels]

    def answers(self, probs: np.ndarray) -> list[list]:
        pred = probs.argmax(axis=1)
        return [[self.labels[p], f"{row[p]:.6f}"] + [f"{x:.6f}" for x in row] for p, row in zip(pred, probs)]

    def records(self, probs: np.ndarray) -> list[dict]:
        best = probs.argmax(axis=1)
        return [{"label": self.labels[b], "score": float(row[b]),
                 "probabilities": {lab: float(p) for lab, p in zip(self.labels, row)}} for b, row in zip(best, probs)]

    def gold_names(self, gold: np.ndarray) -> list[str]:
        return [self.labels[g] for g in gold]

    def correct(self, gold: np.ndarray, probs: np.ndarray) -> list:
        return (probs.argmax(axis=1) == gold).astype(int).tolist()


def nll(probs: np.ndarray, gold: np.ndarray) -> float:
    if len(gold) == 0:
        return float("nan")
    return float(-np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """argmin over T in [0.05, 20] of the NLL of softmax(logits / T), searched on log T (the NLL is
    smooth and unimodal there, so a bounded scalar search suffices)."""
    from scipy.optimize import minimize_scalar

    z = logits.astype(np.float64)
    res = minimize_scalar(lambda lt: nll(softmax(z / math.exp(lt)), gold), bounds=(math.log(0.05), math.log(20.0)),
                          method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def fit_temperature_bias(logits: np.ndarray, gold: np.ndarray) -> tuple[float, np.ndarray]:
    """argmin over (T, b) of the NLL of softmax(logits / T + b), with b[0] = 0 (adding a constant to
    every class changes nothing). Starts from the temperature alone; L-BFGS on (log T, b[1:]) with the
    exact gradient. T stays in [0.05, 20] as in :func:`fit_temperature`."""
    from scipy.optimize import minimize

    z = logits.astype(np.float64)
    n, k = z.shape
    onehot = np.eye(k)[gold]

    def loss(x):
        t = math.exp(x[0])
        a = z / t + np.concatenate([[0.0], x[1:]])
        a = a - a.max(axis=1, keepdims=True)
        logp = a - np.log(np.exp(a).sum(axis=1, keepdims=True))  # exact, unclipped: it matches the gradient
        r = (np.exp(logp) - onehot) / n  # d NLL / d adjusted logits
        grad_lt = float((r * (-z / t)).sum())  # d(z / T) / d log T = -z / T
        return float(-logp[np.arange(n), gold].mean()), np.concatenate([[grad_lt], r.sum(axis=0)[1:]])

    x0 = np.concatenate([[math.log(fit_temperature(z, gold))], np.zeros(k - 1)])
    res = minimize(loss, x0, jac=True, method="L-BFGS-B",
                   bounds=[(math.log(0.05), math.log(20.0))] + [(-50.0, 50.0)] * (k - 1))
    x = res.x if loss(res.x)[0] <= loss(x0)[0] else x0  # never worse than the temperature alone
    return float(math.exp(x[0])), np.concatenate([[0.0], x[1:]])


def calibration_effect(raw: np.ndarray, calibrated: np.ndarray, gold: np.ndarray,
                       labels: Optional[Sequence[str]] = None) -> dict:
    """NLL, ECE and reliability bins of one split before and after the temperature; with `labels` (a
    bias correction, which moves predictions) accuracy and macro-F1 before and after too."""
    from sklearn.metrics import f1_score

    out = {}
    for when, probs in (("before", raw), ("after", calibrated)):
        probs = probs.astype(np.float64)  # as compute_metrics reads them: the "after" figures equal the split's
        conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == gold).astype(np.float64)
        out[f"nll_{when}"] = nll(probs, gold)
        out[f"ece_{when}"] = expected_calibration_error(conf, correct)
        out[f"reliability_{when}"] = reliability_bins(conf, correct)
        if labels is not None:
            out[f"accuracy_{when}"] = float(correct.mean())
            out[f"macro_f1_{when}"] = float(f1_score(gold, probs.argmax(axis=1), labels=list(range(len(labels))),
                                                     average="macro", zero_division=0))
    return out


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
