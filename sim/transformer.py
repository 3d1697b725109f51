"""A float reference of BERT-style encoders in numpy, and a loader for their weights.

This is the independent float model the accelerator's integer results are compared with: a
plain float64 forward pass of a post-LayerNorm BERT encoder (``BertModel``'s architecture:
embeddings, then layers of multi-head self-attention and a GELU feed-forward network, each
followed by a residual add and LayerNorm), written from the architecture, not from the
accelerator's code. :func:`load_bert` reads a Hugging Face checkpoint directory
(``config.json``, ``model.safetensors``) with ``safetensors``' numpy API: no torch.

Weights are kept in the orientation the accelerator multiplies with: ``y = x @ w + b``, ``w``
of shape ``[in, out]`` (a Hugging Face ``Linear`` stores ``[out, in]``).
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["BertConfig", "EncoderLayerWeights", "BertWeights", "load_bert", "random_layer",
           "random_bert",
           "encoder_layer", "embeddings", "bert_forward", "additive_mask", "mean_pool",
           "gelu", "layer_norm", "softmax"]


@dataclass(frozen=True, kw_only=True)
class BertConfig:
    """The shape of a BERT encoder (the fields of a Hugging Face ``config.json`` it uses)."""
    hidden: int
    heads: int
    intermediate: int
    layers: int
    vocab: int = 30522
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12
    #: ``"gelu"`` (the erf form) or ``"gelu_tanh"`` (the tanh approximation, Hugging Face's
    #: ``gelu_new`` / ``gelu_pytorch_tanh``). The accelerator's GELU kernel follows the erf
    #: form either way (``docs/numerics.md``: the two differ by at most 4.7e-4).
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        for name in ("hidden", "heads", "intermediate", "layers", "vocab", "max_positions",
                     "type_vocab"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads "
                             f"({self.heads})")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be a positive number, not {self.eps!r}")
        if self.hidden_act not in ("gelu", "gelu_tanh"):
            raise ValueError(f"hidden_act must be 'gelu' or 'gelu_tanh', not "
                             f"{self.hidden_act!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_hf(cls, cfg: dict) -> "BertConfig":
        """From a Hugging Face ``config.json`` dict; rejects what this model does not run."""
        if cfg.get("model_type", "bert") != "bert":
            raise ValueError(f"model_type must be 'bert', not {cfg.get('model_type')!r}")
        act = cfg.get("hidden_act", "gelu")
        acts = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
        if act not in acts:
            raise ValueError(f"hidden_act {act!r} is not supported (only 'gelu', the erf "
                             f"form, and its tanh approximations 'gelu_new', "
                             f"'gelu_pytorch_tanh')")
        pos = cfg.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"position_embedding_type {pos!r} is not supported "
                             f"(only 'absolute')")
        try:
            return cls(hidden=cfg["hidden_size"], heads=cfg["num_attention_heads"],
                       intermediate=cfg["intermediate_size"], layers=cfg["num_hidden_layers"],
                       vocab=cfg.get("vocab_size", 30522),
                       max_positions=cfg.get("max_position_embeddings", 512),
                       type_vocab=cfg.get("type_vocab_size", 2),
                       eps=cfg.get("layer_norm_eps", 1e-12), hidden_act=acts[act])
        except KeyError as exc:
            raise ValueError(f"config.json has no {exc.args[0]!r}") from None


@dataclass(frozen=True, kw_only=True)
class EncoderLayerWeights:
    """One encoder layer; linear weights ``[in, out]``, float32."""
    q_w: np.ndarray
    q_b: np.ndarray
    k_w: np.ndarray
    k_b: np.ndarray
    v_w: np.ndarray
    v_b: np.ndarray
    o_w: np.ndarray
    o_b: np.ndarray
    ln1_g: np.ndarray
    ln1_b: np.ndarray
    ffn1_w: np.ndarray
    ffn1_b: np.ndarray
    ffn2_w: np.ndarray
    ffn2_b: np.ndarray
    ln2_g: np.ndarray
    ln2_b: np.ndarray

    def check(self, config: BertConfig, where: str = "layer") -> None:
        """Raise ``ValueError`` naming the first tensor whose shape does not fit ``config``."""
        h, f = config.hidden, config.intermediate
        shapes = {"q_w": (h, h), "k_w": (h, h), "v_w": (h, h), "o_w": (h, h),
                  "ffn1_w": (h, f), "ffn2_w": (f, h), "ffn1_b": (f,)}
        for name in ("q_b", "k_b", "v_b", "o_b", "ln1_g", "ln1_b", "ffn2_b", "ln2_g", "ln2_b"):
            shapes[name] = (h,)
        for name, shape in shapes.items():
            got = getattr(self, name).shape
            if got != shape:
                raise ValueError(f"{where}.{name} has shape {got}, expected {shape}")


@dataclass(frozen=True, kw_only=True)
class BertWeights:
    """A whole BERT encoder: embeddings and layers."""
    config: BertConfig
    word: np.ndarray      # [vocab, hidden]
    position: np.ndarray  # [max_positions, hidden]
    token_type: np.ndarray  # [type_vocab, hidden]
    emb_ln_g: np.ndarray
    emb_ln_b: np.ndarray
    layers: list[EncoderLayerWeights] = field(default_factory=list)


# HF tensor names of one layer (after the "encoder.layer.{i}." prefix), and whether the
# tensor is a Linear weight stored [out, in].
_HF_LAYER = {
    "q_w": "attention.self.query.weight", "q_b": "attention.self.query.bias",
    "k_w": "attention.self.key.weight", "k_b": "attention.self.key.bias",
    "v_w": "attention.self.value.weight", "v_b": "attention.self.value.bias",
    "o_w": "attention.output.dense.weight", "o_b": "attention.output.dense.bias",
    "ln1_g": "attention.output.LayerNorm.weight", "ln1_b": "attention.output.LayerNorm.bias",
    "ffn1_w": "intermediate.dense.weight", "ffn1_b": "intermediate.dense.bias",
    "ffn2_w": "output.dense.weight", "ffn2_b": "output.dense.bias",
    "ln2_g": "output.LayerNorm.weight", "ln2_b": "output.LayerNorm.bias",
}
_HF_EMB = {"word": "embeddings.word_embeddings.weight",
           "position": "embeddings.position_embeddings.weight",
           "token_type": "embeddings.token_type_embeddings.weight",
           "emb_ln_g": "embeddings.LayerNorm.weight", "emb_ln_b": "embeddings.LayerNorm.bias"}


def load_bert(path: str | Path) -> BertWeights:
    """Read a Hugging Face BERT checkpoint directory (``config.json``, ``model.safetensors``).

    Tensor names may carry a ``bert.`` prefix (``BertFor...`` checkpoints); heads beyond the
    encoder (pooler, classifiers) are ignored. Raises ``FileNotFoundError`` for a missing
    file and ``ValueError`` naming a missing or misshapen tensor.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} has no {name} (a Hugging Face BERT directory "
                                    f"needs config.json and model.safetensors)")
    config = BertConfig.from_hf(json.loads((path / "config.json").read_text()))
    tensors = load_file(str(path / "model.safetensors"))
    prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""

    def get(name: str, transpose: bool = False) -> np.ndarray:
        key = prefix + name
        if key not in tensors:
            raise ValueError(f"{path / 'model.safetensors'} has no tensor {key!r}")
        t = tensors[key].astype(np.float32)
        return np.ascontiguousarray(t.T) if transpose else t

    layers = []
    for i in range(config.layers):
        layer = EncoderLayerWeights(**{
            k: get(f"encoder.layer.{i}.{v}", transpose=k.endswith("_w"))
            for k, v in _HF_LAYER.items()})
        layer.check(config, f"layer {i}")
        layers.append(layer)
    weights = BertWeights(config=config, layers=layers,
                          **{k: get(v) for k, v in _HF_EMB.items()})
    h = config.hidden
    for name, shape in [("word", (config.vocab, h)), ("position", (config.max_positions, h)),
                        ("token_type", (config.type_vocab, h)), ("emb_ln_g", (h,)),
                        ("emb_ln_b", (h,))]:
        if getattr(weights, name).shape != shape:
            raise ValueError(f"embeddings {name} has shape {getattr(weights, name).shape}, "
                             f"expected {shape}")
    return weights


