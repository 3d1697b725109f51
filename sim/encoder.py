"""One BERT encoder layer as one accelerator program (``docs/vector.md``, "The encoder-layer
program").

:func:`build_layer` turns a :class:`sim.quantized.QuantizedLayer` and a sequence of ``T``
tokens into a program and its memory image: weights stream from memory tile by tile under
the MATMULs, every intermediate (Q, K^T and V per head, scores, probabilities, context, the
attention output, LayerNorms, the FFN's hidden activations) stays in the on-chip buffers, and
the vector unit does the requantizations, softmax, LayerNorms and GELU. The layer's output
stays in the activation buffer; the program ends by copying it to the accumulator through
identity MATMULs and storing it RAW, so the host can read it. :func:`run_layer` runs it on a
backend and returns the output activations, bit-exact with
:meth:`sim.quantized.QuantizedEncoder.layer`.

Block-major tensors everywhere (``docs/vector.md``, "Tensors in the buffers"): a ``[T, n]``
tensor at ``(addr, stride = T)`` keeps element ``(i, j)`` in entry ``addr + (j // L) * T +
i``, lane ``j % L``.
"""

from dataclasses import dataclass

import numpy as np

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import LoadTarget, Opcode, StoreMode, VectorDst

from . import kernels
from .asm import Program, pack_output_params, vector_params
from .quantized import QuantizedLayer

__all__ = ["LayerPlan", "plan_layer", "plan_packed", "gelu_group", "linear_tiles",
           "layer_macs", "array_cycles", "layer_config",
           "build_encoder", "build_layer", "run_encoder", "run_layer"]

_WGT_SLOTS = 4        # streaming weight tiles in flight (LOADs run ahead of the MATMULs)
_PARAM_HALF = 128     # parameter entries are loaded per op into alternating halves


