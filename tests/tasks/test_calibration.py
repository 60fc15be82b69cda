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


def _leaning(n=900, seed=2, lean=3.0):
    """Logits of a 3-class model that knows the classes but adds `lean` to the last one's logit, as a
    zero-shot LLM that answers "positive" to nearly everything."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 3, n)
    logits = rng.normal(0, 1.0, (n, 3))
    logits[np.arange(n), gold] += 2.0
    logits[:, 2] += lean
    return logits, gold


def test_bias_fit_minimises_nll_with_its_exact_gradient():
    from scipy.optimize import approx_fprime

    from loraclf.tasks.single import fit_temperature_bias

    logits, gold = _leaning()
    t, b = fit_temperature_bias(logits, gold)
    assert b[0] == 0.0 and t * (b[2] - b[0]) == pytest.approx(-3.0, abs=0.4)  # the lean is undone (in raw logits)
    best = nll(softmax(logits / t + b), gold)
    assert best < nll(softmax(logits / fit_temperature(logits, gold)), gold)
    for dt, db in ((1.1, 0), (0.9, 0), (1, 0.2), (1, -0.2)):
        assert nll(softmax(logits / (t * dt) + b + np.array([0, db, -db])), gold) > best
    # the analytic gradient the fit uses agrees with finite differences at the optimum (both ~0) and away from it
    x = np.array([0.3, 0.5, -1.0])
    f = lambda v: nll(softmax(logits / np.exp(v[0]) + np.concatenate([[0], v[1:]])), gold)  # noqa: E731
    num = approx_fprime(x, f, 1e-6)
    p = softmax(logits / np.exp(x[0]) + np.concatenate([[0], x[1:]]))
    r = (p - np.eye(3)[gold]) / len(gold)
    ana = np.concatenate([[(r * (-logits / np.exp(x[0]))).sum()], r.sum(0)[1:]])
    np.testing.assert_allclose(ana, num, atol=1e-5)


def test_calibrate_bias_moves_predictions_and_round_trips():
    logits, gold = _leaning()
    val, test = slice(0, 450), slice(450, 900)
    task = SingleLabel(["neg", "neu", "pos"])
    raw, _ = task.evaluate(logits[test], gold[test])
    info = task.fit(TrainConfig(calibrate="bias"), logits[val], gold[val])
    assert info["method"] == "bias" and info["applied"] and set(info["bias"]) == {"neg", "neu", "pos"}
    assert info["validation_nll_after"] < info["validation_nll_before"]
    after, probs = task.evaluate(logits[test], gold[test])
    assert after["macro_f1"] > raw["macro_f1"] + 0.15 and after["accuracy"] > raw["accuracy"] + 0.1
    c = after["calibration"]
    for k in ("accuracy", "macro_f1"):
        assert c[f"{k}_before"] == pytest.approx(raw[k]) and c[f"{k}_after"] == pytest.approx(after[k])
    scale, shift = task.output_affine()
    np.testing.assert_allclose(softmax(logits[test] * scale + np.array(shift)), probs, atol=1e-12)
    reloaded = make_task("single-label", ["neg", "neu", "pos"], task.state())
    np.testing.assert_allclose(reloaded.probabilities(logits[test]), probs)
    assert task.fit(TrainConfig(calibrate="auto"), logits[val], gold[val])["method"] == "temperature"
    assert task.bias is None  # refitting without bias drops it


def test_calibrate_bias_is_refused_for_the_generate_head():
    """A head whose scores are a parsed answer (no class scores) refuses class biases; the task itself allows them."""
    from loraclf.config import Config, ModelConfig
    from loraclf.errors import ConfigError
    from loraclf.models.heads import head_class

    task = SingleLabel(["neg", "pos"])
    for head in ("verbalizer", "generate"):
        cfg = Config(model=ModelConfig(head=head), train=TrainConfig(calibrate="bias"))
        task.check_config(cfg)
    head_class("verbalizer").check_config(cfg, task)
    with pytest.raises(ConfigError, match=r"train.calibrate=bias needs class scores"):
        head_class("generate").check_config(cfg, task)
