"""sim.onnx_import and load_model on ONNX files: tiny BERTs written by the test with
``onnx.helper`` (fused and decomposed LayerNorm, float and int8-quantized weights, the shape
arithmetic of a real export for the position ids), imported and checked against onnxruntime,
then run on the accelerator; unsupported graphs get errors that name the node."""

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from serrano.sim import transformer as tr  # noqa: E402
from serrano.sim.model import load_model  # noqa: E402
from serrano.sim.onnx_import import OnnxImportError, load_onnx  # noqa: E402

from test_model import CALIBRATION, TEXTS, _tiny_dir  # noqa: E402


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, value, dtype=np.float32) -> str:
        self.n += 1
        name = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, *inputs, **attrs) -> str:
        self.n += 1
        out = f"t{self.n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"n{self.n}",
                                           **attrs))
        return out

    def weight(self, w: np.ndarray, quantized: bool) -> str:
        if not quantized:
            return self.const(w)
        scale = np.maximum(np.abs(w).max(axis=0), 1e-8) / 127
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        return self.op("Mul", self.op("Cast", self.const(q, np.int8), to=TensorProto.FLOAT),
                       self.const(scale))

    def layer_norm(self, x, g, b, eps, fused: bool) -> str:
        if fused:
            return self.op("LayerNormalization", x, self.const(g), self.const(b), axis=-1,
                           epsilon=eps)
        mean = self.op("ReduceMean", x, axes=[-1], keepdims=1)   # (axes an input from opset 18)
        d = self.op("Sub", x, mean)
        var = self.op("ReduceMean", self.op("Pow", d, self.const(2.0)), axes=[-1], keepdims=1)
        norm = self.op("Div", d, self.op("Sqrt", self.op("Add", var, self.const(eps))))
        return self.op("Add", self.op("Mul", norm, self.const(g)), self.const(b))


def _write_onnx(path, w: tr.BertWeights, *, fused_ln=True, quantized=False, extra=None,
                tanh=False, pooler=False):
    """A BERT export of ``w``: inputs input_ids and attention_mask [batch, seq] (int64),
    output last_hidden_state; position ids from Shape/Gather/Range/Unsqueeze."""
    c = w.config
    G = _Graph()
    pos_len = G.op("Gather", G.op("Shape", "input_ids"), G.const(1, np.int64), axis=0)
    pos = G.op("Unsqueeze", G.op("Range", G.const(0, np.int64), pos_len, G.const(1, np.int64)),
               G.const([0], np.int64))
    types = G.op("ConstantOfShape", G.op("Shape", "input_ids"),
                 value=numpy_helper.from_array(np.zeros(1, np.int64)))
    x = G.op("Add", G.op("Add", G.op("Gather", G.const(w.word), "input_ids", axis=0),
                         G.op("Gather", G.const(w.position), pos, axis=0)),
             G.op("Gather", G.const(w.token_type), types, axis=0))
    x = G.layer_norm(x, w.emb_ln_g, w.emb_ln_b, c.eps, fused_ln)
    m = G.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    ext = G.op("Unsqueeze", G.op("Mul", G.op("Sub", G.const(1.0), m), G.const(-10000.0)),
               G.const([1, 2], np.int64))
    heads_shape = G.const([0, 0, c.heads, c.head_dim], np.int64)
    for lw in w.layers:
        def lin(inp, wt, b):
            return G.op("Add", G.op("MatMul", inp, G.weight(wt, quantized)), G.const(b))
        q = G.op("Transpose", G.op("Reshape", lin(x, lw.q_w, lw.q_b), heads_shape),
                 perm=[0, 2, 1, 3])
        k = G.op("Transpose", G.op("Reshape", lin(x, lw.k_w, lw.k_b), heads_shape),
                 perm=[0, 2, 3, 1])
        v = G.op("Transpose", G.op("Reshape", lin(x, lw.v_w, lw.v_b), heads_shape),
                 perm=[0, 2, 1, 3])
        s = G.op("Add", G.op("Div", G.op("MatMul", q, k), G.const(np.sqrt(c.head_dim))), ext)
        ctx = G.op("Reshape", G.op("Transpose", G.op("MatMul", G.op("Softmax", s, axis=-1), v),
                                   perm=[0, 2, 1, 3]), G.const([0, 0, c.hidden], np.int64))
        x1 = G.layer_norm(G.op("Add", lin(ctx, lw.o_w, lw.o_b), x), lw.ln1_g, lw.ln1_b, c.eps,
                          fused_ln)
        f = lin(x1, lw.ffn1_w, lw.ffn1_b)
        if tanh:    # 0.5 f (1 + tanh(sqrt(2/pi) (f + 0.044715 f^3)))
            inner = G.op("Mul", G.const(np.sqrt(2 / np.pi)),
                         G.op("Add", f, G.op("Mul", G.const(0.044715),
                                             G.op("Pow", f, G.const(3.0)))))
            g = G.op("Mul", G.op("Mul", f, G.const(0.5)),
                     G.op("Add", G.const(1.0), G.op("Tanh", inner)))
        else:
            g = G.op("Mul", G.op("Mul", f, G.const(0.5)),
                     G.op("Add", G.const(1.0),
                          G.op("Erf", G.op("Div", f, G.const(np.sqrt(2.0))))))
        x = G.layer_norm(G.op("Add", lin(g, lw.ffn2_w, lw.ffn2_b), x1), lw.ln2_g, lw.ln2_b,
                         c.eps, fused_ln)
    if extra is not None:
        x = extra(G, x)
    G.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="out"))
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                             ["batch", "seq", c.hidden])]
    if pooler:      # BertModel's pooler: tanh(dense(the first token)), a second output
        rng = np.random.default_rng(5)
        first = G.op("Gather", x, G.const(0, np.int64), axis=1)
        dense = G.op("Gemm", first, G.const(rng.standard_normal((c.hidden, c.hidden)) * 0.1),
                     G.const(np.zeros(c.hidden)), transB=1)
        G.nodes.append(helper.make_node("Tanh", [dense], ["pooler_output"], name="pool"))
        outputs.append(helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT,
                                                     ["batch", c.hidden]))
    graph = helper.make_graph(
        G.nodes, "bert",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
         for n in ("input_ids", "attention_mask")], outputs, G.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("fused_ln, quantized, tanh, pooler",
                         [(True, False, False, False), (False, False, False, False),
                          (True, True, False, False), (False, False, True, False),
                          (True, False, False, True)],
                         ids=["fused", "decomposed", "int8", "tanh-gelu", "with-pooler"])
