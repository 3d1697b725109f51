"""UART, host bridge and board-top tests: bit-level UART checks, every bridge command against
a controllable stand-in accelerator, and GEMMs sent to the real board top over a simulated
serial line (bit-exact with numpy and the golden model). Bitstream builds are slow tests."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from serrano.hw import isa
from serrano.flows.boards import BOARDS, build_board, get_board
from serrano.flows.devices import DEVICES, DesignDoesNotFit, preflight
from serrano.hw.board import BoardTop, SharedMemory, uart_divisor
from serrano.hw.activity import driven_counter_bits
from serrano.hw.config import AcceleratorConfig
from serrano.hw.uart import (COUNTER_BYTES, INFO_BYTES, PROTOCOL_VERSION, STATUS_BYTES, Bridge,
                             BridgeFlags, Command, Reply, UARTRx, UARTTx, info_bytes)
from serrano.sim.backend import counters_from_bits
from serrano.sim.uart_driver import BridgeError, BridgeLink, SimulatedSerial, UARTBackend

ROOT = Path(__file__).resolve().parent.parent


# ---- testbench helpers: a UART on the testbench side -----------------------------------------

async def send_byte(ctx, rx, byte, period):
    """Drive one 8N1 frame on ``rx``; ``period`` may be fractional (rate mismatch)."""
    frame = [0] + [(byte >> i) & 1 for i in range(8)] + [1]
    t = 0.0
    for i, bit in enumerate(frame):
        ctx.set(rx, bit)
        end = (i + 1) * period
        while t < end:
            await ctx.tick()
            t += 1


async def recv_byte(ctx, tx, div, budget):
    """Wait (at most ``budget`` cycles) for a frame on ``tx`` and decode it."""
    for _ in range(budget):
        if ctx.get(tx) == 0:
            break
        await ctx.tick()
    else:
        raise AssertionError("no start bit within the budget")
    for _ in range(div // 2):
        await ctx.tick()
    assert ctx.get(tx) == 0, "start bit too short"
    value = 0
    for i in range(8):
        for _ in range(div):
            await ctx.tick()
        value |= ctx.get(tx) << i
    for _ in range(div):
        await ctx.tick()
    assert ctx.get(tx) == 1, "bad stop bit"
    return value


def run_sim(dut, bench, budget):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    cycles = [0]

    async def watchdog(ctx):
        while True:
            await ctx.tick()
            cycles[0] += 1
            assert cycles[0] < budget, f"testbench over its budget of {budget} cycles"

    sim.add_process(watchdog)
    sim.add_testbench(bench)
    sim.run()


# ---- UART ----------------------------------------------------------------------------------

class _Loop(wiring.Component):
    data_in: In(stream.Signature(8))
    data_out: Out(stream.Signature(8))
    framing: Out(1)
    overrun: Out(1)

    def __init__(self, div):
        self.div = div
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx = tx = UARTTx(self.div)
        m.submodules.rx = rx = UARTRx(self.div)
        wiring.connect(m, wiring.flipped(self.data_in), tx.data)
        wiring.connect(m, rx.data, wiring.flipped(self.data_out))
        m.d.comb += [rx.rx.eq(tx.tx), self.framing.eq(rx.framing),
                     self.overrun.eq(rx.overrun)]
        return m


@pytest.mark.parametrize("div", [4, 7, 16])
def test_uart_loopback_all_bytes(div):
    dut = _Loop(div)
    sent = list(range(256)) if div == 4 else [0x00, 0xFF, 0x55, 0xAA, 0x01, 0x80, 0x7E]
    got = []

    async def bench(ctx):
        ctx.set(dut.data_out.ready, 1)
        for byte in sent:
            ctx.set(dut.data_in.payload, byte)
            ctx.set(dut.data_in.valid, 1)
            await ctx.tick().until(dut.data_in.ready)
        ctx.set(dut.data_in.valid, 0)

    async def collect(ctx):
        while len(got) < len(sent):
            await ctx.tick()
            assert not ctx.get(dut.framing) and not ctx.get(dut.overrun)
            if ctx.get(dut.data_out.valid):
                got.append(ctx.get(dut.data_out.payload))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_testbench(collect)
    sim.add_process(_budget(12 * div * len(sent) + 200))
    sim.run()
    assert got == sent


def _budget(n):
    async def watchdog(ctx):
        for _ in range(n):
            await ctx.tick()
        raise AssertionError(f"over the budget of {n} cycles")
    return watchdog


@pytest.mark.parametrize("skew", [0.96, 1.0, 1.04])
def test_uart_rx_rate_mismatch_and_framing(skew):
    """Bytes from a sender 4 % fast or slow arrive intact; a 0 stop bit is flagged, dropped."""
    div = 16
    dut = UARTRx(div)
    sent = [0x00, 0xFF, 0xA5, 0x5A, 0x81]
    got, framing = [], []

    async def bench(ctx):
        ctx.set(dut.data.ready, 1)
        for byte in sent:
            await send_byte(ctx, dut.rx, byte, div * skew)
        # A frame with a bad stop bit: start, 8 data bits, stop = 0, then idle.
        for bit in [0] + [1] * 8 + [0]:
            ctx.set(dut.rx, bit)
            await ctx.tick().repeat(div)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 * div)

    async def collect(ctx):
        for _ in range(int(div * 10 * (len(sent) * skew + 3))):
            await ctx.tick()
            if ctx.get(dut.data.valid):
                got.append(ctx.get(dut.data.payload))
            if ctx.get(dut.framing):
                framing.append(True)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_testbench(collect)
    sim.run()
    assert got == sent
    assert framing == [True]


def test_uart_arguments():
    with pytest.raises(ValueError, match="divisor"):
        UARTRx(3)
    with pytest.raises(ValueError, match="divisor"):
        UARTTx(2.5)
    assert uart_divisor(12e6, 115200) == 104
    assert uart_divisor(12e6, 1_000_000) == 12
    assert uart_divisor(12e6, 3_000_000) == 4
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(12e6, 4_000_000)
    with pytest.raises(ValueError, match="within 2 %"):
        uart_divisor(12e6, 1_600_000)   # 7.5 cycles per bit: 8 gives 1.5 MBd, 6 % off
    with pytest.raises(ValueError, match="baud"):
        uart_divisor(12e6, 0)


# ---- the bridge against a controllable stand-in accelerator ----------------------------------

class _Rig(wiring.Component):
    """Bridge + shared memory; the accelerator side is driven by the testbench."""

    def __init__(self, config, div, timeout):
        self.config = config
        self.div = div
        self.timeout = timeout
        super().__init__({
            "rx": In(1, init=1), "tx": Out(1),
            "instr": Out(stream.Signature(isa.INSTR_WIDTH)), "clear": Out(1),
            "status": In(isa.Status), "counters": In(isa.Counters),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = b = Bridge(self.config, divisor=self.div, timeout=self.timeout,
                                         clk_hz=1_000_000, baud=1_000_000 // self.div)
        m.submodules.mem = mem = SharedMemory(self.config)
        wiring.connect(m, b.mem, mem.host)
        wiring.connect(m, b.instr, wiring.flipped(self.instr))
        m.d.comb += [b.rx.eq(self.rx), self.tx.eq(b.tx), self.clear.eq(b.clear),
                     b.status.eq(self.status), b.counters.eq(self.counters),
                     mem.acc.req.valid.eq(0)]
        return m


def test_bridge_commands():
    cfg = AcceleratorConfig(rows=2, cols=2, act_depth=64, acc_depth=64, mem_bytes=256)
    div, timeout = 4, 400
    dut = _Rig(cfg, div, timeout)
    status_layout = data.Layout.cast(isa.Status)
    counter_layout = data.Layout.cast(isa.Counters)

    async def bench(ctx):
        async def cmd(payload, n_reply):
            for byte in payload:
                await send_byte(ctx, dut.rx, byte, div)
            return bytes([await recv_byte(ctx, dut.tx, div, 2000) for _ in range(n_reply)])

        def args(addr, count):
            return addr.to_bytes(4, "little") + count.to_bytes(4, "little")

        ok, err, busy = Reply.OK.value, Reply.ERROR.value, Reply.BUSY.value
        # INFO
        reply = await cmd([Command.INFO.value], INFO_BYTES + 1)
        assert reply == info_bytes(cfg, 1_000_000, 250_000) + bytes([ok])
        # WRITE two words, READ them back, FILL one, READ again
        words = bytes(range(1, 17))
        assert await cmd(bytes([Command.WRITE.value]) + args(3, 2) + words, 1) == bytes([ok])
        assert await cmd(bytes([Command.READ.value]) + args(3, 2), 17) == words + bytes([ok])
        assert await cmd(bytes([Command.FILL.value]) + args(4, 1), 1) == bytes([ok])
        assert await cmd(bytes([Command.READ.value]) + args(3, 2), 17) == \
            words[:8] + bytes(8) + bytes([ok])
        # Bad ranges: the last word is 31 (256 B / 8)
        assert await cmd(bytes([Command.READ.value]) + args(31, 2), 1) == bytes([err])
        assert await cmd(bytes([Command.READ.value]) + args(0, 0), 1) == bytes([err])
        assert await cmd(bytes([Command.FILL.value]) + args(1 << 31, 1), 1) == bytes([err])
        # The bridge keeps only the bits a valid address or count needs (6 here): a bit set
        # anywhere above them is still an error, even when the kept bits are in range.
        for a, n in [(0, (1 << 6) + 1), (0, (1 << 16) + 1), (0, (1 << 32) - 1), (0, 1 << 6),
                     (1 << 6, 1), (1 << 8, 1), (1 << 24, 1), ((1 << 31) | 3, 1)]:
            assert await cmd(bytes([Command.READ.value]) + args(a, n), 1) == bytes([err]), \
                (a, n)
        assert await cmd(bytes([Command.READ.value]) + args(31, 1), 9) == bytes(8) + \
            bytes([ok])
        # A WRITE out of range swallows its data, then answers ERROR once the line is quiet.
        assert await cmd(bytes([Command.WRITE.value]) + args(30, 3) + bytes(24), 1) == \
            bytes([err])
        assert await cmd(bytes([Command.READ.value]) + args(30, 2), 17) == bytes(16) + \
            bytes([ok])
        # Unknown command
        assert await cmd([0x7F], 1) == bytes([err])
        # A half-sent command is dropped after the timeout: the next command works.
        for byte in bytes([Command.READ.value, 1, 2]):
            await send_byte(ctx, dut.rx, byte, div)
        await ctx.tick().repeat(timeout + 10)
        assert await cmd([Command.INFO.value], INFO_BYTES + 1) == \
            info_bytes(cfg, 1_000_000, 250_000) + bytes([ok])

        # INSTR: the stand-in accelerator is not ready; one word waits, the next is BUSY.
        ctx.set(dut.instr.ready, 0)
        w1 = (0x0123456789ABCDEF << 64) | 0xFEDCBA9876543210
        w2 = 0x42
        assert await cmd(bytes([Command.INSTR.value]) + w1.to_bytes(16, "little"), 1) == \
            bytes([ok])
        assert ctx.get(dut.instr.valid) and ctx.get(dut.instr.payload) == w1
        assert await cmd(bytes([Command.INSTR.value]) + w2.to_bytes(16, "little"), 1) == \
            bytes([busy])
        # STATUS reports the waiting word and the accelerator's status bits.
        st = status_layout.const({"busy": 1, "done": 0, "error": isa.ErrorCode.MEM_RANGE,
                                  "idle": 0, "fault_index": 0x12345678})
        ctx.set(dut.status, st)
        reply = await cmd([Command.STATUS.value], STATUS_BYTES + 2)
        assert int.from_bytes(reply[:STATUS_BYTES], "little") == st.as_value().value
        assert reply[STATUS_BYTES] == BridgeFlags.INSTR_PENDING and reply[-1] == ok
        # CLEAR is refused while busy and not idle.
        assert await cmd([Command.CLEAR.value], 1) == bytes([busy])
        # The accelerator takes the word; the second one now goes through.
        ctx.set(dut.instr.ready, 1)
        await ctx.tick()
        assert not ctx.get(dut.instr.valid)
        ctx.set(dut.instr.ready, 0)
        assert await cmd(bytes([Command.INSTR.value]) + w2.to_bytes(16, "little"), 1) == \
            bytes([ok])
        assert ctx.get(dut.instr.payload) == w2
        # COUNTERS
        cnt = counter_layout.const({"cycles": 0xABCDEF012345, "instructions": 7,
                                    "store_stall": (1 << 48) - 1})
        ctx.set(dut.counters, cnt)
        reply = await cmd([Command.COUNTERS.value], COUNTER_BYTES + 1)
        assert int.from_bytes(reply[:-1], "little") == cnt.as_value().value
        assert reply[-1] == ok
        # CLEAR when idle: one pulse on clear, the waiting word is dropped.
        ctx.set(dut.status, status_layout.const({"busy": 0, "idle": 1}))
        await send_byte(ctx, dut.rx, Command.CLEAR.value, div)
        trace = []   # (clear, tx) per cycle: the reply follows the pulse at once
        for _ in range(30 * div):
            trace.append((ctx.get(dut.clear), ctx.get(dut.tx)))
            await ctx.tick()
        assert sum(c for c, _ in trace) == 1
        assert not ctx.get(dut.instr.valid)
        tx = [t for _, t in trace]
        start = tx.index(0)
        bits = [tx[start + div // 2 + k * div] for k in range(10)]
        assert bits[0] == 0 and bits[9] == 1
        assert sum(b << i for i, b in enumerate(bits[1:9])) == ok

    run_sim(dut, bench, 60_000)


def test_bridge_counters_of_narrow_counters():
    """With ``counter_width`` < 48 the bridge sends each counter's low bits, zero-extended (as
    the accelerator's narrow counters are), whatever the upper bits of its input."""
    cfg = AcceleratorConfig(rows=2, cols=2, act_depth=64, acc_depth=64, mem_bytes=256,
                            counter_width=20)
    div = 4
    dut = _Rig(cfg, div, 400)
    layout = data.Layout.cast(isa.Counters)
    values = {name: (0xABCDE0 + 17 * i) for i, (name, _) in enumerate(layout)}

    async def bench(ctx):
        ctx.set(dut.counters, layout.const({name: v | (0x5A5A5 << 24)
                                            for name, v in values.items()}))
        await send_byte(ctx, dut.rx, Command.COUNTERS.value, div)
        reply = bytes([await recv_byte(ctx, dut.tx, div, 2000)
                       for _ in range(COUNTER_BYTES + 1)])
        # (vector_elements has no source without the vector unit: sent as 0)
        expect = layout.const({name: v & ((1 << driven_counter_bits(cfg, name)) - 1)
                               for name, v in values.items()})
        assert driven_counter_bits(cfg, "acc_reads") == 20
        assert int.from_bytes(reply[:-1], "little") == expect.as_value().value
        assert reply[-1] == Reply.OK.value

    run_sim(dut, bench, 5_000)


