"""loraclf.evaluation.analysis: error analysis, curves and findings, checked by hand and against scikit-learn."""

import numpy as np
import pytest

from loraclf.evaluation import analysis as an
from loraclf.evaluation import metrics as M
from loraclf.evaluation import report as R
from loraclf.tasks import MultiLabel, task_of
from reportdata import fake_run


def _findings(metrics: dict, analysis: dict, split: str) -> list[str]:
    """The findings the report shows: the run's task's, when the split has metrics and an analysis."""
    if not metrics.get(split) or not analysis.get(split):
        return []
    return task_of(metrics).findings(metrics, analysis, split)


def test_wilson_interval():
    lo, hi = an.wilson(80, 100)
    assert lo == pytest.approx(0.7111, abs=1e-4) and hi == pytest.approx(0.8666, abs=1e-4)
    assert an.wilson(0, 10)[0] == 0.0 and an.wilson(10, 10)[1] == 1.0
    assert all(np.isnan(an.wilson(0, 0)))


def test_length_buckets_are_contiguous_and_about_equal():
    lengths = np.random.default_rng(0).integers(1, 60, 1000)
    edges = an.bucket_edges(lengths, 5)
    assert edges[0][0] == lengths.min() and edges[-1][1] == lengths.max()
    assert all(a[1] + 1 == b[0] for a, b in zip(edges, edges[1:]))
    counts = [((lengths >= lo) & (lengths <= hi)).sum() for lo, hi in edges]
    assert sum(counts) == 1000 and len(edges) == 5 and min(counts) > 120
    assert an.bucket_edges(np.array([7, 7, 7]), 5) == [(7, 7)]  # ties keep one bucket


def test_analyse_split_by_hand():
    labels = ["a", "b", "c"]
    texts = ["one", "two words", "three words here", "four words are here", "x", "y z"]
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.array([[0.9, 0.05, 0.05],   # right
                      [0.8, 0.1, 0.1],     # b -> a, conf 0.8
                      [0.1, 0.2, 0.7],     # right
                      [0.3, 0.6, 0.1],     # a -> b, conf 0.6
                      [0.05, 0.9, 0.05],   # right
                      [0.95, 0.03, 0.02]])  # c -> a, conf 0.95
    a = an.analyse_split(texts, y, probs, labels, top_errors=2, n_buckets=2, examples_per_pair=1)
    assert a["n"] == 6 and a["errors"] == 3 and a["error_rate"] == 0.5
    top = a["most_confident_mistakes"]
    assert [m["index"] for m in top] == [5, 1]  # the surest mistakes first, top 2 only
    assert top[0] == {"index": 5, "text": "y z", "gold": "c", "predicted": "a", "confidence": 0.95, "p_gold": 0.02,
                      "words": 2}
    pairs = {(p["gold"], p["predicted"]): p for p in a["confusions"]}
    assert set(pairs) == {("b", "a"), ("a", "b"), ("c", "a")}
    assert [p["count"] for p in a["confusions"]] == [1, 1, 1]
    assert pairs[("b", "a")]["rate_of_gold"] == 0.5 and pairs[("b", "a")]["share_of_errors"] == pytest.approx(1 / 3)
    assert pairs[("b", "a")]["examples"][0]["index"] == 1
    # words 1, 2, 3, 4, 1, 2: the median 2 starts the second bucket; the 1-word texts (0 and 4) are both right
    assert [(b["range"], b["n"], b["errors"]) for b in a["by_length"]] == [("1", 2, 0), ("2–4", 4, 3)]
    # label "a" (texts 0 and 3) scores 0.9 and 0.3 against 0.8, 0.1, 0.05, 0.95 for the others:
    # 5 of the 8 (positive, negative) pairs are ranked right; ranked by score, n p n p n n gives AP 1/2.
    assert a["per_class_ranking"]["a"] == {"roc_auc": 5 / 8, "average_precision": 0.5}


def test_curves_by_hand():
    pos = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    score = np.array([0.9, 0.8, 0.7, 0.7, 0.2, 0.1])  # a tie between a positive and a negative
    fpr, tpr, auc = M.roc_points(pos, score)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    assert auc == pytest.approx(4.5 / 9)  # 4 of the 9 (positive, negative) pairs ranked right, the tie half
    precision, recall, ap = M.pr_points(pos, score)
    np.testing.assert_allclose(recall, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(precision, [1, 1, 1 / 2, 2 / 4, 2 / 5, 3 / 6])
    assert ap == pytest.approx(1 / 3 * 1 + 1 / 3 * 1 / 2 + 1 / 3 * 1 / 2)


def test_curve_areas_equal_sklearns_scores():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(1)
    for _ in range(3):
        y = rng.random(500) < 0.3
        s = np.round(rng.random(500) + 0.6 * y, 2)  # ties included
        assert M.roc_points(y, s)[2] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert M.pr_points(y, s)[2] == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_ranking_is_null_for_a_class_absent_from_the_split():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1]])
    r = an.ranking(np.array([0, 1, 1]), probs, ["a", "b", "c"])
    assert r["c"] == {"roc_auc": None, "average_precision": None}
    assert r["a"] == {"roc_auc": 1.0, "average_precision": 1.0}


