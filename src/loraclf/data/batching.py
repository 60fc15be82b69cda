"""Tokenisation and batching: token ids without padding, batches padded to their longest member, and
length-grouped batch orders that depend only on (seed, epoch) so a resume replays them exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

LENGTH_GROUP_BATCHES = 50  # batches sorted by length together (the default of train.length_group_batches)


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
