"""The vector unit's element-wise lane datapaths: ``L`` lanes of one kernel step per block.

* :class:`PrescaleLanes`: the per-channel input stage, ``sim.kernels.prescale``;
* :class:`GeluLanes`: ``sim.kernels.gelu`` (piecewise-linear Phi, requantized);
* :class:`AddLanes`: ``sim.kernels.add``.

Each takes a block of ``L`` int32 lanes (``AddLanes`` also the ``L`` activation lanes of its
second operand) with a pass-through ``tag`` on an ``amaranth.lib.stream`` input and gives the
``L`` results with the tag on a stream output, bit-exact with ``sim.kernels``. The arithmetic
(``hw.vector_steps``) is a free-running pipeline like the output stage's, generic or ECP5
(MULT18X18D partial products) after ``target.family``; backpressure is a credit scheme around
it (:class:`LaneDatapath`). The multipliers are not the datapath's own: it drives the
operands of ``products`` 18x18 products per lane on its ``mul`` port
(:class:`~.vector_bank.ProductsSignature`) and a :class:`~.vector_bank.ProductBank` outside
computes them, shared by the datapaths that never run together (the vector unit's ``AddLanes``
and ``GeluLanes``). :class:`SoloLanes` gives a datapath a bank of its own.
"""

from amaranth import C, Cat, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from serrano.sim import kernels

from . import isa
from .delay import delay
from .mult import MultiplierTarget
from .output_steps import Column, check_tag_shape, rounding_half_sum, stage1
from .output_wide import zero_point_and_clamp
from .vector_bank import LaneProducts, ProductsSignature, Solo
from .vector_steps import (lane_arith, lo_hi, ram_delay, round_shift_staged, saturate_to,
                           scalar_stage1, wide_products, wide_sum)

__all__ = ["LaneDatapath", "SoloLanes", "PrescaleLanes", "RequantLanes", "REQUANT_RESULT", "GeluLanes", "AddLanes", "GeluLaneParams",
           "AddLaneParams", "GELU_ROM"]

_OUTPUT_PARAMS = data.Layout.cast(isa.OutputParams)
_MBQM_MULT = _OUTPUT_PARAMS["multiplier"].shape   # MBQM operands as in OutputParams
_MBQM_SHIFT = _OUTPUT_PARAMS["shift"].shape
# The kernels' own fixed-point multipliers (sim.kernels: in [2**30, 2**31), shifts in [1, 62]).
_FIXED_MULT = unsigned(31)
_FIXED_SHIFT = unsigned(6)

#: ``GeluLanes.params``: ``sim.kernels.GeluParams`` without ``act_bits``, at the widths the lanes
#: use (the parameter entry's ``isa.GeluScalars`` after masking and clamping,
#: ``sim.asm.vector_kernel_params``).
GeluLaneParams = data.StructLayout({
    "in_mult": _FIXED_MULT, "in_shift": _FIXED_SHIFT,
    "out_mult": _MBQM_MULT, "out_shift": _MBQM_SHIFT,
})
#: ``AddLanes.params``: ``sim.kernels.AddParams`` without ``act_bits``, at the widths the lanes
#: use (``isa.AddScalars`` after masking and clamping).
AddLaneParams = data.StructLayout({
    "x_mult": _FIXED_MULT, "x_shift": _FIXED_SHIFT,
    "b_mult": _FIXED_MULT, "b_shift": _FIXED_SHIFT,
})

_GELU_SLOPE_BITS = 13
#: One GELU ROM entry per segment ``k``: its knot ``T[k]`` and slope ``T[k+1] - T[k]``, so that
#: one read gives both ends of the interpolation (129 knots, 128 entries).
GELU_ROM = data.StructLayout({"knot": unsigned(kernels.GELU_FP + 1),
                              "slope": unsigned(_GELU_SLOPE_BITS)})
_GELU_ROM_INIT = [{"knot": a, "slope": b - a}
                  for a, b in zip(kernels.GELU_TABLE, kernels.GELU_TABLE[1:])]
assert all(0 <= e["slope"] < 1 << _GELU_SLOPE_BITS for e in _GELU_ROM_INIT)
assert len(_GELU_ROM_INIT) == kernels.GELU_SEGS


