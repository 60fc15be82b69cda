"""loraclf.evaluation.plots: every figure readable (no overlapping or cut-off labels) for many long class
names, curves drawn from loraclf.evaluation.analysis, and the comparison figures."""

import subprocess
import sys

import numpy as np
import pytest

from loraclf.evaluation import analysis as an
from loraclf.evaluation import plots as pl
from loraclf.evaluation.metrics import HEADLINE, METRICS

LONG_20 = [f"category number {i}: " + ("a rather long descriptive class name" if i % 3 == 0 else "short")
           for i in range(20)]


def _draw(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _overlaps(boxes) -> list:
    bad = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i][1], boxes[j][1]
            if min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5:
                bad.append((boxes[i][0], boxes[j][0]))
    return bad


def assert_readable(fig, class_names=None):
    """No two tick labels of an axis overlap, every text lies inside the figure, titles and
    legends do not collide, axes have labels, and classes appear by (shortened) name."""
    r = _draw(fig)
    fb = fig.bbox
    legends = [lg.get_window_extent(r) for lg in fig.legends] + [
        ax.get_legend().get_window_extent(r) for ax in fig.axes if ax.get_legend()]
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        for which in ("x", "y"):
            ab = ax.get_window_extent(r)
            ticks = [(t.get_text(), t.get_window_extent(r)) for t in getattr(ax, f"get_{which}ticklabels")()
                     if t.get_visible() and t.get_text()]
            # matplotlib also lists ticks outside the view limits; only those within are drawn
            ticks = [(t, bb) for t, bb in ticks if (ab.x0 - 1 <= (bb.x0 + bb.x1) / 2 <= ab.x1 + 1 if which == "x"
                                                    else ab.y0 - 1 <= (bb.y0 + bb.y1) / 2 <= ab.y1 + 1)]
            assert not _overlaps(ticks), f"overlapping {which} tick labels: {_overlaps(ticks)[:3]}"
            for text, bb in ticks:
                assert bb.x0 >= fb.x0 - 1 and bb.x1 <= fb.x1 + 1 and bb.y0 >= fb.y0 - 1 and bb.y1 <= fb.y1 + 1, \
                    f"tick label {text!r} is cut off"
        title = ax.title.get_window_extent(r) if ax.get_title() else None
        if title is not None:
            assert title.x0 >= fb.x0 - 1 and title.x1 <= fb.x1 + 1, f"title {ax.get_title()!r} is cut off"
            for lg in legends:
                assert not _overlaps([("title", title), ("legend", lg)]), f"legend covers title {ax.get_title()!r}"
        if ax.get_xlabel() == "" and ax.get_ylabel() == "" and not ax.get_images():
            pytest.fail(f"axes {ax.get_title()!r} has no axis labels")
    for lg in legends:
        assert lg.x0 >= fb.x0 - 1 and lg.x1 <= fb.x1 + 1 and lg.y0 >= fb.y0 - 1 and lg.y1 <= fb.y1 + 1, "legend cut off"
    assert any(ax.get_title() for ax in fig.axes) or fig._suptitle is not None, "figure has no title"
    if class_names is not None:
        shown = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()}
        shown |= {t.get_text() for lg in fig.legends for t in lg.get_texts()}
        shown |= {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
        short = pl.short_labels(class_names)
        assert any(s in x for s in short for x in shown), "classes are not shown by name"


def test_short_labels_stay_distinct_and_short():
    short = pl.short_labels(LONG_20)
    assert len(set(short)) == 20 and max(map(len, short)) <= pl.MAX_LABEL_CHARS
    assert pl.short_labels(["positive", "negative"]) == ["positive", "negative"]
    assert pl.short_label("x" * 100).count("…") == 1


@pytest.mark.parametrize("labels", [LONG_20, [f"c{i}" for i in range(20)], ["negative", "positive"]])
def test_plots_are_readable(labels):
    k = len(labels)
    rng = np.random.default_rng(0)
    y = np.arange(400) % k
    logits = rng.normal(0, 1, (400, k))
    logits[np.arange(400), y] += 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    from loraclf.evaluation.metrics import compute_metrics, reliability_bins

    m = compute_metrics(y, probs, labels)
    conf, correct = probs.max(1), (probs.argmax(1) == y).astype(float)
    figs = [pl.confusion_matrix(m["confusion_matrix"], labels, False, "Confusion matrix — test (n=400)"),
            pl.confusion_matrix(m["confusion_matrix"], labels, True, "Confusion matrix, normalised — test"),
            pl.per_class(m["per_class"], labels), pl.roc_curves(y, probs, labels), pl.pr_curves(y, probs, labels)]
    for fig in figs:
        assert_readable(fig, labels)
    if labels is not LONG_20:
        return
    assert_readable(pl.reliability(reliability_bins(conf, correct), m["ece"]))
    assert_readable(pl.confidence_hist(conf, correct, k))
    runs = [{"name": f"run-{i}-with-a-rather-long-name-lora-r{8 * i}", "metrics": {**{"test": m}, "labels": labels,
             "params": {"trainable": 10 ** (4 + i)}, "model": {"method": "lora"}}, "history": []} for i in range(2)]
    for fig in (pl.compare_confusions(runs, "test"), pl.compare_metrics(runs, "test"), pl.compare_params(runs, "test")):
        assert_readable(fig)


def test_readability_check_catches_overlap():
    """The check above can fail: 20 long names side by side, unrotated, do overlap."""
    fig = pl.confusion_matrix(np.eye(20, dtype=int), LONG_20, False)
    ax = fig.axes[0]
    ax.set_xticks(range(20))
    ax.set_xticklabels(pl.short_labels(LONG_20), rotation=0)
    with pytest.raises(AssertionError, match="overlapping x tick labels"):
        assert_readable(fig)


def _probs(k: int, n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 2
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_curves_are_the_analysis_curves():
    """The ROC and PR figures draw exactly the points loraclf.evaluation.metrics computes (one computation)."""
    from loraclf.evaluation import metrics as M

    y, probs = _probs(2)
    ax = pl.roc_curves(y, probs, ["negative", "positive"]).axes[0]
    fpr, tpr, auc = M.roc_points(y == 1, probs[:, 1])
    line = ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), fpr)
    np.testing.assert_array_equal(line.get_ydata(), tpr)
    assert line.get_label() == f"positive class: positive (AUC {auc:.3f})"
    ax = pl.pr_curves(y, probs, ["negative", "positive"]).axes[0]
    precision, recall, ap = M.pr_points(y == 1, probs[:, 1])
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), recall)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), precision)
    assert f"(AP {ap:.3f})" in ax.lines[0].get_label()


