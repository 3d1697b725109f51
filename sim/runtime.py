"""Host runtime: the ``Accelerator`` object, the GEMM compiler (tiling and scheduling) and
memory-image packing.

``Accelerator.matmul`` / ``Accelerator.linear`` compile one GEMM into a program and a memory
image, run it on a backend and unpack the result. The schedule (see :func:`plan_gemm` and
:func:`build_program`) is written for the hardware's overlap rules, not for correctness: the
hardware scoreboard gives every program sequential semantics, so any order computes the same
result, and the golden model (which has no timing) checks exactly that.
"""

from dataclasses import dataclass, field, fields as dc_fields
from typing import Any, Sequence

import numpy as np
from amaranth.lib import data

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import LoadTarget, Opcode, StoreMode

from .asm import Program, disassemble, pack_output_params
from .backend import COUNTER_NAMES, Backend, RunResult

__all__ = ["Accelerator", "Stats", "GemmPlan", "plan_gemm", "build_program", "pack_memory",
           "unpack_output", "cycle_budget", "BACKENDS", "make_backend",
           "cycle_accurate_backend"]

BACKENDS = ("golden", "pysim", "compiled")

# Rough per-instruction latency of the load/store units (cycles), used only by the cost model
# that picks a schedule and by the cycle budget; never for correctness.
_MEM_INSTR_LATENCY = 4


def make_backend(name: str, config: AcceleratorConfig, **options) -> Backend:
    """Construct a backend by name; the cycle-accurate ones are imported lazily."""
    if name == "golden":
        if options:
            raise TypeError(f"the golden backend takes no options, got {sorted(options)}")
        from .golden import GoldenBackend
        return GoldenBackend(config)
    if name == "pysim":
        from .pysim import PysimBackend
        return PysimBackend(config, **options)
    if name == "compiled":
        from .compiled import CompiledBackend
        return CompiledBackend(config, **options)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def cycle_accurate_backend(config: AcceleratorConfig,
                           prefer: Sequence[str] = ("compiled", "pysim")) -> tuple[Backend, str]:
    """The first backend of ``prefer`` that can be constructed for ``config`` and runs a
    one-instruction program: ``(backend, note)``. Used by the scripts to fall back from the
    compiled model (needs Verilator and a C++ compiler; builds on first use) to pysim."""
    notes = []
    halt = [isa.encode(Opcode.HALT)]
    for name in prefer:
        try:
            backend = make_backend(name, config)
            if not backend.run(halt, np.zeros(config.mem_width, np.uint8),
                               max_cycles=10_000).status.ok:
                raise RuntimeError("a HALT-only program did not complete")
        except Exception as exc:  # noqa: BLE001 (any failure means: try the next one)
            first_line = (str(exc).strip().splitlines() or [""])[0]
            notes.append(f"{name} unavailable ({type(exc).__name__}: {first_line})")
            continue
        return backend, "; ".join(notes + [f"using {name}"])
    raise RuntimeError("no cycle-accurate backend works: " + "; ".join(notes))


# ---- statistics ------------------------------------------------------------------------------

@dataclass
class Stats:
    """Figures of the last call.

    ``cycles`` and ``utilization`` are ``None`` on the golden backend (it has no time).
    For ``matmul``/``linear``, ``utilization = ideal_cycles / cycles`` with ``ideal_cycles =
    M*K*N / (rows*cols)`` (docs/performance.md); for ``run_program`` it is ``array_busy /
    cycles`` and ``macs``/``ideal_cycles`` are ``None``. Every hardware counter
    (``isa.Counters``) is an attribute too (``None`` when the backend did not report it), and
    ``counters`` holds exactly what the backend reported.
    """
    backend: str
    cycles: int | None
    utilization: float | None
    macs: int | None = None
    ideal_cycles: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    instructions: int | None = None
    array_busy: int | None = None
    dispatch_stall: int | None = None
    load_stall: int | None = None
    exec_stall: int | None = None
    store_stall: int | None = None
    # activity counters (docs/performance.md, "Activity counters")
    act_reads: int | None = None
    act_writes: int | None = None
    wgt_reads: int | None = None
    wgt_writes: int | None = None
    acc_reads: int | None = None
    acc_writes: int | None = None
    param_reads: int | None = None
    param_writes: int | None = None
    mem_read_beats: int | None = None
    mem_write_beats: int | None = None
    vector_elements: int | None = None
    plan: "GemmPlan | None" = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dc_fields(self)}
        d.pop("plan")
        return d

    @classmethod
    def from_counters(cls, backend: str, counters: dict[str, int], macs: int | None,
                      ideal_cycles: float | None, plan: "GemmPlan | None" = None) -> "Stats":
        cycles = counters.get("cycles")
        if not cycles:
            utilization = None
        elif ideal_cycles is not None:
            utilization = ideal_cycles / cycles
        elif counters.get("array_busy") is not None:
            utilization = counters["array_busy"] / cycles
        else:
            utilization = None
        return cls(backend=backend, cycles=cycles, utilization=utilization, macs=macs,
                   ideal_cycles=ideal_cycles, counters=dict(counters), plan=plan,
                   **{n: counters.get(n) for n in COUNTER_NAMES if n != "cycles"})


