"""The Python API in the shape users know (api.py, deploy/artifact.py): fit on a DataFrame, a Dataset, tuples
or a path gives the CLI's metrics on the same rows and seed; predict/evaluate/save_pretrained/push_to_hub;
the CLI's errors, never a raw TypeError."""

from __future__ import annotations

import pandas as pd
import pytest

import loraclf
from conftest import synthetic_rows, tiny_overrides, write_csv
from loraclf.errors import ConfigError, DataError, InputError, LoraclfError

FAST = {"train__epochs": 2, "batch_size": 16, "lr": 5e-3, "eval_batch_size": 64, "max_length": 32,
        "attn_implementation": "eager", "report": {"enabled": False}}


def _frames(synth_dir):
    return {s: pd.read_csv(synth_dir / f"{s}.csv") for s in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def cli_run(tiny_models, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    return loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, out, name="cli"), quiet=True)


def test_fit_on_dataframes_equals_the_cli_on_the_same_rows(cli_run, tiny_models, synth_dir, tmp_path):
    f = _frames(synth_dir)
    clf = loraclf.fit(f["train"], f["validation"], f["test"], model=str(tiny_models["bert"]), quiet=True,
                      output_dir=str(tmp_path), name="df", **FAST)
    assert clf.run.metrics["test"]["accuracy"] == cli_run.metrics["test"]["accuracy"]
    assert clf.run.metrics["test"]["loss"] == pytest.approx(cli_run.metrics["test"]["loss"], abs=1e-6)
    # the run reruns from its config.yaml: the tables were saved where it names them
    assert (tmp_path / ".data").is_dir() and clf.run.config.data.train.startswith(str(tmp_path / ".data"))
    again = loraclf.train(clf.run.config_path, ["name=again"], quiet=True)
    assert again.metrics["test"]["loss"] == pytest.approx(clf.run.metrics["test"]["loss"], abs=1e-6)
    # evaluate on a DataFrame: the run's own test metrics
    m = clf.evaluate(f["test"])
    assert m["accuracy"] == clf.run.metrics["test"]["accuracy"] and m["n"] == len(f["test"])


def test_fit_on_a_dataset_with_class_labels_and_on_tuples(cli_run, tiny_models, synth_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    f = _frames(synth_dir)
    names = ["negative", "positive"]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict(
        {"text": df["text"].tolist(), "label": [names.index(x) for x in df["label"]]}, features=features)
        for s, df in f.items()})
    clf = loraclf.fit(dd, model=str(tiny_models["bert"]), quiet=True, output_dir=str(tmp_path), name="ds", **FAST)
    assert clf.labels == names and clf.run.metrics["test"]["accuracy"] == cli_run.metrics["test"]["accuracy"]
    rows = {s: list(df.itertuples(index=False, name=None)) for s, df in f.items()}
    tup = loraclf.fit(rows["train"], rows["validation"], rows["test"], model=str(tiny_models["bert"]), quiet=True,
                      output_dir=str(tmp_path), name="tuples", **FAST)
    assert tup.run.metrics["test"]["loss"] == pytest.approx(cli_run.metrics["test"]["loss"], abs=1e-6)
    # a train file by path, validation and test in memory
    mixed = loraclf.fit(synth_dir / "train.csv", f["validation"], rows["test"], model=str(tiny_models["bert"]),
                        quiet=True, output_dir=str(tmp_path), name="mixed", **FAST)
    assert mixed.run.metrics["test"]["loss"] == pytest.approx(cli_run.metrics["test"]["loss"], abs=1e-6)


def test_fit_errors_are_the_clis(tiny_models, synth_dir, tmp_path, monkeypatch):
    f = _frames(synth_dir)
    model = str(tiny_models["bert"])
    with pytest.raises(ConfigError, match=r"unknown setting 'epochz' \(did you mean 'epochs'\?\)"):
        loraclf.fit(f["train"], model=model, epochz=1)
    from loraclf import api

    assert api.dotted_settings({"epochs": 1, "lora": {"r": 4}, "train__lr": 0.1, "seed": 3}) == {
        "train.epochs": 1, "lora.r": 4, "train.lr": 0.1, "seed": 3}
    monkeypatch.setattr(api, "_field_sections", lambda: {"metric": ["train", "report"]})  # no such clash today
    with pytest.raises(ConfigError, match=r"'metric' is a field of several sections \(train.metric, report.metric\); "
                                          r"write train__metric="):
        api.dotted_settings({"metric": "accuracy"})
    with pytest.raises(InputError, match=r"fit\(train=...\): got int"):
        loraclf.fit(3, model=model)
    with pytest.raises(InputError, match=r"row 2 is not a tuple of 2"):
        loraclf.fit([("a", "negative"), ("b",)], model=model)
    with pytest.raises(DataError, match="no column 'text'"):
        loraclf.fit(f["train"].rename(columns={"text": "body"}), model=model, output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="not int"):
        loraclf.train(42)
    assert isinstance(InputError("x"), TypeError) and isinstance(InputError("x"), LoraclfError)


