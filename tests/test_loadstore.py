"""Load unit at block level: strided, unaligned rows into each buffer, memory backpressure."""

import numpy as np
import pytest

from hw import isa
from hw.config import AcceleratorConfig
from hw.loadstore import LoadUnit
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


@pytest.mark.parametrize("mem_width", [1, 4, 8, 16])
@pytest.mark.parametrize("backpressure", [False, True])
def test_load_unit_assembles_unaligned_strided_rows(mem_width, backpressure):
    cfg = AcceleratorConfig(rows=3, cols=5, act_depth=16, wgt_depth=16, param_depth=4,
                            mem_width=mem_width, mem_bytes=4096)
    dut = LoadUnit(cfg)
    rng = np.random.default_rng(mem_width * 2 + backpressure)
    memory = rng.integers(0, 256, 1024, dtype=np.uint8)
    cmds, entry = _random_loads(cfg, rng, memory.size, 12)
    expected = []
    for cmd in cmds:
        for i in range(cmd["n_rows"]):
            row = np.zeros(entry[cmd["target"]], np.uint8)
            start = cmd["mem_addr"] + i * cmd["mem_stride"]
            row[:cmd["row_bytes"]] = memory[start:start + cmd["row_bytes"]]
            expected.append((cmd["target"], cmd["buf_addr"] + i, row.tobytes()))
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
                a = ctx.get(dut.mem_req.payload.addr) * mem_width
                word = int.from_bytes(memory[a:a + mem_width].tobytes(), "little")
                latency = int(rng.integers(1, 5)) if backpressure else 2
                due = max(cycle + latency, pending[-1][0] + 1 if pending else 0)
                pending.append((due, word))
            for target, port in ports.items():
                if ctx.get(port.en):
                    nbytes = len(port.data.as_value()) // 8
                    value = ctx.get(port.data.as_value())
                    writes.append((target, ctx.get(port.addr), value.to_bytes(nbytes, "little")))
            await ctx.tick()
            cycle += 1

    async def bench(ctx):
        for cmd in cmds:
            for name, value in cmd.items():
                ctx.set(getattr(dut.cmd.payload, name), value)
            ctx.set(dut.cmd.valid, 1)
            while True:  # the command is taken at the edge where valid and ready are high
                ready = ctx.get(dut.cmd.ready)
                await ctx.tick()
                if ready:
                    break
            ctx.set(dut.cmd.valid, 0)
        await ctx.tick()
        while ctx.get(dut.busy):
            await ctx.tick()
        await ctx.tick()
        finished.append(True)

    simulate(dut, bench, memory_model, max_cycles=20_000,
             name=f"load_w{mem_width}_{'bp' if backpressure else 'free'}")
    assert writes == expected
