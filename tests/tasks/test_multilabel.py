"""Multi-label: sigmoid outputs, BCE with positive weights, thresholds tuned on validation, metrics."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from loraclf.config import Config, TrainConfig
from loraclf.errors import ConfigError
from loraclf.evaluation.metrics import multilabel_metrics, samples_f1
from loraclf.tasks import MultiLabel, make_task
from loraclf.tasks.multilabel import positive_weights, tune_thresholds

LABELS = ["joy", "anger", "fear"]


def test_balanced_positive_weights_are_negatives_over_positives_capped():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    w = positive_weights("balanced", y)
    # joy 2 of 4: 2/2 = 1; anger 1 of 4: 3/1 = 3; fear never: 4/1 = 4 (a missing label counts once)
    torch.testing.assert_close(w, torch.tensor([1.0, 3.0, 4.0]))
    big = np.zeros((1000, 1), dtype=np.float32)
    big[0] = 1
    assert positive_weights("balanced", big).item() == 100.0  # capped
    assert positive_weights(None, y) is None


def test_loss_is_bce_with_positive_weights():
    task = MultiLabel(LABELS)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 0.3, -2.0]])
    gold = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    plain = task.loss_function(TrainConfig(), gold.numpy(), "cpu")(logits, gold)
    torch.testing.assert_close(plain, torch.nn.functional.binary_cross_entropy_with_logits(logits, gold))
    weighted = task.loss_function(TrainConfig(pos_weight=[1.0, 1.0, 5.0]), gold.numpy(), "cpu")(logits, gold)
    assert weighted > plain  # the missed 'fear' positive counts five times


def test_metrics_match_scikit_learn_and_hand_counts():
    gold = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1]])
    probs = np.array([[0.9, 0.2, 0.1], [0.6, 0.4, 0.2], [0.1, 0.1, 0.7], [0.2, 0.8, 0.3]])
    m = multilabel_metrics(gold, probs, np.full(3, 0.5), LABELS, loss=0.1)
    pred = (probs >= 0.5).astype(int)  # [[1,0,0],[1,0,0],[0,0,1],[0,1,0]]
    assert m["micro_f1"] == pytest.approx(f1_score(gold, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro", zero_division=0))
    assert m["subset_accuracy"] == 0.25  # only the first row is exactly right
    assert m["hamming_loss"] == pytest.approx(3 / 12)  # wrong cells: (1, anger), (2, fear), (3, fear)
    # samples F1 by hand: 1, 2*1/(2+1), row 3 gold empty but predicted fear: 0, 2*1/(2+1)
    assert m["samples_f1"] == pytest.approx((1 + 2 / 3 + 0 + 2 / 3) / 4)
    assert m["empty_gold"] == 1 and m["label_cardinality"] == pytest.approx(5 / 4)
    assert m["per_label"]["joy"]["support"] == 2 and m["per_label"]["joy"]["f1"] == 1.0
    assert m["per_label"]["joy"]["roc_auc"] == 1.0 and m["loss"] == 0.1


def test_one_label_is_scored_as_that_label_not_as_a_binary_column():
    gold = np.array([[1], [0], [0], [0], [1]])
    probs = np.array([[0.9], [0.6], [0.1], [0.2], [0.3]])  # tp 1, fp 1, fn 1, tn 2
    m = multilabel_metrics(gold, probs, np.full(1, 0.5), ["toxic"])
    assert m["micro_f1"] == m["macro_f1"] == m["weighted_f1"] == pytest.approx(0.5)  # 2*1 / (2*1 + 1 + 1)
    assert m["per_label"]["toxic"] == {**m["per_label"]["toxic"], "precision": 0.5, "recall": 0.5, "support": 2}


def test_an_empty_gold_and_empty_prediction_is_right():
    gold = np.zeros((2, 3), dtype=int)
    assert samples_f1(gold, gold) == 1.0
    m = multilabel_metrics(gold, np.full((2, 3), 0.1), np.full(3, 0.5), LABELS)
    assert m["subset_accuracy"] == 1.0 and m["roc_auc"] is None and m["average_precision"] is None


def test_per_label_thresholds_maximise_each_labels_f1():
    rng = np.random.default_rng(0)
    gold = (rng.random((400, 3)) < [0.5, 0.1, 0.3]).astype(int)
    # scores separate well but sit at different heights per label: the best cut differs per label
    probs = np.clip(gold * [0.3, 0.15, 0.6] + rng.random((400, 3)) * [0.4, 0.2, 0.5], 0, 1)
    th = tune_thresholds(gold, probs, "per-label", "macro_f1")
    for j in range(3):
        best = max(f1_score(gold[:, j], probs[:, j] >= t, zero_division=0) for t in np.linspace(0.01, 0.99, 99))
        assert f1_score(gold[:, j], probs[:, j] >= th[j], zero_division=0) == pytest.approx(best)
    macro_tuned = f1_score(gold, probs >= th, average="macro", zero_division=0)
    assert macro_tuned > f1_score(gold, probs >= 0.5, average="macro", zero_division=0) + 0.05
    glob = tune_thresholds(gold, probs, "global", "micro_f1")
    assert len(set(glob)) == 1
    micro = tune_thresholds(gold, probs, "per-label", "micro_f1")
    assert f1_score(gold, probs >= micro, average="micro") >= f1_score(gold, probs >= glob, average="micro") - 1e-12


def test_fit_tunes_on_validation_and_the_state_round_trips():
    task = MultiLabel(LABELS)
    gold = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]] * 5)
    logits = np.log(np.clip(gold * 0.3 + 0.2, 1e-6, None) / (1 - np.clip(gold * 0.3 + 0.2, 1e-6, None)))
    info = task.fit(TrainConfig(), logits, gold)
    assert info["mode"] == "per-label" and info["chosen_on"] == "validation"
    assert all(0.2 < t <= 0.5 for t in info["values"].values())  # between the negatives' 0.2 and positives' 0.5
    again = make_task("multi-label", LABELS, task.state())
    np.testing.assert_array_equal(again.thresholds, task.thresholds)
    probs = again.probabilities(logits)
    assert again.predicted(probs)[:4] == ["joy", "anger", "fear", "joy;fear"]
    assert task.fit(TrainConfig(thresholds="fixed"), logits, gold)["values"] == {n: 0.5 for n in LABELS}


def test_a_thresholds_file_must_fit_the_labels():
    task = MultiLabel(LABELS)
    with pytest.raises(ConfigError, match="exactly the model's labels"):
        task.set_thresholds({"joy": 0.5})
    with pytest.raises(ConfigError, match="between 0 and 1"):
        task.set_thresholds({"joy": 0.5, "anger": 1.5, "fear": 0.2})
    task.set_thresholds({"joy": 0.4, "anger": 0.5, "fear": 0.2})
    assert list(task.thresholds) == [0.4, 0.5, 0.2]


def test_single_label_options_are_refused():
    task = MultiLabel(LABELS)
    with pytest.raises(ConfigError, match=r"train.regression_loss=huber applies to regression tasks"):
        task.check_config(Config(train=TrainConfig(regression_loss="huber")))
    with pytest.raises(ConfigError, match=r"train.calibrate=temperature applies to single-label tasks"):
        task.check_config(Config(train=TrainConfig(calibrate="temperature")))
    with pytest.raises(ConfigError, match="uses train.pos_weight"):
        task.check_config(Config(train=TrainConfig(class_weights="balanced")))
    with pytest.raises(ConfigError, match="does not score a multi-label task"):
        task.check_config(Config(train=TrainConfig(metric="accuracy")))
    with pytest.raises(ConfigError, match="2 values but there are 3 labels"):
        task.check_config(Config(train=TrainConfig(pos_weight=[1.0, 2.0])))
