"""Load and store units at block level: strided, unaligned rows, memory backpressure."""

import numpy as np
import pytest
from amaranth import Elaboratable, Module, signed
from amaranth.lib import data, memory, wiring

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.loadstore import LoadUnit, StoreUnit
from serrano.hw.mult import MultiplierTarget
from serrano.sim.asm import output_params_dtype, pack_output_params
from serrano.sim.numerics import output_stage
from simutil import simulate


def _random_loads(cfg, rng, memory_size, count):
    entry = {isa.LoadTarget.ACT: cfg.act_entry_bytes, isa.LoadTarget.WGT: cfg.wgt_entry_bytes,
             isa.LoadTarget.PARAM: cfg.param_entry_bytes}
    depth = {isa.LoadTarget.ACT: cfg.act_depth, isa.LoadTarget.WGT: cfg.wgt_depth,
             isa.LoadTarget.PARAM: cfg.param_depth}
    cmds = []
    for _ in range(count):
        target = isa.LoadTarget(int(rng.integers(0, 3)))
        n_rows = int(rng.integers(1, depth[target] + 1))
        row_bytes = int(rng.integers(1, entry[target] + 1))
        stride = int(rng.integers(0, 80))
        if (n_rows - 1) * stride + row_bytes > memory_size:
            stride = 0
        extent = (n_rows - 1) * stride + row_bytes
        cmds.append(dict(target=target, buf_addr=int(rng.integers(0, depth[target] - n_rows + 1)),
                         n_rows=n_rows, row_bytes=row_bytes,
                         mem_addr=int(rng.integers(0, memory_size - extent + 1)),
                         mem_stride=stride))
    return cmds, entry


def _run_load(cfg, memory, cmds, *, backpressure, rng, max_cycles, name):
    """Runs ``cmds`` through a load unit against ``memory``; returns the buffer writes it made
    as ``(target, entry, bytes)`` and checks that every write happens while ``busy`` is high
    (the decoder's scoreboard relies on it)."""
    W = cfg.mem_width
    dut = LoadUnit(cfg)
    ports = {isa.LoadTarget.ACT: dut.act_wr, isa.LoadTarget.WGT: dut.wgt_wr,
             isa.LoadTarget.PARAM: dut.param_wr}
    writes = []
    finished = []

    async def memory_model(ctx):
        """Accepts requests when it likes (backpressure), answers in order after 1-4
        cycles; records every buffer write the unit makes."""
        pending = []
        cycle = 0
        while not finished:
            ready = int(rng.integers(0, 3) != 0) if backpressure else 1
            ctx.set(dut.mem_req.ready, ready)
            if pending and pending[0][0] <= cycle:
                ctx.set(dut.mem_resp.payload, pending.pop(0)[1])
                ctx.set(dut.mem_resp.valid, 1)
            else:
                ctx.set(dut.mem_resp.valid, 0)
            if ready and ctx.get(dut.mem_req.valid):
                assert ctx.get(dut.mem_req.payload.write) == 0
                a = ctx.get(dut.mem_req.payload.addr) * W
                word = int.from_bytes(memory[a:a + W].tobytes(), "little")
                latency = int(rng.integers(1, 5)) if backpressure else 2
                due = max(cycle + latency, pending[-1][0] + 1 if pending else 0)
                pending.append((due, word))
            for target, port in ports.items():
                if ctx.get(port.en):
                    assert ctx.get(dut.activity.busy), "buffer write after busy dropped"
                    nbytes = len(port.data.as_value()) // 8
                    value = ctx.get(port.data.as_value())
                    writes.append((target, ctx.get(port.addr), value.to_bytes(nbytes, "little")))
            await ctx.tick()
            cycle += 1

    async def bench(ctx):
        for cmd in cmds:
            for name_, value in cmd.items():
                ctx.set(getattr(dut.cmd.payload, name_), value)
            ctx.set(dut.cmd.valid, 1)
            while True:  # the command is taken at the edge where valid and ready are high
                ready = ctx.get(dut.cmd.ready)
                await ctx.tick()
                if ready:
                    break
            ctx.set(dut.cmd.valid, 0)
        await ctx.tick()
        while ctx.get(dut.activity.busy):
            await ctx.tick()
        await ctx.tick()
        finished.append(True)

    simulate(dut, bench, memory_model, max_cycles=max_cycles, name=name)
    return writes


