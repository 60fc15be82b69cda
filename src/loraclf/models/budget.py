"""Parameter budgets without training: counts from an architecture's config, and ``lora.r: auto``.

Counting builds the sequence-classification model on PyTorch's *meta* device: every tensor has
its shape but no storage, so RoBERTa-base or SmolLM2-360M is "built" in a fraction of a second
with no memory and no download, and :func:`loraclf.models.apply_method` makes exactly the
parameters trainable that a real run would. The counts equal those of a random-init model of the
same shape (tested).

Architecture configs come from, in order: a bundled alias (found by :mod:`loraclf.models.registry`)
or local folder, a small table of well-known hub models (so ``loraclf params --config-only`` works
offline), then ``AutoConfig.from_pretrained`` (needs the network or the Hugging Face cache).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from ..errors import BudgetError, ConfigError, ModelError
from .heads import head_class
from .methods import METHODS

if TYPE_CHECKING:
    from ..config import Config, LoraSection

log = logging.getLogger("loraclf")

BYTES_FP32 = 4


def _distilbert_base():
    from transformers import DistilBertConfig

    return DistilBertConfig()  # the defaults are distilbert-base-uncased


def _bert_base():
    from transformers import BertConfig

    return BertConfig()  # the defaults are bert-base-uncased


def _roberta_base():
    from transformers import RobertaConfig

    return RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                         bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)


def _minilm_l6():
    from transformers import BertConfig

    return BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)


def _smollm2(hidden: int, layers: int, heads: int, kv: int, inter: int, rope: float):
    def make():
        from transformers import LlamaConfig

        return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=kv, intermediate_size=inter, vocab_size=49152,
                           tie_word_embeddings=True, max_position_embeddings=8192, rope_theta=rope,
                           rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2)

    return make


# Real shapes of models the recipes use (checked against their published config.json and parameter totals).
KNOWN_SHAPES: dict[str, Callable[[], Any]] = {
    "distilbert-base-uncased": _distilbert_base,
    "distilbert/distilbert-base-uncased": _distilbert_base,
    "bert-base-uncased": _bert_base,
    "google-bert/bert-base-uncased": _bert_base,
    "roberta-base": _roberta_base,
    "facebookai/roberta-base": _roberta_base,
    "sentence-transformers/all-minilm-l6-v2": _minilm_l6,
    "huggingfacetb/smollm2-360m": _smollm2(960, 32, 15, 5, 2560, 100000.0),
    "huggingfacetb/smollm2-360m-instruct": _smollm2(960, 32, 15, 5, 2560, 100000.0),
    "huggingfacetb/smollm2-135m": _smollm2(576, 30, 9, 3, 1536, 100000.0),
    "huggingfacetb/smollm2-135m-instruct": _smollm2(576, 30, 9, 3, 1536, 100000.0),
}


def _local_checkpoint(name: str) -> Optional[Path]:
    """The folder holding `name`'s config.json when it is on disk without converting or downloading
    anything: a bundled alias (resolved by the model registry) or a local folder."""
    from .registry import ALIASES, cache_dir, resolve

    alias = ALIASES.get(name.strip().lower())
    if alias is not None:
        if alias.gguf and not (cache_dir() / alias.name / "config.json").exists():
            return None  # resolving would convert the GGUF weights; its shape comes from the table
        try:
            folder = Path(resolve(name, quiet=True).path)
        except ModelError:  # the alias's package is not installed
            return None
        return folder if (folder / "config.json").exists() else None
    p = Path(name).expanduser()
    return p if p.is_dir() and (p / "config.json").exists() else None


def architecture_config(name: str, revision: Optional[str] = None, trust_remote_code: bool = False):
    """(transformers config, where it came from) for an alias, local folder, known hub id or any hub id."""
    from transformers import AutoConfig

    from .registry import ALIASES

    local = _local_checkpoint(name)
    alias = ALIASES.get(name.strip().lower())
    if local is not None:
        where = f"the bundled {alias.name} config" if alias else f"{local}/config.json"
        return AutoConfig.from_pretrained(str(local), trust_remote_code=trust_remote_code and not alias), where
    key = (alias.hub_id if alias else name).strip().lower()  # an alias not installed: its hub model's shape
    if key in KNOWN_SHAPES and revision is None:
        return KNOWN_SHAPES[key](), "the built-in shape table"
    try:
        return (AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code),
                "the hub config")
    except (OSError, ValueError) as e:
        known = ", ".join(sorted({k for k in KNOWN_SHAPES if "/" in k or k.endswith("-base")}))
        raise ModelError(f"no architecture config for {name!r} offline ({str(e).splitlines()[0][:120]}); "
                         f"known shapes: {known}, or pass a local folder") from None


def meta_model(arch_config, num_labels: int, head: str = "classifier", trust_remote_code: bool = False):
    """The model a run would train with `head`, built on the meta device (shapes only, no weights, no memory)."""
    import torch
    import transformers

    cfg = copy.deepcopy(arch_config)
    cfg.num_labels = num_labels
    if getattr(cfg, "pad_token_id", None) is None:  # decoders: only the shape matters here
        eos = getattr(cfg, "eos_token_id", None)
        cfg.pad_token_id = (eos[0] if isinstance(eos, (list, tuple)) and eos else eos) or 0
    cls = getattr(transformers, head_class(head).transformers_class)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            try:
                return cls.from_config(cfg, trust_remote_code=trust_remote_code)
            except ValueError as e:
                raise ModelError(
                    f"{cfg.model_type} has no {cls.__name__[12:]} class: {str(e).splitlines()[0][:160]}"
                ) from None


def count_config(arch_config, method: str, lora: LoraSection, num_labels: int, missing: Sequence[str] = (),
                 head: str = "classifier") -> dict:
    """Trainable-parameter breakdown (as :func:`count_parameters`) plus the targets and saved modules,
    counted the way the head builds its model."""
    return head_class(head).count_model(meta_model(arch_config, num_labels, head), method, lora, missing)


def full_model_bytes(counts: dict) -> int:
    """Bytes of the base model's weights in fp32 (LoRA weights aside), from a parameter breakdown
    such as metrics.json's "params"."""
    return (counts["total"] - counts.get("lora", 0)) * BYTES_FP32


