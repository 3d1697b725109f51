"""The float BERT reference (``sim.transformer``): loader round trip, masks, shapes, errors.

Its agreement with the published model was checked once against sentence-transformers (torch,
not a dependency): cosine 1.0000000 on three sentences of all-MiniLM-L6-v2, max abs 1.2e-7.
Here it is checked against a per-head, per-token loop written separately.
"""

import json
import math

import numpy as np
import pytest

from serrano.sim import transformer as tr

CFG = tr.BertConfig(hidden=16, heads=4, intermediate=32, layers=2, vocab=50, max_positions=12)


def _loop_layer(x, lw, cfg, mask):
    """One BERT layer, one sequence, one head and one query at a time (float64)."""
    t, h = x.shape
    d = cfg.head_dim
    q, k, v = x @ lw.q_w + lw.q_b, x @ lw.k_w + lw.k_b, x @ lw.v_w + lw.v_b
    ctx = np.zeros_like(x)
    for head in range(cfg.heads):
        cols = slice(head * d, (head + 1) * d)
        for i in range(t):
            s = np.array([q[i, cols] @ k[j, cols] / math.sqrt(d) if mask[j] else -np.inf
                          for j in range(t)])
            p = np.exp(s - s.max())
            ctx[i, cols] = (p / p.sum()) @ v[:, cols]

    def ln(y, g, b):
        mu = y.mean()
        return (y - mu) / math.sqrt(((y - mu) ** 2).mean() + cfg.eps) * g + b

    x1 = np.stack([ln(r, lw.ln1_g, lw.ln1_b) for r in x + ctx @ lw.o_w + lw.o_b])
    f = x1 @ lw.ffn1_w + lw.ffn1_b
    f = 0.5 * f * (1 + np.vectorize(math.erf)(f / math.sqrt(2)))
    return np.stack([ln(r, lw.ln2_g, lw.ln2_b) for r in x1 + f @ lw.ffn2_w + lw.ffn2_b])


def test_encoder_layer_matches_a_loop_per_head_and_token():
    rng = np.random.default_rng(1)
    lw = tr.random_layer(CFG, rng, scale=0.3)
    x = rng.standard_normal((2, 7, CFG.hidden))
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3])
    got = tr.encoder_layer(x, lw, CFG, mask)
    for s in range(2):
        want = _loop_layer(x[s], lw, CFG, mask[s])
        np.testing.assert_allclose(got[s], want, rtol=1e-10, atol=1e-10)


def test_padding_does_not_change_a_sequence():
    rng = np.random.default_rng(2)
    lw = tr.random_layer(CFG, rng, scale=0.3)
    x = rng.standard_normal((1, 5, CFG.hidden))
    padded = np.concatenate([x, rng.standard_normal((1, 3, CFG.hidden)) * 9], axis=1)
    short = tr.encoder_layer(x, lw, CFG)
    long = tr.encoder_layer(padded, lw, CFG, np.array([[1] * 5 + [0] * 3]))
    np.testing.assert_allclose(long[:, :5], short, rtol=1e-12, atol=1e-12)


def _hf_dir(tmp_path, weights: tr.BertWeights, prefix: str = "") -> None:
    from safetensors.numpy import save_file
    c = weights.config
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_act": "gelu", "hidden_size": c.hidden,
        "num_attention_heads": c.heads, "intermediate_size": c.intermediate,
        "num_hidden_layers": c.layers, "vocab_size": c.vocab,
        "max_position_embeddings": c.max_positions, "type_vocab_size": c.type_vocab,
        "layer_norm_eps": c.eps}))
    tensors = {prefix + name: getattr(weights, key) for key, name in tr._HF_EMB.items()}
    for i, lw in enumerate(weights.layers):
        for key, name in tr._HF_LAYER.items():
            t = getattr(lw, key)
            tensors[f"{prefix}encoder.layer.{i}.{name}"] = np.ascontiguousarray(
                t.T if key.endswith("_w") else t)
    tensors[prefix + "pooler.dense.weight"] = np.zeros((c.hidden, c.hidden), np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))


def _random_bert(rng) -> tr.BertWeights:
    h = CFG.hidden
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return tr.BertWeights(config=CFG, word=f(CFG.vocab, h), position=f(CFG.max_positions, h),
                          token_type=f(CFG.type_vocab, h), emb_ln_g=1 + f(h) * 0.1,
                          emb_ln_b=f(h) * 0.1,
                          layers=[tr.random_layer(CFG, rng, 0.3) for _ in range(CFG.layers)])


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_load_bert_round_trip(tmp_path, prefix):
    rng = np.random.default_rng(3)
    w = _random_bert(rng)
    _hf_dir(tmp_path, w, prefix)
    got = tr.load_bert(tmp_path)
    assert got.config == CFG
    for a, b in zip(got.layers, w.layers):
        for key in tr._HF_LAYER:
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    ids = np.array([[2, 7, 9, 3, 0], [4, 4, 1, 0, 0]])
    mask = (ids != 0).astype(int)
    np.testing.assert_array_equal(tr.bert_forward(got, ids, mask), tr.bert_forward(w, ids, mask))
    pooled = tr.mean_pool(tr.bert_forward(w, ids, mask), mask)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-12)


def test_load_bert_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        tr.load_bert(tmp_path)
    rng = np.random.default_rng(4)
    _hf_dir(tmp_path, _random_bert(rng))
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu"}))
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        tr.load_bert(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="no tensor 'encoder.layer.2"):
        tr.load_bert(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_size": 12}))
    with pytest.raises(ValueError, match="has shape"):
        tr.load_bert(tmp_path)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="hidden must be a positive integer, not 0"):
        tr.BertConfig(hidden=0, heads=1, intermediate=4, layers=1)
    with pytest.raises(ValueError, match="multiple of heads"):
        tr.BertConfig(hidden=10, heads=4, intermediate=4, layers=1)
    w = _random_bert(np.random.default_rng(5))
    with pytest.raises(ValueError, match="input_ids must be in"):
        tr.bert_forward(w, np.array([[1, 50]]))
    with pytest.raises(ValueError, match="exceeds the model's maximum 12"):
        tr.bert_forward(w, np.ones((1, 13), int))
    with pytest.raises(ValueError, match="attention_mask must be"):
        tr.encoder_layer(np.zeros((1, 3, 16)), w.layers[0], CFG, np.ones((1, 4)))


def test_emulation_schemes_order_by_precision():
    from serrano.sim.emulate import SCHEMES, Emulator, Scheme
    rng = np.random.default_rng(6)
    w = _random_bert(rng)
    seqs = [rng.integers(1, CFG.vocab, n) for n in (3, 5, 8, 11)]
    ref = [tr.mean_pool(tr.bert_forward(w, s[None]), np.ones((1, len(s))))[0] for s in seqs]
    err = {}
    for name in ("int8-static", "int16-static"):
        emu = Emulator(w, SCHEMES[name])
        with pytest.raises(RuntimeError, match="calibrate"):
            emu.embed(seqs[0])
        emu.calibrate(seqs)
        err[name] = max(1 - float(emu.embed(s) @ r) for s, r in zip(seqs, ref))
    # Both share the int8 weights, whose rounding dominates on this tiny random model.
    assert 0 < err["int16-static"] < err["int8-static"] / 2
    with pytest.raises(ValueError, match="act_bits must be 8 or 16, not 4"):
        Scheme(name="x", act_bits=4, per_token=False, kv_bits=8)
