"""The run directory and the artifact on disk: one reader and one writer for each file.

A run directory (a contract: other commands and users read it)::

    runs/<name>/
      config.yaml             the fully resolved config (every `auto` replaced by what the run chose)
      metrics.json            validation and test metrics, timings, parameter counts, environment
      history.jsonl           one line per logged step or evaluation
      predictions/<split>.csv text (and text_pair), gold, predicted, then the task's columns
      artifact/loraclf.json   what loraclf.load needs: labels, task and its state, base model, head, method

Training writes them, and the report, comparisons, sweeps, searches, export, the server and
``loraclf.load`` read them, through this module only. Writes that replace a file a reader may be
reading are atomic (a temporary file, then a rename).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import LoraclfError, ModelError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.jsonl"
PREDICTIONS_DIR = "predictions"
ARTIFACT_DIR = "artifact"
META_FILE = "loraclf.json"
FORMAT_VERSION = 1
# Defaults of loraclf.json keys that older artifacts lack: they were single-label classifiers on PyTorch weights.
META_DEFAULTS = {"task": "single-label", "head": "classifier", "format": "pytorch", "task_state": {}}


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()] if Path(path).exists() else []


def write_jsonl(path: Path, records: Sequence[dict]) -> None:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in records))


class RunDir:
    """A run directory's files by name, with a reader and a writer for each."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    config_path = property(lambda self: self.path / CONFIG_FILE)
    metrics_path = property(lambda self: self.path / METRICS_FILE)
    history_path = property(lambda self: self.path / HISTORY_FILE)
    artifact_path = property(lambda self: self.path / ARTIFACT_DIR)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def finished(self) -> bool:
        """metrics.json is written last: its presence marks a complete run."""
        return self.metrics_path.is_file()

    def read_metrics(self) -> dict:
        if not self.path.is_dir():
            raise LoraclfError(f"run directory not found: {self.path}")
        if not self.finished:
            raise LoraclfError(f"{self.path}: no metrics.json; not a finished run directory (still training, or "
                               "--resume it)")
        return json.loads(self.metrics_path.read_text())

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.metrics_path, metrics)

    def update_metrics(self, key: str, value: Any) -> dict:
        """Add `key` to metrics.json (atomically: a reader never sees half a file); returns the new metrics."""
        metrics = self.read_metrics()
        metrics[key] = value
        self.write_metrics(metrics)
        return metrics

    def read_config_tree(self) -> dict:
        """config.yaml as a plain mapping ({} when it is missing): what reports and comparisons show."""
        from .yamlio import load_yaml

        if not self.config_path.exists():
            return {}
        tree = load_yaml(self.config_path.read_bytes(), str(self.config_path))
        return tree if isinstance(tree, dict) else {}

    def write_config(self, cfg) -> None:
        cfg.save(self.config_path)

    def read_history(self) -> list[dict]:
        return read_jsonl(self.history_path)

    def predictions_path(self, split: str) -> Path:
        return self.path / PREDICTIONS_DIR / f"{split}.csv"

    def read_predictions(self, split: str):
        """predictions/<split>.csv as a table (see :func:`read_predictions`), or None when absent."""
        f = self.predictions_path(split)
        return read_predictions(f) if f.exists() else None

    def read_meta(self) -> Optional[dict]:
        """The artifact's loraclf.json, or None when the run has no artifact."""
        return read_meta(self.artifact_path) if (self.artifact_path / META_FILE).exists() else None


def is_run(path: Path) -> bool:
    return RunDir(path).finished


# ---------------------------------------------------------------- predictions/<split>.csv

FIXED_COLUMNS = ("text", "gold", "predicted")  # (text_pair after text for pairs), then the task's columns


def write_predictions(path: Path, texts: Sequence[str], pairs: Optional[Sequence[str]], gold: Sequence[str],
                      predicted: Sequence[str], columns: dict[str, Sequence]) -> None:
    """One row per text: text (and its pair), gold and predicted as the task writes answers, then the
    task's own columns (right or wrong, one probability per label; or the signed error of a score)."""
    names = list(columns)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")  # not the csv module's '\r\n'
        w.writerow(["text"] + (["text_pair"] if pairs is not None else []) + ["gold", "predicted"] + names)
        for i, text in enumerate(texts):
            w.writerow([text] + ([pairs[i]] if pairs is not None else []) + [gold[i], predicted[i]]
                       + [columns[c][i] for c in names])


def read_predictions(path: Path):
    """A predictions file as a pandas DataFrame: text, gold and predicted as strings exactly as written
    (an empty cell is an empty label set, not a missing value), the other columns as written."""
    import pandas as pd

    df = pd.read_csv(path, dtype={"text": str, "text_pair": str, "gold": str, "predicted": str},
                     keep_default_na=False, na_values=[], engine="c")
    missing = [c for c in FIXED_COLUMNS if c not in df.columns]
    if missing:
        raise LoraclfError(f"{path}: missing columns {missing}; is it a loraclf predictions file?")
    return df


