"""The deployment benchmark harnesses run end to end on a tiny model (numbers are not checked: no
timing assertions in tests; the measured ones are in docs/benchmarks.md)."""

import pytest

import loraclf
from conftest import load_benchmark, tiny_overrides

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def run(tiny_models, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_runs")
    return loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, out, **{"train.epochs": 1}),
                         quiet=True).path


def test_export_speed_harness(run, synth_dir, tmp_path, capsys):
    res = load_benchmark("export_speed").main(["--run", str(run), "--data", str(synth_dir), "--rows", "50",
                                               "--repeats", "2", "--work", str(tmp_path / "work"),
                                               "--json", str(tmp_path / "r.json")])
    assert [r["variant"] for r in res["results"]] == ["pytorch-fp32", "onnx-fp32", "onnx-int8"]
    assert all(r["texts_per_s"] > 0 and r["test_n"] == 60 for r in res["results"])
    assert res["results"][1]["test_accuracy"] == res["results"][0]["test_accuracy"]  # fp32 graph = PyTorch
    assert all(len(r["speedup_passes"]) == 2 for r in res["results"])  # --repeats: every pass's ratio
    assert res["results"][0]["speedup_passes"] == [1, 1]
    out = capsys.readouterr().out
    assert "| onnx-int8 |" in out and "onnx-int8: 2 passes, vs PyTorch" in out


def test_serve_load_harness(run, synth_dir, tmp_path, capsys):
    res = load_benchmark("serve_load").main(["--model", str(run), "--data", str(synth_dir), "--clients", "1", "4",
                                       "--requests", "12", "--seconds", "30"])  # the time bound only guards a hang
    assert [(r["server"], r["clients"]) for r in res["rows"]] == [
        ("micro-batching", 1), ("micro-batching", 4), ("batch size 1", 1), ("batch size 1", 4)]
    assert all(r["errors"] == 0 and 12 <= r["requests"] <= 15 for r in res["rows"])
    assert "| micro-batching | 4 |" in capsys.readouterr().out


def test_serve_many_harness(run, tiny_models, tmp_path, capsys):
    from conftest import scored_rows, synthetic_rows, tagged_rows, write_csv

    runs = {"single": run}
    for kind, rows, header, extra in (("multi", tagged_rows, ("text", "labels"), {"task": "multi-label",
                                                                                  "data.label_column": "labels"}),
                                      ("score", scored_rows, ("text", "score"), {"task": "regression",
                                                                                 "data.label_column": "score"})):
        for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
            write_csv(tmp_path / kind / f"{split}.csv", rows(60, seed), header)
        over = tiny_overrides(tiny_models["bert"], tmp_path / kind, tmp_path / "runs", name=kind,
                              **{"train.epochs": 1, **extra})
        runs[kind] = loraclf.train(None, over, quiet=True).path
    write_csv(tmp_path / "texts.csv", synthetic_rows(40, 4))
    res = load_benchmark("serve_many").main([
        "--runs", *(f"{k}={v}" for k, v in runs.items()), "--texts", str(tmp_path / "texts.csv"),
        "--work", str(tmp_path / "work"), "--adapters", "6", "--many", "9", "--max-loaded", "3",
        "--clients", "4", "--requests", "16", "--seconds", "30", "--memory-n", "2"])
    assert [r["adapters"] for r in res["load"]] == [1, 6, 6, 9]
    assert all(r["errors"] == 0 and r["errors_5xx"] == 0 and r["requests"] >= 16 for r in res["load"])
    assert res["load"][3]["evictions"] > 0  # 9 adapters through at most 3 loaded
    assert [r["n"] for r in res["memory"]] == [2] and res["offline_texts_per_s"] > 0
    assert "| 6 adapters, uniform |" in capsys.readouterr().out
