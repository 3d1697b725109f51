"""The interface every execution backend (golden model, Amaranth simulator, compiled model,
UART bridge) implements: run a whole program against a memory image, return memory, status and
counters.

The helpers below are shared by the backends so that each rule has one definition: decoding
the raw ``isa.Status`` / ``isa.Counters`` bits (from the layouts, never from retyped offsets),
the waveform option and the cycle budget.
"""

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
           "field_slices", "unpack_fields", "join_words", "counters_from_bits",
           "check_vcd", "resolve_vcd", "check_max_cycles", "check_mem_latency"]

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
    golden model, which has no notion of time, reports only ``instructions``)."""
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
