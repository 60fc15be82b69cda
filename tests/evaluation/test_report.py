"""Reports: the error analysis in metrics.json, plots/, report.html (rendered in headless Chromium),
the comparison page, `loraclf report`, the files handed to experiment trackers, and TensorBoard's
record of a real run. The analysis, plots, card and trackers have their own modules (test_analysis,
test_plots, test_card, test_tracking); the report's speed is measured by benchmarks/report_speed.py."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import loraclf
from conftest import tiny_overrides
from loraclf.cli import main
from loraclf.evaluation import report as R
from loraclf.evaluation.metrics import HEADLINE
from reportdata import add_calibration, fake_multilabel_run, fake_regression_run, fake_run

# ---------------------------------------------------------------- report of a (synthetic) run


def test_report_contents(tmp_path):
    d = fake_run(tmp_path, n_test=800, labels=["neg", "pos", "neutral"])
    out = R.make_report(d)
    assert out == d / "report.html"
    m = json.loads((d / "metrics.json").read_text())
    ea = m["error_analysis"]
    assert ea["length_unit"] == "words" and set(ea) >= {"test", "validation", "text_lengths", "findings"}
    cm = np.array(m["test"]["confusion_matrix"])
    assert ea["test"]["errors"] == cm.sum() - np.trace(cm)
    assert sum(p["count"] for p in ea["test"]["confusions"]) == ea["test"]["errors"]
    confs = [x["confidence"] for x in ea["test"]["most_confident_mistakes"]]
    assert len(confs) == 20 and confs == sorted(confs, reverse=True)
    assert sum(b["n"] for b in ea["test"]["by_length"]) == m["test"]["n"] == 800
    assert sum(ea["text_lengths"]["counts"]["test"]) == 800
    expected = {"loss.png", "learning_rate.png", "validation_metrics.png", "confusion_matrix.png",
                "confusion_matrix_normalized.png", "per_class.png", "roc.png", "pr.png", "reliability.png",
                "confidence.png", "lengths.png", "accuracy_by_length.png"}
    assert {p.name for p in (d / "plots").iterdir()} == expected
    page = out.read_text()
    assert page.count("<img ") == len(expected) and page.count('src="data:image/png;base64,') == len(expected)
    assert "http://" not in page and "https://" not in page  # self-contained, readable offline
    assert not list(d.glob(".*tmp*")) and not list(d.glob(".plots*"))
    assert (d / "artifact" / "README.md").exists()  # the model card (see test_card.py)
    # regenerating changes nothing and keeps every other key
    R.make_report(d)
    assert json.loads((d / "metrics.json").read_text()) == m


def test_report_of_a_run_without_training_history(tmp_path):
    """Zero-shot runs have no history and may lack a test split: the report still comes out."""
    d = fake_run(tmp_path, method="zero-shot")
    (d / "history.jsonl").unlink()
    m = json.loads((d / "metrics.json").read_text())
    del m["test"], m["best"], m["timing"]
    (d / "metrics.json").write_text(json.dumps(m))
    (d / "predictions" / "test.csv").unlink()
    meta = json.loads((d / "artifact" / "loraclf.json").read_text())
    meta.update(head="verbalizer", prompt={"template": "Is {text} {labels}?", "label_words": {"neg": ["bad"]}})
    (d / "artifact" / "loraclf.json").write_text(json.dumps(meta))
    page = R.make_report(d).read_text()
    assert "No training history" in page and "Evaluation (validation)" in page
    assert not (d / "plots" / "loss.png").exists() and (d / "plots" / "roc.png").exists()
    assert "validation" in json.loads((d / "metrics.json").read_text())["error_analysis"]
    assert "zero-shot" in (d / "artifact" / "README.md").read_text()


def test_after_run_hands_the_report_files_to_the_caller(tmp_path, monkeypatch):
    """after_run makes the report and returns what a tracker uploads; it never touches the trackers."""
    from loraclf.training import tracking

    monkeypatch.setattr(tracking.Tracking, "finish", lambda *a, **k: pytest.fail("after_run closed a tracker"))
    d = fake_run(tmp_path)
    assert R.after_run(d, loraclf.load_config(None, []), quiet=True) == [d / "report.html", d / "plots"]
    assert (d / "report.html").exists() and len(list((d / "plots").glob("*.png"))) == 12


def test_report_disabled_writes_nothing(tmp_path):
    d = fake_run(tmp_path)
    cfg = loraclf.load_config(None, ["report.enabled=false"])
    assert R.after_run(d, cfg, quiet=True) == []
    assert not (d / "plots").exists() and not (d / "report.html").exists()
    assert "error_analysis" not in json.loads((d / "metrics.json").read_text())


def test_a_failed_report_keeps_the_run(tmp_path, caplog):
    d = fake_run(tmp_path)
    (d / "predictions" / "test.csv").write_text("not,a,predictions,file\n")
    caplog.set_level(logging.WARNING, logger="loraclf")
    assert R.after_run(d, loraclf.load_config(None, []), quiet=True) == []
    assert "the report could not be made" in caplog.text and f"loraclf report {d}" in caplog.text


def test_the_page_escapes_what_it_shows(tmp_path):
    """Texts, labels and names are data, never markup: autoescaping keeps a <script> in a text inert."""
    d = fake_run(tmp_path, labels=["<b>neg</b>", "pos & co"], n_test=100)
    f = d / "predictions" / "test.csv"
    f.write_text(f.read_text().replace("\nthe ", "\n<script>alert(1)</script> the ", 30))
    page = R.make_report(d).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>neg</b>" not in page and "&lt;b&gt;neg&lt;/b&gt;" in page and "pos &amp; co" in page


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_runs")
    return (fake_run(root, name="a", seed=1),
            fake_run(root, name="b", seed=2, labels=["x", "y", "z"], method="head", trainable=1_000))


def test_cli_report_and_compare(two_runs, tmp_path, capsys):
    a, b = two_runs
    assert main(["report", str(a), "-q"]) == 0
    assert (a / "report.html").exists() and (a / "plots" / "roc.png").exists()
    out = tmp_path / "cmp.html"  # a folder of runs is compared
    assert main(["report", str(a.parent), "--split", "validation", "--output", str(out), "-q"]) == 0
    page = out.read_text()
    assert page.count('src="data:image/png;base64,') == 4 and ">a<" in page and ">b<" in page
    assert "Runs (validation)" in page
    capsys.readouterr()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err


# ---------------------------------------------------------------- multi-label, regression, calibration

PNG = b"\x89PNG\r\n\x1a\n"


def _sections(page: str) -> list[str]:
    """The report's section titles (h2), in page order."""
    return [h.split(">", 1)[1].split("<", 1)[0] for h in page.split("<h2")[1:]]


