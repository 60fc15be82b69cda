"""Build the model to train: base checkpoint + classification head + method (lora | head | full)."""

from __future__ import annotations

import contextlib
import logging
import pickle
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from ..errors import BudgetError, ModelError
from .methods import METHODS
from .registry import Resolved, resolve
from .targets import DECODER_TYPES, DEFAULT_TARGETS, default_targets

if TYPE_CHECKING:
    from ..config import LoraSection, ModelConfig

log = logging.getLogger("loraclf")

HEAD_NAMES = ["classifier", "score"]  # PEFT's SEQ_CLS defaults, suffix-matched like PEFT does
# What a checkpoint that cannot be loaded raises: a missing or unreadable file, a bad config, or a pickled
# weights file that holds more than tensors (torch refuses to run it: weights_only).
LOAD_ERRORS = (OSError, ValueError, pickle.UnpicklingError)


def load_error(what: str, e: BaseException) -> ModelError:
    """A failed load as one line; a refused pickle says why instead of quoting torch's advice to trust it."""
    if isinstance(e, pickle.UnpicklingError):
        return ModelError(f"{what}: its weights file is a pickle that holds more than tensors; it is not loaded "
                          "(that could run code): convert the checkpoint to safetensors")
    return ModelError(f"{what}: {str(e).splitlines()[0][:300]}")


@dataclass
class Built:
    model: torch.nn.Module
    tokenizer: Any
    resolved: Optional[Resolved]
    model_type: str
    target_modules: Optional[list[str] | str]
    modules_to_save: list[str]
    newly_initialised: list[str] = field(default_factory=list)
    base_fingerprint: Optional[str] = None  # of the frozen base weights (see weights_fingerprint)


FINGERPRINT_VALUES = 64  # values read from each end of every tensor


def weights_fingerprint(model: torch.nn.Module, skip: Sequence[str] = ()) -> str:
    """A short id of a base model's weights: a hash of every tensor's name, shape and first and last
    values, leaving out the modules in `skip` (the head and what is trained whole, which training
    replaces). Two bases of one shape but other weights differ in it; reading it costs microseconds."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if _covered(_module_of(name), list(skip)):
            continue
        flat = p.detach().reshape(-1)
        ends = flat if flat.numel() <= 2 * FINGERPRINT_VALUES else torch.cat([flat[:FINGERPRINT_VALUES],
                                                                           flat[-FINGERPRINT_VALUES:]])
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        h.update(ends.to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint_skip(missing: Sequence[str], modules_to_save: Optional[Sequence[str]]) -> list[str]:
    """The modules a classifier base's fingerprint leaves out: the head, the weights the checkpoint lacks
    (trained, so the artifact carries them) and what the user trains whole; the artifact's
    modules_to_save, as loraclf.json records it."""
    extra = [m for m in sorted({_module_of(k) for k in missing}) if not _covered(m, HEAD_NAMES)]
    return list(dict.fromkeys(HEAD_NAMES + extra + list(modules_to_save or [])))


def load_tokenizer(path: str, revision: Optional[str] = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0][:200]}") from None
    if tok.pad_token is None:
        # Decoders often lack a pad token; eos is safe because pooling uses the attention mask.
        tok.pad_token = tok.eos_token or tok.unk_token
        if tok.pad_token is None:
            raise ModelError(f"tokenizer of {path} has no pad, eos or unk token to pad with")
    return tok


def _module_of(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def _covered(module: str, names: list[str]) -> bool:
    parts = module.split(".")
    return any(module.endswith(n) or n in parts for n in names)


@contextlib.contextmanager
def quiet_hf():
    """Silence transformers' logging and warnings while loading: loraclf reports what matters itself."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _load_config(resolved: Resolved, cfg: ModelConfig):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolved.path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model config from {resolved.path}: {str(e).splitlines()[0][:200]}") from None


def _add_lora(model, task_type, lora: LoraSection, targets, model_type: str, shown=None, **extra):
    """Wrap `model` with PEFT LoRA; a target list that matches nothing is a one-line ModelError
    naming `shown` (what the user wrote, e.g. 'all-linear'), default `targets`."""
    from peft import LoraConfig, get_peft_model

    if isinstance(targets, list):  # PEFT applies a list if any one name matches; each must
        names = [n for n, _ in model.named_modules()]
        for t in targets:
            if not any(n == t or n.endswith("." + t) for n in names):
                raise ModelError(f"lora.target_modules: {t!r} matches no module of this {model_type} model "
                                 f"(`loraclf models --targets` lists the defaults)")
    _check_rank(model, targets, lora.r)
    pcfg = LoraConfig(task_type=task_type, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=targets, bias=lora.bias, **extra)
    try:
        return get_peft_model(model, pcfg)
    except ValueError as e:
        raise ModelError(f"lora.target_modules {shown or targets!r} do not fit {model_type}: "
                         f"{str(e).splitlines()[0][:200]}") from None


