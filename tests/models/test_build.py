"""Trainable-parameter figures on random-init models of the real shapes (no download)."""

import pytest
import torch

from loraclf.config import LoraSection
from loraclf.errors import BudgetError, ModelError
from loraclf.models import apply_method, check_budget, count_parameters, default_targets


def _seq_cls(config):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.fixture(scope="module")
def distilbert_base():
    from transformers import DistilBertConfig

    return DistilBertConfig(num_labels=2)  # distilbert-base-uncased shape


@pytest.fixture(scope="module")
def roberta_base():
    from transformers import RobertaConfig

    return RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, num_labels=4)


def test_distilbert_base_r8_matches_peft_default(distilbert_base):
    built = apply_method(_seq_cls(distilbert_base), None, None, "lora", LoraSection(r=8, alpha=16))
    assert built.target_modules == ["q_lin", "v_lin"]
    c = count_parameters(built.model, built.modules_to_save)
    # 6 layers x 2 modules x r(768+768) LoRA + pre_classifier (768x768+768) + classifier (768x2+2).
    # PEFT's suffix match of "classifier" also trains pre_classifier; it is newly initialised
    # in every DistilBERT checkpoint, so training it is what we want as well.
    assert c["trainable"] == 739_586
    assert c["lora"] == 147_456 and c["head"] == 590_592 + 1_538


def test_roberta_base_r8_qv_4_labels(roberta_base):
    built = apply_method(_seq_cls(roberta_base), None, None, "lora", LoraSection(r=8, alpha=16))
    c = count_parameters(built.model, built.modules_to_save)
    assert c["trainable"] == 888_580 and c["lora"] == 294_912


def test_roberta_base_r16_is_not_the_r8_figure(roberta_base):
    built = apply_method(_seq_cls(roberta_base), None, None, "lora", LoraSection(r=16, alpha=32))
    assert count_parameters(built.model, built.modules_to_save)["trainable"] == 294_912 * 2 + 593_668


def test_head_method_trains_only_the_head(distilbert_base):
    built = apply_method(_seq_cls(distilbert_base), None, None, "head", LoraSection())
    c = count_parameters(built.model, built.modules_to_save)
    assert c["lora"] == 0 and c["other"] == 0 and c["trainable"] == 592_130


def test_missing_weights_are_trained(distilbert_base):
    from transformers import BertConfig

    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, num_labels=2)
    built = apply_method(_seq_cls(cfg), None, None, "lora", LoraSection(), missing=["bert.pooler.dense.weight"])
    c = count_parameters(built.model, built.modules_to_save)
    # minilm shape: LoRA 6 x 2 x 8 x (384 + 384) + pooler 384 x 384 + 384 + classifier 384 x 2 + 2
    assert c["trainable"] == 73_728 + 147_840 + 770
    assert "bert.pooler.dense" in built.modules_to_save


def test_budget():
    check_budget({"trainable": 10, "lora": 5, "head": 5, "other": 0}, 10)
    with pytest.raises(BudgetError, match="over train.max_trainable_params=9"):
        check_budget({"trainable": 10, "lora": 5, "head": 5, "other": 0}, 9)


@pytest.mark.parametrize("mt,expected", [("bert", ["query", "value"]), ("distilbert", ["q_lin", "v_lin"]),
                                         ("deberta-v2", ["query_proj", "value_proj"]), ("modernbert", ["Wqkv"]),
                                         ("electra", ["query", "value"]), ("roberta", ["query", "value"]),
                                         ("llama", ["q_proj", "v_proj"])])
def test_default_targets(mt, expected):
    assert default_targets(mt) == expected


def test_unknown_architecture_needs_explicit_targets():
    with pytest.raises(ModelError, match="set lora.target_modules"):
        default_targets("made-up")
