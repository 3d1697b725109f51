"""The interface every execution backend (golden model, Amaranth simulator, compiled model,
UART bridge) implements: run a whole program against a memory image, return memory, status and
counters.

The helpers below are shared by the backends so that each rule has one definition: decoding
the raw ``isa.Status`` / ``isa.Counters`` bits (from the layouts, never from retyped offsets),
the waveform option and the cycle budget.
"""

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np
from amaranth.lib import data

from serrano.hw import isa
from serrano.hw.isa import ErrorCode

__all__ = ["RunStatus", "RunResult", "Backend", "SimulationTimeout",
           "STATUS_LAYOUT", "COUNTERS_LAYOUT", "COUNTER_NAMES", "DEFAULT_MEM_LATENCY",
           "MemoryProfile", "SplitMix64", "MemoryFaults", "SPLITMIX64_CONSTANTS",
           "REFUSE_BITS", "MAX_EXTRA_LATENCY",
           "field_slices", "unpack_fields", "join_words", "counters_from_bits",
           "check_vcd", "resolve_vcd", "check_max_cycles", "check_mem_latency",
           "check_mem_profile"]

STATUS_LAYOUT: data.StructLayout = data.Layout.cast(isa.Status)
COUNTERS_LAYOUT: data.StructLayout = data.Layout.cast(isa.Counters)
COUNTER_NAMES: tuple[str, ...] = tuple(name for name, _ in COUNTERS_LAYOUT)

#: Cycles from a read's acceptance to its data on ``mem.resp``, unless a backend is told
#: otherwise (the simulation memory model of ``docs/architecture.md``).
DEFAULT_MEM_LATENCY = 2

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SimulationTimeout(RuntimeError):
    """The program did not reach ``done`` within its cycle budget."""


# ---- raw bits -> fields -----------------------------------------------------------------------

def field_slices(layout) -> dict[str, tuple[int, int]]:
    """``{field: (offset, mask)}`` of a layout, for decoding its fields from a raw integer.

    Parameters
    ----------
    layout : ShapeCastable
        A ``data.Struct`` class or a ``data.StructLayout``.

    Returns
    -------
    dict[str, tuple[int, int]]
        Field ``name`` of a raw value ``v`` is ``(v >> offset) & mask``.
    """
    return {name: (f.offset, (1 << f.width) - 1) for name, f in data.Layout.cast(layout)}


def unpack_fields(layout, raw: int | bytes) -> dict[str, int]:
    """The integer value of every field of ``layout`` in ``raw``.

    Parameters
    ----------
    layout : ShapeCastable
        A ``data.Struct`` class or a ``data.StructLayout``.
    raw : int or bytes
        The packed value; bytes are little-endian (as the UART bridge sends them).

    Returns
    -------
    dict[str, int]
        Every field by name, in layout order; enum fields as their raw integer (which may be
        outside the enum).
    """
    value = int.from_bytes(raw, "little") if isinstance(raw, (bytes, bytearray)) else int(raw)
    return {name: (value >> off) & mask for name, (off, mask) in field_slices(layout).items()}


def join_words(words: Iterable[int], word_bits: int = 32) -> int:
    """Join little-endian ``word_bits``-bit words (word 0 least significant) into one integer.

    Parameters
    ----------
    words : iterable of int
        The words, e.g. a ``ctypes`` ``uint32`` array filled by the compiled model.
    word_bits : int
        Bits per word.

    Returns
    -------
    int
    """
    return sum(int(w) << (word_bits * i) for i, w in enumerate(words))


def counters_from_bits(raw: int) -> dict[str, int]:
    """Decode a raw ``isa.Counters`` value.

    Parameters
    ----------
    raw : int
        The counters as one integer (``Counters.as_value()``, bit 0 = bit 0 of ``cycles``);
        bits above the layout are ignored.

    Returns
    -------
    dict[str, int]
        Every field of ``isa.Counters`` by name (what ``RunResult.counters`` holds).
    """
    const = COUNTERS_LAYOUT.from_bits(raw & ((1 << COUNTERS_LAYOUT.size) - 1))
    return {name: const[name] for name in COUNTER_NAMES}


