"""deploy/pool.py: many classifiers on one base in mixed batches, a models folder with lazy loading and
LRU eviction, per-request failure. Outputs are compared with each model loaded alone by loraclf.load."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import loraclf
from conftest import scored_rows, synthetic_rows, tagged_rows, tiny_overrides, write_csv
from loraclf.deploy.pool import ModelPool
from loraclf.deploy.serve import ServeOptions
from loraclf.schema import artifact_dir, read_meta

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

TEXTS = [t for t, _ in synthetic_rows(12, 9)] + ["good", "a very long text " * 30]
THREE = ("negative", "positive", "neutral")


def _data(root, rows, header):
    for split, n, seed in (("train", 90, 1), ("validation", 30, 2), ("test", 30, 3)):
        write_csv(root / f"{split}.csv", rows(n, seed), header)
    return root


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    """LoRA classifiers of three tasks and different label counts and ranks on one tiny encoder, two
    classifier heads on one tiny decoder, and a verbalizer on the decoder."""
    tmp = tmp_path_factory.mktemp("pool")
    data = {
        "bin": _data(tmp / "d-bin", lambda n, s: synthetic_rows(n, s), ("text", "label")),
        "three": _data(tmp / "d-three", lambda n, s: synthetic_rows(n, s, THREE), ("text", "label")),
        "multi": _data(tmp / "d-multi", tagged_rows, ("text", "labels")),
        "reg": _data(tmp / "d-reg", scored_rows, ("text", "score")),
    }
    extra = {
        "bin": {}, "three": {"lora.r": 4, "seed": 3},
        "multi": {"task": "multi-label", "data.label_column": "labels"},
        "reg": {"task": "regression", "data.label_column": "score", "lora.r": 2},
    }
    out = {}
    for name, d in data.items():
        out[name] = loraclf.train(None, tiny_overrides(tiny_models["bert"], d, tmp / "runs", name=name, **{
            "train.epochs": 1, "train.recipe": "standard", **extra[name]}), quiet=True).path
    for name, d in (("emb", data["bin"]), ("emb3", data["three"])):  # 30 rows a class: the few-shot recipe
        out[name] = loraclf.train(None, tiny_overrides(tiny_models["bert"], d, tmp / "runs", name=name, **{
            "train.epochs": 1}), quiet=True).path
    for name, d, more in (("dec2", data["bin"], {}), ("dec3", data["three"], {"lora.r": 4}),
                          ("verb", data["bin"], {"model.head": "verbalizer", "data.max_length": 160})):
        out[name] = loraclf.train(None, tiny_overrides(tiny_models["llama"], d, tmp / "runs", name=name, **{
            "train.epochs": 1, **more}), quiet=True).path
    return out


@pytest.fixture(scope="module")
def alone(runs):
    return {n: loraclf.load(p).predict_proba(TEXTS) for n, p in runs.items()}


def _requests():
    """Requests spread over every model, interleaved, of 1 to 3 texts."""
    names = ["bin", "multi", "emb", "three", "dec2", "reg", "verb", "emb3", "dec3", "bin", "reg", "emb"]
    return [(n, [TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % 3)]) for i, n in enumerate(names)]


def _want(alone, name, texts):
    return alone[name][[TEXTS.index(t) for t in texts]]


class Counter:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def test_a_mixed_batch_equals_each_model_alone_in_one_forward_per_base(runs, alone):
    pool = ModelPool.from_specs([f"{n}={p}" for n, p in runs.items()], ServeOptions())
    enc, dec, emb = pool.loaded["bin"].group, pool.loaded["dec2"].group, pool.loaded["emb"].group
    assert pool.loaded["emb"].clf.meta["head"] == "embedding"
    assert {n for n, s in pool.loaded.items() if s.group is enc} == {"bin", "three", "multi", "reg"}
    assert {n for n, s in pool.loaded.items() if s.group is dec} == {"dec2", "dec3"}
    assert {n for n, s in pool.loaded.items() if s.group is emb} == {"emb", "emb3"}
    assert all(s.mixable for s in pool.loaded.values() if s.group) and pool.loaded["verb"].group is None
    calls = {k: Counter(g.model.get_base_model()) for k, g in (("enc", enc), ("dec", dec), ("emb", emb))}
    requests = _requests()
    results = pool.infer(requests, batch_size=64)
    assert {k: c.calls for k, c in calls.items()} == {"enc": 1, "dec": 1, "emb": 1}  # each base: one pass
    for (name, texts), (task, out) in zip(requests, results):
        assert task is pool.loaded[name].clf.task
        np.testing.assert_allclose(out, _want(alone, name, texts), atol=1e-4, err_msg=name)
    # answers keep their own label sets: widths 2, 3, 2 tags, 1 score
    assert {n: pool.loaded[n].clf.task.num_outputs for n in ("bin", "three", "multi", "reg")} == {
        "bin": 2, "three": 3, "multi": 2, "reg": 1}


@pytest.mark.parametrize("first", ["reg", "three"])
def test_heads_of_any_width_join_a_base_whatever_loaded_it_first(runs, alone, first):
    """The base's own head has the first model's width (1 for a score, 3 for three classes): the others
    load at theirs."""
    names = [first] + [n for n in ("bin", "three", "multi", "reg") if n != first]
    pool = ModelPool.from_specs([f"{n}={runs[n]}" for n in names], ServeOptions())
    requests = [(n, TEXTS[:4]) for n in names]
    for (name, texts), (_, out) in zip(requests, pool.infer(requests, batch_size=64)):
        np.testing.assert_allclose(out, _want(alone, name, texts), atol=1e-4, err_msg=name)


def test_one_failing_request_fails_alone(runs, alone, monkeypatch):
    pool = ModelPool.from_specs([f"{n}={runs[n]}" for n in ("bin", "three", "reg")], ServeOptions())
    head = pool.loaded["three"].clf.head
    encode = head.encode

    def fussy(texts, *a, **k):  # a model that cannot take one text (the tokenizer raising, say)
        if "boom" in texts:
            raise ValueError("cannot encode")
        return encode(texts, *a, **k)

    monkeypatch.setattr(head, "encode", fussy)
    requests = [("bin", TEXTS[:2]), ("three", ["boom"]), ("three", TEXTS[2:4]), ("reg", TEXTS[4:5])]
    results = pool.infer(requests, batch_size=64)
    assert isinstance(results[1], ValueError)
    for (name, texts), res in zip(requests, results):
        if name == "three" and texts == ["boom"]:
            continue
        np.testing.assert_allclose(res[1], _want(alone, name, texts), atol=1e-4)


def _folder(runs, tmp_path, names):
    root = tmp_path / "models"
    root.mkdir()
    for n in names:
        shutil.copytree(runs[n] / "artifact", root / n)
    return root


def test_models_folder_loads_lazily_and_evicts_least_recently_used(runs, alone, tmp_path):
    root = _folder(runs, tmp_path, ["bin", "three", "multi", "reg"])
    (root / ".hidden").mkdir()
    (root / "not-a-model").mkdir()
    pool = ModelPool.from_specs([], ServeOptions(), models_dir=root, max_loaded=2)
    assert pool.names() == ["bin", "multi", "reg", "three"] and not pool.loaded
    assert not pool.knows("../bin") and not pool.knows(".hidden") and not pool.knows("not-a-model")
    listed = {m["name"]: m for m in pool.describe()}
    assert listed["three"]["labels"] == sorted(THREE) and listed["reg"]["task"] == "regression"
    assert not any(m["loaded"] for m in listed.values())
    group = None
    most = []
    load = pool.load
    pool.load = lambda *a, **k: (most.append(len(pool.loaded)), load(*a, **k))[1]  # in memory at each load
    for name in ["bin", "three", "multi", "bin", "reg", "three"]:
        (task, out), = pool.infer([(name, TEXTS[:3])], batch_size=64)
        np.testing.assert_allclose(out, _want(alone, name, TEXTS[:3]), atol=1e-4)
        assert len(pool.loaded) <= 2
        group = group or pool.loaded[name].group
        assert pool.loaded[name].group is group  # the base stays while adapters come and go
    assert list(pool.loaded) == ["reg", "three"]  # least recently used first
    assert pool.loads == 6 and pool.evictions == 4 and max(most) <= 1  # room made before each load
    assert len(group.tokenizers) == 1  # one tokenizer for every adapter with the same files
    peft_adapters = set(group.model.peft_config)
    assert peft_adapters == {s.adapter for s in pool.loaded.values()}  # evicted adapters left the model

    # a batch naming more models than max_loaded runs whole, then the pool shrinks back
    requests = [(n, TEXTS[:2]) for n in ("bin", "multi", "three", "reg")]
    for (name, texts), (_, out) in zip(requests, pool.infer(requests, batch_size=64)):
        np.testing.assert_allclose(out, _want(alone, name, texts), atol=1e-4)
    assert len(pool.loaded) == 2

    shutil.copytree(runs["dec2"] / "artifact", root / "late")  # dropped in while serving
    assert pool.knows("late") and "late" in pool.names()
    (_, out), = pool.infer([("late", TEXTS[:2])], batch_size=64)
    np.testing.assert_allclose(out, alone["dec2"][:2], atol=1e-4)


def test_an_adapter_whose_base_is_not_loaded_reloads_it_after_eviction(runs, alone, tmp_path):
    root = _folder(runs, tmp_path, ["bin", "dec2"])
    pool = ModelPool.from_specs([], ServeOptions(), models_dir=root, max_loaded=1)
    for name in ["bin", "dec2", "bin"]:
        (_, out), = pool.infer([(name, TEXTS[:2])], batch_size=64)
        np.testing.assert_allclose(out, _want(alone, name, TEXTS[:2]), atol=1e-4)
        assert list(pool.loaded) == [name] and len(pool.groups) == 1  # the other base was freed


@pytest.mark.parametrize("damage", ["adapter_model.safetensors", "tokenizer.json", "embedding_head"])
def test_a_broken_folder_fails_its_requests_only_and_leaves_nothing_behind(runs, alone, tmp_path, damage):
    from loraclf.deploy.pool import UnknownModel

    first, other = ("emb", "emb3") if damage == "embedding_head" else ("bin", "three")
    root = _folder(runs, tmp_path, [first])
    shutil.copytree(runs[other] / "artifact", root / "broken")
    (root / "broken" / (damage if "." in damage else "embedding_head.safetensors")).write_bytes(b"not weights")
    pool = ModelPool.from_specs([], ServeOptions(), models_dir=root)
    for _ in range(2):  # each request tries the load again; none leaves an adapter on the shared base
        ok, bad = pool.infer([(first, TEXTS[:2]), ("broken", TEXTS[:2])], batch_size=64)
        np.testing.assert_allclose(ok[1], alone[first][:2], atol=1e-4)
        assert isinstance(bad, Exception) and not isinstance(bad, UnknownModel) and "broken" not in pool.loaded
        assert set(pool.loaded[first].group.model.peft_config) == {"default"}
        assert set(pool.loaded[first].group.members) == {first}


def test_names_must_be_folder_entries_exactly(runs, tmp_path):
    from loraclf.deploy.pool import UnknownModel

    root = _folder(runs, tmp_path, ["bin"])
    pool = ModelPool.from_specs([], ServeOptions(), models_dir=root)
    for name in ("BIN", "bin\n", "bin/", "./bin", "..", ".", "bin/../bin"):
        assert not pool.knows(name), name
    (bad,) = pool.infer([("BIN", ["x"])], batch_size=8)
    assert isinstance(bad, UnknownModel)


def test_per_adapter_max_length_and_forward_passes_of_batch_size(runs, alone, tiny_models, tmp_path):
    short = loraclf.train(None, tiny_overrides(tiny_models["bert"], runs["bin"].parent.parent / "d-bin",
                                               tmp_path, name="short", **{
        "train.epochs": 1, "train.recipe": "standard", "data.max_length": 8}), quiet=True).path
    want = loraclf.load(short).predict_proba(TEXTS)
    pool = ModelPool.from_specs([f"bin={runs['bin']}", f"short={short}", f"three={runs['three']}"], ServeOptions())
    requests = [("short", TEXTS[:5]), ("bin", TEXTS[5:9]), ("three", TEXTS[:3]), ("short", TEXTS[9:])]
    calls = Counter(pool.loaded["bin"].group.model.get_base_model())
    results = pool.infer(requests, batch_size=9)  # 5 + 4 | 3 + 5 rows: two passes, requests kept whole
    assert calls.calls == 2
    got = {n: np.concatenate([o for (m, _), (_, o) in zip(requests, results) if m == n]) for n in ("short",)}
    np.testing.assert_allclose(got["short"], want[list(range(5)) + list(range(9, len(TEXTS)))], atol=1e-6)
    longer = loraclf.load(short)
    longer.max_length = 32
    assert np.abs(longer.predict_proba(TEXTS) - want).max() > 1e-5  # the cut at 8 tokens shows in the outputs
    np.testing.assert_allclose(results[1][1], alone["bin"][5:9], atol=1e-4)


def test_serve_many_adapters_over_http(runs, alone, tmp_path):
    httpx = pytest.importorskip("httpx")
    from loraclf.deploy.serve import create_app, serving

    root = _folder(runs, tmp_path, ["bin", "three", "multi", "reg"])
    opts = ServeOptions(max_batch_size=32, max_wait_ms=100)
    pool = ModelPool.from_specs([f"dec2={runs['dec2']}"], opts, models_dir=root, max_loaded=3)
    jobs = [(n, TEXTS[i % len(TEXTS)]) for i, n in enumerate(["bin", "three", "multi", "reg", "dec2"] * 4)]
    with serving(create_app(pool, opts)) as url, httpx.Client(base_url=url, timeout=60) as client:
        with ThreadPoolExecutor(20) as ex:
            replies = list(ex.map(lambda j: client.post("/v1/classify", json={"model": j[0], "input": [j[1]]}),
                                  jobs))
        assert [r.status_code for r in replies] == [200] * len(jobs), [r.text for r in replies if r.is_error]
        metrics = client.get("/metrics").text
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    for (name, text), r in zip(jobs, replies):
        res, want = r.json()["results"][0], _want(alone, name, [text])[0]
        if name == "reg":
            assert abs(res["score"] - float(want)) < 1e-4
        else:
            labels = read_meta(artifact_dir(runs[name]))["labels"]
            np.testing.assert_allclose([res["probabilities"][lab] for lab in labels], want, atol=1e-4)
    assert set(models) == {"dec2", "bin", "multi", "reg", "three"} and models["dec2"]["loaded"]
    assert "loraclf_batch_models_bucket" in metrics and "loraclf_model_evictions" in metrics
    assert len([s for s in pool.loaded.values() if not s.pinned]) <= 3


def test_models_dir_must_exist(tmp_path):
    with pytest.raises(loraclf.LoraclfError, match="no such folder"):
        ModelPool.from_specs([], ServeOptions(), models_dir=tmp_path / "nowhere")
    with pytest.raises(loraclf.LoraclfError, match="at least 1"):
        ModelPool.from_specs([], ServeOptions(), models_dir=tmp_path, max_loaded=0)


def test_cli_serve_needs_a_model_or_a_folder(tmp_path, capsys):
    from loraclf.cli import main

    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == ("error: loraclf serve: name at least one model ([NAME=]ARTIFACT) "
                                               "or a --models-dir")
    assert main(["serve", "--models-dir", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_an_evicted_adapter_of_the_same_shapes_is_refilled_not_rebuilt(runs, alone, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    root = _folder(runs, tmp_path, ["bin", "three"])
    shutil.copytree(root / "bin", root / "bin2")
    weights = root / "bin2" / "adapter_model.safetensors"
    gen = torch.Generator().manual_seed(0)
    save_file({k: t + 0.5 * t.std() * torch.randn(t.shape, generator=gen) for k, t in load_file(str(weights)).items()},
              str(weights))
    want2 = loraclf.load(root / "bin2").predict_proba(TEXTS)
    assert not np.allclose(want2, alone["bin"], atol=1e-4)
    pool = ModelPool.from_specs([f"three={runs['three']}"], ServeOptions(), models_dir=root, max_loaded=1)
    peft = pool.loaded["three"].group.model
    for name, want in [("bin", alone["bin"]), ("bin2", want2), ("bin", alone["bin"]), ("bin2", want2)]:
        (_, out), = pool.infer([(name, TEXTS)], batch_size=64)
        np.testing.assert_allclose(out, want, atol=1e-4, err_msg=name)
        assert len(peft.peft_config) == 2  # the pinned model's adapter and one slot
    assert pool.refills == 3 and pool.evictions == 3  # each load after the first took the evicted slot over
    (_, out), = pool.infer([("three", TEXTS[:3])], batch_size=64)  # the pinned model is untouched
    np.testing.assert_allclose(out, alone["three"][:3], atol=1e-4)
