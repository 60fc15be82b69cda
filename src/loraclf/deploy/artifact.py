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
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..config import default
from ..errors import LoraclfError
from ..schema import artifact_dir, read_meta

BATCH_SIZE = default("train.eval_batch_size")
log = logging.getLogger("loraclf")


class Classifier:
    """A loaded classifier: ``predict`` returns the answers (label names; label lists for multi-label;
    scores for regression), ``predict_proba`` the outputs they come from (probabilities, or scores)."""

    def __init__(self, head, meta: dict, device: torch.device):
        self.head, self.meta, self.device = head, meta, device
        self.labels: list[str] = list(meta["labels"])
        self.max_length: int = int(meta.get("max_length", 512))
        self.precision: str = "fp32"

    @property
    def model(self):
        return self.head.model

    @property
    def tokenizer(self):
        return self.head.tokenizer

    @property
    def task(self):
        return self.head.task

    def __repr__(self) -> str:
        return (f"Classifier(base={self.meta.get('base_model')!r}, method={self.meta.get('method')!r}, "
                f"labels={self.labels})")

    def logits(self, texts: Sequence[str], batch_size: int = BATCH_SIZE, pairs: Optional[Sequence[str]] = None,
               progress: bool = False) -> np.ndarray:
        from ..training.loop import predict_logits

        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts, not a single string")
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        enc = self.head.encode(list(texts), None, self.max_length, pairs)
        # fp32 by default so the numbers match the run's metrics; precision="bf16"/"fp16" trades that for speed
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.autocast(self.device.type, dtype=low or torch.float32, enabled=low is not None):
            return predict_logits(self.head, enc, batch_size, progress=progress)

    def predict_proba(self, texts: Sequence[str], batch_size: int = BATCH_SIZE,
                      pairs: Optional[Sequence[str]] = None, progress: bool = False) -> np.ndarray:
        return self.task.probabilities(self.logits(texts, batch_size, pairs, progress))

    def predict(self, texts: Sequence[str], batch_size: int = BATCH_SIZE, pairs: Optional[Sequence[str]] = None,
                progress: bool = False) -> list[str]:
        return self.task.values(self.predict_proba(texts, batch_size, pairs, progress))


def load(path: str | Path, base_model: Optional[str] = None, device: Optional[str] = None,
         merge: bool = True, precision: str = "fp32", allow_other_base: bool = False) -> Classifier:
    """Load an artifact (or a run directory) for prediction.

    `base_model` overrides where the base weights come from; a base of the same shape but other
    weights than the artifact was trained on is refused unless ``allow_other_base``. LoRA weights are
    merged into the base unless ``merge=False``; ``precision`` ("fp32", "bf16", "fp16") is the
    autocast used on GPU.
    """
    from ..models.build import load_tokenizer
    from ..tasks import make_task

    if precision not in ("fp32", "bf16", "fp16"):
        raise LoraclfError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
    art = artifact_dir(path)
    meta = read_meta(art)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tok = load_tokenizer(str(art))
    task = make_task(meta["task"], meta["labels"], meta["task_state"])
    with _loading(art):
        head = runtime_head(meta).load(art, meta, tok, task, base_model, merge, allow_other_base)
    head.model.to(dev).eval()
    clf = Classifier(head, meta, dev)
    clf.precision = precision
    return clf


@contextlib.contextmanager
def _loading(art: Path):
    """transformers kept quiet, and a failed load as a one-line ModelError naming the artifact."""
    from safetensors import SafetensorError

    from ..models.build import LOAD_ERRORS, load_error, quiet_hf

    try:
        with quiet_hf():
            yield
    except LoraclfError:
        raise
    except (*LOAD_ERRORS, RuntimeError, SafetensorError) as e:  # SafetensorError: a truncated weight file
        raise load_error(f"cannot load artifact {art}", e) from None


def runtime_head(meta: dict):
    """The Head class that runs an artifact: its export format's own runtime (ONNX: onnxruntime), else
    the head it was trained with."""
    from ..deploy.exporters import runtime_of
    from ..models.heads import head_class

    return runtime_of(meta) or head_class(meta["head"])