@dataclass(frozen=True)
class RunStatus:
    """How a program ended: ``done``, the ``isa.ErrorCode`` and the faulting instruction's
    index (0 without an error), as in ``isa.Status``."""
    done: bool
    error: ErrorCode
    fault_index: int

    @property
    def ok(self) -> bool:
        return self.done and self.error == ErrorCode.NONE

    @classmethod
    def from_bits(cls, raw: int) -> "RunStatus":
        """Decode a raw ``isa.Status`` value.

        Parameters
        ----------
        raw : int
            The status word as one integer (``Status.as_value()``); bits above the layout
            are ignored.

        Returns
        -------
        RunStatus

        Raises
        ------
        ValueError
            ``error`` holds a value that is not an ``isa.ErrorCode``.
        """
        const = STATUS_LAYOUT.from_bits(raw & ((1 << STATUS_LAYOUT.size) - 1))
        return cls(done=bool(const.done), error=const.error, fault_index=const.fault_index)


@dataclass
class RunResult:
    """What a backend returns. ``counters`` holds the fields of ``isa.Counters`` by name (the
    golden model, which has no notion of time, reports only those that do not depend on it:
    ``instructions``, ``array_busy`` and the activity counters)."""
    memory: np.ndarray
    status: RunStatus
    counters: dict[str, int] = field(default_factory=dict)


# ---- options shared by the backends -----------------------------------------------------------

def check_vcd(vcd: str | os.PathLike | bool | None) -> Path | bool | None:
    """Validate a backend's ``vcd`` option.

    Parameters
    ----------
    vcd : str, PathLike, bool or None
        A waveform path, ``True`` (a new file under ``build/waves/`` per run), or
        ``False``/``None`` (no waveform).

    Returns
    -------
    Path, bool or None
        The path as a ``Path``, or ``vcd`` itself (``True``, ``False``, ``None``).

    Raises
    ------
    TypeError
        ``vcd`` is none of these.
    """
    if vcd is None or isinstance(vcd, bool):
        return vcd
    if isinstance(vcd, (str, os.PathLike)):
        return Path(vcd)
    raise TypeError(f"vcd must be a path, True or None, not {type(vcd).__name__}")


def resolve_vcd(vcd: str | os.PathLike | bool | None, prefix: str, *,
                env_var: str | None = None) -> Path | None:
    """The waveform file of one run, its directory created.

    Parameters
    ----------
    vcd : str, PathLike, bool or None
        As for :func:`check_vcd`; ``False`` is no waveform (the environment is not read).
    prefix : str
        ``True`` names ``build/waves/<prefix>-<YYYYmmdd-HHMMSS>-<pid>.vcd`` in the project
        root.
    env_var : str or None
        With ``vcd=None``, follow this environment variable instead: unset, empty or ``0``
        for no waveform, ``1`` for the ``True`` file, anything else is a path.

    Returns
    -------
    Path or None
        The file to write, or ``None`` for no waveform.

    Raises
    ------
    TypeError
        ``vcd`` is not a path, a bool or ``None``.
    """
    if vcd is None and env_var is not None:
        value = os.environ.get(env_var, "")
        vcd = None if value in ("", "0") else True if value == "1" else value
    vcd = check_vcd(vcd)
    if vcd is False:
        return None
    if vcd is True:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        vcd = _PROJECT_ROOT / "build" / "waves" / f"{prefix}-{stamp}-{os.getpid()}.vcd"
    if vcd is not None:
        vcd.parent.mkdir(parents=True, exist_ok=True)
    return vcd


def check_max_cycles(max_cycles: int | None, default: int | None) -> int | None:
    """A run's cycle budget.

    Parameters
    ----------
    max_cycles : int or None
        The caller's budget (a non-negative integer, numpy integers too), or ``None``.
    default : int or None
        The backend's budget for ``max_cycles=None`` (``None``: no cycle budget).

    Returns
    -------
    int or None
        ``max_cycles`` as an ``int``, or ``default``.

    Raises
    ------
    ValueError
        ``max_cycles`` is negative, a bool or not an integer.
    """
    if max_cycles is None:
        return default
    if isinstance(max_cycles, bool) or not isinstance(max_cycles, (int, np.integer)) \
            or max_cycles < 0:
        raise ValueError(f"max_cycles must be a non-negative integer or None, "
                         f"not {max_cycles!r}")
    return int(max_cycles)


