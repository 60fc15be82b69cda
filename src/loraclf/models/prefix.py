"""Shared-prefix scoring for prompt heads.

Every prompt a :class:`~loraclf.models.prompting.PromptFormatter` encodes starts with the same
tokens (chat header, system prompt, instruction, few-shot examples). :class:`SharedPrefix` runs
those tokens through the model once, keeps their key/value cache, and feeds each batch only what
follows the prefix: the rows become ``[prefix][pads][text + suffix]``, with an attention mask of
ones over the prefix and position ids counted from the cumulative mask, so every real token sees
the same keys at the same positions as in the full left-padded prompt.

In training the prefix runs once per batch with gradients (its cost is shared by the batch, and
the adapter's gradients flow through it); without gradients the cache is kept between batches
until the weights may have changed.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch

log = logging.getLogger("loraclf")


def weights_key(lm: torch.nn.Module) -> tuple:
    """Changes whenever the weights may have: in-place updates (optimizer steps, loading a state)
    bump a tensor's version counter; moving the model or switching its adapter shows too."""
    first = next(lm.parameters())
    return (sum(p._version for p in lm.parameters()), first.device, first.dtype,
            str(getattr(lm, "active_adapter", None)),
            torch.is_autocast_enabled(first.device.type), torch.get_autocast_dtype(first.device.type))


def has_active_dropout(lm: torch.nn.Module) -> bool:
    """Whether a training forward is random: a shared prefix would share one dropout mask across the
    batch, a different computation than per-row masks, so training then scores full prompts."""
    if not lm.training:
        return False
    cfg = getattr(lm, "config", None)
    if cfg is not None and float(getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0:
        return True
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in lm.modules())


def cache_kwarg(lm: torch.nn.Module) -> str:
    """The keyword a model's forward takes its key/value cache by: `cache` since transformers 5.2x
    (the old `past_key_values` still works there, with a deprecation warning)."""
    import inspect

    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # PEFT forwards **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def checkpointing(lm: torch.nn.Module) -> bool:
    """Whether gradient (activation) checkpointing is on; the property was renamed in transformers 5.x."""
    on = getattr(lm, "is_activation_checkpointing", None)
    return bool(getattr(lm, "is_gradient_checkpointing", False) if on is None else on)


class SharedPrefix:
    """The prompt prefix of one formatter and, outside training, its cached keys and values."""

    def __init__(self, prefix_ids: Sequence[int]):
        self.ids = torch.tensor(list(prefix_ids), dtype=torch.long)
        self._kv: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None
        self._key: Optional[tuple] = None
        self.broken = False  # the model could not take a cache: score full prompts from then on
        self.kwarg = "cache"  # set from the model by bind()

    def bind(self, lm) -> "SharedPrefix":
        self.kwarg = cache_kwarg(lm)
        return self

    def invalidate(self) -> None:
        self._kv, self._key = None, None

    def split(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """(rest ids, mask over prefix + rest, rest position ids) of a left-padded batch whose rows all
        start with the prefix and have at least one token after it; None otherwise."""
        p = self.ids.numel()
        b, w = input_ids.shape
        if p == 0 or w <= p:
            return None
        dev = input_ids.device
        pad = w - attention_mask.sum(-1)
        cols = torch.arange(w, device=dev)
        left = attention_mask.bool() == (cols >= pad[:, None])
        starts = (pad[:, None] + torch.arange(p, device=dev)).clamp(max=w - 1)
        same = input_ids.gather(1, starts) == self.ids.to(dev)
        if not bool(left.all() & same.all() & (pad <= w - p - 1).all()):  # one host sync per batch
            return None
        j = torch.arange(w - p, device=dev)
        src = j + p * (j >= pad[:, None])  # skip the prefix: pads stay left, text and suffix follow
        rest, rest_mask = input_ids.gather(1, src), attention_mask.gather(1, src)
        mask = torch.cat([torch.ones(b, p, dtype=attention_mask.dtype, device=dev), rest_mask], dim=1)
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, p:]
        return rest, mask, pos

    def _compute(self, lm, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from transformers import DynamicCache

        ids = self.ids.to(device)[None]
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                      position_ids=torch.arange(ids.shape[1], device=device)[None],
                      use_cache=True, **{self.kwarg: DynamicCache(config=lm.config)})
        try:
            out = lm(**kwargs, logits_to_keep=1)  # the prefix's logits are never read
        except TypeError:  # an architecture without logits_to_keep
            out = lm(**kwargs)
        cache = out.cache if self.kwarg == "cache" else out.past_key_values
        return [(layer.keys, layer.values) for layer in cache.layers]

    def cache(self, lm, batch: int, device):
        """A fresh cache holding the prefix for `batch` rows (the forward appends to it)."""
        from transformers import DynamicCache

        if torch.is_grad_enabled():  # training: recomputed with the current weights, gradients flow
            kv = self._compute(lm, device)
        else:
            key = weights_key(lm)
            if self._kv is None or self._key != key:
                self._kv, self._key = self._compute(lm, device), key
            kv = self._kv
        # expand is a view; the cache's first update copies it once per layer
        data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv]
        return DynamicCache(ddp_cache_data=data, config=lm.config)
