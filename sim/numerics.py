"""Host-side integer numerics of the output stage, bit-exact with the numerics contract
(``docs/numerics.md``).

These are the TensorFlow Lite int8 requantization primitives (the "double rounding" reference
path of ``MultiplyByQuantizedMultiplier``), vectorised over numpy arrays. The hardware output
stage (``hw.output_stage.OutputStage``) and the golden model are checked against
:func:`output_stage`; :func:`mbqm_reference` is a literal scalar transcription of the
pseudo-code in ``docs/numerics.md`` that the tests use as an independent oracle for the
vectorised functions.

All functions validate their arguments and raise ``TypeError`` (not integers) or
``ValueError`` (out of range), naming the offending argument.
"""

import numbers
from typing import overload

import numpy as np
import numpy.typing as npt

# The TFLite exponent range (> 0 left shift, < 0 right shift), defined once in the ISA.
from serrano.hw.isa import SHIFT_MAX, SHIFT_MIN

__all__ = [
    "INT32_MIN", "INT32_MAX", "SHIFT_MIN", "SHIFT_MAX",
    "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier", "output_stage", "quantize_multiplier",
    "mbqm_reference",
]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT8_MIN = -128
INT8_MAX = 127

ArrayLikeInt = int | np.integer | npt.ArrayLike


# ---- argument validation ---------------------------------------------------------------------

def _as_int_array(name: str, value: ArrayLikeInt, lo: int, hi: int) -> np.ndarray:
    """``value`` as an int64 array, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer or an integer array, not {value!r}")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged sequences and the like
        raise TypeError(f"{name} must be an integer or an integer array: {exc}") from exc
    if arr.dtype == object and all(isinstance(v, numbers.Integral)
                                   and not isinstance(v, (bool, np.bool_)) for v in arr.flat):
        # numpy falls back to object only for integers that fit in no 64-bit dtype.
        raise ValueError(f"{name} must be in [{lo}, {hi}], found a value outside 64 bits")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer or an integer array, "
                        f"not dtype {arr.dtype} ({value!r})")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], found {int(arr.max())}")
    arr = arr.astype(np.int64)
    if arr.size:
        amin, amax = int(arr.min()), int(arr.max())
        if amin < lo or amax > hi:
            bad = amin if amin < lo else amax
            raise ValueError(f"{name} must be in [{lo}, {hi}], found {bad}")
    return arr


def _wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of an int64 array into int32."""
    return ((x + (1 << 31)) & 0xFFFF_FFFF) - (1 << 31)


def _check_py_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {value}")
    return value


# ---- vectorised primitives (int64 inside, int32 out) -----------------------------------------

def _srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # |a * b| <= 2**62 and |nudge| < 2**30, so the int64 arithmetic below cannot overflow.
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    t = ab + nudge
    # C integer division truncates toward zero; numpy's >> floors, so divide magnitudes.
    q = np.where(t >= 0, t >> 31, -((-t) >> 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), np.int64(INT32_MAX), q)


