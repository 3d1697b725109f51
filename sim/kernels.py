"""Integer-only kernels of the vector unit, bit-exact specifications (``docs/numerics.md``,
section "Vector kernels").

Every kernel takes int32 accumulator rows ``x`` (shape ``[..., n_elems]``, one row per
leading index, real scale ``s_x``) and writes activations of ``act_bits`` = 8 or 16 bits.
Inside a kernel everything is integer (numpy int64 with explicit shifts, wraps and
saturations); every intermediate's width is stated and asserted, so the gateware, which
works on ``L`` lanes of a row per cycle with one divider and one square root per row, can be
checked bit-exactly against these functions. Floating point appears only in the ``*_params``
functions, which derive the integer constants from real scales.

Kernels: :func:`softmax`, :func:`layernorm`, :func:`gelu`, :func:`add`, :func:`requant`;
their parameters: :func:`softmax_params`, :func:`layernorm_params`, :func:`gelu_params`,
:func:`add_params`. :func:`isqrt` is the row unit's exact floor square root.

A linear layer's accumulators carry one scale per output channel (``s_act * s_w[j]`` with
per-channel weights) and need its bias added, so :func:`layernorm`, :func:`gelu` and
:func:`add` take an optional per-channel input stage ``pre`` first (:func:`prescale`, the
output stage's bias and multiplier without zero point or clamp; parameters from
:func:`prescale_params`), which brings every channel to the one scale ``s_x`` the kernel's
parameters were made for.

Rounding rule everywhere: round half up, ``(v * M + 2**(sh - 1)) >> sh`` (arithmetic shift),
except where a step says floor. All activations the kernels write are symmetric (zero point
0) except :func:`requant`, which is the output stage with its ``OutputParams``.
"""

import math
import numbers
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from . import numerics

__all__ = [
    "MAX_ELEMS", "EXP_FRAC", "EXP_B", "EXP_C", "EXP_DROP", "EXP_Z_MAX",
    "LN_CBITS", "LN_FW", "LN_KI", "LN_T_MAX", "LN_I_MAX", "GELU_FU", "GELU_SEG_BITS", "GELU_SEGS",
    "GELU_R_BITS", "GELU_U_MAX", "GELU_FP", "GELU_TABLE",
    "ADD_FRAC",
    "SoftmaxParams", "LayerNormParams", "GeluParams", "AddParams",
    "softmax_params", "layernorm_params", "gelu_params", "add_params",
    "softmax", "layernorm", "gelu", "add", "requant", "isqrt", "act_range", "mask_sentinel",
    "prescale", "prescale_params",
]

MAX_ELEMS = 4095  # n_elems is a 12-bit field of VectorInstr; the row sums are sized for it

# ---- softmax constants (independent of the scales) ---------------------------------------
# exp(p), p in (-ln2, 0], is I-BERT's 0.3585 (p + 1.353)**2 + 0.344. With p = -ln2 * f,
# f = r / 2**EXP_FRAC in [0, 1): exp(p) = a' * ((beta - f)**2 + gamma), a' = 0.3585 ln2**2,
# beta = 1.353 / ln2, gamma = 0.344 / a'; a' is common to a row and cancels in softmax.
# The gateware's constants are these literals; the asserts show where they come from.
EXP_FRAC = 15
EXP_B = 63962             # round(beta * 2**15): 16 bits
EXP_C = 2144461385        # round(gamma * 2**30): 31 bits
_A_PRIME = 0.3585 * math.log(2) ** 2
assert EXP_B == math.floor(1.353 / math.log(2) * 2 ** EXP_FRAC + 0.5)
assert EXP_C == math.floor(0.344 / _A_PRIME * 2 ** (2 * EXP_FRAC) + 0.5)
EXP_DROP = 16                                  # exp values keep 17 bits (< 2**17)
EXP_Z_MAX = 18                                 # poly < 2**33: rounding shifts >= 34 give 0
_EXP_POLY_MAX = EXP_B ** 2 + EXP_C             # the row maximum's polynomial (z = r = 0)
_EXP_E_MAX = (_EXP_POLY_MAX + (1 << (EXP_DROP - 1))) >> EXP_DROP
assert _EXP_POLY_MAX < 1 << 33 and _EXP_E_MAX < 1 << 17 and EXP_B < 1 << 16

# ---- layernorm constants -----------------------------------------------------------------
LN_CBITS = 23             # centred values are normalised per row into [-2**23, 2**23)
LN_FW = 22                # w = c'/sigma_n * 2**22, |w| <= 2**22
LN_KI = 52                # I = floor(2**52 / sigma_n)
LN_T_MAX = (1 << 62) - 1  # the square-root input saturates here
LN_I_MAX = (1 << 32) - 1  # and the reciprocal here (reached only by constant rows)
_LN_G_BITS = 17           # per-channel gamma multipliers: |G| < 2**17 (18-bit signed)
_LN_SG_MAX = 37
_LN_BETA_MAX = 1 << 24    # |beta / s_out| limit (in output LSBs)

