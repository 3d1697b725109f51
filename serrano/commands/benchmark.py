#!/usr/bin/env python3
"""Utilization of the accelerator on several GEMM shapes and array sizes.

Every result is checked bit-exactly against numpy; the exit status is 1 on any mismatch.
utilization = (M*K*N / (rows*cols)) / measured cycles, counting every load and store
(performance.md). The default backend is the compiled model when it can be built, else pysim.

Example: python scripts/benchmark.py --quick --backend pysim
"""

import argparse
import sys
import time
from pathlib import Path


import numpy as np

from serrano.hw.config import AcceleratorConfig
from serrano.sim import Accelerator
from serrano.sim.runtime import BACKENDS, cycle_accurate_backend

# (rows, cols, M, K, N); the first line is the project's performance target (>= 90 %).
FULL = [
    (4, 4, 256, 64, 64),
    (4, 4, 64, 64, 64),
    (4, 4, 1024, 64, 16),
    (4, 4, 100, 50, 30),
    (4, 4, 1, 64, 64),
    (8, 8, 64, 64, 64),
    (8, 8, 256, 128, 128),
    (8, 8, 512, 256, 64),
    (2, 8, 128, 64, 64),
    (16, 16, 256, 256, 256),
]
QUICK = [
    (4, 4, 64, 64, 64),
    (4, 4, 37, 50, 29),
    (8, 8, 64, 64, 64),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=BACKENDS + ("auto",), default="auto",
                    help="auto (default): compiled if it works, else pysim")
    ap.add_argument("--quick", action="store_true", help="three small shapes only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cases = QUICK if args.quick else FULL
    rng = np.random.default_rng(args.seed)
    accelerators: dict[tuple[int, int], Accelerator] = {}
    header = (f"{'array':>6} {'M':>5} {'K':>5} {'N':>5} {'schedule':>22} {'cycles':>9} "
              f"{'ideal':>9} {'util':>7} {'check':>6} {'wall':>7}")
    print(header)
    print("-" * len(header))
    failures = 0
    for rows, cols, M, K, N in cases:
        key = (rows, cols)
        if key not in accelerators:
            config = AcceleratorConfig(rows=rows, cols=cols)
            if args.backend == "auto":
                try:
                    backend, note = cycle_accurate_backend(config)
                except RuntimeError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                print(f"# {rows}x{cols}: {note}")
                accelerators[key] = Accelerator(config, backend=backend)
            else:
                accelerators[key] = Accelerator(config, backend=args.backend)
        acc = accelerators[key]
        x = rng.integers(-128, 128, (M, K), dtype=np.int8)
        w = rng.integers(-128, 128, (K, N), dtype=np.int8)
        t0 = time.perf_counter()
        y = acc.matmul(x, w)
        wall = time.perf_counter() - t0
        ok = np.array_equal(y, x.astype(np.int32) @ w.astype(np.int32))
        failures += not ok
        s, plan = acc.stats, acc.last_plan
        sched = f"{plan.mode[:3]} {plan.chunks}x{plan.mc} rows"
        cycles = "-" if s.cycles is None else str(s.cycles)
        util = "-" if s.utilization is None else f"{100 * s.utilization:.1f}%"
        print(f"{rows:>3}x{cols:<2} {M:>5} {K:>5} {N:>5} {sched:>22} {cycles:>9} "
              f"{s.ideal_cycles:>9.0f} {util:>7} {'OK' if ok else 'FAIL':>6} {wall:>6.1f}s",
              flush=True)
    if failures:
        print(f"{failures} result(s) differ from numpy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
