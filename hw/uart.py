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
from .activity import driven_counter_bits
from .config import AcceleratorConfig

__all__ = ["UARTRx", "UARTTx", "LineTimer", "RangeSignature", "RangeCheck",
           "ReplyBytesSignature", "ReplyBytes", "CommandEngine", "Bridge",
           "Command", "Reply", "BridgeFlags", "BridgeInfo",
           "INFO_MAGIC", "PROTOCOL_VERSION", "INFO_BYTES", "STATUS_BYTES", "COUNTER_BYTES",
           "ARG_BYTES", "INSTR_BYTES", "info_bytes", "MIN_DIVISOR"]

MIN_DIVISOR = 4
# 2: isa.Counters gained the activity counters (COUNTER_BYTES 42 -> 102).
# 3: and vector_elements (COUNTER_BYTES 102 -> 108).
PROTOCOL_VERSION = 3
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

    Each state is one register, a transition clears the current state's bit and sets the next
    one's, and a state's condition is its own bit: no binary state decode sits in front of
    the registers' enables (``m.FSM`` would give one, deep with 17 states).

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


def _word_addr_width(config: AcceleratorConfig) -> int:
    """Bits of the bridge's word address and count registers: every count up to
    ``mem_words`` fits, a larger argument is flagged as too big instead (saves logic on the
    UP5K, which is short of cells)."""
    return config.mem_words.bit_length()


class LineTimer(wiring.Component):
    """Counts the cycles since the last received byte.

    ``quiet`` rises ``timeout`` cycles after ``activity`` (a received byte waiting) was last
    seen, and stays up until the next one. It is a register (what ``timer == timeout`` will
    be next cycle), so no wide compare sits in front of the command engine's states.

    Parameters
    ----------
    timeout : int
        Cycles of silence.
    """

    activity: In(1)
    quiet: Out(1)

    def __init__(self, timeout: int):
        self._timeout = timeout
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self._timeout + 1))
        with m.If(self.activity):
            m.d.sync += [timer.eq(0), self.quiet.eq(0)]
        with m.Elif(~self.quiet):
            m.d.sync += [timer.eq(timer + 1), self.quiet.eq(timer == self._timeout - 1)]
        return m


class RangeSignature(wiring.Signature):
    """A word range to check (from the command engine's view): ``addr``, ``count`` and their
    too-big flags go out, ``ok`` comes back ``RangeCheck.latency`` cycles later."""

    def __init__(self, addr_width: int):
        super().__init__({
            "addr": Out(addr_width), "count": Out(addr_width),
            "addr_big": Out(1), "count_big": Out(1),
            "ok": In(1),
        })


class RangeCheck(wiring.Component):
    """``ok`` is ``1 <= count`` and ``addr + count <= mem_words``, in two registered steps
    (the sum, then the compare) so that neither is a long path into the engine's states.

    A set ``addr_big`` / ``count_big`` (an argument bit above the registers' width) fails the
    check, as the full 32-bit compare would.
    """

    latency = 2

    def __init__(self, config: AcceleratorConfig):
        self._config = config
        super().__init__({"range": In(RangeSignature(_word_addr_width(config)))})

    def elaborate(self, platform):
        m = Module()
        r = self.range
        end_sum = Signal(len(r.addr) + 1)
        m.d.sync += [end_sum.eq(r.addr + r.count),
                     r.ok.eq((r.count != 0) & ~r.addr_big & ~r.count_big &
                             (end_sum <= self._config.mem_words))]
        return m


class _Source(enum.Enum, shape=2):
    """Where the bytes of a multi-byte reply come from."""
    INFO = 0
    STATUS = 1     # the status struct, then the flag byte
    COUNTERS = 2
    WORD = 3       # the memory word just read


def _source_lengths(config: AcceleratorConfig) -> dict:
    """Bytes of each reply source, by :class:`_Source`."""
    return {_Source.INFO: INFO_BYTES, _Source.STATUS: STATUS_BYTES + 1,
            _Source.COUNTERS: COUNTER_BYTES, _Source.WORD: config.mem_width}


