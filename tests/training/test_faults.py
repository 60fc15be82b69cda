"""Fault injection: real training processes killed with SIGKILL (or interrupted with SIGINT) at named
points, then resumed, end bit for bit where an uninterrupted run ends; planted pickles are never read.

The kill points come from the test-only hook in loraclf/faults.py (LORACLF_FAULT=point:nth).
"""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import tiny_overrides

# 240 rows in batches of 16, accumulating 2: 8 optimizer steps an epoch (the 15th micro-batch closes
# the last accumulation), evaluations and checkpoints at steps 4 (inside epoch 1), 8 (its end) and
# 12 (inside epoch 2), then 16. Dropout is on (LoRA dropout 0.1, the model's own 0.1).
EXTRA = {"train.epochs": 2, "train.grad_accum_steps": 2, "train.eval_steps": 4, "train.num_threads": 1,
         "train.early_stopping_patience": 5, "train.lr": 5e-3}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
ENV.pop("LORACLF_FAULT", None)


def _cli(args: list[str], fault: str | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**ENV, "LORACLF_FAULT": fault} if fault else ENV
    # Ctrl-C as a terminal delivers it: a shell that starts jobs in the background (`cmd &`) leaves
    # SIGINT ignored, and Python then never turns it into KeyboardInterrupt.
    return subprocess.run([sys.executable, "-m", "loraclf", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _train(tiny_models, synth_dir, out: Path, name: str, fault: str | None = None) -> subprocess.CompletedProcess:
    sets = []
    for o in tiny_overrides(tiny_models["bert"], synth_dir, out, name=name, **EXTRA):
        sets += ["--set", o]
    return _cli(["train", "--quiet", *sets], fault)


def _resume(run: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    return _cli(["train", "--quiet", "--resume", str(run)], fault)


def _outcome(run: Path) -> dict:
    """What must not depend on interruptions: every score, the selection, the loss curve, the weights."""
    m = json.loads((run / "metrics.json").read_text())
    history = [{k: v for k, v in h.items() if k != "samples_per_s"}
               for h in map(json.loads, (run / "history.jsonl").read_text().splitlines())]
    weights = load_file(str(run / "artifact" / "adapter_model.safetensors"))
    return {"validation": m["validation"], "test": m["test"], "best": m["best"], "params": m["params"],
            "history": history, "weights": {k: v.numpy().tobytes() for k, v in weights.items()}}


@pytest.fixture(scope="module")
def reference(tiny_models, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = _train(tiny_models, synth_dir, out, "full")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _outcome(out / "full")


@pytest.fixture(scope="module")
def killed(tiny_models, synth_dir, tmp_path_factory):
    """A run killed at step 6, after its step-4 checkpoint: copied and damaged by the tests below (one training
    for all of them; test_killed_runs_resume_to_the_uninterrupted_result kills its own)."""
    out = tmp_path_factory.mktemp("killed")
    assert _train(tiny_models, synth_dir, out, "cut", fault="train.step:6").returncode == -9
    return out / "cut"


def _copy(killed: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(killed, tmp_path / "cut"))


def _assert_same(run: Path, reference: dict) -> None:
    got = _outcome(run)
    assert got["history"] == reference["history"]
    assert got["weights"] == reference["weights"]  # bit for bit
    for k in ("validation", "test", "best", "params"):
        assert got[k] == reference[k], k
    assert not list(run.glob(".partial-*")) and not (run / "checkpoints").exists()


@pytest.mark.parametrize("faults", [
    ["train.step:6"],            # inside epoch 1, two steps after its checkpoint at step 4
    ["train.step:10"],           # inside epoch 2, after the epoch-boundary checkpoint
    ["checkpoint.staged:2"],     # the second checkpoint staged, not yet renamed
    ["checkpoint.renamed:3"],    # renamed, `latest` not yet switched
    ["checkpoint.switched:1"],   # switched, the old folder not yet removed
    ["run.assemble:1"],          # training done, killed while the run directory is assembled
    ["train.step:6", "checkpoint.staged:1", "train.step:5"],  # killed again while resuming
], ids=lambda f: "+".join(f))
def test_killed_runs_resume_to_the_uninterrupted_result(faults, reference, tiny_models, synth_dir, tmp_path):
    first = _train(tiny_models, synth_dir, tmp_path, "cut", fault=faults[0])
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    run = tmp_path / "cut"
    for fault in faults[1:]:
        again = _resume(run, fault)
        assert again.returncode == -signal.SIGKILL, again.stderr[-2000:]
    done = _resume(run)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same(run, reference)


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_complete_one(reference, tiny_models, synth_dir,
                                                                           tmp_path):
    # killed after the step-8 checkpoint was renamed into place but before `latest` moved to it
    assert _train(tiny_models, synth_dir, tmp_path, "cut", fault="checkpoint.renamed:2").returncode == -9
    ckpt = tmp_path / "cut" / "checkpoints"
    named = ckpt / (ckpt / "latest").read_text()
    assert len(list(ckpt.glob("step-*"))) == 2
    weights = named / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # the disk lost the end of the named checkpoint
    done = _resume(tmp_path / "cut")
    assert done.returncode == 0, done.stderr[-2000:]
    warning = [line for line in done.stderr.splitlines() if "missing or damaged" in line]
    assert warning and named.name in warning[0] and "step-0000008" in warning[0]
    _assert_same(tmp_path / "cut", reference)


class _Planted:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_never_unpickles_what_is_in_the_run_directory(reference, killed, tmp_path):
    ckpt = _copy(killed, tmp_path) / "checkpoints"
    folder = ckpt / (ckpt / "latest").read_text()
    marker = tmp_path / "pwned"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
        (folder / name).write_bytes(pickle.dumps(_Planted(marker)))
    done = _resume(tmp_path / "cut")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not marker.exists()
    _assert_same(tmp_path / "cut", reference)


def test_a_pickle_under_a_checkpoint_files_name_is_one_line_and_never_loaded(killed, tmp_path):
    """Even with a manifest that vouches for it, a pickle where safetensors belongs is refused unread."""
    import hashlib

    ckpt = _copy(killed, tmp_path) / "checkpoints"
    folder = ckpt / (ckpt / "latest").read_text()
    marker = tmp_path / "pwned"
    evil = folder / "optimizer.safetensors"
    evil.write_bytes(pickle.dumps(_Planted(marker)))
    manifest = json.loads((folder / "manifest.json").read_text())
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    manifest["files"][evil.name] = {"size": evil.stat().st_size, "sha256": digest}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    done = _resume(tmp_path / "cut")
    assert done.returncode == 2 and not marker.exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be loaded" in lines[0] and "Traceback" not in done.stderr


def test_killed_after_the_checkpoint_of_an_early_stop_resumes_to_the_same_stop(tiny_models, synth_dir, tmp_path):
    """The stop decision travels with the checkpoint: a resume does not train on to the next evaluation."""
    extra = {**EXTRA, "train.lr": 1e-12, "train.early_stopping_patience": 1, "train.warmup_ratio": 0}

    def run(name, fault=None):
        sets = []
        for o in tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, name=name, **extra):
            sets += ["--set", o]
        return _cli(["train", "--quiet", *sets], fault)

    assert run("full").returncode == 0
    # checkpoints: step 4 (improved), step 8 (no better: stop) -> killed right after the second
    assert run("cut", fault="checkpoint.switched:2").returncode == -signal.SIGKILL
    assert _resume(tmp_path / "cut").returncode == 0
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text())["best"] for n in ("full", "cut"))
    assert a == b and a["stopped_early"] is True and a["steps"] == 8


def test_an_old_pickled_checkpoint_is_refused_unread(killed, tmp_path):
    marker = tmp_path / "pwned"
    state = _copy(killed, tmp_path) / "checkpoints" / "state"
    state.mkdir()
    (state / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    done = _resume(tmp_path / "cut")
    assert done.returncode == 2 and not marker.exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "older loraclf" in lines[0] and "Traceback" not in done.stderr


def test_ctrl_c_names_the_run_to_resume_on_a_line_of_its_own(reference, tiny_models, synth_dir, tmp_path):
    sets = []
    for o in tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, name="cut", **EXTRA):
        sets += ["--set", o]
    proc = _cli(["train", *sets], fault="train.step:6:INT")  # not quiet: a progress bar is on screen
    assert proc.returncode == 130
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last == f"interrupted; continue with: loraclf train --resume {tmp_path / 'cut'}"
    assert "Traceback" not in proc.stderr
    done = _resume(tmp_path / "cut")
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same(tmp_path / "cut", reference)


def _forge_state(folder: Path, **changes) -> None:
    """Rewrite trainer_state.json and the manifest's record of it, so the checkpoint stays 'complete'."""
    import hashlib

    state = json.loads((folder / "trainer_state.json").read_text())
    state = changes["whole"] if "whole" in changes else {**state, **changes}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / "trainer_state.json").read_bytes()
    manifest["files"]["trainer_state.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))


POINTER_CASES = {
    "latest is a link": (lambda ckpt, step: ((ckpt / "latest").unlink(),
                                             (ckpt / "latest").symlink_to(ckpt / step / "history.jsonl")),
                         "checkpoints/latest is a link, not loraclf's pointer file"),
    "latest is a folder": (lambda ckpt, step: ((ckpt / "latest").unlink(), (ckpt / "latest").mkdir()),
                           "checkpoints/latest is a folder, not loraclf's pointer file"),
    "trainer state is a list": (lambda ckpt, step: _forge_state(ckpt / step, whole=[1, 2]),
                                "trainer_state.json holds list, not a trainer state"),
    "negative step": (lambda ckpt, step: _forge_state(ckpt / step, step=-5), "step=-5 is not a valid value"),
    "step past the run": (lambda ckpt, step: _forge_state(ckpt / step, step=500), "is past this run's 16 steps"),
}


@pytest.mark.parametrize("case", sorted(POINTER_CASES))
def test_a_forged_pointer_or_state_is_one_line(case, killed, tmp_path):
    run = _copy(killed, tmp_path)
    ckpt = run / "checkpoints"
    damage, needle = POINTER_CASES[case]
    damage(ckpt, (ckpt / "latest").read_text())
    done = _resume(run)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in done.stderr


def test_a_pointer_that_is_not_text_falls_back_to_the_newest_complete_checkpoint(reference, killed, tmp_path):
    run = _copy(killed, tmp_path)
    (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe step-\x00")
    done = _resume(run)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "missing or damaged" in done.stderr
    _assert_same(run, reference)
