"""Small pure helpers of the vector unit's lane datapaths (``hw.vector_lanes``).

Two families of products, as separate classes with one interface (:class:`GenericLaneArith`,
:class:`ECP5LaneArith`, picked by :func:`lane_arith`): the wide products of the kernels
(``x * in_mult``, ``x * phi``, ...) split into partial products of 16-bit halves that each fit
one 18x18 DSP (a slot of the lane's :class:`~.vector_bank.ProductBank`, which engines that
never run together share), and ``MultiplyByQuantizedMultiplier`` built from the output stage's own steps
(``hw.output_steps``, ``hw.output_wide``), so there is one MBQM in the gateware.

Everything here works on one lane's :class:`~.output_steps.Column` (names ``c{lane}_...``)
with explicit stage numbers: a function taking a stage-``s`` register returns a register of
the stage it states. Apart from the products (the arithmetic's ``product``) every helper
adds only plain reset-less registers that advance on every cycle: the lane pipelines are
free-running, like the output stage, and ``hw.vector_lanes`` puts the backpressure around
them.
"""

from amaranth import C, Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib.memory import Memory

from .delay import delay
from .mult import Family, MultiplierTarget
from .output_steps import (Column, Stage1, byte_shift, carry_in_sum, karatsuba, karatsuba_middle,
                           saturate_shift)
from .output_wide import ECP5OutputStage, GenericOutputStage, high_mul
from .vector_bank import LaneProducts, product_latency

__all__ = ["GenericLaneArith", "ECP5LaneArith", "lane_arith", "scalar_stage1", "lo_hi",
           "wide_products", "wide_sum", "round_shift_staged", "saturate_to", "ram_delay"]


class GenericLaneArith:
    """Registered ``*`` partial products (from a :class:`~.vector_bank.ProductBank`) and the
    generic output stage's MBQM."""

    #: Cycles of every partial product.
    PRODUCT_LATENCY = 1
    #: Stages of :meth:`mbqm` after its stage-1 registers: the left shift, the products, ``t``,
    #: ``h``, the division, the ``q + inc`` add.
    MBQM_STAGES = 1 + PRODUCT_LATENCY + 2 + 1 + 1

    def __init__(self, target: MultiplierTarget, products: LaneProducts | None = None):
        assert self.PRODUCT_LATENCY == product_latency(target)
        self.target = target
        self.products = products

    def for_lane(self, products: LaneProducts) -> "GenericLaneArith":
        """The same arithmetic with its products from one lane's bank slots."""
        return type(self)(self.target, products)

    def product(self, col: Column, a, b, stage: int, name: str):
        """``a * b`` (each at most 18 bits signed or 17 unsigned) as a stage-``stage`` value
        (36 bits signed), ``PRODUCT_LATENCY`` cycles after ``a`` and ``b``: the lane's next
        multiplier slot (:meth:`for_lane`); ``name`` only documents the call."""
        return self.products.take(col.m, a, b)

    def mbqm_parts(self, col: Column, s1: Stage1):
        """MBQM of the stage-1 registers (only ``x``, ``left``, ``right``, ``mul`` are used)
        before its rounding increment: the generic output stage's shift, four partial
        products, high multiply and RoundingDivideByPOT. Returns ``(q, inc, sq)``, ``q`` and
        ``inc`` registers of stage ``sq = MBQM_STAGES`` (the output stage's ``_divide``)."""
        s2_mul = col.delay(s1.mul, 1, 2, "mul")
        s2_a = col.sync(signed(32), "s2_a", (s1.x << s1.left)[:32].as_signed())
        sp = 2 + self.PRODUCT_LATENCY
        s_h = high_mul(col, s2_a, s2_mul, sp,
                       lambda a, b, name: self.product(col, a, b, sp, name))
        s_q, s_inc = GenericOutputStage._divide(col, s1, s_h, sp)
        return s_q, s_inc, sp + 3

    def mbqm(self, col: Column, s1: Stage1):
        """``MultiplyByQuantizedMultiplier(s1.x, s1.mul, shift)`` of the stage-1 registers (only
        ``x``, ``left``, ``right``, ``mul`` are used): :meth:`mbqm_parts`, then the rounding
        increment added (where the output stage adds the zero point). Returns the int32
        result, a register of stage ``1 + MBQM_STAGES``."""
        return _add_increment(col, *self.mbqm_parts(col, s1))


