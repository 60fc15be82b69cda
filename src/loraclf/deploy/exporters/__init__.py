"""Exporters: a trained artifact written for another runtime.

- ``hf`` (:mod:`.hf`): a plain transformers checkpoint, LoRA merged in.
- ``onnx`` (:mod:`.onnx`): an ONNX graph for onnxruntime, optionally int8.

Each is one module with the same shape (an :class:`~.base.Exporter`: options, a check before any
weights load, a writer, and the runtime its exports load with). ``loraclf.deploy.export.export`` runs
one. A new format is one module and one :func:`register_exporter` line.
"""

from __future__ import annotations

import importlib

from .base import Exporter
from .hf import HfExporter
from .onnx import OnnxExporter

EXPORTERS: dict[str, Exporter] = {}


def register_exporter(exporter: Exporter) -> Exporter:
    """Make `exporter` a choice of `loraclf export --format`."""
    EXPORTERS[exporter.name] = exporter
    return exporter


register_exporter(HfExporter())
register_exporter(OnnxExporter())


def runtime_of(meta: dict):
    """The Head class that runs an export of a format with its own runtime (ONNX), else None."""
    exporter = EXPORTERS.get(meta.get("format") or "")
    if exporter is None or exporter.runtime is None:
        return None
    module, _, cls = exporter.runtime.partition(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["EXPORTERS", "Exporter", "register_exporter", "runtime_of"]
