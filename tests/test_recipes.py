"""Every recipe in recipes/ parses, documents its offline substitution, and trains exactly the
parameter counts of the reference studies on models of the real shapes (no download: the hub
models are built from their architecture configs on the meta device)."""

import re

import pytest

from conftest import REPO
from loraclf.config import config_from_dict, load_config
from loraclf.models.budget import num_labels_for, param_report
from loraclf.studies.search import load_search
from loraclf.studies.specs import file_kind
from loraclf.studies.sweep import load_sweep

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
# Every YAML file the project ships, wherever it lies under recipes/ and examples/.
SHIPPED = sorted(p for d in ("recipes", "examples") for p in (REPO / d).rglob("*.yaml"))
HUB_IDS = {"distilbert-base-uncased", "roberta-base", "HuggingFaceTB/SmolLM2-360M-Instruct"}

# Trainable parameters per recipe point (None: a single config or a search's base config). The
# issue's figures: DistilBERT-base r=8 q/v 2 labels 739,586; RoBERTa-base r=4 alpha=96 q/k/v 4 labels
# 814,852; RoBERTa-base r=8 q/v 4 labels 888,580 (r=16 is 1,183,492, not the 888,580 the reference quoted).
EXPECTED = {
    "sst2-distilbert-baselines.yaml": {"head": 592_130, "lora-r8": 739_586, "lora-r16": 887_042},
    "agnews-roberta-budget.yaml": {None: 814_852},
    "agnews-roberta-ablations.yaml": {"baseline-r8": 888_580, "r16": 1_183_492, "query-only": 741_124,
                                      "dropout-0": 888_580, "dropout-0.3": 888_580, "split-90-10": 888_580,
                                      "split-80-20": 888_580, "early-stopping": 888_580},
    "imdb-distilbert-base-vs-finetuned.yaml": {"base": 592_130, "lora-r8": 739_586},
    "tweeteval-smollm2.yaml": {"zero-shot": 0, "head": 2_880, "lora": 822_080},
    "sst2-minilm-study.yaml": {"head": 148_610, "lora-r8": 222_338, "lora-r16": 296_066, "full": 22_713_986},
    "sst2-minilm-search.yaml": {None: 222_338},
}
# The bundled model each recipe names for offline use.
OFFLINE = {"tweeteval-smollm2.yaml": "smollm2-135m"}


def _configs(path, sets=()) -> dict:
    """Every config a shipped file describes (each point of a sweep, a search's base), validated."""
    kind = file_kind(path)
    if kind == "sweep":
        return {p.name: p.config for p in load_sweep(path, sets).points}
    if kind == "search":
        return {None: config_from_dict(load_search(path, sets).tree)}
    return {None: load_config(path, list(sets))}


def _counts(path, sets=(), config_only=None) -> dict:
    out = {}
    for name, cfg in _configs(path, sets).items():
        local = cfg.model.name in ("minilm",)  # bundled weights: count on the real checkpoint (its untrained pooler)
        n, _ = num_labels_for(cfg)
        rep = param_report(cfg, n, config_only=not local if config_only is None else config_only)
        out[name] = rep
    return out


def test_every_shipped_yaml_file_is_a_valid_config_sweep_or_search():
    assert {"quickstart.yaml", "tweeteval-base.yaml"} <= {p.name for p in SHIPPED}  # examples/decoders/ included
    for path in SHIPPED:
        for cfg in _configs(path).values():
            assert cfg.data.path or cfg.data.train, f"{path}: no data"


def test_there_is_a_recipe_for_every_reference_study():
    assert {p.name for p in RECIPES} == set(EXPECTED), "add the new recipe's figures to EXPECTED"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_documents_how_to_run_it(path):
    text = path.read_text()
    configs = _configs(path)
    sub = OFFLINE.get(path.name, "minilm")
    assert f"--set model.name={sub}" in text or all(c.model.name == sub for c in configs.values()), \
        "document the offline substitution"
    assert "minilm" in text
    for cfg in configs.values():
        assert cfg.model.name in HUB_IDS | {"minilm"}
        assert cfg.data.label_names, "declare label_names so counts and label order need no data"
    kind = file_kind(path)
    assert f"loraclf {'train -c' if kind == 'config' else kind} recipes/{path.name}" in text


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parameter_counts_match_the_reference_figures(path):
    counts = _counts(path)
    assert {k: r["trainable"] for k, r in counts.items()} == EXPECTED[path.name]
    for r in counts.values():  # the documented figures are in the recipe's comments too
        assert f"{r['trainable']:,}" in path.read_text()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_offline_substitution_builds(path):
    sub = OFFLINE.get(path.name, "minilm")
    counts = _counts(path, [f"model.name={sub}"], config_only=True)
    for name, rep in counts.items():
        assert rep["model_type"] in ("bert", "llama")
        if rep["method"] == "lora":
            assert rep["lora"] > 0 and rep["target_modules"], name


def test_documented_counts_in_docs_match_the_recipes():
    text = (REPO / "docs" / "experiments.md").read_text()
    for figure in ("739,586", "814,852", "888,580", "1,183,492", "822,080"):
        assert figure in text
    assert re.search(r"RoBERTa-base.*r=16.*1,183,492", text)
