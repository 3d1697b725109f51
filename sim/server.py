"""An embeddings server with dynamic batching: OpenAI's embeddings API on FastAPI.

:func:`create_app` wraps a :class:`~serrano.sim.model.Model` in a FastAPI application:

- ``POST /v1/embeddings``: the OpenAI embeddings API (``input`` a string or a list of
  strings, ``model``, ``encoding_format`` ``"float"`` or ``"base64"``, and Serrano's
  ``priority``); each input is one request to the batcher, and the HTTP response waits for
  all of its inputs;
- ``GET /v1/models``: the one model served, in OpenAI's list format;
- ``GET /health``: ``{"status": "ok", ...}`` while the batch worker runs (503 otherwise);
- ``GET /metrics``: Prometheus text format (requests by status, inputs, batches, batch sizes
  and tokens, device time per batch and per input, queue time, timeouts, rejections, device
  cycles and the modeled energy).

Requests from concurrent clients go through one :class:`~serrano.sim.batcher.Batcher` on
``time.monotonic``; a worker thread (:class:`EmbeddingWorker`) takes each batch the policy
forms and runs ``model.embed`` on it. Device time is the model's cycle count on a
cycle-accurate backend (``model.stats.cycles``), or ``service_cycles(lengths)`` when the
backend counts none (the golden model), at ``mhz``; queue time is wall time (the simulated
chip is far slower than a real one would be, so the wall-time figures are the host's, not
the chip's). Bad requests are answered with their 4xx status and an OpenAI-style error
``{"error": {"message", "type", "param", "code"}}``; the server keeps serving.
"""

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .batcher import Batcher, BatchPolicy, QueueFull, RequestTooLarge

__all__ = ["create_app", "EmbeddingWorker", "Metrics", "ApiError", "MAX_INPUTS"]

#: The most inputs one request may carry (OpenAI's limit).
MAX_INPUTS = 2048