def test_findings_name_the_weak_length_bucket(tmp_path):
    run = R.read_run(fake_run(tmp_path, n_test=3000))  # short texts are harder in the synthetic data
    ea = R.error_analysis(run, R.report_options(run.config))
    text = " ".join(ea["findings"])
    worst = min(ea["test"]["by_length"], key=lambda b: b["accuracy"])
    assert f"Texts of {worst['range']} words are the weakest" in text
    top = ea["test"]["confusions"][0]
    assert f"The most common mistake is {top['gold']!r} predicted as {top['predicted']!r}" in text
    assert "3 test texts (0.1%) are longer than data.max_length tokens" in text  # token_lengths.test.truncated


def test_findings_without_analysis_say_nothing():
    assert _findings({}, {}, "test") == []
    assert an.primary_split({"validation": {"n": 1}}) == "validation" and an.primary_split({}) is None


# ---------------------------------------------------------------- multi-label

ML_LABELS = ["joy", "anger", "fear"]
ML_TEXTS = ["one", "two words", "three words here", "four words are here"]
#             joy anger fear
ML_GOLD = np.array([[1, 0, 0],    # right
                    [1, 1, 0],    # anger missed, fear predicted
                    [0, 1, 0],    # anger missed, joy and fear predicted
                    [0, 0, 0]], dtype=bool)  # nothing gold, nothing predicted: right
ML_PRED = np.array([[1, 0, 0],
                    [1, 0, 1],
                    [1, 0, 1],
                    [0, 0, 0]], dtype=bool)
ML_PROBS = np.array([[0.9, 0.1, 0.2],
                     [0.8, 0.4, 0.7],
                     [0.6, 0.2, 0.95],
                     [0.1, 0.1, 0.1]])


def test_label_matrix_reads_the_predictions_csv_cells():
    m = MultiLabel(ML_LABELS).label_matrix(["joy;fear", "", "anger"])
    np.testing.assert_array_equal(m, [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="'love' is not one of"):
        MultiLabel(ML_LABELS).label_matrix(["love"])


def test_mistake_cooccurrence_by_hand():
    m = np.array(an.mistake_cooccurrence(ML_GOLD, ML_PRED, ML_LABELS))
    expected = np.zeros((3, 3), dtype=int)
    expected[1, 2] = 2  # anger missed while fear predicted: texts 1 and 2
    expected[1, 0] = 1  # anger missed while joy predicted: text 2
    np.testing.assert_array_equal(m, expected)
    assert np.trace(m) == 0
    with pytest.raises(ValueError, match="one column per label"):
        an.mistake_cooccurrence(ML_GOLD, ML_PRED[:, :2], ML_LABELS)


def test_analyse_multilabel_split_by_hand():
    th = {"joy": 0.5, "anger": 0.5, "fear": 0.6}
    a = an.analyse_multilabel_split(ML_TEXTS, ML_GOLD, ML_PRED, ML_PROBS, ML_LABELS, th, top_errors=2,
                                    n_buckets=2, examples_per_pair=1)
    assert (a["n"], a["errors"], a["error_rate"]) == (4, 2, 0.5)
    assert a["label_errors"] == 5 and a["empty_predicted"] == 1  # 2 misses + 3 wrong labels
    assert a["per_label_errors"]["anger"] == {"false_negatives": 2, "false_positives": 0}
    assert a["per_label_errors"]["fear"] == {"false_negatives": 0, "false_positives": 2}
    # false positives, surest first: fear 0.95 (text 2), fear 0.7 (text 1); joy 0.6 is third
    fps = a["false_positives"]
    assert [(x["index"], x["label"], x["probability"]) for x in fps] == [(2, "fear", 0.95), (1, "fear", 0.7)]
    assert fps[0] == {"index": 2, "text": "three words here", "label": "fear", "probability": 0.95, "threshold": 0.6,
                      "gold": ["anger"], "predicted": ["joy", "fear"], "words": 3}
    # false negatives, lowest probability first: anger 0.2 (text 2), anger 0.4 (text 1)
    assert [(x["index"], x["probability"]) for x in a["false_negatives"]] == [(2, 0.2), (1, 0.4)]
    pairs = a["cooccurrence_pairs"]
    assert [(p["missed"], p["predicted"], p["count"]) for p in pairs] == [("anger", "fear", 2), ("anger", "joy", 1)]
    assert pairs[0]["share_of_errors"] == 1.0 and pairs[0]["rate_of_missed"] == 1.0
    # the surest swap: text 2 (fear 0.95 against anger 0.2) before text 1 (0.7 against 0.4)
    assert pairs[0]["examples"] == [{"index": 2, "text": "three words here", "p_missed": 0.2, "p_predicted": 0.95}]
    # exact-set accuracy by length: words 1 2 | 3 4 (median 2.5 cuts at 3); text 1 and 2 are wrong
    assert [(b["range"], b["n"], b["errors"], b["mean_confidence"]) for b in a["by_length"]] == [
        ("1–2", 2, 1, None), ("3–4", 2, 1, None)]


def _ml_metrics(**over):
    per_label = {"joy": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 40, "threshold": 0.4},
                 "anger": {"precision": 0.5, "recall": 0.2, "f1": 0.29, "support": 10, "threshold": 0.3},
                 "fear": {"precision": 0.6, "recall": 0.6, "f1": 0.6, "support": 12, "threshold": 0.5},
                 "awe": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "threshold": 0.5}}
    test = {"n": 100, "micro_f1": 0.7, "macro_f1": 0.58, "subset_accuracy": 0.6, "label_cardinality": 1.2,
            "predicted_cardinality": 0.9, "per_label": per_label, "at_0.5": {"macro_f1": 0.5}, **over}
    return {"task": "multi-label", "labels": list(per_label), "test": test,
            "thresholds": {"mode": "per-label", "objective": "macro_f1", "values": {}}}


