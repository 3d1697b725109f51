"""Row engines of the vector unit: softmax and LayerNorm along rows, ``L`` lanes per cycle.

:class:`SoftmaxRow` and :class:`LayerNormRow` are bit-exact with ``sim.kernels.softmax`` and
``sim.kernels.layernorm`` (``docs/numerics.md``, "Vector kernels"). The vector unit
(``hw/vector.py``) instantiates them behind its walker; each is a standalone Component here.

Contract with the walker
------------------------
A row of ``n`` elements is ``nb = ceil(n / L)`` *blocks* of ``L = config.cols`` int32 lanes
(the accumulator entries of the row). A row is processed in three *passes*; the walker
re-reads the row's ``nb`` blocks from the accumulator buffer for each pass (the buffer is the
row storage: rows of up to 4095 elements do not fit in the engine).

- ``want_pass`` (:class:`RowPass`) says what the engine takes next: ``FIRST``, ``SECOND`` or
  ``OUTPUT`` (the pass number of the current row), or ``WAIT`` (it is working between passes:
  send nothing). ``FIRST`` is also "ready for a new row": the engine shows it once the previous
  row's output pass has been accepted, so a row's first pass overlaps the previous row's
  output draining.
- ``i`` (a stream) carries one block per transfer, blocks of a pass in order, and ``i.ready``
  is 0 unless ``want_pass != WAIT``. Payload: ``data`` (``L`` x int32), ``b`` (``L`` x
  ``act_bits``: softmax's additive mask row, LayerNorm's residual; zeros when there is none),
  ``lanes`` (bit ``l`` set iff lane ``l`` holds an element of the row: all ones but in a row's
  last block), ``last`` (the pass's last block) and ``tag`` (anything; passed through to the
  output of the same block on the output pass, dropped on the other passes). LayerNorm's
  payload also has ``gamma`` and ``beta`` (the per-channel ``G[j]``, ``Bw[j]`` of the block's
  lanes), read only on the output pass. What each pass reads is in each class's docstring.
- After the block with ``last`` of a pass, ``want_pass`` is ``WAIT`` until the engine has
  finished with that pass (pipeline drain, row-unit steps), then the next pass.
- ``o`` (a stream) carries one output block (``L`` x ``act_bits``; lanes outside the row are
  0) per block of the output pass, in order, with its ``tag`` and ``last``, from a FIFO
  (``out_depth`` entries: 16, 32 with the ECP5 products). Backpressure on ``o`` never stalls
  the pipeline: ``i.ready`` drops on the output pass while the FIFO has no entry left for
  another block in flight.
- ``cfg`` holds the instruction's constants; it must be stable from the cycle the first block
  of a row is offered until that row's last output block is taken.
- ``busy``: a row is in progress or a block is still in the pipeline.

Throughput: one block (``L`` elements) per cycle on every pass. Cycles per row (a source that
sends a block in every cycle it may, a sink always ready), from the first block of the first
pass to the last output block of the row, both included (``row_cycles(nb)``, checked against
simulation by ``tests/test_vector_rows.py``)::

    SoftmaxRow:    3 nb + 2 ceil(log2 L) + 43 + 4 (P - 1)    (L = 8: 3 nb + 49 + 4 (P - 1))
    LayerNormRow:  3 nb + 2 ceil(log2 L) + 164 + 6 (P - 1)   (L = 8: 3 nb + 170 + 6 (P - 1))

with ``P`` the products' latency (``target``: 1 generic, 3 ECP5). ``3 nb`` for the passes;
the rest is the pipeline drains (10 and 14 stages with ``P = 1``, 2 and 3 products more
with each ``P - 1`` deeper, then the output FIFO's one, to the output, the
reduction trees' ``ceil(log2 L)`` levels), two cycles of hand-over per pass and the row
unit: softmax's 17-cycle division (+1), LayerNorm's two 32-cycle divisions after pass 1 (+1
each, +1 to set up the second) and its 31-cycle square root and 32-cycle division after
pass 2 (+1 each). When rows follow each
other, the next row's first pass starts ``output_latency`` cycles before the last output
block, so in a stream of rows one costs ``row_cycles(nb) - output_latency`` cycles.
"""



from amaranth import C, Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, enum, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..sim import kernels
from .config import AcceleratorConfig
from .mult import Family, MultiplierTarget
from .vector_bank import LaneProducts, ProductsSignature, Solo, product_latency
from .vector_rowsteps import (Pipe, bit_length_steps, ceil_log2, fits_above, limb_count,
                              limb_products, limb_sum,
                              mask_from, shift_right_low, smax, smin, tree_levels, tree_reduce)

__all__ = ["RowPass", "SequentialDivider", "SequentialSqrt", "SoftmaxRow", "LayerNormRow",
           "SoloRow", "softmax_cfg_layout", "layernorm_cfg_layout"]


class RowPass(enum.Enum, shape=2):
    """``want_pass``: which pass of the row the engine takes next."""
    WAIT = 0
    FIRST = 1
    SECOND = 2
    OUTPUT = 3


# ---- the row unit's sequential steps -----------------------------------------------------

