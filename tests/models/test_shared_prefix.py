"""Shared-prefix scoring (models/prefix.py) gives the scores, generations, loss and gradients of full
prompts: tiny Llama / Qwen2, left-padded batches of different lengths, multi-token label words,
few-shot, chat-template and plain prompts."""

import numpy as np
import pytest
import torch

from conftest import DECODERS
from loraclf.config import LoraSection, ModelConfig
from loraclf.data import Collator
from loraclf.models import build_prompt_model
from loraclf.models.decoder_heads import PromptClassifier
from loraclf.models.prefix import SharedPrefix
from loraclf.models.prompting import PromptFormatter

TEXTS = ["good film", "the plot was very dull and the ending was boring", "a", "lovely music and a great cast",
         "awful", "it was quite a brilliant story and the actor was superb"]
LABELS = np.array([1, 0, 0, 1, 0, 1])
WORDS = {"negative": ["awful", "boring"], "positive": "superb quality"}  # multi-token words, several per class
CHATML = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
          "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}")


def _build(path, head="verbalizer", method="zero-shot", chat=False, few_shot=2, dropout=0.0, words=WORDS):
    cfg = ModelConfig(name=str(path), method=method, head=head, label_words=words, attn_implementation="eager",
                      few_shot=few_shot, max_new_tokens=4, system_prompt="You sort reviews.")
    built = build_prompt_model(cfg, LoraSection(dropout=dropout), ["negative", "positive"], TEXTS, LABELS, seed=0)
    clf, tok = built.model, built.tokenizer
    if chat:  # the tiny tokenizer has no chat template: give it a ChatML-like one
        tok.chat_template = CHATML
        fmt = PromptFormatter(tok, clf.formatter.spec, clf.labels)
        assert fmt.chat
        clf = PromptClassifier(clf.lm, fmt, clf.labels, head, 4, "negative")
    return clf, tok


def _batch(clf, tok):
    enc = clf.formatter.encode(TEXTS, LABELS, 512)
    assert len(set(enc.lengths.tolist())) > 2  # left padding of different widths
    return Collator(enc, tok.pad_token_id, left=True)(list(range(len(TEXTS))))


def _both(clf, fn):
    """fn() with the shared prefix, then with full prompts."""
    shared = fn()
    kept, clf.prefix = clf.prefix, None
    try:
        return shared, fn()
    finally:
        clf.prefix = kept


def _count_prefix_runs(monkeypatch) -> list:
    calls: list = []
    orig = SharedPrefix._compute

    def counted(self, lm, device):
        calls.append(1)
        return orig(self, lm, device)

    monkeypatch.setattr(SharedPrefix, "_compute", counted)
    return calls


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("few_shot", [0, 2])
def test_verbalizer_scores_equal_full_prompts(arch, chat, few_shot, tiny_models, monkeypatch):
    calls = _count_prefix_runs(monkeypatch)
    clf, tok = _build(tiny_models[arch], chat=chat, few_shot=few_shot)
    clf.eval()
    b = _batch(clf, tok)
    with torch.no_grad():
        shared, full = _both(clf, lambda: clf(b["input_ids"], b["attention_mask"]).logits)
        again = clf(b["input_ids"], b["attention_mask"]).logits
    torch.testing.assert_close(shared, full, atol=1e-4, rtol=0)
    torch.testing.assert_close(again, shared, atol=1e-6, rtol=0)
    # computed once, then cached: single and multi-token words and the second batch reuse it
    assert len(calls) == 1 and len(clf.prefix.ids) > 10


@pytest.mark.parametrize("arch", DECODERS)
def test_generate_head_decodes_from_the_prefix_cache(arch, tiny_models, monkeypatch):
    calls = _count_prefix_runs(monkeypatch)
    clf, tok = _build(tiny_models[arch], head="generate", few_shot=2)
    clf.eval()
    b = _batch(clf, tok)

    def generate():
        clf.generation_log = []
        labels = clf(b["input_ids"], b["attention_mask"]).logits.argmax(-1).tolist()
        return labels, [g["output"] for g in clf.generation_log]

    with torch.no_grad():
        shared, full = _both(clf, generate)
    assert shared == full and len(calls) == 1


