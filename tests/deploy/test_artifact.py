"""Artifacts: a run directory or its artifact/ loads as a Classifier; what a damaged one says."""

import json
import shutil

import numpy as np
import pytest

import loraclf
from conftest import tiny_overrides
from loraclf.errors import ModelError
from loraclf.schema import artifact_dir

TEXTS = ["a great film", "boring and awful", "the music was lovely"]


@pytest.fixture(scope="module")
def run(tiny_models, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifact_runs")
    return loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, out, **{"train.epochs": 1}), quiet=True)


def test_run_dir_and_artifact_dir_load_the_same_classifier(run):
    a, b = loraclf.load(run.path), loraclf.load(run.path / "artifact")
    np.testing.assert_array_equal(a.predict_proba(TEXTS), b.predict_proba(TEXTS))
    assert a.labels == ["negative", "positive"] and "method='lora'" in repr(a)
    meta = json.loads((run.path / "artifact" / "loraclf.json").read_text())
    assert meta["task"] == "single-label" and meta["head"] == "classifier" and "pooling" not in meta
    assert set(meta["metrics"]["test"]) == {"accuracy", "macro_f1"}


def test_prediction_api_edges(run):
    clf = loraclf.load(run.path)
    with pytest.raises(TypeError, match="list of texts"):
        clf.predict("one string")
    assert clf.predict_proba([]).shape == (0, 2)
    probs = clf.predict_proba(TEXTS, batch_size=1)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs, clf.predict_proba(TEXTS, batch_size=64), atol=1e-6)  # batching changes nothing
    assert clf.predict(TEXTS) == [clf.labels[i] for i in probs.argmax(1)]
    with pytest.raises(loraclf.LoraclfError, match="precision must be"):
        loraclf.load(run.path, precision="int3")


def test_missing_and_damaged_artifacts_are_one_line_errors(run, tmp_path):
    with pytest.raises(ModelError, match="artifact not found"):
        artifact_dir(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="not a loraclf artifact"):
        artifact_dir(tmp_path)
    broken = shutil.copytree(run.path / "artifact", tmp_path / "broken")
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(ModelError, match=f"cannot load artifact {broken}"):
        loraclf.load(broken)


def test_a_base_model_that_does_not_fit_is_refused(run, tiny_models, tmp_path):
    import transformers as tf

    from conftest import VOCAB

    with pytest.raises(ModelError, match=r"does not fit this artifact: model_type llama \(needs bert\)"):
        loraclf.load(run.path, base_model=str(tiny_models["llama"]))
    wide = tf.BertModel(tf.BertConfig(vocab_size=len(VOCAB), hidden_size=48, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64))
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(ModelError, match=r"hidden_size 48 \(needs 32\)"):
        loraclf.load(run.path, base_model=str(tmp_path / "wide"))
    # the same shape without the trained weights' names: nothing of the base would load
    empty = tmp_path / "renamed"
    shutil.copytree(tiny_models["bert"], empty)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(empty / "model.safetensors"))
    save_file({"other." + k: v for k, v in weights.items()}, str(empty / "model.safetensors"))
    with pytest.raises(ModelError, match="lacks .* weight"):
        loraclf.load(run.path, base_model=str(empty))
    assert loraclf.load(run.path, base_model=str(tiny_models["bert"])).labels == ["negative", "positive"]
