"""The training loop: resume equals an uninterrupted run, early stopping keeps the best weights."""

import pytest

import loraclf
import loraclf.training.loop
from conftest import tiny_overrides


def _interrupt_after_first_eval(monkeypatch, overrides) -> None:
    real = loraclf.training.loop.Trainer.evaluate
    calls = {"n": 0}

    def crash_on_second_eval(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(loraclf.training.loop.Trainer, "evaluate", crash_on_second_eval)
    with pytest.raises(KeyboardInterrupt):
        loraclf.train(None, overrides, quiet=True)
    monkeypatch.setattr(loraclf.training.loop.Trainer, "evaluate", real)


def _rewrite_checked(path, text: str) -> None:
    """Edit a checkpoint file and its manifest entry, as a checkpoint of another run would read."""
    import hashlib
    import json

    path.write_text(text)
    manifest = path.parent / "manifest.json"
    m = json.loads(manifest.read_text())
    m["files"][path.name] = {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    manifest.write_text(json.dumps(m))


@pytest.mark.parametrize("accum", [1, 4])  # 15 batches per epoch: 4 does not divide them
def test_resume_continues_to_the_same_result(accum, tiny_models, synth_dir, tmp_path, monkeypatch):
    extra = {"train.epochs": 3, "train.grad_accum_steps": accum}
    full = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, name="full", **extra),
                         quiet=True)

    _interrupt_after_first_eval(monkeypatch, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, name="cut",
                                                            **extra))
    cut = tmp_path / "cut"
    folder = cut / "checkpoints" / (cut / "checkpoints" / "latest").read_text()
    assert (folder / "trainer_state.json").exists() and (folder / "manifest.json").exists()
    assert not (cut / "metrics.json").exists() and not (cut / "artifact").exists()
    # the checkpoint holds the trainable weights only (LoRA + head), not the frozen base
    from safetensors import safe_open

    with safe_open(str(folder / "trainable.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved and all("lora_" in k or "classifier" in k or "pooler" in k for k in saved), sorted(saved)[:5]
    assert not any("word_embeddings" in k or k.endswith("query.base_layer.weight") for k in saved)

    resumed = loraclf.train(None, resume=str(cut), quiet=True)
    a, b = full.metrics, resumed.metrics
    assert b["best"]["steps"] == a["best"]["steps"]
    assert [h["step"] for h in resumed.history if h["type"] == "eval"] == [
        h["step"] for h in full.history if h["type"] == "eval"]
    assert b["test"]["loss"] == pytest.approx(a["test"]["loss"], abs=1e-5)
    assert b["test"]["accuracy"] == a["test"]["accuracy"]


def test_resume_refuses_a_checkpoint_that_does_not_fit(tiny_models, synth_dir, tmp_path, monkeypatch):
    """Other LoRA targets with the same parameter count, or another process count, would load nothing
    of the checkpoint and train on from fresh weights; another base model would pair the trained weights
    with other frozen ones. Each is refused with the reason instead."""
    import json
    import shutil

    base = shutil.copytree(tiny_models["bert"], tmp_path / "base")
    _interrupt_after_first_eval(monkeypatch, tiny_overrides(base, synth_dir, tmp_path, name="cut",
                                                            **{"train.epochs": 3}))
    cut = tmp_path / "cut"
    with pytest.raises(loraclf.LoraclfError, match="--resume cannot change lora.target_modules"):
        loraclf.train(None, ["lora.target_modules=[query, key]"], resume=str(cut), quiet=True)
    config_yaml = (cut / "config.yaml").read_text()  # the same change made by hand in config.yaml
    (cut / "config.yaml").write_text(config_yaml.replace("target_modules: null", "target_modules: [query, key]"))
    with pytest.raises(loraclf.LoraclfError, match="does not match this model"):
        loraclf.train(None, resume=str(cut), quiet=True)
    (cut / "config.yaml").write_text(config_yaml)
    folder = cut / "checkpoints" / (cut / "checkpoints" / "latest").read_text()
    state_file = folder / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["num_processes"] == 1
    _rewrite_checked(state_file, json.dumps({**state, "num_processes": 2}))
    with pytest.raises(loraclf.LoraclfError, match="written by 2 process"):
        loraclf.train(None, resume=str(cut), quiet=True)
    _rewrite_checked(state_file, json.dumps(state))
    config = (base / "config.json").read_text()
    (base / "config.json").write_text(config.replace("{", '{"edited": true,', 1))  # the base changed
    with pytest.raises(loraclf.LoraclfError, match="base model changed"):
        loraclf.train(None, resume=str(cut), quiet=True)
    (base / "config.json").write_text(config)
    assert loraclf.train(None, resume=str(cut), quiet=True).metrics["best"]["steps"] == 3 * 15


def test_resume_refuses_finished_or_unknown_runs(tiny_models, synth_dir, tmp_path):
    run = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{"train.epochs": 0.5}),
                        quiet=True)
    with pytest.raises(loraclf.LoraclfError, match="already finished"):
        loraclf.train(None, resume=str(run.path), quiet=True)
    with pytest.raises(loraclf.LoraclfError, match="no config.yaml"):
        loraclf.train(None, resume=str(tmp_path / "nothing"), quiet=True)


