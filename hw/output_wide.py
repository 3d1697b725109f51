"""The output stage's wide pipelines: the 32x32 product as three Karatsuba products of 16-bit
halves, each alone between registers, as plain ``*`` (:class:`GenericOutputStage`) or as instantiated
MULT18X18D blocks (:class:`ECP5OutputStage`)."""

from amaranth import C, Cat, Mux, signed, unsigned

from . import isa
from .mult import Multiplier
from .output_stage import OutputStage
from .output_steps import (INT32_MAX, Column, Stage1, byte_shift, carry_in_sum, greater,
                           karatsuba, karatsuba_middle, mask_bits, round_increment,
                           rounding_half_sum, saturated, saturate_int16, shift_codes, stage1)

__all__ = ["GenericOutputStage", "ECP5OutputStage"]


def high_mul(col: Column, a, b, sp: int, product):
    """SaturatingRoundingDoublingHighMul's ``h`` of the stage-``sp - P`` registers ``a`` and
    ``b`` (int32) in the stage-``sp + 2`` register ``s{sp+2}_h`` (33 bits, see
    :func:`~.output_steps.saturated`).

    ``product(x, y, name)`` gives ``x * y`` (operands of at most 18 bits signed, 17
    unsigned) in the stage-``sp`` registers, as a value of at least 34 bits: the three
    Karatsuba products of 16-bit halves (signed high, unsigned low; ``output_steps.
    karatsuba``), each one 18x18 DSP, ``a * b = hh * 2**32 + (lh + hl) * 2**16 + ll`` with
    ``lh + hl = mid - hh - ll``.

    The nudge and truncating division: for ab >= 0, trunc((ab + 2**30) / 2**31) =
    floor((ab + 2**30) / 2**31); for ab < 0, trunc((ab + 1 - 2**30) / 2**31) = ceil(...) =
    floor((ab + 1 - 2**30 + 2**31 - 1) / 2**31) = floor((ab + 2**30) / 2**31). Both signs are
    one floor of ab + 2**30, and since 2**30 only touches bits >= 30 that is
    ((ab >> 30) + 1) >> 1. With t = lh + hl + (ll >> 16), which is ab >> 16 less hh * 2**16
    (the low 16 bits of ll produce no carry), ab >> 30 = hh * 4 + (t >> 14).
    Stage sp + 1 computes t mod 2**34 (where it fits, |t| < 2**33; ``output_steps.
    karatsuba_middle``), stage sp + 2 h = ((t >> 14) + 4 hh + 1) >> 1.
    """
    a_lo, a_hi = a.as_unsigned()[:16], a[16:].as_signed()
    b_lo, b_hi = b.as_unsigned()[:16], b[16:].as_signed()
    hh, mid, ll = karatsuba(product, a_hi, a_lo, b_hi, b_lo)   # |hh| <= 2**30
    hh = hh[:32].as_signed()

    st = sp + 1
    tw = 34
    s_t = col.sync(signed(tw), f"s{st}_t",
                   karatsuba_middle(col, st, "", hh, mid, ll, tw)[:tw].as_signed())
    s_hh = col.delay(hh, sp, st, "hh")

    sh = sp + 2
    p = col.wire(signed(34), f"s{sh}_p", s_t >> 14)
    q = col.wire(signed(34), f"s{sh}_q", s_hh << 2)
    return col.sync(signed(33), f"s{sh}_h", rounding_half_sum(p, q))


