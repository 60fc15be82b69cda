"""Error analysis as pure functions: (texts, gold ids, probabilities, label names) -> JSON-ready dicts.

Three tasks share it: single-label (gold ids, softmax probabilities), multi-label (0/1 gold and
prediction matrices with one sigmoid probability per label) and regression (gold and predicted
scores). ``metrics.json["task"]`` says which; a run written before tasks existed is single-label.

Lengths are counted in whitespace-separated words, not tokens: words mean the same thing to a
reader and across models, so runs with different tokenizers stay comparable. Token statistics
(and truncation at ``data.max_length``) are in ``metrics.json`` under ``data.token_lengths``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .metrics import HEADLINE, METRICS, MULTI_LABEL_HEADLINE, REGRESSION_HEADLINE, Metric

LENGTH_UNIT = "words"

# ---------------------------------------------------------------- tasks

TASKS = ("single-label", "multi-label", "regression")
# The metric keys a split of each task is summarised by, in display order: tasks.HEADLINES, built
# here from metrics.py so that reading a run (the report path) never imports torch through tasks/
# (test_analysis checks that the two agree).
HEADLINES = {"single-label": HEADLINE, "multi-label": MULTI_LABEL_HEADLINE, "regression": REGRESSION_HEADLINE}


def task_of(metrics: dict) -> str:
    """The task of a run from its metrics.json (runs from before tasks existed are single-label)."""
    return metrics.get("task") or "single-label"


def headline(task: str) -> tuple[str, ...]:
    return HEADLINES.get(task, HEADLINE)


def metric(key: str) -> Metric:
    """The display row of a metric key (an unknown key is shown by its name, larger is better)."""
    return METRICS.get(key) or Metric(key, key, "max")


def word_counts(texts: Sequence[str]) -> np.ndarray:
    return np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))


def clip_text(text: str, max_chars: int) -> str:
    """Shorten long texts for display; the full text stays in predictions/<split>.csv."""
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (nan, nan) when n == 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def bucket_edges(lengths: np.ndarray, n_buckets: int) -> list[tuple[int, int]]:
    """Integer length ranges [lo, hi] holding about equal numbers of texts (ties keep buckets whole)."""
    if len(lengths) == 0:
        return []
    lo, hi = int(lengths.min()), int(lengths.max())
    qs = np.quantile(lengths, np.linspace(0, 1, n_buckets + 1)[1:-1]) if n_buckets > 1 else []
    cuts = sorted({int(math.ceil(q)) for q in qs if lo < math.ceil(q) <= hi})
    starts = [lo] + cuts
    ends = [c - 1 for c in cuts] + [hi]
    return list(zip(starts, ends))


def by_length(lengths: np.ndarray, correct: np.ndarray, confidence: Optional[np.ndarray],
              n_buckets: int) -> list[dict]:
    """Accuracy (with a 95% Wilson interval), errors and mean confidence per word-length bucket
    (multi-label: exact-set accuracy, and no single confidence, so None)."""
    out = []
    for lo, hi in bucket_edges(lengths, n_buckets):
        sel = (lengths >= lo) & (lengths <= hi)
        n = int(sel.sum())
        k = int(correct[sel].sum())
        ci = wilson(k, n)
        out.append({"range": f"{lo}" if lo == hi else f"{lo}–{hi}", "lo": lo, "hi": hi, "n": n,
                    "accuracy": k / n if n else None, "ci95": [ci[0], ci[1]], "errors": n - k,
                    "mean_confidence": float(confidence[sel].mean()) if n and confidence is not None else None})
    return out


def confident_mistakes(texts: Sequence[str], y: np.ndarray, probs: np.ndarray, labels: Sequence[str], k: int,
                       lengths: np.ndarray, max_chars: int = 600) -> list[dict]:
    """The `k` wrong predictions the model was surest of, most confident first."""
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.lexsort((wrong, -conf[wrong]))][:k]
    return [{"index": int(i), "text": clip_text(texts[i], max_chars), "gold": labels[y[i]],
             "predicted": labels[pred[i]], "confidence": float(conf[i]), "p_gold": float(probs[i, y[i]]),
             "words": int(lengths[i])} for i in order]


def confusion_pairs(texts: Sequence[str], y: np.ndarray, probs: np.ndarray, labels: Sequence[str], examples: int,
                    max_chars: int = 300) -> list[dict]:
    """Mistakes grouped by (gold, predicted), most frequent first, each with its surest examples."""
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    wrong = pred != y
    n_wrong = int(wrong.sum())
    support = np.bincount(y, minlength=len(labels))
    pairs = []
    if n_wrong == 0:
        return pairs
    codes = y[wrong] * len(labels) + pred[wrong]
    idx_wrong = np.flatnonzero(wrong)
    uniq, counts = np.unique(codes, return_counts=True)
    for code, count in sorted(zip(uniq.tolist(), counts.tolist()), key=lambda t: (-t[1], t[0])):
        g, p = divmod(code, len(labels))
        members = idx_wrong[codes == code]
        top = members[np.lexsort((members, -conf[members]))][:examples]
        pairs.append({"gold": labels[g], "predicted": labels[p], "count": int(count),
                      "share_of_errors": count / n_wrong, "rate_of_gold": count / int(support[g]),
                      "examples": [{"index": int(i), "text": clip_text(texts[i], max_chars),
                                    "confidence": float(conf[i])} for i in top]})
    return pairs


def roc_points(pos: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates at every distinct threshold (scikit-learn's ``roc_curve``) and
    the area under them (``auc``; equals ``roc_auc_score``). `pos` needs both classes."""
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(pos, score, drop_intermediate=False)
    return fpr, tpr, float(auc(fpr, tpr))


