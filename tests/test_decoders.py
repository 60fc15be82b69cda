"""Decoder LLMs as classifiers: pooling position, prompt heads, zero-shot runs (tiny Llama / Qwen2)."""

import numpy as np
import pytest
import torch

import loraclf
from conftest import DECODERS, tiny_overrides
from loraclf.config import LoraSection, ModelConfig
from loraclf.data import Collator, encode
from loraclf.models import apply_method, build_prompt_model
from loraclf.models.build import load_base
from loraclf.models.prompting import PromptSpec, pick_examples

TEXTS = ["good film", "the plot was very dull and the ending was boring", "a", "lovely music and a great cast"]


def _batch_vs_single(model, enc, pad_id, left):
    """Logits of a padded batch, and of each text alone (no padding)."""
    col = Collator(enc, pad_id, left)
    with torch.no_grad():
        b = col(list(range(len(enc))))
        batch = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        single = torch.cat([model(**{k: v for k, v in col([i]).items() if k in ("input_ids", "attention_mask")}).logits
                            for i in range(len(enc))])
    return batch, single


@pytest.mark.parametrize("arch", DECODERS)
def test_classifier_head_pools_the_last_real_token(arch, tiny_models):
    model, tok, resolved, missing = load_base(ModelConfig(name=str(tiny_models[arch]), attn_implementation="eager"),
                                              2, {0: "neg", 1: "pos"})
    built = apply_method(model, tok, resolved, "lora", LoraSection(), missing)
    tok, model = built.tokenizer, built.model.eval()
    if arch == "llama":
        assert tok.pad_token_id == tok.eos_token_id  # the tokenizer has no pad token: pad == eos
    assert model.config.pad_token_id == tok.pad_token_id
    enc = encode(tok, TEXTS, [0, 1, 0, 1], 64)
    batch, single = _batch_vs_single(model, enc, tok.pad_token_id, left=tok.padding_side == "left")
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-4)
    # Pooling at the last *position* instead would read padding for the shorter texts:
    lengths = enc.lengths
    assert (lengths != lengths.max()).any()


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("words", [None, {"negative": ["awful", "boring"], "positive": "superb quality"}])
def test_verbalizer_batch_equals_single_and_scores_multi_token_words(arch, words, tiny_models):
    labels = ["negative", "positive"]
    cfg = ModelConfig(name=str(tiny_models[arch]), method="zero-shot", head="verbalizer", label_words=words,
                      attn_implementation="eager")
    built = build_prompt_model(cfg, LoraSection(), labels, TEXTS, np.array([0, 1, 0, 1]), seed=0)
    clf, tok = built.model.eval(), built.tokenizer
    assert tok.padding_side == "left"
    enc = clf.formatter.encode(TEXTS, [0, 1, 0, 1], 192)
    batch, single = _batch_vs_single(clf, enc, tok.pad_token_id, left=True)
    torch.testing.assert_close(batch, single, atol=1e-4, rtol=1e-4)

    # class score = log-sum-exp over the class's words of sum_t log p(token_t | prompt, tokens_<t)
    ids = torch.tensor([enc.input_ids[0]])
    expected = []
    for lab in labels:
        per_word = []
        for w in clf.formatter.spec.label_words[lab]:
            wid = clf.formatter.word_ids(w)
            full = torch.tensor([enc.input_ids[0] + wid])
            with torch.no_grad():
                lp = clf.lm(full).logits[0].log_softmax(-1)
            n = ids.shape[1]
            per_word.append(sum(lp[n - 1 + j, t].item() for j, t in enumerate(wid)))
        expected.append(torch.logsumexp(torch.tensor(per_word), 0).item())
    torch.testing.assert_close(single[0], torch.tensor(expected), atol=1e-4, rtol=1e-4)
    if words is not None:
        assert any(len(clf.formatter.word_ids(w)) > 1 for w in ["superb quality"])


