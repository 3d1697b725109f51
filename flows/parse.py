"""Reading the tools' outputs: Yosys ``stat -json``, nextpnr's ``--report`` JSON, the memories
of an RTLIL design and what Yosys mapped them to, and module-name categories."""

import re

from serrano.hw.mult import Family

from .devices import RESOURCE_KINDS

__all__ = ["parse_yosys_stat", "parse_nextpnr_report", "parse_memories",
           "estimate_ice40_logic_cells", "kind_counts", "categorize", "MODULE_RE"]

_FF_RE = re.compile(r"^\$_(S?DFF|DFFE|SDFFC?E|ALDFF|DFFSR|DLATCH|SR)")


def kind_counts(cells: dict[str, int], family: "Family | str") -> dict[str, int]:
    """Cell-type counts of one module -> resource kinds."""
    family = Family(family)
    out = {k: 0 for k in RESOURCE_KINDS}
    if family is Family.GENERIC:
        out = {"gates": 0, "FF": 0, "memories": 0, "other": 0}
        for t, n in cells.items():
            if _FF_RE.match(t):
                out["FF"] += n
            elif t == "$mem_v2":
                out["memories"] += n
            elif t.startswith("$_"):
                out["gates"] += n
            elif t.startswith("$"):
                out["other"] += n
        return out
    for t, n in cells.items():
        if family is Family.ECP5:
            if t == "LUT4":
                out["LUT"] += n
            elif t == "CCU2C":
                out["LUT"] += 2 * n
            elif t == "TRELLIS_FF":
                out["FF"] += n
            elif t in ("MULT18X18D", "ALU54B"):
                out["DSP"] += n if t == "MULT18X18D" else 0
            elif t in ("DP16KD", "PDPW16KD"):
                out["BRAM"] += n
            elif t in ("TRELLIS_DPR16X4", "DPR16X4C"):
                out["LUTRAM"] += n
        elif family is Family.ICE40:
            if t == "SB_LUT4":
                out["LUT"] += n
            elif t.startswith("SB_DFF"):
                out["FF"] += n
            elif t == "SB_MAC16":
                out["DSP"] += n
            elif t.startswith("SB_RAM40_4K"):
                out["BRAM"] += n
            elif t == "SB_SPRAM256KA":
                out["SPRAM"] += n
    return out


