"""Figures for run and comparison reports. Each function takes plain data and returns a matplotlib
Figure (object-oriented API: no pyplot state, no GUI backend, safe in threads and headless).

Readability rules: every figure has a title and axis labels; classes appear by name, shortened in
the middle when long (the full names are in the report's tables); figures grow with the number of
classes and x tick labels turn vertical when they would not fit side by side. A test renders a
20-class case with long names and checks that no two tick labels overlap.
"""

from __future__ import annotations

import functools
import os.path
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .analysis import error_by_gold
from .metrics import HEADLINE, METRICS, pr_points, roc_points
from .metrics import metric as metric_info

DPI = 110
MAX_LABEL_CHARS = 26
STYLE = {
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
}
GREEN, RED, BLUE, ORANGE, GREY = "#2a9d5c", "#d1495b", "#3569a8", "#e8a33d", "#8a8f98"
PRF_COLORS = {"precision": "#6a8fc7", "recall": "#e8a33d", "f1": "#2a9d5c"}


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return fn(*a, **kw)

    return wrapper


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def save(fig, path: Path) -> Path:
    """Write `fig` as PNG (white background) and release it."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return Path(path)


def short_label(name: str, width: int = MAX_LABEL_CHARS) -> str:
    """Shorten a long class name in the middle, keeping its start and its (often distinctive) end."""
    name = str(name)
    if len(name) <= width:
        return name
    head = (width - 1) // 2 + (width - 1) % 2
    tail = width - 1 - head
    return name[:head].rstrip() + "…" + name[len(name) - tail:].lstrip()


def short_labels(names: Sequence[str], width: int = MAX_LABEL_CHARS) -> list[str]:
    """Shortened names that stay distinguishable: where middle-shortening makes names equal, the
    part they share at the start is dropped instead ("…3: long descriptive na…"), and a numeric
    suffix is the last resort."""
    names = [str(n) for n in names]
    out = [short_label(n, width) for n in names]
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(out):
        groups.setdefault(s, []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        common = os.path.commonprefix([names[i] for i in members])
        cut = max(common.rfind(" ") + 1, len(common) - 4, 0)  # keep a little context before the difference
        for i in members:
            rest = names[i][cut:]
            out[i] = "…" + (rest if len(rest) <= width - 1 else rest[: width - 2].rstrip() + "…")
    seen: dict[str, int] = {}
    for i, s in enumerate(out):
        if s in seen:
            seen[s] += 1
            out[i] = s[: width - 3] + f" #{seen[s]}"
        else:
            seen[s] = 1
    return out


def _text_width_in(text: str, size: float) -> float:
    """Rough rendered width of `text` in inches at `size` points (DejaVu Sans averages ~0.6 em)."""
    return len(text) * size * 0.6 / 72


def _xticks(ax, names: Sequence[str], slot_in: float, size: float = 8.5) -> None:
    """Class-name x tick labels: horizontal when they fit their slot, else vertical."""
    ax.set_xticks(range(len(names)))
    fits = max((_text_width_in(n, size) for n in names), default=0) <= slot_in * 0.92
    if fits:
        ax.set_xticklabels(names, fontsize=size)
    else:
        ax.set_xticklabels(names, fontsize=size, rotation=90, ha="center", va="top")


# ---------------------------------------------------------------- training curves


def _best_line(ax, best_step: Optional[int]) -> None:
    if best_step is not None:
        ax.axvline(best_step, color=GREY, ls="--", lw=1, label=f"best (step {best_step})")


@_styled
def loss_curves(history: list[dict], best_step: Optional[int] = None, ylabel: str = "cross-entropy loss"):
    """Train loss per log step and validation loss per evaluation, on one axis (`ylabel` names the
    task's loss: binary cross-entropy for multi-label, squared error for regression)."""
    tr = [h for h in history if h.get("type") == "train" and h.get("loss") is not None]
    ev = [h for h in history if h.get("type") == "eval" and h.get("loss") is not None]
    if not tr and not ev:
        return None
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    if tr:
        steps, loss = [h["step"] for h in tr], np.array([h["loss"] for h in tr], dtype=float)
        smooth = len(tr) > 30  # noisy: show the raw points faintly and an exponential moving average on top
        ax.plot(steps, loss, color=BLUE, lw=1.0 if smooth else 1.4, alpha=0.3 if smooth else 1.0,
                marker="o" if len(tr) < 3 else None, ms=4, label="train loss (mean over log interval)")
        if smooth:  # centred moving average (no lag), the window shrinking at both ends
            half = max(2, len(tr) // 50)
            c = np.r_[0.0, np.cumsum(loss)]
            lo = np.clip(np.arange(len(loss)) - half, 0, None)
            hi = np.clip(np.arange(len(loss)) + half + 1, None, len(loss))
            ax.plot(steps, (c[hi] - c[lo]) / (hi - lo), color=BLUE, lw=1.8, label="train loss (moving average)")
    if ev:
        ax.plot([h["step"] for h in ev], [h["loss"] for h in ev], color=ORANGE, lw=1.8, marker="o", ms=4,
                label="validation loss")
    _best_line(ax, best_step)
    ax.set(title="Loss", xlabel="optimizer step", ylabel=ylabel)
    ax.legend(loc="best")
    _epoch_axis(ax, history)
    return fig


def _epoch_axis(ax, history: list[dict]) -> None:
    """A secondary x axis in epochs, when steps and epochs are related linearly."""
    pts = [(h["step"], h["epoch"]) for h in history if h.get("step") and h.get("epoch")]
    if len(pts) < 2:
        return
    s, e = np.array(pts, dtype=float).T
    ratio = float(np.median(e / s))
    if ratio <= 0:
        return
    sec = ax.secondary_xaxis("top", functions=(lambda x: x * ratio, lambda x: x / ratio))
    sec.set_xlabel("epoch", fontsize=8)
    sec.tick_params(labelsize=7.5)


@_styled
def learning_rate(history: list[dict]):
    tr = [h for h in history if h.get("type") == "train" and h.get("lr") is not None]
    if not tr:
        return None
    fig = _figure(6.4, 3.0)
    ax = fig.subplots()
    ax.plot([h["step"] for h in tr], [h["lr"] for h in tr], color=BLUE, lw=1.6, marker="o" if len(tr) < 3 else None)
    ax.set(title="Learning rate", xlabel="optimizer step", ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return fig


# The headline scores (larger is better, on one 0-1 axis); ECE is drawn in the reliability diagram.
VAL_METRICS = tuple(k for k in HEADLINE if METRICS[k].direction == "max")


@_styled
def validation_metrics(history: list[dict], best_step: Optional[int] = None, metric: str = "accuracy",
                       keys: Sequence[str] = VAL_METRICS):
    """The `keys` metrics (0-1 scores, larger is better) at each evaluation; `metric` drawn thick."""
    ev = [h for h in history if h.get("type") == "eval"]
    if not ev:
        return None
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    steps = [h["step"] for h in ev]
    for i, key in enumerate(keys):
        name = metric_info(key).name
        vals = [h.get(key) for h in ev]
        if all(v is None for v in vals):
            continue
        vals = [np.nan if v is None else v for v in vals]
        ax.plot(steps, vals, marker="o", ms=4, lw=2.2 if key == metric else 1.2,
                label=name + (" (selection metric)" if key == metric else ""), color=f"C{i}")
    _best_line(ax, best_step)
    ax.set(title="Validation metrics per evaluation", xlabel="optimizer step", ylabel="score")
    ax.legend(loc="best")
    _epoch_axis(ax, history)
    return fig


# ---------------------------------------------------------------- per-split evaluation


def _matrix_size(k: int, names: Sequence[str]) -> tuple[float, float, float]:
    """Figure width, height and the size of one cell (inches) for a k x k matrix."""
    cell = 0.62 if k <= 6 else 0.48 if k <= 12 else 0.36
    label_in = max((_text_width_in(n, 8.5) for n in names), default=0.5)
    side = k * cell
    return min(max(side + label_in + 2.2, 5.6), 22), min(max(side + label_in + 1.6, 4.2), 22), cell


def _matrix_figure(labels: Sequence[str]):
    """A square figure sized for a labels x labels heatmap: (figure, axes, short names, cell inches)."""
    names = short_labels(labels)
    w, h, cell = _matrix_size(len(labels), names)
    fig = _figure(w, h)
    ax = fig.subplots()
    ax.grid(False)
    return fig, ax, names, cell


@_styled
def confusion_matrix(cm: Sequence[Sequence[int]], labels: Sequence[str], normalize: bool, title: str = ""):
    """Confusion matrix, counts or rows normalised to 1 (each row's diagonal is that class's recall)."""
    cm = np.asarray(cm, dtype=float)
    k = len(labels)
    fig, ax, names, cell = _matrix_figure(labels)
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            data = np.where(rows > 0, cm / rows, np.nan)
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=1)
    else:
        data = cm
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(cm.max(), 1))
    if k <= 30:
        size = 10 if k <= 6 else 8 if k <= 12 else 6.5
        thresh = (np.nanmax(data) if np.isfinite(data).any() else 1) * 0.55
        for i in range(k):
            for j in range(k):
                v = data[i, j]
                txt = "–" if np.isnan(v) else (f"{v:.2f}" if normalize else f"{int(v):,}")
                if k > 12 and i != j and not np.isnan(v) and v < (0.005 if normalize else 1):
                    continue  # many classes: leave empty off-diagonal cells blank, so the mistakes stand out
                ax.text(j, i, txt, ha="center", va="center", fontsize=size, in_layout=False,  # faster layout
                        color="white" if (not np.isnan(v) and v > thresh) else "#222")
    _xticks(ax, names, cell)
    ax.set_yticks(range(k))
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title or ("Confusion matrix, normalised by true label" if normalize else "Confusion matrix"))
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of true label" if normalize else "texts")
    return fig


