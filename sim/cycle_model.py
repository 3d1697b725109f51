"""A calibrated cycle model of the whole-encoder program (``sim.encoder.build_encoder``).

Simulating the RTL for every batch of a serving study is slow (a MiniLM layer of 256 tokens
is 7.5 M cycles on the compiled model), so :class:`CycleModel` predicts a packed batch's
cycles from the token counts of its sequences. It is a linear model over features taken
from the program's structure, with coefficients fitted by least squares on compiled-RTL
runs (:func:`calibrate`) and checked on other batches (:func:`check`); the encoder's
cycles do not depend on the data, only on the shapes, so random weights calibrate it.

Features of one layer over ``N = sum(t)`` tokens (``docs/serving.md``, "Cycle model"):

- ``linear``: the six linear layers' weight tiles, each ``max(N + a, Lw + b)`` cycles
  (a MATMUL of ``N`` rows, or the tile's load, ``Lw = L*L / mem_width`` cycles, whichever
  is longer: the loads run ahead under the MATMULs); ``a`` and ``b`` are fitted by a
  grid search around the least-squares fit.
- ``attention``: every head's Q K^T, softmax and P V chain over the sequences, in the
  program's order (the vector unit's cycles from ``hw.vector_ops.VectorOps.cycles``);
  ``attn_tiles``: their MATMUL tiles (a per-tile overhead).
- ``vector``: the vector ops the next MATMUL waits for (both LayerNorms, every GELU
  group), from the same formula.
- ``sequences``, ``const``: per-sequence instructions and a per-layer constant.

Plus, once per program: ``io_rows`` (loading the input, copying the output out and storing
it) and ``io_const``.
"""

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .encoder import gelu_group, linear_tiles, plan_packed, run_encoder

__all__ = ["CycleModel", "calibration_config", "fit", "calibrate", "check", "max_error",
           "measure", "run_batch", "FIXED", "LAYER_FEATURES", "IO_FEATURES",
           "DEFAULT_CALIBRATION"]

#: The per-layer features (multiplied by the number of layers) and the per-program ones.
LAYER_FEATURES = ("linear", "attention", "attn_tiles", "vector", "sequences", "const")
IO_FEATURES = ("io_rows", "io_const")
#: Features whose coefficient is 1, not fitted: their cycles are counted exactly (the tiles'
#: streaming, the vector ops' formula); fitting them too overfits (leave-one-out errors of
#: 5-18 % against 0.4 % on 8x8 MiniLM).
FIXED = ("linear", "vector")
_FREE = tuple(k for k in LAYER_FEATURES + IO_FEATURES if k not in FIXED)
#: Batches (token counts of their sequences) that :func:`calibrate` runs by default, with the
#: number of layers of each run: 1 to 16 sequences of 1 to 32 tokens, at most 256 tokens (so
#: :func:`calibration_config`'s buffers hold them all).
DEFAULT_CALIBRATION: tuple[tuple[tuple[int, ...], int], ...] = (
    ((1,), 1), ((5,), 2), ((16,), 1), ((32,), 1), ((8, 8, 8, 8), 1), ((12, 30, 7, 22), 2),
    ((3, 17, 9, 30, 1, 25), 1), ((32,) * 8, 1), ((20, 20, 20, 7), 1), ((2, 13, 31, 9, 11), 2),
    ((16,) * 16, 1), ((28, 28, 28), 1), ((9,), 1), ((4, 4), 1),
    ((23, 3, 24, 15, 16, 19, 10), 1), ((4, 10, 12, 17, 13, 6, 4, 3, 4, 6), 2),
    ((7, 19, 22, 9, 10, 14, 9, 28, 7, 26), 1), ((27, 6, 18), 2))
#: The longest sequence and the most tokens of :data:`DEFAULT_CALIBRATION`'s batches.
CALIBRATION_TOKENS, CALIBRATION_ROWS = 32, 256


