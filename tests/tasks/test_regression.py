"""Regression: normalised targets, MSE/Huber, metrics in target units."""

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from loraclf.config import Config, ModelConfig, TrainConfig
from loraclf.errors import ConfigError
from loraclf.evaluation.metrics import regression_metrics
from loraclf.tasks import Regression, make_task


def test_metrics_match_numpy_and_scipy():
    gold = np.array([0.0, 1.0, 2.5, 4.0, 5.0])
    pred = np.array([0.5, 1.0, 2.0, 3.5, 4.0])
    m = regression_metrics(gold, pred)
    err = pred - gold
    assert m["rmse"] == pytest.approx(np.sqrt((err ** 2).mean()))
    assert m["mae"] == pytest.approx(np.abs(err).mean())
    assert m["r2"] == pytest.approx(1 - (err ** 2).sum() / ((gold - gold.mean()) ** 2).sum())
    assert m["pearson"] == pytest.approx(pearsonr(gold, pred)[0])
    assert m["spearman"] == pytest.approx(spearmanr(gold, pred)[0])
    assert regression_metrics(gold, np.full(5, 2.0))["pearson"] is None  # constant: undefined, not 0


def test_the_loss_learns_the_standardised_target_and_outputs_map_back():
    task = Regression(["score"])
    train = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    loss = task.loss_function(TrainConfig(), train, "cpu")
    assert task.mean == pytest.approx(2.5) and task.std == pytest.approx(np.std(train))
    perfect = torch.tensor((train - 2.5) / np.std(train))[:, None]
    assert loss(perfect, torch.tensor(train)).item() == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(task.probabilities(perfect.numpy()), train, rtol=1e-6)
    again = make_task("regression", ["score"], task.state())
    np.testing.assert_allclose(again.probabilities(perfect.numpy()), train, rtol=1e-6)
    raw = Regression(["score"])
    raw.loss_function(TrainConfig(normalize_target=False), train, "cpu")
    assert (raw.mean, raw.std) == (0.0, 1.0)


def test_huber_is_gentler_than_mse_on_outliers():
    task = Regression(["score"])
    train = np.array([0.0, 1.0], dtype=np.float32)
    mse = task.loss_function(TrainConfig(normalize_target=False), train, "cpu")
    huber = task.loss_function(TrainConfig(normalize_target=False, regression_loss="huber"), train, "cpu")
    far = (torch.tensor([[10.0]]), torch.tensor([0.0]))
    assert mse(*far).item() == pytest.approx(100.0) and huber(*far).item() == pytest.approx(9.5)


def test_prediction_files_hold_scores_and_signed_errors(tmp_path):
    task = Regression(["score"])
    task.write_predictions(tmp_path / "p.csv", ["a", "b"], np.array([1.0, 2.0]), np.array([1.5, 1.0]),
                           pairs=["c", "d"])
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines == ["text,text_pair,gold,predicted,error", "a,c,1.0000,1.5000,0.5000", "b,d,2.0000,1.0000,-1.0000"]


def test_classification_options_and_prompt_heads_are_refused():
    task = Regression(["score"])
    with pytest.raises(ConfigError, match="has no classes"):
        task.check_config(Config(train=TrainConfig(class_weights="balanced")))
    from loraclf.models.heads import head_class

    with pytest.raises(ConfigError, match="needs task single-label, not regression"):  # the head declares its tasks
        head_class("verbalizer").check_config(Config(model=ModelConfig(head="verbalizer")), task)
    with pytest.raises(ConfigError, match="does not score a regression task"):
        task.check_config(Config(train=TrainConfig(metric="macro_f1")))