def _plots(d: Path) -> set:
    files = {f.name for f in (d / "plots").iterdir()}
    assert all((d / "plots" / f).read_bytes()[:8] == PNG for f in files)
    return files


def test_multilabel_report(tmp_path):
    d = fake_multilabel_run(tmp_path, n_test=500)
    page = R.make_report(d).read_text()
    m = json.loads((d / "metrics.json").read_text())
    t, ea = m["test"], m["error_analysis"]["test"]
    assert _plots(d) == {"loss.png", "learning_rate.png", "validation_metrics.png", "per_label.png", "pr.png",
                         "mistake_cooccurrence.png", "lengths.png", "subset_accuracy_by_length.png"}
    assert page.count('src="data:image/png;base64,') == 8
    assert _sections(page) == ["Summary", "Findings", "Training", "Evaluation (test)", "Error analysis (test)",
                               "Config and environment"]
    assert 'href="#calibration"' not in page and "multi-label, 5 labels" in page
    for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "roc_auc"):
        assert f"data-metric='[\"test\", \"{k}\"]'>{t[k]:.4f}<" in page, k
    assert f"data-metric='[\"test\", \"at_0.5\", \"macro_f1\"]'>{t['at_0.5']['macro_f1']:.4f}<" in page
    for name, v in t["per_label"].items():
        assert f"data-metric='[\"test\", \"per_label\", \"{name}\", \"threshold\"]'>{v['threshold']:.3f}<" in page
    # the analysis: exact-set errors match the predictions file; the co-occurrence matrix is FN x FP
    gold = np.array([[x in row["gold"].split(";") for x in m["labels"]] for row in _csv(d / "predictions/test.csv")])
    pred = np.array([[x in row["predicted"].split(";") for x in m["labels"]]
                     for row in _csv(d / "predictions/test.csv")])
    assert ea["errors"] == int((gold != pred).any(axis=1).sum()) == round((1 - t["subset_accuracy"]) * t["n"])
    np.testing.assert_array_equal(ea["mistake_cooccurrence"], (gold & ~pred).T.astype(int) @ (pred & ~gold))
    assert ea["false_positives"][0]["probability"] == max(x["probability"] for x in ea["false_positives"])
    assert "Labels missed and what was predicted instead" in page and "The surest wrong labels" in page
    top = ea["cooccurrence_pairs"][0]
    assert f"<td>{top['missed']}</td><td>{top['predicted']}</td><td class=n>{top['count']:,}</td>" in page
    for f in m["error_analysis"]["findings"]:
        assert f.replace("'", "&#39;") in page
    assert any(f.startswith("The weakest labels by F1 are") for f in m["error_analysis"]["findings"])


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_regression_report(tmp_path):
    d = fake_regression_run(tmp_path, n_test=300)
    page = R.make_report(d).read_text()
    m = json.loads((d / "metrics.json").read_text())
    t, ea = m["test"], m["error_analysis"]["test"]
    assert _plots(d) == {"loss.png", "learning_rate.png", "validation_metrics.png", "predicted_vs_gold.png",
                         "residuals.png", "lengths.png", "errors_by_length.png"}
    assert _sections(page) == ["Summary", "Findings", "Training", "Evaluation (test)", "Error analysis (test)",
                               "Config and environment"]
    assert "regression of score" in page and "<th>target</th>" in page
    for k in ("rmse", "mae", "r2", "pearson", "spearman", "gold_std", "pred_std"):
        assert f"data-metric='[\"test\", \"{k}\"]'>{t[k]:.4f}<" in page, k
    rows = _csv(d / "predictions/test.csv")
    err = np.array([float(r["predicted"]) - float(r["gold"]) for r in rows])
    assert ea["mae"] == pytest.approx(np.abs(err).mean()) == pytest.approx(t["mae"], abs=1e-9)
    worst = int(np.argmax(np.abs(err)))
    assert ea["largest_errors"][0]["index"] == worst and f"{err[worst]:+.3f}" in page
    assert sum(b["n"] for b in ea["by_length"]) == sum(b["n"] for b in ea["by_gold"]) == 300
    assert "The 20 largest errors" in page and "Errors by gold value" in page
    assert any(f.startswith("High scores are under-predicted") for f in m["error_analysis"]["findings"])
    card = (d / "artifact" / "README.md").read_text()
    assert "to predict a continuous score (`score`) for a text." in card