class LaneDatapath(wiring.Component):
    """``L`` lanes of one element-wise step on a stream of blocks, with a pass-through tag.

    A block is accepted in every cycle where ``i.valid`` and ``i.ready`` are high; its results
    leave in order on ``o``. ``i.ready`` depends only on registers (no path from ``o.ready``).

    Backpressure is a credit scheme: the arithmetic is a free-running pipeline of
    ``pipeline_latency`` stages (no clock enables, so DSP and fabric registers pack as in the
    output stage) in front of a FIFO (``SyncFIFOBuffered``, ``credits + 1`` entries); a block
    is accepted only while fewer than ``credits`` blocks are in the pipeline or the FIFO, so
    nothing is ever lost while ``o.ready`` is low. ``credits = latency + 1``: with ``o.ready``
    high a block is accepted on every cycle, one block of ``L`` lanes per cycle.

    Parameters
    ----------
    lanes : int
        ``L``, at least 1.
    tag_shape : shape-castable
        The shape of ``i.payload.tag`` / ``o.payload.tag``: carried with its block, untouched.
    target : MultiplierTarget or None
        ``family`` picks the arithmetic (``generic`` or ``ecp5``, ``hw.vector_steps``) and
        with it the latency; ``simulation`` elaborates the DSP models. ``None``: generic.

    Attributes
    ----------
    i : In(stream.Signature(input_layout))
    o : Out(stream.Signature(output_layout))
    params : In(params_layout)
        The subclass says when it is sampled.
    mul : Out(ProductsSignature(lanes, products))
        The datapath's products, to a :class:`~.vector_bank.ProductBank` of ``target``
        (whose ``sel`` must pick this datapath while it has blocks in flight).
    """

    def __init__(self, *, lanes: int, tag_shape, target: MultiplierTarget | None = None):
        try:
            self._check(lanes, tag_shape, target)
        except (TypeError, ValueError):
            self._MustUse__silence = True   # a rejected object is not "unused" by mistake
            raise
        self._lanes = lanes
        self._tag_shape = tag_shape
        self._target = target or MultiplierTarget()
        self._arith = lane_arith(self._target)
        super().__init__({
            "i": In(stream.Signature(self.input_layout)),
            "o": Out(stream.Signature(self.output_layout)),
            "params": In(self.params_layout),
            "mul": Out(ProductsSignature(lanes, self.products)),
        })

    @staticmethod
    def _check(lanes, tag_shape, target) -> None:
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        if target is not None and not isinstance(target, MultiplierTarget):
            raise TypeError(f"target must be a MultiplierTarget or None, not {target!r}")
        check_tag_shape(tag_shape)
        lane_arith(target or MultiplierTarget())   # the family's ValueError

    # ---- what a subclass defines ---------------------------------------------------------
    @property
    def input_layout(self) -> data.StructLayout:
        """``x``: ``L`` int32 lanes; ``tag``."""
        return data.StructLayout({"x": data.ArrayLayout(signed(32), self._lanes),
                                  "tag": self._tag_shape})

    @property
    def output_layout(self) -> data.StructLayout:
        """``y``: ``L`` lanes of ``out_shape``; ``tag``."""
        return data.StructLayout({"y": data.ArrayLayout(self.out_shape, self._lanes),
                                  "tag": self._tag_shape})

    @property
    def out_shape(self) -> Shape:
        raise NotImplementedError

    @property
    def params_layout(self) -> data.Layout:
        raise NotImplementedError

    @property
    def pipeline_latency(self) -> int:
        """Stages of the arithmetic, from the block's acceptance to its result at the FIFO."""
        raise NotImplementedError

    #: 18x18 products per lane (slots of the ``mul`` port).
    products: int

    def _lane(self, m: Module, n: int, block, params, shared, arith):
        """Lane ``n``'s result (a register ``pipeline_latency - 1`` stages after the stage-0
        registers ``block``, the accepted payload, and ``params`` as the subclass samples;
        ``shared`` is what :meth:`_shared` made for all lanes; ``arith`` the family's
        arithmetic on the lane's product slots)."""
        raise NotImplementedError

    def _shared(self, m: Module, block, params):
        """What the lanes share (a ROM, a delay line of the whole block); default none."""
        return None

    def _stage0_params(self, m: Module):
        """``params`` as ``_lane`` sees them: scalars as they are (held for the command)."""
        return self.params

    # ---- common ---------------------------------------------------------------------------
    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def target(self) -> MultiplierTarget:
        return self._target

    @property
    def product_latency(self) -> int:
        """Cycles of each product of the ``mul`` port (the bank's latency)."""
        return self._arith.PRODUCT_LATENCY

    @property
    def credits(self) -> int:
        """Blocks in flight at most (accepted, not yet read from ``o``)."""
        return self.latency + 1

    @property
    def latency(self) -> int:
        """Cycles from a block's acceptance to its result on ``o`` (``o.valid``) when the FIFO
        is empty: the pipeline and the FIFO's two (write, then its output register)."""
        return self.pipeline_latency + 2

    def elaborate(self, platform):
        m = Module()
        accept = Signal()
        m.d.comb += accept.eq(self.i.valid & self.i.ready)
        # Stage 0: the block registered as it is accepted (it comes from block RAMs).
        block = Signal(self.input_layout, name="s0_block", reset_less=True)
        m.d.sync += block.eq(self.i.payload)
        params = self._stage0_params(m)
        shared = self._shared(m, block, params)
        results = []
        for n in range(self._lanes):
            slots = LaneProducts(self.mul, n, self.product_latency)
            results.append(self._lane(m, n, block, params, shared, self._arith.for_lane(slots)))
            slots.check()                   # the port has exactly the products the lane uses
        stages = self.pipeline_latency
        # (s0_block is stage 0: the results are the registers of stage `stages - 1`)
        done = delay(m, accept, stages, name="s{}_valid")
        tag = ram_delay(m, block.tag, stages - 1, name="tag_delay")

        # Credits: every accepted block has a FIFO entry reserved until it is read. (One
        # spare entry: SyncFIFOBuffered refuses writes while its inner memory is full.)
        m.submodules.fifo = out_fifo = fifo.SyncFIFOBuffered(
            width=Shape.cast(self.output_layout).width, depth=self.credits + 1)
        in_flight = Signal(range(self.credits + 1))
        pop = Signal()
        m.d.comb += [
            pop.eq(self.o.valid & self.o.ready),
            self.i.ready.eq(in_flight < self.credits),
            out_fifo.w_en.eq(done),
            out_fifo.w_data.eq(Cat(*results, tag)),
            self.o.valid.eq(out_fifo.r_rdy),
            self.o.payload.eq(out_fifo.r_data),
            out_fifo.r_en.eq(self.o.ready),
        ]
        m.d.sync += in_flight.eq(in_flight + accept - pop)
        return m