class SequentialDivider(wiring.Component):
    """Restoring division, one quotient bit per cycle: ``quotient = dividend // divisor``.

    ``start`` (while not ``busy``) loads the operands (they need not stay); ``busy`` is then 1 for exactly
    ``quotient_bits`` cycles, after which ``quotient`` and ``remainder`` hold the result
    until the next start. The caller guarantees ``dividend >> quotient_bits < divisor`` (so
    the quotient fits); otherwise the result is meaningless. The partial remainder is only
    ``divisor_width + 1`` bits wide: one compare-and-subtract of that width per cycle.

    Parameters
    ----------
    dividend_width, divisor_width, quotient_bits : int
    """

    def __init__(self, dividend_width: int, divisor_width: int, quotient_bits: int):
        if not 1 <= quotient_bits <= dividend_width:
            raise ValueError(f"quotient_bits must be in [1, dividend_width], "
                             f"not {quotient_bits}")
        self._wn, self._wd, self._q = dividend_width, divisor_width, quotient_bits
        super().__init__({
            "start": In(1), "dividend": In(dividend_width), "divisor": In(divisor_width),
            "busy": Out(1), "quotient": Out(quotient_bits), "remainder": Out(divisor_width),
        })

    @property
    def cycles(self) -> int:
        """Cycles ``busy`` stays high after a start."""
        return self._q

    def elaborate(self, platform):
        m = Module()
        q = self._q
        hi = Signal(self._wd + 1)          # the partial remainder, always < divisor
        lo = Signal(q)                     # dividend bits still to bring down, then quotient
        divisor = Signal(self._wd)         # held from the start: the inputs need not be
        count = Signal(range(q + 1))
        trial = Signal(self._wd + 2)
        m.d.comb += [trial.eq(Cat(lo[q - 1], hi)), self.quotient.eq(lo),
                     self.remainder.eq(hi), self.busy.eq(count != 0)]
        with m.If(count != 0):
            ge = trial >= divisor
            m.d.sync += [hi.eq(Mux(ge, trial - divisor, trial)),
                         lo.eq(Cat(ge, lo[:q - 1])), count.eq(count - 1)]
        with m.Elif(self.start):
            m.d.sync += [hi.eq(self.dividend >> q), lo.eq(self.dividend[:q]), count.eq(q),
                         divisor.eq(self.divisor)]
        return m


class SequentialSqrt(wiring.Component):
    """Exact floor square root of a ``2 * result_bits``-bit radicand, digit by digit.

    One result bit per cycle (restoring: bring down two radicand bits, compare with
    ``4 * res + 1``, subtract), the same result as ``sim.kernels.isqrt``. ``start`` (while
    not ``busy``) loads ``radicand``; ``busy`` is then 1 for ``result_bits`` cycles, after
    which ``root`` holds the result. The remainder is ``result_bits + 2`` bits wide.
    """

    def __init__(self, result_bits: int = 31):
        self._n = result_bits
        super().__init__({"start": In(1), "radicand": In(2 * result_bits),
                          "busy": Out(1), "root": Out(result_bits)})

    @property
    def cycles(self) -> int:
        return self._n

    def elaborate(self, platform):
        m = Module()
        n = self._n
        rad = Signal(2 * n)
        rem = Signal(n + 2)                # rem <= 2 * root: n + 1 bits, one spare
        root = Signal(n)
        count = Signal(range(n + 1))
        brought = Cat(rad[2 * n - 2:], rem)            # 4 rem + next two bits
        trial = Cat(C(1, 2), root)                      # 4 root + 1
        ge = brought >= trial
        m.d.comb += [self.root.eq(root), self.busy.eq(count != 0)]
        with m.If(count != 0):
            m.d.sync += [rem.eq(Mux(ge, brought - trial, brought)),
                         root.eq(Cat(ge, root[:n - 1])), rad.eq(rad << 2),
                         count.eq(count - 1)]
        with m.Elif(self.start):
            m.d.sync += [rad.eq(self.radicand), rem.eq(0), root.eq(0), count.eq(n)]
        return m


# ---- shared ports and front end ----------------------------------------------------------

def _check_config(config) -> AcceleratorConfig:
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
    return config


def _check_target(target) -> MultiplierTarget:
    target = MultiplierTarget() if target is None else target
    if not isinstance(target, MultiplierTarget):
        raise TypeError(f"target must be a MultiplierTarget or None, not {target!r}")
    if target.family not in (Family.GENERIC, Family.ECP5):
        raise ValueError(f"the row engines support the generic and ecp5 families, "
                         f"not {target.family.value}")
    return target


