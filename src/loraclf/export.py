"""Export a trained classifier for deployment: a plain transformers checkpoint or an ONNX graph.

- ``hf``: LoRA merged into the base, the trained head inside, labels in config.json, the tokenizer,
  the model card and loraclf.json. transformers loads it without PEFT; ``loraclf.load`` too.
- ``onnx``: ``model.onnx`` (dynamic batch and sequence axes) from the PyTorch exporter, optionally
  int8-quantized by onnxruntime's own dynamic quantizer, beside the tokenizer and loraclf.json. It
  loads back through :class:`~loraclf.models.onnx_head.OnnxHead` and runs on onnxruntime.

optimum-onnx is not used: it pins transformers < 4.58, so it cannot export the 5.x models loraclf trains.
Everything is written to a staging folder beside the destination and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .artifact import META_FILE, Classifier, artifact_dir, load, read_meta, save_artifact
from .errors import LoraclfError, import_extra

FORMATS = ("hf", "onnx")
QUANTIZE = ("int8",)
ONNX_FILE = "model.onnx"
OPSET = 17  # LayerNormalization is a native op from 17 on, which onnxruntime's fusions expect


def export(source: str | Path, out: str | Path, fmt: str = "hf", quantize: Optional[str] = None,
           base_model: Optional[str] = None, opset: int = OPSET) -> Path:
    """Export the artifact (or run directory) `source` into the new folder `out`; returns `out`."""
    if fmt not in FORMATS:
        raise LoraclfError(f"export format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if quantize is not None and (fmt != "onnx" or quantize not in QUANTIZE):
        raise LoraclfError(f"--quantize {quantize} is not supported with --format {fmt} (use --format onnx "
                           f"--quantize {'/'.join(QUANTIZE)})")
    art = artifact_dir(source)
    meta = read_meta(art)
    if meta.get("format") == "onnx":
        raise LoraclfError(f"{art} is already an ONNX export; export the run or artifact it came from")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LoraclfError(f"{out} already exists and is not empty; choose another --output or remove it")
    if fmt == "onnx":  # fail on a missing extra or an unsupported head before loading any weights
        _check_onnx_source(meta)
    clf = load(art, base_model=base_model, device="cpu", merge=True)
    stage = out.parent / f".partial-export-{os.getpid()}-{out.name}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        if fmt == "hf":
            _write_hf(clf, art, stage)
        else:
            _write_onnx(clf, art, stage, quantize, opset)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _export_meta(meta: dict, fmt: str, **extra) -> dict:
    """loraclf.json of an export: the source's labels, prompt and metrics, and where it came from."""
    out = {k: v for k, v in meta.items() if k not in ("versions", "format_version")}
    out["export"] = {"format": fmt, "source_method": meta.get("method"), "source_head": meta.get("head", "classifier"),
                     **extra}
    # the weights are a complete checkpoint now: loraclf.load reads them without a base model
    out["method"] = "full"
    return out


def _copy_card(art: Path, dest: Path) -> None:
    if (art / "README.md").exists():
        shutil.copyfile(art / "README.md", dest / "README.md")


def _write_hf(clf: Classifier, art: Path, dest: Path) -> None:
    """The merged model through the head's own save (a full checkpoint), tokenizer, card, loraclf.json."""
    meta = _export_meta(clf.meta, "hf", merged=clf.meta.get("method") == "lora")
    # pipeline() truncates to the tokenizer's model_max_length: make it the length loraclf trained with
    clf.tokenizer.model_max_length = clf.max_length
    if clf.meta.get("head", "classifier") == "classifier":
        fold_task_output(clf, meta)
        # pipeline() picks softmax, sigmoid or none from problem_type, as the task does
        clf.model.config.problem_type = clf.task.problem_type
    save_artifact(clf.head, dest, meta)
    _copy_card(art, dest)


def output_layer(model: torch.nn.Module, n_outputs: int) -> torch.nn.Linear:
    """The linear layer that produces the logits: the last one named like a classification head."""
    found = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == n_outputs
             and any(k in name.split(".")[-1] or k in name for k in ("classifier", "score", "out_proj"))]
    if not found:
        raise LoraclfError("cannot find the model's output layer to fold the task's output scale into")
    return found[-1]


