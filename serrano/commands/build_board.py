#!/usr/bin/env python3
"""Build a board bitstream: the accelerator (in a configuration that fits the board),
on-chip memory standing in for external memory, and a UART bridge to a host PC.

    python scripts/build_board.py --board icebreaker

writes ``build/<board>/serrano.bin`` (iCE40) or ``serrano.bit`` (ECP5) with the YoWASP tools,
plus ``report.json`` / ``report.md`` (resources, per-module breakdown, memories, Fmax at the
board clock, commands). No programmer is needed to build; programming is a separate step
(the report and ``docs/fpga.md`` give the command for each board).
"""

import argparse
import sys
from pathlib import Path


from serrano.flows.boards import BOARDS, build_board
from serrano.commands import run_flow_reporting_errors, script_command_line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--board", required=True, metavar="BOARD",
                   help=f"one of: {', '.join(BOARDS)}")
    p.add_argument("--out", type=Path, default=None, help="output directory (build/<board>)")
    p.add_argument("--baud", type=int, default=None, help="UART bit rate (default 115200)")
    p.add_argument("--seed", type=int, default=None,
                   help="nextpnr placer seed (default: the board's, one that meets its clock)")
    p.add_argument("--dsp-pes", type=int, default=None,
                   help="PEs that get a hard DSP (default: as many as fit)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.board not in BOARDS:
        print(f"error: unknown board {args.board!r}; choose one of: {', '.join(BOARDS)}",
              file=sys.stderr)
        return 2
    command = script_command_line("build_board", argv)
    report = run_flow_reporting_errors(lambda: build_board(
        args.board, args.out, baud=args.baud, seed=args.seed, dsp_pes=args.dsp_pes,
        command_line=command, log=lambda msg: print(msg, flush=True)))
    if isinstance(report, int):
        return report
    b = report["board"]
    res = ", ".join(f"{k} {v['used']}/{v['available']}" for k, v in report["resources"].items())
    clocks = "; ".join(f"{c['clock']}: {c['achieved_mhz']} MHz (board clock "
                       f"{c['constraint_mhz']} MHz, {'met' if c['met'] else 'NOT met'})"
                       for c in report["timing"]["clocks"])
    print(f"{b['name']}: {b['bitstream']} ({b['bitstream_bytes']} bytes); {res}; {clocks}")
    print(f"program it with: {b['program']}")
    print(f"report: {Path(b['bitstream']).parent / 'report.md'}")
    for w in report.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    return 0 if all(c["met"] for c in report["timing"]["clocks"]) else 4


if __name__ == "__main__":
    sys.exit(main())
