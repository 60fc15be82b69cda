"""Artifacts: save a trained classifier so it loads with loraclf *and* with plain PEFT/transformers.

Layout of ``artifact/``:

- LoRA runs: ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT standard; the trained
  head and any newly initialised modules are inside, as ``modules_to_save``), ``config.json`` (the
  base config with ``id2label``/``label2id``), tokenizer files and ``loraclf.json``.
- head / full runs: a complete transformers checkpoint (``model.safetensors`` + ``config.json``),
  tokenizer files and ``loraclf.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .errors import LoraclfError, ModelError

FORMAT_VERSION = 1
META_FILE = "loraclf.json"
log = logging.getLogger("loraclf")


def versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    from . import __version__

    return {"loraclf": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "python": platform.python_version()}


def save_artifact(model, tokenizer, dest: Path, meta: dict[str, Any]) -> None:
    """Write the model (adapter or full), tokenizer, labelled config and loraclf.json into `dest`."""
    from peft import PeftModel

    dest.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "formatter"):  # a decoder prompt head: save the language model (adapter or full)
        lm = model.lm
        if isinstance(lm, PeftModel):
            _save_adapter(lm, dest, meta)
            config = lm.get_base_model().config
        else:
            if meta["method"] == "full":
                lm.save_pretrained(str(dest))
            config = lm.config
        config.id2label = dict(enumerate(meta["labels"]))
        config.label2id = {n: i for i, n in enumerate(meta["labels"])}
        config.save_pretrained(str(dest))
    elif isinstance(model, PeftModel):
        _save_adapter(model, dest, meta)
        model.get_base_model().config.save_pretrained(str(dest))
    else:
        model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    full = {"format_version": FORMAT_VERSION, **meta, "versions": versions()}
    (dest / META_FILE).write_text(json.dumps(full, indent=2))


def _save_adapter(model, dest: Path, meta: dict) -> None:
    # No embedding layers are trained, so PEFT need not look anything up (it would go online).
    model.save_pretrained(str(dest), save_embedding_layers=False)
    # Plain-PEFT users load the base from here: the hub id when the alias has one, not a local path.
    acfg_path = dest / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text())
    acfg["base_model_name_or_path"] = meta.get("base_model_hub_id") or meta["base_model"]
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True))


def read_meta(path: Path) -> dict:
    f = path / META_FILE
    if not f.exists():
        raise ModelError(f"{path} is not a loraclf artifact (no {META_FILE}); pass a run directory or its artifact/")
    return json.loads(f.read_text())


def artifact_dir(path: str | Path) -> Path:
    """Accept a run directory or an artifact directory."""
    p = Path(path)
    if (p / "artifact" / META_FILE).exists():
        return p / "artifact"
    if (p / META_FILE).exists():
        return p
    if not p.exists():
        raise ModelError(f"artifact not found: {p}")
    raise ModelError(f"{p} is not a loraclf artifact or run directory (no {META_FILE})")


class Classifier:
    """A loaded classifier: ``predict`` returns label names, ``predict_proba`` probabilities."""

    def __init__(self, model, tokenizer, meta: dict, device: torch.device):
        self.model, self.tokenizer, self.meta, self.device = model, tokenizer, meta, device
        self.labels: list[str] = list(meta["labels"])
        self.max_length: int = int(meta.get("max_length", 512))
        self.precision: str = "fp32"
        self.formatter = getattr(model, "formatter", None)  # decoder prompt heads build their own inputs

    def __repr__(self) -> str:
        return (f"Classifier(base={self.meta.get('base_model')!r}, method={self.meta.get('method')!r}, "
                f"labels={self.labels})")

    def _encode(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None):
        from .data import encode

        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts, not a single string")
        if self.formatter is not None:
            return self.formatter.encode(list(texts), None, self.max_length)
        return encode(self.tokenizer, list(texts), None, self.max_length, pairs)

    def logits(self, texts: Sequence[str], batch_size: int = 128, pairs: Optional[Sequence[str]] = None,
               progress: bool = False) -> np.ndarray:
        from .loop import predict_logits

        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        enc = self._encode(texts, pairs)
        # fp32 by default so the numbers match the run's metrics; precision="bf16"/"fp16" trades that for speed
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.autocast(self.device.type, dtype=low or torch.float32, enabled=low is not None):
            return predict_logits(self.model, enc, self.tokenizer, batch_size, progress=progress)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 128, pairs: Optional[Sequence[str]] = None,
                      progress: bool = False) -> np.ndarray:
        from .loop import softmax

        return softmax(self.logits(texts, batch_size, pairs, progress))

    def predict(self, texts: Sequence[str], batch_size: int = 128, pairs: Optional[Sequence[str]] = None,
                progress: bool = False) -> list[str]:
        probs = self.predict_proba(texts, batch_size, pairs, progress)
        return [self.labels[i] for i in probs.argmax(axis=1)]


def load(path: str | Path, base_model: Optional[str] = None, device: Optional[str] = None,
         merge: bool = True, precision: str = "fp32") -> Classifier:
    """Load an artifact (or a run directory) for prediction.

    `base_model` overrides where the base weights come from; LoRA weights are merged into the base
    unless ``merge=False``; ``precision`` ("fp32", "bf16", "fp16") is the autocast used on GPU.
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise LoraclfError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
    clf = _load(path, base_model, device, merge)
    clf.precision = precision
    return clf