@_styled
def per_class(per_class: dict, labels: Sequence[str], title: str = "Per-class precision, recall and F1"):
    """Horizontal grouped bars (class names on the y axis stay readable however many or long)."""
    names = short_labels(labels)
    return _prf_bars(per_class, labels, [f"{n} (n={per_class[c]['support']:,})" for n, c in zip(names, labels)],
                     title)


@_styled
def per_label(per_label: dict, labels: Sequence[str], title: str = "Per-label precision, recall and F1"):
    """Multi-label scores per label as horizontal bars, worst F1 at the top, each label with its
    support and decision threshold (28 labels stay readable: one row each, names on the y axis)."""
    order = sorted(labels, key=lambda c: (per_label[c]["f1"], list(labels).index(c)))
    names = dict(zip(labels, short_labels(labels)))
    ticks = [f"{names[c]} (n={per_label[c]['support']:,}"
             + (f", t={per_label[c]['threshold']:.2f})" if per_label[c].get("threshold") is not None else ")")
             for c in order]
    return _prf_bars(per_label, order, ticks, title)


def _prf_bars(scores: dict, labels: Sequence[str], ticks: Sequence[str], title: str):
    """Precision, recall and F1 bars per label, in the order given, `ticks` naming the rows."""
    k = len(labels)
    h = max(2.6, 0.5 + k * (0.42 if k <= 10 else 0.34))
    fig = _figure(7.2, min(h, 22))
    ax = fig.subplots()
    y = np.arange(k)
    bh = 0.26
    for j, key in enumerate(("precision", "recall", "f1")):
        vals = [scores[c][key] for c in labels]
        ax.barh(y + (j - 1) * bh, vals, height=bh, color=PRF_COLORS[key], label=key if key != "f1" else "F1")
        if k <= 8:
            for yi, v in zip(y, vals):
                ax.text(v + 0.005, yi + (j - 1) * bh, f"{v:.3f}", va="center", fontsize=7, in_layout=False)
    ax.set_yticks(y)
    ax.set_yticklabels(ticks)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08 if k <= 8 else 1.0)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.grid(axis="y", visible=False)
    ax.set(title=title, xlabel="score")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3)
    return fig