class _RowEngine(wiring.Component):
    """Ports, the input register stage and the block counter of both engines.

    Subclasses pass the ``cfg`` layout and ``extra_in`` (payload fields beyond ``data``,
    ``b``, ``lanes``, ``last``, ``tag``), and build the lanes and the pass sequence. The
    multipliers are outside, on the ``mul`` port (``hw.vector_bank``): the vector unit's
    engines that never run together share them.
    """

    def __init__(self, config: AcceleratorConfig, tag_shape, cfg_layout, extra_in: dict,
                 target: MultiplierTarget | None):
        self._config = _check_config(config)
        self._target = _check_target(target)
        self._tag_shape = tag_shape
        L, a = config.cols, config.act_bits
        self.in_layout = data.StructLayout({
            "data": data.ArrayLayout(signed(32), L),
            "b": data.ArrayLayout(signed(a), L),
            "lanes": unsigned(L),
            "last": unsigned(1),
            "tag": tag_shape,
            **extra_in,
        })
        self.out_layout = data.StructLayout({
            "data": data.ArrayLayout(signed(a), L), "last": unsigned(1), "tag": tag_shape})
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
            "cfg": In(cfg_layout),
            "want_pass": Out(RowPass),
            "busy": Out(1),
            "mul": Out(ProductsSignature(L, self.products)),
        })

    #: 18x18 products per lane: slots of the ``mul`` port, to a
    #: :class:`~.vector_bank.ProductBank` of ``target`` (products ``product_latency`` cycles
    #: after their operands), whose ``sel`` picks this engine while it has blocks in flight.
    products: int

    @property
    def lanes(self) -> int:
        return self._config.cols

    @property
    def target(self) -> MultiplierTarget:
        return self._target

    @property
    def product_latency(self) -> int:
        """``P``: cycles of each product of the ``mul`` port (1 generic, 3 ECP5)."""
        return product_latency(self._target)

    @property
    def act_bits(self) -> int:
        return self._config.act_bits

    @property
    def max_blocks(self) -> int:
        """Blocks of the longest row (``kernels.MAX_ELEMS`` elements)."""
        return -(-kernels.MAX_ELEMS // self.lanes)

    @property
    def levels(self) -> int:
        """Register levels of a reduction tree over the ``L`` lanes."""
        return tree_levels(self.lanes)

    def _front(self, m: Module, pipe: Pipe, want: Signal, depth: int, room):
        """The handshake, the block counter and the stage-1 registers; the control fields
        (valid, pass, first, last, blk) delayed to every stage up to ``depth``.

        Returns ``(take, blk, s1, ctl)``: ``s1`` the registered payload, ``ctl[k]`` a
        namespace of stage ``k``'s control signals (``ctl[1]`` is stage 1).
        """
        take = Signal()
        blk = Signal(range(self.max_blocks))
        m.d.comb += [self.i.ready.eq(room & (want != RowPass.WAIT)),
                     take.eq(self.i.valid & self.i.ready)]
        with m.If(take):
            m.d.sync += blk.eq(Mux(self.i.payload.last, 0, blk + 1))
        s1 = pipe.reg(self.in_layout, "s1", self.i.payload)
        ctl_layout = data.StructLayout({"pass_": RowPass, "first": 1, "last": 1,
                                        "blk": range(self.max_blocks)})
        ctl0 = Signal(ctl_layout)
        m.d.comb += [ctl0.pass_.eq(want), ctl0.first.eq(blk == 0),
                     ctl0.last.eq(self.i.payload.last), ctl0.blk.eq(blk)]
        valids = [pipe.reg(1, "s1_valid", take, resettable=True)]
        ctls = [pipe.reg(ctl_layout, "s1_ctl", ctl0)]
        for k in range(2, depth + 1):
            valids.append(pipe.reg(1, f"s{k}_valid", valids[-1], resettable=True))
            ctls.append(pipe.reg(ctl_layout, f"s{k}_ctl", ctls[-1]))
        ctl = [None] + [_Ctl(v, c) for v, c in zip(valids, ctls)]
        return take, blk, s1, ctl


    @property
    def out_depth(self) -> int:
        """Output FIFO entries: more than the blocks the pipeline holds, so it never
        stalls."""
        return max(16, 1 << ceil_log2(self.output_latency + 1))

    def _out_fifo(self, m: Module, take_out, leave_out, out_val) -> tuple:
        """The output FIFO: ``o`` reads it; ``leave_out`` writes ``out_val`` (the pipeline's
        last stage holds an output block). Returns ``(room, nonempty)``: ``room`` lets the
        input take an output-pass block only while the FIFO has an entry for every output
        block in flight, so backpressure on ``o`` never reaches the pipeline registers (a
        global stall would be one net into every register's clock enable)."""
        m.submodules.out_fifo = f = fifo.SyncFIFO(width=Shape.cast(self.out_layout).width,
                                                  depth=self.out_depth)
        inflight = Signal(range(self.out_depth + 1))
        m.d.sync += inflight.eq(inflight + take_out - leave_out)
        room = Signal()
        m.d.comb += [f.w_en.eq(leave_out), f.w_data.eq(out_val), f.r_en.eq(self.o.ready),
                     self.o.valid.eq(f.r_rdy), self.o.payload.eq(f.r_data),
                     room.eq(inflight + f.level < self.out_depth)]
        return room, f.r_rdy


class _Ctl:
    """Stage control: ``valid`` and the block's ``pass_``, ``first``, ``last``, ``blk``."""

    def __init__(self, valid, c):
        self.valid = valid
        self.c = c

    def is_(self, p: RowPass):
        return self.valid & (self.c.pass_ == p)

    def done(self, p: RowPass):
        """The pass ``p``'s last block is at this stage."""
        return self.is_(p) & self.c.last


# ---- softmax -----------------------------------------------------------------------------

def softmax_cfg_layout() -> data.StructLayout:
    """``cfg`` of :class:`SoftmaxRow`: ``SoftmaxParams.multiplier`` and ``shift``."""
    return data.StructLayout({"multiplier": unsigned(29), "shift": unsigned(6)})


class SoftmaxRow(_RowEngine):
    """``sim.kernels.softmax`` of one row at a time, ``L`` lanes per cycle.

    Passes (``docs/numerics.md``, VSOFTMAX):

    1. ``FIRST`` (reads ``data`` = x, ``b`` = mask): ``t = x + mask`` (34 bits), the row
       maximum ``m`` over the unmasked keys (``mask != sentinel`` and in ``lanes``).
    2. ``SECOND`` (reads x, mask): per lane ``d = m - t`` (33 bits), ``v = (d * multiplier +
       2**(shift-1)) >> shift``, ``z = min(v >> 15, 18)``, ``r = v & 0x7fff``, ``e = ((EXP_B
       - r)**2 + EXP_C + 2**(z+15)) >> (z+16)`` (0 if masked), written to the *e buffer*;
       ``S = sum(e)`` (29 bits). Then the row unit's one division ``R = numerator // S``
       (0 if ``S = 0``: every key masked), :class:`SequentialDivider`, 17 cycles.
    3. ``OUTPUT`` (reads only ``lanes``, ``last``, ``tag``: a walker may skip the reads):
       ``q = (e * R + 2**(k-1)) >> k`` with ``e`` from the e buffer.

    Why the e buffer (``ceil(4095 / L)`` x ``L`` x 17 bits: four DP16KD on ECP5 for L <= 8):
    recomputing ``e`` in pass 3 needs the 33x29 multiplier and the square there as well as
    ``e * R``; with ``e`` kept, pass 3 runs ``e * R`` on the square's 18x18 multiplier, and
    each lane has one 33x29 and one 18x18 multiplier instead of one 33x29 and two 18x18
    (``L`` DSPs fewer for four block RAMs).

    ``cfg``: :func:`softmax_cfg_layout` (``shift`` in ``[1, 61]``); ``k`` and ``numerator``
    follow from ``config.act_bits``.
    """

    #: ``d * multiplier`` (33 x 29 bits: four limb products) and the 17x17 square / ``e * R``.
    products = limb_count(33, 29) + 1

    def __init__(self, config: AcceleratorConfig, tag_shape=unsigned(1),
                 target: MultiplierTarget | None = None):
        super().__init__(_check_config(config), tag_shape, softmax_cfg_layout(), {}, target)
        # Stage numbers (stage 1 is the input register), with the product latency P.
        P = self.product_latency
        self._S_T = 2                   # t, live
        self._S_D = 3                   # d
        self._S_P = self._S_D + P       # d * multiplier as four limb products
        self._S_W = self._S_P + 1       # + 2**(shift-1)
        self._S_ZR = self._S_W + 1      # z, r
        self._S_OP = self._S_ZR + 1     # the 18x18 multiplier's operands
        self._S_PROD = self._S_OP + P   # its product, and the addend
        self._S_SUM = self._S_PROD + 1  # product + addend
        self._S_RES = self._S_SUM + 1   # e (pass 2) or q (pass 3): the output register
        self._k = 34 - config.act_bits
        self._numerator = kernels.act_range(config.act_bits)[1] << self._k

    @property
    def divider(self) -> int:
        """Cycles of the row's division."""
        return 17

    @property
    def output_latency(self) -> int:
        """Cycles from a block's acceptance to its output block on ``o`` (no stall): the
        pipeline, then the output FIFO."""
        return self._S_RES + 1

    def gaps(self) -> tuple[int, int, int]:
        """Cycles between the last block of a pass being accepted and the first block of the
        next pass (a source that answers ``want_pass`` at once), and from the last accepted
        block of the output pass to its output block."""
        lv = self.levels
        g1 = self._S_T + lv + 2            # tree, m register, want_pass
        g2 = self._S_RES + lv + 2 + self.divider + 1
        return g1, g2, self.output_latency

    def row_cycles(self, nb: int) -> int:
        """Cycles from the first accepted block of a row's first pass to its last output
        block on ``o``, inclusive of both (no stalls): ``3 * nb - 2 + g1 + g2 + g3`` with
        :meth:`gaps`."""
        return 3 * nb + sum(self.gaps()) - 2

    def elaborate(self, platform):
        m = Module()
        L, a = self.lanes, self.act_bits
        en = C(1, 1)                        # the pipeline never stalls (see _out_fifo)
        pipe = Pipe(m, en)
        want = Signal(RowPass)
        room = Signal()
        m.d.comb += self.want_pass.eq(want)
        take, blk, s1, ctl = self._front(m, pipe, want, self._S_RES + self.levels, room)

        m.submodules.ebuf = ebuf = memory.Memory(shape=data.ArrayLayout(unsigned(17), L),
                                                 depth=self.max_blocks, init=[])
        rd = ebuf.read_port()
        wr = ebuf.write_port()
        # The block's e is read when it is at stage _S_OP - 2, so that it arrives as op_a's
        # operand (no delay line of e in the lanes).
        m.d.comb += [rd.addr.eq(ctl[self._S_OP - 2].c.blk), rd.en.eq(en)]

        m_row = Signal(signed(34))          # the row maximum (pass 1's result)
        r_row = Signal(17)                  # the reciprocal (after pass 2)
        s_row = Signal(29)                  # the sum of e (pass 2's result)
        tv, res_lanes = self._lanes(m, pipe, s1, ctl, rd.data, m_row, r_row)

        # Pass 1: the row maximum over the unmasked keys (the sentinel -2**33 for none).
        blk_max = tree_reduce(pipe, tv, smax, signed(34), "max")
        tap1 = ctl[self._S_T + self.levels]
        with m.If(en & tap1.is_(RowPass.FIRST)):
            m.d.sync += m_row.eq(Mux(tap1.c.first, blk_max, smax(m_row, blk_max)))
        # Pass 2: e into the buffer, the row sum.
        res = ctl[self._S_RES]
        m.d.comb += [wr.addr.eq(res.c.blk), wr.en.eq(en & res.is_(RowPass.SECOND))]
        for i in range(L):
            m.d.comb += wr.data[i].eq(res_lanes[i])
        blk_sum = tree_reduce(pipe, res_lanes, lambda x, y: x + y, unsigned(17 + self.levels),
                              "sum")
        tap2 = ctl[self._S_RES + self.levels]
        with m.If(en & tap2.is_(RowPass.SECOND)):
            m.d.sync += s_row.eq(Mux(tap2.c.first, blk_sum, s_row + blk_sum))
        # Pass 3: the output register.
        out_val = Signal(self.out_layout)
        m.d.comb += [out_val.last.eq(res.c.last),
                     out_val.tag.eq(pipe.delay(s1.tag, self._S_RES - 1, "tag"))]
        for i in range(L):
            m.d.comb += out_val.data[i].eq(res_lanes[i][:a])
        fifo_room, nonempty = self._out_fifo(m, take & (want == RowPass.OUTPUT),
                                             res.is_(RowPass.OUTPUT), out_val)
        m.d.comb += room.eq(fifo_room)

        pass_done = Signal()                # a pass's last block finished its reduction
        m.d.sync += pass_done.eq(en & (tap1.done(RowPass.FIRST) | tap2.done(RowPass.SECOND)))
        self._fsm(m, take, want, pass_done, s_row, r_row)
        m.d.comb += self.busy.eq((want != RowPass.FIRST) | (blk != 0) | nonempty |
                                 Cat(c.valid for c in ctl[1:]).any())
        return m

    def _lanes(self, m: Module, pipe: Pipe, s1, ctl, ebuf_data, m_row, r_row):
        """The ``L`` lanes from stage 1 to the result register; returns the pass-1 tree inputs
        ``tv`` and the result lanes ``res`` (e on pass 2, q on pass 3)."""
        cfg = self.cfg
        sentinel = kernels.mask_sentinel(self.act_bits)
        half = Signal(62)
        big_mask = Signal(63)               # v >= 2**20 iff w has a bit under this mask
        m.d.comb += [half.eq((Const(1, 63) << cfg.shift)[1:]),    # 2**(shift-1)
                     big_mask.eq(mask_from(cfg.shift + 20, 63))]
        pass3_op = ctl[self._S_OP - 1].c.pass_ == RowPass.OUTPUT
        pass3_sum = ctl[self._S_PROD].c.pass_ == RowPass.OUTPUT
        rnd_q = 1 << (self._k - 1)
        tv, res = [], []
        for i in range(self.lanes):
            n = f"l{i}_"
            # Each lane its own module: per-module statistics, and Yosys maps one lane
            # at a time.
            lm = Module()
            m.submodules[f"lane{i}"] = lm
            lp = Pipe(lm, pipe.en)
            slots = LaneProducts(self.mul, i, self.product_latency)
            x, b = s1.data[i], s1.b[i]
            t = lp.reg(signed(34), n + "t", x + b)
            live = lp.reg(1, n + "live", s1.lanes[i] & (b != sentinel))
            tv.append(Mux(live, t, -(1 << 33)))
            d = lp.reg(33, n + "d", Mux(live, m_row - t, 0))
            p = limb_products(lp, d, cfg.multiplier, n + "p", slots)   # 4 17x17, P cycles
            w = lp.reg(63, n + "w", limb_sum(p) + half)
            v = Signal(20, name=n + "v")        # v's low 20 bits; v >= 2**20 saturates z
            lm.d.comb += v.eq(shift_right_low(lm, w, cfg.shift, 20, n + "vsh"))
            sat = (w & big_mask).any() | (v[15:] >= kernels.EXP_Z_MAX)
            z = lp.reg(5, n + "z", Mux(sat, kernels.EXP_Z_MAX, v[15:20]))
            r = lp.reg(15, n + "r", v[:15])
            e_buf = ebuf_data[i]                # (read for stage _S_OP - 1)
            base = kernels.EXP_B - r
            op_a = lp.reg(17, n + "op_a", Mux(pass3_op, e_buf, base))
            op_b = lp.reg(17, n + "op_b", Mux(pass3_op, r_row, base))
            z_op = lp.reg(5, n + "z_op", z)
            prod = slots.take(lm, op_a, op_b)[:34]      # P cycles, in the bank
            # (computed a stage after the operands, then waiting for the product)
            addend = lp.delay(
                lp.reg(34, n + "addend",
                       kernels.EXP_C + (Const(1 << (kernels.EXP_DROP - 1), 34) << z_op)),
                self.product_latency - 1, n + "addend")
            z_prod = lp.delay(z_op, self.product_latency, n + "z_prod")
            live_sum = lp.delay(live, self._S_SUM - self._S_T, n + "live")
            total = lp.reg(35, n + "total", prod + Mux(pass3_sum, rnd_q, addend))
            z_sum = lp.reg(5, n + "z_sum", z_prod)
            e = Mux(live_sum, total >> (z_sum + kernels.EXP_DROP), 0)
            q = total >> self._k
            res.append(lp.reg(17, n + "res", Mux(ctl[self._S_SUM].c.pass_ == RowPass.OUTPUT,
                                                   q, e)))
            slots.check()
        return tv, res

    def _fsm(self, m: Module, take, want, pass_done, s_row, r_row) -> None:
        """The pass sequence and the row unit (the division)."""
        m.submodules.div = div = SequentialDivider(33, 29, self.divider)
        m.d.comb += [div.dividend.eq(self._numerator), div.divisor.eq(s_row)]
        last = self.i.payload.last
        with m.FSM(name="softmax"):
            with m.State("MAX_PASS"):
                m.d.comb += want.eq(RowPass.FIRST)
                with m.If(take & last):
                    m.next = "MAX_DRAIN"
            with m.State("MAX_DRAIN"):
                with m.If(pass_done):
                    m.next = "EXP_PASS"
            with m.State("EXP_PASS"):
                m.d.comb += want.eq(RowPass.SECOND)
                with m.If(take & last):
                    m.next = "SUM_DRAIN"
            with m.State("SUM_DRAIN"):
                with m.If(pass_done):
                    m.d.comb += div.start.eq(1)
                    m.next = "DIVIDE"
            with m.State("DIVIDE"):
                with m.If(~div.busy):
                    m.d.sync += r_row.eq(Mux(s_row == 0, 0, div.quotient))
                    m.next = "OUTPUT_PASS"
            with m.State("OUTPUT_PASS"):
                m.d.comb += want.eq(RowPass.OUTPUT)
                with m.If(take & last):
                    m.next = "MAX_PASS"


# ---- layernorm ---------------------------------------------------------------------------

def layernorm_cfg_layout() -> data.StructLayout:
    """``cfg`` of :class:`LayerNormRow`: the row length and the scalar ``LayerNormParams``
    (``eps_shift`` as a 12-bit signed field: the parameters give ``[-2000, 2000]``)."""
    return data.StructLayout({
        "n_elems": unsigned(12), "eps_mult": unsigned(32), "eps_shift": signed(12),
        "res_mult": unsigned(24), "res_shift": unsigned(6), "out_shift": unsigned(6)})


class LayerNormRow(_RowEngine):
    """``sim.kernels.layernorm`` of one row at a time (with a residual, without ``pre``: the
    separate input stage applies it before this engine), ``L`` lanes per cycle.

    Every pass reads ``data`` = x and ``b`` = the residual (zeros without one: then ``h =
    x`` for any ``res_mult`` and ``res_shift >= 1``) and recomputes ``h = sat32(x + ((res *
    res_mult + 2**(res_shift-1)) >> res_shift))``. Passes (``docs/numerics.md``,
    VLAYERNORM):

    1. ``FIRST``: ``sum(h)`` (44 bits), ``min(h)``, ``max(h)``. Row unit: the rounded mean
       ``mu`` and the remainder by one division of ``sum + n // 2 + n * 2**31`` by ``n`` (32
       quotient bits, so that the dividend is never negative), ``P = bit_length(max - min) -
       23``, then the mean's fraction ``((rem << -P) + n // 2) // n`` by a second division of
       ``((r0 + n - n // 2) << -P) + n // 2`` (``r0`` the first remainder; the quotient less
       ``2**-P``; always run, even when ``P >= 0`` does not need it, so the cost is fixed).
    2. ``SECOND``: ``c'`` per lane (24 bits), ``Q = sum(c'**2)`` (58 bits). Row unit:
       ``T = min(Q + E, 2**62 - 1)`` (``E``, eps in ``c'`` units, is made during pass 1's
       divisions), ``sig = isqrt(T)`` (:class:`SequentialSqrt`, 31 cycles), ``I =
       min(2**52 // max(sig, 1), 2**32 - 1)`` (the divider again, 32 cycles).
    3. ``OUTPUT`` (also reads ``gamma`` = ``G[j]``, ``beta`` = ``Bw[j]`` of the block's
       lanes): ``w = (c' * I + 2**29) >> 30``, ``y = sat((w * G + Bw + 2**(out_shift-1)) >>
       out_shift)``. ``gamma`` and ``beta`` wait in FIFOs (LUT RAM; 16 entries, 32 with the
       ECP5 products) from the input to the stages that use them instead of travelling down
       the pipeline registers.

    Multipliers per lane: ``res * res_mult`` (16x24), one 24x33 shared by ``c'**2`` (pass
    2) and ``c' * I`` (pass 3), ``w * G`` (24x18). ``cfg``: :func:`layernorm_cfg_layout`
    (``n_elems`` must be the number of elements the ``lanes`` masks of a pass cover;
    ``out_shift`` in ``[1, 37]``, ``res_shift`` in ``[1, 62]``).
    """

    #: ``res * res_mult`` (16 x 24 bits), ``c'**2`` / ``c' * I`` (24 x 33), ``w * G`` (24 x
    #: 18: the gamma's sign limb is a fabric product).
    products = limb_count(16, 24) + limb_count(24, 33) + limb_count(24, 18)

    def __init__(self, config: AcceleratorConfig, tag_shape=unsigned(1),
                 target: MultiplierTarget | None = None):
        L = _check_config(config).cols
        super().__init__(config, tag_shape, layernorm_cfg_layout(), {
            "gamma": data.ArrayLayout(signed(18), L), "beta": data.ArrayLayout(signed(62), L)},
            target)
        # Stage numbers (stage 1 is the input register), with the product latency P.
        P = self.product_latency
        self._S_PR = 1 + P              # res * res_mult (limb products)
        self._S_RND = self._S_PR + 1    # + 2**(res_shift-1)
        self._S_RR = self._S_RND + 1    # >> res_shift
        self._S_H = self._S_RR + 1      # h (pass 1 taps here)
        self._S_DH = self._S_H + 1      # h - mu
        self._S_C = self._S_DH + 1      # c'
        self._S_OP = self._S_C + 1      # the shared multiplier's operands
        self._S_PROD = self._S_OP + P   # c'**2 or c' * I as four limb products
        self._S_FULL = self._S_PROD + 1  # their sum (pass 2 taps here)
        self._S_W = self._S_FULL + 1    # w (gamma and beta leave the FIFO here)
        self._S_WG = self._S_W + P      # w * G (limb products), Bw
        self._S_Y0 = self._S_WG + 1     # w * G + Bw + 2**(out_shift-1)
        self._S_Y = self._S_Y0 + 1      # the output register
        # gamma and beta wait for up to _S_WG - 1 blocks
        self._fifo_depth = max(16, 1 << ceil_log2(self._S_WG))

    @property
    def divider(self) -> int:
        return 32

    @property
    def sqrt(self) -> int:
        return 31

    @property
    def output_latency(self) -> int:
        return self._S_Y + 1

    def gaps(self) -> tuple[int, int, int]:
        """As :meth:`SoftmaxRow.gaps`."""
        lv = self.levels
        g1 = self._S_H + lv + 2 + 2 * (self.divider + 1) + 1   # mean, fraction
        g2 = self._S_FULL + lv + 2 + (self.sqrt + 1) + (self.divider + 1)
        return g1, g2, self.output_latency

    def row_cycles(self, nb: int) -> int:
        """As :meth:`SoftmaxRow.row_cycles`."""
        return 3 * nb + sum(self.gaps()) - 2

    def elaborate(self, platform):
        m = Module()
        L, a = self.lanes, self.act_bits
        en = C(1, 1)                        # the pipeline never stalls (see _out_fifo)
        pipe = Pipe(m, en)
        want = Signal(RowPass)
        room = Signal()
        m.d.comb += self.want_pass.eq(want)
        depth = max(self._S_Y, self._S_FULL + self.levels)
        take, blk, s1, ctl = self._front(m, pipe, want, depth, room)

        # gamma and beta of the output pass, from the input to the stages that use them: G
        # into w * G at _S_W, Bw into its register at _S_WG (in a FIFO, not a delay line).
        side = {}
        for name, stage in (("gamma", self._S_W), ("beta", self._S_WG - 1)):
            assert self._fifo_depth > stage   # a slot for every output-pass block in flight
            shape = self.in_layout[name].shape
            m.submodules[name] = f = fifo.SyncFIFO(width=Shape.cast(shape).width,
                                                   depth=self._fifo_depth)
            m.d.comb += [f.w_data.eq(self.i.payload[name]),
                         f.w_en.eq(take & (want == RowPass.OUTPUT)),
                         f.r_en.eq(en & ctl[stage].is_(RowPass.OUTPUT))]
            side[name] = data.View(shape, f.r_data)
        gamma, beta = side["gamma"], side["beta"]

        row = _LayerNormRowState(m)
        lanes = self._lanes(m, pipe, s1, ctl, row, gamma, beta)

        # Pass 1: sum, min, max of h over the row's lanes.
        blk_sum = tree_reduce(pipe, lanes["h_sum"], lambda x, y: x + y, signed(32 + self.levels),
                              "sum")
        blk_min = tree_reduce(pipe, lanes["h_min"], smin, signed(32), "min")
        blk_max = tree_reduce(pipe, lanes["h_max"], smax, signed(32), "max")
        tap1 = ctl[self._S_H + self.levels]
        with m.If(en & tap1.is_(RowPass.FIRST)):
            first = tap1.c.first
            m.d.sync += [row.total.eq(Mux(first, blk_sum, row.total + blk_sum)),
                         row.mn.eq(Mux(first, blk_min, smin(row.mn, blk_min))),
                         row.mx.eq(Mux(first, blk_max, smax(row.mx, blk_max)))]
        # Pass 2: the sum of squares.
        blk_sq = tree_reduce(pipe, lanes["sq"], lambda x, y: x + y, unsigned(47 + self.levels),
                             "sq")
        tap2 = ctl[self._S_FULL + self.levels]
        with m.If(en & tap2.is_(RowPass.SECOND)):
            m.d.sync += row.q.eq(Mux(tap2.c.first, blk_sq, row.q + blk_sq))
        # Pass 3: the output register.
        out = ctl[self._S_Y]
        out_val = Signal(self.out_layout)
        m.d.comb += [out_val.last.eq(out.c.last),
                     out_val.tag.eq(pipe.delay(s1.tag, self._S_Y - 1, "tag"))]
        for i in range(L):
            m.d.comb += out_val.data[i].eq(lanes["y"][i])
        fifo_room, nonempty = self._out_fifo(m, take & (want == RowPass.OUTPUT),
                                             out.is_(RowPass.OUTPUT), out_val)
        m.d.comb += room.eq(fifo_room)

        pass_done = Signal()
        m.d.sync += pass_done.eq(en & (tap1.done(RowPass.FIRST) | tap2.done(RowPass.SECOND)))
        self._fsm(m, take, want, pass_done, row)
        m.d.comb += self.busy.eq((want != RowPass.FIRST) | (blk != 0) | nonempty |
                                 Cat(c.valid for c in ctl[1:]).any())
        return m

    def _lanes(self, m: Module, pipe: Pipe, s1, ctl, row, gamma, beta) -> dict:
        """The ``L`` lanes: the pass-1 tree inputs ``h_sum``/``h_min``/``h_max``, the pass-2
        ``sq`` and the output lanes ``y`` (0 outside the row)."""
        cfg = self.cfg
        lo, hi = kernels.act_range(self.act_bits)
        rs = Signal(6)                      # res_shift >= 41 gives 0 like 41 (|res * mult| < 2**39)
        m.d.comb += rs.eq(Mux(cfg.res_shift > 41, 41, cfg.res_shift))
        rs_half = (Const(1, 42) << rs)[1:]
        sg_half = (Const(1, 39) << cfg.out_shift)[1:]
        rr_mask = Signal(42)                # rr fits 34 bits iff rnd is its sign under this
        y_mask = Signal(64)                 # y0 >> out_shift fits act_bits iff the same
        m.d.comb += [rr_mask.eq(mask_from(rs + 33, 42)),
                     y_mask.eq(mask_from(cfg.out_shift + (self.act_bits - 1), 64))]
        pass3_op = ctl[self._S_OP - 1].c.pass_ == RowPass.OUTPUT
        out = {"h_sum": [], "h_min": [], "h_max": [], "sq": [], "y": []}
        for i in range(self.lanes):
            n = f"l{i}_"
            # Each lane its own module: per-module statistics, and Yosys maps one lane
            # at a time.
            lm = Module()
            m.submodules[f"lane{i}"] = lm
            lp = Pipe(lm, pipe.en)
            slots = LaneProducts(self.mul, i, self.product_latency)
            pr = limb_products(lp, s1.b[i], cfg.res_mult, n + "pr", slots)
            x2 = lp.delay(s1.data[i], self.product_latency, n + "x")   # beside res * res_mult
            rnd = lp.reg(signed(42), n + "rnd", limb_sum(pr) + rs_half)
            x3 = lp.reg(signed(32), n + "x3", x2)
            # |rr| >= 2**32 saturates h whatever x is: rr saturates at 34 bits.
            rr = lp.reg(signed(34), n + "rr",
                        Mux(fits_above(rnd, rr_mask), shift_right_low(lm, rnd, rs, 34, n + "rrsh").as_signed(),
                            Mux(rnd[-1], -(1 << 32), 1 << 32)))
            x4 = lp.reg(signed(32), n + "x4", x3)
            hs = x4 + rr
            h = lp.reg(signed(32), n + "h",
                         Mux(hs > kernels._INT32_MAX, kernels._INT32_MAX,
                             Mux(hs < kernels._INT32_MIN, kernels._INT32_MIN, hs)))
            in_row_h = lp.delay(s1.lanes[i], self._S_H - 1, n + "lane")
            out["h_sum"].append(Mux(in_row_h, h, 0))
            out["h_min"].append(Mux(in_row_h, h, kernels._INT32_MAX))
            out["h_max"].append(Mux(in_row_h, h, kernels._INT32_MIN))
            dh = lp.reg(signed(33), n + "dh", h - row.mu)
            # (dh << 23) >> (P + 23) is dh << -P or dh >> P (floor); frac is 0 for P >= 0.
            shifted = shift_right_low(lm, Cat(C(0, kernels.LN_CBITS), dh).as_signed(), row.bl, 25,
                                      n + "csh")
            c = lp.reg(signed(24), n + "c", (shifted - row.frac)[:24].as_signed())
            op_a = lp.reg(signed(24), n + "op_a", c)
            op_b = lp.reg(signed(33), n + "op_b", Mux(pass3_op, row.inv, c))
            prod = lp.reg(signed(57), n + "prod", limb_sum(limb_products(lp, op_a, op_b,
                                                                           n + "prod", slots)))
            in_row_p = lp.delay(in_row_h, self._S_FULL - self._S_H, n + "lane")
            out["sq"].append(Mux(in_row_p, prod[:47], 0))
            w = lp.reg(signed(24), n + "w", ((prod + (1 << 29)) >> 30)[:24].as_signed())
            wg = limb_products(lp, w, gamma[i], n + "wg", slots)
            bw = lp.reg(signed(62), n + "bw", beta[i])
            y0 = lp.reg(signed(64), n + "y0", limb_sum(wg) + bw + sg_half)
            in_row_y = lp.delay(in_row_p, self._S_Y0 - self._S_FULL, n + "lane")
            ys = shift_right_low(lm, y0, cfg.out_shift, self.act_bits, n + "ysh").as_signed()
            sat = Mux(y0[-1], lo, hi)
            out["y"].append(lp.reg(signed(self.act_bits), n + "y",
                                   Mux(~in_row_y, 0, Mux(fits_above(y0, y_mask), ys, sat))))
            slots.check()
        return out

    def _fsm(self, m: Module, take, want, pass_done, row) -> None:
        """The pass sequence and the row unit: two divisions, eps, the square root and the
        reciprocal."""
        cfg = self.cfg
        m.submodules.div = div = SequentialDivider(53, 31, self.divider)
        m.submodules.sqrt = sq = SequentialSqrt(self.sqrt)
        n = cfg.n_elems
        half_n = n >> 1
        # Free-running registers for the row constants, so that no single cycle holds a long
        # path: the spread's bit length (valid 6 cycles after the statistics, used 33 later),
        # eps from the latched P (2 cycles; used after pass 2), n - n // 2.
        spread = Signal(32)                 # max - min < 2**32
        m.d.sync += spread.eq(row.mx - row.mn)
        spread_len, _ = bit_length_steps(m, spread, "spread")
        n_up = Signal(12)
        m.d.sync += [n_up.eq(n - half_n), row.eps.eq(self._eps(m, row))]
        neg = spread_len < kernels.LN_CBITS
        t_max = kernels.LN_T_MAX
        qe = row.q + row.eps
        last = self.i.payload.last
        with m.FSM(name="layernorm"):
            with m.State("STATS_PASS"):
                m.d.comb += want.eq(RowPass.FIRST)
                with m.If(take & last):
                    m.next = "STATS_DRAIN"
            with m.State("STATS_DRAIN"):
                with m.If(pass_done):
                    # sum + n // 2 + n * 2**31 >= 0: the quotient is mu + 2**31.
                    m.d.comb += [div.start.eq(1), div.divisor.eq(n),
                                 div.dividend.eq(row.total + half_n + (n << 31))]
                    m.next = "MEAN_DIVIDE"
            with m.State("MEAN_DIVIDE"):
                with m.If(~div.busy):
                    m.d.sync += [row.mu.eq(div.quotient ^ (1 << 31)), row.r0.eq(div.remainder),
                                 row.p_neg.eq(neg), row.bl.eq(spread_len),
                                 row.f.eq(Mux(neg, kernels.LN_CBITS - spread_len, 0)),
                                 row.p_pos.eq(Mux(neg, 0, spread_len - kernels.LN_CBITS))]
                    m.next = "FRACTION_START"
            with m.State("FRACTION_START"):
                m.d.comb += [div.start.eq(1), div.divisor.eq(n),
                             div.dividend.eq(((row.r0 + n_up) << row.f) + half_n)]
                m.next = "FRACTION_DIVIDE"
            with m.State("FRACTION_DIVIDE"):
                with m.If(~div.busy):
                    m.d.sync += row.frac.eq(Mux(row.p_neg, div.quotient - (Const(1, 25) << row.f),
                                                0))
                    m.next = "SQUARES_PASS"
            with m.State("SQUARES_PASS"):
                m.d.comb += want.eq(RowPass.SECOND)
                with m.If(take & last):
                    m.next = "SQUARES_DRAIN"
            with m.State("SQUARES_DRAIN"):
                with m.If(pass_done):
                    m.d.comb += [sq.start.eq(1), sq.radicand.eq(Mux(qe > t_max, t_max, qe))]
                    m.next = "SQRT"
            with m.State("SQRT"):
                with m.If(~sq.busy):
                    m.d.comb += [div.start.eq(1), div.dividend.eq(1 << kernels.LN_KI),
                                 div.divisor.eq(Mux(sq.root == 0, 1, sq.root))]
                    m.next = "RECIPROCAL"
            with m.State("RECIPROCAL"):
                with m.If(~div.busy):
                    # 2**52 // sig >= 2**32 exactly when sig <= 2**20 (also sig = 0).
                    m.d.sync += row.inv.eq(Mux(sq.root <= 1 << 20, kernels.LN_I_MAX,
                                               div.quotient))
                    m.next = "OUTPUT_PASS"
            with m.State("OUTPUT_PASS"):
                m.d.comb += want.eq(RowPass.OUTPUT)
                with m.If(take & last):
                    m.next = "STATS_PASS"

    def _eps(self, m: Module, row):
        """``E``: ``eps_mult >> s`` for ``s = eps_shift + 2 P >= 0``, else ``eps_mult << -s``
        saturated at ``2**62 - 1`` (``-s >= 63`` saturates even for ``eps_mult = 0``, like
        ``kernels._saturating_shift``)."""
        cfg = self.cfg
        p = Signal(signed(6))
        s = Signal(signed(14))              # registered: the shifts below start from it
        ns = Signal(13)
        m.d.comb += [p.eq(Mux(row.p_neg, -row.f, row.p_pos)), ns.eq(-s)]
        m.d.sync += s.eq(cfg.eps_shift + 2 * p)
        right = cfg.eps_mult >> Mux(s > 32, 32, s[:6])
        wide = cfg.eps_mult << Mux(ns > 63, 63, ns[:6])
        left = Mux((ns >= 63) | (wide > kernels.LN_T_MAX), kernels.LN_T_MAX, wide)
        return Mux(s >= 0, right, left)


class _LayerNormRowState:
    """The per-row registers of :class:`LayerNormRow` (statistics, then constants)."""

    def __init__(self, m: Module):
        self.total = Signal(signed(44))
        self.mn = Signal(signed(32))
        self.mx = Signal(signed(32))
        self.mu = Signal(signed(32))
        self.r0 = Signal(12)                # the mean division's remainder, < n
        self.p_neg = Signal()               # P < 0
        self.p_pos = Signal(4)              # P when P >= 0 (<= 9)
        self.bl = Signal(6)                 # P + 23, the bit length of the spread
        self.f = Signal(5)                  # -P when P < 0 (<= 23), else 0 after the mean
        self.frac = Signal(signed(25))      # the mean's fraction in c' units
        self.eps = Signal(62)               # E
        self.q = Signal(58)                 # sum of c'**2
        self.inv = Signal(32)               # I


class SoloRow(Solo):
    """A row engine with a :class:`~.vector_bank.ProductBank` of its own (of the engine's
    target): the engine alone, with its ports but ``mul`` (its tests, block synthesis).
    Other attributes are the engine's."""

    def __init__(self, engine: _RowEngine):
        assert isinstance(engine, _RowEngine), engine
        super().__init__(engine, target=engine.target)
