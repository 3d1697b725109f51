#!/usr/bin/env python3
"""A MiniLM-shaped encoder layer as one accelerator program: cycles, overhead, utilization.

A thin wrapper; the code is :mod:`serrano.commands.bench_layer` (also ``serrano bench-layer``).
"""

from serrano.commands.bench_layer import main

if __name__ == "__main__":
    raise SystemExit(main())