def zero_point_and_clamp(col: Column, s1: Stage1, s_q, s_inc, sq: int, wide=None):
    """``y = q + zero_point + inc`` (an int32 add that wraps, with the rounding increment as
    its carry-in) in stage ``sq + 1``, then the clamp in two stages; returns the value the
    caller registers as the output (stage ``sq + 3``).

    ``lo`` and ``hi`` are int8, so "y > hi" is "y above int8, or y in int8 and its low byte
    > hi" (the same for "y < lo"). The first clamp stage computes both flags and "lo > hi"
    (which gives hi: lo applies first): a 25-bit all-zeros/all-ones reduction beside two
    9-bit subtractions whose sign bits are the byte comparisons, and "lo > hi" from nibble
    compares registered a stage earlier, so that no 8-bit compare's carry chain is in the
    stage; the second is the two muxes alone (outside int8 one of "y > hi", "y < lo" is
    always set, so the low byte needs no saturation).

    ``wide`` (a signal, or ``None``): also ``y`` saturated to int16 (``output_steps.
    saturate_int16``), registered in the first clamp stage and again beside the caller's
    output register, and driven onto ``wide`` aligned with the output.
    """
    sy = sq + 1
    zp = col.delay(s1.zp, 1, sq, "zp")
    s_y = col.sync(signed(32), f"s{sy}_y", carry_in_sum(s_q, zp, s_inc, 32))

    sf = sy + 1
    lo_m = col.delay(s1.lo, 1, sy - 1, "lo")
    hi_m = col.delay(s1.hi, 1, sy - 1, "hi")
    lo = col.delay(lo_m, sy - 1, sy, "lo")
    hi = col.delay(hi_m, sy - 1, sy, "hi")
    # "lo > hi" nibble by nibble: signed high nibbles, then unsigned low ones on a tie.
    s_nib_gt = col.reg(1, f"s{sy}_lo_gt_hi_nibble")
    s_nib_eq = col.reg(1, f"s{sy}_lo_eq_hi_nibble")
    s_nib_lo = col.reg(1, f"s{sy}_lo_gt_lo_nibble")
    col.m.d.sync += [
        s_nib_gt.eq(lo_m[4:].as_signed() > hi_m[4:].as_signed()),
        s_nib_eq.eq(lo_m[4:] == hi_m[4:]),
        s_nib_lo.eq(lo_m[:4].as_unsigned() > hi_m[:4].as_unsigned()),
    ]
    top = s_y.as_unsigned()[7:]
    in_range = (top == 0) | (top == (1 << len(top)) - 1)
    low = s_y[:8].as_signed()
    s_y8 = col.reg(signed(8), f"s{sf}_y")
    s_gt = col.reg(1, f"s{sf}_gt")
    s_lt = col.reg(1, f"s{sf}_lt")
    s_lo_gt = col.reg(1, f"s{sf}_lo_gt")
    col.m.d.sync += [
        s_y8.eq(low),
        s_gt.eq(Mux(in_range, greater(low, hi), ~s_y[31])),  # y > hi
        s_lt.eq(Mux(in_range, greater(lo, low), s_y[31])),   # y < lo
        s_lo_gt.eq(s_nib_gt | (s_nib_eq & s_nib_lo)),
    ]
    lo_f = col.delay(lo, sy, sf, "lo")
    hi_f = col.delay(hi, sy, sf, "hi")
    if wide is not None:
        s_y16 = col.sync(signed(16), f"s{sf}_y16", saturate_int16(s_y))
        col.m.d.comb += wide.eq(col.sync(signed(16), f"s{sf + 1}_wide", s_y16))
    return Mux(s_gt | s_lo_gt, hi_f, Mux(s_lt, lo_f, s_y8))


class GenericOutputStage(OutputStage):
    """The portable pipeline (9 stages): each partial product a plain registered ``a * b``.

    1. ``acc + bias``, the shift decode, the clamp bounds (``output_steps.stage1``);
    2. the left barrel shift (wraps in int32), in a cycle of its own so that the multipliers'
       operands come straight from registers;
    3. the three Karatsuba products (``high_mul``);
    4. ``t``; 5. ``h`` beside the rounding masks decoded from the shift amount;
    6. RoundingDivideByPOT's shift and increment;
    7. the zero point; 8-9. the clamp (``zero_point_and_clamp``).
    """

    #: Cycles of each partial product: one registered ``*``.
    PRODUCT_LATENCY = 1

    @property
    def latency(self) -> int:
        """Cycles from a row on the inputs (``i_valid``) to its result (``o_valid``)."""
        return 2 + self.PRODUCT_LATENCY + 2 + 1 + 1 + 2

    def _column(self, m, n: int, acc, params, out) -> None:
        col = Column(m, n)
        s1 = stage1(col, acc, params)
        s2_mul = col.delay(s1.mul, 1, 2, "mul")
        s2_a = col.sync(signed(32), "s2_a", (s1.x << s1.left)[:32].as_signed())
        sp = 2 + self.PRODUCT_LATENCY
        s_h = high_mul(col, s2_a, s2_mul, sp,
                       lambda a, b, name: col.sync(signed(34), f"s{sp}_{name}", a * b))
        sq = sp + 3
        s_q, s_inc = self._divide(col, s1, s_h, sp)
        assert sq + 3 == self.latency
        s_out = col.sync(signed(8), f"s{self.latency}_out",
                         zero_point_and_clamp(col, s1, s_q, s_inc, sq))
        m.d.comb += out.eq(s_out)

    @staticmethod
    def _divide(col: Column, s1: Stage1, s_h, sp: int) -> tuple:
        """RoundingDivideByPOT of the stage-``sp + 2`` ``s_h``: its masks decoded beside the
        adders in stage ``sp + 2`` (5 bits of shift amount pipelined rather than 62 bits of
        masks), the shift and the increment in stage ``sp + 3``; returns ``(q, inc)``."""
        st, sh, sq = sp + 1, sp + 2, sp + 3
        s_half = col.reg(unsigned(31), f"s{sh}_half")    # bits below the round bit
        s_round = col.reg(unsigned(31), f"s{sh}_round")  # the round bit; 0 for right 0
        right = col.delay(s1.right, 1, st, "right")
        s_right = col.delay(right, st, sh, "right")
        col.m.d.sync += [
            # (bit 30 would be "right > 31", never true of 5 bits: a constant 0)
            s_half.eq(Cat(*(right > i + 1 for i in range(30)), C(0, 1))),
            s_round.eq(Cat(right == i + 1 for i in range(31))),
        ]
        rounds = s_right != 0

        sat = col.wire(1, f"s{sq}_sat", saturated(s_h))
        h_bits = s_h.as_unsigned()[:31]   # unsaturated
        h = col.wire(signed(32), f"s{sq}_h", Mux(sat, INT32_MAX, s_h[:32].as_signed()))
        s_q = col.reg(signed(32), f"s{sq}_q")
        s_inc = col.reg(1, f"s{sq}_inc")
        round_bit = (h_bits & s_round).any()
        sticky = (h_bits & s_half).any()
        col.m.d.sync += [
            s_q.eq(h >> s_right),  # arithmetic: h is signed
            s_inc.eq(round_increment(sat, rounds, round_bit, sticky, s_h[31])),
        ]
        return s_q, s_inc


