"""The integer encoder (sim.quantized): accuracy against the float reference, masking,
and argument checks, on a tiny random BERT."""

import numpy as np
import pytest

from serrano.sim import kernels
from serrano.sim import transformer as tr
from serrano.sim.quantized import FLOAT_OPS, QuantizedEncoder


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    cfg = tr.BertConfig(hidden=64, heads=4, intermediate=256, layers=2, vocab=100,
                        max_positions=40)
    emb = lambda *s: (rng.standard_normal(s) * 0.5).astype(np.float32)
    weights = tr.BertWeights(config=cfg, word=emb(100, 64), position=emb(40, 64),
                             token_type=emb(2, 64), emb_ln_g=np.ones(64, np.float32),
                             emb_ln_b=np.zeros(64, np.float32),
                             layers=[tr.random_layer(cfg, rng, 0.1) for _ in range(2)])
    calib = [rng.integers(0, 100, n) for n in (5, 9, 17, 30)]
    test = [rng.integers(0, 100, n) for n in (1, 2, 3, 8, 20, 33)]
    return weights, calib, test


@pytest.mark.parametrize("act_bits", [16, 8])
@pytest.mark.parametrize("float_ops", [frozenset(), FLOAT_OPS])
def test_embeddings_close_to_float(tiny, act_bits, float_ops):
    weights, calib, test = tiny
    qe = QuantizedEncoder(weights, calib, act_bits=act_bits, float_ops=float_ops)
    for ids in test:
        ref = tr.mean_pool(tr.bert_forward(weights, ids[None]), np.ones((1, len(ids))))[0]
        assert float(qe.embed(ids) @ ref) >= 0.99, (act_bits, float_ops, len(ids))
    assert qe.stats["wraps"] == 0 and 0 < qe.stats["acc_max"] < 2 ** 31


def test_padded_keys_change_nothing(tiny):
    """Masked keys get probability exactly 0, so the real tokens' rows are bit-identical."""
    weights, calib, test = tiny
    qe = QuantizedEncoder(weights, calib)
    rng = np.random.default_rng(1)
    for ids in test[:4]:
        x = qe._grid(tr.embeddings(weights, ids[None])[0], qe.s_x0)
        pad = rng.integers(-30000, 30000, (5, x.shape[1]))
        mask = np.r_[np.ones(len(ids)), np.zeros(5)]
        for i in range(len(qe.layers)):
            alone = qe.layer(i, x)
            padded = qe.layer(i, np.concatenate([x, pad]), key_mask=mask)
            assert np.array_equal(padded[:len(ids)], alone)
            x = alone


def test_integer_softmax_is_the_kernel(tiny):
    """One head's probabilities through the encoder's scales equal sim.kernels.softmax, and
    the integer layer differs from the float-op one (the kernels are really used)."""
    weights, calib, test = tiny
    integer = QuantizedEncoder(weights, calib)
    floats = QuantizedEncoder(weights, calib, float_ops=FLOAT_OPS)
    ids = test[4]
    x = integer._grid(tr.embeddings(weights, ids[None])[0], integer.s_x0)
    assert not np.array_equal(integer.layer(0, x), floats.layer(0, x))
    s = integer.layers[0].scales
    head_dim = weights.config.head_dim
    assert integer.layers[0].softmax == kernels.softmax_params(
        s["q"] * s["k"] / np.sqrt(head_dim), 16)


@pytest.mark.parametrize("kwargs, match", [
    ({"act_bits": 12}, "act_bits must be 8 or 16"),
    ({"float_ops": ["softmax", "relu"]}, "float_ops must be a subset"),
])
def test_bad_arguments(tiny, kwargs, match):
    weights, calib, _ = tiny
    with pytest.raises(ValueError, match=match):
        QuantizedEncoder(weights, calib, **kwargs)


def test_needs_calibration(tiny):
    weights, _, _ = tiny
    with pytest.raises(ValueError, match="at least one"):
        QuantizedEncoder(weights, [])
