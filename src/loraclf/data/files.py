"""Finding and reading data files: split folders, CSV/TSV/JSONL/JSON/Parquet (compressed too), hub
datasets, and the one reader of text columns. Every way a file can be bad is one DataError that names
the file, row and field."""

from __future__ import annotations

import lzma
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from ..errors import DataError
from .remote import is_url, local_copy, shown

if TYPE_CHECKING:
    from ..config import DataConfig


SPLITS = ("train", "validation", "test")


SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}


# compressed files are read by suffix, and fixed copies (loraclf audit --fix) written back the same way
COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


DATASETS_ENV = "LORACLF_DATASETS"


DEFAULT_DATASETS_ROOT = "../shared/datasets"


def datasets_root() -> Path:
    """Where bare dataset names are looked up: $LORACLF_DATASETS, default ../shared/datasets."""
    return Path(os.environ.get(DATASETS_ENV, DEFAULT_DATASETS_ROOT))


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in EXTENSIONS:
        return EXTENSIONS[suffixes[-1]]
    raise DataError(
        f"{shown(path)}: cannot tell the format from the extension; set data.format (csv, tsv, jsonl, json, parquet)"
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


def resolve_path(path: str, what: str = "data path") -> Path:
    """A path as given, a bare dataset name under the datasets root, or the local copy of a remote file
    (a URL: s3://, gs://, https://, ...; see data/remote.py)."""
    if is_url(path):
        return local_copy(path, what)
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
    if is_url(explicit):
        return local_copy(explicit, f"data.{split}")
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
        raise DataError(f"{shown(path)}: the header names column {dupes[0]!r} {header.count(dupes[0])} times; "
                        "rename the columns so each name is used once")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    """A JSON object whose keys are all different: {"text": "a", "text": "b"} would silently keep "b"
    (as a CSV with two `text` columns is refused, so is this)."""
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


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
                obj = json.loads(line, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as e:
                raise DataError(f"{shown(path)}: line {lineno} is not valid JSON ({e.msg})") from None
            except RecursionError:
                raise DataError(f"{shown(path)}: line {lineno} is nested too deeply to be a row of text and "
                                "label") from None
            except _DuplicateKey as e:
                raise DataError(f"{shown(path)}: line {lineno} gives the key {e.args[0]!r} twice; give each "
                                "field once") from None
            if not isinstance(obj, dict):
                raise DataError(f"{shown(path)}: line {lineno} is not a JSON object (got {type(obj).__name__})")
            rows.append(obj)
            if chunk_rows and len(rows) == chunk_rows:
                yield pd.DataFrame(rows)
                rows = []
    if rows or not chunk_rows:
        yield pd.DataFrame(rows)


def _json_frame(path: Path):
    """A JSON file (records, or pandas' column layout) as a DataFrame; a key given twice in an object, or
    nesting too deep for a table, is refused as in JSON Lines."""
    import io
    import json

    import pandas as pd

    with _open_text(path) as fh:
        text = fh.read()
    try:
        json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise DataError(f"{shown(path)}: nested too deeply to be a table of texts and labels") from None
    except _DuplicateKey as e:
        raise DataError(f"{shown(path)}: an object gives the key {e.args[0]!r} twice; give each field once") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{shown(path)}: not valid JSON ({e.msg}, line {e.lineno})") from None
    return pd.read_json(io.StringIO(text), dtype=False)


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
        yield _json_frame(path)
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
    where = shown(path)
    try:
        yield from _frames(path, kind, chunk_rows)
    except UnicodeDecodeError:
        raise DataError(f"{where}: not valid UTF-8 text at {_bad_bytes_location(path)}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{where}: the file is empty") from None
    except ImportError as e:
        raise DataError(f"{where}: reading it needs an optional package ({e.name or e}); pip install it") from None
    except (EOFError, zlib.error, lzma.LZMAError) as e:
        raise DataError(f"{where}: the compressed file is damaged or truncated ({type(e).__name__})") from None
    except (pd.errors.ParserError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{where}: cannot parse as {kind}: {first}") from None


def read_table(path: Path, fmt: str = "auto"):
    """A whole file as one DataFrame (see :func:`iter_table`)."""
    return next(iter_table(path, fmt, chunk_rows=None))


def write_table(df, path: Path, like: Path, fmt: str = "auto") -> None:
    """Write `df` to `path` in the format (and compression) of the file `like` it was read from, so that
    it reads back as `like` did; a reader sees the old file or the new one, never half of one."""
    kind = _format_of(like, fmt)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    compression = COMPRESSION.get(like.suffix.lower())
    try:
        if kind in ("csv", "tsv"):
            df.to_csv(tmp, sep="," if kind == "csv" else "\t", index=False, compression=compression)
        elif kind in ("jsonl", "json"):
            df.to_json(tmp, orient="records", lines=kind == "jsonl", force_ascii=False, compression=compression,
                       double_precision=15)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except (TypeError, ValueError) as e:  # pyarrow's ArrowTypeError/ArrowInvalid are among these
        raise DataError(f"{path}: cannot write it as {kind} ({str(e).splitlines()[0][:200]})") from None
    finally:
        tmp.unlink(missing_ok=True)


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