def _curve_colors(k: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(k)]


def _legend_outside(fig, ax, k: int) -> None:
    if k <= 6:
        ax.legend(loc="lower right" if ax.get_title().startswith("ROC") else "lower left")
    else:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8)


HIGHLIGHT = 6  # with more classes than this, the weakest few are drawn in colour and the rest in grey


def _one_vs_rest(fig, ax, y, probs, labels, curve, score_name, positives=None):
    """Draw one curve per class (or the positive class when binary); returns the curves and whether
    only the weakest are in colour. `positives` (n, k booleans) replaces `y == c` for multi-label
    gold, where every label is its own binary problem."""
    k = len(labels)
    names = short_labels(labels)
    pos = (lambda c: positives[:, c]) if positives is not None else (lambda c: y == c)
    classes = [1] if k == 2 and positives is None else [c for c in range(k) if 0 < pos(c).sum() < len(probs)]
    pts = {c: curve(pos(c), probs[:, c]) for c in classes if 0 < pos(c).sum() < len(probs)}
    many = len(pts) > HIGHLIGHT + 2
    ranked = sorted(pts, key=lambda c: pts[c][2])
    shown = set(ranked[:HIGHLIGHT]) if many else set(pts)
    colors = _curve_colors(k)
    for c in ranked:
        a, b, score = pts[c]
        if c not in shown:
            ax.plot(a, b, lw=0.9, color="#c3c7ce", zorder=1)
            continue
        binary = k == 2 and positives is None
        name = f"positive class: {names[c]}" if binary else names[c]
        ax.plot(a, b, lw=1.7, color=BLUE if binary else colors[c], zorder=2, label=f"{name} ({score_name} {score:.3f})")
    if many:
        ax.plot([], [], lw=0.9, color="#c3c7ce", label=f"{len(pts) - len(shown)} other "
                f"{'labels' if positives is not None else 'classes'} "
                f"({score_name} {min(pts[c][2] for c in ranked[HIGHLIGHT:]):.3f}–{pts[ranked[-1]][2]:.3f})")
    return pts, many


