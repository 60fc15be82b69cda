"""Long documents: what a text longer than ``data.max_length`` tokens becomes (``data.long_text``).

- ``truncate``: its first tokens, cut by the tokenizer (what loraclf always did; the same code path).
- ``head-tail``: its first ``head_tokens`` and its last tokens, one window of ``max_length``
  (Sun et al. 2019 found head plus tail the best single window on IMDB).
- ``chunks``: windows of at most ``max_length`` tokens (``chunk_overlap`` shared by neighbours) covering the
  whole text, each with the model's special tokens: full windows, the last moved back to end at the text's
  end, or the fewest windows of one even width (``chunk_windows``). Every window is scored and a
  document's logits are the mean or max of its windows' (``chunk_pool``).

A document is tokenized once, whole (up to SOURCE_TOKENS, through the data cache when it is on), and
cut here, so the cache holds one entry per tokenizer whatever the strategy. Training on chunks draws one
window per document per epoch (seeded by seed and epoch): a long document weighs what a short one does
and an epoch costs what truncating at ``max_length`` costs; over epochs the model sees different parts.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass, fields
from typing import Optional, Sequence

import numpy as np

from ..errors import ConfigError, ModelError
from .batching import Encoded, encode

STRATEGIES = ("truncate", "head-tail", "chunks")
SOURCE_TOKENS = 1 << 20  # a document is read whole up to this many tokens


@dataclass(frozen=True)
class Frame:
    """The special tokens a tokenizer puts around one text ([CLS] ... [SEP], <s> ... </s>, or none)."""

    prefix: tuple
    suffix: tuple

    def body(self, row) -> np.ndarray:
        """The text's own tokens of one encoded row."""
        row = np.asarray(row, dtype=np.int64)
        p, s = len(self.prefix), len(self.suffix)
        return row[p:len(row) - s] if len(row) >= p + s else row[:0]

    def wrap(self, body: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(self.prefix, dtype=np.int64), body,
                               np.asarray(self.suffix, dtype=np.int64)])


_FRAMES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def special_frame(tokenizer) -> Frame:
    """Where the tokenizer adds its special tokens, found once per tokenizer (a server encodes every
    request through here) by encoding one probe with and without them."""
    try:
        return _FRAMES[tokenizer]
    except KeyError:
        frame = _FRAMES[tokenizer] = _probe_frame(tokenizer)
    except TypeError:  # a tokenizer that cannot be weakly referenced is probed every time
        frame = _probe_frame(tokenizer)
    return frame


def _probe_frame(tokenizer) -> Frame:
    probe = "a long document, in two words"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    for p in range(len(full) - len(plain) + 1):
        if full[p:p + len(plain)] == plain:
            return Frame(tuple(full[:p]), tuple(full[p + len(plain):]))
    raise ModelError("data.long_text: cannot tell where this tokenizer puts its special tokens (its output with "
                     "them does not contain its output without them); use data.long_text=truncate")


