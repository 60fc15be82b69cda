"""Heads: one protocol for the classifier, verbalizer and generate heads; the loop only calls it."""

import numpy as np
import pytest
import torch

from conftest import synthetic_rows
from loraclf.config import LoraSection, ModelConfig, TrainConfig
from loraclf.models import apply_method
from loraclf.models.build import load_base
from loraclf.models.heads import HEADS, ClassifierHead, GenerateHead, Head, VerbalizerHead
from loraclf.tasks import SingleLabel
from loraclf.training.loop import Trainer, make_accelerator


def _classifier(tiny_models, task):
    model, tok, resolved, missing = load_base(ModelConfig(name=str(tiny_models["bert"]), attn_implementation="eager"),
                                              2, {0: "negative", 1: "positive"})
    built = apply_method(model, tok, resolved, "lora", LoraSection(), missing)
    return ClassifierHead(built.model, built.tokenizer, task)


def test_every_head_is_registered_under_its_config_name():
    # ONNX exports run on their exporter's runtime, not a head of their own
    assert set(HEADS) == {"classifier", "embedding", "verbalizer", "generate"}
    assert all(issubclass(h, Head) and HEADS[h.name] is h for h in HEADS.values())
    assert issubclass(GenerateHead, VerbalizerHead)


def test_classifier_loss_is_the_tasks_loss_of_its_logits(tiny_models):
    head = _classifier(tiny_models, SingleLabel(["negative", "positive"]))
    head.prepare_training(TrainConfig(), np.array([0, 1]), "cpu")
    enc = head.encode(["good film", "awful plot"], [1, 0], 32)
    from loraclf.data import Collator

    batch = Collator(enc, head.tokenizer.pad_token_id, head.pad_left)([0, 1])
    logits = head.logits(head.model, batch)
    torch.testing.assert_close(head.loss(head.model, batch), torch.nn.functional.cross_entropy(logits, batch["labels"]))


def test_a_new_task_trains_through_the_loop_unchanged(tiny_models):
    """The loop asks the head for the loss and the task for metrics: a task it has never seen trains."""
    calls = {"loss": 0, "evaluate": 0}

    class Counting(SingleLabel):
        name = "counting"

        def loss_function(self, tcfg, train_labels, device):
            inner = super().loss_function(tcfg, train_labels, device)

            def loss(logits, labels):
                calls["loss"] += 1
                return inner(logits, labels)
            return loss

        def evaluate(self, logits, gold):
            calls["evaluate"] += 1
            return super().evaluate(logits, gold)

    head = _classifier(tiny_models, Counting(["negative", "positive"]))
    rows = synthetic_rows(64, 5)
    enc = head.encode([t for t, _ in rows], [int(lab == "positive") for _, lab in rows], 32)
    tcfg = TrainConfig(epochs=1, batch_size=16, eval_batch_size=32, lr=5e-3)
    state = Trainer(head, enc, enc, tcfg, 0, make_accelerator(tcfg), quiet=True).fit()
    assert calls == {"loss": 4, "evaluate": 1}
    assert state.step == 4 and state.history[-1]["type"] == "eval"


@pytest.mark.parametrize("name", ["verbalizer", "generate"])
def test_prompt_heads_refuse_text_pairs(name, tiny_models):
    from loraclf.errors import DataError

    head = HEADS[name](torch.nn.Identity(), None, SingleLabel(["a", "b"]))
    with pytest.raises(DataError, match="text pairs need model.head=classifier"):
        head.encode(["x"], None, 32, pairs=["y"])
