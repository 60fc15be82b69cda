"""Hardening, round two (issue 20): inputs that crashed, hung, corrupted a file or silently degraded a
run now end in exit 2 with one line, in well under a second where nothing needs a model, and leave
nothing behind. Each case here failed on the code before the fix."""

import shutil
import time
from pathlib import Path

import pytest

import loraclf
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


# ---------------------------------------------------------------- numeric ranges, declared with each field

RANGE_CASES = {
    "negative clip norm": ("train.max_grad_norm=-1", "train.max_grad_norm must be > 0 or null, got -1.0"),
    "slightly negative clip norm": ("train.max_grad_norm=-0.001", "train.max_grad_norm must be > 0"),
    "alpha zero": ("lora.alpha=0", "lora.alpha must be > 0, got 0.0"),
    "negative weight decay": ("train.weight_decay=-10", "train.weight_decay must be >= 0"),
    "astronomic lr": ("train.lr=1e300", "train.lr must be in (0, 10], got 1e+300"),
    "astronomic rank": ("lora.r=1e9", "lora.r must be an integer from 1 to 65536 or 'auto', got 1000000000"),
    "negative threads": ("train.num_threads=-1", "train.num_threads must be an integer from 1 to 1024 or null"),
    "zero budget": ("train.max_trainable_params=0", "train.max_trainable_params must be >= 1 or null"),
}


@pytest.mark.parametrize("case", sorted(RANGE_CASES))
def test_numbers_outside_their_declared_range_are_refused(case, capsys):
    override, needle = RANGE_CASES[case]
    assert main(["config", "--set", override]) == 2
    assert needle in _one_line(capsys)


def test_the_config_reference_prints_each_range():
    from loraclf.config import reference

    ref = reference()
    assert "| `train.max_grad_norm` | `1.0` |" in ref and "Range: > 0." in ref and "Range: in (0, 10]." in ref


def _train_args(tiny_models, synth_dir, out, **extra) -> list[str]:
    args = ["train", "-q"]
    for o in tiny_overrides(tiny_models["bert"], synth_dir, out, **extra):
        args += ["--set", o]
    return args


def test_epochs_too_small_for_one_batch_are_refused_before_anything_is_written(tiny_models, synth_dir, tmp_path,
                                                                              capsys):
    before = _snapshot(tmp_path)
    assert main(_train_args(tiny_models, synth_dir, tmp_path / "runs", **{"train.epochs": 1e-9})) == 2
    assert "train.epochs=1e-09 trains no batch (15 per epoch); use at least 0.0667" in _one_line(capsys)
    assert _snapshot(tmp_path) == before


def test_a_rank_larger_than_the_layers_is_refused(tiny_models, synth_dir, tmp_path, capsys):
    before = _snapshot(tmp_path)
    assert main(_train_args(tiny_models, synth_dir, tmp_path / "runs", **{"lora.r": 1000})) == 2
    assert "lora.r=1000 is larger than the smallest targeted layer allows (32)" in _one_line(capsys)
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------- refused up front, or cleaned up


def test_a_label_per_row_beyond_max_labels_is_refused_up_front(tiny_models, tmp_path, capsys):
    rows = [(f"text number {i}", f"label{i}") for i in range(1200)]
    write_csv(tmp_path / "data" / "train.csv", rows)
    args = ["train", "-q", "--data", str(tmp_path / "data"), "--model", str(tiny_models["bert"]), "--output-dir",
            str(tmp_path / "runs"), "--set", "model.attn_implementation=eager"]
    t0 = time.perf_counter()
    assert main(args) == 2
    assert "train has 1,200 labels, more than data.max_labels=1,000 (for 1,200 rows)" in _one_line(capsys)
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "runs").exists()
    from loraclf.config import load_config

    assert load_config(None, ["data.max_labels=null"]).data.max_labels is None  # the flag that allows it


def test_any_crash_before_the_first_checkpoint_removes_what_the_run_created(tiny_models, synth_dir, tmp_path,
                                                                           monkeypatch):
    from loraclf.training import loop

    def crash(*a, **k):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(loop.Trainer, "__init__", crash)
    out = tmp_path / "runs" / "deeper"
    with pytest.raises(RuntimeError, match="a bug"):
        loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, out))
    assert not (tmp_path / "runs").exists()  # the run folder and the parents made for it