class ECP5LaneArith(GenericLaneArith):
    """MULT18X18D partial products (the bank's ``hw.mult.Multiplier``, with
    ``target.simulation`` its cycle-equivalent model) and the ECP5 output stage's MBQM (every
    stage at most a 4:1 mux or one carry chain per bit)."""

    #: The DSP's input, pipeline and output registers.
    PRODUCT_LATENCY = ECP5OutputStage.PRODUCT_LATENCY
    #: Two shift stages, the products, ``t``, ``h``, three division stages, ``q + inc``.
    MBQM_STAGES = 2 + PRODUCT_LATENCY + 2 + 3 + 1

    def mbqm_parts(self, col: Column, s1: Stage1):
        s2_mul = col.delay(s1.mul, 1, 2, "mul")
        s2_x = col.sync(signed(32), "s2_x", (s1.x << s1.left[:3])[:32].as_signed())
        s2_bytes = col.sync(unsigned(2), "s2_bytes", s1.left[3:])
        s3_a = col.sync(signed(32), "s3_a", byte_shift(s2_x, s2_bytes, left=True))
        s3_mul = col.delay(s2_mul, 2, 3, "mul")
        sp = 3 + self.PRODUCT_LATENCY
        s_h = high_mul(col, s3_a, s3_mul, sp,
                       lambda a, b, name: self.product(col, a, b, sp, name))
        s_q, s_inc, sq = ECP5OutputStage._divide(col, s1, s_h, sp)
        assert sq == self.MBQM_STAGES
        return s_q, s_inc, sq


def lane_arith(target: MultiplierTarget) -> GenericLaneArith:
    """The arithmetic for ``target.family``: generic or ECP5 (iCE40 has no lane datapaths: its
    parts have 8 DSPs, fewer than one lane's products)."""
    if target.family is Family.ECP5:
        return ECP5LaneArith(target)
    if target.family is Family.GENERIC:
        return GenericLaneArith(target)
    raise ValueError(f"the vector lanes support the generic and ecp5 families, "
                     f"not {target.family.value}")


def _add_increment(col: Column, s_q, s_inc, sq: int):
    """MBQM's result ``q + inc`` (the increment as the carry-in; it never wraps: ``inc`` is 0
    when ``q`` can be INT32_MAX) in register ``s{sq+1}_mbqm``."""
    return col.sync(signed(32), f"s{sq + 1}_mbqm", carry_in_sum(s_q, C(0, 32), s_inc, 32))


def scalar_stage1(col: Column, x, multiplier, shift) -> Stage1:
    """The MBQM stage-1 registers of ``x`` (int32, the stage-0 register) with a multiplier and
    an 8-bit shift field (``isa.OutputParams`` semantics, saturated into ``[-31, 30]``): the
    output stage's ``stage1`` without bias, zero point and clamp (``zp``, ``lo``, ``hi`` are
    ``None``; MBQM does not read them)."""
    left, right = saturate_shift(shift)
    return Stage1(x=col.sync(signed(32), "s1_x", x),
                  left=col.sync(unsigned(5), "s1_left", left),
                  right=col.sync(unsigned(5), "s1_right", right),
                  mul=col.sync(signed(32), "s1_mul", multiplier),
                  zp=None, lo=None, hi=None)


def lo_hi(v):
    """``v`` (at most 34 bits signed or 33 unsigned) as its unsigned low 16 bits and the rest
    (signed if ``v`` is): ``v = hi * 2**16 + lo``, each an 18x18 DSP operand."""
    hi = v[16:].as_signed() if v.shape().signed else v[16:]
    return v.as_unsigned()[:16], hi


def wide_products(product, a, b, name: str):
    """The three Karatsuba products (``output_steps.karatsuba``) of ``a * b``, each operand at
    most 33 bits signed or 31 unsigned, split by :func:`lo_hi`: ``(hh, mid, ll)`` for
    :func:`wide_sum`. ``product(x, y, name)`` gives ``x * y``; the names are
    ``{name}_hh`` etc."""
    a_lo, a_hi = lo_hi(a)
    b_lo, b_hi = lo_hi(b)
    return karatsuba(product, a_hi, a_lo, b_hi, b_lo, f"{name}_")


