"""Data: find, read and validate splits; label maps; tokenisation; length-grouped batching.

Local files are read with pandas so that errors can name the file, row and field; hub datasets
(``hf:<id>``) go through ``datasets``. The result is a small in-memory structure: a list of texts
and a label array per split (ids, a 0/1 matrix for multi-label, or scores; see labels.py), plus a
:class:`LabelSet`.
"""

from __future__ import annotations

import lzma
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from .config import LENGTH_GROUP_BATCHES, DataConfig
from .errors import DataError

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
DATASETS_ENV = "LORACLF_DATASETS"
DEFAULT_DATASETS_ROOT = "../shared/datasets"


def datasets_root() -> Path:
    """Where bare dataset names are looked up: $LORACLF_DATASETS, default ../shared/datasets."""
    return Path(os.environ.get(DATASETS_ENV, DEFAULT_DATASETS_ROOT))


@dataclass
class LabelSet:
    """Label names in id order, with lookups both ways."""

    names: list[str]

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        if len(set(self.names)) != len(self.names):
            raise DataError(f"label names must be unique, got {self.names}")
        self.to_id = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))


@dataclass
class Split:
    """One split: texts (and optional second texts for pair tasks) with their labels (ids, a 0/1
    label matrix, or float scores, by task)."""

    texts: list[str]
    labels: np.ndarray
    pairs: Optional[list[str]] = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: Sequence[int]) -> "Split":
        idx = list(idx)
        return Split(
            [self.texts[i] for i in idx],
            self.labels[idx],
            [self.pairs[i] for i in idx] if self.pairs is not None else None,
            self.source,
        )


@dataclass
class Data:
    splits: dict[str, Split]
    labels: LabelSet
    notes: list[str] = field(default_factory=list)
    task: str = "single-label"

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


# --------------------------------------------------------------------------- finding files


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst"):
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in EXTENSIONS:
        return EXTENSIONS[suffixes[-1]]
    raise DataError(
        f"{path}: cannot tell the format from the extension; set data.format (csv, tsv, jsonl, json, parquet)"
    )


def _find_split_file(folder: Path, split: str) -> Optional[Path]:
    for stem in SPLIT_ALIASES[split]:
        for p in sorted(folder.glob(f"{stem}.*")):
            try:
                _format_of(p, "auto")
            except DataError:
                continue
            return p
    return None


def resolve_path(path: str) -> Path:
    """A path as given, or a bare dataset name under the datasets root."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    alt = datasets_root() / path
    if alt.exists():
        return alt
    raise DataError(
        f"data path not found: {path} (also looked in {datasets_root()}; set ${DATASETS_ENV} to change that)"
    )


def _explicit_file(explicit: str, split: str) -> Path:
    """A per-split option (data.train, data.test, ...): looked up like data.path, as given or under
    the datasets root."""
    try:
        return resolve_path(explicit)
    except DataError:
        raise DataError(f"data.{split}: file not found: {Path(explicit).expanduser()}") from None


def find_files(cfg: DataConfig) -> dict[str, Path]:
    """Map split name to file from data.path and/or the explicit per-split options."""
    files: dict[str, Path] = {}
    if cfg.path and not cfg.path.startswith("hf:"):
        root = resolve_path(cfg.path)
        if root.is_dir():
            for split in SPLITS:
                f = _find_split_file(root, split)
                if f is not None:
                    files[split] = f
            if "train" not in files and not cfg.train:
                raise DataError(f"{root}: no train file found (expected train.csv, train.jsonl, train.parquet, ...)")
        else:
            files["train"] = root
    for split in SPLITS:
        explicit = getattr(cfg, split)
        if explicit:
            files[split] = _explicit_file(explicit, split)
    if "train" not in files and not (cfg.path or "").startswith("hf:"):
        raise DataError("no training data: set data.path (folder, file or hf:<id>) or data.train")
    return files


# --------------------------------------------------------------------------- reading


def _bad_bytes_location(path: Path) -> str:
    """Find the line of the first byte sequence that is not UTF-8 (for an error message)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"line {lineno}, byte {e.start}"
    return "unknown line"


