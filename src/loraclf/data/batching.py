"""Tokenisation and batching: token ids without padding, batches padded to their longest member, and
length-grouped batch orders that depend only on (seed, epoch) so a resume replays them exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from .long import Chunks

_NUM_PROC = None  # data.num_proc for the current process (set by set_num_proc)
LENGTH_GROUP_BATCHES = 50  # batches sorted by length together (the default of train.length_group_batches)


@dataclass
class Encoded:
    """Token ids per model input (unpadded) plus labels per document; token_type_ids only for pair inputs.
    Without `chunks` an input is a document; with them (data.long_text=chunks) a document is several
    windows, and `chunks` says whose each is."""

    input_ids: Sequence  # lists of ids, a data/tokens.TokenColumn on the mapped cache, or data/long.PieceIds
    labels: np.ndarray
    token_type_ids: Optional[Sequence] = None
    full_lengths: Optional[np.ndarray] = None  # untruncated token counts per document, when known
    chunks: Optional["Chunks"] = None
    targets: Optional[np.ndarray] = None  # train.teacher: float targets per document, in place of labels in the loss

    def __len__(self) -> int:
        return len(self.input_ids)

    def documents(self, logits: np.ndarray) -> np.ndarray:
        """Per-document logits from per-input ones (a chunked document's pooled from its windows')."""
        return logits if self.chunks is None else self.chunks.pooled(logits)

    def input_labels(self, idx) -> np.ndarray:
        """The labels of model inputs `idx` (a window has its document's)."""
        return self.labels[idx] if self.chunks is None else self.labels[self.chunks.doc[idx]]

    def input_targets(self, idx) -> np.ndarray:
        return self.targets[idx] if self.chunks is None else self.targets[self.chunks.doc[idx]]

    @property
    def lengths(self) -> np.ndarray:
        cached = getattr(self.input_ids, "lengths", None)
        if cached is not None:  # the cache's offsets: no row is read
            return cached
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(tokenizer, texts: Sequence[str], labels, max_length: int, pairs: Optional[Sequence[str]] = None,
           batch: int = 4096) -> Encoded:
    """Tokenise without padding (padding happens per batch). Texts from the data cache take their ids from
    it (data/tokens.py), computed once."""
    if getattr(texts, "fingerprint", None) and (pairs is None or getattr(pairs, "fingerprint", None)):
        from .tokens import cached_ids

        cached = cached_ids(tokenizer, texts, max_length, pairs, num_proc=_NUM_PROC)
        if cached is not None:
            ids, types, full = cached
            lab = np.asarray(labels) if labels is not None else np.zeros(len(ids), dtype=np.int64)
            return Encoded(ids, lab, types, full_lengths=full)
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


def set_num_proc(n: Optional[int]) -> None:
    """How many processes tokenize a cold cache (data.num_proc; None: one per core)."""
    global _NUM_PROC
    _NUM_PROC = n


def token_lengths(tokenizer, texts: Sequence[str], batch: int = 4096, max_length: Optional[int] = None) -> np.ndarray:
    """Untruncated token counts (for length filters and statistics). Texts from the data cache read them
    from the token entry of `max_length` (building it when missing, as encoding would next)."""
    if max_length is not None and getattr(texts, "fingerprint", None):
        enc = encode(tokenizer, texts, None, max_length)
        if enc.full_lengths is not None:
            return np.asarray(enc.full_lengths, dtype=np.int64)
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
            "labels": torch.from_numpy(self.enc.input_labels(batch_idx)),
            "idx": torch.tensor(batch_idx, dtype=torch.long),
        }
        if types is not None:
            out["token_type_ids"] = torch.from_numpy(types)
        if self.enc.targets is not None:
            out["targets"] = torch.from_numpy(self.enc.input_targets(batch_idx))
        return out


class Batches(Sequence):
    """Batches of row indices held as one array cut at offsets, in an order of batch ids. Ten million rows
    as lists of Python ints would take about 400 MB; this takes 8 bytes a row. Slicing and `+` work on
    the batch ids; indexing and iteration give lists, as a DataLoader's batch_sampler expects."""

    def __init__(self, rows: np.ndarray, bounds: np.ndarray, order: Optional[np.ndarray] = None):
        self.rows, self.bounds = rows, bounds
        self.order = np.arange(len(bounds) - 1) if order is None else order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Batches(self.rows, self.bounds, self.order[i])
        b = int(self.order[i])
        return self.rows[self.bounds[b]:self.bounds[b + 1]].tolist()

    def __iter__(self):
        for b in self.order.tolist():
            yield self.rows[self.bounds[b]:self.bounds[b + 1]].tolist()

    def over(self, rows: np.ndarray) -> "Batches":
        """The same batches of `rows[i]` instead of i (batches of positions made batches of those rows)."""
        return Batches(rows[self.rows], self.bounds, self.order)

    def __add__(self, other: "Batches") -> "Batches":
        if other.rows is not self.rows:
            return Batches(*_joined(self, other))
        return Batches(self.rows, self.bounds, np.concatenate([self.order, other.order]))

    def __eq__(self, other) -> bool:
        return (isinstance(other, Sequence) and len(self) == len(other)
                and all(a == list(b) for a, b in zip(self, other)))

    __hash__ = None


def _joined(a: Batches, b: Batches) -> tuple[np.ndarray, np.ndarray]:
    parts = list(a) + list(b)
    rows = np.fromiter((i for p in parts for i in p), dtype=np.int64)
    return rows, np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool,
                  mega: int = LENGTH_GROUP_BATCHES) -> Batches:
    """The batch order for one epoch: deterministic in (seed, epoch).

    With grouping, a seeded permutation is cut into mega-batches of `mega` batches, each sorted by
    length and cut into batches, and the batch order is shuffled. Batches hold texts of similar
    length (little padding) while the data order stays random.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    if not group_by_length:
        return Batches(perm, _bounds(len(perm), batch_size, len(perm)))
    span = batch_size * mega
    for s in range(0, len(perm), span):  # sort each mega-batch by length, longest first, in place
        chunk = perm[s:s + span]
        perm[s:s + span] = chunk[np.argsort(-lengths[chunk], kind="stable")]
    bounds = _bounds(len(perm), batch_size, span)
    return Batches(perm, bounds, rng.permutation(len(bounds) - 1))


def _bounds(n: int, batch_size: int, span: int) -> np.ndarray:
    """Batch start offsets (and n at the end): batches of batch_size restarting at every `span` rows."""
    starts = [np.arange(s, min(s + span, n), batch_size) for s in range(0, n, span)]
    return np.concatenate(starts + [np.array([n])]).astype(np.int64)


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Batches sorted by length (longest first) so each is padded as little as possible."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
