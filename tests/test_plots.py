"""loraclf.plots: every figure readable (no overlapping or cut-off labels) for many long class
names, curves drawn from loraclf.analysis, and the comparison figures."""

import subprocess
import sys

import numpy as np
import pytest

from loraclf import analysis as an
from loraclf import plots as pl
from loraclf.metrics import HEADLINE, METRICS

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
    from loraclf.metrics import compute_metrics, reliability_bins

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
    """The ROC and PR figures draw exactly the points loraclf.analysis computes (one computation)."""
    y, probs = _probs(2)
    ax = pl.roc_curves(y, probs, ["negative", "positive"]).axes[0]
    fpr, tpr, auc = an.roc_points(y == 1, probs[:, 1])
    line = ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), fpr)
    np.testing.assert_array_equal(line.get_ydata(), tpr)
    assert line.get_label() == f"positive class: positive (AUC {auc:.3f})"
    ax = pl.pr_curves(y, probs, ["negative", "positive"]).axes[0]
    precision, recall, ap = an.pr_points(y == 1, probs[:, 1])
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
            "from loraclf import compare\n"
            "rows = [{'run': 'a', 'method': 'lora', 'trainable': 10, 'accuracy': 0.5, 'split': 'test'}]\n"
            f"assert compare.plot_accuracy_vs_params(rows, {str(tmp_path / 'p.png')!r}) is not None\n"
            "assert 'matplotlib.pyplot' not in sys.modules and backend() == before\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
