"""The on-disk data cache: a data file is parsed and validated once into a memory-mapped Arrow table, its
labels are encoded once, and (data/tokens.py) its token ids are computed once; later runs, sweeps and
search trials open those files instead of reading the CSV again.

Every entry is a folder named by the hash of what it was computed from (the file's path, size and
modification time, the data options that change the result, a format version). It is written under a
temporary name and renamed into place, so a reader sees a whole entry or none; a manifest holds each
file's size and CRC-32, and an entry that fails them is deleted and rebuilt, never trusted. Two runs that
miss the same entry at once both build it and the second rename is dropped.

Texts stay out of Python lists: a :class:`TextColumn` reads rows from the mapped table on demand, so
the process holds only the pages it touches (which the OS can drop), whatever the number of rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..errors import DataError

CACHE_VERSION = 1
CACHE_ENV = "LORACLF_CACHE"  # the same root as converted model weights (models/registry.py)
DATA_CACHE_ENV = "LORACLF_DATA_CACHE"  # the data cache alone, elsewhere
READ_ROWS = 65_536  # rows parsed, validated and written at a time: memory per chunk, not per file


def cache_root() -> Path:
    """$LORACLF_DATA_CACHE, else $LORACLF_CACHE/data, else $XDG_CACHE_HOME/loraclf/data or ~/.cache/loraclf/data."""
    if os.environ.get(DATA_CACHE_ENV):
        return Path(os.environ[DATA_CACHE_ENV]).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "data"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "loraclf" / "data"


def digest(obj: Any) -> str:
    """A stable short hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def file_fingerprint(path: Path) -> str:
    """What identifies a file's content without reading it: its resolved path, size and modification time
    (the rule `datasets` and make use; touching a file invalidates its entries)."""
    st = Path(path).stat()
    return digest([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            crc = zlib.crc32(block, crc)
    return crc


_VERIFIED: dict[str, tuple] = {}  # entries this process has checked whole, with their files' stats then


def _stats(folder: Path) -> tuple:
    """Each file's name, size and modification time: a file rewritten since the check is checked again."""
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()))