def test_calibrated_report_shows_before_and_after(tmp_path):
    d = add_calibration(fake_run(tmp_path, n_test=300))
    page = R.make_report(d).read_text()
    m = json.loads((d / "metrics.json").read_text())
    assert "reliability_before_after.png" in _plots(d) and len(_plots(d)) == 13
    cal = m["test"]["calibration"]
    assert "<h3>Temperature scaling</h3>" in page and ">1.700<" in page
    for k in ("nll_before", "nll_after", "ece_before", "ece_after"):
        assert f"data-metric='[\"test\", \"calibration\", \"{k}\"]'>{cal[k]:.4f}<" in page
    assert any("Temperature scaling (T=1.700" in f for f in m["error_analysis"]["findings"])
    d2 = add_calibration(fake_run(tmp_path, name="kept-raw", n_test=100), applied=False)
    page = R.make_report(d2).read_text()
    assert "is <b>not</b> applied (would not lower validation NLL)" in page
    assert "reliability_before_after.png" not in _plots(d2) and "NLL before" not in page


def test_comparing_runs_of_different_tasks_is_refused(tmp_path):
    a, b = fake_run(tmp_path, name="single"), fake_regression_run(tmp_path, name="reg")
    with pytest.raises(loraclf.LoraclfError, match=r"^runs of different tasks do not compare: single \(single-label\), "
                       r"reg \(regression\)$"):
        R.compare_report([a, b], tmp_path / "x.html")


