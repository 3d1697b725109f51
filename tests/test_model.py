"""sim.model (serrano.load_model): a tiny BERT written by the test as a Hugging Face directory
(config.json, model.safetensors, tokenizer.json, sentence-transformers pooling files), run as
one accelerator program per batch: golden vs compiled bit-exact, equal to the integer
reference (QuantizedEncoder), close to the float model; batches equal single runs; padding
does not change a sequence's result; clear errors."""

import json

import numpy as np
import pytest

import serrano
from serrano.sim import transformer as tr
from serrano.sim.model import Model, load_model

from test_transformer import _hf_dir
from simutil import needs_verilator


WORDS = ("the a cat dog sat on mat ran fast slow red blue big small house tree car "
         "sun moon rain is was very and").split()
TEXTS = ["the cat sat on the mat", "a dog ran", "the big red car is very fast",
         "sun", "the moon and the sun and the rain", "a small blue house"]
CALIBRATION = ["the dog sat", "a red tree", "the cat is very slow and small", "rain"]


def _tiny_dir(path, layers: int = 2, seed: int = 0):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    rng = np.random.default_rng(seed)
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    cfg = tr.BertConfig(hidden=32, heads=2, intermediate=64, layers=layers, vocab=len(vocab),
                        max_positions=40)
    f = lambda *s: (rng.standard_normal(s) * 0.5).astype(np.float32)
    w = tr.BertWeights(config=cfg, word=f(cfg.vocab, 32), position=f(40, 32),
                       token_type=f(2, 32), emb_ln_g=1 + f(32) * 0.1, emb_ln_b=f(32) * 0.1,
                       layers=[tr.random_layer(cfg, rng, 0.15) for _ in range(layers)])
    _hf_dir(path, w)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(path / "tokenizer.json"))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
    (path / "modules.json").write_text(json.dumps(
        [{"type": "sentence_transformers.models.Transformer"},
         {"type": "sentence_transformers.models.Pooling"},
         {"type": "sentence_transformers.models.Normalize"}]))
    return w


