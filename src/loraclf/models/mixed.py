"""Several LoRA adapters on one PEFT model, and one forward pass over rows of different adapters.

PEFT mixes adapters in a batch (``adapter_names=[one per row]``): each LoRA layer adds each row's own
deltas. Its trained modules (``modules_to_save``: the heads) can mix too, but only plain Linear
layers of one output width. :func:`per_row_heads` lifts both limits for the duration of a forward
pass, so classifiers with different numbers of labels (and RoBERTa-style two-layer heads) share it.
Used by the server's model pool through the heads (``Head.attach`` / ``Head.mixed_logits``).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path

import torch


def add_adapter(model, art: Path, adapter: str) -> None:
    """Load the LoRA adapter saved in `art` onto `model` (a PeftModel) as `adapter`. Heads
    (modules_to_save) whose shape differs from the base's (another number of labels) are loaded at
    their own shape, which PEFT alone refuses: the adapter is created first, its head copies are
    reshaped to the saved tensors, and only then are the weights loaded (strictly)."""
    import json

    from peft import LoraConfig
    from peft.utils.other import AuxiliaryTrainingWrapper
    from safetensors.torch import load_file

    weights = art / "adapter_model.safetensors"
    if json.loads((art / "adapter_config.json").read_text()).get("peft_type") != "LORA" or not weights.is_file():
        model.load_adapter(str(art), adapter_name=adapter)
        return
    config = LoraConfig.from_pretrained(str(art))
    config.inference_mode = True
    model.add_adapter(adapter, config)
    saved = load_file(str(weights))
    for wname, wrapper in model.named_modules():
        if not isinstance(wrapper, AuxiliaryTrainingWrapper) or adapter not in getattr(wrapper, "modules_to_save", {}):
            continue
        module = wrapper.modules_to_save[adapter]
        for pname, param in list(module.named_parameters()):
            tensor = saved.get(f"{wname}.{pname}")
            if tensor is not None and tuple(tensor.shape) != tuple(param.shape):
                owner_name, _, leaf = pname.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
                setattr(owner, leaf, torch.nn.Parameter(torch.empty_like(tensor, dtype=param.dtype,
                                                                          device=param.device), requires_grad=False))
    model.load_adapter(str(art), adapter_name=adapter)  # the adapter exists: PEFT only loads its weights


def delete_adapter(model, adapter: str) -> None:
    with warnings.catch_warnings():  # "the active adapter was deleted": each batch names its own adapters
        warnings.simplefilter("ignore")
        model.delete_adapter(adapter)


def set_adapter(model, adapter: str) -> None:
    if model.active_adapter != adapter:
        model.set_adapter(adapter)


def padded(parts: list[tuple[list[int], torch.Tensor]], rows: int) -> torch.Tensor:
    """Per-adapter outputs (row indices, tensor) as one tensor in row order, the last dimension
    zero-padded to the widest (each caller slices its own width back out)."""
    width = max(out.shape[-1] for _, out in parts)
    first = parts[0][1]
    result = first.new_zeros((rows, *first.shape[1:-1], width))
    for idx, out in parts:
        result[idx, ..., :out.shape[-1]] = out
    return result


def rows_of(names: list[str]) -> dict[str, list[int]]:
    """Row indices per adapter, in order of first appearance."""
    out: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        out.setdefault(n, []).append(i)
    return out


def _rows_forward(wrapper, x, *args, adapter_names=None, **kwargs):
    names = adapter_names or [wrapper.active_adapters[0]] * len(x)
    parts = []
    for adapter, idx in rows_of(names).items():
        module = wrapper.modules_to_save[adapter] if adapter in wrapper.modules_to_save else wrapper.original_module
        parts.append((idx, module(x[idx], *args, **kwargs)))
    return padded(parts, len(x))


@contextlib.contextmanager
def per_row_heads(model):
    """While a mixed batch runs, each trained module of the PEFT model (modules_to_save) applies each
    row's own copy, and outputs of different widths are zero-padded to the widest."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    wrappers = [m for m in model.modules() if isinstance(m, AuxiliaryTrainingWrapper) and hasattr(m, "modules_to_save")]
    for w in wrappers:
        w.forward = functools.partial(_rows_forward, w)
    try:
        yield
    finally:
        for w in wrappers:
            del w.forward
