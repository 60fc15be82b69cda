"""Prompts for decoder heads: few-shot examples, the prompt spec saved in artifacts, length budgets."""

import numpy as np
import pytest

import loraclf
from loraclf.config import LoraSection, ModelConfig
from loraclf.models import build_prompt_model
from loraclf.models.prompting import PromptSpec, pick_examples

TEXTS = ["good film", "the plot was very dull and the ending was boring", "a", "lovely music and a great cast"]


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