def random_layer(config: BertConfig, rng: np.random.Generator,
                 scale: float = 0.05) -> EncoderLayerWeights:
    """A layer of random weights of ``config``'s shape (BERT-like magnitudes), for tests."""
    h, f = config.hidden, config.intermediate

    def w(*shape):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return EncoderLayerWeights(
        q_w=w(h, h), q_b=w(h), k_w=w(h, h), k_b=w(h), v_w=w(h, h), v_b=w(h),
        o_w=w(h, h), o_b=w(h), ln1_g=(1 + w(h)).astype(np.float32), ln1_b=w(h),
        ffn1_w=w(h, f), ffn1_b=w(f), ffn2_w=w(f, h), ffn2_b=w(h),
        ln2_g=(1 + w(h)).astype(np.float32), ln2_b=w(h))


# ---- float kernels (float64) ----------------------------------------------------------------

_ERF = np.frompyfunc(math.erf, 1, 1)  # exact to double precision; numpy has no erf

def random_bert(config: BertConfig, rng: np.random.Generator, *, embedding_scale: float = 0.5,
                layer_scale: float = 0.1) -> BertWeights:
    """A BERT of random weights of ``config``'s shape (unit LayerNorm gains, zero biases on
    the embeddings), for tests and benchmarks."""
    h = config.hidden
    emb = lambda *s: (rng.standard_normal(s) * embedding_scale).astype(np.float32)
    return BertWeights(config=config, word=emb(config.vocab, h),
                       position=emb(config.max_positions, h), token_type=emb(config.type_vocab, h),
                       emb_ln_g=np.ones(h, np.float32), emb_ln_b=np.zeros(h, np.float32),
                       layers=[random_layer(config, rng, layer_scale)
                               for _ in range(config.layers)])


