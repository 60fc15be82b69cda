"""Single-label classification, with temperature calibration and, on request, per-class bias correction.

Both sides of the task live here: training (cross-entropy, temperature and bias fitted on validation)
and reading (label names, the predictions file, the error analysis, findings, plots, report sections
in templates/single_label.html.j2 and the model card's macros in templates/card_single_label.md.j2).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..errors import ConfigError, DataError, LoraclfError, ModelError
from ..evaluation import analysis as an
from ..evaluation.metrics import HEADLINE, compute_metrics, expected_calibration_error, reliability_bins
from .base import Predictions, Task, check_finite, check_label_names, softmax, state_number
from .labels import LabelSet, label_names, raw_label, unknown_label

if TYPE_CHECKING:
    import torch


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
    row_metrics = ("accuracy", "macro_f1")
    fitted_key = "calibration"
    loss_name = "cross-entropy loss"
    options = frozenset({"train.calibrate", "data.label_names"})
    report_template = "single_label.html.j2"
    # Only single-label outputs are probabilities of one answer, so only this report has a calibration section.
    report_sections = (("evaluation", "Evaluation"), ("calibration", "Calibration"), ("errors", "Error analysis"))
    card_template = "card_single_label.md.j2"
    classes = True
    prototype_init = True

    def __init__(self, labels: Sequence[str], state: Optional[dict] = None):
        super().__init__(labels)
        state = state or {}
        self.temperature: Optional[float] = state_number(state, "temperature", None, positive=True)
        bias = state.get("bias")
        if bias is not None and not (isinstance(bias, list) and len(bias) == len(self.labels) and all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and np.isfinite(b) for b in bias)):
            raise ModelError(f"loraclf.json: task_state.bias must be {len(self.labels)} numbers, one per label; the "
                             "artifact is damaged")
        self.bias: Optional[np.ndarray] = None if bias is None else np.asarray(bias, dtype=np.float64)

    @classmethod
    def read_labels(cls, df, cfg, names: Optional[list[str]], where: str) -> list:
        return label_names(df, cfg.label_column, names, where)

    @classmethod
    def label_set(cls, cfg, train: list, names_cfg: Optional[list], keep: Optional[list[str]],
                  where: str) -> LabelSet:
        seen = set(train)
        names = check_label_names(cfg, seen, names_cfg, keep, where)
        if len(seen) < 2:
            raise DataError(f"{where}: train has a single class ({next(iter(seen))!r}); classification needs "
                            "at least two")
        return LabelSet(names)

    @classmethod
    def label_array(cls, rows: list, labels: LabelSet, where: str, split: str) -> np.ndarray:
        for i, lab in enumerate(rows):
            if lab not in labels.to_id:
                raise unknown_label(where, i + 1, lab, split, labels.names)
        return np.array([labels.to_id[lab] for lab in rows], dtype=np.int64)

    @classmethod
    def strata(cls, labels: np.ndarray) -> Optional[np.ndarray]:
        return labels

    @classmethod
    def single_class(cls, labels: np.ndarray) -> bool:
        return len(np.unique(labels)) < 2

    def class_indicator(self, labels):
        import torch

        return torch.nn.functional.one_hot(labels.long(), len(self.labels))

    def rows_per_class(self, labels: np.ndarray) -> Optional[float]:
        return len(labels) / len(self.labels)

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
        if cfg.train.pos_weight is not None:
            raise ConfigError("train.pos_weight weighs positives of each label in a multi-label task; "
                              "for single-label use train.class_weights")

    def loss_function(self, tcfg, train_labels: np.ndarray, device) -> "torch.nn.Module":
        import torch

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

    def fitted_line(self, fitted: dict) -> Optional[str]:
        state = "applied" if fitted["applied"] else "not applied"
        bias = "" if fitted.get("bias") is None else ", bias " + " ".join(f"{k} {v:+.2f}"
                                                                           for k, v in fitted["bias"].items())
        return f"calibration: temperature {fitted['temperature']:.3f}{bias} ({state}: {fitted['reason']})"

    # ---------------------------------------------------------------- reading a run
    def parse_predictions(self, table, path) -> Predictions:
        probs = self._output_matrix(table, path)
        index = {n: i for i, n in enumerate(self.labels)}
        try:
            y = table["gold"].map(index).to_numpy().astype(np.int64)
        except (ValueError, TypeError):
            raise LoraclfError(f"{path}: gold labels outside the run's labels {self.labels}") from None
        return Predictions(table["text"].tolist(), y, probs)

    def analyse(self, p: Predictions, metrics: dict, opts: dict) -> dict:
        return an.analyse_split(p.texts, p.gold, p.outputs, self.labels, opts["top_errors"], opts["length_buckets"],
                                opts["examples_per_confusion"])

    def findings(self, metrics: dict, analysis: dict, split: str) -> list[str]:
        m, a = metrics[split], analysis[split]
        acc = m["accuracy"]
        out = an.length_findings(a.get("by_length", []), acc, "accuracy") + an.length_shift(analysis, split)
        pairs = a.get("confusions") or []
        if pairs:
            p = pairs[0]
            out.append(f"The most common mistake is {p['gold']!r} predicted as {p['predicted']!r}: {p['count']} of "
                       f"{a['errors']} errors ({p['share_of_errors']:.0%}), {p['rate_of_gold']:.1%} of all "
                       f"{p['gold']!r} texts.")
        per_class = m.get("per_class") or {}
        if len(per_class) >= 3:
            weakest = min(per_class, key=lambda c: per_class[c]["f1"])
            partner = next((p["predicted"] for p in pairs if p["gold"] == weakest), None)
            out.append(f"{weakest!r} has the lowest F1 ({an.fmt3(per_class[weakest]['f1'])})"
                       + (f"; it is most often mistaken for {partner!r}." if partner else "."))
        out += _confidence_findings(m, acc) + _calibration_findings(metrics, split) + _skew_findings(m, per_class)
        return out + an.truncation(metrics, split, m["n"])

    def plots(self, emit, run, ea: dict, split: str, suffix: str) -> None:
        from ..evaluation import plots as pl

        m, labels = run.metrics[split], self.labels
        emit(pl.confusion_matrix(m["confusion_matrix"], labels, False, f"Confusion matrix{suffix} (n={m['n']:,})"),
             "confusion_matrix.png", "evaluation", "Confusion matrix",
             "Counts: rows are true labels, columns predictions.")
        emit(pl.confusion_matrix(m["confusion_matrix"], labels, True, f"Confusion matrix, normalised{suffix}"),
             "confusion_matrix_normalized.png", "evaluation", "Confusion matrix, normalised",
             "Each row sums to 1; the diagonal is each label's recall.")
        emit(pl.per_class(m["per_class"], labels, f"Per-class precision, recall and F1{suffix}"), "per_class.png",
             "evaluation", "Per-class scores", "Precision, recall and F1 per label, with its number of texts.")
        if split in run.predictions:
            _prediction_plots(emit, run.predictions[split], labels, m, suffix)
        _calibration_plot(emit, m.get("calibration") or {}, run.metrics.get("calibration") or {}, suffix)
        emit(pl.length_distribution(ea.get("text_lengths") or {}), "lengths.png", "errors", "Text length per split",
             "Length in words of every split (train as loaded for training).")
        if (ea.get(split) or {}).get("by_length"):
            emit(pl.accuracy_by_length(ea[split]["by_length"], m["accuracy"], suffix), "accuracy_by_length.png",
                 "errors", "Accuracy by length", "Accuracy per word-length bucket (about equal numbers of texts "
                 "each) with 95% Wilson intervals; red: significantly below overall, green: above.")

    def report_context(self, run, ea: dict, split: Optional[str]) -> dict:
        m = run.metrics
        ranking = ((ea.get(split) or {}).get("per_class_ranking") or {}) if split else {}
        return {"per_class": _per_class_rows(m, split, ranking) if split else [], "calibration": m.get("calibration"),
                "calibration_splits": [s for s in ("validation", "test") if (m.get(s) or {}).get("calibration")]}

    def label_issues(self, p: Predictions) -> list[dict]:
        """Confident learning (Northcutt et al., 2021) by cleanlab: rows whose out-of-fold probabilities
        contradict their label beyond each class's own threshold, ranked by self-confidence (p of the
        given label), lowest first."""
        from cleanlab.filter import find_label_issues

        probs = p.outputs / p.outputs.sum(axis=1, keepdims=True)
        ranked = find_label_issues(p.gold, probs, return_indices_ranked_by="self_confidence")
        best = probs.argmax(axis=1)
        return [{"row": int(i), "given": self.labels[p.gold[i]], "suggested": self.labels[best[i]],
                 "p_given": float(probs[i, p.gold[i]]), "p_suggested": float(probs[i, best[i]]),
                 "quality": float(probs[i, p.gold[i]])} for i in ranked]

    def soft_targets(self, gold: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
        one_hot = np.eye(len(self.labels), dtype=np.float64)[gold]
        return ((1 - weight) * one_hot + weight * teacher).astype(np.float32)

    def write_labels(self, df, rows: list[int], labels: list[str], cfg, names: Optional[list[str]]) -> None:
        col = cfg.label_column
        df[col] = df[col].astype(object)
        for row, name in zip(rows, labels):
            df.at[row, col] = raw_label(name, df.at[row, col], names)

    def card_label_table(self, metrics: dict, split: str) -> Optional[str]:
        from ..evaluation.tables import markdown_table

        pc = metrics[split].get("per_class") or {}
        if not pc:
            return None
        return markdown_table(["label", "precision", "recall", "F1", "support"], [
            [f"`{c}`", f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1']:.4f}", f"{v['support']:,}"]
            for c, v in pc.items()])


def _per_class_rows(m: dict, split: str, ranking: dict) -> list[dict]:
    """The per-label table of the report's split, worst F1 first."""
    s = m[split]
    pred = s.get("predicted_distribution") or {}
    return [{"name": c, **v, "low": v["f1"] < s["macro_f1"] - 0.1, "predicted": pred.get(c, 0),
             "roc_auc": (ranking.get(c) or {}).get("roc_auc"),
             "average_precision": (ranking.get(c) or {}).get("average_precision")}
            for c, v in sorted(s["per_class"].items(), key=lambda kv: kv[1]["f1"])]