def _expected_loads(memory, cmds, entry):
    expected = []
    for cmd in cmds:
        for i in range(cmd["n_rows"]):
            row = np.zeros(entry[cmd["target"]], np.uint8)
            start = cmd["mem_addr"] + i * cmd["mem_stride"]
            row[:cmd["row_bytes"]] = memory[start:start + cmd["row_bytes"]]
            expected.append((cmd["target"], cmd["buf_addr"] + i, row.tobytes()))
    return expected


@pytest.mark.parametrize("mem_width", [1, 4, 8, 16])
@pytest.mark.parametrize("backpressure", [False, True])
def test_load_unit_assembles_unaligned_strided_rows(mem_width, backpressure):
    cfg = AcceleratorConfig(rows=3, cols=5, act_depth=16, wgt_depth=16, param_depth=4,
                            mem_width=mem_width, mem_bytes=4096)
    rng = np.random.default_rng(mem_width * 2 + backpressure)
    memory = rng.integers(0, 256, 1024, dtype=np.uint8)
    cmds, entry = _random_loads(cfg, rng, memory.size, 12)
    writes = _run_load(cfg, memory, cmds, backpressure=backpressure, rng=rng,
                       max_cycles=20_000,
                       name=f"load_w{mem_width}_{'bp' if backpressure else 'free'}")
    assert writes == _expected_loads(memory, cmds, entry)


@pytest.mark.parametrize("mem_width", [1, 2, 4, 8])
@pytest.mark.parametrize("backpressure", [False, True])
def test_load_unit_every_alignment_and_length(mem_width, backpressure):
    """Every start lane, every row length up to the widest entry (parameters), strides that
    keep, advance and wrap the lane offset from row to row; back-to-back commands."""
    cfg = AcceleratorConfig(rows=2, cols=2, act_depth=8, wgt_depth=8, param_depth=8,
                            mem_width=mem_width, mem_bytes=1024)
    rng = np.random.default_rng(100 + mem_width * 2 + backpressure)
    memory = rng.integers(0, 256, 1024, dtype=np.uint8)
    entry = {isa.LoadTarget.ACT: cfg.act_entry_bytes, isa.LoadTarget.WGT: cfg.wgt_entry_bytes,
             isa.LoadTarget.PARAM: cfg.param_entry_bytes}
    cmds = []
    for start in range(mem_width):
        for row_bytes in range(1, cfg.param_entry_bytes + 1):
            target = isa.LoadTarget.PARAM if row_bytes > 2 or start % 2 else isa.LoadTarget.ACT
            stride = int(rng.choice([0, 1, row_bytes, mem_width + 1, 2 * mem_width - 1, 37]))
            n_rows = int(rng.integers(1, 4))
            cmds.append(dict(target=target, buf_addr=int(rng.integers(0, 8 - n_rows + 1)),
                             n_rows=n_rows, row_bytes=min(row_bytes, entry[target]),
                             mem_addr=64 * mem_width + start + 16 * int(rng.integers(0, 8)),
                             mem_stride=stride))
    writes = _run_load(cfg, memory, cmds, backpressure=backpressure, rng=rng,
                       max_cycles=60_000, name=f"load_align_w{mem_width}")
    assert writes == _expected_loads(memory, cmds, entry)


