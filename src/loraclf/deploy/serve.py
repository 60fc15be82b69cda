"""An HTTP server for trained classifiers and their exports (FastAPI + uvicorn, ``loraclf[serve]``).

- ``POST /v1/classify`` ``{"model": name, "input": [texts]}`` -> per text: label, its probability and
  every label's probability. ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).
- Several LoRA classifiers on one base share one copy of the base weights: the first is loaded
  unmerged, the others are added to it as PEFT adapters, and each batch activates its adapter.
- Concurrent requests for one model are micro-batched (``max_batch_size`` texts, ``max_wait_ms``);
  inference runs on one worker thread, so the event loop keeps accepting requests meanwhile and
  switching adapters never races a forward pass.
- Safe by default: loopback only, limits on texts, characters and body size, one-line JSON errors,
  and only the models named at start-up can be reached (requests name a model, never a path).
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) as objects.
import asyncio
import contextlib
import json
import logging
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import LoraclfError, import_extra, printable

log = logging.getLogger("loraclf")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"  # loopback: nothing on the network reaches the server unless --host says so
    port: int = 8000
    max_batch_size: int = 32  # texts per forward pass; larger amortises per-batch overhead, costs latency
    max_wait_ms: float = 5.0  # how long a batch that is not full waits for more requests
    max_texts: int = 64  # texts per request
    max_chars: int = 10_000  # characters per text (tokens past max_length are cut anyway)
    max_body_bytes: int = 1_048_576
    device: Optional[str] = None
    precision: str = "fp32"
    share_base: bool = True
    allow_other_base: bool = False  # accept a base whose weights differ from the one an artifact was trained on


@dataclass
class Served:
    """One model clients can name. `clf` has ``labels``, ``task`` (which words its answers) and
    ``predict_proba(texts, batch_size=)``;
    `adapter` is the PEFT adapter to activate first when several classifiers share one base."""

    name: str
    clf: Any
    adapter: Optional[str] = None
    info: dict = field(default_factory=dict)

    def predict_proba(self, texts: list[str], batch_size: int) -> np.ndarray:
        if self.adapter is not None:
            model = self.clf.model
            if model.active_adapter != self.adapter:
                model.set_adapter(self.adapter)
        return self.clf.predict_proba(texts, batch_size=batch_size)


class ApiError(Exception):
    """A request the server refuses: HTTP status and one line for the client."""

    def __init__(self, status: int, message: str):
        message = printable(message)  # one line, whatever of the request it quotes
        super().__init__(message)
        self.status, self.message = status, message


# --------------------------------------------------------------------------- loading


def parse_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """``[NAME=]PATH`` arguments as (name, path); the default name is the run's folder name."""
    from ..schema import artifact_dir

    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        art = artifact_dir(path)
        if not name:
            name = art.parent.name if art.name == "artifact" else art.name
        if not NAME_RE.match(name):
            raise LoraclfError(f"model name {name!r} must be letters, digits, '.', '_' or '-' (at most 64); "
                               "give one as NAME=PATH")
        if name in {n for n, _ in out}:
            raise LoraclfError(f"two models are named {name!r}; give one another name as NAME=PATH")
        out.append((name, art))
    return out


def _share_key(meta: dict, art: Path, base_model: Optional[str]) -> Optional[tuple]:
    """Adapters that can live on one base: same base, same number of labels, same extra trained modules
    (LoRA adapters of a head that can share its base; exports carry their own weights)."""
    from ..models.heads import HEADS
    from ..models.methods import method_of

    method, head = method_of(meta["method"]), HEADS.get(meta["head"])
    if not (method and method.adapters and head and head.shares_base):
        return None
    acfg = json.loads((art / "adapter_config.json").read_text())
    return (base_model or meta["base_model"], meta.get("base_fingerprint"), len(meta["labels"]),
            tuple(sorted(acfg.get("modules_to_save") or ())))