class PrescaleLanes(LaneDatapath):
    """The per-channel input stage: lane ``n`` computes ``MBQM(wrap32(x[n] + bias),
    multiplier, shift)`` (int32) with ``params[n]``, bit-exact with ``sim.kernels.prescale``:
    the output stage's first two steps, built from its own pipeline pieces
    (``output_steps.stage1``, the high multiply and RoundingDivideByPOT) without zero point
    and clamp.

    ``params`` is ``L`` ``isa.OutputParams`` (the parameter-buffer entries ``VREQUANT``
    reads; ``zero_point``, ``lo`` and ``hi`` are ignored), sampled with the block (in the
    cycle it is accepted). ``shift`` saturates into ``[-31, 30]`` as in the output stage.
    Latency: 10 cycles generic, 15 ECP5 (three products per lane, ``products``).
    """

    @property
    def out_shape(self) -> Shape:
        return signed(32)

    @property
    def params_layout(self) -> data.Layout:
        return data.ArrayLayout(isa.OutputParams, self._lanes)

    @property
    def pipeline_latency(self) -> int:
        return 2 + self._arith.MBQM_STAGES

    def _stage0_params(self, m):
        s0 = Signal(self.params_layout, name="s0_params", reset_less=True)
        m.d.sync += s0.eq(self.params)
        return s0

    products = 3

    def _lane(self, m, n, block, params, shared, arith):
        col = Column(m, n)
        return arith.mbqm(col, stage1(col, block.x[n], params[n]))


#: :class:`RequantLanes`' result per lane: the output stage's int8 result (``o_data``) and the
#: int16 one of ``output_wide.zero_point_and_clamp``.
REQUANT_RESULT = data.StructLayout({"int8": signed(8), "int16": signed(16)})