def _check_rank(model, targets, r: int) -> None:
    """A LoRA update of a layer has rank at most its smaller dimension; a larger lora.r only allocates
    (a rank of 1e9 would ask for terabytes)."""
    from ..errors import ConfigError

    dims = [min(m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and (targets == "all-linear" or any(n == t or n.endswith("." + t) for t in (targets or [])))]
    if dims and r > min(dims):
        raise ConfigError(f"lora.r={r} is larger than the smallest targeted layer allows ({min(dims)}): a LoRA "
                          f"update of a layer has rank at most its smaller dimension; use lora.r <= {min(dims)}")


def quantization_config(quantize: Optional[str], skip: Sequence[str] = ()):
    """transformers' BitsAndBytesConfig for `model.quantize` (None: full precision). `skip` names modules
    kept in full precision because they are trained whole (the classification head, modules_to_save)."""
    if quantize is None:
        return None
    from ..errors import ConfigError

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"model.quantize={quantize} needs bitsandbytes: pip install 'loraclf[quantize]'") from None
    except Exception as e:  # a build without a backend for this machine fails at import
        raise ConfigError(f"model.quantize={quantize}: bitsandbytes cannot run here "
                          f"({str(e).splitlines()[0][:150]})") from None
    from transformers import BitsAndBytesConfig

    skip = list(dict.fromkeys(list(skip) + ["lm_head"]))
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", llm_int8_skip_modules=skip,
                              bnb_4bit_compute_dtype=torch.bfloat16 if cuda_bf16 else torch.float32)


def _quantized_kwargs(cfg: ModelConfig, skip: Sequence[str] = ()) -> dict:
    q = quantization_config(cfg.quantize, skip)
    return {} if q is None else {"quantization_config": q}


def prepare_quantized(model, quantize: Optional[str]):
    """A quantized base made ready for adapters: PEFT freezes it, keeps norms in fp32 and lets
    gradients reach the inputs (gradient checkpointing is train.gradient_checkpointing's business)."""
    if quantize is None:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def enable_gradient_checkpointing(model) -> None:
    """train.gradient_checkpointing on the base model under any PEFT wrapper. Non-reentrant
    checkpointing, and input embeddings that require grad so the frozen base still passes gradients
    back to the adapters inside the recomputed layers."""
    from ..errors import ConfigError

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing: {type(base).__name__} does not support it (turn it off)")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.enable_input_require_grads()


def decoder_config(mcfg) -> bool:
    """Whether a model config is a decoder's (a causal LM) rather than an encoder's."""
    return mcfg.model_type in DECODER_TYPES or bool(getattr(mcfg, "is_decoder", False))


def is_encoder(cfg: ModelConfig) -> bool:
    """Whether `model.name` is an encoder (reads its config, not its weights)."""
    return not decoder_config(_load_config(resolve(cfg.name, quiet=True), cfg))


def from_pretrained(auto_cls, path: str, cfg: ModelConfig, **kwargs):
    """`auto_cls.from_pretrained` with the configured attention kernel, or the default one where the
    architecture does not support it."""
    try:
        return auto_cls.from_pretrained(path, attn_implementation=cfg.attn_implementation, **kwargs)
    except (ValueError, ImportError) as e:
        if cfg.attn_implementation and "attn" in str(e).lower():
            return auto_cls.from_pretrained(path, **kwargs)
        raise


