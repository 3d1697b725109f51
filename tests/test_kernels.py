"""The vector unit's integer kernels (sim/kernels.py): bit-exact against scalar transcriptions
of their pseudo-code in docs/numerics.md, within their documented error bounds of float64,
argument validation, and speed."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from serrano.commands import kernel_errors
from serrano.sim import kernels as K
from serrano.sim import numerics
from serrano.sim.asm import output_params_dtype

ROOT = Path(__file__).resolve().parents[1]
BITS = (8, 16)


# ---- scalar oracles: literal transcriptions of docs/numerics.md, Python ints throughout -----

def _rs(v: int, m: int, sh: int) -> int:
    return (v * m + (1 << (sh - 1))) >> sh


def _clip(v: int, act_bits: int) -> int:
    lo, hi = K.act_range(act_bits)
    return min(max(v, lo), hi)


def softmax_row_ref(x: list[int], mask: list[int], p: K.SoftmaxParams) -> list[int]:
    sentinel = -(1 << (p.act_bits - 1))
    live = [j for j in range(len(x)) if mask[j] != sentinel]
    if not live:
        return [0] * len(x)
    t = [x[j] + mask[j] for j in range(len(x))]
    m = max(t[j] for j in live)
    e = []
    for j in range(len(x)):
        if j not in live:
            e.append(0)
            continue
        v = _rs(m - t[j], p.multiplier, p.shift)
        z, r = min(v >> 15, 18), v & 0x7FFF
        e.append(((K.EXP_B - r) ** 2 + K.EXP_C + (1 << (z + 15))) >> (z + 16))
    recip = p.numerator // sum(e)
    return [(ej * recip + (1 << (p.k - 1))) >> p.k for ej in e]


def layernorm_row_ref(x: list[int], p: K.LayerNormParams, res: list[int] | None) -> list[int]:
    n = len(x)
    if res is None:
        h = list(x)
    else:
        h = [min(max(xj + _rs(rj, p.res_mult, p.res_shift), -2 ** 31), 2 ** 31 - 1)
             for xj, rj in zip(x, res)]
    total = sum(h)
    mu = (total + n // 2) // n
    rem = total - n * mu
    big_p = (max(h) - min(h)).bit_length() - 23
    if big_p >= 0:
        c = [(hj - mu) >> big_p for hj in h]
    else:
        frac = ((rem << -big_p) + n // 2) // n
        c = [((hj - mu) << -big_p) - frac for hj in h]
    q = sum(cj * cj for cj in c)
    s = p.eps_shift + 2 * big_p
    eps = p.eps_mult >> s if s >= 0 else min(p.eps_mult << -s, 2 ** 62 - 1)
    sig = math.isqrt(min(q + eps, 2 ** 62 - 1))
    inv = min(2 ** 52 // max(sig, 1), 2 ** 32 - 1)
    out = []
    for j, cj in enumerate(c):
        w = (cj * inv + 2 ** 29) >> 30
        y = (w * p.gamma_mult[j] + p.beta_add[j] + (1 << (p.out_shift - 1))) >> p.out_shift
        out.append(_clip(y, p.act_bits))
    return out


def gelu_ref(x: int, p: K.GeluParams) -> int:
    u = _rs(x, p.in_mult, p.in_shift)
    a = min(abs(u), 128 * 4096 - 1)
    k, r = a >> 12, a & 4095
    knot = lambda i: math.floor((1 + math.erf(i / 16 / math.sqrt(2))) / 2 * 2 ** 17 + 0.5)
    phi = knot(k) + (((knot(k + 1) - knot(k)) * r + 2 ** 11) >> 12)
    if u < 0:
        phi = 2 ** 17 - phi
    y = (x * phi + 2 ** 16) >> 17
    return _clip(numerics.mbqm_reference(y, p.out_mult, p.out_shift), p.act_bits)


def add_ref(x: int, b: int, p: K.AddParams) -> int:
    ux = min(max(_rs(x, p.x_mult, p.x_shift), -2 ** 31), 2 ** 31 - 1)
    ub = min(max(_rs(b, p.b_mult, p.b_shift), -2 ** 31), 2 ** 31 - 1)
    return _clip((ux + ub + 2 ** 11) >> 12, p.act_bits)


# ---- inputs -------------------------------------------------------------------------------

def _scores(rng: np.random.Generator, rows: int, n: int, s_x: float) -> np.ndarray:
    kind = rng.integers(0, 3)
    if kind == 0:   # attention-like logits
        return np.clip(np.round(rng.normal(0, 3, (rows, n)) / s_x), -2 ** 31, 2 ** 31 - 1)
    if kind == 1:   # extreme int32
        return rng.choice([-2 ** 31, 2 ** 31 - 1, 0, -1, 1], (rows, n))
    return rng.integers(-2 ** 31, 2 ** 31, (rows, n))


# ---- softmax ------------------------------------------------------------------------------

@pytest.mark.parametrize("act_bits", BITS)
def test_softmax_matches_scalar_oracle(act_bits):
    rng = np.random.default_rng(act_bits)
    sentinel = K.mask_sentinel(act_bits)
    lo, hi = K.act_range(act_bits)
    for n in (1, 2, 3, 7, 17, 64, 513):
        s_x = float(10 ** rng.uniform(-9, 0))
        p = K.softmax_params(s_x, act_bits)
        rows = 8
        x = _scores(rng, rows, n, s_x).astype(np.int64)
        mask = np.where(rng.random((rows, n)) < 0.3, sentinel, 0)
        mask[1] = sentinel                                   # all masked
        mask[2] = sentinel
        mask[2, rng.integers(0, n)] = 0                      # one key unmasked
        mask[3] = np.where(mask[3] == sentinel, sentinel, rng.integers(lo + 1, hi + 1, n))
        out = K.softmax(x, mask, p)
        assert out.dtype == (np.int8 if act_bits == 8 else np.int16) and out.shape == x.shape
        for i in range(rows):
            assert out[i].tolist() == softmax_row_ref(x[i].tolist(), mask[i].tolist(), p), \
                (n, s_x, i)
        q_max = hi
        assert np.all(out[1] == 0)
        assert sorted(out[2].tolist()) == [0] * (n - 1) + [q_max]
        assert np.all(out[mask == sentinel] == 0)


@pytest.mark.parametrize("act_bits", BITS)
def test_softmax_length_one_rows_are_one(act_bits):
    p = K.softmax_params(1e-3, act_bits)
    x = np.array([[-2 ** 31], [0], [2 ** 31 - 1]])
    assert K.softmax(x, None, p).tolist() == [[K.act_range(act_bits)[1]]] * 3


def test_softmax_broadcast_mask_row():
    p = K.softmax_params(2 ** -10, 8)
    x = np.arange(30).reshape(3, 10) * 100
    mask = np.array([0] * 8 + [-128] * 2)
    out = K.softmax(x, mask, p)
    assert np.all(out[:, 8:] == 0)
    assert out.tolist() == K.softmax(x, np.broadcast_to(mask, x.shape), p).tolist()


# ---- layernorm ----------------------------------------------------------------------------

def _ln_params(rng, n, act_bits, eps, residual=True):
    q_max = K.act_range(act_bits)[1]
    return K.layernorm_params(float(10 ** rng.uniform(-8, -2)), 8.0 / q_max,
                              rng.normal(1, 0.5, n), rng.normal(0, 0.5, n), eps, act_bits,
                              s_residual=float(10 ** rng.uniform(-3, 0)) if residual else None)


@pytest.mark.parametrize("act_bits", BITS)
def test_layernorm_matches_scalar_oracle(act_bits):
    rng = np.random.default_rng(10 + act_bits)
    lo, hi = K.act_range(act_bits)
    for n, eps in ((1, 1e-5), (3, 0.0), (13, 1e-12), (100, 1e-5), (384, 1e-12), (1023, 10.0)):
        p = _ln_params(rng, n, act_bits, eps)
        rows = 6
        x = rng.integers(-2 ** 31, 2 ** 31, (rows, n))
        x[1] = rng.integers(-4, 5, n) + int(rng.integers(-2 ** 30, 2 ** 30))   # small spread
        x[2] = int(rng.integers(-2 ** 31, 2 ** 31))                             # constant
        x[3] = rng.choice([-2 ** 31, 2 ** 31 - 1], n)                           # extreme
        x[4] = np.round(rng.normal(0, 2 ** 16, n))
        res = rng.integers(lo, hi + 1, (rows, n))
        res[2] = 0
        for r in (None, res):
            out = K.layernorm(x, p, residual=r)
            for i in range(rows):
                ref = layernorm_row_ref(x[i].tolist(), p, None if r is None else r[i].tolist())
                assert out[i].tolist() == ref, (n, eps, i, r is None)


@pytest.mark.parametrize("act_bits", BITS)
@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-5, 1e3])
def test_layernorm_constant_rows_give_beta(act_bits, eps):
    rng = np.random.default_rng(act_bits)
    n = 37
    p = _ln_params(rng, n, act_bits, eps, residual=False)
    beta_q = [_clip((bw + (1 << (p.out_shift - 1))) >> p.out_shift, act_bits)
              for bw in p.beta_add]
    x = np.array([[v] * n for v in (-2 ** 31, -1, 0, 5, 2 ** 31 - 1)])
    assert K.layernorm(x, p).tolist() == [beta_q] * 5
    # the quantized beta is beta / s_out rounded (within the multiplier's precision)
    s_out = 8.0 / K.act_range(act_bits)[1]
    beta = rng.normal(0, 0.5, n)
    q = K.layernorm_params(1e-4, s_out, np.ones(n), beta, eps, act_bits)
    got = K.layernorm(np.full((1, n), 7), q)[0]
    assert np.max(np.abs(got - np.clip(beta / s_out, *K.act_range(act_bits)))) <= 0.5 + 1e-6


# ---- gelu, add, requant -------------------------------------------------------------------

@pytest.mark.parametrize("act_bits", BITS)
def test_gelu_matches_scalar_oracle(act_bits):
    rng = np.random.default_rng(20 + act_bits)
    q_max = K.act_range(act_bits)[1]
    for s_x in (1e-7, 2 ** -12, 0.01, 1.0):
        p = K.gelu_params(s_x, float(10 ** rng.uniform(-1, 1)) * 8 / q_max, act_bits)
        x = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 200),
                            np.round(rng.uniform(-9, 9, 300) / s_x),
                            [-2 ** 31, 2 ** 31 - 1, 0, 1, -1]]).astype(np.int64)
        out = K.gelu(x.reshape(5, -1), p).ravel()
        assert out.tolist() == [gelu_ref(int(v), p) for v in x], s_x


@pytest.mark.parametrize("act_bits", BITS)
def test_add_matches_scalar_oracle(act_bits):
    rng = np.random.default_rng(30 + act_bits)
    lo, hi = K.act_range(act_bits)
    for s_x, s_b, s_out in ((1e-5, 0.05, 0.1), (1e-9, 1e-3, 1e-3), (0.5, 1e-4, 1e-2)):
        p = K.add_params(s_x, s_b, s_out, act_bits)
        x = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 300), [-2 ** 31, 2 ** 31 - 1]])
        b = np.concatenate([rng.integers(lo, hi + 1, 300), [hi, lo]])
        out = K.add(x.reshape(2, -1), b.reshape(2, -1), p).ravel()
        assert out.tolist() == [add_ref(int(u), int(v), p) for u, v in zip(x, b)]


def test_add_is_defined_for_any_multiplier():
    """Parameters straight from the parameter buffer, not from add_params: ub saturates."""
    p = K.AddParams(16, (1 << 31) - 1, 1, (1 << 31) - 1, 1)
    x = np.array([[2 ** 31 - 1, -2 ** 31, 0, 5]])
    b = np.array([[32767, -32768, 32767, -1]])
    out = K.add(x, b, p)
    assert out.tolist() == [[add_ref(int(u), int(v), p) for u, v in zip(x[0], b[0])]]
    assert out.tolist() == [[32767, -32768, 32767, 32767]]


def _output_params(rng, cols):
    p = np.zeros(cols, dtype=output_params_dtype())
    p["bias"] = rng.integers(-2 ** 31, 2 ** 31, cols)
    p["multiplier"] = rng.integers(-2 ** 31, 2 ** 31, cols)
    p["shift"] = rng.integers(-40, 41, cols)
    p["zero_point"] = rng.integers(-128, 128, cols)
    p["lo"] = rng.integers(-128, 128, cols)
    p["hi"] = rng.integers(-128, 128, cols)
    return p


def test_requant_8_is_the_output_stage():
    rng = np.random.default_rng(40)
    p = _output_params(rng, 11)
    x = rng.integers(-2 ** 31, 2 ** 31, (7, 11))
    shift = np.clip(p["shift"].astype(np.int64), -31, 30)
    ref = numerics.output_stage(x, p["bias"], p["multiplier"], shift, p["zero_point"],
                                p["lo"], p["hi"])
    assert K.requant(x, p, 8).tolist() == ref.tolist()


def test_requant_16_matches_scalar_oracle():
    rng = np.random.default_rng(41)
    p = _output_params(rng, 9)
    x = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, (5, 9)),
                        np.full((1, 9), -2 ** 31), np.full((1, 9), 2 ** 31 - 1)])
    out = K.requant(x, p, 16)
    assert out.dtype == np.int16
    for (i, j), v in np.ndenumerate(x):
        acc = ((int(v) + int(p["bias"][j]) + 2 ** 31) % 2 ** 32) - 2 ** 31
        y = numerics.mbqm_reference(acc, int(p["multiplier"][j]),
                                    min(max(int(p["shift"][j]), -31), 30))
        y = ((y + int(p["zero_point"][j]) + 2 ** 31) % 2 ** 32) - 2 ** 31
        assert out[i, j] == min(max(y, -32768), 32767)


# ---- per-channel input stage --------------------------------------------------------------

def test_prescale_matches_scalar_oracle():
    rng = np.random.default_rng(50)
    p = _output_params(rng, 13)
    x = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, (5, 13)),
                        np.full((1, 13), -2 ** 31), np.full((1, 13), 2 ** 31 - 1)])
    out = K.prescale(x, p)
    for (i, j), v in np.ndenumerate(x):
        acc = ((int(v) + int(p["bias"][j]) + 2 ** 31) % 2 ** 32) - 2 ** 31
        assert out[i, j] == numerics.mbqm_reference(acc, int(p["multiplier"][j]),
                                                    min(max(int(p["shift"][j]), -31), 30))


def test_prescale_params_bring_channels_to_one_scale():
    """Within one LSB of the common scale (MBQM's two roundings) plus half an input LSB of
    the bias; every channel shifts right, so no value wraps even at the int32 extremes."""
    rng = np.random.default_rng(51)
    n = 40
    s_in = 10 ** rng.uniform(-7, -3, n)
    bias = rng.normal(0, 1, n)
    s_x = 2 * float(s_in.max())
    pre = K.prescale_params(s_in, s_x, bias)
    assert np.all(pre["shift"] <= 0)
    assert np.all(np.abs(pre["bias"] * s_in - bias) <= 0.5 * s_in + 1e-12)
    x = np.concatenate([rng.integers(-2 ** 20, 2 ** 20, (6, n)),
                        np.full((1, n), -2 ** 31), np.full((1, n), 2 ** 31 - 1)])
    x = np.clip(x, -2 ** 31 - pre["bias"].clip(max=0), 2 ** 31 - 1 - pre["bias"].clip(min=0))
    err = np.abs(K.prescale(x, pre) * s_x - (x + pre["bias"]) * s_in) / s_x
    assert err.max() <= 1.0
    # the kernels take the stage first: LayerNorm of per-channel accumulators
    p = K.layernorm_params(s_x, 8 / 127, np.ones(n), np.zeros(n), 1e-12, 8)
    assert K.layernorm(x, p, pre=pre).tolist() == K.layernorm(K.prescale(x, pre), p).tolist()
    # a scalar input scale and a channel count
    q = K.prescale_params(1e-4, 1e-3, n_elems=3)
    assert q["bias"].tolist() == [0, 0, 0] and len(set(q["multiplier"].tolist())) == 1


@pytest.mark.parametrize("args, match", [
    ((np.full(4, 1e-3), 1e-3), r"\[2\*\*-31, 1\)"),          # ratio 1: a left shift
    ((np.full(4, 1e-3), 1e-3 * (1 - 1e-12)), r"\[2\*\*-31, 1\)"),
    ((np.full(4, 1e-12), 1.0), r"\[2\*\*-31, 1\)"),
    ((np.array([1e-3, -1e-3]), 1.0), "s_in must be > 0"),
    ((np.full(4, 1e-3), 1.0, np.zeros(5)), "disagree"),
    ((np.full(2, 1e-9), 1.0, np.array([1.0, 10.0])), "int32"),
    ((1e-3, 0.0), "s_x must be finite and > 0"),
])
def test_prescale_params_reject_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        K.prescale_params(*args)


def test_prescale_rejects_bad_fields():
    with pytest.raises(TypeError, match="pre must have the fields"):
        K.prescale(np.zeros((1, 3)), {"bias": [0]})
    with pytest.raises(ValueError, match="length 1 or 3"):
        K.prescale(np.zeros((1, 3), dtype=np.int64),
                   {"bias": [0, 0], "multiplier": [1 << 30], "shift": [0]})


# ---- integer square root ------------------------------------------------------------------

def test_isqrt_exact():
    rng = np.random.default_rng(50)
    vals = [int(v) for v in np.floor(2.0 ** rng.uniform(0, 62, 3000))]
    vals = [min(v, 2 ** 62 - 1) for v in vals]
    roots = [int(k) for k in rng.integers(0, 2 ** 31, 1000)]
    vals += [k * k for k in roots] + [k * k - 1 for k in roots if k] + [k * k + 1 for k in roots]
    vals += [0, 1, 2, 3, 4, 2 ** 62 - 1, (2 ** 31 - 1) ** 2, 2 ** 60, 2 ** 60 - 1]
    vals = [v for v in vals if 0 <= v < 2 ** 62]
    assert K.isqrt(vals).tolist() == [math.isqrt(v) for v in vals]
    with pytest.raises(ValueError, match="v must be in"):
        K.isqrt([2 ** 62])
    with pytest.raises(ValueError, match="v must be in"):
        K.isqrt(-1)
    with pytest.raises(TypeError):
        K.isqrt(2.0)


# ---- documented error bounds ----------------------------------------------------------------

def test_kernels_within_documented_bounds():
    """Another seed than the documented run, fewer rows: every figure within its bound."""
    results = kernel_errors.measure(seed=7, rows=24)
    assert kernel_errors.check(results) == []
    assert {(r["kernel"], r["act_bits"]) for r in results} == set(kernel_errors.BOUNDS)


def test_documented_bounds_are_the_asserted_ones():
    text = (ROOT / "docs" / "numerics.md").read_text()
    section = text[text.index("## Vector kernels"):]
    for (kernel, bits), bound in kernel_errors.BOUNDS.items():
        rows = re.findall(rf"^\| {kernel} \| {bits} \|([^|]*)\|[^|]*\|[^|]*\| ([0-9.]+) \|",
                          section, re.M)
        assert rows, (kernel, bits)
        for case, b in rows:
            want = kernel_errors.PRE_BOUNDS[(kernel, bits)] if "(pre)" in case else bound
            assert float(b) == want, (kernel, bits, case, b)


def test_kernel_errors_command(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert kernel_errors.main(["--rows", "8", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["rows"] == 8 and len(data["results"]) >= 10
    assert "| softmax | 8 |" in capsys.readouterr().out


# ---- validation ---------------------------------------------------------------------------

BAD_SCALES = [(0.0, ValueError), (-1e-3, ValueError), (float("nan"), ValueError),
              (float("inf"), ValueError), ("1", TypeError), (True, TypeError), (None, TypeError)]


@pytest.mark.parametrize("bad,exc", BAD_SCALES)
def test_params_reject_bad_scales(bad, exc):
    g, b = np.ones(4), np.zeros(4)
    with pytest.raises(exc, match="s_x"):
        K.softmax_params(bad, 8)
    with pytest.raises(exc, match="s_x"):
        K.layernorm_params(bad, 0.1, g, b, 1e-5, 8)
    with pytest.raises(exc, match="s_out"):
        K.layernorm_params(0.1, bad, g, b, 1e-5, 8)
    if bad is not None:  # s_residual=None means no residual operand
        with pytest.raises(exc, match="s_residual"):
            K.layernorm_params(0.1, 0.1, g, b, 1e-5, 8, s_residual=bad)
    with pytest.raises(exc, match="s_x"):
        K.gelu_params(bad, 0.1, 8)
    with pytest.raises(exc, match="s_out"):
        K.gelu_params(0.1, bad, 16)
    with pytest.raises(exc, match="s_b"):
        K.add_params(0.1, bad, 0.1, 8)


def test_params_reject_bad_arguments():
    g = np.ones(4)
    with pytest.raises(ValueError, match="act_bits"):
        K.softmax_params(0.1, 12)
    with pytest.raises(TypeError, match="act_bits"):
        K.gelu_params(0.1, 0.1, 8.0)
    with pytest.raises(ValueError, match="same length"):
        K.layernorm_params(0.1, 0.1, g, np.zeros(5), 1e-5, 8)
    with pytest.raises(ValueError, match="eps"):
        K.layernorm_params(0.1, 0.1, g, g, -1.0, 8)
    with pytest.raises(ValueError, match="gamma"):
        K.layernorm_params(0.1, 0.1, [1.0, float("nan")], [0.0, 0.0], 1e-5, 8)
    with pytest.raises(ValueError, match="beta"):
        K.layernorm_params(0.1, 1e-9, g, g, 1e-5, 8)
    with pytest.raises(ValueError, match="s_b / s_out"):
        K.add_params(0.1, 100.0, 0.1, 16)
    with pytest.raises(ValueError, match="s_x / s_out"):
        K.gelu_params(1e-12, 1e3, 8)
    with pytest.raises(ValueError, match="representable"):
        K.softmax_params(1e-20, 8)


def test_kernels_reject_bad_inputs():
    p = K.softmax_params(0.01, 8)
    with pytest.raises(TypeError, match="x must be"):
        K.softmax(np.zeros((2, 3)), None, p)
    with pytest.raises(ValueError, match="x must be in"):
        K.softmax([[2 ** 31]], None, p)
    with pytest.raises(ValueError, match="mask must be in"):
        K.softmax([[1, 2]], [[0, -129]], p)
    with pytest.raises(ValueError, match="broadcast"):
        K.softmax([[1, 2]], [0, 0, 0], p)
    with pytest.raises(ValueError, match="elements"):
        K.softmax(np.zeros((1, 4096), dtype=np.int32), None, p)
    with pytest.raises(ValueError, match="dimension"):
        K.softmax(3, None, p)
    with pytest.raises(TypeError, match="SoftmaxParams"):
        K.softmax([[1]], None, K.gelu_params(0.1, 0.1, 8))
    lp = K.layernorm_params(0.1, 0.1, np.ones(4), np.zeros(4), 1e-5, 8)
    with pytest.raises(ValueError, match="params are for 4"):
        K.layernorm([[1, 2, 3]], lp)
    with pytest.raises(ValueError, match="s_residual"):
        K.layernorm([[1, 2, 3, 4]], lp, residual=[[0, 0, 0, 0]])
    with pytest.raises(ValueError, match="b must be in"):
        K.add([[1]], [[300]], K.add_params(0.1, 0.1, 0.1, 8))
    with pytest.raises(ValueError, match="act_bits"):
        K.requant([[1]], _output_params(np.random.default_rng(0), 1), 4)
    with pytest.raises(TypeError, match="OutputParams"):
        K.requant([[1]], {"bias": 0}, 16)


# ---- speed --------------------------------------------------------------------------------

def test_speed_figures_are_measured():
    """The MiniLM-layer timings kernel-errors prints (a benchmark figure, not a timed test)."""
    times = kernel_errors.speed(repeat=1)
    assert set(times) == {"softmax", "layernorm", "gelu", "add"}
    assert all(t > 0 for t in times.values())
