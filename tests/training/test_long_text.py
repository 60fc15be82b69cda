"""data.long_text end to end on tiny models: documents whose deciding word sits past the first window,
so truncating is near chance while head-tail and chunks read it; pooling with every task; load, predict,
serve and ONNX reading long texts as training did; configs that cannot work refused in one line."""

import json
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import loraclf
from conftest import NEG, NEUTRAL, POS, REPO, tiny_overrides, write_csv
from loraclf.data.long import window_cuts

MAX_LENGTH = 16  # 14 text tokens beside [CLS] and [SEP]
ROOM = MAX_LENGTH - 2


def long_rows(n: int, seed: int, task: str = "single-label") -> list[tuple]:
    """20-40 filler words; what decides the label sits among the last five words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(20, 40))]

        def at(words=words) -> int:
            return rng.randint(len(words) - 4, len(words))
        if task == "single-label":
            label = ("negative", "positive")[i % 2]
            words.insert(at(), rng.choice(POS if label == "positive" else NEG))
        elif task == "multi-label":
            tags = [t for t in ("positive", "negative") if rng.random() < 0.5]
            for t in tags:
                words.insert(at(), rng.choice(POS if t == "positive" else NEG))
            label = ";".join(tags)
        else:
            pos = rng.randint(0, 2)
            for _ in range(pos):
                words.insert(at(), rng.choice(POS))
            label = float(pos)
        rows.append((" ".join(words), label))
    return rows


HEADERS = {"single-label": ("text", "label"), "multi-label": ("text", "labels"), "regression": ("text", "score")}
TASK_SETS = {"single-label": {}, "multi-label": {"task": "multi-label", "data.label_column": "labels"},
             "regression": {"task": "regression", "data.label_column": "score"}}


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_docs")
    out = {}
    for task in HEADERS:
        for split, n, seed in (("train", 240, 1), ("validation", 60, 2), ("test", 80, 3)):
            write_csv(root / task / f"{split}.csv", long_rows(n, seed, task), HEADERS[task])
        out[task] = root / task
    return out


@pytest.fixture(scope="module")
def runs(tiny_models, long_data, tmp_path_factory):
    """Single-label runs of each strategy (trained on first use), and chunked runs of the other tasks."""
    out, cache = tmp_path_factory.mktemp("long_runs"), {}

    def get(strategy: str, task: str = "single-label", **more):
        key = (strategy, task, tuple(sorted(more.items())))
        if key not in cache:
            # full fine-tuning: LoRA on a random tiny base learns too slowly to tell the strategies apart
            sets = {"data.long_text": strategy, "data.max_length": MAX_LENGTH, "train.epochs": 10,
                    "train.recipe": "standard", "model.method": "full", "train.lr": 3e-3, **TASK_SETS[task], **more}
            name = f"{task}-{strategy}-{len(cache)}"
            cache[key] = loraclf.train(None, tiny_overrides(tiny_models["bert"], long_data[task], out, name=name,
                                                            **sets), quiet=True).path
        return cache[key]

    return get


def _windows(words: list[str]) -> list[str]:
    """The texts of the full windows loraclf cuts from these words (the tiny tokenizer: one token a word)."""
    return [" ".join(words[s:s + ROOM]) for s in window_cuts(len(words), ROOM, 0, 32)[0]]


def _accuracy(run) -> float:
    return json.loads((run / "metrics.json").read_text())["test"]["accuracy"]


def test_reading_past_the_first_window_finds_what_truncation_cuts(runs):
    """The deciding word is at the end: truncating at the window is near chance, head-tail and chunks read it."""
    truncated, head_tail, chunks = (_accuracy(runs(s)) for s in ("truncate", "head-tail", "chunks"))
    assert truncated < 0.7, truncated
    assert head_tail >= 0.85 and chunks >= 0.8, (head_tail, chunks)
    m = json.loads((runs("chunks") / "metrics.json").read_text())["test"]["long_text"]
    assert m["strategy"] == "chunks" and m["documents"] == 80 and m["several_windows"] == 80
    assert m["deciding_window"]["last"] > m["deciding_window"]["first"]  # where the word was


def test_the_artifact_carries_the_strategy_and_loading_uses_it(runs):
    run = runs("chunks")
    meta = json.loads((run / "artifact" / "loraclf.json").read_text())
    assert meta["long_text"]["strategy"] == "chunks" and meta["long_text"]["window_tokens"] == ROOM
    clf = loraclf.load(run)
    doc = long_rows(1, 9)[0][0]
    words = doc.split()  # one token a word with this tokenizer: windows of words are windows of tokens
    parts = _windows(words)
    assert len(parts) > 1
    np.testing.assert_allclose(clf.logits([doc])[0], clf.logits(parts).mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("task", ["multi-label", "regression"])
def test_chunk_pooling_with_every_task(runs, task):
    run = runs("chunks", task, **{"train.epochs": 2})
    m = json.loads((run / "metrics.json").read_text())
    assert m["test"]["long_text"]["windows"] > m["test"]["long_text"]["documents"]
    clf = loraclf.load(run)
    doc = long_rows(1, 11, task)[0][0]
    words = doc.split()
    parts = _windows(words)
    pooled = clf.logits(parts).mean(axis=0, keepdims=True)
    np.testing.assert_allclose(clf.predict_proba([doc]), clf.task.probabilities(pooled), atol=1e-5)


def test_max_pooling_and_head_tail_predict_as_they_were_trained(runs):
    run = runs("chunks", **{"data.chunk_pool": "max", "train.epochs": 1})
    clf = loraclf.load(run)
    doc = long_rows(1, 12)[0][0]
    words = doc.split()
    parts = _windows(words)
    np.testing.assert_allclose(clf.logits([doc])[0], clf.logits(parts).max(axis=0), atol=1e-5)
    ht = loraclf.load(runs("head-tail"))
    kept = words[:ROOM // 4] + words[len(words) - (ROOM - ROOM // 4):]
    np.testing.assert_allclose(ht.logits([doc]), ht.logits([" ".join(kept)]), atol=1e-5)


def test_predict_cli_reads_long_texts_like_load(runs, tmp_path):
    run = runs("chunks")
    docs = [t for t, _ in long_rows(6, 13)]
    src = write_csv(tmp_path / "in.csv", [(t,) for t in docs], ("text",))
    out = tmp_path / "out.csv"
    r = subprocess.run([sys.executable, "-m", "loraclf", "predict", str(run), "-i", str(src), "-o", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    import pandas as pd

    assert pd.read_csv(out)["label"].tolist() == loraclf.load(run).predict(docs)


def test_onnx_export_keeps_the_pooling(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    from loraclf.deploy.export import export

    run = runs("chunks")
    dest = export(run, tmp_path / "onnx", "onnx")
    docs = [t for t, _ in long_rows(4, 14)]
    np.testing.assert_allclose(loraclf.load(dest).predict_proba(docs), loraclf.load(run).predict_proba(docs),
                               atol=1e-4)


def test_serve_pools_long_texts_even_in_a_mixed_batch(runs):
    """Two windowed adapters on one base: requests to both share forward passes and each gets its pooling."""
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from loraclf.deploy.pool import ModelPool
    from loraclf.deploy.serve import ServeOptions, create_app, serving

    specs = {"chunks": runs("chunks"), "head-tail": runs("head-tail")}
    opts = ServeOptions(max_batch_size=32, max_wait_ms=200)
    pool = ModelPool.from_specs([f"{n}={p}" for n, p in specs.items()], opts)
    docs = [t for t, _ in long_rows(4, 15)]
    with serving(create_app(pool, opts)) as url, httpx.Client(base_url=url, timeout=30.0) as client:
        with ThreadPoolExecutor(2) as ex:
            replies = list(ex.map(lambda n: client.post("/v1/classify", json={"model": n, "input": docs}), specs))
    for name, r in zip(specs, replies):
        assert r.status_code == 200, r.text
        clf = loraclf.load(specs[name])
        got = np.array([[x["probabilities"][lab] for lab in clf.labels] for x in r.json()["results"]])
        np.testing.assert_allclose(got, clf.predict_proba(docs), atol=1e-4)


def _train_cli(tiny_models, data, tmp_path, **sets) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "loraclf", "train"]
    for s in tiny_overrides(tiny_models["bert"], data, tmp_path / "runs", **sets):
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.parametrize("sets,needle", [
    ({"data.long_text": "chunks", "data.max_length": 512}, "data.max_length=512 exceeds"),
    ({"data.long_text": "chunks", "data.chunk_overlap": 40}, "data.chunk_overlap=40"),
    ({"data.long_text": "head-tail", "data.text_column": '["text", "text"]'}, "text pairs"),
])
def test_configs_that_cannot_work_are_refused_in_one_line(tiny_models, long_data, tmp_path, sets, needle):
    r = _train_cli(tiny_models, long_data["single-label"], tmp_path, **sets)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "runs" / "run").exists()  # nothing half-written


def test_a_prompt_head_refuses_windows():
    from loraclf.config import load_config
    from loraclf.errors import ConfigError
    from loraclf.models.heads import HEADS
    from loraclf.tasks import make_task

    cfg = load_config(None, ["model.head=verbalizer", "model.name=smollm2", "data.long_text=chunks"])
    with pytest.raises(ConfigError, match="data.long_text=chunks"):
        HEADS["verbalizer"].check_config(cfg, make_task("single-label", ["a", "b"]))


def test_the_report_says_how_long_texts_were_read(runs):
    from loraclf.evaluation.report import make_report

    run = runs("chunks")
    page = make_report(run).read_text()
    assert 'id="long-text"' in page and "deciding window first" in page
    longer = json.loads((run / "metrics.json").read_text())["data"]["token_lengths"]["test"]["truncated"]
    assert longer > 40 and f"{longer:,} of 80" in page
    assert 'id="long-text"' not in make_report(runs("truncate")).read_text()


def test_the_few_shot_embedding_head_reads_windows_too(runs):
    """The few-shot recipe's head (an embedding with prototypes and a contrastive loss) trains on windows,
    and pools them at prediction like the classifier head."""
    run = runs("chunks", **{"model.head": "embedding", "model.method": "lora", "train.epochs": 1,
                            "train.contrastive": 0.5})
    clf = loraclf.load(run)
    doc = long_rows(1, 16)[0][0]
    words = doc.split()
    parts = _windows(words)
    np.testing.assert_allclose(clf.logits([doc])[0], clf.logits(parts).mean(axis=0), atol=1e-5)


def test_cross_validation_reads_windows_in_every_fold(tiny_models, long_data, tmp_path):
    """train.cv_folds (and so `loraclf audit`) trains and scores each fold on windows: every pooled row gets one
    out-of-fold prediction per document, not per window."""
    import pandas as pd

    sets = {"data.long_text": "chunks", "data.max_length": MAX_LENGTH, "train.epochs": 1, "train.cv_folds": 2,
            "train.recipe": "standard", "model.method": "full", "train.lr": 3e-3}
    run = loraclf.train(None, tiny_overrides(tiny_models["bert"], long_data["single-label"], tmp_path, **sets),
                        quiet=True)
    oof = pd.read_csv(run.path / "predictions" / "oof.csv", keep_default_na=False)
    assert len(oof) == 300 and not oof.duplicated(["source", "row"]).any()
    for i in (1, 2):
        fold = json.loads((run.path / "folds" / f"fold-{i}" / "metrics.json").read_text())["test"]
        assert fold["long_text"]["documents"] == fold["n"] and fold["long_text"]["windows"] >= 2 * fold["n"]