def test_bridge_counters_without_activity_counters():
    """With ``activity_counters=False`` the activity fields are sent as 0 whatever the
    bridge's input (the accelerator drives them 0), the others as before."""
    cfg = AcceleratorConfig(rows=2, cols=2, act_depth=64, acc_depth=64, mem_bytes=256,
                            activity_counters=False)
    div = 4
    dut = _Rig(cfg, div, 400)
    layout = data.Layout.cast(isa.Counters)
    values = {name: (0xABCDE0 + 17 * i) << 20 for i, (name, _) in enumerate(layout)}

    async def bench(ctx):
        ctx.set(dut.counters, layout.const(values))
        await send_byte(ctx, dut.rx, Command.COUNTERS.value, div)
        reply = bytes([await recv_byte(ctx, dut.tx, div, 2000)
                       for _ in range(COUNTER_BYTES + 1)])
        got = counters_from_bits(int.from_bytes(reply[:-1], "little"))
        assert got == {name: 0 if name in isa.ACTIVITY_COUNTERS else v
                       for name, v in values.items()}
        assert reply[-1] == Reply.OK.value

    run_sim(dut, bench, 8_000)


class _CannedPort:
    """A serial port that answers every command with canned bytes."""

    def __init__(self, reply: bytes):
        self.reply, self.sent = bytearray(reply), bytearray()

    def write(self, data: bytes) -> None:
        self.sent += data

    def read(self, n: int) -> bytes:
        out, self.reply = bytes(self.reply[:n]), self.reply[n:]
        return out