def wide_sum(col: Column, stage: int, name: str, hh, mid, ll):
    """``hh * 2**32 + (mid - hh - ll) * 2**16 + ll`` (the Karatsuba products of
    :func:`wide_products`, stage-``stage`` values) as 64 signed bits, in two stages:
    ``t = lh + hl + (ll >> 16)`` behind two carry-save layers (as the output stage's high
    multiply), then ``hh * 2**16 + t`` above ``ll``'s low 16 bits. Returns the register of
    stage ``stage + 2``."""
    t = col.sync(signed(36), f"s{stage + 1}_{name}_t",
                 karatsuba_middle(col, stage + 1, f"{name}_", hh[:36].as_signed(), mid, ll,
                                  36)[:36].as_signed())
    s_hh = col.delay(hh, stage, stage + 1, f"{name}_hh")
    s_ll = col.delay(ll.as_unsigned()[:16], stage, stage + 1, f"{name}_ll")
    return col.sync(signed(64), f"s{stage + 2}_{name}",
                    Cat(s_ll, ((s_hh << 16) + t)[:48]).as_signed())


def round_shift_staged(col: Column, p, amount, stage: int, name: str):
    """``floor(p * 2 / 2**amount)`` for a signed ``p`` and a 6-bit ``amount`` (constant for the
    command, or delayed alongside by the caller), one 4:1 mux level per stage: by the
    amount's low 2 bits, then 4 x its next 2, then 16 x its top 2. Arithmetic shifts compose.
    With ``Q`` the result, ``(p + 2**(amount-1)) >> amount`` is ``(Q + 1) >> 1``: the
    rounding constant is never added at a variable position. Returns the register of stage
    ``stage + 3``."""
    v = Cat(C(0, 1), p).as_signed()
    for k, step in enumerate((1, 4, 16)):
        digit = amount[2 * k:2 * k + 2]
        by = [v >> (step * j) for j in range(4)]
        v = col.sync(signed(len(v)), f"s{stage + k + 1}_{name}_shr",
                     Mux(digit[1], Mux(digit[0], by[3], by[2]), Mux(digit[0], by[1], by[0])))
    return v


def saturate_to(v, bits: int):
    """``v`` (signed) saturated to ``bits`` signed bits: a check that the bits above the low
    ``bits - 1`` are all equal, and a mux; no comparator chain."""
    top = v.as_unsigned()[bits - 1:]
    in_range = (top == 0) | (top == (1 << len(top)) - 1)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(in_range, v[:bits].as_signed(),
               Mux(v[-1], C(lo, signed(bits)), C(hi, signed(bits))))


def ram_delay(m: Module, value, stages: int, *, name: str):
    """``value`` delayed by ``stages`` cycles (like ``hw.delay.delay``), through a memory when
    that is long: one write and one read on every cycle at a constant distance, so that a
    wide, long delay line is a LUT RAM or a block RAM rather than ``stages`` registers per bit
    (ECP5 has no shift-register primitive). Free-running, without reset: the payload of a
    pipeline whose valid bits travel in registers. Below 4 stages: plain registers."""
    shape = value.shape() if hasattr(value, "shape") else Value.cast(value).shape()
    if stages < 4:
        return delay(m, value, stages, name=name + "_d{}", reset_less=True)
    depth = 1 << (stages - 1).bit_length()          # >= stages: no entry is overwritten
    m.submodules[name] = mem = Memory(shape=shape, depth=depth, init=[])
    w_port = mem.write_port()
    r_port = mem.read_port()                        # synchronous: the last of the stages
    # Two counters a constant distance apart (no subtraction in front of the read address):
    # the read address is the one written stages - 1 cycles ago.
    w_ptr = Signal(range(depth), name=f"{name}_w_ptr")
    r_ptr = Signal(range(depth), name=f"{name}_r_ptr", init=(1 - stages) % depth)
    m.d.sync += [w_ptr.eq(w_ptr + 1), r_ptr.eq(r_ptr + 1)]
    m.d.comb += [
        w_port.addr.eq(w_ptr), w_port.data.eq(value), w_port.en.eq(1),
        r_port.addr.eq(r_ptr),
    ]
    return r_port.data
