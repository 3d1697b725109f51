"""The ECP5 block RAM output-register fold (``serrano.flows.netlist.fold_bram_output_registers``) on
small hand-made Yosys JSON netlists, and once through the real flow."""

import copy
import json

import pytest
from amaranth import Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from serrano.flows.designs import Design
from serrano.flows.flow import run_flow
from serrano.flows.netlist import fold_bram_output_registers
from serrano.flows.report import write_report_md

CLK, CLK2, CE, RST = 2, 3, 4, 5
DO = list(range(100, 104))     # the RAM's DOB0..3 nets
Q = list(range(200, 204))      # the flip-flops' Q nets


def _ff(di, q, *, clk=CLK, ce=None, lsr="0", **params):
    p = {"CEMUX": "1 ", "CLKMUX": "CLK", "GSR": "DISABLED", "LSRMUX": "LSR", "REGSET": "RESET"}
    conn = {"CLK": [clk], "DI": [di], "LSR": [lsr], "Q": [q]}
    if ce is not None:
        p["CEMUX"] = "CE"
        conn["CE"] = [ce]
    p.update(params)
    return {"type": "TRELLIS_FF", "parameters": p, "attributes": {},
            "port_directions": {"CLK": "input", "CE": "input", "DI": "input",
                                "LSR": "input", "Q": "output"},
            "connections": conn}


def _ram(**params):
    """A DP16KD as synth_ecp5 leaves it: port A writes, port B reads 4 bits."""
    p = {"DATA_WIDTH_A": "00000000000000000000000000010010",
         "DATA_WIDTH_B": "00000000000000000000000000010010", "REGMODE_A": "NOREG",
         "REGMODE_B": "NOREG", "RESETMODE": "ASYNC", "ASYNC_RESET_RELEASE": "ASYNC",
         "CLKAMUX": "CLKA", "CLKBMUX": "CLKB", "GSR": "DISABLED"}
    p.update(params)
    conn = {"CLKA": [CLK], "CLKB": [CLK], "CEA": ["1"], "CEB": [10], "WEA": [11], "WEB": ["0"],
            "OCEA": ["1"], "OCEB": ["1"], "RSTA": ["0"], "RSTB": ["0"]}
    dirs = {k: "input" for k in conn}
    for i in range(18):
        conn[f"DOA{i}"] = [300 + i]          # port A's outputs: unused
        conn[f"DOB{i}"] = [DO[i]] if i < len(DO) else [400 + i]   # bits 4..17 unused
        dirs[f"DOA{i}"] = dirs[f"DOB{i}"] = "output"
    return {"type": "DP16KD", "parameters": p, "attributes": {}, "port_directions": dirs,
            "connections": conn}


def _netlist(ffs=None, ram=None):
    cells = {"ram": ram or _ram()}
    for i, (d, q) in enumerate(zip(DO, Q)):
        cells[f"r{i}"] = _ff(d, q)
    cells.update(ffs or {})
    return {"modules": {"top": {
        "attributes": {}, "cells": cells,
        "ports": {"clk": {"direction": "input", "bits": [CLK]},
                  "q": {"direction": "output", "bits": Q}},
        "netnames": {"rd_data": {"hide_name": 0, "bits": DO},
                     "r": {"hide_name": 0, "bits": Q}},
    }}}


def _fold(netlist, **kw):
    before = copy.deepcopy(netlist)
    summary = fold_bram_output_registers(netlist, **kw)
    return before, summary


def _unchanged(netlist, **kw):
    before, summary = _fold(netlist, **kw)
    assert netlist == before
    assert summary["ports"] == summary["flip_flops"] == 0
    [entry] = summary["not_folded"]
    assert (entry["cell"], entry["port"]) == ("ram", "B")
    return entry["reason"]


def test_registered_read_is_folded():
    netlist = _netlist()
    _, summary = _fold(netlist)
    assert (summary["ports"], summary["flip_flops"]) == (1, 4)
    assert summary["by_module"] == {"top": 4} and summary["not_folded"] == []
    assert summary["folded"] == [{"module": "top", "cell": "ram", "port": "B",
                                  "flip_flops": 4, "reason": ""}]
    mod = netlist["modules"]["top"]
    assert set(mod["cells"]) == {"ram"}
    ram = mod["cells"]["ram"]
    assert [ram["connections"][f"DOB{i}"] for i in range(4)] == [[q] for q in Q]
    assert ram["parameters"]["REGMODE_B"] == "OUTREG"
    assert ram["parameters"]["REGMODE_A"] == "NOREG"      # the write port is left alone
    assert ram["connections"]["OCEB"] == ["1"]
    assert ram["connections"]["RSTB"] == ["0"] and ram["parameters"]["RESETMODE"] == "ASYNC"
    # The RAM's former output nets are gone from the net names.
    assert mod["netnames"]["rd_data"]["bits"] == ["x"] * 4
    assert mod["netnames"]["r"]["bits"] == Q


