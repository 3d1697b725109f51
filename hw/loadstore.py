"""Load and store units: 2-D strided tiles between the memory port and the buffers."""

from types import SimpleNamespace

from amaranth import *
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .buffers import _addr_width
from .config import AcceleratorConfig
from .delay import delay
from .interfaces import BufferReadsSignature, UnitActivitySignature
from .mult import MultiplierTarget
from .output_stage import OutputStage

__all__ = ["LoadCmd", "StoreCmd", "LoadUnit", "StoreUnit"]

_ADDR_BITS = 34  # byte addresses up to mem_bytes (<= 2**32) plus carry room


def _at_least(value: Value, n: int) -> Value:
    """``Cat(value >= i for i in range(n))`` as equality decoding (LUTs), not ``n`` carry-chain
    comparators (what constant comparisons turn into on FPGAs with carry chains)."""
    eq = [value == j for j in range(n)]
    return Cat(C(1, 1) if i == 0 else ~Cat(*eq[:i]).any() for i in range(n))


def _lane(addr: Value, lb: int) -> Value:
    """Byte lane of a byte address (``lb`` bits; a constant 0 when the port is one byte)."""
    return addr[:lb] if lb else C(0, 1)


def LoadCmd() -> data.StructLayout:
    """A decoded LOAD as the decoder hands it to the load unit: the LOAD fields."""
    return isa.layout_subset(isa.LoadInstr, "target", "buf_addr", "n_rows", "row_bytes",
                             "mem_addr", "mem_stride")


def StoreCmd() -> data.StructLayout:
    """A decoded STORE as the decoder hands it to the store unit: ``raw`` (mode is RAW) and
    the STORE fields."""
    fields = isa.layout_subset(isa.StoreInstr, "acc_addr", "n_rows", "n_cols", "param_addr",
                               "mem_addr", "mem_stride")
    return data.StructLayout({"raw": unsigned(1), **{name: f.shape for name, f in fields}})