CHUNK_ROWS = 8192  # rows read, predicted and written at a time by streaming prediction


def _open_text(path: Path):
    """A text handle on a plain or gzip/bz2/xz-compressed file, UTF-8 (a BOM is dropped)."""
    import bz2
    import gzip

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)
    return opener(path, "rt", encoding="utf-8-sig", newline="")


def _check_header(path: Path, sep: str) -> None:
    """Two columns of one name would be read as 'text' and 'text.1', and training would use the first."""
    import csv

    with _open_text(path) as fh:
        header = next(csv.reader(fh, delimiter=sep), [])
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: the header names column {dupes[0]!r} {header.count(dupes[0])} times; "
                        "rename the columns so each name is used once")


def _jsonl_frames(path: Path, chunk_rows: Optional[int]) -> Iterator:
    """JSON Lines, one object a line; a bad line is named by its number, not a byte offset."""
    import json

    import pandas as pd

    rows: list[dict] = []
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {lineno} is not a JSON object (got {type(obj).__name__})")
            rows.append(obj)
            if chunk_rows and len(rows) == chunk_rows:
                yield pd.DataFrame(rows)
                rows = []
    if rows or not chunk_rows:
        yield pd.DataFrame(rows)


def _frames(path: Path, kind: str, chunk_rows: Optional[int]) -> Iterator:
    import pandas as pd

    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        _check_header(path, sep)
        read = pd.read_csv(path, sep=sep, encoding="utf-8", keep_default_na=False, na_values=[""], dtype=str,
                           chunksize=chunk_rows)
        yield from (read if chunk_rows else [read])
    elif kind == "jsonl":
        yield from _jsonl_frames(path, chunk_rows)
    elif kind == "json":
        yield pd.read_json(path, encoding="utf-8", dtype=False)
    elif chunk_rows:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
    else:
        yield pd.read_parquet(path)