def calibration_config(lanes: int, hidden: int, heads: int, intermediate: int, **overrides):
    """An accelerator whose buffers hold every batch of :data:`DEFAULT_CALIBRATION`: every
    packed batch of at most 8 sequences of at most 32 tokens, or of 16 of at most 16;
    ``overrides`` go to ``AcceleratorConfig`` (``mem_width=16``, say)."""
    from .encoder import layer_config, plan_layer
    plans = [plan_layer(CALIBRATION_TOKENS, hidden, heads, intermediate, lanes,
                        sequences=CALIBRATION_ROWS // CALIBRATION_TOKENS),
             plan_layer(CALIBRATION_TOKENS // 2, hidden, heads, intermediate, lanes,
                        sequences=2 * CALIBRATION_ROWS // CALIBRATION_TOKENS)]
    depths = {f"{b}_depth": max(getattr(p, f"{b}_entries") for p in plans)
              for b in ("act", "wgt", "acc")}
    return layer_config(plans[0], **(depths | overrides))


@lru_cache(maxsize=None)
def _vector_ops(lanes: int):
    from serrano.hw.config import AcceleratorConfig
    from serrano.hw.vector_ops import VectorOps
    ops = VectorOps(AcceleratorConfig(rows=lanes, cols=lanes, act_bits=16, vector=True))
    ops._MustUse__silence = True      # (only its cycles formula is used, never elaborated)
    return ops


@lru_cache(maxsize=8192)
def _vector_cycles(lanes: int, op: str, n_rows: int, n_elems: int, pre: bool) -> int:
    from serrano.hw.isa import Opcode
    return _vector_ops(lanes).cycles(Opcode[op], n_rows, n_elems, pre)


def _attention_chain(lengths: Sequence[int], lanes: int, nd: int) -> float:
    """One head's attention in the program's order (``sim.encoder``): sequence ``s``'s
    softmax on the vector unit waits for its scores; the array then runs sequence
    ``s + 1``'s scores (once softmax ``s - 1`` has freed their slot) and sequence
    ``s - 1``'s context product (once its softmax is done). A MATMUL tile of ``t`` rows
    counts ``t`` cycles; the end of the last context product."""
    tb = [-(-t // lanes) for t in lengths]
    mm = [nd * b * t for b, t in zip(tb, lengths)]     # the scores (or context) of one sequence
    sm = [_vector_cycles(lanes, "VSOFTMAX", t, t, False) for t in lengths]
    S = len(lengths)
    sm_end = [0.0] * S
    arr = sc_end = mm[0]                 # scores(0)
    vec = 0.0
    for s in range(S):
        start = max(sc_end, vec)
        vec = sm_end[s] = start + sm[s]
        if s + 1 < S:                    # scores(s + 1): its slot was softmax(s - 1)'s
            arr = max(arr, start, sm_end[s - 1] if s > 0 else 0.0) + mm[s + 1]
            sc_end = arr
        if s > 0:                        # context(s - 1)
            arr = max(arr, sm_end[s - 1]) + mm[s - 1]
    return max(arr, sm_end[-1]) + mm[-1]


@dataclass(frozen=True, kw_only=True)
class CycleModel:
    """Predicted cycles of :func:`sim.encoder.build_encoder`'s program on one accelerator.

    Parameters
    ----------
    lanes, mem_width : int
        The square array's size and the memory port's bytes per cycle.
    hidden, heads, intermediate, layers : int
        The encoder's shape.
    a, b : int
        The linear tiles' overheads (``max(N + a, Lw + b)`` cycles a tile).
    coef : dict
        One coefficient per name of :data:`LAYER_FEATURES` and :data:`IO_FEATURES`.
    calibrated_on : list
        The ``[lengths, layers, measured cycles]`` runs it was fitted to.
    loo_error : float
        The largest relative error on a calibration run left out of the fit.
    """
    lanes: int
    mem_width: int
    hidden: int
    heads: int
    intermediate: int
    layers: int
    a: int
    b: int
    coef: dict
    calibrated_on: list
    loo_error: float = math.nan

    def __post_init__(self) -> None:
        for name in ("lanes", "mem_width", "hidden", "heads", "intermediate", "layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        missing = set(LAYER_FEATURES + IO_FEATURES) - set(self.coef)
        if missing:
            raise ValueError(f"coef lacks {', '.join(sorted(missing))}")

    @property
    def label(self) -> str:
        """How tables name this service model."""
        return (f"cycle model of the {self.layers}-layer encoder on {self.lanes}x{self.lanes}, "
                f"{self.mem_width} B/cycle (calibrated on the compiled RTL, leave-one-out "
                f"error {self.loo_error:.2%})")

    @property
    def tile_load_cycles(self) -> int:
        """Memory cycles of one ``L x L`` int8 weight tile."""
        return -(-self.lanes * self.lanes // self.mem_width)

    def features(self, lengths: Sequence[int], layers: int | None = None,
                 a: int | None = None, b: int | None = None) -> dict[str, float]:
        """The feature values of a batch of sequences of ``lengths`` tokens over ``layers``
        layers (default: the model's)."""
        t = np.asarray(lengths, dtype=np.int64)
        if t.ndim != 1 or len(t) == 0 or (t < 1).any():
            raise ValueError(f"lengths must be positive token counts, not {list(lengths)!r}")
        layers = self.layers if layers is None else layers
        a = self.a if a is None else a
        b = self.b if b is None else b
        L, H, F = self.lanes, self.hidden, self.intermediate
        N, nh, nd, nf = int(t.sum()), H // L, H // self.heads // L, F // L
        tb = -(-t // L)
        group = gelu_group(nf)
        # The vector ops the next MATMUL waits for: both LayerNorms and every GELU group.
        vector = 2 * _vector_cycles(L, "VLAYERNORM", N, H, True) \
            + nf // group * _vector_cycles(L, "VGELU", N, group * L, True)
        per_layer = {
            "linear": linear_tiles(H, F, L) * max(N + a, self.tile_load_cycles + b),
            "attention": self.heads * _attention_chain(t.tolist(), L, nd),
            "attn_tiles": self.heads * 2 * nd * int(tb.sum()),
            "vector": vector,
            "sequences": self.heads * len(t),
            "const": 1,
        }
        out = {k: float(layers * v) for k, v in per_layer.items()}
        out["io_rows"] = float(N * nh)
        out["io_const"] = 1.0
        return out

    def cycles(self, lengths: Sequence[int]) -> int:
        """Predicted cycles of one packed batch of sequences of ``lengths`` tokens."""
        f = self.features(lengths)
        return max(1, round(sum(self.coef[k] * v for k, v in f.items())))

    __call__ = cycles

    # ---- persistence -----------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the model as JSON."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path) -> "CycleModel":
        """A model written by :meth:`save`."""
        try:
            d = json.loads(Path(path).read_text())
            return cls(**d)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}: not a saved CycleModel ({exc})") from None

    def matches(self, *, lanes: int, mem_width: int, hidden: int, heads: int,
                intermediate: int, layers: int) -> bool:
        """True when this model is of that accelerator and encoder shape."""
        return (self.lanes, self.mem_width, self.hidden, self.heads, self.intermediate,
                self.layers) == (lanes, mem_width, hidden, heads, intermediate, layers)


# ---- measuring on a backend --------------------------------------------------------------------
def measure(backend, qlayers, heads: int, lengths: Sequence[int],
            rng: np.random.Generator) -> int:
    """Cycles of :func:`sim.encoder.run_encoder` on ``backend`` for packed sequences of
    ``lengths`` tokens through the quantized layers ``qlayers`` of ``heads`` heads (random
    int16 inputs: the cycles do not depend on them)."""
    return int(run_batch(backend, qlayers, heads, lengths, rng).counters["cycles"])


def run_batch(backend, qlayers, heads: int, lengths: Sequence[int],
              rng: np.random.Generator):
    """:func:`measure`'s run (random inputs, packed sequences of ``lengths``); the backend's
    ``RunResult``."""
    ql = qlayers[0]
    H = ql.w["q"].shape[0]
    F = ql.w["ffn1"].shape[1]
    plan = plan_packed(lengths, H, heads, F, backend.config.rows)
    x = rng.integers(-3000, 3000, size=(plan.rows, H))
    return run_encoder(backend, list(qlayers), x, plan)[1]


def _solve(base: CycleModel, runs: list, a: int, b: int) -> np.ndarray:
    """The free coefficients fitted to ``runs`` (least squares on relative errors: the runs
    span orders of magnitude); :data:`FIXED` features count with coefficient 1."""
    X, y = _design(base, runs, a, b)
    w = 1.0 / y
    coef, *_ = np.linalg.lstsq(X[:, 1:] * w[:, None], (y - X[:, 0]) * w, rcond=None)
    return coef


def _design(base: CycleModel, runs: list, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Column 0: the sum of the fixed features; then one column per free feature."""
    rows = []
    for ln, layers, _ in runs:
        f = base.features(ln, layers, a, b)
        rows.append([sum(f[k] for k in FIXED)] + [f[k] for k in _FREE])
    return np.array(rows), np.array([c for *_, c in runs], dtype=np.float64)


def fit(measured: list, *, lanes: int, mem_width: int, hidden: int, heads: int,
        intermediate: int, layers: int) -> CycleModel:
    """A :class:`CycleModel` fitted to ``measured`` ``[lengths, layers, cycles]`` runs:
    ``a`` and ``b`` by a grid search (0 to ``2 L``) for the smallest leave-one-out error,
    then the free coefficients on all runs. ``loo_error`` is that leave-one-out error (the
    largest relative error on a run left out of the fit)."""
    measured = [[list(map(int, ln)), int(n), int(c)] for ln, n, c in measured]
    if len(measured) <= len(_FREE) + 1:
        raise ValueError(f"fit needs more than {len(_FREE) + 1} runs, not {len(measured)}")
    base = CycleModel(lanes=lanes, mem_width=mem_width, hidden=hidden, heads=heads,
                      intermediate=intermediate, layers=layers, a=0, b=0,
                      coef=dict.fromkeys(LAYER_FEATURES + IO_FEATURES, 0.0),
                      calibrated_on=measured)
    best = None
    step = max(1, lanes // 8)
    for a in range(0, 2 * lanes + 1, step):
        for b in range(0, 2 * lanes + 1, step):
            X, y = _design(base, measured, a, b)
            loo = 0.0
            for i in range(len(measured)):
                coef = _solve(base, measured[:i] + measured[i + 1:], a, b)
                loo = max(loo, abs(X[i, 0] + X[i, 1:] @ coef - y[i]) / y[i])
                if best is not None and loo >= best[0]:
                    break
            if best is None or loo < best[0]:
                best = (loo, a, b)
    loo, a, b = best
    coef = dict.fromkeys(FIXED, 1.0) | dict(zip(_FREE, map(float, _solve(base, measured,
                                                                          a, b))))
    return CycleModel(**{**asdict(base), "a": a, "b": b, "coef": coef,
                         "loo_error": float(loo)})


def calibrate(backend, qlayers, *, heads: int, layers: int,
              runs: Iterable[tuple[Sequence[int], int]] = DEFAULT_CALIBRATION,
              seed: int = 0, progress: bool = True) -> CycleModel:
    """Fit a :class:`CycleModel` (:func:`fit`) to runs on ``backend``, a cycle-accurate
    backend whose buffers hold every run. ``qlayers``: quantized layers of the encoder's
    shape and ``heads`` (a run of ``n`` layers uses the first ``n``); ``layers``: the
    encoder's depth the model predicts for; ``runs``: the ``(lengths, layers)`` batches."""
    from tqdm import tqdm
    runs = [(tuple(int(v) for v in ln), int(n)) for ln, n in runs]
    if max(n for _, n in runs) > len(qlayers):
        raise ValueError(f"the runs need {max(n for _, n in runs)} layers; qlayers has "
                         f"{len(qlayers)}")
    rng = np.random.default_rng(seed)
    measured = []
    for ln, n in tqdm(runs, desc="calibrating", unit="run", disable=not progress):
        measured.append([list(ln), n, measure(backend, qlayers[:n], heads, ln, rng)])
    ql, c = qlayers[0], backend.config
    return fit(measured, lanes=c.rows, mem_width=c.mem_width, hidden=ql.w["q"].shape[0],
               heads=heads, intermediate=ql.w["ffn1"].shape[1], layers=layers)


def check(model: CycleModel, backend, qlayers,
          batches: Iterable[Sequence[int]], seed: int = 1,
          progress: bool = True) -> list[dict]:
    """Compare the model with the backend on ``batches`` (run through all of ``qlayers``,
    which must be ``model.layers`` deep): one ``{"lengths", "measured", "predicted",
    "error"}`` per batch, ``error`` relative to the measurement."""
    from tqdm import tqdm
    if len(qlayers) != model.layers:
        raise ValueError(f"qlayers has {len(qlayers)} layers; the model predicts "
                         f"{model.layers}")
    rng = np.random.default_rng(seed)
    out = []
    for ln in tqdm(list(batches), desc="checking", unit="batch", disable=not progress):
        m = measure(backend, qlayers, model.heads, ln, rng)
        p = model.cycles(ln)
        out.append({"lengths": list(ln), "measured": m, "predicted": p,
                    "error": (p - m) / m})
    return out


def max_error(rows: list[dict]) -> float:
    """The largest relative error of :func:`check`'s rows."""
    return max(abs(r["error"]) for r in rows) if rows else math.nan