def test_comparison_of_regression_runs(tmp_path):
    runs = [fake_regression_run(tmp_path, name=f"sts-{i}", seed=i) for i in range(2)]
    page = R.compare_report(runs, tmp_path / "cmp.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3  # no confusion matrices
    assert "<th class=n>RMSE</th>" in page and "<th class=n>Spearman ρ</th>" in page and "accuracy" not in page
    assert "RMSE against trainable parameters" in page
    rmse = [json.loads((d / "metrics.json").read_text())["test"]["rmse"] for d in runs]
    best = f"color:var(--good)\"><span data-metric='[\"test\", \"rmse\"]'>{min(rmse):.4f}<"
    assert best in page  # lower is better


# ---------------------------------------------------------------- a real training run


@pytest.fixture(scope="module")
def trained(tiny_models, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_runs")
    with pytest.MonkeyPatch.context() as mp:  # right after training, the report gets the texts in hand
        mp.setattr(R, "train_texts", lambda config: pytest.fail("train data read a second time"))
        run = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, out, **{
            "train.epochs": 2, "train.log_every": 2, "report.enabled": True, "report.trackers": "auto"}), quiet=True)
    return run.path


def test_training_writes_report_card_and_analysis(trained):
    d = trained
    m = json.loads((d / "metrics.json").read_text())
    assert {"test", "validation", "error_analysis", "params", "timing"} <= set(m)
    assert "train" in m["error_analysis"]["text_lengths"]["counts"]  # train texts for the length plot
    assert sum(m["error_analysis"]["text_lengths"]["counts"]["train"]) == 240
    scaled = bool(m["test"].get("calibration"))  # train.calibrate auto: kept when it lowers validation NLL
    assert len(list((d / "plots").glob("*.png"))) == 12 + scaled
    assert (d / "plots" / "reliability_before_after.png").exists() == scaled
    assert (d / "report.html").exists() and (d / "artifact" / "README.md").exists()
    clf = loraclf.load(d)  # the card does not disturb loading
    assert clf.labels == m["labels"]


