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
        return _dataset_frame(obj)
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


def _dataset_frame(ds):
    """A datasets.Dataset as a DataFrame; ClassLabel ids become their names (one label or a sequence of them)."""
    df = ds.to_pandas()
    names = None
    for col, feat in ds.features.items():
        inner = getattr(feat, "feature", None)
        if hasattr(feat, "names"):  # ClassLabel: integer ids in the column
            names = names or list(feat.names)
        elif inner is not None and hasattr(inner, "names"):  # Sequence(ClassLabel): multi-label ids
            df[col] = [[inner.names[i] for i in row] for row in df[col]]
    return df, names


def split_dict(obj) -> Optional[dict]:
    """The splits of a `datasets.DatasetDict` (or a plain dict whose keys are split names), else None."""
    from .files import SPLIT_ALIASES

    if not isinstance(obj, dict) or not obj:
        return None
    keys = {alias: split for split, aliases in SPLIT_ALIASES.items() for alias in aliases}
    if not all(isinstance(k, str) and k in keys for k in obj):
        return None
    if type(obj).__module__.startswith("datasets") or not all(isinstance(v, (list, tuple)) for v in obj.values()):
        return {keys[k]: v for k, v in obj.items()}
    return None  # a dict of columns named like splits is still columns


def _portable(df):
    """Label lists (multi-label) as JSON text, which every reader of the saved file takes the same way."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object and any(isinstance(v, (list, tuple)) or hasattr(v, "tolist")
                                            for v in out[col].head(50)):
            out[col] = [json.dumps(list(v.tolist() if hasattr(v, "tolist") else v)) for v in out[col]]
    return out


def save_frames(frames: dict, root: Path) -> Path:
    """Write {split: DataFrame} as Parquet in a folder named by the hash of their contents, under `root`;
    returns the folder (which a config's data.path can name)."""
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=root, prefix=".partial-"))
    digest = hashlib.sha256()
    try:
        for split in sorted(frames):
            path = stage / f"{split}.parquet"
            _portable(frames[split]).to_parquet(path, index=False)
            digest.update(split.encode() + path.read_bytes())
        final = root / f"dataframe-{digest.hexdigest()[:12]}"
        if final.is_dir():  # the same data, saved by an earlier run
            return final
        os.replace(stage, final)
        return final
    finally:
        if stage.exists():
            import shutil

            shutil.rmtree(stage, ignore_errors=True)