# ---- gelu constants ----------------------------------------------------------------------
# GELU(x) = x Phi(x). Phi on |x| in [0, 8) is a table of GELU_SEGS + 1 knots every 1/16,
# linearly interpolated (a piecewise-linear polynomial; I-BERT's single second-order erf
# polynomial is 75 output LSBs off at 16 bits and costs all-MiniLM-L6-v2 0.007 of its minimum
# embedding cosine, docs/numerics.md); Phi(-u) = 1 - Phi(u). The knots are ROM contents,
# computed once here with math.erf (a constant of the hardware, like EXP_B).
GELU_FU = 16              # u = x in units of 2**-16, |u| < 8 * 2**16 after the clamp
GELU_SEG_BITS = 4         # knots every 2**-4
GELU_SEGS = 128           # knots 0 .. 8 (7-bit segment index)
GELU_R_BITS = GELU_FU - GELU_SEG_BITS   # 12-bit position inside a segment
GELU_U_MAX = (GELU_SEGS << GELU_R_BITS) - 1
GELU_FP = 17              # phi = Phi in units of 2**-17, phi in [0, 2**17]
GELU_TABLE = tuple(math.floor((1 + math.erf(k / 2 ** GELU_SEG_BITS / math.sqrt(2))) / 2
                              * 2 ** GELU_FP + 0.5) for k in range(GELU_SEGS + 1))
assert GELU_TABLE[0] == 1 << (GELU_FP - 1) and GELU_TABLE[-1] == 1 << GELU_FP
assert max(b - a for a, b in zip(GELU_TABLE, GELU_TABLE[1:])) < 1 << 13   # 13-bit slopes

# ---- add constants -----------------------------------------------------------------------
ADD_FRAC = 12             # both operands are aligned to s_out * 2**-12 before the sum

_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_INT64_LIMIT = 1 << 63


# ---- helpers -----------------------------------------------------------------------------

def act_range(act_bits: int) -> tuple[int, int]:
    """``(lo, hi)`` of a signed ``act_bits`` activation."""
    return -(1 << (act_bits - 1)), (1 << (act_bits - 1)) - 1


def mask_sentinel(act_bits: int) -> int:
    """The softmax mask value that marks a masked key: the activation minimum."""
    return act_range(act_bits)[0]


def _out_dtype(act_bits: int) -> type:
    return np.int8 if act_bits == 8 else np.int16


def _check_act_bits(act_bits: object) -> int:
    if isinstance(act_bits, (bool, np.bool_)) or not isinstance(act_bits, numbers.Integral):
        raise TypeError(f"act_bits must be an integer, not {act_bits!r}")
    if int(act_bits) not in (8, 16):
        raise ValueError(f"act_bits must be 8 or 16, not {act_bits}")
    return int(act_bits)


