"""Weight-stationary systolic array with double-buffered weights."""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import AcceleratorConfig
from .delay import delay
from .mult import Multiplier, MultiplierTarget

__all__ = ["ProcessingElement", "SystolicArray"]


class ProcessingElement(wiring.Component):
    """One multiply-accumulate cell.

    Activations move right and partial sums move down, one cell per cycle. The cell holds two
    weights: ``active`` (used by the multiplier) and ``shadow`` (the next tile's weight, shifted
    in from above while the current tile computes). A ``swap`` flag travels right one cycle
    *ahead* of the first activation of a new tile; the cell copies ``shadow`` into ``active``
    when it sees the flag, so that activation and every later one use the new weight while the
    one before it still used the old weight. No multiplexer sits in front of the multiplier.

    The product comes from a pipelined multiplier (``hw.mult``: a registered ``a * w`` or a
    hard DSP with its registers) ``multiplier.latency`` cycles after its operands, and is then
    added to the partial sum. Activations reach cell (r, c) one cycle after cell (r - 1, c)
    and every cell has the same multiplier latency, so ``psum_out`` of the cell above is ready
    exactly when this cell's product is, whatever that latency: no extra skew.

    Parameters
    ----------
    psum_width : int
        Width of the partial sums entering and leaving the cell.
    multiplier : Multiplier or None
        The cell's multiplier, an ``act_bits`` x 8 one; ``None`` is a plain registered
        ``a * w`` (latency 1).
    act_bits : int
        Width of the activations (8 or 16, ``AcceleratorConfig.act_bits``).
    """

    def __init__(self, psum_width: int, multiplier: Multiplier | None = None, *,
                 act_bits: int = 8):
        self._psum_width = psum_width
        self._act_bits = act_bits
        self.multiplier = (Multiplier("generic", a_width=act_bits, b_width=8)
                           if multiplier is None else multiplier)
        super().__init__({
            "a_in": In(signed(act_bits)),
            "a_out": Out(signed(act_bits)),
            "swap_in": In(1),
            "swap_out": Out(1),
            "w_in": In(signed(8)),
            "w_shift": In(1),
            "w_out": Out(signed(8)),
            "psum_in": In(signed(psum_width)),
            "psum_out": Out(signed(psum_width)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mult = mult = self.multiplier

        # Data registers have no reset (only the swap flag, a control bit, needs one): a reset
        # would be a synchronous clear on every one of them, which keeps them out of the
        # block RAM and DSP registers and adds a control set per slice.
        shadow = Signal(signed(8), reset_less=True)
        active = Signal(signed(8), reset_less=True)
        a_q = Signal(signed(self._act_bits), reset_less=True)
        psum_q = Signal(signed(self._psum_width), reset_less=True)

        # The multiplier samples `active` in the same cycle as the activation it belongs to;
        # the swap updated it one cycle earlier.
        m.d.comb += [
            mult.a.eq(self.a_in),
            mult.b.eq(active),
            self.w_out.eq(shadow),
            self.a_out.eq(a_q),
            self.psum_out.eq(psum_q),
        ]

        m.d.sync += [
            a_q.eq(self.a_in),
            self.swap_out.eq(self.swap_in),
            psum_q.eq(self.psum_in + mult.p),
        ]
        with m.If(self.w_shift):
            m.d.sync += shadow.eq(self.w_in)
        with m.If(self.swap_in):
            m.d.sync += active.eq(shadow)

        return m


class SystolicArray(wiring.Component):
    """A ``rows x cols`` weight-stationary array with input skew and output de-skew inside.

    Timing contract (all in cycles at the array's ports; the execute unit follows it):

    - A vector ``a`` (``rows`` signed ``act_bits``-bit activations, element k multiplies
      weight row k) presented in cycle *t* yields ``out`` (``cols`` partial sums,
      ``out[n] = sum_k a[k] * W[k][n]``) in cycle *t + latency*. Every cycle may carry a
      vector.
    - ``swap`` high together with a vector makes that vector the first one of a new weight
      tile: it and all later vectors use the tile most recently shifted in.
    - A tile is shifted in through ``w``/``w_shift``: one tile row per cycle, row
      ``rows - 1`` first and row 0 last (``rows`` cycles; the cycles need not be contiguous).
      The first row may be presented no earlier than ``preload_gap`` cycles after the
      ``swap`` vector of the tile currently in use, and the next ``swap`` vector no earlier
      than one cycle after the last row.

    So tiles stream back to back when each tile is used for at least ``2 * rows`` vectors.

    Parameters
    ----------
    config : AcceleratorConfig
    target : MultiplierTarget or None
        Which multiplier each PE gets (``hw.mult``); ``None``: a plain registered ``a * w``
        everywhere, the portable choice.
    """

    def __init__(self, config: AcceleratorConfig, target: MultiplierTarget | None = None):
        if target is not None and not isinstance(target, MultiplierTarget):
            raise TypeError(f"target must be a MultiplierTarget or None, not {target!r}")
        self._config = config
        self._target = MultiplierTarget() if target is None else target
        super().__init__({
            "a": In(data.ArrayLayout(signed(config.act_bits), config.rows)),
            "swap": In(1),
            "w": In(data.ArrayLayout(signed(8), config.cols)),
            "w_shift": In(1),
            "out": Out(data.ArrayLayout(signed(config.psum_width), config.cols)),
        })

    @property
    def latency(self) -> int:
        """Cycles from a vector at ``a`` to its result at ``out``: the input registers,
        ``rows + 1`` of skew and vertical travel, the multiplier's latency, ``cols - 1`` of
        horizontal travel and de-skew."""
        return 1 + self._config.rows + self._config.cols + self._target.pe_latency

    @property
    def preload_gap(self) -> int:
        """Minimum cycles between a ``swap`` vector and the next tile's first weight row: the
        bottom cell of each column copies its shadow weight ``rows - 1`` cycles after the top
        one, and a shift must not overwrite a shadow weight before it has been copied."""
        return self._config.rows

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._config.rows, self._config.cols

        act_bits = self._config.act_bits
        pe = [[ProcessingElement(self._config.psum_width,
                                 self._target.make(r * cols + c, a_width=act_bits),
                                 act_bits=act_bits)
               for c in range(cols)] for r in range(rows)]
        for r in range(rows):
            for c in range(cols):
                m.submodules[f"pe_{r}_{c}"] = pe[r][c]

        # Row r's activation is delayed r + 1 cycles and its swap flag r cycles, so the flag
        # reaches every cell one cycle before the activation it belongs to.
        # Input registers: every input lands in a register with no logic, enable or reset in
        # front of it (control bits keep their reset), so that the buffers' read registers can
        # become the block RAMs' own output registers, and the block RAMs, wherever they
        # are, are a pure route away from the array. Everything is delayed alike, so the
        # timing contract between the ports is unchanged; only `latency` grows by one.
        a_in = Signal.like(self.a, reset_less=True)
        w_in = Signal.like(self.w, reset_less=True)
        swap_in = Signal()
        shift_in = Signal()
        m.d.sync += [a_in.eq(self.a), w_in.eq(self.w), swap_in.eq(self.swap),
                     shift_in.eq(self.w_shift)]

        for r in range(rows):
            a = delay(m, a_in[r], r + 1, name=f"a_skew_{r}_{{}}", reset_less=True)
            swap = delay(m, swap_in, r, name=f"swap_skew_{r}_{{}}")
            m.d.comb += [pe[r][0].a_in.eq(a), pe[r][0].swap_in.eq(swap)]
            for c in range(1, cols):
                m.d.comb += [pe[r][c].a_in.eq(pe[r][c - 1].a_out),
                             pe[r][c].swap_in.eq(pe[r][c - 1].swap_out)]

        # Column c's weights are delayed c cycles: they follow the activation wavefront, so a
        # column may start shifting as soon as its own cells have copied their shadows.
        for c in range(cols):
            w = delay(m, w_in[c], c, name=f"w_skew_{c}_{{}}", reset_less=True)
            shift = delay(m, shift_in, c, name=f"w_shift_skew_{c}_{{}}")
            m.d.comb += [pe[0][c].w_in.eq(w), pe[0][c].psum_in.eq(0)]
            for r in range(rows):
                m.d.comb += pe[r][c].w_shift.eq(shift)
                if r > 0:
                    m.d.comb += [pe[r][c].w_in.eq(pe[r - 1][c].w_out),
                                 pe[r][c].psum_in.eq(pe[r - 1][c].psum_out)]

            # Column c's result leaves the bottom c cycles after column 0's; delay the earlier
            # columns so the whole result vector appears in one cycle.
            m.d.comb += self.out[c].eq(delay(m, pe[rows - 1][c].psum_out, cols - 1 - c,
                                             name=f"deskew_{c}_{{}}", reset_less=True))

        return m
