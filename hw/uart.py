"""UART (8N1) receiver and transmitter, and the bridge that lets a host PC drive a Serrano
accelerator over a serial line.

Protocol (also in ``docs/fpga.md``; ``sim/uart_driver.py`` is the host side). The host sends
one command at a time and waits for its reply before sending the next. All multi-byte fields
are little-endian. Every command is answered by zero or more data bytes and then exactly one
reply code (:class:`Reply`).

========  ====  ===========================  ============================================
command   byte  arguments                    reply
========  ====  ===========================  ============================================
INFO      0x01  -                            ``INFO_BYTES`` bytes (:class:`BridgeInfo`), OK
WRITE     0x02  addr u32, count u32, data    OK after ``count`` memory words (``count *
                                             mem_width`` data bytes) are written at word
                                             address ``addr``; ERROR (once the line has been
                                             quiet for the timeout) if the range is bad
READ      0x03  addr u32, count u32          ``count * mem_width`` bytes, OK; or ERROR alone
FILL      0x04  addr u32, count u32          OK after ``count`` words from ``addr`` are
                                             zeroed; or ERROR
INSTR     0x05  16 bytes (one 128-bit word)  OK: word queued for the accelerator's
                                             ``instr`` stream; BUSY: the previous word is
                                             still waiting (word dropped, send it again)
STATUS    0x06  -                            ``STATUS_BYTES`` bytes of ``isa.Status``, one
                                             bridge flag byte (:class:`BridgeFlags`), OK
COUNTERS  0x07  -                            ``COUNTER_BYTES`` bytes of ``isa.Counters``, OK
CLEAR     0x08  -                            OK after pulsing the accelerator's ``clear``
                                             (and dropping a waiting word, clearing the
                                             flags); BUSY if the accelerator is busy and not
                                             idle
========  ====  ===========================  ============================================

An unknown command byte is answered with ERROR. If the line goes quiet for ``timeout`` cycles
in the middle of a command, the bridge forgets the command (no reply) and waits for a new one:
a host that lost track waits that long, discards its input and starts again.

Struct replies (status, counters) are the struct's bits packed LSB first, as in Verilog
(``data.Layout.cast(isa.Status)`` gives the offsets), padded to whole bytes.
"""

import enum as py_enum

from amaranth import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig

__all__ = ["UARTRx", "UARTTx", "Bridge", "Command", "Reply", "BridgeFlags", "BridgeInfo",
           "INFO_MAGIC", "PROTOCOL_VERSION", "INFO_BYTES", "STATUS_BYTES", "COUNTER_BYTES",
           "ARG_BYTES", "INSTR_BYTES", "info_bytes", "MIN_DIVISOR"]

MIN_DIVISOR = 4
PROTOCOL_VERSION = 1
INFO_MAGIC = b"SRNO"
ARG_BYTES = 8           # addr u32 + count u32
INSTR_BYTES = isa.INSTR_WIDTH // 8
STATUS_BYTES = (data.Layout.cast(isa.Status).size + 7) // 8
COUNTER_BYTES = (data.Layout.cast(isa.Counters).size + 7) // 8


class Command(enum.Enum, shape=8):
    INFO = 0x01
    WRITE = 0x02
    READ = 0x03
    FILL = 0x04
    INSTR = 0x05
    STATUS = 0x06
    COUNTERS = 0x07
    CLEAR = 0x08


class Reply(enum.Enum, shape=8):
    OK = 0x06     # ASCII ACK
    ERROR = 0x15  # ASCII NAK
    BUSY = 0x16   # ASCII SYN


class BridgeFlags(py_enum.IntFlag):
    """Bits of the flag byte that follows the status in a STATUS reply."""
    INSTR_PENDING = 0x01  # an INSTR word is waiting for the accelerator to accept it
    RX_FRAMING = 0x02     # a byte with a bad stop bit was received (sticky until CLEAR)
    RX_OVERRUN = 0x04     # a byte arrived before the previous one was taken (sticky)


