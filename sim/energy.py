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
from pathlib import Path

import numpy as np

from serrano.hw.config import AcceleratorConfig

__all__ = ["EnergyTable", "HOROWITZ_45NM", "energy_breakdown", "BatchEnergy",
           "fit_batch_energy", "ENERGY_BATCHES"]


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


@dataclass(frozen=True, kw_only=True)
class BatchEnergy:
    """Modeled joules of one packed batch of the whole encoder (``sim.encoder``) on one
    accelerator, from its sequences' token counts: ``e0 + e1 N + e2 A + e3 S`` with
    ``N = sum(t)``, ``A = sum(t * ceil(t / L) * L)`` (the attention's padded key columns) and
    ``S`` sequences, fitted to :func:`energy_breakdown` of golden-model runs (the activity
    counters are linear in these; :func:`fit_batch_energy`). An ASIC-class 45 nm estimate,
    not a measurement."""
    lanes: int
    coef: tuple[float, float, float, float]
    fitted_on: list            # [lengths, joules]
    max_error: float           # the largest relative error on the runs fitted to

    def features(self, lengths) -> np.ndarray:
        t = np.asarray(lengths, dtype=np.int64)
        if t.ndim != 1 or len(t) == 0 or (t < 1).any():
            raise ValueError(f"lengths must be positive token counts, not {list(lengths)!r}")
        L = self.lanes
        return np.array([1.0, t.sum(), (t * (-(-t // L)) * L).sum(), len(t)], dtype=float)

    def __call__(self, lengths) -> float:
        return float(self.features(lengths) @ np.asarray(self.coef))

    @property
    def label(self) -> str:
        return (f"modeled energy (Horowitz 45 nm table, fitted to golden-model activity "
                f"counters on {self.lanes}x{self.lanes}, max error {self.max_error:.2%}; an "
                f"estimate, not a measurement)")

    def save(self, path) -> None:
        import json
        from dataclasses import asdict
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path) -> "BatchEnergy":
        import json
        try:
            d = json.loads(Path(path).read_text())
            return cls(**{**d, "coef": tuple(d["coef"])})
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: not a saved BatchEnergy ({exc})") from None


#: The batches :func:`fit_batch_energy` runs by default.
ENERGY_BATCHES = ((1,), (16,), (5, 9), (12, 30, 7, 22), (8,) * 8, (3, 17, 9, 30, 1, 25),
                  (20, 11, 4))


def fit_batch_energy(qlayers, heads: int, config: AcceleratorConfig,
                     batches=ENERGY_BATCHES, seed: int = 0) -> BatchEnergy:
    """Fit :class:`BatchEnergy` to the golden model's counters of ``batches`` run through
    all of ``qlayers`` on ``config``."""
    from .cycle_model import run_batch
    from .golden import GoldenBackend
    backend = GoldenBackend(config)
    rng = np.random.default_rng(seed)
    runs = []
    for ln in batches:
        res = run_batch(backend, qlayers, heads, ln, rng)
        runs.append([list(ln), energy_breakdown(res.counters, config)["total"]])
    base = BatchEnergy(lanes=config.rows, coef=(0.0,) * 4, fitted_on=runs, max_error=0.0)
    X = np.array([base.features(ln) for ln, _ in runs])
    y = np.array([j for _, j in runs])
    coef, *_ = np.linalg.lstsq(X / y[:, None], np.ones(len(y)), rcond=None)
    err = float(np.max(np.abs(X @ coef - y) / y))
    return BatchEnergy(lanes=config.rows, coef=tuple(map(float, coef)), fitted_on=runs,
                       max_error=err)
