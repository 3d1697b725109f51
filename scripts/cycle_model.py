#!/usr/bin/env python3
"""Calibrate the whole-encoder cycle model against the compiled RTL.

A thin wrapper; the code is :mod:`serrano.commands.cycle_model` (also ``serrano cycle-model``).
"""

from serrano.commands.cycle_model import main

if __name__ == "__main__":
    raise SystemExit(main())