def test_driver_rejects_another_protocol_version():
    """Versions 2 and 3 changed the COUNTERS reply (the activity counters, then
    vector_elements): a host must not parse an older bridge's 42 or 102 bytes as the new
    struct."""
    cfg = AcceleratorConfig(rows=2, cols=2, act_depth=64, acc_depth=64, mem_bytes=256)
    info = bytearray(info_bytes(cfg, 1_000_000, 250_000))
    assert info[4] == PROTOCOL_VERSION == 3
    assert BridgeLink(_CannedPort(bytes(info) + bytes([Reply.OK.value]))).info().config() == cfg
    for old in (1, 2):
        info[4] = old
        with pytest.raises(BridgeError, match=f"bridge protocol version {old}, host speaks 3"):
            BridgeLink(_CannedPort(bytes(info) + bytes([Reply.OK.value]))).info()


# ---- the real board top over a simulated serial line -----------------------------------------

@pytest.fixture(scope="module")
def link():
    cfg = AcceleratorConfig(rows=2, cols=2, act_depth=64, acc_depth=64, mem_bytes=1024)
    top = BoardTop(cfg, clk_hz=4e6, baud=1_000_000)
    assert top.divisor == 4
    port = SimulatedSerial(top, rx=top.uart_rx, tx=top.uart_tx, divisor=top.divisor,
                           timeout_cycles=20_000, max_cycles=2_000_000)
    yield BridgeLink(port)
    port.close()


