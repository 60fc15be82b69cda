"""loraclf export --format hf: a plain transformers checkpoint (LoRA merged, head inside, labels, tokenizer,
card) that transformers and pipeline() load offline without PEFT, and loraclf.load too."""

import importlib.util
import json

import numpy as np
import pytest
import torch

import loraclf
from conftest import POS, synthetic_rows, tiny_overrides
from loraclf.cli import main
from loraclf.deploy.export import export
from loraclf.errors import LoraclfError

TEXTS = [t for t, _ in synthetic_rows(12, 7)] + ["great", "a " * 40 + "awful"]
PROMPT = {"data.max_length": 160, "data.max_eval_samples": 10, "data.max_test_samples": 10, "train.epochs": 0.5}
# encoders with and without token types, a pooler-less BERT like MiniLM, and a decoder's classifier head
CLASSIFIER_ARCHS = ["bert-nopooler", "roberta", "distilbert", "llama"]


@pytest.fixture(scope="module")
def runs(tiny_models, synth_dir, tmp_path_factory):
    """One tiny LoRA run per architecture, trained on first use."""
    out, cache = tmp_path_factory.mktemp("export_runs"), {}

    def get(arch: str, **extra):
        key = (arch, tuple(sorted(extra.items())))
        if key not in cache:
            name = f"{arch}-{len(cache)}"
            cache[key] = loraclf.train(None, tiny_overrides(tiny_models[arch], synth_dir, out, name=name, **{
                "train.epochs": 1, **extra}), quiet=True).path
        return cache[key]

    return get


def _plain_probs(model, tok, texts):
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    if "token_type_ids" not in tok.model_input_names:
        enc.pop("token_type_ids", None)
    with torch.no_grad():
        return model(**enc).logits.softmax(-1).numpy()