def test_clock_enable_goes_to_oce():
    netlist = _netlist({f"r{i}": _ff(d, q, ce=CE) for i, (d, q) in enumerate(zip(DO, Q))})
    _, summary = _fold(netlist)
    assert summary["flip_flops"] == 4
    assert netlist["modules"]["top"]["cells"]["ram"]["connections"]["OCEB"] == [CE]


def test_deterministic():
    a, b = _netlist(), _netlist()
    assert fold_bram_output_registers(a) == fold_bram_output_registers(b)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_bit_with_a_second_load_is_not_folded():
    netlist = _netlist({"other": _ff(DO[2], 250)})
    assert "DOB2 drives 2 loads" in _unchanged(netlist)


def test_bit_into_a_module_port_is_not_folded():
    netlist = _netlist()
    netlist["modules"]["top"]["ports"]["rd"] = {"direction": "output", "bits": [DO[0]]}
    assert "drives 2 loads" in _unchanged(netlist)


def test_bit_into_logic_is_not_folded():
    netlist = _netlist()
    lut = {"type": "LUT4", "parameters": {"INIT": "1010101010101010"}, "attributes": {},
           "port_directions": {"A": "input", "B": "input", "C": "input", "D": "input",
                               "Z": "output"},
           "connections": {"A": [DO[1]], "B": ["0"], "C": ["0"], "D": ["0"], "Z": [260]}}
    mod = netlist["modules"]["top"]
    mod["cells"]["r1"]["connections"]["DI"] = [260]
    mod["cells"]["lut"] = lut
    assert "drives LUT4 pin A" in _unchanged(netlist)


def test_different_clock_is_not_folded():
    netlist = _netlist({"r3": _ff(DO[3], Q[3], clk=CLK2)})
    assert "another clock" in _unchanged(netlist)


def test_other_clock_edge_is_not_folded():
    netlist = _netlist({"r0": _ff(DO[0], Q[0], CLKMUX="INV")})
    assert "other clock edge" in _unchanged(netlist)
    # ... unless the RAM port is on the falling edge too.
    netlist = _netlist({f"r{i}": _ff(d, q, CLKMUX="INV") for i, (d, q) in enumerate(zip(DO, Q))},
                       ram=_ram(CLKBMUX="INV"))
    assert fold_bram_output_registers(netlist)["flip_flops"] == 4


def test_async_reset_is_not_folded():
    netlist = _netlist({f"r{i}": _ff(d, q, lsr=RST, SRMODE="ASYNC")
                        for i, (d, q) in enumerate(zip(DO, Q))})
    assert "asynchronous reset" in _unchanged(netlist)
    assert "asynchronous reset" in _unchanged(copy.deepcopy(netlist), sync_reset=True)


def test_sync_reset_only_when_asked_and_safe():
    ffs = {f"r{i}": _ff(d, q, lsr=RST) for i, (d, q) in enumerate(zip(DO, Q))}
    assert "synchronous reset" in _unchanged(_netlist(ffs))
    netlist = _netlist(ffs)
    _, summary = _fold(netlist, sync_reset=True)
    assert summary["flip_flops"] == 4
    ram = netlist["modules"]["top"]["cells"]["ram"]
    assert ram["connections"]["RSTB"] == [RST] and ram["connections"]["OCEB"] == ["1"]
    assert ram["parameters"]["RESETMODE"] == "SYNC"
    # Not with a clock enable as well (which wins on the RAM is not documented) ...
    ffs_ce = {f"r{i}": _ff(d, q, lsr=RST, ce=CE) for i, (d, q) in enumerate(zip(DO, Q))}
    assert "clock enable and a synchronous reset" in _unchanged(_netlist(ffs_ce),
                                                               sync_reset=True)
    # ... nor when the RAM's own read reset is in use.
    ram = _ram()
    ram["connections"]["RSTB"] = [RST]
    assert "own RSTB" in _unchanged(_netlist(ffs, ram=ram), sync_reset=True)


def test_flip_flops_must_agree():
    netlist = _netlist({"r1": _ff(DO[1], Q[1], ce=CE)})   # the others have no enable
    assert "do not share" in _unchanged(netlist)


@pytest.mark.parametrize("change,reason", [
    ({"REGSET": "SET"}, "to 1"),
    ({"GSR": "ENABLED"}, "GSR"),
    ({"CEMUX": "INV"}, "CEMUX"),
    ({"LSRMODE": "PRLD"}, "PRLD"),
])
def test_flip_flop_the_ram_cannot_reproduce(change, reason):
    netlist = _netlist({"r2": _ff(DO[2], Q[2], **change)})
    assert reason in _unchanged(netlist)