def test_load_unit_streams_one_word_per_cycle():
    """Without backpressure a long load takes one cycle per word read plus a fixed overhead
    (set-up and the response pipeline): no bubbles between rows."""
    cfg = AcceleratorConfig(rows=8, cols=8, act_depth=64, mem_width=8, mem_bytes=4096)
    rng = np.random.default_rng(7)
    memory = rng.integers(0, 256, 4096, dtype=np.uint8)
    n_rows = 64
    cmds = [dict(target=isa.LoadTarget.ACT, buf_addr=0, n_rows=n_rows, row_bytes=8,
                 mem_addr=3, mem_stride=8)]  # every row straddles two words
    writes = _run_load(cfg, memory, cmds, backpressure=False, rng=rng,
                       max_cycles=2 * n_rows + 20, name="load_stream")
    assert writes == _expected_loads(memory, cmds, {isa.LoadTarget.ACT: 8})


class _StoreHarness(Elaboratable):
    """A store unit reading preloaded accumulator and parameter memories."""

    def __init__(self, cfg, acc_rows, param_entries, target=None):
        self.store = StoreUnit(cfg, target)
        self.acc = memory.Memory(shape=data.ArrayLayout(signed(32), cfg.cols),
                                 depth=cfg.acc_depth, init=acc_rows)
        self.params = memory.Memory(shape=data.ArrayLayout(isa.OutputParams, cfg.cols),
                                    depth=cfg.param_depth, init=param_entries)

    def elaborate(self, platform):
        m = Module()
        m.submodules.store = self.store
        m.submodules.acc = self.acc
        m.submodules.params = self.params
        wiring.connect(m, self.store.acc_rd, self.acc.read_port())
        wiring.connect(m, self.store.param_rd, self.params.read_port())
        return m


def _store_fixture(cfg, rng):
    cols = cfg.cols
    acc = rng.integers(-2**31, 2**31, (cfg.acc_depth, cols), dtype=np.int64)
    acc[0, :3] = [-2**31, 2**31 - 1, 0][:cols]
    n = cfg.param_depth
    params = pack_output_params(
        bias=rng.integers(-1000, 1000, n * cols), multiplier=rng.integers(2**30, 2**31, n * cols),
        shift=rng.integers(-31, 31, n * cols), zero_point=rng.integers(-128, 128, n * cols),
        lo=-128, hi=127, cols=cols)
    return acc, params


def _run_store(cfg, acc, params, cmds, *, rng, backpressure, max_cycles, name, target=None):
    """Runs ``cmds`` through a store unit; returns (memory image after, expected image).
    ``target`` picks the output stage's multipliers (ECP5: a longer pipeline, more credits)."""
    W = cfg.mem_width
    param_entries = [
        [{name_: int(v[name_]) for name_ in ("bias", "multiplier", "shift", "zero_point", "lo",
                                            "hi")}
         for v in params[e].view(output_params_dtype())] for e in range(cfg.param_depth)]
    dut = _StoreHarness(cfg, [list(map(int, r)) for r in acc], param_entries, target)
    store = dut.store
    memory_image = rng.integers(0, 256, 1024, dtype=np.uint8)
    expected = memory_image.copy()
    for cmd in cmds:
        raw, acc_addr, n_rows, n_cols = cmd["raw"], cmd["acc_addr"], cmd["n_rows"], cmd["n_cols"]
        rows = acc[acc_addr:acc_addr + n_rows, :n_cols]
        if raw:
            out = rows.astype("<i4").view(np.uint8).reshape(n_rows, 4 * n_cols)
        else:
            p = params[cmd["param_addr"]].view(output_params_dtype())[:n_cols]
            out = output_stage(rows.astype(np.int32), p["bias"], p["multiplier"], p["shift"],
                               p["zero_point"], p["lo"], p["hi"]).view(np.uint8)
        for i in range(n_rows):
            start = cmd["mem_addr"] + i * cmd["mem_stride"]
            expected[start:start + out.shape[1]] = out[i]
    finished = []

    async def memory_model(ctx):
        while not finished:
            ready = int(rng.integers(0, 3) != 0) if backpressure else 1
            ctx.set(store.mem_req.ready, ready)
            if ready and ctx.get(store.mem_req.valid):
                assert ctx.get(store.mem_req.payload.write) == 1
                base = ctx.get(store.mem_req.payload.addr) * W
                mask = ctx.get(store.mem_req.payload.mask)
                assert mask, "write request without any byte enabled"
                word = ctx.get(store.mem_req.payload.data)
                for b in range(W):
                    if mask >> b & 1:
                        memory_image[base + b] = (word >> 8 * b) & 0xFF
            if not ctx.get(store.activity.busy):
                assert not ctx.get(store.mem_req.valid), "write request while not busy"
            await ctx.tick()

    async def bench(ctx):
        for cmd in cmds:
            for name_, value in cmd.items():
                ctx.set(getattr(store.cmd.payload, name_), value)
            ctx.set(store.cmd.valid, 1)
            while True:
                ready = ctx.get(store.cmd.ready)
                await ctx.tick()
                if ready:
                    break
            ctx.set(store.cmd.valid, 0)
        await ctx.tick()
        while ctx.get(store.activity.busy):
            await ctx.tick()
        finished.append(True)

    if callable(max_cycles):  # a budget that depends on the unit (its output-stage latency)
        max_cycles = max_cycles(store)
    simulate(dut, bench, memory_model, max_cycles=max_cycles, name=name)
    return memory_image, expected