def test_multilabel_findings():
    m = _ml_metrics()
    analysis = {"test": {"empty_predicted": 7, "by_length": [],
                         "cooccurrence_pairs": [{"missed": "anger", "predicted": "fear", "count": 4,
                                                 "rate_of_missed": 0.4}]}}
    text = "\n".join(_findings(m, analysis, "test"))
    assert "The weakest labels by F1 are 'anger' (0.290, 10 texts), 'fear' (0.600, 12 texts), 'joy'" in text
    assert "1 label(s) never occur in the test split ('awe')" in text
    gain = m["test"]["macro_f1"] - m["test"]["at_0.5"]["macro_f1"]
    assert f"give test macro-F1 0.580 against 0.500 with 0.5 for every label (+{gain:.3f})" in text
    assert "It under-predicts: 0.90 labels per text on average against 1.20 in gold; 7 texts get no label" in text
    assert "'anger' missed while 'fear' is predicted: 4 texts, 40.0% of all 'anger' texts" in text
    worse = _findings(_ml_metrics(**{"at_0.5": {"macro_f1": 0.6}}), analysis, "test")
    assert any("score lower on test than 0.5 for every label" in f for f in worse)


# ---------------------------------------------------------------- regression


def test_regression_analysis_by_hand():
    texts = ["a", "b c", "d e f", "g h i j"]
    gold = np.array([0.0, 1.0, 4.0, 5.0])
    pred = np.array([0.5, 1.0, 2.5, 4.0])
    a = an.analyse_regression_split(texts, gold, pred, top_errors=2, n_buckets=2)
    err = pred - gold
    assert a["n"] == 4 and a["mae"] == pytest.approx(np.abs(err).mean())
    assert a["rmse"] == pytest.approx(np.sqrt((err ** 2).mean())) and a["mean_error"] == pytest.approx(err.mean())
    assert a["largest_errors"] == [
        {"index": 2, "text": "d e f", "gold": 4.0, "predicted": 2.5, "error": -1.5, "words": 3},
        {"index": 3, "text": "g h i j", "gold": 5.0, "predicted": 4.0, "error": -1.0, "words": 4}]
    by_len = a["by_length"]  # words 1 2 | 3 4
    assert [(b["range"], b["n"]) for b in by_len] == [("1–2", 2), ("3–4", 2)]
    assert by_len[0]["mae"] == pytest.approx(0.25) and by_len[1]["mae"] == pytest.approx(1.25)
    assert by_len[1]["rmse"] == pytest.approx(np.sqrt((1.5 ** 2 + 1.0) / 2))
    # gold 0..5 in 2 equal bins: [0, 2.5) holds 0 and 1, [2.5, 5] holds 4 and 5 (the top edge included)
    by_gold = a["by_gold"]
    assert [(b["range"], b["n"], b["mean_error"]) for b in by_gold] == [("0–2.5", 2, 0.25), ("2.5–5", 2, -1.25)]
    assert an.error_by_gold(np.array([3.0, 3.0]), np.array([2.0, 4.0]), 5) == [
        {"range": "3–3", "lo": 3.0, "hi": 3.0, "n": 2, "mae": 1.0, "rmse": 1.0, "mean_error": 0.0}]


