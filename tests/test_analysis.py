"""loraclf.analysis: error analysis, curves and findings, checked by hand and against scikit-learn."""

import numpy as np
import pytest

from loraclf import analysis as an
from loraclf import report as R
from reportdata import fake_run


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
    fpr, tpr, auc = an.roc_points(pos, score)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    assert auc == pytest.approx(4.5 / 9)  # 4 of the 9 (positive, negative) pairs ranked right, the tie half
    precision, recall, ap = an.pr_points(pos, score)
    np.testing.assert_allclose(recall, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(precision, [1, 1, 1 / 2, 2 / 4, 2 / 5, 3 / 6])
    assert ap == pytest.approx(1 / 3 * 1 + 1 / 3 * 1 / 2 + 1 / 3 * 1 / 2)


def test_curve_areas_equal_sklearns_scores():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(1)
    for _ in range(3):
        y = rng.random(500) < 0.3
        s = np.round(rng.random(500) + 0.6 * y, 2)  # ties included
        assert an.roc_points(y, s)[2] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert an.pr_points(y, s)[2] == pytest.approx(average_precision_score(y, s), abs=1e-12)


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
    assert an.findings({}, {}, "test") == []
    assert an.primary_split({"validation": {"n": 1}}) == "validation" and an.primary_split({}) is None