def fold_task_output(clf: Classifier, meta: dict) -> None:
    """Fold what the task does to raw logits (temperature, regression target scale) into the last
    layer's weights, so plain transformers, pipeline() and onnxruntime give loraclf's outputs; the
    export's loraclf.json then records the neutral state."""
    affine = clf.task.output_affine()
    if affine is None:
        return
    scale, shift = affine
    layer = output_layer(clf.model, clf.task.num_outputs)
    state = clf.task.folded_state()
    per_class = isinstance(shift, list)  # calibrate: bias (a number is a regression target's mean)
    if layer.bias is None and any(np.atleast_1d(shift)):
        if not per_class:
            raise LoraclfError(f"the output layer of {meta.get('model_type')} has no bias to hold the regression "
                               "target's mean; train with train.normalize_target=false to export it")
        # decoder score layers have no bias: fold the temperature, keep the class biases in loraclf.json
        state, shift = {"bias": shift}, 0.0
    with torch.no_grad():
        layer.weight.mul_(scale)
        if layer.bias is not None:
            layer.bias.mul_(scale).add_(torch.as_tensor(shift, dtype=layer.bias.dtype, device=layer.bias.device))
    meta["task_state"] = state
    meta["export"]["folded"] = {"scale": scale, "shift": shift}


# --------------------------------------------------------------------------- ONNX


def _check_onnx_source(meta: dict) -> None:
    head = meta.get("head", "classifier")
    if head != "classifier":
        raise LoraclfError(f"ONNX export covers classifier heads; this artifact uses the {head} head "
                           "(a prompt scored by a causal LM): export it with --format hf")
    import_extra("onnx", "onnx")  # torch.onnx.export writes through the onnx package
    import_extra("onnxruntime", "onnx")


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in a fixed order and the logits alone: the graph's signature."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs))).logits


def onnx_input_names(clf: Classifier) -> list[str]:
    """input_ids and attention_mask; token_type_ids too when the model and tokenizer use them (pairs)."""
    import inspect

    names = ["input_ids", "attention_mask"]
    accepts = inspect.signature(clf.model.forward).parameters
    if "token_type_ids" in accepts and "token_type_ids" in getattr(clf.tokenizer, "model_input_names", []):
        names.append("token_type_ids")
    return names


def _example_batch(clf: Classifier, names: list[str]) -> tuple[torch.Tensor, ...]:
    """Two texts of different lengths, padded as loraclf pads them, so the traced graph sees padding."""
    from .data import Collator

    enc = clf.head.encode(["an example sentence to trace the graph with", "short"], None, clf.max_length)
    batch = Collator(enc, clf.tokenizer.pad_token_id, clf.head.pad_left)([0, 1])
    batch.setdefault("token_type_ids", torch.zeros_like(batch["input_ids"]))
    return tuple(batch[n] for n in names)


def _write_onnx(clf: Classifier, art: Path, dest: Path, quantize: Optional[str], opset: int) -> None:
    names = onnx_input_names(clf)
    meta = _export_meta(clf.meta, "onnx", inputs=names, opset=opset, quantize=quantize, file=ONNX_FILE)
    fold_task_output(clf, meta)
    wrapper = _LogitsOnly(clf.model, names).eval()
    fp32 = dest / ONNX_FILE if quantize is None else dest / "model.fp32.onnx"
    axes = {**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings are about Python control flow it records
        # dynamo=False: the TorchScript exporter needs no onnxscript and traces transformers 5.x models as
        # they are; the graph is checked against PyTorch in tests/models/test_onnx_head.py.
        torch.onnx.export(wrapper, _example_batch(clf, names), str(fp32), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    if quantize == "int8":
        quantize_int8(fp32, dest / ONNX_FILE)
        fp32.unlink()
    clf.tokenizer.save_pretrained(str(dest))
    cfg = getattr(clf.model, "config", None)
    if cfg is not None:
        cfg.problem_type = clf.task.problem_type
        cfg.save_pretrained(str(dest))  # labels and architecture, for readers of the folder
    meta.update({"head": "onnx", "format": "onnx"})
    from .artifact import FORMAT_VERSION, versions

    ort = import_extra("onnxruntime", "onnx")
    full = {"format_version": FORMAT_VERSION, **meta, "versions": {**versions(), "onnxruntime": ort.__version__}}
    (dest / META_FILE).write_text(json.dumps(full, indent=2))
    _copy_card(art, dest)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization by onnxruntime: int8 weights of the MatMuls, activations quantized per
    batch at run time (no calibration data needed).

    One scale per output channel (per_channel): with one scale per tensor, MiniLM on SST-2 lost 1.8
    points of test accuracy; per channel it stayed within 0.5 (docs/benchmarks.md)."""
    import logging

    import_extra("onnxruntime", "onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice on calibration pre-processing, which dynamic mode skips
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
