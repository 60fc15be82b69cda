"""Sweeps (grid/list, skip finished, resume interrupted, failed points, tables, plot), Optuna
search (pruning, shared storage, best.yaml), `lora.r: auto` and `loraclf params`, all on tiny
random models in seconds. `loraclf compare` is in test_compare.py."""

import csv
import json
import re

import pytest
import yaml

import loraclf
from conftest import REPO, tiny_overrides
from loraclf.cli import main
from loraclf.config import load_config
from loraclf.errors import BudgetError, ConfigError, LoraclfError
from loraclf.experiments import expand_points, load_sweep, point_status, run_search, run_sweep


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


# ----------------------------------------------------------------------------- lora.r: auto and params


def test_auto_rank_picks_the_largest_candidate_within_the_budget(tiny_models, synth_dir, tmp_path):
    from loraclf.budget import architecture_config, rank_candidates

    model = tiny_models["bert-nopooler"]  # its pooler is missing from the checkpoint: trained, and counted
    arch, _ = architecture_config(str(model))
    lo = load_config(None, ["lora.auto_targets=[[query], [query, key, value]]"]).lora
    cands = rank_candidates(arch, lo, 2, 10**9, missing=["bert.pooler.dense.weight"])["candidates"]
    by = {(c["r"], tuple(c["target_modules"])): c["trainable"] for c in cands}
    budget = by[(4, ("query", "key", "value"))] + 1
    over = sorted(n for n in by.values() if n > budget)[0]
    run = loraclf.train(None, tiny_overrides(model, synth_dir, tmp_path, **{
        "train.epochs": 1, "lora.r": "auto", "train.max_trainable_params": budget,
        "lora.auto_targets": "[[query], [query, key, value]]"}), quiet=True)
    m = run.metrics
    assert m["params"]["trainable"] == m["budget"]["chosen"]["trainable"] <= budget < over
    assert m["budget"]["chosen"]["trainable"] == max(n for n in by.values() if n <= budget)
    saved = run.config.lora
    assert (saved.r, saved.target_modules) == (m["budget"]["chosen"]["r"], m["budget"]["chosen"]["target_modules"])
    # choosing the rank leaves the seeded run as it was: the same as asking for that rank directly
    explicit = loraclf.train(None, tiny_overrides(model, synth_dir, tmp_path, **{
        "name": "explicit", "train.epochs": 1, "lora.r": saved.r,
        "lora.target_modules": f"[{', '.join(saved.target_modules)}]"}), quiet=True).metrics
    assert explicit["test"]["loss"] == pytest.approx(m["test"]["loss"], abs=1e-6)
    with pytest.raises(BudgetError, match="no candidate fits"):
        loraclf.train(None, tiny_overrides(model, synth_dir, tmp_path, **{
            "name": "none-fits", "lora.r": "auto", "train.max_trainable_params": 50}), quiet=True)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "deberta-v2", "electra", "modernbert", "llama"])
def test_meta_device_counts_equal_random_init_counts(arch, tiny_models):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from loraclf.budget import count_config
    from loraclf.config import LoraSection
    from loraclf.models import apply_method, count_parameters

    cfg = AutoConfig.from_pretrained(tiny_models[arch])
    cfg.num_labels = 3
    if cfg.pad_token_id is None:
        cfg.pad_token_id = 0
    for method in ("lora", "head", "full"):
        torch.manual_seed(0)
        built = apply_method(AutoModelForSequenceClassification.from_config(cfg), None, None, method, LoraSection(r=4))
        real = count_parameters(built.model, built.modules_to_save)
        meta = count_config(cfg, method, LoraSection(r=4), 3)
        assert {k: meta[k] for k in real} == real


def test_params_cli(tiny_models, capsys):
    assert main(["params", "--model", "distilbert-base-uncased", "--config-only", "--num-labels", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^trainable +739,586 ", out, re.M) and re.search(r"^  lora +147,456$", out, re.M)
    assert "built-in shape table" in out
    assert main(["params", "--model", str(tiny_models["bert-nopooler"]), "--num-labels", "2", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert "bert.pooler.dense" in rep["newly_initialised"] and rep["trainable"] == rep["lora"] + rep["head"]
    assert main(["params", "--model", "roberta-base", "--config-only", "--num-labels", "4", "--set", "lora.r=auto",
                 "--set", "train.max_trainable_params=999999",
                 "--set", "lora.auto_targets=[[query,value],[query,key,value]]"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^trainable +888,580 ", out, re.M) and re.search(r"r=4 +query\+key\+value +814,852  fits", out)
    assert re.search(r"r=8 +query\+value +888,580  fits <- chosen", out)
    assert main(["params", "--model", "no-such-model-anywhere", "--config-only"]) == 2
    # a sweep file: one line per point
    assert main(["params", "-c", str(REPO / "recipes" / "sst2-distilbert-baselines.yaml"), "--config-only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["point", "method"]
    assert [ln.split()[0] for ln in lines[1:]] == ["head", "lora-r8", "lora-r16"] and "887,042" in lines[3]


def test_peak_memory_is_measured():
    from loraclf.memory import PeakMemory

    mem = PeakMemory.start()
    block = bytearray(64 * 10**6)  # touch 64 MB
    block[::4096] = b"x" * len(block[::4096])
    r = mem.read()
    assert r["peak_memory_mb"] >= 64 and r["peak_rss_mb"] >= 64
    del block
