"""sim.cycle_model: the whole-encoder cycle model, calibrated against the compiled RTL on a
small encoder and checked on batches it was not fitted to."""

import math

import numpy as np
import pytest

from serrano.sim import cycle_model as cm
from serrano.sim import transformer as tr
from serrano.sim.encoder import layer_config, plan_layer
from serrano.sim.quantized import QuantizedEncoder
from simutil import needs_verilator

H, HEADS, F = 64, 4, 256
# Batches that fit the buffers of two 16-token sequences (test_encoder's compiled model).
RUNS = [((1,), 1), ((4,), 2), ((9,), 1), ((16,), 1), ((16, 16), 1), ((3, 12, 7), 2),
        ((8, 8, 8, 8), 1), ((5,), 1), ((2, 14), 2), ((1, 1, 1), 1), ((10, 6, 7), 1),
        ((13,), 2)]
CHECK = [(7,), (12, 3), (6, 6, 6), (2, 9, 4), (15, 15)]


def _layers(seed=0):
    rng = np.random.default_rng(seed)
    w = tr.random_bert(tr.BertConfig(hidden=H, heads=HEADS, intermediate=F, layers=2,
                                     vocab=100, max_positions=64), rng)
    return QuantizedEncoder(w, [rng.integers(0, 100, n) for n in (5, 9, 17)]).layers


@needs_verilator
def test_calibrated_model_predicts_the_rtl(tmp_path):
    """Fitted on 12 compiled runs, the model predicts 5 other batches of the 2-layer encoder
    within 2 % (measured: 0.35 %); the cycles do not depend on the data; save and load
    round-trip."""
    from serrano.sim.compiled import CompiledBackend
    backend = CompiledBackend(layer_config(plan_layer(16, H, 4, F, 8, sequences=2)))
    layers = _layers()
    model = cm.calibrate(backend, layers, heads=HEADS, layers=2, runs=RUNS, progress=False)
    assert model.coef["linear"] == model.coef["vector"] == 1.0
    assert model.loo_error < 0.02, model.loo_error
    rows = cm.check(model, backend, layers, CHECK, progress=False)
    assert [r["lengths"] for r in rows] == [list(b) for b in CHECK]
    assert cm.max_error(rows) < 0.02, rows
    other = _layers(seed=7)                 # other weights and inputs: the same cycles
    rng = np.random.default_rng(3)
    assert cm.measure(backend, other, HEADS, (12, 3), rng) == rows[1]["measured"]
    model.save(tmp_path / "m.json")
    again = cm.CycleModel.load(tmp_path / "m.json")
    assert again == model and again.cycles([5, 9]) == model.cycles([5, 9])


def _toy(**kw):
    coef = dict.fromkeys(cm.LAYER_FEATURES + cm.IO_FEATURES, 0.0) | {"linear": 1.0}
    args = dict(lanes=8, mem_width=8, hidden=H, heads=HEADS, intermediate=F, layers=2, a=0,
                b=0, coef=coef, calibrated_on=[])
    return cm.CycleModel(**(args | kw))


def test_features_follow_the_program():
    """The linear feature is one term per weight tile, max(N + a, tile load + b); the
    attention chain grows with each sequence; packing two sequences costs less than
    running them one after the other (below the tile-load floor)."""
    m = _toy()
    tiles = (H // 8) * (4 * H // 8 + 2 * F // 8)
    assert m.features([3])["linear"] == 2 * tiles * 8            # the load (8 cycles) wins
    assert m.features([20, 4])["linear"] == 2 * tiles * 24       # the MATMUL's 24 rows win
    assert _toy(a=5, b=1).features([20])["linear"] == 2 * tiles * 25
    assert m.features([16, 16])["attention"] > m.features([16])["attention"]
    assert m.cycles([3, 4]) < m.cycles([3]) + m.cycles([4])     # one floor, not two
    assert m.features([1], layers=1)["const"] == 1 and m.features([1])["const"] == 2


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="lanes must be a positive integer, not 0"):
        _toy(lanes=0)
    with pytest.raises(ValueError, match="coef lacks attention"):
        _toy(coef={"linear": 1.0})
    with pytest.raises(ValueError, match="lengths must be positive token counts"):
        _toy().cycles([3, 0])
    with pytest.raises(ValueError, match="fit needs more than"):
        cm.fit([[[1], 1, 100]], lanes=8, mem_width=8, hidden=H, heads=HEADS,
               intermediate=F, layers=2)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a saved CycleModel"):
        cm.CycleModel.load(tmp_path / "bad.json")
    assert math.isnan(cm.max_error([]))


@pytest.mark.parametrize("lanes", [8, 16, 32])
def test_calibration_config_holds_every_calibration_batch(lanes):
    from serrano.sim.encoder import plan_packed
    c = cm.calibration_config(lanes, 384, 12, 1536)
    for lengths, _ in cm.DEFAULT_CALIBRATION:
        p = plan_packed(lengths, 384, 12, 1536, lanes)
        for b in ("act", "wgt", "acc"):
            assert getattr(p, f"{b}_entries") <= getattr(c, f"{b}_depth"), (lengths, b)