def test_board_top_memory_access(link):
    info = link.info()
    assert (info.rows, info.cols, info.mem_width, info.mem_bytes) == (2, 2, 8, 1024)
    assert info.config() == AcceleratorConfig(rows=2, cols=2, act_depth=64, acc_depth=64,
                                              mem_bytes=1024)
    rng = np.random.default_rng(3)
    blob = rng.integers(0, 256, 37, dtype=np.uint8).tobytes()
    link.write(5, blob)                     # unaligned at both ends
    assert link.read(5, 37) == blob
    assert link.read(0, 5) == bytes(5)      # bytes around it untouched
    assert link.read(42, 6) == bytes(6)
    with pytest.raises(BridgeError, match="rejected"):
        link.read_words(127, 2)
    st = link.status()
    assert not st.busy and st.idle and not st.flags


def _operands(seed, M, K, N):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (M, K), dtype=np.int8)
    w = rng.integers(-128, 128, (K, N), dtype=np.int8)
    x[0, :] = -128
    w[:, 0] = -128                         # extreme products
    return rng, x, w


def test_gemm_over_simulated_serial_is_bit_exact(link):
    """A GEMM compiled by the host runtime, sent over the simulated UART to the board top,
    comes back bit-exact."""
    from serrano.sim.runtime import Accelerator
    cfg = link.info().config()
    _, x, w = _operands(11, 3, 5, 3)       # not multiples of the 2x2 array
    board = Accelerator(cfg, backend=UARTBackend(link))
    y = board.matmul(x, w)
    assert np.array_equal(y, x.astype(np.int32) @ w.astype(np.int32))
    assert board.stats.counters["instructions"] == len(board.last_program)


