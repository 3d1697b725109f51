"""A trained BERT encoder on the accelerator: load, quantize, compile, embed sentences.

``load_model(path)`` reads a Hugging Face directory (``config.json``, ``model.safetensors``,
``tokenizer.json``, and the sentence-transformers pooling files where present), quantizes it
(``sim.quantized.QuantizedEncoder``: per-channel int8 weights, 16-bit activations with static
scales calibrated on built-in or given sentences, the vector unit's integer kernels) and
returns a :class:`Model` whose :meth:`Model.embed` and :meth:`Model.run` execute the whole
encoder, every layer, as one accelerator program per batch (``sim.encoder.build_encoder``):
the host does only the tokenization, the embedding lookup and the pooling. Programs and
backends are built once per batch shape and cached.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serrano.hw.config import AcceleratorConfig

from . import transformer as tr
from .encoder import (LayerPlan, array_cycles, layer_config, layer_macs, plan_layer,
                      plan_packed, run_encoder)
from .energy import energy_breakdown
from .quantized import QuantizedEncoder

__all__ = ["Model", "ModelStats", "load_model", "BACKENDS"]

#: Backend names :func:`load_model` takes.
BACKENDS = ("golden", "compiled", "pysim")
#: The version of :meth:`Model.save`'s file layout.
_SAVE_FORMAT = "serrano-model-1"


@dataclass
class ModelStats:
    """What the runs so far cost on the accelerator (summed over calls)."""
    runs: int = 0
    sequences: int = 0
    tokens: int = 0                  # real (unpadded) tokens
    cycles: int = 0
    ideal_mac_cycles: float = 0.0    # the products' MACs / (rows * cols)
    counters: dict = field(default_factory=dict)
    #: Modeled joules by part (``sim.energy.energy_breakdown``: an ASIC-class 45 nm
    #: estimate, not a measurement).
    energy: dict = field(default_factory=dict)
    #: The array's busy cycles by op class, from the programs (``linear``: the six linear
    #: layers; ``attention``: Q K^T and P V; ``copy_out``: the identity MATMULs that hand the
    #: result to the host), padding included: they add up to ``counters["array_busy"]``.
    array_cycles: dict = field(default_factory=dict)

    def cycles_by_class(self) -> dict[str, int]:
        """``array_cycles`` and ``array_idle`` (cycles in which no vector entered the array:
        weight loads and vector work not hidden under MATMULs, fills and drains)."""
        busy = sum(self.array_cycles.values())
        return {**self.array_cycles, "array_idle": max(self.cycles - busy, 0)}

    @property
    def joules_per_sequence(self) -> float:
        """Modeled energy per sequence (an estimate, ``docs/performance.md``)."""
        return self.energy.get("total", 0.0) / self.sequences if self.sequences else 0.0

    @property
    def utilization(self) -> float:
        """Ideal MAC cycles over cycles (0 before any run; the golden model counts no
        cycles)."""
        return self.ideal_mac_cycles / self.cycles if self.cycles else 0.0

    def seconds_at(self, mhz: float) -> float:
        """Modeled time of the runs at a clock of ``mhz``."""
        return self.cycles / (mhz * 1e6)


class Model:
    """A quantized encoder with its tokenizer and pooling, bound to a backend.

    Parameters
    ----------
    weights : sim.transformer.BertWeights
    tokenizer : tokenizers.Tokenizer
    backend : str
        One of :data:`BACKENDS`.
    pooling : str
        ``"mean"`` (mean of the unmasked tokens) or ``"cls"``.
    normalize : bool
        L2-normalize the embeddings.
    calibration : sequence of str or None
        Sentences whose float forward passes set the static activation scales (default: the
        built-in ``sim.emulate.CALIBRATION_TEXTS``).
    max_tokens : int or None
        Truncate longer inputs (default: the model's position embeddings).
    config : AcceleratorConfig or None
        One accelerator for every batch (a square array with ``act_bits=16`` and the vector
        unit); a batch whose buffers it cannot hold raises ``ValueError`` naming the buffer.
        ``None``: an accelerator with a ``lanes x lanes`` array sized for each batch shape
        (``sim.encoder.layer_config``).
    lanes : int
        The array's rows and columns when ``config`` is ``None`` (default 8).
    onnx_path : path or None
        The ONNX file the weights came from: :meth:`reference_embed` then runs it with
        onnxruntime instead of the numpy forward pass.
    """

    def __init__(self, weights: tr.BertWeights, tokenizer, *, backend: str = "compiled",
                 pooling: str = "mean", normalize: bool = True,
                 calibration: Sequence[str] | None = None, max_tokens: int | None = None,
                 quantized: QuantizedEncoder | None = None,
                 config: AcceleratorConfig | None = None, lanes: int = 8, onnx_path=None):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
        cfg = weights.config
        if config is not None:
            if not isinstance(config, AcceleratorConfig):
                raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
            if config.rows != config.cols or (config.act_bits, config.vector) != (16, True):
                raise ValueError(f"config must be a square array with act_bits=16 and "
                                 f"vector=True, not {config.describe()}")
            lanes = config.rows
        elif isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        for name, v in (("hidden", cfg.hidden), ("intermediate", cfg.intermediate),
                        ("head size", cfg.head_dim)):
            if v % lanes:
                raise ValueError(f"the model's {name} ({v}) is not a multiple of the "
                                 f"{lanes}x{lanes} array's {lanes} lanes")
        self.lanes = lanes
        # Padding and truncation are this class's business (per batch, masked keys).
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.config, self.onnx_path = config, onnx_path
        self.weights, self.tokenizer = weights, tokenizer
        self.backend_name, self.pooling, self.normalize = backend, pooling, normalize
        self.max_tokens = min(max_tokens or cfg.max_positions, cfg.max_positions)
        if quantized is not None:          # (a saved model: no recalibration)
            if quantized.weights is not weights:
                raise ValueError("quantized must be the QuantizedEncoder of these weights")
            self.quantized = quantized
        else:
            if calibration is None:
                from .emulate import CALIBRATION_TEXTS
                calibration = CALIBRATION_TEXTS
            self.quantized = QuantizedEncoder(weights, [self._ids(t) for t in calibration])
        self.stats = ModelStats()
        self._backends: dict[tuple[int, int], object] = {}

    # ---- saving ---------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the quantized model (weights, scales, integer parameters, tokenizer,
        pooling) to ``path`` (a ``.serrano`` file, Python pickle format: load only files you
        trust); :func:`load_model` reads it back without recalibrating."""
        import pickle
        state = {"format": _SAVE_FORMAT, "quantized": self.quantized,
                 "tokenizer": self.tokenizer.to_str(), "pooling": self.pooling,
                 "normalize": self.normalize, "max_tokens": self.max_tokens}
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)

    # ---- inputs ---------------------------------------------------------------------------
    def _ids(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text).ids[:self.max_tokens]
        return np.asarray(ids, dtype=np.int64)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)``, both ``[n, T]`` (padded with id 0 and mask 0 to
        the longest text)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        seqs = [self._ids(t) for t in texts]
        if not seqs:
            raise ValueError("texts is empty")
        T = max(len(s) for s in seqs)
        ids = np.zeros((len(seqs), T), dtype=np.int64)
        mask = np.zeros((len(seqs), T), dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], mask[i, :len(s)] = s, 1
        return ids, mask

    # ---- running ---------------------------------------------------------------------------
    def _backend(self, sequences: int, tokens: int):
        """The backend for a batch: built once per (sequences, longest sequence rounded up to
        whole blocks), with the buffers of that padded shape (which hold every packed or
        shorter batch of as many sequences)."""
        cfg_m, L = self.weights.config, self.lanes
        key = (sequences, -(-tokens // L) * L) if self.config is None else "fixed"
        if key not in self._backends:
            cfg = self.config or layer_config(plan_layer(key[1], cfg_m.hidden, cfg_m.heads,
                                                         cfg_m.intermediate, L,
                                                         sequences=sequences))
            if self.backend_name == "golden":
                from .golden import GoldenBackend
                self._backends[key] = GoldenBackend(cfg)
            elif self.backend_name == "compiled":
                from .compiled import CompiledBackend
                self._backends[key] = CompiledBackend(cfg)
            else:
                from .pysim import PysimBackend
                self._backends[key] = PysimBackend(cfg)
        return self._backends[key]

    def plan(self, lengths: Sequence[int], packed: bool = True) -> LayerPlan:
        """The layer plan of one batch of sequences of ``lengths`` tokens: packed (each at
        its own length, no padding) or padded to the longest."""
        cfg = self.weights.config
        if not packed:
            return plan_layer(max(lengths), cfg.hidden, cfg.heads, cfg.intermediate,
                              self.lanes, sequences=len(lengths))
        return plan_packed(lengths, cfg.hidden, cfg.heads, cfg.intermediate, self.lanes)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
            packed: bool = True) -> np.ndarray:
        """The last hidden state, float32 ``[batch, seq, hidden]`` (dequantized; 0 at padded
        positions when packed), of one batch: every layer on the accelerator, attention per
        sequence.

        ``packed``: the linear layers run over the concatenated real tokens of all sequences
        (a mask must then mark each sequence's tokens as a prefix, ones then zeros);
        ``False``: every sequence padded to ``seq`` tokens, the padding masked keys."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.shape[1] < 1:
            raise ValueError(f"input_ids must be [batch, seq], not shape {ids.shape}")
        S, seq = ids.shape
        if seq > self.max_tokens:
            raise ValueError(f"sequences of {seq} tokens exceed the model's {self.max_tokens}")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask must be {list(ids.shape)}, not {list(mask.shape)}")
        lengths = (mask != 0).sum(axis=1)
        if packed:
            prefix = np.arange(seq)[None, :] < lengths[:, None]
            if not np.array_equal(mask != 0, prefix):
                raise ValueError("packed batches need each attention_mask row to be ones "
                                 "then zeros (run with packed=False for other masks)")
            if (lengths < 1).any():
                raise ValueError(f"sequence {int(np.argmin(lengths))} has no tokens")
        q, cfg = self.quantized, self.weights.config
        x = q._grid(tr.embeddings(self.weights, ids), q.s_x0)
        plan = self.plan(lengths.tolist() if packed else [seq] * S, packed)
        if packed:
            x = np.concatenate([x[s, :t] for s, t in enumerate(lengths)])
        backend = self._backend(S, seq)
        y, res = run_encoder(backend, q.layers, x.reshape(plan.rows, -1), plan,
                             key_mask=None if packed else mask)
        self._account(res, plan, mask, backend.config)
        y = y * q.layers[-1].scales["y"]
        if not packed:
            return y.reshape(S, seq, cfg.hidden).astype(np.float32)
        h = np.zeros((S, seq, cfg.hidden), dtype=np.float32)
        for s, (o, t) in enumerate(zip(plan.offsets, plan.lengths)):
            h[s, :t] = y[o:o + t]
        return h

    def _account(self, res, plan: LayerPlan, mask: np.ndarray,
                 config: AcceleratorConfig) -> None:
        """Add a run to the stats; the ideal MACs are those of the real (unmasked) tokens."""
        s, layers = self.stats, self.weights.config.layers
        macs = layers * layer_macs(plan, mask.sum(axis=1))
        s.runs += 1
        s.sequences += plan.sequences
        s.tokens += int(mask.sum())
        s.cycles += int(res.counters.get("cycles", 0))
        s.ideal_mac_cycles += macs / (self.lanes * self.lanes)
        for name, v in res.counters.items():
            s.counters[name] = s.counters.get(name, 0) + int(v)
        for name, j in energy_breakdown(res.counters, config).items():
            s.energy[name] = s.energy.get(name, 0.0) + j
        for name, v in array_cycles(plan, layers).items():
            s.array_cycles[name] = s.array_cycles.get(name, 0) + v

    def embed(self, texts: Sequence[str], batch_size: int = 8, packed: bool = True
              ) -> np.ndarray:
        """Sentence embeddings, float32 ``[n, hidden]``: the model's pooling over each
        text's tokens, L2-normalized if the model says so; ``batch_size`` texts per run,
        packed or padded (:meth:`run`)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        ids, mask = self.tokenize(texts)
        out = []
        for i in range(0, len(ids), batch_size):
            b_ids, b_mask = ids[i:i + batch_size], mask[i:i + batch_size]
            seq = int(b_mask.sum(axis=1).max())
            h = self.run(b_ids[:, :seq], b_mask[:, :seq], packed).astype(np.float64)
            if self.pooling == "cls":
                e = h[:, 0]
                if self.normalize:
                    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            else:
                e = tr.mean_pool(h, b_mask[:, :seq], normalize=self.normalize)
            out.append(e)
        return np.concatenate(out).astype(np.float32)

    def reference_embed(self, texts: Sequence[str]) -> np.ndarray:
        """The float model's embeddings of ``texts``, same pooling: the ONNX file run by
        onnxruntime for a model loaded from one, else the numpy float64 forward pass."""
        run = None
        if self.onnx_path is not None:
            from .onnx_import import graph_runner
            run = graph_runner(self.onnx_path)
        out = []
        for t in texts:
            ids = self._ids(t)[None]
            h = run(ids) if run is not None else tr.bert_forward(self.weights, ids)
            mask = np.ones_like(ids)
            e = h[:, 0] if self.pooling == "cls" else tr.mean_pool(h, mask, normalize=False)
            if self.normalize:
                e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            out.append(e[0])
        return np.stack(out).astype(np.float32)


def _pooling(path: Path) -> tuple[str, bool]:
    """The sentence-transformers pooling mode and normalization of a model directory (mean
    and normalized when it has no such files, the common sentence-embedding setup)."""
    mode, normalize = "mean", True
    pool = path / "1_Pooling" / "config.json"
    if pool.is_file():
        cfg = json.loads(pool.read_text())
        if cfg.get("pooling_mode_cls_token"):
            mode = "cls"
        elif not cfg.get("pooling_mode_mean_tokens", True):
            raise ValueError(f"{pool}: only mean and CLS pooling are supported")
    modules = path / "modules.json"
    if modules.is_file():
        types = [m.get("type", "") for m in json.loads(modules.read_text())]
        normalize = any(t.endswith("Normalize") for t in types)
    return mode, normalize


def load_model(path, config: AcceleratorConfig | None = None, backend: str = "compiled",
               tokenizer=None, **kwargs) -> Model:
    """A :class:`Model` from a Hugging Face BERT directory or an ONNX BERT export
    (``sim.onnx_import``; pooling files and ``tokenizer.json`` are looked for beside it).

    ``tokenizer``: a ``tokenizer.json`` path or a ``tokenizers.Tokenizer`` (default: the
    directory's ``tokenizer.json``). ``config``: one accelerator for every batch (see
    :class:`Model`). Other keyword arguments go to :class:`Model`.
    """
    from tokenizers import Tokenizer
    path = Path(path)
    if path.suffix == ".serrano":
        return _load_saved(path, backend, tokenizer, {**kwargs, "config": config})
    if path.suffix == ".onnx":
        from .onnx_import import load_onnx
        directory = path.parent
        if tokenizer is None and not (directory / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path} needs a tokenizer: pass tokenizer= (a "
                                    f"tokenizer.json or a tokenizers.Tokenizer), or put "
                                    f"tokenizer.json beside the file")
        weights = load_onnx(path)
        kwargs.setdefault("onnx_path", path)
    elif path.is_dir():
        weights = tr.load_bert(path)
        directory = path
    else:
        raise FileNotFoundError(f"{path} is not a model directory or an .onnx file")
    if tokenizer is None:
        tok_file = directory / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{path} has no tokenizer.json; pass tokenizer=")
        tokenizer = Tokenizer.from_file(str(tok_file))
    elif isinstance(tokenizer, (str, Path)):
        tokenizer = Tokenizer.from_file(str(tokenizer))
    pooling, normalize = _pooling(directory)
    kwargs.setdefault("pooling", pooling)
    kwargs.setdefault("normalize", normalize)
    return Model(weights, tokenizer, backend=backend, config=config, **kwargs)


def _load_saved(path: Path, backend: str, tokenizer, kwargs: dict) -> Model:
    """A model written by :meth:`Model.save`."""
    import pickle
    from tokenizers import Tokenizer
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a saved Serrano model ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != _SAVE_FORMAT:
        raise ValueError(f"{path}: not a saved Serrano model of format {_SAVE_FORMAT!r}")
    q = state["quantized"]
    if tokenizer is None:
        tokenizer = Tokenizer.from_str(state["tokenizer"])
    elif isinstance(tokenizer, (str, Path)):
        tokenizer = Tokenizer.from_file(str(tokenizer))
    for name in ("pooling", "normalize", "max_tokens"):
        kwargs.setdefault(name, state[name])
    return Model(q.weights, tokenizer, backend=backend, quantized=q, **kwargs)
