"""Host side of the Serrano UART bridge (protocol: ``hw/uart.py``, ``docs/fpga.md``).

* :class:`BridgeLink` speaks the protocol over any pyserial-like port (``write``, ``read``,
  ``reset_input_buffer``): a real board through :meth:`BridgeLink.open` (pyserial), or a
  simulated board through :class:`SimulatedSerial`.
* :class:`UARTBackend` implements the project's ``Backend`` interface on a link, so
  ``sim.runtime.Accelerator(config, backend=UARTBackend(link))`` runs GEMMs on the board.
* :class:`SimulatedSerial` is a pyserial-like port wired to the UART pins of an Amaranth
  design running in ``amaranth.sim`` on a background thread; simulated time only advances
  while the host is sending or waiting for a reply.

Example (a board on /dev/ttyUSB1)::

    link = BridgeLink.open("/dev/ttyUSB1", baud=115200)
    print(link.info())
    acc = sim.runtime.Accelerator(link.info().config(), backend=UARTBackend(link))
    y = acc.matmul(x, w)
"""

import collections
import queue
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.uart import (COUNTER_BYTES, INFO_BYTES, INFO_MAGIC, INSTR_BYTES,
                             PROTOCOL_VERSION, STATUS_BYTES, BridgeFlags, BridgeInfo, Command,
                             Reply)

from .backend import (RunResult, RunStatus, SimulationTimeout, check_max_cycles,
                      counters_from_bits, unpack_fields)

__all__ = ["BridgeError", "BoardInfo", "BridgeStatus", "BridgeLink", "UARTBackend",
           "SimulatedSerial"]

WRITE_CHUNK_WORDS = 64


class BridgeError(RuntimeError):
    """The bridge answered unexpectedly, rejected a command, or did not answer in time."""


@dataclass(frozen=True)
class BoardInfo:
    """The INFO reply."""
    version: int
    rows: int
    cols: int
    mem_width: int
    mem_bytes: int
    act_depth: int
    wgt_depth: int
    acc_depth: int
    param_depth: int
    clk_hz: int
    baud: int

    def config(self) -> AcceleratorConfig:
        """The accelerator configuration the board was built with."""
        return AcceleratorConfig(rows=self.rows, cols=self.cols, act_depth=self.act_depth,
                                 wgt_depth=self.wgt_depth, acc_depth=self.acc_depth,
                                 param_depth=self.param_depth, mem_width=self.mem_width,
                                 mem_bytes=self.mem_bytes)


@dataclass(frozen=True)
class BridgeStatus:
    """The STATUS reply: ``isa.Status`` fields and the bridge's flags."""
    busy: bool
    done: bool
    error: isa.ErrorCode | int
    idle: bool
    fault_index: int
    flags: BridgeFlags

    @property
    def instr_pending(self) -> bool:
        return bool(self.flags & BridgeFlags.INSTR_PENDING)


