"""Data: read and validate the splits a config names, as texts and label arrays, with a LabelSet.

The task reads the label column (tasks/); everything here is the same for every task: finding and
reading files (files.py), validation carving and caps (seeded, stratified as the task says), and
tokenisation and batching (batching.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..errors import DataError
from ..tasks import Task, task_class
from ..tasks.labels import LabelSet, detect_task
from .batching import LENGTH_GROUP_BATCHES, Collator, Encoded, encode, eval_batches, token_lengths, train_batches
from .files import (
    CHUNK_ROWS,
    DATASETS_ENV,
    SPLITS,
    _explicit_file,
    _find_split_file,
    _hf_load,
    datasets_root,
    find_files,
    iter_table,
    read_table,
    read_texts,
    resolve_path,
)
from .remote import shown

if TYPE_CHECKING:
    from ..config import DataConfig

__all__ = ["CHUNK_ROWS", "DATASETS_ENV", "LENGTH_GROUP_BATCHES", "SPLITS", "Collator", "Data", "Encoded", "LabelSet",
           "Split", "carve_validation", "datasets_root", "encode", "eval_batches", "find_files", "iter_table",
           "load_data", "load_labelled_split", "read_table", "read_texts", "resolve_path", "token_lengths",
           "train_batches"]


@dataclass
class Split:
    """One split: texts (and optional second texts for pair tasks) with their labels (ids, a 0/1
    label matrix, or float scores, by task)."""

    texts: Sequence[str]  # a list, or a TextColumn on the data cache's mapped table
    labels: np.ndarray
    pairs: Optional[Sequence[str]] = None
    source: str = ""
    rows: Optional[np.ndarray] = None  # each text's row in its file (0-based, after the header): what users look up

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: Sequence[int]) -> "Split":
        idx = np.asarray(idx, dtype=np.int64)
        return Split(_take(self.texts, idx), self.labels[idx],
                     _take(self.pairs, idx) if self.pairs is not None else None,
                     self.source, self.rows[idx] if self.rows is not None else None)


def _take(texts, idx: np.ndarray):
    """Rows of a text column: a cached column stays a view on its table; a list stays a list."""
    take = getattr(texts, "take", None)
    return take(idx) if take is not None else [texts[i] for i in idx.tolist()]


@dataclass
class Data:
    splits: dict[str, Split]
    labels: LabelSet
    notes: list[str] = field(default_factory=list)
    task: str = "single-label"

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


def _labelled_rows(df, cols: list[str], cfg: DataConfig, names: Optional[list[str]], where: str,
                   what: str, task: type[Task]) -> tuple[list[list[str]], list]:
    """Text columns and labels (as `task` reads them) of a labelled table that must not be empty (`what` names it)."""
    if len(df) == 0:
        raise DataError(f"{where}: {what} has no rows")
    return read_texts(df, cols, where), task.read_labels(df, cfg, names, where)


def _text_columns(cfg: DataConfig) -> list[str]:
    cols = [cfg.text_column] if isinstance(cfg.text_column, str) else list(cfg.text_column)
    if not 1 <= len(cols) <= 2:
        raise DataError("data.text_column: give one column, or two for sentence-pair tasks")
    return cols


def _stratified_subset(labels: np.ndarray, n: int, seed: int, task: type[Task]) -> np.ndarray:
    """Indices of a seeded sample of size n, stratified as the task says (sorted, so order is kept)."""
    if n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    strata = task.strata(labels)
    try:
        if strata is None:
            raise ValueError("nothing to stratify on")
        keep, _ = train_test_split(idx, train_size=n, stratify=strata, random_state=seed)
    except ValueError:  # a class too small to stratify (or multi-label): a plain seeded sample
        keep = np.random.default_rng(seed).choice(idx, size=n, replace=False)
    return np.sort(keep)


def _read_frames(cfg: DataConfig) -> tuple[dict[str, tuple[object, str]], Optional[list]]:
    """Every split's table and where it came from, plus label names a hub dataset declares."""
    frames: dict[str, tuple[object, str]] = {}
    hub_names = None
    if cfg.path and cfg.path.startswith("hf:"):
        hub = _hf_load(cfg.path[3:])
        for split, df in hub.items():
            frames[split] = (df, f"{cfg.path}[{split}]")
            hub_names = hub_names or df.attrs.get("label_names")
    for split, path in find_files(cfg).items():
        frames[split] = (read_table(path, cfg.format), shown(path))
    return frames, hub_names


