"""An HTTP server for trained classifiers and their exports (FastAPI + uvicorn, ``loraclf[serve]``).

- ``POST /v1/classify`` ``{"model": name, "input": [texts]}`` -> per text: label, its probability and
  every label's probability. ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).
- The models are a :class:`~loraclf.deploy.pool.ModelPool`: those named at start-up, and with
  ``--models-dir`` every artifact in a folder, loaded on first request and evicted least recently
  used past ``--max-loaded``. LoRA classifiers on one base share one copy of its weights.
- Concurrent requests, for any mix of models, are micro-batched (``max_batch_size`` texts,
  ``max_wait_ms``): LoRA classifiers on one base share one forward pass, each row with its own adapter
  and head. Inference runs on one worker thread, so the event loop keeps accepting requests meanwhile
  and loading or evicting an adapter never races a forward pass.
- Safe by default: loopback only, limits on texts, characters and body size, one-line JSON errors,
  and requests name a model, never a path.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) as objects.
import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..errors import import_extra, printable
from .pool import ModelPool

log = logging.getLogger("loraclf")
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


class ApiError(Exception):
    """A request the server refuses: HTTP status and one line for the client."""

    def __init__(self, status: int, message: str):
        message = printable(message)  # one line, whatever of the request it quotes
        super().__init__(message)
        self.status, self.message = status, message


# --------------------------------------------------------------------------- batching


@dataclass
class _Pending:
    name: str
    texts: list[str]
    future: asyncio.Future


class Batcher:
    """Collects concurrent requests, for any of the served models, into batches (a request is never
    split) and runs them on the inference thread: LoRA classifiers on one base share its forward pass."""

    def __init__(self, pool: ModelPool, executor, max_batch: int, max_wait_s: float, metrics: "Metrics"):
        self.pool, self.executor, self.metrics = pool, executor, metrics
        self.max_batch, self.max_wait_s = max(1, max_batch), max(0.0, max_wait_s)
        self.pending: deque[_Pending] = deque()
        self.wakeup = asyncio.Event()

    async def submit(self, name: str, texts: list[str]) -> np.ndarray:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(_Pending(name, texts, fut))
        self.wakeup.set()
        return await fut

    def _queued(self) -> int:
        return sum(len(p.texts) for p in self.pending)

    async def _gather(self) -> list[_Pending]:
        """Wait for a request, then up to max_wait for the batch to fill."""
        while not self.pending:
            self.wakeup.clear()
            await self.wakeup.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while self._queued() < self.max_batch and (left := deadline - loop.time()) > 0:
            self.wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), left)
        batch = [self.pending.popleft()]
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
            n = sum(len(p.texts) for p in batch)
            self.metrics.batch_size.observe(n)
            self.metrics.batch_models.observe(len({p.name for p in batch}))
            t0 = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self.executor, self.pool.infer,
                                                     [(p.name, p.texts) for p in batch], self.max_batch)
            except Exception as e:  # noqa: BLE001 - the pool answers per request; this is a bug of ours
                outputs = [e] * len(batch)
            finally:
                self.metrics.inference.observe(time.perf_counter() - t0)
            for p, out in zip(batch, outputs):
                if p.future.done():  # the client went away
                    continue
                if isinstance(out, BaseException):
                    p.future.set_exception(_as_api_error(p, out))
                else:
                    p.future.set_result(out)


def _as_api_error(p: _Pending, e: BaseException) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, LookupError):
        return ApiError(404, f"unknown model {p.name!r}")
    log.error("inference failed for model %s (%d texts): %s: %s", p.name, len(p.texts), type(e).__name__, e,
              exc_info=e)
    return ApiError(500, f"inference failed for this request ({type(e).__name__}); see the server log")


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
        self.batch_size = prom.Histogram("loraclf_batch_size", "Texts per inference batch", registry=r,
                                         buckets=BATCH_BUCKETS)
        self.batch_models = prom.Histogram("loraclf_batch_models", "Distinct models per inference batch",
                                           registry=r, buckets=BATCH_BUCKETS)
        self.inference = prom.Histogram("loraclf_inference_seconds", "Time of one inference batch", registry=r)
        self.loaded = prom.Gauge("loraclf_models_loaded", "Models in memory", registry=r)
        self.loads = prom.Gauge("loraclf_model_loads", "Models loaded since start", registry=r)
        self.evictions = prom.Gauge("loraclf_model_evictions", "Models evicted since start", registry=r)
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


def _names_hint(names: list[str]) -> str:
    return ", ".join(names[:10]) + (f" ... ({len(names)} in all; GET /v1/models lists them)" if len(names) > 10 else "")


def parse_request(body: bytes, pool: ModelPool, opts: ServeOptions) -> tuple[str, list[str]]:
    """The model name and texts of a classify request, or an ApiError naming what is wrong."""
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
    if name is None:
        names = pool.names()
        if len(names) == 1:
            name = names[0]
    if not isinstance(name, str):
        raise ApiError(422, f"'model' must be a string naming one of: {_names_hint(pool.names())}")
    if not pool.knows(name):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise ApiError(404, f"unknown model {shown!r}; this server serves: {_names_hint(pool.names())}")
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
    return name, texts


# --------------------------------------------------------------------------- the app


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)


def create_app(pool: ModelPool, opts: ServeOptions):
    """The FastAPI app serving the models of `pool`."""
    fastapi = import_extra("fastapi", "serve")
    from concurrent.futures import ThreadPoolExecutor

    metrics = Metrics()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # One worker thread: PyTorch and onnxruntime use every core inside a batch already, and adapter
        # loads and evictions on a shared base must not interleave with a forward pass.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraclf-infer")
        state["batcher"] = Batcher(pool, executor, opts.max_batch_size, opts.max_wait_ms / 1000, metrics)
        task = asyncio.create_task(state["batcher"].run())
        try:
            yield
        finally:
            task.cancel()
            executor.shutdown(wait=False, cancel_futures=True)

    app = fastapi.FastAPI(title="loraclf", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _count_requests(app, metrics)
    _routes(app, pool, opts, metrics, state)
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


def _routes(app, pool: ModelPool, opts: ServeOptions, metrics: Metrics, state: dict) -> None:
    from fastapi import Request
    from fastapi.responses import Response

    @app.post("/v1/classify")
    async def classify(request: Request):
        try:
            name, texts = parse_request(await read_body(request, opts.max_body_bytes), pool, opts)
            task, outputs = await state["batcher"].submit(name, texts)
        except ApiError as e:
            return _error(e.status, e.message)
        metrics.texts.labels(name).inc(len(texts))
        return {"model": name, "results": task.records(outputs)}

    @app.get("/v1/models")
    async def list_models():
        return {"models": pool.describe()}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(pool.names()), "loaded": len(pool.loaded)}

    @app.get("/metrics")
    async def prometheus():
        metrics.loaded.set(len(pool.loaded))
        metrics.loads.set(pool.loads)
        metrics.evictions.set(pool.evictions)
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)


def run_server(specs: list[str], opts: ServeOptions, base_model: Optional[str] = None, quiet: bool = False,
               models_dir: Optional[str] = None, max_loaded: Optional[int] = None) -> None:
    """Load the models, then serve them until interrupted (``loraclf serve``)."""
    import_extra("fastapi", "serve")
    uvicorn = import_extra("uvicorn", "serve")
    pool = ModelPool.from_specs(specs, opts, base_model, models_dir, max_loaded)
    app = create_app(pool, opts)
    models = pool.names()
    if opts.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from the network, without authentication; put it behind a proxy "
                    "that authenticates, or bind 127.0.0.1", opts.host)
    shown = ", ".join(models[:10]) + (f" and {len(models) - 10} more" if len(models) > 10 else "")
    shown = shown or f"the models of {models_dir}"
    print(f"serving {shown} on http://{opts.host}:{opts.port} (Ctrl-C to stop)", file=sys.stderr)
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
