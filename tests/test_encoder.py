"""The encoder layer as one accelerator program (sim.encoder) on the golden model: bit-exact
with the integer reference (sim.quantized) and close to the float layer."""

import numpy as np
import pytest

from serrano.hw.config import AcceleratorConfig
from serrano.sim import transformer as tr
from serrano.sim.encoder import (array_cycles, build_layer, layer_config, plan_layer,
                                 plan_packed, run_layer)
from serrano.sim.compiled import CompiledBackend
from serrano.sim.golden import GoldenBackend
from serrano.sim.quantized import QuantizedEncoder
from simutil import needs_verilator




def _model(hidden: int, heads: int, intermediate: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = tr.random_bert(tr.BertConfig(hidden=hidden, heads=heads, intermediate=intermediate,
                                     layers=1, vocab=100, max_positions=64), rng)
    qe = QuantizedEncoder(w, [rng.integers(0, 100, n) for n in (5, 9, 17)])
    return w, qe, rng


@pytest.mark.parametrize("tokens, masked", [(1, 0), (8, 0), (13, 2), (24, 5)])
def test_small_layer_program_is_bit_exact(tokens, masked):
    w, qe, rng = _model(64, 4, 256)
    ids = rng.integers(0, 100, tokens)
    x = qe._grid(tr.embeddings(w, ids[None])[0], qe.s_x0)
    mask = None
    if masked:
        mask = np.ones(tokens)
        mask[-masked:] = 0
    plan = plan_layer(tokens, 64, 4, 256, 8)
    y, res = run_layer(GoldenBackend(layer_config(plan)), qe.layers[0], x, plan, key_mask=mask)
    assert np.array_equal(y, qe.layer(0, x, mask))


def test_several_sequences_in_one_program():
    """Three sequences of 8 tokens, attention per sequence with its own padding: each
    sequence's rows are the integer reference's layer of that sequence alone."""
    w, qe, rng = _model(64, 4, 256)
    S, T = 3, 8
    xs = [qe._grid(tr.embeddings(w, rng.integers(0, 100, T)[None])[0], qe.s_x0)
          for _ in range(S)]
    mask = np.ones((S, T))
    mask[1, -3:] = 0
    mask[2, 1:] = 0
    plan = plan_layer(T, 64, 4, 256, 8, sequences=S)
    y, _ = run_layer(GoldenBackend(layer_config(plan)), qe.layers[0], np.concatenate(xs),
                     plan, key_mask=mask)
    for s in range(S):
        assert np.array_equal(y[s * T:(s + 1) * T], qe.layer(0, xs[s], mask[s])), s


def test_minilm_shaped_layer_program():
    """384 hidden, 12 heads, 1536 FFN, 16 tokens: bit-exact with the integer reference, and
    the dequantized output within 0.05 (cosine >= 0.999 per token) of the float layer."""
    w, qe, rng = _model(384, 12, 1536, seed=1)
    ids = rng.integers(0, 100, 16)
    x_float = tr.embeddings(w, ids[None])[0]
    x = qe._grid(x_float, qe.s_x0)
    plan = plan_layer(16, 384, 12, 1536, 8)
    y, _ = run_layer(GoldenBackend(layer_config(plan)), qe.layers[0], x, plan)
    assert np.array_equal(y, qe.layer(0, x))
    ref = tr.encoder_layer((x * qe.s_x0)[None], w.layers[0], w.config)[0]
    got = y * qe.layers[0].scales["y"]
    cos = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, cos.min()


def test_plan_and_config_errors():
    with pytest.raises(ValueError, match="hidden \\(60\\) must be a multiple"):
        plan_layer(4, 60, 4, 240, 8)
    with pytest.raises(ValueError, match="tokens must be at least 1"):
        plan_layer(0, 64, 4, 256, 8)
    w, qe, rng = _model(64, 4, 256)
    plan = plan_layer(8, 64, 4, 256, 8)
    x = np.zeros((8, 64), np.int64)
    small = layer_config(plan, act_depth=plan.act_entries - 1)
    with pytest.raises(ValueError, match="act_depth .* smaller than"):
        build_layer(qe.layers[0], x, small, plan)
    with pytest.raises(ValueError, match="the plan needs a 8x8 array"):
        build_layer(qe.layers[0], x, AcceleratorConfig(rows=4, cols=4, vector=True), plan)
    with pytest.raises(ValueError, match=r"x must be \[8, 64\]"):
        build_layer(qe.layers[0], x[:4], layer_config(plan), plan)
    with pytest.raises(ValueError, match=r"tokens must be at least 1, not 0 \(sequence 1\)"):
        plan_packed([6, 0], 64, 4, 256, 8)
    with pytest.raises(ValueError, match="lengths must name at least one sequence"):
        plan_packed([], 64, 4, 256, 8)
    with pytest.raises(ValueError, match="sequences must be a positive integer, not 0"):
        plan_layer(8, 64, 4, 256, 8, sequences=0)
    with pytest.raises(ValueError, match=r"key_mask must be \[8\]"):
        build_layer(qe.layers[0], x, layer_config(plan), plan, key_mask=np.ones(3))


@pytest.mark.parametrize("lengths", [(3, 8, 13, 1), (1,), (9, 9), (16, 5)])
def test_packed_sequences(lengths):
    """Packed sequences (each at its own length, no padding between them): each sequence's
    rows are the integer reference's layer of that sequence alone, and a key mask inside a
    packed sequence still applies."""
    w, qe, rng = _model(64, 4, 256, seed=3)
    xs = [qe._grid(tr.embeddings(w, rng.integers(0, 100, t)[None])[0], qe.s_x0)
          for t in lengths]
    plan = plan_packed(lengths, 64, 4, 256, 8)
    assert plan.rows == sum(lengths) and plan.offsets[-1] == sum(lengths[:-1])
    cfg = layer_config(plan)
    y, res = run_layer(GoldenBackend(cfg), qe.layers[0], np.concatenate(xs), plan)
    for s, t in enumerate(lengths):
        o = plan.offsets[s]
        assert np.array_equal(y[o:o + t], qe.layer(0, xs[s], None)), s
    assert res.counters["array_busy"] == sum(array_cycles(plan).values())
    mask = np.zeros((len(lengths), plan.tokens))
    for s, t in enumerate(lengths):
        mask[s, :t] = 1
    mask[0, 0] = 0 if lengths[0] > 1 else 1
    y, _ = run_layer(GoldenBackend(cfg), qe.layers[0], np.concatenate(xs), plan,
                     key_mask=mask)
    for s, t in enumerate(lengths):
        o = plan.offsets[s]
        assert np.array_equal(y[o:o + t], qe.layer(0, xs[s], mask[s, :t])), s


def _small_config():
    """One compiled model for the small-shape tests (a build per config costs minutes):
    buffers for two sequences of 16 tokens, which hold every small batch below."""
    return layer_config(plan_layer(16, 64, 4, 256, 8, sequences=2))


def _compiled_matches_golden(hidden, heads, ffn, S, T, seed):
    w, qe, rng = _model(hidden, heads, ffn, seed=seed)
    xs = [qe._grid(tr.embeddings(w, rng.integers(0, 100, T)[None])[0], qe.s_x0)
          for _ in range(S)]
    mask = np.ones((S, T))
    mask[-1, -2:] = 0
    plan = plan_layer(T, hidden, heads, ffn, 8, sequences=S)
    cfg = _small_config() if hidden == 64 else layer_config(plan)
    x = np.concatenate(xs)
    y, res = run_layer(CompiledBackend(cfg), qe.layers[0], x, plan, key_mask=mask)
    y_g, ref = run_layer(GoldenBackend(cfg), qe.layers[0], x, plan, key_mask=mask)
    assert np.array_equal(res.memory, ref.memory)
    assert np.array_equal(y, y_g)
    for s in range(S):
        assert np.array_equal(y[s * T:(s + 1) * T], qe.layer(0, xs[s], mask[s])), s


@needs_verilator
def test_small_layer_program_compiled():
    """Two sequences of 8 tokens (one padded) at a small shape on the compiled model:
    bit-exact with the golden model and the integer reference."""
    _compiled_matches_golden(64, 4, 256, 2, 8, seed=2)


@needs_verilator
def test_packed_layer_program_compiled():
    """Packed sequences of 3, 11 and 6 tokens on the compiled model: bit-exact with the
    golden model (memory and counters) and the integer reference."""
    w, qe, rng = _model(64, 4, 256, seed=4)
    lengths = (3, 11, 6)
    xs = [qe._grid(tr.embeddings(w, rng.integers(0, 100, t)[None])[0], qe.s_x0)
          for t in lengths]
    plan = plan_packed(lengths, 64, 4, 256, 8)
    cfg = _small_config()
    x = np.concatenate(xs)
    y, res = run_layer(CompiledBackend(cfg), qe.layers[0], x, plan)
    y_g, ref = run_layer(GoldenBackend(cfg), qe.layers[0], x, plan)
    assert np.array_equal(res.memory, ref.memory) and np.array_equal(y, y_g)
    assert res.counters["array_busy"] == sum(array_cycles(plan).values())
    for s, t in enumerate(lengths):
        o = plan.offsets[s]
        assert np.array_equal(y[o:o + t], qe.layer(0, xs[s], None)), s


@needs_verilator
@pytest.mark.slow
def test_minilm_shaped_layer_program_compiled():
    """384 hidden, 12 heads, 1536 FFN, 16 tokens on the compiled model (about 2 minutes)."""
    _compiled_matches_golden(384, 12, 1536, 1, 16, seed=1)
