"""The command line: exit code 2 with one line for user errors, predict/evaluate/models/config."""

import csv
import io
import json
import logging
import os
import sys

import pytest

from conftest import synthetic_rows, tiny_overrides, write_csv
from loraclf.cli import build_parser, main, setup_process
from loraclf.config import default


@pytest.fixture(scope="module")
def trained(tiny_models, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_runs")
    sets = []
    for o in tiny_overrides(tiny_models["bert"], synth_dir, out, **{"train.epochs": 1}):
        sets += ["--set", o]
    assert main(["train", "--quiet", *sets]) == 0
    return out / "run"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize("setup,needle", [
    (lambda d: None, "data path not found"),
    (lambda d: write_csv(d / "train.csv", synthetic_rows(20, 1), header=("sentence", "label")), "no column 'text'"),
    (lambda d: (d / "train.csv").write_text("text,label\ngood,positive\n,negative\n"), "row 2"),
    (lambda d: (d / "train.csv").write_bytes(b"text,label\ngood,positive\nb\xffd,negative\n"), "not valid UTF-8"),
    (lambda d: write_csv(d / "train.csv", [(t, "positive") for t, _ in synthetic_rows(20, 1)]), "single class"),
    (lambda d: (write_csv(d / "train.csv", synthetic_rows(20, 1)), (d / "test.csv").write_text("text,label\n")),
     "no rows"),
    (lambda d: (write_csv(d / "train.csv", synthetic_rows(20, 1)),
                write_csv(d / "test.csv", [("hmm", "mixed")])), "train lacks it"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(setup, needle, tmp_path, capsys, tiny_models):
    data = tmp_path / "data"
    data.mkdir()
    setup(data)
    out = tmp_path / "runs"
    code = main(["train", "--quiet", "--data", str(data if any(data.iterdir()) else tmp_path / "missing"),
                 "--model", str(tiny_models["bert"]), "--output-dir", str(out), "--name", "x"])
    assert code == 2
    assert needle in _error_line(capsys)
    assert not out.exists()


def test_bad_config_field_exits_2(capsys):
    assert main(["train", "--set", "train.lrr=1"]) == 2
    assert "did you mean 'train.lr'" in _error_line(capsys)


def test_predict_file_and_kaggle_ids(trained, tmp_path, capsys):
    rows = [(f"id{i}", t) for i, (t, _) in enumerate(synthetic_rows(10, 9))]
    inp = write_csv(tmp_path / "unlabelled.csv", rows, header=("id", "text"))
    out = tmp_path / "preds.csv"
    assert main(["predict", str(trained), "--input", str(inp), "--output", str(out), "--quiet"]) == 0
    got = list(csv.DictReader(open(out)))
    assert len(got) == 10 and set(got[0]) == {"text", "label", "confidence", "p_negative", "p_positive"}
    assert {r["label"] for r in got} <= {"negative", "positive"}
    assert abs(float(got[0]["p_negative"]) + float(got[0]["p_positive"]) - 1) < 1e-4

    kaggle = tmp_path / "submission.csv"
    assert main(["predict", str(trained / "artifact"), "-i", str(inp), "-o", str(kaggle), "--id-column", "id",
                 "-q"]) == 0
    lines = kaggle.read_text().splitlines()
    assert lines[0] == "id,label" and lines[1].split(",")[0] == "id0" and len(lines) == 11
    assert [r["label"] for r in got] == [line.split(",")[1] for line in lines[1:]]


def test_predict_stdin(trained, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a great film\n\nawful boring plot\n"))
    assert main(["predict", str(trained), "-q"]) == 0
    out = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["text"] for r in out] == ["a great film", "awful boring plot"]


def test_predict_errors(trained, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), "-q"]) == 2
    assert "artifact not found" in _error_line(capsys)
    f = write_csv(tmp_path / "x.csv", [("a",)], header=("sentence",))
    assert main(["predict", str(trained), "-i", str(f), "-q"]) == 2
    assert "no column 'text'" in _error_line(capsys)


def test_evaluate(trained, synth_dir, tmp_path, capsys):
    assert main(["evaluate", str(trained), "--data", str(synth_dir), "-q", "-o", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert f"test: n=60 accuracy={m['accuracy']:.4f} macro_f1={m['macro_f1']:.4f}" in capsys.readouterr().out


def test_models_and_config(capsys):
    assert main(["models", "--targets"]) == 0
    out = capsys.readouterr().out
    assert "minilm" in out and "q_lin" in out
    assert main(["config", "--reference"]) == 0
    assert "`train.lr`" in capsys.readouterr().out
    assert main(["config", "--set", "lora.r=4"]) == 0
    assert "r: 4" in capsys.readouterr().out


def test_evaluate_a_single_labelled_file_scores_every_row(trained, tmp_path, capsys):
    f = write_csv(tmp_path / "some.csv", synthetic_rows(37, 5))
    assert main(["evaluate", str(trained), "--data", str(f), "-q", "--split", "train"]) == 0
    assert "n=37 " in capsys.readouterr().out
    bad = write_csv(tmp_path / "bad.csv", synthetic_rows(3, 5) + [("meh", "mixed")])
    assert main(["evaluate", str(trained), "--data", str(bad), "-q"]) == 2
    assert "row 4" in _error_line(capsys)


@pytest.mark.parametrize("override,needle", [
    ("train.class_weights=[a, b]", "non-negative numbers"),
    ("train.class_weights=[1, 2, 3]", "3 values but there are 2 labels"),
    ("data.max_length=4096", "exceeds what"),
])
def test_config_errors_found_before_the_run_directory(override, needle, tiny_models, synth_dir, tmp_path, capsys):
    sets = []
    for o in tiny_overrides(tiny_models["bert"], synth_dir, tmp_path) + [override]:
        sets += ["--set", o]
    assert main(["train", "-q", *sets]) == 2
    assert needle in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_damaged_gzip_is_a_clear_error(tmp_path, capsys):
    import gzip

    data = gzip.compress(b"text,label\n" + b"good film,positive\nbad film,negative\n" * 200)
    (tmp_path / "train.csv.gz").write_bytes(data[: len(data) // 2])
    assert main(["train", "-q", "--data", str(tmp_path), "--output-dir", str(tmp_path / "runs")]) == 2
    assert "damaged or truncated" in _error_line(capsys)


def test_predict_pairs_reads_both_columns(tiny_models, tmp_path, capsys):
    rows = [(t, t[::-1], lab) for t, lab in synthetic_rows(80, 1)]
    data = tmp_path / "pairs"
    write_csv(data / "train.csv", rows, header=("a", "b", "label"))
    sets = []
    for o in tiny_overrides(tiny_models["bert"], data, tmp_path, **{"data.text_column": "[a, b]",
                                                                       "train.epochs": 0.5}):
        sets += ["--set", o]
    assert main(["train", "-q", *sets]) == 0
    assert capsys.readouterr().out.startswith("split ")  # -q: the results table only
    inp = write_csv(tmp_path / "in.csv", [(r[0], r[1]) for r in rows[:5]], header=("a", "b"))
    assert main(["predict", str(tmp_path / "run"), "-i", str(inp), "-q"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 6
    only_a = write_csv(tmp_path / "a.csv", [(r[0],) for r in rows[:5]], header=("a",))
    assert main(["predict", str(tmp_path / "run"), "-i", str(only_a), "-q"]) == 2
    assert "no column 'b'" in _error_line(capsys)


def test_flag_defaults_come_from_the_config():
    parser = build_parser()
    predict = parser.parse_args(["predict", "run"])
    assert predict.batch_size == default("train.eval_batch_size") and predict.format == default("data.format")
    assert parser.parse_args(["evaluate", "run", "--data", "d"]).batch_size == default("train.eval_batch_size")
    assert parser.parse_args(["params", "--method", "zero-shot"]).method == "zero-shot"  # model.method's choices


def test_process_set_up_quiet(monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(logging.getLogger("loraclf"), "level", logging.NOTSET)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    was = hf_logging.is_progress_bar_enabled()
    try:
        setup_process(quiet=True)
        assert logging.getLogger("loraclf").level == logging.ERROR
        assert not hf_logging.is_progress_bar_enabled()
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    finally:
        if was:
            hf_logging.enable_progress_bar()
