"""Models: the registry of bundled aliases, default LoRA targets, training methods, heads, model
building, parameter accounting and budgets.

Importing this package loads nothing heavy: torch, transformers and PEFT are imported by the
functions that build models, so the methods and heads registries can be read anywhere (config
validation, reports, comparisons).
"""

import importlib

_LAZY = {
    "Built": "build", "apply_method": "build", "build_prompt_model": "build", "check_budget": "build",
    "count_parameters": "build", "load_tokenizer": "build",
    "ALIASES": "registry", "cache_dir": "registry", "list_models": "registry", "resolve": "registry",
    "DEFAULT_TARGETS": "targets", "default_targets": "targets",
    "METHODS": "methods", "Method": "methods",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = sorted(_LAZY)
