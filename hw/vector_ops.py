"""The vector unit's stream path: VADD, VSOFTMAX, VLAYERNORM and VGELU (``docs/vector.md``).

:class:`VectorOps` walks a command's tensors block by block through its own read ports (the
accumulator source, the activation operand ``b``, two parameter ports), feeds the blocks
through the optional per-channel input stage (:class:`~.vector_lanes.PrescaleLanes`) into the
op's engine (:class:`~.vector_lanes.AddLanes`, :class:`~.vector_lanes.GeluLanes`,
:class:`~.vector_rows.SoftmaxRow`, :class:`~.vector_rows.LayerNormRow`) and writes the
engine's output blocks into the activation buffer. The engines are bit-exact with
``sim.kernels``; this file is only the walking, the parameter decoding and the plumbing.
"""

from types import SimpleNamespace

from amaranth import *
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig
from .delay import delay
from .interfaces import VectorReadsSignature
from .mult import MultiplierTarget
from .vector_bank import ProductBank, ProductsSignature, product_latency
from .vector_lanes import AddLanes, GeluLanes, PrescaleLanes
from .vector_rows import LayerNormRow, RowPass, SoftmaxRow

__all__ = ["STREAM_OPCODES", "ROW_OPCODES", "OpsCmd", "decode_scalars", "VectorOps"]

Op = isa.Opcode
#: The opcodes :class:`VectorOps` executes.
STREAM_OPCODES = (Op.VADD, Op.VSOFTMAX, Op.VLAYERNORM, Op.VGELU)
#: Those that work along rows in three passes (the others are element-wise, one pass).
ROW_OPCODES = (Op.VSOFTMAX, Op.VLAYERNORM)


def OpsCmd() -> data.StructLayout:
    """The ``VectorInstr`` fields :class:`VectorOps` uses."""
    return isa.layout_subset(isa.VectorInstr, "opcode", "with_b", "pre", "src_addr",
                             "src_stride", "dst_addr", "dst_stride", "b_addr", "n_rows",
                             "n_elems", "param_addr")


def decode_scalars(op: isa.Opcode, entry: Value, target) -> list:
    """Assignments of ``target``'s fields (an engine's ``cfg`` or ``params`` view) from a
    scalars entry (the first 96 bits of a parameter entry), each field masked and clamped as
    ``isa.VECTOR_SCALAR_FIELDS`` says: the same decoding as ``sim.asm.vector_kernel_params``."""
    raw = isa.VECTOR_SCALARS[op](entry)
    stmts = []
    for name, (bits, rng) in isa.VECTOR_SCALAR_FIELDS[op].items():
        value = Value.cast(raw[name])
        if bits is not None:
            value = value[:bits]
        if rng is not None:
            lo, hi = rng
            value = Mux(value < lo, lo, Mux(value > hi, hi, value))
        field = Value.cast(target[name])
        need = Shape.cast(range(rng[0], rng[1] + 1)) if rng else value.shape()
        assert field.shape().width >= need.width, (op, name)   # the field holds every value
        stmts.append(field.eq(value))
    return stmts


