"""benchmarks/few_shot.py: the same K rows a class for both tools, the real SetFit beside loraclf, and a
summary that compares them only on the seeds both ran."""

import json

import pandas as pd
import pytest

from conftest import DATASETS, load_benchmark


def test_k_rows_a_class_seeded():
    few = load_benchmark("few_shot").few
    train = pd.DataFrame({"text": [f"t{i}" for i in range(90)], "label": ["a"] * 60 + ["b"] * 20 + ["c"] * 10})
    rows = few(train, 8, seed=3)
    assert rows["label"].value_counts().to_dict() == {"a": 8, "b": 8, "c": 8}
    assert rows.equals(few(train, 8, seed=3)) and not rows.equals(few(train, 8, seed=4))
    assert few(train, 16, seed=0)["label"].value_counts()["c"] == 10  # a class smaller than K gives all it has


def test_score_gives_accuracy_and_each_class_recall():
    import numpy as np

    test = pd.DataFrame({"text": list("abcdef"), "label": ["neg", "neg", "neg", "pos", "pos", "neu"]})
    got = load_benchmark("few_shot").score(np.array(["neg", "pos", "neg", "pos", "neg", "neg"]), test)
    assert got["accuracy"] == pytest.approx(3 / 6)
    assert got["recall"] == pytest.approx({"neg": 2 / 3, "neu": 0.0, "pos": 0.5})


def test_summary_pairs_the_seeds_both_tools_ran(tmp_path):
    rows = [{"dataset": "d", "k": 8, "seed": s, "tool": t, "accuracy": a, "train_seconds": 10.0}
            for s, t, a in [(0, "setfit", 0.6), (1, "setfit", 0.8), (0, "loraclf", 0.7), (2, "loraclf", 0.1)]]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = load_benchmark("few_shot").summarize(path).splitlines()[-1]
    assert line.startswith("| d | test | 8 | loraclf | 0.600 (0.000) | 0.700 (0.000) | +0.100 |")
    assert line.endswith("| 1 |")


@pytest.mark.slow
def test_both_tools_train_on_the_same_rows_of_sst2(tmp_path, monkeypatch):
    pytest.importorskip("setfit", reason="SetFit is the benchmark's peer: pip install -e '.[bench]'")
    monkeypatch.setenv("LORACLF_DATASETS", str(DATASETS.resolve()))  # before leaving the repository root
    monkeypatch.chdir(tmp_path)  # SetFit writes checkpoints under the working directory unless told
    out = tmp_path / "fs"
    args = ["--datasets", "sst2", "--k", "4", "--seeds", "0", "--test-n", "40", "--out", str(out)]
    table = load_benchmark("few_shot").main(args)
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["tool"] for r in results] == ["setfit", "loraclf"]
    assert {(r["n_train"], r["n_test"]) for r in results} == {(8, 40)}
    assert all(0 <= r["accuracy"] <= 1 and r["train_seconds"] > 0 for r in results)
    assert results[1]["recipe"]["name"] == "few-shot"
    assert "| sst2 | test | 4 | loraclf |" in table and (out / "summary.md").read_text().strip() == table
    # a rerun skips what is recorded
    load_benchmark("few_shot").main(args)
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fs"]  # nothing written outside --out