def check_mem_latency(mem_latency: int) -> int:
    """Validate a backend's ``mem_latency`` option (cycles from a read's acceptance to its
    data, at least 1).

    Parameters
    ----------
    mem_latency : int

    Returns
    -------
    int
        ``mem_latency``.

    Raises
    ------
    ValueError
        It is not an integer >= 1 (bools are rejected).
    """
    if isinstance(mem_latency, bool) or not isinstance(mem_latency, int) or mem_latency < 1:
        raise ValueError(f"mem_latency must be an integer >= 1, not {mem_latency!r}")
    return mem_latency


# ---- memory profile: seeded backpressure and latency ------------------------------------------

_U64 = (1 << 64) - 1

#: The constants of splitmix64 (Steele, Lea, Flood 2014; Vigna's reference C code), and the salt
#: that separates a profile's two streams. ``sim.compiled`` writes them into ``serrano_config.h``
#: for the C++ harness (``sim/csrc/harness.h``), so both simulators draw the same numbers.
SPLITMIX64_CONSTANTS: dict[str, int] = {
    "GAMMA": 0x9E3779B97F4A7C15,
    "MUL1": 0xBF58476D1CE4E5B9,
    "MUL2": 0x94D049BB133111EB,
    "DELAY_SALT": 0xD1B54A32D192ED03,
}

#: A refusal draw is the generator's top 53 bits, compared with ``refuse * 2**53``.
REFUSE_BITS = 53
#: Largest ``MemoryProfile.extra_latency`` (bounds the harness's response queue).
MAX_EXTRA_LATENCY = 1 << 16


class SplitMix64:
    """The splitmix64 generator: a 64-bit state advanced by ``GAMMA``, each output a mix of it.

    ``sim/csrc/harness.h`` (``serrano::SplitMix64``) is the same generator in C++; a test
    checks that both produce the same sequence.

    Parameters
    ----------
    state : int
        The initial state (taken modulo 2**64).
    """

    __slots__ = ("state",)

    def __init__(self, state: int) -> None:
        self.state = state & _U64

    def next(self) -> int:
        """The next 64-bit output."""
        k = SPLITMIX64_CONSTANTS
        self.state = z = (self.state + k["GAMMA"]) & _U64
        z = ((z ^ (z >> 30)) * k["MUL1"]) & _U64
        z = ((z ^ (z >> 27)) * k["MUL2"]) & _U64
        return z ^ (z >> 31)


@dataclass(frozen=True, kw_only=True)
class MemoryProfile:
    """A seeded random backpressure and latency profile of the simulated memory port.

    In every cycle ``mem.req.ready`` is low with probability ``refuse``; a read accepted in cycle
    *t* is answered in cycle ``max(t + mem_latency + d, previous answer + 1)`` with *d* uniform
    in ``[0, extra_latency]``, so responses stay in acceptance order. Both cycle-accurate
    backends draw the same numbers (:class:`MemoryFaults`), hence report the same cycles.
    ``MemoryProfile(seed=s)`` (no refusals, no extra latency) behaves exactly like no profile.

    Parameters
    ----------
    seed : int
        Seeds the generators, in ``[0, 2**64)``; each program of a run starts from it afresh.
    refuse : float
        Probability in ``[0, 1)`` that the port refuses requests in a cycle.
    extra_latency : int
        Largest extra delay of a read response, in ``[0, MAX_EXTRA_LATENCY]`` cycles.

    Raises
    ------
    ValueError
        A field is out of range or of the wrong type.
    """
    seed: int = 0
    refuse: float = 0.0
    extra_latency: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or not 0 <= self.seed <= _U64:
            raise ValueError(f"MemoryProfile.seed must be an integer in [0, 2**64), "
                             f"not {self.seed!r}")
        if isinstance(self.refuse, bool) or not isinstance(self.refuse, (int, float, np.floating,
                                                                         np.integer)) \
                or not 0.0 <= float(self.refuse) < 1.0:
            raise ValueError(f"MemoryProfile.refuse must be a probability in [0, 1), "
                             f"not {self.refuse!r}")
        if isinstance(self.extra_latency, bool) \
                or not isinstance(self.extra_latency, (int, np.integer)) \
                or not 0 <= self.extra_latency <= MAX_EXTRA_LATENCY:
            raise ValueError(f"MemoryProfile.extra_latency must be an integer in "
                             f"[0, {MAX_EXTRA_LATENCY}], not {self.extra_latency!r}")
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "refuse", float(self.refuse))
        object.__setattr__(self, "extra_latency", int(self.extra_latency))

    @property
    def refuse_threshold(self) -> int:
        """A cycle refuses when the top 53 bits of its draw are below this (``refuse * 2**53``,
        exact: ``refuse`` is a double)."""
        return int(self.refuse * (1 << REFUSE_BITS))

    def scale_budget(self, cycles: int) -> int:
        """A cycle budget for this profile from one made for the ideal memory: every beat may
        wait ``1 / (1 - refuse)`` times as long and every read ``extra_latency`` cycles more."""
        return math.ceil(cycles * (1 + self.extra_latency) / (1.0 - self.refuse))

    def describe(self) -> str:
        return (f"seed {self.seed}, refuse {self.refuse:g}, "
                f"extra latency 0..{self.extra_latency}")


