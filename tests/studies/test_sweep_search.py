"""Sweeps (grid/list, skip finished, resume interrupted, failed points, tables, plot) and Optuna
search (pruning, shared storage, best.yaml), all on tiny random models in seconds. `loraclf
compare` is in test_compare.py; `lora.r: auto` and `loraclf params` in test_budget.py."""

import csv
import json
import re

import pytest
import yaml

import loraclf
from conftest import tiny_overrides
from loraclf.cli import main
from loraclf.config import load_config
from loraclf.errors import ConfigError, LoraclfError
from loraclf.studies.search import run_search
from loraclf.studies.sweep import expand_points, load_sweep, point_status, run_sweep


def _base_config(tiny_models, synth_dir, out, arch="bert", **extra) -> dict:
    tree: dict = {}
    for item in tiny_overrides(tiny_models[arch], synth_dir, out, **{"train.epochs": 1, **extra}):
        k, v = item.split("=", 1)
        sec, _, field = k.partition(".")
        if field:
            tree.setdefault(sec, {})[field] = yaml.safe_load(v)
        else:
            tree[sec] = yaml.safe_load(v)
    tree.pop("name")
    tree.pop("output_dir")
    tree["report"] = {"enabled": False, "trackers": "none"}  # plots and trackers are tested elsewhere
    return tree


def _write(path, spec) -> str:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


# ----------------------------------------------------------------------------- point expansion


def test_grid_is_a_product_and_points_cross_it():
    pts = expand_points({"grid": {"lora.r": [2, 4], "lora.alpha": [8, 16]}}, "x")
    assert [n for n, _ in pts] == ["r2-alpha8", "r2-alpha16", "r4-alpha8", "r4-alpha16"]
    pts = expand_points({"points": [{"name": "frozen", "model.method": "head"}, {"model.method": "lora"}],
                         "grid": {"train.lr": [1e-3, 3e-4]}}, "x")
    assert [n for n, _ in pts] == ["frozen-lr0.001", "frozen-lr0.0003", "lora-lr0.001", "lora-lr0.0003"]
    assert pts[0][1] == {"model.method": "head", "train.lr": 1e-3}
    pts = expand_points({"points": [{"lora.target_modules": ["query", "value"]},
                                    {"lora.target_modules": ["query"]}]}, "x")
    assert [n for n, _ in pts] == ["target_modules-query+value", "target_modules-query"]
    assert [n for n, _ in expand_points({"points": [{"seed": 1}, {"seed": 1}]}, "x")] == ["seed1", "seed1-2"]


