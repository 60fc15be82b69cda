"""Experiment trackers: which ones a config asks for, the install check at run start, the params
they receive, and MLflow / W&B kept offline and inside the run directory (with stand-ins for both
libraries). The TensorBoard round trip of a real run is in test_report.py."""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import types

import pytest

import loraclf
from loraclf.errors import ConfigError
from loraclf.training import tracking

MAIN = types.SimpleNamespace(is_main_process=True)


def _fake_module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


@pytest.mark.parametrize("spec,installed,expected", [
    ("auto", True, ["tensorboard"]),
    ("auto", False, []),
    ("none", True, []),
    (["wandb", "mlflow", "wandb"], False, ["wandb", "mlflow"]),
])
def test_resolve_trackers(monkeypatch, spec, installed, expected):
    monkeypatch.setattr(tracking, "tracker_installed", lambda name: installed)
    assert tracking.resolve_trackers(spec) == expected


def test_a_missing_tracker_fails_at_run_start_not_when_the_config_is_read(monkeypatch):
    monkeypatch.setattr(tracking, "tracker_installed", lambda name: name != "wandb")
    cfg = loraclf.load_config(None, ["report.trackers=[tensorboard, wandb]"])  # a W&B run's config loads
    assert cfg.report.trackers == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match=r"report.trackers: wandb is not installed \(pip install wandb\)"):
        tracking.check_installed(cfg.report)
    tracking.check_installed(loraclf.load_config(None, ["report.trackers=[tensorboard]"]).report)
    tracking.check_installed(loraclf.load_config(None, ["report.trackers=auto"]).report)


def test_tracker_params_are_flat_scalars():
    params = tracking.tracker_params({"lora": {"r": 8, "target_modules": ["query", "value"]},
                                      "train": {"max_grad_norm": None}, "seed": 1})
    assert params == {"lora.r": 8, "lora.target_modules": "query,value", "train.max_grad_norm": "null", "seed": 1}


def test_record_values_keep_numbers_only():
    rec = {"type": "eval", "step": 10, "split": "test", "accuracy": 0.5, "improved": True, "roc_auc": None, "n": 3}
    assert tracking.record_values(rec) == {"test/accuracy": 0.5, "test/n": 3.0}


def test_only_the_main_process_tracks():
    cfg = loraclf.load_config(None, ["report.trackers=[wandb]"])
    assert tracking.start(cfg, types.SimpleNamespace(is_main_process=False), ".") is None


def test_mlflow_and_wandb_stay_offline(tmp_path, monkeypatch):
    """With stand-ins for both libraries: MLflow gets a local SQLite store in the run directory and
    W&B offline mode and a directory inside the run, unless the user says otherwise."""
    calls: list = []
    mlflow = _fake_module(
        "mlflow", set_tracking_uri=lambda uri: calls.append(("uri", uri)),
        search_experiments=lambda filter_string: [],
        create_experiment=lambda **kw: calls.append(("experiment", kw)) or "1",
        start_run=lambda **kw: calls.append(("start", kw)) or object(),
        log_params=lambda d: calls.append(("params", d)),
        log_metrics=lambda d, step=None: calls.append(("metrics", d, step)),
        log_artifact=lambda local_path, artifact_path=None: calls.append(("artifact", local_path)),
        log_artifacts=lambda local_dir, artifact_path=None: calls.append(("artifacts", local_dir)),
        end_run=lambda: calls.append(("end",)),
        utils=types.SimpleNamespace(validation=types.SimpleNamespace(MAX_PARAM_VAL_LENGTH=6000,
                                                                     MAX_PARAMS_TAGS_PER_BATCH=100)))

    class WRun:
        def log(self, values, step=None):
            calls.append(("wandb.log", values, step))

        def finish(self):
            calls.append(("wandb.finish",))

    wandb = _fake_module("wandb", init=lambda **kw: calls.append(("wandb.init", kw)) or WRun(),
                         config=types.SimpleNamespace(update=lambda v, allow_val_change=True: None))
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = loraclf.load_config(None, ["report.trackers=[mlflow,wandb]", "name=r1"])
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    t = tracking.start(cfg, MAIN, run_dir)
    assert t is not None and t.names == ["mlflow", "wandb"]
    t({"type": "train", "step": 5, "epoch": 0.1, "loss": 0.5, "lr": 1e-4, "samples_per_s": 10.0})
    t({"type": "eval", "step": 10, "epoch": 1.0, "split": "validation", "accuracy": 0.8, "roc_auc": None,
       "improved": True})
    (run_dir / "report.html").write_text("x")
    t.finish({"test": {"accuracy": 0.7, "n": 10}}, [run_dir / "report.html"])
    assert ("uri", f"sqlite:///{(run_dir / 'mlflow' / 'mlflow.db').resolve()}") in calls
    experiment = next(c[1] for c in calls if c[0] == "experiment")
    assert experiment["artifact_location"] == str((run_dir / "mlflow" / "artifacts").resolve())
    init = next(c[1] for c in calls if c[0] == "wandb.init")
    assert init["mode"] == "offline" and init["dir"] == str(run_dir) and init["name"] == "r1"
    params = next(c[1] for c in calls if c[0] == "params")
    assert params["lora.r"] == 8 and params["name"] == "r1"
    train_values = {"train/loss": 0.5, "train/epoch": 0.1, "train/lr": 1e-4, "train/samples_per_s": 10.0}
    assert ("metrics", train_values, 5) in calls
    assert ("wandb.log", {"validation/epoch": 1.0, "validation/accuracy": 0.8}, 10) in calls
    assert ("metrics", {"final/test_accuracy": 0.7}, 10) in calls and ("end",) in calls
    assert ("artifact", str(run_dir / "report.html")) in calls and ("wandb.finish",) in calls
    # finishing again (a caller's `finally` after the normal finish) closes nothing twice
    n = len(calls)
    t.finish()
    assert len(calls) == n


def test_an_interrupted_run_is_finished_by_its_caller(tmp_path, monkeypatch):
    """What run.train does: close the trackers in `finally`, without final metrics."""
    calls: list = []

    class WRun:
        def log(self, values, step=None):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    monkeypatch.setitem(sys.modules, "wandb", _fake_module(
        "wandb", init=lambda **kw: WRun(), config=types.SimpleNamespace(update=lambda v, allow_val_change=True: None)))
    cfg = loraclf.load_config(None, ["report.trackers=[wandb]"])
    t = tracking.start(cfg, MAIN, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        try:
            t({"type": "train", "step": 1, "loss": 0.9})
            raise KeyboardInterrupt
        finally:
            t.finish()
    assert calls == [("log", {"train/loss": 0.9}, 1), ("finish",)]
    assert not hasattr(tracking, "finish") and not hasattr(tracking, "_OPEN")  # no module-level state


def test_a_broken_tracker_never_stops_training(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="loraclf")
    wandb = _fake_module("wandb", init=lambda **kw: (_ for _ in ()).throw(RuntimeError("no network")))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    cfg = loraclf.load_config(None, ["report.trackers=[wandb]"])
    assert tracking.start(cfg, MAIN, tmp_path) is None
    assert "could not start" in caplog.text


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(loraclf.LoraclfError, match="unknown tracker 'tensorbored'"):
        loraclf.load_config(None, ["report.trackers=[tensorbored]"])
