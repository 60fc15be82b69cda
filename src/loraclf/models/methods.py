"""Training methods: which weights a run trains, and what its artifact holds.

Each method is declared once, by what it does. Building the model, counting parameters, saving and
loading the artifact, the model card, comparisons and the server read these capabilities; none of
them compares a method's name. A new method is one :class:`Method` and one :func:`register_method`
line (model building follows from its capabilities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ADAPTER = "adapter"  # a PEFT adapter (with the trained head); it needs its base model to load
CHECKPOINT = "checkpoint"  # a whole transformers checkpoint; it loads alone


@dataclass(frozen=True)
class Method:
    name: str
    trains: bool  # False: nothing is trained; the run evaluates the base model as it is
    adapters: bool  # LoRA adapters on a frozen base (lora.* applies; lora.r: auto chooses their rank)
    trains_base: bool  # every base weight is trained (so the base cannot be loaded quantized)
    saves: Optional[str]  # what the artifact holds: ADAPTER, CHECKPOINT, or None (nothing was trained)
    card: str  # how the model card introduces the artifact: {base} is the base model
    card_prompted: Optional[str] = None  # the same for a prompt head ({how}: what the head does)
    marker: str = "o"  # its runs' marker in plots against trainable parameters

    @property
    def backprop_through_base(self) -> bool:
        """Gradients flow through the base model's layers (so gradient checkpointing can save memory there)."""
        return self.adapters or self.trains_base

    @property
    def weights_file(self) -> Optional[str]:
        """The weight file the artifact must hold (model-*.safetensors shards count for a checkpoint)."""
        return {ADAPTER: "adapter_model.safetensors", CHECKPOINT: "model.safetensors"}.get(self.saves or "")

    def introduce(self, base: str, prompted: bool, how: str) -> str:
        """The model card's first words about the artifact."""
        text = self.card_prompted if prompted and self.card_prompted else self.card
        return text.format(base=base, how=how, how_clause=f"; it {how}" if how else "")


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make `method` a choice of `model.method`."""
    METHODS[method.name] = method
    return method


register_method(Method("lora", trains=True, adapters=True, trains_base=False, saves=ADAPTER,
                       card="a LoRA adapter (with its trained classification head) for `{base}`",
                       card_prompted="a LoRA adapter for the causal LM `{base}` that {how}"))
register_method(Method("head", trains=True, adapters=False, trains_base=False, saves=CHECKPOINT,
                       card="a classification head on a frozen `{base}`", marker="s"))
register_method(Method("full", trains=True, adapters=False, trains_base=True, saves=CHECKPOINT,
                       card="a fully fine-tuned `{base}`", marker="D"))
register_method(Method("zero-shot", trains=False, adapters=False, trains_base=False, saves=None,
                       card="`{base}` used zero-shot as a classifier: nothing was trained{how_clause}", marker="^"))


def method_of(name: Optional[str]) -> Optional[Method]:
    """The method a run or artifact names (None for a name this version does not know)."""
    return METHODS.get(name or "")


def whole_checkpoint_method() -> str:
    """The method whose artifact is a whole checkpoint of every trained weight: what an export that
    merges adapters into the base records (it then loads without a base model)."""
    return next(m.name for m in METHODS.values() if m.saves == CHECKPOINT and m.trains_base)
