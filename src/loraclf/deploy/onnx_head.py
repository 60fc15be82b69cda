"""The runtime of ONNX exports (loraclf export --format onnx): a head whose logits come from onnxruntime.

``loraclf.load`` picks it for an artifact whose loraclf.json says ``"format": "onnx"`` (the
exporter's declared runtime, deploy/exporters/onnx.py).

The loop and the Classifier only call the Head protocol, so an exported graph predicts through the
same ``encode`` -> length-sorted batches -> ``logits`` path as the PyTorch model it came from.
Training an ONNX head is not possible: it has no trainable weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from ..errors import LoraclfError, ModelError, import_extra
from ..models.heads import ClassifierHead


def providers(ort) -> list[str]:
    """CUDA when both onnxruntime-gpu and a GPU are present, else the CPU."""
    available = ort.get_available_providers()
    wanted = ["CPUExecutionProvider"]
    if torch.cuda.is_available() and "CUDAExecutionProvider" in available:
        wanted.insert(0, "CUDAExecutionProvider")
    return wanted


# onnxruntime 1.32's SkipLayerNormalization kernel ran MiniLM ~20% slower than the Add + LayerNormalization
# it replaces (2-core Xeon, int8 graph; docs/benchmarks.md); the exporter leaves it unfused too.
DISABLED_FUSIONS = ["SkipLayerNormFusion"]


def session_options(ort):
    """Every graph optimisation, and as many intra-op threads as PyTorch uses here (torch.get_num_threads(),
    which follows OMP_NUM_THREADS and torch.set_num_threads), so both runtimes of one model use the same
    cores; onnxruntime's own default counts the machine's physical cores."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return opts


class OnnxModel(torch.nn.Module):
    """An onnxruntime session behind the ``model(**inputs).logits`` call the classifier head makes."""

    def __init__(self, session, input_names: list[str]):
        super().__init__()
        self.session, self.input_names = session, list(input_names)
        # predict_logits reads the device from the model's parameters and switches it to eval mode:
        # one empty parameter answers both; onnxruntime itself works on host arrays.
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None, **_: object) -> SequenceClassifierOutput:
        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)}
        feed = {n: given[n].detach().cpu().numpy().astype(np.int64, copy=False) for n in self.input_names}
        logits = self.session.run(["logits"], feed)[0]
        return SequenceClassifierOutput(logits=torch.from_numpy(logits).to(input_ids.device))


class OnnxHead(ClassifierHead):
    """The classifier head of an ONNX export: same tokenisation, logits from onnxruntime."""

    name = "onnx"
    export_formats = ()  # already an export
    shares_base = False  # its graph holds every weight

    @classmethod
    def build(cls, cfg, data, task, choose_rank, quiet=False):
        raise LoraclfError("an ONNX export cannot be trained; train the classifier and export it")

    def prepare_training(self, tcfg, train_labels, device) -> None:
        raise LoraclfError("an ONNX export cannot be trained; train the classifier and export it")

    def save(self, dest: Path, meta: dict) -> None:
        raise LoraclfError("an ONNX export is saved by `loraclf export --format onnx`, not as an artifact")

    @classmethod
    def load(cls, art, meta, tokenizer, task, base_model, merge, allow_other_base=False) -> "OnnxHead":
        ort = import_extra("onnxruntime", "onnx")
        export = meta.get("export", {})
        path = Path(art) / export.get("file", "model.onnx")
        if not path.exists():
            raise ModelError(f"{art}: the ONNX export has no {path.name}")
        opts = session_options(ort)
        opts.log_severity_level = 3  # errors only: onnxruntime's warnings about unused initializers are noise here
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=providers(ort),
                                           disabled_optimizers=DISABLED_FUSIONS)
        except Exception as e:  # onnxruntime raises its own exception types for a bad or truncated graph
            raise ModelError(f"cannot load {path}: {str(e).splitlines()[0][:300]}") from None
        names = export.get("inputs") or [i.name for i in session.get_inputs()]
        return cls(OnnxModel(session, names), tokenizer, task)

