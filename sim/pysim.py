"""Cycle-accurate execution in Amaranth's simulator.

The harness implements the simulation memory model of ``docs/architecture.md`` exactly; the
compiled backend (``sim.compiled``) implements the same model in C++, so both report the same
cycle counts for the same program.
"""

import os
import time
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np
from amaranth.sim import Simulator

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.top import Accelerator

from .backend import (DEFAULT_MEM_LATENCY, STATUS_LAYOUT, MemoryFaults, MemoryProfile,
                      RunResult, RunStatus, SimulationTimeout, check_max_cycles,
                      check_mem_latency, check_mem_profile, check_vcd, counters_from_bits,
                      field_slices, resolve_vcd)

__all__ = ["PysimBackend", "DEFAULT_MEM_LATENCY", "DEFAULT_MAX_CYCLES", "VCD_ENV_VAR"]

# With max_cycles=None a run stops after this many cycles instead of hanging.
DEFAULT_MAX_CYCLES = 2_000_000
#: With ``vcd=None`` the backend follows this environment variable (``1`` or a path).
VCD_ENV_VAR = "SERRANO_VCD"

# Status flags the testbench samples every cycle, as masks of the raw status value.
_DONE_MASK = 1 << STATUS_LAYOUT["done"].offset
_IDLE_MASK = 1 << STATUS_LAYOUT["idle"].offset