def _prediction_plots(emit, p: Predictions, labels: list[str], m: dict, suffix: str) -> None:
    """ROC and PR curves, reliability and confidence: the figures that need every text's probabilities."""
    from ..evaluation import plots as pl

    y, probs = p.gold, p.outputs
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(float)
    if len(np.unique(y)) >= 2:
        emit(pl.roc_curves(y, probs, labels, suffix), "roc.png", "evaluation", "ROC curves",
             "True against false positive rate as the decision threshold moves." if len(labels) == 2 else
             "One-vs-rest ROC curve per label.")
        emit(pl.pr_curves(y, probs, labels, suffix), "pr.png", "evaluation", "Precision-recall curves",
             "Precision against recall; AP is the average precision. Dotted lines: prevalence (chance).")
    emit(pl.reliability(reliability_bins(conf, correct), m["ece"], suffix), "reliability.png", "calibration",
         "Reliability diagram", "Accuracy within each confidence bin against its mean confidence. Bars "
         "below the diagonal are over-confident. ECE is the count-weighted mean gap.")
    emit(pl.confidence_hist(conf, correct, len(labels), suffix), "confidence.png", "calibration",
         "Confidence", "Confidence of the predicted label for correct and for wrong predictions.")


def _calibration_plot(emit, cal: dict, fitted: dict, suffix: str) -> None:
    """Reliability before and after the temperature (and class biases) fitted on validation."""
    from ..evaluation import plots as pl

    if not (cal.get("reliability_before") and cal.get("reliability_after")):
        return
    moved = cal.get("accuracy_before") is not None
    emit(pl.reliability_before_after(cal["reliability_before"], cal["ece_before"], cal["reliability_after"],
                                     cal["ece_after"], fitted.get("temperature"), suffix),
         "reliability_before_after.png", "calibration",
         *(("Temperature and class-bias correction", "Reliability of the model's raw probabilities (left) and "
            "of the corrected ones the run reports (right); the biases move some predictions.") if moved else
           ("Temperature scaling", "Reliability of the model's raw probabilities (left) and of the temperature-"
            "scaled ones the run reports (right); the predicted labels are the same.")))


