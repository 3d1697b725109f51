"""The requantizing output stage: int32 accumulator rows to int8, one row per cycle."""

from amaranth import C, Cat, Module, Mux, Shape, ShapeCastable, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig
from .mult import Family, Multiplier, MultiplierTarget, sb_mac16

__all__ = ["OutputStage"]

_INT32_MAX = (1 << 31) - 1
_SHIFT_MIN, _SHIFT_MAX = isa.SHIFT_MIN, isa.SHIFT_MAX


class OutputStage(wiring.Component):
    """Bias, ``MultiplyByQuantizedMultiplier``, zero point and clamp for a row of ``cols``
    int32 accumulators, bit-exact with ``sim.numerics.output_stage``.

    Fully pipelined: a row may enter on every cycle (or with gaps); all columns are processed
    in parallel; there is no backpressure. A row presented with ``i_valid`` in cycle ``t``
    appears on ``o_data`` / ``o_tag`` with ``o_valid`` in cycle ``t + latency``. ``o_data``
    and ``o_tag`` are only meaningful while ``o_valid`` is high.

    Column ``n`` uses ``i_params[n]`` (``isa.OutputParams``): ``bias``, ``multiplier``,
    ``shift``, ``zero_point``, ``lo``, ``hi``. ``acc + bias`` and ``y + zero_point`` wrap in
    int32; the clamp applies ``lo`` then ``hi``, so ``lo > hi`` gives ``hi``.

    ``shift`` is an 8-bit field but ``numerics.md`` only defines ``[-31, 30]``: the hardware
    saturates it into that range (a shift of 40 acts as 30, -40 as -31). A golden model fed
    arbitrary parameter bytes must ``clip`` the shift the same way before calling
    ``sim.numerics.output_stage``.

    Parameters
    ----------
    config : AcceleratorConfig
        Supplies ``cols``.
    tag_shape : shape-castable
        Shape of ``i_tag`` / ``o_tag``: bookkeeping carried alongside each row, untouched, and
        delayed by ``latency`` cycles.
    target : MultiplierTarget or None
        Only ``family`` and ``simulation`` matter. For ``"ecp5"`` the four 16-bit partial
        products of each column are instantiated ``MULT18X18D`` blocks with their input,
        pipeline and output registers enabled (``hw.mult.Multiplier``, ``width=18``; with
        ``simulation`` their cycle-equivalent model); for ``None``/``"generic"`` each is a
        plain ``a * b`` into a register. ``"ice40"`` gets its own compact pipeline (see
        ``_column_ice40``) with instantiated SB_MAC16s (or their model) holding the operand
        and product registers. ``latency`` depends on it: 9 generic, 17 ECP5, 8 iCE40.

    Attributes
    ----------
    i_valid : In(1)
    i_acc : In(ArrayLayout(signed(32), cols))
    i_params : In(ArrayLayout(isa.OutputParams, cols))
    i_tag : In(tag_shape)
    o_valid : Out(1)
    o_data : Out(ArrayLayout(signed(8), cols))
    o_tag : Out(tag_shape)
    """

    # Pipeline stages besides the partial-product multipliers (whose latency is added).
    _STAGES_BESIDES_PRODUCT = 8
    # ECP5: the DSP's three registers, then two fabric registers. On the whole 85F the
    # output stage's 32 DSPs end up anywhere along the DSP rows, up to 80 columns from the
    # logic that adds their products; the route alone took 6.4 ns of a 6.7 ns cycle. Two
    # registers let the placer split it.
    _ECP5_PRODUCT_LATENCY = 5
    # ECP5 only: an input stage (accumulator row and parameters registered before any logic:
    # both come from block RAMs far away), a stage of its own for the byte part of the
    # left shift, so that the DSPs' input registers are fed from fabric registers, and
    # RoundingDivideByPOT in three stages.
    _ECP5_EXTRA_STAGES = 4
    # The compact iCE40 pipeline (see ``_column_ice40``).
    _ICE40_STAGES = 8

    def __init__(self, config: AcceleratorConfig, tag_shape,
                 target: MultiplierTarget | None = None):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        if target is not None and not isinstance(target, MultiplierTarget):
            raise TypeError(f"target must be a MultiplierTarget or None, not {target!r}")
        if not isinstance(tag_shape, ShapeCastable):
            try:
                Shape.cast(tag_shape)
            except TypeError as exc:
                raise TypeError(f"tag_shape must be a shape-castable object, "
                                f"not {tag_shape!r}") from exc
        self._config = config
        self._tag_shape = tag_shape
        self._target = target or MultiplierTarget()
        self._mult_kind = {Family.ECP5: "ecp5", Family.ICE40: "ice40"}.get(self._target.family,
                                                                        "generic")
        self._product_latency = self._ECP5_PRODUCT_LATENCY if self._mult_kind == "ecp5" else 1
        if self._mult_kind == "ice40":
            self._stages = self._ICE40_STAGES
        else:
            self._stages = self._STAGES_BESIDES_PRODUCT + self._product_latency
            if self._mult_kind == "ecp5":
                self._stages += self._ECP5_EXTRA_STAGES
        super().__init__({
            "i_valid": In(1),
            "i_acc": In(data.ArrayLayout(signed(32), config.cols)),
            "i_params": In(data.ArrayLayout(isa.OutputParams, config.cols)),
            "i_tag": In(tag_shape),
            "o_valid": Out(1),
            "o_data": Out(data.ArrayLayout(signed(8), config.cols)),
            "o_tag": Out(tag_shape),
        })

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    @property
    def latency(self) -> int:
        """Cycles from a row on the inputs (``i_valid``) to its result (``o_valid``)."""
        return self._stages

    @property
    def target(self) -> MultiplierTarget:
        return self._target

    def elaborate(self, platform):
        m = Module()

        # Control and tag travel in a delay line as long as the datapath; only valid needs a
        # reset, the payload registers are reset-less so they pack into fabric/DSP registers.
        valid = [Signal(name=f"s{i}_valid") for i in range(1, self._stages + 1)]
        tag = [Signal(self._tag_shape, name=f"s{i}_tag", reset_less=True)
               for i in range(1, self._stages + 1)]
        m.d.comb += [
            self.o_valid.eq(valid[-1]),
            self.o_tag.eq(tag[-1]),
        ]
        m.d.sync += valid[0].eq(self.i_valid)
        m.d.sync += tag[0].eq(self.i_tag)
        for i in range(1, self._stages):
            m.d.sync += valid[i].eq(valid[i - 1])
            m.d.sync += tag[i].eq(tag[i - 1])

        column = self._column_ice40 if self._mult_kind == "ice40" else self._column
        for n in range(self._config.cols):
            column(m, n, self.i_acc[n], self.i_params[n], self.o_data[n])
        return m

    @staticmethod
    def _registers(m: Module, n: int):
        """Column ``n``'s register maker ``reg(shape, name)`` and delay line
        ``delay(sig, first, last, name)`` (``sig``, a stage-``first`` register, copied down
        to stage ``last``). Payload registers are reset-less: they pack into fabric/DSPs."""
        def reg(shape, name):
            return Signal(shape, name=f"c{n}_{name}", reset_less=True)

        def delay(sig, first, last, name):
            for stage in range(first + 1, last + 1):
                nxt = reg(sig.shape(), f"s{stage}_{name}")
                m.d.sync += nxt.eq(sig)
                sig = nxt
            return sig
        return reg, delay

    @staticmethod
    def _stage1(m: Module, reg, acc, params) -> tuple:
        """Stage 1 of every variant: one 32-bit carry chain (acc + bias) beside the shift
        decode, which saturates the 8-bit field into numerics.md's [-31, 30], and the clamp
        bounds (the clamp applies lo, then hi, so lo > hi gives hi: each variant handles
        that case itself).
        Returns ``(x, left, right, mul, zp, lo, hi)``, stage-1 registers."""
        s1_x = reg(signed(32), "s1_x")
        s1_left = reg(unsigned(5), "s1_left")
        s1_right = reg(unsigned(5), "s1_right")
        s1_mul = reg(signed(32), "s1_mul")
        s1_zp = reg(signed(8), "s1_zp")
        s1_lo = reg(signed(8), "s1_lo")
        s1_hi = reg(signed(8), "s1_hi")
        shift = params.shift
        # The saturation of the 8-bit shift into [-31, 30] as bit logic: written as signed
        # compares it became carry chains in front of the registers' resets, the 8x8 ECP5
        # build's worst path.
        assert len(shift) == 8 and (_SHIFT_MIN, _SHIFT_MAX) == (-31, 30)
        neg = shift[7]
        left_sat = shift[5] | shift[6] | (shift[:5] == 31)                 # shift > 30
        right_sat = ~(shift[5] & shift[6]) | (shift[:5] == 0)              # shift < -31
        m.d.sync += [
            s1_x.eq((acc + params.bias)[:32].as_signed()),
            s1_left.eq(Mux(neg, 0, Mux(left_sat, _SHIFT_MAX, shift[:5]))),
            s1_right.eq(Mux(~neg, 0, Mux(right_sat, -_SHIFT_MIN, (-shift)[:5]))),
            s1_mul.eq(params.multiplier),
            s1_zp.eq(params.zero_point),
            s1_lo.eq(params.lo),
            s1_hi.eq(params.hi),
        ]
        return s1_x, s1_left, s1_right, s1_mul, s1_zp, s1_lo, s1_hi

    def _column(self, m: Module, n: int, acc, params, out) -> None:
        reg, delay = self._registers(m, n)
        ecp5 = self._mult_kind == "ecp5"

        # ---- ECP5: stage 0, the inputs registered before any logic (stage numbers below
        # count from stage 1 regardless, so the pipeline is one longer than they say).
        if ecp5:
            acc_q = reg(acc.shape(), "s0_acc")
            params_q = reg(isa.OutputParams, "s0_params")
            m.d.sync += [acc_q.eq(acc), params_q.eq(params)]
            acc, params = acc_q, params_q

        # ---- stage 1 (`_stage1`).
        s1_x, s1_left, s1_right, s1_mul, s1_zp, s1_lo, s1_hi = self._stage1(m, reg, acc, params)

        # ---- stage 2: the left barrel shift (wraps in int32). For plain `*` multipliers its 5
        # mux levels get a cycle of their own so that the multipliers' operands come straight
        # from registers. The ECP5 DSPs register their operands themselves: there the stage
        # shifts by the low 3 bits of the amount only (0..7), and the whole-byte rest (0, 8,
        # 16 or 24: one 4:1 mux level) sits in front of the DSP input registers. All 5 levels
        # in one cycle limited the block to 143 MHz.
        s2_mul = delay(s1_mul, 1, 2, "mul")
        if self._mult_kind == "generic":
            s2_a = reg(signed(32), "s2_a")
            m.d.sync += s2_a.eq((s1_x << s1_left)[:32].as_signed())
        else:
            s2_x = reg(signed(32), "s2_x")
            s2_bytes = reg(unsigned(2), "s2_bytes")
            m.d.sync += [
                s2_x.eq((s1_x << s1_left[:3])[:32].as_signed()),
                s2_bytes.eq(s1_left[3:]),
            ]
            byte_shifted = self._byte_shift(s2_x, s2_bytes, left=True)
            if ecp5:
                # The byte mux gets a stage of its own, stage 3 (see _ECP5_EXTRA_STAGES):
                # the stages after it are numbered one higher than in the text below.
                s2_a = reg(signed(32), "s3_a")
                m.d.sync += s2_a.eq(byte_shifted)
                s2_mul = delay(s2_mul, 2, 3, "mul")
            else:
                s2_a = Signal(signed(32), name=f"c{n}_s2_a")
                m.d.comb += s2_a.eq(byte_shifted)

        # ---- stages 3 .. 2 + P: the 32x32 product as four partial products of 16-bit halves
        # (signed high, unsigned low), each small enough for one 18x18 DSP multiplier, P cycles
        # deep:
        #   a * b = hh * 2**32 + (lh + hl) * 2**16 + ll
        # A single `*` of 32-bit operands maps on ECP5 to four combinational DSPs *plus* their
        # fabric adders in one cycle (68-76 MHz). Here each multiplier sits alone between
        # registers and the adders get cycles of their own. From a plain `*` (P = 1) Yosys
        # infers a *combinational* MULT18X18D and packs none of the registers around it, so
        # its 3.9 ns plus the routing to and from fabric registers limited the block to
        # ~120 MHz; the ECP5 target instead instantiates the DSP with its input, pipeline and
        # output registers enabled, and two fabric registers follow (P = 5, see
        # _ECP5_PRODUCT_LATENCY).
        pl = self._product_latency
        # the stage whose registers hold the products
        sp = 2 + int(ecp5) + pl
        a_lo, a_hi = s2_a.as_unsigned()[:16], s2_a[16:].as_signed()
        b_lo, b_hi = s2_mul.as_unsigned()[:16], s2_mul[16:].as_signed()
        llhi = self._product(m, n, a_lo, b_lo, sp, "ll")[16:32]  # bits 0..15 never matter
        lh = self._product(m, n, a_lo, b_hi, sp, "lh")[:32].as_signed()  # |lh|, |hl| < 2**31,
        hl = self._product(m, n, a_hi, b_lo, sp, "hl")[:32].as_signed()  # hh <= 2**30
        hh = self._product(m, n, a_hi, b_hi, sp, "hh")[:32].as_signed()

        # ---- stages sp+1 .. sp+2: SaturatingRoundingDoublingHighMul's nudge and truncating
        # division.
        # For ab >= 0: trunc((ab + 2**30) / 2**31) = floor((ab + 2**30) / 2**31).
        # For ab < 0: trunc((ab + 1 - 2**30) / 2**31) = ceil(...)
        #   = floor((ab + 1 - 2**30 + 2**31 - 1) / 2**31) = floor((ab + 2**30) / 2**31).
        # Both signs are one floor of ab + 2**30, and since 2**30 only touches bits >= 30 that
        # is ((ab >> 30) + 1) >> 1. With t = lh + hl + (ll >> 16), which is ab >> 16 less
        # hh * 2**16 (the low 16 bits of ll produce no carry), ab >> 30 = hh * 4 + (t >> 14).
        #
        # Stage sp+1: t, three operands in one carry chain: a carry-save layer (one LUT level)
        # turns them into two, t = s + 2c. Everything mod 2**34, where t fits (|t| < 2**33).
        st = sp + 1
        tw = 34
        x3 = Signal(tw, name=f"c{n}_s{st}_lh_ext")
        y3 = Signal(tw, name=f"c{n}_s{st}_hl_ext")
        z3 = Signal(tw, name=f"c{n}_s{st}_llhi_ext")
        m.d.comb += [x3.eq(lh), y3.eq(hl), z3.eq(llhi)]  # sign-/zero-extending
        csa_s = x3 ^ y3 ^ z3
        csa_c = (x3 & y3) | (x3 & z3) | (y3 & z3)
        s_t = reg(signed(tw), f"s{st}_t")
        m.d.sync += s_t.eq((csa_s + Cat(C(0, 1), csa_c[:tw - 1]))[:tw].as_signed())
        s_hh = delay(hh, sp, st, "hh")

        # Stage sp+2: h = (p + q + 1) >> 1 with p = t >> 14, q = hh * 4, in one carry chain:
        # (2p + 1) + (2q + 1) = 2 (p + q + 1), so the increment rides in on bit 0.
        # SaturatingRoundingDoublingHighMul saturates INT32_MIN * INT32_MIN to INT32_MAX; that
        # product, 2**62, is the only one whose h leaves int32: h = 2**31 (the next largest,
        # INT32_MIN * (INT32_MIN + 1), gives 2**31 - 1, and the most negative h is
        # -2**31 + 1). So h is kept to 33 bits, and "bit 32 clear, bit 31 set" is the
        # saturating case: two bits, no operand compares, and the mux folds into the next
        # stage's shifter LUTs.
        sh = sp + 2
        p = Signal(signed(34), name=f"c{n}_s{sh}_p")
        q = Signal(signed(34), name=f"c{n}_s{sh}_q")
        m.d.comb += [p.eq(s_t >> 14), q.eq(s_hh << 2)]
        s_h = reg(signed(33), f"s{sh}_h")
        m.d.sync += s_h.eq((Cat(C(1, 1), p).as_signed() + Cat(C(1, 1), q).as_signed())[2:35]
                           .as_signed())

        # RoundingDivideByPOT's masks are decoded beside the adders rather than in stage 1:
        # that pipelines 5 bits of shift amount instead of 62 bits of masks. Each mask bit is a
        # compare of the 5-bit shift with a constant, but decoded in one cycle Yosys/ABC shares
        # the compares into a 4-LUT-deep chain (145 MHz on ECP5). So on ECP5 the decode takes
        # two stages: one-hot and "greater than" codes of the shift's low 3 and high 2 bits,
        # then every mask bit from three of those (one LUT4); 22 more flip-flops per column,
        # which the generic (iCE40) build does without.
        s_half = reg(unsigned(31), f"s{sh}_half")    # 2**(right-1) - 1: bits below the round bit
        s_round = reg(unsigned(31), f"s{sh}_round")  # 2**(right-1): the round bit; 0 for right 0
        if self._mult_kind == "generic":
            right = delay(s1_right, 1, st, "right")
            s_right = delay(right, st, sh, "right")
            m.d.sync += [
                # (bit 30 would be "right > 31", never true of 5 bits: a constant 0)
                s_half.eq(Cat(*(right > i + 1 for i in range(30)), C(0, 1))),
                s_round.eq(Cat(right == i + 1 for i in range(31))),
            ]
            rounds = s_right != 0
        else:
            s_right, rounds = self._two_stage_masks(m, n, delay(s1_right, 1, sp, "right"),
                                                    sp, s_half, s_round, delay)

        # ---- stage sp+3: RoundingDivideByPOT. "remainder > threshold" is, for x >= 0, "round
        # bit set" and, for x < 0, "round bit set and a lower bit set" (the threshold is one
        # higher). Those AND-reductions run beside the right barrel shift; the increment
        # becomes the carry-in of the zero-point adder in the next stage instead of a third
        # adder. The saturated h, INT32_MAX, has every bit below the sign set: its increment is
        # "right != 0", chosen after the reductions of the unsaturated bits, so that the
        # saturation flag does not widen the terms of the reduction trees.
        sq = sp + 3
        sat = Signal(name=f"c{n}_s{sq}_sat")
        m.d.comb += sat.eq(~s_h[32] & s_h[31])
        h_bits = s_h.as_unsigned()[:31]   # unsaturated
        if not ecp5:
            h = Signal(signed(32), name=f"c{n}_s{sq}_h")
            m.d.comb += h.eq(Mux(sat, _INT32_MAX, s_h[:32].as_signed()))
            s_q = reg(signed(32), f"s{sq}_q")
            s_inc = reg(1, f"s{sq}_inc")
            round_bit = (h_bits & s_round).any()
            sticky = (h_bits & s_half).any()
            m.d.sync += [
                s_q.eq(h >> s_right),  # arithmetic: h is signed
                s_inc.eq(Mux(sat, rounds, round_bit & (~s_h[31] | sticky))),
            ]
        else:
            # ECP5: three stages, each at most a 4:1 mux per bit (the one-stage version, 5
            # mux levels or a 31-bit reduction behind the saturation mux, missed 150 MHz in
            # the whole 8x8 build, and so did an 8:1 first stage). Stage sq shifts by the
            # amount's low 2 bits and reduces the round and sticky terms in groups of 4;
            # stage sq + 1 shifts by 4 bits or not and finishes the increment; stage sq + 2
            # shifts by whole bytes. Arithmetic shifts compose:
            # h >> r == ((h >> r[:2]) >> 4 r[2]) >> 8 r[3:]. The saturated h, INT32_MAX, is
            # the complement of the unsaturated bits (2**31), and arithmetic shifts commute
            # with the complement, so saturation is an XOR after the byte shift (it fits
            # that stage's 4:1-mux LUTs) rather than a mux in front of the first shift.
            groups = range(0, 31, 4)
            s_qa = reg(signed(32), f"s{sq}_qa")
            s_qrest = reg(unsigned(3), f"s{sq}_qrest")
            s_rg = reg(unsigned(len(groups)), f"s{sq}_round_groups")
            s_sg = reg(unsigned(len(groups)), f"s{sq}_sticky_groups")
            s_sat = reg(1, f"s{sq}_sat")
            s_neg = reg(1, f"s{sq}_neg")
            s_rounds = reg(1, f"s{sq}_rounds")
            m.d.sync += [
                s_qa.eq(s_h[:32].as_signed() >> s_right[:2]),
                s_qrest.eq(s_right[2:]),
                s_rg.eq(Cat((h_bits[g:g + 4] & s_round[g:g + 4]).any() for g in groups)),
                s_sg.eq(Cat((h_bits[g:g + 4] & s_half[g:g + 4]).any() for g in groups)),
                s_sat.eq(sat),
                s_neg.eq(s_h[31]),
                s_rounds.eq(rounds),
            ]
            sq += 1
            s_qb = reg(signed(32), f"s{sq}_qb")
            s_qbytes = reg(unsigned(2), f"s{sq}_qbytes")
            s_inc1 = reg(1, f"s{sq}_inc")
            s_sat1 = reg(1, f"s{sq}_sat")
            m.d.sync += [
                s_qb.eq(Mux(s_qrest[0], s_qa >> 4, s_qa)),
                s_qbytes.eq(s_qrest[1:]),
                s_inc1.eq(Mux(s_sat, s_rounds, s_rg.any() & (~s_neg | s_sg.any()))),
                s_sat1.eq(s_sat),
            ]
            sq += 1
            s_q = reg(signed(32), f"s{sq}_q")
            s_inc = reg(1, f"s{sq}_inc")
            m.d.sync += [
                s_q.eq(self._byte_shift(s_qb, s_qbytes, left=False) ^ s_sat1.replicate(32)),
                s_inc.eq(s_inc1),
            ]

        # ---- stage sq+1: zero point, an int32 add that wraps, with the rounding increment as
        # its carry-in: (2q + inc) + (2zp + inc) = 2 (q + zp + inc).
        sy = sq + 1
        zp = delay(s1_zp, 1, sq, "zp")
        s_y = reg(signed(32), f"s{sy}_y")
        m.d.sync += s_y.eq((Cat(s_inc, s_q).as_signed() + Cat(s_inc, zp).as_signed())[1:33]
                           .as_signed())

        # ---- stages sy+1 .. sy+2: clamp. lo and hi are int8, so "y > hi" is "y above int8,
        # or y in int8 and its low byte > hi" (the same for "y < lo"). The first stage
        # computes both flags and "lo > hi" (which gives hi: lo applies first): a 25-bit
        # all-zeros/all-ones reduction beside two 9-bit subtractions whose sign bits are the
        # byte comparisons, and "lo > hi" from nibble compares (below); the second is the two
        # muxes alone (outside int8 one of "y > hi", "y < lo" is always set, so the low byte
        # needs no saturation).
        # A 32-bit compare after the 32-bit add in one cycle limited this stage to ~118 MHz,
        # an 8-bit compare of a saturated byte plus the muxes to ~125 MHz. ("lo > hi" folded
        # into lo in stages 2-3, as the iCE40 pipeline does, was a late group of the whole
        # 8x8 ECP5 build at 6.9 ns.)
        sf = sy + 1
        lo_m = delay(s1_lo, 1, sy - 1, "lo")
        hi_m = delay(s1_hi, 1, sy - 1, "hi")
        lo = delay(lo_m, sy - 1, sy, "lo")
        hi = delay(hi_m, sy - 1, sy, "hi")
        # "lo > hi" over two stages, nibble by nibble (signed high nibbles, then unsigned low
        # ones on a tie): as one 8-bit compare in stage sf its carry chain, split by the
        # placer, took 7.2 ns on the whole 8x8 for ECP5.
        s_nib_gt = reg(1, f"s{sy}_lo_gt_hi_nibble")
        s_nib_eq = reg(1, f"s{sy}_lo_eq_hi_nibble")
        s_nib_lo = reg(1, f"s{sy}_lo_gt_lo_nibble")
        m.d.sync += [
            s_nib_gt.eq(lo_m[4:].as_signed() > hi_m[4:].as_signed()),
            s_nib_eq.eq(lo_m[4:] == hi_m[4:]),
            s_nib_lo.eq(lo_m[:4].as_unsigned() > hi_m[:4].as_unsigned()),
        ]
        top = s_y.as_unsigned()[7:]
        in_range = (top == 0) | (top == (1 << len(top)) - 1)
        low = s_y[:8].as_signed()
        s_y8 = reg(signed(8), f"s{sf}_y")
        s_gt = reg(1, f"s{sf}_gt")
        s_lt = reg(1, f"s{sf}_lt")
        s_lo_gt = reg(1, f"s{sf}_lo_gt")
        m.d.sync += [
            s_y8.eq(low),
            s_gt.eq(Mux(in_range, (hi - low)[8], ~s_y[31])),  # y > hi
            s_lt.eq(Mux(in_range, (low - lo)[8], s_y[31])),   # y < lo
            s_lo_gt.eq(s_nib_gt | (s_nib_eq & s_nib_lo)),
        ]
        lo_f = delay(lo, sy, sf, "lo")
        hi_f = delay(hi, sy, sf, "hi")
        so = sf + 1
        assert so + int(ecp5) == self._stages  # (+ stage 0)
        s_out = reg(signed(8), f"s{self._stages}_out")
        m.d.sync += s_out.eq(Mux(s_gt | s_lo_gt, hi_f, Mux(s_lt, lo_f, s_y8)))
        m.d.comb += out.eq(s_out)

    def _column_ice40(self, m: Module, n: int, acc, params, out) -> None:
        """The compact iCE40 column: 8 stages at ~40 MHz on the UP5K, with the product
        registers inside the SB_MAC16s and only what the next stage reads registered.

        1. ``acc + bias``, the shift decode and clamp bounds (as in the generic stage 1);
        2. the left barrel shift into the SB_MAC16 input registers (``A_REG``/``B_REG``);
        3. the 16x16 products in the SB_MAC16 pipeline register (``PIPELINE_16x16_MULT_REG2``);
           ``hh`` is read a cycle later and also uses the 8x8 product registers (latency 3);
        4. ``t = lh + hl + (ll >> 16)`` (carry-save layer and one chain); only ``t >> 14``
           (20 bits) is registered;
        5. ``h = ((t >> 14) + 4 hh + 1) >> 1`` (33 bits, bit 32 clear and bit 31 set is the
           saturated INT32_MIN * INT32_MIN);
        6. RDBPOT: the right barrel shift ``q = h >> right``, its rounding increment (masks
           decoded here from the 5-bit amount), and instead of all 32 bits of ``q`` only its low
           byte, bits 8 and 31 and whether bits 9..30 are all zeros / all ones (per 4-bit group);
        7. ``y = q + zero_point + inc`` on the low byte alone: ``ql + zp + inc`` is a 10-bit
           add whose carry (-1, 0 or +1) into ``q >> 8`` decides, with the four flags,
           whether the int32 ``y`` (wrapping included) is inside int8 and its sign;
        8. the clamp: two 9-bit compares and the muxes (in stage 7 as well, behind the add
           and the flags, they were the UP5K build's worst path at 40.5 MHz).
        """
        reg, delay = self._registers(m, n)

        # ---- stage 1 (`_stage1`), and lo > hi folded into the bounds (lo' = hi), which
        # leaves the clamp two comparisons and a mux: the compare in stage 2 from stage-1
        # copies of the bounds, the mux in stage 3 (`s3_lo`).
        s1_x, s1_left, s1_right, s1_mul, s1_zp, s1_lo, s1_hi = self._stage1(m, reg, acc, params)
        s2_lo = reg(signed(8), "s2_lo")
        s2_hi = reg(signed(8), "s2_hi_fold")
        s2_lo_gt = reg(1, "s2_lo_gt")            # lo > hi
        s3_lo = reg(signed(8), "s3_lo")
        m.d.sync += [
            s2_lo.eq(s1_lo),
            s2_hi.eq(s1_hi),
            s2_lo_gt.eq(s1_lo > s1_hi),
            s3_lo.eq(Mux(s2_lo_gt, s2_hi, s2_lo)),
        ]

        # ---- stages 2-3 (2-4 for hh): the partial products in the SB_MAC16s, whose input
        # registers take the left shift directly.
        a = Signal(32, name=f"c{n}_s1_a")
        m.d.comb += a.eq((s1_x << s1_left)[:32])
        a_lo, a_hi, b_lo, b_hi = a[:16], a[16:], s1_mul[:16], s1_mul[16:]
        ll = self._mac16(m, n, "ll", a_lo, b_lo, False, False, 2)
        lh = self._mac16(m, n, "lh", a_lo, b_hi, False, True, 2)
        hl = self._mac16(m, n, "hl", a_hi, b_lo, True, False, 2)
        hh = self._mac16(m, n, "hh", a_hi, b_hi, True, True, 3)

        # ---- stage 4: t = lh + hl + (ll >> 16) mod 2**34 (see _column), t >> 14 registered.
        tw = 34
        x3 = Signal(tw, name=f"c{n}_s4_lh_ext")
        y3 = Signal(tw, name=f"c{n}_s4_hl_ext")
        z3 = Signal(tw, name=f"c{n}_s4_llhi_ext")
        m.d.comb += [x3.eq(lh.as_signed()), y3.eq(hl.as_signed()), z3.eq(ll[16:32])]
        csa_s = x3 ^ y3 ^ z3
        csa_c = (x3 & y3) | (x3 & z3) | (y3 & z3)
        s4_p = reg(signed(tw - 14), "s4_p")
        m.d.sync += s4_p.eq((csa_s + Cat(C(0, 1), csa_c[:tw - 1]))[14:tw].as_signed())

        # ---- stage 5: h = (p + 4 hh + 1) >> 1, 33 bits (see _column).
        q4 = Signal(signed(34), name=f"c{n}_s5_q")
        m.d.comb += q4.eq(hh.as_signed() << 2)
        h5 = Signal(signed(33), name=f"c{n}_s5_sum")
        m.d.comb += h5.eq((Cat(C(1, 1), s4_p).as_signed() + Cat(C(1, 1), q4).as_signed())[2:35]
                          .as_signed())
        s5_h = reg(signed(33), "s5_h")
        # The saturation flag (see _column) registered beside h: decoded from h in stage 6 it
        # was one more LUT level in front of the shifter, on the iCEBreaker's critical path;
        # as a register it folds into the shifter's first LUTs.
        s5_sat = reg(1, "s5_sat")
        m.d.sync += [s5_h.eq(h5), s5_sat.eq(~h5[32] & h5[31])]

        # ---- stage 6: RDBPOT's shift and increment (see _column), q reduced to 12 bits.
        # The masks come from one-hot / "greater than" codes of the amount's low 3 and high 2
        # bits registered in stage 5 (as on ECP5, 22 flip-flops): each mask bit ANDed with its
        # bit of h is then one LUT4 ahead of the reduction trees. Decoded from the 5-bit amount
        # in stage 6 they made the increment the critical path (37 MHz).
        right4 = delay(s1_right, 1, 4, "right")
        right = delay(right4, 4, 5, "right")
        s5_lo_eq, lo_gt, s5_hi_eq, hi_gt = self._shift_codes(m, reg, right4, 5)
        half = Signal(31, name=f"c{n}_s6_half")   # right > i + 1
        rnd = Signal(31, name=f"c{n}_s6_round")   # right == i + 1
        m.d.comb += [
            half.eq(Cat(hi_gt((i + 1) >> 3) | (s5_hi_eq[(i + 1) >> 3] & lo_gt((i + 1) & 7))
                        for i in range(31))),
            rnd.eq(Cat(s5_hi_eq[(i + 1) >> 3] & s5_lo_eq[(i + 1) & 7] for i in range(31))),
        ]
        rounds = ~(s5_hi_eq[0] & s5_lo_eq[0])     # right != 0
        sat = Signal(name=f"c{n}_s6_sat")
        h = Signal(signed(32), name=f"c{n}_s6_h")
        q = Signal(signed(32), name=f"c{n}_s6_q")
        m.d.comb += [
            sat.eq(s5_sat),
            h.eq(Mux(sat, _INT32_MAX, s5_h[:32].as_signed())),
            q.eq(h >> right),
        ]
        h_bits = s5_h.as_unsigned()[:31]
        round_bit = (h_bits & rnd).any()
        sticky = (h_bits & half).any()
        s6_ql = reg(unsigned(8), "s6_ql")    # q[0:8]
        s6_b0 = reg(1, "s6_b0")              # q[8]: bit 0 of qh = q >> 8
        s6_b23 = reg(1, "s6_b23")            # q[31]: the sign of qh
        # q[9:31] all zeros / all ones, reduced here in groups of (up to) 4 bits, one LUT
        # after the shifter; the whole 22-bit reduction here limited the block to 35 MHz.
        groups = [(lo_b, min(lo_b + 4, 31)) for lo_b in range(9, 31, 4)]
        s6_zg = reg(unsigned(len(groups)), "s6_zg")
        s6_og = reg(unsigned(len(groups)), "s6_og")
        s6_inc = reg(1, "s6_inc")
        m.d.sync += [
            s6_ql.eq(q[:8]),
            s6_b0.eq(q[8]),
            s6_b23.eq(q[31]),
            s6_zg.eq(Cat(q[a:b] == 0 for a, b in groups)),
            s6_og.eq(Cat(q[a:b].all() for a, b in groups)),
            s6_inc.eq(Mux(sat, rounds, round_bit & (~s5_h[31] | sticky))),
        ]

        # ---- stage 7: y = q + zp + inc and the clamp. low = ql + zp + inc in [-128, 384], so
        # y >> 8 = qh + c with c = low >> 8 in {-1, 0, 1}, wrapping in 24 bits like the int32
        # add; y's low byte is low's.
        zp = delay(s1_zp, 1, 6, "zp")
        lo = delay(s3_lo, 3, 6, "lo")
        hi = delay(s1_hi, 1, 6, "hi")
        low = Signal(signed(10), name=f"c{n}_s7_low")
        m.d.comb += low.eq((Cat(s6_inc, s6_ql, C(0, 2)).as_signed()
                            + Cat(s6_inc, zp, zp[7], zp[7]).as_signed())[1:11].as_signed())
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
        s7_y8 = reg(signed(8), "s7_y8")
        s7_in_range = reg(1, "s7_in_range")
        s7_neg = reg(1, "s7_neg")
        m.d.sync += [
            s7_y8.eq(low[:8]),
            s7_in_range.eq((yh_0 & ~low[7]) | (yh_m1 & low[7])),
            s7_neg.eq(y_neg),
        ]

        # ---- stage 8: the clamp.
        lo = delay(lo, 6, 7, "lo")
        hi = delay(hi, 6, 7, "hi")
        y8 = s7_y8
        gt = Signal(name=f"c{n}_s8_gt")
        lt = Signal(name=f"c{n}_s8_lt")
        m.d.comb += [
            gt.eq(Mux(s7_in_range, (hi - y8)[8], ~s7_neg)),   # y > hi
            lt.eq(Mux(s7_in_range, (y8 - lo)[8], s7_neg)),    # y < lo
        ]
        assert self._stages == 8
        s_out = reg(signed(8), "s8_out")
        m.d.sync += s_out.eq(Mux(gt, hi, Mux(lt, lo, y8)))
        m.d.comb += out.eq(s_out)

    def _mac16(self, m: Module, n: int, name: str, a, b, a_signed: bool, b_signed: bool,
               latency: int):
        """A 16x16 SB_MAC16 product of ``a`` and ``b`` (each signed or unsigned), 32 bits,
        ``latency`` cycles later: input registers, for latency 3 the 8x8 product registers,
        and the 16x16 pipeline register (the configuration of ``hw.mult``'s iCE40 multiplier,
        with per-operand signedness). With ``target.simulation`` a cycle-equivalent model."""
        assert latency in (2, 3)
        o = Signal(32, name=f"c{n}_{name}")
        if self._target.simulation:
            def r(v, tag):
                sig = Signal(v.shape(), name=f"c{n}_{name}_{tag}", reset_less=True)
                m.d.sync += sig.eq(v)
                return sig
            ra = r(a.as_signed() if a_signed else a.as_unsigned(), "a_model")
            rb = r(b.as_signed() if b_signed else b.as_unsigned(), "b_model")
            p = Signal(32, name=f"c{n}_{name}_p_model")
            m.d.comb += p.eq(ra * rb)
            if latency == 3:
                p = r(p, "mid_model")
            m.d.comb += o.eq(r(p, "out_model"))
            return o
        m.submodules[f"c{n}_{name}"] = sb_mac16(a, b, o, a_signed=a_signed,
                                                b_signed=b_signed, reg_in=True,
                                                reg_mid=latency == 3)
        return o

    def _product(self, m: Module, n: int, a, b, stage: int, name: str):
        """``a * b`` (16-bit operands, each signed or unsigned) from the stage-2 registers,
        ready in the stage-``stage`` registers (``self._product_latency`` cycles later), as a
        value of at least 32 bits."""
        if self._mult_kind == "generic":
            product = Signal(signed(34), name=f"c{n}_s{stage}_{name}", reset_less=True)
            m.d.sync += product.eq(a * b)
            return product
        mult = Multiplier(self._mult_kind, latency=self._product_latency, width=18,
                          simulation=self._target.simulation)
        m.submodules[f"c{n}_{name}"] = mult
        m.d.comb += [mult.a.eq(a), mult.b.eq(b)]  # sign-/zero-extended into signed(18)
        return mult.p

    @staticmethod
    def _byte_shift(x, n_bytes, *, left: bool):
        """``x`` (signed 32-bit) shifted by ``8 * n_bytes`` (2 bits): left, wrapping in
        int32, or right, arithmetic. One 4:1 mux level per bit, written as two 2:1 levels."""
        by = [((x << (8 * k))[:32] if left else x >> (8 * k)).as_signed() for k in range(4)]
        return Mux(n_bytes[1], Mux(n_bytes[0], by[3], by[2]), Mux(n_bytes[0], by[1], by[0]))

    @staticmethod
    def _shift_codes(m: Module, reg, right, stage: int) -> tuple:
        """One-hot and "greater than" codes of a 5-bit shift amount's low 3 and high 2 bits,
        registered as stage ``stage``: ``(lo_eq, lo_gt(j), hi_eq, hi_gt(k))`` where
        ``lo_eq[j]`` is ``right[:3] == j``, ``lo_gt(j)`` is ``right[:3] > j`` (0..7),
        ``hi_eq[k]`` is ``right[3:] == k`` and ``hi_gt(k)`` is ``right[3:] > k`` (0..3). Every
        rounding-mask bit is then one LUT4 of three of them."""
        lo3, hi2 = right[:3], right[3:]
        lo_eq = reg(unsigned(8), f"s{stage}_lo_eq")
        lo_gt = reg(unsigned(7), f"s{stage}_lo_gt")
        hi_eq = reg(unsigned(4), f"s{stage}_hi_eq")
        hi_gt = reg(unsigned(3), f"s{stage}_hi_gt")
        m.d.sync += [
            lo_eq.eq(Cat(lo3 == j for j in range(8))),
            lo_gt.eq(Cat(lo3 > j for j in range(7))),
            hi_eq.eq(Cat(hi2 == k for k in range(4))),
            hi_gt.eq(Cat(hi2 > k for k in range(3))),
        ]
        return (lo_eq, lambda j: lo_gt[j] if j < 7 else C(0, 1),
                hi_eq, lambda k: hi_gt[k] if k < 3 else C(0, 1))

    def _two_stage_masks(self, m, n, right, sp, s_half, s_round, delay):
        """ECP5 decode of RoundingDivideByPOT's masks from ``right`` (a stage-``sp``
        register) into ``s_half`` / ``s_round`` (stage ``sp + 2``); returns the stage-``sp + 2``
        shift amount and "right != 0" as a register."""
        st, sh = sp + 1, sp + 2
        reg, _ = self._registers(m, n)

        s_lo_eq, lo_gt, s_hi_eq, hi_gt = self._shift_codes(m, reg, right, st)
        s_right = delay(right, sp, sh, "right")
        s_rounds = reg(1, f"s{sh}_rounds")           # right != 0
        m.d.sync += [
            # right > v and right == v, for v = i + 1 = 8k + j
            s_half.eq(Cat(hi_gt((i + 1) >> 3) | (s_hi_eq[(i + 1) >> 3] & lo_gt((i + 1) & 7))
                          for i in range(31))),
            s_round.eq(Cat(s_hi_eq[(i + 1) >> 3] & s_lo_eq[(i + 1) & 7] for i in range(31))),
            s_rounds.eq(~(s_hi_eq[0] & s_lo_eq[0])),
        ]
        return s_right, s_rounds