def load_models(specs: list[str], opts: ServeOptions, base_model: Optional[str] = None) -> dict[str, Served]:
    """Load every model named at start-up; LoRA classifiers on one base share it (opts.share_base)."""
    from ..models.build import load_tokenizer
    from ..models.heads import head_class
    from ..schema import read_meta
    from ..tasks import make_task
    from .artifact import Classifier, load, reads_pairs

    served: dict[str, Served] = {}
    groups: dict[tuple, Served] = {}  # share key -> the model holding the base
    for name, art in parse_specs(specs):
        meta = read_meta(art)
        if reads_pairs(meta):  # requests carry one text each: a pair model would score them wrong or fail
            raise LoraclfError(f"{name}={art}: the model reads text pairs ({', '.join(meta['text_column'])}); "
                               "loraclf serve takes one text per input (use loraclf predict or the Python API)")
        key = _share_key(meta, art, base_model) if opts.share_base else None
        owner = groups.get(key) if key is not None else None
        if owner is None:
            clf = load(art, base_model=base_model, device=opts.device, merge=key is None, precision=opts.precision,
                       allow_other_base=opts.allow_other_base)
            s = Served(name, clf, "default" if key is not None else None)
            if key is not None:
                groups[key] = s
        else:
            peft_model = owner.clf.model
            peft_model.load_adapter(str(art), adapter_name=name)
            task = make_task(meta["task"], meta["labels"], meta["task_state"])
            head = head_class(meta["head"])(peft_model, load_tokenizer(str(art)), task)
            clf = Classifier(head, meta, owner.clf.device)
            clf.precision = opts.precision
            s = Served(name, clf, name)
            s.info["shares_base_with"] = owner.name
        s.info.update({k: meta.get(k) for k in ("base_model", "method", "head", "format")})
        s.info.update(s.clf.task.describe())
        served[name] = s
    return served


# --------------------------------------------------------------------------- batching


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future


class Batcher:
    """Collects concurrent requests for one model into batches and runs them on the worker thread."""

    def __init__(self, served: Served, executor, max_batch: int, max_wait_s: float, metrics: "Metrics"):
        self.served, self.executor, self.metrics = served, executor, metrics
        self.max_batch, self.max_wait_s = max(1, max_batch), max(0.0, max_wait_s)
        self.pending: deque[_Pending] = deque()
        self.wakeup = asyncio.Event()

    async def submit(self, texts: list[str]) -> np.ndarray:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(_Pending(texts, fut))
        self.wakeup.set()
        return await fut

    def _queued(self) -> int:
        return sum(len(p.texts) for p in self.pending)

    async def _gather(self) -> list[_Pending]:
        """Wait for a request, then up to max_wait for the batch to fill; a request is never split."""
        while not self.pending:
            self.wakeup.clear()
            await self.wakeup.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while self._queued() < self.max_batch and (left := deadline - loop.time()) > 0:
            self.wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), left)
        batch, n = [self.pending.popleft()], 0
        n = len(batch[0].texts)
        while self.pending and n + len(self.pending[0].texts) <= self.max_batch:
            item = self.pending.popleft()
            batch.append(item)
            n += len(item.texts)
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            texts = [t for p in batch for t in p.texts]
            name = self.served.name
            self.metrics.batch_size.labels(name).observe(len(texts))
            t0 = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self.executor, self.served.predict_proba, texts, self.max_batch)
            except Exception as e:  # one failed batch fails its requests; the server keeps serving
                log.exception("inference failed for model %s (%d texts)", name, len(texts))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(ApiError(500, f"inference failed for this batch "
                                                              f"({type(e).__name__}); see the server log"))
                continue
            finally:
                self.metrics.inference.labels(name).observe(time.perf_counter() - t0)
            start = 0
            for p in batch:
                if not p.future.done():  # the client may have gone away
                    p.future.set_result(probs[start:start + len(p.texts)])
                start += len(p.texts)


# --------------------------------------------------------------------------- metrics and requests