class LoadUnit(wiring.Component):
    """Copies a strided tile from memory into the activation, weight or parameter buffer.

    Row *i* is ``row_bytes`` bytes at byte address ``mem_addr + i * mem_stride`` (any
    alignment); it becomes entry ``buf_addr + i`` with the bytes past ``row_bytes``
    zero-filled. A request walker issues one word read per cycle while the port accepts; a
    response walker, stepping through the same sequence of rows, tags each returned word with
    its row offset and beat number; the word is rotated by the offset, its bytes merged into
    the entry being assembled, and the entry written to the buffer. Reads stay outstanding as
    long as the memory likes (``mem_resp.ready`` is always high).

    Contract (the decoder checks all of it before it issues a LOAD): ``1 <= n_rows``,
    ``buf_addr + n_rows <= depth`` of the target buffer, ``1 <= row_bytes <=`` the target's
    entry bytes, and the whole strided extent lies below ``mem_bytes``. Addresses are
    therefore computed modulo ``mem_bytes`` (narrower than the command fields).

    Timing: a command is taken one cycle after ``cmd.valid & cmd.ready`` (set-up cycle), the
    first read is issued the cycle after that; a returned word is written into the entry
    :attr:`resp_latency` cycles after it arrives, and a row is written to its buffer one
    cycle after its last word was merged. ``busy`` (and ``~cmd.ready``) covers all of it, up
    to and including the cycle of the last buffer write.
    """

    #: Cycles from a word on ``mem_resp`` to the buffer write it completes (last word of a
    #: row): input register, rotate, merge into the entry, write.
    resp_latency = 3

    def __init__(self, config: AcceleratorConfig):
        self._config = config
        c = config
        super().__init__({
            "cmd": In(stream.Signature(LoadCmd())),
            "mem_req": Out(stream.Signature(isa.mem_request_layout(c))),
            "mem_resp": In(stream.Signature(8 * c.mem_width)),
            "act_wr": In(memory.WritePort.Signature(
                addr_width=c.act_addr_width,
                shape=data.ArrayLayout(signed(c.act_bits), c.rows))),
            "wgt_wr": In(memory.WritePort.Signature(
                addr_width=c.wgt_addr_width, shape=data.ArrayLayout(signed(8), c.cols))),
            "param_wr": In(memory.WritePort.Signature(
                addr_width=c.param_addr_width,
                shape=data.ArrayLayout(isa.OutputParams, c.cols))),
            # stalled: wants to issue a read the memory does not accept
            "activity": Out(UnitActivitySignature()),
        })

    def elaborate(self, platform):
        m = Module()
        g = _LoadGeometry(self._config)
        busy = Signal()
        start = Signal()                         # set-up cycle after a command was taken
        m.d.comb += [self.activity.busy.eq(busy), self.cmd.ready.eq(~busy)]
        m.d.sync += start.eq(self.cmd.valid & self.cmd.ready)

        cmd = self._command(m, g, ~busy)
        in_row = self._in_row(m, g, cmd)
        rq_active = self._request_walker(m, g, cmd, ~busy, start)

        # ---- stage 1: register the returned word ---------------------------------------
        s1_valid = Signal()
        s1_data = Signal(8 * g.W)
        m.d.comb += self.mem_resp.ready.eq(1)
        m.d.sync += [s1_valid.eq(self.mem_resp.valid), s1_data.eq(self.mem_resp.payload)]

        rs = self._response_walker(m, g, cmd, ~busy, start, s1_valid)
        s2 = self._rotate(m, g, rs, s1_valid, s1_data)
        entry = self._merge(m, g, in_row, s2)
        wr_en = self._write(m, cmd, s2, entry)
        # Busy until the last write: the walkers, then the last word in stage 2, then the
        # write itself (stage 1 is covered by rs.active).
        m.d.comb += busy.eq(start | rq_active | rs.active | s2.last | wr_en)
        return m

    def _command(self, m: Module, g: "_LoadGeometry", idle: Value) -> SimpleNamespace:
        """The command registers.

        While idle they (and the walkers' start values) follow the payload every cycle, so
        the (deep) handshake from the decoder only sets ``start`` and never enables a wide
        register bank. In the set-up cycle (``start``) both walkers advance to the first row
        exactly as they advance from one row to the next."""
        p = self.cmd.payload
        cmd = SimpleNamespace(
            target=Signal(isa.LoadTarget, name="c_target"),
            rbm1=Signal(range(max(2, g.E)), name="c_rbm1"),      # row_bytes - 1
            stride=Signal(g.A, name="c_stride"),
            narrow=Signal(name="c_narrow"),     # row_bytes <= W: (c_rbm1 >> lb) == 0
        )
        # A copy of c_rbm1 for the in_row decode, beside it (c_rbm1 also feeds both walkers).
        cmd.rbm1_dec = Signal.like(cmd.rbm1, name="c_rbm1_replica")
        rbm1 = (p.row_bytes - 1)[:len(cmd.rbm1)]
        with m.If(idle):
            m.d.sync += [cmd.target.eq(p.target), cmd.rbm1.eq(rbm1), cmd.rbm1_dec.eq(rbm1),
                         cmd.narrow.eq((rbm1 >> g.lb) == 0), cmd.stride.eq(p.mem_stride)]
        return cmd

    def _in_row(self, m: Module, g: "_LoadGeometry", cmd: SimpleNamespace) -> Signal:
        """Bytes of the entry inside the row (the rest is zero-filled): fixed per command.

        Decoded as chunk x lane (q <= rbm1 iff chunk < hi, or chunk == hi and lane <= lo):
        E separate ``rbm1 >= q`` comparisons would each become a carry chain. The decode is
        two register stages that follow the command's copy of ``rbm1`` every cycle, with no
        enable: it is stable from the set-up cycle on, and the first word reaches the merge
        (stage 3) no earlier than three cycles after ``start``."""
        W, n_chunks = g.W, g.n_chunks
        in_row = Signal(g.E)
        hi, lo = cmd.rbm1_dec >> g.lb, g.lane(cmd.rbm1_dec)
        hi_gt = Signal(n_chunks, name="in_row_hi_gt")   # chunk k lies wholly inside the row
        hi_eq = Signal(n_chunks, name="in_row_hi_eq")   # chunk k holds the row's last byte
        lo_ge = Signal(W, name="in_row_lo_ge")          # lane i <= the last byte's lane
        m.d.sync += [
            hi_gt.eq(_at_least(hi, n_chunks + 1)[1:]),
            hi_eq.eq(Cat(hi == k for k in range(n_chunks))),
            lo_ge.eq(_at_least(lo, W)),
            in_row.eq(Cat(hi_gt[q // W] | (hi_eq[q // W] & lo_ge[q % W]) for q in range(g.E))),
        ]
        return in_row

    def _request_walker(self, m: Module, g: "_LoadGeometry", cmd: SimpleNamespace,
                        idle: Value, start: Value) -> Signal:
        """One word read per accepted cycle; returns its ``active`` flag.

        Per row only ``rq_next + stride`` (one carry chain) and a small beat count are
        computed; the word address of the row's next beat is an incrementer."""
        c, p, lb = self._config, self.cmd.payload, g.lb
        req = self.mem_req
        rq_active = Signal()
        rq_word = Signal(c.mem_addr_width)       # word address of the read on the port
        rq_left = Signal(range(g.n_chunks + 1))  # reads of this row after the current one
        rq_rows = Signal(range(g.depth + 1))     # rows not yet fully requested
        rq_next = Signal(g.A)                    # byte address of the next row
        m.d.comb += [
            req.valid.eq(rq_active),
            req.payload.addr.eq(rq_word),
            req.payload.write.eq(0),
            self.activity.stalled.eq(req.valid & ~req.ready),
        ]
        rq_at_last = Signal()                    # rq_left == 0, a register (see rs_at_last)
        rq_row_end = req.valid & req.ready & rq_at_last
        with m.If(idle):
            m.d.sync += [rq_next.eq(p.mem_addr), rq_rows.eq(p.n_rows)]
        with m.If(start | rq_row_end):
            m.d.sync += [rq_word.eq(rq_next >> lb), rq_left.eq(g.last_beat(cmd, g.lane(rq_next))),
                         rq_at_last.eq(g.single_beat(cmd, g.lane(rq_next))),
                         rq_next.eq(rq_next + cmd.stride)]
        with m.Elif(req.valid & req.ready):
            m.d.sync += [rq_word.eq(rq_word + 1), rq_left.eq(rq_left - 1),
                         rq_at_last.eq(rq_left == 1)]
        with m.If(start):
            m.d.sync += rq_active.eq(1)
        with m.If(rq_row_end):
            m.d.sync += rq_rows.eq(rq_rows - 1)
            with m.If(rq_rows == 1):
                m.d.sync += rq_active.eq(0)
        return rq_active

    def _response_walker(self, m: Module, g: "_LoadGeometry", cmd: SimpleNamespace,
                         idle: Value, start: Value, s1_valid: Value) -> SimpleNamespace:
        """Describes the word in stage 1: its row's lane offset (lb-bit arithmetic, no
        addresses), its beat number and its buffer entry."""
        p, lb, n_chunks = self.cmd.payload, g.lb, g.n_chunks
        rs = SimpleNamespace(
            active=Signal(name="rs_active"),
            off=Signal(max(1, lb), name="rs_off"),       # lane offset of the current row
            # A copy of it for each lane of the rotator (stage 2), so that no one register
            # drives the selects of all 8W bits' muxes.
            off_lane=[Signal(max(1, lb), name=f"rs_off_replica{i}") for i in range(g.W)],
            beat=Signal(range(n_chunks + 1), name="rs_beat"),
            buf=Signal(_addr_width(g.depth), name="rs_buf"),  # buffer entry of the row
        )
        rs_off_next = Signal(max(1, lb))         # lane offset of the next row
        rs_left = Signal(range(n_chunks + 1))    # words of the row after the current one
        rs_rows = Signal(range(g.depth + 1))     # rows not yet complete
        # rs_left == 0, as a register, so no compare sits in front of the clock enables of
        # the walker's registers (rs_left counts down beside rs_beat so that its next value
        # is a compare with a constant).
        rs_at_last = Signal()
        rs.row_end = s1_valid & rs_at_last
        with m.If(idle):
            m.d.sync += [rs_off_next.eq(g.lane(p.mem_addr)), rs_rows.eq(p.n_rows),
                         rs.buf.eq(p.buf_addr)]
        with m.If(start | rs.row_end):
            m.d.sync += [rs.beat.eq(0), rs.off.eq(rs_off_next),
                         *[copy.eq(rs_off_next) for copy in rs.off_lane],
                         rs_left.eq(g.last_beat(cmd, rs_off_next)),
                         rs_at_last.eq(g.single_beat(cmd, rs_off_next)),
                         rs_off_next.eq(rs_off_next + g.lane(cmd.stride))]
        with m.Elif(s1_valid):
            m.d.sync += [rs.beat.eq(rs.beat + 1), rs_left.eq(rs_left - 1),
                         rs_at_last.eq(rs_left == 1)]
        with m.If(start):
            m.d.sync += rs.active.eq(1)
        with m.If(rs.row_end):
            m.d.sync += [rs_rows.eq(rs_rows - 1), rs.buf.eq(rs.buf + 1)]
            with m.If(rs_rows == 1):
                m.d.sync += rs.active.eq(0)
        return rs

    def _rotate(self, m: Module, g: "_LoadGeometry", rs: SimpleNamespace, s1_valid: Value,
                s1_data: Value) -> SimpleNamespace:
        """Stage 2: rotate the word, decode where its bytes go.

        After rotating, lane i holds byte (i + off) mod W of the word: row byte
        beat * W + i (chunk ``beat``) if i + off < W, else the tail of chunk ``beat - 1``.
        The decode is registered so that the merge is one LUT per entry byte from registers
        with small fanout (sel: 2W bytes, low: n_chunks bytes)."""
        W, lb, n_chunks = g.W, g.lb, g.n_chunks
        s2 = SimpleNamespace(
            rot=Signal(8 * W, name="s2_rot"),
            low=Signal(W, name="s2_low"),                # lane i belongs to chunk `beat`
            sel=Signal(n_chunks + 1, name="s2_sel"),     # one-hot beat number (0: no word)
            last=Signal(name="s2_last"),                 # the word completes its row
            buf=Signal(_addr_width(g.depth), name="s2_buf"),
        )
        off_ge = _at_least(rs.off, W + 1)
        lanes = []
        for i in range(W):                       # lane i of a rotator by that lane's copy
            rot = s1_data
            for b in range(lb):                  # log rotator: one 2:1 mux level per bit
                k = 8 << b
                rot = Mux(rs.off_lane[i][b], Cat(rot[k:], rot[:k]), rot)
            lanes.append(rot[8 * i:8 * i + 8])
        m.d.sync += [
            s2.rot.eq(Cat(*lanes)),
            s2.low.eq(Cat(~off_ge[W - i] for i in range(W))),  # i + off < W
            s2.sel.eq(Cat((s1_valid & (rs.beat == k)) for k in range(n_chunks + 1))),
            s2.last.eq(rs.row_end),
            s2.buf.eq(rs.buf),
        ]
        return s2

    def _merge(self, m: Module, g: "_LoadGeometry", in_row: Value,
               s2: SimpleNamespace) -> Signal:
        """Stage 3: merge the word into the entry.

        Each entry byte has its own enable and synchronous clear (past the row: zero), so
        the entry maps to flip-flop CE/LSR pins with no per-bit logic."""
        entry = Signal(8 * g.E)
        for q in range(g.E):
            k, i = divmod(q, g.W)
            take = Mux(s2.low[i], s2.sel[k], s2.sel[k + 1])
            with m.If(~in_row[q]):
                m.d.sync += entry[8 * q:8 * q + 8].eq(0)
            with m.Elif(take):
                m.d.sync += entry[8 * q:8 * q + 8].eq(s2.rot[8 * i:8 * i + 8])
        return entry

    def _write(self, m: Module, cmd: SimpleNamespace, s2: SimpleNamespace,
               entry: Value) -> Signal:
        """Stage 4: write the completed entry; returns the write's (any buffer) enable.

        Each buffer gets its own enable and address registers, the enable decoded from the
        target a cycle early: both fan out to one buffer's block RAMs only."""
        wr_en = Signal()
        m.d.sync += wr_en.eq(s2.last)
        for port, target in ((self.act_wr, isa.LoadTarget.ACT),
                             (self.wgt_wr, isa.LoadTarget.WGT),
                             (self.param_wr, isa.LoadTarget.PARAM)):
            name = target.name.lower()
            en = Signal(name=f"{name}_wr_en")
            addr = Signal(len(port.addr), name=f"{name}_wr_addr")
            m.d.sync += [en.eq(s2.last & (cmd.target == target)), addr.eq(s2.buf)]
            m.d.comb += [
                port.addr.eq(addr),
                port.data.eq(entry[:len(port.data.as_value())]),
                port.en.eq(en),
            ]
        return wr_en


class _LoadGeometry:
    """Sizes of the load unit's datapath, and the row arithmetic both walkers share."""

    def __init__(self, c: AcceleratorConfig):
        self.W, self.lb = c.mem_width, c.mem_lane_bits
        self.n_chunks = -(-c.max_entry_bytes // self.W)
        self.E = self.n_chunks * self.W          # entry bytes assembled (>= every target's)
        self.A = self.lb + c.mem_addr_width      # byte address bits (addresses < mem_bytes)
        self.depth = max(c.act_depth, c.wgt_depth, c.param_depth)

    def lane(self, addr: Value) -> Value:
        return _lane(addr, self.lb)

    def last_beat(self, cmd: SimpleNamespace, off: Value) -> Value:
        """Beats of a row at lane offset ``off``, minus 1."""
        return (off + cmd.rbm1) >> self.lb

    def single_beat(self, cmd: SimpleNamespace, off: Value) -> Value:
        """``last_beat(off) == 0``: off < W, so off + rbm1 < W needs rbm1 < W, and then only
        the carry out of lb bits (a few LUTs, not an adder and a zero test in front of the
        walkers' at-last registers)."""
        if self.lb == 0:
            return cmd.narrow
        return cmd.narrow & ~(off[:self.lb] + cmd.rbm1[:self.lb])[self.lb]


class _RowFIFO:
    """The store unit's row FIFO: a buffered synchronous FIFO (like
    :class:`~amaranth.lib.fifo.SyncFIFOBuffered`: storage with a synchronous read port whose
    data register holds the head entry, so it maps to LUT RAM or block RAM) with only the
    control the store unit needs, all of it from registers: ``r_rdy`` and the storage's
    empty / more-than-one flags are flip-flops, and there is no ``w_rdy`` (the unit's credits
    guarantee a write never finds the FIFO full). Timing as SyncFIFOBuffered: an entry written
    into an empty FIFO is on ``r_data`` with ``r_rdy`` two cycles after its ``w_en``.

    Not a submodule: :meth:`add_to` puts the control into the store unit's own module, so
    that synthesis can fold ``r_en`` and the read enable of the head register (the clock
    enable of ``width`` flip-flops) into one function of registers even when the unit's
    submodules keep their hierarchy."""

    def __init__(self, *, width: int, depth: int):
        if depth < 3:
            raise ValueError(f"depth must be at least 3, not {depth}")
        self.width, self.depth = width, depth
        self.w_en = Signal()
        self.w_data = Signal(width)
        self.r_en = Signal()
        self.r_rdy = Signal()
        self.r_data = Signal(width)

    def add_to(self, m: Module, name: str):
        inner = self.depth - 1                   # entries in the storage (+1 on r_data)
        m.submodules[name] = storage = memory.Memory(shape=self.width, depth=inner, init=[])
        w_port = storage.write_port()
        r_port = storage.read_port(domain="sync")
        produce = Signal(range(inner), name=f"{name}_produce")
        consume = Signal(range(inner), name=f"{name}_consume")
        level = Signal(range(inner + 1), name=f"{name}_level")  # entries in the storage
        nonempty = Signal(name=f"{name}_nonempty")               # level >= 1
        many = Signal(name=f"{name}_many")                       # level >= 2
        do_read = Signal(name=f"{name}_do_read")                 # storage -> r_data

        def incr(ptr):
            return Mux(ptr == inner - 1, 0, ptr + 1)

        m.d.comb += [
            w_port.addr.eq(produce),
            w_port.data.eq(self.w_data),
            w_port.en.eq(self.w_en),
            do_read.eq(nonempty & (~self.r_rdy | self.r_en)),
            r_port.addr.eq(consume),
            r_port.en.eq(do_read),
            self.r_data.eq(r_port.data),
        ]
        with m.If(self.w_en):
            m.d.sync += produce.eq(incr(produce))
        with m.If(do_read):
            m.d.sync += consume.eq(incr(consume))
        with m.If(self.w_en & ~do_read):
            m.d.sync += [level.eq(level + 1), nonempty.eq(1), many.eq(nonempty)]
        with m.Elif(do_read & ~self.w_en):
            m.d.sync += [level.eq(level - 1), nonempty.eq(many),
                         many.eq(_at_least(level, 4)[3])]
        with m.If(do_read):
            m.d.sync += self.r_rdy.eq(1)
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)


class StoreUnit(wiring.Component):
    """Writes accumulator rows to memory, through the output stage or as raw int32.

    A reader reads the parameter entry once, then one accumulator row per cycle into the
    :class:`OutputStage` (requantized store) or, for a raw store, straight on (the two kinds
    never share the pipeline: a STORE is only taken while the unit is idle, so the output
    stage carries no copy of the raw row). Finished rows are shifted to their byte offset in
    memory and wait in a small FIFO; the reader only issues a row when the FIFO is sure to
    have room for it (credits), so memory backpressure never has to stall the output-stage
    pipeline. A writer takes each row and issues masked word writes, one per cycle while the
    port accepts.

    Contract (checked by the decoder): ``1 <= n_rows``, ``1 <= n_cols <= cols``, and the
    strided extent lies below ``mem_bytes`` (addresses are computed modulo ``mem_bytes``).
    The write requests come from registers (``mem_req`` is a registered stream output,
    each request one of two slot registers selected by a registered pointer).
    Nothing here depends on the output stage's latency beyond :attr:`fifo_depth`.

    Block-RAM reads land directly in registers: the parameter entry (``param_rd.data``) and
    every accumulator row (``acc_rd.data``) go into reset-less registers with at most one
    clock enable and no logic in front of them (so they can become the RAM's own output
    register), and only from there, through a fabric copy of each (see ``read_latency``),
    into the output stage or the raw path.
    """

    #: Cycles from ``acc_rd.en`` to the row on the output stage's inputs: the synchronous
    #: RAM read, the register the read data lands in (the RAM's own output register on
    #: ECP5), then a fabric copy near the output stage: the accumulator buffer's block RAMs
    #: spread over the whole chip, far from stage 1's 32-bit adder.
    read_latency = 3

    #: Cycles from a row's FIFO write to its credit being usable again: the FIFO's
    #: write-to-``r_rdy`` latency (2), then the registered credit return after the pop (2).
    _fifo_turnaround = 4

    #: Cycles from a finished row (output stage or raw read) to its FIFO write: one register,
    #: from which the row is shifted to its byte offset in memory on the way into the FIFO.
    _shift_latency = 1

    def __init__(self, config: AcceleratorConfig, target: MultiplierTarget | None = None):
        self._config = config
        c = config
        # The target picks the output stage's multipliers (registered DSPs on ECP5).
        # No tag: raw rows bypass the output stage.
        # A 1-bit tag, tied to 0 (Yosys removes it): zero-width signals become [-1:0]
        # vectors in Verilog, which Verilator's lint rejects.
        self.output_stage = OutputStage(c, unsigned(1), target)
        super().__init__({
            "cmd": In(stream.Signature(StoreCmd())),
            "acc_rd": In(memory.ReadPort.Signature(
                addr_width=c.acc_addr_width, shape=data.ArrayLayout(signed(32), c.cols))),
            "param_rd": In(memory.ReadPort.Signature(
                addr_width=c.param_addr_width,
                shape=data.ArrayLayout(isa.OutputParams, c.cols))),
            "mem_req": Out(stream.Signature(isa.mem_request_layout(c))),
            # stalled: wants to issue a write the memory does not accept
            "activity": Out(UnitActivitySignature()),
            # acc: an accumulator row read (one per STORE row); param: the parameter entry
            # read by a REQUANT STORE (one per STORE; a RAW one ignores it)
            "reads": Out(BufferReadsSignature("acc", "param")),
        })

    def row_latency(self, raw: bool) -> int:
        """Cycles from a row's ``acc_rd.en`` to its FIFO write: the read, then (requantized
        rows only) the output stage, then the shift to the row's byte offset."""
        return (self.read_latency + (0 if raw else self.output_stage.latency) +
                self._shift_latency)

    @property
    def fifo_depth(self) -> int:
        """Rows that can be between the accumulator read and the writer at once (the credits):
        one per cycle of the loop from spending a credit (``acc_rd.en``) to getting it back
        after the row left the FIFO, so a row can be read every cycle. The requantized loop
        is the longer one (raw rows skip the output stage)."""
        return max(self.row_latency(raw) for raw in (False, True)) + self._fifo_turnaround

    def elaborate(self, platform):
        m = Module()
        g = _StoreGeometry(self._config)
        m.submodules.output_stage = ostage = self.output_stage
        rows_fifo = _RowFIFO(width=8 * g.n_words * g.W, depth=self.fifo_depth)
        rows_fifo.add_to(m, "rows")

        cmd = Signal(StoreCmd())
        row_lm1 = Signal(range(g.row_bytes_max))  # bytes of a row in memory, minus 1
        pending = Signal(16)                     # rows accepted but not completely written
        pending_nz = Signal()                    # pending != 0 (it is part of busy)
        take_cmd = Signal()
        pop = Signal()                           # the writer pops the FIFO head
        idle = ~self.activity.busy
        rd = self._reader(m, take_cmd, pop)
        m.d.comb += [
            self.activity.busy.eq(rd.active | pending_nz),
            self.cmd.ready.eq(idle),
            take_cmd.eq(self.cmd.valid & self.cmd.ready),
            # Only requantized rows enter the output stage (a raw row inside it could leave it
            # during the next, requantized, STORE); raw rows go from the read register
            # straight into the FIFO.
            ostage.i_valid.eq(rd.acc_valid & ~cmd.raw),
            ostage.i_acc.eq(rd.acc_row),
            ostage.i_params.eq(rd.params),
            self.reads.acc.eq(rd.acc_read),
            self.reads.param.eq(rd.first & ~cmd.raw),
        ]
        # While idle, the command registers (and the walkers' start values) follow the
        # payload every cycle, so that the handshake, which comes from the decoder's issue
        # decision late in the cycle, only sets rd_active, rd_first and pending_nz instead
        # of enabling a hundred-odd flip-flops. (Idle, nothing is in flight.)
        p = self.cmd.payload
        with m.If(idle):
            m.d.sync += [cmd.eq(p), pending.eq(p.n_rows),
                         row_lm1.eq(isa.store_row_bytes(p.n_cols, p.raw, Mux) - 1)]
        with m.If(take_cmd):
            m.d.sync += pending_nz.eq(1)         # n_rows >= 1
        self._shift(m, g, cmd, rd, rows_fifo, idle)
        last_taken = self._writer(m, g, cmd, rows_fifo, take_cmd, row_lm1, pop, idle)
        with m.If(last_taken):
            m.d.sync += [pending.eq(pending - 1), pending_nz.eq(pending != 1)]
        return m

    def _reader(self, m: Module, take_cmd: Value, pop: Value) -> SimpleNamespace:
        """Reads the parameter entry and the accumulator rows, as the FIFO's credits allow.

        Returns ``active``, ``acc_valid`` (a row is in ``acc_row``), ``acc_row``,
        ``params`` (the fabric copy of the parameter entry), ``acc_read`` (a row is read
        this cycle) and ``first`` (the parameter entry is on ``param_rd.data``)."""
        c, cols = self._config, self._config.cols
        p = self.cmd.payload
        # Block-RAM read data registers: nothing but the RAM output in front of them.
        params = Signal(data.ArrayLayout(isa.OutputParams, cols), reset_less=True)
        # A fabric copy of the parameter entry, a cycle behind: the parameter buffer's block
        # RAMs sit far from the output stage's columns, whose stage 1 decodes the shift and
        # the clamp bounds from it. The entry lands in `params` two cycles before the
        # STORE's first row reaches the output stage (a row is only read after `rd_first`,
        # and the read takes `read_latency`), so the extra cycle is free.
        params_q = Signal.like(params, reset_less=True)
        acc_ram = Signal(data.ArrayLayout(signed(32), cols), reset_less=True)
        acc_row = Signal.like(acc_ram, reset_less=True)
        rd_active = Signal()
        rd_first = Signal()  # first cycle after accept: parameter entry on param_rd.data
        rd_left = Signal(16)                     # accumulator rows still to read
        rd_addr = Signal(c.acc_addr_width)
        # Credits as a thermometer code (bit i: more than i credits): "a credit left" is
        # bit 0, a register, and spending or returning one is a shift, with no carry chain
        # between the read decision and the accumulator RAMs' clock enables.
        credits = Signal(self.fifo_depth, init=(1 << self.fifo_depth) - 1)
        acc_read = Signal()                      # a row is read this cycle (registered)
        rd_last = Signal()                       # rd_left == 1
        pop_q = Signal()                         # credit return, one cycle after the pop
        m.d.comb += [
            # The RAMs read whenever they may (acc_read, delayed, says which reads count): their
            # clock enables then come from a register, or are constant, instead of from the
            # handshake and credit logic, which could not reach the 20-30 RAMs of an 8x8
            # design in a cycle. The parameter entry is read at the address the decoder
            # offers; the one read in the cycle a STORE is taken is kept.
            self.acc_rd.en.eq(rd_active),
            self.acc_rd.addr.eq(rd_addr),
            self.param_rd.en.eq(1),
            self.param_rd.addr.eq(p.param_addr),
        ]
        credits_next = Signal.like(credits)
        m.d.comb += credits_next.eq(Mux(acc_read & ~pop_q, credits >> 1,
                                        Mux(pop_q & ~acc_read, Cat(C(1, 1), credits[:-1]),
                                            credits)))
        m.d.sync += [
            acc_ram.eq(self.acc_rd.data),
            acc_row.eq(acc_ram),
            params_q.eq(params),
            pop_q.eq(pop),
            credits.eq(credits_next),
            # `acc_read` is rd_active & ~rd_first & credits[0], computed a cycle ahead so that
            # the read decision is a register: it enables the read pointer and row count. (A
            # STORE is only taken while rd_active is low, and rd_first is high only in the
            # cycle after it is taken, so neither needs a term here.)
            acc_read.eq(rd_active & ~(acc_read & rd_last) & credits_next[0]),
        ]
        with m.If(~self.activity.busy):          # (see elaborate)
            m.d.sync += [rd_left.eq(p.n_rows), rd_last.eq(p.n_rows == 1),
                         rd_addr.eq(p.acc_addr)]
        with m.If(take_cmd):
            m.d.sync += [rd_active.eq(1), rd_first.eq(1)]
        with m.If(rd_first):
            m.d.sync += [params.eq(self.param_rd.data), rd_first.eq(0)]
        with m.If(acc_read):
            m.d.sync += [rd_left.eq(rd_left - 1), rd_addr.eq(rd_addr + 1),
                         rd_last.eq(rd_left == 2)]
            with m.If(rd_last):
                m.d.sync += rd_active.eq(0)
        acc_valid = delay(m, acc_read, self.read_latency, name="acc_valid_{}")
        return SimpleNamespace(active=rd_active, acc_valid=acc_valid, acc_row=acc_row,
                               params=params_q, acc_read=acc_read, first=rd_first)

    def _shift(self, m: Module, g: "_StoreGeometry", cmd: Value, rd: SimpleNamespace,
               rows_fifo: "_RowFIFO", idle: Value) -> None:
        """A finished row, shifted to its byte offset in memory on its way into the FIFO.

        The row is shifted by the offset's low bit on the way into the shift register, by
        the rest on the way into the FIFO, not by the whole byte shift in one place. Only
        the low bytes differ between raw and requantized rows (a requantized row is cols
        bytes; the bytes past it are never written to memory)."""
        cols, lb = g.cols, g.lb
        ostage = self.output_stage
        sh_valid = Signal()
        sh_row = Signal(8 * (g.row_bytes_max + 1), reset_less=True)
        sh_off = Signal(max(1, lb - 1))          # lane of the row's first byte, but bit 0
        w_off = Signal(max(1, lb))               # ... of the next row to finish
        row_done = Signal()
        acc_row = rd.acc_row.as_value()
        m.d.comb += [
            row_done.eq(ostage.o_valid | (rd.acc_valid & cmd.raw)),
            rows_fifo.w_en.eq(sh_valid),
            rows_fifo.w_data.eq(sh_row << Cat(C(0, 4), sh_off) if lb > 1 else sh_row),
        ]
        m.d.sync += [
            sh_valid.eq(row_done),
            sh_row.eq(Cat(Mux(cmd.raw, acc_row[:8 * cols], ostage.o_data.as_value()),
                          acc_row[8 * cols:]) << (Cat(C(0, 3), w_off[0]) if lb else 0)),
            sh_off.eq(w_off[1:] if lb > 1 else 0),
        ]
        with m.If(idle):
            m.d.sync += w_off.eq(g.lane(self.cmd.payload.mem_addr))
        with m.If(row_done):
            m.d.sync += w_off.eq(w_off + g.lane(cmd.mem_stride))

    def _writer(self, m: Module, g: "_StoreGeometry", cmd: Value, rows_fifo: "_RowFIFO",
                take_cmd: Value, row_lm1: Value, pop: Signal, idle: Value) -> Value:
        """Row generator -> two request slots -> memory port; returns "the port takes a
        row's last beat".

        Rows enter the FIFO already shifted up by their byte offset in memory, so beat j of
        a row is simply word j of the FIFO head. The row stays at the FIFO head (its data
        register) while its beats are generated, and is popped (``pop``) with its last
        beat. Everything per row (word address, beat count, first/last lane masks) is
        decoded from registers while the row before finishes (at the pop; for the first row
        in the cycle after the command), so a beat only selects a word and its lanes by
        registered masks.

        Beats wait in two slot registers used in turn (a two-entry FIFO whose entries never
        move): the generator fills slot ``wp`` when it is empty, the port takes slot ``rp``.
        Only the pointers and full flags depend on ``mem_req.ready``; the slots' own enables
        are their empty flags. The step and the pop (and the FIFO read behind it) depend on
        registers only."""
        c, W, lb, n_words = self._config, g.W, g.lb, g.n_words
        start = Signal()                         # cycle after take_cmd: first row's set-up
        g_word = Signal(c.mem_addr_width)        # word address of the next beat
        g_left = Signal(range(n_words + 1))      # beats after the next one
        g_first = Signal()
        g_last = Signal()                        # the next beat is the row's last (g_left == 0)
        g_k = Signal(range(max(2, n_words)))     # word of the FIFO head in the next beat
        g_head = Signal(W)                       # lanes written by the row's first beat
        g_tail = Signal(W)                       # lanes written by the row's last beat
        next_addr = Signal(g.A)                  # byte address of the next row
        o_last = Signal()                        # the request is its row's last beat
        taken = Signal()                         # the port takes the request
        g_step = Signal()
        g_load = Signal()                        # set up the next row
        w_free, beat = self._request_slots(m, g_last, g_step, taken, o_last)
        m.d.comb += [
            taken.eq(self.mem_req.valid & self.mem_req.ready),
            g_step.eq(rows_fifo.r_rdy & w_free),
            pop.eq(g_step & g_last),
            rows_fifo.r_en.eq(pop),
            g_load.eq(start | pop),
        ]
        m.d.sync += start.eq(take_cmd)
        # `stalled` (for the decoder's counter) is registered, a cycle late, so that it
        # shares no LUT with the slots' logic.
        m.d.sync += self.activity.stalled.eq(self.mem_req.valid & ~self.mem_req.ready)

        # The beat the generator produces this cycle (valid with g_step), into a free slot.
        m.d.comb += [
            beat.addr.eq(g_word),
            beat.data.eq(rows_fifo.r_data.word_select(g_k, 8 * W) if n_words > 1
                         else rows_fifo.r_data),
            beat.mask.eq((g_head | ~g_first.replicate(W)) & (g_tail | ~g_last.replicate(W))),
            beat.write.eq(1),
        ]
        with m.If(g_step):
            m.d.sync += [
                g_word.eq(g_word + 1), g_left.eq(g_left - 1), g_last.eq(g_left == 1),
                g_first.eq(0), g_k.eq(g_k + 1),
            ]
        end = Signal(range(W + g.row_bytes_max))  # off + row bytes - 1
        off_ge = _at_least(g.lane(next_addr), W + 1)
        m.d.comb += end.eq(g.lane(next_addr) + row_lm1)
        with m.If(idle):
            m.d.sync += next_addr.eq(self.cmd.payload.mem_addr)
        with m.If(g_load):
            m.d.sync += [
                g_word.eq(next_addr >> lb), g_left.eq(end >> lb),
                g_last.eq((end >> lb) == 0),
                g_first.eq(1), g_k.eq(0),
                g_head.eq(Cat(~off_ge[b + 1] for b in range(W))),   # lane b >= off
                g_tail.eq(_at_least(g.lane(end), W)),                # lane b <= end lane
                next_addr.eq(next_addr + cmd.mem_stride),
            ]
        return taken & o_last

    def _request_slots(self, m: Module, g_last: Value, g_step: Value, taken: Value,
                       o_last: Signal) -> tuple[Signal, Signal]:
        """The two request slots in front of the memory port; returns ``w_free`` (the slot
        the generator fills next is empty, a register) and ``beat``, the request the
        generator offers them."""
        slot = [Signal.like(self.mem_req.payload, reset_less=True, name=f"slot{i}")
                for i in range(2)]
        slot_last = [Signal(name=f"slot{i}_last", reset_less=True) for i in range(2)]
        full = [Signal(name=f"slot{i}_full") for i in range(2)]
        wp = Signal()                            # the slot the generator fills next
        rp = Signal()                            # the slot on the port
        o_valid = Signal()                       # full[rp], as a register
        w_free = Signal(init=1)                  # ~full[wp], as a register
        beat = Signal.like(self.mem_req.payload)
        m.d.comb += [
            self.mem_req.valid.eq(o_valid),
            self.mem_req.payload.eq(Mux(rp, slot[1], slot[0])),
            o_last.eq(Mux(rp, slot_last[1], slot_last[0])),
        ]
        # An empty slot is loaded every cycle (it only counts as full after a step into
        # it), so that its hundred-odd enables are its own empty flag.
        for i in range(2):
            with m.If(~full[i]):
                m.d.sync += [slot[i].eq(beat), slot_last[i].eq(g_last)]
        full_next = [Signal(name=f"slot{i}_full_next") for i in range(2)]
        rp_next, wp_next = Signal(), Signal()
        m.d.comb += [
            rp_next.eq(rp ^ taken),
            wp_next.eq(wp ^ g_step),
            *(full_next[i].eq((full[i] & ~(taken & (rp == i))) | (g_step & (wp == i)))
              for i in range(2)),
        ]
        m.d.sync += [
            rp.eq(rp_next), wp.eq(wp_next), full[0].eq(full_next[0]), full[1].eq(full_next[1]),
            o_valid.eq(Mux(rp_next, full_next[1], full_next[0])),
            w_free.eq(~Mux(wp_next, full_next[1], full_next[0])),
        ]
        return w_free, beat


class _StoreGeometry:
    """Sizes of the store unit's datapath."""

    def __init__(self, c: AcceleratorConfig):
        self.cols, self.W, self.lb = c.cols, c.mem_width, c.mem_lane_bits
        self.row_bytes_max = isa.store_row_bytes(c.cols, True)
        # A row shifted to its byte offset in memory spans up to this many words.
        self.n_words = -(-(self.row_bytes_max + self.W - 1) // self.W)
        self.A = self.lb + c.mem_addr_width      # byte address bits (addresses < mem_bytes)

    def lane(self, addr: Value) -> Value:
        return _lane(addr, self.lb)