def test_metric_lists_come_from_the_metrics_table():
    assert pl.COMPARE_METRICS == HEADLINE
    assert pl.VAL_METRICS == ("accuracy", "macro_f1", "weighted_f1", "macro_recall", "roc_auc")  # ECE: lower is better
    history = [{"type": "eval", "step": s, "accuracy": 0.8, "macro_f1": 0.7, "roc_auc": None} for s in (10, 20)]
    labels = [ln.get_label() for ln in pl.validation_metrics(history, 20, "macro_f1").axes[0].lines]
    assert labels[:2] == [METRICS["accuracy"].name, METRICS["macro_f1"].name + " (selection metric)"]


def _run(name, trainable, accuracy, method="lora", ece=0.05):
    return {"name": name, "history": [], "metrics": {"params": {"trainable": trainable}, "model": {"method": method},
                                                     "test": {"accuracy": accuracy, "ece": ece}}}


def test_compare_params_places_each_run():
    runs = [_run("a", 1_000, 0.8), _run("b", 2_000_000, 0.9, "head"), _run("zs", 0, 0.6, "zero-shot"),
            _run("no-test", 10, None)]
    ax = pl.compare_params(runs, "test").axes[0]
    points = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert points == [(1_000, 0.8), (2_000_000, 0.9), (1, 0.6)]  # nothing trained: at 1 on the log axis
    assert [t.get_text() for t in ax.texts] == ["a", "b", "zs"]
    assert ax.get_xscale() == "log" and ax.get_title() == "accuracy against trainable parameters (test)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lora", "head", "zero-shot"]
    assert pl.compare_params([_run("x", 10, None)], "test") is None
    assert pl.compare_params(runs, "test", title="Sweep").axes[0].get_title() == "Sweep"