class ReplyBytesSignature(wiring.Signature):
    """The command engine's view of :class:`ReplyBytes`: it names a source and a byte index
    and provides the flag byte and the memory word; the byte comes back two cycles later,
    ``last`` (the index is the source's last byte) one cycle later."""

    def __init__(self, config: AcceleratorConfig):
        index_width = Shape.cast(range(max(_source_lengths(config).values()) + 1)).width
        super().__init__({
            "source": Out(_Source), "index": Out(index_width),
            "flags": Out(8), "word": Out(8 * config.mem_width),
            "byte": In(8), "last": In(1),
        })


class ReplyBytes(wiring.Component):
    """Byte ``index`` of the reply source ``source``, in two registered steps: every group of
    8 bytes of every source picks its byte by the index's low 3 bits, then the group (high
    bits) and the source are chosen. Both steps run every cycle; the engine waits out the
    latency whenever the index, the source or the word change.

    The accelerator's counters are ``config.counter_width`` bits, zero-extended to the
    struct's fields (and its activity counters are 0 with ``activity_counters=False``):
    only the bits it drives are read (``hw.activity.driven_counter_bits``), since under the
    board build's kept hierarchy Yosys cannot see that the rest are zero and their bytes
    would cost multiplexers.

    Parameters
    ----------
    config : AcceleratorConfig
    info : bytes
        The INFO reply.
    """

    latency = 2

    def __init__(self, config: AcceleratorConfig, info: bytes):
        self._config = config
        self._info = info
        super().__init__({
            "status": In(isa.Status), "counters": In(isa.Counters),
            "select": In(ReplyBytesSignature(config)),
        })

    def _sources(self, m: Module) -> dict:
        """Each source as a list of byte values."""
        cfg = self._config
        status_bits = Signal(8 * STATUS_BYTES)
        counter_bits = Signal(8 * COUNTER_BYTES)
        flags_byte = Signal(8)
        info_value = Const(int.from_bytes(self._info, "little"), 8 * INFO_BYTES)
        counter_parts = []   # the struct's fields in order
        for name, field in data.Layout.cast(isa.Counters):
            width = Shape.cast(field.shape).width
            kept = min(driven_counter_bits(cfg, name), width)
            counter_parts += ([self.counters[name][:kept]] if kept else []) + \
                [Const(0, width - kept)]
        m.d.comb += [
            status_bits.eq(self.status.as_value()),
            counter_bits.eq(Cat(*counter_parts)),
            flags_byte.eq(self.select.flags),
        ]
        values = {_Source.INFO: info_value, _Source.STATUS: Cat(status_bits, flags_byte),
                  _Source.COUNTERS: counter_bits, _Source.WORD: self.select.word}
        return {src: [values[src][8 * i:8 * i + 8] for i in range(n)]
                for src, n in _source_lengths(cfg).items()}

    def elaborate(self, platform):
        m = Module()
        sel = self.select
        sources = self._sources(m)
        source = sel.source.as_value()
        send_len = Array([Const(len(sources[s])) for s in _Source])
        m.d.sync += sel.last.eq(sel.index == send_len[source] - 1)

        lo, hi = sel.index[:3], sel.index[3:]
        picked = []
        for i, s in enumerate(_Source):
            src = sources[s]
            groups = []
            for g in range(0, len(src), 8):
                group_byte = Signal(8, name=f"src{i}_group{g // 8}")
                m.d.sync += group_byte.eq(Array(src[g:g + 8])[lo])
                groups.append(group_byte)
            picked.append(Array(groups)[hi])
        m.d.sync += sel.byte.eq(Array(picked)[source])
        return m


# The command engine's states, the reset state first.
_STATES = ["Idle", "Decode", "Args", "Sum", "Range", "Check", "Drain", "WriteBytes", "WriteReq",
           "ReadReq", "ReadResp", "SendPrep", "SendPrep2", "SendBytes", "InstrBytes", "Clear",
           "Reply"]


