"""loraclf serve, the request side: texts checked before they join a batch, every error in one JSON shape
(the framework's own included) and counted, text-embeddings-inference's /predict and vLLM's /classify
shapes, and bearer-token auth.

A real uvicorn server on a free loopback port, talked to over HTTP with httpx; every request loop is
bounded in count (and each request by the client's timeout). Multi-label and regression answers come
from stand-in classifiers with the real tasks (their records are what the server shapes)."""

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import loraclf
from conftest import synthetic_rows, tiny_overrides

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from loraclf.deploy.pool import ModelPool, Served  # noqa: E402
from loraclf.deploy.serve import ServeOptions, create_app, read_api_keys, serving  # noqa: E402
from loraclf.tasks import make_task  # noqa: E402

TEXTS = [t for t, _ in synthetic_rows(10, 5)]
TIMEOUT = 30.0  # seconds, per request
KEYS = ("k-first-0123456789", "k-second-abcdefghij")


class Fixed:
    """A stand-in classifier of a real task: the same outputs for every text."""

    def __init__(self, task, row):
        self.task, self.labels, self.row = task, task.labels, np.asarray(row, dtype=np.float64)

    def predict_proba(self, texts, batch_size):
        for t in texts:
            t.encode("utf-8")  # as a tokenizer would: a lone surrogate fails the whole batch
        return np.stack([self.row] * len(texts)) if self.row.ndim else np.full(len(texts), float(self.row))


MULTI = Fixed(make_task("multi-label", ["sports", "politics", "tech"]), [0.2, 0.9, 0.6])
REG = Fixed(make_task("regression", ["similarity"]), 3.25)


@pytest.fixture(scope="module")
def run(tiny_models, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_api_runs")
    return loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, out, name="a",
                                              **{"train.epochs": 1}), quiet=True).path


def _app(pool, opts):
    """The server's app, plus two routes of the test's own: one that raises, one FastAPI validates."""
    app = create_app(pool, opts)

    @app.get("/test-raise")
    async def boom():
        raise RuntimeError("a bug")

    @app.get("/test-typed")
    async def typed(n: int):
        return {"n": n}

    return app


@pytest.fixture(scope="module")
def server(run):
    opts = ServeOptions(max_batch_size=64, max_wait_ms=50, max_texts=10, max_chars=200)
    pool = ModelPool.from_specs([f"a={run}"], opts)
    pool.add(Served("multi", MULTI, info=MULTI.task.describe()))
    pool.add(Served("reg", REG, info=REG.task.describe()))
    with serving(_app(pool, opts)) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        yield client