def test_train_takes_a_dict_config(tiny_models, synth_dir, tmp_path):
    over = dict(o.split("=", 1) for o in tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, name="d"))
    tree: dict = {}
    for k, v in over.items():
        sec, _, fld = k.rpartition(".")
        (tree.setdefault(sec, {}) if sec else tree)[fld] = v
    run = loraclf.train(tree, {"train.epochs": 1}, quiet=True)
    assert run.config.train.epochs == 1 and run.metrics["test"]["n"] > 0
    # the data section may hold DataFrames too: the same rows give the same run
    f = _frames(synth_dir)
    tree["data"] = {**tree["data"], "path": None, **f}
    frames = loraclf.train(tree, {"train.epochs": 1, "name": "frames"}, quiet=True)
    assert frames.metrics["test"]["loss"] == pytest.approx(run.metrics["test"]["loss"], abs=1e-6)


def test_pairs_as_tuples_equal_pairs_argument(tiny_models, tmp_path):
    rows = [(t, t[::-1], lab) for t, lab in synthetic_rows(80, 3)]
    write_csv(tmp_path / "pairs" / "train.csv", rows, header=("a", "b", "label"))
    run = loraclf.train(None, tiny_overrides(tiny_models["bert"], tmp_path / "pairs", tmp_path, **{
        "data.text_column": "[a, b]", "train.epochs": 1}), quiet=True)
    clf = loraclf.load(run.path)
    a, b = [r[0] for r in rows[:5]], [r[1] for r in rows[:5]]
    assert (clf.predict_proba(list(zip(a, b))) == clf.predict_proba(a, pairs=b)).all()
    with pytest.raises(InputError, match="reads text pairs"):
        clf.predict(a)
    with pytest.raises(InputError, match="not both"):
        clf.predict(list(zip(a, b)), pairs=b)
    pytest.importorskip("fastapi")
    from loraclf.deploy.pool import ModelPool
    from loraclf.deploy.serve import ServeOptions

    with pytest.raises(LoraclfError, match=r"reads text pairs \(a, b\); loraclf serve takes one text per input"):
        ModelPool.from_specs([f"pairs={run.path}"], ServeOptions())  # refused at start, not a 500 on every request


def test_predict_save_pretrained_and_push_to_hub(cli_run, tmp_path, monkeypatch):
    clf = loraclf.from_pretrained(cli_run.path)
    with pytest.raises(InputError, match="not a single string"):
        clf.predict("one text")
    with pytest.raises(InputError, match="reads one text per input"):
        clf.predict([("a", "b")])
    saved = clf.save_pretrained(tmp_path / "saved")
    again = loraclf.Classifier.from_pretrained(saved)
    texts = ["good film", "bad film here"]
    assert (again.predict_proba(texts) == clf.predict_proba(texts)).all()
    with pytest.raises(LoraclfError, match="not empty"):
        clf.save_pretrained(saved)
    # push_to_hub, up to the HfApi boundary (no network here): the repo is created and the artifact uploaded
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, folder_path, repo_id, **kw):
            calls.append(("upload_folder", sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())))
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = again.push_to_hub("me/sst2-minilm", token="t0k", private=True)
    assert url.endswith("me/sst2-minilm/commit/abc")
    assert calls[0] == ("init", "t0k") and calls[1][1] == "me/sst2-minilm" and calls[1][2]["private"] is True
    assert {"loraclf.json", "README.md", "config.json"} <= set(calls[2][1])


def _tags(text: str, label: str) -> list[str]:
    return [label] + (["long"] if len(text.split()) > 8 else [])