class Metrics:
    """Prometheus metrics in a registry of the app's own (several apps can live in one process)."""

    def __init__(self):
        prom = import_extra("prometheus_client", "serve")
        self.registry = r = prom.CollectorRegistry()
        self.prom = prom
        self.requests = prom.Counter("loraclf_requests", "HTTP requests by path and status",
                                     ["path", "status"], registry=r)
        self.errors = prom.Counter("loraclf_request_errors", "Requests answered with a 4xx or 5xx status",
                                   ["path", "status"], registry=r)
        self.latency = prom.Histogram("loraclf_request_duration_seconds", "Request latency", ["path"], registry=r,
                                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch_size = prom.Histogram("loraclf_batch_size", "Texts per inference batch", ["model"],
                                         registry=r, buckets=BATCH_BUCKETS)
        self.inference = prom.Histogram("loraclf_inference_seconds", "Time of one inference batch", ["model"],
                                        registry=r)
        self.texts = prom.Counter("loraclf_texts", "Texts classified", ["model"], registry=r)

    def render(self) -> tuple[bytes, str]:
        return self.prom.generate_latest(self.registry), self.prom.CONTENT_TYPE_LATEST


async def read_body(request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes, models: dict[str, Served], opts: ServeOptions) -> tuple[Served, list[str]]:
    """The model and texts of a classify request, or an ApiError naming what is wrong."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON") from None
    except RecursionError:  # [[[[... thousands deep: refused, not a crash of the request
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise ApiError(422, 'request body must be a JSON object: {"model": name, "input": [texts]}')
    unknown = sorted(set(payload) - {"model", "input"})
    if unknown:
        raise ApiError(422, f"unknown field(s): {', '.join(unknown)} (expected model and input)")
    name = payload.get("model")
    if name is None and len(models) == 1:
        name = next(iter(models))
    if not isinstance(name, str):
        raise ApiError(422, f"'model' must be a string naming one of: {', '.join(models)}")
    if name not in models:
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise ApiError(404, f"unknown model {shown!r}; this server serves: {', '.join(models)}")
    texts = payload.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ApiError(422, "'input' must be a list of strings")
    if not texts:
        raise ApiError(422, "'input' is empty: send at least one text")
    if len(texts) > opts.max_texts:
        raise ApiError(413, f"{len(texts)} texts in one request; the limit is {opts.max_texts}")
    longest = max(len(t) for t in texts)
    if longest > opts.max_chars:
        raise ApiError(413, f"a text has {longest} characters; the limit is {opts.max_chars}")
    return models[name], texts


def results(served: Served, outputs: np.ndarray) -> list[dict]:
    return served.clf.task.records(outputs)


# --------------------------------------------------------------------------- the app


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)


def create_app(models: dict[str, Served], opts: ServeOptions):
    """The FastAPI app serving `models` (fixed for its life)."""
    fastapi = import_extra("fastapi", "serve")
    from concurrent.futures import ThreadPoolExecutor

    metrics = Metrics()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # One worker thread: PyTorch and onnxruntime use every core inside a batch already, and adapter
        # switches on a shared base must not interleave with another model's forward pass.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraclf-infer")
        state["batchers"] = {n: Batcher(s, executor, opts.max_batch_size, opts.max_wait_ms / 1000, metrics)
                             for n, s in models.items()}
        tasks = [asyncio.create_task(b.run()) for b in state["batchers"].values()]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            executor.shutdown(wait=False, cancel_futures=True)

    app = fastapi.FastAPI(title="loraclf", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _count_requests(app, metrics)
    _routes(app, models, opts, metrics, state)
    return app


def _count_requests(app, metrics: Metrics) -> None:
    """Every request's status and latency in /metrics, by path (unknown paths as "other": bounded labels)."""
    from fastapi import Request

    paths = {"/v1/classify", "/v1/models", "/health", "/metrics"}

    @app.middleware("http")
    async def count(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        path = request.url.path if request.url.path in paths else "other"
        metrics.requests.labels(path, str(response.status_code)).inc()
        if response.status_code >= 400:
            metrics.errors.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - t0)
        return response


def _routes(app, models: dict[str, Served], opts: ServeOptions, metrics: Metrics, state: dict) -> None:
    from fastapi import Request
    from fastapi.responses import Response

    @app.post("/v1/classify")
    async def classify(request: Request):
        try:
            served, texts = parse_request(await read_body(request, opts.max_body_bytes), models, opts)
            probs = await state["batchers"][served.name].submit(texts)
        except ApiError as e:
            return _error(e.status, e.message)
        metrics.texts.labels(served.name).inc(len(texts))
        return {"model": served.name, "results": results(served, probs)}

    @app.get("/v1/models")
    async def list_models():
        return {"models": [{"name": n, **s.info} for n, s in models.items()]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(models)}

    @app.get("/metrics")
    async def prometheus():
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)


def run_server(specs: list[str], opts: ServeOptions, base_model: Optional[str] = None, quiet: bool = False) -> None:
    """Load the models, then serve them until interrupted (``loraclf serve``)."""
    import_extra("fastapi", "serve")
    uvicorn = import_extra("uvicorn", "serve")
    models = load_models(specs, opts, base_model)
    app = create_app(models, opts)
    if opts.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from the network, without authentication; put it behind a proxy "
                    "that authenticates, or bind 127.0.0.1", opts.host)
    print(f"serving {', '.join(models)} on http://{opts.host}:{opts.port} (Ctrl-C to stop)", file=sys.stderr)
    uvicorn.run(app, host=opts.host, port=opts.port, log_level="warning" if quiet else "info",
                access_log=not quiet, timeout_graceful_shutdown=10)


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1", timeout: float = 30.0):
    """Run `app` with uvicorn on a free port in a background thread; yields its base URL.

    For tests and benchmarks: the port is taken by binding port 0, so two runs never collide.
    """
    import socket

    uvicorn = import_extra("uvicorn", "serve")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
