#!/usr/bin/env python3
"""Build a board bitstream: the accelerator (in a configuration that fits the board),

A thin wrapper kept so that ``python scripts/build_board.py`` works as documented; the code is
:mod:`serrano.commands.build_board` (also ``serrano build-board``).
"""

from serrano.commands.build_board import main

if __name__ == "__main__":
    raise SystemExit(main())