def _confidence_findings(m: dict, acc: float) -> list[str]:
    conf = m.get("confidence") or {}
    if conf.get("mean") is None:
        return []
    gap = conf["mean"] - acc
    if gap > 0.02:
        sure = conf.get("wrong_above_0.9") or 0
        return [f"The model is over-confident: mean confidence {an.fmt3(conf['mean'])} against accuracy "
                f"{an.fmt3(acc)} (ECE {an.fmt3(m['ece'])})"
                + (f"; {sure:,} mistakes have confidence above 0.9." if sure else ".")]
    if gap < -0.02:
        return [f"The model is under-confident: mean confidence {an.fmt3(conf['mean'])} against accuracy "
                f"{an.fmt3(acc)} (ECE {an.fmt3(m['ece'])})."]
    return []


def _skew_findings(m: dict, per_class: dict) -> list[str]:
    dist = m.get("predicted_distribution") or {}
    if not (dist and per_class):
        return []
    n = max(m["n"], 1)
    skew = max(dist, key=lambda c: abs(dist[c] - per_class[c]["support"]) / n)
    diff = (dist[skew] - per_class[skew]["support"]) / n
    if abs(diff) < 0.05:
        return []
    return [f"It predicts {skew!r} for {dist[skew] / n:.0%} of texts, though {per_class[skew]['support'] / n:.0%} "
            f"are {skew!r}."]


