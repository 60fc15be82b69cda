"""Property-based fuzzing (Hypothesis) of every parser a user or a client feeds: config YAML and
overrides, data files, artifact metadata, checkpoint state and HTTP request bodies.

The property, for any input: a user error is one line (exit 2, a LoraclfError, or a 4xx ApiError),
never a traceback, never a hang, and nothing is written. The CI profile tries a few dozen cases per
parser; `make fuzz` runs the long profile (HYPOTHESIS_PROFILE=long), whose figures are in
docs/reliability.md.
"""

import json
import os
import string
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraclf.errors import LoraclfError

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
SLOW = 5.0  # seconds any one input may take; a parser that needs longer is a hang

# ---------------------------------------------------------------- shapes inputs take

FIELDS = ["data.path", "data.max_length", "data.label_names", "data.text_column", "model.method", "model.head",
          "lora.r", "lora.alpha", "lora.target_modules", "lora.auto_ranks", "train.lr", "train.epochs",
          "train.batch_size", "train.max_grad_norm", "train.metric", "train.class_weights", "task", "seed", "name",
          "report.trackers", "train.compile", "train.thresholds"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def _tree(draw_fields: dict) -> dict:
    tree: dict = {}
    for dotted, v in draw_fields.items():
        node = tree
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else node
        node[parts[-1]] = v
    return tree


yaml_docs = st.one_of(
    st.binary(max_size=300),  # anything at all
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=6).map(
        lambda d: __import__("yaml").safe_dump(_tree(d), allow_unicode=True).encode()),
    st.text(alphabet=string.printable + "&*[]{}:-!|>'\"é", max_size=200).map(str.encode),  # YAML syntax soup
)


def _quick(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    assert time.perf_counter() - t0 < SLOW, f"{fn.__name__} took {time.perf_counter() - t0:.1f} s"
    return out


def _cli_outcome(args: list[str], capsys) -> int:
    from loraclf.cli import main

    try:
        code = _quick(main, args)
    except SystemExit as e:  # argparse's own usage errors: exit 2 with its usage line and its error
        capsys.readouterr()
        assert e.code == 2
        return 2
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return code


# ---------------------------------------------------------------- config


@given(doc=yaml_docs)
def test_fuzz_config_files(doc, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "c.yaml"
        f.write_bytes(doc)
        _cli_outcome(["config", "-c", str(f)], capsys)
        assert os.listdir(tmp) == ["c.yaml"]


@given(items=st.lists(st.tuples(st.one_of(st.sampled_from(FIELDS), st.text(max_size=12)),
                                st.text(alphabet=string.printable + "&*é", max_size=40)), max_size=4))
def test_fuzz_config_overrides(items, capsys):
    args = ["config"]
    for key, raw in items:
        args.append(f"--set={key}={raw}")
    _cli_outcome(args, capsys)


# ---------------------------------------------------------------- data files

cells = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=True), st.none(), st.booleans())
rows = st.lists(st.fixed_dictionaries({"text": cells, "label": cells}, optional={"extra": cells}), max_size=12)


def _write(kind: str, path: Path, content) -> None:
    import gzip

    import pandas as pd

    if isinstance(content, bytes):
        path.write_bytes(content)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in content))
    elif kind == "json":
        path.write_text(json.dumps(content))
    elif kind == "parquet":
        pd.DataFrame(content or [{"text": "a", "label": "b"}]).astype(str).to_parquet(path)
    else:
        pd.DataFrame(content).to_csv(path, sep="\t" if kind == "tsv" else ",", index=False)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(path.read_bytes()))


@given(kind=st.sampled_from(["csv", "tsv", "jsonl", "json", "parquet", "csv.gz"]),
       content=st.one_of(rows, st.binary(max_size=200)))
def test_fuzz_data_files(kind, content):
    from loraclf.config import DataConfig
    from loraclf.data import load_data
    from loraclf.deploy.predict import input_chunks

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / f"train.{kind}"
        _write(kind.split(".")[0], f, content)
        for read in (lambda: load_data(DataConfig(path=tmp, validation_fraction=0.3)),
                     lambda: list(input_chunks(str(f), "auto", ["text"], None))):
            try:
                _quick(read)
            except LoraclfError as e:
                assert "\n" not in str(e)


# ---------------------------------------------------------------- artifact metadata


@pytest.fixture(scope="module")
def artifact(tiny_models, synth_dir, tmp_path_factory):
    import loraclf
    from conftest import tiny_overrides

    out = tmp_path_factory.mktemp("fuzz_artifact")
    return loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, out, **{"train.epochs": 0.2}),
                         quiet=True).artifact_path


META_KEYS = ["labels", "task", "head", "method", "base_model", "task_state", "max_length", "format", "base_shape",
             "modules_to_save", "quantize", "prompt", "base_fingerprint", "export"]


@settings(max_examples=int(os.environ.get("HYPOTHESIS_META_EXAMPLES", 12)))
@given(changes=st.dictionaries(st.sampled_from(META_KEYS), values, max_size=3))
def test_fuzz_artifact_metadata(changes, artifact):
    import shutil

    import loraclf

    with tempfile.TemporaryDirectory() as tmp:
        art = Path(shutil.copytree(artifact, Path(tmp) / "art"))
        meta = {**json.loads((art / "loraclf.json").read_text()), **changes}
        (art / "loraclf.json").write_text(json.dumps(meta))
        try:
            _quick(lambda: loraclf.load(art).predict(["a good film"]))
        except LoraclfError as e:
            assert "\n" not in str(e)


# ---------------------------------------------------------------- checkpoint state


@given(pointer=st.binary(max_size=40), state=values)
def test_fuzz_checkpoint_pointer_and_state(pointer, state):
    import hashlib
    import types

    from loraclf.training.checkpoint import MANIFEST, REQUIRED, Checkpoints
    from loraclf.training.loop import TrainerState

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "checkpoints"
        step = root / "step-0000004-000000000001"
        step.mkdir(parents=True)
        files = {}
        for name in REQUIRED:
            data = json.dumps(state).encode() if name == "trainer_state.json" else b"{}"
            (step / name).write_bytes(data)
            files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (step / MANIFEST).write_text(json.dumps({"step": 4, "files": files}))
        (root / "latest").write_bytes(pointer)
        try:
            folder = Checkpoints(root, types.SimpleNamespace(is_main_process=True)).find()
            assert folder == step
            TrainerState.from_json(json.loads((folder / "trainer_state.json").read_text()))
        except LoraclfError as e:
            assert "\n" not in str(e)


# ---------------------------------------------------------------- HTTP bodies

bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda m, i, extra: json.dumps({"model": m, "input": i, **extra}).encode(),
              st.one_of(st.sampled_from(["a", "b"]), values), values,
              st.dictionaries(st.text(max_size=6), values, max_size=2)),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),  # nesting deep enough to exhaust a parser
)


@given(body=bodies)
def test_fuzz_http_bodies(body):
    from loraclf.deploy.pool import ModelPool, Served
    from loraclf.deploy.serve import ApiError, ServeOptions, parse_request

    models = ModelPool(ServeOptions())
    models.add(Served("a", None))
    models.add(Served("b", None))
    try:
        name, texts = _quick(parse_request, body, models, ServeOptions())
        assert name in models.loaded and all(isinstance(t, str) for t in texts)
    except ApiError as e:
        assert 400 <= e.status < 500 and "\n" not in e.message
