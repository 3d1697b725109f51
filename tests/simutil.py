"""Shared helpers for block-level testbenches."""

import os
from pathlib import Path

import pytest
from amaranth.sim import Simulator

from serrano.sim.compiled import check_prerequisites

WAVES = Path(__file__).resolve().parent.parent / "build" / "waves"

#: Skip a test that needs the compiled (Verilator) backend when its prerequisites are missing.
needs_verilator = pytest.mark.skipif(
    bool(check_prerequisites("verilator")),
    reason="compiled backend prerequisites missing: " + "; ".join(
        check_prerequisites("verilator")))


def simulate(dut, *benches, max_cycles: int, name: str = "test") -> None:
    """Run async testbenches on ``dut`` with a cycle budget.

    A watchdog fails the run with a message when ``max_cycles`` clock cycles pass before every
    testbench has returned, so a hung design can never stall the test suite. Set
    ``SERRANO_VCD=1`` to write ``build/waves/<name>.vcd``.
    """
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def watchdog(ctx):
        cycles = 0
        while True:
            await ctx.tick()
            cycles += 1
            if cycles > max_cycles:
                raise AssertionError(f"{name}: testbench still running after its budget of "
                                     f"{max_cycles} cycles (hang?)")

    sim.add_process(watchdog)
    for bench in benches:
        sim.add_testbench(bench)
    if os.environ.get("SERRANO_VCD") in ("1", "true"):
        WAVES.mkdir(parents=True, exist_ok=True)
        with sim.write_vcd(str(WAVES / f"{name}.vcd")):
            sim.run()
    else:
        sim.run()