class ApiError(Exception):
    """An error answered with ``status`` and an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class InputTimeout(Exception):
    """An input that waited past its timeout in the queue."""


class ShuttingDown(Exception):
    """An input still queued when the server stopped."""


# ---- metrics -------------------------------------------------------------------------------
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_SECONDS_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0)
_QUANTILES = (0.5, 0.9, 0.99)


class _Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum, self.count = 0.0, 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.9g}",
                f"{name}_count {self.count}"]
        return out


class _Summary:
    """Quantiles over the last ``window`` observations, and the sum and count of all."""

    def __init__(self, window: int = 10_000):
        self.recent: collections.deque = collections.deque(maxlen=window)
        self.sum, self.count = 0.0, 0

    def observe(self, v: float) -> None:
        self.recent.append(v)
        self.sum += v
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = []
        if self.recent:
            qs = np.quantile(np.fromiter(self.recent, float), _QUANTILES)
            out = [f'{name}{{quantile="{q:g}"}} {v:.9g}' for q, v in zip(_QUANTILES, qs)]
        return out + [f"{name}_sum {self.sum:.9g}", f"{name}_count {self.count}"]


class Metrics:
    """The server's counters, histograms and summaries; :meth:`render` writes them in the
    Prometheus text exposition format (version 0.0.4). Thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.http = collections.Counter()           # status code -> responses
        self.inputs = 0
        self.tokens = 0
        self.batches = 0
        self.failed_batches = 0
        self.timeouts = 0
        self.rejected = 0
        self.device_cycles = 0
        self.device_seconds = 0.0
        self.energy = 0.0                           # modeled joules
        self.batch_size = _Histogram(_SIZE_BUCKETS)
        self.batch_tokens = _Histogram(_TOKEN_BUCKETS)
        self.batch_device = _Histogram(_SECONDS_BUCKETS)
        self.input_device = _Summary()
        self.input_queue = _Summary()
        self.input_wall = _Summary()

    def render(self, *, info: dict, queue_length: int) -> str:
        with self.lock:
            labels = ",".join(f'{k}="{_escape(str(v))}"' for k, v in info.items())
            m: list[tuple[str, str, str, list[str]]] = [
                ("serrano_info", "gauge", "What this server serves (value 1).",
                 [f"serrano_info{{{labels}}} 1"]),
                ("serrano_http_requests_total", "counter",
                 "Responses to POST /v1/embeddings by HTTP status code.",
                 [f'serrano_http_requests_total{{code="{c}"}} {n}'
                  for c, n in sorted(self.http.items())]),
                ("serrano_inputs_total", "counter", "Inputs (texts) embedded.",
                 [f"serrano_inputs_total {self.inputs}"]),
                ("serrano_tokens_total", "counter", "Tokens of the inputs embedded.",
                 [f"serrano_tokens_total {self.tokens}"]),
                ("serrano_batches_total", "counter", "Batches run on the accelerator.",
                 [f"serrano_batches_total {self.batches}"]),
                ("serrano_failed_batches_total", "counter", "Batches whose run raised.",
                 [f"serrano_failed_batches_total {self.failed_batches}"]),
                ("serrano_timeouts_total", "counter", "Inputs timed out in the queue.",
                 [f"serrano_timeouts_total {self.timeouts}"]),
                ("serrano_rejected_total", "counter", "Inputs rejected (queue full).",
                 [f"serrano_rejected_total {self.rejected}"]),
                ("serrano_queue_length", "gauge", "Inputs waiting in the batcher's queue.",
                 [f"serrano_queue_length {queue_length}"]),
                ("serrano_batch_size", "histogram", "Inputs per batch.",
                 self.batch_size.lines("serrano_batch_size")),
                ("serrano_batch_tokens", "histogram",
                 "Device tokens per batch (padding included when padded).",
                 self.batch_tokens.lines("serrano_batch_tokens")),
                ("serrano_batch_device_seconds", "histogram",
                 "Device time per batch (modeled: cycles at the stated clock).",
                 self.batch_device.lines("serrano_batch_device_seconds")),
                ("serrano_input_device_seconds", "summary",
                 "Device time of each input's batch (quantiles over the last 10000 inputs).",
                 self.input_device.lines("serrano_input_device_seconds")),
                ("serrano_input_queue_seconds", "summary",
                 "Wall time each input waited in the queue.",
                 self.input_queue.lines("serrano_input_queue_seconds")),
                ("serrano_input_wall_seconds", "summary",
                 "Wall time from an input's arrival to its answer (the host's simulation "
                 "time, not the chip's).", self.input_wall.lines("serrano_input_wall_seconds")),
                ("serrano_device_cycles_total", "counter", "Accelerator cycles of all batches.",
                 [f"serrano_device_cycles_total {self.device_cycles}"]),
                ("serrano_device_seconds_total", "counter", "Modeled device time of all batches.",
                 [f"serrano_device_seconds_total {self.device_seconds:.9g}"]),
                ("serrano_modeled_energy_joules_total", "counter",
                 "Modeled energy (model.stats.energy: a 45 nm estimate, not a measurement).",
                 [f"serrano_modeled_energy_joules_total {self.energy:.9g}"]),
            ]
        out = []
        for name, kind, text, lines in m:
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *lines]
        return "\n".join(out) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# ---- the batch worker ----------------------------------------------------------------------
@dataclass
class _Input:
    text: str
    future: concurrent.futures.Future


