"""Token ids computed once and kept in the data cache (data/store.py), memory-mapped.

An entry is keyed by the table its texts come from, the tokenizer (a hash of its full definition), the
truncation length and the input shape. It covers the whole table when a split uses at least half of
its rows (so a capped or re-carved split with another seed still hits), else exactly the split's rows.
It is built in pieces of PIECE_ROWS rows, spread over the processes of a distributed job (each rank
tokenizes its own pieces, never the others') and, within a process, over `data.num_proc` forked
workers. Each piece stores flat int32 ids with row offsets and each row's untruncated length, so the
length statistics, the length filter and length-grouped batching never tokenize again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .store import Entry, TextColumn, barrier, digest, distributed, take_rows

PIECE_ROWS = 65_536
SUB_BATCH = 4096  # texts per tokenizer call inside a piece
SAMPLE_CHECK = 256  # rows whose cut ids are compared with the tokenizer's own truncation before a build


class TokenColumn(Sequence):
    """Token ids per row, read from the mapped pieces; `lengths` without reading any ids."""

    def __init__(self, ids: list, offsets: list, idx: Optional[np.ndarray]):
        self.ids, self.offsets, self.idx = ids, offsets, idx
        self._lengths: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.idx) if self.idx is not None else sum(len(o) - 1 for o in self.offsets)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        i = int(i) % n
        row = int(self.idx[i]) if self.idx is not None else i
        p, k = divmod(row, PIECE_ROWS)
        off = self.offsets[p]
        return self.ids[p][off[k]:off[k + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:  # once: every epoch's batch order reads it
            all_lengths = np.concatenate([np.diff(o) for o in self.offsets]).astype(np.int32)
            self._lengths = all_lengths[self.idx] if self.idx is not None else all_lengths
        return self._lengths


def tokenizer_fingerprint(tokenizer) -> Optional[str]:
    """A hash of everything that decides a fast tokenizer's output; None for a slow one (not cached)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    h = hashlib.sha256(_backend_digest(backend).encode())
    h.update(repr((type(tokenizer).__name__, tokenizer.truncation_side, tokenizer.all_special_ids,
                   getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None))).encode())
    return h.hexdigest()[:24]


_BACKEND_DIGEST: list = []  # [(backend, key, digest)] of the last tokenizer hashed


def _backend_digest(backend) -> str:
    """The hash of a backend tokenizer's definition (about 0.15 s for a BERT vocabulary): a run asks for it
    once per split. It is kept for the last tokenizer, held alive so its id cannot pass to another, while
    every part that can change in place reads the same: the model's settings (its repr, about 1 ms), the
    added tokens with their flags, the vocabulary size, the normalizer, pre- and post-processor, decoder."""
    import json

    key = (backend.get_vocab_size(with_added_tokens=True), repr(backend.model),
           repr(backend.get_added_tokens_decoder()), repr(backend.normalizer), repr(backend.pre_tokenizer),
           repr(backend.post_processor), repr(backend.decoder))
    if not (_BACKEND_DIGEST and _BACKEND_DIGEST[0][0] is backend and _BACKEND_DIGEST[0][1] == key):
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None), spec.pop("padding", None)  # call settings the last call left, not the tokenizer
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        _BACKEND_DIGEST[:] = [(backend, key, digest)]
    return _BACKEND_DIGEST[0][2]


