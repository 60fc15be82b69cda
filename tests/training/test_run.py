"""The whole flow on tiny random models of every supported architecture: train, evaluate, save,
load (loraclf and plain PEFT/transformers), predict."""

import csv
import json

import numpy as np
import pytest
import torch

import loraclf
from conftest import ARCHS, tiny_overrides


def _pred_csv_probs(run_dir, split, labels):
    with open(run_dir / "predictions" / f"{split}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], np.array([[float(r[f"p_{n}"]) for n in labels] for r in rows])


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_flow(arch, tiny_models, synth_dir, tmp_path):
    run = loraclf.train(None, tiny_overrides(tiny_models[arch], synth_dir, tmp_path, **{"train.epochs": 1}),
                        quiet=True)
    d = run.path
    for f in ("config.yaml", "metrics.json", "history.jsonl", "predictions/validation.csv", "predictions/test.csv",
              "artifact/adapter_config.json", "artifact/adapter_model.safetensors", "artifact/config.json",
              "artifact/loraclf.json"):
        assert (d / f).exists(), f
    assert not (d / "checkpoints").exists() and not list(d.glob(".partial*"))
    m = run.metrics
    assert m["params"]["lora"] > 0 and m["params"]["head"] > 0
    assert m["test"]["n"] == 60
    assert {"accuracy", "macro_f1", "weighted_f1", "macro_recall", "roc_auc", "ece", "per_class", "confusion_matrix",
            "confidence"} <= set(m["test"])
    assert any(h["type"] == "eval" for h in run.history)

    labels = m["labels"]
    texts, saved = _pred_csv_probs(d, "test", labels)
    with open(d / "predictions" / "test.csv", newline="") as fh:
        gold = [labels.index(r["gold"]) for r in csv.DictReader(fh)]
    assert m["test"]["accuracy"] == pytest.approx(float(np.mean(saved.argmax(1) == np.array(gold))))
    clf = loraclf.load(d)
    assert clf.labels == labels
    reloaded = clf.predict_proba(texts)
    np.testing.assert_allclose(reloaded, saved, atol=2e-5)
    # unmerged adapter gives the same answer as the merged one
    np.testing.assert_allclose(loraclf.load(d, merge=False).predict_proba(texts), saved, atol=2e-5)
    assert clf.predict(texts[:3]) == [labels[i] for i in saved[:3].argmax(1)]

    # plain transformers + PEFT, labels included
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    art = d / "artifact"
    config = AutoConfig.from_pretrained(art)
    assert config.id2label == {0: "negative", 1: "positive"}
    base = AutoModelForSequenceClassification.from_pretrained(tiny_models[arch], config=config)
    plain = PeftModel.from_pretrained(base, art).eval()
    tok = AutoTokenizer.from_pretrained(art)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with torch.no_grad():
        enc = tok(texts[:8], padding=True, truncation=True, max_length=32, return_tensors="pt")
        enc.pop("token_type_ids", None) if arch in ("llama", "qwen2", "distilbert", "modernbert") else None
        # the artifact's logits come before the temperature fitted on validation (loraclf.json), as documented
        t = json.loads((art / "loraclf.json").read_text())["task_state"].get("temperature") or 1.0
        probs = (plain(**enc).logits / t).softmax(-1).numpy()
    np.testing.assert_allclose(probs, saved[:8], atol=2e-5)
    assert plain.config.id2label[int(probs[0].argmax())] == labels[int(saved[0].argmax())]
    meta = json.loads((art / "loraclf.json").read_text())
    assert meta["labels"] == labels and meta["method"] == "lora"


@pytest.mark.parametrize("method", ["head", "full"])
def test_head_and_full_artifacts_load_with_plain_transformers(method, tiny_models, synth_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{
        "model.method": method, "train.epochs": 1}), quiet=True)
    p = run.metrics["params"]
    assert p["lora"] == 0
    if method == "head":
        assert p["other"] == 0 and p["trainable"] < p["total"] / 4
    else:
        assert p["trainable"] == p["total"]
    texts, saved = _pred_csv_probs(run.path, "test", run.metrics["labels"])
    np.testing.assert_allclose(loraclf.load(run.path).predict_proba(texts), saved, atol=2e-5)
    model = AutoModelForSequenceClassification.from_pretrained(run.path / "artifact")
    assert model.config.id2label[1] == "positive"


def test_full_finetune_learns_the_synthetic_task(tiny_models, synth_dir, tmp_path):
    """A loop bug (wrong labels, no optimizer step, bad padding) would keep this at chance."""
    run = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{
        "model.method": "full", "train.epochs": 6, "train.lr": 3e-3}), quiet=True)
    assert run.metrics["test"]["accuracy"] >= 0.9


def test_same_seed_same_metrics(tiny_models, synth_dir, tmp_path):
    a = loraclf.train(None, tiny_overrides(tiny_models["roberta"], synth_dir, tmp_path, name="a"), quiet=True)
    b = loraclf.train(None, tiny_overrides(tiny_models["roberta"], synth_dir, tmp_path, name="b"), quiet=True)
    assert a.metrics["test"]["accuracy"] == b.metrics["test"]["accuracy"]
    assert a.metrics["test"]["loss"] == pytest.approx(b.metrics["test"]["loss"], abs=1e-6)


def test_budget_fails_fast_and_writes_nothing(tiny_models, synth_dir, tmp_path):
    from loraclf.errors import BudgetError

    with pytest.raises(BudgetError, match="max_trainable_params=100"):
        loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path,
                                           **{"train.max_trainable_params": 100}), quiet=True)
    assert not (tmp_path / "run").exists()


def test_all_linear_and_custom_targets(tiny_models, synth_dir, tmp_path):
    a = loraclf.train(None, tiny_overrides(tiny_models["distilbert"], synth_dir, tmp_path, name="a", **{
        "lora.target_modules": "all-linear", "train.epochs": 0.5}), quiet=True)
    b = loraclf.train(None, tiny_overrides(tiny_models["distilbert"], synth_dir, tmp_path, name="b", **{
        "lora.target_modules": "[q_lin]", "train.epochs": 0.5}), quiet=True)
    assert a.metrics["params"]["lora"] > 2 * b.metrics["params"]["lora"] > 0


def test_class_weights_smoothing_cosine_accumulation(tiny_models, synth_dir, tmp_path):
    run = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{
        "train.class_weights": "balanced", "train.label_smoothing": 0.1, "train.scheduler": "cosine",
        "train.grad_accum_steps": 2, "train.eval_steps": 4, "train.max_grad_norm": 0.5,
        "data.max_tokens": 12, "data.min_tokens": 4}), quiet=True)
    m = run.metrics
    n = m["data"]["sizes"]["train"]
    assert 0 < n < 240  # some rows fall outside the 4..12 token filter
    batches = -(-n // 16)  # ceil(n / 16)
    assert m["best"]["steps"] == 2 * -(-batches // 2)  # ceil(ceil(n / 16) / 2) steps per epoch, 2 epochs
    assert m["data"]["token_lengths"]["train"]["max"] <= 12 and m["data"]["token_lengths"]["train"]["min"] >= 4
    evals = [h for h in run.history if h["type"] == "eval"]
    total = m["best"]["steps"]
    assert [e["step"] for e in evals] == [s for s in range(4, total, 4)] + [total]  # every 4 steps, and the end
    assert any("token-length filter" in n for n in m["data"]["notes"])
