"""An HTTP server for trained classifiers and their exports (FastAPI + uvicorn, ``loraclf[serve]``).

- ``POST /v1/classify`` ``{"model": name, "input": [texts]}`` -> per text: label, its probability and
  every label's probability. ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).
- The same models in the shapes of other servers, so their clients work unchanged: text-embeddings-inference's
  ``POST /predict`` (``{"inputs": ...}`` -> labels and scores, best first) and vLLM's ``POST /classify``
  (``{"model", "input"}`` -> ``{"data": [{"label", "probs", ...}]}``). Every shape goes through the same
  checks, limits and batcher.
- The models are a :class:`~loraclf.deploy.pool.ModelPool`: those named at start-up, and with
  ``--models-dir`` every artifact in a folder, loaded on first request and evicted least recently
  used past ``--max-loaded``. LoRA classifiers on one base share one copy of its weights.
- Concurrent requests, for any mix of models, are micro-batched (``max_batch_size`` texts,
  ``max_wait_ms``): LoRA classifiers on one base share one forward pass, each row with its own adapter
  and head. Inference runs on one worker thread, so the event loop keeps accepting requests meanwhile
  and loading or evicting an adapter never races a forward pass.
- Safe by default: loopback only, limits on texts, characters and body size, texts checked before they
  join a batch (one bad text fails its own request, never its batch), one JSON error shape for every
  error (the framework's 404, 405 and 500 included), and requests name a model, never a path.
  ``--api-key-file`` turns on bearer-token auth for every endpoint but ``/health``.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) as objects.
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import LoraclfError, import_extra, printable
from .pool import ModelPool, UnknownModel

log = logging.getLogger("loraclf")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"  # loopback: nothing on the network reaches the server unless --host says so
    port: int = 8000
    max_batch_size: int = 32  # texts per forward pass; larger amortises per-batch overhead, costs latency
    max_wait_ms: float = 5.0  # how long a batch that is not full waits for more requests
    max_texts: int = 64  # texts per request
    max_chars: int = 10_000  # characters per text (a truncating model reads max_length tokens; see data.long_text)
    max_body_bytes: int = 1_048_576
    device: Optional[str] = None
    precision: str = "fp32"
    share_base: bool = True
    allow_other_base: bool = False  # accept a base whose weights differ from the one an artifact was trained on
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # bearer tokens; none: no auth. Never printed


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
    if isinstance(e, UnknownModel):  # only a name this server does not serve: other lookups are failures
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
        self.refills = prom.Gauge("loraclf_model_refills", "Loads that took over an evicted adapter's slot",
                                  registry=r)
        self.texts = prom.Counter("loraclf_texts", "Texts classified", ["model"], registry=r)

    def read_pool(self, pool: ModelPool) -> None:
        """The pool's counters, as they are when /metrics is read."""
        self.loaded.set(len(pool.loaded))
        self.loads.set(pool.loads)
        self.evictions.set(pool.evictions)
        self.refills.set(pool.refills)

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