class ECP5OutputStage(OutputStage):
    """The ECP5 pipeline (15 stages): each partial product an instantiated ``MULT18X18D``
    (``hw.mult.Multiplier``, ``width=18``; with ``target.simulation`` its cycle-equivalent
    model) with input, pipeline and output registers, and every stage at most a 4:1 mux or
    one carry chain per bit.

    0. the accumulator row and parameters registered before any logic (both come from block
       RAMs far away); stage numbers count from stage 1 regardless, so the registers of
       stage ``k`` are named ``s{k}_*`` and the output register ``s15_out``;
    1. as generic; 2. the left shift by the amount's low 3 bits (0..7);
    3. the whole-byte rest of the shift (0, 8, 16 or 24: one 4:1 mux level), so that the
       DSPs' input registers are fed from fabric registers;
    4-6. the Karatsuba products: the DSP's input, pipeline and output registers (no fabric
       registers after them: each would cost 36 flip-flops per product, and the whole 8x8
       accelerator with the vector unit did not fit the 85F's flip-flops with two);
    7. ``t``, the shift amount's codes; 8. ``h``, the rounding masks from the codes;
    9-11. RoundingDivideByPOT in three stages (``_divide``);
    12. the zero point; 13-14. the clamp.
    """

    #: Cycles of each partial product: the DSP's input, pipeline and output registers.
    PRODUCT_LATENCY = 3

    @property
    def latency(self) -> int:
        """Cycles from a row on the inputs (``i_valid``) to its result (``o_valid``)."""
        return 1 + 2 + 1 + self.PRODUCT_LATENCY + 2 + 3 + 1 + 2

    def _column(self, m, n: int, acc, params, out) -> None:
        col = Column(m, n)
        acc = col.sync(acc.shape(), "s0_acc", acc)
        params = col.sync(isa.OutputParams, "s0_params", params)
        s1 = stage1(col, acc, params)
        s2_mul = col.delay(s1.mul, 1, 2, "mul")
        s2_x = col.reg(signed(32), "s2_x")
        s2_bytes = col.reg(unsigned(2), "s2_bytes")
        m.d.sync += [
            s2_x.eq((s1.x << s1.left[:3])[:32].as_signed()),
            s2_bytes.eq(s1.left[3:]),
        ]
        s3_a = col.sync(signed(32), "s3_a", byte_shift(s2_x, s2_bytes, left=True))
        s3_mul = col.delay(s2_mul, 2, 3, "mul")
        sp = 3 + self.PRODUCT_LATENCY
        s_h = high_mul(col, s3_a, s3_mul, sp, lambda a, b, name: self._product(col, a, b, name))
        s_q, s_inc, sq = self._divide(col, s1, s_h, sp)
        assert sq + 3 + 1 == self.latency  # (+ stage 0)
        s_out = col.sync(signed(8), f"s{self.latency}_out",
                         zero_point_and_clamp(col, s1, s_q, s_inc, sq))
        m.d.comb += out.eq(s_out)

    def _product(self, col: Column, a, b, name: str):
        """``a * b`` in a MULT18X18D (or its model), ``PRODUCT_LATENCY`` cycles later."""
        mult = Multiplier("ecp5", latency=self.PRODUCT_LATENCY, width=18,
                          simulation=self.target.simulation)
        col.m.submodules[f"c{col.n}_{name}"] = mult
        col.m.d.comb += [mult.a.eq(a), mult.b.eq(b)]  # sign-/zero-extended into signed(18)
        return mult.p

    @staticmethod
    def _masks(col: Column, s1: Stage1, sp: int) -> tuple:
        """RoundingDivideByPOT's masks decoded in two stages: the shift amount's codes in
        stage ``sp + 1``, every mask bit from three of them (one LUT4) in stage ``sp + 2``,
        where a one-stage decode shares the compares into a 4-LUT-deep chain. Returns
        ``(half, round, right, rounds)``, stage-``sp + 2`` registers."""
        st, sh = sp + 1, sp + 2
        s_half = col.reg(unsigned(31), f"s{sh}_half")    # bits below the round bit
        s_round = col.reg(unsigned(31), f"s{sh}_round")  # the round bit; 0 for right 0
        right = col.delay(s1.right, 1, sp, "right")
        codes = shift_codes(col, right, st)
        s_right = col.delay(right, sp, sh, "right")
        s_rounds = col.reg(1, f"s{sh}_rounds")           # right != 0
        half, round_, rounds = mask_bits(codes)
        col.m.d.sync += [s_half.eq(half), s_round.eq(round_), s_rounds.eq(rounds)]
        return s_half, s_round, s_right, s_rounds

    @classmethod
    def _divide(cls, col: Column, s1: Stage1, s_h, sp: int) -> tuple:
        """RoundingDivideByPOT of the stage-``sp + 2`` ``s_h`` in three stages, each at most a
        4:1 mux per bit: stage sq = sp + 3 shifts by the amount's low 2 bits and reduces the
        round and sticky terms in groups of 4; stage sq + 1 shifts by 4 bits or not and
        finishes the increment; stage sq + 2 shifts by whole bytes. Arithmetic shifts compose:
        h >> r == ((h >> r[:2]) >> 4 r[2]) >> 8 r[3:]. The saturated h, INT32_MAX, is the
        complement of the unsaturated bits (2**31), and arithmetic shifts commute with the
        complement, so saturation is an XOR after the byte shift (it fits that stage's
        4:1-mux LUTs) rather than a mux in front of the first shift.
        Returns ``(q, inc, stage)``, registers of stage ``stage`` = sp + 5."""
        s_half, s_round, s_right, rounds = cls._masks(col, s1, sp)
        sq = sp + 3
        sat = col.wire(1, f"s{sq}_sat", saturated(s_h))
        h_bits = s_h.as_unsigned()[:31]   # unsaturated
        groups = range(0, 31, 4)
        s_qa = col.reg(signed(32), f"s{sq}_qa")
        s_qrest = col.reg(unsigned(3), f"s{sq}_qrest")
        s_rg = col.reg(unsigned(len(groups)), f"s{sq}_round_groups")
        s_sg = col.reg(unsigned(len(groups)), f"s{sq}_sticky_groups")
        s_sat = col.reg(1, f"s{sq}_sat")
        s_neg = col.reg(1, f"s{sq}_neg")
        s_rounds = col.reg(1, f"s{sq}_rounds")
        col.m.d.sync += [
            s_qa.eq(s_h[:32].as_signed() >> s_right[:2]),
            s_qrest.eq(s_right[2:]),
            s_rg.eq(Cat((h_bits[g:g + 4] & s_round[g:g + 4]).any() for g in groups)),
            s_sg.eq(Cat((h_bits[g:g + 4] & s_half[g:g + 4]).any() for g in groups)),
            s_sat.eq(sat),
            s_neg.eq(s_h[31]),
            s_rounds.eq(rounds),
        ]
        sq += 1
        s_qb = col.reg(signed(32), f"s{sq}_qb")
        s_qbytes = col.reg(unsigned(2), f"s{sq}_qbytes")
        s_inc1 = col.reg(1, f"s{sq}_inc")
        s_sat1 = col.reg(1, f"s{sq}_sat")
        col.m.d.sync += [
            s_qb.eq(Mux(s_qrest[0], s_qa >> 4, s_qa)),
            s_qbytes.eq(s_qrest[1:]),
            s_inc1.eq(round_increment(s_sat, s_rounds, s_rg.any(), s_sg.any(), s_neg)),
            s_sat1.eq(s_sat),
        ]
        sq += 1
        s_q = col.sync(signed(32), f"s{sq}_q",
                       byte_shift(s_qb, s_qbytes, left=False) ^ s_sat1.replicate(32))
        s_inc = col.sync(1, f"s{sq}_inc", s_inc1)
        return s_q, s_inc, sq