class CommandEngine(wiring.Component):
    """The bridge's command state machine (:data:`_STATES`, one-hot): parses commands from
    the received bytes, runs them against the memory port and the accelerator and writes the
    reply bytes. See the module docstring for the protocol.

    Parameters
    ----------
    config : AcceleratorConfig

    Attributes
    ----------
    rx_data : In(stream.Signature(8))
        Received bytes; taken only in the states that receive one.
    framing, overrun : In(1)
        The receiver's error pulses, remembered in the flag byte until CLEAR.
    quiet : In(1)
        The line has been quiet for the timeout (:class:`LineTimer`).
    tx_data : Out(stream.Signature(8))
        Bytes to send.
    range : Out(RangeSignature)
        The argument range, checked by a :class:`RangeCheck`.
    reply_bytes : Out(ReplyBytesSignature)
        The multi-byte reply being sent, from a :class:`ReplyBytes`.
    mem, instr, clear, status
        As :class:`Bridge`'s.
    """

    def __init__(self, config: AcceleratorConfig):
        self._config = config
        super().__init__({
            "rx_data": In(stream.Signature(8)),
            "framing": In(1), "overrun": In(1), "quiet": In(1),
            "tx_data": Out(stream.Signature(8)),
            "range": Out(RangeSignature(_word_addr_width(config))),
            "reply_bytes": Out(ReplyBytesSignature(config)),
            "mem": Out(isa.MemoryPortSignature(config)),
            "instr": Out(stream.Signature(isa.INSTR_WIDTH)),
            "clear": Out(1),
            "status": In(isa.Status),
        })

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        logic = _EngineLogic(m, self)
        logic.accelerator_side()
        logic.memory_side()
        logic.field_flags()
        logic.command_flags()
        logic.receive_states()
        logic.argument_states()
        logic.memory_states()
        logic.send_states()
        logic.instr_clear_reply_states()
        logic.streams()
        return m


