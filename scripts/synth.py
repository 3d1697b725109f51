#!/usr/bin/env python3
"""Synthesize (and place and route) a Serrano configuration for an FPGA; write a report.

A thin wrapper kept so that ``python scripts/synth.py`` works as documented; the code is
:mod:`serrano.commands.synth` (also ``serrano synth``).
"""

from serrano.commands.synth import main

if __name__ == "__main__":
    raise SystemExit(main())
