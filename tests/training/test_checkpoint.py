"""checkpoint.py: the parts of a checkpoint survive a round trip exactly, and only a complete step
folder of the run's own checkpoints/ is ever used."""

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from loraclf.errors import CheckpointError
from loraclf.training.checkpoint import (
    Checkpoints,
    has_checkpoint,
    optimizer_parts,
    optimizer_state,
    rng_parts,
    set_rng,
)


class _Acc:  # what Checkpoints needs of an Accelerator, for one process
    is_main_process, process_index, num_processes = True, 0, 1

    def wait_for_everyone(self):
        pass


def _trained_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    return model, opt


def test_optimizer_state_round_trips_through_safetensors_and_json():
    _, opt = _trained_optimizer()
    tensors, meta = optimizer_parts(opt.state_dict())
    back = optimizer_state(tensors, json.loads(json.dumps(meta)))
    assert back["param_groups"] == opt.state_dict()["param_groups"]  # betas come back a tuple
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    for i, st in opt.state_dict()["state"].items():
        assert all(torch.equal(st[k], back["state"][i][k]) for k in st)


def test_random_generators_round_trip():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    tensors, meta = rng_parts()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(7), random.random(), np.random.rand(2)  # move every stream on
    set_rng(tensors, json.loads(json.dumps(meta)))
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]


def _saved(tmp_path):
    model, opt = _trained_optimizer()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ck = Checkpoints(tmp_path / "checkpoints", _Acc())
    state = {"step": 3, "epoch": 0}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters()}
    ck.save(state, [{"type": "train", "step": 3}], trainable, None, opt, sched)
    return ck, trainable


def test_a_saved_checkpoint_is_found_complete_and_reads_back(tmp_path):
    ck, trainable = _saved(tmp_path)
    folder = ck.find()
    assert folder is not None and ck.complete(folder) and has_checkpoint(tmp_path)
    state, history, weights, best = ck.read(folder)
    assert state == {"step": 3, "epoch": 0} and history == [{"type": "train", "step": 3}] and best is None
    assert all(torch.equal(weights[k], v) for k, v in trainable.items())
    assert not (tmp_path / "checkpoints" / ".incoming").exists()


def test_the_pointer_cannot_lead_outside_its_checkpoints_folder(tmp_path):
    ck, _ = _saved(tmp_path)
    root = tmp_path / "checkpoints"
    good = root / (root / "latest").read_text()
    elsewhere = tmp_path / "elsewhere"
    good.rename(elsewhere)
    (root / "latest").write_text(str(elsewhere))  # absolute path planted in the pointer
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ck.find()
    (root / "latest").write_text("../elsewhere")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ck.find()


def test_a_folder_missing_a_required_file_is_not_complete(tmp_path):
    ck, _ = _saved(tmp_path)
    root = tmp_path / "checkpoints"
    folder = root / (root / "latest").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]["optimizer.safetensors"]  # the manifest itself agrees: still incomplete
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert not ck.complete(folder)


def test_nothing_ever_completed_starts_from_the_beginning(tmp_path):
    ck = Checkpoints(tmp_path / "checkpoints", SimpleNamespace(is_main_process=True))
    (tmp_path / "checkpoints" / ".incoming").mkdir(parents=True)  # killed while staging the first one
    assert ck.find() is None and not has_checkpoint(tmp_path)
