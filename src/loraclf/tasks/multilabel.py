"""Multi-label classification: any number of labels per text, none included.

One sigmoid per label, binary cross-entropy (optionally with positive-class weights for rare labels),
and a decision threshold per label (or one for all) tuned on validation after training. Gold labels
are a 0/1 matrix (texts x labels); outputs are per-label probabilities. The reading side (label
sets, the predictions file, error analysis, findings, plots; templates/multilabel.html.j2 and
templates/card_multi_label.md.j2) lives here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..errors import ConfigError, DataError, LoraclfError, ModelError
from ..evaluation import analysis as an
from ..evaluation.metrics import MULTI_LABEL_HEADLINE, metric, multilabel_metrics
from .base import LABEL_JOIN, Predictions, Task, check_finite, check_label_names, refuse_single_label_options, sigmoid
from .labels import LabelSet, label_sets, multi_hot, written_set

if TYPE_CHECKING:
    import torch

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
    row_metrics = ("micro_f1", "macro_f1", "subset_accuracy")
    fitted_key = "thresholds"
    decision_thresholds = True
    loss_name = "binary cross-entropy loss"
    options = frozenset({"train.thresholds", "train.threshold_objective", "data.label_names"})
    report_template = "multilabel.html.j2"
    card_template = "card_multi_label.md.j2"
    card_task_name = "Multi-label Text Classification"
    card_tags = ("multi-label-classification",)
    classes = True

    def __init__(self, labels: Sequence[str], state: Optional[dict] = None):
        super().__init__(labels)
        self.thresholds = np.full(len(self.labels), 0.5)
        saved = (state or {}).get("thresholds")
        if saved:
            try:
                self.set_thresholds(saved)
            except ConfigError as e:
                raise ModelError(f"loraclf.json: task_state: {e}; the artifact is damaged") from None

    @classmethod
    def read_labels(cls, df, cfg, names: Optional[list[str]], where: str) -> list:
        return label_sets(df, cfg, names, where)

    @classmethod
    def keep_labels(cls, texts: list[list[str]], labels: list, keep: list[str], where: str):
        """Every row stays; labels outside `keep` leave its set (a row may be left with none, which is valid)."""
        return texts, [[lab for lab in row if lab in keep] for row in labels]

    @classmethod
    def label_set(cls, cfg, train: list, names_cfg: Optional[list], keep: Optional[list[str]],
                  where: str) -> LabelSet:
        names = check_label_names(cfg, {lab for row in train for lab in row}, names_cfg, keep, where)
        if not names:
            raise DataError(f"{where}: no train row has a label; multi-label training needs some")
        joined = [n for n in names if LABEL_JOIN in n]
        if joined:  # label sets are written joined by ';' (predictions, `loraclf predict`)
            raise DataError(f"{where}: label {joined[0]!r} contains ';', which separates labels in loraclf's outputs")
        return LabelSet(names)

    @classmethod
    def label_array(cls, rows: list, labels: LabelSet, where: str, split: str) -> np.ndarray:
        return multi_hot(rows, labels.to_id, where, split)

    @classmethod
    def folds(cls, labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
        """Iterative stratification (Sechidis et al., 2011): every fold gets about its share of each label,
        rare ones included, which label sets are too many to stratify on directly."""
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        split = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return [np.sort(test) for _, test in split.split(np.zeros((len(labels), 1)), labels)]

    def class_indicator(self, labels):
        return labels > 0.5

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

    def loss_function(self, tcfg, train_labels: np.ndarray, device) -> "torch.nn.Module":
        import torch

        w = positive_weights(tcfg.pos_weight, train_labels)
        loss = torch.nn.BCEWithLogitsLoss(pos_weight=w.to(device) if w is not None else None)
        return lambda logits, labels: loss(logits, labels.float())

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits.astype(np.float64))

    def evaluate(self, logits: np.ndarray, gold: np.ndarray) -> tuple[dict, np.ndarray]:
        check_finite(logits)
        probs = self.probabilities(logits)
        loss = bce_with_logits(logits, gold) if len(gold) else float("nan")
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

    def fitted_line(self, fitted: dict) -> Optional[str]:
        if fitted["mode"] == "fixed":
            return "thresholds: fixed at 0.5"
        vals = list(fitted["values"].values())
        return f"thresholds: {fitted['mode']} for {fitted['objective']} on validation ({min(vals):.2f}-{max(vals):.2f})"

    # ---------------------------------------------------------------- reading a run
    def label_matrix(self, cells: Sequence[str]) -> np.ndarray:
        """Label sets as the predictions file writes them (names joined by LABEL_JOIN; "" = no label)
        as an (n, k) boolean matrix. Raises ValueError naming a label outside the task's labels."""
        index = {n: i for i, n in enumerate(self.labels)}
        out = np.zeros((len(cells), len(self.labels)), dtype=bool)
        for r, cell in enumerate(cells):
            for name in filter(None, (x.strip() for x in str(cell).split(LABEL_JOIN))):
                if name not in index:
                    raise ValueError(f"label {name!r} is not one of the run's labels")
                out[r, index[name]] = True
        return out

    def parse_predictions(self, table, path) -> Predictions:
        probs = self._output_matrix(table, path)
        try:
            return Predictions(table["text"].tolist(), self.label_matrix(table["gold"]), probs,
                               self.label_matrix(table["predicted"]))
        except ValueError as e:
            raise LoraclfError(f"{path}: {e} {self.labels}") from None

    def analyse(self, p: Predictions, metrics: dict, opts: dict) -> dict:
        thresholds = (metrics.get("thresholds") or {}).get("values")
        return an.analyse_multilabel_split(p.texts, p.gold, p.predicted, p.outputs, self.labels, thresholds,
                                           opts["top_errors"], opts["length_buckets"], opts["examples_per_confusion"])

    def findings(self, metrics: dict, analysis: dict, split: str) -> list[str]:
        m, a = metrics[split], analysis[split]
        per_label = m.get("per_label") or {}
        present = {c: v for c, v in per_label.items() if v.get("support")}
        out: list[str] = []
        if len(present) >= 2:
            worst = sorted(present, key=lambda c: (present[c]["f1"], c))[:3]
            out.append("The weakest labels by F1 are " + ", ".join(
                f"{c!r} ({an.fmt3(present[c]['f1'])}, {present[c]['support']:,} texts)" for c in worst)
                + (f", against macro-F1 {an.fmt3(m['macro_f1'])}." if m.get("macro_f1") is not None else "."))
        absent = [c for c in per_label if not per_label[c].get("support")]
        if absent:
            out.append(f"{len(absent)} label(s) never occur in the {split} split ({', '.join(map(repr, absent[:5]))}"
                       f"{', …' if len(absent) > 5 else ''}): their scores measure nothing.")
        out += _threshold_finding(metrics, m, split) + _cardinality_finding(m, a)
        pairs = a.get("cooccurrence_pairs") or []
        if pairs:
            p = pairs[0]
            out.append(f"The most common mix-up is {p['missed']!r} missed while {p['predicted']!r} is predicted: "
                       f"{p['count']:,} texts, {p['rate_of_missed']:.1%} of all {p['missed']!r} texts.")
        if m.get("subset_accuracy") is not None:
            out += an.length_findings(a.get("by_length", []), m["subset_accuracy"], "subset accuracy")
        return out + an.length_shift(analysis, split) + an.truncation(metrics, split, m["n"])

    def plots(self, emit, run, ea: dict, split: str, suffix: str) -> None:
        from ..evaluation import plots as pl

        m, a, labels = run.metrics[split], ea.get(split) or {}, self.labels
        emit(pl.per_label(m["per_label"], labels, f"Per-label precision, recall and F1{suffix}"), "per_label.png",
             "evaluation", "Per-label scores", "Precision, recall and F1 of each label at its decision threshold t, "
             "worst F1 first, with its number of texts n.")
        if split in run.predictions:
            p = run.predictions[split]
            emit(pl.multilabel_pr_curves(p.gold, p.outputs, labels,
                                         (run.metrics.get("thresholds") or {}).get("values"), suffix),
                 "pr.png", "evaluation", "Precision-recall curves per label", "Each label's precision against "
                 "recall as its threshold moves; AP is the average precision. The dots are the thresholds the run "
                 "uses.")
        if a.get("mistake_cooccurrence"):
            emit(pl.mistake_cooccurrence(a["mistake_cooccurrence"], labels, f"Mistake co-occurrence{suffix}"),
                 "mistake_cooccurrence.png", "errors", "Mistake co-occurrence",
                 "Texts where the row's label was missed while the column's label was predicted wrongly: which "
                 "label the model puts in place of the right one.")
        emit(pl.length_distribution(ea.get("text_lengths") or {}), "lengths.png", "errors", "Text length per split",
             "Length in words of every split (train as loaded for training).")
        if a.get("by_length") and m.get("subset_accuracy") is not None:
            emit(pl.accuracy_by_length(a["by_length"], m["subset_accuracy"], suffix, "subset accuracy"),
                 "subset_accuracy_by_length.png", "errors", "Subset accuracy by length",
                 "Share of texts whose predicted label set is exactly right, per word-length bucket, with 95% "
                 "Wilson intervals; red: significantly below overall, green: above.")

    def subtitle(self) -> str:
        return f"multi-label, {len(self.labels)} labels"

    def report_context(self, run, ea: dict, split: Optional[str]) -> dict:
        m = run.metrics
        fixed = (m[split].get("at_0.5") or {}) if split else {}
        rows = _per_label_rows(m, split, (ea.get(split) or {}).get("per_label_errors") or {}) if split else []
        return {"per_label": rows, "thresholds": m.get("thresholds") or {},
                "at_05": [k for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")
                          if k in fixed]}

    def label_issues(self, p: Predictions) -> list[dict]:
        """cleanlab's multi-label confident learning on out-of-fold label probabilities: texts whose label
        set is likely wrong (a label missing or one too many), least consistent first; the suggestion is
        the set the out-of-fold probabilities give at 0.5."""
        from cleanlab.filter import find_label_issues
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        given = [list(np.flatnonzero(row)) for row in p.gold]
        probs = np.clip(p.outputs, 1e-6, 1 - 1e-6)
        ranked = find_label_issues(labels=given, pred_probs=probs, multi_label=True,
                                   return_indices_ranked_by="self_confidence")
        quality = get_label_quality_scores(given, probs)
        names = lambda row: LABEL_JOIN.join(self.labels[j] for j in row)  # noqa: E731
        return [{"row": int(i), "given": names(given[i]), "suggested": names(np.flatnonzero(probs[i] >= 0.5)),
                 "p_given": float(np.mean([probs[i, j] for j in given[i]])) if given[i] else None,
                 "p_suggested": None, "quality": float(quality[i])} for i in ranked]

    def soft_targets(self, gold: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
        return ((1 - weight) * gold + weight * teacher).astype(np.float32)  # label by label

    def write_labels(self, df, rows: list[int], labels: list[str], cfg, names: Optional[list[str]]) -> None:
        sets = [[x for x in str(s).split(LABEL_JOIN) if x] for s in labels]
        keep = {str(x) for x in cfg.include_labels} if cfg.include_labels else None
        if keep is not None:  # labels the run left out were not audited: each row keeps its own
            had = label_sets(df.iloc[rows], cfg, names, "the file")
            sets = [chosen + [x for x in old if x not in keep] for chosen, old in zip(sets, had)]
        if cfg.label_columns:  # one 0/1 column a label, written as the row had it
            for row, chosen in zip(rows, sets):
                for c in cfg.label_columns:
                    like, on = df.at[row, c], c in chosen
                    df.at[row, c] = str(int(on)) if isinstance(like, str) else on if isinstance(
                        like, (bool, np.bool_)) else int(on)
            return
        col = cfg.label_column
        df[col] = df[col].astype(object)
        for row, chosen in zip(rows, sets):
            df.at[row, col] = written_set(chosen, df.at[row, col], cfg, names)

    def card_label_table(self, metrics: dict, split: str) -> Optional[str]:
        from ..evaluation.tables import markdown_table

        pl = metrics[split].get("per_label") or {}
        return markdown_table(["label", "threshold", "precision", "recall", "F1", "support"], [
            [f"`{c}`", f"{v.get('threshold', 0.5):.3f}", f"{v['precision']:.4f}", f"{v['recall']:.4f}",
             f"{v['f1']:.4f}", f"{v['support']:,}"] for c, v in pl.items()])


def _per_label_rows(m: dict, split: str, errors: dict) -> list[dict]:
    """The per-label table of a multi-label split, worst F1 first, with its missed and wrong counts."""
    s = m[split]
    return [{"name": c, **v, "low": v["f1"] < s["macro_f1"] - 0.1, **(errors.get(c) or {})}
            for c, v in sorted(s["per_label"].items(), key=lambda kv: kv[1]["f1"])]


def _threshold_finding(metrics: dict, m: dict, split: str) -> list[str]:
    """Tuned thresholds against 0.5 for every label, on the metric they were tuned for."""
    th = metrics.get("thresholds") or {}
    key = th.get("objective") or "macro_f1"
    fixed = (m.get("at_0.5") or {}).get(key)
    if th.get("mode") in (None, "fixed") or fixed is None or m.get(key) is None:
        return []
    name, fmt = metric(key).name, an.fmt3
    tuned = f"{th['mode']} thresholds tuned for {name} on validation"
    if m[key] >= fixed:
        return [f"The {tuned} give {split} {name} {fmt(m[key])} against {fmt(fixed)} with 0.5 for every label "
                f"(+{m[key] - fixed:.3f})."]
    return [f"The {tuned} score lower on {split} than 0.5 for every label ({name} {fmt(m[key])} against "
            f"{fmt(fixed)}): they over-fit validation; consider fewer thresholds (global) or more validation data."]


def _cardinality_finding(m: dict, a: dict) -> list[str]:
    gold_c, pred_c = m.get("label_cardinality"), m.get("predicted_cardinality")
    if not gold_c or pred_c is None or abs(pred_c - gold_c) <= 0.1 * gold_c:
        return []
    return [f"It {'over' if pred_c > gold_c else 'under'}-predicts: {pred_c:.2f} labels per text on average "
            f"against {gold_c:.2f} in gold" + (f"; {a['empty_predicted']:,} texts get no label at all."
                                                 if a.get("empty_predicted") and pred_c < gold_c else ".")]


def bce_with_logits(logits: np.ndarray, gold: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits) against 0/1 gold, in float64 and without overflow
    (the form torch's binary_cross_entropy_with_logits uses: max(x, 0) - x*y + log(1 + exp(-|x|)))."""
    x, y = np.asarray(logits, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    return float((np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))).mean())


def positive_weights(spec, train: np.ndarray) -> Optional["torch.Tensor"]:
    """train.pos_weight: None, 'balanced' (negatives / positives per label in train, capped at
    POS_WEIGHT_CAP) or a list in label order."""
    import torch

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
