#!/usr/bin/env python3
"""Utilization of the accelerator on several GEMM shapes and array sizes.

A thin wrapper kept so that ``python scripts/benchmark.py`` works as documented; the code is
:mod:`serrano.commands.benchmark` (also ``serrano benchmark``).
"""

from serrano.commands.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
