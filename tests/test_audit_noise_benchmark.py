"""benchmarks/audit_noise.py: the top of the ranking dropped at several cuts, the cut chosen on validation."""

import pandas as pd

from conftest import load_benchmark


def test_top_cut_is_chosen_on_validation_and_drops_the_highest_ranked_rows():
    cut_models = load_benchmark("audit_noise").cut_models
    part = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": ["a", "b"] * 5})
    ranked = [7, 3, 9, 1]
    seen = {}

    def train(frame, name):
        seen[name] = sorted(set(range(10)) - set(frame.index))
        # validation prefers the half cut; test would have preferred the whole one (it must not choose)
        return {"validation": {"drop-top0.5": 0.9}.get(name, 0.8), "test": {"dropped": 0.99}.get(name, 0.7)}

    got = cut_models(part, ranked, [0.25, 0.5, 1.0], train)
    assert seen == {"drop-top0.25": [7], "drop-top0.5": [3, 7], "dropped": [1, 3, 7, 9]}
    assert got["chosen_cut"] == 0.5 and got["chosen"]["test"] == 0.7
    assert got["cuts"]["1"]["rows_dropped"] == 4


def test_top_cut_ties_go_to_the_smaller_cut():
    cut_models = load_benchmark("audit_noise").cut_models
    part = pd.DataFrame({"text": ["x", "y", "z"], "label": ["a", "b", "a"]})
    got = cut_models(part, [2, 0], [1.0, 0.5], lambda frame, name: {"validation": 0.5, "test": 0.5})
    assert got["chosen_cut"] == 0.5


def test_relabel_cut_relabels_only_the_top_of_the_ranking():
    cut_models = load_benchmark("audit_noise").cut_models
    part = pd.DataFrame({"text": [f"t{i}" for i in range(6)], "label": ["a", "b"] * 3})
    seen = {}

    def train(frame, name):
        assert len(frame) == 6  # nothing dropped
        seen[name] = {i: frame.at[i, "label"] for i in frame.index if frame.at[i, "label"] != part.at[i, "label"]}
        return {"validation": {"relabel-top0.5": 0.9}.get(name, 0.8), "test": 0.7}

    got = cut_models(part, [4, 1, 3, 0], [0.5, 1.0], train, suggested=["b", "a", "a", "b"])
    assert seen == {"relabel-top0.5": {4: "b", 1: "a"}, "relabelled": {4: "b", 1: "a", 3: "a", 0: "b"}}
    assert got["chosen_model"] == "relabel-top0.5" and got["cuts"]["0.5"]["rows_relabelled"] == 2
    assert part["label"].tolist() == ["a", "b"] * 3  # the noisy slice itself is left as it was


def test_unused_train_rows_share_no_row_and_no_text_with_the_slice(tmp_path, monkeypatch):
    audit_noise = load_benchmark("audit_noise")
    texts = [f"t{i % 150}" for i in range(200)]  # 50 texts twice
    data = tmp_path / "toy"
    data.mkdir()
    pd.DataFrame({"text": texts, "label": ["a", "b"] * 100}).to_csv(data / "train.csv", index=False)
    monkeypatch.setenv("LORACLF_DATASETS", str(tmp_path))
    part, _ = audit_noise.noisy_slice("toy", 60, 0.1, 3)
    rest = audit_noise.unused_train("toy", 60, 3, None)
    assert len(part) == 60 and not set(rest["text"]) & set(part["text"])
    assert len(rest) >= 200 - 60 - 60 and set(rest.index).isdisjoint(audit_noise.train_slice("toy", 60, 3)[0].index)
    assert len(audit_noise.unused_train("toy", 60, 3, 10)) == 10
