"""Error analysis as pure functions: (texts, gold ids, probabilities, label names) -> JSON-ready dicts.

Lengths are counted in whitespace-separated words, not tokens: words mean the same thing to a
reader and across models, so runs with different tokenizers stay comparable. Token statistics
(and truncation at ``data.max_length``) are in ``metrics.json`` under ``data.token_lengths``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

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


def by_length(lengths: np.ndarray, correct: np.ndarray, confidence: np.ndarray, n_buckets: int) -> list[dict]:
    """Accuracy (with a 95% Wilson interval), errors and mean confidence per word-length bucket."""
    out = []
    for lo, hi in bucket_edges(lengths, n_buckets):
        sel = (lengths >= lo) & (lengths <= hi)
        n = int(sel.sum())
        k = int(correct[sel].sum())
        ci = wilson(k, n)
        out.append({"range": f"{lo}" if lo == hi else f"{lo}–{hi}", "lo": lo, "hi": hi, "n": n,
                    "accuracy": k / n if n else None, "ci95": [ci[0], ci[1]], "errors": n - k,
                    "mean_confidence": float(confidence[sel].mean()) if n else None})
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


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def findings(metrics: dict, analysis: dict, split: str) -> list[str]:
    """Plain-language observations backed by the numbers (each only when the data supports it)."""
    m = metrics.get(split) or {}
    a = analysis.get(split) or {}
    out: list[str] = []
    if not m or not a:
        return out
    acc = m["accuracy"]
    buckets = [b for b in a.get("by_length", []) if b["n"]]
    if len(buckets) >= 2:
        worst = min(buckets, key=lambda b: b["accuracy"])
        best = max(buckets, key=lambda b: b["accuracy"])
        if worst["ci95"][1] < acc:
            out.append(f"Texts of {worst['range']} words are the weakest: accuracy {_fmt(worst['accuracy'])} "
                       f"(n={worst['n']}, 95% CI {_fmt(worst['ci95'][0])}–{_fmt(worst['ci95'][1])}) against "
                       f"{_fmt(acc)} overall.")
        if best["ci95"][0] > acc and best is not worst:
            out.append(f"Texts of {best['range']} words are the easiest: accuracy {_fmt(best['accuracy'])} "
                       f"(n={best['n']}).")
        if not out:
            out.append(f"Accuracy does not clearly depend on length: every length bucket's 95% interval "
                       f"contains the overall {_fmt(acc)}.")
    stats = (analysis.get("text_lengths") or {}).get("stats") or {}
    if "train" in stats and split in stats and stats["train"]["median"] > 0:
        tr, ev = stats["train"]["median"], stats[split]["median"]
        if ev >= 1.5 * tr or ev <= tr / 1.5:
            out.append(f"{split.capitalize()} texts are {'longer' if ev > tr else 'shorter'} than train texts "
                       f"(median {ev:.0f} words against {tr:.0f}): the model is scored on a different kind of "
                       "text than it mostly learned from.")
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
    dist = m.get("predicted_distribution") or {}
    if dist and per_class:
        n = max(m["n"], 1)
        skew = max(dist, key=lambda c: abs(dist[c] - per_class[c]["support"]) / n)
        diff = (dist[skew] - per_class[skew]["support"]) / n
        if abs(diff) >= 0.05:
            out.append(f"It predicts {skew!r} for {dist[skew] / n:.0%} of texts, though "
                       f"{per_class[skew]['support'] / n:.0%} "
                       f"are {skew!r}.")
    tl = ((metrics.get("data") or {}).get("token_lengths") or {}).get(split) or {}
    if tl.get("truncated"):
        share = tl["truncated"] / max(m["n"], 1)
        out.append(f"{tl['truncated']:,} {split} texts ({'<0.1%' if share < 0.001 else f'{share:.1%}'}) are longer "
                   f"than data.max_length tokens and were truncated: the model saw only their beginning.")
    return out


def primary_split(metrics: dict) -> Optional[str]:
    """The split a report is about: test when the run has one, else validation."""
    for s in ("test", "validation"):
        if metrics.get(s):
            return s
    return None
