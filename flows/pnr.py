"""Place and route with nextpnr: one run, or one per placer seed keeping the fastest."""

import concurrent.futures
import json
import re
import shutil
from pathlib import Path
from typing import Callable

from serrano.hw.mult import Family

from .devices import Device
from .parse import parse_nextpnr_report
from .tools import ToolError, format_command, run_tool, tool_path

__all__ = ["ECP5_ROUTER", "ROUTERS", "ECP5_PLACER", "PLACERS", "pnr_argv", "place_and_route",
           "seed_sweep", "worst_mhz", "packed_ice40_logic_cells"]

# nextpnr's default router (router1) is the more timing-driven one and the flows' default;
# router2 converges far faster on the big board tops, so board builds on ECP5 use it.
ECP5_ROUTER = ("--router", "router2")
ROUTERS = ("router1", "router2")

# The heap placer's timing weight (nextpnr's default is 10): the default spreads each
# output-stage column and unit of the whole 8x8 over long routes on ECP5.
ECP5_PLACER = ("--placer-heap-timingweight", "40")
PLACERS = ("heap", "static")



def pnr_argv(device: Device, freq_mhz: float, seed: int,
              router: str | None = None, prefix: str = "",
              placer: str | None = None) -> list[str]:
    """nextpnr's command line, run in the output directory; ``prefix`` (e.g. ``seed3/``)
    puts its report there."""
    argv = [f"yowasp-nextpnr-{device.family.value}", *device.nextpnr_args]
    if device.family is Family.ECP5:
        argv.append("--out-of-context")
    else:
        argv.append("--pcf-allow-unconstrained")
    if placer is not None:
        argv += ["--placer", placer]
    if device.family is Family.ECP5 and placer in (None, "heap"):
        argv += ECP5_PLACER
    if router is not None:
        argv += ["--router", router]
    argv += ["--json", "netlist.json", "--report", f"{prefix}pnr.json", "--freq", f"{freq_mhz:g}",
             "--seed", str(seed), "--timing-allow-fail"]
    return argv



def place_and_route(dev: Device, out: Path, freq_mhz: float, seed: int,
                     router: str | None, prefix: str, timeout: float | None,
                     say: Callable[[str], None], name: str,
                     placer: str | None = None) -> tuple[dict, list[str], float]:
    """One nextpnr run in ``out`` (its report and logs under ``prefix``); returns the parsed
    report (with its seed), the command line and the seconds taken."""
    argv = pnr_argv(dev, freq_mhz, seed, router, prefix, placer)
    argv[0] = tool_path(argv[0])
    argv += ["--log", f"{prefix}nextpnr.log"]
    say(f"nextpnr: {name} on {dev.name} at {freq_mhz:g} MHz, seed {seed}")
    seconds = run_tool(argv, out, f"{prefix}nextpnr.stdout", timeout, f"{prefix}nextpnr.log")
    rep = parse_nextpnr_report(json.loads((out / f"{prefix}pnr.json").read_text()),
                               dev.family)
    rep["seed"] = seed
    return rep, argv, seconds


_PACKED_LC_RE = re.compile(r"ICESTORM_LC:\s*(\d+)\s*/\s*(\d+)")


def packed_ice40_logic_cells(dev: Device, out: Path, timeout: float | None) -> int:
    """Logic cells nextpnr-ice40 packs ``out/netlist.json`` into (``--pack-only``: about a
    second, against minutes of placement that a design a few % too large fails anyway)."""
    argv = [tool_path(f"yowasp-nextpnr-{dev.family.value}"), *dev.nextpnr_args,
            "--pcf-allow-unconstrained", "--json", "netlist.json", "--pack-only"]
    run_tool(argv, out, "nextpnr-pack.log", timeout)
    found = _PACKED_LC_RE.search((out / "nextpnr-pack.log").read_text(errors="replace"))
    if found is None:
        raise ToolError(f"nextpnr --pack-only printed no ICESTORM_LC count "
                        f"(log: {out / 'nextpnr-pack.log'})")
    return int(found.group(1))


def worst_mhz(rep: dict) -> float:
    """The slowest clock's achieved MHz of a parsed nextpnr report (0 without clocks)."""
    return min((c["achieved_mhz"] for c in rep["clocks"]), default=0.0)


def seed_sweep(dev: Device, out: Path, freq_mhz: float, seeds: list[int],
                router: str | None, jobs: int, timeout: float | None,
                say: Callable[[str], None], name: str,
                commands: list[str], placer: str | None = None
                ) -> tuple[dict, list[dict], float]:
    """Place and route once per seed (``out/seed<N>/``, ``jobs`` at a time); the fastest
    run's report and log are copied to ``out/pnr.json`` and ``out/nextpnr.log``."""
    for s in seeds:
        (out / f"seed{s}").mkdir(exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(place_and_route, dev, out, freq_mhz, s, router, f"seed{s}/",
                               timeout, say, name, placer) for s in seeds]
        results = [f.result() for f in futures]
    table = []
    for rep, argv, seconds in results:
        commands.append(f"cd {out} && {format_command(argv)}")
        table.append({"seed": rep["seed"], "achieved_mhz": worst_mhz(rep),
                      "met": all(c["met"] for c in rep["clocks"]),
                      "runtime_s": round(seconds, 1)})
        say(f"seed {rep['seed']}: {worst_mhz(rep)} MHz")
    best = max(results, key=lambda r: worst_mhz(r[0]))[0]
    for name_ in ("pnr.json", "nextpnr.log"):
        shutil.copyfile(out / f"seed{best['seed']}" / name_, out / name_)
    commands.append(f"# then: the fastest run, seed {best['seed']}: seed{best['seed']}/"
                    f"pnr.json and nextpnr.log copied to pnr.json and nextpnr.log")
    return best, table, sum(r[2] for r in results)