def _rdbpot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def _mbqm(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    # x * 2**left is int32 arithmetic: |x| <= 2**31, left <= 30, so int64 holds it before the wrap.
    shifted = _wrap_int32(x << left)
    return _rdbpot(_srdhm(shifted, multiplier), right)


def saturating_rounding_doubling_high_mul(a: ArrayLikeInt, b: ArrayLikeInt) -> np.ndarray:
    """TFLite/gemmlowp ``SaturatingRoundingDoublingHighMul``, element-wise.

    Computes ``trunc((a * b + nudge) / 2**31)`` with ``nudge = 2**30`` if ``a * b >= 0`` else
    ``1 - 2**30``, and saturates the single overflowing case ``a == b == INT32_MIN`` to
    ``INT32_MAX``.

    Parameters
    ----------
    a, b : int or array_like of int
        Operands in the int32 range; broadcast against each other.

    Returns
    -------
    numpy.ndarray
        int32 array of the broadcast shape (0-d for scalar inputs).

    Raises
    ------
    TypeError
        If an operand is not integer-valued.
    ValueError
        If an operand is outside the int32 range or the shapes do not broadcast.
    """
    a_arr = _as_int_array("a", a, INT32_MIN, INT32_MAX)
    b_arr = _as_int_array("b", b, INT32_MIN, INT32_MAX)
    a_arr, b_arr = _broadcast(("a", a_arr), ("b", b_arr))
    return _srdhm(a_arr, b_arr).astype(np.int32)


def rounding_divide_by_pot(x: ArrayLikeInt, exponent: ArrayLikeInt) -> np.ndarray:
    """TFLite/gemmlowp ``RoundingDivideByPOT``: ``x / 2**exponent``, rounded half away from
    zero, element-wise.

    Parameters
    ----------
    x : int or array_like of int
        Dividend in the int32 range.
    exponent : int or array_like of int
        Power of two in ``[0, 31]``; broadcast against ``x``.

    Returns
    -------
    numpy.ndarray
        int32 array of the broadcast shape.

    Raises
    ------
    TypeError
        If an argument is not integer-valued.
    ValueError
        If ``x`` is outside int32, ``exponent`` outside ``[0, 31]``, or the shapes do not
        broadcast.
    """
    x_arr = _as_int_array("x", x, INT32_MIN, INT32_MAX)
    e_arr = _as_int_array("exponent", exponent, 0, 31)
    x_arr, e_arr = _broadcast(("x", x_arr), ("exponent", e_arr))
    return _rdbpot(x_arr, e_arr).astype(np.int32)


def multiply_by_quantized_multiplier(x: ArrayLikeInt, multiplier: ArrayLikeInt,
                                     shift: ArrayLikeInt) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier`` (double-rounding reference), element-wise.

    ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2**left, multiplier), right)``
    with ``left = max(shift, 0)``, ``right = max(-shift, 0)``; ``x * 2**left`` wraps in int32.

    Parameters
    ----------
    x : int or array_like of int
        Value in the int32 range.
    multiplier : int or array_like of int
        Any int32 (quantizers produce ``[2**30, 2**31)``).
    shift : int or array_like of int
        Exponent in ``[-31, 30]``: positive shifts left, negative shifts right.

    Returns
    -------
    numpy.ndarray
        int32 array of the broadcast shape of the three arguments.

    Raises
    ------
    TypeError
        If an argument is not integer-valued.
    ValueError
        If an argument is out of range or the shapes do not broadcast.
    """
    x_arr = _as_int_array("x", x, INT32_MIN, INT32_MAX)
    m_arr = _as_int_array("multiplier", multiplier, INT32_MIN, INT32_MAX)
    s_arr = _as_int_array("shift", shift, SHIFT_MIN, SHIFT_MAX)
    x_arr, m_arr, s_arr = _broadcast(("x", x_arr), ("multiplier", m_arr), ("shift", s_arr))
    return _mbqm(x_arr, m_arr, s_arr).astype(np.int32)


def _broadcast(*named: tuple[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return list(np.broadcast_arrays(*(arr for _, arr in named)))
    except ValueError as exc:
        shapes = ", ".join(f"{name} {arr.shape}" for name, arr in named)
        raise ValueError(f"shapes do not broadcast: {shapes}") from exc


# ---- the whole output stage ------------------------------------------------------------------

def output_stage(acc: ArrayLikeInt, bias: ArrayLikeInt, multiplier: ArrayLikeInt,
                 shift: ArrayLikeInt, zero_point: ArrayLikeInt, lo: ArrayLikeInt = INT8_MIN,
                 hi: ArrayLikeInt = INT8_MAX) -> np.ndarray:
    """Requantize int32 accumulators to int8, exactly as ``docs/numerics.md`` defines it.

    Per output column ``n``::

        y = MultiplyByQuantizedMultiplier(acc + bias[n], multiplier[n], shift[n])
        y = y + zero_point[n]
        out = int8(min(max(y, lo[n]), hi[n]))

    ``acc + bias`` and ``y + zero_point`` are int32 additions and wrap on overflow. The clamp
    applies ``lo`` first, then ``hi`` (TFLite's order), so ``lo > hi`` yields ``hi``.

    Parameters
    ----------
    acc : array_like of int
        Accumulators in the int32 range, shape ``[..., C]`` (at least 1-D).
    bias, multiplier : int or array_like of int
        int32 column parameters: a scalar or a length-``C`` (or length-1) 1-D array,
        broadcast along the last axis of ``acc``.
    shift : int or array_like of int
        Column exponents in ``[-31, 30]``, broadcast like ``bias``.
    zero_point, lo, hi : int or array_like of int
        Output zero point and clamp bounds in the int8 range, broadcast like ``bias``. ReLU is
        ``lo = zero_point``.

    Returns
    -------
    numpy.ndarray
        int8 array with the shape of ``acc``.

    Raises
    ------
    TypeError
        If an argument is not integer-valued.
    ValueError
        If ``acc`` is 0-d, a value is outside its range, or a column parameter is neither a
        scalar nor a 1-D array of length ``C`` or 1.
    """
    acc_arr = _as_int_array("acc", acc, INT32_MIN, INT32_MAX)
    if acc_arr.ndim < 1:
        raise ValueError(f"acc must have at least one dimension (columns last), "
                         f"not shape {acc_arr.shape}")
    cols = acc_arr.shape[-1]
    params = {}
    for name, value, lo_bound, hi_bound in (
            ("bias", bias, INT32_MIN, INT32_MAX),
            ("multiplier", multiplier, INT32_MIN, INT32_MAX),
            ("shift", shift, SHIFT_MIN, SHIFT_MAX),
            ("zero_point", zero_point, INT8_MIN, INT8_MAX),
            ("lo", lo, INT8_MIN, INT8_MAX),
            ("hi", hi, INT8_MIN, INT8_MAX)):
        arr = _as_int_array(name, value, lo_bound, hi_bound)
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, cols)):
            raise ValueError(f"{name} must be a scalar or a 1-D array of length {cols} "
                             f"(the last axis of acc), not shape {arr.shape}")
        params[name] = arr
    x = _wrap_int32(acc_arr + params["bias"])
    y = _mbqm(x, params["multiplier"], params["shift"])
    y = _wrap_int32(y + params["zero_point"])
    y = np.minimum(np.maximum(y, params["lo"]), params["hi"])
    return np.broadcast_to(y, acc_arr.shape).astype(np.int8)


# ---- float scale -> (multiplier, shift) ------------------------------------------------------

@overload
def quantize_multiplier(real_multiplier: float) -> tuple[int, int]: ...
@overload
def quantize_multiplier(real_multiplier: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def quantize_multiplier(real_multiplier):
    """TFLite ``QuantizeMultiplier``: a non-negative real scale as ``(multiplier, shift)``.

    ``real ~= multiplier * 2**(shift - 31)`` with ``multiplier`` in ``[2**30, 2**31)``, found
    with ``frexp`` and round-half-away-from-zero of the mantissa. A mantissa that rounds up to
    ``2**31`` is halved and ``shift`` incremented. Scales below about ``2**-32`` (``shift <
    -31``) flush to ``(0, 0)``; scales of ``2**30`` or more saturate to
    ``(2**31 - 1, 30)``. ``0`` gives ``(0, 0)``. Inside that range the reconstruction is
    within ``2**-31`` relative.

    Parameters
    ----------
    real_multiplier : float or array_like of float
        Scale(s), ``s_in * s_w / s_out`` for a layer; finite and ``>= 0``.

    Returns
    -------
    tuple
        ``(multiplier, shift)``: two Python ``int`` for a scalar input, two int32 arrays of
        the input's shape for an array input.

    Raises
    ------
    TypeError
        If the input is not real-valued.
    ValueError
        If a value is negative, NaN or infinite.
    """
    scalar = np.ndim(real_multiplier) == 0 and not isinstance(real_multiplier, np.ndarray)
    if isinstance(real_multiplier, (bool, np.bool_)):
        raise TypeError(f"real_multiplier must be a real number, not {real_multiplier!r}")
    try:
        arr = np.asarray(real_multiplier)
    except Exception as exc:
        raise TypeError(f"real_multiplier must be a real number or array: {exc}") from exc
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"real_multiplier must be a real number or array, "
                        f"not dtype {arr.dtype} ({real_multiplier!r})")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"real_multiplier must be finite, found "
                         f"{arr[~np.isfinite(arr)].flat[0]!r}")
    if np.any(arr < 0):
        raise ValueError(f"real_multiplier must be >= 0, found {arr[arr < 0].flat[0]!r}")
    mantissa, exponent = np.frexp(arr)  # mantissa in [0.5, 1), or 0 for 0
    exponent = exponent.astype(np.int64)
    # mantissa * 2**31 is exact in float64 and lies in [2**30, 2**31), where the spacing is
    # 2**-22, so adding 0.5 is exact too: floor(v + 0.5) is round-half-away-from-zero.
    q_fixed = np.floor(mantissa * float(1 << 31) + 0.5).astype(np.int64)
    round_up = q_fixed == (1 << 31)
    q_fixed = np.where(round_up, q_fixed // 2, q_fixed)
    exponent = np.where(round_up, exponent + 1, exponent)
    flush = exponent < SHIFT_MIN
    q_fixed = np.where(flush, 0, q_fixed)
    exponent = np.where(flush, 0, exponent)
    saturate = exponent > SHIFT_MAX
    q_fixed = np.where(saturate, INT32_MAX, q_fixed)
    exponent = np.where(saturate, SHIFT_MAX, exponent)
    zero = arr == 0
    q_fixed = np.where(zero, 0, q_fixed).astype(np.int32)
    exponent = np.where(zero, 0, exponent).astype(np.int32)
    if scalar:
        return int(q_fixed), int(exponent)
    return q_fixed, exponent


# ---- scalar oracle ---------------------------------------------------------------------------

def mbqm_reference(x: int, multiplier: int, shift: int) -> int:
    """Literal pure-Python transcription of ``MultiplyByQuantizedMultiplier`` in
    ``docs/numerics.md``; the independent oracle the tests check the vectorised code against.

    Parameters
    ----------
    x : int
        Value in the int32 range.
    multiplier : int
        Any int32.
    shift : int
        Exponent in ``[-31, 30]``.

    Returns
    -------
    int
        The int32 result.

    Raises
    ------
    TypeError
        If an argument is not an integer.
    ValueError
        If an argument is out of range.
    """
    x = _check_py_int("x", x, INT32_MIN, INT32_MAX)
    multiplier = _check_py_int("multiplier", multiplier, INT32_MIN, INT32_MAX)
    shift = _check_py_int("shift", shift, SHIFT_MIN, SHIFT_MAX)

    def wrap32(v: int) -> int:
        return ((v + 2**31) % 2**32) - 2**31

    def saturating_rounding_doubling_high_mul(a: int, b: int) -> int:
        if a == b == -2**31:
            return 2**31 - 1
        ab = a * b
        nudge = 2**30 if ab >= 0 else 1 - 2**30
        n = ab + nudge
        # C integer division: quotient of the magnitudes, sign reapplied (trunc toward zero).
        q = abs(n) // 2**31
        return q if n >= 0 else -q

    def rounding_divide_by_pot(v: int, e: int) -> int:
        assert 0 <= e <= 31
        mask = 2**e - 1
        remainder = v & mask
        threshold = (mask >> 1) + (1 if v < 0 else 0)
        return (v >> e) + (1 if remainder > threshold else 0)

    left = max(shift, 0)
    right = max(-shift, 0)
    result = rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(wrap32(x * 2**left), multiplier), right)
    assert INT32_MIN <= result <= INT32_MAX
    return result