def test_existing_run_dir_is_not_overwritten(tiny_models, synth_dir, tmp_path):
    ov = tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{"train.epochs": 0.5})
    loraclf.train(None, ov, quiet=True)
    with pytest.raises(loraclf.LoraclfError, match="already exists"):
        loraclf.train(None, ov, quiet=True)


def test_early_stopping_keeps_the_best(tiny_models, synth_dir, tmp_path):
    run = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{
        "train.lr": 1e-12, "train.epochs": 5, "train.eval_steps": 3, "train.early_stopping_patience": 2,
        "train.metric": "accuracy", "train.warmup_ratio": 0}), quiet=True)
    m = run.metrics
    evals = [h for h in run.history if h["type"] == "eval"]
    assert m["best"]["stopped_early"] is True
    assert len(evals) == 3 and m["best"]["step"] == 3
    assert m["best"]["steps"] == 9 < 5 * 15


def test_precision_needs_a_gpu_for_bf16():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(loraclf.LoraclfError, match="needs a CUDA GPU"):
        loraclf.training.loop.choose_precision("bf16")
    assert loraclf.training.loop.choose_precision("auto") == "no"


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_precision_on_gpu_is_mixed():
    assert loraclf.training.loop.choose_precision("auto") in ("bf16", "fp16")


def test_resume_after_early_stop_trains_no_more(tiny_models, synth_dir, tmp_path, monkeypatch):
    import loraclf.tasks

    ov = tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{
        "train.lr": 1e-12, "train.epochs": 5, "train.eval_steps": 3, "train.early_stopping_patience": 1})
    full = loraclf.train(None, [*ov, "name=full"], quiet=True)

    def die(*a, **kw):  # the process dies after training, during the final evaluation
        raise KeyboardInterrupt

    real = loraclf.tasks.SingleLabel.write_predictions
    monkeypatch.setattr(loraclf.tasks.SingleLabel, "write_predictions", die)
    with pytest.raises(KeyboardInterrupt):
        loraclf.train(None, [*ov, "name=cut"], quiet=True)
    monkeypatch.setattr(loraclf.tasks.SingleLabel, "write_predictions", real)
    resumed = loraclf.train(None, resume=str(tmp_path / "cut"), quiet=True)
    assert resumed.metrics["best"]["steps"] == full.metrics["best"]["steps"] == 6
    assert resumed.metrics["best"]["stopped_early"] is True


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_models, synth_dir, tmp_path):
    """train.compile=true trains the same model: same test predictions, near-identical loss (CPU Inductor)."""
    from torch._dynamo.utils import counters

    counters.clear()
    runs = {}
    for c in (False, True):
        runs[c] = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, name=f"compile-{c}", **{
            "train.compile": c, "train.pad_to_multiple_of": 16, "train.epochs": 1}), quiet=True)
    a, b = runs[False].metrics["test"], runs[True].metrics["test"]
    assert b["loss"] == pytest.approx(a["loss"], abs=2e-3)
    assert b["accuracy"] == pytest.approx(a["accuracy"], abs=0.02)
    assert counters["stats"]["unique_graphs"] > 0  # it did compile


def test_accelerator_after_another_library_set_another_precision():
    """HF Trainer or SetFit trained first in this process, in another precision: loraclf still trains."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from loraclf.config import TrainConfig
    from loraclf.training.loop import make_accelerator

    AcceleratorState._reset_state()
    try:
        Accelerator(mixed_precision="bf16", cpu=True)  # what the other library left behind (bf16 runs on CPU too)
        accelerator = make_accelerator(TrainConfig(precision="fp32"))
        assert accelerator.mixed_precision == "no"
    finally:
        AcceleratorState._reset_state()
