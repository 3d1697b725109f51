"""The one report of the flows (:func:`run_flow`, board builds, sweep points): its shared
sections, ``report.json`` and its markdown rendering ``report.md``."""

import json
from dataclasses import asdict
from pathlib import Path

from serrano.hw.config import AcceleratorConfig

from serrano.hw.mult import Family, MultiplierTarget

from .devices import RESOURCE_KINDS, Device
from .parse import categorize, kind_counts

__all__ = ["module_breakdown", "design_section", "multiplier_section", "resource_table",
           "timing_section", "write_report", "write_report_md"]


def module_breakdown(stat: dict, core_module: str, kept: list[str],
                     family: "Family | str") -> tuple[list[dict], dict[str, dict]]:
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
                        **kind_counts(own, family), "cells": own})
    categories: dict[str, dict] = {}
    for mod in modules:
        cat = categories.setdefault(mod["category"], {})
        for k, v in mod.items():
            if isinstance(v, int):
                cat[k] = cat.get(k, 0) + v
    return modules, categories


def design_section(name: str, config: AcceleratorConfig | None, n_pes: int,
                   target: MultiplierTarget, wired: bool) -> dict:
    """``design`` of a report: what was built, and its PE multipliers."""
    return {"name": name, "config": asdict(config) if config is not None else None,
            "pes": n_pes, "multiplier": multiplier_section(target, n_pes, wired)}


def multiplier_section(target: MultiplierTarget, n_pes: int, wired: bool) -> dict:
    """``design.multiplier`` of a report: the PE multipliers ``target`` gave ``n_pes`` PEs
    (``dsp_pes``/``lut_pes`` are ``None`` when the core takes no target)."""
    dsp = target.dsp_count(n_pes)
    lut = (n_pes - dsp) if target.family is not Family.GENERIC else 0
    return {"family": target.family.value, "latency": target.pe_latency,
            "dsp_pes": dsp if wired else None, "lut_pes": lut if wired else None,
            "wired": wired}


def resource_table(dev: Device, total: dict, core: dict | None, placed: dict | None) -> dict:
    """Used/available per kind: placed counts where nextpnr gives them, else Yosys' (``total``,
    resource kinds of the whole netlist); ``core``, the core's own kinds, is added per kind
    when it differs from ``total``."""
    table = {}
    if dev.family is Family.GENERIC:
        for k, v in total.items():
            table[k] = {"used": v, "available": None, "source": "yosys"}
        return table
    for kind in RESOURCE_KINDS:
        avail = dev.resources.get(kind)
        if kind == "LUTRAM" and not total.get(kind) and \
                not (placed or {}).get(kind, {}).get("used"):
            continue
        if kind == "SPRAM" and not avail:
            continue
        entry = {"used": total[kind], "available": avail, "source": "yosys"}
        if placed and kind in placed:
            entry = {"used": placed[kind]["used"], "available": placed[kind]["available"],
                     "source": f"nextpnr {placed[kind]['bel']}"}
        if core is not None and core != total:
            entry["core"] = core[kind]
        if entry["available"]:
            entry["percent"] = round(100.0 * entry["used"] / entry["available"], 1)
        table[kind] = entry
    return table


def timing_section(pnr: dict) -> dict:
    """``timing`` of a report from a parsed nextpnr report."""
    return {"clocks": pnr["clocks"], "critical_paths": pnr["critical_paths"]}


def write_report(report: dict, out: Path) -> None:
    """Write ``out/report.json`` and its rendering ``out/report.md``."""
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_report_md(report, out / "report.md")


def write_report_md(report: dict, path: "str | Path") -> None:
    """Human-readable rendering of a report (from :func:`run_flow` or a board build)."""
    lines: list[str] = []
    d = report["design"]
    dev = report["device"]
    generic = Family(dev["family"]) is Family.GENERIC
    title = report.get("title") or f"{d['name']} on {dev['name']}"
    lines += [f"# Synthesis report: {title}", ""]
    lines.append(f"- Device: {dev['name']} ({dev.get('description') or dev.get('part')})")
    if d.get("config"):
        c = d["config"]
        lines.append(f"- Configuration: {c['rows']}x{c['cols']} array, act_depth "
                     f"{c['act_depth']}, wgt_depth {c['wgt_depth']}, acc_depth "
                     f"{c['acc_depth']}, param_depth {c['param_depth']}, mem_width "
                     f"{c['mem_width']} B, mem_bytes {c['mem_bytes']}"
                     + ("" if c.get("act_bits", 8) == 8 else f", {c['act_bits']}-bit activations"))
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
    if generic:
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
        if est and "lower_bound" in est:
            lines.append(f"Logic cells needed: {est['logic_cells']} as nextpnr packs the "
                         f"netlist (lower bound from the netlist: {est['lower_bound']} = "
                         f"{est['LUT']} LUT4 + {est['FF']} flip-flops - {est['paired']} "
                         f"LUT/flip-flop pairs).")
        elif est:
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
                                      if generic else
                                      "place and route was not run."))
    lines.append("")

    if report.get("modules"):
        lines += ["## Per-module breakdown (Yosys, before placement)", ""]
        kinds = (["gates", "FF", "memories"] if generic
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
