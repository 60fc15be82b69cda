"""loraclf.console: whose messages are whose, what `-q` leaves (the results table and errors), and progress
as plain lines where stderr is a file or a pipe. The CLI runs in subprocesses here: what a user's terminal
or log receives is the point, and pytest's own logging set-up would hide it in process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import synthetic_rows, tiny_overrides, write_csv
from loraclf import console

PY = sys.executable


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORACLF_PROGRESS", "WANDB_", "MLFLOW_"))}
    env.pop("PYTHONWARNINGS", None)
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def _run(args: list[str], **env) -> subprocess.CompletedProcess:
    """A command as a user runs it, stderr to a pipe (not a terminal); stdout and stderr apart."""
    return subprocess.run(args, capture_output=True, env=_env(**env), timeout=300, stdin=subprocess.DEVNULL)


def _sets(model, data, out, **extra) -> list[str]:
    return [a for o in tiny_overrides(model, data, out, **extra) for a in ("--set", o)]


SNIPPET = """
import logging, sys, warnings
from loraclf.console import setup_process
setup_process(quiet=sys.argv[1] == "quiet")
logging.getLogger("some.library").warning("careful")
logging.getLogger("loraclf").warning("ours")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
    "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make sure ...")
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.modeling_utils").warning("from transformers")
warnings.warn("a library's warning", UserWarning)
logging.getLogger("some.library").error("broken")
"""


def test_whose_message_is_whose_and_quiet_keeps_errors_only():
    """Another library's warning carries its logger's name, never "loraclf:"; transformers' comes once
    (under CI=true it also reaches the root logger); the bitsandbytes CPU-kernel notice is dropped."""
    r = _run([PY, "-c", SNIPPET, "loud"], CI="true")
    err = r.stderr.decode().splitlines()
    assert r.returncode == 0, err
    assert "some.library: warning: careful" in err and "loraclf: ours" in err
    assert not any(line.startswith("loraclf:") and "careful" in line for line in err)
    assert err.count("[transformers] from transformers") == 1 and sum("from transformers" in x for x in err) == 1
    assert not any("gemm_4bit_forward" in line for line in err)
    assert any("UserWarning: a library's warning" in line for line in err)
    assert "some.library: error: broken" in err

    q = _run([PY, "-c", SNIPPET, "quiet"], CI="true")
    assert q.returncode == 0 and q.stdout == b"" and q.stderr.decode().splitlines() == ["some.library: error: broken"]


@pytest.fixture(scope="module")
def quiet_run(tiny_models, synth_dir, tmp_path_factory):
    """`loraclf train -q` with every tracker whose library is installed."""
    out = tmp_path_factory.mktemp("quiet")
    trackers = ["tensorboard"] + [t for t in ("mlflow", "wandb") if importlib.util.find_spec(t)]
    r = _run([PY, "-m", "loraclf", "train", "-q", *_sets(tiny_models["bert"], synth_dir, out, **{
        "train.epochs": 1, "report.trackers": f"[{', '.join(trackers)}]"})], CI="true")
    return r, out / "run", trackers


def test_quiet_train_prints_the_results_table_and_nothing_else(quiet_run):
    from loraclf.training.run import results_table

    r, run, trackers = quiet_run
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert r.stderr == b""
    assert r.stdout.decode() == results_table(metrics) + "\n"
    assert (run / "tensorboard").is_dir()  # the trackers did run, silently


def test_progress_in_a_log_is_plain_lines_and_csvs_end_lines_with_newline(tiny_models, synth_dir, tmp_path):
    """stderr to a pipe: no carriage-return frames, at most one progress line per update plus a final one
    (LORACLF_PROGRESS_SECONDS=0, the most there can be), every CSV written with '\\n' line ends."""
    r = _run([PY, "-m", "loraclf", "train", *_sets(tiny_models["bert"], synth_dir, tmp_path, **{
        "train.epochs": 1, "train.eval_steps": 5, "report.trackers": "none"})], LORACLF_PROGRESS_SECONDS="0")
    err = r.stderr.decode()
    assert r.returncode == 0, err[-3000:]
    assert "\r" not in err and "\x1b" not in err
    steps = 240 // 16
    train_lines = [line for line in err.splitlines() if line.startswith("train: step ")]
    assert len(train_lines) == steps + 1 and train_lines[-1].startswith(f"train: step {steps}/{steps} (100%)")
    assert " done in " in train_lines[-1] and "loss=" in train_lines[-1]
    assert len(err.splitlines()) <= steps + 1 + 2 * (steps // 5 + 3)  # + each evaluation's batch and final line
    run = tmp_path / "run"
    for split in ("validation", "test"):
        assert b"\r" not in (run / "predictions" / f"{split}.csv").read_bytes()

    # the default interval (20 s): a prediction that takes less shows no progress at all
    quiet_bar = _run([PY, "-m", "loraclf", "predict", str(run), "-i", str(synth_dir / "test.csv"),
                      "-o", str(tmp_path / "p.csv")])
    assert quiet_bar.returncode == 0 and quiet_bar.stderr.decode().splitlines() == [
        f"wrote 60 predictions to {tmp_path / 'p.csv'}"]
    data = (tmp_path / "p.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 61
    ids = write_csv(tmp_path / "ids.csv", [(f"id{i}", t) for i, (t, _) in enumerate(synthetic_rows(30, 4))],
                    header=("id", "text"))
    p = _run([PY, "-m", "loraclf", "predict", str(run), "-i", str(ids), "--id-column", "id", "-o",
              str(tmp_path / "sub.csv"), "--batch-size", "1"], LORACLF_PROGRESS_SECONDS="0")
    assert p.returncode == 0 and "\r" not in p.stderr.decode()
    lines = p.stderr.decode().splitlines()
    assert 1 < len(lines) <= 30 + 2 and lines[-2].startswith("predict: 30 texts, ")
    assert b"\r" not in (tmp_path / "sub.csv").read_bytes()


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_prints_at_most_every_interval_and_a_final_line(monkeypatch, capsys):
    clock = Clock()
    monkeypatch.setattr(console.time, "monotonic", clock)
    monkeypatch.setenv(console.PROGRESS_SECONDS_ENV, "10")
    bar = console.LineProgress(total=800, desc="train", unit="step")
    for _ in range(800):  # a step every 1/8 s: 100 s, a line every 10 s
        clock.t += 0.125
        bar.update(1)
    bar.set_postfix(loss="0.1234")
    bar.close()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 11
    assert lines[0] == "train: step 80/800 (10%), 8 step/s, 10s, eta 1m30s"
    assert lines[-1] == "train: step 800/800 (100%), 8 step/s, done in 1m40s; loss=0.1234"


def test_a_passing_bar_says_nothing_unless_it_lasted(monkeypatch, capsys):
    clock = Clock()
    monkeypatch.setattr(console.time, "monotonic", clock)
    monkeypatch.setenv(console.PROGRESS_SECONDS_ENV, "20")
    quick = console.LineProgress(total=3, desc="eval validation", unit="batch", leave=False)
    quick.update(3)
    quick.close()
    assert capsys.readouterr().err == ""
    slow = console.LineProgress(total=None, desc="predict", unit="text", leave=False)
    clock.t += 25
    slow.update(500)
    slow.close()
    assert capsys.readouterr().err.splitlines() == ["predict: 500 texts, 20 text/s, 25s",
                                                    "predict: 500 texts, 20 text/s, done in 25s"]


def test_progress_is_tqdm_on_a_terminal_and_lines_elsewhere(monkeypatch):
    class Tty:
        def isatty(self):
            return True

        def write(self, s):
            return len(s)

        def flush(self):
            pass

    assert isinstance(console.progress(total=3, desc="x"), console.LineProgress)  # pytest's capture: no terminal
    monkeypatch.setitem(sys.modules, "ipykernel", object())  # a notebook: tqdm's widget, though no terminal
    bar = console.progress(total=3, desc="x")
    assert not isinstance(bar, console.LineProgress) and hasattr(bar, "set_postfix")
    bar.close()
    monkeypatch.delitem(sys.modules, "ipykernel")
    monkeypatch.setattr(sys, "stderr", Tty())
    bar = console.progress(total=3, desc="x")
    assert not isinstance(bar, console.LineProgress) and hasattr(bar, "set_postfix")
    bar.close()
    monkeypatch.setenv(console.PROGRESS_SECONDS_ENV, "not a number")
    assert console.progress_seconds() == console.PROGRESS_SECONDS
