"""Tasks: the loss, probabilities, metrics and prediction files that follow a model's logits."""

import csv

import numpy as np
import pytest
import torch

from loraclf.config import Config, TrainConfig
from loraclf.errors import ConfigError
from loraclf.tasks import SingleLabel, class_weights, make_task

LABELS = ["neg", "neu", "pos"]


def test_balanced_weights_are_inverse_train_frequency():
    y = np.array([0, 0, 0, 0, 1, 2, 2, 2])
    w = class_weights("balanced", y, 3)
    # n / (k * count): 8/12, 8/3, 8/9
    torch.testing.assert_close(w, torch.tensor([8 / 12, 8 / 3, 8 / 9], dtype=torch.float32))
    assert class_weights(None, y, 3) is None
    torch.testing.assert_close(class_weights([1, 2, 3], y, 3), torch.tensor([1.0, 2.0, 3.0]))


def test_class_weights_of_the_wrong_length_are_refused_with_the_labels():
    task = make_task("single-label", LABELS)
    with pytest.raises(ConfigError, match=r"2 values but there are 3 labels \(neg, neu, pos\)"):
        task.check_config(Config(train=TrainConfig(class_weights=[1.0, 2.0])))
    task.check_config(Config(train=TrainConfig(class_weights=[1.0, 2.0, 3.0])))


def test_loss_function_applies_weights_and_smoothing():
    task = SingleLabel(LABELS)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    gold = torch.tensor([0, 2])
    plain = task.loss_function(TrainConfig(), np.array([0, 1, 2]), "cpu")(logits, gold)
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits, gold))
    weighted = task.loss_function(TrainConfig(class_weights=[1.0, 1.0, 3.0]), np.array([0, 1, 2]), "cpu")
    assert weighted(logits, gold) > plain  # the second row's class counts three times


def test_evaluate_gives_softmax_probabilities_and_their_nll():
    task = SingleLabel(LABELS)
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    gold = np.array([0, 1, 2])
    m, probs = task.evaluate(logits, gold)
    np.testing.assert_allclose(probs, torch.tensor(logits).softmax(-1).numpy(), rtol=1e-6)
    assert m["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(3), gold])))
    assert m["accuracy"] == pytest.approx(1 / 3) and m["n"] == 3
    assert task.predicted(probs) == ["neg", "pos", "neg"]


def test_predictions_file_and_answers(tmp_path):
    task = SingleLabel(["a", "b"])
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    task.write_predictions(tmp_path / "p.csv", ["x, with a comma", "y"], np.array([0, 0]), probs)
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="")))
    assert rows[0] == {"text": "x, with a comma", "gold": "a", "predicted": "a", "correct": "1", "p_a": "0.900000",
                       "p_b": "0.100000"}
    assert rows[1]["predicted"] == "b" and rows[1]["correct"] == "0"
    assert task.answer_columns() == ["label", "confidence", "p_a", "p_b"]
    assert task.answers(probs)[1] == ["b", "0.700000", "0.300000", "0.700000"]
