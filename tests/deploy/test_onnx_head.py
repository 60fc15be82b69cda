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


def _ops(dest) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(dest / "model.onnx")).graph.node}


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_bert_class_exports_are_fused(arch, run_of, tmp_path):
    """onnxruntime's transformer fusions are saved in the graph of BERT-class encoders: one Attention node
    per layer (from an eager-attention trace) and BiasGelu; optimize=False skips them."""
    dest = export(run_of(arch), tmp_path / "fused", "onnx")
    fused = json.loads((dest / "loraclf.json").read_text())["export"]["fused"]
    assert fused["Attention"] >= 1 and {"Attention", "BiasGelu"} <= _ops(dest)
    assert "SkipLayerNormalization" not in _ops(dest)  # slower than Add + LayerNormalization here
    plain = export(run_of(arch), tmp_path / "plain", "onnx", optimize=False)
    assert "Attention" not in _ops(plain) and "fused" not in json.loads((plain / "loraclf.json").read_text())["export"]


def test_other_architectures_export_unfused(run_of, tmp_path):
    dest = export(run_of("deberta-v2"), tmp_path / "onnx", "onnx")
    assert "fused" not in json.loads((dest / "loraclf.json").read_text())["export"]
    assert "Attention" not in _ops(dest)


def test_fused_attention_honours_the_mask_on_either_padding_side(run_of, tmp_path):
    """The fused Attention reads the raw attention mask (not sequence lengths, which assume right padding):
    a left-padded batch gives the unfused graph's logits."""
    run = run_of("bert")
    fused, plain = export(run, tmp_path / "fused", "onnx"), export(run, tmp_path / "plain", "onnx", optimize=False)
    ids = np.array([[0, 0, 0, 5, 9, 12, 7], [3, 4, 8, 11, 6, 10, 2]], dtype=np.int64)
    mask = np.array([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    out = [ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
           for d in (fused, plain)]
    np.testing.assert_allclose(out[0], out[1], atol=1e-4)


def test_int8_keeps_the_first_ffn_output_matmul_fp32(run_of, tmp_path):
    """int8: fused Attention becomes QAttention, MatMuls MatMulInteger, except the first layer's MatMul fed
    by GELU (the most sensitive to a per-batch int8 scale on SST-2 validation; docs/benchmarks.md)."""
    import onnx

    from loraclf.deploy.exporters.onnx import FP32_FFN_OUTPUTS

    dest = export(run_of("bert"), tmp_path / "int8", "onnx", quantize="int8")
    kept = json.loads((dest / "loraclf.json").read_text())["export"]["int8_kept_fp32"]
    graph = onnx.load(str(dest / "model.onnx")).graph
    assert {"QAttention", "MatMulInteger"} <= {n.op_type for n in graph.node}
    assert kept and len(kept) == min(FP32_FFN_OUTPUTS, sum(n.op_type == "BiasGelu" for n in graph.node))
    assert "layer.0/" in kept[0]  # the first layer's
    assert {n.op_type for n in graph.node if n.name in kept} == {"MatMul"}
    assert all(any(p.op_type == "BiasGelu" for p in graph.node if p.output[0] == n.input[0])
               for n in graph.node if n.name in kept)


def test_session_uses_as_many_threads_as_pytorch():
    import torch

    from loraclf.deploy.onnx_head import session_options

    opts = session_options(ort)
    assert opts.intra_op_num_threads == torch.get_num_threads() and opts.inter_op_num_threads == 1
