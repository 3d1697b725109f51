"""The proofs of the default formal set by name, for ``tests/formal_bench.py``: each is a
harness factory, a depth and a mode, the same ones ``tests/test_formal.py`` runs."""

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from amaranth import Elaboratable

import formal_blocks
import formal_execute
import formal_system
import formal_units
from formal_harness import ProofFailed, prove
from serrano.hw.config import AcceleratorConfig

__all__ = ["SMALL", "VSMALL", "DISPATCH_DEPTH", "EXEC_DEPTH", "SYSTEM_DEPTH", "HANG_BOUND", "Proof",
           "PROOFS", "bench", "format_table"]

#: A small configuration for the dispatch, execute and whole-accelerator proofs.
SMALL = AcceleratorConfig(rows=2, cols=2, act_depth=4, wgt_depth=4, acc_depth=4,
                          param_depth=2, mem_width=4, mem_bytes=64)
#: SMALL with the vector unit (2x2: a square power-of-two array).
VSMALL = AcceleratorConfig(rows=2, cols=2, act_depth=4, wgt_depth=4, acc_depth=4,
                           param_depth=2, mem_width=4, mem_bytes=64, vector=True)
#: Every path to two instructions in flight at once is 15 cycles long or more (fetch, the
#: checker's 4 cycles, decode's 2-cycle verdict, dispatch, twice over); each scoreboard
#: mutant fails at step 15. Depth 16 covers every first conflict; 20 (slow) a third word.
DISPATCH_DEPTH = 16
#: One MATMUL of act_depth (4) rows: taken in cycle 1, two weight rows, four vectors from
#: cycle 4, its last accumulator write 1 + array.latency (6) cycles after the last read, in
#: cycle 14; depth 16 covers it and a second MATMUL's preload and first rows.
EXEC_DEPTH = 16
#: The arbiter's pre-emption (a waiting store request replaced by a load's) first occurs at
#: step 18 (two instructions dispatched, a store waiting and a load starting): depth 20
#: reaches it.
SYSTEM_DEPTH = 20
#: Cycles the stream may stay blocked with every unit idle: check_cycles (4) + 1.
HANG_BOUND = 5


@dataclass(frozen=True)
class Proof:
    make: Callable[[], Elaboratable]
    depth: int
    mode: str = "bmc"


PROOFS: dict[str, Proof] = {
    # depth: the decoder harness's done_within + 2 (check_cycles + 8)
    "decoder verdict": Proof(lambda: formal_blocks.DecoderHarness(formal_blocks.CFG), 12),
    "store range": Proof(lambda: formal_blocks.StoreHarness(formal_blocks.STORE_CFG), 12),
    "load range": Proof(lambda: formal_blocks.LoadHarness(formal_blocks.LOAD_CFG), 14),
    "scoreboard (buffers)": Proof(lambda: formal_units.DispatchHarness(SMALL), DISPATCH_DEPTH),
    "no hang": Proof(lambda: formal_units.DispatchHarness(SMALL, hang_bound=HANG_BOUND,
                                                          resources=()), 20),
    "scoreboard (vector)": Proof(lambda: formal_units.DispatchHarness(VSMALL), DISPATCH_DEPTH),
    "execute ranges": Proof(lambda: formal_execute.ExecuteHarness(SMALL), EXEC_DEPTH),
    "clear + mem stream": Proof(lambda: formal_system.SystemHarness(SMALL), SYSTEM_DEPTH),
    "clear (prove)": Proof(lambda: formal_system.SystemHarness(SMALL, check=("clear",)), 2,
                           "prove"),
}


def bench(names: list[str], solvers: list[str], runs: int = 1,
          timeout: float = 600) -> dict[tuple[str, str], float | str]:
    """Median seconds of ``runs`` runs of each proof with each solver (or why it failed)."""
    results = {}
    for name in names:
        proof = PROOFS[name]
        for solver in solvers:
            times = []
            for _ in range(runs):
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        times.append(prove(Path(tmp), proof.make(), proof.depth,
                                           mode=proof.mode, solver=solver,
                                           timeout=timeout).seconds)
                    except ProofFailed as exc:
                        times = exc.status
                        break
            results[name, solver] = statistics.median(times) if isinstance(times, list) \
                else times
    return results


def format_table(results: dict, names: list[str], solvers: list[str]) -> str:
    """A Markdown table: one row per proof (with its mode and depth), one column per solver."""
    head = "| proof | mode, depth | " + " | ".join(solvers) + " |"
    rows = [head, "|" + "---|" * (len(solvers) + 2)]
    for name in names:
        p = PROOFS[name]
        cells = [f"{v:.1f} s" if isinstance(v, float) else str(v)
                 for v in (results[name, s] for s in solvers)]
        rows.append(f"| {name} | {p.mode} {p.depth} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
