"""A BERT encoder in the accelerator's integer arithmetic: the oracle of the on-chip layer.

:class:`QuantizedEncoder` quantizes a float :class:`sim.transformer.BertWeights` the way the
accelerator runs it (``docs/vector.md``, "The encoder-layer program"): per-output-channel
symmetric int8 weights; 16-bit (or 8-bit) activations with one static scale per tensor,
calibrated as the maximum magnitude over sample inputs; K and V requantized to int8 weight
tiles; the nonlinear ops are the integer kernels of :mod:`sim.kernels` (softmax, LayerNorm
with the residual, GELU), the linear layers' outputs reaching them through the per-channel
input stage (:func:`sim.kernels.prescale`) that adds the bias. Every product is an exact
integer matrix product whose int32 accumulators wrap as the hardware's do (the wraps are
counted in :attr:`QuantizedEncoder.stats`; a calibrated model has none).

Only the embedding lookup (and its LayerNorm) and the final pooling run in float, on the
host. ``float_ops`` swaps chosen nonlinear ops for their float64 versions on the same
quantized inputs and output grids, so each integer kernel's cost in accuracy can be measured
on its own (``serrano precision-study --integer``).
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from . import kernels, numerics, transformer as tr

__all__ = ["FLOAT_OPS", "QuantizedLayer", "QuantizedEncoder", "quantize_weight"]

FLOAT_OPS = frozenset({"softmax", "layernorm", "gelu"})
# the tensors whose static scales calibration measures, per layer
_TENSORS = ("x", "q", "k", "v", "ctx", "x1", "g", "y")
_INT32 = 1 << 31


def _qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (column of ``[in, out]``): ``(w_q, s_w)``."""
    s_w = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127
    return np.clip(np.round(w / s_w), -127, 127).astype(np.int8), s_w


def _requant_params(s_in: np.ndarray | float, s_out: float, n: int,
                    bias: np.ndarray | None = None, bits: int = 16) -> dict[str, np.ndarray]:
    """VREQUANT's ``OutputParams`` per column: ``round(acc + bias / s_in) * s_in / s_out``,
    symmetric, clamped to ``bits`` (the 16-bit clamp is the kernel's, ``lo``/``hi`` unused)."""
    s_in = np.broadcast_to(np.asarray(s_in, dtype=np.float64), (n,))
    mult, shift = numerics.quantize_multiplier(s_in / s_out)
    q_bias = np.zeros(n, np.int64) if bias is None else np.floor(bias / s_in + 0.5)
    lo, hi = (-127, 127) if bits == 8 else (-128, 127)
    return {"bias": np.asarray(q_bias, np.int64), "multiplier": np.asarray(mult, np.int64),
            "shift": np.asarray(shift, np.int64), "zero_point": np.zeros(n, np.int64),
            "lo": np.full(n, lo), "hi": np.full(n, hi)}


@dataclass(frozen=True, kw_only=True)
class QuantizedLayer:
    """One layer's integer weights and the integer parameters of every on-chip step."""
    act_bits: int
    scales: dict[str, float]                 # static real scale of each tensor in _TENSORS
    w: dict[str, np.ndarray]                 # int8 [in, out]: q, k, v, o, ffn1, ffn2
    s_w: dict[str, np.ndarray]               # per-output-channel weight scales
    requant: dict[str, dict[str, np.ndarray]]  # OutputParams of q, k, v, ctx
    softmax: kernels.SoftmaxParams
    pre: dict[str, dict[str, np.ndarray]]    # input stages of o (LN1), ffn1 (GELU), ffn2 (LN2)
    common: dict[str, float]                 # the common scale after each input stage
    ln1: kernels.LayerNormParams
    gelu: kernels.GeluParams
    ln2: kernels.LayerNormParams
    # the float parameters, for float_ops
    float_params: dict[str, np.ndarray] = field(repr=False)