@_styled
def roc_curves(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], title_suffix: str = ""):
    """ROC curve of the positive (second) class when binary; one-vs-rest per class otherwise, the
    classes with the lowest AUC in colour when there are many."""
    k = len(labels)
    fig = _figure(6.0 if k <= 6 else 8.6, 4.6)
    ax = fig.subplots()
    _, many = _one_vs_rest(fig, ax, y, probs, labels, roc_points, "AUC")
    ax.plot([0, 1], [0, 1], color=GREY, ls=":", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title="ROC curve" + (" (one-vs-rest" + (f", {HIGHLIGHT} lowest AUC in colour)" if many else ")")
                                if k > 2 else "") + title_suffix)
    ax.set_aspect("equal")
    _legend_outside(fig, ax, k)
    return fig


@_styled
def pr_curves(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], title_suffix: str = ""):
    """Precision-recall curves with average precision (AP); dotted: prevalence, i.e. chance."""
    k = len(labels)
    fig = _figure(6.0 if k <= 6 else 8.6, 4.6)
    ax = fig.subplots()
    pts, many = _one_vs_rest(fig, ax, y, probs, labels, lambda pos, s: _pr_xy(pos, s), "AP")
    if k == 2 and 1 in pts:
        ax.axhline((y == 1).mean(), color=GREY, ls=":", lw=1, label="chance (prevalence)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
           title="Precision-recall" + (" (one-vs-rest" + (f", {HIGHLIGHT} lowest AP in colour)" if many else ")")
                                       if k > 2 else "") + title_suffix)
    _legend_outside(fig, ax, k)
    return fig


def _pr_xy(pos, score):
    p, r, ap = pr_points(pos, score)
    return r, p, ap


@_styled
def reliability(bins: list[dict], ece: float, title_suffix: str = ""):
    """Reliability diagram: accuracy against confidence per bin (gap shaded), counts below."""
    fig = _figure(5.6, 5.2)
    ax, axc = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    _reliability_panel(ax, axc, bins, f"Reliability diagram (ECE {ece:.3f})" + title_suffix)
    return fig


@_styled
def reliability_before_after(bins_before: list[dict], ece_before: float, bins_after: list[dict], ece_after: float,
                             temperature: Optional[float] = None, title_suffix: str = ""):
    """Two reliability diagrams side by side: the probabilities before temperature scaling and after
    (same axes, so the bars can be compared)."""
    fig = _figure(10.4, 5.2)
    axes = fig.subplots(2, 2, sharex="col", sharey="row", height_ratios=[3, 1])
    t = f" (T={temperature:.2f})" if temperature is not None else ""
    _reliability_panel(axes[0, 0], axes[1, 0], bins_before, f"Before scaling: ECE {ece_before:.3f}")
    _reliability_panel(axes[0, 1], axes[1, 1], bins_after, f"After scaling{t}: ECE {ece_after:.3f}")
    lo = min(a.get_xlim()[0] for a in axes[0])
    for a in axes[0]:
        a.set_xlim(lo, 1.0)
    fig.suptitle("Temperature scaling: reliability before and after" + title_suffix, fontsize=11, fontweight="bold")
    return fig


def _reliability_panel(ax, axc, bins: list[dict], title: str) -> None:
    """One reliability diagram on `ax` (accuracy bars, hatched gap, diagonal) with counts on `axc`."""
    used = [b for b in bins if b["count"]]
    for b in used:
        w = b["hi"] - b["lo"]
        ax.bar(b["lo"], b["accuracy"], width=w, align="edge", color=BLUE, alpha=0.8, edgecolor="white")
        lo, hi = sorted((b["accuracy"], b["confidence"]))
        ax.bar(b["lo"], hi - lo, bottom=lo, width=w, align="edge", facecolor="none", hatch="////",
               edgecolor=RED, lw=0.6)
    ax.plot([0, 1], [0, 1], color=GREY, ls="--", lw=1, label="perfect calibration")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=BLUE, alpha=0.8, label="accuracy in bin"),
                       Patch(facecolor="none", hatch="////", edgecolor=RED, label="gap to mean confidence"),
                       ax.get_lines()[0]], loc="upper left")
    lo = min((b["lo"] for b in used), default=0.0)
    ax.set(xlim=(max(0.0, lo - 0.02), 1.0), ylim=(0, 1.02), ylabel="accuracy", title=title)
    axc.bar([b["lo"] for b in bins], [b["count"] for b in bins], width=[b["hi"] - b["lo"] for b in bins],
            align="edge", color=GREY, edgecolor="white")
    axc.set(xlabel="confidence (probability of the predicted label)", ylabel="texts")
    if max((b["count"] for b in bins), default=0) > 50 * max(min((b["count"] for b in used), default=1), 1):
        axc.set_yscale("log")