def test_gemm_with_fpga_multipliers_in_simulation():
    """The board top with an FPGA multiplier target (mixed DSP and LUT PEs, DSP latency 3;
    vendor primitives replaced by their cycle-equivalent models) computes the same GEMM."""
    from serrano.flows.designs import accepts_target as _accepts_target
    from serrano.hw.mult import MultiplierTarget
    from serrano.hw.top import Accelerator as Top
    from serrano.sim.runtime import Accelerator
    if not _accepts_target(Top):
        pytest.skip("hw.top.Accelerator takes no multiplier target yet (see docs/fpga.md)")
    cfg = AcceleratorConfig(rows=2, cols=2, act_depth=64, acc_depth=64, mem_bytes=512)
    target = MultiplierTarget(family="ice40", dsp_pes=2, simulation=True)
    top = BoardTop(cfg, clk_hz=4e6, baud=1_000_000, target=target)
    port = SimulatedSerial(top, rx=top.uart_rx, tx=top.uart_tx, divisor=top.divisor,
                           timeout_cycles=20_000, max_cycles=2_000_000)
    try:
        _, x, w = _operands(13, 4, 3, 2)
        y = Accelerator(cfg, backend=UARTBackend(BridgeLink(port))).matmul(x, w)
    finally:
        port.close()
    assert np.array_equal(y, x.astype(np.int32) @ w.astype(np.int32))


@pytest.mark.slow
def test_requantized_layer_over_simulated_serial(link):
    """A requantized layer through the output stage, against the golden model."""
    from serrano.sim.runtime import Accelerator
    cfg = link.info().config()
    rng, x, w = _operands(12, 3, 5, 3)
    N = w.shape[1]
    board = Accelerator(cfg, backend=UARTBackend(link))
    golden = Accelerator(cfg, backend="golden")
    kw = dict(bias=rng.integers(-1000, 1000, N), multiplier=1 << 30, shift=-6, zero_point=3,
              relu=True)
    assert np.array_equal(board.linear(x, w, **kw), golden.linear(x, w, **kw))


