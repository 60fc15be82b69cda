"""The extension cost, shown: a task and a head loraclf does not ship, each written in a file of its own
(toy_task.py, toy_head.py) and added with one registration line each, go through train -> evaluate ->
report.html -> model card -> compare -> export hf -> serve, with no change anywhere in loraclf.

docs/architecture.md states the cost of an extension from this test.
"""

import numpy as np
import pytest

import loraclf
from conftest import synthetic_rows, tiny_overrides, write_csv
from loraclf.evaluation.metrics import METRIC_DIRECTIONS, METRICS
from loraclf.models.heads import HEADS, register_head
from loraclf.tasks import TASKS, register_task

from .toy_head import TailClassifierHead
from .toy_task import TopTwo, top2_accuracy

CLASSES = ("negative", "neutral", "positive")
TEXTS = ["a good film", "the plot was awful", "okay", "the movie was meh and the actor was fine",
         "brilliant scene", "dull story"]


@pytest.fixture(scope="module")
def registered():
    register_task(TopTwo)  # the one line that adds the task
    register_head(TailClassifierHead)  # the one line that adds the head
    yield
    TASKS.pop(TopTwo.name)
    HEADS.pop(TailClassifierHead.name)
    METRICS.pop("top2_accuracy")
    METRIC_DIRECTIONS.pop("top2_accuracy")


@pytest.fixture(scope="module")
def runs(registered, tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("extension")
    for split, (n, seed) in {"train": (240, 1), "validation": (60, 2), "test": (90, 3)}.items():
        write_csv(root / "data" / f"{split}.csv", synthetic_rows(n, seed, CLASSES))
    out = []
    for name, seed in (("a", 1), ("b", 2)):
        extra = {"name": name, "seed": seed, "task": TopTwo.name, "model.head": TailClassifierHead.name,
                 "train.metric": "top2_accuracy", "report.enabled": True}
        out.append(loraclf.train(None, tiny_overrides(tiny_models["bert"], root / "data", root / "runs", **extra),
                                 quiet=True))
    return root, out


def test_training_scores_selects_and_records_the_new_task(runs):
    import pandas as pd

    _, (run, _) = runs
    m = run.metrics
    assert m["task"] == TopTwo.name and m["best"]["metric"] == "top2_accuracy"
    assert run.config.task == TopTwo.name and run.config.model.head == TailClassifierHead.name
    table = pd.read_csv(run.path / "predictions" / "test.csv", keep_default_na=False)
    gold = table["gold"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    probs = table[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert m["test"]["top2_accuracy"] == pytest.approx(top2_accuracy(gold, probs), abs=1e-5)
    assert m["test"]["top2_accuracy"] >= m["test"]["accuracy"]
    # the epoch kept is the one with the best validation top-2 accuracy
    evals = [h for h in run.history if h["type"] == "eval"]
    assert m["best"]["value"] == max(h["top2_accuracy"] for h in evals)


def test_the_new_head_reads_the_end_of_long_texts(runs):
    _, (run, _) = runs
    clf = loraclf.load(run.path)
    assert isinstance(clf.head, TailClassifierHead)
    tokens = clf.tokenizer.convert_ids_to_tokens(clf.head.encode([" ".join(["movie"] * 40) + " awful"], None,
                                                                 12).input_ids[0])
    assert len(tokens) == 12 and tokens[-2] == "awful"  # [CLS] movie ... movie awful [SEP]


def test_evaluate_report_and_card_speak_the_new_task(runs):
    root, (run, _) = runs
    ev = loraclf.evaluate_artifact(str(run.path), [f"data.path={root / 'data'}"], quiet=True)
    assert ev["task"] == TopTwo.name
    assert ev["top2_accuracy"] == pytest.approx(run.metrics["test"]["top2_accuracy"], abs=1e-6)
    html = (run.path / "report.html").read_text()
    assert "top-2 accuracy" in html and "among the two most probable" in html
    card = (run.path / "artifact" / "README.md").read_text()
    assert "type: top_k_accuracy" in card and "top-2 accuracy" in card  # the model-index and the tables
    assert "among the two most probable" in card and TailClassifierHead.name in card


def test_compare_shows_the_new_tasks_columns(runs):
    from loraclf.studies.compare import compare_rows, compare_text

    _, pair = runs
    rows = compare_rows([r.path for r in pair])
    assert [r["top2_accuracy"] for r in rows] == [r.metrics["test"]["top2_accuracy"] for r in pair]
    assert "top-2 accuracy" in compare_text(rows)


def test_hf_export_and_the_server_answer_as_loraclf_does(runs, tmp_path):
    import httpx
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from loraclf.deploy.export import export
    from loraclf.deploy.pool import ModelPool
    from loraclf.deploy.serve import ServeOptions, create_app, serving

    _, (run, _) = runs
    clf = loraclf.load(run.path)
    want = clf.predict_proba(TEXTS)
    out = export(run.path, tmp_path / "hf", "hf")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.truncation_side == "left"  # plain transformers reads the end of a long text too
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(**tok(TEXTS, truncation=True, max_length=32, padding=True, return_tensors="pt")).logits
    np.testing.assert_allclose(logits.softmax(-1).numpy(), want, atol=1e-4)
    served = ModelPool.from_specs([f"toy={run.path}"], ServeOptions())
    with serving(create_app(served, ServeOptions())) as url:
        answer = httpx.post(f"{url}/v1/classify", json={"model": "toy", "input": TEXTS}, timeout=30).json()
        info = httpx.get(f"{url}/v1/models", timeout=30).json()["models"][0]
    assert [r["label"] for r in answer["results"]] == clf.predict(TEXTS)
    np.testing.assert_allclose([[r["probabilities"][c] for c in CLASSES] for r in answer["results"]], want, atol=1e-5)
    assert info["task"] == TopTwo.name and info["head"] == TailClassifierHead.name and info["labels"] == list(CLASSES)
