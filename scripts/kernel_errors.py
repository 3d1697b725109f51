#!/usr/bin/env python3
"""Error of the vector unit's integer kernels against float64 (docs/numerics.md).

A thin wrapper kept so that ``python scripts/kernel_errors.py`` works as documented; the code
is :mod:`serrano.commands.kernel_errors` (also ``serrano kernel-errors``).
"""

from serrano.commands.kernel_errors import main

if __name__ == "__main__":
    raise SystemExit(main())
