"""Memory levers for decoder LoRA: gradient checkpointing and a quantized (bitsandbytes) frozen base."""

import json

import numpy as np
import pytest
import torch

import loraclf
from conftest import tiny_overrides
from loraclf.config import TrainConfig


def _train_steps(tiny_models, checkpointing: bool, steps: int = 3):
    """A few optimizer steps of a LoRA verbalizer on a tiny Llama; (losses, adapter weights before, after)."""
    from loraclf.config import LoraSection, ModelConfig
    from loraclf.data import Collator
    from loraclf.models import build_prompt_model
    from loraclf.models.heads import VerbalizerHead
    from loraclf.tasks import make_task

    texts = ["good film", "the plot was dull", "a", "lovely music and a great cast", "awful", "boring script"]
    labels = np.array([1, 0, 0, 1, 0, 0])
    torch.manual_seed(0)
    cfg = ModelConfig(name=str(tiny_models["llama"]), method="lora", head="verbalizer", attn_implementation="eager")
    built = build_prompt_model(cfg, LoraSection(dropout=0.0), ["negative", "positive"], texts, labels, seed=0)
    head = VerbalizerHead(built.model, built.tokenizer, make_task("single-label", ["negative", "positive"]))
    head.prepare_training(TrainConfig(gradient_checkpointing=checkpointing), labels, torch.device("cpu"))
    model = head.model.train()
    assert head.base_model().get_base_model().is_activation_checkpointing == checkpointing
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = Collator(head.encode(texts, labels, 256), built.tokenizer.pad_token_id, True)(list(range(len(texts))))
    losses = []
    for _ in range(steps):
        loss = head.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return losses, before, after


def test_gradient_checkpointing_trains_the_adapter_with_the_same_loss(tiny_models):
    plain, _, plain_after = _train_steps(tiny_models, False)
    ckpt, before, after = _train_steps(tiny_models, True)
    assert any(not torch.equal(before[n], after[n]) for n in after if "lora_A" in n)
    assert all(not torch.equal(before[n], after[n]) for n in after if "lora_B" in n)  # B starts at zero
    np.testing.assert_allclose(ckpt, plain, atol=1e-5, rtol=1e-5)
    for n in after:
        torch.testing.assert_close(after[n], plain_after[n], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_in_a_run_and_bad_values(tiny_models, synth_dir, tmp_path):
    run = loraclf.train(None, tiny_overrides(tiny_models["qwen2"], synth_dir, tmp_path, **{
        "train.gradient_checkpointing": True, "train.epochs": 1}), quiet=True)
    assert run.metrics["test"]["n"] == 60
    with pytest.raises(loraclf.LoraclfError, match="train.gradient_checkpointing"):
        loraclf.load_config(None, {"train.gradient_checkpointing": True, "model.method": "head"})
    with pytest.raises(loraclf.LoraclfError, match="model.quantize"):
        loraclf.load_config(None, {"model.quantize": "2bit"})
    with pytest.raises(loraclf.LoraclfError, match="model.quantize=8bit freezes"):
        loraclf.load_config(None, {"model.quantize": "8bit", "model.method": "full"})


def test_quantize_without_bitsandbytes_is_a_config_error(monkeypatch):
    import builtins

    from loraclf.models.build import quantization_config

    real = builtins.__import__

    def no_bnb(name, *a, **k):
        if name == "bitsandbytes":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(loraclf.LoraclfError, match=r"pip install 'loraclf\[quantize\]'"):
        quantization_config("4bit")


def _bnb_runs() -> bool:
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def tiny_llama64(tmp_path_factory):
    """bitsandbytes' 4-bit blocks need hidden sizes that are multiples of 64."""
    import transformers as tf

    from conftest import DECODER_VOCAB, make_tokenizer

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=DECODER_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         eos_token_id=0, bos_token_id=0, pad_token_id=None)
    dest = tmp_path_factory.mktemp("llama64")
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(dest)
    make_tokenizer(decoder=True).save_pretrained(dest)
    return dest


@pytest.mark.skipif(not _bnb_runs(), reason="bitsandbytes is not installed or cannot run here")
@pytest.mark.parametrize("bits,head", [("4bit", "verbalizer"), ("8bit", "classifier")])
def test_quantized_base_trains_the_adapter_and_head(bits, head, tiny_llama64, synth_dir, tmp_path):
    import warnings

    warnings.filterwarnings("ignore", message="MatMul8bitLt")
    run = loraclf.train(None, tiny_overrides(tiny_llama64, synth_dir, tmp_path, **{
        "model.quantize": bits, "model.head": head, "train.epochs": 1, "data.max_test_samples": 10,
        "data.max_eval_samples": 10, "data.max_length": 160}), quiet=True)
    import bitsandbytes as bnb

    clf = loraclf.load(run.path)
    lm = clf.head.base_model()
    layer = bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt
    assert any(isinstance(m, layer) for m in lm.modules())  # the base is quantized when loaded back too
    # ... holding quantized weights (a saved config's quantization_config once left 8-bit layers with fp32 ones)
    assert all(m.weight.dtype in (torch.int8, torch.uint8) for m in lm.modules() if isinstance(m, layer))
    params = dict(clf.head.model.named_parameters())
    lora_b = [p for n, p in params.items() if "lora_B" in n]
    assert lora_b and all(p.dtype == torch.float32 and p.abs().max() > 0 for p in lora_b)  # trained from zero
    if head == "classifier":  # the score layer is trained whole and stays full precision
        score = [p for n, p in params.items() if "score" in n and "modules_to_save" in n]
        assert score and all(p.dtype == torch.float32 for p in score)
    assert json.loads((run.path / "artifact" / "loraclf.json").read_text())["quantize"] == bits
    if head == "classifier":  # config.json loads a full-precision base for plain PEFT users; loraclf.json says how
        assert "quantization_config" not in json.loads((run.path / "artifact" / "config.json").read_text())
    assert run.metrics["params"]["lora"] > 0