def _json_object(body: bytes, shape: str) -> dict:
    """The body as a JSON object, or a 4xx naming what is wrong with it."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON") from None
    except RecursionError:  # [[[[... thousands deep: refused, not a crash of the request
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise ApiError(422, f"request body must be a JSON object: {shape}")
    return payload


def _check_fields(payload: dict, known: tuple[str, ...]) -> None:
    unknown = sorted(set(payload) - set(known))
    if unknown:
        expected = f"{', '.join(known[:-1])} and {known[-1]}"
        raise ApiError(422, f"unknown field(s): {', '.join(unknown)} (expected {expected})")


def _model_name(name: Any, pool: ModelPool) -> str:
    """The served model a request names; left out (None), the only one served."""
    if name is None:
        names = pool.names()
        if len(names) == 1:
            name = names[0]
    if not isinstance(name, str):
        raise ApiError(422, f"'model' must be a string naming one of: {_names_hint(pool.names())}")
    if not pool.knows(name):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise ApiError(404, f"unknown model {shown!r}; this server serves: {_names_hint(pool.names())}")
    return name


def check_texts(texts: list[str], opts: ServeOptions, what: str = "input") -> list[str]:
    """Refuse, for this request alone and before it joins a batch, texts the limits or the tokenizer
    would refuse: a text the tokenizer cannot take would otherwise fail every request of its batch."""
    if not texts:
        raise ApiError(422, f"'{what}' is empty: send at least one text")
    if len(texts) > opts.max_texts:
        raise ApiError(413, f"{len(texts)} texts in one request; the limit is {opts.max_texts}")
    longest = max(len(t) for t in texts)
    if longest > opts.max_chars:
        raise ApiError(413, f"a text has {longest} characters; the limit is {opts.max_chars}")
    for i, text in enumerate(texts):
        try:  # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer (nor UTF-8) takes
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ApiError(422, f"text {i} (counting from 0) is not valid Unicode: an unpaired UTF-16 surrogate "
                                f"(U+{ord(text[e.start]):04X}) at character {e.start}") from None
    return texts


def parse_request(body: bytes, pool: ModelPool, opts: ServeOptions) -> tuple[str, list[str]]:
    """The model name and texts of a classify request, or an ApiError naming what is wrong."""
    payload = _json_object(body, '{"model": name, "input": [texts]}')
    _check_fields(payload, ("model", "input"))
    name = _model_name(payload.get("model"), pool)
    texts = payload.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ApiError(422, "'input' must be a list of strings")
    return name, check_texts(texts, opts)


# --------------------------------------------------------------------------- other servers' shapes

NO_PAIRS = "text pairs are not supported: loraclf serve takes one text per input"
TEI_FIELDS = ("inputs", "model", "raw_scores", "truncate", "truncation_direction")
VLLM_FIELDS = ("model", "input", "user", "request_id", "priority", "truncate_prompt_tokens", "truncation_side",
               "add_special_tokens", "use_activation")


def _tei_one(item: Any, i: int) -> str:
    if isinstance(item, list) and len(item) == 1 and isinstance(item[0], str):
        return item[0]
    if isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item):
        raise ApiError(422, f"'inputs' item {i} is a text pair; {NO_PAIRS}")
    raise ApiError(422, f"'inputs' item {i} must be a one-text list [text]: a batch is [[text], [text], ...]")


def parse_tei(body: bytes, pool: ModelPool, opts: ServeOptions,
              model: Optional[str] = None) -> tuple[str, list[str], bool]:
    """A text-embeddings-inference ``/predict`` request: model name, texts, and whether it sent one input
    (answered with one list of predictions) rather than a batch (a list of lists).

    As TEI reads `inputs`: a string is one text; a list of strings is one input, [text] (or a pair
    [text, text], refused); a list of lists is a batch. The model is the only one served, or the one the
    ``model`` field or query parameter names."""
    payload = _json_object(body, '{"inputs": text or [[text], [text], ...]}')
    _check_fields(payload, TEI_FIELDS)
    if payload.get("raw_scores") not in (None, False):
        raise ApiError(422, "raw_scores is not supported: loraclf answers with the model's calibrated "
                            "probabilities (scores for regression)")
    if payload.get("truncate") not in (None, True, False):
        raise ApiError(422, "'truncate' must be true or false")
    direction = payload.get("truncation_direction")
    if direction not in (None, "right", "Right"):
        raise ApiError(422, "truncation_direction must be right: loraclf keeps the start of a text and cuts "
                            "it at the model's max_length tokens")
    field_model = payload.get("model")
    if model is not None and field_model is not None and model != field_model:
        raise ApiError(422, "the 'model' query parameter and the 'model' field name different models")
    name = _model_name(model if model is not None else field_model, pool)
    inputs = payload.get("inputs")
    if isinstance(inputs, str):
        return name, check_texts([inputs], opts, "inputs"), True
    if not isinstance(inputs, list):
        raise ApiError(422, "'inputs' must be a text, [text] or a batch [[text], [text], ...]")
    if inputs and all(isinstance(t, str) for t in inputs):
        if len(inputs) == 1:
            return name, check_texts(inputs, opts, "inputs"), True
        if len(inputs) == 2:
            raise ApiError(422, f"'inputs' [text, text] is a text pair; {NO_PAIRS} (a batch is [[text], [text]])")
        raise ApiError(422, "'inputs' as a list of strings is one input: a batch is [[text], [text], ...]")
    return name, check_texts([_tei_one(item, i) for i, item in enumerate(inputs)], opts, "inputs"), False


def parse_vllm(body: bytes, pool: ModelPool, opts: ServeOptions) -> tuple[str, list[str]]:
    """A vLLM ``/classify`` request: ``{"model": name, "input": text or [texts]}``; options loraclf cannot
    honour (token ids, chat messages, other truncation, raw logits) are refused, not ignored."""
    payload = _json_object(body, '{"model": name, "input": text or [texts]}')
    if "messages" in payload:
        raise ApiError(422, "chat 'messages' are not supported: send the text as 'input'")
    _check_fields(payload, VLLM_FIELDS)
    honoured = {"priority": 0, "truncate_prompt_tokens": -1, "truncation_side": "right", "add_special_tokens": True,
                "use_activation": True}  # what loraclf does anyway; any other value is refused, not ignored
    for key, only in honoured.items():
        value = payload.get(key)
        if value is not None and (value != only or type(value) is not type(only)):
            raise ApiError(422, f"'{key}' may only be {json.dumps(only)} here: loraclf cuts each text at its "
                                "model's max_length tokens, adds its special tokens and returns probabilities")
    for key in ("user", "request_id"):
        if payload.get(key) is not None and not isinstance(payload[key], str):
            raise ApiError(422, f"'{key}' must be a string")
    name = _model_name(payload.get("model"), pool)
    texts = payload.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, list) and texts and all(isinstance(t, int) or isinstance(t, list) for t in texts):
        raise ApiError(422, "token ids are not supported: send 'input' as text")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ApiError(422, "'input' must be a string or a list of strings")
    return name, check_texts(texts, opts)


def tei_predictions(records: list[dict], labels: list[str]) -> list[list[dict]]:
    """Per text, TEI's predictions: every label with its score, best first. Multi-label: each label's own
    probability (they need not sum to 1). Regression: one prediction, named after the target."""
    out = []
    for rec in records:
        if "probabilities" in rec:
            preds = [{"label": lab, "score": p} for lab, p in rec["probabilities"].items()]
            out.append(sorted(preds, key=lambda x: -x["score"]))
        else:
            out.append([{"label": labels[0] if labels else "score", "score": rec["score"]}])
    return out


def vllm_data(records: list[dict], labels: list[str]) -> list[dict]:
    """vLLM's ``data``: per text the best label, every label's probability in the model's label order and
    the number of labels. Multi-label adds ``labels``, those past their thresholds; regression gives its
    score as the one ``probs`` value."""
    out = []
    for i, rec in enumerate(records):
        if "probabilities" in rec:
            probs = list(rec["probabilities"].values())
            item = {"index": i, "label": list(rec["probabilities"])[probs.index(max(probs))], "probs": probs,
                    "num_classes": len(probs)}
            if "labels" in rec:
                item["labels"] = rec["labels"]
        else:
            item = {"index": i, "label": labels[0] if labels else None, "probs": [rec["score"]], "num_classes": 1}
        out.append(item)
    return out


# --------------------------------------------------------------------------- auth


def read_api_keys(path: str) -> tuple[str, ...]:
    """The bearer tokens of ``--api-key-file``: one a line, blank lines and # comments ignored. Errors
    name the file and the line, never a key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise LoraclfError(f"--api-key-file {path}: cannot read it ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise LoraclfError(f"--api-key-file {path}: not UTF-8 text") from None
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if not all(33 <= ord(c) <= 126 for c in key):
            raise LoraclfError(f"--api-key-file {path}: the key on line {n} holds a space or a character outside "
                               "printable ASCII (an Authorization header cannot carry it)")
        keys.append(key)
    if not keys:
        raise LoraclfError(f"--api-key-file {path}: no keys in it (one a line; blank lines and # comments are "
                           "ignored)")
    return tuple(dict.fromkeys(keys))


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()  # equal lengths: compare_digest then leaks no key's length


def exposure_warning(opts: ServeOptions) -> Optional[str]:
    """The warning for a server bound beyond loopback, saying whether auth is on; None on loopback."""
    if opts.host in ("127.0.0.1", "localhost", "::1"):
        return None
    if opts.api_keys:
        return (f"warning: serving on {opts.host}: reachable from the network; bearer-token auth is on "
                f"({len(opts.api_keys)} key{'s' if len(opts.api_keys) > 1 else ''}), but over plain HTTP: put a "
                "reverse proxy that terminates TLS in front, so keys never cross the network in the clear")
    return (f"warning: serving on {opts.host}: reachable from the network, without authentication: pass "
            "--api-key-file, or put it behind a proxy that authenticates, or bind 127.0.0.1")


# --------------------------------------------------------------------------- the app

PATHS = frozenset({"/v1/classify", "/v1/models", "/health", "/metrics", "/predict", "/classify"})


def _error(status: int, message: str, headers: Optional[dict] = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"status": status, "message": printable(message)}}, status_code=status,
                        headers=headers)


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
    app.add_middleware(Guard, metrics=metrics, api_keys=opts.api_keys)
    _error_handlers(app)
    _routes(app, pool, opts, metrics, state)
    return app


