"""Checkpoints for ``--resume``: loraclf's own format, one atomic unit, no pickle.

```
checkpoints/
  latest                 names the current checkpoint folder; switched with os.replace
  step-0000045-3f9a2c/   one complete checkpoint
    trainable.safetensors    the trainable weights (LoRA + head), never the frozen base
    best.safetensors         the best weights seen on validation so far (when there are any)
    optimizer.safetensors    the optimizer's tensors; optimizer.json its groups and layout
    scheduler.json           the learning-rate schedule's state
    rng-<rank>.safetensors   each process's torch (and CUDA) generators; rng-<rank>.json Python's and NumPy's
    trainer_state.json       where training stands (loop.TrainerState), history.jsonl its records
    manifest.json            every file's size and SHA-256, written last
```

A checkpoint is staged in ``.incoming/``, renamed into a new step folder, and only then does
``latest`` switch to it, so at every instant ``latest`` names a complete checkpoint. Older folders
are removed after the switch. On resume, the manifest is checked; a damaged checkpoint falls back
to the newest complete one, and the user is told which. Everything is safetensors or JSON: resuming
never unpickles a file from the run directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import CheckpointError
from .faults import fault

log = logging.getLogger("loraclf")

POINTER = "latest"
STAGING = ".incoming"
MANIFEST = "manifest.json"
FOLDER = re.compile(r"^step-\d{7}-[0-9a-f]{12}$")  # what `latest` may name: a folder of this checkpoints/
REQUIRED = ("trainable.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json",
            "trainer_state.json", "history.jsonl", "rng-0.safetensors", "rng-0.json")


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run directory holds a checkpoint a resume would continue from."""
    ckpt = Path(run_dir) / "checkpoints"
    return (ckpt / POINTER).is_file() or any(p.is_dir() for p in ckpt.glob("step-*"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- JSON-safe encodings of state dicts


def _encode(value):
    """Tuples survive the JSON round trip (AdamW's betas); tensors must not reach here."""
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        raise TypeError("a tensor in a JSON part of a checkpoint")
    return value


def _decode(value):
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v) for v in value["__tuple__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def optimizer_parts(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict as (tensors for safetensors, the rest for JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{key}"] = v.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = v
    return tensors, {"param_groups": _encode(sd["param_groups"]), "scalars": scalars,
                     "indices": [int(i) for i in sd["state"]]}


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {i: dict(meta["scalars"].get(str(i), {})) for i in meta["indices"]}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state[int(idx)][key] = t
    return {"state": state, "param_groups": _decode(meta["param_groups"])}


# ---------------------------------------------------------------- random generators


def rng_parts() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {"python": [version, list(internal), gauss],
                     "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------- the checkpoint folder


class Checkpoints:
    """The checkpoints/ folder of one run, written and read by every process of that run."""

    def __init__(self, root: Path, accelerator):
        self.root, self.acc = Path(root), accelerator

    # ------------------------------------------------------------ writing
    def save(self, state: dict, history: list[dict], trainable: dict[str, torch.Tensor],
             best: Optional[dict[str, torch.Tensor]], optimizer, scheduler) -> None:
        """Write one complete checkpoint and make it the current one (collective: every process calls it)."""
        from safetensors.torch import save_file

        acc, stage = self.acc, self.root / STAGING
        if acc.is_main_process:
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(parents=True)
        acc.wait_for_everyone()
        rank = acc.process_index
        tensors, meta = rng_parts()
        save_file(tensors, str(stage / f"rng-{rank}.safetensors"))
        _write_json(stage / f"rng-{rank}.json", meta)
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_file(trainable, str(stage / "trainable.safetensors"))
            if best is not None:
                save_file(best, str(stage / "best.safetensors"))
            opt_tensors, opt_meta = optimizer_parts(optimizer.state_dict())
            save_file(opt_tensors, str(stage / "optimizer.safetensors"))
            _write_json(stage / "optimizer.json", opt_meta)
            _write_json(stage / "scheduler.json", _encode(scheduler.state_dict()))
            (stage / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
            _write_json(stage / "trainer_state.json", state)
            files = {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(stage.iterdir())}
            _write_json(stage / MANIFEST, {"step": state["step"], "files": files})
            fault("checkpoint.staged")
            # time-ordered suffix: two checkpoints of one step (an epoch's end, then "done") sort as written
            self._publish(stage, f"step-{state['step']:07d}-{time.time_ns() // 1000 % 16**12:012x}")
        acc.wait_for_everyone()

    def _publish(self, stage: Path, name: str) -> None:
        os.replace(stage, self.root / name)
        fault("checkpoint.renamed")
        tmp = self.root / f"{POINTER}.tmp"
        tmp.unlink(missing_ok=True)  # never write through a link someone planted there
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(name)
        os.replace(tmp, self.root / POINTER)
        fault("checkpoint.switched")
        for old in self.root.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------ reading
    def complete(self, folder: Path) -> bool:
        """Whether `folder` is one of this checkpoints/ folder's step folders and holds every file a
        checkpoint needs, each with the size and hash its manifest records."""
        try:
            if not (FOLDER.match(folder.name) and folder.parent == self.root and folder.is_dir()
                    and not folder.is_symlink()):
                return False
            files = json.loads((folder / MANIFEST).read_text())["files"]
            if any("/" in n or n.startswith(".") for n in files) or not set(REQUIRED) <= set(files):
                return False
            return all((folder / n).is_file() and not (folder / n).is_symlink()
                       and (folder / n).stat().st_size == f["size"] and _sha256(folder / n) == f["sha256"]
                       for n, f in files.items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def find(self) -> Optional[Path]:
        """The checkpoint to resume from: the one `latest` names, else the newest complete one
        (saying so), else None when nothing was ever completed."""
        if (self.root / "state").is_dir():  # loraclf 0.1's Accelerate format, with pickled parts
            raise CheckpointError(f"{self.root} was written by an older loraclf in a format that is no longer read "
                                  "(it holds pickled state); train the run again without --resume")
        named = self._pointed()
        if named is not None and self.complete(named):
            return named
        # Only a kill between a new folder's rename and the pointer's switch leaves a second one;
        # otherwise older checkpoints are gone and a damaged `latest` is refused below.
        candidates = sorted((p for p in self.root.glob("step-*") if p.is_dir()), key=lambda p: p.name, reverse=True)
        for folder in candidates:
            if self.complete(folder):
                if self.acc.is_main_process:  # said even with --quiet: the run goes back in time
                    print(f"loraclf: checkpoint {named.name if named else POINTER} is missing or damaged; "
                          f"resuming from {folder.name} instead", file=sys.stderr)
                return folder
        if named is not None or candidates:
            raise CheckpointError(f"{self.root}: no complete checkpoint (every one fails its manifest check); "
                                  "train the run again without --resume")
        return None

    def _pointed(self) -> Optional[Path]:
        """The folder `latest` names; None when it is missing or unreadable (a damaged pointer: the newest
        complete checkpoint is used). A link or a folder in its place is refused: never followed."""
        pointer = self.root / POINTER
        if pointer.is_symlink() or (pointer.exists() and not pointer.is_file()):
            raise CheckpointError(f"{pointer} is a {'link' if pointer.is_symlink() else 'folder'}, not loraclf's "
                                  "pointer file; remove it and --resume again")
        if not pointer.exists():
            return None
        try:
            name = pointer.read_bytes()[:256].decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        return self.root / Path(name).name if name else None

    def read(self, folder: Path) -> tuple[dict, list[dict], dict, Optional[dict]]:
        """(trainer state, history, trainable weights, best weights) of a complete checkpoint."""
        with _unreadable(folder):
            return self._read(folder)

    def _read(self, folder: Path) -> tuple[dict, list[dict], dict, Optional[dict]]:
        from safetensors.torch import load_file

        state = json.loads((folder / "trainer_state.json").read_text())
        history = [json.loads(x) for x in (folder / "history.jsonl").read_text().splitlines() if x.strip()]
        best = load_file(str(folder / "best.safetensors")) if (folder / "best.safetensors").exists() else None
        return state, history, load_file(str(folder / "trainable.safetensors")), best

    def restore(self, folder: Path, optimizer, scheduler) -> None:
        """Load the optimizer, the schedule and this process's random generators."""
        with _unreadable(folder):
            self._restore(folder, optimizer, scheduler)

    def _restore(self, folder: Path, optimizer, scheduler) -> None:
        from safetensors.torch import load_file

        optimizer.load_state_dict(optimizer_state(load_file(str(folder / "optimizer.safetensors")),
                                                  json.loads((folder / "optimizer.json").read_text())))
        scheduler.load_state_dict(_decode(json.loads((folder / "scheduler.json").read_text())))
        rank = self.acc.process_index
        set_rng(load_file(str(folder / f"rng-{rank}.safetensors")),
                json.loads((folder / f"rng-{rank}.json").read_text()))


@contextlib.contextmanager
def _unreadable(folder: Path):
    """A checkpoint whose files pass the manifest but do not load (crafted, or another version's) is
    one line, not a traceback."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{folder} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:150]}); "
                              "train the run again without --resume") from None
