"""Cross-validation runs (train.cv_folds) and `loraclf audit`: folds that cover every row once and never
leak, mean and spread of every metric, out-of-fold predictions, and label errors found where they
were planted."""

import json
import random

import numpy as np
import pandas as pd
import pytest

import loraclf
from conftest import synthetic_rows, tiny_overrides, write_csv
from loraclf.cli import main


def _folds_of(task_name: str, labels: np.ndarray, k: int = 4) -> list[np.ndarray]:
    from loraclf.tasks import task_class

    return task_class(task_name).folds(labels, k, seed=0)


@pytest.mark.parametrize("task,labels", [
    ("single-label", np.array([0] * 30 + [1] * 10)),
    ("regression", np.linspace(0, 5, 40)),
    ("multi-label", (np.random.default_rng(0).random((40, 5)) < 0.3).astype(np.float32)),
])
def test_folds_cover_every_row_once_and_are_stratified(task, labels):
    folds = _folds_of(task, labels)
    rows = np.concatenate(folds)
    assert len(folds) == 4 and sorted(rows.tolist()) == list(range(40))  # every row, once
    if task == "single-label":  # each fold holds its share of the rare class
        assert [int((labels[f] == 1).sum()) for f in folds] == [2, 3, 3, 2] or all(
            2 <= int((labels[f] == 1).sum()) <= 3 for f in folds)


def test_a_fold_never_trains_on_what_it_is_scored_on(synth_dir):
    from collections import Counter

    from loraclf.config import DataConfig
    from loraclf.data import load_data
    from loraclf.training.cv import _pooled, fold_data

    data = load_data(DataConfig(path=str(synth_dir)), 42)
    pooled = _pooled(data)
    folds = _folds_of(data.task, pooled.labels, 3)
    for i, held in enumerate(folds):
        fd = fold_data(data, held, 0.1, i)
        rest = np.setdiff1d(np.arange(len(pooled)), held)
        assert Counter(fd.splits["test"].texts) == Counter(pooled.take(held).texts)
        learnt = Counter(fd.splits["train"].texts) + Counter(fd.splits["validation"].texts)
        assert learnt == Counter(pooled.take(rest).texts)  # exactly the other folds: nothing held out leaks in


@pytest.fixture(scope="module")
def cv_run(tiny_models, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv")
    return loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, out,
                                              **{"train.cv_folds": 3, "train.epochs": 1, "report.enabled": True}),
                         quiet=True)


def test_a_cv_run_reports_mean_and_spread_and_every_out_of_fold_prediction(cv_run):
    m = cv_run.metrics
    cv = m["cv"]
    assert cv["folds"] == 3 and cv["rows"] == 300 and len(cv["per_fold"]) == 3
    acc = [f["accuracy"] for f in cv["per_fold"]]
    assert cv["mean"]["accuracy"] == pytest.approx(np.mean(acc)) and cv["sd"]["accuracy"] == pytest.approx(
        np.std(acc, ddof=1))
    oof = pd.read_csv(cv_run.path / "predictions" / "oof.csv", keep_default_na=False)
    assert len(oof) == 300 and sorted(oof["fold"].unique()) == [1, 2, 3]
    assert not oof.duplicated(["source", "row"]).any()
    for i in (1, 2, 3):
        fold = json.loads((cv_run.path / "folds" / f"fold-{i}" / "metrics.json").read_text())
        assert fold["cv_fold"]["of"] == 3 and fold["test"]["n"] == int((oof["fold"] == i).sum())
    html = (cv_run.path / "report.html").read_text()
    assert "3-fold cross-validation over 300 texts" in html and "fold-1" in html
    # the console summary (printed at the end, and alone under -q): each headline metric's mean and sd
    from loraclf.training.cv import cv_table

    lines = cv_table(m).splitlines()
    assert lines[0].startswith("cross-validation: 3 folds, 300 rows") and lines[1].split() == ["metric", "mean", "sd"]
    acc = next(ln for ln in lines if ln.startswith("accuracy"))
    assert acc.split()[1:] == [f"{cv['mean']['accuracy']:.4f}", f"{cv['sd']['accuracy']:.4f}"]