def test_compare_metrics_marks_the_best_by_direction():
    fig = pl.compare_metrics([_run("a", 1, 0.8, ece=0.02), _run("b", 1, 0.9, ece=0.09)], "test")
    by_title = {ax.get_title(): ax for ax in fig.axes}
    assert set(by_title) == {"accuracy", "ECE"}  # only metrics some run has
    colors = {t: [p.get_facecolor()[:3] for p in ax.patches] for t, ax in by_title.items()}
    from matplotlib.colors import to_rgb

    green = to_rgb(pl.GREEN)
    assert colors["accuracy"][1] == green and colors["ECE"][0] == green  # higher accuracy, lower ECE


def test_plotting_leaves_matplotlib_global_state_alone(tmp_path):
    """No pyplot, no backend switch: the figures are plain Figure objects (safe in threads, headless)."""
    code = ("import matplotlib, sys\n"
            "backend = lambda: dict.__getitem__(matplotlib.rcParams, 'backend')  # get_backend() imports pyplot\n"
            "before = backend()\n"
            "from loraclf.studies import compare\n"
            "rows = [{'run': 'a', 'method': 'lora', 'trainable': 10, 'accuracy': 0.5, 'split': 'test'}]\n"
            f"assert compare.plot_accuracy_vs_params(rows, {str(tmp_path / 'p.png')!r}) is not None\n"
            "assert 'matplotlib.pyplot' not in sys.modules and backend() == before\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- multi-label, regression, calibration

GOEMOTIONS_LIKE = ["admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion", "curiosity",
                   "desire", "disappointment", "disapproval", "disgust", "embarrassment", "excitement", "fear",
                   "gratitude", "grief", "joy", "love", "nervousness", "optimism", "pride", "realization", "relief",
                   "remorse", "sadness", "surprise", "neutral"]


def _multilabel(k: int, n: int = 500, seed: int = 0):
    """Gold sets (about 1.3 labels per text, rare labels rarer) and sigmoid-like scores that rank them."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.3, 0.02, k)
    gold = rng.random((n, k)) < prevalence
    probs = np.clip(0.35 * gold + rng.random((n, k)) * 0.7, 0, 1)
    return gold, probs


@pytest.mark.parametrize("labels", [GOEMOTIONS_LIKE, LONG_20, ["toxic", "insult", "threat"]])
def test_multilabel_plots_are_readable(labels):
    gold, probs = _multilabel(len(labels))
    pred = probs >= 0.5
    per_label = {}
    for c, name in enumerate(labels):
        tp = (gold[:, c] & pred[:, c]).sum()
        p, r = tp / max(pred[:, c].sum(), 1), tp / max(gold[:, c].sum(), 1)
        per_label[name] = {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
                           "support": int(gold[:, c].sum()), "threshold": 0.5}
    fig = pl.per_label(per_label, labels)
    assert_readable(fig, labels)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    worst = min(labels, key=lambda c: (per_label[c]["f1"], labels.index(c)))
    assert ticks[0].startswith(pl.short_labels(labels)[labels.index(worst)]) and ticks[0].endswith(", t=0.50)")
    assert_readable(pl.multilabel_pr_curves(gold, probs, labels, {n: 0.5 for n in labels}), labels)
    assert_readable(pl.mistake_cooccurrence(an.mistake_cooccurrence(gold, pred, labels), labels), labels)


def test_multilabel_pr_curves_are_sklearns():
    """Each label's curve is its own binary problem; AP in the legend equals scikit-learn's, and the
    threshold dot sits at that threshold's recall and precision."""
    from sklearn.metrics import average_precision_score

    labels = ["toxic", "insult", "threat"]
    gold, probs = _multilabel(3)
    ax = pl.multilabel_pr_curves(gold, probs, labels, {"toxic": 0.6}).axes[0]
    curves = {ln.get_label().split(" (")[0]: ln for ln in ax.lines if "(AP" in ln.get_label()}
    assert set(curves) == set(labels)
    for c, name in enumerate(labels):
        assert f"(AP {average_precision_score(gold[:, c], probs[:, c]):.3f})" in curves[name].get_label()
    sel = probs[:, 0] >= 0.6
    dots = [ln for ln in ax.lines if ln.get_marker() == "o" and len(ln.get_xdata())]
    assert len(dots) == 1
    assert dots[0].get_xdata()[0] == pytest.approx((gold[sel, 0]).sum() / gold[:, 0].sum())
    assert dots[0].get_ydata()[0] == pytest.approx(gold[sel, 0].mean())
    assert pl.multilabel_pr_curves(np.zeros((5, 2), bool), np.random.rand(5, 2), ["a", "b"]) is None


def test_mistake_cooccurrence_heatmap_shows_the_counts():
    labels = ["joy", "anger", "fear"]
    matrix = [[0, 0, 3], [1, 0, 2], [0, 0, 0]]
    fig = pl.mistake_cooccurrence(matrix, labels)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "label missed (false negative)" and "false positive" in ax.get_xlabel()
    assert sorted(t.get_text() for t in ax.texts) == ["0"] * 3 + ["1", "2", "3"]  # 6 off-diagonal cells
    assert np.ma.getmaskarray(ax.get_images()[0].get_array()).diagonal().all()  # the diagonal is blank
    assert_readable(fig, labels)


@pytest.mark.parametrize("n", [200, 5000])
def test_regression_plots(n):
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, n)
    pred = 2.5 + 0.7 * (gold - 2.5) + rng.normal(0, 0.5, n)  # pulled toward the mean
    fig = pl.regression_scatter(gold, pred)
    assert_readable(fig)
    ax = fig.axes[0]
    identity = next(ln for ln in ax.lines if ln.get_label().startswith("identity"))
    np.testing.assert_allclose(identity.get_xdata(), identity.get_ydata())
    assert ax.get_xlim() == ax.get_ylim()
    assert (len(ax.collections[0].get_offsets()) == n) == (n <= pl.HEXBIN_FROM)  # points, or density bins
    rmse, r = np.sqrt(((pred - gold) ** 2).mean()), np.corrcoef(gold, pred)[0, 1]
    assert ax.get_title() == f"Predicted against gold (RMSE {rmse:.3f}, r {r:.3f})"
    fig = pl.residuals_by_gold(gold, pred)
    assert_readable(fig)
    mean_line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "mean residual per gold bin")
    residual = mean_line.get_ydata()
    assert residual[0] > 0 > residual[-1]  # the low scores over-predicted, the high ones under
    buckets = an.error_by_length(rng.integers(1, 40, n), gold, pred, 5)
    fig = pl.errors_by_length(buckets, float(np.abs(pred - gold).mean()))
    assert_readable(fig)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [b["mae"] for b in buckets])
    assert pl.errors_by_length([], 1.0) is None and pl.regression_scatter(np.array([]), np.array([])) is None


def test_reliability_before_and_after():
    from loraclf.evaluation.metrics import expected_calibration_error, reliability_bins

    y, probs = _probs(3)
    sharp = probs ** 3 / (probs ** 3).sum(1, keepdims=True)  # over-confident, same argmax
    correct = (probs.argmax(1) == y).astype(float)
    eces = [expected_calibration_error(p.max(1), correct) for p in (sharp, probs)]
    fig = pl.reliability_before_after(reliability_bins(sharp.max(1), correct), eces[0],
                                      reliability_bins(probs.max(1), correct), eces[1], temperature=3.0)
    assert_readable(fig)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"Before scaling: ECE {eces[0]:.3f}", f"After scaling (T=3.00): ECE {eces[1]:.3f}"]
    top = [ax for ax in fig.axes if ax.get_title()]
    assert top[0].get_xlim() == top[1].get_xlim()  # same axes: the bars compare
