#!/usr/bin/env python3
"""Error of the vector unit's integer kernels (``sim.kernels``) against float64.

For each kernel and ``act_bits`` 8 and 16, over the input ranges below, the max and mean
absolute error in output LSBs against the float64 value of the same op with the same input
and output scales (the exact function, before rounding: a perfect kernel is within 0.5); for
softmax and GELU also against the float64 evaluation of the same I-BERT polynomial ("poly",
the integer arithmetic's own error), and for softmax the row-sum error. Seeded; the figures
are in docs/numerics.md ("Vector kernels").

Usage: python scripts/kernel_errors.py [--seed 0] [--json FILE]
"""

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator

import numpy as np

from serrano.sim import kernels

# Documented bounds (docs/numerics.md): max |error| in output LSBs against the exact function.
BOUNDS = {
    ("softmax", 8): 0.6, ("softmax", 16): 24.0,
    ("layernorm", 8): 0.52, ("layernorm", 16): 0.7,
    ("gelu", 8): 0.52, ("gelu", 16): 1.2,
    ("add", 8): 0.51, ("add", 16): 0.51,
    ("requant", 8): 0.51, ("requant", 16): 0.55,
}
# With the per-channel input stage (cases marked "(pre)") its rounding (at most one LSB of the
# common scale, plus half an input LSB for the bias) adds to the kernel's own error.
PRE_BOUNDS = {
    ("layernorm", 8): 0.53, ("layernorm", 16): 0.75,
    ("gelu", 8): 0.55, ("gelu", 16): 1.2,
    ("add", 8): 0.52, ("add", 16): 0.52,
}
# max |sum(q) - sum(round(p q_max))| / q_max of softmax rows: the kernel's mass error beyond
# what rounding exact probabilities to act_bits loses anyway
ROW_SUM_BOUND = {8: 0.03, 16: 0.001}

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _lsb_errors(out: np.ndarray, ref: np.ndarray, act_bits: int) -> np.ndarray:
    lo, hi = kernels.act_range(act_bits)
    return np.abs(out.astype(np.float64) - np.clip(ref, lo, hi))


def _softmax_ref(x: np.ndarray, masked: np.ndarray, s_x: float, poly: bool) -> np.ndarray:
    t = np.where(masked, -np.inf, x * s_x)
    mx = np.max(t, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    d = np.where(masked, 0.0, mx - t)
    if poly:
        u = d * math.log2(math.e)
        z = np.floor(u)
        f = u - z
        e = 2.0 ** -z * (0.3585 * (1.353 - math.log(2) * f) ** 2 + 0.344)
    else:
        e = np.exp(-d)
    e = np.where(masked, 0.0, e)
    s = np.sum(e, axis=-1, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1.0), 0.0)


