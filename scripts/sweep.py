#!/usr/bin/env python3
"""Design-space sweep: synthesize a grid of configurations on dask.distributed, collect the

A thin wrapper kept so that ``python scripts/sweep.py`` works as documented; the code is
:mod:`serrano.commands.sweep` (also ``serrano sweep``).
"""

from serrano.commands.sweep import main

if __name__ == "__main__":
    raise SystemExit(main())