def size_estimate(counts: dict, method: str) -> dict:
    """Bytes on disk (fp32 safetensors, headers aside): what the artifact stores, and the full model."""
    full = full_model_bytes(counts)
    m = METHODS[method]
    stored = counts["trainable"] * BYTES_FP32 if m.adapters else full  # otherwise a whole checkpoint
    return {"artifact_bytes": stored if m.saves else None, "full_model_bytes": full}


# ----------------------------------------------------------------------------- lora.r: auto


def _load_base_quietly(model_cfg, num_labels: int, id2label: dict):
    """(model config, weights the checkpoint lacks): loads the checkpoint without progress bars."""
    from transformers.utils import logging as hf_logging

    from .build import load_base

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model, _, _, missing = load_base(model_cfg, num_labels, id2label, quiet=True)
    finally:
        if was:
            hf_logging.enable_progress_bar()
    arch = model.config
    del model
    return arch, missing


def _n_modules(targets) -> float:
    return float("inf") if targets == "all-linear" else len(targets or [])


def rank_candidates(arch_config, lora: LoraSection, num_labels: int, budget: int, missing: Sequence[str] = (),
                    head: str = "classifier", method: Optional[str] = None) -> dict:
    """Every (rank, target set) candidate with its trainable count, and the one `r: auto` picks.

    LoRA parameters are linear in r (A is r x in, B is out x r) and nothing else depends on r, so
    one meta build at r=1 per target set gives every rank's count exactly.
    """
    target_sets = list(lora.auto_targets) if lora.auto_targets is not None else [lora.target_modules]
    rows = []
    for targets in target_sets:
        probe = dataclasses.replace(lora, r=1, target_modules=targets)
        c = count_config(arch_config, method or _adapter_method(), probe, num_labels, missing, head)
        per_rank, fixed = c["lora"], c["trainable"] - c["lora"]
        for r in sorted(set(lora.auto_ranks)):
            n = fixed + r * per_rank
            rows.append({"r": r, "target_modules": c["target_modules"], "trainable": n, "fits": n <= budget,
                         "lora": r * per_rank, "head": c["head"], "other": c["other"],
                         "total": c["total"] - per_rank + r * per_rank})
    fitting = [x for x in rows if x["fits"]]
    if not fitting:
        small = min(rows, key=lambda x: x["trainable"])
        raise BudgetError(
            f"lora.r: auto: no candidate fits train.max_trainable_params={budget:,}; the smallest, r={small['r']} on "
            f"{_fmt_targets(small['target_modules'])}, trains {small['trainable']:,} (head alone {small['head']:,})")
    best = max(fitting, key=lambda x: (x["trainable"], _n_modules(x["target_modules"]), x["r"]))
    alpha, alpha_rule = auto_alpha(lora, best["r"])
    return {"budget": budget, "chosen": {"r": best["r"], "alpha": alpha, "target_modules": best["target_modules"],
                                         "trainable": best["trainable"]},
            "rule": "most trainable parameters within the budget; ties: more target modules, then higher rank",
            "alpha_rule": alpha_rule, "candidates": rows}


