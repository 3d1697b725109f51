#!/usr/bin/env python3
"""Synthesize each vector-lane datapath (``hw.vector_lanes``) alone for an ECP5 with the
project's Yosys flow (``flows.run_flow``), optionally placed and routed out of context, and
print LUT / FF / DSP / block RAM counts and Fmax (the figures of docs/vector.md, "Lane
datapaths").

Usage: ``python scripts/synth_lanes.py [--lanes 8] [--act-bits 16] [--no-pnr] [--out DIR]
[--keep-hierarchy] [prescale gelu add]`` (or ``serrano synth-lanes ...``); flattened by
default, so that Yosys trims the product bits a lane does not use.
"""

import argparse
import json
import sys
from pathlib import Path

from amaranth import unsigned

from serrano.flows.designs import Design
from serrano.flows.flow import run_flow
from serrano.hw.mult import MultiplierTarget
from serrano.hw.vector_lanes import AddLanes, GeluLanes, PrescaleLanes, SoloLanes

KINDS = ("prescale", "gelu", "add")
TAG = unsigned(16)   # a plausible tag: row, last flag and a destination address


def _design(kind: str, lanes: int, act_bits: int) -> Design:
    def build(target: MultiplierTarget):
        target = MultiplierTarget(family=target.family)
        if kind == "prescale":
            return SoloLanes(PrescaleLanes(lanes=lanes, tag_shape=TAG, target=target))
        cls = GeluLanes if kind == "gelu" else AddLanes
        # (with a bank of multipliers of its own: in the vector unit AddLanes and GeluLanes
        # share one)
        return SoloLanes(cls(lanes=lanes, act_bits=act_bits, tag_shape=TAG, target=target))
    return Design(name=f"{kind}_lanes", build=build, wired=True)


def main(argv: list[str] | None = None) -> int:
    """Synthesize the requested datapaths; print one JSON line of figures for each."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kinds", nargs="*", default=list(KINDS), help=", ".join(KINDS))
    ap.add_argument("--lanes", type=int, default=8)
    ap.add_argument("--act-bits", type=int, default=16, choices=[8, 16])
    ap.add_argument("--device", default="ecp5-85k")
    ap.add_argument("--no-pnr", action="store_true")
    ap.add_argument("--keep-hierarchy", action="store_true",
                    help="keep the multipliers as modules (their unused output bits stay)")
    ap.add_argument("--out", default="build/lanes")
    args = ap.parse_args(argv)
    for kind in args.kinds:
        if kind not in KINDS:
            ap.error(f"unknown datapath {kind!r} (choose from {', '.join(KINDS)})")
    for kind in args.kinds:
        out = Path(args.out) / kind
        report = run_flow(_design(kind, args.lanes, args.act_bits), args.device, out,
                          pnr=not args.no_pnr, check_fit=False, log=print,
                          keep_hierarchy=args.keep_hierarchy)
        core = report["synthesis"]["core"]
        fmax = (report.get("timing") or {}).get("fmax_mhz")
        print(json.dumps({"kind": kind, "lanes": args.lanes, "act_bits": args.act_bits,
                          "synthesis": core, "fmax_mhz": fmax,
                          "resources": report.get("resources")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