def cached_ids(tokenizer, texts: TextColumn, max_length: int, pairs: Optional[TextColumn] = None,
               num_proc: Optional[int] = None):
    """(ids, token types or None, untruncated lengths) of `texts` from the cache, built on a miss; None when
    the tokenizer cannot be cached."""
    tok_fp = tokenizer_fingerprint(tokenizer)
    if tok_fp is None:
        return None
    want_types = pairs is not None and "token_type_ids" in getattr(tokenizer, "model_input_names", [])
    whole = len(texts) * 2 >= texts.base_len()
    rows = np.arange(texts.base_len(), dtype=np.int64) if whole else texts.base_rows(np.arange(len(texts)))
    key = {"piece_rows": PIECE_ROWS, "texts": texts.fingerprint,
           "pairs": pairs.fingerprint if pairs is not None else None, "tokenizer": tok_fp,
           "max_length": max_length, "types": want_types,
           "rows": "all" if whole else hashlib.sha256(rows.tobytes()).hexdigest()[:24]}
    entry = Entry("tokens", key)
    if distributed()[1] > 1 or not entry.ready():  # in a job every rank takes part (barriers inside)
        job = _Job(tokenizer, texts, pairs, rows, max_length, want_types)
        try:
            _build(entry, job, num_proc)
        except OSError:  # a concurrent run assembled this entry (and removed the staging folder) first
            if not entry.ready():
                raise
    n_pieces = -(-len(rows) // PIECE_ROWS)
    load = [lambda name, p=p: np.load(entry.dir / f"{name}-{p:05d}.npy", mmap_mode="r") for p in range(n_pieces)]
    ids, offsets = [f("ids") for f in load], [np.asarray(f("off")) for f in load]
    sel = texts.idx if whole else None
    full = np.concatenate([np.asarray(f("full")) for f in load])
    # The tokenizer is left as a truncating call leaves it: transformers saves the backend's last truncation
    # settings (side included) into tokenizer.json, which is how an artifact's plain-transformers load
    # truncates as loraclf did; the cache's untruncated passes, or a hit with no call at all, would not.
    tokenizer("a", "a" if pairs is not None else None, truncation=True, max_length=max_length)
    col = TokenColumn(ids, offsets, sel)
    types = TokenColumn([f("types") for f in load], offsets, sel) if want_types else None
    return col, types, full[sel] if sel is not None else full


class _Job:
    """What a piece needs: forked workers inherit it (texts stay on the shared memory map)."""

    def __init__(self, tokenizer, texts, pairs, rows, max_length, want_types):
        self.tokenizer, self.texts, self.pairs, self.rows = tokenizer, texts, pairs, rows
        self.max_length, self.want_types = max_length, want_types
        self.cut = _cut_rule(tokenizer, texts, rows[:SAMPLE_CHECK], max_length) if pairs is None else None

    def piece(self, p: int, out: Path) -> int:
        """Tokenize piece p into `out`; returns its token count."""
        sel = self.rows[p * PIECE_ROWS:(p + 1) * PIECE_ROWS]
        texts = take_rows(self.texts.array, sel)
        pairs = take_rows(self.pairs.array, sel) if self.pairs is not None else None
        ids, types, full = [], [] if self.want_types else None, []
        for start in range(0, len(texts), SUB_BATCH):  # bounded memory for long documents
            part = _tokenize(self.tokenizer, texts[start:start + SUB_BATCH],
                             pairs[start:start + SUB_BATCH] if pairs is not None else None,
                             self.max_length, self.want_types, self.cut)
            ids.extend(part[0])
            if types is not None:
                types.extend(part[1])
            full.append(part[2])
        full = np.concatenate(full) if full else np.zeros(0, dtype=np.int64)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(lengths.sum()))
        _save(out, f"ids-{p:05d}.npy", flat)
        _save(out, f"off-{p:05d}.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        if types is not None:
            _save(out, f"types-{p:05d}.npy", np.fromiter((t for row in types for t in row), dtype=np.int8,
                                                         count=int(lengths.sum())))
        _save(out, f"full-{p:05d}.npy", full.astype(np.int32))  # last: its presence marks the piece whole
        return int(lengths.sum())


def _save(folder: Path, name: str, arr: np.ndarray) -> None:
    """Write-then-rename, so a piece another process sees is whole."""
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        np.save(fh, arr)
        fh.flush()
        os.fsync(fh.fileno())  # a piece another process (or a later run) sees is on disk whole
    os.replace(tmp, folder / name)


def _filler(tokenizer) -> int:
    """The id kept for a text the tokenizer reduces to nothing (batching.encode keeps the same)."""
    return next((t for t in (tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                 if t is not None), 0)


def _tokenize(tokenizer, texts, pairs, max_length: int, want_types: bool, cut: Optional[tuple[int, int]]):
    """(ids truncated to max_length, token types or None, untruncated lengths). With `cut`, one untruncated
    pass is cut here (`cut`: special tokens before and after the text) exactly as the tokenizer truncates,
    which was checked on a sample first; else two passes."""
    kw = dict(padding=False, return_attention_mask=False, verbose=False)
    if cut:
        full_ids = tokenizer(texts, truncation=False, **kw)["input_ids"]
        full = np.fromiter((len(x) for x in full_ids), dtype=np.int64, count=len(full_ids))
        ids, types = [_cut_one(x, max_length, cut, tokenizer.truncation_side) for x in full_ids], None
    else:
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, return_token_type_ids=want_types, **kw)
        ids, types = enc["input_ids"], enc.get("token_type_ids") if want_types else None
        lens = tokenizer(texts, pairs, truncation=False, **kw)["input_ids"]
        full = np.fromiter((len(x) for x in lens), dtype=np.int64, count=len(lens))
    filler = _filler(tokenizer)
    for i, row in enumerate(ids):
        if not row:
            ids[i] = [filler]
            if types is not None:
                types[i] = [0]
    return ids, types, full


def _specials(tokenizer) -> tuple[int, int]:
    """How many special tokens a single text gets before and after its own tokens."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    whole = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(whole) - len(bare) + 1):
        if whole[start:start + len(bare)] == bare:
            return start, len(whole) - start - len(bare)
    return -1, -1


def _cut_one(ids: list, max_length: int, specials: tuple[int, int], side: str) -> list:
    if len(ids) <= max_length:
        return ids
    head, tail = specials
    keep = max_length - head - tail
    body = ids[head:len(ids) - tail]
    body = body[:keep] if side == "right" else body[len(body) - keep:]
    return ids[:head] + body + ids[len(ids) - tail:]


def _cut_rule(tokenizer, texts: TextColumn, rows: np.ndarray, max_length: int) -> Optional[tuple[int, int]]:
    """The special-token counts to cut untruncated ids with, when that gives the tokenizer's own truncation
    on a sample of rows (plus one long text, so truncation is exercised); else None."""
    head, tail = _specials(tokenizer)
    if head < 0 or max_length <= head + tail:
        return None
    sample = take_rows(texts.array, rows) + [" ".join(["word"] * (max_length + 8))]
    own = tokenizer(sample, truncation=True, max_length=max_length, padding=False, verbose=False)["input_ids"]
    full = tokenizer(sample, truncation=False, padding=False, verbose=False)["input_ids"]
    side = tokenizer.truncation_side
    return (head, tail) if all(_cut_one(f, max_length, (head, tail), side) == o for f, o in zip(full, own)) else None


# ---------------------------------------------------------------- building an entry


_JOB: Optional[_Job] = None  # set in the parent before forking; workers read it


def _work(args) -> tuple[int, int, int]:
    p, out = args
    n = _JOB.piece(p, Path(out))
    return p, min(PIECE_ROWS, len(_JOB.rows) - p * PIECE_ROWS), n


def _build(entry: Entry, job: _Job, num_proc: Optional[int]) -> None:
    """Every rank tokenizes its own pieces into a shared staging folder; then the entry is assembled. A
    process that cannot see another's pieces (no shared filesystem) builds them itself."""
    rank, world = distributed()
    n_pieces = max(1, -(-len(job.rows) // PIECE_ROWS))
    staging = entry.dir.parent / f".{entry.dir.name}.pieces"
    failure: Optional[BaseException] = None  # kept until every barrier is passed: the others wait at them
    try:
        if not (entry.dir / "manifest.json").exists():
            staging.mkdir(parents=True, exist_ok=True)
            _pieces(job, staging, [p for p in range(n_pieces) if p % world == rank], num_proc, rank == 0)
    except Exception as e:  # noqa: BLE001 - raised after the barriers below
        failure = e
    barrier(world)
    for turn in range(world):  # rank 0 first; the others only when they cannot see its entry
        try:
            if turn == rank and failure is None and not entry.ready():
                staging.mkdir(parents=True, exist_ok=True)
                _pieces(job, staging, list(range(n_pieces)), num_proc, False)
                _assemble(entry, staging, n_pieces, job)
        except Exception as e:  # noqa: BLE001
            failure = failure or e
        barrier(world)
    if failure is not None:
        raise failure


def _missing(staging: Path, p: int, rows: int) -> bool:
    """A piece not staged whole (its last file absent, or its arrays disagree: left by a killed build)."""
    try:
        off = np.load(staging / f"off-{p:05d}.npy", mmap_mode="r")
        ids = np.load(staging / f"ids-{p:05d}.npy", mmap_mode="r")
        full = np.load(staging / f"full-{p:05d}.npy", mmap_mode="r")  # written last in a piece
        return not (len(off) == rows + 1 and int(off[-1]) == len(ids) and len(full) == rows)
    except (OSError, ValueError):
        return True


def _piece_rows(job: _Job, p: int) -> int:
    return min(PIECE_ROWS, len(job.rows) - p * PIECE_ROWS)


def _cores_per_rank() -> int:
    """The cores this process may use (its affinity, not the machine's count), shared by the ranks on it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(local, 1))


def _pieces(job: _Job, staging: Path, mine: list[int], num_proc: Optional[int], show: bool) -> None:
    """Tokenize the pieces in `mine` not yet staged, in forked workers when there are several."""
    import multiprocessing as mp

    from ..console import progress

    todo = [p for p in mine if _missing(staging, p, _piece_rows(job, p))]
    if not todo:
        return
    global _JOB
    _JOB = job
    procs = min(len(todo), num_proc or _cores_per_rank())
    total = sum(_piece_rows(job, p) for p in todo)
    bar = progress(total=total, desc="tokenize", unit="rows", disable=not show, leave=False)
    args = [(p, str(staging)) for p in todo]
    t0, tokens = time.perf_counter(), 0
    try:
        if procs > 1 and "fork" in mp.get_all_start_methods():
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # an executor, not a Pool: a worker killed (out of memory) raises BrokenProcessPool, never hangs
            with ProcessPoolExecutor(procs, mp_context=mp.get_context("fork")) as pool:
                for done in as_completed([pool.submit(_work, a) for a in args]):
                    _, rows, n = done.result()
                    bar.update(rows)
                    tokens += n
        else:
            for a in args:
                _, rows, n = _work(a)
                bar.update(rows)
                tokens += n
    finally:
        bar.close()
        _JOB = None
    job.stats = {"seconds": time.perf_counter() - t0, "tokens": tokens, "rows": total, "processes": procs}


def _assemble(entry: Entry, staging: Path, n_pieces: int, job: _Job) -> None:
    """Hard-link the staged pieces into the entry (racing builders each link; one rename wins)."""
    import json

    try:
        with entry.build() as out:
            for f in sorted(staging.iterdir()):
                if not f.name.startswith("."):
                    try:
                        os.link(f, out / f.name)
                    except PermissionError:  # a filesystem without hard links
                        shutil.copy2(f, out / f.name)
            (out / "build.json").write_text(json.dumps({**getattr(job, "stats", {}), "pieces": n_pieces,
                                                         "key": digest(entry.key)}))
    except OSError:
        if not entry.ready():
            raise
    shutil.rmtree(staging, ignore_errors=True)


def entry_stats(entry_dir: Path) -> dict:
    """What a build recorded (seconds, tokens, rows, processes), for benchmarks."""
    import json

    p = Path(entry_dir) / "build.json"
    return json.loads(p.read_text()) if p.exists() else {}