class QuantizedEncoder:
    """``weights`` run in the accelerator's integer arithmetic.

    Parameters
    ----------
    weights : sim.transformer.BertWeights
    calibration : iterable of 1-D int arrays
        Token-id sequences whose float forward passes give every tensor's static scale.
    act_bits : int
        16 (the design's choice, ``docs/vector.md``) or 8.
    float_ops : iterable of str
        Nonlinear ops to run in float64 instead (subset of ``FLOAT_OPS``), for ablations.
    """

    def __init__(self, weights: tr.BertWeights, calibration: Iterable[np.ndarray], *,
                 act_bits: int = 16, float_ops: Iterable[str] = ()):
        if act_bits not in (8, 16):
            raise ValueError(f"act_bits must be 8 or 16, not {act_bits!r}")
        float_ops = frozenset(float_ops)
        if not float_ops <= FLOAT_OPS:
            raise ValueError(f"float_ops must be a subset of {sorted(FLOAT_OPS)}, not "
                             f"{sorted(float_ops)}")
        self.weights, self.act_bits, self.float_ops = weights, act_bits, float_ops
        seqs = [np.asarray(s) for s in calibration]
        if not seqs:
            raise ValueError("calibration needs at least one token-id sequence")
        maxima = self._calibrate(seqs)
        q = _qmax(act_bits)
        self.s_x0 = maxima[0]["x"] / q
        self.layers = [self._quantize(layer, {k: v / (127 if k in "kv" else q)
                                              for k, v in m.items()})
                       for layer, m in zip(weights.layers, maxima)]
        self.stats = {"wraps": 0, "acc_max": 0}

    # ---- calibration and quantization ------------------------------------------------------

    def _calibrate(self, seqs: list[np.ndarray]) -> list[dict[str, float]]:
        cfg = self.weights.config
        maxima = [dict.fromkeys(_TENSORS, 1e-12) for _ in self.weights.layers]
        for ids in seqs:
            x = tr.embeddings(self.weights, ids[None])[0]
            for layer, m in zip(self.weights.layers, maxima):
                t, nh, d = x.shape[0], cfg.heads, cfg.head_dim
                heads = lambda y: y.reshape(t, nh, d).transpose(1, 0, 2)
                qv, kv, vv = (x @ getattr(layer, f"{n}_w") + getattr(layer, f"{n}_b")
                              for n in "qkv")
                p = tr.softmax(heads(qv) @ heads(kv).transpose(0, 2, 1) / math.sqrt(d))
                ctx = (p @ heads(vv)).transpose(1, 0, 2).reshape(t, -1)
                x1 = tr.layer_norm(x + ctx @ layer.o_w + layer.o_b, layer.ln1_g, layer.ln1_b,
                                   cfg.eps)
                g = tr.gelu(x1 @ layer.ffn1_w + layer.ffn1_b, cfg.hidden_act)
                y = tr.layer_norm(x1 + g @ layer.ffn2_w + layer.ffn2_b, layer.ln2_g,
                                  layer.ln2_b, cfg.eps)
                for name, val in zip(_TENSORS, (x, qv, kv, vv, ctx, x1, g, y)):
                    m[name] = max(m[name], float(np.abs(val).max()))
                x = y
        return maxima

    def _quantize(self, layer: tr.EncoderLayerWeights, s: dict[str, float]) -> QuantizedLayer:
        a, cfg = self.act_bits, self.weights.config
        h, f = cfg.hidden, cfg.intermediate
        w, s_w = {}, {}
        for name, attr in (("q", "q_w"), ("k", "k_w"), ("v", "v_w"), ("o", "o_w"),
                           ("ffn1", "ffn1_w"), ("ffn2", "ffn2_w")):
            w[name], s_w[name] = quantize_weight(getattr(layer, attr))
        requant = {n: _requant_params(s["x"] * s_w[n], s[n], h, getattr(layer, f"{n}_b"),
                                      8 if n in "kv" else a) for n in "qkv"}
        # P (scale 1 / q_max) times V (s_v) into the context's scale
        requant["ctx"] = _requant_params(s["v"] / _qmax(a), s["ctx"], cfg.head_dim)
        softmax = kernels.softmax_params(s["q"] * s["k"] / math.sqrt(cfg.head_dim), a)
        pre, common = {}, {}
        for name, s_act, bias in (("o", s["ctx"], layer.o_b), ("ffn1", s["x1"], layer.ffn1_b),
                                  ("ffn2", s["g"], layer.ffn2_b)):
            s_in = s_act * s_w[name]
            common[name] = 2 * float(s_in.max())
            pre[name] = kernels.prescale_params(s_in, common[name], bias)
        ln1 = kernels.layernorm_params(common["o"], s["x1"], layer.ln1_g, layer.ln1_b, cfg.eps,
                                       a, s_residual=s["x"])
        gelu = kernels.gelu_params(common["ffn1"], s["g"], a)
        ln2 = kernels.layernorm_params(common["ffn2"], s["y"], layer.ln2_g, layer.ln2_b,
                                       cfg.eps, a, s_residual=s["x1"])
        fp = {n: getattr(layer, n) for n in ("ln1_g", "ln1_b", "ln2_g", "ln2_b")}
        return QuantizedLayer(act_bits=a, scales=dict(s), w=w, s_w=s_w, requant=requant,
                              softmax=softmax, pre=pre, common=common, ln1=ln1, gelu=gelu,
                              ln2=ln2, float_params=fp)

    # ---- the integer forward pass ----------------------------------------------------------

    def _matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """An exact integer product with the hardware's int32 wrap."""
        acc = a.astype(np.int64) @ b.astype(np.int64)
        big = int(np.abs(acc).max(initial=0))
        self.stats["acc_max"] = max(self.stats["acc_max"], big)
        wrapped = (acc + _INT32) % (2 * _INT32) - _INT32
        self.stats["wraps"] += int(np.count_nonzero(wrapped != acc))
        return wrapped

    def _grid(self, real: np.ndarray, scale: float) -> np.ndarray:
        q = _qmax(self.act_bits)
        return np.clip(np.floor(real / scale + 0.5), -q - 1, q).astype(np.int64)

    def layer(self, i: int, x: np.ndarray, key_mask: np.ndarray | None = None) -> np.ndarray:
        """Layer ``i`` on one sequence's int activations ``x`` ``[T, hidden]`` (scale
        ``layers[i].scales["x"]``); ``key_mask`` ``[T]`` of 1 (attend) / 0 (padding).
        Returns the output activations ``[T, hidden]`` (scale ``scales["y"]``)."""
        ql, cfg, a = self.layers[i], self.weights.config, self.act_bits
        s, fops = ql.scales, self.float_ops
        t, nh, d = x.shape[0], cfg.heads, cfg.head_dim
        q = kernels.requant(self._matmul(x, ql.w["q"]), ql.requant["q"], a).astype(np.int64)
        k = kernels.requant(self._matmul(x, ql.w["k"]), ql.requant["k"], 8).astype(np.int64)
        v = kernels.requant(self._matmul(x, ql.w["v"]), ql.requant["v"], 8).astype(np.int64)
        mask = None
        if key_mask is not None:
            mask = np.where(np.asarray(key_mask) != 0, 0, kernels.mask_sentinel(a))
        ctx = np.zeros((t, cfg.hidden), np.int64)
        for hd in range(nh):
            cols = slice(hd * d, (hd + 1) * d)
            scores = self._matmul(q[:, cols], k[:, cols].T)
            if "softmax" in fops:
                logits = scores * (s["q"] * s["k"] / math.sqrt(d))
                if mask is not None:
                    logits = np.where(mask == kernels.mask_sentinel(a), -np.inf, logits)
                p = np.clip(np.floor(tr.softmax(logits) * _qmax(a) + 0.5), 0, _qmax(a))
            else:
                p = kernels.softmax(scores, mask, ql.softmax)
            ctx[:, cols] = kernels.requant(self._matmul(p, v[:, cols]), ql.requant["ctx"], a)
        fp = ql.float_params
        acc_o = self._matmul(ctx, ql.w["o"])
        if "layernorm" in fops:
            h = self._dequant(acc_o, ql, "o") + x * s["x"]
            x1 = self._grid(tr.layer_norm(h, fp["ln1_g"], fp["ln1_b"], cfg.eps), s["x1"])
        else:
            x1 = kernels.layernorm(acc_o, ql.ln1, residual=x, pre=ql.pre["o"]).astype(np.int64)
        acc_1 = self._matmul(x1, ql.w["ffn1"])
        if "gelu" in fops:
            g = self._grid(tr.gelu(self._dequant(acc_1, ql, "ffn1"), cfg.hidden_act), s["g"])
        else:
            g = kernels.gelu(acc_1, ql.gelu, pre=ql.pre["ffn1"]).astype(np.int64)
        acc_2 = self._matmul(g, ql.w["ffn2"])
        if "layernorm" in fops:
            h = self._dequant(acc_2, ql, "ffn2") + x1 * s["x1"]
            return self._grid(tr.layer_norm(h, fp["ln2_g"], fp["ln2_b"], cfg.eps), s["y"])
        return kernels.layernorm(acc_2, ql.ln2, residual=x1, pre=ql.pre["ffn2"]).astype(np.int64)

    @staticmethod
    def _dequant(acc: np.ndarray, ql: QuantizedLayer, name: str) -> np.ndarray:
        """The real value of a linear layer's accumulators, bias included."""
        pre = ql.pre[name]
        s_in = ql.common[name] * pre["multiplier"] * 2.0 ** (pre["shift"] - 31)
        return (acc + pre["bias"]) * s_in

    def hidden(self, ids: np.ndarray, key_mask: np.ndarray | None = None) -> np.ndarray:
        """Last hidden state (float64, dequantized) of one token-id sequence ``[T]``."""
        x = self._grid(tr.embeddings(self.weights, np.asarray(ids)[None])[0], self.s_x0)
        for i in range(len(self.layers)):
            if i and self.layers[i].scales["x"] != self.layers[i - 1].scales["y"]:
                # the next layer's input scale is this layer's output scale by construction
                raise AssertionError("layer scales do not chain")
            x = self.layer(i, x, key_mask)
        return x * self.layers[-1].scales["y"]

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Mean-pooled, L2-normalized sentence embedding of one token-id sequence."""
        m = self.hidden(ids).mean(axis=0)
        return m / np.linalg.norm(m)
