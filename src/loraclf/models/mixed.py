"""Several LoRA adapters on one PEFT model, and one forward pass over rows of different adapters.

PEFT can mix adapters in a batch (``adapter_names=[one per row]``), but its heads (``modules_to_save``)
mix only as plain Linear layers of one output width, and its LoRA layers rebuild each adapter's row
list in Python in every layer. :func:`per_row_adapters` runs a pass with each row's own LoRA deltas
(index tensors made once per batch) and its own head, whatever its width (outputs zero-padded to the
widest), so classifiers with different numbers of labels and RoBERTa-style two-layer heads share it.
Used by the server's model pool through the heads (``Head.attach`` / ``Head.mixed_logits``).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path
from typing import Optional

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


def adapter_signature(art: Path) -> Optional[str]:
    """What makes two saved LoRA adapters interchangeable slots on one model: the same config (but for
    where the base came from) and the same tensor names and shapes. None when there is no weights file."""
    import hashlib
    import json

    from safetensors import safe_open

    weights = art / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    config = json.loads((art / "adapter_config.json").read_text())
    for key in ("base_model_name_or_path", "revision"):
        config.pop(key, None)
    with safe_open(str(weights), "pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    return hashlib.sha256(json.dumps([config, shapes], sort_keys=True, default=str).encode()).hexdigest()


def refill_adapter(model, art: Path, adapter: str) -> None:
    """Copy the weights saved in `art` into the existing adapter `adapter` (of the same signature): no module
    is created or removed, which is what makes PEFT's load_adapter slow (it walks and wraps the model)."""
    from safetensors.torch import load_file

    saved = load_file(str(art / "adapter_model.safetensors"))
    tag = f".{adapter}."
    slots = {name.replace(f".modules_to_save{tag}", ".").replace(tag, "."): p
             for name, p in model.named_parameters() if tag in name}
    if set(saved) != set(slots):  # every saved tensor has a slot and every slot gets a tensor
        raise KeyError(f"adapter {adapter}: saved tensors and slots differ "
                       f"({sorted(set(saved) ^ set(slots))[:3]})")
    with torch.no_grad():
        for key, tensor in saved.items():
            slots[key].copy_(tensor)


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


def _rows_forward(wrapper, rows: dict, x, *args, adapter_names=None, **kwargs):
    parts = []
    for adapter, idx in rows.items():
        module = wrapper.modules_to_save[adapter] if adapter in wrapper.modules_to_save else wrapper.original_module
        parts.append((idx, module(x[idx], *args, **kwargs)))
    return padded(parts, len(x))


def _lora_rows_forward(layer, rows: dict, x, *args, **kwargs):
    """A LoRA Linear over rows of several adapters: the base once, then each adapter's low-rank delta added
    to its own rows (index tensors made once per batch, not per layer as PEFT's adapter_names path does)."""
    result = layer.base_layer(x, *args, **kwargs)
    for adapter, idx in rows.items():
        if adapter not in layer.lora_A:
            continue
        lora_a, lora_b = layer.lora_A[adapter], layer.lora_B[adapter]
        sub = x.index_select(0, idx).to(lora_a.weight.dtype)
        delta = lora_b(lora_a(layer.lora_dropout[adapter](sub))) * layer.scaling[adapter]
        result.index_add_(0, idx, delta.to(result.dtype))
    return result


def _plain_lora(layers) -> bool:
    """Every LoRA layer a plain unmerged Linear without a variant (DoRA ...): what _lora_rows_forward does."""
    from peft.tuners.lora.layer import Linear

    return all(type(m) is Linear and not m.merged and not getattr(m, "lora_variant", None) for m in layers)


@contextlib.contextmanager
def per_row_adapters(model, adapter_names: list[str]):
    """While a mixed batch runs through the PEFT model, each row uses its own adapter: LoRA layers add each
    row's own deltas, and each trained module (modules_to_save: the heads) applies each row's own copy,
    with outputs of different widths zero-padded to the widest. Yields the extra forward arguments: none
    where loraclf's own row-wise LoRA applies, else PEFT's ``adapter_names`` (its mixed-batch path)."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    index = rows_of(adapter_names)
    modules = list(model.modules())
    wrappers = [m for m in modules if isinstance(m, AuxiliaryTrainingWrapper) and hasattr(m, "modules_to_save")]
    layers = [m for m in modules if isinstance(m, LoraLayer)]
    own = _plain_lora(layers)
    patched = wrappers + (layers if own else [])
    for w in wrappers:
        w.forward = functools.partial(_rows_forward, w, index)
    if own:
        device = next(model.parameters()).device
        rows = {a: torch.tensor(i, dtype=torch.long, device=device) for a, i in index.items()}
        for m in layers:
            m.forward = functools.partial(_lora_rows_forward, m, rows)
    try:
        yield {} if own else {"adapter_names": adapter_names}
    finally:
        for m in patched:
            del m.forward
