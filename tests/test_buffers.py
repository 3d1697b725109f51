"""Accumulator buffer (overwrite / add-into with int32 wrap) at block level."""

import itertools

import numpy as np
import pytest

from serrano.hw.buffers import AccumulatorBuffer
from serrano.hw.config import AcceleratorConfig
from simutil import simulate


@pytest.mark.parametrize("pipelined", [True, False])
@pytest.mark.parametrize("cols", [1, 3])
def test_accumulator_read_modify_write_back_to_back(cols, pipelined):
    cfg = AcceleratorConfig(rows=128, cols=cols, acc_depth=8)  # 23-bit partial sums
    buf = AccumulatorBuffer(cfg, pipelined=pipelined)
    assert buf.latency == (6 if pipelined else 1)
    rng = np.random.default_rng(cols)
    lo, hi = -(1 << (cfg.psum_width - 1)), (1 << (cfg.psum_width - 1)) - 1
    updates = []
    # Same address many cycles in a row (transparency), with extreme values: 700 adds of the
    # largest partial sum wrap past 2**31.
    updates += [(3, 1, [hi] * cols)] * 700 + [(3, 1, [lo] * cols)] * 5
    # Every pattern of five back-to-back updates over two entries: several of the updates
    # in flight ahead of one (at different distances) can hold its entry, and the newest
    # must win.
    n_directed = 0
    for pattern in itertools.product((4, 5), repeat=5):
        updates += [(a, 1, rng.integers(lo, hi + 1, cols).tolist()) for a in pattern]
        n_directed += len(pattern)
    # Random entries out of a few, so that every forwarding distance (0-4 cycles between two
    # updates of one entry) occurs, with and without idle cycles between them.
    for _ in range(600):
        updates.append((int(rng.integers(0, 3 if rng.random() < 0.5 else 8)),
                        int(rng.random() < 0.8), rng.integers(lo, hi + 1, cols).tolist()))
    gaps = [0] * (705 + n_directed)
    gaps += [int(rng.choice([0, 0, 0, 1, 2, 3])) for _ in updates[len(gaps):]]
    model = np.zeros((8, cols), np.int64)
    for addr, accumulate, data in updates:
        model[addr] = (model[addr] if accumulate else 0) + np.array(data)
        model[addr] = (model[addr] + 2**31) % 2**32 - 2**31
    got = {}

    async def bench(ctx):
        for i, (addr, accumulate, data) in enumerate(updates):
            ctx.set(buf.update.valid, 1)
            ctx.set(buf.update.addr, addr)
            ctx.set(buf.update.accumulate, accumulate)
            ctx.set(buf.update.data, data)
            await ctx.tick()
            if gaps[i]:  # idle cycles between some updates
                ctx.set(buf.update.valid, 0)
                for _ in range(gaps[i]):
                    await ctx.tick()
        ctx.set(buf.update.valid, 0)
        for _ in range(buf.latency + 1):
            await ctx.tick()
        for addr in range(8):
            ctx.set(buf.read.addr, addr)
            ctx.set(buf.read.en, 1)
            await ctx.tick()
            got[addr] = [ctx.get(buf.read.data[c]) for c in range(cols)]

    simulate(buf, bench, max_cycles=len(updates) * 4 + 100, name=f"acc_{cols}")
    for addr in range(8):
        np.testing.assert_array_equal(got[addr], model[addr], err_msg=f"entry {addr}")
