#!/usr/bin/env python3
"""Time the default formal proofs with every installed SymbiYosys solver; print a table.

    .venv/bin/python scripts/formal_bench.py [--runs 3] [--solver yices --solver z3]
        [--proof "no hang"] [--timeout 600]

The proofs and the timing are ``tests/formal_proofs.py`` (``PROOFS``, ``bench``); solvers
are found by ``tests/formal_harness.py`` (``available_solvers``).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from formal_harness import SOLVERS, available_solvers  # noqa: E402
from formal_proofs import PROOFS, bench, format_table  # noqa: E402


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
