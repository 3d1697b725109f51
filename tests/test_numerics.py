"""sim.numerics against the literal scalar oracle (mbqm_reference) and hand-worked values."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from serrano.sim.numerics import (
    INT32_MAX, INT32_MIN, mbqm_reference, multiply_by_quantized_multiplier, output_stage,
    quantize_multiplier, rounding_divide_by_pot, saturating_rounding_doubling_high_mul,
)

int32s = st.integers(INT32_MIN, INT32_MAX)
shifts = st.integers(-31, 30)
HYPO = settings(max_examples=300, deadline=None, database=None)


def output_stage_reference(acc: int, bias: int, multiplier: int, shift: int, zero_point: int,
                           lo: int, hi: int) -> int:
    """One output value, in plain Python ints on top of mbqm_reference."""
    def wrap32(v: int) -> int:
        return ((v + 2**31) % 2**32) - 2**31
    y = mbqm_reference(wrap32(acc + bias), multiplier, shift)
    y = wrap32(y + zero_point)
    return min(max(y, lo), hi)


# Values that exercise ties, sign changes and the int32 limits.
EDGE_X = [0, 1, -1, 2, -2, 3, -3, 127, -128, 255, -256, (1 << 15) + 1, 1 << 30, -(1 << 30),
          (1 << 30) + 1, -(1 << 30) - 1, INT32_MAX, INT32_MIN, INT32_MAX - 1, INT32_MIN + 1,
          0x5555_5555, -0x5555_5555, 12345678, -12345678]
EDGE_M = [0, 1, -1, 1 << 30, (1 << 30) + 1, INT32_MAX, INT32_MIN, INT32_MIN + 1, -(1 << 30),
          1518500250, 1288490189]
EDGE_SHIFT = [-31, -30, -16, -2, -1, 0, 1, 2, 15, 29, 30]


def _check_mbqm(xs, ms, ss):
    xs, ms, ss = (np.asarray(v, dtype=np.int64) for v in np.broadcast_arrays(xs, ms, ss))
    got = multiply_by_quantized_multiplier(xs, ms, ss)
    assert got.dtype == np.int32 and got.shape == xs.shape
    want = [mbqm_reference(int(x), int(m), int(s)) for x, m, s in
            zip(xs.flat, ms.flat, ss.flat)]
    bad = [(int(x), int(m), int(s), int(g), w) for x, m, s, g, w in
           zip(xs.flat, ms.flat, ss.flat, got.flat, want) if int(g) != w]
    assert not bad, f"{len(bad)} mismatches (x, M, shift, got, want), first: {bad[:5]}"


# ---- the oracle itself, on hand-worked values --------------------------------------------------

@pytest.mark.parametrize("x, m, shift, want", [
    (3, 1 << 30, 0, 2),          # 1.5 -> 2 (SRDHM rounds the positive tie up)
    (-3, 1 << 30, 0, -1),        # -1.5 -> -1 (SRDHM's nudge 1 - 2**30 rounds the tie up too)
    (5, 1 << 30, -1, 2),         # SRDHM: 2.5 -> 3, then RDBPOT: 3 / 2 = 1.5 -> 2
    (100, 0, 0, 0),              # multiplier 0
    (INT32_MIN, INT32_MIN, 0, INT32_MAX),   # the one saturating product
    (INT32_MIN, INT32_MIN, -31, 1),         # INT32_MAX / 2**31 rounds to 1
    (1, INT32_MIN, 30, -(1 << 30)),         # left shift 30: x becomes 2**30; * -1.0
    (2, 1 << 30, 30, -(1 << 30)),           # 2 * 2**30 wraps to INT32_MIN; * 0.5
    (INT32_MAX, INT32_MAX, 0, INT32_MAX - 1),
    (7, 1 << 30, 1, 7),          # 7 * 2 * 0.5
])
def test_reference_hand_values(x, m, shift, want):
    assert mbqm_reference(x, m, shift) == want
    assert int(multiply_by_quantized_multiplier(x, m, shift)) == want


def test_srdhm_ties_and_saturation():
    half = 1 << 30  # 0.5 in Q31
    a = np.array([1, -1, 3, -3, 2, -2, INT32_MIN, INT32_MIN, INT32_MAX, 0])
    b = np.array([half, half, half, half, half, half, INT32_MIN, INT32_MAX, INT32_MIN, INT32_MIN])
    # a*b/2**31: 0.5, -0.5, 1.5, -1.5, 1, -1, sat, ~-(2**31-1), ~-(2**31-1), 0
    want = [1, 0, 2, -1, 1, -1, INT32_MAX, -(2**31 - 1), -(2**31 - 1), 0]
    got = saturating_rounding_doubling_high_mul(a, b)
    assert got.dtype == np.int32
    assert got.tolist() == want


def test_rdbpot_ties_and_extremes():
    x = np.array([1, -1, 2, -2, 3, -3, 5, -5, 6, -6, INT32_MAX, INT32_MIN, INT32_MIN, INT32_MAX,
                  -(1 << 30), 1 << 30, 7])
    e = np.array([1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 31, 31, 0, 0, 31, 31, 0])
    # half away from zero: 0.5->1, -0.5->-1, 1.5->2, -1.5->-2, 1.5->2, -1.5->-2
    want = [1, -1, 1, -1, 2, -2, 3, -3, 2, -2, 1, -1, INT32_MIN, INT32_MAX, -1, 1, 7]
    got = rounding_divide_by_pot(x, e)
    assert got.dtype == np.int32
    assert got.tolist() == want


# ---- vectorised code vs the oracle -------------------------------------------------------------

def test_mbqm_edge_grid():
    """Every combination of edge values, shifts and multipliers (ties, INT32_MIN**2, right
    shift 0 and 31, overflowing left shifts, multiplier 0)."""
    x, m, s = np.meshgrid(EDGE_X, EDGE_M, EDGE_SHIFT, indexing="ij")
    _check_mbqm(x, m, s)


def test_mbqm_exact_ties():
    """x chosen so that x * M / 2**31 lands exactly on .5 and the quotient by 2**right on .5
    too, positive and negative."""
    rng = np.random.default_rng(1)
    right = rng.integers(1, 31, 2000)
    k = rng.integers(-(1 << 20), 1 << 20, 2000)
    # SRDHM(x, 2**30) = x / 2 exactly for even x; pick x / 2 = (2k + 1) * 2**(right-1): a tie.
    y = (2 * k + 1) << (right - 1)
    ok = np.abs(y) < (1 << 30)
    x = 2 * y[ok]
    _check_mbqm(x, 1 << 30, -right[ok])
    _check_mbqm(x + 1, 1 << 30, -right[ok])  # SRDHM tie (odd x), then near-tie
    _check_mbqm(-x - 1, 1 << 30, -right[ok])


def test_mbqm_seeded_random_arrays():
    rng = np.random.default_rng(2024)
    n = 20000
    x = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
    small = rng.integers(-70000, 70000, n)
    x = np.where(rng.random(n) < 0.5, x, small)
    m = np.where(rng.random(n) < 0.7, rng.integers(1 << 30, 1 << 31, n),
                 rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True))
    s = rng.integers(-31, 31, n)
    _check_mbqm(x, m, s)


@HYPO
@given(int32s, int32s, shifts)
def test_mbqm_hypothesis(x, m, shift):
    assert int(multiply_by_quantized_multiplier(x, m, shift)) == mbqm_reference(x, m, shift)


@HYPO
@given(int32s, int32s)
def test_srdhm_hypothesis(a, b):
    # mbqm with shift 0 is exactly SRDHM (left = right = 0, RDBPOT by 2**0 is the identity)
    assert int(saturating_rounding_doubling_high_mul(a, b)) == mbqm_reference(a, b, 0)


@HYPO
@given(int32s, st.integers(0, 31))
def test_rdbpot_hypothesis(x, e):
    got = int(rounding_divide_by_pot(x, e))
    # Independent statement of the same rounding: x / 2**e, half away from zero.
    q, r = divmod(abs(x), 1 << e)
    want = q + (1 if 2 * r >= (1 << e) and e > 0 else 0)
    assert got == (want if x >= 0 else -want)


def test_broadcasting_shapes():
    x = np.arange(-6, 6).reshape(3, 4) * 1000003
    m = np.array([1 << 30, INT32_MAX, INT32_MIN, 0])
    got = multiply_by_quantized_multiplier(x, m, -3)
    assert got.shape == (3, 4) and got.dtype == np.int32
    for (i, j), v in np.ndenumerate(got):
        assert v == mbqm_reference(int(x[i, j]), int(m[j]), -3)
    assert multiply_by_quantized_multiplier(5, 1 << 30, 0).shape == ()


# ---- output stage ------------------------------------------------------------------------------

def _check_output_stage(acc, bias, mul, shift, zp, lo, hi):
    got = output_stage(acc, bias, mul, shift, zp, lo, hi)
    acc = np.asarray(acc)
    assert got.dtype == np.int8 and got.shape == acc.shape
    cols = acc.shape[-1]
    p = [np.broadcast_to(np.asarray(v), (cols,)) for v in (bias, mul, shift, zp, lo, hi)]
    for idx, a in np.ndenumerate(acc):
        n = idx[-1]
        want = output_stage_reference(int(a), *(int(v[n]) for v in p))
        assert int(got[idx]) == want, (idx, int(a), [int(v[n]) for v in p], int(got[idx]), want)


def test_output_stage_corner_rows():
    acc = np.array([
        [0, 1, -1, 127, -128],
        [INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN, 0],  # with bias: wraps
        [1 << 20, -(1 << 20), 3, -3, 1000],
        [INT32_MIN, INT32_MIN, -5, 5, 255],
    ])
    bias = np.array([0, -1, 1, 0, -1000])
    mul = np.array([1 << 30, INT32_MIN, 1 << 30, 0, INT32_MAX])
    shift = np.array([0, 0, -1, 30, -31])
    zp = np.array([0, 5, -128, 127, -3])
    lo = np.array([-128, 5, -128, -128, -3])   # column 1 and 4: ReLU (lo = zero_point)
    hi = np.array([127, 127, 0, 127, 127])
    _check_output_stage(acc, bias, mul, shift, zp, lo, hi)
    # acc + bias wraps: INT32_MAX + 1 -> INT32_MIN; times -1.0 saturates to INT32_MAX -> 127
    y = output_stage([INT32_MAX], 1, INT32_MIN, 0, 0, -128, 127)
    assert y.tolist() == [127]
    # ReLU clamps negatives to the zero point
    assert output_stage([-1000, 1000], 0, 1 << 30, 0, 10, 10, 127).tolist() == [10, 127]


def test_output_stage_zero_point_wraps_and_lo_above_hi():
    # INT32_MIN**2 saturates to INT32_MAX; + zero point 1 wraps to INT32_MIN in int32.
    assert output_stage([INT32_MIN], 0, INT32_MIN, 0, 1, -128, 127).tolist() == [-128]
    assert output_stage([INT32_MIN], 0, INT32_MIN, 0, 0, -128, 127).tolist() == [127]
    # lo > hi: max with lo first, then min with hi -> hi
    assert output_stage([0, 100, -100], 0, 1 << 30, 0, 0, 20, -20).tolist() == [-20] * 3


def test_output_stage_seeded_random():
    rng = np.random.default_rng(7)
    rows, cols = 64, 5
    acc = rng.integers(INT32_MIN, INT32_MAX, (rows, cols), endpoint=True)
    acc[::2] = rng.integers(-(1 << 18), 1 << 18, (rows // 2, cols))
    bias = rng.integers(-(1 << 20), 1 << 20, cols)
    mul = rng.integers(1 << 30, 1 << 31, cols)
    shift = rng.integers(-31, 31, cols)
    zp = rng.integers(-128, 128, cols)
    lo = np.minimum(zp, rng.integers(-128, 128, cols))
    hi = rng.integers(-128, 128, cols)
    _check_output_stage(acc, bias, mul, shift, zp, lo, hi)


@HYPO
@given(int32s, int32s, int32s, shifts, st.integers(-128, 127), st.integers(-128, 127),
       st.integers(-128, 127))
def test_output_stage_hypothesis(acc, bias, mul, shift, zp, lo, hi):
    got = int(output_stage([acc], bias, mul, shift, zp, lo, hi)[0])
    assert got == output_stage_reference(acc, bias, mul, shift, zp, lo, hi)


# ---- argument validation -----------------------------------------------------------------------

@pytest.mark.parametrize("call, exc, words", [
    (lambda: multiply_by_quantized_multiplier(1, 1 << 30, 31), ValueError, "shift"),
    (lambda: multiply_by_quantized_multiplier(1, 1 << 30, -32), ValueError, "shift"),
    (lambda: multiply_by_quantized_multiplier(1 << 31, 1, 0), ValueError, "x"),
    (lambda: multiply_by_quantized_multiplier(1, 1 << 31, 0), ValueError, "multiplier"),
    (lambda: multiply_by_quantized_multiplier(1.5, 1, 0), TypeError, "x"),
    (lambda: multiply_by_quantized_multiplier(1, 1, True), TypeError, "shift"),
    (lambda: multiply_by_quantized_multiplier(2**70, 1, 0), ValueError, "x"),
    (lambda: multiply_by_quantized_multiplier([1, 2], [1, 2, 3], 0), ValueError, "broadcast"),
    (lambda: rounding_divide_by_pot(1, 32), ValueError, "exponent"),
    (lambda: rounding_divide_by_pot(1, -1), ValueError, "exponent"),
    (lambda: saturating_rounding_doubling_high_mul("1", 1), TypeError, "a"),
    (lambda: saturating_rounding_doubling_high_mul(1, -(1 << 31) - 1), ValueError, "b"),
    (lambda: output_stage(5, 0, 1, 0, 0), ValueError, "acc"),
    (lambda: output_stage([1, 2], [0, 0, 0], 1, 0, 0), ValueError, "bias"),
    (lambda: output_stage([1, 2], 0, 1, 0, 128), ValueError, "zero_point"),
    (lambda: output_stage([1, 2], 0, 1, 0, 0, -129, 127), ValueError, "lo"),
    (lambda: output_stage([1, 2], 0, 1, 0, 0, -128, [[1, 2]]), ValueError, "hi"),
    (lambda: output_stage([1, 2], 0, 1, [0, 31], 0), ValueError, "shift"),
    (lambda: output_stage(np.array([1.0]), 0, 1, 0, 0), TypeError, "acc"),
    (lambda: mbqm_reference(1, 1, 31), ValueError, "shift"),
    (lambda: mbqm_reference(1.0, 1, 0), TypeError, "x"),
    (lambda: mbqm_reference(1, 1 << 31, 0), ValueError, "multiplier"),
])
def test_argument_errors(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


# ---- quantize_multiplier -----------------------------------------------------------------------

def _tflite_quantize_multiplier(real: float) -> tuple[int, int]:
    """Scalar transcription of TFLite's QuantizeMultiplier (C++ std::frexp / std::round)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = math.floor(q * (1 << 31) + 0.5)  # std::round of a positive value
    assert q_fixed <= 1 << 31
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift, q_fixed = 0, 0
    if shift > 30:
        shift, q_fixed = 30, (1 << 31) - 1
    return q_fixed, shift


