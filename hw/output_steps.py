"""Small pure helpers shared by the output stage's pipelines (``hw.output_stage``).

Each one builds one step of ``MultiplyByQuantizedMultiplier`` and the clamp for one column:
the value arithmetic (carry-save layer, the rounding high multiply's sum, the carry-in add,
the byte shift, the shift-amount codes and the rounding masks) and the stage-1 registers every
pipeline starts with. They add no registers of their own except where the name says so
(:func:`stage1`, :func:`shift_codes`, :class:`Column`'s ``sync`` and ``delay``).
"""

from dataclasses import dataclass

from amaranth import C, Cat, Module, Mux, Shape, ShapeCastable, Signal, signed, unsigned

from . import isa
from .delay import delay

__all__ = ["INT32_MAX", "check_tag_shape", "Column", "Stage1", "stage1", "saturate_shift", "carry_save_sum",
           "karatsuba", "karatsuba_middle", "rounding_half_sum", "saturated", "round_increment", "carry_in_sum",
           "byte_shift", "ShiftCodes", "shift_codes", "mask_bits", "greater",
           "saturate_int16"]

INT32_MAX = (1 << 31) - 1


def check_tag_shape(tag_shape) -> None:
    """Raise ``TypeError`` unless ``tag_shape`` (a pipeline's pass-through tag) is
    shape-castable."""
    if not isinstance(tag_shape, ShapeCastable):
        try:
            Shape.cast(tag_shape)
        except TypeError as exc:
            raise TypeError(f"tag_shape must be a shape-castable object, "
                            f"not {tag_shape!r}") from exc


class Column:
    """Column ``n``'s named signals in ``m``: every name gets the prefix ``c{n}_``, and the
    payload registers are reset-less so that they pack into fabric and DSP registers."""

    def __init__(self, m: Module, n: int):
        self.m = m
        self.n = n

    def reg(self, shape, name: str) -> Signal:
        """A reset-less register ``c{n}_{name}`` (its statement added by the caller)."""
        return Signal(shape, name=f"c{self.n}_{name}", reset_less=True)

    def sync(self, shape, name: str, value) -> Signal:
        """A reset-less register ``c{n}_{name}`` loaded with ``value`` every cycle."""
        reg = self.reg(shape, name)
        self.m.d.sync += reg.eq(value)
        return reg

    def wire(self, shape, name: str, value) -> Signal:
        """A combinational signal ``c{n}_{name}`` equal to ``value``."""
        sig = Signal(shape, name=f"c{self.n}_{name}")
        self.m.d.comb += sig.eq(value)
        return sig

    def delay(self, sig, first: int, last: int, name: str):
        """``sig``, a stage-``first`` value, copied down to stage ``last`` through the
        registers ``c{n}_s{k}_{name}``, ``k = first + 1 .. last``."""
        return delay(self.m, sig, last - first, name=f"c{self.n}_s{{}}_{name}", first=first + 1,
                     reset_less=True)


@dataclass(frozen=True)
class Stage1:
    """The stage-1 registers of a column (see :func:`stage1`)."""
    x: Signal       # acc + bias, wrapped in int32
    left: Signal    # left shift amount, 0..30
    right: Signal   # right shift amount, 0..31
    mul: Signal
    zp: Signal
    lo: Signal
    hi: Signal


def saturate_shift(shift) -> tuple:
    """``(left, right)`` amounts (5 bits each, one of them 0) of the 8-bit shift field
    saturated into numerics.md's ``[SHIFT_MIN, SHIFT_MAX]`` = ``[-31, 30]``, as bit logic:
    signed compares would become carry chains in front of the registers."""
    assert len(shift) == 8 and (isa.SHIFT_MIN, isa.SHIFT_MAX) == (-31, 30)
    neg = shift[7]
    left_sat = shift[5] | shift[6] | (shift[:5] == 31)                 # shift > 30
    right_sat = ~(shift[5] & shift[6]) | (shift[:5] == 0)              # shift < -31
    left = Mux(neg, 0, Mux(left_sat, isa.SHIFT_MAX, shift[:5]))
    right = Mux(~neg, 0, Mux(right_sat, -isa.SHIFT_MIN, (-shift)[:5]))
    return left, right