def load_data(cfg: DataConfig, seed: int = 42, task: str = "auto") -> Data:
    """Read, validate and encode the labels of all splits named by the config, for `task` (auto: see
    :func:`loraclf.tasks.labels.detect_task`; the resolved task is ``Data.task``). The task reads the
    label column; everything here is the same for every task. Files go through the data cache
    (data/store.py) unless ``data.cache`` is off; hub datasets and files it cannot hold are read in memory."""
    streamed = _load_cached(cfg, seed, task) if cfg.cache and not (cfg.path or "").startswith("hf:") else None
    if streamed is not None:
        return streamed
    cols = _text_columns(cfg)
    frames, hub_names = _read_frames(cfg)
    name, detected = detect_task(task, cfg, *frames["train"])
    kind = task_class(name)
    names_cfg = list(cfg.label_names) if cfg.label_names else hub_names
    keep = [str(x) for x in cfg.include_labels] if cfg.include_labels else None
    raw: dict[str, tuple[list[list[str]], list, str]] = {}
    for split, (df, where) in frames.items():
        raw[split] = _raw_split(df, cols, cfg, names_cfg, keep, where, split, kind)
    labels = kind.label_set(cfg, raw["train"][1], names_cfg, keep, raw["train"][2])
    if cfg.max_labels is not None and len(labels) > cfg.max_labels:
        raise DataError(f"{raw['train'][2]}: train has {len(labels):,} labels, more than data.max_labels="
                        f"{cfg.max_labels:,} (for {len(raw['train'][1]):,} rows); set data.max_labels=null to allow it")
    splits = {split: _split_of(*raw[split], kind, labels, split) for split in raw}
    notes = [detected] if detected else []
    _carve_and_cap(splits, cfg, seed, kind, notes)
    return Data(splits, labels, notes, name)


def _raw_split(df, cols, cfg, names_cfg, keep, where, split, kind):
    """One table's text columns (row numbers riding along as a last column, so a task that drops rows
    for data.include_labels drops their numbers too) and raw labels."""
    texts, labels = _labelled_rows(df, cols, cfg, names_cfg, where, f"the {split} split", kind)
    texts.append(list(range(len(df))))
    if keep is not None:
        texts, labels = kind.keep_labels(texts, labels, keep, where)
    return texts, labels, where


def _split_of(texts, labs, where, kind, labels: LabelSet, split: str) -> Split:
    return Split(texts[0], kind.label_array(labs, labels, where, split), texts[1] if len(texts) > 2 else None,
                 where, np.asarray(texts[-1], dtype=np.int64))


def _load_cached(cfg: DataConfig, seed: int, task: str) -> Optional[Data]:
    """load_data through the data cache; None when train is a file the cache cannot hold."""
    from . import store

    cols = _text_columns(cfg)
    files = find_files(cfg)
    names_cfg = list(cfg.label_names) if cfg.label_names else None
    keep = [str(x) for x in cfg.include_labels] if cfg.include_labels else None
    try:
        train = store.labelled_file(files["train"], cfg, cols, task, names_cfg, keep, None, "train",
                                    shown(files["train"]))
    except store.NotStreamable:
        return None
    labels, kind = LabelSet(train.names), task_class(train.task)
    splits = {"train": _prepared_split(train, shown(files["train"]))}
    for split, path in files.items():
        if split == "train":
            continue
        try:
            prep = store.labelled_file(path, cfg, cols, train.task, names_cfg, keep, labels, split, shown(path))
            splits[split] = _prepared_split(prep, shown(path))
        except store.NotStreamable:
            raw = _raw_split(read_table(path, cfg.format), cols, cfg, names_cfg, keep, shown(path), split, kind)
            splits[split] = _split_of(*raw, kind, labels, split)
    notes = [train.note] if train.note else []
    _carve_and_cap(splits, cfg, seed, kind, notes)
    return Data(splits, labels, notes, train.task)


