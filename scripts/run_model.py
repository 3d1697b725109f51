#!/usr/bin/env python3
"""Embed sentences with a trained BERT encoder on the accelerator, beside the float model.

A thin wrapper; the code is :mod:`serrano.commands.run_model` (also ``serrano run-model``).
"""

from serrano.commands.run_model import main

if __name__ == "__main__":
    raise SystemExit(main())
