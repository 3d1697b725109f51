"""The vector unit (``docs/vector.md``): VREQUANT of accumulator tensors into the activation or
weight buffer, optionally transposed, ``L = cols`` elements per cycle; VADD, VSOFTMAX,
VLAYERNORM and VGELU in its stream path, ``hw.vector_ops.VectorOps``."""

from types import SimpleNamespace

from amaranth import *
from amaranth.hdl import Assert
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig
from .delay import delay
from .interfaces import UnitActivitySignature, VectorReadsSignature
from .mult import MultiplierTarget
from .vector_bank import ProductBank
from .vector_lanes import RequantLanes
from .vector_ops import VectorOps

__all__ = ["VectorCmd", "VectorUnit", "WriteMux"]


def VectorCmd() -> data.StructLayout:
    """A decoded vector instruction as the decoder hands it to the vector unit: the
    ``VectorInstr`` fields the unit uses."""
    return isa.layout_subset(isa.VectorInstr, "opcode", "dst", "transpose", "with_b", "pre",
                             "src_addr", "src_stride", "dst_addr", "dst_stride", "b_addr",
                             "n_rows", "n_elems", "param_addr")


def _write_signature(addr_width: int, shape) -> wiring.Signature:
    return memory.WritePort.Signature(addr_width=addr_width, shape=shape)


class WriteMux(wiring.Component):
    """One buffer write port shared by the load unit (``a``) and the vector unit (``b``).

    The scoreboard never lets a LOAD into a buffer and a vector instruction writing the same
    buffer run together (a structural hazard, ``docs/vector.md``), so the two never write in
    the same cycle and a mux on ``b.en`` is all the arbitration needed; with ``assertions``
    a simulation assertion checks it.
    """

    def __init__(self, addr_width: int, shape, *, assertions: bool = False):
        sig = _write_signature(addr_width, shape)
        self._assertions = assertions
        super().__init__({"a": Out(sig), "b": Out(sig), "out": In(sig)})

    def elaborate(self, platform):
        m = Module()
        a, b = self.a, self.b
        m.d.comb += [
            self.out.en.eq(a.en | b.en),
            self.out.addr.eq(Mux(b.en, b.addr, a.addr)),
            self.out.data.eq(Mux(b.en, b.data, a.data)),
        ]
        if self._assertions:
            m.d.comb += Assert(~(a.en & b.en), "load and vector unit write one buffer at once")
        return m


