"""sim.energy: the modeled energy of a run's activity counters (docs/performance.md,
"Energy model"), checked against hand-computed values."""

import math

import numpy as np

import pytest

from serrano.hw.config import AcceleratorConfig
from serrano.sim.energy import HOROWITZ_45NM, EnergyTable, energy_breakdown


def test_breakdown_by_hand():
    cfg = AcceleratorConfig(rows=4, cols=4, act_depth=2048, wgt_depth=64, acc_depth=512,
                            param_depth=16, mem_width=8)
    counters = {"array_busy": 10, "act_reads": 3, "act_writes": 1, "acc_reads": 2,
                "mem_read_beats": 5, "mem_write_beats": 1, "vector_elements": 7}
    e = energy_breakdown(counters, cfg)
    # 160 MACs of an int8 multiply (0.2 pJ) and a 32-bit add (0.1 pJ)
    assert e["macs"] == pytest.approx(160 * 0.3e-12)
    # act: 2048 entries x 4 B = 8 KB: 10 pJ per 64 bits, 32-bit entries: 5 pJ per access
    assert e["act"] == pytest.approx(4 * 5e-12)
    # acc: 512 x 16 B = 8 KB, 128-bit entries: 20 pJ per access
    assert e["acc"] == pytest.approx(2 * 20e-12)
    assert e["wgt"] == 0 and e["param"] == 0
    assert e["memory"] == pytest.approx(6 * 1950e-12)          # 8-byte beats = 64 bits
    assert e["vector"] == pytest.approx(7 * (2 * 3.1 + 6 * 0.1) * 1e-12)
    parts = sum(v for k, v in e.items() if k != "total")
    assert e["total"] == pytest.approx(parts)


def test_table_scaling_and_act16():
    t = EnergyTable()
    assert t.sram(32 * 1024, 64) == pytest.approx(20.0)        # Horowitz: 20 pJ at 32 KB
    assert t.sram(1 << 20, 64) == pytest.approx(10 * math.sqrt(128))  # ~113 pJ (100 quoted)
    assert t.mac(16) == pytest.approx(0.5)                     # two int8 multiplies and an add
    cfg16 = AcceleratorConfig(rows=2, cols=2, act_bits=16)
    assert energy_breakdown({"array_busy": 1}, cfg16)["macs"] == pytest.approx(4 * 0.5e-12)
    assert energy_breakdown({}, cfg16)["total"] == 0
    assert HOROWITZ_45NM == EnergyTable()


def test_batch_energy_fits_the_golden_counters(tmp_path):
    """BatchEnergy, fitted to golden runs of a small 2-layer encoder, predicts other
    batches' modeled energy within 1 %; save and load round-trip."""
    from serrano.sim import transformer as tr
    from serrano.sim.cycle_model import run_batch
    from serrano.sim.encoder import layer_config, plan_layer
    from serrano.sim.energy import BatchEnergy, energy_breakdown, fit_batch_energy
    from serrano.sim.golden import GoldenBackend
    from serrano.sim.quantized import QuantizedEncoder
    rng = np.random.default_rng(0)
    w = tr.random_bert(tr.BertConfig(hidden=64, heads=4, intermediate=256, layers=2,
                                     vocab=100, max_positions=64), rng)
    layers = QuantizedEncoder(w, [rng.integers(0, 100, n) for n in (5, 9)]).layers
    cfg = layer_config(plan_layer(16, 64, 4, 256, 8, sequences=4))
    fitted = fit_batch_energy(layers, 4, cfg, batches=[(1,), (16,), (5, 9), (3, 12, 7),
                                                       (8, 8, 8, 8), (2, 16, 1)])
    assert fitted.max_error < 0.01
    for ln in [(7,), (12, 3), (6, 6, 6, 6), (15, 2, 9)]:
        res = run_batch(GoldenBackend(cfg), layers, 4, ln, rng)
        want = energy_breakdown(res.counters, cfg)["total"]
        assert abs(fitted(ln) - want) / want < 0.01, ln
    fitted.save(tmp_path / "e.json")
    assert BatchEnergy.load(tmp_path / "e.json") == fitted
    with pytest.raises(ValueError, match="lengths must be positive token counts"):
        fitted([0])