def test_golden_embeddings_are_the_integer_reference_and_close_to_float(tmp_path):
    _tiny_dir(tmp_path)
    model = serrano.load_model(tmp_path, backend="golden", calibration=CALIBRATION)
    emb = model.embed(TEXTS, batch_size=4)
    assert emb.shape == (len(TEXTS), 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    q = model.quantized
    want = np.stack([q.embed(model._ids(t)) for t in TEXTS])
    np.testing.assert_allclose(emb, want, atol=1e-6)   # (float32 of the same integers)
    ref = model.reference_embed(TEXTS)
    cos = np.sum(emb * ref, axis=1)
    assert cos.min() > 0.99, cos
    e = model.stats.energy          # modeled from the golden model's activity counters
    assert e["total"] > 0 and e["macs"] > 0 and e["memory"] > 0
    assert e["total"] == pytest.approx(sum(v for k, v in e.items() if k != "total"))
    assert model.stats.joules_per_sequence == pytest.approx(e["total"] / len(TEXTS))
    # The array's cycles by op class add up to what the golden model counted.
    assert sum(model.stats.array_cycles.values()) == model.stats.counters["array_busy"]


def test_batches_equal_single_runs_and_padding_changes_nothing(tmp_path):
    _tiny_dir(tmp_path, seed=1)
    model = load_model(tmp_path, backend="golden", calibration=CALIBRATION)
    together = model.embed(TEXTS, batch_size=len(TEXTS))
    alone = np.concatenate([model.embed([t]) for t in TEXTS])
    assert np.array_equal(together, alone)
    ids, mask = model.tokenize(["a dog ran", "the cat sat on the mat"])
    h = model.run(ids, mask)
    h0 = model.run(ids[:1, :int(mask[0].sum())])
    assert np.array_equal(h[0, :int(mask[0].sum())], h0[0])


def test_fixed_config(tmp_path):
    """One accelerator for every batch that fits; a batch that does not names the buffer."""
    from serrano.hw.config import AcceleratorConfig
    from serrano.sim.encoder import layer_config, plan_layer
    _tiny_dir(tmp_path, seed=4)
    big = layer_config(plan_layer(16, 32, 2, 64, 8, sequences=2))   # 32 rows
    model = load_model(tmp_path, backend="golden", config=big, calibration=CALIBRATION)
    free = load_model(tmp_path, backend="golden", calibration=CALIBRATION)
    assert np.array_equal(model.embed(TEXTS, batch_size=3), free.embed(TEXTS, batch_size=3))
    assert list(model._backends) == ["fixed"]
    with pytest.raises(ValueError, match="act_depth .* smaller than"):
        model.embed(TEXTS, batch_size=6)        # 41 tokens do not fit 32 rows
    with pytest.raises(ValueError, match="config must be a square array with act_bits=16"):
        load_model(tmp_path, config=AcceleratorConfig(rows=8, cols=8))


def test_packed_and_padded_batches_and_other_arrays(tmp_path):
    """Packed batches (the default) give the padded batches' results with fewer rows, so
    a higher utilization; a 16x16 array gives the 8x8 array's results."""
    _tiny_dir(tmp_path, seed=5)
    model = load_model(tmp_path, backend="golden", calibration=CALIBRATION)
    packed = model.embed(TEXTS, batch_size=len(TEXTS))
    busy_packed = model.stats.counters["array_busy"]
    padded = model.embed(TEXTS, batch_size=len(TEXTS), packed=False)
    busy_padded = model.stats.counters["array_busy"] - busy_packed
    assert np.array_equal(packed, padded)
    assert busy_packed < busy_padded
    ids, mask = model.tokenize(TEXTS[:2])
    h = model.run(ids, mask)
    assert not h[1, int(mask[1].sum()):].any()         # packed: zeros at the padding
    same = dict(backend="golden", quantized=model.quantized)
    wide = Model(model.weights, model.tokenizer, lanes=16, **same)
    assert wide.lanes == 16
    assert np.array_equal(wide.embed(TEXTS, batch_size=4), packed)
    hole = mask.copy()
    hole[0, 1] = 0
    with pytest.raises(ValueError, match="packed batches need each attention_mask row"):
        model.run(ids, hole)
    assert model.run(ids, hole, packed=False).shape == h.shape
    with pytest.raises(ValueError, match="lanes must be a positive integer"):
        Model(model.weights, model.tokenizer, lanes=0, **same)
    with pytest.raises(ValueError, match="not a multiple of the 64x64 array's 64 lanes"):
        Model(model.weights, model.tokenizer, lanes=64, **same)


def test_save_and_load_without_recalibrating(tmp_path):
    _tiny_dir(tmp_path, seed=3)
    model = load_model(tmp_path, backend="golden", calibration=CALIBRATION)
    model.save(tmp_path / "tiny.serrano")
    again = load_model(tmp_path / "tiny.serrano", backend="golden")
    assert np.array_equal(again.embed(TEXTS), model.embed(TEXTS))
    assert again.quantized.s_x0 == model.quantized.s_x0
    (tmp_path / "bad.serrano").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a saved Serrano model"):
        load_model(tmp_path / "bad.serrano")


@needs_verilator
def test_compiled_is_bit_exact_with_golden(tmp_path):
    _tiny_dir(tmp_path, seed=2)
    g = load_model(tmp_path, backend="golden", calibration=CALIBRATION)
    c = load_model(tmp_path, backend="compiled", calibration=CALIBRATION)
    ids, mask = g.tokenize(TEXTS[:3])
    assert np.array_equal(c.run(ids, mask), g.run(ids, mask))
    assert c.stats.cycles > 0 and 0 < c.stats.utilization < 1
    assert c.stats.counters["array_busy"] == g.stats.counters["array_busy"]
    by = c.stats.cycles_by_class()
    assert sum(by.values()) == c.stats.cycles and by["array_idle"] > 0


def test_errors(tmp_path):
    _tiny_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a model directory"):
        load_model(tmp_path / "nothing")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model(tmp_path, backend="fpga")
    model = load_model(tmp_path, backend="golden", calibration=CALIBRATION)
    with pytest.raises(TypeError, match="sequence of strings"):
        model.embed("one string")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.embed(TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="input_ids must be"):
        model.run(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="exceed the model's 40"):
        model.run(np.zeros((1, 41), np.int64))
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_model(tmp_path)