# ---------------------------------------------------------------- outputs never destroy inputs


@pytest.fixture(scope="module")
def trained(tiny_models, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hardening_runs")
    assert main(_train_args(tiny_models, synth_dir, out, **{"train.epochs": 1})) == 0
    return out / "run"


def test_predict_never_writes_over_its_input(trained, tmp_path, capsys, monkeypatch):
    inp = tmp_path / "in.csv"
    inp.write_text("text\ngood film\nbad plot\n")
    (tmp_path / "link.csv").symlink_to(inp)
    monkeypatch.chdir(tmp_path)
    for out in (str(inp), "in.csv", "./in.csv", str(tmp_path / "link.csv"), str(tmp_path / ".." / tmp_path.name /
                                                                                 "in.csv")):
        assert main(["predict", str(trained), "-i", str(inp), "-o", out]) == 2
        assert "is the input" in _one_line(capsys)
    assert inp.read_text() == "text\ngood film\nbad plot\n"


def test_evaluate_checks_its_output_before_scoring_and_writes_it_whole(trained, synth_dir, tmp_path, capsys):
    assert main(["evaluate", str(trained), "--data", str(synth_dir), "-o", str(tmp_path / "no" / "m.json")]) == 2
    assert "folder" in _one_line(capsys) and not (tmp_path / "no").exists()
    assert main(["evaluate", str(trained), "--data", str(synth_dir), "-q", "-o", str(tmp_path / "m.json")]) == 0
    assert (tmp_path / "m.json").read_text().startswith("{") and not list(tmp_path.glob(".m.json*"))


def test_help_says_an_existing_output_is_replaced(capsys):
    for cmd in ("predict", "evaluate"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "an existing file is replaced" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------- a base of the right shape, other weights


@pytest.fixture(scope="module")
def other_base(tiny_models, tmp_path_factory):
    """The same tiny BERT with every weight moved a little: same shape, other model."""
    import torch
    from safetensors.torch import load_file, save_file

    dest = Path(shutil.copytree(tiny_models["bert"], tmp_path_factory.mktemp("other") / "bert"))
    sd = load_file(str(dest / "model.safetensors"))
    g = torch.Generator().manual_seed(1)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in sd.items()}, str(dest / "model.safetensors"))
    return dest


def test_a_base_with_other_weights_is_refused_unless_asked_for(trained, other_base, tiny_models, tmp_path, capsys):
    from loraclf.errors import ModelError

    meta = loraclf.load(trained).meta
    assert len(meta["base_fingerprint"]) == 16
    (tmp_path / "in.csv").write_text("text\ngood film\n")
    args = ["predict", str(trained), "-i", str(tmp_path / "in.csv"), "--base-model", str(other_base)]
    assert main(args + ["-q"]) == 2
    assert "has other weights than the one this artifact was trained on" in _one_line(capsys)
    assert main(args + ["-q", "--allow-other-base"]) == 0
    with pytest.raises(ModelError, match="allow_other_base=True"):
        loraclf.load(trained, base_model=str(other_base))
    assert loraclf.load(trained, base_model=str(other_base), allow_other_base=True).predict(["good"])
    assert loraclf.load(trained, base_model=str(tiny_models["bert"])).predict(["good"])  # its own base: fine


