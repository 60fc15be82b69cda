"""The bad-input catalogue: data, config, run directories, artifacts and prediction. Every case ends
in exit 2, one line on stderr naming the problem, no traceback, and nothing left behind."""

import fcntl
import gzip
import os
import shutil
from pathlib import Path

import pytest

from conftest import synthetic_rows, tiny_overrides, write_csv
from loraclf.cli import main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def _snapshot(root: Path) -> set:
    return {(str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")}


# ---------------------------------------------------------------- data


def _data(tmp: Path, train=None, **files) -> Path:
    d = tmp / "data"
    d.mkdir(exist_ok=True)
    if train is not None:
        (d / "train.csv").write_bytes(train) if isinstance(train, bytes) else write_csv(d / "train.csv", train)
    for name, content in files.items():
        (d / name.replace("_", ".")).write_bytes(content) if isinstance(content, bytes) else \
            (d / name.replace("_", ".")).write_text(content)
    return d


ROWS = synthetic_rows(40, 1)
CSV = "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in ROWS)

DATA_CASES = {
    "missing path": (lambda t: t / "nowhere", [], "data path not found"),
    "no text column": (lambda t: _data(t, train=b"sentence,label\ngood,positive\nbad,negative\n"), [],
                       "no column 'text'"),
    "empty text": (lambda t: _data(t, train=b"text,label\ngood,positive\n,negative\n"), [], "row 2 has an empty"),
    "not UTF-8": (lambda t: _data(t, train=b"text,label\ngood,positive\nb\xffd,negative\n"), [], "not valid UTF-8"),
    "single class": (lambda t: _data(t, train=[(x, "positive") for x, _ in ROWS]), [], "single class"),
    "header-only test": (lambda t: _data(t, train=ROWS, test_csv="text,label\n"), [], "has no rows"),
    "label only in test": (lambda t: _data(t, train=ROWS, test_csv="text,label\nhmm,mixed\n"), [], "train lacks it"),
    "damaged gzip": (lambda t: _data(t, train_csv_gz=gzip.compress(CSV.encode())[:-30]), [], "damaged or truncated"),
    "jsonl bad line": (lambda t: _data(t, train_jsonl='{"text": "a", "label": "x"}\n{"text": "b",\n'), [],
                       "line 2 is not valid JSON"),
    "jsonl not objects": (lambda t: _data(t, train_jsonl='["a", "x"]\n'), [], "line 1 is not a JSON object"),
    "NUL byte": (lambda t: _data(t, train=(CSV + "\x00\n").encode()), [], "NUL byte"),
    "text column twice": (lambda t: _data(t, train=b"text,label,text\ngood,positive,x\nbad,negative,y\n"), [],
                          "column 'text' 2 times"),
    "label id out of range": (lambda t: _data(t, train=b"text,label\ngood,0\nbad,1\nmeh,7\n"),
                              ["data.label_names=[negative, positive]"], "label id 7 outside"),
    "float labels with names": (lambda t: _data(t, train=b"text,label\ngood,0.5\nbad,1\nok,0\n"),
                                ["data.label_names=[negative, positive]"], "not an integer label id"),
    "label_names never in train": (lambda t: _data(t, train=ROWS), ["data.label_names=[negative, positive, mixed]"],
                                   "'mixed' of data.label_names never occurs in train"),
    "no label column": (lambda t: _data(t, train=b"text,sentiment\ngood,positive\nbad,negative\n"), [],
                        "no column 'label'"),
    "unknown extension": (lambda t: _data(t, train_txt=CSV), ["data.train=train.txt"], "data.train"),
    "three text columns": (lambda t: _data(t, train=ROWS), ["data.text_column=[a, b, c]"], "two for sentence-pair"),
    "include_labels empty": (lambda t: _data(t, train=ROWS), ["data.include_labels=[mixed]"], "no rows left"),
    "too few rows to carve": (lambda t: _data(t, train=b"text,label\ngood,positive\nbad,negative\n"), [],
                              "after carving 1 row(s) for validation, train holds a single class"),
    "train file is a folder": (lambda t: (t / "folder.csv").mkdir() or _data(t, train=ROWS),
                               [], None),
    "multi-label name outside label_names": (lambda t: _data(t, train=b"text,labels\ngood,joy;fear\nbad,anger\n"),
                                             ["task=multi-label", "data.label_column=labels",
                                              "data.label_names=[joy, fear]"], "not in data.label_names"),
    "multi-label bad JSON list": (lambda t: _data(t, train=b'text,labels\ngood,"[""joy"""\nbad,anger\n'),
                                  ["task=multi-label", "data.label_column=labels"], "not a valid JSON list"),
    "score not a number": (lambda t: _data(t, train=b"text,score\ngood,1.5\nbad,high\nok,2\n"),
                           ["task=regression", "data.label_column=score"], "row 2 has 'high' in 'score'"),
    "score missing": (lambda t: _data(t, train=b"text,score\ngood,1.5\nbad,\nok,2\n"),
                      ["task=regression", "data.label_column=score"], "row 2 has no 'score' value"),
    "scores taken for classes": (lambda t: _data(t, train=b"text,label\ngood,0.5\nbad,3.8\nok,1.2\n"), [],
                                 "set task: regression"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data(case, tmp_path, capsys, tiny_models):
    make, sets, needle = DATA_CASES[case]
    if needle is None:  # data.train names a folder
        _data(tmp_path, train=ROWS)
        path, sets, needle = tmp_path / "data", [f"data.train={tmp_path / 'folder.csv'}"], "folder.csv"
    else:
        path = make(tmp_path)
    out = tmp_path / "runs"
    args = ["train", "--quiet", "--data", str(path), "--model", str(tiny_models["bert"]), "--output-dir", str(out),
            "--name", "x", "--set", "model.attn_implementation=eager"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    assert needle in _one_line(capsys)
    assert not out.exists()


# ---------------------------------------------------------------- config and run directories

CONFIG_CASES = {
    "unknown field": (["train.lrr=1"], "did you mean 'train.lr'"),
    "wrong type": (["train.lr=fast"], "train.lr' must be a number"),
    "infinite epochs": (["train.epochs=.inf"], "finite number"),
    "infinite lr": (["train.lr=.inf"], "finite number"),
    "negative seed": (["seed=-1"], "seed must be an integer from 0"),
    "huge seed": (["seed=99999999999"], "seed must be an integer from 0"),
    "name escapes": (["name=../victim"], "plain folder name"),
    "absolute name": (["name=/tmp/victim"], "plain folder name"),
    "zero-shot classifier": (["model.method=zero-shot"], "zero-shot needs model.head"),
    "class weights length": (["train.class_weights=[1, 2, 3]"], "3 values but there are 2 labels"),
    "bf16 without a GPU": (["train.precision=bf16"], "needs a CUDA GPU"),
    "misspelled target": (["lora.target_modules=[query, valeu]"], "'valeu' matches no module"),
    "max_length too long": (["data.max_length=4096"], "exceeds what"),
    "over the budget": (["train.max_trainable_params=100"], "max_trainable_params=100"),
    "batch size zero": (["train.batch_size=0"], "train.batch_size must be >= 1"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config(case, tiny_models, synth_dir, tmp_path, capsys):
    if case == "bf16 without a GPU" and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    extra, needle = CONFIG_CASES[case]
    args = ["train", "-q"]
    for o in tiny_overrides(tiny_models["bert"], synth_dir, tmp_path / "runs") + extra:
        args += ["--set", o]
    before = _snapshot(tmp_path)
    assert main(args) == 2
    assert needle in _one_line(capsys)
    assert _snapshot(tmp_path) == before


def test_a_diverging_loss_is_one_line_and_leaves_nothing(tiny_models, synth_dir, tmp_path, capsys, monkeypatch):
    """A learning rate inside its range can still diverge; the loss turning NaN is one line (no longer
    provoked with lr=1e6, which the range refuses up front: the loss is made NaN from step 3 on)."""
    import torch

    from loraclf.tasks import SingleLabel

    real = SingleLabel.loss_function
    calls = {"n": 0}

    def nan_after_two(self, tcfg, train_labels, device):
        loss = real(self, tcfg, train_labels, device)

        def step(logits, labels):
            calls["n"] += 1
            return loss(logits, labels) * (torch.nan if calls["n"] > 2 else 1.0)

        return step

    monkeypatch.setattr(SingleLabel, "loss_function", nan_after_two)
    args = ["train", "-q"]
    for o in tiny_overrides(tiny_models["bert"], synth_dir, tmp_path / "runs") + ["train.log_every=1"]:
        args += ["--set", o]
    before = _snapshot(tmp_path)
    assert main(args) == 2
    assert "training loss became nan by step 3" in _one_line(capsys)
    assert _snapshot(tmp_path) == before


def test_config_file_problems(tmp_path, capsys):
    assert main(["train", "-c", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in _one_line(capsys)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    assert main(["train", "-c", str(bad)]) == 2
    assert "invalid YAML" in _one_line(capsys)


def _train_args(tiny_models, synth_dir, out, **extra) -> list[str]:
    args = ["train", "-q"]
    for o in tiny_overrides(tiny_models["bert"], synth_dir, out, **extra):
        args += ["--set", o]
    return args


def test_output_dir_that_is_a_file(tiny_models, synth_dir, tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    assert main(_train_args(tiny_models, synth_dir, tmp_path / "runs")) == 2
    assert "is a file, not a folder" in _one_line(capsys)
    assert main(_train_args(tiny_models, synth_dir, tmp_path / "runs" / "deeper")) == 2
    assert "is a file, not a folder" in _one_line(capsys)
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_an_existing_folder_that_is_not_a_run_is_never_written_into(tiny_models, synth_dir, tmp_path, capsys):
    victim = tmp_path / "runs" / "run"
    victim.mkdir(parents=True)
    (victim / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    assert main(_train_args(tiny_models, synth_dir, tmp_path / "runs")) == 2
    assert "not a loraclf run" in _one_line(capsys)
    assert _snapshot(tmp_path) == before


def test_a_locked_run_directory_is_refused(tiny_models, synth_dir, tmp_path, capsys):
    """A second process resuming (or starting) a run another process trains in gets one line."""
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text((Path(__file__).parents[1] / "examples" / "quickstart.yaml").read_text())
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process's training holds this
    try:
        before = _snapshot(tmp_path)
        assert main(["train", "-q", "--resume", str(run)]) == 2
        assert "in use by another loraclf process" in _one_line(capsys)
        assert _snapshot(tmp_path) == before
    finally:
        os.close(fd)


def test_resume_problems(tiny_models, synth_dir, tmp_path, capsys):
    assert main(["train", "-q", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no config.yaml" in _one_line(capsys)
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (run / "checkpoints").mkdir()
    from loraclf.config import load_config

    load_config(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path / "runs")).save(run / "config.yaml")
    before = _snapshot(tmp_path)
    for override, needle in (("seed=7", "--resume cannot change seed"), ("train.epochs=9", "train.epochs"),
                             ("data.max_length=64", "data.max_length")):
        assert main(["train", "-q", "--resume", str(run), "--set", override]) == 2
        assert needle in _one_line(capsys)
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------- artifacts and prediction


@pytest.fixture(scope="module")
def trained(tiny_models, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_input_runs")
    assert main(_train_args(tiny_models, synth_dir, out, **{"train.epochs": 1})) == 0
    return out / "run"


def _damaged(trained: Path, tmp: Path, damage) -> Path:
    art = shutil.copytree(trained / "artifact", tmp / "art")
    damage(art)
    return art


ARTIFACT_CASES = {
    "not found": (lambda a: shutil.rmtree(a), "artifact not found"),
    "no loraclf.json": (lambda a: (a / "loraclf.json").unlink(), "not a loraclf artifact"),
    "loraclf.json not JSON": (lambda a: (a / "loraclf.json").write_text("{labels: oops"), "loraclf.json is not valid"),
    "adapter weights deleted": (lambda a: (a / "adapter_model.safetensors").unlink(), "adapter_model.safetensors"),
    "adapter truncated": (lambda a: (a / "adapter_model.safetensors").write_bytes(b"\x00" * 20), "cannot load"),
}


@pytest.mark.parametrize("case", sorted(ARTIFACT_CASES))
def test_damaged_artifacts(case, trained, tmp_path, capsys):
    damage, needle = ARTIFACT_CASES[case]
    art = _damaged(trained, tmp_path, damage)
    (tmp_path / "in.csv").write_text("text\ngood film\n")
    assert main(["predict", str(art), "-i", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv")]) == 2
    assert needle in _one_line(capsys)
    assert not (tmp_path / "out.csv").exists() and not list(tmp_path.glob(".out.csv*"))


def _predict_case(trained, tmp, tiny_models, case):
    inp = tmp / "in.csv"
    inp.write_text("text,id\ngood film,1\nbad plot,2\n")
    base = ["predict", str(trained), "-i", str(inp)]
    return {
        "output folder missing": (base + ["-o", str(tmp / "no" / "out.csv")], "does not exist"),
        "output is a folder": (base + ["-o", str(tmp)], "is a folder"),
        "batch size zero": (base + ["--batch-size", "0"], "--batch-size must be >= 1"),
        "input not found": (["predict", str(trained), "-i", str(tmp / "none.csv")], "file not found"),
        "input column missing": (base + ["--text-column", "review"], "no column 'review'"),
        "id column missing": (base + ["--id-column", "key"], "no id column 'key'"),
        "base model of another architecture": (base + ["--base-model", str(tiny_models["llama"])],
                                               "does not fit this artifact"),
        "unknown base alias": (base + ["--base-model", "no-such-model"], "unknown model"),
    }[case]


@pytest.mark.parametrize("case", ["output folder missing", "output is a folder", "batch size zero", "input not found",
                                  "input column missing", "id column missing", "base model of another architecture",
                                  "unknown base alias"])
def test_bad_prediction_requests(case, trained, tiny_models, tmp_path, capsys):
    args, needle = _predict_case(trained, tmp_path, tiny_models, case)
    before = _snapshot(tmp_path)
    assert main(args) == 2
    assert needle in _one_line(capsys)
    assert _snapshot(tmp_path) == before


def test_evaluate_with_a_label_the_model_lacks(trained, tmp_path, capsys):
    (tmp_path / "test.csv").write_text("text,label\ngood film,positive\nso-so,mixed\n")
    assert main(["evaluate", str(trained), "--data", str(tmp_path / "test.csv")]) == 2
    assert "unknown to the model" in _one_line(capsys)

