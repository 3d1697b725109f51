#!/usr/bin/env python3
"""Time the default formal proofs with every installed SymbiYosys solver; print a table.

    .venv/bin/python tests/formal_bench.py [--runs 3] [--solver yices --solver z3]
        [--proof "no hang"] [--timeout 600]

It lives beside the harnesses it times (Python puts this folder first on the import path
when it runs the file), not in scripts/, whose scripts wrap ``serrano.commands`` and the
installed package, which the test harnesses are not part of. The proofs and the timing are
``tests/formal_proofs.py`` (``PROOFS``, ``bench``); solvers are found by
``tests/formal_harness.py`` (``available_solvers``).
"""

import argparse
import sys

from formal_harness import SOLVERS, available_solvers
from formal_proofs import PROOFS, bench, format_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1, help="runs per proof and solver (median)")
    ap.add_argument("--solver", action="append", choices=sorted(SOLVERS),
                    help="solver to time (repeatable; default: every installed one)")
    ap.add_argument("--proof", action="append", choices=list(PROOFS),
                    help="proof to time (repeatable; default: all)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run")
    args = ap.parse_args(argv)
    solvers = args.solver or available_solvers()
    names = args.proof or list(PROOFS)
    missing = sorted(set(SOLVERS) - set(available_solvers()))
    if missing:
        print(f"not installed: {', '.join(missing)}", file=sys.stderr)
    results = bench(names, solvers, runs=args.runs, timeout=args.timeout)
    print(format_table(results, names, solvers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
