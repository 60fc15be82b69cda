"""Prompts for decoder heads (verbalizer, generate): template, chat template, few-shot examples.

A prompt is built once with a placeholder for the text and split into a prefix and a suffix, so
each text is tokenised alone and truncated to ``max_length`` without ever cutting the instruction
or the answer cue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..errors import ConfigError

DEFAULT_PROMPT = (
    "Classify the text into exactly one of these categories: {labels}.\n\nText: {text}\n\n"
    "Answer with the category only."
)
PLAIN_SUFFIX = "\nAnswer:"
_PLACEHOLDER = "\u2063LORACLF_TEXT\u2063"


@dataclass
class PromptSpec:
    """Everything needed to rebuild the prompt at prediction time (saved in loraclf.json)."""

    template: str = DEFAULT_PROMPT
    label_words: dict[str, list[str]] = field(default_factory=dict)
    use_chat_template: bool = True
    system_prompt: Optional[str] = None
    examples: list[tuple[str, str]] = field(default_factory=list)  # few-shot (text, label)

    def to_dict(self) -> dict:
        return {"template": self.template, "label_words": self.label_words, "use_chat_template": self.use_chat_template,
                "system_prompt": self.system_prompt, "examples": [list(e) for e in self.examples]}

    @classmethod
    def from_dict(cls, d: dict) -> "PromptSpec":
        return cls(d["template"], {k: list(v) for k, v in d["label_words"].items()}, d["use_chat_template"],
                   d.get("system_prompt"), [tuple(e) for e in d.get("examples", [])])


def label_words_from(spec, labels: Sequence[str]) -> dict[str, list[str]]:
    """`model.label_words`: null (the label names), a list in label order, or a mapping name -> word(s)."""
    if spec is None:
        return {lab: [lab] for lab in labels}
    if isinstance(spec, list):
        if len(spec) != len(labels):
            raise ConfigError(f"model.label_words has {len(spec)} entries but there are {len(labels)} labels")
        return {lab: ([w] if isinstance(w, str) else list(w)) for lab, w in zip(labels, spec)}
    if isinstance(spec, dict):
        missing = [lab for lab in labels if lab not in spec]
        if missing:
            raise ConfigError(f"model.label_words lacks labels {missing}")
        return {lab: ([spec[lab]] if isinstance(spec[lab], str) else list(spec[lab])) for lab in labels}
    raise ConfigError("model.label_words must be null, a list, or a mapping of label -> word(s)")


def pick_examples(texts: Sequence[str], labels: np.ndarray, names: Sequence[str], k: int,
                  seed: int) -> list[tuple[str, str]]:
    """k few-shot examples from train, round-robin over classes, seeded."""
    if k <= 0:
        return []
    rng = np.random.default_rng([seed, 7])
    by_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in range(len(names))]
    out: list[tuple[str, str]] = []
    i = 0
    while len(out) < k and any(by_class):
        pool = by_class[i % len(names)]
        if pool:
            j = pool.pop()
            out.append((texts[j], names[int(labels[j])]))
        i += 1
    rng.shuffle(out)
    return out


class PromptFormatter:
    """Turns texts into token ids: prefix + truncated text + suffix."""

    def __init__(self, tokenizer, spec: PromptSpec, labels: Sequence[str]):
        self.tok, self.spec, self.labels = tokenizer, spec, list(labels)
        if spec.template.count("{text}") != 1:
            raise ConfigError("model.prompt must contain {text} exactly once")
        self.chat = bool(spec.use_chat_template and getattr(tokenizer, "chat_template", None))
        shown = ", ".join(spec.label_words[lab][0] for lab in self.labels)
        filled = self._fill(_PLACEHOLDER, shown)
        full = self._render(filled, shown)
        prefix, suffix = full.split(_PLACEHOLDER)
        self.prefix_ids = tokenizer(prefix, add_special_tokens=not self.chat)["input_ids"]
        self.suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]

    def _fill(self, text: str, shown: str) -> str:
        try:
            return self.spec.template.format(text=text, labels=shown)
        except (KeyError, IndexError) as e:
            raise ConfigError(f"model.prompt has an unknown placeholder {e}; use {{text}} and {{labels}}") from None

    def _render(self, filled: str, shown: str) -> str:
        ex = self.spec.examples
        if self.chat:
            msgs = []
            if self.spec.system_prompt:
                msgs.append({"role": "system", "content": self.spec.system_prompt})
            for t, lab in ex:
                msgs.append({"role": "user", "content": self._fill(t, shown)})
                msgs.append({"role": "assistant", "content": self.spec.label_words[lab][0]})
            msgs.append({"role": "user", "content": filled})
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        head = (self.spec.system_prompt + "\n\n") if self.spec.system_prompt else ""
        shots = "".join(self._fill(t, shown) + PLAIN_SUFFIX + " " + self.spec.label_words[lab][0] + "\n\n"
                        for t, lab in ex)
        return head + shots + filled + PLAIN_SUFFIX

    def word_ids(self, word: str) -> list[int]:
        """Token ids of an answer word as the model would emit it right after the prompt."""
        text = word if self.chat else " " + word
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"label word {word!r} tokenises to nothing")
        return ids

    def encode(self, texts: Sequence[str], labels, max_length: int):
        from ..data import Encoded

        fixed = len(self.prefix_ids) + len(self.suffix_ids)
        budget = max_length - fixed
        if budget < min(32, max_length // 2):
            raise ConfigError(f"the prompt takes {fixed} tokens (instruction, chat markup, {len(self.spec.examples)} "
                              f"few-shot examples), leaving {max(budget, 0)} of data.max_length={max_length} for the "
                              "text; raise data.max_length or lower model.few_shot")
        ids = []
        for start in range(0, len(texts), 2048):
            enc = self.tok(list(texts[start:start + 2048]), add_special_tokens=False, truncation=True,
                           max_length=budget)["input_ids"]
            ids.extend(self.prefix_ids + row + self.suffix_ids for row in enc)
        lab = np.asarray(labels if labels is not None else np.zeros(len(ids)), dtype=np.int64)
        return Encoded(ids, lab, None)
