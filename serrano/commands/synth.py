#!/usr/bin/env python3
"""Synthesize (and place and route) a Serrano configuration for an FPGA; write a report.

    python scripts/synth.py --rows 8 --cols 8 --device ecp5-85k --out build/synth/8x8-85k

writes ``DIR/report.json`` and ``DIR/report.md`` (resources used/available per kind, a
per-module breakdown, memories and what they mapped to, Fmax per clock against the requested
frequency, the critical path, tool versions and the exact commands) next to the tool inputs
and logs. Devices: see ``--list-devices``. Only pip-installed YoWASP tools are used.
"""

import argparse
import sys
from pathlib import Path


from serrano.hw.config import AcceleratorConfig
from serrano.flows.designs import BLOCKS, block_design
from serrano.flows.devices import DEVICES
from serrano.flows.flow import run_flow
from serrano.flows.pnr import PLACERS, ROUTERS
from serrano.commands import run_flow_reporting_errors, script_command_line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--cols", type=int, default=8)
    p.add_argument("--act-depth", type=int, default=None)
    p.add_argument("--wgt-depth", type=int, default=None)
    p.add_argument("--acc-depth", type=int, default=None)
    p.add_argument("--param-depth", type=int, default=None)
    p.add_argument("--mem-width", type=int, default=None)
    p.add_argument("--mem-bytes", type=int, default=None)
    p.add_argument("--no-overlap", action="store_true",
                   help="dispatch each instruction only when every unit is idle (smaller)")
    p.add_argument("--counter-width", type=int, default=None,
                   help="bits per performance counter, 16..48 (default 48)")
    p.add_argument("--no-activity-counters", action="store_true",
                   help="leave out the activity counters (AcceleratorConfig("
                        "activity_counters=False); smaller)")
    p.add_argument("--act-bits", type=int, default=None, choices=(8, 16),
                   help="activation width (AcceleratorConfig.act_bits; default 8)")
    p.add_argument("--vector", action="store_true",
                   help="with the vector unit (AcceleratorConfig(vector=True))")
    p.add_argument("--device", default="ecp5-85k", metavar="DEVICE",
                   help=f"one of: {', '.join(DEVICES)} (default ecp5-85k)")
    p.add_argument("--block", default="accelerator", metavar="BLOCK",
                   help=f"what to synthesize: {', '.join(BLOCKS)} (default accelerator)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--freq", type=float, default=None,
                   help="requested clock frequency in MHz (default: the device's)")
    p.add_argument("--dsp-pes", type=int, default=None,
                   help="PEs that get a hard DSP (default: as many as fit)")
    p.add_argument("--no-pnr", action="store_true", help="stop after synthesis")
    p.add_argument("--flat", action="store_true",
                   help="flatten everything (no per-module breakdown)")
    p.add_argument("--seed", type=_seeds, default=[1], metavar="SEED[,SEED...]",
                   help="nextpnr placer seed; several (1,2,3 or 1-4) place and route once "
                        "per seed and report the fastest, with every seed's Fmax")
    p.add_argument("--jobs", type=int, default=1,
                   help="place-and-route runs at a time for several seeds (default 1)")
    p.add_argument("--router", default=None, choices=ROUTERS,
                   help="nextpnr router (default: nextpnr's, router1; router2 is faster on "
                        "big designs but less timing-driven)")
    p.add_argument("--placer", default=None, choices=PLACERS,
                   help="nextpnr placer (default: heap, with a raised timing weight on ECP5; "
                        "static, the electrostatic placer, keeps DSP routes shorter on the "
                        "8x8 ECP5 build)")
    p.add_argument("--force", action="store_true",
                   help="skip the fit checks and run the tools anyway")
    p.add_argument("--list-devices", action="store_true", help="list devices and exit")
    return p.parse_args(argv)


def _seeds(text: str) -> list[int]:
    """``3``, ``1,2,5`` or ``1-4``."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            first = int(lo)
            last = int(hi) if hi else first
            if first < 0 or last < first:
                raise ValueError
            seeds += range(first, last + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds are non-negative integers such as 3, 1,2,5 or 1-4, not {text!r}") from None
    return seeds


def config_from_args(args: argparse.Namespace) -> AcceleratorConfig:
    kwargs = {"rows": args.rows, "cols": args.cols}
    for name in ("act_depth", "wgt_depth", "acc_depth", "param_depth", "mem_width",
                 "mem_bytes"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    if args.no_overlap:
        kwargs["overlap"] = False
    if args.counter_width is not None:
        kwargs["counter_width"] = args.counter_width
    if args.act_bits is not None:
        kwargs["act_bits"] = args.act_bits
    if args.no_activity_counters:
        kwargs["activity_counters"] = False
    if args.vector:
        kwargs["vector"] = True
    return AcceleratorConfig(**kwargs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_devices:
        for dev in DEVICES.values():
            res = ", ".join(f"{k} {v}" for k, v in dev.resources.items())
            print(f"{dev.name:12s} {dev.description}" + (f" ({res})" if res else ""))
        return 0
    if args.device not in DEVICES:
        print(f"error: unknown device {args.device!r}; choose one of: {', '.join(DEVICES)}",
              file=sys.stderr)
        return 2
    if args.block not in BLOCKS:
        print(f"error: unknown block {args.block!r}; choose one of: {', '.join(BLOCKS)}",
              file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: bad configuration: {exc}", file=sys.stderr)
        return 2
    design = block_design(args.block, config)
    command = script_command_line("synth", argv)
    report = run_flow_reporting_errors(lambda: run_flow(
        design, args.device, args.out, freq_mhz=args.freq, pnr=not args.no_pnr,
        seed=args.seed, jobs=args.jobs, dsp_pes=args.dsp_pes, keep_hierarchy=not args.flat,
        check_fit=not args.force, router=args.router, placer=args.placer,
        command_line=command, log=lambda msg: print(msg, flush=True)))
    if isinstance(report, int):
        return report
    print(summary(report))
    print(f"report: {args.out / 'report.md'}")
    return 0


def summary(report: dict) -> str:
    """One paragraph: resources and Fmax."""
    res = report["resources"]
    parts = []
    for kind, v in res.items():
        parts.append(f"{kind} {v['used']}" + (f"/{v['available']}" if v.get("available")
                                               else ""))
    text = f"{report['design']['name']} on {report['device']['name']}: " + ", ".join(parts)
    for clock in report.get("timing", {}).get("clocks", []):
        text += (f"; {clock['clock']}: {clock['achieved_mhz']} MHz "
                 f"(requested {clock['constraint_mhz']}, "
                 f"{'met' if clock['met'] else 'NOT met'})")
    return text


if __name__ == "__main__":
    sys.exit(main())