AUTO_ALPHA_PER_RANK = 2  # the default scale alpha / r = 16 / 8


def auto_alpha(lora: LoraSection, r: int) -> tuple[float, str]:
    """The alpha that trains the rank `r: auto` chose, and the rule that gave it. LoRA's update is scaled by
    alpha / r, so a fixed alpha would shrink the update of a large chosen rank (r=64 at alpha 16 trains at
    scale 0.25, 8x below the default's 2): alpha follows r at the default scale, unless lora.alpha was set."""
    from ..config import default

    if lora.alpha != default("lora.alpha"):
        return lora.alpha, f"lora.alpha={lora.alpha:g} as set (scale alpha / r = {lora.alpha / r:.3g})"
    alpha = AUTO_ALPHA_PER_RANK * r
    return alpha, f"alpha follows r: {AUTO_ALPHA_PER_RANK} x r = {alpha} (scale {AUTO_ALPHA_PER_RANK}, as 16 / 8)"


def _adapter_method() -> str:
    """The method `lora.r: auto` counts when none is named: the first that trains adapters."""
    return next(name for name, m in METHODS.items() if m.adapters)


def _fmt_targets(t) -> str:
    return t if isinstance(t, str) else "+".join(t or ["default"])


def _arch_and_missing(cfg: Config, num_labels: int, id2label: dict, base=None) -> tuple[Any, list[str]]:
    """The architecture config a count uses, and the weights its checkpoint lacks when the head's model
    can lack some (they are trained too): from `base` when the caller loaded the checkpoint already."""
    if head_class(cfg.model.head).counts_missing_weights:
        return base if base is not None else _load_base_quietly(cfg.model, num_labels, id2label)
    arch, _ = architecture_config(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    return arch, []


def resolve_auto_lora(cfg: Config, id2label: dict[int, str], quiet: bool = False,
                      base: Optional[tuple[Any, Sequence[str]]] = None) -> Optional[dict]:
    """``lora.r: auto``: the rank and targets to train, for :func:`loraclf.training.run.train`.

    Counts use the checkpoint's own config and the weights it lacks (they are trained too), so the
    choice is exact. Returns the choice for metrics.json (:func:`loraclf.models.heads.with_choice` gives the
    LoRA section that trains it), or None when there is nothing to choose. `base` is (model config, missing weights) of
    a checkpoint the caller has loaded already.
    """
    if cfg.lora.r != "auto" or not METHODS[cfg.model.method].adapters:
        return None
    arch, missing = _arch_and_missing(cfg, len(id2label), id2label, base)
    choice = rank_candidates(arch, cfg.lora, len(id2label), cfg.train.max_trainable_params, missing, cfg.model.head,
                             cfg.model.method)
    chosen = choice["chosen"]
    n_fit = sum(c["fits"] for c in choice["candidates"])
    msg = (f"lora.r=auto: r={chosen['r']} (alpha {chosen['alpha']:g}) on {_fmt_targets(chosen['target_modules'])}, "
           f"{chosen['trainable']:,} trainable params within the budget of {choice['budget']:,} "
           f"({n_fit} of {len(choice['candidates'])} candidates fit)")
    if not quiet:
        print(f"loraclf: {msg}")
    log.info(msg)
    return choice


# ----------------------------------------------------------------------------- loraclf params


def num_labels_for(cfg: Config, explicit: Optional[int] = None) -> tuple[int, str]:
    """How many labels to count the head for, and where that number came from."""
    from ..tasks import TASKS

    if explicit is not None:
        if explicit < 1:
            raise ConfigError("--num-labels must be >= 1 (1: a regression head)")
        return explicit, "--num-labels"
    fixed = TASKS[cfg.task].fixed_outputs if cfg.task in TASKS else None
    if fixed:
        return fixed, f"task: {cfg.task} ({'one output' if fixed == 1 else f'{fixed} outputs'})"
    if cfg.data.label_names:
        return len(cfg.data.label_names), "data.label_names"
    if cfg.data.path or cfg.data.train:
        from ..data import load_data
        from ..tasks import make_task

        data = load_data(cfg.data, cfg.seed, cfg.task)
        return make_task(data.task, data.labels.names).num_outputs, f"the labels of {cfg.data.path or cfg.data.train}"
    return 2, "default (no data configured; use --num-labels)"


def param_report(cfg: Config, num_labels: int, config_only: bool = True) -> dict:
    """Trainable-parameter breakdown of a config; `config_only` never loads (or downloads) weights."""
    head, method = cfg.model.head, METHODS[cfg.model.method]
    if config_only:
        arch, source = architecture_config(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
        missing: list[str] = []
    else:
        arch, missing = _arch_and_missing(cfg, num_labels, {i: f"label_{i}" for i in range(num_labels)})
        source = "the checkpoint (weights loaded)"
    lora, auto = cfg.lora, None
    if method.adapters and lora.r == "auto":
        auto = rank_candidates(arch, lora, num_labels, cfg.train.max_trainable_params, missing, head,
                               cfg.model.method)
        lora = dataclasses.replace(lora, r=auto["chosen"]["r"], alpha=auto["chosen"]["alpha"],
                                   target_modules=auto["chosen"]["target_modules"])
    elif lora.r == "auto":
        lora = dataclasses.replace(lora, r=8)  # unused: this method trains no LoRA adapters
    counts = count_config(arch, cfg.model.method, lora, num_labels, missing, head)
    out = {"model": cfg.model.name, "model_type": arch.model_type, "method": cfg.model.method, "head": head,
           "num_labels": num_labels, "source": source, "config_only": config_only,
           "r": lora.r if method.adapters else None, "alpha": lora.alpha if method.adapters else None,
           "newly_initialised": sorted({m.rsplit(".", 1)[0] for m in missing}),
           **counts, **size_estimate(counts, cfg.model.method), "budget": cfg.train.max_trainable_params}
    if auto:
        out["auto"] = auto
    return out


def format_param_report(rep: dict) -> str:
    """Terminal text for :func:`param_report`."""
    lines = [f"{rep['model']} ({rep['model_type']}, {rep['method']}, {rep['num_labels']} labels; "
             f"shapes from {rep['source']}{', meta device, no weights' if rep['config_only'] else ''})"]
    from .build import HEAD_NAMES

    method = METHODS[rep["method"]]
    if method.adapters:
        lines.append(f"LoRA r={rep['r']} alpha={rep['alpha']:g} on {_fmt_targets(rep['target_modules'])}")
    if rep.get("modules_to_save") and not method.trains_base:
        where = " and saved with the adapter" if method.adapters else ""
        lines.append(f"trained whole{where}: {', '.join(rep['modules_to_save'])}")
    lacking = [m for m in rep["newly_initialised"] if m not in HEAD_NAMES and ".classifier" not in m]
    if lacking:
        lines.append(f"weights the checkpoint lacks or ships untrained (trained): {', '.join(lacking)}")
    w = len(f"{rep['total']:,}")
    lines.append(f"trainable  {rep['trainable']:>{w},}  {rep['trainable_pct']:.2f}% of {rep['total']:,}")
    for k in ("lora", "head", "other"):
        lines.append(f"  {k:<8} {rep[k]:>{w},}")
    if rep["artifact_bytes"] is not None:
        lines.append(f"on disk (fp32): artifact ~{rep['artifact_bytes'] / 1e6:.2f} MB, full model "
                     f"{rep['full_model_bytes'] / 1e6:.1f} MB")
    if rep["budget"] is not None:
        ok = rep["trainable"] <= rep["budget"]
        lines.append(f"budget train.max_trainable_params={rep['budget']:,}: {'fits' if ok else 'EXCEEDED'}")
    if rep["config_only"] and not method.trains_base:
        lines.append("note: a config cannot show weights a checkpoint lacks or ships untrained (e.g. minilm's "
                     "pooler); they are trained too. Without --config-only they are counted.")
    if rep.get("auto"):
        lines.append("")
        lines.append(f"lora.r: auto candidates ({rep['auto']['rule']}):")
        for c in sorted(rep["auto"]["candidates"], key=lambda x: x["trainable"]):
            mark = "<- chosen" if (c["r"], c["target_modules"]) == (rep["r"], rep["target_modules"]) else ""
            lines.append(f"  r={c['r']:<3} {_fmt_targets(c['target_modules']):<28} {c['trainable']:>12,}  "
                         f"{'fits' if c['fits'] else 'over'} {mark}".rstrip())
    return "\n".join(lines)
