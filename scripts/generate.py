#!/usr/bin/env python3
"""Generate Verilog and RTLIL of the Serrano top level.

A thin wrapper kept so that ``python scripts/generate.py`` works as documented; the code is
:mod:`serrano.commands.generate` (also ``serrano generate``).
"""

from serrano.commands.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