@_styled
def confidence_hist(confidence: np.ndarray, correct: np.ndarray, k: int, title_suffix: str = ""):
    """Confidence of correct and of wrong predictions (each normalised, so their shapes compare)."""
    fig = _figure(6.0, 3.4)
    ax = fig.subplots()
    edges = np.linspace(1.0 / k, 1.0, 21)
    ok = correct.astype(bool)
    for sel, color, name in ((ok, GREEN, "correct"), (~ok, RED, "wrong")):
        v = confidence[sel]
        if len(v):
            ax.hist(v, bins=edges, weights=np.full(len(v), 1.0 / len(v)), histtype="stepfilled", alpha=0.35,
                    color=color, edgecolor=color, lw=1.2, label=f"{name} (n={len(v):,}, mean {v.mean():.3f})")
    ax.set(title="Confidence of correct and wrong predictions" + title_suffix,
           xlabel="confidence (probability of the predicted label)", ylabel="share of its group")
    ax.legend(loc="upper left")
    return fig


SPLIT_COLORS = {"train": GREY, "validation": ORANGE, "test": BLUE}


@_styled
def length_distribution(hist: dict):
    """Word-length distribution per split on shared bins."""
    if not hist or not hist.get("counts"):
        return None
    edges = np.asarray(hist["edges"], dtype=float)
    fig = _figure(6.4, 3.4)
    ax = fig.subplots()
    for split in ("train", "validation", "test"):
        if split not in hist["counts"]:
            continue
        c = np.asarray(hist["counts"][split], dtype=float)
        st = hist["stats"][split]
        share = c / max(c.sum(), 1)
        ax.stairs(share, edges, fill=split == "train", alpha=0.3 if split == "train" else 1.0, lw=1.6,
                  color=SPLIT_COLORS[split],
                  label=f"{split} (n={st['n']:,}, median {st['median']:.0f}, max {st['max']:,})")
    ax.set(title="Text length per split", ylabel="share of split",
           xlabel=f"length in words (texts over {hist['clipped_at']:,} counted in the last bin)")
    ax.legend(loc="upper right")
    return fig


def _bucket_figure(n: int):
    """A by-length figure: the measure per bucket above, the number of texts per bucket below."""
    fig = _figure(6.4, 4.2)
    ax, axn = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    return fig, ax, axn, np.arange(n)


def _bucket_counts(axn, x, buckets: list[dict]) -> None:
    """The lower panel of a by-length figure: texts per bucket, labelled with its word range."""
    axn.bar(x, [b["n"] for b in buckets], color=GREY, width=0.55)
    axn.set(ylabel="texts", xlabel="length in words")
    axn.grid(axis="x", visible=False)
    axn.set_xticks(x)
    axn.set_xticklabels([b["range"] for b in buckets])


@_styled
def accuracy_by_length(buckets: list[dict], overall: float, title_suffix: str = "", name: str = "accuracy"):
    """Accuracy per word-length bucket with 95% intervals, and the number of texts per bucket
    (`name`: what the accuracy is, e.g. multi-label's "subset accuracy")."""
    buckets = [b for b in buckets if b["n"]]
    if not buckets:
        return None
    fig, ax, axn, x = _bucket_figure(len(buckets))
    acc = np.array([b["accuracy"] for b in buckets])
    lo = np.array([b["ci95"][0] for b in buckets])
    hi = np.array([b["ci95"][1] for b in buckets])
    colors = [RED if h < overall else GREEN if low > overall else BLUE for low, h in zip(lo, hi)]
    ax.errorbar(x, acc, yerr=[acc - lo, hi - acc], fmt="none", ecolor=GREY, elinewidth=1.2, capsize=4)
    ax.scatter(x, acc, s=46, color=colors, zorder=3)
    for xi, a in zip(x, acc):
        ax.annotate(f"{a:.3f}", (xi, a), textcoords="offset points", xytext=(8, -3), fontsize=8)
    ax.axhline(overall, color=GREY, ls="--", lw=1, label=f"overall {overall:.3f}")
    ax.set(title=f"{name.capitalize()} by text length" + title_suffix, ylabel=f"{name} (95% CI)")
    ax.set_ylim(max(0.0, min(lo.min(), overall) - 0.05), min(1.0, max(hi.max(), overall) + 0.03) + 0.001)
    ax.legend(loc="lower right")
    _bucket_counts(axn, x, buckets)
    return fig


# ---------------------------------------------------------------- multi-label


