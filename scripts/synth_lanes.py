#!/usr/bin/env python3
"""Synthesize each vector-lane datapath alone for an ECP5 (resources, optional Fmax).

A thin wrapper kept so that ``python scripts/synth_lanes.py`` works as documented; the code
is :mod:`serrano.commands.synth_lanes` (also ``serrano synth-lanes``).
"""

from serrano.commands.synth_lanes import main

if __name__ == "__main__":
    raise SystemExit(main())
