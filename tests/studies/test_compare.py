"""loraclf.studies.compare and `loraclf compare`: rows from run directories, the terminal, Markdown and CSV
tables, the accuracy-against-parameters plot and sample predictions, on synthetic finished runs."""

import csv
import json

import pytest

from loraclf.cli import main
from loraclf.errors import LoraclfError
from loraclf.studies import compare as C
from reportdata import fake_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of the same test texts (a LoRA run and a head run that disagrees on 10 texts), in a
    folder as a sweep leaves them."""
    root = tmp_path_factory.mktemp("runs") / "study"
    a = fake_run(root, name="lora-r4", seed=3, n_test=200)
    b = fake_run(root, name="head", seed=3, n_test=200, method="head", trainable=1_538)
    f = b / "predictions" / "test.csv"
    with open(f, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows[:10]:
        r["predicted"] = "positive" if r["predicted"] == "negative" else "negative"
    with open(f, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (a / "artifact" / "adapter_model.safetensors").write_bytes(b"x" * 1000)
    return a, b


def test_dotted():
    assert C.dotted({"lora": {"r": 8}}, "lora.r") == 8
    assert C.dotted({"lora": {"r": 8}}, "lora.alpha") is None and C.dotted({"lora": 3}, "lora.r") is None


def test_summarize_run(runs):
    a, b = runs
    m = json.loads((a / "metrics.json").read_text())
    row = C.summarize_run(a, extra_keys=["train.lr"])
    assert row["accuracy"] == m["test"]["accuracy"] and row["split"] == "test" and row["n"] == 200
    assert row["trainable"] == 150_000 and row["r"] == 8 and row["targets"] == "query+value"
    assert row["per_class_f1"] == {k: v["f1"] for k, v in m["test"]["per_class"].items()}
    assert row["extra"] == {"train.lr": 5e-4} and row["artifact_bytes"] == 1000
    assert row["full_model_bytes"] == (m["params"]["total"] - m["params"]["lora"]) * 4
    head = C.summarize_run(b, "validation")
    assert head["r"] is None and head["split"] == "validation" and head["artifact_bytes"] is None


def test_compare_prints_metrics_confusion_matrices_and_examples(runs, tmp_path, capsys):
    a, b = runs
    assert main(["compare", str(a), str(b), "--examples", "4", "--output", str(tmp_path / "cmp.md"),
                 "--csv", str(tmp_path / "cmp.csv"), "--plot", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    acc_line = next(line for line in out.splitlines() if line.startswith("accuracy (test)"))
    assert acc_line.split()[2:] == [f"{ma['test']['accuracy']:.4f}", f"{mb['test']['accuracy']:.4f}"]
    assert "F1 negative" in out and "F1 positive" in out and "train time" in out and "trainable params" in out
    assert "confusion matrices (test" in out and "gold \\ pred" in out
    cm = ma["test"]["confusion_matrix"]
    assert any(line.split()[:3] == ["negative", str(cm[0][0]), str(cm[0][1])] for line in out.splitlines())
    examples = [line for line in out.splitlines() if line.startswith("[")]
    assert len(examples) == 4 and out.count("gold: ") == 4 and "head: " in out and "lora-r4: " in out
    # texts the runs disagree on come first: each example shows two different predictions
    for line in out.splitlines():
        if line.startswith("    gold: "):
            preds = [p.split(": ")[1].split(" ")[0] for p in line.split(" | ")[1:]]
            assert len(set(preds)) == 2
    md = (tmp_path / "cmp.md").read_text()
    assert md.count("\n") == 4 and md.startswith("| run | method | targets | r | alpha | trainable params |")
    assert md.splitlines()[1].startswith("|---|---|---|---:|")
    with open(tmp_path / "cmp.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["run"] for r in rows] == ["lora-r4", "head"] and float(rows[1]["accuracy"]) == mb["test"]["accuracy"]
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_expands_a_folder_of_runs_and_rejects_non_runs(runs, tmp_path, capsys):
    a, _ = runs
    assert main(["compare", str(a.parent)]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[1:] == ["head", "lora-r4"]
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_unfinished_and_unrelated_runs_are_refused(runs, tmp_path):
    a, _ = runs
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(LoraclfError, match="has not finished"):
        C.expand_run_paths([unfinished])
    other = fake_run(tmp_path, name="other", seed=99, n_test=50)  # different texts
    with pytest.raises(LoraclfError, match="share no texts"):
        C.sample_examples(C.compare_rows([a, other]), 3)


def test_side_by_side_table_lines_up(runs):
    rows = C.compare_rows(list(runs))
    lines = C.side_by_side_table(rows).splitlines()
    assert lines[0].split() == ["run", "lora-r4", "head"]
    assert len({len(line) for line in lines if line.startswith(("accuracy", "macro-F1"))}) == 1
    assert lines[1].split() == ["method", "lora", "head"]


def test_accuracy_plot_of_rows(runs, tmp_path):
    rows = C.compare_rows(list(runs))
    png = C.plot_accuracy_vs_params(rows, tmp_path / "p.png", title="two runs")
    assert png == tmp_path / "p.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    failed = [{**rows[0], "accuracy": None, "status": "failed: x"}]
    assert C.plot_accuracy_vs_params(failed, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_regression_rows_and_tables(tmp_path, capsys):
    from reportdata import fake_regression_run

    runs = [fake_regression_run(tmp_path, name=f"sts-{i}", seed=3, n_test=60) for i in range(2)]  # same texts
    rows = C.compare_rows(runs)
    m = json.loads((runs[0] / "metrics.json").read_text())["test"]
    assert rows[0]["task"] == "regression" and rows[0]["per_class_f1"] == {}
    assert {k: rows[0][k] for k in ("rmse", "mae", "pearson", "spearman")} == {k: m[k] for k in
                                                                             ("rmse", "mae", "pearson", "spearman")}
    assert "accuracy" not in rows[0]
    md = C.markdown_table(rows)
    assert "| RMSE (test) | MAE | Pearson r | Spearman ρ |" in md
    assert main(["compare", *map(str, runs), "--examples", "2", "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "confusion matrices" not in out and "(wrong)" not in out and out.count("gold: ") == 2
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    C.write_csv(rows, tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as fh:
        assert float(next(csv.DictReader(fh))["rmse"]) == m["rmse"]


def test_multilabel_rows_and_mixed_tasks(runs, tmp_path):
    from reportdata import fake_multilabel_run

    ml = [fake_multilabel_run(tmp_path, name=f"ml-{i}", seed=i, n_test=80) for i in range(2)]
    rows = C.compare_rows(ml)
    m = json.loads((ml[0] / "metrics.json").read_text())["test"]
    assert rows[0]["micro_f1"] == m["micro_f1"] and rows[0]["subset_accuracy"] == m["subset_accuracy"]
    assert rows[0]["per_class_f1"] == {k: v["f1"] for k, v in m["per_label"].items()}
    assert "| micro-F1 (test) | macro-F1 | subset accuracy | F1 joy |" in C.markdown_table(rows)
    with pytest.raises(LoraclfError, match=r"^runs of different tasks do not compare: lora-r4 \(single-label\), "
                                           r"ml-0 \(multi-label\)$"):
        C.compare_rows([runs[0], ml[0]])


def _set_source(run, split: str, source: str) -> None:
    f = run / "metrics.json"
    m = json.loads(f.read_text())
    m["data"]["sources"][split] = source
    f.write_text(json.dumps(m))


def test_runs_scored_on_different_test_sets_are_flagged(runs, tmp_path, capsys):
    """200 test texts against 872: an n column on each table and a one-line warning, in the terminal and
    on the comparison page; runs on the same texts get none."""
    from loraclf.evaluation.report import compare_report

    a, _ = runs
    big = fake_run(tmp_path, name="big", seed=5, n_test=872)
    rows = C.compare_rows([a, big])
    assert [r["n"] for r in rows] == [200, 872]
    assert main(["compare", str(a), str(big)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("warning: these runs were scored on different test sets (n = 200, 872): their metrics are "
                      "not directly comparable")
    assert next(line for line in out if line.startswith("n (test)")).split()[2:] == ["200", "872"]
    assert "| n (test) |" in C.markdown_table(rows)
    page = compare_report([a, big], tmp_path / "cmp.html").read_text()
    assert ("<p class=low id=split-warning>warning: these runs were scored on different test sets (n = 200, 872): "
            "their metrics are not directly comparable</p>") in page
    assert "<th class=n>test n</th>" in page and ">872</span></td>" in page

    same = C.compare_rows(list(runs))
    assert C.split_warning(same) is None and "warning" not in C.compare_text(same)
    assert "split-warning" not in compare_report(list(runs), tmp_path / "same.html").read_text()


def test_runs_scored_on_different_test_files_are_flagged(tmp_path, capsys):
    from loraclf.evaluation.report import compare_report

    a, b = (fake_run(tmp_path, name=n, seed=3, n_test=100) for n in ("a", "b"))
    _set_source(a, "test", "data/sst2/test.csv")
    _set_source(b, "test", "data/sst2-hard/test.csv")
    line = C.split_warning(C.compare_rows([a, b]))
    assert line == ("warning: these runs were scored on different test sets (files data/sst2/test.csv, "
                    "data/sst2-hard/test.csv): their metrics are not directly comparable")
    assert main(["compare", str(a), str(b)]) == 0
    assert capsys.readouterr().out.startswith(line + "\n")
    assert line in compare_report([a, b], tmp_path / "cmp.html").read_text()
    _set_source(b, "test", "data/sst2/test.csv")
    assert C.split_warning(C.compare_rows([a, b])) is None


def test_comparison_csv_has_unix_line_endings(runs, tmp_path):
    C.write_csv(C.compare_rows(list(runs)), tmp_path / "r.csv")
    data = (tmp_path / "r.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 3