@pytest.mark.parametrize("mem_width", [1, 4, 8])
def test_store_unit_under_backpressure_writes_exactly_its_rows(mem_width):
    cfg = AcceleratorConfig(rows=2, cols=3, acc_depth=16, param_depth=2,
                            mem_width=mem_width, mem_bytes=4096)
    rng = np.random.default_rng(40 + mem_width)
    acc, params = _store_fixture(cfg, rng)
    cmds = [dict(raw=raw, acc_addr=acc_addr, n_rows=n_rows, n_cols=n_cols,
                 param_addr=param_addr, mem_addr=mem_addr, mem_stride=stride)
            for raw, acc_addr, n_rows, n_cols, param_addr, mem_addr, stride in (
                (1, 0, 5, 3, 0, 3, 17), (0, 2, 9, 2, 1, 301, 5), (0, 0, 16, 3, 0, 700, 3),
                (1, 7, 1, 1, 0, 1020, 0), (0, 4, 3, 3, 1, 500, 0))]
    got, expected = _run_store(cfg, acc, params, cmds, rng=rng, backpressure=True,
                               max_cycles=5_000, name=f"store_w{mem_width}")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("mem_width", [1, 2, 4, 8])
@pytest.mark.parametrize("backpressure", [False, True])
def test_store_unit_every_alignment_and_width(mem_width, backpressure):
    """Every start lane x every column count x raw/requantized, with strides that keep,
    advance and wrap the lane offset from row to row."""
    cfg = AcceleratorConfig(rows=2, cols=3, acc_depth=8, param_depth=2,
                            mem_width=mem_width, mem_bytes=1024)
    rng = np.random.default_rng(200 + 2 * mem_width + backpressure)
    acc, params = _store_fixture(cfg, rng)
    cmds = []
    for start in range(mem_width):
        for n_cols in range(1, cfg.cols + 1):
            for raw in (0, 1):
                row_bytes = n_cols * (4 if raw else 1)
                stride = int(rng.choice([0, row_bytes, row_bytes + 1, mem_width + 3, 29]))
                n_rows = int(rng.integers(1, 4))
                cmds.append(dict(raw=raw, acc_addr=int(rng.integers(0, 8 - n_rows + 1)),
                                 n_rows=n_rows, n_cols=n_cols,
                                 param_addr=int(rng.integers(0, 2)),
                                 mem_addr=32 * int(rng.integers(0, 20)) + start,
                                 mem_stride=stride))
    got, expected = _run_store(cfg, acc, params, cmds, rng=rng, backpressure=backpressure,
                               max_cycles=30_000, name=f"store_align_w{mem_width}")
    np.testing.assert_array_equal(got, expected)


ECP5_SIM = MultiplierTarget(family="ecp5", simulation=True)


