"""The embedding head's model: a linear layer on the sentence embedding a checkpoint was trained to give.

Sentence-embedding checkpoints (all-MiniLM-L6-v2 and the sentence-transformers family) were trained
to pool their tokens a particular way (mostly the mean of the real tokens) and compare the results by
cosine. Their BERT pooler on the first token is an untrained initialisation, so a classification
head on it starts from noise. With few labels that start matters most: here the text becomes the
checkpoint's own pooled, L2-normalised embedding, and the label scores are a linear layer on it,
initialised at the class prototypes (each class's mean embedding, scored by Euclidean distance), which
is already a nearest-centroid classifier before any step is taken.

The same embedding feeds the supervised contrastive loss (`train.contrastive`), which pulls texts of a
class together and pushes other classes apart in the batch: the part of SetFit's recipe that moves
the encoder (docs/few-labels.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

POOLINGS = ("mean", "cls", "max")
PROTOTYPE_SCALE = 20.0  # logits = 20 x (e . m - |m|^2 / 2): softmax confident but not saturated
CONTRASTIVE_TEMPERATURE = 0.1  # SupCon's usual temperature for normalised embeddings
PROTOTYPE_TEXTS = 4096  # train texts embedded to initialise the prototypes (enough for a class mean)
UNSEEN_BIAS = -1e4  # the score of a class train never shows, under either refit: it never wins
HEAD_FILE = "embedding_head.safetensors"
# One more encoder call (forward and backward) costs about as much CPU time as this many more tokens: about
# 20 ms against 0.35 ms a token for LoRA on MiniLM, 2 cores (docs/few-labels.md)
RUN_OVERHEAD_TOKENS = 64


def length_runs(attention_mask: torch.Tensor, overhead: int = RUN_OVERHEAD_TOKENS):
    """[(rows, width)] splitting a right-padded batch into runs of rows of similar length, so that the tokens
    computed (each run's rows x its longest text, plus `overhead` a run) are fewest: an exact dynamic program
    over the rows sorted by length. None when one run is best, or when the batch is padded on the left."""
    if not bool(attention_mask[:, 0].all()):
        return None
    lengths = attention_mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    size = lengths[order].tolist()
    best, cut = [0] + [float("inf")] * len(size), [0] * (len(size) + 1)
    for j in range(1, len(size) + 1):
        for i in range(j):
            cost = best[i] + (j - i) * size[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], len(size)
    while j > 0:
        runs.append((order[cut[j]:j], int(size[j - 1])))
        j = cut[j]
    return runs[::-1] if len(runs) > 1 else None


@dataclass
class EmbeddingOutput(ModelOutput):
    logits: Optional[torch.Tensor] = None
    embedding: Optional[torch.Tensor] = None


def checkpoint_pooling(path: str) -> str:
    """How the checkpoint pools its tokens, from its sentence-transformers files (mean when it has none)."""
    cfg = Path(path) / "1_Pooling" / "config.json"
    try:
        modes = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "mean"
    for mode in POOLINGS:
        key = "pooling_mode_cls_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"
        if modes.get(key):
            return mode
    return "mean"


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class EmbeddingClassifier(torch.nn.Module):
    """encoder -> pooled, normalised embedding -> linear scores. `config` is the encoder's (with the labels),
    so readers of a model's config (export, the server) find what they expect."""

    def __init__(self, encoder: torch.nn.Module, num_outputs: int, pooling: str):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.config = encoder.config
        self.classifier = torch.nn.Linear(self.config.hidden_size, num_outputs)

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """The pooled, normalised embeddings. A training batch on CPU is drawn at random (the few-shot recipe
        does not group by length), so padding it to its longest text can triple the work: its rows go through
        the encoder in runs of similar length instead, each run cut to its own longest text. Pooling reads
        real tokens only, so the embeddings are the padded batch's (dropout aside)."""
        split = self.training and input_ids.device.type == "cpu" and not torch.compiler.is_compiling()
        runs = length_runs(attention_mask) if split else None  # a compiled step keeps its rounded shapes
        if runs is None:
            return self._embed(input_ids, attention_mask, token_type_ids)
        parts = []
        for rows, width in runs:
            tt = None if token_type_ids is None else token_type_ids[rows, :width]
            parts.append(self._embed(input_ids[rows, :width], attention_mask[rows, :width], tt))
        order = torch.cat([rows for rows, _ in runs])
        return torch.cat(parts)[torch.argsort(order)]

    def _embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return F.normalize(pool(hidden, attention_mask, self.pooling).float(), dim=-1)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> EmbeddingOutput:
        e = self.embed(input_ids, attention_mask, token_type_ids)
        return EmbeddingOutput(logits=self.classifier(e.to(self.classifier.weight.dtype)), embedding=e)

    @torch.no_grad()
    def set_class_means(self, embeddings: torch.Tensor, indicator: torch.Tensor) -> None:
        """Scores = scale x (e . m - |m|^2 / 2) for each class mean m: the nearest class mean by Euclidean
        distance. Unlike cosine to the normalised mean (the scoring before 2026-12-04), it keeps each mean's
        length: a class whose texts spread wide (TweetEval's neutral) has a shorter mean, and cosine gives it
        too little of the space (docs/few-labels.md). A class without texts can never win."""
        counts = indicator.sum(0).to(embeddings.dtype)
        means = (indicator.T.to(embeddings.dtype) @ embeddings) / counts.clamp(min=1)[:, None]
        bias = -PROTOTYPE_SCALE * means.pow(2).sum(1) / 2
        self.classifier.weight.copy_(PROTOTYPE_SCALE * means)
        self.classifier.bias.copy_(torch.where(counts > 0, bias, torch.full_like(bias, UNSEEN_BIAS)))

    @torch.no_grad()
    def set_logistic(self, embeddings: torch.Tensor, labels, num_classes: int) -> None:
        """Scores = an L2-regularised logistic regression fitted on the embeddings (sklearn's defaults, as
        SetFit's head). A binary fit's one weight vector becomes two rows whose softmax is its sigmoid."""
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        x = embeddings.float().cpu().numpy()
        fit = LogisticRegression(max_iter=1000).fit(x, labels)
        seen = fit.classes_.astype(int)
        w, b = np.zeros((num_classes, x.shape[1]), np.float32), np.full(num_classes, UNSEEN_BIAS, np.float32)
        if len(seen) == 2:
            w[seen] = np.stack([-fit.coef_[0], fit.coef_[0]]) / 2
            b[seen] = np.array([-fit.intercept_[0], fit.intercept_[0]]) / 2
        else:
            w[seen], b[seen] = fit.coef_, fit.intercept_  # a class train never shows keeps UNSEEN_BIAS
        self.classifier.weight.copy_(torch.from_numpy(w))
        self.classifier.bias.copy_(torch.from_numpy(b))


def supervised_contrastive(embedding: torch.Tensor, indicator: torch.Tensor,
                           temperature: float = CONTRASTIVE_TEMPERATURE) -> torch.Tensor:
    """SupCon (Khosla et al., 2020) over one batch: every pair of texts sharing a class is a positive,
    every other text a negative; texts with no positive in the batch add nothing."""
    n = embedding.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=embedding.device)
    sim = (embedding @ embedding.T / temperature).masked_fill(eye, float("-inf"))
    log_p = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positive = ((indicator.float() @ indicator.float().T) > 0) & ~eye
    has = positive.any(1)
    if not bool(has.any()):
        return embedding.sum() * 0.0  # keeps the graph (and DDP's bookkeeping) when no pair shares a class
    per_text = log_p.masked_fill(~positive, 0.0).sum(1)[has] / positive.sum(1)[has]
    return -per_text.mean()


