"""What every exporter shares: the Exporter protocol, the export's loraclf.json, and folding the
task's output scale into the model's last layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import LoraclfError
from ...evaluation.card import CardFormat
from ...models.methods import whole_checkpoint_method


class Exporter:
    """One export format. `options` maps each option it takes to its allowed values (None: any value of
    the default's type); `runtime` names the Head class that runs its exports ("module:Class"), or None
    when the head the model was trained with loads them (a plain transformers checkpoint); `card` is the
    model card's format (its templates/ macros, the Hub's library_name and tags)."""

    name = ""
    title = ""  # how messages name the format
    help = ""
    options: dict[str, Optional[tuple]] = {}
    defaults: dict[str, object] = {}
    runtime: Optional[str] = None
    card = CardFormat(None, "")  # what its model card says the folder is and how to use it

    def check(self, meta: dict, options: dict) -> None:
        """Refuse what this format cannot export, before any weights are loaded."""
        from ...models.heads import HEADS, head_class

        formats = head_class(meta["head"]).export_formats
        if self.name not in formats:
            covered = [name for name, h in HEADS.items() if self.name in h.export_formats]
            raise LoraclfError(f"{self.title} export covers {' and '.join(covered)} heads; this artifact uses the "
                               f"{meta['head']} head: export it with --format {' or '.join(formats)}")

    def write(self, clf, art: Path, dest: Path, options: dict) -> None:
        """Write the export of the loaded classifier `clf` (from artifact `art`) into the empty folder `dest`."""
        raise NotImplementedError


def export_meta(meta: dict, fmt: str, **extra) -> dict:
    """loraclf.json of an export: the source's labels, prompt and metrics, and where it came from."""
    out = {k: v for k, v in meta.items() if k not in ("versions", "format_version")}
    out["export"] = {"format": fmt, "source_method": meta.get("method"), "source_head": meta["head"], **extra}
    out["method"] = whole_checkpoint_method()  # the weights are a complete checkpoint: no base model is needed
    return out


def output_layer(model, n_outputs: int):
    """The linear layer that produces the logits: the last one named like a classification head."""
    import torch

    found = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == n_outputs
             and any(k in name.split(".")[-1] or k in name for k in ("classifier", "score", "out_proj"))]
    if not found:
        raise LoraclfError("cannot find the model's output layer to fold the task's output scale into")
    return found[-1]


def fold_task_output(clf, meta: dict) -> None:
    """Fold what the task does to raw logits (temperature, regression target scale) into the last
    layer's weights, so plain transformers, pipeline() and onnxruntime give loraclf's outputs; the
    export's loraclf.json then records the neutral state."""
    import torch

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


def write_card(art: Path, dest: Path, exporter: Exporter) -> None:
    """The export's model card (README.md), for its format: what the folder is and how to use it without
    loraclf, with the run's data, procedure and evaluation when `art` sits in a run directory."""
    from ...evaluation.card import folder_card
    from ...schema import META_FILE, write_text_atomic

    meta = json.loads((dest / META_FILE).read_text(encoding="utf-8"))
    write_text_atomic(dest / "README.md", folder_card(art, meta, exporter.card))
