"""loraclf serve: a real uvicorn server on a free loopback port, talked to over HTTP with httpx.

Every request loop is bounded in count (and each request by the client's timeout)."""

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import loraclf
from conftest import REPO, synthetic_rows, tiny_overrides

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("onnxruntime")
httpx = pytest.importorskip("httpx")

from loraclf.deploy.pool import ModelPool, Served, parse_specs  # noqa: E402
from loraclf.deploy.serve import ServeOptions, create_app, serving  # noqa: E402

TEXTS = [t for t, _ in synthetic_rows(10, 5)]
TIMEOUT = 30.0  # seconds, per request


class Failing:
    """A served classifier that fails any batch holding the text "boom" (a model that raises)."""

    def __init__(self, clf):
        self.clf, self.labels, self.model, self.task = clf, clf.labels, clf.model, clf.task

    def predict_proba(self, texts, batch_size):
        if "boom" in texts:
            raise RuntimeError("a batch that fails")
        return self.clf.predict_proba(texts, batch_size=batch_size)


@pytest.fixture(scope="module")
def runs(tiny_models, synth_dir, tmp_path_factory):
    """Two LoRA classifiers on one tiny base (different seeds and ranks) and an ONNX export of the first."""
    from loraclf.deploy.export import export

    out = tmp_path_factory.mktemp("serve_runs")
    a = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, out, name="a", **{"train.epochs": 1}),
                      quiet=True).path
    b = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, out, name="b", seed=7, **{
        "train.epochs": 1, "lora.r": 4}), quiet=True).path
    return {"a": a, "b": b, "a-onnx": export(a, out / "a-onnx", "onnx")}


@pytest.fixture(scope="module")
def server(runs):
    opts = ServeOptions(max_batch_size=32, max_wait_ms=50, max_texts=10, max_chars=200, max_body_bytes=4096)
    pool = ModelPool.from_specs([f"{n}={p}" for n, p in runs.items()], opts)
    pool.add(Served("broken", Failing(pool.loaded["a"].clf), "default", info={"labels": pool.loaded["a"].clf.labels}))
    with serving(create_app(pool, opts)) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        yield client, pool.loaded


def _classify(client, model, texts):
    return client.post("/v1/classify", json={"model": model, "input": texts})