class BridgeLink:
    """One host-side connection to a Serrano bridge.

    Parameters
    ----------
    port
        A pyserial ``Serial`` or anything with ``write(bytes)``, ``read(n) -> bytes`` (may
        return fewer bytes on timeout) and ``reset_input_buffer()``.
    mem_width : int or None
        Memory word size in bytes; read from the board (INFO) when ``None``.
    """

    def __init__(self, port, *, mem_width: int | None = None):
        for method in ("write", "read"):
            if not callable(getattr(port, method, None)):
                raise TypeError(f"port must have a {method}() method (pyserial-like), "
                                f"not {port!r}")
        self.port = port
        self._info: BoardInfo | None = None
        self._mem_width = mem_width

    @classmethod
    def open(cls, device: str, baud: int = 115200, *, timeout: float = 2.0) -> "BridgeLink":
        """Open a serial device with pyserial (8N1, no flow control)."""
        import serial
        return cls(serial.Serial(device, baudrate=baud, bytesize=8, parity="N", stopbits=1,
                                 timeout=timeout))

    # ---- framing
    def _read_exact(self, n: int, what: str) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.port.read(n - len(buf))
            if not chunk:
                raise BridgeError(f"timeout waiting for {what}: got {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def _reply(self, what: str) -> Reply:
        code = self._read_exact(1, f"the reply to {what}")[0]
        try:
            return Reply(code)
        except ValueError:
            raise BridgeError(f"bad reply code 0x{code:02x} to {what} (out of sync? "
                              f"call resync())") from None

    def _expect_ok(self, what: str) -> None:
        reply = self._reply(what)
        if reply != Reply.OK:
            raise BridgeError(f"{what} answered {reply.name}")

    @staticmethod
    def _args(addr: int, count: int) -> bytes:
        return addr.to_bytes(4, "little") + count.to_bytes(4, "little")

    def resync(self, quiet_s: float = 0.2) -> None:
        """Recover from a lost command: stay quiet longer than the bridge's timeout, then
        drop whatever arrived."""
        time.sleep(quiet_s)
        if hasattr(self.port, "reset_input_buffer"):
            self.port.reset_input_buffer()

    # ---- commands
    def info(self) -> BoardInfo:
        """What is on the other end (cached after the first call)."""
        if self._info is None:
            self.port.write(bytes([Command.INFO.value]))
            raw = self._read_exact(INFO_BYTES, "INFO")
            self._expect_ok("INFO")
            f = unpack_fields(BridgeInfo, raw)
            if f["magic"].to_bytes(4, "little") != INFO_MAGIC:
                raise BridgeError(f"not a Serrano bridge (magic {raw[:4]!r})")
            if f["version"] != PROTOCOL_VERSION:
                raise BridgeError(f"bridge protocol version {f['version']}, host speaks "
                                  f"{PROTOCOL_VERSION}")
            self._info = BoardInfo(**{k: v for k, v in f.items() if k != "magic"})
            if self._mem_width is None:
                self._mem_width = self._info.mem_width
        return self._info

    @property
    def mem_width(self) -> int:
        if self._mem_width is None:
            self.info()
        return self._mem_width

    def write_words(self, word_addr: int, payload: bytes) -> None:
        """Write whole memory words (``len(payload)`` a multiple of ``mem_width``)."""
        mw = self.mem_width
        if len(payload) % mw:
            raise ValueError(f"payload length must be a multiple of mem_width ({mw}), "
                             f"not {len(payload)}")
        for start in range(0, len(payload), WRITE_CHUNK_WORDS * mw):
            chunk = payload[start:start + WRITE_CHUNK_WORDS * mw]
            addr = word_addr + start // mw
            self.port.write(bytes([Command.WRITE.value]) + self._args(addr, len(chunk) // mw)
                            + chunk)
            self._expect_ok(f"WRITE of {len(chunk) // mw} words at word {addr}")

    def read_words(self, word_addr: int, count: int) -> bytes:
        """Read ``count`` memory words."""
        mw = self.mem_width
        out = b""
        for start in range(0, count, WRITE_CHUNK_WORDS):
            n = min(WRITE_CHUNK_WORDS, count - start)
            self.port.write(bytes([Command.READ.value]) + self._args(word_addr + start, n))
            first = self._read_exact(1, "READ data")
            if len(first) == 1 and first[0] == Reply.ERROR.value:
                raise BridgeError(f"READ of {n} words at word {word_addr + start} rejected "
                                  f"(out of range?)")
            out += first + self._read_exact(n * mw - 1, "READ data")
            self._expect_ok("READ")
        return out

    def fill_zero(self, word_addr: int, count: int) -> None:
        """Zero ``count`` memory words (in hardware: one word per cycle)."""
        self.port.write(bytes([Command.FILL.value]) + self._args(word_addr, count))
        self._expect_ok(f"FILL of {count} words at word {word_addr}")

    def write(self, addr: int, payload: bytes) -> None:
        """Write bytes at any byte address (partial words are read, merged and rewritten)."""
        mw = self.mem_width
        payload = bytes(payload)
        lo = addr - addr % mw
        hi = -(-(addr + len(payload)) // mw) * mw
        if not payload:
            return
        buf = bytearray(hi - lo)
        if addr != lo or (addr + len(payload)) != hi:
            edges = {lo, hi - mw}
            for w in edges:
                buf[w - lo:w - lo + mw] = self.read_words(w // mw, 1)
        buf[addr - lo:addr - lo + len(payload)] = payload
        self.write_words(lo // mw, bytes(buf))

    def read(self, addr: int, n: int) -> bytes:
        """Read ``n`` bytes from any byte address."""
        mw = self.mem_width
        if n <= 0:
            return b""
        lo = addr - addr % mw
        hi = -(-(addr + n) // mw) * mw
        raw = self.read_words(lo // mw, (hi - lo) // mw)
        return raw[addr - lo:addr - lo + n]

    def push(self, word: int) -> bool:
        """Offer one instruction word: ``True`` if queued, ``False`` if the previous word is
        still waiting (BUSY; send it again later)."""
        if not 0 <= word < (1 << isa.INSTR_WIDTH):
            raise ValueError(f"instruction word must fit in {isa.INSTR_WIDTH} bits")
        self.port.write(bytes([Command.INSTR.value]) + word.to_bytes(INSTR_BYTES, "little"))
        reply = self._reply("INSTR")
        if reply == Reply.ERROR:
            raise BridgeError("INSTR answered ERROR")
        return reply == Reply.OK

    def status(self) -> BridgeStatus:
        self.port.write(bytes([Command.STATUS.value]))
        raw = self._read_exact(STATUS_BYTES + 1, "STATUS")
        self._expect_ok("STATUS")
        f = unpack_fields(isa.Status, raw[:STATUS_BYTES])
        try:
            error = isa.ErrorCode(f["error"])
        except ValueError:
            error = f["error"]
        return BridgeStatus(busy=bool(f["busy"]), done=bool(f["done"]), error=error,
                            idle=bool(f["idle"]), fault_index=f["fault_index"],
                            flags=BridgeFlags(raw[STATUS_BYTES]))

    def counters(self) -> dict[str, int]:
        self.port.write(bytes([Command.COUNTERS.value]))
        raw = self._read_exact(COUNTER_BYTES, "COUNTERS")
        self._expect_ok("COUNTERS")
        return counters_from_bits(int.from_bytes(raw, "little"))

    def clear(self) -> None:
        """Soft-reset the accelerator's control state, status and counters (buffers keep
        their contents); ``BridgeError`` if it is busy."""
        self.port.write(bytes([Command.CLEAR.value]))
        reply = self._reply("CLEAR")
        if reply != Reply.OK:
            raise BridgeError(f"CLEAR answered {reply.name} (accelerator busy)")


class UARTBackend:
    """The ``Backend`` interface on a board behind a :class:`BridgeLink`.

    ``run`` clears the accelerator, zeroes the on-chip memory, writes the image, feeds the
    instruction words, polls until the program is over (``done``, or ``idle`` once every word
    was accepted) and reads the image back. Unlike the simulators it does not zero the
    on-chip *buffers* between runs (``clear`` keeps them), which a well-formed program never
    notices.

    Parameters
    ----------
    link : BridgeLink
    poll_s : float
        Pause between status polls.
    timeout_s : float
        Wall-clock limit of one run.
    """

    name = "uart"

    def __init__(self, link: BridgeLink, *, poll_s: float = 0.0, timeout_s: float = 60.0):
        if not isinstance(link, BridgeLink):
            raise TypeError(f"link must be a BridgeLink, not {link!r}")
        self.link = link
        self.poll_s = poll_s
        self.timeout_s = timeout_s

    def run(self, words: Sequence[int], memory: np.ndarray, *,
            max_cycles: int | None = None) -> RunResult:
        max_cycles = check_max_cycles(max_cycles, None)
        link = self.link
        info = link.info()
        mem = np.asarray(memory)
        if mem.dtype != np.uint8 or mem.ndim != 1:
            raise TypeError("memory must be a 1-D numpy uint8 array")
        if len(mem) > info.mem_bytes:
            raise ValueError(f"memory image of {len(mem)} bytes exceeds the board's "
                             f"{info.mem_bytes}")
        mw = info.mem_width
        deadline = time.monotonic() + self.timeout_s

        link.clear()
        link.fill_zero(0, info.mem_bytes // mw)
        padded = -(-len(mem) // mw) * mw
        image = np.zeros(padded, dtype=np.uint8)
        image[:len(mem)] = mem
        if padded:
            link.write_words(0, image.tobytes())

        for word in words:
            while not link.push(int(word)):
                self._wait(deadline, max_cycles)
        while True:
            st = link.status()
            if st.done or (st.idle and not st.instr_pending):
                break
            self._wait(deadline, max_cycles)
        out = np.frombuffer(link.read(0, len(mem)), dtype=np.uint8).copy() if len(mem) \
            else np.zeros(0, dtype=np.uint8)
        counters = link.counters()
        error = st.error if isinstance(st.error, isa.ErrorCode) else isa.ErrorCode.NONE
        return RunResult(memory=out, status=RunStatus(done=st.done, error=error,
                                                      fault_index=st.fault_index),
                         counters=counters)

    def _wait(self, deadline: float, max_cycles: int | None) -> None:
        if time.monotonic() > deadline:
            raise SimulationTimeout(f"the board did not finish within {self.timeout_s} s")
        if max_cycles is not None and self.link.counters()["cycles"] > max_cycles:
            raise SimulationTimeout(f"the program ran past its budget of {max_cycles} cycles")
        if self.poll_s:
            time.sleep(self.poll_s)


class SimulatedSerial:
    """A pyserial-like port on the UART pins of a design running in ``amaranth.sim``.

    The simulation runs on a background thread and advances only while there is something
    to do: bits to send to ``rx``, a byte arriving on ``tx``, or a :meth:`read` waiting for
    bytes. A :meth:`read` that gets nothing for ``timeout_cycles`` simulated cycles returns
    what it has (like a pyserial timeout). The whole simulation is limited to ``max_cycles``.

    Parameters
    ----------
    dut : Elaboratable
        The design (its ``sync`` domain gets the clock).
    rx, tx : Signal
        The design's serial input (driven here) and output (decoded here).
    divisor : int
        Clock cycles per bit.
    timeout_cycles : int
        Simulated cycles a read may wait for its next byte.
    max_cycles : int
        Budget of the whole simulation; exceeding it fails every later call.
    """

    def __init__(self, dut, *, rx, tx, divisor: int, timeout_cycles: int = 200_000,
                 max_cycles: int = 5_000_000, vcd: str | None = None):
        from amaranth.sim import Simulator
        self._dut = dut
        self._rx, self._tx = rx, tx
        self._divisor = divisor
        self.timeout_cycles = timeout_cycles
        self.max_cycles = max_cycles
        self.cycles = 0
        self._to_dut: "queue.Queue[bytes | None]" = queue.Queue()
        self._from_dut = bytearray()
        self._cond = threading.Condition()
        self._want = 0          # bytes a read() is waiting for
        self._waited = 0        # cycles that read() has waited since its last byte
        self._error: BaseException | None = None
        self._closed = False
        self._sim = Simulator(dut)
        self._sim.add_clock(1e-7)
        self._sim.add_testbench(self._bench)
        self._vcd = vcd
        self._thread = threading.Thread(target=self._run, name="SimulatedSerial", daemon=True)
        self._thread.start()

    # ---- pyserial-like API
    def write(self, payload: bytes) -> int:
        self._check()
        self._to_dut.put(bytes(payload))
        return len(payload)

    def read(self, n: int = 1) -> bytes:
        self._check()
        with self._cond:
            self._want = n
            self._waited = 0
            self._cond.notify_all()
        self._to_dut.put(b"")  # wakes the simulation if it is waiting for work
        with self._cond:
            while len(self._from_dut) < n and self._want and self._error is None:
                self._cond.wait(1.0)
            got = bytes(self._from_dut[:n])
            del self._from_dut[:n]
            self._want = 0
        self._check()
        return got

    def reset_input_buffer(self) -> None:
        with self._cond:
            self._from_dut.clear()

    def close(self) -> None:
        self._closed = True
        self._to_dut.put(None)
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- simulation side
    def _check(self) -> None:
        if self._error is not None:
            raise BridgeError(f"simulation failed: {self._error}") from self._error
        if self._closed:
            raise BridgeError("port closed")

    def _run(self) -> None:
        try:
            if self._vcd:
                with self._sim.write_vcd(self._vcd):
                    self._sim.run()
            else:
                self._sim.run()
        except BaseException as exc:  # reported to the host thread
            self._error = exc
        finally:
            with self._cond:
                self._cond.notify_all()

    async def _bench(self, ctx):
        div = self._divisor
        bits: collections.deque = collections.deque()  # rx levels to drive, one per cycle
        rx_level = 1
        tx_count = -1           # >= 0 while decoding a byte from tx: cycles into the frame
        tx_byte = 0
        ctx.set(self._rx, 1)
        while True:
            # Block while there is nothing to simulate.
            if not bits and tx_count < 0:
                with self._cond:
                    waiting = self._want > len(self._from_dut)
                if not waiting:
                    try:
                        item = self._to_dut.get(timeout=0.05)
                    except queue.Empty:
                        if self._closed:
                            return
                        continue
                    if item is None:
                        return
                    self._to_bits(item, bits)
            # Drain everything the host has written so far (keeps the line busy).
            while True:
                try:
                    item = self._to_dut.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    return
                self._to_bits(item, bits)
            level = bits.popleft() if bits else 1
            if level != rx_level:
                ctx.set(self._rx, level)
                rx_level = level
            await ctx.tick()
            self.cycles += 1
            if self.cycles > self.max_cycles:
                raise SimulationTimeout(f"simulated serial line: over the budget of "
                                        f"{self.max_cycles} cycles")
            tx = ctx.get(self._tx)
            if tx_count < 0:
                if tx == 0:
                    tx_count = 0
            else:
                tx_count += 1
                k = (tx_count - div // 2) // div  # bit index at mid-bit sample points
                if (tx_count - div // 2) % div == 0 and 1 <= k <= 9:
                    if k <= 8:
                        tx_byte |= tx << (k - 1)
                    else:
                        if tx != 1:
                            raise BridgeError("framing error on the simulated tx line")
                        with self._cond:
                            self._from_dut.append(tx_byte)
                            self._waited = 0
                            self._cond.notify_all()
                        tx_byte = 0
                        tx_count = -1
            with self._cond:
                if self._want > len(self._from_dut):
                    self._waited += 1
                    if self._waited > self.timeout_cycles:
                        self._want = 0   # the read times out
                        self._cond.notify_all()

    def _to_bits(self, payload: bytes, bits: collections.deque) -> None:
        div = self._divisor
        for byte in payload:
            frame = [0] + [(byte >> i) & 1 for i in range(8)] + [1]
            for b in frame:
                bits.extend([b] * div)