class RequantLanes(LaneDatapath):
    """VREQUANT's arithmetic: lane ``n`` is the output stage's column with ``params[n]``
    (``isa.OutputParams``: bias, multiplier, shift, zero point, clamp), bit-exact with
    ``sim.numerics.output_stage`` (``int8``) and ``sim.kernels.requant`` at 16 bits
    (``int16``, the output stage's ``wide`` result), built from the output stage's own
    pipeline pieces: ``stage1``, the MBQM of :class:`PrescaleLanes` before its increment,
    then ``output_wide.zero_point_and_clamp``. Its products come through the ``mul`` port,
    so the vector unit shares them with :class:`PrescaleLanes` (VREQUANT never runs beside
    another op).

    ``params`` is sampled with the block, as in :class:`PrescaleLanes`. Latency: 12 cycles
    generic, 17 ECP5 (three products per lane).
    """

    products = 3

    @property
    def out_shape(self) -> data.StructLayout:
        return REQUANT_RESULT

    @property
    def params_layout(self) -> data.Layout:
        return data.ArrayLayout(isa.OutputParams, self._lanes)

    @property
    def pipeline_latency(self) -> int:
        return 1 + self._arith.MBQM_STAGES + 3

    def _stage0_params(self, m):
        s0 = Signal(self.params_layout, name="s0_params", reset_less=True)
        m.d.sync += s0.eq(self.params)
        return s0

    def _lane(self, m, n, block, params, shared, arith):
        col = Column(m, n)
        s1 = stage1(col, block.x[n], params[n])
        s_q, s_inc, sq = arith.mbqm_parts(col, s1)
        wide = Signal(signed(16), name=f"c{n}_wide")
        out = col.sync(signed(8), f"s{sq + 3}_out",
                       zero_point_and_clamp(col, s1, s_q, s_inc, sq, wide))
        return Cat(out, wide)


class _ActLanes(LaneDatapath):
    """A lane datapath whose results are activations of ``act_bits``."""

    def __init__(self, *, lanes: int, act_bits: int, tag_shape,
                 target: MultiplierTarget | None = None):
        if isinstance(act_bits, bool) or act_bits not in (8, 16):
            self._MustUse__silence = True
            raise ValueError(f"act_bits must be 8 or 16, not {act_bits!r}")
        self._act_bits = act_bits
        super().__init__(lanes=lanes, tag_shape=tag_shape, target=target)

    @property
    def act_bits(self) -> int:
        return self._act_bits

    @property
    def out_shape(self) -> Shape:
        return signed(self._act_bits)