class VectorOps(wiring.Component):
    """Executes one VADD, VSOFTMAX, VLAYERNORM or VGELU at a time.

    A command is taken when idle (``cmd.ready``); the unit reads the scalars entry at
    ``param_addr`` (one cycle) and decodes it into the engine's constants, then walks:

    - element-wise ops (VADD, VGELU): block ``k`` outer, row ``i`` inner, one pass, as
      VREQUANT;
    - row ops (VSOFTMAX, VLAYERNORM): row outer, each row's three passes over its ``nb``
      blocks. The walker does not wait for the engine's ``want_pass``: the blocks queue
      in order (in the FIFO and the input stage), so the block at the head is always the
      one the engine takes next, and a pass's first blocks are waiting when the engine
      asks for them (its row unit's divisions and square root overlap their reads).

    Each issued block reads, in one cycle, accumulator entry ``src_addr + k * src_stride +
    i``, the operand ``b`` (activation entry ``b_addr + k * dst_stride + i``, or ``b_addr + k``
    for softmax's mask row; zeros without ``with_b``), the input stage's ``OutputParams``
    entry (``pre``) and VLAYERNORM's channel entry. The blocks wait in a small FIFO (credit
    counted, so the walker stops before it could overflow) in front of the input stage and
    the engine; the engine's output blocks are written to ``dst_addr + k * dst_stride + i``
    through a register. ``busy`` lasts from the acceptance to the last write.

    Parameter entries from ``param_addr``: the scalars, VLAYERNORM's ``nb`` channel entries,
    with ``pre`` the ``nb`` input-stage entries (``isa.VECTOR_RULES``).

    Parameters
    ----------
    config : AcceleratorConfig
        ``vector=True``.
    target : MultiplierTarget or None
        The engines' arithmetic (generic or ECP5).

    Attributes
    ----------
    mul : Out(ProductsSignature(cols, PrescaleLanes.products))
        The input stage's products, to a :class:`~.vector_bank.ProductBank` outside (the
        vector unit shares it with VREQUANT's datapath); the engines' bank is inside.
    """

    #: Blocks issued and not yet taken from the FIFO, at most.
    CREDITS = 4
    #: Cycles from the acceptance to the first block: the scalars entry's read, its decoding.
    SETUP = 2
    #: Cycles from a block's issue until the engine (or the input stage) can take it: the
    #: read ports, then the FIFO's write and output register.
    FEED = 3
    #: The write register behind the engines.
    WRITE = 1

    def __init__(self, config: AcceleratorConfig, target: MultiplierTarget | None = None):
        if not isinstance(config, AcceleratorConfig) or not config.vector:
            self._MustUse__silence = True
            raise ValueError("VectorOps needs AcceleratorConfig(vector=True)")
        c = self._config = config
        L, a = c.cols, c.act_bits
        self._lanes = L
        entry = unsigned(max(c.act_addr_width, 1))
        self._write_tag = data.StructLayout({"entry": entry, "lanes": unsigned(L)})
        # What travels with a block beside its int32 lanes (through the input stage as its tag).
        self._rest = data.StructLayout({
            "b": data.ArrayLayout(signed(a), L), "gamma": data.ArrayLayout(signed(18), L),
            "beta": data.ArrayLayout(signed(62), L), "lanes": unsigned(L), "last": unsigned(1),
            "entry": entry})
        self._walk_tag = data.StructLayout({"lanes": unsigned(L), "last": unsigned(1),
                                            "entry": entry})
        self._block = data.StructLayout({
            "x": data.ArrayLayout(signed(32), L), "pre": data.ArrayLayout(isa.OutputParams, L),
            "rest": self._rest})
        self._target = target
        params = data.ArrayLayout(isa.OutputParams, L)
        super().__init__({
            "cmd": In(stream.Signature(OpsCmd())),
            "acc_rd": In(memory.ReadPort.Signature(addr_width=c.acc_addr_width,
                                                   shape=data.ArrayLayout(signed(32), L))),
            "act_rd": In(memory.ReadPort.Signature(addr_width=c.act_addr_width,
                                                   shape=data.ArrayLayout(signed(a), L))),
            "param_rd": In(memory.ReadPort.Signature(addr_width=c.param_addr_width,
                                                     shape=params)),
            "chan_rd": In(memory.ReadPort.Signature(addr_width=c.param_addr_width,
                                                    shape=params)),
            "act_wr": In(memory.WritePort.Signature(addr_width=c.act_addr_width,
                                                    shape=data.ArrayLayout(signed(a), L))),
            "busy": Out(1),
            "reads": Out(VectorReadsSignature(L)),
            "mul": Out(ProductsSignature(L, PrescaleLanes.products)),
        })

    def _make_engines(self, *, silent: bool = False) -> SimpleNamespace:
        """The input stage and the four engines (``silent``: only to ask their
        latencies)."""
        c, L, t = self._config, self._lanes, self._target
        e = SimpleNamespace(
            prescale=PrescaleLanes(lanes=L, tag_shape=self._rest, target=t),
            add=AddLanes(lanes=L, act_bits=c.act_bits, tag_shape=self._write_tag, target=t),
            gelu=GeluLanes(lanes=L, act_bits=c.act_bits, tag_shape=self._write_tag, target=t),
            softmax=SoftmaxRow(c, tag_shape=self._rest["entry"].shape, target=t),
            layernorm=LayerNormRow(c, tag_shape=self._rest["entry"].shape, target=t))
        assert all(engine.product_latency == product_latency(e.add.target)
                   for engine in vars(e).values())
        if silent:
            for engine in vars(e).values():
                engine._MustUse__silence = True
        return e

    @staticmethod
    def _engine(e: SimpleNamespace, op: isa.Opcode):
        return {Op.VADD: e.add, Op.VGELU: e.gelu, Op.VSOFTMAX: e.softmax,
                Op.VLAYERNORM: e.layernorm}[isa.Opcode(op)]

    def cycles(self, op: isa.Opcode, n_rows: int, n_elems: int, pre: bool = False) -> int:
        """Cycles from the cycle after a command is accepted until ``busy`` falls (a
        measured formula, ``docs/performance.md``; ``tests/test_vector_unit_ops.py`` checks
        it against pysim).

        Element-wise: ``SETUP``, one block per cycle, then the feed, the input stage
        (``pre``), the engine and the write. Row ops: ``SETUP``, the feed and the input
        stage once (the blocks of every later pass are queued before the engine asks), then
        each row the engine's :meth:`~.vector_rows.SoftmaxRow.row_cycles` less its
        ``output_latency`` (the next row's first pass overlaps the output's drain), then the
        last row's drain and the write."""
        op = isa.Opcode(op)
        nb = -(-n_elems // self._lanes)
        e = self._make_engines(silent=True)
        extra = e.prescale.latency if pre else 0
        engine = self._engine(e, op)
        tail = self.WRITE + 1
        if op not in ROW_OPCODES:
            return self.SETUP + n_rows * nb + self.FEED + extra + engine.latency + tail
        lat = engine.output_latency
        per_row = engine.row_cycles(nb) - lat
        return self.SETUP + self.FEED + extra + n_rows * per_row + lat + tail

    def elaborate(self, platform):
        m = Module()
        e = self._make_engines()
        for name, engine in vars(e).items():
            m.submodules[name] = engine
        cmd = Signal(OpsCmd())
        op = SimpleNamespace(**{o.name.lower(): Signal(name=f"is_{o.name.lower()}")
                                for o in STREAM_OPCODES})
        row_op = op.vsoftmax | op.vlayernorm
        walk = self._walker(m, cmd, op, row_op)

        # The read stage: every port addressed by the walker, data a cycle later.
        m.d.comb += [
            self.acc_rd.en.eq(1), self.act_rd.en.eq(1), self.param_rd.en.eq(1),
            self.chan_rd.en.eq(1),
            self.acc_rd.addr.eq(walk.acc_addr), self.act_rd.addr.eq(walk.b_addr),
            self.param_rd.addr.eq(Mux(walk.setup, cmd.param_addr, walk.pre_addr)),
            self.chan_rd.addr.eq(walk.ch_addr),
        ]
        self._decode_params(m, e, cmd, op, walk.scalars_ready)
        f = self._block_fifo(m, cmd, walk)
        mid = self._input_stage(m, e, cmd, f)
        self._engines(m, e, op, mid)
        self._banks(m, e, op)
        w_en = self._writes(m, e)

        # Busy until every output block the walker issued is written.
        outstanding = Signal(range(1 << 14))
        m.d.sync += outstanding.eq(outstanding + (walk.issue & walk.output_pass) - w_en)
        drain = Signal()
        with m.If(walk.done):
            m.d.sync += drain.eq(1)
        with m.Elif(drain & (outstanding == 0)):
            m.d.sync += drain.eq(0)
        m.d.comb += self.busy.eq(walk.busy | drain)
        m.d.comb += self.cmd.ready.eq(~self.busy)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += cmd.eq(self.cmd.payload)
            for o in STREAM_OPCODES:
                m.d.sync += getattr(op, o.name.lower()).eq(self.cmd.payload.opcode == o)

        # Activity: what each issued block's data is used for (docs/performance.md).
        uses_x = walk.issue & ~(op.vsoftmax & walk.output_pass)
        m.d.comb += [
            self.reads.acc.eq(uses_x), self.reads.act.eq(uses_x & cmd.with_b),
            self.reads.param.eq(walk.scalars_ready + (walk.issue & cmd.pre) +
                                (walk.issue & op.vlayernorm & walk.output_pass)),
            self.reads.elements.eq(Mux(walk.issue, walk.elements, 0)),
        ]
        return m

    def _walker(self, m: Module, cmd, op, row_op):
        """The command's sequence: ``setup`` (the scalars entry's address on ``param_rd``),
        ``scalars_ready`` (its data), then one block per cycle while ``issue``.

        Returns a namespace: ``issue``, ``output_pass`` (the issued block gives an output
        block: every block of an element-wise op, the third pass's of a row op), the read
        addresses, the block's ``tag`` (``lanes``, ``last``, ``entry``), ``elements`` (its
        valid lanes), ``take`` (to drive: the FIFO hands a block on, returning its credit),
        ``setup``, ``scalars_ready``, ``busy`` and ``done`` (the last block issued)."""
        c, L = self._config, self._lanes
        setup, ready, run = Signal(), Signal(), Signal()
        max_blocks = isa.vector_blocks((1 << len(cmd.n_elems)) - 1, c)
        i = Signal.like(cmd.n_rows)          # row
        k = Signal(range(max_blocks))        # block of the row
        p = Signal(2)                        # pass (row ops), 0 .. 2
        nb = Signal(range(max_blocks + 1))
        elems_left = Signal(signed(len(cmd.n_elems) + 2))   # n_elems - k * L
        # The bases of block k. Every one is at most its tensor's end, which the checks keep
        # inside the buffer, so the buffers' address widths (plus a carry bit) hold them.
        wide = max(c.acc_addr_width, c.act_addr_width) + 2
        src_k, dst_k, b_k = Signal(wide), Signal(wide), Signal(wide)
        pwide = max(c.param_addr_width, len(cmd.param_addr)) + 2
        pre0, pre_k, ch_k = Signal(pwide), Signal(pwide), Signal(pwide)
        inflight = Signal(range(self.CREDITS + 1))
        take = Signal()

        m.d.sync += [setup.eq(self.cmd.valid & self.cmd.ready), ready.eq(setup)]
        row_mask = op.vsoftmax                # softmax's b is one row for every row
        b_step = Mux(row_mask, 1, cmd.dst_stride)
        restart = [k.eq(0), elems_left.eq(cmd.n_elems), src_k.eq(cmd.src_addr),
                   dst_k.eq(cmd.dst_addr), b_k.eq(cmd.b_addr), pre_k.eq(pre0),
                   ch_k.eq(cmd.param_addr + 1)]
        with m.If(setup):
            nbv = isa.vector_blocks(cmd.n_elems, c)
            m.d.sync += [nb.eq(nbv), i.eq(0), p.eq(0),
                         pre0.eq(cmd.param_addr + 1 + Mux(op.vlayernorm, nbv, 0))]
        with m.If(ready):
            m.d.sync += [run.eq(1), *restart]
            m.d.sync += pre_k.eq(pre0)

        may = run & (inflight < self.CREDITS)
        issue = Signal()
        m.d.comb += issue.eq(may)
        last_row = i == cmd.n_rows - 1
        last_blk = k == nb - 1
        output_pass = ~row_op | (p == 2)      # (also the last pass)
        done = Signal()
        m.d.comb += done.eq(issue & last_row & last_blk & output_pass)
        step_blk = [k.eq(k + 1), elems_left.eq(elems_left - L), src_k.eq(src_k + cmd.src_stride),
                    dst_k.eq(dst_k + cmd.dst_stride), b_k.eq(b_k + b_step),
                    pre_k.eq(pre_k + 1), ch_k.eq(ch_k + 1)]
        with m.If(issue):
            with m.If(done):
                m.d.sync += run.eq(0)
            with m.Elif(row_op):
                with m.If(~last_blk):
                    m.d.sync += step_blk
                with m.Else():
                    m.d.sync += restart
                    with m.If(p == 2):
                        m.d.sync += [p.eq(0), i.eq(i + 1)]
                    with m.Else():
                        m.d.sync += p.eq(p + 1)
            with m.Else():
                with m.If(~last_row):
                    m.d.sync += i.eq(i + 1)
                with m.Else():
                    m.d.sync += [i.eq(0), *step_blk]
        m.d.sync += inflight.eq(inflight + issue - take)

        tag = Signal(self._walk_tag)
        m.d.comb += [tag.lanes.eq(Cat(elems_left > n for n in range(L))),
                     tag.last.eq(last_blk), tag.entry.eq(dst_k + i)]
        elements = Signal(range(L + 1))
        m.d.comb += elements.eq(Mux(elems_left >= L, L, elems_left))
        return SimpleNamespace(
            issue=issue, output_pass=output_pass,
            acc_addr=(src_k + i)[:len(self.acc_rd.addr)],
            b_addr=Mux(row_mask, b_k, b_k + i)[:len(self.act_rd.addr)],
            pre_addr=pre_k[:len(self.param_rd.addr)], ch_addr=ch_k[:len(self.chan_rd.addr)],
            tag=tag, elements=elements, take=take, setup=setup, scalars_ready=ready,
            busy=setup | ready | run, done=done)

    def _banks(self, m: Module, e, op) -> None:
        """The engines' multipliers. The input stage runs beside an engine: its products go
        out on ``mul``; the four engines never run together and share one bank (as many
        multipliers per lane as the hungriest engine needs), which the command's opcode
        selects."""
        t, L = self._target or MultiplierTarget(), self._lanes
        slots = lambda engine: engine.mul.signature.slots
        wiring.connect(m, wiring.flipped(self.mul), e.prescale.mul)
        m.submodules.bank = bank = ProductBank(
            t, lanes=L, users={o.name.lower(): slots(self._engine(e, o)) for o in STREAM_OPCODES})
        for index, o in enumerate(STREAM_OPCODES):   # (the bank's users in this order)
            name = o.name.lower()
            wiring.connect(m, self._engine(e, o).mul, getattr(bank, name))
            with m.If(getattr(op, name)):
                m.d.comb += bank.sel.eq(index)

    def _decode_params(self, m: Module, e, cmd, op, ready) -> None:
        """The engines' constants from the scalars entry (``param_rd`` in ``ready``), held
        for the command."""
        raw = Value.cast(self.param_rd.data[0])
        with m.If(ready):
            m.d.sync += e.layernorm.cfg.n_elems.eq(cmd.n_elems)
            for o, target in ((Op.VADD, e.add.params), (Op.VGELU, e.gelu.params),
                              (Op.VSOFTMAX, e.softmax.cfg),
                              (Op.VLAYERNORM, e.layernorm.cfg)):
                with m.If(getattr(op, o.name.lower())):
                    m.d.sync += decode_scalars(o, raw, target)

    def _block_fifo(self, m: Module, cmd, walk):
        """The read stage's blocks, in a FIFO of ``CREDITS`` blocks. Returns its output as a
        namespace of ``valid``, ``payload`` (a ``_block`` view) and ``pop`` (to drive)."""
        L = self._lanes
        r_valid = delay(m, walk.issue, 1, name="rd_valid")
        r_tag = delay(m, walk.tag, 1, name="rd_tag")
        r_with_b = cmd.with_b
        blk = Signal(self._block)
        m.d.comb += [blk.x.eq(self.acc_rd.data), blk.pre.eq(self.param_rd.data),
                     blk.rest.lanes.eq(r_tag.lanes), blk.rest.last.eq(r_tag.last),
                     blk.rest.entry.eq(r_tag.entry)]
        for n in range(L):
            ch = isa.LayerNormChannel(Value.cast(self.chan_rd.data[n]))
            m.d.comb += [
                blk.rest.b[n].eq(Mux(r_with_b, self.act_rd.data[n], 0)),
                blk.rest.gamma[n].eq(Value.cast(ch.gamma_mult)[:isa.LN_GAMMA_BITS].as_signed()),
                blk.rest.beta[n].eq(Value.cast(ch.beta_add)[:isa.LN_BETA_BITS].as_signed()),
            ]
        # (one spare entry: SyncFIFOBuffered refuses writes while its inner memory is full)
        m.submodules.blocks = f = fifo.SyncFIFOBuffered(
            width=Shape.cast(self._block).width, depth=self.CREDITS + 1)
        pop = Signal()
        m.d.comb += [f.w_en.eq(r_valid), f.w_data.eq(blk), f.r_en.eq(pop),
                     walk.take.eq(f.r_rdy & pop)]
        return SimpleNamespace(valid=f.r_rdy, payload=data.View(self._block, f.r_data),
                               pop=pop)

    def _input_stage(self, m: Module, e, cmd, f):
        """The FIFO's blocks, through the input stage with ``pre``. Returns the stream into
        the engines as a namespace of ``valid``, ``x``, ``rest`` and ``ready`` (to drive)."""
        ps = e.prescale
        ready = Signal()
        m.d.comb += [ps.i.valid.eq(f.valid & cmd.pre), ps.i.payload.x.eq(f.payload.x),
                     ps.i.payload.tag.eq(f.payload.rest), ps.params.eq(f.payload.pre),
                     ps.o.ready.eq(ready),
                     f.pop.eq(Mux(cmd.pre, ps.i.ready, ready))]
        x = Signal(data.ArrayLayout(signed(32), self._lanes))
        rest = Signal(self._rest)
        m.d.comb += [x.eq(Mux(cmd.pre, ps.o.payload.y, f.payload.x)),
                     rest.eq(Mux(cmd.pre, ps.o.payload.tag, f.payload.rest))]
        return SimpleNamespace(valid=Mux(cmd.pre, ps.o.valid, f.valid), x=x, rest=rest,
                               ready=ready)

    def _engines(self, m: Module, e, op, mid) -> None:
        """``mid`` into the command's engine (the others see no valid)."""
        ready = 0
        for o in STREAM_OPCODES:
            engine, is_o = self._engine(e, o), getattr(op, o.name.lower())
            m.d.comb += engine.i.valid.eq(mid.valid & is_o)
            ready = ready | (is_o & engine.i.ready)
        m.d.comb += mid.ready.eq(ready)
        for lanes in (e.add, e.gelu):
            m.d.comb += [lanes.i.payload.x.eq(mid.x), lanes.i.payload.tag.entry.eq(mid.rest.entry),
                         lanes.i.payload.tag.lanes.eq(mid.rest.lanes)]
        m.d.comb += e.add.i.payload.b.eq(mid.rest.b)
        for row in (e.softmax, e.layernorm):
            p = row.i.payload
            m.d.comb += [p.data.eq(mid.x), p.b.eq(mid.rest.b), p.lanes.eq(mid.rest.lanes),
                         p.last.eq(mid.rest.last), p.tag.eq(mid.rest.entry)]
        m.d.comb += [e.layernorm.i.payload.gamma.eq(mid.rest.gamma),
                     e.layernorm.i.payload.beta.eq(mid.rest.beta)]

    def _writes(self, m: Module, e) -> Value:
        """The write register behind the engines' outputs (always ready: one engine runs
        at a time and the write port is the unit's). Returns the write enable."""
        L, a = self._lanes, self._config.act_bits
        en, addr = Signal(), Signal(len(self.act_wr.addr))
        row = Signal(data.ArrayLayout(signed(a), L), reset_less=True)
        sources = []
        for lanes in (e.add, e.gelu):
            o = lanes.o
            y = Cat(Mux(o.payload.tag.lanes[n], o.payload.y[n], 0) for n in range(L))
            sources.append((o.valid, o.payload.tag.entry, y))
        for engine in (e.softmax, e.layernorm):
            o = engine.o
            sources.append((o.valid, o.payload.tag, Value.cast(o.payload.data)))
        valid_any = Cat(v for v, _, _ in sources).any()
        sel_addr, sel_row = 0, 0
        for valid, entry, y in sources:
            sel_addr = Mux(valid, entry, sel_addr)
            sel_row = Mux(valid, y, sel_row)
        for engine in (e.add, e.gelu, e.softmax, e.layernorm):
            m.d.comb += engine.o.ready.eq(1)
        m.d.sync += [en.eq(valid_any), addr.eq(sel_addr), row.eq(sel_row)]
        m.d.comb += [self.act_wr.en.eq(en), self.act_wr.addr.eq(addr), self.act_wr.data.eq(row)]
        return en