class PysimBackend:
    """Runs programs on :class:`hw.top.Accelerator` in ``amaranth.sim``.

    Every :meth:`run` simulates a freshly reset accelerator (zeroed buffers), feeds the
    instruction words back to back, serves the memory port from the memory image with a fixed
    read latency (or with the refusals and delays of ``mem_profile``), and stops at ``status.done`` (or at ``status.idle`` once every word was
    accepted, for a program without HALT).

    Parameters
    ----------
    config : AcceleratorConfig
    mem_latency : int
        Cycles from a read's acceptance to its data on ``mem.resp`` (>= 1).
    mem_profile : MemoryProfile or None
        Seeded backpressure and extra read latency (``sim.backend.MemoryProfile``); ``None``:
        the port accepts every cycle and answers after exactly ``mem_latency`` cycles.
    vcd : str, PathLike, bool or None
        Write a waveform of each run: a path, ``True`` for ``build/waves/pysim-*.vcd``,
        ``False`` for none, or ``None`` to follow the ``SERRANO_VCD`` environment variable
        (``1`` or a path).
    target : hw.mult.MultiplierTarget or None
        PE multipliers of the simulated accelerator (vendor DSPs need ``simulation=True``).
    """

    name = "pysim"

    def __init__(self, config: AcceleratorConfig, *, mem_latency: int = DEFAULT_MEM_LATENCY,
                 mem_profile: MemoryProfile | None = None,
                 vcd: str | os.PathLike | bool | None = None, target=None) -> None:
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        self.config = config
        self.mem_latency = check_mem_latency(mem_latency)
        self.mem_profile = check_mem_profile(mem_profile)
        self.vcd = check_vcd(vcd)
        self.target = target
        self.last_vcd: Path | None = None
        self.last_wall_seconds: float = 0.0

    def run(self, words: Sequence[int], memory: np.ndarray, *,
            max_cycles: int | None = None) -> RunResult:
        return self.run_sequence([(words, memory)], max_cycles=max_cycles)[0]

    def run_sequence(self, programs: Sequence[tuple[Sequence[int], np.ndarray]], *,
                     max_cycles: int | None = None) -> list[RunResult]:
        """Run several programs on one accelerator, pulsing ``clear`` for one cycle between
        them (buffer contents carry over, as they do in hardware). ``max_cycles`` applies to
        each program."""
        cfg = self.config
        budget = check_max_cycles(max_cycles, DEFAULT_MAX_CYCLES)
        W = cfg.mem_width
        jobs = []
        for words, memory in programs:
            words = [int(w) for w in words]
            for i, w in enumerate(words):
                if not 0 <= w < (1 << isa.INSTR_WIDTH):
                    raise ValueError(f"words[{i}] must fit in {isa.INSTR_WIDTH} bits, "
                                     f"not {w!r}")
            memory = np.asarray(memory)
            if memory.dtype != np.uint8 or memory.ndim != 1:
                raise TypeError(f"memory must be a 1-D numpy.uint8 array, not {memory.dtype} "
                                f"with shape {memory.shape}")
            if memory.size > cfg.mem_bytes:
                raise ValueError(f"memory image has {memory.size} bytes, more than "
                                 f"config.mem_bytes = {cfg.mem_bytes}")
            # Whole words; the tail past the image reads as zero and writes there are dropped.
            padded = -(-memory.size // W) * W
            mem = bytearray(padded)
            mem[:memory.size] = memory.tobytes()
            jobs.append((words, mem, memory.size))
        latency, profile = self.mem_latency, self.mem_profile

        dut = Accelerator(cfg, self.target, assertions=True)
        req_fields = field_slices(isa.mem_request_layout(cfg))
        a_off, a_mask = req_fields["addr"]
        w_off, _ = req_fields["write"]
        m_off, m_mask = req_fields["mask"]
        d_off, d_mask = req_fields["data"]

        outs: list[dict] = []

        async def bench(ctx):
            instr_valid, instr_payload, instr_ready = (
                dut.instr.valid, dut.instr.payload, dut.instr.ready)
            req_valid, req_payload = dut.mem.req.valid, dut.mem.req.payload.as_value()
            resp_valid, resp_payload = dut.mem.resp.valid, dut.mem.resp.payload
            status = dut.status.as_value()
            req_ready = dut.mem.req.ready
            ready = 1
            ctx.set(req_ready, 1)
            for job, (words, mem, size) in enumerate(jobs):
                if job:
                    ctx.set(dut.clear, 1)
                    await ctx.tick()
                    ctx.set(dut.clear, 0)
                out: dict = {}
                outs.append(out)
                padded = len(mem)
                n = len(words)
                i = 0
                cycle = 0
                responses: deque = deque()
                faults = MemoryFaults(profile, latency)  # each program starts from the seed
                offered = -1
                resp_on = False
                while True:
                    if i < n:
                        if offered != i:
                            ctx.set(instr_payload, words[i])
                            ctx.set(instr_valid, 1)
                            offered = i
                    elif offered != n:
                        ctx.set(instr_valid, 0)
                        offered = n
                    if responses and responses[0][0] == cycle:
                        ctx.set(resp_payload, responses.popleft()[1])
                        ctx.set(resp_valid, 1)
                        resp_on = True
                    elif resp_on:
                        ctx.set(resp_valid, 0)
                        resp_on = False
                    if faults.threshold and faults.ready() != ready:
                        ready ^= 1
                        ctx.set(req_ready, ready)

                    st = ctx.get(status)
                    if st & _DONE_MASK or (i >= n and st & _IDLE_MASK):
                        break
                    if cycle >= budget:
                        out["timeout"] = cycle
                        return

                    if ready and ctx.get(req_valid):
                        req = ctx.get(req_payload)
                        byte = ((req >> a_off) & a_mask) * W
                        if (req >> w_off) & 1:
                            mask = (req >> m_off) & m_mask
                            wdata = (req >> d_off) & d_mask
                            for b in range(W):
                                if (mask >> b) & 1 and byte + b < size:
                                    mem[byte + b] = (wdata >> (8 * b)) & 0xFF
                        else:
                            word = (int.from_bytes(mem[byte:byte + W], "little")
                                    if byte < padded else 0)
                            responses.append((faults.due(cycle), word))
                    if i < n and ctx.get(instr_ready):
                        i += 1
                    await ctx.tick()
                    cycle += 1

                out["status"] = st
                out["counters"] = ctx.get(dut.counters.as_value())
                out["cycle"] = cycle
                ctx.set(instr_valid, 0)
                ctx.set(resp_valid, 0)

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        start = time.perf_counter()
        vcd_path = resolve_vcd(self.vcd, "pysim", env_var=VCD_ENV_VAR)
        self.last_vcd = vcd_path
        if vcd_path is not None:
            with sim.write_vcd(str(vcd_path)):
                sim.run()
        else:
            sim.run()
        self.last_wall_seconds = time.perf_counter() - start

        results = []
        for (words, mem, size), out in zip(jobs, outs):
            if "timeout" in out:
                raise SimulationTimeout(
                    f"program of {len(words)} words did not finish within {budget} cycles "
                    f"(pysim, {cfg.rows}x{cfg.cols}); raise max_cycles if it is merely long")
            result = np.frombuffer(bytes(mem[:size]), dtype=np.uint8).copy()
            results.append(RunResult(memory=result, status=RunStatus.from_bits(out["status"]),
                                     counters=counters_from_bits(out["counters"])))
        return results
