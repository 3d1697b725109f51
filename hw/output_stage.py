"""The requantizing output stage: int32 accumulator rows to int8, one row per cycle."""

from amaranth import Const, Module, Mux, Shape, ShapeCastable, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig

__all__ = ["OutputStage"]

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1
_SHIFT_MIN = -31
_SHIFT_MAX = 30


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

    _STAGES = 6

    def __init__(self, config: AcceleratorConfig, tag_shape):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        if not isinstance(tag_shape, ShapeCastable):
            try:
                Shape.cast(tag_shape)
            except TypeError as exc:
                raise TypeError(f"tag_shape must be a shape-castable object, "
                                f"not {tag_shape!r}") from exc
        self._config = config
        self._tag_shape = tag_shape
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
        return self._STAGES

    def elaborate(self, platform):
        m = Module()

        # Control and tag travel in a delay line as long as the datapath; only valid needs a
        # reset, the payload registers are reset-less so they pack into fabric/DSP registers.
        valid = [Signal(name=f"s{i}_valid") for i in range(1, self._STAGES + 1)]
        tag = [Signal(self._tag_shape, name=f"s{i}_tag", reset_less=True)
               for i in range(1, self._STAGES + 1)]
        m.d.comb += [
            self.o_valid.eq(valid[-1]),
            self.o_tag.eq(tag[-1]),
        ]
        m.d.sync += valid[0].eq(self.i_valid)
        m.d.sync += tag[0].eq(self.i_tag)
        for i in range(1, self._STAGES):
            m.d.sync += valid[i].eq(valid[i - 1])
            m.d.sync += tag[i].eq(tag[i - 1])

        for n in range(self._config.cols):
            self._column(m, n, self.i_acc[n], self.i_params[n], self.o_data[n])
        return m

    def _column(self, m: Module, n: int, acc, params, out) -> None:
        def reg(shape, name):
            return Signal(shape, name=f"c{n}_{name}", reset_less=True)

        def delay(sig, first, last, name):
            """``sig`` (a stage-``first`` register) copied down to stage ``last``."""
            for stage in range(first + 1, last + 1):
                nxt = reg(sig.shape(), f"s{stage}_{name}")
                m.d.sync += nxt.eq(sig)
                sig = nxt
            return sig

        # ---- stage 1: one 32-bit carry chain (acc + bias) beside the shift decode, which
        # saturates the 8-bit field into numerics.md's [-31, 30].
        s1_x = reg(signed(32), "s1_x")
        s1_left = reg(unsigned(5), "s1_left")
        s1_right = reg(unsigned(5), "s1_right")
        shift = params.shift
        m.d.sync += [
            s1_x.eq((acc + params.bias)[:32].as_signed()),
            s1_left.eq(Mux(shift > _SHIFT_MAX, _SHIFT_MAX, Mux(shift < 0, 0, shift))[:5]),
            s1_right.eq(Mux(shift < _SHIFT_MIN, -_SHIFT_MIN, Mux(shift > 0, 0, -shift))[:5]),
        ]
        s1_mul = reg(signed(32), "s1_mul")
        s1_zp = reg(signed(8), "s1_zp")
        s1_lo = reg(signed(8), "s1_lo")
        s1_hi = reg(signed(8), "s1_hi")
        m.d.sync += [
            s1_mul.eq(params.multiplier),
            s1_zp.eq(params.zero_point),
            s1_lo.eq(params.lo),
            s1_hi.eq(params.hi),
        ]

        # ---- stage 2: the left barrel shift (5 mux levels) gets a cycle of its own so that
        # the multiplier's operands come straight from registers.
        s2_a = reg(signed(32), "s2_a")
        s2_mul = delay(s1_mul, 1, 2, "mul")
        m.d.sync += s2_a.eq((s1_x << s1_left)[:32].as_signed())  # wraps in int32

        # ---- stage 3: the 32x32 product alone between registers, so synthesis can build it
        # from DSP blocks with input and output registers. The saturating case is detected
        # from the same registered operands, in parallel.
        s3_prod = reg(signed(64), "s3_prod")
        s3_sat = reg(1, "s3_sat")
        m.d.sync += [
            s3_prod.eq(s2_a * s2_mul),
            s3_sat.eq((s2_a == _INT32_MIN) & (s2_mul == _INT32_MIN)),
        ]

        # ---- stage 4: SaturatingRoundingDoublingHighMul's nudge and truncating division.
        # For ab >= 0: trunc((ab + 2**30) / 2**31) = floor((ab + 2**30) / 2**31).
        # For ab < 0: trunc((ab + 1 - 2**30) / 2**31) = ceil(...)
        #   = floor((ab + 1 - 2**30 + 2**31 - 1) / 2**31) = floor((ab + 2**30) / 2**31).
        # Both signs are one floor of ab + 2**30, and since 2**30 only touches bits >= 30 that
        # is ((ab >> 30) + 1) >> 1: a 34-bit incrementer instead of a sign-dependent nudge
        # and two 64-bit adders. Only INT32_MIN**2 = 2**62 would overflow int32 here.
        s4_h = reg(signed(32), "s4_h")
        high = (((s3_prod >> 30) + 1) >> 1)[:32].as_signed()
        m.d.sync += s4_h.eq(Mux(s3_sat, _INT32_MAX, high))
        # RoundingDivideByPOT's masks are decoded here, beside the incrementer, rather than in
        # stage 1: that pipelines 5 bits of shift amount instead of 62 bits of masks.
        s3_right = delay(s1_right, 1, 3, "right")
        s4_right = reg(unsigned(5), "s4_right")
        s4_half = reg(unsigned(31), "s4_half")    # 2**(right-1) - 1: the bits below the round bit
        s4_round = reg(unsigned(31), "s4_round")  # 2**(right-1): the round bit; 0 for right 0
        mask = ((Const(1, 32) << s3_right) - 1)[:31]  # 2**right - 1, less bit 31 (unused)
        m.d.sync += [
            s4_right.eq(s3_right),
            s4_half.eq(mask >> 1),
            s4_round.eq(mask ^ (mask >> 1)),
        ]

        # ---- stage 5: RoundingDivideByPOT. "remainder > threshold" is, for x >= 0, "round bit
        # set" and, for x < 0, "round bit set and a lower bit set" (the threshold is one
        # higher). Those AND-reductions run beside the right barrel shift; the increment
        # becomes the carry-in of the zero-point adder in stage 6 instead of a third adder.
        s5_q = reg(signed(32), "s5_q")
        s5_inc = reg(1, "s5_inc")
        h_bits = s4_h.as_unsigned()[:31]
        round_bit = (h_bits & s4_round).any()
        sticky = (h_bits & s4_half).any()
        m.d.sync += [
            s5_q.eq(s4_h >> s4_right),  # arithmetic: s4_h is signed
            s5_inc.eq(round_bit & ((s4_h >= 0) | sticky)),
        ]

        # ---- stage 6: zero point (int32 add, wraps) and clamp. The bound comparisons and
        # lo > hi run in parallel instead of a max()-then-min() chain; the result is the same
        # (hi whenever max(y, lo) > hi).
        zp = delay(s1_zp, 1, 5, "zp")
        lo = delay(s1_lo, 1, 5, "lo")
        hi = delay(s1_hi, 1, 5, "hi")
        y = (s5_q + zp + s5_inc)[:32].as_signed()
        s6_out = reg(signed(8), "s6_out")
        m.d.sync += s6_out.eq(Mux((y > hi) | (lo > hi), hi,
                                  Mux(y < lo, lo, y[:8].as_signed())))
        m.d.comb += out.eq(s6_out)
