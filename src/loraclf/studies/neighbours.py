"""A second opinion for `loraclf audit`: the labels of each text's nearest neighbours in the data.

A fold model never trained on the text it scores, yet one small model trained once can be confidently
wrong about a phrase ("one-star" called positive) that the people who labelled the data got right on
its neighbours ("a one-star rating", "given it a one-star rating"). So each text's out-of-fold
probabilities are blended with the label shares of its k nearest other texts, found in a sentence
embedding space (the pretrained checkpoint, before any fine-tuning), and confident learning ranks the
blend. A text whose given label its neighbours share is trusted more; one whose neighbours all carry
another label is suspected more.

k and the weight were chosen on one seed's planted flips in three audits (SST-2's whole train split,
a 4,000-row SST-2 slice, a 4,000-row AG News slice) and checked on another seed's: docs/few-labels.md.
Neighbours help most where the data holds texts close to each other (SST-2's phrases of one sentence);
on the small slices they move precision by 0 to 2 points.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..tasks import Predictions

NEIGHBOURS = 5  # the best mean precision at recall 0.6 over the three audits of seed 7 (docs/few-labels.md)
WEIGHT = 0.2  # the neighbours' share of the blend, chosen with k
FALLBACK_MODEL = "minilm"  # the space of a decoder run's neighbours: a decoder has no sentence embedding
POOL_MAX = 200_000  # rows searched for neighbours at most (a seeded draw): the search costs rows x this
BATCH = 64
SIMILARITIES = 50_000_000  # float32 similarities held at once by the search


def blend_with_neighbours(p: Predictions, model_cfg, k: int = NEIGHBOURS, weight: float = WEIGHT,
                          max_length: int = 128, quiet: bool = True) -> tuple[Predictions, np.ndarray, dict]:
    """`p` with its outputs blended with the label shares of each text's k nearest neighbours, the share of
    each text's neighbours whose label is its own, and what was done (for metrics.json)."""
    start = time.perf_counter()
    model_cfg = neighbour_model(model_cfg)
    idx = nearest(embed_texts(p.texts, model_cfg, max_length, quiet), k)
    given = label_indicator(p)
    same = (given[idx] == given[:, None, :]).all(axis=2).mean(axis=1)
    blended = replace(p, outputs=blend(p.outputs, given, idx, weight))
    return blended, same, {"k": k, "weight": weight, "model": model_cfg.name,
                           "seconds": round(time.perf_counter() - start, 1)}


def blend(outputs: np.ndarray, given: np.ndarray, idx: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) x the outputs + weight x the share of each row's neighbours (`idx`) carrying each label."""
    return (1 - weight) * outputs + weight * given[idx].mean(axis=1)


def label_indicator(p: Predictions) -> np.ndarray:
    """The given labels as a (rows, labels) 0/1 matrix: class ids become one-hot rows, label sets stay."""
    gold = np.asarray(p.gold)
    if gold.ndim == 2:
        return gold.astype(np.float64)
    return np.eye(p.outputs.shape[1])[gold.astype(int)]


def neighbour_model(model_cfg):
    """The run's own checkpoint when it is an encoder; the bundled sentence encoder for a decoder."""
    from ..models.build import is_encoder

    if is_encoder(model_cfg):
        return replace(model_cfg, quantize=None)
    return replace(model_cfg, name=FALLBACK_MODEL, revision=None, quantize=None, trust_remote_code=False)


def embed_texts(texts: list[str], model_cfg, max_length: int, quiet: bool) -> np.ndarray:
    """Unit-length sentence embeddings of `texts` by the pretrained checkpoint, pooled as it was trained
    to pool (mean when it does not say), shortest texts first so that a batch pads little."""
    import torch

    from ..console import progress
    from ..models.embedding import checkpoint_pooling, load_encoder, pool

    encoder, tok, resolved = load_encoder(model_cfg, quiet=quiet)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder.to(device).eval()
    how = checkpoint_pooling(resolved.path)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), encoder.config.hidden_size), np.float32)
    bar = progress(len(texts), "audit: embedding texts for their neighbours", "text", disable=quiet, leave=False)
    with torch.inference_mode():
        for s in range(0, len(texts), BATCH):
            rows = order[s:s + BATCH]
            batch = tok([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
            batch = {key: v.to(device) for key, v in batch.items()}
            hidden = encoder(**batch).last_hidden_state
            e = torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], how).float(), dim=-1)
            out[rows] = e.cpu().numpy()
            bar.update(len(rows))
    bar.close()
    return out


def nearest(emb: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The k most similar other rows of each row (cosine of unit vectors), as a (rows, k) index; searched
    among at most POOL_MAX rows, drawn at random (seeded) when there are more."""
    import torch

    n = len(emb)
    pool = np.arange(n) if n <= POOL_MAX else np.sort(np.random.default_rng(seed).choice(n, POOL_MAX, replace=False))
    k = min(k, len(pool) - 1)
    where = np.full(n, -1)
    where[pool] = np.arange(len(pool))
    e, candidates = torch.from_numpy(emb), torch.from_numpy(emb[pool])
    out = np.empty((n, k), dtype=np.int64)
    step = max(64, SIMILARITIES // len(pool))  # rows a block: its similarities stay about 200 MB
    for s in range(0, n, step):
        sims = e[s:s + step] @ candidates.T
        rows = np.arange(s, min(n, s + step))
        own = where[rows]
        mine = np.flatnonzero(own >= 0)
        sims[torch.from_numpy(mine), torch.from_numpy(own[mine])] = -float("inf")  # never its own neighbour
        out[rows] = pool[sims.topk(k, dim=1).indices.numpy()]
    return out
