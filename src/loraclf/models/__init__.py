"""Model registry, default LoRA targets, model building and parameter accounting."""

from .build import Built, apply_method, build_prompt_model, check_budget, count_parameters, load_tokenizer
from .registry import ALIASES, cache_dir, list_models, resolve
from .targets import DEFAULT_TARGETS, default_targets

__all__ = ["ALIASES", "DEFAULT_TARGETS", "Built", "apply_method", "build_prompt_model", "cache_dir",
           "check_budget", "count_parameters", "default_targets", "list_models", "load_tokenizer", "resolve"]