@pytest.mark.parametrize("target", [None, ECP5_SIM], ids=["generic", "ecp5"])
@pytest.mark.parametrize("raw", [0, 1])
def test_store_unit_streams_one_word_per_cycle(raw, target):
    """Without backpressure, rows of one word each go out one per cycle after the read and
    (requantized rows only) output-stage latency (credits never run dry): the whole command
    takes one cycle per row plus the pipeline's latency, read from the unit's properties, plus
    a few fixed cycles (command, parameter read, FIFO, request register, busy)."""
    cfg = AcceleratorConfig(rows=2, cols=2, acc_depth=64, param_depth=2, mem_width=8,
                            mem_bytes=1024)
    rng = np.random.default_rng(9)
    acc, params = _store_fixture(cfg, rng)
    n_rows = 64
    row_bytes = 8 if raw else 2
    cmds = [dict(raw=raw, acc_addr=0, n_rows=n_rows, n_cols=2, param_addr=1, mem_addr=8,
                 mem_stride=row_bytes if raw else 8)]
    got, expected = _run_store(
        cfg, acc, params, cmds, rng=rng, backpressure=False, target=target,
        max_cycles=lambda s: n_rows + s.row_latency(bool(raw)) + 8,
        name=f"store_stream_{'raw' if raw else 'q'}_{'ecp5' if target else 'generic'}")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("mem_width", [1, 8])
def test_store_unit_ecp5_output_stage_under_backpressure(mem_width):
    """The longer ECP5 output-stage pipeline (more credits, deeper FIFO) under backpressure,
    raw and requantized rows back to back."""
    cfg = AcceleratorConfig(rows=2, cols=3, acc_depth=16, param_depth=2,
                            mem_width=mem_width, mem_bytes=4096)
    rng = np.random.default_rng(60 + mem_width)
    acc, params = _store_fixture(cfg, rng)
    cmds = [dict(raw=raw, acc_addr=acc_addr, n_rows=n_rows, n_cols=n_cols,
                 param_addr=param_addr, mem_addr=mem_addr, mem_stride=stride)
            for raw, acc_addr, n_rows, n_cols, param_addr, mem_addr, stride in (
                (0, 0, 16, 3, 1, 5, 3), (1, 3, 9, 2, 0, 301, 9), (0, 2, 14, 1, 0, 700, 1),
                (1, 0, 16, 3, 1, 1001, 0))]
    got, expected = _run_store(cfg, acc, params, cmds, rng=rng, backpressure=True,
                               target=ECP5_SIM, max_cycles=5_000,
                               name=f"store_ecp5_w{mem_width}")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("target", [None, ECP5_SIM], ids=["generic", "ecp5"])
@pytest.mark.parametrize("backpressure", [False, True])
def test_store_unit_raw_and_requantized_back_to_back(target, backpressure):
    """Raw after requantized and requantized after raw STOREs, each taken as soon as the one
    before is done: raw rows skip the output stage, so neither kind may leak into the other
    (short commands make the hand-over as tight as it gets)."""
    cfg = AcceleratorConfig(rows=2, cols=3, acc_depth=16, param_depth=2, mem_width=4,
                            mem_bytes=4096)
    rng = np.random.default_rng(80 + 2 * backpressure + (target is not None))
    acc, params = _store_fixture(cfg, rng)
    cmds = []
    for i, (raw, n_rows) in enumerate([(0, 1), (1, 1), (0, 1), (1, 3), (0, 7), (1, 1),
                                       (1, 16), (0, 16), (0, 1), (1, 2), (0, 2)]):
        n_cols = 1 + i % 3
        cmds.append(dict(raw=raw, acc_addr=int(rng.integers(0, 16 - n_rows + 1)),
                         n_rows=n_rows, n_cols=n_cols, param_addr=i % 2,
                         mem_addr=64 + 80 * i + i % 4, mem_stride=4 * n_cols + 1))
    got, expected = _run_store(cfg, acc, params, cmds, rng=rng, backpressure=backpressure,
                               target=target, max_cycles=5_000,
                               name=f"store_mix_{'bp' if backpressure else 'free'}")
    np.testing.assert_array_equal(got, expected)
