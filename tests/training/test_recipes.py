"""train.recipe: the few-shot recipe is chosen from the data, says so, records it, keeps what the user
set, and steps aside where it does not apply."""

import numpy as np
import pytest

from conftest import synthetic_rows, tiny_overrides, write_csv
from loraclf.config import load_config
from loraclf.errors import ConfigError
from loraclf.tasks import SingleLabel
from loraclf.training.recipes import FEW_SHOT_MAX_STEPS, FEW_SHOT_ROWS_PER_CLASS, choose_recipe


@pytest.fixture(scope="module")
def few_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("few")
    write_csv(root / "train.csv", synthetic_rows(16, 11))
    write_csv(root / "validation.csv", synthetic_rows(16, 11))
    write_csv(root / "test.csv", synthetic_rows(60, 3))
    return root


def _choose(sets: dict, n: int, encoder: bool = True):
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    labels = np.arange(n) % 2
    return choose_recipe(cfg, SingleLabel(["negative", "positive"]), n, labels, lambda: encoder)


def test_auto_chooses_by_rows_per_class():
    cfg, rec = _choose({}, 2 * FEW_SHOT_ROWS_PER_CLASS)
    assert rec["name"] == "few-shot" and cfg.train.recipe == "few-shot"
    assert cfg.model.head == "embedding" and cfg.train.contrastive == 1.0 and not cfg.train.group_by_length
    assert cfg.train.batch_size == 16
    assert "64.0 a class" in rec["why"]
    # one evaluation, at the end: the schedule's step count
    assert cfg.train.eval_steps == round(cfg.train.epochs * np.ceil(128 / cfg.train.batch_size))
    cfg, rec = _choose({}, 2 * FEW_SHOT_ROWS_PER_CLASS + 2)
    assert rec is None and cfg.train.recipe == "standard" and cfg.model.head == "classifier"


def test_steps_are_bounded_whatever_the_size():
    small, _ = _choose({}, 4)  # one batch an epoch
    assert small.train.eval_steps == 20 and small.train.epochs == 20 and small.train.batch_size == 16
    mid, _ = _choose({}, 100)  # 7 batches of 16 an epoch, 20 epochs
    assert mid.train.eval_steps == 140 and mid.train.epochs == 20
    own, _ = _choose({"train.batch_size": 50}, 100)  # the user's batch size counts the steps
    assert own.train.eval_steps == 40 and own.train.batch_size == 50
    big, _ = _choose({"train.recipe": "few-shot"}, 10_000)  # 625 batches an epoch: the cap on steps
    assert big.train.eval_steps == FEW_SHOT_MAX_STEPS and big.train.epochs == FEW_SHOT_MAX_STEPS / 625


def test_user_settings_are_kept_and_reported():
    cfg, rec = _choose({"train.epochs": 5, "train.contrastive": 0.5}, 16)
    assert cfg.train.epochs == 5 and cfg.train.contrastive == 0.5
    assert rec["kept"] == {"train.epochs": 5, "train.contrastive": 0.5}
    assert cfg.train.eval_steps == 5  # 16 rows, one batch an epoch: one evaluation, at the end of the 5
    assert "train.epochs" not in rec["changed"] and rec["changed"]["model.head"] == "embedding"


def test_standard_prompted_and_decoders():
    cfg, rec = _choose({"train.recipe": "standard"}, 16)
    assert rec is None and cfg.model.head == "classifier"
    cfg, rec = _choose({"model.head": "verbalizer"}, 16)
    assert rec is None and cfg.model.head == "verbalizer"
    cfg, rec = _choose({}, 16, encoder=False)
    assert rec is None and cfg.train.recipe == "standard"
    with pytest.raises(ConfigError, match="needs an encoder"):
        _choose({"train.recipe": "few-shot"}, 16, encoder=False)
    cfg, rec = _choose({"train.recipe": "few-shot"}, 10_000)  # asked for, it applies whatever the size
    assert rec["why"].startswith("train has 10,000 rows") and cfg.model.head == "embedding"


def test_a_few_shot_run_prints_records_and_reruns_the_same(tiny_models, few_dir, tmp_path, capsys):
    import loraclf
    from loraclf.config import replace_fields

    sets = tiny_overrides(tiny_models["bert"], few_dir, tmp_path)
    run = loraclf.train(None, [s for s in sets if not s.startswith("train.epochs")], quiet=False)
    out = capsys.readouterr().out
    assert "few-shot recipe (train has 16 rows for 2 classes (8.0 a class" in out
    assert "train.recipe=standard turns it off" in out
    rec = run.metrics["recipe"]
    assert rec["changed"]["model.head"] == "embedding" and rec["changed"]["train.epochs"] == 20
    cfg = run.config
    assert cfg.train.recipe == "few-shot" and cfg.model.head == "embedding" and cfg.train.epochs == 20
    evals = [r for r in run.history if r["type"] == "eval"]
    assert len(evals) == 1 and evals[0]["step"] == 20  # one evaluation, at the end
    again = loraclf.train(replace_fields(cfg, {"name": "again"}), quiet=True)  # config.yaml trains the same
    assert again.metrics["test"]["accuracy"] == run.metrics["test"]["accuracy"]
    standard = loraclf.train(None, sets + ["train.recipe=standard", "name=std"], quiet=True)
    assert "recipe" not in standard.metrics and standard.config.model.head == "classifier"