assert {"cycles"} | {f.name for f in dc_fields(Stats)} >= set(COUNTER_NAMES)


# ---- the GEMM compiler -----------------------------------------------------------------------

def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _ceil_div(a, b) * b


def _pitch(nbytes: int, mem_width: int) -> int:
    """Bytes reserved for an ``nbytes`` row piece so that it never straddles more memory
    words than it must: a power of two below ``mem_width`` (divides the word), else a multiple
    of ``mem_width``."""
    if nbytes >= mem_width:
        return _round_up(nbytes, mem_width)
    return 1 << (nbytes - 1).bit_length()


def _beats(nbytes: int, mem_width: int) -> int:
    return _ceil_div(nbytes, mem_width)


@dataclass(frozen=True)
class GemmPlan:
    """How one ``[M,K] @ [K,N]`` GEMM is tiled, scheduled and laid out in memory.

    Schedule modes
    --------------
    ``resident``: activations of one M-chunk (``mc`` rows x ``kt`` k-tiles) stay in the
    activation buffer (k-tile ``k`` at entries ``k*mc ..``) across all n-tiles; each k-tile is
    loaded just before its first MATMUL. The chunk's first few n-tiles run k-outer (k-tile
    ``k`` of each of them in turn) when that is needed to keep the load unit, which also
    loads every weight tile, ahead of the array (:func:`_lead_tiles`).
    ``streaming`` (when ``kt`` k-tiles of even a few rows do not fit): each (n, k) step
    reloads its activation k-tile into one of ``act_regions`` alternating regions of ``mc``
    entries.

    In both modes every step loads its weight tile into the next of ``wgt_slots`` rotating
    slots and runs one MATMUL over the chunk's rows (``accumulate`` for k > 0). The
    accumulator holds ``acc_regions`` regions of ``mc`` entries; consecutive n-tiles are
    grouped ``store_group`` at a time, groups alternate between the two halves of the
    regions, and a group's STOREs are spread over the next group's steps so that they run
    under its compute (see :func:`build_program`).

    Memory image (byte offsets; all region bases and row strides are multiples of
    ``mem_width``): ``x`` rows at ``x_base + m * x_stride`` with k-tile ``k`` at ``+ k *
    a_pitch`` (``act_bytes`` per element, little-endian); weight tile ``(n, k)`` at
    ``w_base + (n * kt + k) * w_tile_bytes`` with rows ``w_pitch`` apart (zero-padded to ``rows x cols``); parameter entry ``n`` at ``p_base + n *
    p_pitch``; output row ``m`` at ``o_base + m * o_stride`` with n-tile ``n`` at ``+ n *
    o_pitch`` (int8 or int32 little-endian).
    """
    config: AcceleratorConfig
    M: int
    K: int
    N: int
    requant: bool
    kt: int
    nt: int
    mode: str
    mc: int
    act_regions: int
    acc_regions: int
    store_group: int
    wgt_slots: int
    params_resident: bool
    param_slots: int
    a_pitch: int
    x_base: int
    x_stride: int
    w_pitch: int
    w_tile_bytes: int
    w_base: int
    p_pitch: int
    p_base: int
    o_elem: int
    o_pitch: int
    o_base: int
    o_stride: int
    mem_size: int
    est_cycles: int

    @property
    def chunks(self) -> int:
        return _ceil_div(self.M, self.mc)

    @property
    def ideal_cycles(self) -> float:
        return self.M * self.K * self.N / (self.config.rows * self.config.cols)

    def describe(self) -> str:
        return (f"{self.M}x{self.K}x{self.N}: {self.mode}, {self.chunks} chunk(s) of <= "
                f"{self.mc} rows, {self.kt} k-tile(s) x {self.nt} n-tile(s), "
                f"image {self.mem_size} B")


def _balanced(M: int, cap: int) -> int:
    """Rows per M-chunk: as few chunks as ``cap`` allows, of nearly equal size."""
    return _ceil_div(M, _ceil_div(M, cap))