class EmbeddingWorker:
    """The real-time batching loop: a thread that forms batches with a :class:`Batcher` on
    ``clock`` and runs ``model.embed`` on each.

    Parameters
    ----------
    model : Model
    policy : BatchPolicy
    service_cycles : callable or None
        Device cycles of a batch from its device token counts, used when the backend counts
        no cycles (golden). ``None`` with such a backend: no device time.
    mhz : float
        The clock that turns cycles into device seconds.
    metrics : Metrics
    """

    def __init__(self, model, policy: BatchPolicy, *, metrics: Metrics,
                 service_cycles: Callable[[Sequence[int]], int] | None = None,
                 mhz: float = 150.0, clock: Callable[[], float] = time.monotonic):
        if not (isinstance(mhz, (int, float)) and math.isfinite(mhz) and mhz > 0):
            raise ValueError(f"mhz must be a positive clock in MHz, not {mhz!r}")
        self.model, self.policy, self.metrics = model, policy, metrics
        self.service_cycles, self.mhz, self.clock = service_cycles, float(mhz), clock
        self.batcher = Batcher(policy, record=False)
        self._cond = threading.Condition()
        self._stopping = False
        self._ids = 0
        self._thread = threading.Thread(target=self._run, name="serrano-batcher", daemon=True)

    # -- control
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking batches, fail what is still queued, wait for the running batch."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def queue_length(self) -> int:
        with self._cond:
            return len(self.batcher)

    # -- submitting
    def submit(self, texts: Sequence[str], tokens: Sequence[int], *, priority: int = 0
               ) -> list[concurrent.futures.Future]:
        """Queue ``texts`` (of ``tokens`` tokens each) as one request each, all or none:
        :class:`QueueFull` if the queue cannot take them all, :class:`RequestTooLarge` if one
        is longer than any batch may be, :class:`ShuttingDown` if the worker stopped."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            free = self.batcher.free_slots
            if free is not None and free < len(texts):
                with self.metrics.lock:
                    self.metrics.rejected += len(texts)
                raise QueueFull(f"the queue is full ({self.policy.max_queue_length} inputs "
                                f"waiting at most; {free} free, {len(texts)} asked)")
            p = self.policy
            for n in tokens:                 # (checked first: all or none are queued)
                if p.max_batch_tokens is not None and p.batch_tokens([n]) > p.max_batch_tokens:
                    raise RequestTooLarge(f"an input of {n} tokens exceeds max_batch_tokens "
                                          f"({p.max_batch_tokens})")
            now = self.clock()
            futures = []
            for text, n in zip(texts, tokens):
                self._ids += 1
                fut: concurrent.futures.Future = concurrent.futures.Future()
                self.batcher.submit(self._ids, n, now, priority=priority,
                                    payload=_Input(text, fut))
                futures.append(fut)
            self._cond.notify_all()
        return futures

    # -- timeouts
    def _reap_locked(self, now: float) -> None:
        expired = self.batcher.expire(now)
        if expired:
            with self.metrics.lock:
                self.metrics.timeouts += len(expired)
        for r in expired:
            _fail(r.payload.future, InputTimeout(
                f"timed out after {now - r.arrival:.3f} s in the queue (timeout "
                f"{r.deadline - r.arrival:g} s)"))

    def reap(self) -> None:
        """Answer the inputs whose timeout has passed. The loop does this between batches;
        a request handler calls it at its deadline, since a batch may be running then."""
        with self._cond:
            self._reap_locked(self.clock())

    # -- the loop
    def _next_batch(self):
        """Wait for the batcher's next batch (``None``: stopping)."""
        with self._cond:
            while True:
                now = self.clock()
                self._reap_locked(now)
                if self._stopping:
                    return None
                batch = self.batcher.poll(now)
                if batch is not None:
                    return batch
                wake = self.batcher.wake_time(now)
                self._cond.wait(None if wake is None else max(wake - now, 1e-4))

    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._run_batch(batch)
        finally:
            self._drain()

    def _run_batch(self, batch) -> None:
        texts = [r.payload.text for r in batch.requests]
        stats = self.model.stats
        cycles0, energy0 = stats.cycles, stats.energy.get("total", 0.0)
        try:
            emb = self.model.embed(texts, batch_size=len(texts))
        except Exception as exc:          # answer the batch's inputs; keep serving
            with self._cond:
                self.batcher.complete(batch.id, failed=True)
            with self.metrics.lock:
                self.metrics.failed_batches += 1
            for r in batch.requests:
                _fail(r.payload.future, exc)
            return
        cycles = stats.cycles - cycles0
        if not cycles and self.service_cycles is not None:
            cycles = int(self.service_cycles(batch.device_lengths))
        device = cycles / (self.mhz * 1e6) if cycles else None
        now = self.clock()
        with self._cond:
            pairs = self.batcher.complete(batch.id, {r.id: emb[i]
                                                     for i, r in enumerate(batch.requests)})
        m = self.metrics
        with m.lock:
            m.batches += 1
            m.inputs += batch.size
            m.tokens += sum(batch.lengths)
            m.batch_size.observe(batch.size)
            m.batch_tokens.observe(batch.tokens)
            m.device_cycles += cycles
            m.energy += stats.energy.get("total", 0.0) - energy0
            if device is not None:
                m.device_seconds += device
                m.batch_device.observe(device)
            for r in batch.requests:
                m.input_queue.observe(batch.formed - r.arrival)
                m.input_wall.observe(now - r.arrival)
                if device is not None:
                    m.input_device.observe(device)
        for r, e in pairs:
            _resolve(r.payload.future, e)

    def _drain(self) -> None:
        with self._cond:
            self._stopping = True
            now = self.clock()
            rest = self.batcher.expire(now) + self.batcher.cancel(now)
        for r in rest:
            _fail(r.payload.future, ShuttingDown("the server is shutting down"))