class PieceIds(Sequence):
    """Token ids of many windows in one flat array cut at offsets (a list of lists would cost ~40 bytes a
    token); `lengths` without reading any row, as data/tokens.TokenColumn gives them."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = int(i) % len(self)
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class Chunks:
    """Which document each window of an Encoded belongs to (documents in order, their windows together),
    where it starts in the document's tokens, and how windows' logits become a document's."""

    doc: np.ndarray  # window -> document, non-decreasing
    start: np.ndarray  # window -> its first token's position in the document's own tokens
    doc_tokens: np.ndarray  # document -> its token count (without special tokens)
    pool: str = "mean"

    @property
    def first(self) -> np.ndarray:
        """Each document's first window."""
        return np.searchsorted(self.doc, np.arange(len(self.doc_tokens)))

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.doc, minlength=len(self.doc_tokens))

    def pooled(self, logits: np.ndarray) -> np.ndarray:
        """Documents' logits: the mean or max over each one's windows."""
        if self.pool == "max":
            return np.maximum.reduceat(logits, self.first, axis=0)
        return np.add.reduceat(logits, self.first, axis=0) / self.counts[:, None].astype(logits.dtype)

    def deciding(self, logits: np.ndarray, column: np.ndarray) -> np.ndarray:
        """Each document's deciding window (its number within the document, from 0): the one scoring its
        `column` (the predicted class) highest."""
        score = logits[np.arange(len(logits)), column[self.doc]]
        order = np.lexsort((-score, self.doc))  # by document, best first
        best = order[np.searchsorted(self.doc[order], np.arange(len(self.doc_tokens)))]
        return best - self.first

    def summary(self, windows: np.ndarray, pooled: np.ndarray) -> dict:
        """What the report says of a chunked split: windows per document, and where the deciding window
        was among documents of several (the one that scored the predicted class, or the score, highest)."""
        counts = self.counts
        several = counts > 1
        k = self.deciding(windows, pooled.argmax(axis=1))[several]
        n = counts[several]
        where = {"first": int((k == 0).sum()), "middle": int(((k > 0) & (k < n - 1)).sum()),
                 "last": int((k == n - 1).sum())}
        return {"documents": len(counts), "windows": int(counts.sum()), "several_windows": int(several.sum()),
                "max_windows": int(counts.max()) if len(counts) else 0, "deciding_window": where}

    def epoch_rows(self, seed: int, epoch: int) -> np.ndarray:
        """One window per document for a training epoch, drawn uniformly (the same for the same seed and epoch)."""
        rng = np.random.default_rng([seed, epoch, 24])
        return self.first + (rng.random(len(self.doc_tokens)) * self.counts).astype(np.int64)


@dataclass(frozen=True)
class LongText:
    """data.long_text and its knobs, as a run's config sets them and loraclf.json keeps them."""

    strategy: str = "truncate"
    head_tokens: Optional[int] = None  # head-tail: tokens kept from the start (None: see `head`)
    chunk_overlap: int = 0
    chunk_pool: str = "mean"
    max_chunks: int = 32
    chunk_windows: str = "full"  # an artifact from before this knob cut full windows

    @classmethod
    def from_config(cls, data) -> "LongText":
        return cls(data.long_text, data.head_tokens, data.chunk_overlap, data.chunk_pool, data.max_chunks,
                   data.chunk_windows)

    @classmethod
    def from_meta(cls, meta: dict) -> "LongText":
        """The artifact's (an artifact from before long_text truncates)."""
        saved = meta.get("long_text") or {}
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})

    def to_meta(self, tokenizer, max_length: int) -> dict:
        """loraclf.json's long_text: the knobs, and for a model card's plain snippet the special tokens
        around a window and the text tokens it holds."""
        if self.truncates:
            return asdict(self)
        frame = special_frame(tokenizer)
        return {**asdict(self), "special_tokens": [list(frame.prefix), list(frame.suffix)],
                "window_tokens": self.check(max_length, frame)}

    def head(self, room: int) -> int:
        """head-tail: the window's tokens taken from the document's start (a quarter unless head_tokens says)."""
        return room // 4 if self.head_tokens is None else self.head_tokens

    @property
    def truncates(self) -> bool:
        return self.strategy == "truncate"

    def source_length(self, max_length: int) -> int:
        """The tokens read of each text: the window when truncating, else the whole document."""
        return max_length if self.truncates else SOURCE_TOKENS

    def check(self, max_length: int, frame: Frame) -> int:
        """The window's own tokens (max_length less the special tokens), after checking the knobs fit it."""
        room = max_length - len(frame.prefix) - len(frame.suffix)
        if room < 2:
            raise ConfigError(f"data.max_length={max_length} leaves {room} token(s) of text beside the special "
                              f"tokens; data.long_text={self.strategy} needs at least 2")
        if self.strategy == "chunks" and not 0 <= self.chunk_overlap < room:
            raise ConfigError(f"data.chunk_overlap={self.chunk_overlap} must be below the {room} text tokens of a "
                              f"window (data.max_length={max_length} less {max_length - room} special)")
        if self.strategy == "head-tail" and self.head_tokens is not None and self.head_tokens > room:
            raise ConfigError(f"data.head_tokens={self.head_tokens} is more than the {room} text tokens of a window "
                              f"(data.max_length={max_length} less {max_length - room} special)")
        return room

    def encode(self, tokenizer, texts: Sequence[str], labels, max_length: int,
               pairs: Optional[Sequence[str]] = None) -> Encoded:
        """Token ids of `texts` as this strategy reads them (labels stay one per document)."""
        if self.truncates:
            return encode(tokenizer, texts, labels, max_length, pairs)
        if pairs is not None:
            raise ConfigError(f"data.long_text={self.strategy} reads one text per example; text pairs truncate "
                              "(set data.long_text=truncate)")
        frame = special_frame(tokenizer)
        room = self.check(max_length, frame)
        whole = encode(tokenizer, texts, labels, SOURCE_TOKENS)
        if self.strategy == "head-tail":
            return head_tail(whole, frame, room, self.head(room))
        return chunked(whole, frame, room, self.chunk_overlap, self.max_chunks, self.chunk_pool,
                       self.chunk_windows == "even")