class GeluLanes(_ActLanes):
    """GELU on each lane, bit-exact with ``sim.kernels.gelu`` (without ``pre``: put a
    :class:`PrescaleLanes` in front for the input stage).

    Per lane (stage numbers with the product latency ``P``, 1 generic, 3 ECP5)::

        0          x registered
        P + 2      x * in_mult: four 16-bit partial products, summed (64 bits)
        P + 5      Q = (2 x in_mult) >> in_shift, a 4:1 mux level per stage
        P + 6      Q clamped to 22 bits: u = (Q + 1) >> 1 then saturates at |u| >= 2**20
        P + 7      a = min(|u|, GELU_U_MAX) as (Q ^ sign + 1) >> 1, and u >= 0
        P + 8      the ROM entry of segment k = a >> 12 (knot T[k], slope T[k+1] - T[k])
        2P + 8     slope * r (13x12, r = a & 0xfff)
        2P + 9     p = (T[k] * 2**12 + 2**11 + slope * r) >> 12: the rounding constant fills
                   the knot's empty low bits, one adder
        2P + 10    phi' = phi - 2**16 = +-(p - 2**16) (18 bits signed; phi = 2**17 fits)
        3P + 12    y = (x * phi + 2**16) >> 17 with x * phi = x * phi' + x * 2**16: two
                   partial products, then (hi + x + (lo >> 16) + 1) >> 1
        + 7 / 14   MBQM(y, out_mult, out_shift) (the output stage's, generic / ECP5)
        + 1        saturated to act_bits

    ``params`` (:data:`GeluLaneParams`) is read while blocks are in flight and must be held
    constant for the whole command (from the first block's acceptance until its last result
    has left). ``in_shift`` must be in ``[1, 62]``; ``out_shift`` saturates into
    ``[-31, 30]``. Latency: 26 cycles generic, 37 ECP5 (nine products per lane).
    The ROM (:data:`GELU_ROM`, from ``sim.kernels.GELU_TABLE``) has one read port per lane
    and asks for block RAM (``rom_style``): on ECP5 two DP16KD (the 31-bit entry in 18-bit
    halves) per two lanes.
    """

    @property
    def params_layout(self) -> data.Layout:
        return GeluLaneParams

    @property
    def pipeline_latency(self) -> int:
        return 3 * self._arith.PRODUCT_LATENCY + 12 + 1 + self._arith.MBQM_STAGES + 1 + 1

    def _shared(self, m, block, params):
        """The ROM, and the block's ``x`` delayed to the ``x * phi`` products (stage
        ``2P + 10``) in one memory for all lanes."""
        m.submodules.rom = rom = Memory(shape=GELU_ROM, depth=kernels.GELU_SEGS,
                                        init=_GELU_ROM_INIT, attrs={"rom_style": "block"})
        P = self._arith.PRODUCT_LATENCY
        return rom, ram_delay(m, block.x, 2 * P + 10, name="x_delay")

    products = 9

    def _lane(self, m, n, block, params, shared, arith):
        rom, x_late = shared
        P = arith.PRODUCT_LATENCY
        col = Column(m, n)
        x = block.x[n]
        prod = lambda a, b, name: arith.product(col, a, b, P, name)
        s_p = wide_sum(col, P, "u", *wide_products(prod, x, params.in_mult, "u"))
        s_q = round_shift_staged(col, s_p, params.in_shift, P + 2, "u")
        s_qc = col.sync(signed(22), f"s{P + 6}_u_q", saturate_to(s_q, 22))
        neg = s_qc[-1]
        s_pos = col.sync(1, f"s{P + 7}_u_pos", ~neg | s_qc.as_unsigned().all())  # Q >= -1
        mag = ((s_qc.as_unsigned() ^ neg.replicate(22)) + 1)[1:22]   # |u|, at most 2**20
        s_a = col.sync(unsigned(19), f"s{P + 7}_a",
                       Mux(mag[19:].any(), kernels.GELU_U_MAX, mag[:19]))

        port = rom.read_port()                        # entry in stage P + 8
        m.d.comb += port.addr.eq(s_a[kernels.GELU_R_BITS:])
        s_r = col.delay(s_a[:kernels.GELU_R_BITS], P + 7, P + 8, "r")
        s_slope_r = arith.product(col, port.data.slope, s_r, 2 * P + 8, "slope_r")
        knot = col.delay(port.data.knot, P + 8, 2 * P + 8, "knot")
        half = 1 << (kernels.GELU_R_BITS - 1)
        s_phi = col.sync(unsigned(kernels.GELU_FP + 1), f"s{2 * P + 9}_phi",
                         (Cat(C(half, kernels.GELU_R_BITS), knot) + s_slope_r[:25])
                         [kernels.GELU_R_BITS:])
        pos = col.delay(s_pos, P + 7, 2 * P + 9, "pos")
        e = Cat(s_phi[:16], s_phi[17])                # p - 2**16, p in [2**16, 2**17]
        s_phid = col.sync(signed(18), f"s{2 * P + 10}_phid", Mux(pos, e, -e))

        x_a = x_late[n]
        prod = lambda a, b, name: arith.product(col, a, b, 3 * P + 10, name)
        xa_lo, xa_hi = lo_hi(x_a)
        hi = prod(xa_hi, s_phid, "y_hi")
        lo = prod(xa_lo, s_phid, "y_lo")
        x_b = col.delay(x_a, 2 * P + 10, 3 * P + 10, "x")
        s_w = col.sync(signed(34), f"s{3 * P + 11}_w", x_b + lo[16:36].as_signed())
        s_hi = col.delay(hi[:36].as_signed(), 3 * P + 10, 3 * P + 11, "y_hi")
        s_y = col.sync(signed(32), f"s{3 * P + 12}_y", rounding_half_sum(s_hi, s_w)[:32])

        out = Column(m, f"{n}_out")                   # MBQM's own stage numbers
        s_m = arith.mbqm(out, scalar_stage1(out, s_y, params.out_mult, params.out_shift))
        return out.sync(signed(self._act_bits), f"s{arith.MBQM_STAGES + 2}_sat",
                        saturate_to(s_m, self._act_bits))