def _resolve(fut: concurrent.futures.Future, value) -> None:
    try:
        fut.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass                              # cancelled: its client went away


def _fail(fut: concurrent.futures.Future, exc: BaseException) -> None:
    try:
        fut.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass


async def _wait(worker: EmbeddingWorker, futures, timeout: float | None) -> list:
    """The results of ``futures``; at the inputs' deadline, time out those still queued
    (those already in a batch are waited for)."""
    waits = [asyncio.wrap_future(f) for f in futures]
    if timeout is not None:
        _, pending = await asyncio.wait(waits, timeout=timeout + 1e-3)   # (timers may fire early)
        if pending:
            worker.reap()
    return await asyncio.gather(*waits)


# ---- the HTTP layer ------------------------------------------------------------------------
def _parse(body: bytes, name: str, hidden: int) -> tuple[list[str], str, int]:
    """The inputs, encoding format and priority of an embeddings request (``ApiError``
    400/404)."""
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(req, dict):
        raise ApiError(400, f"the request body must be a JSON object, not "
                            f"{type(req).__name__}")
    model = req.get("model")
    if model is not None and model != name:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {name!r}",
                       param="model", code="model_not_found")
    if "input" not in req:
        raise ApiError(400, "'input' is required: a string or a list of strings",
                       param="input")
    inp = req["input"]
    if isinstance(inp, str):
        inputs = [inp]
    elif isinstance(inp, list):
        if not inp:
            raise ApiError(400, "'input' is an empty list: give at least one string",
                           param="input")
        if len(inp) > MAX_INPUTS:
            raise ApiError(400, f"'input' has {len(inp)} strings; at most {MAX_INPUTS} per "
                                f"request", param="input")
        for i, v in enumerate(inp):
            if not isinstance(v, str):
                what = ("token ids are not supported: send strings"
                        if isinstance(v, (int, list)) and not isinstance(v, bool)
                        else f"must be a string, not {type(v).__name__}")
                raise ApiError(400, f"input[{i}] {what}", param="input")
        inputs = inp
    else:
        raise ApiError(400, f"'input' must be a string or a list of strings, not "
                            f"{type(inp).__name__}", param="input")
    for i, v in enumerate(inputs):
        if not v.strip():
            raise ApiError(400, f"input[{i}] is empty", param="input")
    fmt = req.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, f"encoding_format must be 'float' or 'base64', not {fmt!r}",
                       param="encoding_format")
    dims = req.get("dimensions")
    if dims is not None and dims != hidden:
        raise ApiError(400, f"this model's embeddings have {hidden} dimensions; it cannot "
                            f"give {dims!r}", param="dimensions")
    # (a Serrano extension: the batcher's priority, 0 first; OpenAI clients send it with
    # extra_body)
    priority = req.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise ApiError(400, f"priority must be a non-negative integer (0 is served first), "
                            f"not {priority!r}", param="priority")
    return inputs, fmt, priority


def create_app(model, *, name: str, policy: BatchPolicy | None = None,
               service_cycles: Callable[[Sequence[int]], int] | None = None,
               mhz: float = 150.0, max_tokens: int | None = None,
               info: dict | None = None):
    """The FastAPI application serving ``model`` under the name ``name``.

    Parameters
    ----------
    model : Model
        What ``embed`` runs on (any backend).
    name : str
        The model name clients must send (or omit) in ``model``.
    policy : BatchPolicy or None
        The batcher's policy (default ``BatchPolicy()``: up to 8 inputs, no queue delay).
    service_cycles, mhz
        Device time: see :class:`EmbeddingWorker`.
    max_tokens : int or None
        The longest input accepted, in tokens (default and at most: ``model.max_tokens``);
        longer inputs are refused (400), never truncated.
    info : dict or None
        Extra labels of the ``serrano_info`` metric (e.g. the backend, the service model).

    The batch worker starts and stops with the application's lifespan (uvicorn's startup
    and shutdown).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    policy = BatchPolicy() if policy is None else policy
    limit = model.max_tokens if max_tokens is None else min(max_tokens, model.max_tokens)
    hidden = model.weights.config.hidden
    metrics = Metrics()
    labels = {"model": name, "backend": model.backend_name, "policy": policy.describe(),
              "mhz": f"{mhz:g}", **(info or {})}
    holder: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker = EmbeddingWorker(model, policy, metrics=metrics, service_cycles=service_cycles,
                                 mhz=mhz)
        worker.start()
        holder["worker"] = worker
        try:
            yield
        finally:
            # (in a thread: the running batch may take a while, and the loop must go on)
            await asyncio.to_thread(worker.stop)

    app = FastAPI(title="Serrano embeddings", lifespan=lifespan,
                  description="OpenAI-compatible embeddings on the simulated Serrano "
                              "accelerator, with dynamic batching.")
    app.state.metrics = metrics

    def _count(code: int) -> None:
        with metrics.lock:
            metrics.http[code] += 1

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        try:
            inputs, fmt, priority = _parse(await request.body(), name, hidden)
            tokens = []
            for i, text in enumerate(inputs):
                # Untruncated: a text longer than the limit is refused, never cut.
                n = len(model.tokenizer.encode(text).ids)
                if n > limit:
                    raise ApiError(400, f"input[{i}] has {n} tokens; this model takes at most "
                                        f"{limit}", param="input", code="input_too_long")
                tokens.append(n)
            worker = holder.get("worker")
            if worker is None or not worker.alive:
                raise ApiError(503, "the server is not running its batch worker",
                               type="server_error")
            try:
                futures = worker.submit(inputs, tokens, priority=priority)
            except QueueFull as exc:
                raise ApiError(429, f"too many requests: {exc}; retry later",
                               type="rate_limit_error", code="queue_full",
                               headers={"Retry-After": "1"}) from None
            except RequestTooLarge as exc:
                raise ApiError(400, f"an input is too long for this server's batches: {exc}",
                               param="input", code="input_too_long") from None
            except ShuttingDown as exc:
                raise ApiError(503, str(exc), type="server_error") from None
            try:
                rows = await _wait(worker, futures, policy.timeout)
            except InputTimeout as exc:
                raise ApiError(503, f"an input {exc}; the server is overloaded, retry later",
                               type="server_error", code="timeout") from None
            except ShuttingDown as exc:
                raise ApiError(503, str(exc), type="server_error") from None
            except Exception as exc:
                raise ApiError(500, f"the accelerator failed on this batch: "
                                    f"{type(exc).__name__}: {exc}", type="server_error") from None
        except ApiError as exc:
            _count(exc.status)
            raise
        data = []
        for i, e in enumerate(rows):
            e = np.asarray(e, dtype=np.float32)
            vec = (base64.b64encode(e.astype("<f4").tobytes()).decode() if fmt == "base64"
                   else e.tolist())
            data.append({"object": "embedding", "index": i, "embedding": vec})
        _count(200)
        n = sum(tokens)
        return {"object": "list", "data": data, "model": name,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list",
                "data": [{"id": name, "object": "model", "owned_by": "serrano"}]}

    @app.get("/health")
    async def health():
        worker = holder.get("worker")
        ok = worker is not None and worker.alive
        body = {"status": "ok" if ok else "unavailable", "model": name,
                "backend": model.backend_name,
                "queue_length": worker.queue_length() if worker else 0,
                "max_tokens": limit, "policy": policy.describe()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics_endpoint():
        worker = holder.get("worker")
        text = metrics.render(info=labels, queue_length=worker.queue_length() if worker else 0)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return app
