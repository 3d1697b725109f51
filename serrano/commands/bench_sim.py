#!/usr/bin/env python3
"""Simulation speed: the Amaranth simulator against the compiled models, on the same program.

For each array shape, one int8 GEMM is compiled by the runtime (``sim.runtime.plan_gemm`` /
``build_program``) and run

* on every compiled engine asked for, to completion: simulated cycles per second of wall time
  (the native run only; the model build is reported separately), result checked against numpy;
* on the Amaranth simulator (``pysim``) for the first ``--pysim-cycles`` cycles of the same
  program (the whole GEMM would take hours there), and for a quarter of them: the difference
  gives its cycles per second without elaboration and start-up.

It prints a table with cycles/s, the ratio to pysim and the model build time. ``--cold-build``
builds every compiled model from scratch in a temporary directory so that the build time is
measured rather than read from the cache.

Examples::

    python scripts/bench_sim.py                                  # 8x8 and 16x16, 256^3
    python scripts/bench_sim.py --array 8x8 --engine verilator cxxrtl --cold-build
    python scripts/bench_sim.py --backend compiled --size 512 512 512
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from serrano.hw.config import AcceleratorConfig
from serrano.sim.backend import SimulationTimeout
from serrano.sim.runtime import build_program, pack_memory, plan_gemm, unpack_output


def parse_array(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"array must look like 8x8, not {text!r}") from None
    return rows, cols


def fmt_rate(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} M"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f} k"
    return f"{rate:.0f} "


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--array", type=parse_array, action="append",
                    help="array shape ROWSxCOLS (repeatable; default 8x8 and 16x16)")
    ap.add_argument("--size", type=int, nargs=3, default=(256, 256, 256), metavar=("M", "K", "N"),
                    help="GEMM size (default 256 256 256)")
    ap.add_argument("--backend", choices=("all", "pysim", "compiled"), default="all",
                    help="which simulators to run (default all)")
    ap.add_argument("--engine", nargs="+", choices=("verilator", "cxxrtl"),
                    default=["verilator"], help="compiled engines (default verilator)")
    ap.add_argument("--pysim-cycles", type=int, default=1000,
                    help="cycles of the program pysim simulates (default 1000)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="compiled runs per model; the fastest counts (default 3)")
    ap.add_argument("--mem-latency", type=int, default=2)
    ap.add_argument("--cold-build", action="store_true",
                    help="build compiled models from scratch (in a temporary directory) to "
                         "measure the build time")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    arrays = args.array or [(8, 8), (16, 16)]
    M, K, N = args.size

    rows_out = []
    for rows, cols in arrays:
        config = AcceleratorConfig(rows=rows, cols=cols)
        plan = plan_gemm(config, M, K, N)
        rng = np.random.default_rng(args.seed)
        x = rng.integers(-128, 128, size=(M, K), dtype=np.int8)
        w = rng.integers(-128, 128, size=(K, N), dtype=np.int8)
        words = build_program(plan)
        memory = pack_memory(plan, x, w)
        expected = x.astype(np.int32) @ w.astype(np.int32)
        print(f"{rows}x{cols}: {M}x{K}x{N} GEMM, {len(words)} instructions, "
              f"{len(memory)} B image, ideal {plan.ideal_cycles:.0f} cycles", flush=True)

        pysim_rate = None
        if args.backend in ("all", "pysim"):
            from serrano.sim.pysim import PysimBackend
            backend = PysimBackend(config, mem_latency=args.mem_latency)
            # Two partial runs of the same program; the difference excludes elaboration and
            # simulator start-up, which are paid once per run.
            timings = []
            for cycles in (args.pysim_cycles // 4, args.pysim_cycles):
                start, cpu = time.perf_counter(), time.process_time()
                try:
                    backend.run(words, memory, max_cycles=cycles)
                except SimulationTimeout:
                    pass
                else:
                    raise SystemExit("pysim finished the whole program: raise --size so that "
                                     "the measurement is a partial run of a large program")
                timings.append((cycles, time.perf_counter() - start, time.process_time() - cpu))
            (c0, w0, p0), (c1, w1, p1) = timings
            pysim_rate = (c1 - c0) / (w1 - w0)
            rows_out.append((f"{rows}x{cols}", "pysim", "-", c1 - c0, w1 - w0, pysim_rate,
                             (c1 - c0) / (p1 - p0), "1x", "-"))
            print(f"  pysim: cycles {c0} -> {c1} in {w1 - w0:.1f} s "
                  f"(start-up {w0 - (w1 - w0) * c0 / (c1 - c0):.1f} s excluded)", flush=True)

        if args.backend in ("all", "compiled"):
            from serrano.sim.compiled import CompiledBackend
            for engine in args.engine:
                tmp = None
                build_dir = "build/compiled"
                if args.cold_build:
                    Path("build").mkdir(exist_ok=True)
                    tmp = tempfile.mkdtemp(prefix="bench-cold-",
                                           dir=Path("build"))
                    build_dir = tmp
                try:
                    backend = CompiledBackend(config, engine=engine, mem_latency=args.mem_latency,
                                              build_dir=build_dir)
                    build = backend.build
                    build_txt = (f"{build.seconds:.1f}" if not build.cached
                                 else f"{build.built_seconds:.1f} (cached)")
                    elapsed = cpu = float("inf")
                    for _ in range(args.repeat):
                        start, cpu0 = time.perf_counter(), time.thread_time()
                        result = backend.run(words, memory)
                        elapsed = min(elapsed, time.perf_counter() - start)
                        cpu = min(cpu, time.thread_time() - cpu0)
                finally:
                    if tmp is not None:
                        shutil.rmtree(tmp, ignore_errors=True)
                if not result.status.ok:
                    raise SystemExit(f"{engine}: program failed: {result.status}")
                got = unpack_output(plan, result.memory)
                if not np.array_equal(got, expected):
                    raise SystemExit(f"{engine}: result differs from numpy")
                cycles = backend.last_cycles
                rate = cycles / elapsed
                ratio = f"{rate / pysim_rate:,.0f}x" if pysim_rate else "-"
                util = plan.ideal_cycles / result.counters["cycles"]
                rows_out.append((f"{rows}x{cols}", engine, build_txt, cycles, elapsed, rate,
                                 cycles / cpu, ratio, f"{util:.1%}"))
                print(f"  {engine}: {cycles} cycles in {elapsed:.3f} s, build {build_txt} s, "
                      f"result matches numpy", flush=True)

    print()
    head = ("array", "simulator", "build s", "cycles", "wall s", "cycles/s", "per CPU s",
            "vs pysim", "util")
    print(f"{head[0]:<7} {head[1]:<10} {head[2]:>13} {head[3]:>9} {head[4]:>7} "
          f"{head[5]:>11} {head[6]:>11} {head[7]:>9} {head[8]:>6}")
    for arr, sim, build_txt, cycles, elapsed, rate, cpu_rate, ratio, util in rows_out:
        print(f"{arr:<7} {sim:<10} {build_txt:>13} {cycles:>9} {elapsed:>7.2f} "
              f"{fmt_rate(rate) + 'c/s':>11} {fmt_rate(cpu_rate) + 'c/s':>11} {ratio:>9} "
              f"{util:>6}")
    print(f"\ncycles/s: simulated cycles per second of wall time (compiled: the native run "
          f"only, fastest of {args.repeat};\npysim: the difference of two partial runs, "
          f"without start-up).\nper CPU s: the same per second of CPU time, which a busy "
          f"machine disturbs less. vs pysim: wall-time ratio. util: ideal / measured cycles.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