def test_a_base_whose_weights_are_a_pickle_of_more_than_tensors_is_one_line(trained, tiny_models, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    base = Path(shutil.copytree(tiny_models["bert"], tmp_path / "pickled"))
    sd = dict(load_file(str(base / "model.safetensors")))
    sd["extra"] = print  # a global: torch's weights_only loader refuses the file
    torch.save(sd, base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    (tmp_path / "in.csv").write_text("text\ngood film\n")
    assert main(["predict", str(trained), "-i", str(tmp_path / "in.csv"), "--base-model", str(base)]) == 2
    assert "is a pickle that holds more than tensors" in _one_line(capsys)


# ---------------------------------------------------------------- YAML that asks for too much

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{x}: &{x} [{', '.join([f'*{p}'] * 9)}]\n" for p, x in zip("abcdefgh", "bcdefghi"))
YAML_CASES = {
    "billion laughs": (BILLION_LAUGHS.encode(), "aliases expand to 490,329,064 values"),
    "recursive alias": (b"data: &a {path: *a}\n", "points into its own anchor"),
    "5000 deep": (b"train: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested more than 50 levels deep"),
    "not UTF-8": (b"name: caf\xe9\n", "not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
@pytest.mark.parametrize("command", ["config", "train"])
def test_yaml_bombs_are_refused_at_once(case, command, tmp_path, capsys):
    text, needle = YAML_CASES[case]
    (tmp_path / "c.yaml").write_bytes(text)
    before = _snapshot(tmp_path)
    t0 = time.perf_counter()
    assert main([command, "-c", str(tmp_path / "c.yaml")]) == 2
    assert time.perf_counter() - t0 < 1.0
    assert needle in _one_line(capsys)
    assert _snapshot(tmp_path) == before


def test_an_override_cannot_smuggle_a_bomb(capsys):
    assert main(["config", "--set", "data.label_names=&a [*a]"]) == 2
    assert "points into its own anchor" in _one_line(capsys)


# ---------------------------------------------------------------- small weak spots, one line each


def test_a_run_name_longer_than_a_folder_name_can_be(capsys):
    assert main(["config", "--set", "name=" + "x" * 300]) == 2
    assert "a folder name is at most 255" in _one_line(capsys)


def test_cli_values_outside_their_domain_are_usage_errors(trained, tmp_path, capsys):
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    for args in (["serve", str(trained), "--port", "70000"],
                 ["export", str(trained), "-o", str(tmp_path / "x"), "--format", "onnx", "--opset", "999"],
                 ["predict", str(trained), "-i", str(tmp_path / "in.parquet"), "--format", "xml"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_export_outputs_that_are_links_or_under_files(trained, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for out, needle in ((tmp_path / "a-file" / "x", "is a file, not a folder"), (tmp_path / "link", "symbolic link")):
        before = _snapshot(tmp_path)
        assert main(["export", str(trained), "-o", str(out)]) == 2
        assert needle in _one_line(capsys)
        assert _snapshot(tmp_path) == before


def test_scores_beyond_float32_are_one_line_without_warnings(tiny_models, tmp_path, capsys):
    rows = [(f"text {i} good", 1e308 if i % 2 else -1e308) for i in range(40)]
    write_csv(tmp_path / "data" / "train.csv", rows, header=("text", "score"))
    assert main(["train", "-q", "--data", str(tmp_path / "data"), "--model", str(tiny_models["bert"]),
                 "--output-dir", str(tmp_path / "runs"), "--set", "task=regression",
                 "--set", "data.label_column=score"]) == 2
    assert "beyond the ±1e+30 a score may take" in _one_line(capsys)


def test_jsonl_and_json_rows_may_not_repeat_a_key_or_nest_deeply(tiny_models, tmp_path, capsys):
    rows = "".join(f'{{"text": "{t}", "label": "{lab}"}}\n' for t, lab in synthetic_rows(20, 1))
    cases = {"dup.jsonl": (rows + '{"text": "a", "text": "b", "label": "negative"}\n',
                           "line 21 gives the key 'text' twice"),
             "deep.jsonl": (rows + '{"text": ' + "[" * 50_000 + "]" * 50_000 + ', "label": "x"}\n',
                            "line 21 is nested too deeply"),
             "dup.json": ('[{"text": "a", "label": "x", "label": "y"}]', "gives the key 'label' twice"),
             "deep.json": ("[" * 100_000 + "]" * 100_000, "nested too deeply")}
    for name, (text, needle) in cases.items():
        d = tmp_path / name.replace(".", "-")
        d.mkdir()
        (d / f"train.{name.split('.')[1]}").write_text(text)
        assert main(["train", "-q", "--data", str(d), "--model", str(tiny_models["bert"]), "--output-dir",
                     str(tmp_path / "runs")]) == 2, name
        assert needle in _one_line(capsys), name
    assert not (tmp_path / "runs").exists()