def _loss_and_grads(clf, b, head):
    clf.zero_grad(set_to_none=True)
    out = clf(b["input_ids"], b["attention_mask"], labels=b["labels"])
    loss = out.loss if head == "generate" else torch.nn.functional.cross_entropy(out.logits, b["labels"])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in clf.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("head", ["verbalizer", "generate"])
def test_training_loss_and_lora_grads_equal_full_prompts(arch, head, tiny_models, monkeypatch):
    calls = _count_prefix_runs(monkeypatch)
    clf, tok = _build(tiny_models[arch], head=head, method="lora", few_shot=2, dropout=0.0)
    clf.train()
    with torch.no_grad():  # LoRA B starts at zero: move it so the adapter changes the scores
        for n, p in clf.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    b = _batch(clf, tok)
    (loss_s, g_s), (loss_f, g_f) = _both(clf, lambda: _loss_and_grads(clf, b, head))
    torch.testing.assert_close(loss_s, loss_f, atol=1e-4, rtol=0)
    assert g_s.keys() == g_f.keys() and any("lora_A" in n for n in g_s)
    for n in g_s:
        torch.testing.assert_close(g_s[n], g_f[n], atol=1e-4, rtol=1e-3, msg=n)
    # the prefix ran with gradients, once per forward (the multi-token word's forward is a second one)
    assert len(calls) == 2


def test_training_with_dropout_scores_full_prompts(tiny_models, monkeypatch):
    """One dropout mask for the whole batch's prefix is another regulariser than per-row masks."""
    calls = _count_prefix_runs(monkeypatch)
    clf, tok = _build(tiny_models["llama"], method="lora", dropout=0.1)
    clf.train()
    b = _batch(clf, tok)
    clf(b["input_ids"], b["attention_mask"]).logits.sum().backward()
    assert calls == []
    clf.eval()
    with torch.no_grad():
        clf(b["input_ids"], b["attention_mask"])
    assert len(calls) == 1


def test_evaluation_cache_follows_the_weights(tiny_models):
    """An optimizer step (an in-place update) between evaluations recomputes the cached prefix."""
    clf, tok = _build(tiny_models["qwen2"], method="lora")
    clf.eval()
    b = _batch(clf, tok)
    with torch.no_grad():
        before = clf(b["input_ids"], b["attention_mask"]).logits
        for n, p in clf.named_parameters():
            if "lora_B" in n:
                p.add_(0.2)
        shared, full = _both(clf, lambda: clf(b["input_ids"], b["attention_mask"]).logits)
    assert (shared - before).abs().max() > 1e-3
    torch.testing.assert_close(shared, full, atol=1e-4, rtol=0)


def test_rows_without_the_prefix_fall_back_to_full_prompts(tiny_models):
    clf, tok = _build(tiny_models["llama"])
    ids = torch.tensor([[5, 6, 7, 8], [0, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    assert clf.prefix.split(ids, mask) is None
    clf.eval()
    with torch.no_grad():
        shared, full = _both(clf, lambda: clf(ids, mask).logits)
    torch.testing.assert_close(shared, full)


def test_shared_prefix_can_be_switched_off(tiny_models, synth_dir, tmp_path):
    import loraclf
    from conftest import tiny_overrides

    with pytest.raises(loraclf.LoraclfError, match="model.shared_prefix"):
        loraclf.load_config(None, {"model.shared_prefix": "sometimes"})
    cfg = ModelConfig(name=str(tiny_models["llama"]), method="zero-shot", head="verbalizer", shared_prefix=False)
    built = build_prompt_model(cfg, LoraSection(), ["negative", "positive"], TEXTS, LABELS, seed=0)
    assert built.model.prefix is None
    run = loraclf.train(None, tiny_overrides(tiny_models["llama"], synth_dir, tmp_path, **{
        "model.head": "verbalizer", "model.method": "zero-shot", "model.shared_prefix": False,
        "data.max_test_samples": 10, "data.max_eval_samples": 10, "data.max_length": 160}), quiet=True)
    assert loraclf.load(run.path).head.model.prefix is None  # the artifact keeps the choice