def _load(path: str | Path, base_model: Optional[str], device: Optional[str], merge: bool) -> Classifier:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .models import load_tokenizer, resolve

    art = artifact_dir(path)
    meta = read_meta(art)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tok = load_tokenizer(str(art))
    if meta.get("head", "classifier") != "classifier":
        model = _load_prompt_model(art, meta, tok, base_model, merge)
    else:
        with _loading(art):
            if meta["method"] == "lora":
                from peft import PeftModel

                resolved = resolve(base_model or meta["base_model"])
                config = AutoConfig.from_pretrained(str(art))
                base = AutoModelForSequenceClassification.from_pretrained(resolved.path, config=config)
                model = PeftModel.from_pretrained(base, str(art))
                if merge:
                    model = model.merge_and_unload()
            else:
                model = AutoModelForSequenceClassification.from_pretrained(str(art))
    model.to(dev).eval()
    return Classifier(model, tok, meta, dev)


@contextlib.contextmanager
def _loading(art: Path):
    """transformers kept quiet, and a failed load as a one-line ModelError naming the artifact."""
    from .models.build import quiet_hf

    try:
        with quiet_hf():
            yield
    except LoraclfError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"cannot load artifact {art}: {str(e).splitlines()[0][:300]}") from None


def _load_prompt_model(art: Path, meta: dict, tok, base_model: Optional[str], merge: bool):
    """The PromptClassifier (verbalizer or generate head) an artifact describes."""
    from transformers import AutoModelForCausalLM

    from .models import resolve
    from .models.decoder_heads import PromptClassifier, greedy_generation
    from .models.prompting import PromptFormatter, PromptSpec

    tok.padding_side = "left"
    with _loading(art):
        if meta["method"] == "full":
            lm = AutoModelForCausalLM.from_pretrained(str(art))
        else:
            lm = AutoModelForCausalLM.from_pretrained(resolve(base_model or meta["base_model"]).path)
            if meta["method"] == "lora":
                from peft import PeftModel

                lm = PeftModel.from_pretrained(lm, str(art))
                if merge:
                    lm = lm.merge_and_unload()
    greedy_generation(lm)
    formatter = PromptFormatter(tok, PromptSpec.from_dict(meta["prompt"]), meta["labels"])
    return PromptClassifier(lm, formatter, meta["labels"], meta["head"], meta.get("max_new_tokens", 8),
                            meta.get("fallback_label"))
