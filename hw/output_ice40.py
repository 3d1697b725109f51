"""The output stage's compact iCE40 pipeline, with the partial products in SB_MAC16s."""

from amaranth import C, Cat, Mux, Signal, signed, unsigned

from .mult import sb_mac16
from .output_stage import OutputStage
from .output_steps import (INT32_MAX, Column, Stage1, carry_in_sum, carry_save_sum, greater,
                           mask_bits, round_increment, rounding_half_sum, saturated,
                           shift_codes, stage1)

__all__ = ["ICE40OutputStage"]


class ICE40OutputStage(OutputStage):
    """The compact iCE40 pipeline: 8 stages, with the product registers inside the SB_MAC16s
    (or, with ``target.simulation``, their cycle-equivalent model) and only what the next
    stage reads registered.

    1. ``acc + bias``, the shift decode and clamp bounds (``output_steps.stage1``);
    2. the left barrel shift into the SB_MAC16 input registers (``A_REG``/``B_REG``);
    3. the 16x16 products in the SB_MAC16 pipeline register (``PIPELINE_16x16_MULT_REG2``);
       ``hh`` is read a cycle later and also uses the 8x8 product registers (latency 3);
    4. ``t = lh + hl + (ll >> 16)`` (carry-save layer and one chain); only ``t >> 14``
       (20 bits) is registered;
    5. ``h = ((t >> 14) + 4 hh + 1) >> 1`` (33 bits, bit 32 clear and bit 31 set is the
       saturated INT32_MIN * INT32_MIN);
    6. RDBPOT: the right barrel shift ``q = h >> right``, its rounding increment (masks
       decoded here from the 5-bit amount's codes), and instead of all 32 bits of ``q`` only
       its low byte, bits 8 and 31 and whether bits 9..30 are all zeros / all ones (per
       4-bit group);
    7. ``y = q + zero_point + inc`` on the low byte alone: ``ql + zp + inc`` is a 10-bit
       add whose carry (-1, 0 or +1) into ``q >> 8`` decides, with the four flags,
       whether the int32 ``y`` (wrapping included) is inside int8 and its sign;
    8. the clamp: two 9-bit compares and the muxes, a stage of their own behind the add.
    """

    @property
    def latency(self) -> int:
        """Cycles from a row on the inputs (``i_valid``) to its result (``o_valid``)."""
        return 8

    def _column(self, m, n: int, acc, params, out) -> None:
        col = Column(m, n)
        s1 = stage1(col, acc, params)
        s3_lo = self._fold_bounds(col, s1)
        s5_h, s5_sat = self._high_mul(col, *self._products(col, s1))
        s7_y8, s7_in_range, s7_neg, lo, hi = self._zero_point(
            col, s1, s3_lo, *self._divide(col, s1, s5_h, s5_sat))

        # ---- stage 8: the clamp.
        lo = col.delay(lo, 6, 7, "lo")
        hi = col.delay(hi, 6, 7, "hi")
        y8 = s7_y8
        gt = col.wire(1, "s8_gt", Mux(s7_in_range, greater(y8, hi), ~s7_neg))  # y > hi
        lt = col.wire(1, "s8_lt", Mux(s7_in_range, greater(lo, y8), s7_neg))   # y < lo
        assert self.latency == 8
        s_out = col.sync(signed(8), "s8_out", Mux(gt, hi, Mux(lt, lo, y8)))
        m.d.comb += out.eq(s_out)

    @staticmethod
    def _zero_point(col: Column, s1: Stage1, s3_lo, s6_ql, s6_b0, s6_b23, s6_zg, s6_og,
                    s6_inc) -> tuple:
        """Stage 7: ``y = q + zp + inc`` and the clamp's flags. ``low = ql + zp + inc`` is in
        [-128, 384], so ``y >> 8 = qh + c`` with ``c = low >> 8`` in {-1, 0, 1}, wrapping in 24
        bits like the int32 add; ``y``'s low byte is ``low``'s. Returns ``(y8, in_range, neg,
        lo, hi)``: stage-7 registers, and the bounds as stage-6 registers."""
        zp = col.delay(s1.zp, 1, 6, "zp")
        lo = col.delay(s3_lo, 3, 6, "lo")
        hi = col.delay(s1.hi, 1, 6, "hi")
        low = col.wire(signed(10), "s7_low",
                       carry_in_sum(Cat(s6_ql, C(0, 2)), Cat(zp, zp[7], zp[7]), s6_inc, 10))
        c_m1 = low[9]
        c_p1 = ~low[9] & low[8]
        c_0 = ~low[9] & ~low[8]
        b0, b23, z, o = s6_b0, s6_b23, s6_zg.all(), s6_og.all()
        qh_0 = z & ~b0 & ~b23
        qh_p1 = z & b0 & ~b23
        qh_min = z & ~b0 & b23
        qh_m1 = o & b0 & b23
        qh_m2 = o & ~b0 & b23
        qh_max = o & b0 & ~b23
        yh_0 = (c_0 & qh_0) | (c_p1 & qh_m1) | (c_m1 & qh_p1)
        yh_m1 = (c_0 & qh_m1) | (c_p1 & qh_m2) | (c_m1 & qh_0)
        y_neg = ((c_0 & b23) | (c_p1 & ((b23 & ~qh_m1) | qh_max))
                 | (c_m1 & ((b23 & ~qh_min) | qh_0)))
        s7_y8 = col.reg(signed(8), "s7_y8")
        s7_in_range = col.reg(1, "s7_in_range")
        s7_neg = col.reg(1, "s7_neg")
        col.m.d.sync += [
            s7_y8.eq(low[:8]),
            s7_in_range.eq((yh_0 & ~low[7]) | (yh_m1 & low[7])),
            s7_neg.eq(y_neg),
        ]
        return s7_y8, s7_in_range, s7_neg, lo, hi

    @staticmethod
    def _fold_bounds(col: Column, s1: Stage1):
        """"lo > hi" folded into the bounds (lo' = hi), which leaves the clamp two comparisons
        and a mux: the compare in stage 2 from stage-1 copies of the bounds, the mux in
        stage 3; returns lo', the stage-3 register ``s3_lo``."""
        s2_lo = col.reg(signed(8), "s2_lo")
        s2_hi = col.reg(signed(8), "s2_hi_fold")
        s2_lo_gt = col.reg(1, "s2_lo_gt")            # lo > hi
        s3_lo = col.reg(signed(8), "s3_lo")
        col.m.d.sync += [
            s2_lo.eq(s1.lo),
            s2_hi.eq(s1.hi),
            s2_lo_gt.eq(s1.lo > s1.hi),
            s3_lo.eq(Mux(s2_lo_gt, s2_hi, s2_lo)),
        ]
        return s3_lo

    def _products(self, col: Column, s1: Stage1) -> tuple:
        """Stages 2-3 (2-4 for ``hh``): the partial products in the SB_MAC16s, whose input
        registers take the left shift directly; returns ``(ll, lh, hl, hh)``, 32 bits each."""
        a = col.wire(32, "s1_a", (s1.x << s1.left)[:32])
        a_lo, a_hi, b_lo, b_hi = a[:16], a[16:], s1.mul[:16], s1.mul[16:]
        ll = self._mac16(col, "ll", a_lo, b_lo, False, False, 2)
        lh = self._mac16(col, "lh", a_lo, b_hi, False, True, 2)
        hl = self._mac16(col, "hl", a_hi, b_lo, True, False, 2)
        hh = self._mac16(col, "hh", a_hi, b_hi, True, True, 3)
        return ll, lh, hl, hh

    @staticmethod
    def _high_mul(col: Column, ll, lh, hl, hh) -> tuple:
        """Stages 4-5: ``t = lh + hl + (ll >> 16)`` mod 2**34 (see ``output_wide.high_mul``)
        with ``t >> 14`` registered, then ``h = (p + 4 hh + 1) >> 1``, 33 bits, and its
        saturation flag registered beside it, so that the flag folds into the shifter's first
        LUTs rather than adding a LUT level in front of them. Returns ``(h, sat)``."""
        tw = 34
        s4_p = col.sync(signed(tw - 14), "s4_p",
                        carry_save_sum(col, 4, lh.as_signed(), hl.as_signed(), ll[16:32],
                                       tw)[14:tw].as_signed())
        q4 = col.wire(signed(34), "s5_q", hh.as_signed() << 2)
        h5 = col.wire(signed(33), "s5_sum", rounding_half_sum(s4_p, q4))
        s5_h = col.reg(signed(33), "s5_h")
        s5_sat = col.reg(1, "s5_sat")
        col.m.d.sync += [s5_h.eq(h5), s5_sat.eq(saturated(h5))]
        return s5_h, s5_sat

    @staticmethod
    def _divide(col: Column, s1: Stage1, s5_h, s5_sat) -> tuple:
        """Stage 6: RDBPOT's shift and increment (see ``output_wide.GenericOutputStage``),
        ``q`` reduced to 12 bits. The masks come from the codes of the amount's low 3 and
        high 2 bits registered in stage 5 (22 flip-flops): each mask bit ANDed with its bit
        of ``h`` is then one LUT4 ahead of the reduction trees. Returns
        ``(ql, b0, b23, zero_groups, ones_groups, inc)``, stage-6 registers."""
        right4 = col.delay(s1.right, 1, 4, "right")
        right = col.delay(right4, 4, 5, "right")
        half_v, round_v, rounds = mask_bits(shift_codes(col, right4, 5))
        half = col.wire(31, "s6_half", half_v)    # right > i + 1
        rnd = col.wire(31, "s6_round", round_v)   # right == i + 1
        sat = col.wire(1, "s6_sat", s5_sat)
        h = col.wire(signed(32), "s6_h", Mux(sat, INT32_MAX, s5_h[:32].as_signed()))
        q = col.wire(signed(32), "s6_q", h >> right)
        h_bits = s5_h.as_unsigned()[:31]
        round_bit = (h_bits & rnd).any()
        sticky = (h_bits & half).any()
        s6_ql = col.reg(unsigned(8), "s6_ql")    # q[0:8]
        s6_b0 = col.reg(1, "s6_b0")              # q[8]: bit 0 of qh = q >> 8
        s6_b23 = col.reg(1, "s6_b23")            # q[31]: the sign of qh
        # q[9:31] all zeros / all ones, reduced here in groups of (up to) 4 bits, one LUT
        # after the shifter; the rest of the reduction waits for stage 7.
        groups = [(lo_b, min(lo_b + 4, 31)) for lo_b in range(9, 31, 4)]
        s6_zg = col.reg(unsigned(len(groups)), "s6_zg")
        s6_og = col.reg(unsigned(len(groups)), "s6_og")
        s6_inc = col.reg(1, "s6_inc")
        col.m.d.sync += [
            s6_ql.eq(q[:8]),
            s6_b0.eq(q[8]),
            s6_b23.eq(q[31]),
            s6_zg.eq(Cat(q[a:b] == 0 for a, b in groups)),
            s6_og.eq(Cat(q[a:b].all() for a, b in groups)),
            s6_inc.eq(round_increment(sat, rounds, round_bit, sticky, s5_h[31])),
        ]
        return s6_ql, s6_b0, s6_b23, s6_zg, s6_og, s6_inc

    def _mac16(self, col: Column, name: str, a, b, a_signed: bool, b_signed: bool,
               latency: int):
        """A 16x16 SB_MAC16 product of ``a`` and ``b`` (each signed or unsigned), 32 bits,
        ``latency`` cycles later: input registers, for latency 3 the 8x8 product registers,
        and the 16x16 pipeline register (the configuration of ``hw.mult``'s iCE40 multiplier,
        with per-operand signedness). With ``target.simulation`` a cycle-equivalent model."""
        assert latency in (2, 3)
        o = Signal(32, name=f"c{col.n}_{name}")
        if self.target.simulation:
            a = a.as_signed() if a_signed else a.as_unsigned()
            b = b.as_signed() if b_signed else b.as_unsigned()
            ra = col.sync(a.shape(), f"{name}_a_model", a)
            rb = col.sync(b.shape(), f"{name}_b_model", b)
            p = col.wire(32, f"{name}_p_model", ra * rb)
            if latency == 3:
                p = col.sync(p.shape(), f"{name}_mid_model", p)
            col.m.d.comb += o.eq(col.sync(p.shape(), f"{name}_out_model", p))
            return o
        col.m.submodules[f"c{col.n}_{name}"] = sb_mac16(a, b, o, a_signed=a_signed,
                                                        b_signed=b_signed, reg_in=True,
                                                        reg_mid=latency == 3)
        return o
