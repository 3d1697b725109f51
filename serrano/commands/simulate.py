#!/usr/bin/env python3
"""Run one random int8 GEMM on the accelerator and check it against numpy.

Example: python scripts/simulate.py --rows 4 --cols 4 --m 256 --k 64 --n 64 --backend pysim
With --mem-refuse / --mem-extra-latency the memory port refuses requests and delays responses
at random (sim.backend.MemoryProfile, seeded by --mem-seed); the result must still match.
Exit status: 0 when the result matches numpy bit-exactly, 1 on a mismatch, 2 on bad arguments.
"""

import argparse
import sys
import time
from pathlib import Path


import numpy as np

from serrano.hw.config import AcceleratorConfig
from serrano.sim import Accelerator
from serrano.sim.backend import MemoryProfile
from serrano.sim.runtime import BACKENDS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rows", type=int, default=8, help="systolic array rows (K per tile)")
    ap.add_argument("--cols", type=int, default=8, help="systolic array columns (N per tile)")
    ap.add_argument("--m", type=int, default=32, help="rows of x")
    ap.add_argument("--k", type=int, default=32, help="columns of x = rows of w")
    ap.add_argument("--n", type=int, default=32, help="columns of w")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--backend", choices=BACKENDS, default="pysim")
    ap.add_argument("--vcd", nargs="?", const=True, default=None, metavar="PATH",
                    help="write a waveform (pysim/compiled): to PATH, or under build/waves/")
    ap.add_argument("--mem-width", type=int, default=None, help="memory port bytes per cycle")
    ap.add_argument("--list", action="store_true", help="print the program listing")
    ap.add_argument("--mem-refuse", type=float, default=None, metavar="P",
                    help="probability that the memory port refuses requests in a cycle "
                         "(pysim/compiled)")
    ap.add_argument("--mem-extra-latency", type=int, default=None, metavar="N",
                    help="extra read latency drawn uniformly from 0..N cycles (pysim/compiled)")
    ap.add_argument("--mem-seed", type=int, default=None, metavar="S",
                    help="seed of the memory profile's random draws (default 0)")
    args = ap.parse_args(argv)

    try:
        kwargs = dict(rows=args.rows, cols=args.cols)
        if args.mem_width is not None:
            kwargs["mem_width"] = args.mem_width
        config = AcceleratorConfig(**kwargs)
        options = {}
        if args.vcd is not None:
            if args.backend == "golden":
                raise ValueError("--vcd needs a cycle-accurate backend (pysim or compiled)")
            # True: the backend names the file under build/waves/ (sim.backend.resolve_vcd)
            options["vcd"] = args.vcd if args.vcd is True else Path(args.vcd)
        profile_args = (args.mem_refuse, args.mem_extra_latency, args.mem_seed)
        if any(a is not None for a in profile_args):
            if args.backend == "golden":
                raise ValueError("--mem-refuse/--mem-extra-latency/--mem-seed need a "
                                 "cycle-accurate backend (pysim or compiled)")
            options["mem_profile"] = MemoryProfile(
                seed=args.mem_seed or 0, refuse=args.mem_refuse or 0.0,
                extra_latency=args.mem_extra_latency or 0)
        acc = Accelerator(config, backend=args.backend, **options)
        for name in ("m", "k", "n"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be >= 1")
        plan = acc.plan(args.m, args.k, args.n)
    except (ValueError, TypeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    rng = np.random.default_rng(args.seed)
    x = rng.integers(-128, 128, (args.m, args.k), dtype=np.int8)
    w = rng.integers(-128, 128, (args.k, args.n), dtype=np.int8)
    print(f"config : {config.describe()}")
    print(f"plan   : {plan.describe()}")
    if "mem_profile" in options:
        print(f"memory : {options['mem_profile'].describe()}")
    t0 = time.perf_counter()
    y = acc.matmul(x, w)
    vcd = getattr(acc.backend, "last_vcd", None) or getattr(acc.backend, "vcd", None)
    wall = time.perf_counter() - t0
    if args.list:
        from serrano.sim.asm import listing
        print(listing(acc.last_program))
    ref = x.astype(np.int32) @ w.astype(np.int32)
    s = acc.stats
    print(f"backend: {args.backend}, {len(acc.last_program)} instructions, {wall:.2f} s wall")
    if s.cycles is not None:
        print(f"cycles : {s.cycles} (ideal {s.ideal_cycles:.0f}), utilization "
              f"{100 * s.utilization:.1f} %")
        extra = ", ".join(f"{k}={s.counters[k]}" for k in s.counters if k != "cycles")
        print(f"counters: {extra}")
    else:
        print("cycles : n/a (the golden model has no timing)")
    if args.vcd is not None and vcd:
        print(f"waveform: {vcd}")
    bad = np.argwhere(y != ref)
    if bad.size:
        i, j = bad[0]
        print(f"MISMATCH: {len(bad)} of {ref.size} results differ; first at [{i},{j}]: "
              f"got {y[i, j]}, expected {ref[i, j]}", file=sys.stderr)
        return 1
    print(f"OK: {args.m}x{args.k}x{args.n} matches numpy bit-exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
