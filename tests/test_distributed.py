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