def stage1(col: Column, acc, params) -> Stage1:
    """Stage 1 of every pipeline: one 32-bit carry chain (acc + bias) beside the shift decode
    and the clamp bounds (the clamp applies lo, then hi, so lo > hi gives hi: each pipeline
    handles that case itself)."""
    s1_x = col.reg(signed(32), "s1_x")
    s1_left = col.reg(unsigned(5), "s1_left")
    s1_right = col.reg(unsigned(5), "s1_right")
    s1_mul = col.reg(signed(32), "s1_mul")
    s1_zp = col.reg(signed(8), "s1_zp")
    s1_lo = col.reg(signed(8), "s1_lo")
    s1_hi = col.reg(signed(8), "s1_hi")
    left, right = saturate_shift(params.shift)
    col.m.d.sync += [
        s1_x.eq((acc + params.bias)[:32].as_signed()),
        s1_left.eq(left),
        s1_right.eq(right),
        s1_mul.eq(params.multiplier),
        s1_zp.eq(params.zero_point),
        s1_lo.eq(params.lo),
        s1_hi.eq(params.hi),
    ]
    return Stage1(s1_x, s1_left, s1_right, s1_mul, s1_zp, s1_lo, s1_hi)


def carry_save_sum(col: Column, stage: int, lh, hl, llhi, width: int = 34):
    """``lh + hl + llhi`` mod ``2**width`` in one carry chain behind a carry-save layer (one
    LUT level, ``s + 2c``); the operands are sign- or zero-extended through the stage-``stage``
    signals ``s{stage}_lh_ext`` etc. The value has more than ``width`` bits: slice it."""
    x3 = col.wire(width, f"s{stage}_lh_ext", lh)
    y3 = col.wire(width, f"s{stage}_hl_ext", hl)
    z3 = col.wire(width, f"s{stage}_llhi_ext", llhi)
    csa_s = x3 ^ y3 ^ z3
    csa_c = (x3 & y3) | (x3 & z3) | (y3 & z3)
    return csa_s + Cat(C(0, 1), csa_c[:width - 1])


def karatsuba(product, a_hi, a_lo, b_hi, b_lo, name: str = ""):
    """The three products of ``a * b`` for ``a = a_hi * 2**16 + a_lo`` and ``b = b_hi * 2**16
    + b_lo`` (``a_lo``, ``b_lo`` unsigned 16 bits; ``a_hi``, ``b_hi`` at most 17 bits signed
    or 15 unsigned, so that each sum ``hi + lo`` is an 18x18 DSP operand): ``(hh, mid, ll)``
    with ``hh = a_hi * b_hi``, ``ll = a_lo * b_lo`` and ``mid = (a_hi + a_lo) (b_hi + b_lo)``,
    so that ``lh + hl = mid - hh - ll`` (Karatsuba: three products for four).
    ``product(x, y, name)`` gives ``x * y``."""
    for v in (a_hi, b_hi):
        shape = v.shape()
        assert shape.width <= (17 if shape.signed else 15), shape
    hh = product(a_hi, b_hi, f"{name}hh")
    mid = product(a_hi + a_lo, b_hi + b_lo, f"{name}mid")
    ll = product(a_lo, b_lo, f"{name}ll")
    return hh, mid, ll


def karatsuba_middle(col: Column, stage: int, name: str, hh, mid, ll, width: int):
    """``lh + hl + (ll >> 16) = mid - hh - ll + (ll >> 16)`` mod ``2**width`` of the products
    of :func:`karatsuba` (``ll`` unsigned, 32 bits) in one carry chain behind two carry-save
    layers (two LUT levels): ``-v`` is ``~v + 1``, and the two ``+ 1`` ride in on the free low
    bits of the two shifted carry vectors. The value has more than ``width`` bits: slice
    it."""
    ll = ll.as_unsigned()[:32]
    x1 = col.wire(width, f"s{stage}_{name}mid_ext", mid)
    x2 = ~col.wire(width, f"s{stage}_{name}hh_ext", hh)
    x3 = ~col.wire(width, f"s{stage}_{name}ll_ext", ll)
    x4 = col.wire(width, f"s{stage}_{name}llhi_ext", ll[16:])
    s1 = x1 ^ x2 ^ x3
    c1 = Cat(C(1, 1), ((x1 & x2) | (x1 & x3) | (x2 & x3))[:width - 1])
    s2 = s1 ^ c1 ^ x4
    c2 = Cat(C(1, 1), ((s1 & c1) | (s1 & x4) | (c1 & x4))[:width - 1])
    return s2 + c2


def rounding_half_sum(p, q):
    """``(p + q + 1) >> 1`` as 33 signed bits in one carry chain: ``(2p + 1) + (2q + 1) =
    2 (p + q + 1)``, so the increment rides in on bit 0."""
    return (Cat(C(1, 1), p).as_signed() + Cat(C(1, 1), q).as_signed())[2:35].as_signed()


def saturated(h):
    """Whether the 33-bit ``h`` is the saturating case INT32_MIN * INT32_MIN (``h = 2**31``,
    the only product whose ``h`` leaves int32): bit 32 clear, bit 31 set."""
    return ~h[32] & h[31]