def test_tensorboard_receives_the_history(trained):
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        assert not (trained / "tensorboard").exists()  # auto: nothing without TensorBoard
        pytest.skip("tensorboard not installed")
    ea = EventAccumulator(str(trained / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/lr", "validation/accuracy", "validation/loss", "final/test_accuracy"} <= tags
    history = [json.loads(x) for x in (trained / "history.jsonl").read_text().splitlines()]
    logged = [e.value for e in ea.Scalars("train/loss")]
    expected = [h["loss"] for h in history if h["type"] == "train"]
    np.testing.assert_allclose(logged, expected, rtol=1e-6)
    final = ea.Scalars("final/test_accuracy")[0].value
    assert final == pytest.approx(json.loads((trained / "metrics.json").read_text())["test"]["accuracy"], rel=1e-6)


# ---------------------------------------------------------------- in a real browser


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("LORACLF_REQUIRE_BROWSER"):
        pytest.fail("LORACLF_REQUIRE_BROWSER is set but no chromium was found")
    pytest.skip("chromium not installed (apt-get install chromium; .ci/run does)")


# Marks the page once every image has loaded (or failed). The product has no script; the test adds
# this one to a copy of the page (see `render`) and reads the attributes it sets.
PROBE = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  imgs.forEach(function (i) { if (!(i.complete && i.naturalWidth > 0)) { i.setAttribute('data-broken', '1'); } });
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-loaded', ok.length);
  document.body.setAttribute('data-ready', '1');
});
"""


def render(page: Path, workdir: Path) -> str:
    """The DOM of `page` after it loaded, as headless Chromium sees it, PROBE added before </body>
    (in a copy in `workdir`: the page is self-contained, so it renders the same from anywhere)."""
    html = page.read_text(encoding="utf-8")
    assert html.count("</body>") == 1 and "<script" not in html, "the page itself should carry no script"
    probed = workdir / f"probed-{page.name}"
    probed.write_text(html.replace("</body>", f"<script>{PROBE}</script></body>"), encoding="utf-8")
    profile = workdir / "profile"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--dump-dom", probed.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "</body>" in r.stdout, r.stderr[-2000:]
    return r.stdout


class DomReader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.body: dict = {}
        self.images: list[dict] = []
        self.metrics: list[tuple[list, str]] = []
        self._open: list = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "img":
            self.images.append(a)
        if "data-metric" in a:
            self._open.append([json.loads(a["data-metric"]), ""])

    def handle_data(self, data):
        if self._open:
            self._open[-1][1] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open:
            path, text = self._open.pop()
            self.metrics.append((path, text))


def _lookup(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def check_numbers(dom: DomReader, metrics: dict) -> set:
    """Every tagged number on the page equals metrics.json at its shown precision; returns the paths."""
    seen = set()
    for path, text in dom.metrics:
        value = _lookup(metrics, path)
        shown = text.strip().replace(",", "")
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        assert abs(float(shown) - value) <= 0.5 * 10 ** -decimals + 1e-9, f"{path}: page {text} != {value}"
        seen.add(tuple(path))
    return seen


def test_report_renders_in_chromium(trained, tmp_path):
    page = trained / "report.html"
    dom = DomReader()
    dom.feed(render(page, tmp_path))
    n_plots = len(list((trained / "plots").glob("*.png")))
    metrics = json.loads((trained / "metrics.json").read_text())
    assert dom.body.get("data-ready") == "1", "the probe script did not run"
    assert int(dom.body["data-images-total"]) == len(dom.images) == n_plots == 12 + bool(
        metrics["test"].get("calibration"))
    assert int(dom.body["data-images-loaded"]) == n_plots, "some images did not load"
    assert not [i for i in dom.images if i.get("data-broken")]
    seen = check_numbers(dom, metrics)
    for split in ("test", "validation"):
        for k in HEADLINE:
            if metrics[split].get(k) is not None:
                assert (split, k) in seen, f"headline {split}.{k} not on the page"
    assert ("params", "trainable") in seen and ("data", "sizes", "train") in seen
    for label in metrics["labels"]:
        assert ("test", "per_class", label, "f1") in seen
    if metrics["test"].get("calibration"):  # temperature scaling: NLL and ECE before and after, from the file
        assert {("test", "calibration", "nll_before"), ("test", "calibration", "ece_after")} <= seen


def test_comparison_renders_in_chromium(two_runs, tmp_path):
    out = R.compare_report(list(two_runs), tmp_path / "cmp.html")
    dom = DomReader()
    dom.feed(render(out, tmp_path))
    assert dom.body.get("data-ready") == "1"
    assert int(dom.body["data-images-loaded"]) == int(dom.body["data-images-total"]) == 4
    rows = [json.loads((d / "metrics.json").read_text()) for d in two_runs]
    accs = [float(t) for p, t in dom.metrics if p == ["test", "accuracy"]]  # in run order, each its own
    assert accs == [round(r["test"]["accuracy"], 4) for r in rows]