def test_generate_parsing_and_fallback(tiny_models):
    cfg = ModelConfig(name=str(tiny_models["llama"]), method="zero-shot", head="generate",
                      label_words={"negative": ["negative", "bad"], "positive": "positive"}, fallback_label="positive")
    clf = build_prompt_model(cfg, LoraSection(), ["negative", "positive"], TEXTS, np.array([0, 1, 0, 1]), 0).model
    assert clf.parse("Negative.") == 0
    assert clf.parse("it is positive, not bad") == 1  # the first label word wins
    assert clf.parse("badly made") is None  # whole words only
    assert clf.parse("no idea") is None
    assert clf.labels[clf.fallback] == "positive"


def test_few_shot_examples_are_seeded_and_in_the_prompt(tiny_models):
    texts = [f"text number {i:02d} ends" for i in range(20)]
    labels = np.array([i % 2 for i in range(20)])
    a = pick_examples(texts, labels, ["negative", "positive"], 4, seed=1)
    assert a == pick_examples(texts, labels, ["negative", "positive"], 4, seed=1)
    assert sorted(lab for _, lab in a) == ["negative", "negative", "positive", "positive"]
    cfg = ModelConfig(name=str(tiny_models["qwen2"]), method="zero-shot", head="verbalizer", few_shot=2)
    built = build_prompt_model(cfg, LoraSection(), ["negative", "positive"], texts, labels, 1)
    prompt = built.tokenizer.decode(built.model.formatter.prefix_ids)
    assert sum(t in prompt for t in texts) == 2


def test_prompt_spec_round_trip():
    spec = PromptSpec("Review: {text}", {"a": ["x", "y"]}, False, "sys", [("t", "a")])
    assert PromptSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("head,method", [("verbalizer", "zero-shot"), ("verbalizer", "lora"), ("generate", "lora")])
def test_prompt_head_runs_write_the_same_run_directory(head, method, tiny_models, synth_dir, tmp_path):
    run = loraclf.train(None, tiny_overrides(tiny_models["llama"], synth_dir, tmp_path, **{
        "model.head": head, "model.method": method, "train.epochs": 0.5, "data.max_test_samples": 20,
        "data.max_eval_samples": 10, "model.max_new_tokens": 3, "data.max_length": 160}), quiet=True)
    m = run.metrics
    for f in ("metrics.json", "predictions/test.csv", "artifact/loraclf.json", "artifact/config.json"):
        assert (run.path / f).exists()
    assert m["test"]["n"] == 20 and m["model"]["method"] == method
    assert (m["params"]["trainable"] == 0) == (method == "zero-shot")
    if head == "generate":
        g = m["test"]["generation"]
        assert g["outputs"] == 20 and 0 <= g["unparsed"] <= 20 and len(g["samples"]) == 20
    import csv

    rows = list(csv.DictReader(open(run.path / "predictions" / "test.csv")))
    saved = np.array([[float(r["p_negative"]), float(r["p_positive"])] for r in rows])
    clf = loraclf.load(run.path)
    np.testing.assert_allclose(clf.predict_proba([r["text"] for r in rows]), saved, atol=1e-4)


def test_prompt_heads_need_a_decoder_and_zero_shot_needs_a_prompt_head(tiny_models, synth_dir, tmp_path):
    with pytest.raises(loraclf.LoraclfError, match="zero-shot needs model.head"):
        loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{"model.method": "zero-shot"}))
    with pytest.raises(loraclf.LoraclfError, match="needs a decoder"):
        loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{
            "model.method": "zero-shot", "model.head": "verbalizer"}), quiet=True)


def test_prompt_that_leaves_no_room_for_the_text_is_an_error(tiny_models):
    cfg = ModelConfig(name=str(tiny_models["llama"]), method="zero-shot", head="verbalizer", few_shot=4)
    texts = [f"a rather long example text number {i} " * 5 for i in range(8)]
    built = build_prompt_model(cfg, LoraSection(), ["negative", "positive"], texts, np.array([0, 1] * 4), 0)
    with pytest.raises(loraclf.LoraclfError, match="leaving"):
        built.model.formatter.encode(TEXTS, None, 128)
    with pytest.raises(loraclf.LoraclfError, match="exactly once"):
        build_prompt_model(ModelConfig(name=str(tiny_models["llama"]), method="zero-shot", head="verbalizer",
                                       prompt="{text} and {text}"),
                           LoraSection(), ["a", "b"], TEXTS, np.array([0, 1, 0, 1]), 0)