class AddLanes(_ActLanes):
    """Requantize and add, bit-exact with ``sim.kernels.add`` (without ``pre``).

    Per lane (product latency ``P``)::

        0        x, b registered
        P + 2    x * x_mult (three Karatsuba products, 64 bits); b * b_mult (two)
        P + 5    Qx = (2 x x_mult) >> x_shift, Qb = (2 b b_mult) >> b_shift
        P + 6    both clamped to 34 bits (the rounding below then saturates exactly)
        P + 7    ux' = (Qx + 1) >> 1, ub = (Qb + 1) >> 1
        P + 8    ux = sat32(ux')
        P + 9    s = ux + ub (34 bits)
        P + 10   (s >> 11 + 1) >> 1 = (ux + ub + 2**11) >> 12
        P + 11   saturated to act_bits

    ``params`` (:data:`AddLaneParams`) is held constant for the whole command, shifts in
    ``[1, 62]``. Latency: 15 cycles generic, 17 ECP5 (five products per lane).
    """

    @property
    def input_layout(self) -> data.StructLayout:
        """``x``: ``L`` int32 lanes; ``b``: ``L`` activation lanes; ``tag``."""
        return data.StructLayout({"x": data.ArrayLayout(signed(32), self._lanes),
                                  "b": data.ArrayLayout(signed(self._act_bits), self._lanes),
                                  "tag": self._tag_shape})

    @property
    def params_layout(self) -> data.Layout:
        return AddLaneParams

    @property
    def pipeline_latency(self) -> int:
        return self._arith.PRODUCT_LATENCY + 12

    products = 5

    def _lane(self, m, n, block, params, shared, arith):
        P = arith.PRODUCT_LATENCY
        col = Column(m, n)
        prod = lambda a, b, name: arith.product(col, a, b, P, name)
        s_px = wide_sum(col, P, "ux", *wide_products(prod, block.x[n], params.x_mult, "ux"))
        b = block.b[n]
        bm_lo, bm_hi = lo_hi(params.b_mult)
        b_hi, b_lo = prod(b, bm_hi, "ub_hi"), prod(b, bm_lo, "ub_lo")
        s_pb1 = col.sync(signed(48), f"s{P + 1}_ub",          # |b * b_mult| < 2**46
                         (b_hi[:34].as_signed() << 16) + b_lo[:34].as_signed())
        s_pb = col.delay(s_pb1, P + 1, P + 2, "ub")
        s_qx = round_shift_staged(col, s_px, params.x_shift, P + 2, "ux")
        s_qb = round_shift_staged(col, s_pb, params.b_shift, P + 2, "ub")
        s_qxc = col.sync(signed(34), f"s{P + 6}_ux_q", saturate_to(s_qx, 34))
        s_qbc = col.sync(signed(34), f"s{P + 6}_ub_q", saturate_to(s_qb, 34))
        s_uxr = col.sync(signed(34), f"s{P + 7}_uxr", (s_qxc + 1) >> 1)
        s_ub = col.sync(signed(33), f"s{P + 7}_ub", (s_qbc + 1) >> 1)
        s_ux = col.sync(signed(32), f"s{P + 8}_ux", saturate_to(s_uxr, 32))
        s_ub8 = col.delay(s_ub, P + 7, P + 8, "ub")
        s_sum = col.sync(signed(34), f"s{P + 9}_sum", s_ux + s_ub8)
        s_r = col.sync(signed(24), f"s{P + 10}_r", (s_sum[11:].as_signed() + 1) >> 1)
        return col.sync(signed(self._act_bits), f"s{P + 11}_out",
                        saturate_to(s_r, self._act_bits))


class SoloLanes(Solo):
    """A lane datapath with a :class:`~.vector_bank.ProductBank` of its own (of the
    datapath's target): the datapath alone, with its ports but ``mul`` (for its tests and
    ``synth-lanes``; the vector unit shares one bank between ``AddLanes`` and
    ``GeluLanes``). Other attributes (``latency``, ``credits``, ``lanes``, ...) are the
    datapath's."""

    def __init__(self, datapath: LaneDatapath):
        assert isinstance(datapath, LaneDatapath), datapath
        super().__init__(datapath, target=datapath.target)

    @property
    def datapath(self) -> LaneDatapath:
        return self.engine
