"""Default LoRA target modules per architecture (`config.model_type`).

Attention query and value projections, as in the LoRA paper and the reference projects. Fused
projections (ModernBERT's Wqkv, Phi's qkv_proj) are adapted whole.
"""

from __future__ import annotations

from ..errors import ModelError

DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "albert": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "modernbert": ["Wqkv"],
    "mpnet": ["q", "v"],
    "xlnet": ["q", "v"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
}

DECODER_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "gpt_neox"}


def default_targets(model_type: str) -> list[str]:
    """LoRA targets for an architecture, or an error that says how to choose them."""
    if model_type in DEFAULT_TARGETS:
        return list(DEFAULT_TARGETS[model_type])
    raise ModelError(
        f"no default LoRA targets for model_type '{model_type}': set lora.target_modules "
        "(a list of module names, or 'all-linear')"
    )