class BridgeInfo(data.Struct):
    """The INFO reply: what the host is talking to."""
    magic: unsigned(32)       # b"SRNO"
    version: unsigned(8)
    rows: unsigned(8)
    cols: unsigned(8)
    mem_width: unsigned(8)
    mem_bytes: unsigned(32)
    act_depth: unsigned(16)
    wgt_depth: unsigned(16)
    acc_depth: unsigned(16)
    param_depth: unsigned(16)
    clk_hz: unsigned(32)
    baud: unsigned(32)


INFO_BYTES = data.Layout.cast(BridgeInfo).size // 8


def info_bytes(config: AcceleratorConfig, clk_hz: int, baud: int) -> bytes:
    """The INFO reply payload of a bridge for ``config`` (also what the host parses)."""
    value = data.Layout.cast(BridgeInfo).const({
        "magic": int.from_bytes(INFO_MAGIC, "little"), "version": PROTOCOL_VERSION,
        "rows": config.rows, "cols": config.cols, "mem_width": config.mem_width,
        "mem_bytes": config.mem_bytes if config.mem_bytes < (1 << 32) else (1 << 32) - 1,
        "act_depth": config.act_depth % (1 << 16), "wgt_depth": config.wgt_depth % (1 << 16),
        "acc_depth": config.acc_depth % (1 << 16),
        "param_depth": config.param_depth % (1 << 16),
        "clk_hz": int(clk_hz), "baud": int(baud),
    }).as_value().value
    return value.to_bytes(INFO_BYTES, "little")


def _checked(obj, check, *args):
    """``check(*args)``; a rejected component is marked so that Amaranth does not also warn
    that it was "created but never used"."""
    try:
        return check(*args)
    except (TypeError, ValueError):
        obj._MustUse__silence = True
        raise


def _check_divisor(divisor) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < MIN_DIVISOR:
        raise ValueError(f"divisor (clock cycles per bit) must be an integer >= {MIN_DIVISOR}, "
                         f"not {divisor!r}")
    return divisor