def test_import_matches_onnxruntime(tmp_path, fused_ln, quantized, tanh, pooler):
    """The graph's nodes that the last hidden state does not depend on (BertModel's pooler,
    a Gemm and a Tanh) are left out of the mapping."""
    (tmp_path / "hf").mkdir()
    w = _tiny_dir(tmp_path / "hf")
    _write_onnx(tmp_path / "m.onnx", w, fused_ln=fused_ln, quantized=quantized, tanh=tanh,
                pooler=pooler)
    got = load_onnx(tmp_path / "m.onnx")
    assert got.config.hidden_act == ("gelu_tanh" if tanh else "gelu")
    assert got.config.heads == w.config.heads and got.config.layers == len(w.layers)
    import onnxruntime as ort
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[2, 5, 9, 11, 3, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 0, 0]])
    want = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    ref = tr.bert_forward(got, ids, mask)
    np.testing.assert_allclose(ref[0, :5], want[0, :5], atol=2e-4, rtol=1e-3)


def test_onnx_model_embeds_like_the_hf_directory(tmp_path):
    """The same weights as an ONNX file and as a Hugging Face directory give the same
    embeddings on the accelerator (golden), with the directory's tokenizer."""
    (tmp_path / "hf").mkdir()
    w = _tiny_dir(tmp_path / "hf")
    _write_onnx(tmp_path / "m.onnx", w)
    a = load_model(tmp_path / "hf", backend="golden", calibration=CALIBRATION)
    b = load_model(tmp_path / "m.onnx", backend="golden", calibration=CALIBRATION,
                   tokenizer=tmp_path / "hf" / "tokenizer.json")
    np.testing.assert_allclose(b.embed(TEXTS), a.embed(TEXTS), atol=1e-5)
    # The ONNX model's float reference is onnxruntime's; it agrees with the numpy forward pass.
    np.testing.assert_allclose(b.reference_embed(TEXTS), a.reference_embed(TEXTS), atol=1e-5)
    assert np.sum(b.embed(TEXTS) * b.reference_embed(TEXTS), axis=1).min() > 0.99


def test_tanh_gelu_model_runs_close_to_its_float_model(tmp_path):
    """A tanh-GELU export runs with the accelerator's erf-form GELU kernel (they differ by at
    most 4.7e-4): embeddings within cosine 0.99 of the tanh model's float embeddings."""
    (tmp_path / "hf").mkdir()
    w = _tiny_dir(tmp_path / "hf")
    _write_onnx(tmp_path / "hf" / "m.onnx", w, tanh=True)
    model = load_model(tmp_path / "hf" / "m.onnx", backend="golden", calibration=CALIBRATION)
    cos = np.sum(model.embed(TEXTS) * model.reference_embed(TEXTS), axis=1)
    assert cos.min() > 0.99, cos


def test_unsupported_graphs_are_named(tmp_path):
    (tmp_path / "hf").mkdir()
    w = _tiny_dir(tmp_path / "hf")
    _write_onnx(tmp_path / "topk.onnx", w,
                extra=lambda G, x: G.op("Relu", x))
    with pytest.raises(OnnxImportError, match=r"node 'n\d+' is a Relu, which the BERT "
                                              r"importer does not support"):
        load_onnx(tmp_path / "topk.onnx")
    _write_onnx(tmp_path / "scaled.onnx", w, extra=lambda G, x: G.op("Mul", x, G.const(2.0)))
    with pytest.raises(OnnxImportError, match="not that of the BERT encoder"):
        load_onnx(tmp_path / "scaled.onnx")
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(FileNotFoundError, match="needs a tokenizer"):
        load_model(tmp_path / "scaled.onnx", backend="golden")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(Exception):
        load_onnx(tmp_path / "junk.onnx")
