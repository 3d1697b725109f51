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

import contextlib
import enum as py_enum

from amaranth import Array, Cat, Const, Module, Mux, Shape, Signal, unsigned
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
        # `ready` is a register (what `left == 0` will be), not decoded from `left`: the
        # bridge's state machine branches on it.
        idle = Signal(init=1)

        m.d.comb += self.data.ready.eq(idle)
        with m.If(idle):
            with m.If(self.data.valid):
                m.d.sync += [self.tx.eq(0), shreg.eq(Cat(self.data.payload, Const(1, 1))),
                             timer.eq(div - 1), left.eq(10), idle.eq(0)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [self.tx.eq(Mux(left == 1, 1, shreg[0])), shreg.eq(shreg >> 1),
                         left.eq(left - 1), timer.eq(div - 1)]
            with m.If(left == 1):
                m.d.sync += [timer.eq(0), idle.eq(1)]
        return m


class _OneHotFSM:
    """A state machine with one flip-flop per state, encoded by hand.

    ``m.FSM`` gives a binary-encoded state register; with 17 states its decode and
    next-state logic were six LUTs deep into the register's enable, the worst path of the
    iCEBreaker build. Here each state is one register, a transition clears the current
    state's bit and sets the next one's, and a state's condition is its own bit.

    Parameters
    ----------
    m : Module
    names : list of str
        The states; the first is the reset state.
    """

    def __init__(self, m: Module, names: list[str]):
        self._m = m
        self._bits = {n: Signal(name=f"st_{n}", init=(i == 0)) for i, n in enumerate(names)}
        self._current = None

    def __getitem__(self, name: str) -> Signal:
        """The state's bit: 1 while the machine is in it."""
        return self._bits[name]

    def any(self, *names: str):
        """1 while the machine is in one of ``names``."""
        return Cat(*(self._bits[n] for n in names)).any()

    @contextlib.contextmanager
    def state(self, name: str):
        """The logic of state ``name`` (``with fsm.state("Idle"): ...``)."""
        with self._m.If(self._bits[name]):
            self._current = name
            try:
                yield
            finally:
                self._current = None

    def goto(self, name: str) -> None:
        """From the state being described to ``name``, on the next clock edge."""
        if name != self._current:
            self._m.d.sync += [self._bits[self._current].eq(0), self._bits[name].eq(1)]


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
        Only the low ``config.counter_width`` bits of each field are read: the accelerator's
        counters are that wide, zero-extended.
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

        fsm = _OneHotFSM(m, ["Idle", "Decode", "Args", "Sum", "Range", "Check", "Drain",
                             "WriteBytes", "WriteReq", "ReadReq", "ReadResp", "SendPrep",
                             "SendPrep2", "SendBytes", "InstrBytes", "Clear", "Reply"])

        # ---- local signals
        rx_byte = urx.data.payload
        rx_valid = urx.data.valid
        # Word address and count are kept only as wide as a valid range needs (`aw` bits
        # hold every count up to `mem_words`); a set bit above that is remembered in
        # `addr_big` / `count_big`, which make the range check fail as the full 32-bit
        # compare would. The UP5K build is short of logic cells.
        aw = cfg.mem_words.bit_length()
        addr = Signal(aw)
        count = Signal(aw)
        addr_big = Signal()
        count_big = Signal()
        nbytes = Signal(range(max(ARG_BYTES, INSTR_BYTES, mw) + 1))
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
        # The accelerator's counters are `counter_width` bits, zero-extended to the struct's
        # fields: only those bits are read. Under the board build's kept hierarchy Yosys
        # cannot see that the rest are zero, and their bytes would cost multiplexer LUTs (a
        # hundred on the iCEBreaker's 32-bit counters).
        counter_parts = []   # the struct's fields in order
        for name, field in data.Layout.cast(isa.Counters):
            width = Shape.cast(field.shape).width
            kept = min(cfg.counter_width, width)
            counter_parts += [self.counters[name][:kept], Const(0, width - kept)]
        m.d.comb += [
            status_bits.eq(self.status.as_value()),
            counter_bits.eq(Cat(*counter_parts)),
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

        # The range check, addr + count <= mem_words and 1 <= count, in two registered steps
        # (states "Sum" and "Range"): the sum, then the compare. As one combinational step
        # feeding the FSM it limited the iCEBreaker build.
        end_sum = Signal(aw + 1)
        m.d.sync += [end_sum.eq(addr + count),
                     range_ok.eq((count != 0) & ~addr_big & ~count_big &
                                 (end_sum <= cfg.mem_words))]

        # Registered conditions for the FSM, so that no wide compare sits in front of a
        # state register. `count_one` / `count_zero` follow `count` one cycle late except
        # where `count` is decremented, where they are given their new value directly (FILL
        # decrements in back-to-back cycles); after Args has written `count`, the range check
        # states give them their cycle.
        count_one = Signal()
        count_zero = Signal()
        m.d.sync += [count_one.eq(count == 1), count_zero.eq(count == 0)]

        def decrement_count():
            m.d.sync += [addr.eq(addr + 1), count.eq(count - 1),
                         count_one.eq(count == 2), count_zero.eq(count == 1)]

        # `nbytes` counts the bytes of the current field; `last_*` say that the byte now
        # arriving is the field's last, updated together with `nbytes` (a field's next byte
        # can follow in the cycle after the count changed).
        lasts = [(Signal(name="last_arg"), ARG_BYTES), (Signal(name="last_instr"), INSTR_BYTES),
                 (Signal(name="last_data", init=(mw == 1)), mw)]
        last_arg, last_instr, last_data = (flag for flag, _ in lasts)

        def reset_nbytes():
            m.d.sync += nbytes.eq(0)
            m.d.sync += [flag.eq(n == 1) for flag, n in lasts]

        def count_byte():
            m.d.sync += nbytes.eq(nbytes + 1)
            m.d.sync += [flag.eq((nbytes == n - 2) if n >= 2 else 1) for flag, n in lasts]

        # The command byte, decoded into a register every cycle: Idle takes the byte, Decode
        # branches on these flags (they follow the byte one cycle late; the next byte is at
        # least nine bit times away).
        # Exactly one of them is set, so Decode tests each on its own, not in a priority chain.
        cmd = {c: Signal(name=f"cmd_{c.name.lower()}") for c in Command}
        cmd_unknown = Signal()
        for c, flag in cmd.items():
            m.d.sync += flag.eq(rx_byte == c)
        m.d.sync += cmd_unknown.eq(~rx_byte.matches(*Command))
        is_write = Signal()   # the command is WRITE / READ (else FILL), registered in Decode
        is_read = Signal()

        # ---- the command engine
        # While a command is being received, `timer` counts quiet cycles; too many drop it.
        # `line_quiet` is registered: it is what `timer == timeout` will be next cycle.
        line_quiet = Signal()
        with m.If(rx_valid):
            m.d.sync += [timer.eq(0), line_quiet.eq(0)]
        with m.Elif(~line_quiet):
            m.d.sync += [timer.eq(timer + 1), line_quiet.eq(timer == self._timeout - 1)]

        # `send_last` (this is the reply's last byte) is registered from `send_index` too; it
        # settles during SendPrep.
        send_last = Signal()
        m.d.sync += send_last.eq(send_index == send_len[send_src] - 1)

        # A byte is taken in every state that receives one (the others leave it waiting).
        m.d.comb += urx.data.ready.eq(fsm.any("Idle", "Args", "Drain", "WriteBytes",
                                              "InstrBytes"))

        def to_write_req():
            m.d.sync += [req_valid.eq(1), req_write.eq(1)]
            fsm.goto("WriteReq")

        def to_read_req():
            m.d.sync += [req_valid.eq(1), req_write.eq(0)]
            fsm.goto("ReadReq")

        def to_send(src):
            m.d.sync += [send_src.eq(src), send_index.eq(0)]
            fsm.goto("SendPrep")

        # `reply` is loaded under few, simple conditions (its enable was the iCEBreaker's
        # worst path when every final transition set it): a guess from the command in Decode
        # (INSTR: BUSY if a word is waiting, else OK; an unknown command: ERROR), OK on every
        # pass through WriteReq and SendPrep, ERROR from Check, and Clear's verdict. Every
        # command that reaches Reply has passed the state that sets its reply last.
        with fsm.state("Idle"):
            with m.If(rx_valid):
                reset_nbytes()
                m.d.sync += [addr_big.eq(0), count_big.eq(0)]
                fsm.goto("Decode")

        with fsm.state("Decode"):
            m.d.sync += [is_write.eq(cmd[Command.WRITE]), is_read.eq(cmd[Command.READ]),
                         instr_drop.eq(pending)]
            with m.If(~cmd[Command.INSTR]):
                m.d.sync += reply.eq(Reply.ERROR)
            with m.Elif(pending):
                m.d.sync += reply.eq(Reply.BUSY)
            with m.Else():
                m.d.sync += reply.eq(Reply.OK)
            with m.If(cmd[Command.WRITE] | cmd[Command.READ] | cmd[Command.FILL]):
                fsm.goto("Args")
            with m.If(cmd[Command.INSTR]):
                fsm.goto("InstrBytes")
            for src, c in enumerate([Command.INFO, Command.STATUS, Command.COUNTERS]):
                with m.If(cmd[c]):
                    to_send(src)
            with m.If(cmd[Command.CLEAR]):
                fsm.goto("Clear")
            with m.If(cmd_unknown):
                fsm.goto("Reply")

        with fsm.state("Args"):
            # addr u32 and count u32, byte k written into its lane of addr (k < 4) or count.
            with m.If(rx_valid):
                count_byte()
                for k in range(ARG_BYTES):
                    reg, big = (addr, addr_big) if k < 4 else (count, count_big)
                    lsb = 8 * (k % 4)
                    with m.If(nbytes == k):
                        if lsb < aw:
                            m.d.sync += reg[lsb:min(lsb + 8, aw)].eq(rx_byte)
                        if lsb + 8 > aw:
                            with m.If(rx_byte[max(aw - lsb, 0):] != 0):
                                m.d.sync += big.eq(1)
                with m.If(last_arg):
                    fsm.goto("Sum")
            with m.Elif(line_quiet):
                fsm.goto("Idle")

        with fsm.state("Sum"):    # end_sum takes its value from the new addr/count
            fsm.goto("Range")

        with fsm.state("Range"):  # range_ok takes its value from end_sum
            fsm.goto("Check")

        with fsm.state("Check"):
            reset_nbytes()
            with m.If(~range_ok):
                m.d.sync += reply.eq(Reply.ERROR)
                with m.If(is_write):
                    fsm.goto("Drain")
                with m.Else():
                    fsm.goto("Reply")
            with m.Elif(is_write):
                fsm.goto("WriteBytes")
            with m.Elif(is_read):
                to_read_req()
            with m.Else():
                m.d.sync += word.eq(0)
                to_write_req()

        with fsm.state("Drain"):
            # A WRITE with a bad range: swallow its data until the line is quiet.
            with m.If(~rx_valid & line_quiet):
                fsm.goto("Reply")

        with fsm.state("WriteBytes"):
            with m.If(rx_valid):
                m.d.sync += word.eq(Cat(word[8:], rx_byte))
                count_byte()
                with m.If(last_data):
                    to_write_req()
            with m.Elif(line_quiet):
                fsm.goto("Idle")

        with fsm.state("WriteReq"):
            m.d.sync += reply.eq(Reply.OK)
            with m.If(self.mem.req.ready):
                decrement_count()
                reset_nbytes()
                with m.If(count_one):
                    fsm.goto("Reply")
                with m.Elif(is_write):
                    fsm.goto("WriteBytes")
                with m.Else():
                    to_write_req()   # FILL: the next word, back to back

        with fsm.state("ReadReq"):
            with m.If(self.mem.req.ready):
                fsm.goto("ReadResp")

        with fsm.state("ReadResp"):
            with m.If(self.mem.resp.valid):
                m.d.sync += word.eq(self.mem.resp.payload)
                decrement_count()
                to_send(3)

        with fsm.state("SendPrep"):   # the group bytes and send_last follow send_index
            m.d.sync += reply.eq(Reply.OK)
            fsm.goto("SendPrep2")

        with fsm.state("SendPrep2"):  # send_byte follows them
            fsm.goto("SendBytes")

        with fsm.state("SendBytes"):
            with m.If(utx.data.ready):
                m.d.sync += send_index.eq(send_index + 1)
                with m.If(~send_last):
                    fsm.goto("SendPrep")
                with m.Elif((send_src == 3) & ~count_zero):
                    to_read_req()
                with m.Else():
                    fsm.goto("Reply")

        with fsm.state("InstrBytes"):
            with m.If(rx_valid):
                count_byte()
                # A word still waiting keeps its register and this one is dropped (BUSY),
                # even if the waiting word is taken meanwhile: the bytes already went.
                with m.If(~instr_drop):
                    m.d.sync += pending_word.eq(Cat(pending_word[8:], rx_byte))
                with m.If(last_instr):
                    with m.If(~instr_drop):   # (reply: set in Decode from the same flag)
                        m.d.sync += pending.eq(1)
                    fsm.goto("Reply")
            with m.Elif(line_quiet):
                fsm.goto("Idle")

        with fsm.state("Clear"):
            with m.If(self.status.busy & ~self.status.idle):
                m.d.sync += reply.eq(Reply.BUSY)
            with m.Else():
                m.d.sync += [self.clear.eq(1), pending.eq(0), flags_framing.eq(0),
                             flags_overrun.eq(0), reply.eq(Reply.OK)]
            fsm.goto("Reply")

        with fsm.state("Reply"):
            with m.If(utx.data.ready):
                fsm.goto("Idle")

        m.d.comb += [utx.data.valid.eq(fsm.any("SendBytes", "Reply")),
                     utx.data.payload.eq(Mux(fsm["Reply"], reply, send_byte))]
        return m