@pytest.mark.parametrize("arch", CLASSIFIER_ARCHS)
def test_hf_export_is_plain_transformers_and_matches_loraclf(arch, runs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    run = runs(arch)
    want = loraclf.load(run).predict_proba(TEXTS)
    dest = export(run, tmp_path / "hf", "hf")
    names = {p.name for p in dest.iterdir()}
    assert {"config.json", "model.safetensors", "loraclf.json"} <= names
    assert not any(n.startswith("adapter_") for n in names) and not list(tmp_path.glob(".partial*"))
    assert "README.md" in names  # its own model card (tests/deploy/test_card_snippets.py runs its snippets)

    model = AutoModelForSequenceClassification.from_pretrained(dest).eval()
    assert "peft" not in type(model).__module__ and not any("lora" in n for n, _ in model.named_parameters())
    assert model.config.id2label == {0: "negative", 1: "positive"} and model.config.label2id["positive"] == 1
    tok = AutoTokenizer.from_pretrained(dest)
    np.testing.assert_allclose(_plain_probs(model, tok, TEXTS), want, atol=1e-4)

    clf = pipeline("text-classification", model=str(dest), device="cpu")
    got = clf(TEXTS, top_k=None, truncation=True)
    for row, p in zip(got, want):
        by_name = {r["label"]: r["score"] for r in row}
        assert set(by_name) == {"negative", "positive"}
        np.testing.assert_allclose([by_name["negative"], by_name["positive"]], p, atol=1e-4)

    again = loraclf.load(dest)
    np.testing.assert_allclose(again.predict_proba(TEXTS), want, atol=1e-4)
    meta = json.loads((dest / "loraclf.json").read_text())
    source = json.loads((run / "artifact" / "loraclf.json").read_text())["task_state"]
    folded = meta["export"].pop("folded", None)  # the temperature fitted on validation, now in the weights
    assert folded == ({"scale": 1 / source["temperature"], "shift": 0.0} if source else None)
    assert meta["task_state"] == {}
    assert meta["method"] == "full" and meta["export"] == {"format": "hf", "source_method": "lora",
                                                          "source_head": "classifier", "merged": True}
    assert meta["labels"] == ["negative", "positive"] and meta["max_length"] == 32


def test_each_export_writes_the_card_of_its_format(runs, tmp_path):
    """The adapter's card says PEFT; an hf export's says transformers and pipeline(), an ONNX export's onnx and
    onnxruntime; all three carry the run's evaluation (model-index) and training procedure."""
    from huggingface_hub import ModelCard

    run = runs("bert", **{"report.enabled": True, "report.license": "mit", "report.language": "en",
                          "report.dataset_ids": "someone/synthetic"})  # public data: the widget shows its texts
    adapter = ModelCard.load(run / "artifact" / "README.md")
    cards = {"artifact": adapter, "hf": ModelCard.load(export(run / "artifact", tmp_path / "hf", "hf") / "README.md")}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        cards["onnx"] = ModelCard.load(export(run, tmp_path / "onnx", "onnx") / "README.md")
    assert adapter.data.library_name == "peft" and "PeftModel.from_pretrained" in adapter.text
    hf = cards["hf"]
    assert hf.data.library_name == "transformers" and "peft" not in hf.data.tags and "lora" in hf.data.tags
    assert "PeftModel" not in hf.text and "This is a LoRA adapter" not in hf.text
    assert 'pipeline("text-classification", model="path/to/this/folder")' in hf.text
    assert "the LoRA weights are merged into the base model" in hf.text
    if "onnx" in cards:
        onnx = cards["onnx"]
        assert onnx.data.library_name == "onnx" and "onnx" in onnx.data.tags
        assert 'onnxruntime.InferenceSession(f"{path}/model.onnx"' in onnx.text and "PeftModel" not in onnx.text
    for kind, card in cards.items():
        assert (card.data.license, card.data.language) == ("mit", "en"), kind
        assert card.data.eval_results == adapter.data.eval_results, kind
        assert len(card.data.to_dict()["widget"]) == 2, kind  # validation texts as the Hub widget's examples
        assert "## Training procedure" in card.text and "on CPU, fp32 |" in card.text, kind
    from loraclf.evaluation.card import run_examples  # private data shows no texts unless asked

    assert run_examples(run, {"data": {"path": "my-data"}, "report": {}}) == []
    assert len(run_examples(run, {"data": {"path": "hf:a/b"}, "report": {}})) == 2
    assert run_examples(run, {"data": {"path": "hf:a/b"}, "report": {"card_examples": 0}}) == []
    assert len(run_examples(run, {"data": {"path": "my-data"}, "report": {"card_examples": 1}})) == 1


def test_verbalizer_export_is_the_merged_causal_lm_plus_the_prompt(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    run = runs("llama", **{"model.head": "verbalizer", **PROMPT})
    want = loraclf.load(run).predict_proba(TEXTS)
    dest = export(run, tmp_path / "hf", "hf")
    lm = AutoModelForCausalLM.from_pretrained(dest)
    assert lm.config.id2label[1] == "positive" and not any("lora" in n for n, _ in lm.named_parameters())
    meta = json.loads((dest / "loraclf.json").read_text())
    assert meta["head"] == "verbalizer" and meta["prompt"]["label_words"]
    np.testing.assert_allclose(loraclf.load(dest).predict_proba(TEXTS), want, atol=1e-4)
    with pytest.raises(LoraclfError, match="covers classifier and embedding heads; this artifact uses the verbalizer"):
        export(run, tmp_path / "onnx", "onnx")


def test_export_refusals_are_one_line(runs, tmp_path, capsys):
    run = runs("bert")
    capsys.readouterr()  # what training printed, if this test trained it
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(LoraclfError, match="already exists and is not empty"):
        export(run, tmp_path / "taken", "hf")
    with pytest.raises(LoraclfError, match="--quantize int8 is not supported with --format hf"):
        export(run, tmp_path / "q", "hf", quantize="int8")
    assert main(["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: artifact not found") and "\n" not in err
    assert main(["export", str(run), "--format", "hf", "-o", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "model.safetensors").exists()
    assert str(tmp_path / "cli") in capsys.readouterr().err


def test_exported_texts_round_trip_through_predict(runs, tmp_path, capsys, monkeypatch):
    """`loraclf predict` on an export writes what it writes for the run."""
    import io

    run = runs("bert")
    dest = export(run, tmp_path / "hf", "hf")
    outputs = []
    for src in (run, dest):
        monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(POS[:3]) + "\n"))
        assert main(["predict", str(src), "-q"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
