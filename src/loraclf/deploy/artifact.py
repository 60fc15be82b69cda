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
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..config import default
from ..data.long import LongText
from ..errors import DataError, EnvironmentError_, InputError, LoraclfError, ModelError
from ..schema import artifact_dir, read_meta

BATCH_SIZE = default("train.eval_batch_size")
log = logging.getLogger("loraclf")


class Classifier:
    """A loaded classifier: ``predict`` returns the answers (label names; label lists for multi-label;
    scores for regression), ``predict_proba`` the outputs they come from (probabilities, or scores)."""

    def __init__(self, head, meta: dict, device: torch.device, path: Optional[Path] = None):
        self.head, self.meta, self.device, self.path = head, meta, device, path
        head.long_text = LongText.from_meta(meta)  # long texts are read as in training, without flags
        self.labels: list[str] = list(meta["labels"])
        self.max_length: int = int(meta.get("max_length", 512))
        self.precision: str = "fp32"
        self.run = None  # the run directory (a loraclf.Run) when loraclf.fit trained it

    @classmethod
    def from_pretrained(cls, path: str | Path, **kw) -> "Classifier":
        """The same as :func:`loraclf.load` (the name transformers and SetFit users know)."""
        return load(path, **kw)

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

        texts, pairs = self._inputs(texts, pairs)
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        enc = self.head.encode(texts, None, self.max_length, pairs)
        with self.autocast():
            return predict_logits(self.head, enc, batch_size, progress=progress)

    def autocast(self):
        """The autocast its forward passes run under: fp32 by default so the numbers match the run's metrics;
        precision="bf16"/"fp16" trades that for speed."""
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=low or torch.float32, enabled=low is not None)

    def _inputs(self, texts, pairs) -> tuple[list[str], Optional[list[str]]]:
        """Texts (and second texts) as the model reads them: (a, b) tuples are pairs, like `pairs=`; a model
        trained on pairs refuses single texts, and one trained on single texts refuses pairs."""
        if isinstance(texts, str):
            raise InputError("predict() takes a list of texts, not a single string: predict([text])")
        texts = list(texts)
        tuples = [isinstance(t, (tuple, list)) for t in texts]
        if any(tuples):
            if pairs is not None or not all(tuples) or any(len(t) != 2 for t in texts):
                raise InputError("predict(): give every input as an (a, b) pair, or texts with pairs=[...], not both")
            texts, pairs = [a for a, _ in texts], [b for _, b in texts]
        bad = next((t for t in [*texts, *(pairs or [])] if not isinstance(t, str)), None)
        if bad is not None:
            raise InputError(f"predict(): every text must be a string, got {type(bad).__name__}: {bad!r:.60}")
        if pairs is not None and len(pairs) != len(texts):
            raise InputError(f"predict(): {len(texts)} texts but {len(pairs)} pairs")
        pair_model = reads_pairs(self.meta)
        if texts and pair_model != (pairs is not None):
            raise InputError(f"this model reads text pairs ({', '.join(self.meta['text_column'])}): give (a, b) "
                             "tuples or pairs=[...]" if pair_model else
                             "this model reads one text per input, not pairs")
        return texts, list(pairs) if pairs is not None else None

    def evaluate(self, data, split: str = "test", batch_size: int = BATCH_SIZE, **data_settings) -> dict:
        """Metrics on labelled data: a DataFrame (or anything :func:`loraclf.fit` takes) with the columns the
        model was trained on, or a file / dataset folder (its `split`). `data_settings` are data fields
        (``label_column="sentiment"``) when the columns differ."""
        from ..data.tables import as_frame, is_path, row_columns

        sets = [f"data.{k}={json.dumps(v)}" for k, v in data_settings.items()]
        if is_path(data):
            return evaluate_classifier(self, [f"data.path={os.fspath(data)}", *sets], split, batch_size=batch_size)
        cols = row_columns(data_settings.get("text_column", self.meta.get("text_column", "text")),
                           data_settings.get("label_column", self.meta.get("label_column") or "label"))
        frame, _ = as_frame(data, cols, "evaluate(data=...)")
        return evaluate_classifier(self, sets, split, table=frame, batch_size=batch_size)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Copy the artifact (weights, tokenizer, labels, model card) to a new or empty `directory`."""
        from ..schema import check_output_folder, staged_folder

        if self.path is None:
            raise ModelError("this classifier was not loaded from an artifact folder; nothing to copy")
        out = check_output_folder(Path(directory), "save_pretrained()")
        with staged_folder(out, "save") as stage:
            shutil.copytree(self.path, stage, dirs_exist_ok=True)
        return out

    def push_to_hub(self, repo_id: str, token: Optional[str] = None, private: Optional[bool] = None,
                    commit_message: str = "Upload loraclf classifier") -> str:
        """Upload the artifact folder to the Hugging Face Hub as model repo `repo_id` (created if needed);
        returns the commit URL. Needs network and a token (`token=` or `huggingface-cli login`)."""
        from huggingface_hub import HfApi

        if self.path is None:
            raise ModelError("this classifier was not loaded from an artifact folder; nothing to upload")
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(folder_path=str(self.path), repo_id=repo_id, repo_type="model",
                                     commit_message=commit_message)
        except Exception as e:  # noqa: BLE001 - the Hub client raises HTTP, token and network errors of many types
            from ..data.remote import one_line

            raise EnvironmentError_(f"push_to_hub({repo_id!r}): {one_line(e)}") from None
        return str(getattr(info, "commit_url", info))

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
    clf = Classifier(head, meta, dev, art.resolve())
    clf.precision = precision
    return clf


def evaluate_classifier(clf, data_cfg_overrides: Optional[list[str]] = None, split: str = "test", table=None,
                        batch_size: Optional[int] = None, quiet: bool = True) -> dict:
    """Metrics of a loaded classifier on a labelled split that the data options name, or on `table` (a
    DataFrame with the columns the model was trained on, unless the options say others)."""
    from ..config import load_config
    from ..data import load_labelled_split
    from ..tasks.labels import LabelSet

    overrides = list(data_cfg_overrides or [])
    for key, fallback in (("text_column", "text"), ("label_column", "label"), ("label_columns", None),
                          ("label_separator", ";")):  # as the model was trained, unless given
        value = clf.meta.get(key, fallback)
        if value is not None and not any(o.startswith(f"data.{key}=") for o in overrides):
            overrides.append(f"data.{key}={json.dumps(value)}")
    cfg = load_config(None, overrides)
    task = type(clf.task)
    texts, pairs, gold_rows, source = load_labelled_split(cfg.data, split, task, table)
    try:
        gold = task.label_array(gold_rows, LabelSet(clf.labels), source, split)
    except DataError as e:  # the same check as training, worded for a model rather than a train split
        raise DataError(str(e).replace(", which train lacks it", ", unknown to the model")) from None
    logits = clf.logits(texts, batch_size or cfg.train.eval_batch_size, pairs, progress=not quiet)
    return {"task": clf.task.name, **clf.task.evaluate(logits, gold)[0]}


def reads_pairs(meta: dict) -> bool:
    """Whether an artifact was trained on two text columns (sentence pairs)."""
    columns = meta.get("text_column", "text")
    return isinstance(columns, list) and len(columns) == 2


from_pretrained = load  # the name transformers and SetFit users know


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