@pytest.mark.parametrize("real, want", [
    (0.0, (0, 0)),
    (1.0, (1 << 30, 1)),
    (0.5, (1 << 30, 0)),
    (0.75, (3 << 29, 0)),
    (2.0 ** -31, (1 << 30, -30)),
    (2.0 ** -32, (1 << 30, -31)),
    (2.0 ** -33, (0, 0)),                       # flushed: shift would be -32
    (2.0 ** -32 * (1 - 2.0 ** -40), (1 << 30, -31)),  # rounds up to 2**31, shift -32 -> -31
    (1 - 2.0 ** -40, (1 << 30, 1)),             # mantissa rounds up to 2**31: halve, shift+1
    (2.0 ** 29, (1 << 30, 30)),
    (2.0 ** 30, ((1 << 31) - 1, 30)),           # saturated
    (1e300, ((1 << 31) - 1, 30)),
])
def test_quantize_multiplier_values(real, want):
    assert quantize_multiplier(real) == want
    assert _tflite_quantize_multiplier(real) == want


def test_quantize_multiplier_vectorised_round_trip():
    rng = np.random.default_rng(11)
    real = np.concatenate([2.0 ** rng.uniform(-31, 29.9, 5000), rng.uniform(0, 1, 1000),
                           [0.0, 1.0, 0.5, 1 - 2.0 ** -33, 0.1, 1e-3]])
    m, s = quantize_multiplier(real)
    assert m.dtype == np.int32 and s.dtype == np.int32 and m.shape == real.shape
    for r, mi, si in zip(real, m, s):
        assert (int(mi), int(si)) == _tflite_quantize_multiplier(float(r)), r
    nz = real > 0
    assert np.all((m[nz] >= 1 << 30) & (s[nz] >= -31) & (s[nz] <= 30))
    recon = m.astype(np.float64) * np.exp2(s.astype(np.float64) - 31)
    rel = np.abs(recon[nz] - real[nz]) / real[nz]
    assert rel.max() <= 2.0 ** -30, rel.max()
    assert np.all(recon[~nz] == 0)


def test_quantize_multiplier_end_to_end_scale():
    """x * real through MBQM stays within rounding error of the exact product."""
    rng = np.random.default_rng(3)
    real = rng.uniform(1e-6, 1.0, 500)
    x = rng.integers(-(1 << 24), 1 << 24, 500)
    m, s = quantize_multiplier(real)
    y = multiply_by_quantized_multiplier(x, m, s).astype(np.float64)
    # 0.5 from each rounding plus the multiplier's 2**-31 relative representation error
    assert np.all(np.abs(y - x * real) <= 1.0 + np.abs(x * real) * 2.0 ** -30)


@pytest.mark.parametrize("bad, exc", [
    (-0.5, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    (np.array([0.5, -1.0]), ValueError), (np.array([0.5, np.inf]), ValueError),
    ("0.5", TypeError), (True, TypeError), (None, TypeError),
])
def test_quantize_multiplier_errors(bad, exc):
    with pytest.raises(exc, match="real_multiplier"):
        quantize_multiplier(bad)