def _blocks(n: int, lanes: int) -> int:
    return -(-n // lanes)


@dataclass(frozen=True)
class LayerPlan:
    """Where every tensor of one layer lives (buffer entries and memory bytes).

    Packed sequences: sequence ``s`` has ``lengths[s]`` tokens and occupies rows
    ``offsets[s] .. offsets[s] + lengths[s] - 1`` of every ``[rows, n]`` tensor, with no
    padding between sequences. The linear layers, LayerNorms and GELU run on all ``rows``
    at once, attention per sequence. Per-sequence scratch (scores, probabilities) has two
    slots of the longest sequence's size, so that one sequence's MATMULs overlap the
    previous sequence's softmax."""
    lengths: tuple[int, ...]
    hidden: int
    heads: int
    head_dim: int
    intermediate: int
    lanes: int
    group: int                 # FFN output blocks per GELU group
    act: dict[str, int]        # activation-buffer regions: name -> first entry
    wgt: dict[str, int]
    acc: dict[str, int]
    act_entries: int
    wgt_entries: int
    acc_entries: int

    @property
    def sequences(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        """The longest sequence's tokens."""
        return max(self.lengths)

    @property
    def tb(self) -> int:
        """Token blocks of the longest sequence, ``ceil(tokens / L)``."""
        return _blocks(self.tokens, self.lanes)

    @property
    def rows(self) -> int:
        """Tokens of all sequences."""
        return sum(self.lengths)

    @property
    def offsets(self) -> tuple[int, ...]:
        """The first row of each sequence."""
        return tuple(int(v) for v in np.cumsum((0,) + self.lengths[:-1]))

    def key_blocks(self) -> tuple[int, ...]:
        """The first key block of each sequence in the K^T tiles and the mask rows (sequence
        ``s`` has ``ceil(lengths[s] / L)`` of them)."""
        tbs = [_blocks(t, self.lanes) for t in self.lengths]
        return tuple(int(v) for v in np.cumsum([0] + tbs[:-1]))


def gelu_group(ffn_blocks: int, group: int = 16) -> int:
    """FFN output blocks per GELU group: the largest divisor of ``ffn_blocks`` that is at
    most ``group``."""
    group = max(1, min(group, ffn_blocks))
    while ffn_blocks % group:
        group -= 1
    return group


def linear_tiles(hidden: int, intermediate: int, lanes: int) -> int:
    """``L x L`` weight tiles of one layer's six linear layers (Q, K, V, O, FFN1, FFN2)."""
    return (4 * hidden * hidden + 2 * hidden * intermediate) // (lanes * lanes)


def plan_layer(tokens: int, hidden: int, heads: int, intermediate: int, lanes: int,
               group: int = 16, sequences: int = 1) -> LayerPlan:
    """:func:`plan_packed` of ``sequences`` sequences of ``tokens`` tokens each (padded
    batches: the padding is masked keys, ``build_encoder``'s ``key_mask``)."""
    if isinstance(sequences, bool) or not isinstance(sequences, int) or sequences < 1:
        raise ValueError(f"sequences must be a positive integer, not {sequences!r}")
    return plan_packed([tokens] * sequences, hidden, heads, intermediate, lanes, group)


def plan_packed(lengths, hidden: int, heads: int, intermediate: int, lanes: int,
                group: int = 16) -> LayerPlan:
    """The buffer regions of one layer over packed sequences of ``lengths`` tokens
    (``ValueError`` for shapes the program cannot map: ``hidden``, ``intermediate`` and the
    head size must be multiples of ``lanes``; every length at least 1)."""
    lengths = tuple(lengths)
    if not lengths:
        raise ValueError("lengths must name at least one sequence")
    for i, t in enumerate(lengths):
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
            raise ValueError(f"tokens must be at least 1, not {t!r} (sequence {i})")
    lengths = tuple(int(t) for t in lengths)
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    for name, v in (("hidden", hidden), ("intermediate", intermediate),
                    ("head_dim", hidden // heads)):
        if v % lanes:
            raise ValueError(f"{name} ({v}) must be a multiple of the array's {lanes} lanes")
    d = hidden // heads
    L, T, N = lanes, max(lengths), sum(lengths)
    nh, nd, nf, tb = hidden // L, d // L, intermediate // L, _blocks(T, L)
    kb_all = sum(_blocks(t, L) for t in lengths)
    group = gelu_group(nf, group)

    def regions(sizes: dict[str, int]) -> tuple[dict[str, int], int]:
        out, at = {}, 0
        for name, size in sizes.items():
            out[name] = at
            at += size
        return out, at

    act, act_n = regions({"x": nh * N, "x1": nh * N, "ctx": nh * N, "q": nd * N,
                          "p": 2 * tb * T, "mask": kb_all, "h": group * N})
    wgt, wgt_n = regions({"stream": _WGT_SLOTS * L, "kt": kb_all * d, "v": nd * N,
                          "eye": L})
    acc, acc_n = regions({"q": nd * N, "k": nd * N, "v": nd * N, "s": 2 * tb * T,
                          "c": nd * N, "o": nh * N, "f": group * N})
    return LayerPlan(lengths, hidden, heads, d, intermediate, L, group, act, wgt, acc,
                     act_n, wgt_n, acc_n)


def layer_macs(plan: LayerPlan, tokens=None) -> int:
    """Multiply-accumulates of one layer's products (the six linear layers, Q K^T and P V)
    over sequences of ``tokens`` real tokens each (default: ``plan.lengths``; padding not
    counted): the ideal work that utilization figures divide by."""
    t = np.asarray(plan.lengths if tokens is None else tokens, dtype=np.int64)
    H, F = plan.hidden, plan.intermediate
    return int(t.sum()) * (4 * H * H + 2 * H * F) + plan.heads * 2 * int((t * t).sum()) \
        * plan.head_dim


def array_cycles(plan: LayerPlan, layers: int = 1) -> dict[str, int]:
    """The cycles in which the array takes a vector, by op class, of :func:`build_encoder`'s
    program over ``layers`` layers (one per MATMUL row, padding included, so they add up to
    the ``array_busy`` counter): ``linear`` (``rows`` per weight tile), ``attention``
    (a sequence's tokens per score and context tile of each sequence and head) and
    ``copy_out`` (the identity MATMULs that hand the result to the host)."""
    L, N, H, F = plan.lanes, plan.rows, plan.hidden, plan.intermediate
    att = sum(2 * t * _blocks(t, L) for t in plan.lengths) * (plan.head_dim // L)
    return {"linear": layers * N * linear_tiles(H, F, L),
            "attention": layers * plan.heads * att,
            "copy_out": N * H // L}


def layer_config(plan: LayerPlan, **overrides) -> AcceleratorConfig:
    """An accelerator (square ``lanes`` array, 16-bit activations, the vector unit) whose
    buffers hold ``plan``; ``overrides`` go to ``AcceleratorConfig``."""
    kw = dict(rows=plan.lanes, cols=plan.lanes, act_bits=16, vector=True,
              act_depth=plan.act_entries, wgt_depth=plan.wgt_entries,
              acc_depth=plan.acc_entries, param_depth=2 * _PARAM_HALF)
    kw.update(overrides)
    return AcceleratorConfig(**kw)


class _Builder:
    """Appends one layer's instructions and lays out its memory image."""

    def __init__(self, plan: LayerPlan, config: AcceleratorConfig):
        self.plan, self.c = plan, config
        self.prog = Program()
        self.chunks: list[tuple[int, bytes]] = []
        self.mem_at = 0
        self.slot = 0
        self.half = 0

    # -- memory image
    def put(self, data: np.ndarray) -> int:
        """Place ``data`` (bytes) in memory, aligned to the memory word; its address."""
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        addr = self.mem_at
        self.chunks.append((addr, raw.tobytes()))
        w = self.c.mem_width
        self.mem_at += -(-len(raw) // w) * w
        return addr

    def memory(self) -> np.ndarray:
        mem = np.zeros(max(self.mem_at, 1), dtype=np.uint8)
        for addr, raw in self.chunks:
            mem[addr:addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        return mem

    # -- instructions
    def params(self, entries: np.ndarray) -> int:
        """LOAD parameter entries into the next half of the parameter buffer; the entry."""
        if len(entries) > _PARAM_HALF:
            raise ValueError(f"an op needs {len(entries)} parameter entries, more than "
                             f"{_PARAM_HALF}")
        base = self.half * _PARAM_HALF
        self.half ^= 1
        n_bytes = entries.shape[1]
        self.prog.load(LoadTarget.PARAM, buf_addr=base, n_rows=len(entries),
                       row_bytes=n_bytes, mem_addr=self.put(entries), mem_stride=n_bytes)
        return base

    def tile(self, addr: int) -> int:
        """LOAD the weight tile at memory ``addr`` into the next streaming slot; its entry."""
        L = self.plan.lanes
        entry = self.plan.wgt["stream"] + self.slot * L
        self.slot = (self.slot + 1) % _WGT_SLOTS
        self.prog.load(LoadTarget.WGT, buf_addr=entry, n_rows=L, row_bytes=L,
                       mem_addr=addr, mem_stride=L)
        return entry

    def linear(self, x_addr: int, w_tiles: int, kb_range, nb_range, kb_total: int,
               acc_addr: int, rows: int, accumulate_first: bool = False) -> None:
        """``acc[nb] (+)= sum_kb x[kb] @ W[kb, nb]`` over the given blocks; the weight tiles
        of the whole matrix are at ``w_tiles`` in memory, tile ``(kb, nb)`` at
        ``w_tiles + (nb * kb_total + kb) * L * L``; ``acc`` block ``j`` of ``nb_range`` at
        ``acc_addr + j * rows``."""
        L = self.plan.lanes
        for j, nb in enumerate(nb_range):
            for i, kb in enumerate(kb_range):
                entry = self.tile(w_tiles + (nb * kb_total + kb) * L * L)
                self.prog.matmul(act_addr=x_addr + kb * rows, n_rows=rows, wgt_addr=entry,
                                 acc_addr=acc_addr + j * rows,
                                 accumulate=accumulate_first or i > 0)


def _tiles(w: np.ndarray, lanes: int) -> np.ndarray:
    """``[K, N]`` int8 as tiles ``(nb, kb)`` of ``L x L`` (row ``k`` = one weight entry)."""
    K, N = w.shape
    L = lanes
    return np.ascontiguousarray(
        w.reshape(K // L, L, N // L, L).transpose(2, 0, 1, 3)).astype(np.int8)


def _emit_layer(b: "_Builder", ql: QuantizedLayer, tiles: dict[str, int],
                mask_rows: list[int | None]) -> None:
    """One layer's instructions: its input in ``act["x"]``, its output left there too."""
    c, p = b.c, b.plan
    prog, A, W, C = b.prog, p.act, p.wgt, p.acc
    L, S, N, d, H = p.lanes, p.sequences, p.rows, p.head_dim, p.hidden
    nh, nd, nf, slot = H // L, d // L, p.intermediate // L, p.tb * p.tokens
    offs, kbs = p.offsets, p.key_blocks()

    def cols(params: dict, lo: int, hi: int) -> dict:
        return {k: np.asarray(v)[lo:hi] for k, v in params.items()}

    def scores(s: int) -> None:
        """S = Q K^T of sequence s into its scratch slot; key block j at s_slot + j t."""
        t, s_acc = p.lengths[s], C["s"] + (s % 2) * slot
        for j in range(_blocks(t, L)):
            for kb in range(nd):
                prog.matmul(act_addr=A["q"] + kb * N + offs[s], n_rows=t,
                            wgt_addr=W["kt"] + (kbs[s] + j) * d + kb * L,
                            acc_addr=s_acc + j * t, accumulate=kb > 0)

    def context(s: int) -> None:
        """C[s] = P V of sequence s (its P in slot s % 2). A last partial key block reads
        V rows past the sequence: its probabilities there are 0 (softmax zeroes the lanes
        past its row)."""
        t, p_act = p.lengths[s], A["p"] + (s % 2) * slot
        for j in range(nd):
            for kb in range(_blocks(t, L)):
                prog.matmul(act_addr=p_act + kb * t, n_rows=t,
                            wgt_addr=W["v"] + j * N + offs[s] + kb * L,
                            acc_addr=C["c"] + j * N + offs[s], accumulate=kb > 0)

    # attention, head by head; within a head, sequence s + 1's scores and sequence s - 1's
    # context products come between sequence s's softmax and its context product, so the
    # array works while the vector unit normalizes.
    softmax_p = vector_params(Opcode.VSOFTMAX, ql.softmax, c)
    ctx_p = vector_params(Opcode.VREQUANT, ql.requant["ctx"], c)
    for h in range(p.heads):
        heads_blocks = range(h * nd, (h + 1) * nd)
        for name in "qkv":
            b.linear(A["x"], tiles[name], range(nh), heads_blocks, nh, C[name], N)
            pa = b.params(vector_params(Opcode.VREQUANT, cols(ql.requant[name], h * d,
                                                              (h + 1) * d), c))
            if name == "q":
                prog.vrequant(VectorDst.ACT, C["q"], N, A["q"], N, N, d, pa)
            elif name == "k":   # K^T per sequence: its key block j at kt + (kbs[s] + j) d
                for s in range(S):
                    prog.vrequant(VectorDst.WGT, C["k"] + offs[s], N, W["kt"] + kbs[s] * d,
                                  d, p.lengths[s], d, pa, transpose=True)
            else:               # V: weight tiles of P V (dim block j at v + j N)
                prog.vrequant(VectorDst.WGT, C["v"], N, W["v"], N, N, d, pa)
        pa = b.params(softmax_p)
        scores(0)
        for s in range(S):
            t = p.lengths[s]
            p_act, s_acc = A["p"] + (s % 2) * slot, C["s"] + (s % 2) * slot
            prog.vsoftmax(s_acc, t, p_act, t, t, t, pa, mask_addr=mask_rows[s])
            if s + 1 < S:
                scores(s + 1)
            if s > 0:
                context(s - 1)
        context(S - 1)
        pa = b.params(ctx_p)
        prog.vrequant(VectorDst.ACT, C["c"], N, A["ctx"] + h * nd * N, N, N, d, pa)

    # attention output, residual, LayerNorm
    b.linear(A["ctx"], tiles["o"], range(nh), range(nh), nh, C["o"], N)
    pa = b.params(vector_params(Opcode.VLAYERNORM, ql.ln1, c, pre=ql.pre["o"]))
    prog.vlayernorm(C["o"], N, A["x1"], N, N, H, pa, residual_addr=A["x"], pre=True)

    # FFN in groups of G output blocks: GELU, then accumulate the second projection
    G = p.group
    for g in range(nf // G):
        f_blocks = range(g * G, (g + 1) * G)
        b.linear(A["x1"], tiles["ffn1"], range(nh), f_blocks, nh, C["f"], N)
        pa = b.params(vector_params(Opcode.VGELU, ql.gelu, c,
                                    pre=cols(ql.pre["ffn1"], g * G * L, (g + 1) * G * L)))
        prog.vgelu(C["f"], N, A["h"], N, N, G * L, pa, pre=True)
        for nb in range(nh):
            for i, kb in enumerate(f_blocks):
                entry = b.tile(tiles["ffn2"] + (nb * nf + kb) * L * L)
                prog.matmul(act_addr=A["h"] + i * N, n_rows=N, wgt_addr=entry,
                            acc_addr=C["o"] + nb * N, accumulate=g > 0 or i > 0)
    pa = b.params(vector_params(Opcode.VLAYERNORM, ql.ln2, c, pre=ql.pre["ffn2"]))
    prog.vlayernorm(C["o"], N, A["x"], N, N, H, pa, residual_addr=A["x1"], pre=True)


def build_encoder(layers: list[QuantizedLayer], x: np.ndarray, config: AcceleratorConfig,
                  plan: LayerPlan, key_mask: np.ndarray | None = None
                  ) -> tuple[list[int], np.ndarray, int]:
    """The program, the memory image and the output's address for the encoder layers
    ``layers`` (one after the other, each layer's output left in the activation buffer as the
    next one's input: their scales chain, ``QuantizedEncoder``) on the int activations ``x``
    ``[rows, hidden]`` (the plan's sequences one after the other).

    ``key_mask`` (``[sequences, plan.tokens]``, or ``[tokens]`` for one sequence; 0 marks a
    padded key; row ``s`` applies through its first ``plan.lengths[s]`` entries) masks each
    sequence's attention: padded batches need it, packed ones (each sequence at its own
    length) do not. The output (``[rows, hidden]`` int32 values of the
    int16 activations) is stored RAW at the returned address, block-major: block ``k`` of
    token ``i`` at ``addr + (k * rows + i) * 4 L``.
    """
    layers = list(layers)
    if not layers:
        raise ValueError("layers must hold at least one QuantizedLayer")
    ql = layers[0]
    c, p = config, plan
    L, T, S, N, d, H = p.lanes, p.tokens, p.sequences, p.rows, p.head_dim, p.hidden
    if (c.rows, c.cols) != (L, L) or c.act_bits != ql.act_bits or not c.vector:
        raise ValueError(f"the plan needs a {L}x{L} array with act_bits={ql.act_bits} and the "
                         f"vector unit, not {c.rows}x{c.cols}, act_bits={c.act_bits}, "
                         f"vector={c.vector}")
    for buf in ("act", "wgt", "acc"):
        if getattr(c, f"{buf}_depth") < getattr(p, f"{buf}_entries"):
            raise ValueError(f"{buf}_depth {getattr(c, f'{buf}_depth')} is smaller than the "
                             f"{getattr(p, f'{buf}_entries')} entries the layer needs "
                             f"(layer_config(plan) gives one that fits)")
    if c.param_depth < 2 * _PARAM_HALF:
        raise ValueError(f"param_depth must be at least {2 * _PARAM_HALF}")
    x = np.asarray(x)
    if x.shape != (N, H):
        raise ValueError(f"x must be [{N}, {H}], not {list(x.shape)}")
    b = _Builder(p, c)
    prog, A, W, C = b.prog, p.act, p.wgt, p.acc
    nh = H // L

    # the input, block-major, and the weights as tiles
    xb = x.astype(np.int16).reshape(N, nh, L).transpose(1, 0, 2)
    prog.load(LoadTarget.ACT, buf_addr=A["x"], n_rows=nh * N, row_bytes=2 * L,
              mem_addr=b.put(xb), mem_stride=2 * L)
    eye = b.put(np.eye(L, dtype=np.int8))
    mask_rows = [None] * S
    if key_mask is not None:
        km = np.asarray(key_mask)
        if km.ndim == 1 and S == 1:
            km = km[None]
        if km.shape != (S, T):
            want = f"[{T}] or [1, {T}]" if S == 1 else f"[{S}, {T}]"
            raise ValueError(f"key_mask must be {want}, not {list(np.shape(key_mask))}")
        kbs = p.key_blocks()
        rows = np.zeros((kbs[-1] + _blocks(p.lengths[-1], L), L), dtype=np.int16)
        for s, t in enumerate(p.lengths):
            m = np.zeros(_blocks(t, L) * L, dtype=np.int16)
            m[:t] = np.where(km[s, :t] != 0, 0, kernels.mask_sentinel(16))
            rows[kbs[s]:kbs[s] + _blocks(t, L)] = m.reshape(-1, L)
        prog.load(LoadTarget.ACT, buf_addr=A["mask"], n_rows=len(rows), row_bytes=2 * L,
                  mem_addr=b.put(rows), mem_stride=2 * L)
        mask_rows = [A["mask"] + kbs[s] for s in range(S)]

    for ql in layers:
        tiles = {name: b.put(_tiles(ql.w[name], L)) for name in ql.w}
        _emit_layer(b, ql, tiles, mask_rows)

    # out: identity MATMULs copy the activations into the accumulator, a RAW store
    prog.load(LoadTarget.WGT, buf_addr=W["eye"], n_rows=L, row_bytes=L, mem_addr=eye,
              mem_stride=L)
    for k in range(nh):
        prog.matmul(act_addr=A["x"] + k * N, n_rows=N, wgt_addr=W["eye"],
                    acc_addr=C["o"] + k * N, accumulate=False)
    out = b.put(np.zeros(nh * N * 4 * L, dtype=np.uint8))
    prog.store(C["o"], nh * N, L, out, 4 * L, StoreMode.RAW)
    prog.halt()
    return prog.words, b.memory(), out


def build_layer(ql: QuantizedLayer, x: np.ndarray, config: AcceleratorConfig,
                plan: LayerPlan, key_mask: np.ndarray | None = None
                ) -> tuple[list[int], np.ndarray, int]:
    """:func:`build_encoder` of the one layer ``ql``."""
    return build_encoder([ql], x, config, plan, key_mask)


def run_encoder(backend, layers: list[QuantizedLayer], x: np.ndarray, plan: LayerPlan,
                key_mask: np.ndarray | None = None, max_cycles: int | None = None):
    """Run :func:`build_encoder`'s program on ``backend`` (its config must fit ``plan``);
    returns ``(y, result)``: the last layer's output activations ``[rows, hidden]`` and the
    backend's ``RunResult``."""
    words, mem, out = build_encoder(layers, x, backend.config, plan, key_mask)
    if len(mem) > backend.config.mem_bytes:
        raise ValueError(f"the program's memory image ({len(mem)} bytes) exceeds mem_bytes "
                         f"({backend.config.mem_bytes})")
    image = np.zeros(backend.config.mem_bytes, dtype=np.uint8)
    image[:len(mem)] = mem
    res = backend.run(words, image, max_cycles=max_cycles)
    if res.status.error != isa.ErrorCode.NONE:
        raise RuntimeError(f"the encoder program faulted at instruction "
                           f"{res.status.fault_index}: {res.status.error.name}")
    L, N, nh = plan.lanes, plan.rows, plan.hidden // plan.lanes
    raw = res.memory[out:out + nh * N * 4 * L].view("<i4").reshape(nh, N, L)
    return raw.transpose(1, 0, 2).reshape(N, plan.hidden).astype(np.int64), res


def run_layer(backend, ql: QuantizedLayer, x: np.ndarray, plan: LayerPlan,
              key_mask: np.ndarray | None = None, max_cycles: int | None = None):
    """:func:`run_encoder` of the one layer ``ql``."""
    return run_encoder(backend, [ql], x, plan, key_mask, max_cycles)
