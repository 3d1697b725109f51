"""Load and store units: 2-D strided tiles between the memory port and the buffers."""

from amaranth import *
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .buffers import _addr_width
from .config import AcceleratorConfig
from .output_stage import OutputStage

__all__ = ["LoadCmd", "StoreCmd", "LoadUnit", "StoreUnit"]

_ADDR_BITS = 34  # byte addresses up to mem_bytes (<= 2**32) plus carry room


def LoadCmd() -> data.StructLayout:
    """A decoded LOAD as the decoder hands it to the load unit."""
    return data.StructLayout({
        "target": isa.LoadTarget,
        "buf_addr": unsigned(16),
        "n_rows": unsigned(16),
        "row_bytes": unsigned(16),
        "mem_addr": unsigned(32),
        "mem_stride": unsigned(24),
    })


def StoreCmd() -> data.StructLayout:
    """A decoded STORE as the decoder hands it to the store unit."""
    return data.StructLayout({
        "raw": unsigned(1),
        "acc_addr": unsigned(16),
        "n_rows": unsigned(16),
        "n_cols": unsigned(8),
        "param_addr": unsigned(16),
        "mem_addr": unsigned(32),
        "mem_stride": unsigned(24),
    })


class LoadUnit(wiring.Component):
    """Copies a strided tile from memory into the activation, weight or parameter buffer.

    Row *i* is ``row_bytes`` bytes at byte address ``mem_addr + i * mem_stride`` (any
    alignment); it becomes entry ``buf_addr + i`` with the bytes past ``row_bytes``
    zero-filled. A request walker issues one word read per cycle while the port accepts;
    a response walker, stepping through the same sequence, rotates each returned word by
    the row's byte offset and merges its bytes into the entry being assembled, which is
    written to the buffer in the cycle its last word arrives. Reads stay outstanding as
    long as the memory likes (``mem_resp.ready`` is always high).
    """

    def __init__(self, config: AcceleratorConfig):
        self._config = config
        c = config
        super().__init__({
            "cmd": In(stream.Signature(LoadCmd())),
            "mem_req": Out(stream.Signature(isa.mem_request_layout(c))),
            "mem_resp": In(stream.Signature(8 * c.mem_width)),
            "act_wr": In(memory.WritePort.Signature(
                addr_width=_addr_width(c.act_depth), shape=data.ArrayLayout(signed(8), c.rows))),
            "wgt_wr": In(memory.WritePort.Signature(
                addr_width=_addr_width(c.wgt_depth), shape=data.ArrayLayout(signed(8), c.cols))),
            "param_wr": In(memory.WritePort.Signature(
                addr_width=_addr_width(c.param_depth),
                shape=data.ArrayLayout(isa.OutputParams, c.cols))),
            "busy": Out(1),
            "stalled": Out(1),  # wants to issue a read the memory does not accept
        })

    def elaborate(self, platform):
        m = Module()
        W, lb = self._config.mem_width, self._config.mem_lane_bits
        n_chunks = -(-self._config.max_entry_bytes // W)
        E = n_chunks * W

        cmd = Signal(LoadCmd())

        # Request walker.
        rq_active = Signal()
        rq_row = Signal(16)
        rq_addr = Signal(_ADDR_BITS)  # byte address of the current row
        rq_word = Signal(_ADDR_BITS)
        rq_last_word = Signal(_ADDR_BITS)
        rq_next_addr = Signal(_ADDR_BITS)

        # Response walker.
        rs_active = Signal()
        rs_row = Signal(16)
        rs_addr = Signal(_ADDR_BITS)
        rs_beat = Signal(range(n_chunks + 2))
        rs_last_beat = Signal(range(n_chunks + 2))
        rs_next_addr = Signal(_ADDR_BITS)
        rs_off = Signal(max(1, lb))
        entry = Signal(8 * E)
        entry_next = Signal(8 * E)
        row_done = Signal()

        def last_word(addr, row_bytes):
            return (addr + row_bytes - 1) >> lb

        def last_beat(addr, row_bytes):
            return ((addr[:lb] if lb else 0) + row_bytes - 1) >> lb

        m.d.comb += [
            self.cmd.ready.eq(~rq_active & ~rs_active),
            self.busy.eq(rq_active | rs_active),

            rq_next_addr.eq(rq_addr + cmd.mem_stride),
            self.mem_req.valid.eq(rq_active),
            self.mem_req.payload.addr.eq(rq_word),
            self.mem_req.payload.write.eq(0),
            self.stalled.eq(self.mem_req.valid & ~self.mem_req.ready),

            self.mem_resp.ready.eq(1),
            rs_next_addr.eq(rs_addr + cmd.mem_stride),
            rs_off.eq(rs_addr[:lb] if lb else 0),
            row_done.eq(self.mem_resp.valid & (rs_beat == rs_last_beat)),
        ]

        # Rotate the returned word so that lane i holds byte (i + off) mod W of the word; that
        # byte belongs to chunk rs_beat of the row if i < W - off, else to chunk rs_beat - 1
        # (it was the tail of the previous word's row bytes).
        beat = self.mem_resp.payload
        rot = Signal(8 * W)
        m.d.comb += rot.eq(Cat(beat, beat).bit_select(rs_off * 8, 8 * W))
        for q in range(E):
            k, i = divmod(q, W)
            low_lane = (rs_off + i) < W
            mine = Mux(low_lane, rs_beat == k, rs_beat == k + 1) & (q < cmd.row_bytes)
            kept = Mux(rs_beat == 0, 0, entry[8 * q:8 * q + 8])
            m.d.comb += entry_next[8 * q:8 * q + 8].eq(Mux(mine, rot[8 * i:8 * i + 8], kept))

        buf_addr = cmd.buf_addr + rs_row
        for port, target in ((self.act_wr, isa.LoadTarget.ACT),
                             (self.wgt_wr, isa.LoadTarget.WGT),
                             (self.param_wr, isa.LoadTarget.PARAM)):
            m.d.comb += [
                port.addr.eq(buf_addr),
                port.data.eq(entry_next[:len(port.data.as_value())]),
                port.en.eq(row_done & (cmd.target == target)),
            ]

        with m.If(self.cmd.valid & self.cmd.ready):
            p = self.cmd.payload
            m.d.sync += [
                cmd.eq(p),
                rq_active.eq(1), rq_row.eq(0), rq_addr.eq(p.mem_addr),
                rq_word.eq(p.mem_addr >> lb), rq_last_word.eq(last_word(p.mem_addr, p.row_bytes)),
                rs_active.eq(1), rs_row.eq(0), rs_addr.eq(p.mem_addr), rs_beat.eq(0),
                rs_last_beat.eq(last_beat(p.mem_addr, p.row_bytes)),
            ]

        with m.If(self.mem_req.valid & self.mem_req.ready):
            with m.If(rq_word == rq_last_word):
                with m.If(rq_row == cmd.n_rows - 1):
                    m.d.sync += rq_active.eq(0)
                m.d.sync += [
                    rq_row.eq(rq_row + 1), rq_addr.eq(rq_next_addr),
                    rq_word.eq(rq_next_addr >> lb),
                    rq_last_word.eq(last_word(rq_next_addr, cmd.row_bytes)),
                ]
            with m.Else():
                m.d.sync += rq_word.eq(rq_word + 1)

        with m.If(self.mem_resp.valid):
            m.d.sync += entry.eq(entry_next)
            with m.If(row_done):
                with m.If(rs_row == cmd.n_rows - 1):
                    m.d.sync += rs_active.eq(0)
                m.d.sync += [
                    rs_row.eq(rs_row + 1), rs_addr.eq(rs_next_addr), rs_beat.eq(0),
                    rs_last_beat.eq(last_beat(rs_next_addr, cmd.row_bytes)),
                ]
            with m.Else():
                m.d.sync += rs_beat.eq(rs_beat + 1)

        return m


class StoreUnit(wiring.Component):
    """Writes accumulator rows to memory, through the output stage or as raw int32.

    A reader reads the parameter entry once, then one accumulator row per cycle into the
    :class:`OutputStage`; finished rows wait in a small FIFO, and the reader only issues a
    row when the FIFO is sure to have room for it (credits), so memory backpressure never has
    to stall the output-stage pipeline. A writer takes each row, shifts it to the row's byte
    offset in memory and issues masked word writes, one per cycle while the port accepts.
    """

    def __init__(self, config: AcceleratorConfig):
        self._config = config
        c = config
        self.output_stage = OutputStage(c, data.ArrayLayout(signed(32), c.cols))
        super().__init__({
            "cmd": In(stream.Signature(StoreCmd())),
            "acc_rd": In(memory.ReadPort.Signature(
                addr_width=_addr_width(c.acc_depth), shape=data.ArrayLayout(signed(32), c.cols))),
            "param_rd": In(memory.ReadPort.Signature(
                addr_width=_addr_width(c.param_depth),
                shape=data.ArrayLayout(isa.OutputParams, c.cols))),
            "mem_req": Out(stream.Signature(isa.mem_request_layout(c))),
            "busy": Out(1),
            "stalled": Out(1),
        })

    @property
    def fifo_depth(self) -> int:
        """Rows that can be between the accumulator read and the writer at once: enough to
        cover the read and output-stage latency, so a row can be read every cycle."""
        return self.output_stage.latency + 3

    def elaborate(self, platform):
        m = Module()
        cols, W, lb = self._config.cols, self._config.mem_width, self._config.mem_lane_bits
        row_bytes_max = 4 * cols
        n_chunks = -(-row_bytes_max // W)

        m.submodules.output_stage = ostage = self.output_stage
        m.submodules.fifo = rows_fifo = fifo.SyncFIFOBuffered(width=8 * row_bytes_max,
                                                              depth=self.fifo_depth)

        cmd = Signal(StoreCmd())
        params = Signal(data.ArrayLayout(isa.OutputParams, cols))

        # Reader.
        rd_active = Signal()
        rd_first = Signal()  # first cycle after accept: parameter entry on param_rd.data
        rd_count = Signal(16)
        credits = Signal(range(self.fifo_depth + 1), init=self.fifo_depth)
        acc_read = Signal()
        acc_valid = Signal()

        # Writer.
        wr_active = Signal()
        wr_rows = Signal(16)        # rows completely written
        wr_next_addr = Signal(_ADDR_BITS)
        wr_addr = Signal(_ADDR_BITS)
        wr_beat = Signal(range(n_chunks + 2))
        wr_last_beat = Signal(range(n_chunks + 2))
        wr_len = Signal(range(row_bytes_max + 1))
        rest = Signal(8 * n_chunks * W)  # row bytes not yet written, chunk wr_beat first
        prev = Signal(8 * W)             # the previous chunk (its tail may belong here)
        beat_done = Signal()
        row_end = Signal()
        pop = Signal()

        m.d.comb += [
            self.cmd.ready.eq(~self.busy),
            self.busy.eq(rd_active | wr_active | rows_fifo.r_rdy | (wr_rows != cmd.n_rows)),

            acc_read.eq(rd_active & ~rd_first & (credits != 0)),
            self.acc_rd.en.eq(acc_read),
            self.acc_rd.addr.eq(cmd.acc_addr + rd_count),
            self.param_rd.en.eq(self.cmd.valid & self.cmd.ready),
            self.param_rd.addr.eq(self.cmd.payload.param_addr),

            ostage.i_valid.eq(acc_valid),
            ostage.i_acc.eq(self.acc_rd.data),
            ostage.i_params.eq(params),
            ostage.i_tag.eq(self.acc_rd.data),

            rows_fifo.w_en.eq(ostage.o_valid),
            rows_fifo.w_data.eq(Mux(cmd.raw, ostage.o_tag.as_value(), ostage.o_data.as_value())),
        ]
        m.d.sync += acc_valid.eq(acc_read)
        m.d.sync += credits.eq(credits - acc_read + pop)

        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [cmd.eq(self.cmd.payload), rd_active.eq(1), rd_first.eq(1),
                         rd_count.eq(0), wr_rows.eq(0),
                         wr_next_addr.eq(self.cmd.payload.mem_addr)]
        with m.If(rd_first):
            m.d.sync += [params.eq(self.param_rd.data), rd_first.eq(0)]
        with m.If(acc_read):
            m.d.sync += rd_count.eq(rd_count + 1)
            with m.If(rd_count == cmd.n_rows - 1):
                m.d.sync += rd_active.eq(0)

        # Writer: lane b of beat j carries row byte j * W + b - off.
        off = Signal(max(1, lb))
        window_start = Signal(range(W + 1))
        window = Signal(16 * W)
        lane_byte = [Signal(signed(_ADDR_BITS), name=f"lane_byte_{b}") for b in range(W)]
        m.d.comb += [
            off.eq(wr_addr[:lb] if lb else 0),
            window_start.eq(W - off),
            window.eq(Cat(prev, rest[:8 * W])),
            self.mem_req.valid.eq(wr_active),
            self.mem_req.payload.addr.eq((wr_addr >> lb) + wr_beat),
            self.mem_req.payload.write.eq(1),
            self.mem_req.payload.data.eq(window.bit_select(window_start * 8, 8 * W)),
            self.stalled.eq(self.mem_req.valid & ~self.mem_req.ready),
            beat_done.eq(self.mem_req.valid & self.mem_req.ready),
            row_end.eq(beat_done & (wr_beat == wr_last_beat)),
            pop.eq(rows_fifo.r_rdy & (~wr_active | row_end)),
            rows_fifo.r_en.eq(pop),
        ]
        for b in range(W):
            m.d.comb += [
                lane_byte[b].eq(wr_beat * W + b - off),
                self.mem_req.payload.mask[b].eq((lane_byte[b] >= 0) & (lane_byte[b] < wr_len)),
            ]

        row_len = Mux(cmd.raw, cmd.n_cols * 4, cmd.n_cols)
        with m.If(beat_done):
            m.d.sync += [wr_beat.eq(wr_beat + 1), prev.eq(rest[:8 * W]),
                         rest.eq(rest >> (8 * W))]
        with m.If(row_end):
            m.d.sync += [wr_active.eq(0), wr_rows.eq(wr_rows + 1)]
        with m.If(pop):
            next_off = wr_next_addr[:lb] if lb else 0
            m.d.sync += [
                wr_active.eq(1), wr_addr.eq(wr_next_addr),
                wr_next_addr.eq(wr_next_addr + cmd.mem_stride),
                wr_beat.eq(0), wr_len.eq(row_len),
                wr_last_beat.eq((next_off + row_len - 1) >> lb),
                rest.eq(rows_fifo.r_data), prev.eq(0),
            ]

        return m