def _check_scale(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, not {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, not {value!r}")
    return value


def _check_rows(name: str, value: npt.ArrayLike, lo: int, hi: int) -> np.ndarray:
    arr = numerics._as_int_array(name, value, lo, hi)
    if arr.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension (elements last), "
                         f"not shape {arr.shape}")
    if not 1 <= arr.shape[-1] <= MAX_ELEMS:
        raise ValueError(f"{name} rows must have 1 to {MAX_ELEMS} elements, "
                         f"not {arr.shape[-1]}")
    return arr


def _check_operand(name: str, value: npt.ArrayLike, act_bits: int, shape: tuple) -> np.ndarray:
    lo, hi = act_range(act_bits)
    arr = numerics._as_int_array(name, value, lo, hi)
    try:
        return np.broadcast_to(arr, shape)
    except ValueError as exc:
        raise ValueError(f"{name} of shape {arr.shape} does not broadcast to the rows' "
                         f"shape {shape}") from exc


def _fits(name: str, arr: np.ndarray, lo: int, hi: int) -> None:
    """The width assertion of one intermediate (what the gateware's register must hold)."""
    if arr.size:
        assert lo <= int(arr.min()) and int(arr.max()) <= hi, \
            f"{name} outside [{lo}, {hi}]: [{int(arr.min())}, {int(arr.max())}]"


def _round_shift(v: np.ndarray, m: int, sh: int, v_abs_max: int) -> np.ndarray:
    """``(v * m + 2**(sh - 1)) >> sh``: round half up; ``|v| <= v_abs_max`` bounds int64."""
    assert sh >= 1 and v_abs_max * abs(m) + (1 << (sh - 1)) < _INT64_LIMIT
    return (v * m + (1 << (sh - 1))) >> sh


def _fixed_multiplier(name: str, real: float, bits: int, sh_lo: int, sh_hi: int
                      ) -> tuple[int, int]:
    """``real ~= m * 2**-sh`` with ``m`` in ``[2**(bits-1), 2**bits)`` (round half up of the
    mantissa), ``sh_lo <= sh <= sh_hi``; a ValueError naming ``name`` otherwise."""
    mant, exp = math.frexp(real)  # real = mant * 2**exp, mant in [0.5, 1)
    m = int(math.floor(mant * 2 ** bits + 0.5))
    if m == 1 << bits:
        m, exp = m >> 1, exp + 1
    sh = bits - exp
    if not sh_lo <= sh <= sh_hi:
        raise ValueError(f"{name} = {real!r} is out of the representable range "
                         f"[2**{bits - 1 - sh_hi}, 2**{bits - sh_lo})")
    return m, sh


def _bit_length(v: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values below 2**63 (a priority encoder)."""
    n = np.zeros(v.shape, dtype=np.int64)
    v = v.copy()
    for s in (32, 16, 8, 4, 2, 1):
        big = v >= (np.int64(1) << s)
        n += np.where(big, s, 0)
        v = np.where(big, v >> s, v)
    return n + (v > 0)


def isqrt(v: npt.ArrayLike) -> np.ndarray:
    """Exact floor square root of integers in ``[0, 2**62)``, element-wise.

    Digit-by-digit (restoring, one result bit per step, 31 steps): what the row unit does
    sequentially with one adder; no start value, no iteration count that depends on the data.

    Raises
    ------
    TypeError, ValueError
        If ``v`` is not integer or outside ``[0, 2**62)``.
    """
    rem = numerics._as_int_array("v", v, 0, (1 << 62) - 1).copy()
    res = np.zeros(rem.shape, dtype=np.int64)
    bit = np.int64(1 << 60)
    for _ in range(31):
        t = res + bit
        ge = rem >= t
        rem = np.where(ge, rem - t, rem)
        res = np.where(ge, (res >> 1) + bit, res >> 1)
        bit >>= 2
    return res


# ---- per-channel input stage ------------------------------------------------------------

_PRE_FIELDS = ("bias", "multiplier", "shift")


def prescale_params(s_in: float | npt.ArrayLike, s_x: float, bias: npt.ArrayLike | None = None,
                    n_elems: int | None = None) -> dict[str, np.ndarray]:
    """Per-channel input-stage parameters taking accumulators of scale ``s_in[j]`` (plus a
    real ``bias[j]``) to the common scale ``s_x``.

    Parameters
    ----------
    s_in : float or array_like of float
        Real scale of each input channel (``s_act * s_w[j]`` for a linear layer with
        per-channel weights); a scalar applies to every channel.
    s_x : float
        The common scale after the stage: the ``s_x`` of the kernel's ``*_params``. Every
        ratio ``s_in[j] / s_x`` must be below 1 (so that MBQM only shifts right and cannot
        wrap; a ratio within ``2**-31`` of 1 rounds up to a left shift and is rejected too)
        and at least ``2**-31``; ``2 * max(s_in)`` is always valid and loses one bit.
    bias : array_like of float, optional
        The layer's real bias per channel, quantized to ``round(bias[j] / s_in[j])``.
    n_elems : int, optional
        Number of channels, when neither ``s_in`` nor ``bias`` is an array.

    Returns
    -------
    dict of numpy.ndarray
        ``bias``, ``multiplier``, ``shift`` (int64, one per channel) and, so the dict packs
        with ``sim.asm.pack_output_params`` into the parameter buffer's ``OutputParams``
        entries, ``zero_point`` 0, ``lo`` -128, ``hi`` 127 (unused by the stage).

    Raises
    ------
    TypeError, ValueError
        For non-finite or non-positive scales, a ratio outside ``[2**-31, 1)``, a bias
        outside the int32 range once quantized, or lengths that disagree.
    """
    s_x = _check_scale("s_x", s_x)
    if np.ndim(s_in) == 0:
        s_arr = np.array([_check_scale("s_in", s_in)])
    else:
        s_arr = _real_vector("s_in", s_in)
        if np.any(s_arr <= 0):
            raise ValueError("s_in must be > 0 in every channel")
    lengths = {len(s_arr)} - {1}
    b_arr = None
    if bias is not None:
        b_arr = _real_vector("bias", bias)
        lengths.add(len(b_arr))
    if n_elems is not None:
        lengths.add(int(n_elems))
    if len(lengths) > 1:
        raise ValueError(f"s_in, bias and n_elems disagree on the channel count: "
                         f"{sorted(lengths)}")
    n = lengths.pop() if lengths else 1
    s_arr = np.broadcast_to(s_arr, (n,))
    ratio = s_arr / s_x
    mult, shift = numerics.quantize_multiplier(ratio)
    # A positive MBQM shift is a left shift that wraps in int32; ratios below 1 never need one.
    if np.any(ratio < 2.0 ** -31) or np.any(np.asarray(shift) > 0):
        raise ValueError(f"s_in / s_x must lie in [2**-31, 1) in every channel, not "
                         f"[{ratio.min()!r}, {ratio.max()!r}] (s_x = 2 * max(s_in) always is)")
    q_bias = np.zeros(n, dtype=np.int64)
    if b_arr is not None:
        q = np.floor(b_arr / s_arr + 0.5)
        if np.any(np.abs(q) > _INT32_MAX):
            raise ValueError("bias / s_in must be inside the int32 range in every channel")
        q_bias = q.astype(np.int64)
    return {"bias": q_bias, "multiplier": np.asarray(mult, dtype=np.int64),
            "shift": np.asarray(shift, dtype=np.int64), "zero_point": np.zeros(n, np.int64),
            "lo": np.full(n, -128, np.int64), "hi": np.full(n, 127, np.int64)}


def prescale(x: npt.ArrayLike, pre) -> np.ndarray:
    """The per-channel input stage: ``MBQM(wrap32(x + bias[j]), multiplier[j], shift[j])``.

    The output stage's first two steps (the same fields of ``OutputParams``, so the vector
    unit reads them from the parameter buffer like ``VREQUANT`` does), without zero point or
    clamp: an int32 result.

    Parameters
    ----------
    x : array_like of int
        int32 accumulator rows, shape ``[..., n]``.
    pre : mapping or structured array
        Per-channel ``bias``, ``multiplier``, ``shift`` (length ``n`` or 1), e.g. from
        :func:`prescale_params` or ``sim.asm.unpack_output_params``.

    Returns
    -------
    numpy.ndarray
        int64 values in the int32 range, the shape of ``x``.
    """
    try:
        fields = {f: np.asarray(pre[f]) for f in _PRE_FIELDS}
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise TypeError(f"pre must have the fields {_PRE_FIELDS}: {exc}") from exc
    x_arr = _check_rows("x", x, _INT32_MIN, _INT32_MAX)
    n = x_arr.shape[-1]
    for f, v in fields.items():
        if v.ndim != 1 or v.shape[0] not in (1, n):
            raise ValueError(f"pre[{f!r}] must be 1-D of length 1 or {n}, not shape {v.shape}")
    shift = np.clip(fields["shift"].astype(np.int64), numerics.SHIFT_MIN, numerics.SHIFT_MAX)
    acc = numerics._wrap_int32(x_arr + fields["bias"].astype(np.int64))
    return numerics.multiply_by_quantized_multiplier(acc, fields["multiplier"],
                                                     shift).astype(np.int64)


# ---- softmax -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SoftmaxParams:
    """Integer constants of :func:`softmax` (derive with :func:`softmax_params`).

    Attributes
    ----------
    act_bits : int
        8 or 16. Probabilities are written with the scale ``1 / q_max``, ``q_max = 2**(act_bits
        - 1) - 1``: 1.0 is ``q_max`` exactly.
    multiplier : int
        29 bits, in ``[2**28, 2**29)``: ``s_x * log2(e) * 2**15 ~= multiplier * 2**-shift``.
    shift : int
        In ``[1, 61]``.
    k : int
        Reciprocal shift, ``34 - act_bits`` (26 or 18).
    numerator : int
        ``q_max << k``, the dividend of the per-row reciprocal (33 bits).
    """
    act_bits: int
    multiplier: int
    shift: int
    k: int
    numerator: int


def softmax_params(s_x: float, act_bits: int) -> SoftmaxParams:
    """The constants of :func:`softmax` for scores of real scale ``s_x``.

    Raises
    ------
    TypeError
        If ``s_x`` is not real or ``act_bits`` not an integer.
    ValueError
        If ``s_x`` is not finite and positive, outside about ``[2.5e-15, 5600]``, or
        ``act_bits`` is not 8 or 16.
    """
    act_bits = _check_act_bits(act_bits)
    s_x = _check_scale("s_x", s_x)
    m, sh = _fixed_multiplier("s_x * log2(e) * 2**15", s_x * math.log2(math.e) * 2 ** EXP_FRAC,
                              29, 1, 61)
    k = 34 - act_bits
    numerator = act_range(act_bits)[1] << k
    assert numerator < 1 << 33 and numerator // _EXP_E_MAX < 1 << 17
    return SoftmaxParams(act_bits, m, sh, k, numerator)


def softmax(x: npt.ArrayLike, mask: npt.ArrayLike | None, params: SoftmaxParams) -> np.ndarray:
    """Softmax along the last axis, I-BERT's integer exp, one reciprocal per row.

    Per row (``docs/numerics.md`` has the pseudo-code and widths)::

        t  = x + mask                       # 34-bit signed; key j masked iff mask[j] == sentinel
        m  = max of t over unmasked keys
        d  = m - t                          # >= 0, 33 bits
        v  = (d * multiplier + 2**(shift-1)) >> shift   # log2 units, 15 fraction bits
        z  = min(v >> 15, 18); r = v & 0x7fff
        e  = ((EXP_B - r)**2 + EXP_C + 2**(z+15)) >> (z + 16)   # 17 bits; 0 if masked
        S  = sum(e)                         # 29 bits
        R  = numerator // S                 # 17 bits (0 if every key is masked)
        q  = (e * R + 2**(k-1)) >> k        # <= q_max, never clamps

    Parameters
    ----------
    x : array_like of int
        int32 scores, shape ``[..., n]`` with ``1 <= n <= 4095``.
    mask : array_like of int or None
        Additive mask in the activation range, broadcast to ``x`` (e.g. one ``[n]`` row);
        :func:`mask_sentinel` (the range minimum) marks a masked key (probability exactly 0),
        other values add to ``x`` in units of ``s_x``. All keys masked: the row is all 0.
    params : SoftmaxParams

    Returns
    -------
    numpy.ndarray
        int8 or int16 probabilities (scale ``1 / q_max``), the shape of ``x``.
    """
    if not isinstance(params, SoftmaxParams):
        raise TypeError(f"params must be SoftmaxParams, not {type(params).__name__}")
    a = params.act_bits
    x_arr = _check_rows("x", x, _INT32_MIN, _INT32_MAX)
    if mask is None:
        mask_arr = np.zeros(x_arr.shape, dtype=np.int64)
    else:
        mask_arr = _check_operand("mask", mask, a, x_arr.shape)
    masked = mask_arr == mask_sentinel(a)
    t = x_arr + mask_arr
    _fits("t", t, -(1 << 33), (1 << 33) - 1)
    m = np.max(np.where(masked, np.iinfo(np.int64).min, t), axis=-1, keepdims=True)
    d = np.where(masked, 0, m - t)
    _fits("d", d, 0, (1 << 33) - 1)
    v = _round_shift(d, params.multiplier, params.shift, (1 << 33) - 1)
    z = np.minimum(v >> EXP_FRAC, EXP_Z_MAX)
    r = v & ((1 << EXP_FRAC) - 1)
    poly = (EXP_B - r) ** 2 + EXP_C
    _fits("poly", poly, 0, (1 << 33) - 1)
    e = np.where(masked, 0, (poly + (np.int64(1) << (z + EXP_DROP - 1))) >> (z + EXP_DROP))
    _fits("e", e, 0, (1 << 17) - 1)
    s = np.sum(e, axis=-1, keepdims=True)
    _fits("sum", s, 0, (1 << 29) - 1)
    recip = np.where(s > 0, params.numerator // np.maximum(s, 1), 0)
    _fits("recip", recip, 0, (1 << 17) - 1)
    q = (e * recip + (1 << (params.k - 1))) >> params.k
    _fits("q", q, 0, act_range(a)[1])
    return q.astype(_out_dtype(a))


# ---- layernorm ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerNormParams:
    """Integer constants of :func:`layernorm` (derive with :func:`layernorm_params`).

    Attributes
    ----------
    act_bits : int
        8 or 16; the output has the real scale ``s_out`` given to :func:`layernorm_params`.
    n_elems : int
        Row length (the length of gamma and beta).
    gamma_mult : tuple of int
        Per channel ``G[j] = round(gamma[j] sqrt(n) / s_out * 2**(out_shift - 22))``,
        ``|G| < 2**17`` (18-bit signed).
    beta_add : tuple of int
        Per channel ``Bw[j] = round(beta[j] / s_out * 2**out_shift)``, ``|Bw| < 2**61``.
    out_shift : int
        In ``[1, 37]``.
    eps_mult, eps_shift : int
        ``n * eps / s_x**2 ~= eps_mult * 2**-eps_shift``, ``eps_mult`` in ``[2**31, 2**32)``
        (both 0 for ``eps = 0``).
    res_mult, res_shift : int or None
        ``s_residual / s_x ~= res_mult * 2**-res_shift``, ``res_mult`` in ``[2**23, 2**24)``,
        ``res_shift`` in ``[1, 62]``; None when no residual scale was given.
    """
    act_bits: int
    n_elems: int
    gamma_mult: tuple
    beta_add: tuple
    out_shift: int
    eps_mult: int
    eps_shift: int
    res_mult: int | None = None
    res_shift: int | None = None


def _real_vector(name: str, value: npt.ArrayLike) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{name} must be a 1-D array of real numbers: {exc}") from exc
    if arr.dtype.kind not in "iuf" or arr.dtype == bool:
        raise TypeError(f"{name} must be a 1-D array of real numbers, not dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 1 or not 1 <= arr.shape[0] <= MAX_ELEMS:
        raise ValueError(f"{name} must be 1-D with 1 to {MAX_ELEMS} elements, "
                         f"not shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def layernorm_params(s_x: float, s_out: float, gamma: npt.ArrayLike, beta: npt.ArrayLike,
                     eps: float, act_bits: int, s_residual: float | None = None
                     ) -> LayerNormParams:
    """The constants of :func:`layernorm` from the scales and the model's gamma, beta, eps.

    Parameters
    ----------
    s_x : float
        Real scale of the int32 input (and of the residual sum).
    s_out : float
        Real scale of the output activations.
    gamma, beta : array_like of float
        Per-channel affine parameters, 1-D of the row length.
    eps : float
        LayerNorm's epsilon (``>= 0``), added to the variance.
    act_bits : int
        8 or 16.
    s_residual : float, optional
        Scale of the residual operand of :func:`layernorm`; required to pass one.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If a scale is not finite and positive, eps negative, gamma and beta differ in length,
        ``|beta / s_out| > 2**24``, ``|gamma| sqrt(n) / s_out >= 2**38``, or
        ``s_residual / s_x`` is outside ``[2**-39, 2**23)``.
    """
    act_bits = _check_act_bits(act_bits)
    s_x = _check_scale("s_x", s_x)
    s_out = _check_scale("s_out", s_out)
    g = _real_vector("gamma", gamma)
    b = _real_vector("beta", beta)
    if g.shape != b.shape:
        raise ValueError(f"gamma and beta must have the same length, not {g.shape[0]} "
                         f"and {b.shape[0]}")
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, not {eps!r}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, not {eps!r}")
    n = g.shape[0]
    if np.any(np.abs(b) / s_out > _LN_BETA_MAX):
        raise ValueError("|beta / s_out| must be <= 2**24 output LSBs")
    g_real = g * math.sqrt(n) / s_out * 2.0 ** -LN_FW
    g_max = float(np.max(np.abs(g_real)))
    sg = _LN_SG_MAX
    if g_max > 0:
        sg = min(_LN_SG_MAX, _LN_G_BITS - 1 - math.frexp(g_max)[1] + 1)
        while sg >= 1 and np.max(np.abs(np.floor(g_real * 2.0 ** sg + 0.5))) >= 1 << _LN_G_BITS:
            sg -= 1
    if sg < 1:
        raise ValueError(f"|gamma| sqrt(n) / s_out = {g_max * 2 ** LN_FW!r} is too large "
                         f"(must be < 2**38)")
    gm = tuple(int(v) for v in np.floor(g_real * 2.0 ** sg + 0.5))
    bw = tuple(int(v) for v in np.floor(b / s_out * 2.0 ** sg + 0.5))
    eps_mult = eps_shift = 0
    if eps:
        eps_mult, eps_shift = _fixed_multiplier("n * eps / s_x**2", n * eps / s_x ** 2, 32,
                                                -2000, 2000)
    res_mult = res_shift = None
    if s_residual is not None:
        s_residual = _check_scale("s_residual", s_residual)
        res_mult, res_shift = _fixed_multiplier("s_residual / s_x", s_residual / s_x, 24, 1, 62)
    return LayerNormParams(act_bits, n, gm, bw, sg, eps_mult, eps_shift, res_mult, res_shift)


def layernorm(x: npt.ArrayLike, params: LayerNormParams,
              residual: npt.ArrayLike | None = None, pre=None) -> np.ndarray:
    """LayerNorm along the last axis, integer mean, variance, square root and reciprocal.

    Per row of ``n`` elements (three passes over the row; ``docs/numerics.md``)::

        h   = sat32(x + ((res * res_mult + 2**(res_shift-1)) >> res_shift))   # or h = x
        mu  = (sum(h) + n // 2) // n                   # 44-bit sum, round half up
        rem = sum(h) - n * mu                          # the division's remainder, 13 bits
        P   = bit_length(max(h) - min(h)) - 23         # per-row normaliser, in [-23, 9]
        c'  = (h - mu) >> P                 if P >= 0  # floor
              ((h - mu) << -P) - ((rem << -P) + n // 2) // n   if P < 0
                                                       # in [-2**23, 2**23)
        Q   = sum(c'**2)                               # < 2**58
        E   = eps_mult >> (eps_shift + 2P)    (saturating << if negative)  # eps in c'**2
        T   = min(Q + E, 2**62 - 1)
        sig = isqrt(T)                                 # 31 bits, >= 2**21-1 unless constant
        I   = min(2**52 // max(sig, 1), 2**32 - 1)
        w   = (c' * I + 2**29) >> 30                   # |w| <= 2**22
        y   = sat((w * G[j] + Bw[j] + 2**(out_shift-1)) >> out_shift)

    A constant row has ``c' = 0`` and gives ``sat((Bw[j] + 2**(out_shift-1)) >> out_shift)``
    exactly, the quantized beta, whatever eps is.

    Parameters
    ----------
    x : array_like of int
        int32, shape ``[..., n]``, ``n == params.n_elems``.
    params : LayerNormParams
    residual : array_like of int, optional
        Activation tensor (``act_bits`` range, scale ``s_residual``) added before the
        statistics, broadcast to ``x``.
    pre : mapping, optional
        Per-channel input stage (:func:`prescale`) applied to ``x`` first; ``s_x`` is then
        the scale after it.

    Returns
    -------
    numpy.ndarray
        int8 or int16 of the shape of ``x``.
    """
    if not isinstance(params, LayerNormParams):
        raise TypeError(f"params must be LayerNormParams, not {type(params).__name__}")
    a = params.act_bits
    x_arr = _check_rows("x", x, _INT32_MIN, _INT32_MAX)
    n = x_arr.shape[-1]
    if n != params.n_elems:
        raise ValueError(f"x rows have {n} elements, params are for {params.n_elems}")
    if pre is not None:
        x_arr = prescale(x_arr, pre)
    h = x_arr
    if residual is not None:
        if params.res_mult is None:
            raise ValueError("a residual needs params made with s_residual")
        res = _check_operand("residual", residual, a, x_arr.shape)
        rr = _round_shift(res, params.res_mult, params.res_shift, 1 << (a - 1))
        h = np.clip(x_arr + rr, _INT32_MIN, _INT32_MAX)
    total = np.sum(h, axis=-1, keepdims=True)
    _fits("sum", total, -(1 << 43), (1 << 43) - 1)
    mu = (total + n // 2) // n
    _fits("mu", mu, _INT32_MIN, _INT32_MAX)
    rem = total - n * mu
    _fits("rem", rem, -(n // 2), n - 1 - n // 2)
    spread = np.max(h, axis=-1, keepdims=True) - np.min(h, axis=-1, keepdims=True)
    p = _bit_length(spread) - LN_CBITS
    f = np.maximum(-p, 0)
    frac = ((rem << f) + n // 2) // n
    c = np.where(p >= 0, (h - mu) >> np.maximum(p, 0), ((h - mu) << f) - frac)
    _fits("c'", c, -(1 << LN_CBITS), (1 << LN_CBITS) - 1)
    q = np.sum(c * c, axis=-1, keepdims=True)
    _fits("Q", q, 0, (1 << 58) - 1)
    eps_row = _saturating_shift(params.eps_mult, params.eps_shift + 2 * p)
    t = np.minimum(q + eps_row, LN_T_MAX)
    sig = isqrt(t)
    assert np.all((sig >= (1 << 21) - 1) | (spread == 0)), "sigma_n < 2**21 - 1, not constant"
    inv = np.minimum((1 << LN_KI) // np.maximum(sig, 1), LN_I_MAX)
    w = (c * inv + (1 << (LN_KI - LN_FW - 1))) >> (LN_KI - LN_FW)
    _fits("w", w, -(1 << LN_FW), 1 << LN_FW)
    gm = np.asarray(params.gamma_mult, dtype=np.int64)
    bw = np.asarray(params.beta_add, dtype=np.int64)
    sg = params.out_shift
    y = (w * gm + bw + (1 << (sg - 1))) >> sg
    lo, hi = act_range(a)
    return np.clip(y, lo, hi).astype(_out_dtype(a))


def _saturating_shift(value: int, s: np.ndarray) -> np.ndarray:
    """``value >> s`` (floor) where ``s >= 0``, ``value << -s`` saturated at ``LN_T_MAX``."""
    right = np.int64(value) >> np.minimum(np.maximum(s, 0), 63)
    left_ok = (np.maximum(-s, 0) < 63) & ((LN_T_MAX >> np.minimum(np.maximum(-s, 0), 62))
                                           >= value)
    left = np.where(left_ok, np.int64(value) << np.minimum(np.maximum(-s, 0), 62), LN_T_MAX)
    return np.where(s >= 0, right, left)


# ---- gelu --------------------------------------------------------------------------------

@dataclass(frozen=True)
class GeluParams:
    """Integer constants of :func:`gelu` (derive with :func:`gelu_params`).

    Attributes
    ----------
    act_bits : int
        8 or 16; the output has the real scale ``s_out``.
    in_mult, in_shift : int
        ``s_x * 2**16 ~= in_mult * 2**-in_shift``, ``in_mult`` in ``[2**30, 2**31)``,
        ``in_shift`` in ``[1, 62]``.
    out_mult, out_shift : int
        ``s_x / s_out`` as ``sim.numerics.quantize_multiplier`` gives it (MBQM operands).
    """
    act_bits: int
    in_mult: int
    in_shift: int
    out_mult: int
    out_shift: int


def gelu_params(s_x: float, s_out: float, act_bits: int) -> GeluParams:
    """The constants of :func:`gelu` for an int32 input of scale ``s_x`` and an output of
    scale ``s_out``.

    Raises
    ------
    TypeError, ValueError
        For non-real, non-finite or non-positive scales, ``act_bits`` not 8 or 16, or scale
        ratios the multipliers cannot represent.
    """
    act_bits = _check_act_bits(act_bits)
    s_x = _check_scale("s_x", s_x)
    s_out = _check_scale("s_out", s_out)
    im, ish = _fixed_multiplier("s_x * 2**16", s_x * 2 ** GELU_FU, 31, 1, 62)
    om, osh = numerics.quantize_multiplier(s_x / s_out)
    if om == 0 or (osh == numerics.SHIFT_MAX and om == numerics.INT32_MAX):
        raise ValueError(f"s_x / s_out = {s_x / s_out!r} is outside the output multiplier's "
                         f"range [2**-32, 2**30)")
    return GeluParams(act_bits, im, ish, om, osh)


def gelu(x: npt.ArrayLike, params: GeluParams, pre=None) -> np.ndarray:
    """Integer GELU, ``x Phi(x)`` with ``Phi`` piecewise linear, requantized to ``act_bits``.

    Element-wise (``T = GELU_TABLE``, 129 knots of ``Phi`` every 1/16 on ``[0, 8]``)::

        u   = (x * in_mult + 2**(in_shift-1)) >> in_shift       # x in units of 2**-16
        a   = min(|u|, GELU_U_MAX)                               # 19 bits
        k   = a >> 12;  r = a & 0xfff                            # segment, position in it
        p   = T[k] + (((T[k+1] - T[k]) * r + 2**11) >> 12)       # Phi(|x|), 17x13 bits
        phi = p if u >= 0 else 2**17 - p                         # [0, 2**17]
        y   = (x * phi + 2**16) >> 17                            # int32
        out = sat(MultiplyByQuantizedMultiplier(y, out_mult, out_shift))   # zero point 0

    Parameters
    ----------
    x : array_like of int
        int32, shape ``[..., n]``.
    params : GeluParams
    pre : mapping, optional
        Per-channel input stage (:func:`prescale`) applied to ``x`` first.

    Returns
    -------
    numpy.ndarray
        int8 or int16 of the shape of ``x``.
    """
    if not isinstance(params, GeluParams):
        raise TypeError(f"params must be GeluParams, not {type(params).__name__}")
    x_arr = _check_rows("x", x, _INT32_MIN, _INT32_MAX)
    if pre is not None:
        x_arr = prescale(x_arr, pre)
    u = _round_shift(x_arr, params.in_mult, params.in_shift, 1 << 31)
    a = np.minimum(np.abs(u), GELU_U_MAX)
    k, r = a >> GELU_R_BITS, a & ((1 << GELU_R_BITS) - 1)
    table = np.asarray(GELU_TABLE, dtype=np.int64)
    p = table[k] + (((table[k + 1] - table[k]) * r + (1 << (GELU_R_BITS - 1))) >> GELU_R_BITS)
    phi = np.where(u >= 0, p, (1 << GELU_FP) - p)
    _fits("phi", phi, 0, 1 << GELU_FP)
    y = (x_arr * phi + (1 << (GELU_FP - 1))) >> GELU_FP
    _fits("y", y, _INT32_MIN, _INT32_MAX)
    out = numerics.multiply_by_quantized_multiplier(y, params.out_mult, params.out_shift)
    lo, hi = act_range(params.act_bits)
    return np.clip(out.astype(np.int64), lo, hi).astype(_out_dtype(params.act_bits))


# ---- add ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AddParams:
    """Integer constants of :func:`add` (derive with :func:`add_params`).

    Attributes
    ----------
    act_bits : int
        8 or 16 (the operand ``b`` and the output); the output has scale ``s_out``.
    x_mult, x_shift : int
        ``s_x / s_out * 2**12 ~= x_mult * 2**-x_shift``, ``x_mult`` in ``[2**30, 2**31)``,
        ``x_shift`` in ``[1, 62]``.
    b_mult, b_shift : int
        The same for ``s_b / s_out``.
    """
    act_bits: int
    x_mult: int
    x_shift: int
    b_mult: int
    b_shift: int


def add_params(s_x: float, s_b: float, s_out: float, act_bits: int) -> AddParams:
    """The constants of :func:`add`.

    Raises
    ------
    TypeError, ValueError
        For bad scales or ``act_bits``; also if ``s_b / s_out >= 2**(32 - 12 - act_bits)``
        (b alone would overflow the aligned sum's int32 operand) or ``s_x / s_out`` is
        outside ``[2**-44, 2**18)``.
    """
    act_bits = _check_act_bits(act_bits)
    s_x = _check_scale("s_x", s_x)
    s_b = _check_scale("s_b", s_b)
    s_out = _check_scale("s_out", s_out)
    limit = 2.0 ** (32 - ADD_FRAC - act_bits)
    if s_b / s_out >= limit:
        raise ValueError(f"s_b / s_out = {s_b / s_out!r} must be < 2**{32 - ADD_FRAC - act_bits}")
    xm, xsh = _fixed_multiplier("s_x / s_out * 2**12", s_x / s_out * 2 ** ADD_FRAC, 31, 1, 62)
    bm, bsh = _fixed_multiplier("s_b / s_out * 2**12", s_b / s_out * 2 ** ADD_FRAC, 31, 1, 62)
    return AddParams(act_bits, xm, xsh, bm, bsh)


def add(x: npt.ArrayLike, b: npt.ArrayLike, params: AddParams, pre=None) -> np.ndarray:
    """Requantize ``x`` and ``b`` to the output scale and add, saturating.

    Element-wise::

        ux  = sat32((x * x_mult + 2**(x_shift-1)) >> x_shift)   # s_out * 2**-12 units
        ub  = sat32((b * b_mult + 2**(b_shift-1)) >> b_shift)    # add_params: never saturates
        out = sat((ux + ub + 2**11) >> 12)                       # 33-bit sum

    The int32 saturation of ``ux`` is exact: a saturated ``ux`` plus any ``ub`` lies beyond
    the output range, so the output saturates either way.

    Parameters
    ----------
    x : array_like of int
        int32, shape ``[..., n]``.
    b : array_like of int
        Activations (``act_bits`` range), broadcast to ``x``.
    params : AddParams
    pre : mapping, optional
        Per-channel input stage (:func:`prescale`) applied to ``x`` first.

    Returns
    -------
    numpy.ndarray
        int8 or int16 of the shape of ``x``.
    """
    if not isinstance(params, AddParams):
        raise TypeError(f"params must be AddParams, not {type(params).__name__}")
    a = params.act_bits
    x_arr = _check_rows("x", x, _INT32_MIN, _INT32_MAX)
    if pre is not None:
        x_arr = prescale(x_arr, pre)
    b_arr = _check_operand("b", b, a, x_arr.shape)
    ux = np.clip(_round_shift(x_arr, params.x_mult, params.x_shift, 1 << 31),
                 _INT32_MIN, _INT32_MAX)
    # add_params keeps |ub| <= 2**31 - 2**(a+11); the saturation defines the result for any
    # multiplier the parameter buffer holds (a 47-bit product saturated to a 32-bit register)
    ub = np.clip(_round_shift(b_arr, params.b_mult, params.b_shift, 1 << (a - 1)),
                 _INT32_MIN, _INT32_MAX)
    y = (ux + ub + (1 << (ADD_FRAC - 1))) >> ADD_FRAC
    lo, hi = act_range(a)
    return np.clip(y, lo, hi).astype(_out_dtype(a))


# ---- requant -----------------------------------------------------------------------------

def requant(x: npt.ArrayLike, output_params, act_bits: int) -> np.ndarray:
    """``VREQUANT``: the output stage (``sim.numerics.output_stage``) on rows of int32.

    ``output_params`` holds per-column ``bias``, ``multiplier``, ``shift``, ``zero_point``,
    ``lo``, ``hi`` (a structured array of ``sim.asm.output_params_dtype()``, e.g. from
    ``unpack_output_params``, or a mapping); ``shift`` saturates into ``[SHIFT_MIN,
    SHIFT_MAX]`` as the 8-bit field does in the hardware. ``act_bits`` 8 is
    ``output_stage`` exactly; ``act_bits`` 16 is the same arithmetic with the clamp to
    ``[-32768, 32767]`` (``lo`` and ``hi`` unused; the zero point is the 8-bit field's).

    Returns
    -------
    numpy.ndarray
        int8 or int16 of the shape of ``x``.
    """
    act_bits = _check_act_bits(act_bits)
    try:
        fields = {f: np.asarray(output_params[f]) for f in
                  ("bias", "multiplier", "shift", "zero_point", "lo", "hi")}
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise TypeError(f"output_params must have the OutputParams fields: {exc}") from exc
    shift = np.clip(fields["shift"].astype(np.int64), numerics.SHIFT_MIN, numerics.SHIFT_MAX)
    if act_bits == 8:
        return numerics.output_stage(x, fields["bias"], fields["multiplier"], shift,
                                     fields["zero_point"], fields["lo"], fields["hi"])
    x_arr = _check_rows("x", x, _INT32_MIN, _INT32_MAX)
    acc = numerics._wrap_int32(x_arr + fields["bias"].astype(np.int64))
    y = numerics.multiply_by_quantized_multiplier(acc, fields["multiplier"], shift)
    y = numerics._wrap_int32(y.astype(np.int64) + fields["zero_point"].astype(np.int64))
    return np.clip(y, *act_range(16)).astype(np.int16)