def parse_yosys_stat(stat: dict, family: "Family | str", *, core_module: str = "serrano",
                     top: str = "serrano") -> dict:
    """Per-module and total resources from ``stat -json`` output.

    Returns ``{"total": kinds, "core": kinds, "modules": {module: {"cells": {...},
    "kinds": {...}}}}``; ``total`` includes everything under the top (for iCE40 the harness
    too), ``core`` only ``core_module`` and what it instantiates.
    """
    modules = {}
    for name, info in stat["modules"].items():
        modname = name[1:] if name.startswith("\\") else name
        cells = {t: n for t, n in info.get("num_cells_by_type", {}).items()}
        modules[modname] = {"cells": cells}

    def hier_cells(mod: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for t, n in modules[mod]["cells"].items():
            if t in modules or t.lstrip("\\") in modules:
                sub = hier_cells(t.lstrip("\\"))
                for tt, nn in sub.items():
                    total[tt] = total.get(tt, 0) + nn * n
            else:
                total[t] = total.get(t, 0) + n
        return total

    for name, mod in modules.items():
        mod["hier_cells"] = hier_cells(name)
        mod["kinds"] = kind_counts(mod["hier_cells"], family)
    if top not in modules:
        top = next(iter(modules))
    return {
        "total": kind_counts(hier_cells(top), family),
        "total_cells": hier_cells(top),
        "core": kind_counts(hier_cells(core_module), family) if core_module in modules
        else None,
        "modules": modules,
    }


def parse_nextpnr_report(report: dict, family: "Family | str") -> dict:
    """Utilization, Fmax per clock and critical paths from nextpnr's ``--report`` JSON."""
    util = report.get("utilization", {})
    names = {
        Family.ECP5: {"LUT": "TRELLIS_COMB", "FF": "TRELLIS_FF", "DSP": "MULT18X18D",
                 "BRAM": "DP16KD", "LUTRAM": "TRELLIS_RAMW"},
        Family.ICE40: {"LUT": "ICESTORM_LC", "DSP": "ICESTORM_DSP", "BRAM": "ICESTORM_RAM",
                  "SPRAM": "ICESTORM_SPRAM"},
    }[Family(family)]
    resources = {}
    for kind, bel in names.items():
        if bel in util:
            resources[kind] = {"used": util[bel]["used"], "available": util[bel]["available"],
                               "bel": bel}
    # nextpnr-ice40 lists a combinational SB_MAC16 (clock input tied to 0) as a domain of
    # its own, "$PACKER_GND_NET_$glb_clk": a constant, not a clock.
    def constant(name: str | None) -> bool:
        return bool(name) and ("$PACKER_GND_NET" in name or "$PACKER_VCC_NET" in name)

    clocks = []
    for clock, info in sorted(report.get("fmax", {}).items()):
        if constant(clock):
            continue
        clocks.append({"clock": clock, "achieved_mhz": round(info["achieved"], 2),
                       "constraint_mhz": round(info["constraint"], 2),
                       "met": info["achieved"] >= info["constraint"]})
    paths = []
    for cp in report.get("critical_paths", []):
        steps = cp.get("path", [])
        if not steps or constant(cp.get("from")) or constant(cp.get("to")):
            continue
        first, last = steps[0]["from"], steps[-1]["to"]
        logic = sum(s["delay"] for s in steps if s.get("type") in ("logic", "clk-to-q",
                                                                    "setup"))
        routing = sum(s["delay"] for s in steps if s.get("type") == "routing")
        paths.append({
            "from_clock": cp.get("from"), "to_clock": cp.get("to"),
            "start": f"{first['cell']}.{first['port']}",
            "end": f"{last['cell']}.{last['port']}",
            "delay_ns": round(sum(s["delay"] for s in steps), 3),
            "logic_ns": round(logic, 3), "routing_ns": round(routing, 3),
            "steps": len(steps),
        })
    return {"resources": resources, "clocks": clocks, "critical_paths": paths}


def estimate_ice40_logic_cells(netlist: dict) -> dict:
    """Lower bound of the iCE40 logic cells (LUT4 + flip-flop pairs) a netlist needs.

    A logic cell holds one LUT4 and one flip-flop, and the flip-flop can only take its input
    from its own LUT: a flip-flop shares a cell only with a LUT whose sole load it is. So
    cells >= LUTs + flip-flops - such pairs. (nextpnr needs a few per cent more: carry-chain
    feed-throughs and constants.) Blackbox and library modules are skipped.
    """
    lut = ff = paired = 0
    for mod in netlist["modules"].values():
        if mod.get("attributes", {}).get("blackbox") or not mod.get("cells"):
            continue
        driver: dict[int, str] = {}
        loads: dict[int, int] = {}
        for cell in mod["cells"].values():
            dirs = cell.get("port_directions", {})
            for port, bits in cell["connections"].items():
                for bit in bits:
                    if isinstance(bit, str):
                        continue
                    if dirs.get(port) == "output":
                        driver[bit] = cell["type"]
                    else:
                        loads[bit] = loads.get(bit, 0) + 1
        for port in mod.get("ports", {}).values():
            if port["direction"] == "output":
                for bit in port["bits"]:
                    if not isinstance(bit, str):
                        loads[bit] = loads.get(bit, 0) + 1
        for cell in mod["cells"].values():
            if cell["type"] == "SB_LUT4":
                lut += 1
            elif cell["type"].startswith("SB_DFF"):
                ff += 1
                d = cell["connections"].get("D", ["x"])[0]
                if not isinstance(d, str) and driver.get(d) == "SB_LUT4" and loads.get(d) == 1:
                    paired += 1
    return {"LUT": lut, "FF": ff, "paired": paired, "logic_cells": lut + ff - paired}


_MEMORY_RE = re.compile(r"^\s*memory width (\d+) size (\d+)(?: offset -?\d+)? \\(\S+)\s*$")
MODULE_RE = re.compile(r"^module \\(\S+)\s*$")
_LIBMAP_RE = re.compile(r"^mapping memory (\S+) via (\S+)")


def parse_memories(il_text: str, yosys_log: str | None,
                   family: "Family | str") -> list[dict]:
    """Every memory of the design (from the RTLIL) and what Yosys mapped it to."""
    mems = []
    module = None
    for line in il_text.splitlines():
        mm = MODULE_RE.match(line)
        if mm:
            module = mm.group(1)
            continue
        mm = _MEMORY_RE.match(line)
        if mm and module is not None:
            width, depth, name = int(mm.group(1)), int(mm.group(2)), mm.group(3)
            mems.append({"module": module, "name": name, "path": f"{module}.{name}",
                         "width": width, "depth": depth, "bits": width * depth})
    mapped: dict[str, str] = {}
    if yosys_log:
        for line in yosys_log.splitlines():
            mm = _LIBMAP_RE.match(line.strip())
            if mm:
                mapped[mm.group(1)] = mm.group(2)
    pretty = {
        "$__DP16KD_": "BRAM (DP16KD)", "$__PDPW16KD_": "BRAM (PDPW16KD)",
        "$__TRELLIS_DPR16X4_": "LUTRAM (DPR16X4)", "$__ICE40_RAM4K_": "BRAM (SB_RAM40_4K)",
        "$__ICE40_SPRAM_": "SPRAM (SB_SPRAM256KA)",
    }
    for mem in mems:
        if Family(family) is Family.GENERIC:
            mem["mapped_to"] = "memory (generic $mem_v2, not mapped)"
            mem["in_ram"] = True
        elif mem["path"] in mapped:
            lib = mapped[mem["path"]]
            mem["mapped_to"] = pretty.get(lib, lib)
            mem["in_ram"] = "BRAM" in mem["mapped_to"] or "SPRAM" in mem["mapped_to"]
        else:
            mem["mapped_to"] = "logic (flip-flops)"
            mem["in_ram"] = False
    return mems


# ---- per-module categories -------------------------------------------------------------------

_CATEGORIES = [
    ("harness", re.compile(r"^harness$")),
    ("array", re.compile(r"array|systolic|^pe_\d", re.I)),
    ("output stage", re.compile(r"output|requant|outstage|post", re.I)),
    ("buffers", re.compile(r"buf|sram|scratch|param|^act|^wgt|^acc", re.I)),
    ("decoder", re.compile(r"decod|dispatch|scoreboard|sequencer|control", re.I)),
    ("load/store", re.compile(r"load|store|arbiter|mem_?port|dma", re.I)),
    ("execute", re.compile(r"exec", re.I)),
]


def categorize(instance: str) -> str:
    """The category of a module instance name (``array``, ``buffers``, ...; ``other``)."""
    for category, pattern in _CATEGORIES:
        if pattern.search(instance):
            return category
    return "other"
