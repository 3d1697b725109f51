"""The interface every execution backend (golden model, Amaranth simulator, compiled model)
implements: run a whole program against a memory image, return memory, status and counters."""

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from serrano.hw.isa import ErrorCode

__all__ = ["RunStatus", "RunResult", "Backend", "SimulationTimeout"]


class SimulationTimeout(RuntimeError):
    """The program did not reach ``done`` within its cycle budget."""


@dataclass(frozen=True)
class RunStatus:
    done: bool
    error: ErrorCode
    fault_index: int

    @property
    def ok(self) -> bool:
        return self.done and self.error == ErrorCode.NONE


@dataclass
class RunResult:
    """What a backend returns. ``counters`` holds the fields of ``isa.Counters`` by name (the
    golden model, which has no notion of time, reports only ``instructions``)."""
    memory: np.ndarray
    status: RunStatus
    counters: dict[str, int] = field(default_factory=dict)


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