def pr_points(pos: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision and recall at every distinct threshold (scikit-learn's ``precision_recall_curve``),
    and the average precision of that curve: the step-wise sum of precision over the recall gained,
    ``average_precision_score``'s definition, summed from recall 0 up."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(pos, score)
    p, r = precision[::-1], recall[::-1]  # increasing recall, from (recall 0, precision 1)
    return p, r, float(np.sum(np.diff(r) * p[1:]))


def ranking(y: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict:
    """Per-class one-vs-rest ROC-AUC and average precision (null for a class absent from the split)."""
    out = {}
    for c, name in enumerate(labels):
        pos = y == c
        if 0 < pos.sum() < len(y):
            out[name] = {"roc_auc": roc_points(pos, probs[:, c])[2],
                         "average_precision": pr_points(pos, probs[:, c])[2]}
        else:
            out[name] = {"roc_auc": None, "average_precision": None}
    return out


def analyse_split(texts: Sequence[str], y: Sequence[int], probs: np.ndarray, labels: Sequence[str],
                  top_errors: int = 20, n_buckets: int = 5, examples_per_pair: int = 3) -> dict:
    """Error analysis of one split: confident mistakes, confusion pairs, accuracy by length."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    lengths = word_counts(texts)
    n = len(y)
    errors = int(n - correct.sum())
    return {
        "n": n,
        "errors": errors,
        "error_rate": errors / n if n else None,
        "most_confident_mistakes": confident_mistakes(texts, y, probs, labels, top_errors, lengths),
        "confusions": confusion_pairs(texts, y, probs, labels, examples_per_pair),
        "by_length": by_length(lengths, correct, probs.max(axis=1), n_buckets),
        "per_class_ranking": ranking(y, probs, labels),
    }


def length_histograms(lengths: dict[str, np.ndarray], max_bins: int = 40) -> dict:
    """Word-length histograms of several splits on shared bins (the longest 1% clipped into the last bin)."""
    present = {k: v for k, v in lengths.items() if len(v)}
    if not present:
        return {}
    allv = np.concatenate(list(present.values()))
    top = max(int(np.ceil(np.percentile(allv, 99))), int(allv.min()) + 1)
    lo = int(allv.min())
    width = max(1, int(np.ceil((top - lo + 1) / max_bins)))
    edges = list(range(lo, top + width + 1, width))
    out = {"unit": LENGTH_UNIT, "edges": edges, "clipped_at": top, "counts": {}, "stats": {}}
    for split, v in present.items():
        counts, _ = np.histogram(np.clip(v, lo, edges[-1] - 1), bins=edges)
        out["counts"][split] = counts.tolist()
        out["stats"][split] = {"n": int(len(v)), "mean": float(v.mean()), "median": float(np.median(v)),
                               "p95": float(np.percentile(v, 95)), "min": int(v.min()), "max": int(v.max())}
    return out


# ---------------------------------------------------------------- multi-label


def label_matrix(cells: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """";"-joined label names per row (the predictions csv's gold and predicted columns; "" = no
    label) as an (n, k) 0/1 matrix. Raises ValueError naming a label outside `labels`."""
    index = {n: i for i, n in enumerate(labels)}
    out = np.zeros((len(cells), len(labels)), dtype=bool)
    for r, cell in enumerate(cells):
        for name in filter(None, (x.strip() for x in str(cell).split(";"))):
            if name not in index:
                raise ValueError(f"label {name!r} is not one of the run's labels")
            out[r, index[name]] = True
    return out


def mistake_cooccurrence(gold: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> list[list[int]]:
    """matrix[i][j]: texts where label i was missed (false negative) while label j was wrongly
    predicted (false positive). The multi-label analogue of a confusion matrix's off-diagonal: which
    label the model puts in place of the right one. The diagonal is 0 (a label is never both)."""
    gold, pred = np.asarray(gold, dtype=bool), np.asarray(pred, dtype=bool)
    if gold.shape != pred.shape or gold.shape[1] != len(labels):
        raise ValueError(f"gold {gold.shape} and predicted {pred.shape} need one column per label ({len(labels)})")
    fn = (gold & ~pred).astype(np.int64)
    fp = (pred & ~gold).astype(np.int64)
    return (fn.T @ fp).tolist()


def cooccurrence_pairs(texts: Sequence[str], gold: np.ndarray, pred: np.ndarray, probs: np.ndarray,
                       labels: Sequence[str], examples: int, max_pairs: int = 50, max_chars: int = 300) -> list[dict]:
    """The (missed, wrongly predicted) label pairs of :func:`mistake_cooccurrence`, most frequent
    first (the `max_pairs` most), each with the texts where the swap was surest (the wrong label's
    probability most above the missed one's)."""
    gold, pred = np.asarray(gold, dtype=bool), np.asarray(pred, dtype=bool)
    fn, fp = gold & ~pred, pred & ~gold
    matrix = np.asarray(mistake_cooccurrence(gold, pred, labels))
    n_wrong = int((fn | fp).any(axis=1).sum())
    ii, jj = np.nonzero(matrix)
    order = sorted(zip(ii.tolist(), jj.tolist()), key=lambda t: (-matrix[t], t))[:max_pairs]
    out = []
    for i, j in order:
        rows = np.flatnonzero(fn[:, i] & fp[:, j])
        margin = probs[rows, j] - probs[rows, i]
        top = rows[np.lexsort((rows, -margin))][:examples]
        count = int(matrix[i, j])
        out.append({"missed": labels[i], "predicted": labels[j], "count": count,
                    "share_of_errors": count / n_wrong, "rate_of_missed": count / int(gold[:, i].sum()),
                    "examples": [{"index": int(r), "text": clip_text(texts[r], max_chars),
                                  "p_missed": float(probs[r, i]), "p_predicted": float(probs[r, j])} for r in top]})
    return out


def _names(row: np.ndarray, labels: Sequence[str]) -> list[str]:
    return [labels[c] for c in np.flatnonzero(row)]


def multilabel_mistakes(texts: Sequence[str], gold: np.ndarray, pred: np.ndarray, probs: np.ndarray,
                        labels: Sequence[str], k: int, lengths: np.ndarray, thresholds: Optional[dict] = None,
                        max_chars: int = 600) -> dict:
    """The surest label mistakes: the `k` false positives with the highest probability and the `k`
    false negatives with the lowest (one entry per (text, label) cell, with the text's full sets)."""
    gold, pred = np.asarray(gold, dtype=bool), np.asarray(pred, dtype=bool)
    out = {}
    for key, cells, sign in (("false_positives", pred & ~gold, -1.0), ("false_negatives", gold & ~pred, 1.0)):
        r, c = np.nonzero(cells)
        top = np.lexsort((c, r, sign * probs[r, c]))[:k]  # surest first; ties by row, then label
        out[key] = [{"index": int(r[t]), "text": clip_text(texts[r[t]], max_chars), "label": labels[c[t]],
                     "probability": float(probs[r[t], c[t]]),
                     "threshold": (thresholds or {}).get(labels[c[t]]), "gold": _names(gold[r[t]], labels),
                     "predicted": _names(pred[r[t]], labels), "words": int(lengths[r[t]])} for t in top]
    return out


def analyse_multilabel_split(texts: Sequence[str], gold: np.ndarray, pred: np.ndarray, probs: np.ndarray,
                             labels: Sequence[str], thresholds: Optional[dict] = None, top_errors: int = 20,
                             n_buckets: int = 5, examples_per_pair: int = 3) -> dict:
    """Error analysis of one multi-label split. A text is right when its predicted set equals its
    gold set exactly; label-level mistakes are counted per label and as (missed, predicted) pairs."""
    gold, pred = np.asarray(gold, dtype=bool), np.asarray(pred, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    lengths = word_counts(texts)
    correct = (gold == pred).all(axis=1).astype(np.float64)
    n = len(texts)
    errors = int(n - correct.sum())
    fn, fp = gold & ~pred, pred & ~gold
    return {
        "n": n,
        "errors": errors,
        "error_rate": errors / n if n else None,
        "label_errors": int(fn.sum() + fp.sum()),
        "empty_predicted": int((~pred.any(axis=1)).sum()),
        "per_label_errors": {name: {"false_negatives": int(fn[:, c].sum()), "false_positives": int(fp[:, c].sum())}
                             for c, name in enumerate(labels)},
        **multilabel_mistakes(texts, gold, pred, probs, labels, top_errors, lengths, thresholds),
        "mistake_cooccurrence": mistake_cooccurrence(gold, pred, labels),
        "cooccurrence_pairs": cooccurrence_pairs(texts, gold, pred, probs, labels, examples_per_pair),
        "by_length": by_length(lengths, correct, None, n_buckets),
    }


# ---------------------------------------------------------------- regression


def largest_errors(texts: Sequence[str], gold: np.ndarray, pred: np.ndarray, k: int, lengths: np.ndarray,
                   max_chars: int = 600) -> list[dict]:
    """The `k` predictions furthest from gold, largest |error| first (error = predicted - gold)."""
    err = np.asarray(pred, dtype=np.float64) - np.asarray(gold, dtype=np.float64)
    order = np.lexsort((np.arange(len(err)), -np.abs(err)))[:k]
    return [{"index": int(i), "text": clip_text(texts[i], max_chars), "gold": float(gold[i]),
             "predicted": float(pred[i]), "error": float(err[i]), "words": int(lengths[i])} for i in order]


def _error_stats(err: np.ndarray) -> dict:
    n = len(err)
    return {"n": n, "mae": float(np.abs(err).mean()) if n else None,
            "rmse": float(np.sqrt((err ** 2).mean())) if n else None, "mean_error": float(err.mean()) if n else None}


def error_by_length(lengths: np.ndarray, gold: np.ndarray, pred: np.ndarray, n_buckets: int) -> list[dict]:
    """MAE, RMSE and mean signed error per word-length bucket (the buckets of :func:`bucket_edges`)."""
    err = np.asarray(pred, dtype=np.float64) - np.asarray(gold, dtype=np.float64)
    out = []
    for lo, hi in bucket_edges(lengths, n_buckets):
        sel = (lengths >= lo) & (lengths <= hi)
        out.append({"range": f"{lo}" if lo == hi else f"{lo}–{hi}", "lo": lo, "hi": hi, **_error_stats(err[sel])})
    return out


def error_by_gold(gold: np.ndarray, pred: np.ndarray, n_bins: int = 5) -> list[dict]:
    """Mean signed error, MAE and RMSE per gold-value bin (equal width over the gold range, empty bins
    left out): shows whether the extremes are pulled toward the mean."""
    gold = np.asarray(gold, dtype=np.float64)
    err = np.asarray(pred, dtype=np.float64) - gold
    if not len(gold):
        return []
    lo, hi = float(gold.min()), float(gold.max())
    edges = np.linspace(lo, hi, n_bins + 1) if hi > lo else np.array([lo, hi])
    idx = np.clip(np.searchsorted(edges, gold, side="right") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        sel = idx == b
        if sel.any():
            out.append({"range": f"{edges[b]:.3g}–{edges[b + 1]:.3g}", "lo": float(edges[b]),
                        "hi": float(edges[b + 1]), **_error_stats(err[sel])})
    return out


def analyse_regression_split(texts: Sequence[str], gold: np.ndarray, pred: np.ndarray, top_errors: int = 20,
                             n_buckets: int = 5) -> dict:
    """Error analysis of one regression split: largest errors, error by length and by gold value."""
    gold = np.asarray(gold, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    lengths = word_counts(texts)
    return {"n": len(gold), **{k: v for k, v in _error_stats(pred - gold).items() if k != "n"},
            "largest_errors": largest_errors(texts, gold, pred, top_errors, lengths),
            "by_length": error_by_length(lengths, gold, pred, n_buckets),
            "by_gold": error_by_gold(gold, pred, n_buckets)}


# ---------------------------------------------------------------- findings


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _length_findings(buckets: list[dict], overall: float, name: str) -> list[str]:
    """The length bucket whose 95% interval lies below (or above) the overall score, or that none does."""
    out: list[str] = []
    buckets = [b for b in buckets if b["n"]]
    if len(buckets) < 2:
        return out
    worst = min(buckets, key=lambda b: b["accuracy"])
    best = max(buckets, key=lambda b: b["accuracy"])
    if worst["ci95"][1] < overall:
        out.append(f"Texts of {worst['range']} words are the weakest: {name} {_fmt(worst['accuracy'])} "
                   f"(n={worst['n']}, 95% CI {_fmt(worst['ci95'][0])}–{_fmt(worst['ci95'][1])}) against "
                   f"{_fmt(overall)} overall.")
    if best["ci95"][0] > overall and best is not worst:
        out.append(f"Texts of {best['range']} words are the easiest: {name} {_fmt(best['accuracy'])} "
                   f"(n={best['n']}).")
    if not out:
        out.append(f"{name.capitalize()} does not clearly depend on length: every length bucket's 95% interval "
                   f"contains the overall {_fmt(overall)}.")
    return out


def _length_shift(analysis: dict, split: str) -> list[str]:
    stats = (analysis.get("text_lengths") or {}).get("stats") or {}
    if "train" in stats and split in stats and stats["train"]["median"] > 0:
        tr, ev = stats["train"]["median"], stats[split]["median"]
        if ev >= 1.5 * tr or ev <= tr / 1.5:
            return [f"{split.capitalize()} texts are {'longer' if ev > tr else 'shorter'} than train texts "
                    f"(median {ev:.0f} words against {tr:.0f}): the model is scored on a different kind of "
                    "text than it mostly learned from."]
    return []


def _truncation(metrics: dict, split: str, n: int) -> list[str]:
    tl = ((metrics.get("data") or {}).get("token_lengths") or {}).get(split) or {}
    if not tl.get("truncated"):
        return []
    share = tl["truncated"] / max(n, 1)
    return [f"{tl['truncated']:,} {split} texts ({'<0.1%' if share < 0.001 else f'{share:.1%}'}) are longer "
            f"than data.max_length tokens and were truncated: the model saw only their beginning."]


def _calibration_findings(metrics: dict, split: str) -> list[str]:
    """What temperature scaling (and, with train.calibrate: bias, the class biases) did (single-label runs
    calibrated on validation)."""
    cal = metrics.get("calibration") or {}
    before_after = (metrics.get(split) or {}).get("calibration") or {}
    if not cal:
        return []
    t = cal.get("temperature")
    what = "A temperature and per-class biases" if cal.get("method") == "bias" else "Temperature scaling"
    head = f"{what} (T={t:.3f}, fitted on validation)" if t is not None else what
    if not cal.get("applied"):
        return [f"{head} was not applied: {cal.get('reason') or 'no reason recorded'}."]
    if cal.get("method") == "bias":
        if before_after.get("accuracy_before") is None:
            return [f"{head} were applied to the probabilities."]
        return [f"{head} change {split} accuracy from {_fmt(before_after['accuracy_before'])} to "
                f"{_fmt(before_after['accuracy_after'])} and macro-F1 from {_fmt(before_after['macro_f1_before'])} to "
                f"{_fmt(before_after['macro_f1_after'])}, NLL from {_fmt(before_after['nll_before'])} to "
                f"{_fmt(before_after['nll_after'])}."]
    if before_after.get("nll_before") is None:
        return [f"{head} was applied to the probabilities."]
    return [f"{head} changes {split} NLL from {_fmt(before_after['nll_before'])} to {_fmt(before_after['nll_after'])} "
            f"and ECE from {_fmt(before_after['ece_before'])} to {_fmt(before_after['ece_after'])}; the "
            "predicted labels stay the same."]


def _single_label_findings(metrics: dict, analysis: dict, split: str) -> list[str]:
    m = metrics[split]
    a = analysis[split]
    acc = m["accuracy"]
    out = _length_findings(a.get("by_length", []), acc, "accuracy")
    out += _length_shift(analysis, split)
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
        out.append(f"{weakest!r} has the lowest F1 ({_fmt(per_class[weakest]['f1'])})"
                   + (f"; it is most often mistaken for {partner!r}." if partner else "."))
    conf = m.get("confidence") or {}
    if conf.get("mean") is not None:
        gap = conf["mean"] - acc
        if gap > 0.02:
            sure = conf.get("wrong_above_0.9") or 0
            out.append(f"The model is over-confident: mean confidence {_fmt(conf['mean'])} against accuracy "
                       f"{_fmt(acc)} (ECE {_fmt(m['ece'])})" + (f"; {sure:,} mistakes have confidence above 0.9."
                                                                if sure else "."))
        elif gap < -0.02:
            out.append(f"The model is under-confident: mean confidence {_fmt(conf['mean'])} against accuracy "
                       f"{_fmt(acc)} (ECE {_fmt(m['ece'])}).")
    out += _calibration_findings(metrics, split)
    dist = m.get("predicted_distribution") or {}
    if dist and per_class:
        n = max(m["n"], 1)
        skew = max(dist, key=lambda c: abs(dist[c] - per_class[c]["support"]) / n)
        diff = (dist[skew] - per_class[skew]["support"]) / n
        if abs(diff) >= 0.05:
            out.append(f"It predicts {skew!r} for {dist[skew] / n:.0%} of texts, though "
                       f"{per_class[skew]['support'] / n:.0%} "
                       f"are {skew!r}.")
    return out + _truncation(metrics, split, m["n"])


def _threshold_finding(metrics: dict, m: dict, split: str) -> list[str]:
    """Tuned thresholds against 0.5 for every label, on the metric they were tuned for."""
    th = metrics.get("thresholds") or {}
    key = th.get("objective") or "macro_f1"
    fixed = (m.get("at_0.5") or {}).get(key)
    if th.get("mode") in (None, "fixed") or fixed is None or m.get(key) is None:
        return []
    name = metric(key).name
    tuned = f"{th['mode']} thresholds tuned for {name} on validation"
    if m[key] >= fixed:
        return [f"The {tuned} give {split} {name} {_fmt(m[key])} against {_fmt(fixed)} with 0.5 for every label "
                f"(+{m[key] - fixed:.3f})."]
    return [f"The {tuned} score lower on {split} than 0.5 for every label ({name} {_fmt(m[key])} against "
            f"{_fmt(fixed)}): they over-fit validation; consider fewer thresholds (global) or more validation data."]


def _multilabel_findings(metrics: dict, analysis: dict, split: str) -> list[str]:
    m, a = metrics[split], analysis[split]
    per_label = m.get("per_label") or {}
    present = {c: v for c, v in per_label.items() if v.get("support")}
    out: list[str] = []
    if len(present) >= 2:
        worst = sorted(present, key=lambda c: (present[c]["f1"], c))[:3]
        out.append("The weakest labels by F1 are " + ", ".join(
            f"{c!r} ({_fmt(present[c]['f1'])}, {present[c]['support']:,} texts)" for c in worst)
            + (f", against macro-F1 {_fmt(m['macro_f1'])}." if m.get("macro_f1") is not None else "."))
    absent = [c for c in per_label if not per_label[c].get("support")]
    if absent:
        out.append(f"{len(absent)} label(s) never occur in the {split} split ({', '.join(map(repr, absent[:5]))}"
                   f"{', …' if len(absent) > 5 else ''}): their scores measure nothing.")
    out += _threshold_finding(metrics, m, split)
    gold_c, pred_c = m.get("label_cardinality"), m.get("predicted_cardinality")
    if gold_c and pred_c is not None and abs(pred_c - gold_c) > 0.1 * gold_c:
        out.append(f"It {'over' if pred_c > gold_c else 'under'}-predicts: {pred_c:.2f} labels per text on average "
                   f"against {gold_c:.2f} in gold" + (f"; {a['empty_predicted']:,} texts get no label at all."
                                                        if a.get("empty_predicted") and pred_c < gold_c else "."))
    pairs = a.get("cooccurrence_pairs") or []
    if pairs:
        p = pairs[0]
        out.append(f"The most common mix-up is {p['missed']!r} missed while {p['predicted']!r} is predicted: "
                   f"{p['count']:,} texts, {p['rate_of_missed']:.1%} of all {p['missed']!r} texts.")
    if m.get("subset_accuracy") is not None:
        out += _length_findings(a.get("by_length", []), m["subset_accuracy"], "subset accuracy")
    return out + _length_shift(analysis, split) + _truncation(metrics, split, m["n"])


def _regression_findings(metrics: dict, analysis: dict, split: str) -> list[str]:
    m, a = metrics[split], analysis[split]
    out: list[str] = []
    std = m.get("gold_std") or 0.0
    if std > 0 and m.get("pred_mean") is not None and abs(m["pred_mean"] - m["gold_mean"]) > 0.1 * std:
        out.append(f"Predictions are biased {'high' if m['pred_mean'] > m['gold_mean'] else 'low'}: mean "
                   f"{_fmt(m['pred_mean'])} against {_fmt(m['gold_mean'])} in gold.")
    if std > 0 and m.get("pred_std") is not None and m["pred_std"] < 0.8 * std:
        out.append(f"Predictions are compressed toward the mean: their standard deviation is {_fmt(m['pred_std'])} "
                   f"against {_fmt(std)} in gold.")
    bins = a.get("by_gold") or []
    if std > 0 and len(bins) >= 2:
        top, bottom = bins[-1], bins[0]
        if top["mean_error"] < -0.25 * std:
            out.append(f"High scores are under-predicted: texts with gold {top['range']} (n={top['n']:,}) are "
                       f"predicted {-top['mean_error']:.3f} too low on average.")
        if bottom["mean_error"] > 0.25 * std:
            out.append(f"Low scores are over-predicted: texts with gold {bottom['range']} (n={bottom['n']:,}) are "
                       f"predicted {bottom['mean_error']:.3f} too high on average.")
    buckets = [b for b in a.get("by_length") or [] if b["n"]]
    mae = m.get("mae")
    if len(buckets) >= 2 and mae:
        worst = max(buckets, key=lambda b: b["mae"])
        if worst["mae"] > 1.25 * mae:
            out.append(f"Texts of {worst['range']} words have the largest errors: MAE {_fmt(worst['mae'])} "
                       f"(n={worst['n']:,}) against {_fmt(mae)} overall.")
        else:
            out.append(f"Errors do not clearly depend on length: every length bucket's MAE is within 25% of the "
                       f"overall {_fmt(mae)}.")
    return out + _length_shift(analysis, split) + _truncation(metrics, split, m["n"])


def findings(metrics: dict, analysis: dict, split: str) -> list[str]:
    """Plain-language observations backed by the numbers (each only when the data supports it),
    chosen by the run's task."""
    if not metrics.get(split) or not analysis.get(split):
        return []
    task = task_of(metrics)
    if task == "multi-label":
        return _multilabel_findings(metrics, analysis, split)
    if task == "regression":
        return _regression_findings(metrics, analysis, split)
    return _single_label_findings(metrics, analysis, split)


def primary_split(metrics: dict) -> Optional[str]:
    """The split a report is about: test when the run has one, else validation."""
    for s in ("test", "validation"):
        if metrics.get(s):
            return s
    return None
