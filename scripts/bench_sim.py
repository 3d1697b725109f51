#!/usr/bin/env python3
"""Simulation speed: the Amaranth simulator against the compiled models, on the same program.

A thin wrapper kept so that ``python scripts/bench_sim.py`` works as documented; the code is
:mod:`serrano.commands.bench_sim` (also ``serrano bench-sim``).
"""

from serrano.commands.bench_sim import main

if __name__ == "__main__":
    raise SystemExit(main())