def _calibration_findings(metrics: dict, split: str) -> list[str]:
    """What temperature scaling (and, with train.calibrate: bias, the class biases) did, fitted on validation."""
    cal = metrics.get("calibration") or {}
    before_after = (metrics.get(split) or {}).get("calibration") or {}
    if not cal:
        return []
    t, fmt = cal.get("temperature"), an.fmt3
    what = "A temperature and per-class biases" if cal.get("method") == "bias" else "Temperature scaling"
    head = f"{what} (T={t:.3f}, fitted on validation)" if t is not None else what
    if not cal.get("applied"):
        return [f"{head} was not applied: {cal.get('reason') or 'no reason recorded'}."]
    if cal.get("method") == "bias":
        if before_after.get("accuracy_before") is None:
            return [f"{head} were applied to the probabilities."]
        return [f"{head} change {split} accuracy from {fmt(before_after['accuracy_before'])} to "
                f"{fmt(before_after['accuracy_after'])} and macro-F1 from {fmt(before_after['macro_f1_before'])} to "
                f"{fmt(before_after['macro_f1_after'])}, NLL from {fmt(before_after['nll_before'])} to "
                f"{fmt(before_after['nll_after'])}."]
    if before_after.get("nll_before") is None:
        return [f"{head} was applied to the probabilities."]
    return [f"{head} changes {split} NLL from {fmt(before_after['nll_before'])} to {fmt(before_after['nll_after'])} "
            f"and ECE from {fmt(before_after['ece_before'])} to {fmt(before_after['ece_after'])}; the "
            "predicted labels stay the same."]


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


def class_weights(spec, labels: np.ndarray, k: int) -> Optional["torch.Tensor"]:
    """train.class_weights as a tensor: None, 'balanced' (scikit-learn's inverse frequency) or a list
    (its length is checked by :meth:`SingleLabel.check_config`)."""
    import torch

    if spec is None:
        return None
    if spec == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)
        w = np.ones(k, dtype=np.float64)  # a class absent from train keeps weight 1
        w[present] = compute_class_weight("balanced", classes=present, y=labels) * len(present) / k
        return torch.tensor(w, dtype=torch.float32)
    return torch.tensor([float(x) for x in spec], dtype=torch.float32)
