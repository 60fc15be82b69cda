"""ONNX exports: the graph matches PyTorch (fp32), int8 quantizes, and loraclf.load / predict run it
through onnxruntime as the OnnxHead."""

import io
import json
import sys

import numpy as np
import pytest

import loraclf
from conftest import synthetic_rows, tiny_overrides
from loraclf.cli import main
from loraclf.errors import EnvironmentError_, LoraclfError

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from loraclf.deploy.export import export  # noqa: E402
from loraclf.deploy.onnx_head import OnnxHead  # noqa: E402

TEXTS = [t for t, _ in synthetic_rows(20, 11)] + ["superb", "the " * 50 + "boring"]
# token types (bert, deberta-v2), none (roberta, distilbert), relative attention, ModernBERT, a decoder classifier
ARCHS = ["bert", "roberta", "distilbert", "deberta-v2", "modernbert", "llama"]


@pytest.fixture(scope="module")
def run_of(tiny_models, synth_dir, tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("onnx_runs"), {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = loraclf.train(None, tiny_overrides(tiny_models[arch], synth_dir, out, name=arch, **{
                "train.epochs": 1}), quiet=True).path
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_onnx_matches_pytorch(arch, run_of, tmp_path):
    run = run_of(arch)
    want = loraclf.load(run).predict_proba(TEXTS)
    dest = export(run, tmp_path / "onnx", "onnx")
    assert {"model.onnx", "loraclf.json", "tokenizer.json", "config.json"} <= {p.name for p in dest.iterdir()}
    clf = loraclf.load(dest)
    assert isinstance(clf.head, OnnxHead) and clf.labels == ["negative", "positive"]
    np.testing.assert_allclose(clf.predict_proba(TEXTS), want, atol=1e-4)
    # batch and sequence axes are dynamic: one text at a time gives the same numbers as 64 at once
    np.testing.assert_allclose(clf.predict_proba(TEXTS[:5], batch_size=1), want[:5], atol=1e-4)
    meta = json.loads((dest / "loraclf.json").read_text())
    # the trained head is kept; the format says which runtime loads it (deploy/exporters)
    assert meta["head"] == "classifier" and meta["format"] == "onnx" and meta["export"]["quantize"] is None
    assert meta["export"]["source_method"] == "lora" and "onnxruntime" in meta["versions"]


def test_graph_inputs_have_dynamic_batch_and_sequence_axes(run_of, tmp_path):
    import onnx

    dest = export(run_of("bert"), tmp_path / "onnx", "onnx")
    graph = onnx.load(str(dest / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    for i in graph.input:
        assert [d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert graph.output[0].name == "logits"


def test_int8_export_is_smaller_and_agrees(run_of, tmp_path):
    run = run_of("bert")
    fp32 = export(run, tmp_path / "fp32", "onnx")
    int8 = export(run, tmp_path / "int8", "onnx", quantize="int8")
    assert not (int8 / "model.fp32.onnx").exists()
    assert (int8 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size
    graph_ops = {n.op_type for n in __import__("onnx").load(str(int8 / "model.onnx")).graph.node}
    assert graph_ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}
    want = loraclf.load(run).predict_proba(TEXTS)
    got = loraclf.load(int8).predict_proba(TEXTS)
    assert got.shape == want.shape and np.allclose(got.sum(1), 1, atol=1e-5)
    assert np.abs(got - want).max() < 0.1  # int8 weights: close, not equal (SST-2 accuracy in docs/benchmarks.md)


def test_cli_export_and_predict_an_onnx_export(run_of, tmp_path, capsys, monkeypatch):
    run = run_of("bert")
    dest = tmp_path / "cli"
    assert main(["export", str(run), "--format", "onnx", "--quantize", "int8", "-o", str(dest), "-q"]) == 0
    lines = []
    for src in (run, dest):
        monkeypatch.setattr("sys.stdin", io.StringIO("a great film\nawful plot\n"))
        assert main(["predict", str(src), "-q"]) == 0
        lines.append([r.split(",")[:2] for r in capsys.readouterr().out.splitlines()])
    assert lines[0] == lines[1]  # same labels (probabilities differ in the last digits under int8)


def test_onnx_refusals_are_one_line(run_of, tmp_path, monkeypatch):
    dest = export(run_of("bert"), tmp_path / "onnx", "onnx")
    with pytest.raises(LoraclfError, match="already an ONNX export"):
        export(dest, tmp_path / "again", "onnx")
    with pytest.raises(LoraclfError, match="cannot be trained"):
        loraclf.load(dest).head.prepare_training(None, None, "cpu")
    (dest / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(loraclf.LoraclfError, match="cannot load .*model.onnx"):
        loraclf.load(dest)
    # onnxruntime not installed: as Python sees a package that is absent
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(EnvironmentError_, match=r"onnxruntime is not installed: pip install 'loraclf\[onnx\]'"):
        loraclf.load(dest)
    with pytest.raises(EnvironmentError_, match=r"loraclf\[onnx\]"):
        export(run_of("bert"), tmp_path / "other", "onnx")
