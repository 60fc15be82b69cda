"""rundir.py: run names, the lock, folders a run may use, and overrides a resume accepts."""

import pytest

from loraclf.config import check_run_name, load_config
from loraclf.errors import ConfigError, LoraclfError
from loraclf.training.rundir import RunLock, check_resume_overrides, open_new, refuse_existing


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "a\\b", ".hidden", "..", " ", "nul\0byte"])
def test_run_names_are_one_plain_folder(name):
    with pytest.raises(ConfigError, match="plain folder name"):
        check_run_name(name)
    check_run_name("sst2-minilm-lora-20261130")


def test_the_lock_is_exclusive_and_released(tmp_path):
    a = RunLock(tmp_path).acquire()
    with pytest.raises(LoraclfError, match="in use by another loraclf process"):
        RunLock(tmp_path).acquire()  # flock: a second open file description conflicts, as another process would
    a.release()
    RunLock(tmp_path).acquire().release()


def test_the_lock_never_follows_a_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(LoraclfError, match="cannot be used as the run's lock file"):
        RunLock(run).acquire()
    assert victim.read_text() == "keep me"


def test_new_runs_use_only_empty_folders(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(LoraclfError, match="not a loraclf run"):
        refuse_existing(tmp_path / "full")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(LoraclfError, match="symbolic link"):
        refuse_existing(tmp_path / "link")
    lock = open_new(tmp_path / "a" / "b" / "run")
    assert lock.created == [tmp_path / "a" / "b" / "run", tmp_path / "a" / "b", tmp_path / "a"]
    lock.remove_created()
    lock.release()
    assert not (tmp_path / "a").exists()


def test_resume_accepts_reporting_and_refuses_training_changes():
    saved = load_config(None, [])
    check_resume_overrides(saved, load_config(None, ["report.trackers=none", "train.eval_batch_size=7"]))
    with pytest.raises(ConfigError, match="--resume cannot change lora.r, seed"):
        check_resume_overrides(saved, load_config(None, ["seed=1", "lora.r=4"]))