@_styled
def multilabel_pr_curves(gold: np.ndarray, probs: np.ndarray, labels: Sequence[str],
                         thresholds: Optional[dict] = None, title_suffix: str = ""):
    """One precision-recall curve per label (gold: (n, k) booleans), AP in the legend; with many
    labels the 6 lowest-AP in colour and the rest grey. A dot marks each coloured label's decision
    threshold: where on its curve the model actually operates. None when no label has both classes."""
    gold = np.asarray(gold, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(labels)
    fig = _figure(6.0 if k <= 6 else 8.6, 4.6)
    ax = fig.subplots()
    pts, many = _one_vs_rest(fig, ax, None, probs, labels, lambda pos, s: _pr_xy(pos, s), "AP", positives=gold)
    if not pts:
        return None
    shown = sorted(pts, key=lambda c: pts[c][2])[:HIGHLIGHT] if many else list(pts)
    colors = _curve_colors(k)
    marked = False
    for c in shown:
        t = (thresholds or {}).get(labels[c])
        if t is None:
            continue
        sel = probs[:, c] >= t
        if sel.any():
            ax.plot([gold[sel, c].sum() / gold[:, c].sum()], [gold[sel, c].mean()], "o", ms=5, color=colors[c],
                    markeredgecolor="black", markeredgewidth=0.6, zorder=3)
            marked = True
    if marked:
        ax.plot([], [], "o", ms=5, color="white", markeredgecolor="black", label="decision threshold")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
           title="Precision-recall per label" + (f" ({HIGHLIGHT} lowest AP in colour)" if many else "") + title_suffix)
    _legend_outside(fig, ax, len(pts) + marked)
    return fig


@_styled
def mistake_cooccurrence(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str = ""):
    """Heatmap of the multi-label mistakes: rows the label that was missed, columns the label
    predicted wrongly in the same text (counts; the diagonal cannot happen and stays blank)."""
    data = np.asarray(matrix, dtype=float)
    k = len(labels)
    fig, ax, names, cell = _matrix_figure(labels)
    data[np.eye(k, dtype=bool)] = np.nan
    im = ax.imshow(data, cmap="Reds", vmin=0, vmax=max(np.nanmax(data) if k > 1 else 0, 1))
    if k <= 30:
        size = 10 if k <= 6 else 8 if k <= 12 else 6.5
        top = max(np.nanmax(data) if k > 1 else 0, 1)
        for i in range(k):
            for j in range(k):
                v = data[i, j]
                if i != j and (v > 0 or k <= 12):  # many labels: zeros left blank, so the mix-ups stand out
                    ax.text(j, i, f"{int(v):,}", ha="center", va="center", fontsize=size, in_layout=False,
                            color="white" if v > 0.55 * top else "#222")
    _xticks(ax, names, cell)
    ax.set_yticks(range(k))
    ax.set_yticklabels(names)
    ax.set_xlabel("label predicted wrongly (false positive)")
    ax.set_ylabel("label missed (false negative)")
    ax.set_title(title or "Mistake co-occurrence")  # the axis labels say what rows and columns are
    fig.colorbar(im, ax=ax, shrink=0.8, label="texts")
    return fig


# ---------------------------------------------------------------- regression


def _regression_limits(gold: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    lo, hi = float(min(gold.min(), pred.min())), float(max(gold.max(), pred.max()))
    pad = 0.03 * (hi - lo or 1.0)
    return lo - pad, hi + pad


HEXBIN_FROM = 3000  # points beyond which a scatter turns into a blot: density (hexbin) instead


@_styled
def regression_scatter(gold: np.ndarray, pred: np.ndarray, title_suffix: str = "", target: str = "score"):
    """Predicted against gold with the identity line (points on it are exact); translucent points,
    or hexagonal density bins (log counts) for thousands of texts."""
    gold, pred = np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if not len(gold):
        return None
    fig = _figure(5.6, 5.0)
    ax = fig.subplots()
    lo, hi = _regression_limits(gold, pred)
    if len(gold) > HEXBIN_FROM:
        hb = ax.hexbin(gold, pred, gridsize=45, bins="log", cmap="Blues", mincnt=1, extent=(lo, hi, lo, hi))
        fig.colorbar(hb, ax=ax, shrink=0.8, label="texts (log scale)")
    else:
        ax.scatter(gold, pred, s=12, color=BLUE, alpha=float(np.clip(300 / len(gold), 0.15, 0.8)), lw=0,
                   label=f"texts (n={len(gold):,})")
    ax.plot([lo, hi], [lo, hi], color=RED, ls="--", lw=1.2, label="identity (predicted = gold)")
    rmse = float(np.sqrt(((pred - gold) ** 2).mean()))
    r = float(np.corrcoef(gold, pred)[0, 1]) if gold.std() > 0 and pred.std() > 0 else float("nan")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=f"gold {target}", ylabel=f"predicted {target}",
           title=f"Predicted against gold (RMSE {rmse:.3f}, r {r:.3f})" + title_suffix)
    ax.set_aspect("equal")
    ax.legend(loc="upper left")
    return fig


