"""Temperature scaling of single-label outputs: fitted on validation, stored, applied, reported."""

import numpy as np
import pytest

from loraclf.config import TrainConfig
from loraclf.tasks import SingleLabel, fit_temperature, make_task, nll, softmax


def _overconfident(n=600, seed=0):
    """Logits of a 3-class model that is right 70% of the time but sure of everything."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.7, gold, (gold + rng.integers(1, 3, n)) % 3)
    logits = rng.normal(0, 0.3, (n, 3))
    logits[np.arange(n), pred] += 6.0
    return logits, gold


def test_the_fitted_temperature_minimises_nll():
    logits, gold = _overconfident()
    t = fit_temperature(logits, gold)
    assert t > 1.5  # over-confident logits are softened
    best = nll(softmax(logits / t), gold)
    for other in (t * 0.9, t * 1.1, 1.0):
        assert nll(softmax(logits / other), gold) > best


def test_calibration_halves_ece_without_changing_predictions():
    logits, gold = _overconfident()
    val, test = slice(0, 300), slice(300, 600)
    task = SingleLabel(["a", "b", "c"])
    raw, _ = task.evaluate(logits[test], gold[test])
    info = task.fit(TrainConfig(), logits[val], gold[val])
    assert info["applied"] and info["validation_nll_after"] < info["validation_nll_before"]
    after, probs = task.evaluate(logits[test], gold[test])
    assert after["accuracy"] == raw["accuracy"] and after["macro_f1"] == raw["macro_f1"]
    c = after["calibration"]
    assert c["ece_before"] == pytest.approx(raw["ece"]) and c["ece_after"] == pytest.approx(after["ece"])
    assert c["ece_after"] < c["ece_before"] / 2 and c["nll_after"] < c["nll_before"]
    assert len(c["reliability_before"]) == len(c["reliability_after"]) == 15
    reloaded = make_task("single-label", ["a", "b", "c"], task.state())
    np.testing.assert_allclose(reloaded.probabilities(logits[test]), probs)


def test_auto_keeps_no_temperature_that_does_not_help_and_none_fits_nothing():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 500)
    p = np.where(gold == 1, 0.8, 0.2)  # exactly calibrated: P(class 1) = 0.8 and 80% of those are right
    flip = rng.random(500) < 0.2
    gold = np.where(flip, 1 - gold, gold)
    logits = np.stack([np.log(1 - p), np.log(p)], axis=1)
    task = SingleLabel(["n", "p"])
    info = task.fit(TrainConfig(), logits, gold)
    assert info["temperature"] == pytest.approx(1.0, abs=0.15)
    if not info["applied"]:
        assert task.temperature is None and "calibration" not in task.evaluate(logits, gold)[0]
    assert task.fit(TrainConfig(calibrate="none"), logits, gold) is None and task.temperature is None
    forced = task.fit(TrainConfig(calibrate="temperature"), logits, gold)
    assert forced["applied"] and task.temperature == forced["temperature"]
