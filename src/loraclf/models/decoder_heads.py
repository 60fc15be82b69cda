"""Decoder LLMs as classifiers through their language-model head.

- ``verbalizer``: class score = log-probability of the class's label word(s) right after the
  prompt (next-token logits restricted to the label tokens; multi-token words are scored token by
  token; several words per class are combined with log-sum-exp). Works zero-shot; with LoRA it
  trains cross-entropy over those class scores.
- ``generate``: greedy free generation parsed into a label (first label word found in the output),
  with a fallback label; trains as supervised fine-tuning (full-vocabulary cross-entropy on the
  gold label word's tokens), as the reference notebooks did.

Inputs are left-padded and positions are computed from the attention mask, so a padded batch
scores exactly like each text alone. With ``shared_prefix`` (the default), the prompt's common
prefix is run once and its key/value cache reused for every row (models/prefix.py).
"""

from __future__ import annotations

import logging
import re
from typing import Optional, Sequence

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .prefix import SharedPrefix, checkpointing, has_active_dropout
from .prompting import PromptFormatter

log = logging.getLogger("loraclf")


def greedy_generation(lm: nn.Module) -> None:
    """Greedy decoding: drop the checkpoint's sampling defaults (they would only warn)."""
    gen = getattr(lm, "generation_config", None)
    if gen is None:
        return
    for k in ("temperature", "top_p", "top_k"):
        if hasattr(gen, k):
            setattr(gen, k, None)
    gen.do_sample = False