@_styled
def residuals_by_gold(gold: np.ndarray, pred: np.ndarray, title_suffix: str = "", target: str = "score"):
    """Residual (predicted - gold) against the gold value, with the mean residual per gold bin: a
    line falling from left to right means the extremes are pulled toward the mean."""
    gold, pred = np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if not len(gold):
        return None
    err = pred - gold
    fig = _figure(6.4, 3.8)
    ax = fig.subplots()
    ax.scatter(gold, err, s=9, color=GREY, alpha=float(np.clip(300 / len(gold), 0.05, 0.7)), lw=0,
               label=f"texts (n={len(gold):,})")
    bins = error_by_gold(gold, pred, 10)
    x = [(b["lo"] + b["hi"]) / 2 for b in bins]
    ax.plot(x, [b["mean_error"] for b in bins], color=BLUE, lw=2, marker="o", ms=4, label="mean residual per gold bin")
    ax.axhline(0, color=RED, ls="--", lw=1, label="no error")
    ax.set(title="Residuals by gold value" + title_suffix, xlabel=f"gold {target}",
           ylabel="residual (predicted − gold)")
    ax.legend(loc="best")
    return fig


@_styled
def errors_by_length(buckets: list[dict], overall_mae: Optional[float] = None, title_suffix: str = ""):
    """Mean absolute error per word-length bucket (about equal numbers of texts each), the mean
    signed error beside it, and the number of texts per bucket below."""
    buckets = [b for b in buckets if b["n"]]
    if not buckets:
        return None
    fig, ax, axn, x = _bucket_figure(len(buckets))
    mae = np.array([b["mae"] for b in buckets])
    ax.plot(x, mae, color=BLUE, marker="o", ms=6, lw=1.4, label="MAE")
    ax.plot(x, [b["mean_error"] for b in buckets], color=ORANGE, marker="s", ms=4, lw=1, ls=":",
            label="mean error (predicted − gold)")
    for xi, v in zip(x, mae):
        ax.annotate(f"{v:.3f}", (xi, v), textcoords="offset points", xytext=(8, -3), fontsize=8)
    if overall_mae is not None:
        ax.axhline(overall_mae, color=GREY, ls="--", lw=1, label=f"overall MAE {overall_mae:.3f}")
    ax.axhline(0, color="#c3c7ce", lw=0.8)
    ax.set(title="Errors by text length" + title_suffix, ylabel="error")
    ax.legend(loc="best")
    _bucket_counts(axn, x, buckets)
    return fig


# ---------------------------------------------------------------- comparison of runs


COMPARE_METRICS = HEADLINE


@_styled
def compare_metrics(runs: list[dict], split: str, keys: Sequence[str] = COMPARE_METRICS):
    """One panel per metric of `keys` (the runs' task's headline), one horizontal bar per run (runs
    share the y axis)."""
    names = short_labels([r["name"] for r in runs], 30)
    metrics = [metric_info(k) for k in keys
               if any((r["metrics"].get(split) or {}).get(k) is not None for r in runs)]
    n = len(runs)
    fig = _figure(2.3 * len(metrics) + 2.2, max(2.4, 0.8 + 0.38 * n))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    y = np.arange(n)
    for ax, metric in zip(axes, metrics):
        lower = metric.direction == "min"
        vals = [(r["metrics"].get(split) or {}).get(metric.key) for r in runs]
        v = np.array([np.nan if x is None else x for x in vals], dtype=float)
        best = np.nanargmin(v) if lower else np.nanargmax(v)
        ax.barh(y, np.nan_to_num(v), color=[GREEN if i == best else BLUE for i in range(n)], height=0.6)
        finite = v[np.isfinite(v)]
        if lower:  # an error (ECE, RMSE, Hamming loss): from 0
            ax.set_xlim(0, max(finite.max() * 1.35, 0.01))
        else:  # a score up to 1; R² and correlations can be negative
            lo = np.floor((finite.min() - 0.05) * 20) / 20
            ax.set_xlim(max(0.0, lo) if finite.min() >= 0 else lo, 1.0)
        for yi, x in zip(y, v):
            if np.isfinite(x):
                ax.text(x, yi, f" {x:.3f}", va="center", fontsize=7.5)
        ax.set_title(metric.name, fontsize=9.5)
        ax.set_xlabel("lower is better" if lower else "score", fontsize=8)
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="x", labelsize=7.5)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(names)
    axes[0].set_ylabel("run")
    axes[0].invert_yaxis()
    fig.suptitle(f"Metrics by run ({split}; best in green; x axes do not start at 0)", fontsize=11, fontweight="bold")
    return fig


