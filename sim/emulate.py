"""Quantization emulation of a BERT encoder in numpy: which activation precision a model needs.

A "fake-quant" forward pass: the float reference of :mod:`sim.transformer`, with every tensor
that the accelerator would hold as an integer rounded to its grid (per-output-channel int8
weights; activations int8 or int16 with a static per-tensor scale calibrated on other inputs,
or int8 with a dynamic per-token scale; K and V, which become weight tiles of the attention
products, int8 or at the activation precision; softmax probabilities at the activation
precision). Softmax, LayerNorm and GELU stay in float here: this measures the quantization
scheme alone (``serrano precision-study`` prints the figures; ``docs/vector.md`` quotes them).
"""

import math
from dataclasses import dataclass

import numpy as np

from . import transformer as tr
from .quantized import quantize_weight

__all__ = ["Scheme", "SCHEMES", "Emulator", "CALIBRATION_TEXTS", "TEST_TEXTS"]


@dataclass(frozen=True, kw_only=True)
class Scheme:
    """A quantization scheme: activation bits, static or per-token scales, K/V bits."""
    name: str
    act_bits: int          # 8 or 16
    per_token: bool        # dynamic scale per row (token) instead of one static scale
    kv_bits: int           # bits of K and V (weights of the attention products)

    def __post_init__(self) -> None:
        for field_name in ("act_bits", "kv_bits"):
            if getattr(self, field_name) not in (8, 16):
                raise ValueError(f"{field_name} must be 8 or 16, not "
                                 f"{getattr(self, field_name)!r}")


SCHEMES = {s.name: s for s in [
    Scheme(name="int8-static", act_bits=8, per_token=False, kv_bits=8),
    Scheme(name="int8-per-token", act_bits=8, per_token=True, kv_bits=8),
    Scheme(name="int16-static", act_bits=16, per_token=False, kv_bits=8),
    Scheme(name="int16-static-kv16", act_bits=16, per_token=False, kv_bits=16),
]}

# Sentences for calibration and for measuring; varied lengths, very short ones included (they
# are the hardest: the notes found the worst case is always the shortest sentence).
CALIBRATION_TEXTS = [
    "A woman is slicing an onion.", "The weather today is sunny and warm.",
    "Where is the nearest hospital?", "Scientists discovered a new species of frog in the "
    "rainforest.", "I need to buy groceries after work.", "The football match ended in a draw.",
    "Please send me the report by Friday.", "Music makes people happy.",
    "The spacecraft entered orbit around Mars after a seven month journey.", "Ok"]
TEST_TEXTS = [
    "Hi there", "Good morning", "The cat sat on the mat.", "A man is playing a guitar on stage.",
    "Stock markets fell sharply after the announcement of new tariffs.",
    "How do I reset my password?", "The quick brown fox jumps over the lazy dog.",
    "Quantum computers use qubits instead of classical bits.",
    "She sells seashells by the seashore.", "I love pizza",
    "Rain is expected tomorrow afternoon in most of the northern regions.",
    "Python is a popular programming language for data science and machine learning.",
    "The Eiffel Tower is located in Paris, France.", "What time does the train to Boston leave?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.", "Yes",
    "Thank you very much!", "The committee postponed the vote until further notice, citing "
    "procedural concerns.", "Dogs are loyal animals.",
    "Mount Everest is the highest mountain above sea level.",
    "He forgot his umbrella at the office again.", "An apple a day keeps the doctor away.",
    "The symphony orchestra performed Beethoven's ninth symphony last night to a sold-out "
    "audience.", "Bananas are yellow"]


def _grid(x: np.ndarray, scale: np.ndarray | float, bits: int) -> np.ndarray:
    qmax = (1 << (bits - 1)) - 1
    return np.clip(np.round(x / scale), -qmax - 1, qmax) * scale


class Emulator:
    """Fake-quant forward passes of ``weights`` under ``scheme``.

    Call :meth:`calibrate` with token-id sequences first (static schemes need the observed
    maxima), then :meth:`embed`.
    """

    def __init__(self, weights: tr.BertWeights, scheme: Scheme):
        self.weights, self.scheme = weights, scheme
        self._max: dict[tuple[int, str], float] = {}
        self._calibrating = False
        self._wq = [{name: self._weight(getattr(layer, name))
                     for name in ("q_w", "k_w", "v_w", "o_w", "ffn1_w", "ffn2_w")}
                    for layer in weights.layers]

    @staticmethod
    def _weight(w: np.ndarray) -> np.ndarray:
        """Symmetric int8 per output channel (column of ``[in, out]``), as real values: the
        accelerator's weights (``sim.quantized``'s quantizer)."""
        w_q, s_w = quantize_weight(w)
        return w_q * s_w

    def _act(self, x: np.ndarray, key: tuple[int, str], bits: int | None = None) -> np.ndarray:
        bits = self.scheme.act_bits if bits is None else bits
        if self._calibrating:
            self._max[key] = max(self._max.get(key, 0.0), float(np.abs(x).max()))
            return x
        qmax = (1 << (bits - 1)) - 1
        if self.scheme.per_token:
            scale = np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-12) / qmax
        else:
            if key not in self._max:
                raise RuntimeError("calibrate() before embed() with a static scheme")
            scale = max(self._max[key], 1e-12) / qmax
        return _grid(x, scale, bits)

    def _layer(self, i: int, x: np.ndarray) -> np.ndarray:
        layer, wq, cfg = self.weights.layers[i], self._wq[i], self.weights.config
        t, h = x.shape
        nh, d = cfg.heads, cfg.head_dim
        xi = self._act(x, (i, "x"))
        q = self._act(xi @ wq["q_w"] + layer.q_b, (i, "q"))
        k = self._act(xi @ wq["k_w"] + layer.k_b, (i, "k"), self.scheme.kv_bits)
        v = self._act(xi @ wq["v_w"] + layer.v_b, (i, "v"), self.scheme.kv_bits)
        heads = lambda y: y.reshape(t, nh, d).transpose(1, 0, 2)
        p = tr.softmax(heads(q) @ heads(k).transpose(0, 2, 1) / math.sqrt(d))
        if not self._calibrating:  # probabilities on the fixed grid 1 / q_max
            p = _grid(p, 1 / ((1 << (self.scheme.act_bits - 1)) - 1), self.scheme.act_bits)
        ctx = self._act((p @ heads(v)).transpose(1, 0, 2).reshape(t, h), (i, "ctx"))
        x1 = tr.layer_norm(xi + ctx @ wq["o_w"] + layer.o_b, layer.ln1_g, layer.ln1_b, cfg.eps)
        x1i = self._act(x1, (i, "x1"))
        g = self._act(tr.gelu(x1i @ wq["ffn1_w"] + layer.ffn1_b), (i, "gelu"))
        return tr.layer_norm(x1i + g @ wq["ffn2_w"] + layer.ffn2_b, layer.ln2_g, layer.ln2_b,
                             cfg.eps)

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        x = tr.embeddings(self.weights, np.asarray(ids)[None])[0]
        for i in range(len(self.weights.layers)):
            x = self._layer(i, x)
        return x

    def calibrate(self, sequences: list[np.ndarray]) -> None:
        """Record the maximum magnitude of every quantized tensor over ``sequences``."""
        self._calibrating = True
        try:
            for ids in sequences:
                self._forward(ids)
        finally:
            self._calibrating = False

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Mean-pooled, L2-normalized sentence embedding of one token-id sequence."""
        x = self._forward(ids)
        m = x.mean(axis=0)
        return m / np.linalg.norm(m)