def _estimate(config: AcceleratorConfig, M: int, K: int, N: int, mode: str, mc: int,
              o_elem: int) -> int:
    """Rough cycle estimate of a schedule (only used to choose one and to size the cycle
    budget)."""
    c = config
    kt, nt = _ceil_div(K, c.rows), _ceil_div(N, c.cols)
    chunks = _ceil_div(M, mc)
    act_load = mc * _beats(c.act_entry_bytes, c.mem_width) + _MEM_INSTR_LATENCY
    wgt_load = c.rows * _beats(c.cols, c.mem_width) + _MEM_INSTR_LATENCY
    step = max(mc, 2 * c.rows)
    if mode == "resident":
        per_chunk = kt * nt * step + kt * max(0, act_load + wgt_load - step)
    else:
        per_chunk = kt * nt * max(step, act_load + wgt_load)
    store = mc * _beats(c.cols * o_elem, c.mem_width) + _MEM_INSTR_LATENCY
    return chunks * per_chunk + store + 2 * c.rows + c.cols + 16


def plan_gemm(config: AcceleratorConfig, M: int, K: int, N: int, *, requant: bool = False,
              mode: str | None = None) -> GemmPlan:
    """Choose tiling, schedule and memory layout for ``[M,K] @ [K,N]``.

    ``mode`` forces ``"resident"`` or ``"streaming"`` (tests); by default the cheaper one by
    a simple cost model. Raises ``ValueError`` when the problem cannot be laid out in
    ``config.mem_bytes`` or a stride does not fit its instruction field.
    """
    c = config
    for name, v in (("M", M), ("K", K), ("N", N)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, not {v!r}")
    M, K, N = int(M), int(K), int(N)
    kt, nt = _ceil_div(K, c.rows), _ceil_div(N, c.cols)
    o_elem = isa.store_row_bytes(1, not requant)  # bytes per output element in memory

    acc_cap = max(1, c.acc_depth // 2)
    candidates = {}
    if kt <= c.act_depth:
        candidates["resident"] = min(M, acc_cap, c.act_depth // kt)
    candidates["streaming"] = min(M, acc_cap, max(1, c.act_depth // 2))
    if mode is not None:
        if mode not in ("resident", "streaming"):
            raise ValueError(f"mode must be 'resident' or 'streaming', not {mode!r}")
        if mode not in candidates:
            raise ValueError(f"{kt} k-tiles do not fit act_depth={c.act_depth}: "
                             f"resident mode is impossible")
        chosen = mode
    else:
        chosen = min(candidates, key=lambda k: (
            _estimate(c, M, K, N, k, _balanced(M, candidates[k]), o_elem), k != "resident"))
    mc = _balanced(M, candidates[chosen])
    act_regions = 1 if chosen == "resident" else (2 if 2 * mc <= c.act_depth else 1)
    acc_regions = min(c.acc_depth // mc, 16)
    store_group = max(1, acc_regions // 2)
    params_resident = nt <= min(c.param_depth, (1 << 16) - 1)
    param_slots = min(2, c.param_depth)

    mw = c.mem_width
    a_pitch = _pitch(c.act_entry_bytes, mw)
    x_base = 0
    x_stride = _round_up(kt * a_pitch, mw)
    w_pitch = _pitch(c.cols, mw)
    w_tile_bytes = _round_up(c.rows * w_pitch, mw)
    w_base = x_base + M * x_stride
    p_pitch = _pitch(isa.OUTPUT_PARAMS_BYTES * c.cols, mw) if requant else 0
    p_base = w_base + kt * nt * w_tile_bytes
    o_pitch = _pitch(c.cols * o_elem, mw)
    o_stride = _round_up(nt * o_pitch, mw)
    o_base = p_base + (nt * p_pitch if requant else 0)
    mem_size = o_base + M * o_stride
    if mem_size > c.mem_bytes:
        raise ValueError(f"a {M}x{K}x{N} GEMM needs a {mem_size}-byte memory image "
                         f"(x, tiled w{', params' if requant else ''} and output), more than "
                         f"mem_bytes={c.mem_bytes}")
    stride_max = (1 << data.Layout.cast(isa.LoadInstr)["mem_stride"].width) - 1
    for name, stride in (("x row stride", x_stride), ("output row stride", o_stride)):
        if stride > stride_max:
            raise ValueError(f"{name} of {stride} bytes does not fit mem_stride "
                             f"(max {stride_max}): K or N too large")
    return GemmPlan(
        config=c, M=M, K=K, N=N, requant=requant, kt=kt, nt=nt, mode=chosen, mc=mc,
        act_regions=act_regions, acc_regions=acc_regions, store_group=store_group,
        wgt_slots=c.wgt_tiles,
        params_resident=params_resident, param_slots=param_slots,
        a_pitch=a_pitch, x_base=x_base, x_stride=x_stride, w_pitch=w_pitch,
        w_tile_bytes=w_tile_bytes, w_base=w_base, p_pitch=p_pitch, p_base=p_base,
        o_elem=o_elem, o_pitch=o_pitch, o_base=o_base, o_stride=o_stride, mem_size=mem_size,
        est_cycles=_estimate(c, M, K, N, chosen, mc, o_elem))


def _store_groups(n_tiles: int, group: int, store_ratio: float) -> list[int]:
    """Sizes of the consecutive n-tile groups whose STOREs are issued together.

    A group's STOREs run under the next group's compute, so a group may hold at most
    ``next size / store_ratio`` n-tiles (``store_ratio`` = one n-tile's STORE time over its
    compute time, with a margin), and the last group (whose STOREs nothing hides) is a
    single n-tile. Built from the end; full groups of ``group`` before that, with any
    remainder first."""
    tail = [1]
    while sum(tail) < n_tiles and tail[-1] < group:
        nxt = min(group, int(tail[-1] / store_ratio), n_tiles - sum(tail))
        if nxt <= 1 and tail[-1] == 1:
            break  # STOREs too slow to batch: one n-tile per group
        tail.append(max(1, nxt))
    size = tail[-1]
    rest = n_tiles - sum(tail)
    sizes = [size] * (rest // size)
    if rest % size:
        sizes.insert(0, rest % size)
    return sizes + tail[::-1]


def cycle_budget(plan: GemmPlan, n_words: int) -> int:
    """A cycle limit that a correct run of the plan never reaches (so that a hang fails
    quickly): twice the time of executing every memory beat and every MATMUL one after
    another, with a generous per-instruction allowance."""
    c = plan.config
    mw = c.mem_width
    steps = plan.chunks * plan.kt * plan.nt
    act_rows = plan.M * plan.kt * (1 if plan.mode == "resident" else plan.nt)
    serial = (act_rows * (_beats(c.act_entry_bytes, mw) + 1)
              + steps * c.rows * (_beats(c.cols, mw) + 1)
              + plan.M * plan.nt * (_beats(c.cols * plan.o_elem, mw) + 1)
              + plan.chunks * plan.nt * (_beats(isa.OUTPUT_PARAMS_BYTES * c.cols, mw) + 1)
              + steps * (max(plan.mc, 2 * c.rows) + 2 * c.rows + c.cols + 16))
    return 2 * serial + 64 * n_words + 10_000


def _store_ratio(plan: GemmPlan) -> float:
    """One n-tile's STORE time over its compute time, with a 1.5x margin."""
    c = plan.config
    store = plan.mc * _beats(c.cols * plan.o_elem, c.mem_width) + _MEM_INSTR_LATENCY
    return 1.5 * store / (plan.kt * max(plan.mc, 2 * c.rows))


def _lead_tiles(plan: GemmPlan, acc_bases: list[int], mc: int, last_chunk: bool) -> int:
    """How many of a chunk's first n-tiles to run k-outer (resident mode).

    In the first n-tile every MATMUL needs a fresh activation k-tile as well as a weight
    tile, and the load unit (which does both) falls behind the array whenever the two loads
    take longer than the MATMUL streams. Sharing each activation load among ``p`` n-tiles
    hides it once ``act_load + p * wgt_load <= p * mc``. The ``p`` n-tiles accumulate at the
    same time, so they need distinct accumulator regions (and parameter slots)."""
    c = plan.config
    if plan.mode != "resident" or plan.kt == 1 or plan.nt == 1:
        return 1
    act_load = mc * _beats(c.act_entry_bytes, c.mem_width) + _MEM_INSTR_LATENCY
    wgt_load = c.rows * _beats(c.cols, c.mem_width) + _MEM_INSTR_LATENCY
    # Interleaved n-tiles finish together: leave at least one n-tile of the chunk after
    # them, under which their STOREs can run (rather than against the next chunk's loads).
    # In the last chunk all of them may interleave when the load stalls saved outweigh the
    # STOREs then left exposed at the end.
    limit = min(plan.nt - 1, 4)
    if last_chunk and plan.nt <= 4:
        store = mc * _beats(c.cols * plan.o_elem, c.mem_width) + _MEM_INSTR_LATENCY
        if plan.kt * max(0, act_load + wgt_load - mc) > (plan.nt - 1) * store:
            limit = plan.nt
    if plan.requant and not plan.params_resident:
        limit = min(limit, plan.param_slots)
    # ... and their STOREs come as a burst, which must drain before the next ones are due.
    limit = min(limit, int(1 / _store_ratio(plan)))
    p = 1
    while p < limit and act_load + p * wgt_load > p * mc and \
            len(set(acc_bases[:p + 1])) == p + 1:
        p += 1
    return p


def build_program(plan: GemmPlan, *, store_group: int | None = None) -> list[int]:
    """Instruction words of a planned GEMM (see :class:`GemmPlan` for the schedule).

    Per step (one MATMUL of one (chunk, n, k)) the program holds the step's loads (parameter
    entry, activation k-tile, weight tile), then at most one STORE that is due, then the
    MATMUL. Program order is sequentially correct by construction: a STORE is only ever
    delayed, and it is forced out before the first MATMUL that overwrites its accumulator
    rows or the LOAD that overwrites its parameter entry.

    STOREs are issued in groups: the n-tiles of one group accumulate into one half of the
    accumulator regions, and their STOREs are spread over the next group's steps (the first
    one just before that group's second MATMUL), which computes into the other half. The
    hardware stalls a STORE while its rows may still be written by a MATMUL in flight, so
    every group costs at most one pause of the execute unit instead of one per n-tile.
    ``store_group`` overrides the group size (tests, measurements).
    """
    c = plan.config
    rows, cols = c.rows, c.cols
    K, N, kt, nt, mc_max = plan.K, plan.N, plan.kt, plan.nt, plan.mc
    p = Program()
    act, wgt, prm = LoadTarget.ACT, LoadTarget.WGT, LoadTarget.PARAM
    mode = StoreMode.REQUANT if plan.requant else StoreMode.RAW
    param_bytes = isa.OUTPUT_PARAMS_BYTES * cols

    group = plan.store_group if store_group is None else max(1, int(store_group))
    group = min(group, max(1, plan.acc_regions // 2))
    n_tiles = plan.chunks * nt
    sizes = _store_groups(n_tiles, group, _store_ratio(plan))
    # Accumulator base and STORE step of every global n-tile.
    acc_of: list[int] = []
    emit_at: list[float] = []
    first = 0
    for gi, size in enumerate(sizes):
        half = gi % 2 if plan.acc_regions >= 2 else 0
        for j in range(size):
            region = (half * group + j) % plan.acc_regions
            acc_of.append(region * mc_max)
            if gi + 1 < len(sizes):
                nxt_first, nxt_steps = (first + size) * kt, sizes[gi + 1] * kt
                offset = min(nxt_steps - 1, 1 + (j * nxt_steps) // size)
                emit_at.append(nxt_first + offset)
            else:
                emit_at.append(float("inf"))
        first += size

    if plan.requant and plan.params_resident:
        p.load(prm, 0, nt, param_bytes, plan.p_base, plan.p_pitch)

    pending: list[tuple[float, tuple]] = []  # (step at which to emit, store args), in order

    def flush(conflicts) -> None:
        # Emit (in order) every pending STORE up to the last one that conflicts with the
        # instruction about to be emitted, so that program order stays sequentially correct.
        last = max((i for i, (_, st) in enumerate(pending) if conflicts(st)), default=-1)
        for _ in range(last + 1):
            p.store(*pending.pop(0)[1])

    step = 0
    slot = 0
    act_region = 0
    tile_base = 0  # global index of the chunk's first n-tile
    for m0 in range(0, plan.M, mc_max):
        mc = min(mc_max, plan.M - m0)
        x_row0 = plan.x_base + m0 * plan.x_stride
        lead = _lead_tiles(plan, acc_of[tile_base:tile_base + nt], mc,
                           last_chunk=m0 + mc_max >= plan.M)
        # The chunk's first `lead` n-tiles run k-outer (k-tile k of each in turn), so that
        # each activation k-tile load is shared by `lead` MATMULs; the rest run k-inner.
        load_bound = (mc * _beats(c.act_entry_bytes, c.mem_width)
                      + rows * _beats(cols, c.mem_width)
                      + 2 * _MEM_INSTR_LATENCY) > mc
        order = [(n, k) for k in range(kt) for n in range(lead)] + \
                [(n, k) for n in range(lead, nt) for k in range(kt)]
        for n, k in order:
            tile_index = tile_base + n
            nc = min(cols, N - n * cols)
            kr = min(rows, K - k * rows)
            acc_base = acc_of[tile_index]
            if plan.requant and not plan.params_resident:
                param_addr = tile_index % plan.param_slots
            else:
                param_addr = n if plan.requant else 0
            if k == 0 and plan.requant and not plan.params_resident:
                flush(lambda st: st[6] == param_addr)  # it still needs the old entry
                p.load(prm, param_addr, 1, param_bytes, plan.p_base + n * plan.p_pitch, 0)
            if plan.mode == "resident":
                act_addr = k * mc_max
                if n == 0:
                    p.load(act, act_addr, mc, kr * c.act_bytes, x_row0 + k * plan.a_pitch,
                           plan.x_stride)
            else:
                act_addr = act_region * mc_max
                act_region = (act_region + 1) % plan.act_regions
                p.load(act, act_addr, mc, kr * c.act_bytes, x_row0 + k * plan.a_pitch,
                       plan.x_stride)
            wgt_addr = slot * rows
            slot = (slot + 1) % plan.wgt_slots
            # Weight rows beyond kr may hold a stale tile: they only ever meet the
            # zero-filled activation elements beyond kr, so they add nothing.
            p.load(wgt, wgt_addr, kr, nc, plan.w_base + (n * kt + k) * plan.w_tile_bytes,
                   plan.w_pitch)
            if k == 0:
                flush(lambda st: st[0] == acc_base)  # never overwrite unstored results
            # One due STORE per step, and none while the activation k-tiles stream in
            # k-inner order: the load unit is the bottleneck there and a store would
            # compete with it for the memory port.
            heavy = plan.mode == "resident" and lead == 1 and n == 0 and load_bound
            if pending and pending[0][0] <= step and not heavy:
                p.store(*pending.pop(0)[1])
            p.matmul(act_addr, mc, wgt_addr, acc_base, k > 0)
            step += 1
            if k == kt - 1:
                pending.append((emit_at[tile_index], (
                    acc_base, mc, nc, plan.o_base + m0 * plan.o_stride + n * plan.o_pitch,
                    plan.o_stride, mode, param_addr)))
        tile_base += nt
    for _, args in pending:
        p.store(*args)
    p.halt()
    return p.words


def pack_memory(plan: GemmPlan, x: np.ndarray, w: np.ndarray,
                params: np.ndarray | None = None) -> np.ndarray:
    """The memory image of a planned GEMM: ``x``, tiled ``w``, parameter entries, and a
    zeroed output region."""
    c = plan.config
    M, K, N, kt, nt = plan.M, plan.K, plan.N, plan.kt, plan.nt
    mem = np.zeros(plan.mem_size, dtype=np.uint8)
    ab, entry = c.act_bytes, c.act_entry_bytes
    # Activations little-endian, act_bytes each (values already checked, see Accelerator).
    xb = np.ascontiguousarray(x, dtype=np.int8 if ab == 1 else np.dtype("<i2")).view(np.uint8)
    x_img = mem[plan.x_base:plan.x_base + M * plan.x_stride].reshape(M, plan.x_stride)
    if plan.a_pitch == entry:
        x_img[:, :K * ab] = xb
    else:
        xpad = np.zeros((M, kt * entry), dtype=np.uint8)
        xpad[:, :K * ab] = xb
        x_img[:, :kt * plan.a_pitch].reshape(M, kt, plan.a_pitch)[:, :, :entry] = \
            xpad.reshape(M, kt, entry)
    wpad = np.zeros((kt * c.rows, nt * c.cols), dtype=np.uint8)
    wpad[:K, :N] = w.view(np.uint8)
    tiles = wpad.reshape(kt, c.rows, nt, c.cols).transpose(2, 0, 1, 3)  # [n, k, row, col]
    w_img = mem[plan.w_base:plan.w_base + kt * nt * plan.w_tile_bytes]
    w_img = w_img.reshape(nt, kt, plan.w_tile_bytes)[:, :, :c.rows * plan.w_pitch]
    w_img.reshape(nt, kt, c.rows, plan.w_pitch)[..., :c.cols] = tiles
    if plan.requant:
        p_img = mem[plan.p_base:plan.p_base + nt * plan.p_pitch].reshape(nt, plan.p_pitch)
        p_img[:, :params.shape[1]] = params
    return mem


def unpack_output(plan: GemmPlan, mem: np.ndarray) -> np.ndarray:
    c = plan.config
    M, N, nt = plan.M, plan.N, plan.nt
    o = mem[plan.o_base:plan.o_base + M * plan.o_stride].reshape(M, plan.o_stride)
    o = o[:, :nt * plan.o_pitch].reshape(M, nt, plan.o_pitch)[:, :, :c.cols * plan.o_elem]
    o = np.ascontiguousarray(o).reshape(M, nt * c.cols * plan.o_elem)
    dtype = np.dtype(np.int8) if plan.requant else np.dtype("<i4")
    return o.view(dtype)[:, :N].astype(dtype.newbyteorder("="))


# ---- argument checking ------------------------------------------------------------------------

def _check_activations(name: str, a, act_bits: int) -> np.ndarray:
    """``a`` as the int8 (``act_bits = 8``, dtype int8 required, as for weights) or int16
    (``act_bits = 16``: any integer dtype, values in int16) array the accelerator takes."""
    if act_bits == 8:
        return _check_operand(name, a)
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu":
        kind = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
        raise TypeError(f"{name} must be a numpy integer array (int16 activations), not {kind}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, not shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    lo, hi = -(1 << (act_bits - 1)), (1 << (act_bits - 1)) - 1
    if int(a.min()) < lo or int(a.max()) > hi:
        found = int(a.min()) if int(a.min()) < lo else int(a.max())
        raise ValueError(f"{name} must be in [{lo}, {hi}] for {act_bits}-bit activations; "
                         f"found {found}")
    return np.ascontiguousarray(a, dtype=np.int16)


def _check_operand(name: str, a) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy int8 array, not {type(a).__name__}")
    if a.dtype != np.int8:
        raise TypeError(f"{name} must have dtype int8, not {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, not shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _check_column_param(name: str, value, n: int, lo: int, hi: int) -> np.ndarray:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer or an integer array, not {value!r}")
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer (int32-compatible) scalar or array, "
                        f"not dtype {arr.dtype}")
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, n)):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), not {arr.shape}")
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}]; found "
                         f"{int(arr.min()) if int(arr.min()) < lo else int(arr.max())}")
    return np.broadcast_to(arr.astype(np.int64), (n,))


# ---- the accelerator --------------------------------------------------------------------------

class Accelerator:
    """An int8 GEMM accelerator on one backend.

    Parameters
    ----------
    config : AcceleratorConfig
        The instance.
    backend : str or Backend
        ``"golden"`` (instruction-level numpy model, no timing), ``"pysim"``
        (cycle-accurate Amaranth simulation) or ``"compiled"`` (cycle-accurate compiled
        model), or an already constructed backend object.
    **backend_options
        Passed to the backend's constructor, e.g. ``mem_latency`` or ``mem_profile``
        (``sim.backend.MemoryProfile``: seeded memory backpressure and latency) for pysim and
        compiled.

    Attributes
    ----------
    stats : Stats or None
        Figures of the last call.
    last_program : list[int]
        Instruction words of the last call (``sim.asm.listing`` prints them).
    last_plan : GemmPlan or None
    """

    def __init__(self, config: AcceleratorConfig | None = None, backend: "str | Backend" = "pysim",
                 **backend_options):
        if config is None:
            config = AcceleratorConfig()
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {type(config).__name__}")
        self.config = config
        if isinstance(backend, str):
            self.backend = make_backend(backend, config, **backend_options)
        elif hasattr(backend, "run"):
            if backend_options:
                raise TypeError("backend options only apply when the backend is given by name")
            self.backend = backend
        else:
            raise TypeError(f"backend must be one of {BACKENDS} or a Backend object, "
                            f"not {backend!r}")
        self.stats: Stats | None = None
        self.last_program: list[int] = []
        self.last_plan: GemmPlan | None = None

    @property
    def backend_name(self) -> str:
        return getattr(self.backend, "name", type(self.backend).__name__)

    # -- public API
    def plan(self, M: int, K: int, N: int, *, requant: bool = False) -> GemmPlan:
        """The plan ``matmul`` (``requant=False``) or ``linear`` would use."""
        return plan_gemm(self.config, M, K, N, requant=requant)

    def matmul(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``int32[M,N] = x @ w`` for ``int8 x[M,K]``, ``int8 w[K,N]`` (int32 wrap-around).

        With ``config.act_bits = 16`` ``x`` holds int16 activations: an array of any integer
        dtype whose values lie in [-32768, 32767] (``ValueError`` naming ``x`` otherwise)."""
        x, w = self._check_xw(x, w)
        plan = plan_gemm(self.config, x.shape[0], x.shape[1], w.shape[1])
        return self._run_gemm(plan, x, w, None)

    def linear(self, x: np.ndarray, w: np.ndarray, bias=None, *, multiplier, shift,
               zero_point=0, relu: bool = False, lo=-128, hi=127) -> np.ndarray:
        """Quantized fully connected layer: ``int8[M,N]`` (``x`` as in :meth:`matmul`).

        ``output_stage(x @ w, bias, multiplier, shift, zero_point, lo, hi)`` as
        ``sim.numerics`` defines it. ``bias`` (int32), ``multiplier`` (int32), ``shift``
        ([-31, 30]), ``zero_point``, ``lo``, ``hi`` (int8) are scalars or per-column
        ``[N]`` arrays. ``relu`` raises the lower clamp to ``zero_point``.
        """
        x, w = self._check_xw(x, w)
        n = w.shape[1]
        i32 = (-(1 << 31), (1 << 31) - 1)
        bias = _check_column_param("bias", 0 if bias is None else bias, n, *i32)
        multiplier = _check_column_param("multiplier", multiplier, n, *i32)
        shift = _check_column_param("shift", shift, n, -31, 30)
        zero_point = _check_column_param("zero_point", zero_point, n, -128, 127)
        lo = _check_column_param("lo", lo, n, -128, 127)
        hi = _check_column_param("hi", hi, n, -128, 127)
        if not isinstance(relu, (bool, np.bool_)):
            raise TypeError(f"relu must be a bool, not {relu!r}")
        if relu:
            lo = np.maximum(lo, zero_point)
        if np.any(lo > hi):
            raise ValueError("clamp bounds need lo <= hi in every column"
                             + (" (relu sets lo = zero_point)" if relu else ""))
        plan = plan_gemm(self.config, x.shape[0], x.shape[1], n, requant=True)
        params = pack_output_params(bias, multiplier, shift, zero_point, lo, hi,
                                    self.config.cols)
        return self._run_gemm(plan, x, w, params)

    def run_program(self, words: Sequence[int], memory: np.ndarray, *,
                    max_cycles: int | None = None) -> RunResult:
        """Run raw instruction words against a ``uint8`` memory image (at most
        ``mem_bytes``). Returns the backend's :class:`RunResult`; faults are reported in
        its status, not raised."""
        words = self._check_words(words)
        if not isinstance(memory, np.ndarray) or memory.dtype != np.uint8:
            raise TypeError("memory must be a numpy uint8 array, not "
                            f"{getattr(memory, 'dtype', type(memory).__name__)}")
        if memory.ndim != 1:
            raise ValueError(f"memory must be 1-D, not shape {memory.shape}")
        if memory.size > self.config.mem_bytes:
            raise ValueError(f"memory image ({memory.size} bytes) is larger than mem_bytes "
                             f"({self.config.mem_bytes})")
        result = self.backend.run(words, memory, max_cycles=max_cycles)
        self.last_program = list(words)
        self.last_plan = None
        self.stats = Stats.from_counters(self.backend_name, result.counters, None, None)
        return result

    # -- internals
    def _check_xw(self, x, w) -> tuple[np.ndarray, np.ndarray]:
        x = _check_activations("x", x, self.config.act_bits)
        w = _check_operand("w", w)
        if x.shape[1] != w.shape[0]:
            raise ValueError(f"shape mismatch: x is {x.shape}, w is {w.shape} "
                             f"(x.shape[1] must equal w.shape[0])")
        return x, w

    @staticmethod
    def _check_words(words) -> list[int]:
        out = []
        for i, word in enumerate(words):
            if isinstance(word, np.integer):
                word = int(word)
            if isinstance(word, bool) or not isinstance(word, int):
                raise TypeError(f"instruction word {i} must be an int, not {word!r}")
            if not 0 <= word < (1 << isa.INSTR_WIDTH):
                raise ValueError(f"instruction word {i} does not fit in {isa.INSTR_WIDTH} bits")
            out.append(word)
        return out

    def _run_gemm(self, plan: GemmPlan, x: np.ndarray, w: np.ndarray,
                  params: np.ndarray | None) -> np.ndarray:
        words = build_program(plan)
        memory = pack_memory(plan, x, w, params)
        budget = cycle_budget(plan, len(words))
        profile = getattr(self.backend, "mem_profile", None)  # refusals and delays take longer
        if profile is not None:
            budget = profile.scale_budget(budget)
        result = self.backend.run(words, memory, max_cycles=budget)
        self.last_program = words
        self.last_plan = plan
        if not result.status.ok:
            st = result.status
            where = (f" at instruction {st.fault_index}: {disassemble(words[st.fault_index])}"
                     if st.done and st.fault_index < len(words) else "")
            raise RuntimeError(f"{self.backend_name} backend: compiled GEMM program did not "
                               f"complete (done={st.done}, error={st.error.name}){where}")
        macs = plan.M * plan.K * plan.N
        self.stats = Stats.from_counters(self.backend_name, result.counters, macs,
                                         plan.ideal_cycles, plan)
        return unpack_output(plan, result.memory)
