import numpy as np
import pytest

from loraclf.evaluation.metrics import compute_metrics, expected_calibration_error, is_better


def test_perfect_binary():
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    m = compute_metrics(y, probs, ["neg", "pos"])
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["roc_auc"] == 1.0
    assert m["confusion_matrix"] == [[2, 0], [0, 2]]
    assert m["per_class"]["pos"]["support"] == 2


def test_known_values_three_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), pred] = 0.8
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recalls 0.5, 1.0, 0.5 -> macro recall 2/3 (TweetEval's metric)
    assert m["macro_recall"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # every prediction at confidence 0.8 with accuracy 4/6: ECE = |0.8 - 0.667|
    assert m["ece"] == pytest.approx(abs(0.8 - 4 / 6))
    # one-vs-rest AUCs by hand (ties count half): a 5/8, b 7/8, c 6/8
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["confidence"]["mean"] == pytest.approx(0.8)


def test_ece_zero_when_calibrated():
    conf = np.array([0.75] * 4)
    correct = np.array([1, 1, 1, 0], dtype=float)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)


def test_auc_with_missing_class_in_gold():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["roc_auc"] == 1.0
    assert m["per_class"]["c"]["support"] == 0


def test_is_better_direction():
    assert is_better("accuracy", 0.9, 0.8) and not is_better("accuracy", 0.8, 0.9)
    assert is_better("loss", 0.1, 0.2) and is_better("ece", 0.1, None)


def test_missing_metric_values_are_never_better():
    assert not is_better("roc_auc", None, None)
    assert not is_better("roc_auc", float("nan"), 0.5)