def load_base(cfg: ModelConfig, num_labels: int, id2label: dict[int, str], quiet: bool = False,
              modules_to_save: Optional[Sequence[str]] = None, problem_type: str = "single_label_classification"):
    """Load the checkpoint with a sequence-classification head; report weights it had to create."""
    from transformers import AutoModelForSequenceClassification

    resolved = resolve(cfg.name, quiet=quiet)
    tok = load_tokenizer(resolved.path, cfg.revision, cfg.trust_remote_code)
    mcfg = _load_config(resolved, cfg)
    mcfg.num_labels = num_labels
    mcfg.id2label = {int(k): v for k, v in id2label.items()}
    mcfg.label2id = {v: int(k) for k, v in id2label.items()}
    mcfg.problem_type = problem_type  # plain transformers picks the loss (and pipeline() the activation) from it
    # The head finds the last real token by the config's pad id: it must be the id batches are padded with.
    mcfg.pad_token_id = tok.pad_token_id
    kwargs: dict[str, Any] = dict(config=mcfg, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                  output_loading_info=True,
                                  **_quantized_kwargs(cfg, HEAD_NAMES + ["pooler"] + list(modules_to_save or [])))
    try:
        with quiet_hf():  # we report newly initialised weights ourselves
            model, info = from_pretrained(AutoModelForSequenceClassification, resolved.path, cfg, **kwargs)
    except LOAD_ERRORS as e:
        raise load_error(f"cannot load model {cfg.name}", e) from None
    missing = set(info.get("missing_keys", []))
    missing.update(_untrained_pooler_params(model))
    return prepare_quantized(model, cfg.quantize), tok, resolved, sorted(missing)


def _untrained_pooler_params(model) -> list[str]:
    """Pooler weights present in the checkpoint but never trained (bias exactly zero).

    Sentence-embedding checkpoints such as all-MiniLM-L6-v2 pool by mean, so their BERT pooler is
    the untouched initialisation (tiny weights, zero bias). Freezing it would starve the head of
    signal, so it is treated like a missing weight: trained and saved with the adapter.
    """
    out = []
    for name, mod in model.named_modules():
        if "pooler" in name.split(".")[-2:] or name.endswith("pooler.dense"):
            bias = getattr(mod, "bias", None)
            if isinstance(mod, torch.nn.Linear) and bias is not None and not bool(bias.detach().abs().max() > 0):
                out += [f"{name}.weight", f"{name}.bias"]
    return out


def build_prompt_model(cfg: ModelConfig, lora: LoraSection, labels: list[str], train_texts: Sequence[str],
                       train_labels, seed: int, quiet: bool = False) -> Built:
    """A causal LM wrapped as a verbalizer or generate classifier (see decoder_heads)."""
    from transformers import AutoModelForCausalLM

    from .decoder_heads import PromptClassifier, greedy_generation
    from .prompting import DEFAULT_PROMPT, PromptFormatter, PromptSpec, label_words_from, pick_examples

    resolved = resolve(cfg.name, quiet=quiet)
    tok = load_tokenizer(resolved.path, cfg.revision, cfg.trust_remote_code)
    tok.padding_side = "left"  # every prompt ends at the same position: the answer slot
    mtype = _load_config(resolved, cfg).model_type
    if mtype in DEFAULT_TARGETS and mtype not in DECODER_TYPES:
        raise ModelError(f"model.head={cfg.head} needs a decoder (causal LM); {cfg.name} is a {mtype} encoder: "
                         "use model.head=classifier")
    try:
        with quiet_hf():
            lm = AutoModelForCausalLM.from_pretrained(resolved.path, revision=cfg.revision,
                                                      trust_remote_code=cfg.trust_remote_code,
                                                      attn_implementation=cfg.attn_implementation,
                                                      **_quantized_kwargs(cfg))
    except LOAD_ERRORS as e:
        raise load_error(f"head {cfg.head} needs a causal LM; cannot load {cfg.name} as one", e) from None
    base_id = weights_fingerprint(lm)
    lm = prepare_quantized(lm, cfg.quantize)
    greedy_generation(lm)
    model_type = lm.config.model_type
    spec = PromptSpec(cfg.prompt or DEFAULT_PROMPT, label_words_from(cfg.label_words, labels), cfg.chat_template,
                      cfg.system_prompt, pick_examples(train_texts, train_labels, labels, cfg.few_shot, seed))
    formatter = PromptFormatter(tok, spec, labels)
    lm, targets = apply_prompt_method(lm, cfg.method, lora)
    fallback = cfg.fallback_label
    if fallback is None:
        import numpy as np

        fallback = labels[int(np.bincount(np.asarray(train_labels), minlength=len(labels)).argmax())]
    elif fallback not in labels:
        raise ModelError(f"model.fallback_label {fallback!r} is not a label ({', '.join(labels)})")
    model = PromptClassifier(lm, formatter, labels, cfg.head, cfg.max_new_tokens, fallback, cfg.shared_prefix)
    return Built(model, tok, resolved, model_type, targets, [], [], base_id)


