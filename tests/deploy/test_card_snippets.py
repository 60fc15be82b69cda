"""Every Python snippet of a generated model card runs as written (offline, the folder's path put in for
its placeholder) and gives loraclf's outputs: the adapter card's plain PEFT snippet (the base from where
the run found it, the fitted temperature, thresholds or target scale applied), the hf export card's
pipeline() snippet and the ONNX export card's onnxruntime snippet, for a single-label run with a
temperature, a multi-label run with tuned thresholds and a regression run with a standardised target."""

import contextlib
import io
import json
import random
import re
import shutil

import numpy as np
import pytest

import loraclf
from conftest import NEG, NEUTRAL, POS, synthetic_rows, tiny_overrides, write_csv
from loraclf.deploy.export import export
from loraclf.evaluation.card import PLACEHOLDER

pytest.importorskip("onnxruntime")

TEXTS = [t for t, _ in synthetic_rows(10, 5)] + ["superb", "the film was " * 20 + "awful"]
FOLDERS = ("artifact", "hf", "onnx")


def _tagged(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tags = [t for t, words in (("positive", POS), ("negative", NEG)) if rng.random() < 0.5]
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(1, 6))]
        for t in tags:
            words.insert(rng.randint(0, len(words)), rng.choice(POS if t == "positive" else NEG))
        rows.append((" ".join(words), ";".join(tags)))
    return rows


def _scored(n: int, seed: int) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pos, neg = rng.randint(0, 2), rng.randint(0, 2)
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 8))] + rng.sample(POS, pos) + rng.sample(NEG, neg)
        rng.shuffle(words)
        rows.append((" ".join(words), 3.0 + pos - neg))
    return rows


TASKS = {  # task: (rows of a split, header, overrides)
    "single-label": (None, None, {}),
    "multi-label": (_tagged, ("text", "labels"), {"task": "multi-label", "data.label_column": "labels"}),
    "regression": (_scored, ("text", "score"), {"task": "regression", "data.label_column": "score"}),
}


@pytest.fixture(scope="module")
def folders(tiny_models, synth_dir, tmp_path_factory):
    """Per task: the run directory, and its artifact, hf export and ONNX export folders (trained on first use)."""
    root, cache = tmp_path_factory.mktemp("card_snippets"), {}

    def get(task: str, arch: str = "bert", **more) -> dict:
        key = (task, arch, tuple(sorted(more.items())))
        if key not in cache:
            rows, header, extra = TASKS[task]
            extra = {**extra, **more}
            data = synth_dir
            if rows is not None:
                data = root / f"{task}-data"
                for split, n, seed in (("train", 240, 1), ("validation", 60, 2), ("test", 60, 3)):
                    write_csv(data / f"{split}.csv", rows(n, seed), header)
            name = f"{task}-{arch}-{len(cache)}"
            run = loraclf.train(None, tiny_overrides(tiny_models[arch], data, root, name=name, **{
                "train.epochs": 3, "report.enabled": True, **extra}), quiet=True).path
            cache[key] = {"run": run, "artifact": run / "artifact", "hf": export(run, root / f"{name}-hf", "hf"),
                          "onnx": export(run, root / f"{name}-onnx", "onnx")}
        return cache[key]

    return get


def snippets(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def run_snippet(code: str, folder, texts=TEXTS) -> dict:
    """Exec a card's snippet on `folder` and `texts` (its stdout swallowed); its variables."""
    assert PLACEHOLDER in code
    code = code.replace(PLACEHOLDER, str(folder))
    if "texts = " in code:
        code = code.replace('texts = ["your text here"]', f"texts = {list(texts)!r}")
        assert repr(list(texts)) in code, code
    ns: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"<card snippet in {folder}>", "exec"), ns)
    return ns


def outputs_of(ns: dict, labels: list[str]) -> np.ndarray:
    """What the snippet computed as clf.predict_proba: an array, or one {label: probability} per text."""
    got = ns["scores"] if "scores" in ns else ns["probs"]
    if isinstance(got, list) and got and isinstance(got[0], dict):
        got = [[row[name] for name in labels] for row in got]
    return np.asarray(got, dtype=np.float64)


def check(ns: dict, clf, want: np.ndarray, texts=TEXTS) -> None:
    np.testing.assert_allclose(outputs_of(ns, clf.labels), want, atol=1e-4)
    expected = clf.task.values(want)
    if isinstance(expected[0], float):
        np.testing.assert_allclose(ns["predicted"], expected, atol=1e-4)
    else:
        assert ns["predicted"] == expected


WINDOWS = {"data.max_length": 16, "data.long_text": "chunks", "data.chunk_overlap": 3, "data.chunk_pool": "max",
           "data.max_chunks": 3}