def iter_table(path: Path, fmt: str = "auto", chunk_rows: Optional[int] = CHUNK_ROWS) -> Iterator:
    """A CSV/TSV/JSONL/JSON/Parquet file (optionally compressed) as DataFrames of at most
    `chunk_rows` rows (None: one frame); every way the file can be bad is one DataError."""
    import pandas as pd

    kind = _format_of(path, fmt)
    try:
        yield from _frames(path, kind, chunk_rows)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8 text at {_bad_bytes_location(path)}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except ImportError as e:
        raise DataError(f"{path}: reading it needs an optional package ({e.name or e}); pip install it") from None
    except (EOFError, zlib.error, lzma.LZMAError) as e:
        raise DataError(f"{path}: the compressed file is damaged or truncated ({type(e).__name__})") from None
    except (pd.errors.ParserError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot parse as {kind}: {first}") from None


def read_table(path: Path, fmt: str = "auto"):
    """A whole file as one DataFrame (see :func:`iter_table`)."""
    return next(iter_table(path, fmt, chunk_rows=None))


def _hf_load(ident: str):
    """Load a hub dataset as {split: DataFrame}. Needs network unless cached."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise DataError("hf: datasets need the 'datasets' package") from None
    try:
        dd = datasets.load_dataset(ident)
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        raise DataError(
            f"hf:{ident}: cannot load from the hub ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    out = {}
    for split in SPLITS:
        for name in SPLIT_ALIASES[split]:
            if name in dd:
                ds = dd[name]
                df = ds.to_pandas()
                feat = ds.features.get("label")
                if feat is not None and hasattr(feat, "names"):
                    df.attrs["label_names"] = list(feat.names)
                out[split] = df
                break
    if "train" not in out:
        raise DataError(f"hf:{ident}: the dataset has no train split (splits: {list(dd)})")
    return out


def read_texts(df, cols: list[str], where: str, hint: str = "set data.text_column",
               first_row: int = 1) -> list[list[str]]:
    """The text columns of a table, every value a non-empty string; errors name the file, row
    (counted from `first_row`) and column. The one reader of texts for training, evaluation and prediction."""
    import pandas as pd

    out = []
    for col in cols:
        if col not in df.columns:
            raise DataError(f"{where}: no column '{col}' (columns: {', '.join(map(str, df.columns))}); {hint}")
        values = df[col].tolist()
        for i, v in enumerate(values):
            if v is None or (isinstance(v, float) and np.isnan(v)) or (v is pd.NA):
                raise DataError(f"{where}: row {i + first_row} has an empty '{col}' (NaN/missing)")
            if not isinstance(v, str):
                v = str(v)
                values[i] = v
            if "\x00" in v:  # a binary file, or a damaged line that would read as a missing label
                raise DataError(f"{where}: row {i + first_row} has a NUL byte in '{col}'; is it a text file?")
            if not v.strip():
                raise DataError(f"{where}: row {i + first_row} has an empty '{col}'")
        out.append(values)
    return out


def _raw_labels(df, col: str, where: str) -> list:
    if col not in df.columns:
        raise DataError(
            f"{where}: no column '{col}' (columns: {', '.join(map(str, df.columns))}); set data.label_column"
        )
    values = df[col].tolist()
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()):
            raise DataError(f"{where}: row {i + 1} has no '{col}' value")
    return values


def _is_number(v) -> bool:
    try:
        float(v)
        return not isinstance(v, bool)
    except (TypeError, ValueError):
        return False


def _normalise_label(v, names: Optional[list[str]]) -> str:
    """Integer labels (or digit strings) map through label_names when given."""
    if isinstance(v, (bool, np.bool_)):
        v = int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        v = int(v)
    if names is not None:
        if isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()):
            i = int(v)
            if not 0 <= i < len(names):
                raise KeyError(f"label id {i} outside 0..{len(names) - 1} of data.label_names")
            return str(names[i])
        if _is_number(v) and str(v).strip() not in names:  # 0.5 with names: a score, not a class id
            raise KeyError(f"label {str(v).strip()} is not an integer label id (data.label_names maps ids "
                           f"0..{len(names) - 1} to names)")
    return str(v).strip() if isinstance(v, str) else str(v)


def _label_names(df, col: str, names: Optional[list[str]], where: str) -> list[str]:
    """Every row's label as a name (integer ids map through `names`); errors name the row."""
    out = []
    for i, v in enumerate(_raw_labels(df, col, where)):
        try:
            out.append(_normalise_label(v, names))
        except KeyError as e:
            raise DataError(f"{where}: row {i + 1}: {e.args[0]}") from None
    return out


def _row_labels(kind: str, df, cfg: DataConfig, names: Optional[list[str]], where: str) -> list:
    """Every row's label as the task reads it: a name, a list of names, or a number."""
    from . import labels as lb

    if kind == "regression":
        return lb.scores(df, cfg.label_column, where)
    if kind == "multi-label":
        return lb.label_sets(df, cfg, names, where, _normalise_label)
    return _label_names(df, cfg.label_column, names, where)


def _labelled_rows(df, cols: list[str], cfg: DataConfig, names: Optional[list[str]], where: str,
                   what: str, kind: str = "single-label") -> tuple[list[list[str]], list]:
    """Text columns and labels of a labelled table that must not be empty (`what` names it)."""
    if len(df) == 0:
        raise DataError(f"{where}: {what} has no rows")
    return read_texts(df, cols, where), _row_labels(kind, df, cfg, names, where)


def _text_columns(cfg: DataConfig) -> list[str]:
    cols = [cfg.text_column] if isinstance(cfg.text_column, str) else list(cfg.text_column)
    if not 1 <= len(cols) <= 2:
        raise DataError("data.text_column: give one column, or two for sentence-pair tasks")
    return cols


def _strata(labels: np.ndarray) -> Optional[np.ndarray]:
    """What a sample is stratified on: the class (single-label), a quantile bin of the score
    (regression), or nothing (multi-label: label sets are too many to stratify on)."""
    if labels.ndim == 2:
        return None
    if labels.dtype.kind == "f":
        edges = np.unique(np.quantile(labels, np.linspace(0, 1, 11)[1:-1]))
        return np.digitize(labels, edges)
    return labels


def _stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded, label-stratified sample of size n (sorted, so order is kept)."""
    if n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    strata = _strata(labels)
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
        frames[split] = (read_table(path, cfg.format), str(path))
    return frames, hub_names


def _kept(kind: str, texts: list[list[str]], labels: list, keep: list[str], where: str):
    """data.include_labels: single-label keeps the rows with those labels; multi-label keeps every
    row and drops the other labels from its set (a row may be left with none, which is valid)."""
    if kind == "multi-label":
        return texts, [[lab for lab in row if lab in keep] for row in labels]
    rows = [i for i, lab in enumerate(labels) if lab in keep]
    if not rows:
        raise DataError(f"{where}: no rows left after data.include_labels={keep}")
    return [[col[i] for i in rows] for col in texts], [labels[i] for i in rows]


def _label_set(kind: str, cfg: DataConfig, train: list, names_cfg: Optional[list], keep, where: str) -> LabelSet:
    """The labels a run learns, checked against train: every label must occur there."""
    if kind == "regression":
        if len(set(train)) < 2:
            raise DataError(f"{where}: every train score is {train[0]}; regression needs at least two values")
        return LabelSet([cfg.label_column])
    seen = {lab for row in train for lab in row} if kind == "multi-label" else set(train)
    if cfg.label_columns:
        names_cfg = list(cfg.label_columns)
    if keep is not None and names_cfg is not None:
        names_cfg = [n for n in names_cfg if str(n) in keep]
    if names_cfg is not None:
        names = [str(n) for n in names_cfg]
        unknown = sorted(seen - set(names))
        if unknown:
            raise DataError(f"{where}: labels {unknown[:5]} are not in data.label_names {names}")
        unseen = [n for n in names if n not in seen]
        if unseen:  # a class that train never shows cannot be learned, only predicted at random
            source = "data.label_columns" if cfg.label_columns else "data.label_names"
            raise DataError(f"{where}: label {unseen[0]!r} of {source} never occurs in train; drop it from {source} "
                            "(or data.include_labels)")
    else:
        names = sorted(seen)
    if kind == "single-label" and len(seen) < 2:
        raise DataError(f"{where}: train has a single class ({next(iter(seen))!r}); classification needs at least two")
    if kind == "multi-label" and not names:
        raise DataError(f"{where}: no train row has a label; multi-label training needs some")
    joined = [n for n in names if ";" in n] if kind == "multi-label" else []
    if joined:  # label sets are written joined by ';' (predictions, `loraclf predict`)
        raise DataError(f"{where}: label {joined[0]!r} contains ';', which separates labels in loraclf's outputs")
    return LabelSet(names)


def _label_array(kind: str, labs: list, labels: LabelSet, where: str, split: str) -> np.ndarray:
    """A split's labels as the loop batches them: ids, a 0/1 matrix, or float scores."""
    from .labels import multi_hot

    if kind == "regression":
        return np.asarray(labs, dtype=np.float32)
    if kind == "multi-label":
        return multi_hot(labs, labels.to_id, where, split)
    for i, lab in enumerate(labs):
        if lab not in labels.to_id:
            what = "train lacks it" if split != "train" else "not in data.label_names"
            raise DataError(f"{where}: row {i + 1} has label {lab!r}, which {what} (labels: {', '.join(labels.names)})")
    return np.array([labels.to_id[lab] for lab in labs], dtype=np.int64)


def _too_few_classes(labels: np.ndarray) -> bool:
    return labels.ndim == 1 and labels.dtype.kind == "i" and len(np.unique(labels)) < 2


def load_data(cfg: DataConfig, seed: int = 42, task: str = "auto") -> Data:
    """Read, validate and encode the labels of all splits named by the config, for `task` (auto: see
    :func:`labels.detect_task`; the resolved task is ``Data.task``)."""
    from .labels import detect_task

    cols = _text_columns(cfg)
    frames, hub_names = _read_frames(cfg)
    kind, detected = detect_task(task, cfg, *frames["train"])
    if kind == "regression" and cfg.include_labels:
        raise DataError("data.include_labels selects classes; a regression task has none")
    names_cfg = list(cfg.label_names) if cfg.label_names else hub_names
    keep = [str(x) for x in cfg.include_labels] if cfg.include_labels else None
    raw: dict[str, tuple[list[list[str]], list, str]] = {}
    for split, (df, where) in frames.items():
        texts, labels = _labelled_rows(df, cols, cfg, names_cfg, where, f"the {split} split", kind)
        if keep is not None:
            texts, labels = _kept(kind, texts, labels, keep, where)
        raw[split] = (texts, labels, where)
    labels = _label_set(kind, cfg, raw["train"][1], names_cfg, keep, raw["train"][2])
    splits = {split: Split(texts[0], _label_array(kind, labs, labels, where, split),
                           texts[1] if len(texts) > 1 else None, where)
              for split, (texts, labs, where) in raw.items()}

    notes = [detected] if detected else []
    if "validation" not in splits:
        splits["train"], splits["validation"] = carve_validation(splits["train"], cfg.validation_fraction, seed)
        if _too_few_classes(splits["train"].labels):
            raise DataError(f"{splits['train'].source}: after carving {len(splits['validation'])} row(s) for "
                            "validation, train holds a single class; give more rows or a validation file")
        notes.append(f"validation carved from train: {cfg.validation_fraction:.0%}, "
                     f"{'stratified, ' if _strata(splits['train'].labels) is not None else ''}seed {seed}")
    caps = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples, "test": cfg.max_test_samples}
    for split, cap in caps.items():
        if cap is not None and split in splits and len(splits[split]) > cap:
            splits[split] = splits[split].take(_stratified_subset(splits[split].labels, cap, seed))
            how = "stratified, " if _strata(splits[split].labels) is not None else ""
            notes.append(f"{split} capped at {cap} rows ({how}seed {seed})")
    return Data(splits, labels, notes, kind)