def apply_prompt_method(lm, method: str, lora: LoraSection) -> tuple[Any, Optional[list[str] | str]]:
    """A causal LM for a prompt head, as the method says: LoRA adapters, every weight trained, or
    nothing trained. Returns the model and the LoRA targets (None without LoRA)."""
    if METHODS[method].adapters:
        from peft import TaskType

        model_type = lm.config.model_type
        targets = lora.target_modules if lora.target_modules is not None else default_targets(model_type)
        return _add_lora(lm, TaskType.CAUSAL_LM, lora, targets, model_type), targets
    for p in lm.parameters():
        p.requires_grad = METHODS[method].trains_base
    return lm, None


def apply_method(model, tokenizer, resolved: Optional[Resolved], method: str, lora: LoraSection,
                 missing: Sequence[str] = ()) -> Built:
    """Make the right parameters trainable: LoRA adapters, the head, or everything.

    `missing` names weights the checkpoint lacked; their modules are trained (and saved) too.
    Works on any sequence-classification model, including random-init ones built from a config.
    """
    model_type = model.config.model_type
    is_decoder = decoder_config(model.config)
    if is_decoder and tokenizer is not None:
        # The head reads the last non-pad token; right padding keeps positions those of the text alone.
        tokenizer.padding_side = "right"
    new_modules = sorted({_module_of(k) for k in missing})
    extra = [m for m in new_modules if not _covered(m, HEAD_NAMES)]
    if extra:
        log.info("weights missing from the checkpoint will be trained: %s", ", ".join(extra))
    to_save = list(dict.fromkeys(extra + list(lora.modules_to_save or [])))

    targets: Optional[list[str] | str] = None
    how = METHODS.get(method)
    if how is None or not how.trains:
        raise ModelError(f"method {method!r} trains nothing through a classification head "
                         f"(methods: {', '.join(m for m, x in METHODS.items() if x.trains)})")
    if how.adapters:
        from peft import TaskType

        targets = lora.target_modules if lora.target_modules is not None else default_targets(model_type)
        expanded = _expand_all_linear(model, HEAD_NAMES + to_save) if targets == "all-linear" else targets
        model = _add_lora(model, TaskType.SEQ_CLS, lora, expanded, model_type, shown=targets,
                          modules_to_save=list(to_save) or None)  # a copy: PEFT appends to it
    else:  # the head (and weights the checkpoint lacked) alone, or every weight
        names = HEAD_NAMES + to_save
        for n, p in model.named_parameters():
            p.requires_grad = how.trains_base or _covered(_module_of(n), names)
        if not any(p.requires_grad for p in model.parameters()):
            raise ModelError(f"no classification head found in {type(model).__name__} for method {method!r}")
    return Built(model, tokenizer, resolved, model_type, targets,
                 list(dict.fromkeys(HEAD_NAMES + to_save)), sorted(missing))


def _expand_all_linear(model, head: list[str]) -> list[str]:
    """'all-linear' as full module names, leaving out the head (which is trained whole).

    PEFT's own expansion would also put LoRA on DistilBERT's pre_classifier, which its suffix
    matching of modules_to_save ('classifier') then claims too, and fails.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not _covered(n, head)]
    if not names:
        raise ModelError("lora.target_modules=all-linear found no linear layers outside the head")
    return names


def count_parameters(model: torch.nn.Module, head_modules: Sequence[str] = tuple(HEAD_NAMES)) -> dict[str, int]:
    """Trainable parameters by component (lora / head / other) and the model's total.

    PEFT keeps a frozen copy of each module in modules_to_save (``original_module``); the total
    counts the model as it runs, so those copies are excluded.
    """
    lora = head = other = total = 0
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if ".original_module." in name:
            continue
        n = p.numel()
        total += n
        if not p.requires_grad:
            continue
        if "lora_" in name:
            lora += n
        elif "modules_to_save" in name or _covered(_module_of(name), list(head_modules)):
            head += n
        else:
            other += n
    trainable = lora + head + other
    return {"trainable": trainable, "lora": lora, "head": head, "other": other, "total": total,
            "trainable_pct": round(100.0 * trainable / max(total, 1), 4)}


def check_budget(counts: dict[str, int], budget: Optional[int]) -> None:
    if budget is not None and counts["trainable"] > budget:
        raise BudgetError(
            f"config trains {counts['trainable']:,} parameters (lora {counts['lora']:,}, head {counts['head']:,}, "
            f"other {counts['other']:,}), over train.max_trainable_params={budget:,}; "
            "lower lora.r or target fewer modules"
        )