def head_tail(whole: Encoded, frame: Frame, room: int, head: int) -> Encoded:
    """Each document's first `head` and last `room - head` tokens, in one window."""
    rows, full = [], []
    for row in whole.input_ids:
        body = frame.body(row)
        full.append(len(body) + len(frame.prefix) + len(frame.suffix))
        if len(body) > room:
            body = np.concatenate([body[:head], body[len(body) - (room - head):]])
        rows.append(frame.wrap(body))
    return Encoded(_flat(rows), whole.labels, full_lengths=np.asarray(full, dtype=np.int64))


def window_cuts(n: int, room: int, overlap: int, max_chunks: int, even: bool = False) -> tuple[np.ndarray, int]:
    """Where a document of `n` tokens is cut, and each window's width.

    full (`even` false): windows of `room` tokens every `room - overlap`, the last one moved back to end at the
    document's end (a full window, not a stub). even: the fewest windows of at most `room` tokens that cover
    it with `overlap` shared, all of one width and evenly spaced, so no token is read twice beyond the overlap
    (a document of room + 1 tokens is two windows of about half a room, not two full ones). Over `max_chunks`,
    that many evenly spaced full windows, the first and the last kept."""
    if n <= room:
        return np.zeros(1, dtype=np.int64), room
    step = room - overlap
    count = -(-(n - overlap) // step)  # windows needed: ceil((n - overlap) / step)
    if even and count <= max_chunks:
        width = -(-(n + (count - 1) * overlap) // count)  # <= room, as count * step >= n - overlap
        return (np.arange(count, dtype=np.int64) * (n - width)) // (count - 1), width
    starts = np.append(np.arange(0, n - room, step, dtype=np.int64), n - room)
    if len(starts) > max_chunks:
        starts = np.unique(starts[np.round(np.linspace(0, len(starts) - 1, max_chunks)).astype(np.int64)])
    return starts, room


def chunked(whole: Encoded, frame: Frame, room: int, overlap: int, max_chunks: int, pool: str,
            even: bool = False) -> Encoded:
    """Every document as windows of at most `room` of its own tokens (see window_cuts), each wrapped in the
    special tokens; the Encoded's `chunks` maps windows back to documents."""
    rows, doc, start, tokens = [], [], [], []
    for d, row in enumerate(whole.input_ids):
        body = frame.body(row)
        tokens.append(len(body))
        starts, width = window_cuts(len(body), room, overlap, max_chunks, even)
        for s in starts.tolist():
            rows.append(frame.wrap(body[s:s + width]))
            doc.append(d)
            start.append(s)
    chunks = Chunks(np.asarray(doc, dtype=np.int64), np.asarray(start, dtype=np.int64),
                    np.asarray(tokens, dtype=np.int64), pool)
    full = chunks.doc_tokens + len(frame.prefix) + len(frame.suffix)
    return Encoded(_flat(rows), whole.labels, full_lengths=full, chunks=chunks)


def _flat(rows: list) -> PieceIds:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, dtype=np.int32)
    return PieceIds(flat, offsets)