def test_cv_runs_compare_as_mean_plus_minus_spread_and_refuse_single_runs(cv_run, tiny_models, synth_dir, tmp_path,
                                                                           capsys):
    from loraclf.studies.compare import compare_rows, compare_text

    rows = compare_rows([cv_run.path, cv_run.path])
    assert rows[0]["split"] == "cv" and " ± " in compare_text(rows)
    single = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{"train.epochs": 1}),
                           quiet=True)
    assert main(["compare", str(cv_run.path), str(single.path)]) == 2
    assert "do not compare" in capsys.readouterr().err


def test_a_fold_is_not_resumed_on_its_own(cv_run, capsys):
    assert main(["train", "--resume", str(cv_run.path / "folds" / "fold-1")]) == 2
    assert "fold of a cross-validation run" in capsys.readouterr().err


def test_audit_finds_the_labels_that_were_flipped(tiny_models, tmp_path, capsys):
    rows = synthetic_rows(600, 7)
    planted = set(random.Random(0).sample(range(600), 30))
    flip = {"positive": "negative", "negative": "positive"}
    write_csv(tmp_path / "data" / "train.csv", [(t, flip[lab]) if i in planted else (t, lab)
                                                for i, (t, lab) in enumerate(rows)])
    sets = [o for o in tiny_overrides(tiny_models["distilbert"], tmp_path / "data", tmp_path / "runs",
                                      **{"model.method": "full", "train.lr": 1e-3, "train.epochs": 6})
            if not o.startswith("data.path")]
    args = ["audit", str(tmp_path / "data"), "--folds", "3"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    suspects = pd.read_csv(tmp_path / "runs" / "run" / "audit.csv")
    found = set(suspects["row"])
    assert len(found & planted) >= 27  # recall >= 0.9
    assert len(found & planted) >= 0.8 * len(found)  # precision >= 0.8
    assert set(suspects.columns) >= {"source", "row", "text", "given", "suggested", "p_given", "neighbours_agree"}
    top = suspects.iloc[0]
    assert top["row"] in planted and top["given"] != top["suggested"]
    summary = json.loads((tmp_path / "runs" / "run" / "metrics.json").read_text())["audit"]
    report = (tmp_path / "runs" / "run" / "report.html").read_text()
    assert summary["flagged"] == len(suspects) and "Probable label errors" in report and "neighbours agree" in report
    assert summary["neighbours"]["k"] == 5 and "nearest neighbours" in summary["method"]
    # the audit reuses a cross-validation run instead of training again; the fold models alone on request
    assert main(["audit", str(tmp_path / "runs" / "run"), "-q", "--neighbours", "0"]) == 0
    summary = json.loads((tmp_path / "runs" / "run" / "metrics.json").read_text())["audit"]
    assert summary["neighbours"] is None and "nearest" not in summary["method"]
    assert "neighbours agree" not in (tmp_path / "runs" / "run" / "report.html").read_text()
    assert pd.read_csv(tmp_path / "runs" / "run" / "audit.csv")["neighbours_agree"].isna().all()
    # --fix: the data again with the top half of the ranking relabelled; the planted rows among it get their label back
    assert main(["audit", str(tmp_path / "runs" / "run"), "-q", "--neighbours", "0", "--fix", "relabel"]) == 0
    fixed = pd.read_csv(tmp_path / "runs" / "run" / "fixed" / "train.csv")
    ranking = pd.read_csv(tmp_path / "runs" / "run" / "audit.csv")
    top = ranking.head(round(len(ranking) / 2))
    assert len(fixed) == 600 and (fixed.loc[top["row"], "label"].to_numpy() == top["suggested"].to_numpy()).all()
    restored = [r for r in top["row"] if r in planted]
    assert len(restored) >= 0.8 * len(top) and all(fixed.at[r, "label"] == rows[r][1] for r in restored)
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "runs" / "run"), "--neighbour-weight", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "weight from 0 to 1" in err and len(err.splitlines()) == 1


def test_audit_refuses_a_regression_task_and_a_single_run(tiny_models, synth_dir, tmp_path, capsys):
    single = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{"train.epochs": 0.3}),
                           quiet=True)
    assert main(["audit", str(single.path)]) == 2
    assert "is not a cross-validation run" in capsys.readouterr().err
    from loraclf.errors import ConfigError
    from loraclf.tasks import Predictions, make_task

    with pytest.raises(ConfigError, match="has none"):
        make_task("regression", ["score"]).label_issues(Predictions(["a"], np.zeros(1), np.zeros(1)))