def test_uart_backend_reports_errors(link):
    """A faulting program comes back with its error and fault index, like the simulators."""
    from serrano.hw.isa import Opcode, encode
    bad = encode(Opcode.LOAD, target=0, buf_addr=0, n_rows=1, row_bytes=1,
                 mem_addr=2000, mem_stride=0)       # past the 1 KiB memory
    result = UARTBackend(link).run([encode(Opcode.NOP), bad, encode(Opcode.HALT)],
                                   np.zeros(16, dtype=np.uint8))
    assert result.status.done and result.status.error == isa.ErrorCode.MEM_RANGE
    assert result.status.fault_index == 1
    assert len(result.memory) == 16


def test_driver_arguments(link):
    with pytest.raises(TypeError, match="pyserial-like"):
        BridgeLink(object())
    with pytest.raises(ValueError, match="multiple of mem_width"):
        link.write_words(0, b"abc")
    with pytest.raises(ValueError, match="128 bits"):
        link.push(1 << 128)
    with pytest.raises(ValueError, match="exceeds"):
        UARTBackend(link).run([], np.zeros(4096, dtype=np.uint8))


# ---- boards ----------------------------------------------------------------------------------

def test_board_table_and_fit():
    assert set(BOARDS) == {"icebreaker", "ulx3s-85f", "orangecrab-25f"}
    for spec in BOARDS.values():
        dev = DEVICES[spec.device]
        platform = spec.platform()()
        uart_divisor(platform.default_clk_frequency, spec.baud)
        cfg = spec.config
        # Memory and buffers fit next to each other (lower bound, before any tool runs).
        from serrano.flows.designs import Design, config_buffers as _config_buffers
        design = Design("b", lambda t: None, n_pes=cfg.rows * cfg.cols, config=cfg,
                        buffers=_config_buffers(cfg) + [("memory", 8 * cfg.mem_width,
                                                         cfg.mem_words)])
        preflight(design, dev)
        assert spec.program and spec.uart
        # No programmer among what the build requires or runs.
        assert "openFPGALoader" not in platform.required_tools
        assert not any("dfu-suffix" in t for t in platform.command_templates)
    with pytest.raises(ValueError, match="unknown board 'icestick'.*icebreaker"):
        get_board("icestick")


def test_build_board_bad_input_before_tools(monkeypatch, tmp_path, capsys):
    def refuse(*a, **k):
        raise AssertionError("a tool was started")
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "check_call", refuse)
    with pytest.raises(ValueError, match="unknown board"):
        build_board("de10-nano", tmp_path)
    with pytest.raises(ValueError, match="too fast"):
        build_board("icebreaker", tmp_path, baud=20_000_000)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        build_board("icebreaker", tmp_path, seed=-1)
    big = AcceleratorConfig(rows=8, cols=8, act_depth=16384, mem_bytes=1 << 20)
    with pytest.raises(ValueError, match="block RAMs"):
        build_board("orangecrab-25f", tmp_path, config=big)
    from dataclasses import replace
    for option in ({"flat_synthesis": True}, {"abc9_wire_delay_ps": 1000}):
        monkeypatch.setitem(BOARDS, "orangecrab-25f", replace(BOARDS["orangecrab-25f"],
                                                              **option))
        with pytest.raises(ValueError, match="iCE40 boards only, not orangecrab-25f"):
            build_board("orangecrab-25f", tmp_path)
    from serrano.commands import build_board as script
    assert script.main(["--board", "nexys"]) == 2
    assert "unknown board 'nexys'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_build_icebreaker_bitstream(tmp_path):
    # ~5 minutes: nextpnr-ice40 on a 91 % full UP5K (the board's seed meets the 40.5 MHz clock).
    out = tmp_path / "icebreaker"
    rep = build_board("icebreaker", out)
    bit = Path(rep["board"]["bitstream"])
    assert bit.exists() and bit.stat().st_size > 100_000   # an UP5K image is ~104 KB
    res = rep["resources"]
    assert res["DSP"]["used"] <= 8 and res["LUT"]["used"] <= 5280
    # The board memory is in SPRAM, every buffer in block RAM: nothing in flip-flops.
    mems = {m["path"].split(".")[-2]: m for m in rep["memories"]}
    assert rep["board"]["clk_mhz"] == 40.5   # from the PLL
    assert mems["memory"]["mapped_to"].startswith("SPRAM")
    assert res["SPRAM"]["used"] == 4
    assert all(m["in_ram"] for m in rep["memories"] if m["bits"] >= 1024), rep["memories"]
    assert all(c["met"] for c in rep["timing"]["clocks"]), rep["timing"]
    assert json.loads((out / "report.json").read_text())["board"]["name"] == "icebreaker"