@pytest.mark.parametrize("spec,needle", [
    ({}, "needs 'grid'"),
    ({"grid": {"lora.r": 8}}, "non-empty list"),
    ({"points": {"lora.r": 8}}, "list of mappings"),
])
def test_bad_sweep_specs(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        expand_points(spec, "x")


def test_sweep_validates_every_point_before_running(tmp_path):
    f = _write(tmp_path / "s.yaml", {"points": [{"lora.r": 4}, {"train.lrr": 1}]})
    with pytest.raises(ConfigError, match=r"point 'lrr1'.*unknown config field 'train.lrr'"):
        load_sweep(f)
    with pytest.raises(ConfigError, match="unknown sweep key 'gird'.*did you mean 'grid'"):
        load_sweep(_write(tmp_path / "t.yaml", {"gird": {"lora.r": [4]}}))


@pytest.mark.parametrize("kind,spec,needle", [
    ("sweep", {"grid": {"lora.rr": [4, 8]}}, r"point 'rr4': unknown config field 'lora.rr' \(did you mean 'lora.r'"),
    ("sweep", {"grid": {"train.epochs": [1, "many"]}}, "config field 'train.epochs' must be a number, got 'many'"),
    ("sweep", {"grid": {"model.method": ["qlora"]}}, "'model.method' must be one of"),
    ("sweep", {"points": [{"seed": 1}], "split": "dev"}, "sweep key 'split' must be one of validation, test"),
    ("sweep", {"points": [{"seed": 1}], "config": [1]}, "sweep key 'config' must be a mapping"),
    ("sweep", {"points": [{"seed": 1}], "base": "nope.yaml"}, "base config not found: nope.yaml"),
    ("search", {"space": {"train.lr": [0.1]}, "trails": 3}, "unknown search key 'trails' \\(did you mean 'trials'"),
    ("search", {"space": {"train.lr": [0.1]}, "trials": "some"}, "search key 'trials' must be an integer"),
    ("search", {"space": {"train.lr": [0.1]}, "trials": 0}, "trials must be >= 1"),
    ("search", {"space": {"train.epochs": [1, "x"]}}, "config field 'train.epochs' must be a number, got 'x'"),
    ("search", {"space": {"lora.bias": {"choices": ["none", "some"]}}}, "'lora.bias' must be one of"),
    ("search", {"space": {"model.method": {"choices": ["lora", "qlora"]}}}, "'model.method' must be one of"),
    ("search", {"space": {"lora.r": {"low": "a", "high": 4}}}, "space 'lora.r': low and high must be numbers"),
    ("search", {"space": {"train.epochs": {"low": 0, "high": 4}}}, "train.epochs must be > 0"),
    ("search", {"space": {"train.lr": {"low": 1, "high": 2, "type": "complex"}}}, "type must be int or float"),
    ("search", {"space": {"train.lr": [0.1]}, "metric": "speed"}, "metric must be one of"),
    ("search", {"space": {"train.lr": [0.1]}, "heartbeat": 0}, "heartbeat must be >= 1, got 0"),
    ("search", {"space": {"train.lr": [0.1]}, "heartbeat": "often"}, "search key 'heartbeat' must be an integer"),
    ("search", {"space": {"train.lr": [0.1]}, "heartbeat": 10, "grace_period": 10},
     r"grace_period \(10\) must be longer than heartbeat \(10\)"),
])
def test_spec_files_are_validated_like_configs(tmp_path, kind, spec, needle):
    from loraclf.studies.search import load_search

    f = _write(tmp_path / f"{kind}.yaml", spec)
    with pytest.raises(ConfigError) as e:
        (load_sweep if kind == "sweep" else load_search)(f)
    assert re.search(needle, str(e.value)) and "\n" not in str(e.value)
    assert str(e.value).startswith(str(tmp_path))  # names the file


def test_base_file_is_read_like_a_config(tmp_path):
    (tmp_path / "base.yaml").write_text("train: [1, 2\n")
    f = _write(tmp_path / "s.yaml", {"base": "base.yaml", "grid": {"lora.r": [2]}})
    with pytest.raises(ConfigError, match="base.yaml: invalid YAML"):
        load_sweep(f)
    (tmp_path / "base.yaml").write_text("model:\n  method: head\n")
    assert load_sweep(f).points[0].config.model.method == "head"


def test_file_kind(tmp_path):
    from loraclf.studies.specs import file_kind

    assert file_kind(_write(tmp_path / "a.yaml", {"grid": {"lora.r": [2]}})) == "sweep"
    assert file_kind(_write(tmp_path / "b.yaml", {"points": []})) == "sweep"
    assert file_kind(_write(tmp_path / "c.yaml", {"space": {}})) == "search"
    assert file_kind(_write(tmp_path / "d.yaml", {"train": {"lr": 1}})) == "config"
    with pytest.raises(ConfigError, match="not found"):
        file_kind(tmp_path / "e.yaml")


def test_search_without_optuna_names_the_extra(tmp_path, monkeypatch):
    import sys

    from loraclf.errors import EnvironmentError_

    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    f = _write(tmp_path / "s.yaml", {"space": {"train.lr": [0.1, 0.2]}, "output_dir": str(tmp_path / "o")})
    with pytest.raises(EnvironmentError_, match=r"^optuna is not installed: pip install 'loraclf\[search\]'$"):
        run_search(f, quiet=True)


# ----------------------------------------------------------------------------- sweeps


@pytest.fixture(scope="module")
def sweep_run(tiny_models, synth_dir, tmp_path_factory):
    """A 4-point sweep (head, LoRA r=2, LoRA r=4, one over budget), run in-process."""
    root = tmp_path_factory.mktemp("sweep")
    spec = {"config": _base_config(tiny_models, synth_dir, root),
            "points": [{"name": "head", "model.method": "head"},
                       {"model.method": "lora", "lora.r": 2},
                       {"model.method": "lora", "lora.r": 4},
                       {"name": "over-budget", "model.method": "full", "train.max_trainable_params": 100}],
            "output_dir": str(root / "study")}
    f = _write(root / "sweep.yaml", spec)
    res = run_sweep(f, isolate=False, quiet=True)
    return f, res


def test_sweep_runs_points_and_writes_the_table(sweep_run):
    f, res = sweep_run
    out = res.out_dir
    assert res.ran == ["head", "lora-r2", "lora-r4", "over-budget"]
    assert set(res.failed) == {"over-budget"} and "max_trainable_params=100" in res.failed["over-budget"]
    assert not (out / "over-budget").exists()  # nothing half-made is kept
    with open(out / "results.csv", newline="") as fh:
        rows = {r["run"]: r for r in csv.DictReader(fh)}
    assert list(rows) == ["head", "lora-r2", "lora-r4", "over-budget"]
    for name in ("head", "lora-r2", "lora-r4"):
        m = json.loads((out / name / "metrics.json").read_text())
        r = rows[name]
        assert int(r["trainable_params"]) == m["params"]["trainable"]
        assert float(r["accuracy"]) == pytest.approx(m["test"]["accuracy"])
        assert float(r["f1_positive"]) == pytest.approx(m["test"]["per_class"]["positive"]["f1"])
        assert float(r["peak_memory_mb"]) == m["timing"]["peak_memory_mb"] > 0
        assert int(r["artifact_bytes"]) > 0 and int(r["full_model_bytes"]) > 0
        assert r["split"] == "test" and r["status"] == "done"
    assert rows["lora-r2"]["r"] == "2" and rows["lora-r4"]["targets"] == "query+value" and rows["head"]["r"] == ""
    # LoRA parameters grow linearly in r; the head part stays the same
    p2, p4 = (json.loads((out / n / "metrics.json").read_text())["params"] for n in ("lora-r2", "lora-r4"))
    assert p4["lora"] == 2 * p2["lora"] and p4["head"] == p2["head"]
    # a LoRA adapter is smaller on disk than the whole checkpoint a head-only run saves
    assert int(rows["lora-r2"]["artifact_bytes"]) < int(rows["head"]["artifact_bytes"])
    assert rows["over-budget"]["status"].startswith("failed: config trains")
    md = (out / "results.md").read_text()
    # a field only some points change gets a column of its own
    assert ("| run | method | targets | r | alpha | train.max_trainable_params | trainable params | % of total | "
            "accuracy (test) | macro-F1 |") in md
    assert "F1 negative" in md and "peak memory" in md and "artifact on disk" in md and "full model (fp32)" in md
    assert (out / "accuracy_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_rerun_skips_finished_points_and_refuses_a_changed_config(sweep_run):
    f, res = sweep_run
    sweep = load_sweep(f)
    assert [point_status(p, sweep.out_dir) for p in sweep.points] == ["done", "done", "done", "pending"]
    before = (res.out_dir / "lora-r2" / "metrics.json").stat().st_mtime_ns
    again = run_sweep(f, isolate=False, quiet=True, fail_fast=True)
    assert again.ran == ["over-budget"]  # only the unfinished point is tried again
    assert (res.out_dir / "lora-r2" / "metrics.json").stat().st_mtime_ns == before
    spec = yaml.safe_load(open(f))
    spec["config"]["train"]["lr"] = 0.0123
    changed = _write(res.out_dir.parent / "changed.yaml", spec)
    with pytest.raises(LoraclfError, match=r"'head' .* different config \(train.lr: 0.005 -> 0.0123\)"):
        run_sweep(changed, isolate=False, quiet=True)


def test_sweep_resumes_an_interrupted_point(tiny_models, synth_dir, tmp_path):
    spec = {"config": _base_config(tiny_models, synth_dir, tmp_path, **{"train.eval_steps": 3, "train.log_every": 1}),
            "grid": {"lora.r": [2]}, "output_dir": str(tmp_path / "s")}
    f = _write(tmp_path / "sweep.yaml", spec)
    point = load_sweep(f).points[0]

    def interrupt(rec):
        if rec["type"] == "train" and rec["step"] == 5:  # after the checkpoint at step 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loraclf.train(point.config, quiet=True, callback=interrupt)
    assert point_status(point, tmp_path / "s") == "resume"
    res = run_sweep(f, isolate=False, quiet=True)
    assert res.statuses == {"r2": "done"}
    run = loraclf.Run(tmp_path / "s" / "r2")
    assert run.metrics["best"]["steps"] == 15  # 240 rows, batch 16, one epoch
    # continued from the checkpoint at step 3: every step logged once, none repeated or lost
    assert [h["step"] for h in run.history if h["type"] == "train"] == list(range(1, 16))


def test_sweep_cli_runs_each_point_in_its_own_process(tiny_models, synth_dir, tmp_path, capsys):
    spec = {"config": _base_config(tiny_models, synth_dir, tmp_path), "points": [{"name": "only", "lora.r": 2}],
            "output_dir": str(tmp_path / "s")}
    f = _write(tmp_path / "sweep.yaml", spec)
    assert main(["sweep", f, "--dry-run"]) == 0
    assert "pending  only" in capsys.readouterr().out
    assert main(["sweep", f, "--quiet", "--set", "train.batch_size=32"]) == 0
    m = json.loads((tmp_path / "s" / "only" / "metrics.json").read_text())
    assert m["timing"]["peak_memory_mb"] > 50 and m["timing"]["peak_memory_source"].startswith("peak RSS")
    assert yaml.safe_load((tmp_path / "s" / "only" / "config.yaml").read_text())["train"]["batch_size"] == 32
    assert main(["sweep", f, "--dry-run", "--set", "train.batch_size=32"]) == 0
    assert "done     only" in capsys.readouterr().out
    assert main(["sweep", f, "--dry-run"]) == 2  # the finished point was made with another config
    assert "different config (train.batch_size: 32 -> 16)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- search


def test_search_shares_its_storage_and_writes_a_rerunnable_best_config(tiny_models, synth_dir, tmp_path):
    spec = {"config": _base_config(tiny_models, synth_dir, tmp_path, **{"train.epochs": 0.5}),
            "space": {"train.lr": [0.005, 0.0005], "lora.r": {"low": 2, "high": 4},
                      "lora.target_modules": [["query", "value"], ["query"]]},
            "trials": 2, "pruner": "none", "sampler": {"type": "random", "seed": 0}, "output_dir": str(tmp_path / "o")}
    f = _write(tmp_path / "search.yaml", spec)
    res = run_search(f, quiet=True)
    assert (tmp_path / "o" / "study.db").exists()
    assert [t.state.name for t in res.study.trials] == ["COMPLETE", "COMPLETE"]
    best = res.study.best_trial
    assert best.value == max(t.value for t in res.study.trials)
    cfg = load_config(res.best_config)  # `loraclf train -c best.yaml` reruns it
    assert cfg.train.lr == best.user_attrs["overrides"]["train.lr"] and 2 <= cfg.lora.r <= 4
    assert cfg.lora.target_modules in (["query", "value"], ["query"]) and cfg.name is None
    m = json.loads((tmp_path / "o" / "trials" / f"trial-{best.number:04d}" / "metrics.json").read_text())
    assert m["best"]["value"] == best.value  # the objective is the validation metric, not test
    # Another worker (or a rerun) pointed at the same storage continues the same study.
    again = run_search(f, quiet=True, trials=3)
    assert len(again.study.trials) == 3
    assert run_search(f, quiet=True, trials=3).study.trials[-1].number == 2  # nothing left to do
    assert "complete" in (tmp_path / "o" / "results.md").read_text()


def test_search_prunes_on_validation_reports(tiny_models, synth_dir, tmp_path):
    spec = {"config": _base_config(tiny_models, synth_dir, tmp_path, **{"train.eval_steps": 2}),
            "space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}, "trials": 2,
            "pruner": {"type": "threshold", "lower": 1.01}, "output_dir": str(tmp_path / "o")}
    res = run_search(_write(tmp_path / "s.yaml", spec), quiet=True)
    assert [t.state.name for t in res.study.trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [2] for t in res.study.trials)  # pruned at the first evaluation
    assert not any((tmp_path / "o" / "trials").glob("trial-*"))  # pruned runs leave nothing behind
    assert res.best_config is None


@pytest.mark.parametrize("space,needle", [
    ({"train.lrr": [1, 2]}, "unknown config field 'train.lrr'"),
    ({"train.lr": {"low": 1}}, "needs low and high"),
    ({"lora.dropout": {"low": 0.5, "high": 0.1}}, "low must be < high"),
    ({"lora.r": {"low": 1, "high": 4, "lg": True}}, "unknown key 'lg'"),
])
def test_bad_search_spaces(tmp_path, space, needle):
    with pytest.raises(ConfigError, match=needle):
        run_search(_write(tmp_path / "s.yaml", {"space": space, "output_dir": str(tmp_path)}), quiet=True)


# ----------------------------------------------------------------------------- peak memory (the tables' column)


def test_peak_memory_is_measured():
    from loraclf.training.memory import PeakMemory

    mem = PeakMemory.start()
    block = bytearray(64 * 10**6)  # touch 64 MB
    block[::4096] = b"x" * len(block[::4096])
    r = mem.read()
    assert r["peak_memory_mb"] >= 64 and r["peak_rss_mb"] >= 64
    del block