class Guard:
    """ASGI middleware around every request: bearer-token auth (all paths but /health), then its status
    and latency in /metrics by path (unknown paths as "other": bounded labels). An exception no handler
    answered becomes a 500 in the server's JSON shape, logged and counted like any other answer."""

    def __init__(self, app, metrics: Metrics, api_keys: tuple[str, ...] = ()):
        self.app, self.metrics = app, metrics
        self.digests = [_digest(k.encode()) for k in api_keys]

    def authorized(self, scope) -> Optional[str]:
        """None when the request may pass, else why not (never quoting what it sent)."""
        if not self.digests or scope["path"] == "/health":
            return None
        header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        if header is None:
            return "this server requires an API key: send the header Authorization: Bearer <key>"
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return "the Authorization header must be: Bearer <key>"
        digest, ok = _digest(token.strip()), False
        for known in self.digests:  # every key compared, in constant time: no early exit to time
            ok |= hmac.compare_digest(digest, known)
        return None if ok else "the API key is not valid"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), None

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refused = self.authorized(scope)
            if refused is not None:
                await _error(401, refused, {"WWW-Authenticate": "Bearer"})(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        except Exception as e:  # noqa: BLE001 - a bug of ours or of a library: one request fails, in our shape
            log.error("%s %s failed: %s: %s", scope.get("method"), printable(scope["path"][:200]), type(e).__name__,
                      e, exc_info=e)
            if status is None:
                await _error(500, f"internal error ({type(e).__name__}); see the server log")(
                    scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in PATHS else "other"
            code = str(status or 500)
            self.metrics.requests.labels(path, code).inc()
            if (status or 500) >= 400:
                self.metrics.errors.labels(path, code).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - t0)


def _error_handlers(app) -> None:
    """The framework's own errors (unknown path, wrong method, its validation, an exception) in the
    server's shape, ``{"error": {"status": N, "message": "..."}}``."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        path = request.url.path if len(request.url.path) <= 100 else request.url.path[:100] + "..."
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404:
            message = f"no such path: {path} (endpoints: {', '.join(sorted(PATHS))})"
        elif exc.status_code == 405:
            allow = (headers or {}).get("Allow", "")
            message = f"method {request.method} is not allowed on {path}" + (f"; use {allow}" if allow else "")
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        parts = ["/".join(str(x) for x in e.get("loc", ())) + ": " + str(e.get("msg", "")) for e in errors[:3]]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        return _error(422, "invalid request: " + "; ".join(parts) + more)

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):  # reached only if Guard itself failed
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")


def _routes(app, pool: ModelPool, opts: ServeOptions, metrics: Metrics, state: dict) -> None:
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    async def classified(name: str, texts: list[str]) -> tuple[Any, list[dict]]:
        task, outputs = await state["batcher"].submit(name, texts)
        metrics.texts.labels(name).inc(len(texts))
        return task, task.records(outputs)

    @app.post("/v1/classify")
    async def classify(request: Request):
        try:
            name, texts = parse_request(await read_body(request, opts.max_body_bytes), pool, opts)
            _, records = await classified(name, texts)
        except ApiError as e:
            return _error(e.status, e.message)
        return {"model": name, "results": records}

    @app.post("/predict")
    async def tei_predict(request: Request):
        try:
            name, texts, single = parse_tei(await read_body(request, opts.max_body_bytes), pool, opts,
                                            request.query_params.get("model"))
            task, records = await classified(name, texts)
        except ApiError as e:
            return _error(e.status, e.message)
        preds = tei_predictions(records, list(task.labels))
        return preds[0] if single else preds

    @app.post("/classify")
    async def vllm_classify(request: Request):
        try:
            name, texts = parse_vllm(await read_body(request, opts.max_body_bytes), pool, opts)
            task, records = await classified(name, texts)
        except ApiError as e:
            return _error(e.status, e.message)
        return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": name,
                "data": vllm_data(records, list(task.labels)),
                # loraclf does not count tokens: usage is there for clients that read it, as zeros
                "usage": {"prompt_tokens": 0, "total_tokens": 0, "completion_tokens": 0,
                          "prompt_tokens_details": None}}

    # Listing reads the models folder and each model's loraclf.json: in a thread, off the event loop
    @app.get("/v1/models")
    async def list_models():
        return {"models": await run_in_threadpool(pool.describe)}

    @app.get("/health")
    async def health():
        names = await run_in_threadpool(pool.names)
        return {"status": "ok", "models": len(names), "loaded": len(pool.loaded)}

    @app.get("/metrics")
    async def prometheus():
        metrics.read_pool(pool)
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
    warning = exposure_warning(opts)
    if warning:  # on stderr whatever -q says: -q quiets the loraclf logger, and this must never be missed
        print(warning, file=sys.stderr)
    shown = ", ".join(models[:10]) + (f" and {len(models) - 10} more" if len(models) > 10 else "")
    shown = shown or f"the models of {models_dir}"
    auth = f"; bearer-token auth on ({len(opts.api_keys)} key{'s' if len(opts.api_keys) > 1 else ''})" \
        if opts.api_keys else ""
    print(f"serving {shown} on http://{opts.host}:{opts.port}{auth} (Ctrl-C to stop)", file=sys.stderr)
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