def _softmax_cases(rng: np.random.Generator, act_bits: int, rows: int
                   ) -> Iterator[tuple[str, dict]]:
    s_x = 2.0 ** -11   # int8 Q, K of scale ~0.05 and 1 / sqrt(32)
    params = kernels.softmax_params(s_x, act_bits)
    q_max = kernels.act_range(act_bits)[1]
    sentinel = kernels.mask_sentinel(act_bits)
    for n in (1, 16, 128, 512):
        logits = rng.normal(0.0, 3.0, (rows, n))
        x = np.round(logits / s_x).astype(np.int64)
        masked = rng.random((rows, n)) < 0.25
        masked[: rows // 8] = True      # some all-masked rows
        masked[rows // 8, :] = False
        mask = np.where(masked, sentinel, 0)
        out = kernels.softmax(x, mask, params)
        fig = {}
        for name, poly in (("exact", False), ("poly", True)):
            err = _lsb_errors(out, _softmax_ref(x, masked, s_x, poly) * q_max, act_bits)
            fig[f"max_{name}"], fig[f"mean_{name}"] = float(err.max()), float(err.mean())
        live = ~np.all(masked, axis=-1)
        sums = out.astype(np.int64).sum(axis=-1)[live] / q_max
        rounded = np.floor(_softmax_ref(x, masked, s_x, False) * q_max + 0.5)
        rsums = rounded.sum(axis=-1)[live] / q_max
        fig["row_sum_max"] = float(np.max(np.abs(sums - 1.0)))
        fig["row_sum_mean"] = float(np.mean(np.abs(sums - 1.0)))
        fig["row_sum_float_max"] = float(np.max(np.abs(rsums - 1.0)))
        fig["row_sum_vs_float_max"] = float(np.max(np.abs(sums - rsums)))
        assert np.all(out[~live] == 0)
        yield f"n={n}, N(0,3) logits, 25% masked", fig


def _per_channel(rng: np.random.Generator, real: np.ndarray, act_bits: int
                 ) -> tuple[np.ndarray, dict, float, np.ndarray]:
    """The accumulators a linear layer with per-channel weight scales and a bias would give
    for the real values ``real``: ``(x, pre, s_x, h)``, with the input stage's parameters
    ``pre`` to the common scale ``s_x`` and the real values ``h`` that ``x`` stands for."""
    n = real.shape[-1]
    s_act = 4.0 / kernels.act_range(act_bits)[1]
    s_in = s_act * rng.uniform(0.002, 0.02, n)      # per-channel weight scales
    bias = rng.normal(0.0, 0.5, n)
    s_x = 2 * float(s_in.max())
    pre = kernels.prescale_params(s_in, s_x, bias)
    x = np.clip(np.round(real / s_in) - pre["bias"], -2 ** 31, 2 ** 31 - 1).astype(np.int64)
    return x, pre, s_x, (x + pre["bias"]) * s_in


def _layernorm_cases(rng: np.random.Generator, act_bits: int, rows: int
                     ) -> Iterator[tuple[str, dict]]:
    q_max = kernels.act_range(act_bits)[1]
    s_x, s_res, s_out, eps = 2.0 ** -14, 4.0 / q_max, 8.0 / q_max, 1e-12
    for n in (384, 1024):
        gamma = rng.normal(1.0, 0.3, n)
        beta = rng.normal(0.0, 0.3, n)
        params = kernels.layernorm_params(s_x, s_out, gamma, beta, eps, act_bits,
                                          s_residual=s_res)
        normal = rng.normal(0.0, 2.0, (rows, n))
        normal[:, rng.integers(0, n, 2)] *= 30          # outlier channels
        extreme = rng.integers(-2 ** 31, 2 ** 31, (rows, n)).astype(np.float64) * s_x
        extreme[: rows // 4] = np.round(rng.normal(0, 1, (rows // 4, 1)) / s_x) * s_x  # constant
        small = rng.integers(-3, 4, (rows, n)) * s_x     # spread of a few LSBs
        for label, real, res in (("N(0,2) + outlier channels, residual", normal, True),
                                 ("uniform int32, 1/4 constant rows", extreme, False),
                                 ("values of +-3 LSB", small, False)):
            x = np.clip(np.round(real / s_x), -2 ** 31, 2 ** 31 - 1).astype(np.int64)
            h = x * s_x
            r = None
            if res:
                r = rng.integers(-q_max, q_max + 1, (rows, n))
                h = h + r * s_res
            out = kernels.layernorm(x, params, residual=r)
            mu = h.mean(axis=-1, keepdims=True)
            var = ((h - mu) ** 2).mean(axis=-1, keepdims=True)
            ref = ((h - mu) / np.sqrt(var + eps) * gamma + beta) / s_out
            err = _lsb_errors(out, ref, act_bits)
            yield f"n={n}, {label}", {"max_exact": float(err.max()),
                                      "mean_exact": float(err.mean())}
        # a linear layer's output: per-channel scales and a bias through the input stage
        x, pre, s_c, h = _per_channel(rng, normal, act_bits)
        params = kernels.layernorm_params(s_c, s_out, gamma, beta, eps, act_bits,
                                          s_residual=s_res)
        r = rng.integers(-q_max, q_max + 1, (rows, n))
        out = kernels.layernorm(x, params, residual=r, pre=pre)
        h = h + r * s_res
        mu = h.mean(axis=-1, keepdims=True)
        var = ((h - mu) ** 2).mean(axis=-1, keepdims=True)
        err = _lsb_errors(out, ((h - mu) / np.sqrt(var + eps) * gamma + beta) / s_out, act_bits)
        yield f"n={n}, per-channel scales + bias (pre), residual", {
            "max_exact": float(err.max()), "mean_exact": float(err.mean())}


def _gelu_case(rng: np.random.Generator, act_bits: int, rows: int
               ) -> Iterator[tuple[str, dict]]:
    q_max = kernels.act_range(act_bits)[1]
    s_x, s_out = 2.0 ** -12, 8.0 / q_max
    params = kernels.gelu_params(s_x, s_out, act_bits)
    x = rng.integers(-8 * 2 ** 12, 8 * 2 ** 12 + 1, (rows, 1024))
    out = kernels.gelu(x, params)
    xr = x * s_x
    # the float piecewise-linear Phi through the exact knots (what the table approximates)
    knots = np.arange(kernels.GELU_SEGS + 1) / 2 ** kernels.GELU_SEG_BITS
    phi_knots = (1 + _erf(knots / math.sqrt(2))) / 2
    pos = np.interp(np.abs(xr), knots, phi_knots)
    phi_pl = np.where(xr >= 0, pos, 1 - pos)
    fig = {}
    for name, phi in (("exact", (1 + _erf(xr / math.sqrt(2))) / 2), ("poly", phi_pl)):
        err = _lsb_errors(out, xr * phi / s_out, act_bits)
        fig[f"max_{name}"], fig[f"mean_{name}"] = float(err.max()), float(err.mean())
    yield "x uniform on [-8, 8]", fig
    x, pre, s_c, h = _per_channel(rng, rng.uniform(-8, 8, (rows, 1024)), act_bits)
    out = kernels.gelu(x, kernels.gelu_params(s_c, s_out, act_bits), pre=pre)
    err = _lsb_errors(out, 0.5 * h * (1 + _erf(h / math.sqrt(2))) / s_out, act_bits)
    yield "per-channel scales + bias (pre)", {"max_exact": float(err.max()),
                                              "mean_exact": float(err.mean())}


def _add_case(rng: np.random.Generator, act_bits: int, rows: int
              ) -> Iterator[tuple[str, dict]]:
    q_max = kernels.act_range(act_bits)[1]
    s_x, s_b, s_out = 2.0 ** -16 * 1.37, 6.0 / q_max, 10.0 / q_max
    params = kernels.add_params(s_x, s_b, s_out, act_bits)
    x = np.round(rng.normal(0.0, 3.0, (rows, 512)) / s_x).astype(np.int64)
    b = rng.integers(-q_max - 1, q_max + 1, (rows, 512))
    out = kernels.add(x, b, params)
    err = _lsb_errors(out, (x * s_x + b * s_b) / s_out, act_bits)
    yield "x ~ N(0,3), b uniform", {"max_exact": float(err.max()),
                                    "mean_exact": float(err.mean())}
    x, pre, s_c, h = _per_channel(rng, rng.normal(0.0, 3.0, (rows, 512)), act_bits)
    out = kernels.add(x, b, kernels.add_params(s_c, s_b, s_out, act_bits), pre=pre)
    err = _lsb_errors(out, (h + b * s_b) / s_out, act_bits)
    yield "per-channel scales + bias (pre)", {"max_exact": float(err.max()),
                                              "mean_exact": float(err.mean())}


def _requant_case(rng: np.random.Generator, act_bits: int, rows: int
                  ) -> Iterator[tuple[str, dict]]:
    from serrano.sim import numerics
    q_max = kernels.act_range(act_bits)[1]
    cols = 64
    real = rng.uniform(0.5, 2.0, cols) * q_max / 2 ** 20
    mult, shift = numerics.quantize_multiplier(real)
    bias = rng.integers(-2 ** 16, 2 ** 16, cols)
    zp = rng.integers(-5, 6, cols)
    p = {"bias": bias, "multiplier": mult, "shift": shift, "zero_point": zp,
         "lo": np.full(cols, -128), "hi": np.full(cols, 127)}
    x = rng.integers(-2 ** 20, 2 ** 20, (rows, cols))
    out = kernels.requant(x, p, act_bits)
    exact = mult.astype(np.float64) * 2.0 ** (shift.astype(np.float64) - 31)
    err = _lsb_errors(out, (x + bias) * exact + zp, act_bits)
    yield "acc uniform +-2**20", {"max_exact": float(err.max()),
                                  "mean_exact": float(err.mean())}


CASES = {"softmax": _softmax_cases, "layernorm": _layernorm_cases, "gelu": _gelu_case,
         "add": _add_case, "requant": _requant_case}


def measure(seed: int = 0, rows: int = 64) -> list[dict]:
    """Every kernel's error figures: one dict per (kernel, act_bits, case)."""
    results = []
    for kernel, cases in CASES.items():
        for act_bits in (8, 16):
            rng = np.random.default_rng([seed, act_bits, len(kernel)])
            for case, fig in cases(rng, act_bits, rows):
                bounds = PRE_BOUNDS if case.endswith("(pre)") or "(pre)," in case else BOUNDS
                results.append({"kernel": kernel, "act_bits": act_bits, "case": case,
                                "bound": bounds[(kernel, act_bits)], **fig})
    return results


def check(results: list[dict]) -> list[str]:
    """The figures that exceed their documented bounds."""
    bad = []
    for r in results:
        if r["max_exact"] > r["bound"]:
            bad.append(f"{r['kernel']} {r['act_bits']}-bit {r['case']}: "
                       f"{r['max_exact']:.3f} > {r['bound']}")
        if "row_sum_max" in r and r["row_sum_vs_float_max"] > ROW_SUM_BOUND[r["act_bits"]]:
            bad.append(f"softmax {r['act_bits']}-bit {r['case']}: row sum off by "
                       f"{r['row_sum_vs_float_max']:.4f} > {ROW_SUM_BOUND[r['act_bits']]}")
    return bad


def speed(seed: int = 0, repeat: int = 3) -> dict[str, float]:
    """Seconds (median of ``repeat`` runs) each kernel takes on one MiniLM layer's worth of
    its work at 256 tokens (softmax 12 heads x 32 x 32 per sequence of 32, LayerNorm and add
    256 x 384, GELU 256 x 1536), 16-bit."""
    rng = np.random.default_rng(seed)
    n = 384
    work = {
        "softmax": lambda: kernels.softmax(rng.integers(-2 ** 14, 2 ** 14, (8, 12, 32, 32)),
                                           np.zeros(32, dtype=np.int64),
                                           kernels.softmax_params(2 ** -11, 16)),
        "layernorm": lambda: kernels.layernorm(
            rng.integers(-2 ** 20, 2 ** 20, (256, n)),
            kernels.layernorm_params(1e-4, 0.05, np.ones(n), np.zeros(n), 1e-12, 16,
                                     s_residual=0.05),
            residual=rng.integers(-128, 128, (256, n))),
        "gelu": lambda: kernels.gelu(rng.integers(-2 ** 20, 2 ** 20, (256, 1536)),
                                     kernels.gelu_params(1e-5, 0.05, 16)),
        "add": lambda: kernels.add(rng.integers(-2 ** 20, 2 ** 20, (256, n)),
                                   rng.integers(-128, 128, (256, n)),
                                   kernels.add_params(1e-5, 0.05, 0.1, 16)),
    }
    out = {}
    for name, run in work.items():
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
    return out


def table(results: list[dict]) -> str:
    """The figures as a Markdown table."""
    lines = ["| kernel | bits | inputs | max | mean | bound | max (poly) | mean (poly) "
             "| row sum: max / mean; rounded float; kernel - rounded |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        poly = (f"{r['max_poly']:.3f} | {r['mean_poly']:.4f}" if "max_poly" in r else " | ")
        rs = (f"{r['row_sum_max']:.4f} / {r['row_sum_mean']:.5f}; "
              f"{r['row_sum_float_max']:.4f}; {r['row_sum_vs_float_max']:.4f}"
              if "row_sum_max" in r else "")
        lines.append(f"| {r['kernel']} | {r['act_bits']} | {r['case']} | {r['max_exact']:.3f} "
                     f"| {r['mean_exact']:.4f} | {r['bound']} | {poly} | {rs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the error table (``--json FILE`` also writes the figures); exit status 1 if a
    figure exceeds its documented bound."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=64, help="rows per case (default 64)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = measure(args.seed, args.rows)
    print(table(results))
    print(f"\nerrors in output LSBs against float64 (before rounding); seed {args.seed}, "
          f"{args.rows} rows per case, {time.perf_counter() - t0:.1f} s")
    times = speed(args.seed)
    print("one MiniLM layer's worth at 256 tokens (median of 3): " + ", ".join(
        f"{k} {v * 1e3:.0f} ms" for k, v in times.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python scripts/kernel_errors.py " + " ".join(argv),
                       "seed": args.seed, "rows": args.rows, "results": results,
                       "seconds": times}, f, indent=1)
    bad = check(results)
    for line in bad:
        print(f"over the bound: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
