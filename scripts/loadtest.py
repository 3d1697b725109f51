#!/usr/bin/env python3
"""Load test of the dynamic batcher in device time: latency against throughput per policy.

A thin wrapper; the code is :mod:`serrano.commands.loadtest` (also ``serrano loadtest``).
"""

from serrano.commands.loadtest import main

if __name__ == "__main__":
    raise SystemExit(main())