def load_labelled_split(cfg: DataConfig, split: str = "test", kind: str = "single-label"
                        ) -> tuple[list[str], Optional[list[str]], list, str]:
    """One labelled split as (texts, pairs, label names, source) for evaluating a trained model.

    `data.path` may be a single file (used whatever `split` says) or a folder; nothing is carved,
    capped or filtered, so every row of the file is scored.
    """
    cols = _text_columns(cfg)
    explicit = getattr(cfg, split, None)
    names = list(cfg.label_names) if cfg.label_names else None
    if explicit:
        path: Optional[Path] = _explicit_file(explicit, split)
    elif cfg.path and cfg.path.startswith("hf:"):
        hub = _hf_load(cfg.path[3:])
        if split not in hub:
            raise DataError(f"{cfg.path}: the dataset has no {split} split (splits: {', '.join(hub)})")
        path, df, where = None, hub[split], f"{cfg.path}[{split}]"
        names = names or df.attrs.get("label_names")
    elif cfg.path:
        root = resolve_path(cfg.path)
        path = root if root.is_file() else _find_split_file(root, split)
        if path is None:
            raise DataError(f"{root}: no {split} file found (expected {split}.csv, {split}.jsonl, ...)")
    else:
        raise DataError("no data: give a dataset folder or file")
    if path is not None:
        df, where = read_table(path, cfg.format), str(path)
    texts, labels = _labelled_rows(df, cols, cfg, names, where, "the file", kind)
    return texts[0], texts[1] if len(texts) > 1 else None, labels, where


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Stratified, seeded hold-out of `fraction` of train as validation."""
    n_val = max(1, int(round(len(train) * fraction)))
    if n_val >= len(train):
        raise DataError(f"{train.source}: too few rows ({len(train)}) to carve a validation split")
    val_idx = set(_stratified_subset(train.labels, n_val, seed + 1).tolist())
    tr = [i for i in range(len(train)) if i not in val_idx]
    return train.take(tr), train.take(sorted(val_idx))


# --------------------------------------------------------------------------- tokenisation & batching


@dataclass
class Encoded:
    """Token ids per example (unpadded) plus labels; token_type_ids only for pair inputs."""

    input_ids: list[list[int]]
    labels: np.ndarray
    token_type_ids: Optional[list[list[int]]] = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(tokenizer, texts: Sequence[str], labels, max_length: int, pairs: Optional[Sequence[str]] = None,
           batch: int = 4096) -> Encoded:
    """Tokenise without padding (padding happens per batch)."""
    ids, types = [], []
    want_types = pairs is not None and "token_type_ids" in getattr(tokenizer, "model_input_names", [])
    for start in range(0, len(texts), batch):
        chunk = list(texts[start:start + batch])
        pchunk = list(pairs[start:start + batch]) if pairs is not None else None
        enc = tokenizer(chunk, pchunk, truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=want_types)
        ids.extend(enc["input_ids"])
        if want_types:
            types.extend(enc["token_type_ids"])
    # A text made only of characters the tokenizer drops would give an empty row: keep one token.
    filler = next(
        (t for t in (tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None), 0
    )
    for i, row in enumerate(ids):
        if not row:
            ids[i] = [filler]
            if want_types:
                types[i] = [0]
    lab = np.asarray(labels) if labels is not None else np.zeros(len(ids), dtype=np.int64)
    return Encoded(ids, lab, types if want_types else None)


def token_lengths(tokenizer, texts: Sequence[str], batch: int = 4096) -> np.ndarray:
    """Untruncated token counts (for length filters and statistics)."""
    out = []
    for start in range(0, len(texts), batch):
        enc = tokenizer(list(texts[start:start + batch]), truncation=False, padding=False,
                        return_attention_mask=False, verbose=False)
        out.extend(len(x) for x in enc["input_ids"])
    return np.asarray(out, dtype=np.int64)


class Collator:
    """Pads a list of example indices to the longest member, on the tokenizer's padding side."""

    def __init__(self, enc: Encoded, pad_id: int, left: bool = False, pad_to_multiple_of: Optional[int] = None,
                 max_width: Optional[int] = None):
        self.enc, self.pad_id, self.left, self.multiple = enc, pad_id, left, pad_to_multiple_of
        self.max_width = max_width  # rounding up never pads past this (the tokenizer's max_length)

    def __call__(self, batch_idx: list[int]) -> dict:
        import torch

        if len(batch_idx) == 1 and isinstance(batch_idx[0], (list, tuple)):
            batch_idx = list(batch_idx[0])
        seqs = [self.enc.input_ids[i] for i in batch_idx]
        width = max(len(s) for s in seqs)
        if self.multiple and self.multiple > 1:
            rounded = -(-width // self.multiple) * self.multiple
            width = max(width, min(rounded, self.max_width)) if self.max_width else rounded
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        types = np.zeros((len(seqs), width), dtype=np.int64) if self.enc.token_type_ids is not None else None
        for row, (i, s) in enumerate(zip(batch_idx, seqs)):
            sl = slice(width - len(s), width) if self.left else slice(0, len(s))
            ids[row, sl] = s
            mask[row, sl] = 1
            if types is not None:
                types[row, sl] = self.enc.token_type_ids[i]
        out = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(self.enc.labels[batch_idx]),
            "idx": torch.tensor(batch_idx, dtype=torch.long),
        }
        if types is not None:
            out["token_type_ids"] = torch.from_numpy(types)
        return out


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool,
                  mega: int = LENGTH_GROUP_BATCHES) -> list[list[int]]:
    """The batch order for one epoch: deterministic in (seed, epoch).

    With grouping, a seeded permutation is cut into mega-batches of `mega` batches, each sorted by
    length and cut into batches, and the batch order is shuffled. Batches hold texts of similar
    length (little padding) while the data order stays random.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    if not group_by_length:
        return [perm[i:i + batch_size].tolist() for i in range(0, len(perm), batch_size)]
    batches = []
    span = batch_size * mega
    for s in range(0, len(perm), span):
        chunk = perm[s:s + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Batches sorted by length (longest first) so each is padded as little as possible."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]