class VectorUnit(wiring.Component):
    """Executes every vector opcode, one command at a time: VREQUANT itself (below), the
    others in its :class:`~.vector_ops.VectorOps` submodule, which shares the accumulator and
    parameter read ports and the activation write port (only one of the two runs) and has
    the ``b`` (``act_rd``) and channel (``chan_rd``) ports to itself.

    VREQUANT: the int32 tensor ``n_rows`` x ``n_elems`` at ``src_addr`` in the
    accumulator buffer, block by block through the output stage's arithmetic, into the ACT or
    WGT buffer.

    Single-slot: it takes a command when idle (``cmd.ready = ~busy``), as the load and store
    units do, and the decoder's scoreboard keeps its ranges apart from the other units'.
    A walker reads one accumulator entry (``L = cols`` lanes) and the parameter entry of its
    block every cycle; the rows go through a :class:`~.vector_lanes.RequantLanes` (the
    store unit's output stage arithmetic, int8 and int16 results, on multipliers it shares
    with the stream ops' input stage); lanes past ``n_elems`` and rows past ``n_rows`` are
    zeroed on the way out.

    - ``transpose = 0``: blocks in order, rows in order; row ``i`` of block ``b`` is written
      to entry ``dst_addr + b * dst_stride + i``. ``n_rows * nb`` rows.
    - ``transpose = 1``: the source in ``L`` x ``L`` tiles (row block ``ib`` outer, block
      ``b`` inner), each ``L`` rows (rows past ``n_rows`` are zero rows, not read); a
      transposer holds ``L - 1`` rows of a tile and, when the last arrives, moves the tile
      into a shift register that emits its columns one per cycle (column ``jj`` to entry
      ``dst_addr + ib * dst_stride + b * L + jj``, only for ``b * L + jj < n_elems``)
      while the next tile fills: ``nbt * L * nb`` rows with ``nbt = ceil(n_rows / L)``.

    There is no backpressure: the write port is the unit's alone while it runs (the
    scoreboard's structural rule). Cycle cost from the command's acceptance to ``busy``
    falling: :meth:`cycles`.

    ``reads`` reports, for the activity counters, each accumulator entry read whose data is
    used, with its block's parameter entry and its valid lanes: ``n_rows * nb`` reads and
    ``n_rows * n_elems`` elements per VREQUANT, transposed or not (a tile's padding rows are
    read, since the ports are always enabled, but their data is dropped: a gated port would
    not read them). The writes are counted from ``act_wr.en`` and ``wgt_wr.en``.

    Parameters
    ----------
    config : AcceleratorConfig
        Needs ``vector=True`` (a square power-of-two array).
    target : MultiplierTarget or None
        The datapaths' multipliers: generic or ECP5 (not iCE40: a UP5K's 8 DSPs are fewer
        than one lane needs).
    """

    #: Cycles from a read address to its data (the block RAMs' registered output).
    read_latency = 1
    #: The write register between the output stage (or transposer) and the write port.
    write_latency = 1

    def __init__(self, config: AcceleratorConfig, target: MultiplierTarget | None = None):
        if not isinstance(config, AcceleratorConfig) or not config.vector:
            self._MustUse__silence = True   # a rejected object is not "unused" by mistake
            if not isinstance(config, AcceleratorConfig):
                raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
            raise ValueError("VectorUnit needs AcceleratorConfig(vector=True)")
        c = config
        self._config = c
        self._target = target
        self._lanes = c.cols
        self._log_lanes = c.cols.bit_length() - 1
        self._elem_bits = c.act_bits  # one element of a transposer or write row
        self._entry_bits = max(c.act_addr_width, c.wgt_addr_width)
        self._tag = data.StructLayout({
            "entry": unsigned(self._entry_bits + 1),  # entry (or tile's first entry) written
            "lanes": unsigned(self._lanes),           # lane l holds an element (l < n_elems left)
            "row_valid": unsigned(1),                 # a source row (not past n_rows)
            "to_act": unsigned(1),
            "transpose": unsigned(1),
            "ii": unsigned(max(1, self._log_lanes)),  # row within its tile
            "tile_last": unsigned(1),                 # the tile's last row
        })
        try:
            self.requant = RequantLanes(lanes=c.cols, tag_shape=self._tag, target=target)
        except ValueError:
            self._MustUse__silence = True
            raise
        super().__init__({
            "cmd": In(stream.Signature(VectorCmd())),
            "acc_rd": In(memory.ReadPort.Signature(
                addr_width=c.acc_addr_width, shape=data.ArrayLayout(signed(32), c.cols))),
            "param_rd": In(memory.ReadPort.Signature(
                addr_width=c.param_addr_width,
                shape=data.ArrayLayout(isa.OutputParams, c.cols))),
            "act_rd": In(memory.ReadPort.Signature(
                addr_width=c.act_addr_width, shape=data.ArrayLayout(signed(c.act_bits), c.rows))),
            "chan_rd": In(memory.ReadPort.Signature(
                addr_width=c.param_addr_width,
                shape=data.ArrayLayout(isa.OutputParams, c.cols))),
            "act_wr": In(_write_signature(c.act_addr_width,
                                          data.ArrayLayout(signed(c.act_bits), c.rows))),
            "wgt_wr": In(_write_signature(c.wgt_addr_width,
                                          data.ArrayLayout(signed(8), c.cols))),
            "activity": Out(UnitActivitySignature()),
            "reads": Out(VectorReadsSignature(c.cols)),
        })

    @property
    def latency(self) -> int:
        """Cycles from a row's read to its write (non-transposed): the read, the requantizing
        datapath, the write register."""
        return self.read_latency + self.requant.latency + self.write_latency

    def cycles(self, n_rows: int, n_elems: int, transpose: bool) -> int:
        """Cycles from the cycle after a VREQUANT is accepted until the unit is idle again:
        one row read per cycle, then the pipeline (plus ``L`` transposer cycles)."""
        lanes = self._lanes
        nb = -(-n_elems // lanes)
        rows = -(-n_rows // lanes) * lanes if transpose else n_rows
        return rows * nb + self.latency + (lanes if transpose else 0) + 1

    def elaborate(self, platform):
        m = Module()
        m.submodules.requant = rq = self.requant
        m.submodules.ops = ops = VectorOps(self._config, self._target)
        # VREQUANT's products and the stream ops' input stage's: one bank (one runs at a
        # time; sel is held while either has rows in flight, the busy that covers them).
        m.submodules.bank = bank = ProductBank(
            rq.target, lanes=self._lanes,
            users={"prescale": ops.mul.signature.slots, "requant": rq.products})
        wiring.connect(m, ops.mul, bank.prescale)
        wiring.connect(m, rq.mul, bank.requant)
        is_requant = self.cmd.payload.opcode == isa.Opcode.VREQUANT
        walk = self._walker(m, is_requant)
        # The other ops run in `ops`, which shares the accumulator and parameter ports
        # (only one command runs at a time) and has the b and channel ports to itself.
        ops_on = ops.busy
        wiring.connect(m, wiring.flipped(self.act_rd), ops.act_rd)
        wiring.connect(m, wiring.flipped(self.chan_rd), ops.chan_rd)
        m.d.comb += [
            ops.cmd.valid.eq(self.cmd.valid & ~is_requant & ~walk.busy),
            *(ops.cmd.payload[name].eq(self.cmd.payload[name])
              for name, _ in data.Layout.cast(ops.cmd.payload.shape())),
            ops.acc_rd.data.eq(self.acc_rd.data), ops.param_rd.data.eq(self.param_rd.data),
            self.acc_rd.addr.eq(Mux(ops_on, ops.acc_rd.addr, walk.acc_addr)),
            self.acc_rd.en.eq(1),
            self.param_rd.addr.eq(Mux(ops_on, ops.param_rd.addr, walk.param_addr)),
            self.param_rd.en.eq(1),
            # The entries are on the read ports' data a cycle after their addresses. (With
            # o.ready high the datapath always takes a row: i.ready is never low.)
            rq.i.valid.eq(delay(m, walk.issue, self.read_latency, name="rd_valid_{}")),
            rq.i.payload.x.eq(self.acc_rd.data),
            rq.params.eq(self.param_rd.data),
            rq.i.payload.tag.eq(delay(m, walk.tag, self.read_latency, name="rd_tag_{}")),
            rq.o.ready.eq(1),
            bank.sel.eq(walk.busy),
        ]
        row = self._result_row(m, rq.o)
        w_en, w_addr, w_row, w_act = self._writes(m, rq.o, row)
        ow = ops.act_wr
        m.d.comb += [
            self.act_wr.en.eq((w_en & w_act) | ow.en),
            self.act_wr.addr.eq(Mux(ow.en, ow.addr, w_addr)),
            self.wgt_wr.en.eq(w_en & ~w_act), self.wgt_wr.addr.eq(w_addr),
        ]
        for lane in range(self._lanes):
            m.d.comb += [self.act_wr.data[lane].eq(Mux(ow.en, ow.data[lane], w_row[lane])),
                         self.wgt_wr.data[lane].eq(w_row[lane][:8])]

        # Busy from the acceptance until the last write: the walker, then a countdown as
        # long as the pipeline behind it (the transposer's L emitting cycles included).
        drain = Signal(range(self.latency + self._lanes + 2))
        busy = Signal()
        with m.If(walk.done):
            m.d.sync += drain.eq(self.latency + Mux(walk.transpose, self._lanes, 0))
        with m.Elif(drain != 0):
            m.d.sync += drain.eq(drain - 1)
        m.d.comb += [
            walk.busy.eq(walk.active | walk.start | (drain != 0)),
            busy.eq(walk.busy | ops.busy),
            self.activity.busy.eq(busy),
            self.activity.stalled.eq(0),  # no backpressure: the unit never waits
            self.cmd.ready.eq(~busy),
        ]
        used = walk.issue & walk.tag.row_valid  # a read whose row is written (not padding)
        m.d.comb += [self.reads.acc.eq(used | ops.reads.acc), self.reads.act.eq(ops.reads.act),
                     self.reads.param.eq(used + ops.reads.param),
                     self.reads.elements.eq(Mux(used, walk.elements, ops.reads.elements))]
        return m

    def _walker(self, m: Module, is_requant: Value):
        """The address walker: one source row per cycle while ``active``.

        Returns a namespace of ``issue`` (a row enters the pipeline), ``acc_addr``,
        ``param_addr``, ``tag`` (the row's bookkeeping), ``elements`` (the row's valid
        lanes, ``min(n_elems left, L)``), ``active``, ``start`` (the cycle after
        acceptance), ``done`` (the last row is issued) and ``transpose``."""
        c, lanes, p = self._config, self._lanes, self.cmd.payload
        cmd = Signal(VectorCmd())
        take = Signal()
        start = Signal()
        active = Signal()
        inner = Signal(12)                  # row within the block (tile: within the tile)
        row_base = Signal(13)               # first source row of the tile (transpose)
        elems_left = Signal(signed(13))     # n_elems - b * L
        src_row0 = Signal(18)               # src_addr + row_base
        src_blk = Signal(18)                # + b * src_stride
        dst_blk = Signal(18)                # dst_addr + b * dst_stride (no transpose)
        dst_ob = Signal(18)                 # dst_addr + ib * dst_stride (transpose)
        dst_tile = Signal(18)               # dst_ob + b * L
        param = Signal(9)                   # param_addr + b
        tr = cmd.transpose
        m.d.comb += take.eq(self.cmd.valid & self.cmd.ready & is_requant)
        m.d.sync += start.eq(take)
        with m.If(take):
            m.d.sync += cmd.eq(p)
        with m.If(start):
            m.d.sync += [active.eq(1), inner.eq(0), row_base.eq(0),
                         elems_left.eq(cmd.n_elems), src_row0.eq(cmd.src_addr),
                         src_blk.eq(cmd.src_addr), dst_blk.eq(cmd.dst_addr),
                         dst_ob.eq(cmd.dst_addr), dst_tile.eq(cmd.dst_addr),
                         param.eq(cmd.param_addr)]

        inner_last = Mux(tr, inner == lanes - 1, inner == cmd.n_rows - 1)
        block_last = elems_left <= lanes
        outer_last = ~tr | (row_base + lanes >= cmd.n_rows)
        done = Signal()
        m.d.comb += done.eq(active & inner_last & block_last & outer_last)
        with m.If(active):
            with m.If(~inner_last):
                m.d.sync += inner.eq(inner + 1)
            with m.Elif(~block_last):
                m.d.sync += [inner.eq(0), elems_left.eq(elems_left - lanes),
                             param.eq(param + 1), src_blk.eq(src_blk + cmd.src_stride),
                             dst_blk.eq(dst_blk + cmd.dst_stride), dst_tile.eq(dst_tile + lanes)]
            with m.Elif(~outer_last):
                m.d.sync += [inner.eq(0), elems_left.eq(cmd.n_elems), param.eq(cmd.param_addr),
                             row_base.eq(row_base + lanes), src_row0.eq(src_row0 + lanes),
                             src_blk.eq(src_row0 + lanes), dst_ob.eq(dst_ob + cmd.dst_stride),
                             dst_tile.eq(dst_ob + cmd.dst_stride)]
            with m.Else():
                m.d.sync += active.eq(0)

        elements = Signal(range(lanes + 1))
        m.d.comb += elements.eq(Mux(elems_left >= lanes, lanes, elems_left))
        tag = Signal(self._tag)
        row_valid = ~tr | (row_base + inner < cmd.n_rows)
        m.d.comb += [
            tag.entry.eq(Mux(tr, dst_tile, dst_blk + inner)),
            tag.lanes.eq(Cat(elems_left > lane for lane in range(lanes))),
            tag.row_valid.eq(row_valid),
            tag.to_act.eq(cmd.dst == isa.VectorDst.ACT),
            tag.transpose.eq(tr),
            tag.ii.eq(inner),
            tag.tile_last.eq(inner == lanes - 1),
        ]
        # Every row of a transposed tile goes through the pipeline; one past n_rows (the
        # tile's padding) reads whatever is there and is written as 0 (row_valid).
        return SimpleNamespace(issue=active, acc_addr=(src_blk + inner)[:len(self.acc_rd.addr)],
                               param_addr=param[:len(self.param_rd.addr)], tag=tag,
                               elements=elements, active=active, start=start, done=done,
                               transpose=tr, busy=Signal(name="requant_busy"))

    def _result_row(self, m: Module, out) -> Value:
        """The requantized row (``out``, the datapath's output stream) as ``L`` elements of
        ``act_bits``: int16 into 16-bit activations, else int8 (sign-extended); lanes past
        ``n_elems`` and rows past ``n_rows`` zero."""
        tag = out.payload.tag
        row = Signal(data.ArrayLayout(signed(self._elem_bits), self._lanes))
        for lane in range(self._lanes):
            y = out.payload.y[lane]
            value = y.int8
            if self._config.act_bits == 16:
                value = Mux(tag.to_act, y.int16, y.int8)
            m.d.comb += row[lane].eq(Mux(tag.lanes[lane] & tag.row_valid, value, 0))
        return row

    def _writes(self, m: Module, out, row: Value) -> tuple:
        """The write register, fed by rows (no transpose) or by the transposer's columns.

        Returns ``(en, addr, row, to_act)``, registers."""
        lanes, tag = self._lanes, out.payload.tag
        row_shape = data.ArrayLayout(signed(self._elem_bits), lanes)
        # Tile rows 0 .. L-2 wait here; the last row goes straight into the emitter.
        fill = [Signal(row_shape, name=f"tp_fill{i}", reset_less=True) for i in range(lanes - 1)]
        emit = [Signal(row_shape, name=f"tp_emit{i}", reset_less=True) for i in range(lanes)]
        em_mask = Signal(lanes)            # columns of the emitting tile still to go
        em_entry = Signal(len(tag.entry))  # the next column's destination entry
        em_act = Signal()
        arrive = out.valid & tag.transpose
        for i in range(lanes - 1):
            with m.If(arrive & ~tag.tile_last & (tag.ii == i)):
                m.d.sync += fill[i].eq(row)
        with m.If(arrive & tag.tile_last):
            m.d.sync += [*(emit[i].eq(fill[i]) for i in range(lanes - 1)),
                         emit[lanes - 1].eq(row), em_mask.eq(tag.lanes),
                         em_entry.eq(tag.entry), em_act.eq(tag.to_act)]
        with m.Else():
            # Shift the tile one column on: column jj of the tile is lane jj of each row.
            m.d.sync += [em_mask.eq(em_mask >> 1), em_entry.eq(em_entry + 1)]
            for i in range(lanes):
                for j in range(lanes - 1):
                    m.d.sync += emit[i][j].eq(emit[i][j + 1])
        column = Signal(row_shape)
        m.d.comb += [column[i].eq(emit[i][0]) for i in range(lanes)]

        w_en = Signal()
        w_addr = Signal(self._entry_bits)
        w_row = Signal(row_shape, reset_less=True)
        w_act = Signal()
        direct = out.valid & ~tag.transpose
        m.d.sync += [
            w_en.eq(direct | em_mask[0]),
            w_addr.eq(Mux(direct, tag.entry, em_entry)),
            w_row.eq(Mux(direct, row, column)),
            w_act.eq(Mux(direct, tag.to_act, em_act)),
        ]
        return w_en, w_addr, w_row, w_act