def test_keep_and_registered_port_are_left_alone():
    netlist = _netlist()
    netlist["modules"]["top"]["cells"]["r0"]["attributes"]["keep"] = \
        "00000000000000000000000000000001"
    assert "keep" in _unchanged(netlist)
    assert "already OUTREG" in _unchanged(_netlist(ram=_ram(REGMODE_B="OUTREG")))


def test_pdp_mode_sets_both_halves():
    ram = _ram(DATA_WIDTH_A="00000000000000000000000000100100",
               DATA_WIDTH_B="00000000000000000000000000100100")
    ram["connections"]["OCEA"] = ["0"]
    netlist = _netlist({f"r{i}": _ff(d, q, ce=CE) for i, (d, q) in enumerate(zip(DO, Q))},
                       ram=ram)
    _, summary = _fold(netlist)
    assert summary["folded"][0]["port"] == "B (PDP)" and summary["flip_flops"] == 4
    ram = netlist["modules"]["top"]["cells"]["ram"]
    assert ram["parameters"]["REGMODE_A"] == ram["parameters"]["REGMODE_B"] == "OUTREG"
    assert ram["connections"]["OCEA"] == ram["connections"]["OCEB"] == [CE]


def test_pdpw16kd_read_side():
    conn = {"CLKR": [CLK], "CLKW": [CLK], "CER": [10], "OCER": ["1"], "RST": ["0"]}
    dirs = {k: "input" for k in conn}
    for i in range(36):
        conn[f"DO{i}"] = [DO[i]] if i < len(DO) else [500 + i]
        dirs[f"DO{i}"] = "output"
    ram = {"type": "PDPW16KD", "parameters": {"REGMODE": "NOREG", "GSR": "DISABLED"},
           "attributes": {}, "port_directions": dirs, "connections": conn}
    netlist = _netlist({f"r{i}": _ff(d, q, ce=CE) for i, (d, q) in enumerate(zip(DO, Q))},
                       ram=ram)
    _, summary = _fold(netlist)
    assert summary["folded"][0]["port"] == "R" and summary["flip_flops"] == 4
    ram = netlist["modules"]["top"]["cells"]["ram"]
    assert ram["parameters"]["REGMODE"] == "OUTREG" and ram["connections"]["OCER"] == [CE]


# ---- through the flow ----------------------------------------------------------------------

class _TableRead(wiring.Component):
    """A 1024 x 16 table (block RAM) whose read data goes straight into a reset-less
    register (which belongs in the RAM), then through an adder into another register."""
    addr: In(10)
    en: In(1)
    q: Out(16)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(
            shape=16, depth=1024, init=[(i * 40503) & 0xFFFF for i in range(1024)])
        rd = mem.read_port()
        r = Signal(16, reset_less=True)
        s = Signal(16)
        m.d.comb += [rd.addr.eq(self.addr), rd.en.eq(self.en), self.q.eq(s)]
        m.d.sync += [r.eq(rd.data), s.eq(r + 1)]
        return m


def test_flow_folds_a_registered_block_ram_read(tmp_path):
    design = Design("table", lambda target: _TableRead(), wired=False)
    rep = run_flow(design, "ecp5-25k", tmp_path / "t", freq_mhz=100)
    outreg = rep["bram_outreg"]
    assert (outreg["ports"], outreg["flip_flops"]) == (1, 16)
    assert rep["resources"]["BRAM"]["used"] == 1
    # The register is gone from the synthesis counts and from the placed design.
    assert rep["synthesis"]["total"]["FF"] == 16
    assert rep["resources"]["FF"]["used"] == 16
    netlist = json.loads((tmp_path / "t" / "netlist.json").read_text())
    [ram] = [c for c in netlist["modules"]["serrano"]["cells"].values()
             if c["type"] == "DP16KD"]
    assert "OUTREG" in (ram["parameters"]["REGMODE_A"], ram["parameters"]["REGMODE_B"])
    assert (tmp_path / "t" / "netlist.yosys.json").exists()
    [clock] = rep["timing"]["clocks"]
    assert clock["achieved_mhz"] > 100
    md = (tmp_path / "t" / "report.md").read_text()
    assert "Block RAM output registers: 1 ports, 16 flip-flops folded" in md
    write_report_md(rep, tmp_path / "again.md")
    # Off: nothing folded, nothing said.
    rep = run_flow(design, "ecp5-25k", tmp_path / "off", pnr=False, bram_outreg=False)
    assert rep["bram_outreg"] is None and rep["synthesis"]["total"]["FF"] == 32
