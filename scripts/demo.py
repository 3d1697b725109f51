#!/usr/bin/env python3
"""Serrano end-to-end demo: generate Verilog, then run a quantized 2-layer MLP on the

A thin wrapper kept so that ``python scripts/demo.py`` works as documented; the code is
:mod:`serrano.commands.demo` (also ``serrano demo``).
"""

from serrano.commands.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