def round_increment(sat, rounds, round_bit, sticky, neg):
    """RoundingDivideByPOT's increment: "remainder > threshold" is "round bit set" for
    ``x >= 0`` and "round bit and a lower bit set" for ``x < 0``; the saturated ``h``
    (INT32_MAX, every bit below the sign set) rounds up whenever the shift is not 0
    (``rounds``), chosen last so that saturation does not widen the reduction terms."""
    return Mux(sat, rounds, round_bit & (~neg | sticky))


def carry_in_sum(a, b, cin, width: int):
    """``a + b + cin`` wrapped to ``width`` signed bits, the increment as the carry-in of the
    one adder: ``(2a + cin) + (2b + cin) = 2 (a + b + cin)``."""
    return (Cat(cin, a).as_signed() + Cat(cin, b).as_signed())[1:width + 1].as_signed()


def byte_shift(x, n_bytes, *, left: bool):
    """``x`` (signed 32-bit) shifted by ``8 * n_bytes`` (2 bits): left, wrapping in int32, or
    right, arithmetic. One 4:1 mux level per bit, written as two 2:1 levels."""
    by = [((x << (8 * k))[:32] if left else x >> (8 * k)).as_signed() for k in range(4)]
    return Mux(n_bytes[1], Mux(n_bytes[0], by[3], by[2]), Mux(n_bytes[0], by[1], by[0]))


@dataclass(frozen=True)
class ShiftCodes:
    """Registered codes of a 5-bit shift amount (see :func:`shift_codes`)."""
    lo_eq: Signal       # lo_eq[j]: right[:3] == j, j = 0..7
    lo_gt_bits: Signal  # right[:3] > j, j = 0..6
    hi_eq: Signal       # hi_eq[k]: right[3:] == k, k = 0..3
    hi_gt_bits: Signal  # right[3:] > k, k = 0..2

    def lo_gt(self, j: int):
        """``right[:3] > j`` for ``j`` in 0..7."""
        return self.lo_gt_bits[j] if j < 7 else C(0, 1)

    def hi_gt(self, k: int):
        """``right[3:] > k`` for ``k`` in 0..3."""
        return self.hi_gt_bits[k] if k < 3 else C(0, 1)


def shift_codes(col: Column, right, stage: int) -> ShiftCodes:
    """One-hot and "greater than" codes of a 5-bit shift amount's low 3 and high 2 bits,
    registered as stage ``stage`` (22 flip-flops): every rounding-mask bit is then one LUT4
    of three of them (:func:`mask_bits`)."""
    lo3, hi2 = right[:3], right[3:]
    lo_eq = col.reg(unsigned(8), f"s{stage}_lo_eq")
    lo_gt = col.reg(unsigned(7), f"s{stage}_lo_gt")
    hi_eq = col.reg(unsigned(4), f"s{stage}_hi_eq")
    hi_gt = col.reg(unsigned(3), f"s{stage}_hi_gt")
    col.m.d.sync += [
        lo_eq.eq(Cat(lo3 == j for j in range(8))),
        lo_gt.eq(Cat(lo3 > j for j in range(7))),
        hi_eq.eq(Cat(hi2 == k for k in range(4))),
        hi_gt.eq(Cat(hi2 > k for k in range(3))),
    ]
    return ShiftCodes(lo_eq, lo_gt, hi_eq, hi_gt)


def mask_bits(codes: ShiftCodes) -> tuple:
    """RoundingDivideByPOT's masks from the codes of the shift amount ``right``:
    ``(half, round, rounds)`` with ``half`` (31 bits) = ``2**(right-1) - 1`` (the bits below
    the round bit: ``right > i + 1``), ``round`` (31 bits) = ``2**(right-1)`` (``right ==
    i + 1``; 0 for right 0) and ``rounds`` = ``right != 0``. For ``v = i + 1 = 8k + j``."""
    half = Cat(codes.hi_gt((i + 1) >> 3)
               | (codes.hi_eq[(i + 1) >> 3] & codes.lo_gt((i + 1) & 7)) for i in range(31))
    round_ = Cat(codes.hi_eq[(i + 1) >> 3] & codes.lo_eq[(i + 1) & 7] for i in range(31))
    rounds = ~(codes.hi_eq[0] & codes.lo_eq[0])
    return half, round_, rounds


def greater(a, b):
    """``a > b`` for int8 ``a``, ``b``: the sign bit of the 9-bit ``b - a``."""
    return (b - a)[8]


def saturate_int16(y):
    """Signed 32-bit ``y`` saturated to int16: the top 17 bits all equal (in range) keep the
    low 16, otherwise the bound of ``y``'s sign; an AND/OR reduction beside a mux, no
    compare's carry chain."""
    top = y.as_unsigned()[15:]
    in_range = (top == 0) | (top == (1 << len(top)) - 1)
    return Mux(in_range, y[:16], Mux(y[31], C(-(1 << 15), 16), C((1 << 15) - 1, 16))).as_signed()
