"""The run directory's guards: one process at a time, never a folder that is not a loraclf run, and
a resume that continues the run it names rather than another one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from ..config import Config, flatten
from ..errors import ConfigError, LoraclfError

LOCK = ".lock"
# Overrides a resume accepts: they change what is reported or how fast evaluation runs, never what
# the checkpoint means (data, model, method, targets, seed, schedule, batch order, ...).
RESUME_SAFE = ("report.", "train.eval_batch_size", "train.num_threads")


class RunLock:
    """An exclusive lock on a run directory for as long as a process trains in it (flock on .lock:
    the kernel drops it when the process dies, so a killed run never leaves a stale lock)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: Optional[int] = None
        self.created: list[Path] = []  # folders this process made for a new run, innermost first

    def acquire(self) -> "RunLock":
        try:  # never through a link: a crafted run directory must not make us touch another file
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise LoraclfError(f"{self.path}: cannot be used as the run's lock file ({e.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise LoraclfError(f"{self.path.parent} is in use by another loraclf process; wait for it to "
                               "finish, or choose another name") from None
        return self

    def remove_created(self) -> None:
        """Undo a new run that failed before its first checkpoint: its folder, and the parents made for
        it. Called while the lock is held, so no other process can have taken the folder meanwhile."""
        import shutil

        if self.created:
            shutil.rmtree(self.created[0], ignore_errors=True)
        for parent in self.created[1:]:
            try:
                parent.rmdir()
            except OSError:  # not empty: something else lives there now
                break

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def check_writable(parent: Path) -> None:
    """output_dir must be a folder this process can write in (checked before any work)."""
    p = Path(parent)
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise LoraclfError(f"output_dir {parent}: {p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise LoraclfError(f"output_dir {parent}: no permission to write in {p}")


def refuse_existing(run_dir: Path) -> None:
    """A new run never writes into a folder that holds anything: a finished or interrupted run, or
    a folder that is not a loraclf run at all. Also refuses an output_dir it cannot write in."""
    check_writable(run_dir.parent)
    if run_dir.is_symlink():
        raise LoraclfError(f"run directory {run_dir} is a symbolic link; choose another name")
    if run_dir.exists() and not run_dir.is_dir():
        raise LoraclfError(f"run directory {run_dir} is a file")
    if run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir()):
        run = (run_dir / "config.yaml").exists()
        raise LoraclfError(f"run directory {run_dir} already exists ("
                           + ("a loraclf run; choose another name or --resume it)" if run else
                              "a folder that is not empty, not a loraclf run; choose another name)"))


def open_new(run_dir: Path) -> RunLock:
    """Create and lock a new run's directory, checking again under the lock (two processes may start
    with the same name at once)."""
    refuse_existing(run_dir)
    created = [p for p in [run_dir, *run_dir.parents] if not p.exists()]
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire()
    lock.created = created
    try:
        refuse_existing(run_dir)
    except LoraclfError:
        lock.release()
        raise
    return lock


def check_resume_overrides(saved: Config, resumed: Config) -> None:
    """Refuse overrides that would make config.yaml describe another run than its checkpoint."""
    a, b = flatten(saved.to_dict()), flatten(resumed.to_dict())
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(RESUME_SAFE)]
    if changed:
        safe = ", ".join(p + "*" if p.endswith(".") else p for p in RESUME_SAFE)
        raise ConfigError(f"--resume cannot change {', '.join(changed)}: the checkpoint was trained with "
                          f"other values (on resume only {safe} may change)")


def on_main(accelerator, check) -> None:
    """Run `check` on the main process and raise its LoraclfError on every process: a check made on
    one rank alone would leave the others waiting at the next barrier."""
    error = None
    if accelerator.is_main_process:
        try:
            check()
        except LoraclfError as e:
            error = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    if error is not None:
        raise LoraclfError(error)
