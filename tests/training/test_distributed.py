"""The loop under real multi-process DDP on CPU (torchrun, gloo): one run directory, sane metrics."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import tiny_overrides

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("torchrun") is None
                    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun not found")
def test_torchrun_two_processes(tiny_models, synth_dir, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    sets = []
    for o in tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{"train.epochs": 1, "train.batch_size": 8,
                                                                          "train.eval_batch_size": 7}):
        sets += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "loraclf", "train",
                           "--quiet", *sets], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["environment"]["num_processes"] == 2
    # 240 rows, per-process batches of 8 -> 15 steps each, both processes see disjoint batches
    assert m["best"]["steps"] == 15
    assert m["test"]["n"] == 60 and m["validation"]["n"] == 60  # gathered, no duplicates, none lost
    assert sum(sum(r) for r in m["test"]["confusion_matrix"]) == 60
    assert (tmp_path / "run" / "artifact" / "adapter_model.safetensors").exists()


@pytest.mark.skipif(shutil.which("torchrun") is None
                    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun not found")
def test_torchrun_resume_after_a_kill_equals_the_uninterrupted_run(tiny_models, synth_dir, tmp_path):
    """Two processes, killed inside an epoch after a checkpoint, resumed with two processes again:
    the same metrics and weights as the run that was never interrupted."""
    from safetensors.torch import load_file

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    # batches of 16: 15 an epoch, an odd count that two processes can only share by repeating one
    extra = {"train.epochs": 2, "train.batch_size": 16, "train.eval_steps": 3, "train.grad_accum_steps": 2,
             "train.num_threads": 1}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("LORACLF_FAULT", None)

    def launch(args, port, fault=None):
        e = {**env, "LORACLF_FAULT": fault} if fault else env
        return subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "loraclf",
                               "train", "--quiet", *args], env=e, capture_output=True, text=True, timeout=300)

    runs = {}
    for name, fault in (("full", None), ("cut", "train.step:5")):
        sets = []
        for o in tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, name=name, **extra):
            sets += ["--set", o]
        proc = launch(sets, 29541 if fault is None else 29542, fault)
        assert (proc.returncode == 0) == (fault is None), proc.stderr[-3000:]
        runs[name] = tmp_path / name
    assert (runs["cut"] / "checkpoints" / "latest").exists() and not (runs["cut"] / "metrics.json").exists()
    proc = launch(["--resume", str(runs["cut"])], 29543)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((runs[k] / "metrics.json").read_text()) for k in ("full", "cut"))
    assert a["environment"]["num_processes"] == b["environment"]["num_processes"] == 2
    for key in ("validation", "test", "best"):
        assert a[key] == b[key], key
    wa, wb = (load_file(str(runs[k] / "artifact" / "adapter_model.safetensors")) for k in ("full", "cut"))
    assert all(wa[k].equal(wb[k]) for k in wa)
