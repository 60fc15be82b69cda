"""Streaming prediction: texts are read, labelled and written a chunk at a time, so memory stays
flat with the input's size, and the output appears under its name only once it is complete.

Everything that can be checked before the model loads is: the output's folder, the input file, its
columns (the first chunk is read first).
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..config import default
from ..data import CHUNK_ROWS, iter_table, read_texts
from ..data.remote import is_url, local_copy, local_output, shown
from ..data.remote import output as remote_output
from ..errors import LoraclfError


@dataclass
class Chunk:
    texts: list[str]
    pairs: Optional[list[str]] = None
    ids: Optional[list] = None


def check_output(path: Optional[str], inputs: Sequence[Optional[str]] = ()) -> None:
    """An output file that can be written, checked before any work is done: never one of the inputs
    (through a link or another spelling of its path), never a folder, in a folder that exists."""
    if path is None:
        return
    if is_url(path):  # written locally, uploaded when complete: the protocol, and that it is no input
        if path in inputs:
            raise LoraclfError(f"--output {path} is the input: writing it would destroy the texts being read; "
                               "choose another output")
        local_output(path)
        return
    p = Path(path)
    if p.is_dir():
        raise LoraclfError(f"--output {p} is a folder; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise LoraclfError(f"--output: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LoraclfError(f"--output: no permission to write in {parent}")
    for given in inputs:
        if given and Path(given).exists() and p.exists() and os.path.samefile(given, p):
            raise LoraclfError(f"--output {p} is the input {given}: writing it would destroy the texts being read; "
                               "choose another output file")


def _file_chunks(path: Path, fmt: str, cols: Sequence[str], id_column: Optional[str]) -> Iterator[Chunk]:
    row = 1
    for df in iter_table(path, fmt, CHUNK_ROWS):
        texts = read_texts(df, list(cols), shown(path), hint="use --text-column", first_row=row)
        ids = None
        if id_column:
            if id_column not in df.columns:
                raise LoraclfError(f"{shown(path)}: no id column '{id_column}' (columns: "
                                   f"{', '.join(map(str, df.columns))})")
            ids = df[id_column].tolist()
        row += len(df)
        yield Chunk(texts[0], texts[1] if len(texts) > 1 else None, ids)


def _stdin_chunks() -> Iterator[Chunk]:
    texts: list[str] = []
    for line in sys.stdin:
        if line.strip():
            texts.append(line.rstrip("\r\n"))
            if len(texts) == CHUNK_ROWS:
                yield Chunk(texts)
                texts = []
    if texts:
        yield Chunk(texts)


def input_chunks(path: Optional[str], fmt: str, cols: Sequence[str], id_column: Optional[str]) -> Iterator[Chunk]:
    """Chunks of texts (and second texts, ids) from a file, or one text per line from stdin. The
    first chunk is read at once, so a missing file or column fails before the model loads."""
    if path:
        p = local_copy(path, "--input") if is_url(path) else Path(path)
        if not p.is_file():
            raise LoraclfError(f"--input: file not found: {p}")
        chunks = _file_chunks(p, fmt, cols, id_column)
    else:
        if len(cols) > 1:
            raise LoraclfError(f"this model takes text pairs ({', '.join(cols)}): give them in a file with --input")
        if id_column:
            raise LoraclfError("--id-column needs --input")
        if sys.stdin.isatty():
            print("reading texts from stdin, one per line (Ctrl-D to end)", file=sys.stderr)
        chunks = _stdin_chunks()
    first = next(chunks, None)
    return chain([first], chunks) if first is not None else iter(())


def _write(out, clf, chunks: Iterator[Chunk], id_column: Optional[str], batch_size: int, bar) -> int:
    w = csv.writer(out, lineterminator="\n")  # not the csv module's '\r\n'
    w.writerow([id_column, "label"] if id_column else ["text", *clf.task.answer_columns()])
    n = 0
    for c in chunks:
        probs = clf.predict_proba(c.texts, batch_size, c.pairs)
        if id_column:  # a Kaggle-style submission: id and answer only
            w.writerows(zip(c.ids, clf.task.predicted(probs)))
        else:
            w.writerows([t, *row] for t, row in zip(c.texts, clf.task.answers(probs)))
        n += len(c.texts)
        bar.update(len(c.texts))
    return n


def _remove_stale_partials(final: Path) -> None:
    """Temporary outputs of predict processes that were killed (their pid no longer runs)."""
    for p in final.parent.glob(f".{final.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            p.unlink(missing_ok=True)
        except PermissionError:  # alive, someone else's
            pass


def predict_csv(clf, chunks: Iterator[Chunk], output: Optional[str], id_column: Optional[str] = None,
                batch_size: int = default("train.eval_batch_size"), progress: bool = False) -> int:
    """Label every chunk and write the CSV to `output` (stdout when None); returns the number of texts.
    A file is written under a temporary name and renamed at the end: a crash leaves no partial output."""
    from ..console import progress as progress_bar

    if output is not None and is_url(output):  # s3://, gs://, ...: written locally, then uploaded whole
        with remote_output(output) as local:
            return predict_csv(clf, chunks, local, id_column, batch_size, progress)
    bar = progress_bar(desc="predict", unit="text", disable=not progress, leave=False)
    try:
        if output is None:
            return _write(sys.stdout, clf, chunks, id_column, batch_size, bar)
        final = Path(output)
        _remove_stale_partials(final)
        tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                n = _write(fh, clf, chunks, id_column, batch_size, bar)
            os.replace(tmp, final)
            return n
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        bar.close()


def read_thresholds(path: str, meta: dict) -> dict:
    """`predict --thresholds`: a JSON object {label: threshold}, or a metrics.json whose `thresholds`
    block holds one; checked by the model's task (against its labels) before the model is loaded."""
    import json

    from ..tasks import make_task

    task = make_task(meta["task"], meta["labels"])
    if not task.decision_thresholds:
        raise LoraclfError(f"--thresholds applies to models with decision thresholds (multi-label); this one is "
                           f"{task.name}")
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise LoraclfError(f"--thresholds {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError):
        raise LoraclfError(f"--thresholds {path}: not a JSON file") from None
    if isinstance(values, dict) and isinstance(values.get("thresholds"), dict):
        values = values["thresholds"].get("values", values["thresholds"])
    task.set_thresholds(values)  # refuses a file that does not fit the labels
    return values