def test_multi_label_lists_and_regression_scores_in_dataframes(tiny_models, synth_dir, tmp_path):
    """Label lists in a DataFrame column (stored as JSON text) train as the same lists joined in a file; scores
    train as regression; a numpy-string column stays a string."""
    import numpy as np

    f = _frames(synth_dir)
    lists = {s: df.assign(labels=[_tags(t, lab) for t, lab in zip(df.text, df.label)]) for s, df in f.items()}
    for s, df in lists.items():
        write_csv(tmp_path / "tagged" / f"{s}.csv", [(t, ";".join(ls)) for t, ls in zip(df.text, df.labels)],
                  header=("text", "labels"))
    multi = {"label_column": "labels", "task": "multi-label", "model": str(tiny_models["bert"]), "quiet": True,
             "output_dir": str(tmp_path), **FAST}
    mem = loraclf.fit(lists["train"].drop(columns="label"), lists["validation"], lists["test"], name="ml", **multi)
    disk = loraclf.fit(tmp_path / "tagged" / "train.csv", tmp_path / "tagged" / "validation.csv",
                       tmp_path / "tagged" / "test.csv", name="ml-files", **multi)
    assert mem.labels == disk.labels == ["long", "negative", "positive"]
    assert mem.run.metrics["test"]["macro_f1"] == disk.run.metrics["test"]["macro_f1"]
    assert mem.evaluate(lists["test"])["macro_f1"] == pytest.approx(mem.run.metrics["test"]["macro_f1"])
    scored = {s: pd.DataFrame({"text": np.array(df.text.tolist(), dtype=object).astype(np.str_).astype(object),
                               "score": [float(len(t.split())) for t in df.text]}) for s, df in f.items()}
    reg = loraclf.fit(scored["train"], scored["validation"], scored["test"], label_column="score", task="regression",
                      model=str(tiny_models["bert"]), quiet=True, output_dir=str(tmp_path), name="reg", **FAST)
    assert reg.run.metrics["task"] == "regression" and reg.run.metrics["test"]["n"] == len(f["test"])
    stored = pd.read_parquet(next((tmp_path / ".data").glob("*/train.parquet")))
    assert isinstance(stored.text[0], str)


def test_in_memory_splits_keep_the_configs_others_and_are_stored_once(tiny_models, synth_dir, tmp_path):
    f = _frames(synth_dir)
    kw = {"model": str(tiny_models["bert"]), "quiet": True, "output_dir": str(tmp_path), **FAST}
    # a config naming a dataset folder: only train is replaced, its validation and test stay
    clf = loraclf.fit(f["train"], config={"data": {"path": str(synth_dir)}}, name="keep", **kw)
    assert clf.run.metrics["data"]["sources"]["test"] == str(synth_dir / "test.csv")
    assert clf.run.config.data.path == str(synth_dir) and clf.run.config.data.train.endswith("train.parquet")
    again = loraclf.fit(f["train"], config={"data": {"path": str(synth_dir)}}, name="keep-again", **kw)
    assert again.run.config.data.train == clf.run.config.data.train  # the same rows are stored once
    assert len(list((tmp_path / ".data").iterdir())) == 1
    # a dataset folder given as train is the whole dataset (data.path), not one file
    folder = loraclf.fit(synth_dir, name="folder", **kw)
    assert folder.run.config.data.path == str(synth_dir) and folder.run.metrics["test"]["n"] == len(f["test"])
    with pytest.raises(ConfigError, match=r"data= takes a mapping of data fields"):
        loraclf.fit(f["train"], data="sst2", **kw)


def test_a_dataset_dict_with_other_splits_and_evaluate_on_a_class_label_dataset(cli_run, tiny_models, synth_dir,
                                                                               tmp_path):
    import logging
    datasets = pytest.importorskip("datasets")
    f = _frames(synth_dir)
    names = ["negative", "positive"]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    ds = {s: datasets.Dataset.from_dict({"text": df.text.tolist(), "label": [names.index(x) for x in df.label]},
                                        features=features) for s, df in f.items()}
    dd = datasets.DatasetDict({**ds, "unsupervised": ds["test"]})
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("loraclf")  # an earlier `-q` CLI call in this process may have raised its level
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)  # the CLI's console setup may stop records reaching the root
    try:
        clf = loraclf.fit(dd, model=str(tiny_models["bert"]), quiet=True, output_dir=str(tmp_path), name="dd", **FAST)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("unsupervised left out" in m for m in said)
    assert clf.run.metrics["test"]["accuracy"] == cli_run.metrics["test"]["accuracy"]
    assert clf.evaluate(ds["test"])["accuracy"] == clf.run.metrics["test"]["accuracy"]  # ids read as names