class _EngineLogic:
    """One elaboration of a :class:`CommandEngine`: its registers, the actions its states
    share, and the states in groups (described in the order of :data:`_STATES`, which also
    orders the assignments to each register)."""

    def __init__(self, m: Module, engine: CommandEngine):
        cfg = engine.config
        aw = _word_addr_width(cfg)
        mw = cfg.mem_width
        self.m = m
        self.io = engine
        self.fsm = _OneHotFSM(m, _STATES)
        self.rx_byte = engine.rx_data.payload
        self.rx_valid = engine.rx_data.valid

        self.addr = Signal(aw, name="addr")
        self.count = Signal(aw, name="count")
        self.addr_big = Signal(name="addr_big")    # an address bit above `aw` was set
        self.count_big = Signal(name="count_big")
        self.word = Signal(8 * mw, name="word")
        self.pending = Signal(name="pending")      # the INSTR word waits on `instr`
        self.pending_word = Signal(isa.INSTR_WIDTH, name="pending_word")
        self.instr_drop = Signal(name="instr_drop")  # a word was waiting when this INSTR began
        self.flags_framing = Signal(name="flags_framing")
        self.flags_overrun = Signal(name="flags_overrun")
        self.reply = Signal(Reply, init=Reply.OK, name="reply")
        self.req_valid = Signal(name="req_valid")
        self.req_write = Signal(name="req_write")
        self.send_src = Signal(_Source, name="send_src")
        self.send_index = Signal(len(engine.reply_bytes.index), name="send_index")

        # Registered `count == 1` / `count == 0`: no wide compare in front of a state register.
        self.count_one = Signal(name="count_one")
        self.count_zero = Signal(name="count_zero")
        # `nbytes` counts the bytes of the current field; `last_*` say that the byte now
        # arriving is the field's last, updated together with `nbytes` (a field's next byte
        # can follow in the cycle after the count changed).
        self.nbytes = Signal(range(max(ARG_BYTES, INSTR_BYTES, mw) + 1), name="nbytes")
        self.lasts = [(Signal(name="last_arg"), ARG_BYTES),
                      (Signal(name="last_instr"), INSTR_BYTES),
                      (Signal(name="last_data", init=(mw == 1)), mw)]
        self.last_arg, self.last_instr, self.last_data = (flag for flag, _ in self.lasts)

        self.cmd = {c: Signal(name=f"cmd_{c.name.lower()}") for c in Command}
        self.cmd_unknown = Signal(name="cmd_unknown")
        self.is_write = Signal(name="is_write")   # WRITE / READ (else FILL), set in Decode
        self.is_read = Signal(name="is_read")

    # ---- the actions states share

    def decrement_count(self) -> None:
        """One word done: the next address, one fewer left (and the flags' new values, since
        FILL decrements in back-to-back cycles)."""
        self.m.d.sync += [self.addr.eq(self.addr + 1), self.count.eq(self.count - 1),
                          self.count_one.eq(self.count == 2),
                          self.count_zero.eq(self.count == 1)]

    def reset_nbytes(self) -> None:
        self.m.d.sync += self.nbytes.eq(0)
        self.m.d.sync += [flag.eq(n == 1) for flag, n in self.lasts]

    def count_byte(self) -> None:
        self.m.d.sync += self.nbytes.eq(self.nbytes + 1)
        self.m.d.sync += [flag.eq((self.nbytes == n - 2) if n >= 2 else 1)
                          for flag, n in self.lasts]

    def to_write_req(self) -> None:
        self.m.d.sync += [self.req_valid.eq(1), self.req_write.eq(1)]
        self.fsm.goto("WriteReq")

    def to_read_req(self) -> None:
        self.m.d.sync += [self.req_valid.eq(1), self.req_write.eq(0)]
        self.fsm.goto("ReadReq")

    def to_send(self, src: _Source) -> None:
        self.m.d.sync += [self.send_src.eq(src), self.send_index.eq(0)]
        self.fsm.goto("SendPrep")

    # ---- registers outside the state machine

    def accelerator_side(self) -> None:
        m, io = self.m, self.io
        m.d.comb += [io.instr.valid.eq(self.pending), io.instr.payload.eq(self.pending_word)]
        with m.If(io.instr.valid & io.instr.ready):
            m.d.sync += self.pending.eq(0)
        m.d.sync += io.clear.eq(0)
        with m.If(io.framing):
            m.d.sync += self.flags_framing.eq(1)
        with m.If(io.overrun):
            m.d.sync += self.flags_overrun.eq(1)

    def memory_side(self) -> None:
        """The request's valid and write flags are registers (set on the way into WriteReq /
        ReadReq, cleared on acceptance), not decoded from the state: valid feeds the shared
        memory's arbitration and through it the load/store units' enables."""
        m, io, mw = self.m, self.io, self.io.config.mem_width
        m.d.comb += [io.mem.resp.ready.eq(1), io.mem.req.valid.eq(self.req_valid),
                     io.mem.req.payload.write.eq(self.req_write),
                     io.mem.req.payload.addr.eq(self.addr),
                     io.mem.req.payload.data.eq(self.word),
                     io.mem.req.payload.mask.eq((1 << mw) - 1)]
        with m.If(io.mem.req.valid & io.mem.req.ready):
            m.d.sync += self.req_valid.eq(0)
        m.d.comb += [io.range.addr.eq(self.addr), io.range.count.eq(self.count),
                     io.range.addr_big.eq(self.addr_big), io.range.count_big.eq(self.count_big)]

    def field_flags(self) -> None:
        """`count_one` / `count_zero` follow `count` one cycle late except where `count` is
        decremented; after Args has written `count`, the range check states give them their
        cycle."""
        self.m.d.sync += [self.count_one.eq(self.count == 1),
                          self.count_zero.eq(self.count == 0)]

    def command_flags(self) -> None:
        """The command byte, decoded into a register every cycle: Idle takes the byte, Decode
        branches on these flags (one cycle late; the next byte is nine bit times away).
        Exactly one is set, so Decode tests each on its own, not in a priority chain."""
        for c, flag in self.cmd.items():
            self.m.d.sync += flag.eq(self.rx_byte == c)
        self.m.d.sync += self.cmd_unknown.eq(~self.rx_byte.matches(*Command))

    def streams(self) -> None:
        """A byte is taken in every state that receives one (the others leave it waiting);
        bytes are sent from SendBytes (the reply source) and Reply (the reply code)."""
        m, io, fsm = self.m, self.io, self.fsm
        m.d.comb += io.rx_data.ready.eq(fsm.any("Idle", "Args", "Drain", "WriteBytes",
                                                "InstrBytes"))
        m.d.comb += [io.reply_bytes.source.eq(self.send_src),
                     io.reply_bytes.index.eq(self.send_index),
                     io.reply_bytes.flags.eq(Cat(self.pending, self.flags_framing,
                                                 self.flags_overrun)),
                     io.reply_bytes.word.eq(self.word)]
        m.d.comb += [io.tx_data.valid.eq(fsm.any("SendBytes", "Reply")),
                     io.tx_data.payload.eq(Mux(fsm["Reply"], self.reply,
                                               io.reply_bytes.byte))]

    # ---- the states
    # `reply` is loaded under few, simple conditions, which keeps its enable short: a guess
    # from the command in Decode (INSTR: BUSY if a word is waiting, else OK; an unknown
    # command: ERROR), OK on every pass through WriteReq and SendPrep, ERROR from Check, and
    # Clear's verdict. Every command that reaches Reply has passed the state that sets its
    # reply last.

    def receive_states(self) -> None:
        m, fsm, cmd = self.m, self.fsm, self.cmd
        with fsm.state("Idle"):
            with m.If(self.rx_valid):
                self.reset_nbytes()
                m.d.sync += [self.addr_big.eq(0), self.count_big.eq(0)]
                fsm.goto("Decode")

        with fsm.state("Decode"):
            m.d.sync += [self.is_write.eq(cmd[Command.WRITE]),
                         self.is_read.eq(cmd[Command.READ]),
                         self.instr_drop.eq(self.pending)]
            with m.If(~cmd[Command.INSTR]):
                m.d.sync += self.reply.eq(Reply.ERROR)
            with m.Elif(self.pending):
                m.d.sync += self.reply.eq(Reply.BUSY)
            with m.Else():
                m.d.sync += self.reply.eq(Reply.OK)
            with m.If(cmd[Command.WRITE] | cmd[Command.READ] | cmd[Command.FILL]):
                fsm.goto("Args")
            with m.If(cmd[Command.INSTR]):
                fsm.goto("InstrBytes")
            for src, c in [(_Source.INFO, Command.INFO), (_Source.STATUS, Command.STATUS),
                           (_Source.COUNTERS, Command.COUNTERS)]:
                with m.If(cmd[c]):
                    self.to_send(src)
            with m.If(cmd[Command.CLEAR]):
                fsm.goto("Clear")
            with m.If(self.cmd_unknown):
                fsm.goto("Reply")

    def argument_states(self) -> None:
        m, fsm, io = self.m, self.fsm, self.io
        aw = len(self.addr)
        with fsm.state("Args"):
            # addr u32 and count u32, byte k written into its lane of addr (k < 4) or count.
            with m.If(self.rx_valid):
                self.count_byte()
                for k in range(ARG_BYTES):
                    reg, big = (self.addr, self.addr_big) if k < 4 else \
                        (self.count, self.count_big)
                    lsb = 8 * (k % 4)
                    with m.If(self.nbytes == k):
                        if lsb < aw:
                            m.d.sync += reg[lsb:min(lsb + 8, aw)].eq(self.rx_byte)
                        if lsb + 8 > aw:
                            with m.If(self.rx_byte[max(aw - lsb, 0):] != 0):
                                m.d.sync += big.eq(1)
                with m.If(self.last_arg):
                    fsm.goto("Sum")
            with m.Elif(io.quiet):
                fsm.goto("Idle")

        # Sum and Range wait out RangeCheck.latency.
        with fsm.state("Sum"):    # its sum takes its value from the new addr/count
            fsm.goto("Range")

        with fsm.state("Range"):  # `ok` takes its value from the sum
            fsm.goto("Check")

        with fsm.state("Check"):
            self.reset_nbytes()
            with m.If(~io.range.ok):
                m.d.sync += self.reply.eq(Reply.ERROR)
                with m.If(self.is_write):
                    fsm.goto("Drain")
                with m.Else():
                    fsm.goto("Reply")
            with m.Elif(self.is_write):
                fsm.goto("WriteBytes")
            with m.Elif(self.is_read):
                self.to_read_req()
            with m.Else():
                m.d.sync += self.word.eq(0)
                self.to_write_req()

        with fsm.state("Drain"):
            # A WRITE with a bad range: swallow its data until the line is quiet.
            with m.If(~self.rx_valid & io.quiet):
                fsm.goto("Reply")

    def memory_states(self) -> None:
        m, fsm, io = self.m, self.fsm, self.io
        with fsm.state("WriteBytes"):
            with m.If(self.rx_valid):
                m.d.sync += self.word.eq(Cat(self.word[8:], self.rx_byte))
                self.count_byte()
                with m.If(self.last_data):
                    self.to_write_req()
            with m.Elif(io.quiet):
                fsm.goto("Idle")

        with fsm.state("WriteReq"):
            m.d.sync += self.reply.eq(Reply.OK)
            with m.If(io.mem.req.ready):
                self.decrement_count()
                self.reset_nbytes()
                with m.If(self.count_one):
                    fsm.goto("Reply")
                with m.Elif(self.is_write):
                    fsm.goto("WriteBytes")
                with m.Else():
                    self.to_write_req()   # FILL: the next word, back to back

        with fsm.state("ReadReq"):
            with m.If(io.mem.req.ready):
                fsm.goto("ReadResp")

        with fsm.state("ReadResp"):
            with m.If(io.mem.resp.valid):
                m.d.sync += self.word.eq(io.mem.resp.payload)
                self.decrement_count()
                self.to_send(_Source.WORD)

    def send_states(self) -> None:
        m, fsm, io = self.m, self.fsm, self.io
        # SendPrep and SendPrep2 wait out ReplyBytes.latency after the index or word changed.
        with fsm.state("SendPrep"):   # the group bytes and `last` follow send_index
            m.d.sync += self.reply.eq(Reply.OK)
            fsm.goto("SendPrep2")

        with fsm.state("SendPrep2"):  # the byte follows them
            fsm.goto("SendBytes")

        with fsm.state("SendBytes"):
            with m.If(io.tx_data.ready):
                m.d.sync += self.send_index.eq(self.send_index + 1)
                with m.If(~io.reply_bytes.last):
                    fsm.goto("SendPrep")
                with m.Elif((self.send_src == _Source.WORD) & ~self.count_zero):
                    self.to_read_req()
                with m.Else():
                    fsm.goto("Reply")

    def instr_clear_reply_states(self) -> None:
        m, fsm, io = self.m, self.fsm, self.io
        with fsm.state("InstrBytes"):
            with m.If(self.rx_valid):
                self.count_byte()
                # A word still waiting keeps its register and this one is dropped (BUSY),
                # even if the waiting word is taken meanwhile: the bytes already went.
                with m.If(~self.instr_drop):
                    m.d.sync += self.pending_word.eq(Cat(self.pending_word[8:], self.rx_byte))
                with m.If(self.last_instr):
                    with m.If(~self.instr_drop):   # (reply: set in Decode from the same flag)
                        m.d.sync += self.pending.eq(1)
                    fsm.goto("Reply")
            with m.Elif(io.quiet):
                fsm.goto("Idle")

        with fsm.state("Clear"):
            with m.If(io.status.busy & ~io.status.idle):
                m.d.sync += self.reply.eq(Reply.BUSY)
            with m.Else():
                m.d.sync += [io.clear.eq(1), self.pending.eq(0), self.flags_framing.eq(0),
                             self.flags_overrun.eq(0), self.reply.eq(Reply.OK)]
            fsm.goto("Reply")

        with fsm.state("Reply"):
            with m.If(io.tx_data.ready):
                fsm.goto("Idle")


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
        Only the low ``config.counter_width`` bits of each field are read, none of the
        activity counters with ``activity_counters=False``: the accelerator's counters are
        that wide, zero-extended.
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
        m.submodules.urx = urx = UARTRx(self._divisor)
        m.submodules.utx = utx = UARTTx(self._divisor)
        m.submodules.line = line = LineTimer(self._timeout)
        m.submodules.range_check = range_check = RangeCheck(self._config)
        m.submodules.reply_bytes = reply_bytes = ReplyBytes(self._config, self._info)
        m.submodules.engine = engine = CommandEngine(self._config)

        # The serial line: bytes in and out of the engine; a half-received command is dropped
        # once the line has been quiet for the timeout.
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        wiring.connect(m, urx.data, engine.rx_data)
        wiring.connect(m, engine.tx_data, utx.data)
        m.d.comb += [line.activity.eq(urx.data.valid), engine.quiet.eq(line.quiet),
                     engine.framing.eq(urx.framing), engine.overrun.eq(urx.overrun)]

        # The engine's helpers: the argument range check and the multi-byte reply source.
        wiring.connect(m, engine.range, range_check.range)
        wiring.connect(m, engine.reply_bytes, reply_bytes.select)
        m.d.comb += [reply_bytes.status.eq(self.status), reply_bytes.counters.eq(self.counters)]

        # The accelerator and its memory.
        wiring.connect(m, engine.mem, wiring.flipped(self.mem))
        wiring.connect(m, engine.instr, wiring.flipped(self.instr))
        m.d.comb += [self.clear.eq(engine.clear), engine.status.eq(self.status)]
        return m