class UARTRx(wiring.Component):
    """8N1 receiver.

    ``rx`` is synchronized (two flip-flops), a start bit is confirmed at its middle, the
    eight data bits (LSB first) and the stop bit are sampled at theirs. A received byte is
    held on ``data`` until taken; a byte that completes while the previous one is still held
    replaces it and pulses ``overrun``. A byte whose stop bit is 0 is dropped and pulses
    ``framing``.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (``clk_hz // baud``), at least 4.
    """

    rx: In(1, init=1)
    data: Out(stream.Signature(8))
    framing: Out(1)
    overrun: Out(1)

    def __init__(self, divisor: int):
        self._divisor = _checked(self, _check_divisor, divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        sync_rx = Signal(2, init=0b11)
        rx = sync_rx[1]
        timer = Signal(range(div + div // 2 + 1))
        bit = Signal(range(9))
        shreg = Signal(8)

        m.d.sync += sync_rx.eq(Cat(self.rx, sync_rx[0]))
        m.d.sync += [self.framing.eq(0), self.overrun.eq(0)]
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += self.data.valid.eq(0)

        with m.FSM(name="rx_fsm"):
            with m.State("Idle"):
                with m.If(~rx):
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "Start"
            with m.State("Start"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "Idle"  # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(div - 1), bit.eq(0)]
                    m.next = "Data"
            with m.State("Data"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), timer.eq(div - 1),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "Stop"
            with m.State("Stop"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    # Back to Idle at the middle of the stop bit: tolerates a slower sender.
                    with m.If(rx):
                        m.d.sync += [self.data.payload.eq(shreg), self.data.valid.eq(1),
                                     self.overrun.eq(self.data.valid & ~self.data.ready)]
                    with m.Else():
                        m.d.sync += self.framing.eq(1)
                    m.next = "Idle"
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter: takes a byte from ``data`` when idle and shifts out start bit, eight
    data bits (LSB first) and a stop bit, ``divisor`` cycles each.
    """

    data: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor: int):
        self._divisor = _checked(self, _check_divisor, divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        timer = Signal(range(div))
        shreg = Signal(9)   # data bits and the stop bit still to send
        left = Signal(range(11))

        m.d.comb += self.data.ready.eq(left == 0)
        with m.If(left == 0):
            with m.If(self.data.valid):
                m.d.sync += [self.tx.eq(0), shreg.eq(Cat(self.data.payload, Const(1, 1))),
                             timer.eq(div - 1), left.eq(10)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [self.tx.eq(Mux(left == 1, 1, shreg[0])), shreg.eq(shreg >> 1),
                         left.eq(left - 1), timer.eq(div - 1)]
            with m.If(left == 1):
                m.d.sync += timer.eq(0)
        return m


class Bridge(wiring.Component):
    """Serial-line command engine between a host and one accelerator plus its memory.

    Parameters
    ----------
    config : AcceleratorConfig
        The accelerator's configuration (memory width and size, status layout).
    divisor : int
        Clock cycles per UART bit.
    timeout : int
        Cycles of line silence after which a half-received command is dropped.
    clk_hz, baud : int
        Reported by INFO (informational).

    Attributes
    ----------
    rx : In(1)
        Serial input (idle high).
    tx : Out(1)
        Serial output.
    instr : Out(stream.Signature(128))
        Instruction words for the accelerator.
    clear : Out(1)
        One-cycle pulse for the accelerator's ``clear``.
    status : In(isa.Status)
    counters : In(isa.Counters)
    mem : Out(isa.MemoryPortSignature(config))
        The bridge's memory port (same protocol as the accelerator's; read data may come
        back any number of cycles later, in order).
    """

    def __init__(self, config: AcceleratorConfig, *, divisor: int, timeout: int = 1 << 20,
                 clk_hz: int = 0, baud: int = 0):
        _checked(self, self._check, config, divisor, timeout)
        self._config = config
        self._divisor = divisor
        self._timeout = timeout
        self._info = info_bytes(config, clk_hz, baud)
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "instr": Out(stream.Signature(isa.INSTR_WIDTH)),
            "clear": Out(1),
            "status": In(isa.Status),
            "counters": In(isa.Counters),
            "mem": Out(isa.MemoryPortSignature(config)),
        })

    @staticmethod
    def _check(config, divisor, timeout) -> None:
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        _check_divisor(divisor)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 20 * divisor:
            raise ValueError(f"timeout must be an integer of at least two byte times "
                             f"({20 * divisor} cycles), not {timeout!r}")

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        mw = cfg.mem_width

        m.submodules.urx = urx = UARTRx(self._divisor)
        m.submodules.utx = utx = UARTTx(self._divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        # ---- local signals
        rx_byte = urx.data.payload
        rx_valid = urx.data.valid
        addr = Signal(32)
        count = Signal(32)
        nbytes = Signal(range(max(ARG_BYTES, INSTR_BYTES, COUNTER_BYTES, INFO_BYTES, mw) + 2))
        word = Signal(8 * mw)
        pending = Signal()
        pending_word = Signal(isa.INSTR_WIDTH)
        instr_drop = Signal()   # a word was still waiting when this INSTR began
        flags_framing = Signal()
        flags_overrun = Signal()
        timer = Signal(range(self._timeout + 1))
        reply = Signal(Reply, init=Reply.OK)
        range_ok = Signal()
        status_bits = Signal(8 * STATUS_BYTES)
        counter_bits = Signal(8 * COUNTER_BYTES)
        flags_byte = Signal(8)

        # ---- sources of multi-byte replies, one byte per index
        send_src = Signal(2)   # 0 info, 1 status+flags, 2 counters, 3 memory word
        info_value = Const(int.from_bytes(self._info, "little"), 8 * INFO_BYTES)
        m.d.comb += [
            status_bits.eq(self.status.as_value()),
            counter_bits.eq(self.counters.as_value()),
            flags_byte.eq(Cat(pending, flags_framing, flags_overrun)),
        ]
        status_and_flags = Cat(status_bits, flags_byte)
        sources = [
            [info_value[8 * i:8 * i + 8] for i in range(INFO_BYTES)],
            [status_and_flags[8 * i:8 * i + 8] for i in range(STATUS_BYTES + 1)],
            [counter_bits[8 * i:8 * i + 8] for i in range(COUNTER_BYTES)],
            [word[8 * i:8 * i + 8] for i in range(mw)],
        ]
        send_len = Array([Const(len(src)) for src in sources])
        send_index = Signal(range(max(len(src) for src in sources) + 1))
        # The byte at `send_index` of source `send_src`, in two registered steps: every
        # group of 8 bytes of every source picks its byte by the index's low 3 bits, then
        # the group (high bits) and the source. As one multiplexer over the 42 counter bytes
        # it was eight LUT levels deep, the worst path of the iCEBreaker build. Both steps
        # run every cycle; the FSM gives them their two cycles (states SendPrep, SendPrep2)
        # whenever `send_index`, `send_src` or the word change.
        lo, hi = send_index[:3], send_index[3:]
        picked = []
        for i, src in enumerate(sources):
            groups = []
            for g in range(0, len(src), 8):
                group_byte = Signal(8, name=f"src{i}_group{g // 8}")
                m.d.sync += group_byte.eq(Array(src[g:g + 8])[lo])
                groups.append(group_byte)
            picked.append(Array(groups)[hi])
        send_byte = Signal(8)
        m.d.sync += send_byte.eq(Array(picked)[send_src])

        # ---- accelerator side
        m.d.comb += [self.instr.valid.eq(pending), self.instr.payload.eq(pending_word)]
        with m.If(self.instr.valid & self.instr.ready):
            m.d.sync += pending.eq(0)
        m.d.sync += self.clear.eq(0)
        with m.If(urx.framing):
            m.d.sync += flags_framing.eq(1)
        with m.If(urx.overrun):
            m.d.sync += flags_overrun.eq(1)

        # ---- memory side
        # The request's valid and write flags are registers (set on the way into WriteReq /
        # ReadReq, cleared on acceptance), not decoded from the FSM state: valid feeds the
        # shared memory's arbitration and so the accelerator's `ready`, which fans out into
        # the load/store units' enables; decoded, the state-to-load-unit path limited the
        # iCEBreaker build.
        req_valid = Signal()
        req_write = Signal()
        m.d.comb += [self.mem.resp.ready.eq(1), self.mem.req.valid.eq(req_valid),
                     self.mem.req.payload.write.eq(req_write),
                     self.mem.req.payload.addr.eq(addr),
                     self.mem.req.payload.data.eq(word),
                     self.mem.req.payload.mask.eq((1 << mw) - 1)]
        with m.If(self.mem.req.valid & self.mem.req.ready):
            m.d.sync += req_valid.eq(0)

        # The range check in full width: addr + count <= mem_words, count >= 1, in two
        # registered steps (states "Sum" and "Range"): the 33-bit sum, then the compare. As
        # one combinational step feeding the FSM it limited the iCEBreaker build.
        end_sum = Signal(33)
        m.d.sync += [end_sum.eq(addr + count),
                     range_ok.eq((count != 0) & (end_sum <= cfg.mem_words))]

        # Registered conditions for the FSM, so that no wide compare sits in front of the
        # state register's enable. `count_one` / `count_zero` follow `count` one cycle late
        # except where `count` is decremented, where they are given their new value directly
        # (FILL decrements in back-to-back cycles); after Args has shifted `count` in, the
        # range check states give them their cycle.
        count_one = Signal()
        count_zero = Signal()
        m.d.sync += [count_one.eq(count == 1), count_zero.eq(count == 0)]

        def decrement_count():
            m.d.sync += [addr.eq(addr + 1), count.eq(count - 1),
                         count_one.eq(count == 2), count_zero.eq(count == 1)]

        is_write = Signal()   # the command is WRITE / READ (else FILL), registered in Idle
        is_read = Signal()

        # ---- the command engine
        # While a command is being received, `timer` counts quiet cycles; too many drop it.
        # `line_quiet` is registered: it is what `timer == timeout` will be next cycle.
        line_quiet = Signal()
        with m.If(rx_valid):
            m.d.sync += [timer.eq(0), line_quiet.eq(0)]
        with m.Elif(timer != self._timeout):
            m.d.sync += [timer.eq(timer + 1), line_quiet.eq(timer == self._timeout - 1)]

        # `send_last` (this is the reply's last byte) is registered from `send_index` too; it
        # settles during SendPrep.
        send_last = Signal()
        m.d.sync += send_last.eq(send_index == send_len[send_src] - 1)

        def take_byte():
            m.d.comb += urx.data.ready.eq(1)

        def to_write_req():
            m.d.sync += [req_valid.eq(1), req_write.eq(1)]
            m.next = "WriteReq"

        def to_read_req():
            m.d.sync += [req_valid.eq(1), req_write.eq(0)]
            m.next = "ReadReq"

        def to_send(src):
            m.d.sync += [send_src.eq(src), send_index.eq(0)]
            m.next = "SendPrep"

        # `reply` is loaded under few, simple conditions (its enable was the iCEBreaker's
        # worst path when every final transition set it): a guess from the command byte in
        # Idle (INSTR: BUSY if a word is waiting, else OK; an unknown command: ERROR), OK on
        # every pass through WriteReq and SendPrep, ERROR from Check, and Clear's verdict.
        # Every command that reaches Reply has passed the state that sets its reply last.
        with m.FSM(name="bridge_fsm"):
            with m.State("Idle"):
                with m.If(rx_valid):
                    take_byte()
                    m.d.sync += [nbytes.eq(0),
                                 is_write.eq(rx_byte == Command.WRITE),
                                 is_read.eq(rx_byte == Command.READ)]
                    with m.If(rx_byte != Command.INSTR):
                        m.d.sync += reply.eq(Reply.ERROR)
                    with m.Elif(pending):
                        m.d.sync += reply.eq(Reply.BUSY)
                    with m.Else():
                        m.d.sync += reply.eq(Reply.OK)
                    with m.Switch(rx_byte):
                        with m.Case(Command.WRITE, Command.READ, Command.FILL):
                            m.next = "Args"
                        with m.Case(Command.INSTR):
                            m.d.sync += instr_drop.eq(pending)
                            m.next = "InstrBytes"
                        with m.Case(Command.INFO):
                            to_send(0)
                        with m.Case(Command.STATUS):
                            to_send(1)
                        with m.Case(Command.COUNTERS):
                            to_send(2)
                        with m.Case(Command.CLEAR):
                            m.next = "Clear"
                        with m.Default():
                            m.next = "Reply"

            with m.State("Args"):
                # addr u32 and count u32, shifted straight into their registers (no separate
                # argument register: the UP5K build is short of logic cells).
                with m.If(rx_valid):
                    take_byte()
                    m.d.sync += [Cat(addr, count).eq(Cat(addr[8:], count, rx_byte)),
                                 nbytes.eq(nbytes + 1)]
                    with m.If(nbytes == ARG_BYTES - 1):
                        m.d.sync += nbytes.eq(0)
                        m.next = "Sum"
                with m.Elif(line_quiet):
                    m.next = "Idle"

            with m.State("Sum"):    # end_sum takes its value from the new addr/count
                m.next = "Range"

            with m.State("Range"):  # range_ok takes its value from end_sum
                m.next = "Check"

            with m.State("Check"):
                with m.If(~range_ok):
                    m.d.sync += reply.eq(Reply.ERROR)
                    with m.If(is_write):
                        m.next = "Drain"
                    with m.Else():
                        m.next = "Reply"
                with m.Elif(is_write):
                    m.next = "WriteBytes"
                with m.Elif(is_read):
                    to_read_req()
                with m.Else():
                    m.d.sync += word.eq(0)
                    to_write_req()

            with m.State("Drain"):
                # A WRITE with a bad range: swallow its data until the line is quiet.
                with m.If(rx_valid):
                    take_byte()
                with m.Elif(line_quiet):
                    m.next = "Reply"

            with m.State("WriteBytes"):
                with m.If(rx_valid):
                    take_byte()
                    m.d.sync += [word.eq(Cat(word[8:], rx_byte)), nbytes.eq(nbytes + 1)]
                    with m.If(nbytes == mw - 1):
                        to_write_req()
                with m.Elif(line_quiet):
                    m.next = "Idle"

            with m.State("WriteReq"):
                m.d.sync += reply.eq(Reply.OK)
                with m.If(self.mem.req.ready):
                    decrement_count()
                    m.d.sync += nbytes.eq(0)
                    with m.If(count_one):
                        m.next = "Reply"
                    with m.Elif(is_write):
                        m.next = "WriteBytes"
                    with m.Else():
                        to_write_req()   # FILL: the next word, back to back

            with m.State("ReadReq"):
                with m.If(self.mem.req.ready):
                    m.next = "ReadResp"

            with m.State("ReadResp"):
                with m.If(self.mem.resp.valid):
                    m.d.sync += word.eq(self.mem.resp.payload)
                    decrement_count()
                    to_send(3)

            with m.State("SendPrep"):   # the group bytes and send_last follow send_index
                m.d.sync += reply.eq(Reply.OK)
                m.next = "SendPrep2"

            with m.State("SendPrep2"):  # send_byte follows them
                m.next = "SendBytes"

            with m.State("SendBytes"):
                m.d.comb += [utx.data.valid.eq(1), utx.data.payload.eq(send_byte)]
                with m.If(utx.data.ready):
                    m.d.sync += send_index.eq(send_index + 1)
                    with m.If(~send_last):
                        m.next = "SendPrep"
                    with m.Elif((send_src == 3) & ~count_zero):
                        to_read_req()
                    with m.Else():
                        m.next = "Reply"

            with m.State("InstrBytes"):
                with m.If(rx_valid):
                    take_byte()
                    m.d.sync += nbytes.eq(nbytes + 1)
                    # A word still waiting keeps its register and this one is dropped (BUSY),
                    # even if the waiting word is taken meanwhile: the bytes already went.
                    with m.If(~instr_drop):
                        m.d.sync += pending_word.eq(Cat(pending_word[8:], rx_byte))
                    with m.If(nbytes == INSTR_BYTES - 1):
                        with m.If(~instr_drop):   # (reply: set in Idle from the same flag)
                            m.d.sync += pending.eq(1)
                        m.next = "Reply"
                with m.Elif(line_quiet):
                    m.next = "Idle"

            with m.State("Clear"):
                with m.If(self.status.busy & ~self.status.idle):
                    m.d.sync += reply.eq(Reply.BUSY)
                with m.Else():
                    m.d.sync += [self.clear.eq(1), pending.eq(0), flags_framing.eq(0),
                                 flags_overrun.eq(0), reply.eq(Reply.OK)]
                m.next = "Reply"

            with m.State("Reply"):
                m.d.comb += [utx.data.valid.eq(1), utx.data.payload.eq(reply)]
                with m.If(utx.data.ready):
                    m.next = "Idle"
        return m
