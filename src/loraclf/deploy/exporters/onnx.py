"""``loraclf export --format onnx``: ``model.onnx`` (dynamic batch and sequence axes) from the PyTorch
exporter, optionally int8-quantized by onnxruntime's own dynamic quantizer, beside the tokenizer,
config.json and loraclf.json. Its exports load back through :class:`~loraclf.deploy.onnx_head.OnnxHead`
and run on onnxruntime.

optimum-onnx is not used: it pins transformers < 4.58, so it cannot export the 5.x models loraclf trains.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ...errors import import_extra
from ...evaluation.card import CardFormat
from .base import Exporter, export_meta, fold_task_output, write_card

ONNX_FILE = "model.onnx"
OPSET = 17  # LayerNormalization is a native op from 17 on, which onnxruntime's fusions expect


class OnnxExporter(Exporter):
    name = "onnx"
    title = "ONNX"
    card = CardFormat("onnx", "card_format_onnx.md.j2", "onnx", ("onnx",))
    help = "model.onnx for onnxruntime (classifier heads)"
    # The TorchScript exporter writes opsets up to 20; below 17 LayerNormalization is not a native op.
    options = {"quantize": ("int8",), "opset": (17, 18, 19, 20)}
    defaults = {"quantize": None, "opset": OPSET}
    runtime = "loraclf.deploy.onnx_head:OnnxHead"

    def check(self, meta: dict, options: dict) -> None:
        super().check(meta, options)
        import_extra("onnx", "onnx")  # torch.onnx.export writes through the onnx package
        import_extra("onnxruntime", "onnx")

    def write(self, clf, art: Path, dest: Path, options: dict) -> None:
        import torch

        quantize, opset = options["quantize"], options["opset"]
        names = onnx_input_names(clf)
        meta = export_meta(clf.meta, self.name, inputs=names, opset=opset, quantize=quantize, file=ONNX_FILE)
        fold_task_output(clf, meta)
        wrapper = logits_only(clf.model, names).eval()
        fp32 = dest / ONNX_FILE if quantize is None else dest / "model.fp32.onnx"
        axes = {**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings are about Python control flow it records
            # dynamo=False: the TorchScript exporter needs no onnxscript and traces transformers 5.x models as
            # they are; the graph is checked against PyTorch in tests/deploy/test_onnx_head.py.
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
        meta["format"] = self.name
        from ...schema import write_meta

        write_meta(dest, meta, {"onnxruntime": import_extra("onnxruntime", "onnx").__version__})
        write_card(art, dest, self)


def logits_only(model, names: list[str]):
    """`model` with positional inputs in a fixed order and the logits alone as output: the graph's signature."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs))).logits

    return LogitsOnly()


def onnx_input_names(clf) -> list[str]:
    """input_ids and attention_mask; token_type_ids too when the model and tokenizer use them (pairs)."""
    import inspect

    names = ["input_ids", "attention_mask"]
    accepts = inspect.signature(clf.model.forward).parameters
    if "token_type_ids" in accepts and "token_type_ids" in getattr(clf.tokenizer, "model_input_names", []):
        names.append("token_type_ids")
    return names


def _example_batch(clf, names: list[str]) -> tuple:
    """Two texts of different lengths, padded as loraclf pads them, so the traced graph sees padding."""
    import torch

    from ...data import Collator

    enc = clf.head.encode(["an example sentence to trace the graph with", "short"], None, clf.max_length)
    batch = Collator(enc, clf.tokenizer.pad_token_id, clf.head.pad_left)([0, 1])
    batch.setdefault("token_type_ids", torch.zeros_like(batch["input_ids"]))
    return tuple(batch[n] for n in names)


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