class MemoryFaults:
    """The per-program state of a :class:`MemoryProfile`: two splitmix64 streams, one drawn once
    per cycle for ``mem.req.ready`` (seeded with ``seed``), one drawn once per accepted read for
    its extra delay (seeded with ``seed ^ DELAY_SALT``); a stream is not drawn at all when its
    probability or range is zero. ``serrano::MemoryFaults`` in ``sim/csrc/harness.h`` mirrors
    this class line by line.

    Parameters
    ----------
    profile : MemoryProfile or None
        ``None``: the ideal memory (always ready, fixed latency).
    latency : int
        The backend's ``mem_latency``.
    """

    __slots__ = ("threshold", "extra", "latency", "ready_rng", "delay_rng", "next_free")

    def __init__(self, profile: "MemoryProfile | None", latency: int) -> None:
        profile = profile or MemoryProfile()
        self.threshold = profile.refuse_threshold
        self.extra = profile.extra_latency
        self.latency = latency
        self.ready_rng = SplitMix64(profile.seed)
        self.delay_rng = SplitMix64(profile.seed ^ SPLITMIX64_CONSTANTS["DELAY_SALT"])
        self.next_free = 0  # the earliest cycle the next response may take

    def ready(self) -> bool:
        """``mem.req.ready`` of the next cycle."""
        if not self.threshold:
            return True
        return (self.ready_rng.next() >> (64 - REFUSE_BITS)) >= self.threshold

    def due(self, cycle: int) -> int:
        """The cycle that answers a read accepted in ``cycle``."""
        due = cycle + self.latency
        if self.extra:
            due += self.delay_rng.next() % (self.extra + 1)
        due = max(due, self.next_free)
        self.next_free = due + 1
        return due


def check_mem_profile(profile: "MemoryProfile | None") -> "MemoryProfile | None":
    """Validate a backend's ``mem_profile`` option: a :class:`MemoryProfile` or ``None``.

    Raises
    ------
    TypeError
        It is neither.
    """
    if profile is not None and not isinstance(profile, MemoryProfile):
        raise TypeError(f"mem_profile must be a MemoryProfile or None, "
                        f"not {type(profile).__name__}")
    return profile


class Backend(Protocol):
    name: str

    def run(self, words: Sequence[int], memory: np.ndarray, *,
            max_cycles: int | None = None) -> RunResult:
        """Run ``words`` (ints, 128-bit instruction words) on a freshly reset accelerator
        (every buffer zero; nothing carries over from an earlier run) against a copy of ``memory``
        (``numpy.uint8``, at most ``config.mem_bytes`` long; the backend treats bytes past its
        end as zero and returns an array of the same length). Raises ``SimulationTimeout``
        when ``max_cycles`` runs out (cycle-accurate backends)."""
        ...