class Entry:
    """One cache folder: `ready()` checks it whole; `build()` writes it under a temporary name and renames."""

    def __init__(self, kind: str, key: Any):
        from .._version import __version__

        # loraclf's version too: an upgrade may read, check or encode differently, so it never reuses old entries
        self.key = {"v": CACHE_VERSION, "loraclf": __version__, "kind": kind, **key}
        self.dir = cache_root() / kind / digest(self.key)

    @property
    def fingerprint(self) -> str:
        return self.dir.name

    def ready(self) -> bool:
        """True when every file the manifest names is there with its size and CRC; a damaged entry is removed.
        An entry is checked once per process (a run opens the same token entry for stats and for encoding)."""
        manifest = self.dir / "manifest.json"
        if not manifest.exists():
            return False
        if _VERIFIED.get(str(self.dir)) == _stats(self.dir):
            return True
        try:
            files = json.loads(manifest.read_text())["files"]
            ok = all((self.dir / name).stat().st_size == size and _crc(self.dir / name) == crc
                     for name, (size, crc) in files.items())
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            import logging

            logging.getLogger("loraclf").warning("data cache entry %s is damaged; rebuilding it", self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            _VERIFIED[str(self.dir)] = _stats(self.dir)
        return ok

    @contextmanager
    def build(self) -> Iterator[Path]:
        """A temporary folder to write the entry's files into; on success it becomes the entry."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.dir.parent / f".{self.dir.name}.tmp-{os.getpid()}-{id(self)}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
            files = {p.name: [p.stat().st_size, _crc(p)] for p in sorted(tmp.iterdir())}
            (tmp / "manifest.json").write_text(json.dumps({"key": self.key, "files": files}, default=str))
            try:
                os.rename(tmp, self.dir)
            except OSError:  # another process renamed the same entry first: theirs is as good
                if not (self.dir / "manifest.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class TextColumn(Sequence):
    """A column of texts read from a memory-mapped Arrow table, optionally through a row selection.

    Indexing and iteration read rows on demand; `take` composes selections without copying texts.
    `fingerprint` names the table (with the selection it identifies exactly which texts these are),
    which is what the token cache is keyed by."""

    def __init__(self, array, fingerprint: str, idx: Optional[np.ndarray] = None):
        self.array, self.fingerprint, self.idx = array, fingerprint, idx

    def __len__(self) -> int:
        return len(self.idx) if self.idx is not None else len(self.array)

    def base_rows(self, positions: np.ndarray) -> np.ndarray:
        """Rows of the underlying table for positions in this column."""
        return self.idx[positions] if self.idx is not None else positions

    def rows(self, positions: np.ndarray) -> list[str]:
        return take_rows(self.array, self.base_rows(np.asarray(positions, dtype=np.int64)))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.rows(np.arange(len(self))[i])
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        i = int(i) % n
        return self.array[int(self.idx[i]) if self.idx is not None else i].as_py()

    def __iter__(self):
        for start in range(0, len(self), READ_ROWS):
            yield from self.rows(np.arange(start, min(len(self), start + READ_ROWS)))

    def __add__(self, other) -> list:
        return list(self) + list(other)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    __hash__ = None  # mutable-free but compared by content, like a list

    def take(self, idx) -> "TextColumn":
        return TextColumn(self.array, self.fingerprint, self.base_rows(np.asarray(idx, dtype=np.int64)))

    def base_len(self) -> int:
        return len(self.array)

    def __repr__(self) -> str:
        return f"TextColumn({len(self)} texts of table {self.fingerprint})"


def take_rows(array, rows: np.ndarray) -> list:
    """Values of a (chunked) Arrow array at `rows`, reading only the chunks they fall in: pyarrow's
    ChunkedArray.take concatenates every chunk first, a copy of the whole column per call."""
    import pyarrow as pa

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return []
    if rows[-1] - rows[0] == len(rows) - 1 and (len(rows) == 1 or bool((np.diff(rows) == 1).all())):
        return array.slice(int(rows[0]), len(rows)).to_pylist()  # a contiguous range: zero-copy slice
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    starts = np.cumsum([0] + [len(c) for c in chunks])
    which = np.searchsorted(starts, rows, side="right") - 1
    out: list = [None] * len(rows)
    for c in np.unique(which).tolist():
        sel = np.flatnonzero(which == c)
        for i, v in zip(sel.tolist(), chunks[c].take(pa.array(rows[sel] - starts[c])).to_pylist()):
            out[i] = v
    return out


def open_table(path: Path):
    """A memory-mapped Arrow IPC file as a Table (its pages are read when touched)."""
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


@contextmanager
def rows_from(offset: int):
    """Error messages of readers that count rows from 1 within the chunk they get, moved to the file's count."""
    try:
        yield
    except DataError as e:
        msg = re.sub(r"\brow (\d+)\b", lambda m: f"row {int(m.group(1)) + offset}", str(e), count=1)
        raise DataError(msg) from None


# ---------------------------------------------------------------- the text table of one file


@dataclass
class Table:
    """A file read once: its text columns (validated), each row's number, and the raw label columns."""

    table: Any
    fingerprint: str
    text_columns: list[str]
    label_columns: list[str]

    def texts(self, col: str) -> TextColumn:
        return TextColumn(self.table.column(col), f"{self.fingerprint}:{col}")

    def label_frames(self) -> Iterator[tuple[int, Any]]:
        """(first row offset, DataFrame of the label columns) per stored chunk, as the task readers expect."""
        offset = 0
        for batch in self.table.select(self.label_columns).to_batches(max_chunksize=READ_ROWS):
            yield offset, batch.to_pandas()
            offset += batch.num_rows


class NotStreamable(Exception):
    """A file the cache cannot hold faithfully (e.g. a JSON column of mixed types): read it in memory."""


def text_table(path: Path, fmt: str, cols: list[str], label_cols: list[str], where: str) -> Table:
    """The cached table of `path` (text columns checked as :func:`read_texts` checks them), built on a miss."""
    entry = Entry("tables", {"file": file_fingerprint(path), "format": fmt, "text": cols, "labels": label_cols})
    ensure(entry, lambda out: _write_table(out / "table.arrow", path, fmt, cols, label_cols, where))
    return Table(open_table(entry.dir / "table.arrow"), entry.fingerprint, cols, label_cols)


def _write_table(out: Path, path: Path, fmt: str, cols: list[str], label_cols: list[str], where: str) -> None:
    import pyarrow as pa

    from .files import iter_table, read_texts

    writer, schema, offset = None, None, 0
    try:
        for df in iter_table(path, fmt, chunk_rows=READ_ROWS):
            if any(c not in df.columns for c in label_cols):
                raise NotStreamable("a label column is missing: the in-memory reader names it")
            texts = read_texts(df, cols, where, first_row=offset + 1)
            arrays = {c: pa.array(t, type=pa.large_string()) for c, t in zip(cols, texts)}
            arrays["__row__"] = pa.array(np.arange(offset, offset + len(df), dtype=np.int64))
            batch = pa.RecordBatch.from_pydict({**arrays, **_label_arrays(df, label_cols, schema)})
            if writer is None:
                schema = batch.schema
                writer = pa.ipc.new_file(str(out), schema)
            writer.write_batch(batch)
            offset += len(df)
    finally:
        if writer is not None:
            writer.close()
    if writer is None or offset == 0:
        raise NotStreamable("no rows: the in-memory reader says so")


def _label_arrays(df, label_cols: list[str], schema) -> dict:
    """The raw label columns as Arrow arrays of the first chunk's types (CSV cells are strings or empty)."""
    import pyarrow as pa

    out = {}
    for c in label_cols:
        want = schema.field(c).type if schema is not None else None
        try:
            arr = pa.array(df[c].tolist(), from_pandas=True)
            if want is not None and arr.type != want:
                if pa.types.is_null(arr.type):
                    arr = pa.nulls(len(arr), want)
                elif pa.types.is_integer(arr.type) and pa.types.is_floating(want):
                    arr = arr.cast(want)
                else:  # another cast could change a value ("01" -> 1, 2 -> true): read the file in memory
                    raise NotStreamable(f"column {c!r} changes type between chunks ({want} then {arr.type})")
            elif want is None and pa.types.is_null(arr.type):
                arr = arr.cast(pa.large_string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise NotStreamable(f"column {c!r}: {e}") from None
        out[c] = arr
    return out


def ensure(entry: Entry, write: Callable[[Path], None]) -> None:
    """Build `entry` when it is missing. In a distributed job every process calls this (the decision is
    collective, else one would wait at a barrier the others skipped): the main process builds while the
    others wait, then they build it themselves only if they cannot see it (no shared filesystem)."""
    rank, world = distributed()
    if world == 1:
        if not entry.ready():
            with entry.build() as out:
                write(out)
        return
    try:
        if rank == 0 and not entry.ready():
            with entry.build() as out:
                write(out)
    finally:  # a failure on the main process must not leave the others waiting: they fail the same way
        barrier(world)
    if rank != 0 and not entry.ready():
        with entry.build() as out:
            write(out)


def distributed() -> tuple[int, int]:
    """(rank, world size) of a running torch.distributed job, else (0, 1)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a core dependency
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------- labels of one file, encoded


@dataclass
class Prepared:
    """A labelled file as a split: texts (and pairs) on the mapped table, label array, row numbers."""

    texts: TextColumn
    pairs: Optional[TextColumn]
    labels: np.ndarray
    rows: np.ndarray
    task: str
    note: Optional[str]
    names: list[str]


def labelled_file(path: Path, cfg, cols: list[str], task: str, names_cfg: Optional[list], keep: Optional[list[str]],
                  label_set, split: str, where: str) -> Prepared:
    """A file's split from the cache: train resolves the task and its LabelSet; other splits are encoded
    against `label_set` (train's). Raises NotStreamable for files the cache cannot hold."""
    label_cols = list(cfg.label_columns) if cfg.label_columns else [cfg.label_column]
    table = text_table(path, cfg.format, cols, label_cols, where)
    names = None if label_set is None else list(label_set.names)
    key = {"table": table.fingerprint, "task": task, "split": "train" if label_set is None else "other",
           "names": names, "names_cfg": names_cfg, "keep": keep, "sep": cfg.label_separator,
           "max_labels": cfg.max_labels}
    entry = Entry("labels", key)
    ensure(entry, lambda out: _write_labels(out, table, cfg, task, names_cfg, keep, label_set, split, where))
    meta = json.loads((entry.dir / "meta.json").read_text())
    labels = np.load(entry.dir / "labels.npy", mmap_mode="r")
    kept = np.load(entry.dir / "kept.npy") if (entry.dir / "kept.npy").exists() else None
    rows = table.table.column("__row__").to_numpy()
    texts = [table.texts(c) for c in cols]
    if kept is not None:
        texts, rows = [t.take(kept) for t in texts], rows[kept]
    return Prepared(texts[0], texts[1] if len(texts) > 1 else None, labels, rows, meta["task"], meta["note"],
                    meta["names"])


def _write_labels(out: Path, table: Table, cfg, task: str, names_cfg, keep, label_set, split: str, where: str) -> None:
    from ..tasks import task_class
    from ..tasks.labels import detect_task_in_chunks

    note = None
    if task == "auto":
        task, note = detect_task_in_chunks(cfg, (df for _, df in table.label_frames()), where)
    kind = task_class(task)
    if label_set is None:
        label_set = kind.label_set(cfg, _distinct(table, kind, cfg, names_cfg, keep, where), names_cfg, keep, where)
        if cfg.max_labels is not None and len(label_set) > cfg.max_labels:
            raise DataError(f"{where}: train has {len(label_set):,} labels, more than data.max_labels="
                            f"{cfg.max_labels:,} (for {table.table.num_rows:,} rows); set data.max_labels=null to "
                            "allow it")
    ids, kept_rows, n = [], [], 0
    for _, raw, positions in _kept_labels(table, kind, cfg, names_cfg, keep, where):
        with rows_from(n):
            ids.append(kind.label_array(raw, label_set, where, split))
        kept_rows.append(positions)
        n += len(raw)
    if n == 0:
        raise DataError(f"{where}: no rows left after data.include_labels={keep}")
    np.save(out / "labels.npy", np.concatenate(ids))
    kept = np.concatenate(kept_rows)
    if len(kept) < table.table.num_rows:
        np.save(out / "kept.npy", kept)
    (out / "meta.json").write_text(json.dumps({"task": task, "note": note, "names": list(label_set.names)}))


def _kept_labels(table: Table, kind, cfg, names_cfg, keep, where: str):
    """(offset, raw labels of the kept rows, their table rows) per chunk, as the task reads them."""
    for offset, df in table.label_frames():
        with rows_from(offset):
            raw = kind.read_labels(df, cfg, names_cfg, where)
        positions = np.arange(offset, offset + len(raw), dtype=np.int64)
        if keep is not None:
            try:
                (kept_pos,), raw = kind.keep_labels([positions.tolist()], raw, keep, where)
            except DataError:  # no row of this chunk kept; the whole split is checked once at the end
                kept_pos, raw = [], []
            positions = np.asarray(kept_pos, dtype=np.int64)
        yield offset, raw, positions


def _distinct(table: Table, kind, cfg, names_cfg, keep, where: str) -> list:
    """Train's distinct labels in order of first appearance (up to what the task needs to build its LabelSet)."""
    seen: dict = {}
    kept = 0
    for _, raw, _ in _kept_labels(table, kind, cfg, names_cfg, keep, where):
        kept += len(raw)
        for lab in raw:
            seen.setdefault(tuple(lab) if isinstance(lab, list) else lab, lab)
        if kind.distinct_needed is not None and len(seen) >= kind.distinct_needed:
            break
    if not kept:
        raise DataError(f"{where}: no rows left after data.include_labels={keep}")
    return list(seen.values())
