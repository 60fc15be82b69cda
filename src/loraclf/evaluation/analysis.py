"""Error analysis as pure functions: (texts, gold, outputs, label names) -> JSON-ready dicts.

A library the tasks compose (each task's ``analyse`` and ``findings`` pick what fits it): single-label
pieces (gold ids, softmax probabilities), multi-label pieces (0/1 gold and prediction matrices with
one sigmoid probability per label), regression pieces (gold and predicted scores), and findings that
every task shares (length, a shift in length between splits, truncation).

Lengths are counted in whitespace-separated words, not tokens: words mean the same thing to a
reader and across models, so runs with different tokenizers stay comparable. Token statistics
(and truncation at ``data.max_length``) are in ``metrics.json`` under ``data.token_lengths``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .metrics import ranking_scores

LENGTH_UNIT = "words"


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


def ranking(y: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict:
    """Per-class one-vs-rest ROC-AUC and average precision (null for a class absent from the split)."""
    out = {}
    for c, name in enumerate(labels):
        pos = y == c
        if 0 < pos.sum() < len(y):
            auc, ap = ranking_scores(pos, probs[:, c])
            out[name] = {"roc_auc": auc, "average_precision": ap}
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


def fmt3(x: float) -> str:
    return f"{x:.3f}"


def length_findings(buckets: list[dict], overall: float, name: str) -> list[str]:
    """The length bucket whose 95% interval lies below (or above) the overall score, or that none does."""
    out: list[str] = []
    buckets = [b for b in buckets if b["n"]]
    if len(buckets) < 2:
        return out
    worst = min(buckets, key=lambda b: b["accuracy"])
    best = max(buckets, key=lambda b: b["accuracy"])
    if worst["ci95"][1] < overall:
        out.append(f"Texts of {worst['range']} words are the weakest: {name} {fmt3(worst['accuracy'])} "
                   f"(n={worst['n']}, 95% CI {fmt3(worst['ci95'][0])}–{fmt3(worst['ci95'][1])}) against "
                   f"{fmt3(overall)} overall.")
    if best["ci95"][0] > overall and best is not worst:
        out.append(f"Texts of {best['range']} words are the easiest: {name} {fmt3(best['accuracy'])} "
                   f"(n={best['n']}).")
    if not out:
        out.append(f"{name.capitalize()} does not clearly depend on length: every length bucket's 95% interval "
                   f"contains the overall {fmt3(overall)}.")
    return out


def length_shift(analysis: dict, split: str) -> list[str]:
    stats = (analysis.get("text_lengths") or {}).get("stats") or {}
    if "train" in stats and split in stats and stats["train"]["median"] > 0:
        tr, ev = stats["train"]["median"], stats[split]["median"]
        if ev >= 1.5 * tr or ev <= tr / 1.5:
            return [f"{split.capitalize()} texts are {'longer' if ev > tr else 'shorter'} than train texts "
                    f"(median {ev:.0f} words against {tr:.0f}): the model is scored on a different kind of "
                    "text than it mostly learned from."]
    return []


# what each data.long_text strategy did to a text longer than the window (chunks cut nothing); kept here, not in
# data/long.py, because the data package imports the tasks, which import this module
LONG_TEXT_CUT = {"truncate": "were truncated: the model saw only their beginning",
                 "head-tail": "were read by their beginning and their end (data.long_text=head-tail): the model "
                              "did not see their middle",
                 "chunks": None}


def truncation(metrics: dict, split: str, n: int) -> list[str]:
    tl = ((metrics.get("data") or {}).get("token_lengths") or {}).get(split) or {}
    if not tl.get("truncated"):
        return []
    cut = LONG_TEXT_CUT[((metrics.get(split) or {}).get("long_text") or {}).get("strategy", "truncate")]
    if cut is None:
        return []
    share = tl["truncated"] / max(n, 1)
    return [f"{tl['truncated']:,} {split} texts ({'<0.1%' if share < 0.001 else f'{share:.1%}'}) are longer "
            f"than data.max_length tokens and {cut}."]


def primary_split(metrics: dict) -> Optional[str]:
    """The split a report is about: test when the run has one, else validation."""
    for s in ("test", "validation"):
        if metrics.get(s):
            return s
    return None