def _metric(client, name: str, headers=None, **labels) -> float:
    """A sample's value from /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(client.get("/metrics", headers=headers).text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def _is_error(r, status: int, needle: str = "") -> None:
    assert r.status_code == status, r.text
    assert r.json() == {"error": {"status": status, "message": r.json()["error"]["message"]}}
    assert needle in r.json()["error"]["message"], r.json()["error"]["message"]


# ---------------------------------------------------------------- texts checked before batching


def test_a_bad_text_fails_its_own_request_not_its_batch(server, run):
    client = server
    want = loraclf.load(run).predict(TEXTS)
    texts_before = _metric(client, "loraclf_texts_total", model="a")
    batched_before = _metric(client, "loraclf_batch_size_sum")

    def send(i):
        if i == 7:
            return client.post("/v1/classify", content=b'{"model": "a", "input": ["fine", "bad \\ud800 text"]}',
                               headers={"content-type": "application/json"})
        return client.post("/v1/classify", json={"model": "a", "input": [TEXTS[i % len(TEXTS)]]})

    with ThreadPoolExecutor(16) as ex:
        replies = list(ex.map(send, range(16)))
    _is_error(replies[7], 422, "text 1 (counting from 0) is not valid Unicode: an unpaired UTF-16 surrogate "
                               "(U+D800) at character 4")
    good = [r for i, r in enumerate(replies) if i != 7]
    assert [r.status_code for r in good] == [200] * 15
    assert [r.json()["results"][0]["label"] for r in good] == [want[i % len(TEXTS)] for i in range(16) if i != 7]
    assert _metric(client, "loraclf_texts_total", model="a") == texts_before + 15
    assert _metric(client, "loraclf_batch_size_sum") == batched_before + 15  # the bad request never joined a batch


@pytest.mark.parametrize("path,body", [
    ("/v1/classify", b'{"model": "a", "input": "\\udfff"}'),
    ("/predict", b'{"model": "a", "inputs": [["ok"], ["x\\udc80y"]]}'),
    ("/classify", b'{"model": "a", "input": ["\\ud83d"]}'),
])
def test_lone_surrogates_are_refused_in_every_shape(server, path, body):
    _is_error(server.post(path, content=body), 422, "unpaired UTF-16 surrogate")


def test_valid_unicode_nul_and_empty_texts_are_classified(server):
    body = b'{"model": "a", "input": ["\\ud83d\\ude00 good", "a\\u0000b", "", "\\u2028\\u0085 fine"]}'
    r = server.post("/v1/classify", content=body)  # a surrogate *pair* is one valid character
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 4


@pytest.mark.parametrize("path", ["/v1/classify", "/predict", "/classify", "/nowhere"])
def test_deeply_nested_json_is_a_counted_4xx(server, path):
    status = 404 if path == "/nowhere" else 400
    label = "other" if path == "/nowhere" else path
    before = _metric(server, "loraclf_request_errors_total", path=label, status=str(status))
    deep = b"[" * 100_000 + b"]" * 100_000
    _is_error(server.post(path, content=deep, headers={"content-type": "application/json"}), status)
    wrapped = b'{"model": "a", "input": ' + deep + b"}"
    _is_error(server.post(path, content=wrapped), status)
    assert _metric(server, "loraclf_request_errors_total", path=label, status=str(status)) == before + 2
    assert server.get("/health").status_code == 200


# ---------------------------------------------------------------- the framework's errors in the same shape


@pytest.mark.parametrize("method,path,status,needle,label", [
    ("GET", "/v1/classify", 405, "method GET is not allowed on /v1/classify; use POST", "/v1/classify"),
    ("DELETE", "/health", 405, "method DELETE is not allowed on /health; use GET", "/health"),
    ("POST", "/v2/classify", 404, "no such path: /v2/classify (endpoints: ", "other"),
    ("GET", "/test-typed?n=many", 422, "invalid request: query/n: ", "other"),
    ("GET", "/test-raise", 500, "internal error (RuntimeError); see the server log", "other"),
])
def test_framework_errors_use_the_server_shape_and_are_counted(server, method, path, status, needle, label, caplog):
    before = _metric(server, "loraclf_request_errors_total", path=label, status=str(status))
    with caplog.at_level(logging.ERROR, logger="loraclf"):
        r = server.request(method, path)
    _is_error(r, status, needle)
    assert _metric(server, "loraclf_request_errors_total", path=label, status=str(status)) == before + 1
    if status == 405:
        assert r.headers["allow"]
    if status == 500:
        assert "GET /test-raise failed: RuntimeError: a bug" in caplog.text
    assert server.get("/test-typed?n=3").json() == {"n": 3}


# ---------------------------------------------------------------- text-embeddings-inference: POST /predict


def test_tei_predict_single_and_batch(server, run):
    clf = loraclf.load(run)
    want = clf.predict_proba(TEXTS[:3])
    one = server.post("/predict?model=a", json={"inputs": TEXTS[0]})
    assert one.status_code == 200, one.text
    preds = one.json()
    assert [p["label"] for p in preds] == [clf.labels[j] for j in np.argsort(-want[0])]  # best first
    assert [set(p) for p in preds] == [{"label", "score"}] * 2
    np.testing.assert_allclose(sorted((p["score"] for p in preds), reverse=True), sorted(want[0], reverse=True),
                               atol=1e-5)
    assert server.post("/predict", json={"model": "a", "inputs": [TEXTS[0]]}).json() == preds  # [text]: one input
    batch = server.post("/predict", params={"model": "a"}, json={"inputs": [[t] for t in TEXTS[:3]],
                                                                  "truncate": True, "raw_scores": False})
    assert batch.status_code == 200, batch.text
    got = batch.json()
    assert len(got) == 3 and got[0] == preds
    for row, p in zip(got, want):
        np.testing.assert_allclose([x["score"] for x in sorted(row, key=lambda x: x["label"])], p, atol=1e-5)


def test_tei_predict_multilabel_and_regression(server):
    multi = server.post("/predict?model=multi", json={"inputs": "anything"}).json()
    assert multi == [{"label": "politics", "score": 0.9}, {"label": "tech", "score": 0.6},
                     {"label": "sports", "score": 0.2}]  # each label's own probability, best first
    reg = server.post("/predict?model=reg", json={"inputs": [["a"], ["b"]]}).json()
    assert reg == [[{"label": "similarity", "score": 3.25}]] * 2  # the target's name and its value


def test_tei_predict_takes_the_only_model(run):
    opts = ServeOptions()
    pool = ModelPool(opts)
    pool.add(Served("multi", MULTI))
    with serving(create_app(pool, opts)) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        r = client.post("/predict", json={"inputs": "x"})
        assert r.status_code == 200 and r.json()[0] == {"label": "politics", "score": 0.9}


@pytest.mark.parametrize("query,body,status,needle", [
    ("", {"inputs": "x"}, 422, "'model' must be a string naming one of: a, multi, reg"),
    ("?model=zz", {"inputs": "x"}, 404, "unknown model 'zz'"),
    ("?model=a", {"model": "reg", "inputs": "x"}, 422, "the 'model' query parameter and the 'model' field name"),
    ("?model=a", {"inputs": ["question", "passage"]}, 422, "is a text pair; text pairs are not supported"),
    ("?model=a", {"inputs": [["q", "p"]]}, 422, "'inputs' item 0 is a text pair"),
    ("?model=a", {"inputs": ["a", "b", "c"]}, 422, "a batch is [[text], [text], ...]"),
    ("?model=a", {"inputs": [["a"], 3]}, 422, "'inputs' item 1 must be a one-text list"),
    ("?model=a", {"inputs": []}, 422, "'inputs' is empty"),
    ("?model=a", {"inputs": 5}, 422, "'inputs' must be a text"),
    ("?model=a", {"inputs": "x", "raw_scores": True}, 422, "raw_scores is not supported"),
    ("?model=a", {"inputs": "x", "truncation_direction": "left"}, 422, "truncation_direction must be right"),
    ("?model=a", {"inputs": "x", "normalize": True}, 422, "unknown field(s): normalize"),
    ("?model=a", {"inputs": [["x"]] * 11}, 413, "11 texts in one request; the limit is 10"),
    ("?model=a", {"inputs": "x" * 201}, 413, "a text has 201 characters; the limit is 200"),
])
def test_tei_predict_refuses_what_it_cannot_do(server, query, body, status, needle):
    before = _metric(server, "loraclf_request_errors_total", path="/predict", status=str(status))
    _is_error(server.post("/predict" + query, json=body), status, needle)
    assert _metric(server, "loraclf_request_errors_total", path="/predict", status=str(status)) == before + 1


# ---------------------------------------------------------------- vLLM: POST /classify


def test_vllm_classify(server, run):
    clf = loraclf.load(run)
    want = clf.predict_proba(TEXTS[:3])
    r = server.post("/classify", json={"model": "a", "input": TEXTS[:3], "user": "me", "priority": 0,
                                       "truncate_prompt_tokens": -1, "use_activation": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["object"] == "list" and body["model"] == "a" and body["id"].startswith("classify-")
    assert isinstance(body["created"], int) and body["usage"]["completion_tokens"] == 0
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert [d["label"] for d in body["data"]] == clf.predict(TEXTS[:3])
    np.testing.assert_allclose([d["probs"] for d in body["data"]], want, atol=1e-5)  # in the model's label order
    assert {d["num_classes"] for d in body["data"]} == {2}
    one = server.post("/classify", json={"model": "a", "input": TEXTS[0]}).json()
    assert one["data"][0]["label"] == body["data"][0]["label"] and len(one["data"]) == 1


def test_vllm_classify_multilabel_and_regression(server):
    multi = server.post("/classify", json={"model": "multi", "input": ["x"]}).json()["data"]
    assert multi == [{"index": 0, "label": "politics", "probs": [0.2, 0.9, 0.6], "num_classes": 3,
                      "labels": ["politics", "tech"]}]  # the best label, and those past their thresholds
    reg = server.post("/classify", json={"model": "reg", "input": "x"}).json()["data"]
    assert reg == [{"index": 0, "label": "similarity", "probs": [3.25], "num_classes": 1}]


@pytest.mark.parametrize("body,status,needle", [
    ({"input": "x"}, 422, "'model' must be a string naming one of"),
    ({"model": "a", "input": [1, 2, 3]}, 422, "token ids are not supported"),
    ({"model": "a", "input": [[1, 2], [3]]}, 422, "token ids are not supported"),
    ({"model": "a", "messages": [{"role": "user", "content": "x"}]}, 422, "chat 'messages' are not supported"),
    ({"model": "a", "input": "x", "truncate_prompt_tokens": 8}, 422, "'truncate_prompt_tokens' may only be -1"),
    ({"model": "a", "input": "x", "use_activation": False}, 422, "'use_activation' may only be true"),
    ({"model": "a", "input": "x", "priority": 3}, 422, "'priority' may only be 0"),
    ({"model": "a", "input": "x", "dimensions": 3}, 422, "unknown field(s): dimensions"),
    ({"model": "a", "input": []}, 422, "'input' is empty"),
    ({"model": "a", "input": ["x"] * 11}, 413, "the limit is 10"),
])
def test_vllm_classify_refuses_what_it_cannot_do(server, body, status, needle):
    _is_error(server.post("/classify", json=body), status, needle)


def test_models_list_task_labels_head_and_base(server, run):
    listed = {m["name"]: m for m in server.get("/v1/models").json()["models"]}
    meta = json.loads((loraclf.load(run).path / "loraclf.json").read_text())
    a = listed["a"]
    assert a["task"] == "single-label" and a["labels"] == ["negative", "positive"]
    assert a["head"] == meta["head"] and a["base_model"] == meta["base_model"] and a["format"]
    assert listed["multi"]["task"] == "multi-label" and listed["reg"]["labels"] == ["similarity"]


def test_native_requests_are_unchanged(server):
    r = server.post("/v1/classify", json={"model": "multi", "input": "x"})
    assert r.json() == {"model": "multi", "results": [
        {"labels": ["politics", "tech"], "probabilities": {"sports": 0.2, "politics": 0.9, "tech": 0.6}}]}
    assert server.post("/v1/classify", json={"model": "reg", "input": ["x"]}).json()["results"] == [{"score": 3.25}]


# ---------------------------------------------------------------- bearer-token auth


@pytest.fixture(scope="module")
def guarded():
    opts = ServeOptions(api_keys=KEYS)
    pool = ModelPool(opts)
    pool.add(Served("multi", MULTI))
    assert KEYS[0] not in repr(opts)
    with serving(_app(pool, opts)) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        yield client


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("method,path", [("POST", "/v1/classify"), ("POST", "/predict"), ("POST", "/classify"),
                                         ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/nowhere"),
                                         ("GET", "/test-raise")])
def test_every_endpoint_but_health_needs_a_key(guarded, method, path):
    label = "other" if path.startswith(("/nowhere", "/test")) else path  # unknown paths are refused, not revealed
    before = _metric(guarded, "loraclf_request_errors_total", _bearer(KEYS[0]), path=label, status="401")
    body = {"input": "x"} if path.endswith("classify") else {"inputs": "x"}
    for headers, needle in [({}, "requires an API key"), (_bearer("k-first-0123456789x"), "not valid"),
                            (_bearer(KEYS[0][:-1]), "not valid"), ({"Authorization": f"Basic {KEYS[0]}"}, "Bearer"),
                            ({"Authorization": "Bearer"}, "Bearer <key>")]:
        r = guarded.request(method, path, json=body if method == "POST" else None, headers=headers)
        _is_error(r, 401, needle)
        assert r.headers["www-authenticate"] == "Bearer"
        assert KEYS[0] not in r.text and KEYS[1] not in r.text
    assert _metric(guarded, "loraclf_request_errors_total", _bearer(KEYS[0]), path=label, status="401") == before + 5


def test_a_valid_key_passes_and_health_needs_none(guarded):
    assert guarded.get("/health").status_code == 200
    for key in KEYS:
        r = guarded.post("/classify", json={"input": "x"}, headers=_bearer(key))
        assert r.status_code == 200 and r.json()["data"][0]["label"] == "politics"
    assert guarded.get("/v1/models", headers={"authorization": f"bearer {KEYS[1]}"}).status_code == 200
    assert guarded.get("/nowhere", headers=_bearer(KEYS[0])).status_code == 404  # past auth: the usual answer


def test_api_key_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"# rotated monthly\n\n  {KEYS[0]}  \n{KEYS[1]}\n{KEYS[0]}\n")
    assert read_api_keys(str(f)) == KEYS
    for text, needle in [("# only a comment\n\n", "no keys in it"), ("good-key\nbad key\n", "the key on line 2"),
                         ("caf\u00e9\n", "the key on line 1")]:
        f.write_text(text)
        with pytest.raises(loraclf.LoraclfError, match=needle) as e:
            read_api_keys(str(f))
        assert "bad key" not in str(e.value) and "caf" not in str(e.value)
    with pytest.raises(loraclf.LoraclfError, match="cannot read it"):
        read_api_keys(str(tmp_path / "missing"))


# ---------------------------------------------------------------- the CLI: --api-key-file and the exposure warning


@pytest.fixture
def cli(monkeypatch):
    """`loraclf serve` in-process, with uvicorn.run replaced: it records the app instead of serving it."""
    import uvicorn

    from loraclf.cli import main

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    level = logging.getLogger("loraclf").level
    yield main, started
    logging.getLogger("loraclf").setLevel(level)  # -q raised it


@pytest.mark.parametrize("content,needle", [(None, "cannot read it"), ("# no keys yet\n\n", "no keys in it")])
def test_cli_refuses_an_unusable_key_file_with_one_line(cli, run, tmp_path, capsys, content, needle):
    main, started = cli
    f = tmp_path / "keys"
    if content is not None:
        f.write_text(content)
    assert main(["serve", f"a={run}", "--api-key-file", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --api-key-file {f}: {needle}") and "\n" not in err
    assert not started


def test_cli_warns_beyond_loopback_even_with_q_and_says_whether_auth_is_on(cli, run, tmp_path, capsys):
    main, started = cli
    assert main(["serve", f"a={run}", "--host", "0.0.0.0", "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: serving on 0.0.0.0: reachable from the network, without authentication: pass --api-key-file" \
        in err
    f = tmp_path / "keys"
    f.write_text("\n".join(KEYS) + "\n")
    assert main(["serve", f"a={run}", "--host", "0.0.0.0", "-q", "--api-key-file", str(f)]) == 0
    err = capsys.readouterr().err
    assert "warning: serving on 0.0.0.0: reachable from the network; bearer-token auth is on (2 keys)" in err
    assert started["host"] == "0.0.0.0" and started["log_level"] == "warning"
    assert KEYS[0] not in err and KEYS[1] not in err
    with serving(started["app"]) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:  # the keys took
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers=_bearer(KEYS[1])).json()["models"][0]["name"] == "a"
    assert main(["serve", f"a={run}", "-q", "--api-key-file", str(f)]) == 0  # loopback: no warning
    assert "warning" not in capsys.readouterr().err