def _prepared_split(p, where: str) -> Split:
    return Split(p.texts, p.labels, p.pairs, where, p.rows)


def _carve_and_cap(splits: dict[str, Split], cfg: DataConfig, seed: int, kind: type[Task], notes: list[str]) -> None:
    """A validation split carved from train when there is none, then each split's cap (seeded samples)."""
    if "validation" not in splits:
        splits["train"], splits["validation"] = carve_validation(splits["train"], cfg.validation_fraction, seed, kind)
        if kind.single_class(splits["train"].labels):
            raise DataError(f"{splits['train'].source}: after carving {len(splits['validation'])} row(s) for "
                            "validation, train holds a single class; give more rows or a validation file")
        notes.append(f"validation carved from train: {cfg.validation_fraction:.0%}, "
                     f"{'stratified, ' if kind.strata(splits['train'].labels) is not None else ''}seed {seed}")
    caps = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples, "test": cfg.max_test_samples}
    for split, cap in caps.items():
        if cap is not None and split in splits and len(splits[split]) > cap:
            splits[split] = splits[split].take(_stratified_subset(splits[split].labels, cap, seed, kind))
            how = "stratified, " if kind.strata(splits[split].labels) is not None else ""
            notes.append(f"{split} capped at {cap} rows ({how}seed {seed})")


def load_labelled_split(cfg: DataConfig, split: str = "test", task: Optional[type[Task]] = None, table=None
                        ) -> tuple[list[str], Optional[list[str]], list, str]:
    """One labelled split as (texts, pairs, label names, source) for evaluating a trained model.

    `data.path` may be a single file (used whatever `split` says) or a folder; `table` (a DataFrame) replaces
    both. Nothing is carved, capped or filtered, so every row is scored.
    """
    cols = _text_columns(cfg)
    names = list(cfg.label_names) if cfg.label_names else None
    if table is not None:
        df, where = table, "the DataFrame"
    else:
        df, where, hub_names = _labelled_table(cfg, split)
        names = names or hub_names
    texts, labels = _labelled_rows(df, cols, cfg, names, where, "the file", task or task_class(None))
    return texts[0], texts[1] if len(texts) > 1 else None, labels, where


def _labelled_table(cfg: DataConfig, split: str):
    """The table `split` of a data section names, where it came from, and a hub dataset's label names."""
    explicit = getattr(cfg, split, None)
    if explicit:
        path: Optional[Path] = _explicit_file(explicit, split)
    elif cfg.path and cfg.path.startswith("hf:"):
        hub = _hf_load(cfg.path[3:])
        if split not in hub:
            raise DataError(f"{cfg.path}: the dataset has no {split} split (splits: {', '.join(hub)})")
        return hub[split], f"{cfg.path}[{split}]", hub[split].attrs.get("label_names")
    elif cfg.path:
        root = resolve_path(cfg.path)
        path = root if root.is_file() else _find_split_file(root, split)
        if path is None:
            raise DataError(f"{root}: no {split} file found (expected {split}.csv, {split}.jsonl, ...)")
    else:
        raise DataError("no data: give a dataset folder or file")
    return read_table(path, cfg.format), shown(path), None


def carve_validation(train: Split, fraction: float, seed: int, task: type[Task]) -> tuple[Split, Split]:
    """A seeded hold-out of `fraction` of train, stratified as the task says."""
    n_val = max(1, int(round(len(train) * fraction)))
    if n_val >= len(train):
        raise DataError(f"{train.source}: too few rows ({len(train)}) to carve a validation split")
    held = np.zeros(len(train), dtype=bool)
    held[_stratified_subset(train.labels, n_val, seed + 1, task)] = True
    return train.take(np.flatnonzero(~held)), train.take(np.flatnonzero(held))
