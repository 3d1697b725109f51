#!/usr/bin/env python3
"""Run one random int8 GEMM on the accelerator and check it against numpy.

A thin wrapper kept so that ``python scripts/simulate.py`` works as documented; the code is
:mod:`serrano.commands.simulate` (also ``serrano simulate``).
"""

from serrano.commands.simulate import main

if __name__ == "__main__":
    raise SystemExit(main())