def gelu(x: np.ndarray, form: str = "gelu") -> np.ndarray:
    """GELU: the erf form BERT uses, ``x * (1 + erf(x / sqrt(2))) / 2``, or (``form =
    "gelu_tanh"``) the tanh approximation ``x * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``."""
    x = np.asarray(x, dtype=np.float64)
    if form == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis (biased variance, as torch)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; a row of only ``-inf`` gives zeros."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    s = e.sum(axis=-1, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


def additive_mask(attention_mask: np.ndarray) -> np.ndarray:
    """``[batch, keys]`` 1/0 mask -> ``[batch, 1, 1, keys]`` of 0 / ``-inf`` to add to scores."""
    m = np.asarray(attention_mask)
    return np.where(m[:, None, None, :] != 0, 0.0, -np.inf)


def encoder_layer(x: np.ndarray, layer: EncoderLayerWeights, config: BertConfig,
                  attention_mask: np.ndarray | None = None) -> np.ndarray:
    """One post-LayerNorm BERT layer on ``x`` ``[batch, seq, hidden]`` (float64 result).

    ``attention_mask`` is ``[batch, seq]`` of 1 (attend) / 0 (padding); None attends to all.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[-1] != config.hidden:
        raise ValueError(f"x must be [batch, seq, {config.hidden}], not {x.shape}")
    b, t, h = x.shape
    nh, d = config.heads, config.head_dim

    def heads(y):  # [b, t, h] -> [b, nh, t, d]
        return y.reshape(b, t, nh, d).transpose(0, 2, 1, 3)

    q = heads(x @ layer.q_w + layer.q_b)
    k = heads(x @ layer.k_w + layer.k_b)
    v = heads(x @ layer.v_w + layer.v_b)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    if attention_mask is not None:
        mask = np.asarray(attention_mask)
        if mask.shape != (b, t):
            raise ValueError(f"attention_mask must be [{b}, {t}], not {mask.shape}")
        scores = scores + additive_mask(mask)
    ctx = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(b, t, h)
    x1 = layer_norm(x + ctx @ layer.o_w + layer.o_b, layer.ln1_g, layer.ln1_b, config.eps)
    ffn = gelu(x1 @ layer.ffn1_w + layer.ffn1_b, config.hidden_act) @ layer.ffn2_w + layer.ffn2_b
    return layer_norm(x1 + ffn, layer.ln2_g, layer.ln2_b, config.eps)


def embeddings(weights: BertWeights, input_ids: np.ndarray,
               token_type_ids: np.ndarray | None = None) -> np.ndarray:
    """Word + position + token-type embeddings, then LayerNorm: ``[batch, seq, hidden]``."""
    ids = np.asarray(input_ids)
    cfg = weights.config
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], not shape {ids.shape}")
    if ids.shape[1] > cfg.max_positions:
        raise ValueError(f"sequence length {ids.shape[1]} exceeds the model's maximum "
                         f"{cfg.max_positions}")
    if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab):
        raise ValueError(f"input_ids must be in [0, {cfg.vocab}), found "
                         f"{ids.min()}..{ids.max()}")
    types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
    e = (weights.word[ids].astype(np.float64) + weights.position[:ids.shape[1]]
         + weights.token_type[types])
    return layer_norm(e, weights.emb_ln_g, weights.emb_ln_b, cfg.eps)


def bert_forward(weights: BertWeights, input_ids: np.ndarray,
                 attention_mask: np.ndarray | None = None,
                 token_type_ids: np.ndarray | None = None) -> np.ndarray:
    """The last hidden state ``[batch, seq, hidden]`` (float64)."""
    x = embeddings(weights, input_ids, token_type_ids)
    for layer in weights.layers:
        x = encoder_layer(x, layer, weights.config, attention_mask)
    return x


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray, normalize: bool = True
              ) -> np.ndarray:
    """Mean of the unmasked tokens' states (sentence-transformers' mean pooling), optionally
    L2-normalized: ``[batch, hidden]``."""
    m = np.asarray(attention_mask, dtype=np.float64)[:, :, None]
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled
