"""Dynamic batching: a request queue with Triton's policies, and a discrete-event simulation.

:class:`Batcher` is the pure core: it never reads a clock, every call takes the time ``now``
(seconds) as an argument, so the same code runs against a fake clock in the tests, against the
event clock of :func:`simulate` and against ``time.monotonic`` in the server
(``sim/server.py``). Its policy is a frozen :class:`BatchPolicy`: maximum batch size in
requests and in tokens, maximum queue delay, preferred batch sizes, maximum queue length with
rejection, a per-request timeout, priorities, packed or padded batches. Every request is
answered exactly once (done, failed, timed out or rejected); the batcher raises if one would
be answered twice and :meth:`Batcher.check` asserts none was lost.

:func:`simulate` drives a batcher with arrivals (:func:`poisson_arrivals` or
:func:`read_trace`) in device time: one or more accelerator replicas serve its batches, each
taking ``service_cycles(lengths) / (mhz * 1e6)`` seconds, where ``service_cycles`` is any
callable from the token counts of a batch's requests to accelerator cycles (the calibrated
cycle model of the encoder, or an explicitly assumed :class:`LinearService`). ``docs/serving.md``
states the semantics.
"""

import bisect
import csv
import heapq
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = ["BatchPolicy", "Request", "Batch", "Batcher", "QueueFull", "RequestTooLarge",
           "LinearService", "LinearEnergy", "service_from_spec", "service_label", "Lengths",
           "Arrival", "poisson_arrivals", "read_trace", "parse_seconds", "SimResult",
           "simulate", "load_point", "OUTCOMES"]

#: How a request can be answered.
OUTCOMES = ("done", "failed", "timeout", "rejected")


def _positive_int(name: str, v, *, optional: bool = False) -> None:
    if optional and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if optional else ''}, "
                         f"not {v!r}")


def _seconds(name: str, v, *, positive: bool, optional: bool = False) -> None:
    if optional and v is None:
        return
    ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
          and (v > 0 if positive else v >= 0))
    if not ok:
        what = "a positive" if positive else "a non-negative"
        raise ValueError(f"{name} must be {what} number of seconds"
                         f"{' or None' if optional else ''}, not {v!r}")


@dataclass(frozen=True, kw_only=True)
class BatchPolicy:
    """How the batcher forms batches (the names and meanings of Triton's dynamic batcher).

    Parameters
    ----------
    max_batch_requests : int
        At most this many requests in a batch.
    max_batch_tokens : int or None
        At most this many device tokens in a batch (:meth:`batch_tokens`: the sum of the
        lengths when packed, size x padded length when padded). A request longer than this
        alone is refused at submission (:class:`RequestTooLarge`).
    max_queue_delay : float
        Seconds a batch may wait for more requests, counted from the arrival of its oldest
        request; 0 (the default): send whatever is queued as soon as a replica is free.
    preferred_batch_sizes : sequence of int
        Sizes to aim for (each at most ``max_batch_requests``): a batch of the largest is sent
        at once when that many requests are queued; when the delay expires or the batch is
        full, it is cut to the largest preferred size it reaches (sent whole if it reaches
        none).
    max_queue_length : int or None
        Requests waiting beyond this are rejected at submission (:class:`QueueFull`).
    timeout : float or None
        Default per-request timeout: a request still queued ``timeout`` seconds after its
        arrival is answered ``"timeout"`` at that instant (a dispatched request never times
        out). :meth:`Batcher.submit` can set another per request.
    padded : bool
        Padded batches: with more than one request, every request is padded to the longest
        rounded up to ``pad_block`` tokens (the device processes the padding). ``False``: packed
        (the device processes only the real tokens).
    pad_block : int
        The padded length's granularity (default 1: ``Model.run(packed=False)`` pads to the
        longest sequence, at any length).

    Requests are served in priority order (0 first, larger numbers later), then in arrival
    order; a batch is a prefix of that order (a request that does not fit ends the batch
    rather than being skipped, so no request is overtaken by a later one of its priority).
    """

    max_batch_requests: int = 8
    max_batch_tokens: int | None = None
    max_queue_delay: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_length: int | None = None
    timeout: float | None = None
    padded: bool = False
    pad_block: int = 1

    def __post_init__(self):
        _positive_int("max_batch_requests", self.max_batch_requests)
        _positive_int("max_batch_tokens", self.max_batch_tokens, optional=True)
        _seconds("max_queue_delay", self.max_queue_delay, positive=False)
        _positive_int("max_queue_length", self.max_queue_length, optional=True)
        _seconds("timeout", self.timeout, positive=True, optional=True)
        if not isinstance(self.padded, bool):
            raise ValueError(f"padded must be True or False, not {self.padded!r}")
        _positive_int("pad_block", self.pad_block)
        pref = self.preferred_batch_sizes
        if isinstance(pref, (str, bytes)) or not isinstance(pref, Iterable):
            raise ValueError(f"preferred_batch_sizes must be a sequence of positive integers, "
                             f"not {pref!r}")
        pref = tuple(pref)
        for p in pref:
            _positive_int("each preferred batch size", p)
            if p > self.max_batch_requests:
                raise ValueError(f"preferred batch size {p} exceeds max_batch_requests "
                                 f"({self.max_batch_requests})")
        if len(set(pref)) != len(pref):
            raise ValueError(f"preferred_batch_sizes has duplicates: {pref!r}")
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(int(p) for p in pref)))

    def device_lengths(self, lengths: Sequence[int]) -> tuple[int, ...]:
        """The token counts the device processes for a batch of requests of ``lengths``
        tokens: the lengths themselves when packed; when padded (and more than one request),
        each the longest rounded up to ``pad_block``."""
        lengths = tuple(int(t) for t in lengths)
        if not self.padded or len(lengths) < 2:
            return lengths
        t = -(-max(lengths) // self.pad_block) * self.pad_block
        return (t,) * len(lengths)

    def batch_tokens(self, lengths: Sequence[int]) -> int:
        """The device tokens of a batch (what ``max_batch_tokens`` limits)."""
        return sum(self.device_lengths(lengths))

    def describe(self) -> str:
        """``max_batch_requests`` and the other fields that differ from the defaults, as
        ``name=value`` (for tables)."""
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v != f.default or f.name == "max_batch_requests":
                parts.append(f"{f.name}={v}")
        return ", ".join(parts)

    @classmethod
    def from_spec(cls, spec: str) -> "BatchPolicy":
        """A policy from ``name=value`` pairs separated by commas, e.g.
        ``max_batch_requests=16,max_queue_delay=2ms,preferred_batch_sizes=4/8,padded=true``
        (times take ``s``, ``ms`` or ``us``; lists use ``/``)."""
        kw: dict[str, Any] = {}
        names = {f.name: f for f in fields(cls)}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, eq, text = item.partition("=")
            key = key.strip()
            if not eq or key not in names:
                raise ValueError(f"bad policy item {item!r}: use NAME=VALUE with NAME one of "
                                 f"{', '.join(names)}")
            text = text.strip()
            if key in ("max_queue_delay", "timeout"):
                kw[key] = None if text == "none" else parse_seconds(text)
            elif key == "preferred_batch_sizes":
                kw[key] = tuple(int(v) for v in text.split("/") if v)
            elif key == "padded":
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"padded must be true or false, not {text!r}")
                kw[key] = text.lower() in ("true", "1")
            else:
                try:
                    kw[key] = None if text == "none" else int(text)
                except ValueError:
                    raise ValueError(f"{key} must be an integer, not {text!r}") from None
        return cls(**kw)


def parse_seconds(text: str) -> float:
    """``"2ms"``, ``"150us"``, ``"0.5s"`` or ``"0.5"`` (seconds) as seconds."""
    t = text.strip().lower()
    for suffix, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if t.endswith(suffix):
            t, factor = t[:-len(suffix)], scale
            break
    else:
        factor = 1.0
    try:
        return float(t) * factor
    except ValueError:
        raise ValueError(f"bad time {text!r}: use a number with s, ms or us") from None


class QueueFull(Exception):
    """A request refused because the queue holds ``max_queue_length`` requests."""


class RequestTooLarge(ValueError):
    """A request that no batch of the policy can hold (more tokens than
    ``max_batch_tokens``)."""


@dataclass(frozen=True)
class Request:
    """A queued request. ``deadline``: when it times out if still queued (``inf``: never)."""
    id: Hashable
    tokens: int
    arrival: float
    priority: int = 0
    deadline: float = math.inf
    seq: int = 0                     # submission order (breaks ties)
    payload: Any = field(default=None, compare=False, repr=False)

    @property
    def order(self) -> tuple:
        """The queue's sort key: priority, then arrival, then submission order."""
        return (self.priority, self.arrival, self.seq)


@dataclass(frozen=True)
class Batch:
    """A dispatched batch: its requests (in queue order) and the time it was formed."""
    id: int
    requests: tuple[Request, ...]
    formed: float
    device_lengths: tuple[int, ...]  # what the device processes (padding included)

    @property
    def size(self) -> int:
        return len(self.requests)

    @property
    def lengths(self) -> tuple[int, ...]:
        """The requests' own token counts."""
        return tuple(r.tokens for r in self.requests)

    @property
    def tokens(self) -> int:
        """Device tokens (padding included when padded)."""
        return sum(self.device_lengths)


class Batcher:
    """A request queue that forms batches by a :class:`BatchPolicy` (``docs/serving.md``).

    Not thread-safe: the server calls it under one lock. Time is an argument of every call
    and must not go backwards.

    Parameters
    ----------
    policy : BatchPolicy
    record : bool
        Keep every request's outcome in :attr:`outcomes` (the simulation and the tests); the
        server keeps only counts.
    """

    def __init__(self, policy: BatchPolicy, *, record: bool = True):
        if not isinstance(policy, BatchPolicy):
            raise TypeError(f"policy must be a BatchPolicy, not {policy!r}")
        self.policy = policy
        self._queue: list[Request] = []            # sorted by Request.order
        self._queued: dict[Hashable, Request] = {}
        self._deadlines: list[tuple[float, int, Hashable]] = []   # heap; lazily cleaned
        self._inflight: dict[int, Batch] = {}
        self._expired: list[Request] = []          # timed out, not yet handed to the caller
        self._live: set[Hashable] = set()          # submitted, not yet answered
        self._seq = 0
        self._batches = 0
        self._now = -math.inf
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.submitted = 0
        self.outcomes: dict[Hashable, str] | None = {} if record else None

    # ---- state --------------------------------------------------------------------------
    def __len__(self) -> int:
        """Requests waiting in the queue."""
        return len(self._queue)

    @property
    def inflight(self) -> int:
        """Batches dispatched and not yet completed."""
        return len(self._inflight)

    @property
    def free_slots(self) -> int | None:
        """Requests the queue can still take (``None``: no limit)."""
        m = self.policy.max_queue_length
        return None if m is None else max(m - len(self._queue), 0)

    def _tick(self, now: float) -> None:
        if not isinstance(now, (int, float)) or math.isnan(now):
            raise ValueError(f"now must be a number of seconds, not {now!r}")
        if now < self._now:
            raise ValueError(f"time went backwards: {now!r} after {self._now!r}")
        self._now = now

    def _answer(self, rid: Hashable, outcome: str) -> None:
        if rid not in self._live:
            raise RuntimeError(f"request {rid!r} answered twice (or never submitted)")
        self._live.remove(rid)
        self.counts[outcome] += 1
        if self.outcomes is not None:
            self.outcomes[rid] = outcome

    # ---- submitting ---------------------------------------------------------------------
    def submit(self, rid: Hashable, tokens: int, now: float, *, priority: int = 0,
               timeout: float | None = None, payload: Any = None) -> Request:
        """Queue a request of ``tokens`` tokens arriving at ``now``.

        ``timeout`` overrides the policy's. Raises :class:`QueueFull` (the request is then
        answered ``"rejected"``), :class:`RequestTooLarge` if no batch can hold it (also
        ``"rejected"``), ``ValueError`` for a bad argument or an id already live.
        """
        self._tick(now)
        _positive_int("tokens", tokens)
        if isinstance(priority, bool) or not isinstance(priority, (int, np.integer)) \
                or priority < 0:
            raise ValueError(f"priority must be a non-negative integer, not {priority!r}")
        _seconds("timeout", timeout, positive=True, optional=True)
        if rid in self._live:
            raise ValueError(f"request id {rid!r} is already queued or in a batch")
        if self.outcomes is not None and rid in self.outcomes:
            raise ValueError(f"request id {rid!r} was answered already (ids are unique)")
        self._expire(now)                 # timed-out requests do not hold queue slots
        self.submitted += 1
        self._live.add(rid)
        p = self.policy
        if p.max_batch_tokens is not None and p.batch_tokens([tokens]) > p.max_batch_tokens:
            self._answer(rid, "rejected")
            raise RequestTooLarge(f"a request of {tokens} tokens exceeds max_batch_tokens "
                                  f"({p.max_batch_tokens})")
        if p.max_queue_length is not None and len(self._queue) >= p.max_queue_length:
            self._answer(rid, "rejected")
            raise QueueFull(f"the queue is full ({p.max_queue_length} requests waiting)")
        timeout = p.timeout if timeout is None else timeout
        deadline = math.inf if timeout is None else now + timeout
        self._seq += 1
        req = Request(rid, int(tokens), now, int(priority), deadline, self._seq, payload)
        bisect.insort(self._queue, req, key=lambda r: r.order)
        self._queued[rid] = req
        if deadline < math.inf:
            heapq.heappush(self._deadlines, (deadline, self._seq, rid))
        return req

    # ---- timeouts -----------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        """Move requests whose deadline is at or before ``now`` from the queue to the
        outbox :meth:`expire` empties."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq, rid = heapq.heappop(self._deadlines)
            req = self._queued.get(rid)
            if req is None or req.seq != seq:
                continue                  # dispatched already (lazy deletion)
            i = bisect.bisect_left(self._queue, req.order, key=lambda r: r.order)
            assert self._queue[i] is req
            del self._queue[i]
            del self._queued[rid]
            self._answer(rid, "timeout")
            self._expired.append(req)

    def expire(self, now: float) -> list[Request]:
        """The requests that timed out (at their deadlines, up to ``now``) and were not yet
        returned by an earlier call; each is returned once."""
        self._tick(now)
        self._expire(now)
        out, self._expired = self._expired, []
        return out

    # ---- batching -----------------------------------------------------------------------
    def _candidate(self) -> tuple[int, bool]:
        """How many requests from the head of the queue the next batch can take, and whether
        that batch is full (the next request would exceed a limit)."""
        p, n, longest, total = self.policy, 0, 0, 0
        for r in self._queue:
            if n == p.max_batch_requests:
                return n, True
            if p.max_batch_tokens is not None:
                longer, more = max(longest, r.tokens), total + r.tokens
                # (as device_lengths: one request alone is never padded)
                tokens = ((n + 1) * (-(-longer // p.pad_block) * p.pad_block)
                          if p.padded and n >= 1 else more)
                if tokens > p.max_batch_tokens:
                    return n, True
                longest, total = longer, more
            n += 1
        return n, n == p.max_batch_requests

    def _ready(self, now: float) -> int:
        """How many requests to send as a batch at ``now`` (0: keep waiting)."""
        n, full = self._candidate()
        if n == 0:
            return 0
        pref = self.policy.preferred_batch_sizes
        if pref and n >= pref[-1]:
            return pref[-1]
        oldest = min(r.arrival for r in self._queue[:n])
        if full or now >= oldest + self.policy.max_queue_delay:
            fits = [s for s in pref if s <= n]
            return fits[-1] if fits else n
        return 0

    def poll(self, now: float) -> Batch | None:
        """The batch to dispatch at ``now`` on a free replica, or ``None`` to wait. Call it
        only when a replica is free (a busy chip takes nothing); requests timed out by ``now``
        are never in it (they go to :meth:`expire`)."""
        self._tick(now)
        self._expire(now)
        n = self._ready(now)
        if not n:
            return None
        reqs = tuple(self._queue[:n])
        del self._queue[:n]
        for r in reqs:
            del self._queued[r.id]
        self._batches += 1
        batch = Batch(self._batches, reqs, now, self.policy.device_lengths(r.tokens
                                                                          for r in reqs))
        self._inflight[batch.id] = batch
        return batch

    def wake_time(self, now: float) -> float | None:
        """When :meth:`poll` can next return a batch, or a request time out, if nothing new
        arrives (``now`` if a batch is ready now; ``None``: never, the queue is empty)."""
        self._tick(now)
        self._expire(now)
        if self._expired:
            return now
        n = self._ready(now)
        if n:
            return now
        t = math.inf
        k, _ = self._candidate()
        if k:
            t = min(r.arrival for r in self._queue[:k]) + self.policy.max_queue_delay
        deadline = self.next_deadline()
        if deadline is not None:
            t = min(t, deadline)
        return None if t == math.inf else t

    def next_deadline(self) -> float | None:
        """The earliest deadline of a queued request (``None``: none has one)."""
        while self._deadlines:
            deadline, seq, rid = self._deadlines[0]
            req = self._queued.get(rid)
            if req is not None and req.seq == seq:
                return deadline
            heapq.heappop(self._deadlines)     # dispatched or expired already
        return None

    # ---- answers ------------------------------------------------------------------------
    def complete(self, batch_id: int, results: Mapping[Hashable, Any] | None = None,
                 *, failed: bool = False) -> list[tuple[Request, Any]]:
        """Finish a dispatched batch: ``(request, result)`` for each of its requests, matched
        by id. ``results`` (if given) must have exactly the batch's ids. ``failed``: the batch
        ran into an error; its requests are answered ``"failed"``. Raises ``RuntimeError`` for
        an unknown or already completed batch, ``ValueError`` for results that do not match."""
        batch = self._inflight.get(batch_id)
        if batch is None:
            raise RuntimeError(f"batch {batch_id!r} is not in flight (unknown or completed)")
        ids = [r.id for r in batch.requests]
        if results is not None and set(results) != set(ids):
            missing = [i for i in ids if i not in results]
            extra = [i for i in results if i not in set(ids)]
            raise ValueError(f"results of batch {batch_id} do not match its requests "
                             f"(missing {missing!r}, extra {extra!r})")
        del self._inflight[batch_id]
        for rid in ids:
            self._answer(rid, "failed" if failed else "done")
        return [(r, None if results is None else results[r.id]) for r in batch.requests]

    def cancel(self, now: float) -> list[Request]:
        """Empty the queue (a server shutting down): the queued requests, answered
        ``"failed"`` (timed-out ones go to :meth:`expire` first). Batches in flight stay."""
        self._tick(now)
        self._expire(now)
        out, self._queue = self._queue, []
        self._queued.clear()
        self._deadlines.clear()
        for r in out:
            self._answer(r.id, "failed")
        return out

    def check(self) -> None:
        """Assert the books balance: every submitted request is answered once or is still
        queued or in flight (and none is answered while still live)."""
        live = set(self._queued) | {r.id for b in self._inflight.values() for r in b.requests}
        assert live == self._live, "a request was lost or answered while still live"
        assert self.submitted == sum(self.counts.values()) + len(self._live), \
            "submitted requests do not add up to answered + live"
        if self.outcomes is not None:
            assert len(self.outcomes) == sum(self.counts.values())


# ---- service models ------------------------------------------------------------------------
def _num(v: float) -> str:
    """A number as written on a command line (integers without an exponent)."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


@dataclass(frozen=True, kw_only=True)
class _Linear:
    """``a + b * tokens`` of a batch of ``tokens`` device tokens: the assumed models'
    shared validation, label and ``A,B`` spec (``unit``: what they count)."""
    a: float
    b: float
    unit: ClassVar[str]
    kind: ClassVar[str]

    def __post_init__(self):
        for name in ("a", "b"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 \
                    or not math.isfinite(v):
                raise ValueError(f"{name} must be a non-negative number of {self.unit}, "
                                 f"not {v!r}")

    def _value(self, lengths: Sequence[int]) -> float:
        return self.a + self.b * sum(lengths)

    @property
    def label(self) -> str:
        a, b = _num(self.a), _num(self.b)
        return f"linear:{a},{b} (assumed: {a} + {b} x tokens {self.unit})"

    @classmethod
    def from_spec(cls, text: str):
        """``"A,B"`` (the part after ``linear:``)."""
        try:
            a, b = (float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"bad linear {cls.kind} {text!r}: use linear:A,B ({cls.unit} = "
                             f"A + B x tokens)") from None
        return cls(a=a, b=b)


@dataclass(frozen=True, kw_only=True)
class LinearService(_Linear):
    """An ASSUMED service model (not the chip's cycle model): ``a + b * tokens`` cycles for a
    batch of ``tokens`` device tokens in total. Picklable, for Dask workers."""
    unit: ClassVar[str] = "cycles"
    kind: ClassVar[str] = "service"

    def __post_init__(self):
        super().__post_init__()
        if self.a == 0 and self.b == 0:
            raise ValueError("a and b cannot both be 0 (batches would take no time)")

    def __call__(self, lengths: Sequence[int]) -> int:
        return math.ceil(self._value(lengths))   # (a started cycle counts)


@dataclass(frozen=True, kw_only=True)
class LinearEnergy(_Linear):
    """An ASSUMED energy model: ``a + b * tokens`` joules for a batch of ``tokens`` device
    tokens. Picklable. (``sim.energy.BatchEnergy`` is the one fitted to the counters.)"""
    unit: ClassVar[str] = "joules"
    kind: ClassVar[str] = "energy"

    def __call__(self, lengths: Sequence[int]) -> float:
        return self._value(lengths)


#: The ``--service`` forms :func:`service_from_spec` takes.
SERVICE_FORMS = ("linear:A,B", "cycle-model:PATH")


def service_from_spec(spec: str) -> Callable[[Sequence[int]], int]:
    """The service model a command line names: ``linear:A,B`` (:class:`LinearService`, an
    assumed model) or ``cycle-model:PATH``.

    ``cycle-model:PATH`` is the calibrated cycle model of the whole encoder
    (``sim.cycle_model.CycleModel``, callable on a packed batch's token counts) saved at
    ``PATH`` by ``serrano cycle-model --out PATH``. The result has a ``label`` (printed with
    every table, so an assumed model is never mistaken for the chip's).
    """
    kind, _, rest = spec.partition(":")
    if kind == "linear":
        return LinearService.from_spec(rest)
    if kind == "cycle-model":
        if not rest:
            raise ValueError("--service cycle-model:PATH needs the calibrated model's file "
                             "(written by serrano cycle-model --out PATH)")
        import importlib
        try:
            cycle_model = importlib.import_module(f"{__package__}.cycle_model")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.cycle_model":
                raise                      # the module exists but something it needs does not
            raise ValueError("--service cycle-model:PATH needs sim/cycle_model.py, which "
                             "this tree does not have") from None
        try:
            return cycle_model.CycleModel.load(rest)
        except FileNotFoundError:
            raise ValueError(f"{rest}: no such cycle model file (serrano cycle-model --out "
                             f"writes one)") from None
    raise ValueError(f"unknown service model {spec!r}; use one of {', '.join(SERVICE_FORMS)}")


def service_label(service) -> str:
    """How tables name a service model."""
    label = getattr(service, "label", None)
    if label:
        return str(label)
    mod = getattr(service, "__module__", "") or ""
    name = getattr(service, "__qualname__", type(service).__name__)
    return f"{mod}.{name}".strip(".")


@dataclass(frozen=True, kw_only=True)
class Lengths:
    """A distribution of request token counts: ``values`` drawn uniformly with replacement
    (a fixed length is one value; a list of real sentences' token counts, their empirical
    distribution)."""
    values: tuple[int, ...]
    label: str = ""

    def __post_init__(self):
        vals = tuple(self.values)
        if not vals:
            raise ValueError("lengths must have at least one value")
        for v in vals:
            _positive_int("each token count", v)
        object.__setattr__(self, "values", tuple(int(v) for v in vals))

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(np.asarray(self.values), size=n)

    @classmethod
    def fixed(cls, n: int) -> "Lengths":
        return cls(values=(n,), label=f"fixed {n}")

    @classmethod
    def uniform(cls, lo: int, hi: int) -> "Lengths":
        if not 1 <= lo <= hi:
            raise ValueError(f"uniform lengths need 1 <= lo <= hi, not {lo}, {hi}")
        return cls(values=tuple(range(lo, hi + 1)), label=f"uniform {lo}..{hi}")


# ---- arrivals ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Arrival:
    """One request of a workload: its arrival time (s), token count, priority and timeout."""
    time: float
    tokens: int
    priority: int = 0
    timeout: float | None = None


def poisson_arrivals(rate: float, count: int, lengths: Lengths, *, seed: int = 0,
                     start: float = 0.0) -> list[Arrival]:
    """``count`` arrivals of a Poisson process of ``rate`` requests per second from ``start``,
    token counts drawn from ``lengths`` (deterministic for a given ``seed``)."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number of requests per second, not {rate!r}")
    _positive_int("count", count)
    rng = np.random.default_rng(seed)
    times = start + np.cumsum(rng.exponential(1.0 / rate, count))
    toks = lengths.sample(rng, count)
    return [Arrival(time=float(t), tokens=int(n)) for t, n in zip(times, toks)]


def read_trace(path) -> list[Arrival]:
    """Arrivals from a CSV file with a header: ``time`` (seconds) and ``tokens`` columns,
    optionally ``priority`` and ``timeout`` (empty: none); rows in any order."""
    path = Path(path)
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"time", "tokens"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a trace needs a header with time and tokens columns, "
                             f"not {reader.fieldnames!r}")
        for line, row in enumerate(reader, start=2):
            try:
                t, n = float(row["time"]), int(row["tokens"])
                pr = int(row.get("priority") or 0)
                to = float(row["timeout"]) if row.get("timeout") else None
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            if not (math.isfinite(t) and t >= 0) or n < 1:
                raise ValueError(f"{path}:{line}: need time >= 0 and tokens >= 1, "
                                 f"not {row['time']!r}, {row['tokens']!r}")
            out.append(Arrival(time=t, tokens=n, priority=pr, timeout=to))
    if not out:
        raise ValueError(f"{path}: the trace has no arrivals")
    return sorted(out, key=lambda a: a.time)


# ---- discrete-event simulation -------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SimResult:
    """What :func:`simulate` measured, in device seconds.

    Per request (index = arrival order): ``arrival``, ``tokens``, ``outcome`` (one of
    :data:`OUTCOMES`), ``dispatch`` and ``finish`` (NaN unless done), ``batch`` (-1 unless
    dispatched), ``replica``. Per batch (index = batch id - 1): ``batch_start``,
    ``batch_end``, ``batch_size``, ``batch_tokens`` (device tokens), ``batch_cycles``,
    ``batch_replica``, ``batch_energy`` (joules, NaN without an energy function).
    """
    arrival: np.ndarray
    tokens: np.ndarray
    outcome: np.ndarray
    dispatch: np.ndarray
    finish: np.ndarray
    batch: np.ndarray
    replica: np.ndarray
    batch_start: np.ndarray
    batch_end: np.ndarray
    batch_size: np.ndarray
    batch_tokens: np.ndarray
    batch_cycles: np.ndarray
    batch_replica: np.ndarray
    batch_energy: np.ndarray
    replicas: int
    mhz: float

    @property
    def done(self) -> np.ndarray:
        return self.outcome == "done"

    @property
    def queue(self) -> np.ndarray:
        """Queue time of the completed requests (arrival to dispatch)."""
        return (self.dispatch - self.arrival)[self.done]

    @property
    def compute(self) -> np.ndarray:
        """Compute time of the completed requests (their batch's service time)."""
        return (self.finish - self.dispatch)[self.done]

    @property
    def latency(self) -> np.ndarray:
        """Total latency of the completed requests (arrival to finish)."""
        return (self.finish - self.arrival)[self.done]

    def summary(self) -> dict:
        """Throughput (completed requests per device second, first arrival to last finish),
        latency percentiles, the queue/compute split, utilization, batch sizes, counts."""
        done = self.done
        n = int(done.sum())
        span = (float(np.nanmax(self.finish)) - float(self.arrival.min())) if n else 0.0
        lat = self.latency
        pct = (lambda q: float(np.percentile(lat, q))) if n else (lambda q: math.nan)
        busy = float(np.sum(self.batch_end - self.batch_start))
        sizes, counts = np.unique(self.batch_size, return_counts=True)
        out = {
            "requests": int(len(self.arrival)), "completed": n,
            "timeouts": int(np.sum(self.outcome == "timeout")),
            "rejected": int(np.sum(self.outcome == "rejected")),
            "batches": int(len(self.batch_size)),
            "throughput": n / span if span > 0 else math.nan,
            "p50": pct(50), "p90": pct(90), "p99": pct(99),
            "mean_latency": float(lat.mean()) if n else math.nan,
            "mean_queue": float(self.queue.mean()) if n else math.nan,
            "mean_compute": float(self.compute.mean()) if n else math.nan,
            "mean_batch_size": float(self.batch_size.mean()) if len(self.batch_size) else 0.0,
            "utilization": busy / (span * self.replicas) if span > 0 else math.nan,
            "batch_sizes": {int(s): int(c) for s, c in zip(sizes, counts)},
        }
        if len(self.batch_energy) and not np.isnan(self.batch_energy).any():
            out["energy_per_request"] = float(self.batch_energy.sum()) / max(
                int(self.batch_size.sum()), 1)
        return out


def simulate(arrivals: Sequence[Arrival], policy: BatchPolicy,
             service_cycles: Callable[[Sequence[int]], int], mhz: float, *,
             replicas: int = 1,
             energy: Callable[[Sequence[int]], float] | None = None) -> SimResult:
    """Run ``arrivals`` through a :class:`Batcher` with ``policy`` in front of ``replicas``
    accelerators in device time.

    A batch's service time is ``service_cycles(batch.device_lengths) / (mhz * 1e6)``
    seconds; ``energy(batch.device_lengths)`` its joules (optional). Events at one instant
    are taken together, in this order: batches finish (their replicas free), requests
    arrive, timeouts expire, then free replicas (lowest index first) take batches while the
    batcher offers them. Deterministic.
    """
    _positive_int("replicas", replicas)
    if not (isinstance(mhz, (int, float)) and math.isfinite(mhz) and mhz > 0):
        raise ValueError(f"mhz must be a positive clock in MHz, not {mhz!r}")
    arrivals = sorted(arrivals, key=lambda a: a.time)
    n = len(arrivals)
    if n == 0:
        raise ValueError("arrivals is empty")
    hz = mhz * 1e6
    batcher = Batcher(policy, record=True)
    dispatch = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    bidx = np.full(n, -1, dtype=np.int64)
    ridx = np.full(n, -1, dtype=np.int64)
    batches: list[tuple] = []
    free = list(range(replicas))              # a heap of free replica indices
    # Events: (time, kind, order, payload); kind 0 = batch finished, 1 = arrival, 2 = wake.
    events: list[tuple] = [(a.time, 1, i, i) for i, a in enumerate(arrivals)]
    heapq.heapify(events)
    wakes: set[float] = set()
    order = n
    while events:
        now = events[0][0]
        while events and events[0][0] == now:
            _, kind, _, x = heapq.heappop(events)
            if kind == 0:
                batch, replica = x
                for req, _ in batcher.complete(batch.id):
                    finish[req.id] = now
                heapq.heappush(free, replica)
            elif kind == 1:
                a = arrivals[x]
                try:
                    batcher.submit(x, a.tokens, now, priority=a.priority, timeout=a.timeout)
                except (QueueFull, RequestTooLarge):
                    pass                      # answered "rejected" by the batcher
            else:
                wakes.discard(now)
        batcher.expire(now)
        while free:
            batch = batcher.poll(now)
            if batch is None:
                break
            replica = heapq.heappop(free)
            cycles = int(service_cycles(batch.device_lengths))
            if cycles < 1:
                raise ValueError(f"service_cycles gave {cycles} cycles for a batch of "
                                 f"{batch.device_lengths}: must be positive")
            end = now + cycles / hz
            joules = math.nan if energy is None else float(energy(batch.device_lengths))
            batches.append((now, end, batch.size, batch.tokens, cycles, replica, joules))
            for req in batch.requests:
                dispatch[req.id], bidx[req.id], ridx[req.id] = now, batch.id - 1, replica
            order += 1
            heapq.heappush(events, (end, 0, order, (batch, replica)))
        # With a replica free, wake when a batch may become ready; with all busy, a finishing
        # batch wakes the loop anyway, but a timeout must still fire at its instant.
        wake = batcher.wake_time(now) if free else batcher.next_deadline()
        if wake is not None and wake > now and wake not in wakes:
            wakes.add(wake)
            order += 1
            heapq.heappush(events, (wake, 2, order, None))
    batcher.check()
    assert len(batcher) == 0 and batcher.inflight == 0
    outcome = np.array([batcher.outcomes[i] for i in range(n)], dtype=object)
    b = np.array(batches, dtype=float).reshape(-1, 7)
    return SimResult(
        arrival=np.array([a.time for a in arrivals]),
        tokens=np.array([a.tokens for a in arrivals]),
        outcome=outcome, dispatch=dispatch, finish=finish, batch=bidx, replica=ridx,
        batch_start=b[:, 0], batch_end=b[:, 1], batch_size=b[:, 2].astype(np.int64),
        batch_tokens=b[:, 3].astype(np.int64), batch_cycles=b[:, 4].astype(np.int64),
        batch_replica=b[:, 5].astype(np.int64), batch_energy=b[:, 6], replicas=replicas,
        mhz=float(mhz))


# ---- one point of a load sweep -------------------------------------------------------------
def load_point(point: Mapping[str, Any]) -> dict:
    """One point of a load sweep (run in this process or on a Dask worker).

    ``point`` has ``policy`` (a :class:`BatchPolicy`), ``service`` (a picklable
    ``service_cycles``), ``mhz``, ``replicas``, ``energy`` (or ``None``) and either
    ``rate``, ``requests``, ``lengths`` (a :class:`Lengths`) and ``seed`` for Poisson arrivals,
    or ``arrivals`` (a trace) and ``speed`` (its times divided by ``speed``). Returns
    :meth:`SimResult.summary` with ``offered`` (requests per second) added.
    """
    if point.get("arrivals") is not None:
        speed = float(point.get("speed", 1.0))
        arrivals = [Arrival(time=a.time / speed, tokens=a.tokens, priority=a.priority,
                            timeout=a.timeout) for a in point["arrivals"]]
        span = arrivals[-1].time - arrivals[0].time
        offered = (len(arrivals) - 1) / span if span > 0 else math.inf
    else:
        arrivals = poisson_arrivals(point["rate"], point["requests"], point["lengths"],
                                    seed=point["seed"])
        offered = float(point["rate"])
    res = simulate(arrivals, point["policy"], point["service"], point["mhz"],
                   replicas=point["replicas"], energy=point.get("energy"))
    return {"offered": offered, **res.summary()}