def _metric(client, name: str, **labels) -> float:
    """A sample's value from /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.mark.parametrize("name", ["a", "b", "a-onnx"])
def test_classify_equals_loraclf_predict(server, runs, name):
    client, _ = server
    clf = loraclf.load(runs[name])
    r = _classify(client, name, TEXTS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == name and len(body["results"]) == len(TEXTS)
    assert [x["label"] for x in body["results"]] == clf.predict(TEXTS)
    got = np.array([[x["probabilities"][lab] for lab in clf.labels] for x in body["results"]])
    np.testing.assert_allclose(got, clf.predict_proba(TEXTS), atol=1e-5)
    assert all(x["score"] == max(x["probabilities"].values()) for x in body["results"])


def test_adapters_share_one_base_and_route_by_name(server, runs):
    client, models = server
    assert models["b"].clf.model is models["a"].clf.model  # one copy of the base weights
    assert models["a-onnx"].clf.model is not models["a"].clf.model
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(listed) == {"a", "b", "a-onnx", "broken"}
    assert listed["b"]["shares_base_with"] == "a" and listed["a-onnx"]["format"] == "onnx"
    want = {n: loraclf.load(runs[n]).predict_proba(TEXTS[:3]) for n in ("a", "b")}
    assert not np.allclose(want["a"], want["b"], atol=1e-3)  # two different classifiers
    for name in ["a", "b", "a", "b", "b", "a"]:  # interleaved: every batch activates its own adapter
        got = [[x["probabilities"][lab] for lab in ("negative", "positive")]
               for x in _classify(client, name, TEXTS[:3]).json()["results"]]
        np.testing.assert_allclose(got, want[name], atol=1e-5)


def test_concurrent_requests_are_batched(server, runs):
    client, _ = server
    want = loraclf.load(runs["a"]).predict(TEXTS)
    before_count = _metric(client, "loraclf_batch_size_count")
    before_sum = _metric(client, "loraclf_batch_size_sum")
    texts = [TEXTS[i % len(TEXTS)] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda t: _classify(client, "a", [t]), texts))
    assert [r.status_code for r in replies] == [200] * 16
    assert [r.json()["results"][0]["label"] for r in replies] == [want[i % len(TEXTS)] for i in range(16)]
    batches = _metric(client, "loraclf_batch_size_count") - before_count
    assert _metric(client, "loraclf_batch_size_sum") - before_sum == 16
    assert batches < 16  # some batch held more than one request
    assert _metric(client, "loraclf_batch_size_bucket", le="1.0") < _metric(
        client, "loraclf_batch_size_count")


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 422, "must be a JSON object"),
    (b'{"model": "a", "input": []}', 422, "'input' is empty"),
    (b'{"model": "a", "input": 3}', 422, "'input' must be a list of strings"),
    (b'{"model": "a", "input": ["ok", 4]}', 422, "'input' must be a list of strings"),
    (b'{"model": "a"}', 422, "'input' must be a list of strings"),
    (b'{"model": "a", "inputs": ["x"]}', 422, "unknown field(s): inputs"),
    (b'{"input": ["x"]}', 422, "'model' must be a string naming one of: a, b, a-onnx, broken"),
    (b'{"model": 5, "input": ["x"]}', 422, "'model' must be a string"),
    (b'{"model": "c", "input": ["x"]}', 404, "unknown model 'c'; this server serves: a, b, a-onnx, broken"),
    (json.dumps({"model": "a", "input": ["x"] * 11}).encode(), 413, "11 texts in one request; the limit is 10"),
    (json.dumps({"model": "a", "input": ["x" * 201]}).encode(), 413, "a text has 201 characters; the limit is 200"),
    (json.dumps({"model": "a", "input": ["x" * 150] * 5 + ["y" * 5000]}).encode(), 413, "the limit is 4096"),
])
def test_bad_requests_get_a_json_error_that_names_the_problem(server, body, status, needle):
    client, _ = server
    before = _metric(client, "loraclf_request_errors_total", path="/v1/classify", status=str(status))
    r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.json()["error"] == {"status": status, "message": r.json()["error"]["message"]}
    assert needle in r.json()["error"]["message"]
    assert _metric(client, "loraclf_request_errors_total", path="/v1/classify", status=str(status)) == before + 1


def test_a_streamed_body_is_cut_at_the_limit(server):
    client, _ = server

    def chunks():  # no content-length: the server counts the bytes as they arrive
        yield b'{"model": "a", "input": ["'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"]}'

    r = client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit of 4096 bytes" in r.json()["error"]["message"]


def test_requests_cannot_reach_a_model_or_path_not_served(server, runs):
    client, models = server
    for name in (str(runs["a"]), "../a", "a/../b", str(runs["b"] / "artifact"), "minilm"):
        r = _classify(client, name, ["x"])
        assert r.status_code == 404 and "unknown model" in r.json()["error"]["message"]
    assert set(models) == {"a", "b", "a-onnx", "broken"}


def test_a_failed_batch_fails_its_requests_and_the_server_keeps_serving(server):
    client, _ = server
    r = _classify(client, "broken", ["fine", "boom"])
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "inference failed for this request (RuntimeError); see the server log"
    assert _classify(client, "broken", ["fine"]).status_code == 200
    assert client.get("/health").json() == {"status": "ok", "models": 4, "loaded": 4}


def test_metrics_count_requests_latency_and_texts(server):
    client, _ = server
    ok = _metric(client, "loraclf_requests_total", path="/v1/classify", status="200")
    lat = _metric(client, "loraclf_request_duration_seconds_count", path="/v1/classify")
    texts = _metric(client, "loraclf_texts_total", model="b")
    for _ in range(3):
        assert _classify(client, "b", TEXTS[:2]).status_code == 200
    assert _metric(client, "loraclf_requests_total", path="/v1/classify", status="200") == ok + 3
    assert _metric(client, "loraclf_request_duration_seconds_count", path="/v1/classify") == lat + 3
    assert _metric(client, "loraclf_texts_total", model="b") == texts + 6
    assert client.get("/nowhere").status_code == 404
    assert _metric(client, "loraclf_requests_total", path="other", status="404") >= 1  # bounded label values
    text = client.get("/metrics").text
    assert "loraclf_inference_seconds_bucket" in text and "# TYPE loraclf_batch_size histogram" in text


def test_batch_size_one_never_batches(runs):
    opts = ServeOptions(max_batch_size=1, max_wait_ms=50)
    pool = ModelPool.from_specs([f"a={runs['a-onnx']}"], opts)
    with serving(create_app(pool, opts)) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda t: client.post("/v1/classify", json={"input": [t]}).status_code, TEXTS[:8]))
        assert codes == [200] * 8  # "model" may be left out when one model is served
        assert _metric(client, "loraclf_batch_size_count") == 8
        assert _metric(client, "loraclf_batch_size_sum") == 8


def test_model_names_and_unshared_loading(runs):
    assert [n for n, _ in parse_specs([str(runs["a"]), f"x={runs['b']}/artifact"])] == ["a", "x"]
    with pytest.raises(loraclf.LoraclfError, match="two models are named 'a'"):
        parse_specs([str(runs["a"]), f"a={runs['b']}"])
    with pytest.raises(loraclf.LoraclfError, match="model name 'no way' must be"):
        parse_specs([f"no way={runs['a']}"])
    with pytest.raises(loraclf.LoraclfError, match="artifact not found"):
        parse_specs([f"a={runs['a']}-missing"])
    models = ModelPool.from_specs([f"a={runs['a']}", f"b={runs['b']}"], ServeOptions(share_base=False)).loaded
    assert models["a"].clf.model is not models["b"].clf.model and models["a"].adapter is None


def test_missing_extra_is_one_line(monkeypatch):
    from loraclf.errors import EnvironmentError_

    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(EnvironmentError_, match=r"fastapi is not installed: pip install 'loraclf\[serve\]'"):
        create_app(ModelPool(ServeOptions()), ServeOptions())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_on_loopback_by_default(runs, tmp_path):
    """`loraclf serve` as users start it: a process, bound to 127.0.0.1, stopped by a signal."""
    from loraclf.cli import build_parser

    assert build_parser().parse_args(["serve", "x"]).host == "127.0.0.1"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "loraclf", "serve", f"onnx={runs['a-onnx']}", "--port", str(port),
                             "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert r.json() == {"status": "ok", "models": 1, "loaded": 1}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"model": "onnx", "input": ["superb"]},
                       timeout=TIMEOUT)
        assert r.status_code == 200 and r.json()["results"][0]["label"] in ("negative", "positive")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"serving onnx on http://127.0.0.1:{port}" in out


def test_cli_serve_refuses_bad_models_with_one_line(capsys):
    from loraclf.cli import main

    assert main(["serve", "/nowhere/at/all"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: artifact not found: /nowhere/at/all"