@torch.no_grad()
def embed_all(model: EmbeddingClassifier, enc, pad_id: int, batch_size: int, device,
              limit: Optional[int] = None) -> torch.Tensor:
    """The embeddings of (the first `limit`) encoded texts, in batches, without gradients."""
    from ..data.batching import Collator

    n = len(enc) if limit is None else min(limit, len(enc))
    collate = Collator(enc, pad_id, False)
    was = model.training
    model.eval()
    out = []
    for s in range(0, n, batch_size):
        batch = collate(list(range(s, min(n, s + batch_size))))
        out.append(model.embed(**{k: v.to(device) for k, v in batch.items()
                                  if k in ("input_ids", "attention_mask", "token_type_ids")}).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, model.config.hidden_size)


def drop_pooler(encoder: torch.nn.Module) -> torch.nn.Module:
    """The first-token pooler some encoders carry is not used here; without it, nothing untrained is
    counted, adapted or saved (BERT and RoBERTa skip a pooler set to None)."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def apply_embedding_method(model: EmbeddingClassifier, method: str, lora) -> Optional[list[str] | str]:
    """Make the right weights of `model` trainable (in place): LoRA adapters on the encoder, the linear
    layer alone, or everything; the linear layer is always trained. Returns the LoRA targets."""
    from .build import _add_lora
    from .methods import METHODS
    from .targets import default_targets

    how = METHODS[method]
    targets = None
    if how.adapters:
        from peft import TaskType

        mtype = model.config.model_type
        targets = lora.target_modules if lora.target_modules is not None else default_targets(mtype)
        model.encoder = _add_lora(model.encoder, TaskType.FEATURE_EXTRACTION, lora, targets, mtype)
    else:
        for p in model.encoder.parameters():
            p.requires_grad = how.trains_base
    model.classifier.requires_grad_(True)
    return targets


def save_head(model: EmbeddingClassifier, dest: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()},
              str(dest / HEAD_FILE))


def load_head(model: EmbeddingClassifier, art: Path) -> None:
    """The trained linear layer; a missing or misshapen file is a damaged artifact, said in one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..errors import ModelError

    path = art / HEAD_FILE
    try:
        state = load_file(str(path))
        model.classifier.load_state_dict(state)
    except (OSError, RuntimeError, KeyError, SafetensorError) as e:
        raise ModelError(f"artifact {art}: cannot read its embedding head ({HEAD_FILE}: "
                         f"{str(e).splitlines()[0][:160]})") from None


def load_encoder(cfg, quiet: bool = False):
    """The checkpoint `model.*` names as a bare encoder (no task head): (encoder, tokenizer, Resolved)."""
    from transformers import AutoModel

    from ..errors import ConfigError
    from .build import (
        LOAD_ERRORS,
        _load_config,
        _quantized_kwargs,
        decoder_config,
        from_pretrained,
        load_error,
        load_tokenizer,
        prepare_quantized,
        quiet_hf,
    )
    from .registry import resolve

    resolved = resolve(cfg.name, quiet=quiet)
    tok = load_tokenizer(resolved.path, cfg.revision, cfg.trust_remote_code)
    mcfg = _load_config(resolved, cfg)
    if decoder_config(mcfg):
        raise ConfigError(f"model.head=embedding needs an encoder; {cfg.name} is a {mcfg.model_type} decoder: "
                          "use model.head=classifier or verbalizer")
    kwargs = dict(config=mcfg, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                  **_quantized_kwargs(cfg, ["classifier"]))
    try:
        with quiet_hf():
            encoder = from_pretrained(AutoModel, resolved.path, cfg, **kwargs)
    except LOAD_ERRORS as e:
        raise load_error(f"cannot load model {cfg.name}", e) from None
    return prepare_quantized(drop_pooler(encoder), cfg.quantize), tok, resolved