def _human(v: float, _pos=None) -> str:
    """1500 -> 1.5k, 2e6 -> 2M (tick labels of a parameter count)."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


@_styled
def compare_params(runs: list[dict], split: str, metric: str = "accuracy", title: Optional[str] = None):
    """A metric against trainable parameters (log scale; a run training nothing sits at 1), one
    labelled point per run and one marker per method; None when no run has the metric."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    pts = [(r, (r["metrics"].get(split) or {}).get(metric)) for r in runs]
    pts = [(r, v) for r, v in pts if v is not None]
    if not pts:
        return None
    fig = _figure(6.6, 4.2)
    ax = fig.subplots()
    from ..models.methods import method_of

    seen = set()
    xs = [max((r["metrics"].get("params") or {}).get("trainable") or 0, 1) for r, _ in pts]
    for i, ((r, v), x) in enumerate(zip(pts, xs)):
        method = str((r["metrics"].get("model") or {}).get("method", "?"))
        known = method_of(method.split()[0])
        ax.scatter([x], [v], s=60, marker=known.marker if known else "o", color=f"C{i % 10}", zorder=3,
                   label=method if method not in seen else None, edgecolor="black", lw=0.5)
        seen.add(method)
        ax.annotate(short_label(r["name"], 28), (x, v), textcoords="offset points", xytext=(6, 4), fontsize=7.5)
    ax.set_xscale("log")
    few_decades = np.log10(max(xs) / min(xs)) <= 3  # else 1-2-5 ticks would crowd each other
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if few_decades else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(_human))
    ax.xaxis.set_minor_formatter(NullFormatter())
    name = METRICS[metric].name if metric in METRICS else metric
    ax.set(title=title or f"{name} against trainable parameters ({split})",
           xlabel="trainable parameters (log scale)", ylabel=f"{name} ({split})")
    ax.margins(x=0.25, y=0.15)
    ax.legend(title="method", loc="best")
    return fig


@_styled
def compare_confusions(runs: list[dict], split: str):
    """Normalised confusion matrices side by side (each with its own labels)."""
    runs = [r for r in runs if (r["metrics"].get(split) or {}).get("confusion_matrix")]
    if not runs:
        return None
    n = len(runs)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    k = max(len(r["metrics"]["labels"]) for r in runs)
    names_all = [short_labels(r["metrics"]["labels"]) for r in runs]
    label_in = max(_text_width_in(x, 7.5) for ns in names_all for x in ns)
    cell = 0.5 if k <= 6 else 0.34 if k <= 12 else 0.24
    side = k * cell + label_in + 0.9
    fig = _figure(min(cols * side + 1.0, 24), min(rows * (side + 0.3) + 0.5, 30))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    im = None
    for ax, r, names in zip(axes, runs, names_all):
        cm = np.asarray(r["metrics"][split]["confusion_matrix"], dtype=float)
        rs = cm.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            data = np.where(rs > 0, cm / rs, np.nan)
        ax.grid(False)
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=1)
        kk = len(names)
        if kk <= 12:
            for i in range(kk):
                for j in range(kk):
                    v = data[i, j]
                    ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", in_layout=False,
                            fontsize=8 if kk <= 6 else 6, color="white" if v > 0.55 else "#222")
        _xticks(ax, names, k * cell / kk, size=7.5)  # a smaller matrix is drawn with larger cells
        ax.set_yticks(range(kk))
        ax.set_yticklabels(names, fontsize=7.5)
        acc = r["metrics"][split].get("accuracy")
        ax.set_title(short_label(r["name"], 34) + (f"\naccuracy {acc:.3f}" if acc is not None else ""), fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    if im is not None:
        fig.colorbar(im, ax=list(axes[:len(runs)]), shrink=0.6, label="share of true label")
    fig.suptitle(f"Confusion matrices, normalised by true label ({split})", fontsize=11, fontweight="bold")
    return fig


@_styled
def compare_curves(runs: list[dict], metric: str = "accuracy"):
    """Validation loss and `metric` (the task's first headline metric) per epoch, one line per run."""
    have = [r for r in runs if any(h.get("type") == "eval" for h in r["history"])]
    if not have:
        return None
    fig = _figure(10.0, 3.8)
    ax_l, ax_a = fig.subplots(1, 2)
    for i, r in enumerate(have):
        ev = [h for h in r["history"] if h.get("type") == "eval"]
        x = [h.get("epoch", h["step"]) for h in ev]
        name = short_label(r["name"], 30)
        ax_l.plot(x, [h.get("loss", np.nan) for h in ev], marker="o", ms=3.5, color=f"C{i % 10}", label=name)
        ax_a.plot(x, [h.get(metric, np.nan) for h in ev], marker="o", ms=3.5, color=f"C{i % 10}", label=name)
    ax_l.set(title="Validation loss", xlabel="epoch", ylabel="loss")
    shown = metric_info(metric).name
    ax_a.set(title=f"Validation {shown}", xlabel="epoch", ylabel=shown)
    fig.legend(*ax_a.get_legend_handles_labels(), loc="outside right upper")
    return fig