def test_regression_findings():
    gold_std, gold_mean = 1.5, 2.7
    m = {"task": "regression", "test": {"n": 200, "mae": 0.6, "gold_mean": gold_mean, "gold_std": gold_std,
                                        "pred_mean": 2.4, "pred_std": 1.0}}
    analysis = {"test": {"by_gold": [{"range": "0–1", "n": 30, "mean_error": 0.8},
                                     {"range": "4–5", "n": 40, "mean_error": -0.9}],
                         "by_length": [{"range": "1–5", "n": 50, "mae": 0.9}, {"range": "6–9", "n": 150, "mae": 0.5}]}}
    text = "\n".join(_findings(m, analysis, "test"))
    assert "Predictions are biased low: mean 2.400 against 2.700 in gold." in text
    assert "compressed toward the mean: their standard deviation is 1.000 against 1.500" in text
    assert "High scores are under-predicted: texts with gold 4–5 (n=40) are predicted 0.900 too low" in text
    assert "Low scores are over-predicted: texts with gold 0–1 (n=30) are predicted 0.800 too high" in text
    assert "Texts of 1–5 words have the largest errors: MAE 0.900 (n=50) against 0.600 overall." in text
    m["test"].update(pred_mean=gold_mean, pred_std=gold_std)
    analysis["test"]["by_length"][0]["mae"] = 0.7
    text = "\n".join(_findings(m, analysis, "test"))
    assert "biased" not in text and "compressed" not in text and "do not clearly depend on length" in text


# ---------------------------------------------------------------- calibration and task helpers


def test_calibration_finding(tmp_path):
    run = R.read_run(fake_run(tmp_path, n_test=300))
    m = run.metrics
    m["calibration"] = {"method": "temperature", "temperature": 1.8, "applied": True, "reason": "lower NLL"}
    m["test"]["calibration"] = {"nll_before": 0.52, "nll_after": 0.41, "ece_before": 0.09, "ece_after": 0.02}
    ea = R.error_analysis(run, R.report_options(run.config))
    assert ("Temperature scaling (T=1.800, fitted on validation) changes test NLL from 0.520 to 0.410 and ECE "
            "from 0.090 to 0.020; the predicted labels stay the same.") in ea["findings"]
    m["calibration"].update(applied=False, reason="validation NLL did not improve")
    assert ("Temperature scaling (T=1.800, fitted on validation) was not applied: validation NLL did not improve."
            in _findings(m, ea, "test"))


def test_task_helpers():
    from loraclf.tasks import TASKS

    assert task_of({}).name == "single-label" and task_of({"task": "regression", "labels": ["s"]}).name == "regression"
    assert task_of({}).headline == M.HEADLINE
    assert M.metric("rmse").direction == "min" and M.metric("pearson").name == "Pearson r"
    assert M.metric("accuracy") is M.METRICS["accuracy"]
    assert all(M.metric(k).key == k for t in TASKS.values() for k in t.headline)
    assert M.metric("no_such_metric").name == "no_such_metric"


def test_reading_a_run_never_imports_torch(tmp_path):
    """Tasks import without torch, so the report path (read the run, analyse, find) never loads it."""
    import subprocess
    import sys

    code = ("import sys; from loraclf.evaluation import report as R; from loraclf import tasks, config; "
            "from loraclf.models import heads, methods; from loraclf.studies import compare; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("strategy,says", [
    (None, "were truncated: the model saw only their beginning"),
    ("truncate", "were truncated: the model saw only their beginning"),
    ("head-tail", "read by their beginning and their end"),
    ("chunks", None),  # read whole: nothing was cut
])
def test_the_truncation_finding_says_how_long_texts_were_read(strategy, says):
    metrics = {"data": {"token_lengths": {"test": {"truncated": 30}}},
               "test": {"n": 100, **({"long_text": {"strategy": strategy}} if strategy else {})}}
    found = an.truncation(metrics, "test", 100)
    assert (found == []) if says is None else (says in found[0] and "30 test texts (30.0%)" in found[0])
