"""In-memory data for the Python API: pandas DataFrames, `datasets.Dataset`s, lists of (text, label)
tuples or dicts, and dicts of columns, as DataFrames; and saving them where a config can name them.

A run trained from memory must be reproducible from its config.yaml like any other, so the tables are
written once as Parquet under ``<output_dir>/.data/dataframe-<hash>/`` (the hash of their contents:
the same data is stored once, whatever number of runs use it) and the config names that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from ..errors import InputError

KINDS = "a pandas DataFrame, a datasets.Dataset, a list of (text, label) tuples or of dicts, a dict of columns, " \
        "or a path"


def is_path(obj) -> bool:
    return isinstance(obj, (str, os.PathLike))


def as_frame(obj, columns: Sequence[str], what: str):
    """`obj` as (DataFrame, label names it declares or None). `columns` name the fields of tuples: the text
    column(s) then the label column."""
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return obj, None
    if type(obj).__module__.startswith("datasets") and hasattr(obj, "to_pandas") and hasattr(obj, "features"):
        return _dataset_frame(obj, columns[-1])
    if isinstance(obj, dict):
        try:
            return pd.DataFrame(obj), None
        except ValueError as e:
            raise InputError(f"{what}: a dict of columns needs lists of one length ({e})") from None
    if isinstance(obj, (list, tuple)) and obj:
        first = obj[0]
        if isinstance(first, dict):
            return pd.DataFrame(list(obj)), None
        if isinstance(first, (tuple, list)):
            return _tuple_frame(obj, columns, what), None
    if isinstance(obj, (list, tuple)):
        raise InputError(f"{what}: {'an empty list' if not obj else 'a list of ' + type(obj[0]).__name__}; "
                         f"give {KINDS}")
    raise InputError(f"{what}: got {type(obj).__name__}; give {KINDS}")


def _tuple_frame(rows, columns: Sequence[str], what: str):
    import pandas as pd

    bad = next((i for i, r in enumerate(rows) if not isinstance(r, (tuple, list)) or len(r) != len(columns)), None)
    if bad is not None:
        raise InputError(f"{what}: row {bad + 1} is not a tuple of {len(columns)} ({', '.join(columns)}): "
                         f"{rows[bad]!r:.80}")
    return pd.DataFrame([list(r) for r in rows], columns=list(columns))


def _dataset_frame(ds, label_column: str):
    """A datasets.Dataset as a DataFrame, the label column's ClassLabel ids as their names (one label or a
    sequence of them); the names, in id order, are returned too (they fix the label ids)."""
    df = ds.to_pandas()
    feat = ds.features.get(label_column)
    inner = getattr(feat, "feature", None)
    if hasattr(feat, "names"):  # ClassLabel: integer ids in the column
        df[label_column] = [feat.names[i] if i is not None and i >= 0 else None for i in df[label_column]]
        return df, list(feat.names)
    if inner is not None and hasattr(inner, "names"):  # Sequence(ClassLabel): multi-label ids
        df[label_column] = [[inner.names[i] for i in row] for row in df[label_column]]
        return df, list(inner.names)
    return df, None


def split_dict(obj) -> Optional[dict]:
    """The splits of a `datasets.DatasetDict` (or a plain dict of splits: its keys split names, its values
    tables or lists of rows), else None. A DatasetDict's other splits (IMDB's "unsupervised") are left out,
    and said."""
    from .files import SPLIT_ALIASES

    if not isinstance(obj, dict) or not obj:
        return None
    keys = {alias: split for split, aliases in SPLIT_ALIASES.items() for alias in aliases}
    is_dataset_dict = type(obj).__module__.startswith("datasets")
    rows = all(not isinstance(v, (list, tuple)) or (v and isinstance(v[0], (tuple, list, dict))) for v in obj.values())
    if not is_dataset_dict and not (all(isinstance(k, str) and k in keys for k in obj) and rows):
        return None  # a dict of columns (even one whose columns are named like splits)
    other = [k for k in obj if k not in keys]
    if other:
        import logging

        logging.getLogger("loraclf").warning("splits %s left out (loraclf reads train, validation and test)",
                                             ", ".join(map(str, other)))
    return {keys[k]: v for k, v in obj.items() if k in keys}


def _portable(df):
    """Label lists (multi-label) as JSON text, which every reader of the saved file takes the same way; other
    columns as they are (a numpy string is a string, not a list of characters)."""
    import numpy as np

    out = df.copy()
    for col in out.columns:
        values = out[col].tolist()
        if out[col].dtype == object and any(isinstance(v, (list, tuple, np.ndarray)) for v in values):
            out[col] = [json.dumps([str(x) for x in v]) if isinstance(v, (list, tuple, np.ndarray)) else v
                        for v in values]
        elif out[col].dtype == object:
            out[col] = [v.item() if isinstance(v, np.generic) else v for v in values]
    return out


def save_frames(frames: dict, root: Path) -> Path:
    """Write {split: DataFrame} as Parquet in a folder named by the hash of their contents, under `root`;
    returns the folder. Several processes saving the same data at once end with one folder."""
    import shutil

    from ..errors import DataError
    from .remote import one_line

    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=root, prefix=".partial-"))
    digest = hashlib.sha256()
    try:
        for split in sorted(frames):
            path = stage / f"{split}.parquet"
            try:
                _portable(frames[split]).to_parquet(path, index=False)
            except (TypeError, ValueError) as e:  # pyarrow's ArrowTypeError/ArrowInvalid are among these
                raise DataError(f"{split}=...: a column mixes types that cannot be stored ({one_line(e)}); give "
                                "each column one type (texts as strings)") from None
            digest.update(split.encode() + path.read_bytes())
        final = root / f"dataframe-{digest.hexdigest()[:12]}"
        try:
            os.replace(stage, final)
        except OSError:
            if not final.is_dir():  # not another process that saved the same data first
                raise
        return final
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def row_columns(text_column, label_column: str) -> list[str]:
    """The fields of a row given as a tuple: the text column(s), then the label column."""
    return ([text_column] if isinstance(text_column, str) else list(text_column)) + [label_column]


def place_tables(splits: dict, tree: dict, named: str = "fit({split}=...)") -> dict:
    """Dotted data fields naming each split of `splits` (split -> a path, or in-memory data) for the config
    `tree` (a mapping of sections): in-memory tables saved under <output_dir>/.data/ and each named as
    data.<split> (the config's other splits stay as they were); a dataset folder, name or hf:<id> given as the
    only split is data.path; paths are made absolute, so config.yaml reruns from any folder."""

    data = tree.get("data") or {}
    cols = row_columns(data.get("text_column", "text"), data.get("label_column", "label"))
    out: dict = {}
    frames, names = {}, None
    for split, obj in splits.items():
        if is_path(obj):
            out[f"data.{split}"] = _absolute(os.fspath(obj))
        else:
            frames[split], declared = as_frame(obj, cols, named.format(split=split))
            names = names or declared
    if list(splits) == ["train"] and not frames and _is_dataset(out["data.train"]):
        out = {"data.path": out.pop("data.train")}
    if frames:
        folder = save_frames(frames, Path(tree.get("output_dir") or "runs").resolve() / ".data")
        out.update({f"data.{s}": str(folder / f"{s}.parquet") for s in frames})
    if names and not data.get("label_names"):
        out["data.label_names"] = names  # a Dataset's ClassLabel names, in id order
    return out


def _absolute(path: str) -> str:
    from .remote import is_url

    if is_url(path) or path.startswith("hf:") or not Path(path).expanduser().exists():
        return path  # a URL, a hub dataset, or a name under $LORACLF_DATASETS
    return str(Path(path).expanduser().resolve())


def _is_dataset(path: str) -> bool:
    """A dataset folder, a bare dataset name or hf:<id> (data.path), rather than one file (data.train)."""
    from .files import datasets_root
    from .remote import is_url

    if path.startswith("hf:"):
        return True
    return not is_url(path) and (Path(path).expanduser().is_dir() or (datasets_root() / path).is_dir())


def in_memory_splits(tree: dict) -> dict:
    """The splits a config mapping gives as data rather than paths (data.train: a DataFrame, ...)."""
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    return {s: data[s] for s in ("train", "validation", "test") if data.get(s) is not None and not is_path(data[s])}