@pytest.mark.parametrize("task,arch,extra", [(task, "bert", {}) for task in TASKS]
                         + [("single-label", "llama", {"train.calibrate": "bias"}),
                            ("single-label", "bert", WINDOWS),
                            ("regression", "bert", {**WINDOWS, "data.chunk_windows": "even", "data.max_chunks": 8}),
                            ("single-label", "llama", {"data.max_length": 16, "data.long_text": "head-tail"})])
def test_every_card_snippet_gives_loraclfs_outputs(task, arch, extra, folders):
    """BERT for each task, and a decoder's classifier head (left padding, no pad token of its own) with class
    biases, which its bias-less score layer cannot hold: the export snippets add them. Models that read long
    texts in windows (data.long_text): every snippet cuts and pools them as loraclf does (TEXTS' last is
    several windows long; the regression model cuts even windows)."""
    f = folders(task, arch, **extra)
    clf = loraclf.load(f["run"])
    want = clf.predict_proba(TEXTS)
    if "train.calibrate" in extra:
        assert json.loads((f["hf"] / "loraclf.json").read_text())["task_state"]["bias"]  # kept, not folded
    for kind in FOLDERS:
        card = (f[kind] / "README.md").read_text()
        codes = snippets(card)
        assert len(codes) == 2, (kind, card)  # loraclf's, and the one without loraclf
        assert "clf = loraclf.load(" in codes[0]
        run_snippet(codes[0], f[kind])
        ns = run_snippet(codes[1], f[kind])
        check(ns, clf, want)


def test_the_checks_see_a_missing_temperature(folders):
    """The adapter snippet applies the fitted temperature; without it the check fails (as it did before)."""
    f = folders("single-label")
    clf = loraclf.load(f["run"])
    temperature = json.loads((f["artifact"] / "loraclf.json").read_text())["task_state"]["temperature"]
    assert abs(temperature - 1) > 0.1
    code = snippets((f["artifact"] / "README.md").read_text())[1]
    line = next(x for x in code.splitlines() if x.startswith("logits = logits / "))
    ns = run_snippet(code.replace(line, ""), f["artifact"])
    with pytest.raises(AssertionError):
        check(ns, clf, clf.predict_proba(TEXTS))


def test_snippets_read_the_metadata_they_apply(folders):
    """Multi-label: tuned thresholds, not 0.5; regression: the target scale in the adapter card, folded in
    the exports (whose loraclf.json is neutral)."""
    ml = json.loads((folders("multi-label")["artifact"] / "loraclf.json").read_text())["task_state"]
    assert any(abs(t - 0.5) > 1e-6 for t in ml["thresholds"].values())
    card = (folders("multi-label")["hf"] / "README.md").read_text()
    assert json.dumps(ml["thresholds"]).replace('"', "'") in card.replace('"', "'")
    f = folders("regression")
    state = json.loads((f["artifact"] / "loraclf.json").read_text())["task_state"]
    assert state["target_std"] != 1.0
    assert f"* {state['target_std']!r} + {state['target_mean']!r}" in (f["artifact"] / "README.md").read_text()
    assert "target_std" not in snippets((f["hf"] / "README.md").read_text())[1]


def test_export_of_a_bare_artifact_has_a_shorter_card_that_runs(folders, tmp_path):
    """An artifact copied out of its run: the export's card says what loraclf.json knows, and its snippet runs."""
    f = folders("single-label")
    bare = shutil.copytree(f["artifact"], tmp_path / "bare")
    (bare / "README.md").unlink()
    dest = export(bare, tmp_path / "hf", "hf")
    card = (dest / "README.md").read_text()
    assert "## Training data" not in card and "## Training procedure" not in card and "model-index" not in card
    assert "From `loraclf.json`" in card and "- test: accuracy " in card and "library_name: transformers" in card
    clf = loraclf.load(f["run"])
    check(run_snippet(snippets(card)[1], dest), clf, clf.predict_proba(TEXTS))


def test_embedding_head_cards(tiny_models, synth_dir, tmp_path):
    """An embedding head's artifact has no transformers class to load it with: its card offers no plain
    snippet (not a PEFT one that would load a random classifier); its ONNX export's snippet runs."""
    run = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, name="emb", **{
        "model.head": "embedding", "train.epochs": 2, "report.enabled": True}), quiet=True).path
    card = (run / "artifact" / "README.md").read_text()
    assert len(snippets(card)) == 1 and "PeftModel" not in card
    assert "`loraclf export --format onnx` for a folder" in card
    dest = export(run, tmp_path / "onnx", "onnx")
    clf = loraclf.load(run)
    check(run_snippet(snippets((dest / "README.md").read_text())[1], dest), clf, clf.predict_proba(TEXTS))
