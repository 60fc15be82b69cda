"""``loraclf export --format onnx``: ``model.onnx`` (dynamic batch and sequence axes) from the PyTorch
exporter, with onnxruntime's transformer fusions for BERT-class encoders (fused Attention, SkipLayerNorm,
BiasGelu), optionally int8-quantized by onnxruntime's own dynamic quantizer, beside the tokenizer,
config.json and loraclf.json. Its exports load back through :class:`~loraclf.deploy.onnx_head.OnnxHead`
and run on onnxruntime.

optimum-onnx is not used: it pins transformers < 4.58, so it cannot export the 5.x models loraclf trains.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

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
    # optimize (Python API only): False keeps the graph as torch.onnx wrote it, without onnxruntime's fusions.
    options = {"quantize": ("int8",), "opset": (17, 18, 19, 20), "optimize": (True, False)}
    defaults = {"quantize": None, "opset": OPSET, "optimize": True}
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
        fused = options["optimize"] and fusion_type(clf.model) is not None
        fp32 = dest / ONNX_FILE if quantize is None and not fused else dest / "model.fp32.onnx"
        axes = {**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}}
        with torch.no_grad(), warnings.catch_warnings(), eager_attention(clf.model, fused):
            warnings.simplefilter("ignore")  # the tracer's warnings are about Python control flow it records
            wrapper = logits_only(clf.model, names).eval()
            # dynamo=False: the TorchScript exporter needs no onnxscript and traces transformers 5.x models as
            # they are; the graph is checked against PyTorch in tests/deploy/test_onnx_head.py.
            torch.onnx.export(wrapper, _example_batch(clf, names), str(fp32), input_names=names,
                              output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False)
        if fused:
            meta["export"]["fused"] = optimize_graph(fp32, fp32, clf.model)
        if quantize == "int8":
            meta["export"]["int8_kept_fp32"] = quantize_int8(fp32, dest / ONNX_FILE)
        if quantize is not None:
            fp32.unlink()
        elif fp32.name != ONNX_FILE:
            fp32.replace(dest / ONNX_FILE)  # the fused fp32 graph is the export
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


# Encoders whose graphs onnxruntime's "bert" fusions recognise (onnxruntime.transformers.optimizer; optimum maps
# these model types to the same optimizer). Others (DeBERTa-v2, ModernBERT, decoders) export unfused.
BERT_CLASS = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra")
GELU_OPS = ("Gelu", "BiasGelu", "FastGelu")
FP32_FFN_OUTPUTS = 1  # GELU-fed MatMuls kept fp32, from the first layer on (quantize_int8)
INT8_OPS = ("MatMul", "Attention")  # not Gather: int8 embedding tables flipped more validation predictions


def fusion_type(model) -> Optional[str]:
    """onnxruntime optimizer's model type for `model`, or None when its fusions do not cover it: another
    architecture, or a module that is not a transformers model (an embedding head's pooling classifier)."""
    cfg = getattr(model, "config", None)
    plain = hasattr(model, "set_attn_implementation")  # transformers models: eager attention for the trace
    return "bert" if plain and getattr(cfg, "model_type", None) in BERT_CLASS else None


@contextmanager
def eager_attention(model, wanted: bool):
    """The model with eager attention while it is traced: onnxruntime fuses the eager pattern (MatMul, Softmax,
    MatMul) into one Attention node; the SDPA export it does not recognise. Restored afterwards."""
    before = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if not wanted or before in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def optimize_graph(src: Path, dst: Path, model) -> dict:
    """onnxruntime's transformer fusions, saved in the graph: Attention and BiasGelu.

    Fused offline (opt_level 0: no hardware-specific rewrites), so the saved graph loads on any onnxruntime.
    Attention takes the raw attention mask, not the sequence lengths onnxruntime derives by default (which
    assume right padding), and the embedding fusion, which assumes it too, is off: the graph gives the same
    logits for either padding side. Returns the count of each fused operator."""
    import_extra("onnxruntime", "onnx")
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_heads
    hidden = getattr(cfg, "hidden_size", None) or cfg.dim
    fusion = FusionOptions("bert")
    fusion.enable_embed_layer_norm = False
    fusion.enable_skip_layer_norm = False  # slower than Add + LayerNormalization on onnxruntime 1.32's CPU kernels
    fusion.use_raw_attention_mask(True)
    with _quiet_logs():
        opt = optimizer.optimize_model(str(src), model_type=fusion_type(model), num_heads=heads, hidden_size=hidden,
                                       optimization_options=fusion, opt_level=0)
        opt.save_model_to_file(str(dst))
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def quantize_int8(src: Path, dst: Path) -> list[str]:
    """Dynamic int8 quantization by onnxruntime: int8 weights of the MatMuls and fused Attention nodes,
    activations quantized per batch at run time (no calibration data needed). Returns the nodes left in fp32.

    One scale per output channel (per_channel): with one scale per tensor, MiniLM on SST-2 lost 1.8
    points of test accuracy. Chosen on SST-2 validation agreement with the fp32 graph (three MiniLM models,
    docs/benchmarks.md): the first layer's FFN output MatMul (fed by GELU, whose long tail makes a per-batch
    int8 range coarse) stays fp32, which cut the flipped predictions by 19-30% for one fp32 MatMul of 12;
    keeping all six fp32 cut them further but cost about a third of int8 throughput. The embedding tables
    stay fp32 too: stored int8 they flipped 3-20% more predictions, and a lookup is not faster in int8."""
    import onnx

    import_extra("onnxruntime", "onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src), load_external_data=False).graph
    gelu_out = {o for n in graph.node if n.op_type in GELU_OPS for o in n.output}
    keep = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[0] in gelu_out][:FP32_FFN_OUTPUTS]
    with _quiet_logs():
        # DefaultTensorType: the outputs of fused (com.microsoft) nodes have no inferred type; they are float
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=list(INT8_OPS), nodes_to_exclude=keep,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return keep


@contextmanager
def _quiet_logs():
    """The quantizer and optimizer log advice (calibration pre-processing, shape inference) at INFO/WARNING."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
