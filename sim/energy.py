"""A modeled energy per run: the activity counters (``isa.Counters``) times a per-action
energy table. An ASIC-class estimate for a 45 nm process, NOT a measurement of any chip or
FPGA; ``docs/performance.md`` ("Energy model") gives the table, its sources and its limits.

The table is Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC
2014 (45 nm, 0.9 V): 8-bit integer multiply 0.2 pJ, 32-bit integer add 0.1 pJ, 32-bit
integer multiply 3.1 pJ, a 64-bit SRAM read of 10 / 20 / 100 pJ from an 8 KB / 32 KB / 1 MB
array, a 64-bit DRAM access 1.3-2.6 nJ.
"""

import math
from dataclasses import dataclass

from serrano.hw.config import AcceleratorConfig

__all__ = ["EnergyTable", "HOROWITZ_45NM", "energy_breakdown"]


@dataclass(frozen=True, kw_only=True)
class EnergyTable:
    """Energy per action, in picojoules."""
    mult8: float = 0.2          # int8 x int8 multiply
    add32: float = 0.1          # 32-bit add (the accumulation of one MAC)
    mult32: float = 3.1         # 32-bit multiply (the vector unit's fixed-point steps)
    sram64_8kb: float = 10.0    # one 64-bit read from an 8 KB SRAM; larger arrays scale as
                                # sqrt(size) (Horowitz: 20 pJ at 32 KB, 100 pJ at 1 MB)
    dram64: float = 1950.0      # one 64-bit DRAM access (the middle of 1.3-2.6 nJ)
    vector_mults: float = 2.0   # 32-bit multiplies per element per pass in the vector unit
    vector_adds: float = 6.0    # 32-bit adds, shifts and compares per element per pass

    def mac(self, act_bits: int) -> float:
        """One multiply-accumulate: an int8 multiply per 8 activation bits, and the add."""
        return self.mult8 * (act_bits // 8) + self.add32

    def sram(self, size_bytes: int, bits: int) -> float:
        """One read or write of ``bits`` from an SRAM of ``size_bytes``."""
        per64 = self.sram64_8kb * math.sqrt(max(size_bytes, 1) / 8192)
        return per64 * bits / 64

    def vector_element(self) -> float:
        return self.vector_mults * self.mult32 + self.vector_adds * self.add32


#: The table the project quotes (45 nm, Horowitz 2014).
HOROWITZ_45NM = EnergyTable()


def energy_breakdown(counters: dict, config: AcceleratorConfig,
                     table: EnergyTable = HOROWITZ_45NM) -> dict[str, float]:
    """Joules per part for one run's counters: ``macs`` (``array_busy * rows * cols``
    multiply-accumulates, padding included), ``act``, ``wgt``, ``acc``, ``param`` (each
    buffer's entry reads and writes at its size), ``vector`` (``vector_elements``),
    ``memory`` (memory beats, ``mem_width`` bytes each, at the DRAM cost per 64 bits) and
    ``total``."""
    c = config
    get = lambda name: int(counters.get(name, 0))
    pj = {
        "macs": get("array_busy") * c.rows * c.cols * table.mac(c.act_bits),
        "vector": get("vector_elements") * table.vector_element(),
        "memory": (get("mem_read_beats") + get("mem_write_beats")) * table.dram64
                  * c.mem_width * 8 / 64,
    }
    for buf, entry_bytes, depth in (("act", c.act_entry_bytes, c.act_depth),
                                    ("wgt", c.wgt_entry_bytes, c.wgt_depth),
                                    ("acc", c.acc_entry_bytes, c.acc_depth),
                                    ("param", c.param_entry_bytes, c.param_depth)):
        accesses = get(f"{buf}_reads") + get(f"{buf}_writes")
        pj[buf] = accesses * table.sram(entry_bytes * depth, entry_bytes * 8)
    joules = {name: v * 1e-12 for name, v in pj.items()}
    joules["total"] = sum(joules.values())
    return joules
