"""train.teacher: each train row's target blends its label with a cross-validation run's out-of-fold
probabilities for that row. The teacher runs are made by hand (predictions/oof.csv is all a teacher
gives), so a test can hand the student a teacher that contradicts every label."""

import json

import numpy as np
import pandas as pd
import pytest

import loraclf
from conftest import tiny_overrides
from loraclf.cli import main
from loraclf.errors import ConfigError, DataError
from loraclf.tasks import make_task


def _teacher(tmp_path, data, agree: bool, rows=None):
    """A finished cross-validation run whose out-of-fold probabilities give each row of data/train.csv 0.95 for
    its label (`agree`) or for the other one."""
    train = pd.read_csv(data / "train.csv")
    rows = range(len(train)) if rows is None else rows
    run = tmp_path / ("agrees" if agree else "contradicts")
    (run / "predictions").mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  path: {data}\n")
    (run / "metrics.json").write_text(json.dumps({"task": "single-label", "labels": ["negative", "positive"],
                                                  "cv": {"folds": 3}}))
    p_pos = [0.95 if (train.label[i] == "positive") == agree else 0.05 for i in rows]
    pd.DataFrame({"text": train.text[list(rows)], "gold": train.label[list(rows)], "predicted": "positive",
                  "correct": 1, "p_negative": 1 - np.array(p_pos), "p_positive": p_pos, "fold": 0,
                  "source": str(data / "train.csv"), "row": list(rows)}).to_csv(run / "predictions" / "oof.csv",
                                                                                index=False)
    return run


def _student(tiny_models, synth_dir, out, **extra):
    # one evaluation, at the end: the weights kept are the last, not those validation (true labels) likes best
    sets = tiny_overrides(tiny_models["bert"], synth_dir, out, **{
        "model.method": "full", "train.lr": 3e-3, "train.epochs": 6, "train.eval_steps": 10_000,
        "train.calibrate": "none", **extra})
    return loraclf.train(None, sets, quiet=True).metrics["test"]["accuracy"]


def test_the_student_learns_what_the_teacher_says(tiny_models, synth_dir, tmp_path):
    plain = _student(tiny_models, synth_dir, tmp_path / "plain")
    against = _teacher(tmp_path, synth_dir, agree=False)
    contradicted = _student(tiny_models, synth_dir, tmp_path / "c", **{
        "train.teacher": against, "train.teacher_weight": 1.0})
    assert plain >= 0.75 and contradicted <= 0.25  # every target flipped: the labels learned backwards
    # a light teacher that contradicts only moves the targets part of the way: the labels still win
    light = _student(tiny_models, synth_dir, tmp_path / "l", **{"train.teacher": against, "train.teacher_weight": 0.2})
    assert light >= 0.75


def test_soft_targets_blend_labels_with_the_teachers_probabilities():
    single = make_task("single-label", ["a", "b", "c"])
    teacher = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(single.soft_targets(np.array([0, 1]), teacher, 0.5),
                               [[0.6, 0.15, 0.25], [0.5, 0.5, 0.0]])
    multi = make_task("multi-label", ["x", "y"])
    np.testing.assert_allclose(multi.soft_targets(np.array([[1.0, 0.0]]), np.array([[0.4, 0.8]]), 0.25),
                               [[0.85, 0.2]])
    with pytest.raises(ConfigError, match="no labels to blend"):
        make_task("regression", ["score"]).soft_targets(np.zeros(1), np.zeros((1, 1)), 0.5)


def test_a_teacher_that_is_not_a_cv_run_of_the_same_rows_is_refused(tiny_models, synth_dir, tmp_path, capsys):
    base = tiny_overrides(tiny_models["bert"], synth_dir, tmp_path / "runs", **{"train.epochs": 0.3})
    partial = _teacher(tmp_path, synth_dir, agree=True, rows=range(100))
    with pytest.raises(DataError, match="140 of the 240 train rows"):
        loraclf.train(None, [*base, f"train.teacher={partial}"], quiet=True)
    args = ["train"] + [a for s in base for a in ("--set", s)]
    assert main([*args, "--set", f"train.teacher={tmp_path / 'nothing'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a finished cross-validation run" in err and len(err.splitlines()) == 1
    assert main([*args, "--set", f"train.teacher={partial}", "--set", "train.cv_folds=3"]) == 2
    assert "does not take one" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "run" / "metrics.json").exists()


def test_a_head_that_learns_answer_words_takes_no_teacher(tmp_path):
    from loraclf.config import load_config
    from loraclf.models.heads import HEADS

    cfg = load_config(None, [f"train.teacher={tmp_path}"])
    task = make_task("single-label", ["a", "b"])
    with pytest.raises(ConfigError, match="learns the answer's words"):
        HEADS["generate"].check_config(cfg, task)
    HEADS["classifier"].check_config(cfg, task)  # takes one


def test_a_task_without_labels_to_blend_is_refused_before_the_teacher_is_read(tmp_path):
    from loraclf.training.teacher import teacher_probabilities

    with pytest.raises(ConfigError, match="no labels to blend"):
        teacher_probabilities(str(tmp_path), make_task("regression", ["score"]))