@pytest.mark.parametrize("f_in,f_out", [(48, 40), (25, 50), (25, 75), (12, 33)])
def test_ecp5_pll_matches_ecppll(f_in, f_out):
    """The PLL settings agree with Project Trellis' ecppll (a pip tool: yowasp-ecppll)."""
    import re
    from serrano.hw.board import ecp5_pll_params
    from serrano.flows.tools import tool_path
    params = ecp5_pll_params(f_in * 1e6, f_out * 1e6)
    out = subprocess.run([tool_path("yowasp-ecppll"), "-i", str(f_in), "-o", str(f_out)],
                         capture_output=True, text=True, timeout=300).stdout
    ref = {k: int(v) for k, v in re.findall(r"(Refclk|Feedback|clkout0) divisor: (\d+)", out)}
    assert (params["CLKI_DIV"], params["CLKFB_DIV"], params["CLKOP_DIV"]) == \
        (ref["Refclk"], ref["Feedback"], ref["clkout0"])
    made = float(re.search(r"clkout0 frequency: ([\d.]+) MHz", out).group(1))
    assert params["f_out"] == pytest.approx(made * 1e6, rel=1e-3)


@pytest.mark.parametrize("f_in,f_out", [(12, 40), (12, 48), (12, 30), (25, 100), (12, 16),
                                        (100, 275)])
def test_ice40_pll_matches_icepll(f_in, f_out):
    """The PLL settings agree with IceStorm's icepll (a pip tool: yowasp-icepll)."""
    import re
    from serrano.hw.board import ice40_pll_params
    from serrano.flows.tools import tool_path
    params = ice40_pll_params(f_in * 1e6, f_out * 1e6)
    out = subprocess.run([tool_path("yowasp-icepll"), "-i", str(f_in), "-o", str(f_out)],
                         capture_output=True, text=True, timeout=300).stdout
    ref = {k: int(v) for k, v in re.findall(r"(DIVR|DIVF|DIVQ|FILTER_RANGE): +(\d+)", out)}
    assert {k: params[k] for k in ref} == ref
    made = float(re.search(r"F_PLLOUT: +([\d.]+) MHz \(achieved\)", out).group(1))
    assert params["f_out"] == pytest.approx(made * 1e6, abs=1e3)


def test_ice40_pll_bad_frequencies():
    from serrano.hw.board import ice40_pll_params, pll_params
    assert ice40_pll_params(12e6, 40e6)["f_out"] == 39.75e6   # 12 MHz * 53 / 16
    with pytest.raises(ValueError, match=r"output frequency 300 MHz is outside 16-275 MHz"):
        ice40_pll_params(12e6, 300e6)
    with pytest.raises(ValueError, match=r"output frequency 10 MHz is outside"):
        ice40_pll_params(12e6, 10e6)
    with pytest.raises(ValueError, match=r"input frequency 8 MHz is outside 10-133 MHz"):
        ice40_pll_params(8e6, 40e6)
    with pytest.raises(ValueError, match="must be a number in Hz, not '40'"):
        ice40_pll_params(12e6, "40")
    with pytest.raises(ValueError, match="must be a number in Hz, not True"):
        ice40_pll_params(True, 40e6)
    assert pll_params("ice40", 12e6, 40e6) == ice40_pll_params(12e6, 40e6)
    with pytest.raises(ValueError, match="only implemented for ECP5 and iCE40, not 'gowin'"):
        pll_params("gowin", 12e6, 40e6)


def test_board_clocks():
    """The iCEBreaker runs from its PLL at 40.5 MHz; the UART divisor is the PLL's."""
    from serrano.hw.board import pll_params
    spec = BOARDS["icebreaker"]
    platform = spec.platform()()
    f = pll_params("ice40", platform.default_clk_frequency, spec.sys_clk_hz)["f_out"]
    assert f == 40.5e6   # 12 MHz * 54 / 16
    assert uart_divisor(f, spec.baud) == 352