class PromptClassifier(nn.Module):
    def __init__(self, lm: nn.Module, formatter: PromptFormatter, labels: Sequence[str], head: str = "verbalizer",
                 max_new_tokens: int = 8, fallback_label: Optional[str] = None, shared_prefix: bool = True):
        super().__init__()
        self.lm = lm
        self.formatter = formatter
        self.labels = list(labels)
        self.head = head
        self.max_new_tokens = max_new_tokens
        self.fallback = self.labels.index(fallback_label) if fallback_label is not None else 0
        words = formatter.spec.label_words
        self.words: list[tuple[int, str, list[int]]] = []  # (class, word, token ids)
        for c, lab in enumerate(self.labels):
            for w in words[lab]:
                self.words.append((c, w, formatter.word_ids(w)))
        # word columns of each class, and each class's first (gold) word, fixed for the model's life
        self._class_cols = [[j for j, (c, _, _) in enumerate(self.words) if c == k] for k in range(len(self.labels))]
        self._gold_col = [cols[0] for cols in self._class_cols]
        self.generation_log: list[dict] = []  # outputs of the last generate-head evaluation
        self.generate_at_eval = head == "generate"
        self.config = getattr(lm, "config", None)
        self._keep_ok = True
        self.prefix = SharedPrefix(formatter.prefix_ids).bind(lm) if shared_prefix else None
        self._train_random = True  # dropout active while training: known once train() is called

    def train(self, mode: bool = True):
        # weights change in training: a prefix cached for evaluation must be recomputed afterwards
        super().train(mode)
        if self.prefix is not None:
            self.prefix.invalidate()
            self._train_random = mode and has_active_dropout(self.lm)
        return self

    def _prefix_split(self, input_ids, attention_mask):
        """The batch without its shared prefix (models/prefix.py), or None to score full prompts:
        switched off, a row not starting with the prefix, or a training forward that is random
        (dropout) or checkpointed (a cache written inside a checkpointed layer would be written
        again when backward replays it)."""
        p = self.prefix
        if p is None or p.broken:
            return None
        if self.training and torch.is_grad_enabled() and (
                self._train_random or checkpointing(self.lm)):
            return None
        return p.split(input_ids, attention_mask)

    def _prefix_cache(self, rest: torch.Tensor):
        try:
            return self.prefix.cache(self.lm, rest.shape[0], rest.device)
        except (TypeError, AttributeError, ValueError) as e:  # a model that takes no DynamicCache
            self.prefix.broken = True
            log.warning("shared prefix off for this model (%s); scoring full prompts", str(e).splitlines()[0])
            return None

    # ------------------------------------------------------------------ scoring
    def _call(self, input_ids, attention_mask, pos, keep: int, **extra):
        if self._keep_ok:
            try:
                return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                               logits_to_keep=keep, **extra).logits
            except TypeError:  # an architecture without logits_to_keep
                self._keep_ok = False
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                       **extra).logits[:, -keep:]

    def _lm(self, input_ids, attention_mask, keep: int = 1):
        """Logits of the last `keep` positions only: the LM head over a 50k vocabulary at every
        position would cost as much as the rest of a small model."""
        split = self._prefix_split(input_ids, attention_mask)
        past = self._prefix_cache(split[0]) if split is not None else None
        if past is not None:
            rest, mask, pos = split
            return self._call(rest, mask, pos, keep, use_cache=True, **{self.prefix.kwarg: past})
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self._call(input_ids, attention_mask, pos, keep)

    def word_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, n_words] log p(word | prompt), summing over each word's tokens."""
        last = self._lm(input_ids, attention_mask, 1)[:, -1, :].float().log_softmax(-1)
        out = torch.empty(input_ids.shape[0], len(self.words), device=input_ids.device, dtype=torch.float32)
        multi: dict[tuple[int, ...], list[int]] = {}
        for j, (_, _, ids) in enumerate(self.words):
            if len(ids) == 1:
                out[:, j] = last[:, ids[0]]
            else:
                multi.setdefault(tuple(ids), []).append(j)
        for ids, cols in multi.items():
            tail = torch.tensor(ids[:-1], device=input_ids.device).expand(input_ids.shape[0], -1)
            ext_ids = torch.cat([input_ids, tail], dim=1)
            ext_mask = torch.cat([attention_mask, torch.ones_like(tail)], dim=1)
            lp = self._lm(ext_ids, ext_mask, len(ids))[:, -len(ids):, :].float().log_softmax(-1)
            target = torch.tensor(ids, device=input_ids.device)
            score = lp.gather(-1, target.expand(input_ids.shape[0], -1).unsqueeze(-1)).squeeze(-1).sum(-1)
            for j in cols:
                out[:, j] = score
        return out

    def class_scores(self, word_lp: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.logsumexp(word_lp[:, idx], dim=-1) for idx in self._class_cols], dim=-1)

    # ------------------------------------------------------------------ generation
    def parse(self, text: str) -> Optional[int]:
        """The class whose label word appears first in the output (case-insensitive, whole word)."""
        low = text.lower()
        best: Optional[tuple[int, int]] = None
        for c, w, _ in self.words:
            m = re.search(r"(?<![a-z0-9])" + re.escape(w.lower()) + r"(?![a-z0-9])", low)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), c)
        return None if best is None else best[1]

    @torch.no_grad()
    def generate_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
        tok = self.formatter.tok
        lm = self.lm
        extra = {}
        split = self._prefix_split(input_ids, attention_mask)
        past = self._prefix_cache(split[0]) if split is not None else None
        if past is not None:
            # [prefix][pads][text + suffix]: generate skips the tokens the cache already holds and
            # counts positions from the attention mask, as the scoring path does
            rest, attention_mask, _ = split
            input_ids = torch.cat([self.prefix.ids.to(rest.device).expand(rest.shape[0], -1), rest], dim=1)
            extra[self.prefix.kwarg] = past
        gen = lm.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=self.max_new_tokens,
                          do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **extra)
        texts = tok.batch_decode(gen[:, input_ids.shape[1]:], skip_special_tokens=True)
        out = []
        for t in texts:
            c = self.parse(t)
            self.generation_log.append({"output": t.strip(), "parsed": c is not None})
            out.append(self.fallback if c is None else c)
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: Optional[torch.Tensor] = None,
                **_: object) -> SequenceClassifierOutput:
        if not self.training and self.generate_at_eval and labels is None:
            pred = torch.tensor(self.generate_labels(input_ids, attention_mask), device=input_ids.device)
            logits = torch.full((input_ids.shape[0], len(self.labels)), -20.0, device=input_ids.device)
            logits[torch.arange(len(pred)), pred] = 0.0  # one-hot: generation gives no probabilities
            return SequenceClassifierOutput(logits=logits)
        word_lp = self.word_logprobs(input_ids, attention_mask)
        logits = self.class_scores(word_lp)
        loss = None
        if labels is not None and self.head == "generate":
            # supervised fine-tuning: full-vocabulary likelihood of the gold label word's tokens
            gold_cols = torch.tensor(self._gold_col, device=labels.device)
            loss = -word_lp.gather(1, gold_cols[labels].unsqueeze(1)).mean()
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def generation_stats(self) -> dict:
        n = len(self.generation_log)
        bad = sum(1 for g in self.generation_log if not g["parsed"])
        return {"outputs": n, "unparsed": bad, "unparsed_share": bad / n if n else 0.0,
                "fallback_label": self.labels[self.fallback],
                "samples": self.generation_log[:20]}