# ---------------------------------------------------------------- artifact/loraclf.json


def versions() -> dict[str, str]:
    import accelerate
    import peft
    import torch
    import transformers

    from ._version import __version__

    return {"loraclf": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "python": platform.python_version()}


def save_artifact(head, dest: Path, meta: dict, extra_versions: Optional[dict] = None) -> None:
    """An artifact folder: the head's model (adapter or whole checkpoint), its tokenizer, loraclf.json."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    head.save(dest, meta)
    head.tokenizer.save_pretrained(str(dest))
    write_meta(dest, meta, extra_versions)


def write_meta(dest: Path, meta: dict, extra_versions: Optional[dict] = None) -> None:
    """loraclf.json: the format version, `meta`, and the versions of what wrote it."""
    full = {"format_version": FORMAT_VERSION, **meta, "versions": {**versions(), **(extra_versions or {})}}
    (Path(dest) / META_FILE).write_text(json.dumps(full, indent=2))


def read_meta(art: Path) -> dict:
    """An artifact's loraclf.json, with the defaults of keys older artifacts lack filled in."""
    f = Path(art) / META_FILE
    if not f.exists():
        raise ModelError(f"{art} is not a loraclf artifact (no {META_FILE}); pass a run directory or its artifact/")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{f} is not valid JSON ({e.__class__.__name__}); the artifact is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list):
        raise ModelError(f"{f} has no label list; the artifact is damaged")
    defaults = {k: (dict(v) if isinstance(v, dict) else v) for k, v in META_DEFAULTS.items()}  # never shared
    meta = {**defaults, **{k: v for k, v in meta.items() if v is not None or k not in META_DEFAULTS}}
    _check_meta(meta, f)
    return meta


def _strings(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# What each key of loraclf.json must hold (a damaged or forged file is refused as it is read, in one line).
META_KINDS = {
    "labels": ("a non-empty list of different names",
               lambda v: _strings(v) and v and len(set(v)) == len(v) and all(x.strip() for x in v)),
    "task": ("a task name", lambda v: isinstance(v, str)),
    "head": ("a head name", lambda v: isinstance(v, str)),
    "method": ("a method name", lambda v: isinstance(v, str)),
    "format": ("a format name", lambda v: isinstance(v, str)),
    "task_state": ("a mapping", lambda v: isinstance(v, dict)),
    "base_model": ("a model name or path", lambda v: isinstance(v, str) and v.strip()),
    "max_length": ("a number of tokens", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2),
    "modules_to_save": ("a list of module names", lambda v: v is None or _strings(v)),
    "quantize": ("null, 4bit or 8bit", lambda v: v in (None, "4bit", "8bit")),
    "prompt": ("a mapping", lambda v: v is None or isinstance(v, dict)),
    "base_shape": ("a mapping", lambda v: v is None or isinstance(v, dict)),
    "base_fingerprint": ("a string", lambda v: v is None or isinstance(v, str)),
    "export": ("a mapping", lambda v: v is None or isinstance(v, dict)),
    "text_column": ("a column name or two", lambda v: isinstance(v, str) or (_strings(v) and 1 <= len(v) <= 2)),
}


def _check_meta(meta: dict, f: Path) -> None:
    for key, (what, ok) in META_KINDS.items():
        if key in meta and not ok(meta[key]):
            raise ModelError(f"{f}: {key} is {str(meta[key])[:60]!r}, not {what}; the artifact is damaged")


def artifact_dir(path: str | Path) -> Path:
    """Accept a run directory or an artifact directory."""
    p = Path(path)
    if (p / ARTIFACT_DIR / META_FILE).exists():
        return p / ARTIFACT_DIR
    if (p / META_FILE).exists():
        return p
    if not p.exists():
        raise ModelError(f"artifact not found: {p}")
    raise ModelError(f"{p} is not a loraclf artifact or run directory (no {META_FILE})")


def check_output_folder(out: Path, what: str = "--output") -> Path:
    """A folder to write a whole artifact into (an export, save_pretrained): new or empty, not a link (the
    output would land wherever it points), and under a folder (not under a file); checked before any work."""
    if out.is_symlink():
        raise LoraclfError(f"{what} {out} is a symbolic link; give a plain folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LoraclfError(f"{out} already exists and is not empty; choose another folder or remove it")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LoraclfError(f"{what} {out}: {parent} is a file, not a folder")
    return out


@contextlib.contextmanager
def staged_folder(out: Path, tag: str):
    """A hidden folder beside `out` (new or empty) to fill; it becomes `out` when the block ends without an
    error and is removed otherwise, so a failed export or copy leaves nothing behind."""
    import shutil

    stage = out.parent / f".partial-{tag}-{os.getpid()}-{out.name}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
        if out.exists():
            out.rmdir()  # empty (check_output_folder)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
