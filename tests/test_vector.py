"""The vector unit's VREQUANT (issue 13, docs/vector.md): the golden model against a scalar
oracle, golden vs pysim vs compiled on random data and corners, hazards against LOAD, MATMUL
and STORE, malformed instructions, ``vector=False``, and the documented cycle cost."""

import numpy as np
import pytest

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import ErrorCode, Opcode, VectorDst, encode
from serrano.hw.top import Accelerator
from serrano.hw.vector import VectorUnit
from serrano.sim import numerics
from serrano.sim.asm import Program, pack_output_params, unpack_output_params
from serrano.sim.compiled import CompiledBackend
from serrano.sim.golden import GoldenBackend
from serrano.sim.pysim import PysimBackend
from programs import VECTOR_CONFIGS, patch_field
from simutil import needs_verilator



def vcfg(act_bits: int = 8, lanes: int = 4, **kw) -> AcceleratorConfig:
    base = dict(rows=lanes, cols=lanes, act_depth=128, wgt_depth=8 * lanes, acc_depth=128,
                param_depth=16, mem_width=8, mem_bytes=1 << 14, vector=True,
                act_bits=act_bits)
    return AcceleratorConfig(**{**base, **kw})


CFG8, CFG16 = vcfg(8), vcfg(16)

# Memory map of the generated programs.
ACT_MEM, WGT_MEM, PARAM_MEM, PARAM2_MEM, EYE_MEM, OUT_MEM = 0, 2048, 4096, 5120, 6144, 8192
EYE_ACT = 100     # activation entries holding an identity (observing weight tiles)


# ---- a scalar oracle of docs/vector.md and docs/numerics.md ------------------------------------

def _requant_scalar(acc: int, p, wide: bool) -> int:
    x = ((acc + int(p["bias"]) + 2**31) % 2**32) - 2**31
    shift = min(max(int(p["shift"]), isa.SHIFT_MIN), isa.SHIFT_MAX)
    y = numerics.mbqm_reference(x, int(p["multiplier"]), shift)
    y = ((y + int(p["zero_point"]) + 2**31) % 2**32) - 2**31
    if wide:
        return min(max(y, -2**15), 2**15 - 1)
    return min(max(y, int(p["lo"])), int(p["hi"]))


def oracle_vrequant(g: GoldenBackend, f: dict) -> None:
    """VREQUANT element by element, straight from docs/vector.md, on ``g``'s buffers."""
    c = g.config
    L = c.cols
    nb = -(-f["n_elems"] // L)
    to_act = f["dst"] == VectorDst.ACT.value
    wide = to_act and c.act_bits == 16
    buf = g.act if to_act else g.wgt
    writes = []   # (entry, lane, value) in the unit's order
    if not f["transpose"]:
        for b in range(nb):
            params = unpack_output_params(g.param[f["param_addr"] + b])
            for i in range(f["n_rows"]):
                row = []
                for lane in range(L):
                    j = b * L + lane
                    acc = int(g.acc[f["src_addr"] + b * f["src_stride"] + i, lane])
                    row.append(_requant_scalar(acc, params[lane], wide) if j < f["n_elems"]
                               else 0)
                writes.append((f["dst_addr"] + b * f["dst_stride"] + i, row))
    else:
        nbt = -(-f["n_rows"] // L)
        for ib in range(nbt):
            for j in range(f["n_elems"]):
                b, lane_j = divmod(j, L)
                params = unpack_output_params(g.param[f["param_addr"] + b])
                row = []
                for lane in range(L):
                    i = ib * L + lane
                    if i < f["n_rows"]:
                        acc = int(g.acc[f["src_addr"] + b * f["src_stride"] + i, lane_j])
                        row.append(_requant_scalar(acc, params[lane_j], wide))
                    else:
                        row.append(0)
                writes.append((f["dst_addr"] + ib * f["dst_stride"] + j, row))
    for entry, row in writes:
        buf[entry] = row


def _vr_fields(**kw) -> dict:
    f = dict(dst=0, transpose=0, with_b=0, pre=0, reserved0=0, src_addr=0, src_stride=0,
             dst_addr=0, dst_stride=0, b_addr=0, n_rows=1, n_elems=1, param_addr=0)
    f.update(kw)
    return f


def _random_params(rng, n: int, *, extreme: bool = False, act_bits: int = 8):
    """Packed OutputParams of ``n`` columns: realistic requantizers that hit both clamps, or
    (``extreme``) any int32 bias and multiplier and the whole shift range."""
    if extreme:
        bias = rng.integers(-2**31, 2**31, n)
        bias[:2] = [2**31 - 1, -2**31][:n]
        mult = rng.integers(-2**31, 2**31, n)
        mult[:3] = [-2**31, 2**31 - 1, 0][:n]
        shift = rng.integers(isa.SHIFT_MIN, isa.SHIFT_MAX + 1, n)
    else:
        bias = rng.integers(-3000, 3000, n)
        mult = rng.integers(2**30, 2**31, n)
        shift = rng.integers(-14, -1, n) if act_bits == 8 else rng.integers(-8, 2, n)
    zp = rng.integers(-20, 20, n)
    lo = rng.integers(-128, 0, n)
    hi = rng.integers(0, 128, n)
    if n > 3:
        lo[3], hi[3] = 20, -20    # lo > hi gives hi
    return bias, mult, shift, zp, lo, hi


@pytest.mark.parametrize("act_bits", [8, 16])
@pytest.mark.parametrize("shape", [(1, 1, 0), (5, 7, 0), (3, 19, 0), (6, 7, 1), (1, 4, 1),
                                   (9, 13, 1)])
def test_golden_matches_scalar_oracle(act_bits, shape):
    n_rows, n_elems, transpose = shape
    cfg = vcfg(act_bits, wgt_depth=64)
    rng = np.random.default_rng(hash(shape) % 2**32 + act_bits)
    L = cfg.cols
    nb = -(-n_elems // L)
    for dst in (VectorDst.ACT, VectorDst.WGT):
        for extreme in (False, True):
            g = GoldenBackend(cfg)
            g.acc[:] = rng.integers(-2**31, 2**31, g.acc.shape) if extreme else \
                rng.integers(-40000, 40000, g.acc.shape)
            g.acc[0, 0], g.acc[1, 1] = -2**31, 2**31 - 1
            packed = pack_output_params(*_random_params(rng, nb * L, extreme=extreme,
                                                        act_bits=act_bits), cols=L)
            g.param[2:2 + nb] = packed
            g.act[:] = rng.integers(-100, 100, g.act.shape)
            g.wgt[:] = rng.integers(-100, 100, g.wgt.shape)
            # Overlapping destination blocks (stride < rows): the later block wins.
            f = _vr_fields(dst=dst.value, transpose=transpose, src_addr=3, src_stride=n_rows + 2,
                           dst_addr=1, dst_stride=max(1, (n_elems if transpose else n_rows) - 1),
                           n_rows=n_rows, n_elems=n_elems, param_addr=2)
            assert not any(bad for _, bad in isa.instruction_checks(Opcode.VREQUANT, f, cfg))
            ref = GoldenBackend(cfg)
            for name in ("act", "wgt", "param", "acc"):
                getattr(ref, name)[...] = getattr(g, name)
            oracle_vrequant(ref, f)
            res = g.execute([encode(Opcode.VREQUANT, **f)], np.zeros(16, np.uint8))
            assert res.status.error == ErrorCode.NONE
            for name in ("act", "wgt", "param", "acc"):
                assert np.array_equal(getattr(g, name), getattr(ref, name)), (name, dst, extreme)


def test_golden_vrequant_is_fast_at_minilm_size():
    """A MiniLM-sized requant (128 tokens x 384, and its transpose) in well under a second."""
    import time
    cfg = AcceleratorConfig(rows=8, cols=8, act_depth=8192, acc_depth=8192, param_depth=64,
                            wgt_depth=8192, vector=True, act_bits=16)
    g = GoldenBackend(cfg)
    g.acc[:] = np.random.default_rng(0).integers(-2**20, 2**20, g.acc.shape)
    words = [encode(Opcode.VREQUANT, dst=VectorDst.ACT.value, src_stride=128, dst_stride=128,
                    n_rows=128, n_elems=384),
             encode(Opcode.VREQUANT, dst=VectorDst.WGT.value, transpose=1, src_stride=128,
                    dst_stride=384, n_rows=128, n_elems=384)]
    t0 = time.perf_counter()
    res = g.execute(words, np.zeros(16, np.uint8))
    assert res.status.error == ErrorCode.NONE
    assert time.perf_counter() - t0 < 0.5


# ---- programs that make an accumulator tensor, VREQUANT it and store what it wrote -------------

class Case:
    """One VREQUANT program: random activations x weight tiles make the source tensor in the
    accumulator, VREQUANT writes it, and identity MATMULs + RAW STOREs put the whole
    destination hull in memory (ACT hull x identity weights; identity activations x each
    weight tile of the hull)."""

    def __init__(self, cfg, rng, *, n_rows, n_elems, transpose=False, dst="act", src_addr=0,
                 src_stride=None, dst_addr=None, dst_stride=None, param_addr=0, extreme=False,
                 hazards=False, before=None, after=None, extra_obs=()):
        c, L, ab = cfg, cfg.cols, cfg.act_bytes
        self.cfg = cfg
        nb = -(-n_elems // L)
        nbt = -(-n_rows // L)
        src_stride = n_rows if src_stride is None else src_stride
        to_act = dst == "act"
        if dst_stride is None:
            dst_stride = n_elems if transpose else n_rows
        if dst_addr is None:
            dst_addr = 0
        mem = rng.integers(0, 256, c.mem_bytes, dtype=np.uint8)
        mem[OUT_MEM:] = 0
        # Activations of the source MATMULs: full-range random rows.
        act_dtype = "<i2" if ab == 2 else np.int8
        lim = 2**(c.act_bits - 1)
        x = rng.integers(-lim, lim, (n_rows, L)).astype(act_dtype)
        if extreme:
            x[:] = -lim if c.act_bits == 8 else lim - 1
        mem[ACT_MEM:ACT_MEM + x.nbytes] = x.view(np.uint8).ravel()
        params = pack_output_params(*_random_params(rng, nb * L, extreme=extreme,
                                                    act_bits=c.act_bits), cols=L)
        mem[PARAM_MEM:PARAM_MEM + params.size] = params.ravel()
        params2 = pack_output_params(*_random_params(rng, nb * L, act_bits=c.act_bits), cols=L)
        mem[PARAM2_MEM:PARAM2_MEM + params2.size] = params2.ravel()
        eye = np.eye(L, dtype=np.int8)
        mem[EYE_MEM:EYE_MEM + L * L] = eye.view(np.uint8).ravel()
        eye_act = np.eye(L, dtype=act_dtype)
        mem[EYE_MEM + 256:EYE_MEM + 256 + eye_act.nbytes] = eye_act.view(np.uint8).ravel()
        pe = c.param_entry_bytes
        p = Program()
        p.load("param", param_addr, nb, pe, PARAM_MEM, pe)
        p.load("act", 0, n_rows, L * ab, ACT_MEM, L * ab)
        for b in range(nb):
            slot = (b % 2) * L
            p.load("wgt", slot, L, L, WGT_MEM + b * L * L, L)
            p.matmul(0, n_rows, slot, src_addr + b * src_stride, 0)
            if extreme:   # push the accumulators toward the int32 ends (and past: wrap)
                for _ in range(3):
                    p.matmul(0, n_rows, slot, src_addr + b * src_stride, 1)
        if transpose:
            hull = (dst_addr, dst_addr + (nbt - 1) * dst_stride + n_elems)
        else:
            hull = (dst_addr, dst_addr + (nb - 1) * dst_stride + n_rows)
        info = dict(src_addr=src_addr, src_stride=src_stride, nb=nb, n_rows=n_rows,
                    hull=hull, param_addr=param_addr, pe=pe, L=L, ab=ab)
        if before is not None:
            before(p, info)
        p.vrequant(dst, src_addr, src_stride, dst_addr, dst_stride, n_rows, n_elems,
                   param_addr=param_addr, transpose=transpose)
        if after is not None:
            after(p, info)
        if hazards:
            # Right behind the VREQUANT, on its data: a MATMUL overwrites its source (WAR),
            # a LOAD its parameters (WAR), a LOAD one row of its destination (WAW and the
            # shared write port), a STORE reads its source (no hazard), then a second
            # VREQUANT reads the new source and parameters (RAW) into the other buffer.
            p.matmul(0, n_rows, 0, src_addr, 1)
            p.load("param", param_addr, nb, pe, PARAM2_MEM, pe)
            p.store(src_addr, n_rows, L, OUT_MEM + 4096, L, "requant", param_addr)
            if to_act:
                p.load("act", hull[0], 1, L * ab, ACT_MEM + 7, L * ab)
            else:
                p.load("wgt", hull[0], 1, L, WGT_MEM + 5, L)
        self.obs = []
        out = OUT_MEM
        acc_obs = c.acc_depth - 32
        self._observe(p, to_act, hull, acc_obs, out)
        out += (hull[1] - hull[0] + L) * 4 * L
        for obs_act, obs_hull in extra_obs:
            self._observe(p, obs_act, obs_hull, acc_obs, out)
            out += (obs_hull[1] - obs_hull[0] + L) * 4 * L
        if hazards:
            other = "wgt" if to_act else "act"
            o_addr = 0 if other == "wgt" else 64
            p.vrequant(other, src_addr, src_stride, o_addr, n_rows, min(n_rows, L), n_elems,
                       param_addr=param_addr, transpose=0)
            # (n_rows clipped to L for the weight buffer: the destination hull must fit.)
            p.matmul(0, n_rows, 0, src_addr, 0)   # WAR against the second VREQUANT
            nbo = nb
            hull2 = (o_addr, o_addr + (nbo - 1) * n_rows + min(n_rows, L))
            self._observe(p, other == "act", hull2, acc_obs, out)
        p.halt()
        self.words, self.mem = p.words, mem

    def _observe(self, p: Program, to_act: bool, hull, acc_obs: int, out: int) -> None:
        c, L = self.cfg, self.cfg.cols
        lo, hi = hull
        if to_act:
            p.load("wgt", c.wgt_depth - L, L, L, EYE_MEM, L)
            for k in range(lo, hi, 32):
                n = min(32, hi - k)
                p.matmul(k, n, c.wgt_depth - L, acc_obs, 0)
                p.store(acc_obs, n, L, out + (k - lo) * 4 * L, 4 * L, "raw")
        else:
            p.load("act", EYE_ACT, L, L * c.act_bytes, EYE_MEM + 256, L * c.act_bytes)
            for k in range(lo, hi, L):
                w = min(k, c.wgt_depth - L)
                p.matmul(EYE_ACT, L, w, acc_obs, 0)
                p.store(acc_obs, L, L, out + (k - lo) * 4 * L, 4 * L, "raw")


def _cases(cfg, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    L = cfg.cols
    return [
        Case(cfg, rng, n_rows=5, n_elems=7),                       # n_elems % L != 0
        Case(cfg, rng, n_rows=1, n_elems=1, dst="wgt"),            # the smallest tensor
        Case(cfg, rng, n_rows=3, n_elems=4 * L + 3, src_addr=2, src_stride=5, dst_addr=3,
             dst_stride=4, param_addr=1),                          # many blocks, strides
        Case(cfg, rng, n_rows=6, n_elems=7, transpose=True, dst="wgt", dst_stride=7),
        Case(cfg, rng, n_rows=1, n_elems=L, transpose=True, dst_addr=5),
        Case(cfg, rng, n_rows=9, n_elems=6, transpose=True, dst_stride=6, param_addr=3),
        Case(cfg, rng, n_rows=4, n_elems=2 * L, extreme=True),     # extreme int32
        Case(cfg, rng, n_rows=3, n_elems=L + 1, extreme=True, dst="wgt", transpose=True),
        Case(cfg, rng, n_rows=5, n_elems=6, hazards=True),
        Case(cfg, rng, n_rows=3, n_elems=5, dst="wgt", hazards=True),
    ]


def _assert_same(got, ref, what):
    assert got.status == ref.status, f"{what}: {got.status} != {ref.status}"
    diff = np.flatnonzero(got.memory != ref.memory)
    assert diff.size == 0, f"{what}: {diff.size} bytes differ, first at {diff[:8].tolist()}"


def _hazard_cases(cfg, seed: int) -> list[Case]:
    """One program per hazard rule of docs/vector.md, each long enough that ignoring the
    rule changes the result: a VREQUANT of 12 rows x 4 blocks (48 cycles of reads) and, right
    before (behind a FENCE, so that nothing else holds it back) or right after it, an
    instruction on the data it reads or writes last (or, for the shared write port, on other
    entries of its destination buffer). Results of the other instruction are stored too."""
    rng = np.random.default_rng(seed)
    L = cfg.cols
    big = dict(n_rows=12, n_elems=4 * L, src_stride=12, dst_stride=12)
    last = lambda i: i["src_addr"] + (i["nb"] - 1) * i["src_stride"]
    hz_out = OUT_MEM + 6144

    def then_store(*steps):
        """Run ``steps`` (callables of the program) and store accumulator rows afterwards."""
        def emit(p, i):
            for step in steps:
                step(p, i)
        return emit

    fence = lambda p, i: p.fence()
    store = lambda acc, n: (lambda p, i: p.store(acc, n, L, hz_out, 4 * L, "raw"))
    return [
        # MATMUL in decode, vector in flight: it overwrites the block the VREQUANT reads
        # last (WAR, accumulator); it reads the last block of the destination (RAW, ACT);
        # it reads a weight tile the VREQUANT writes (RAW, WGT).
        Case(cfg, rng, **big, after=lambda p, i: p.matmul(64, i["n_rows"], 0, last(i), 1)),
        Case(cfg, rng, **big, after=then_store(
            lambda p, i: p.matmul(i["hull"][1] - 12, 12, 0, 112, 0), store(112, 12))),
        Case(cfg, rng, n_rows=6, n_elems=4 * L, src_stride=6, dst_stride=6, dst="wgt",
             after=then_store(lambda p, i: p.matmul(64, 12, 16, 112, 0), store(112, 12))),
        # LOAD in decode, vector in flight: the last block's parameters (WAR); ACT or WGT
        # rows of the destination (WAW) and other rows (the write port).
        Case(cfg, rng, **big, after=lambda p, i: p.load(
            "param", i["param_addr"] + i["nb"] - 1, 1, i["pe"], PARAM2_MEM, i["pe"])),
        Case(cfg, rng, **big, after=lambda p, i: p.load(
            "act", i["hull"][1] - 3, 2, L * i["ab"], ACT_MEM + 64, L * i["ab"])),
        Case(cfg, rng, **big, after=lambda p, i: p.load(
            "act", 64, 20, L * i["ab"], ACT_MEM + 64, L * i["ab"]), extra_obs=[(True, (64, 84))]),
        Case(cfg, rng, n_rows=6, n_elems=4 * L, src_stride=6, dst_stride=6, dst="wgt",
             after=lambda p, i: p.load("wgt", i["hull"][1] - 2, 2, L, WGT_MEM + 64, L)),
        Case(cfg, rng, n_rows=3, n_elems=4 * L, src_stride=3, dst_stride=3, dst="wgt",
             after=lambda p, i: p.load("wgt", 16, 16, L, WGT_MEM + 64, L),
             extra_obs=[(False, (16, 32))]),
        # Vector in decode, LOAD in flight: its parameters (RAW); other rows of its
        # destination buffer (the write port).
        Case(cfg, rng, **big, before=then_store(fence, lambda p, i: p.load(
            "param", i["param_addr"], i["nb"], i["pe"], PARAM2_MEM, i["pe"]))),
        Case(cfg, rng, **big, before=then_store(fence, lambda p, i: p.load(
            "act", 64, 30, L * i["ab"], ACT_MEM + 64, L * i["ab"])),
             extra_obs=[(True, (64, 94))]),
        Case(cfg, rng, n_rows=3, n_elems=4 * L, src_stride=3, dst_stride=3, dst="wgt",
             before=then_store(fence, lambda p, i: p.load("wgt", 16, 16, L, WGT_MEM + 64, L)),
             extra_obs=[(False, (16, 32))]),
        # Vector in decode, MATMULs in flight reading its destination (WAR): streaming
        # (the VREQUANT writes the rows the MATMUL streams last); waiting to stream behind
        # a long MATMUL (ACT; and a weight tile, which the execute unit preloads early).
        Case(cfg, rng, n_rows=8, n_elems=L, dst_addr=40,
             before=then_store(fence, lambda p, i: p.matmul(0, 48, 0, 64, 0)),
             after=store(64, 48)),
        Case(cfg, rng, **big, before=then_store(
            fence, lambda p, i: p.matmul(64, 48, 0, 64, 0),
            lambda p, i: p.matmul(0, 12, 0, 112, 0)), after=store(112, 12)),
        Case(cfg, rng, n_rows=3, n_elems=4 * L, src_stride=3, dst_stride=3, dst="wgt",
             before=then_store(fence, lambda p, i: p.matmul(64, 48, 0, 64, 0),
                               lambda p, i: p.matmul(64, 12, 4, 112, 0)),
             after=store(112, 12)),
    ]


def _pysim_matches_golden(cfg, cases) -> None:
    jobs = [(c.words, c.mem) for c in cases]
    ref = GoldenBackend(cfg).run_sequence(jobs)
    got = PysimBackend(cfg).run_sequence(jobs, max_cycles=20_000)
    for i, (g, r) in enumerate(zip(got, ref)):
        assert r.status.error == ErrorCode.NONE and r.status.done
        # The programs wrote something other than zeros (the test can fail).
        assert np.any(r.memory[OUT_MEM:OUT_MEM + 4096] != 0)
        _assert_same(g, r, f"case {i}")


def test_vrequant_pysim_matches_golden_act8():
    """Every corner and every hazard rule (removing any of the scoreboard's vector rules
    but the WAR against a weight tile's preload makes a case here fail; that one the
    execute unit's early preload leaves no window to observe)."""
    _pysim_matches_golden(CFG8, _cases(CFG8, seed=8) + _hazard_cases(CFG8, seed=9))


def test_vrequant_pysim_matches_golden_act16():
    """16-bit activations: int16 clamps into ACT, int8 into WGT, transposed and not."""
    cases = _cases(CFG16, seed=16)
    _pysim_matches_golden(CFG16, [cases[k] for k in (0, 3, 5, 6, 9)])


@pytest.mark.slow
def test_vrequant_pysim_matches_golden_act16_all():
    _pysim_matches_golden(CFG16, _cases(CFG16, seed=17) + _hazard_cases(CFG16, seed=18))


@needs_verilator
def test_vrequant_compiled_matches_golden():
    cfg = VECTOR_CONFIGS["2x2_vec16"]   # (the fuzz test's: one compiled build for both)
    assert cfg == vcfg(16, lanes=2, wgt_depth=32)
    cases = _cases(cfg, seed=5)
    jobs = [(c.words, c.mem) for c in cases]
    ref = GoldenBackend(cfg).run_sequence(jobs)
    got = CompiledBackend(cfg).run_sequence(jobs, max_cycles=20_000)
    for i, (g, r) in enumerate(zip(got, ref)):
        assert r.status.error == ErrorCode.NONE
        _assert_same(g, r, f"case {i}")


@pytest.mark.slow
@needs_verilator
@pytest.mark.parametrize("act_bits", [8, 16])
@pytest.mark.parametrize("lanes", [1, 4, 8])
def test_vrequant_compiled_random(act_bits, lanes):
    cfg = vcfg(act_bits, lanes=lanes, act_depth=256, acc_depth=256, wgt_depth=16 * lanes,
               param_depth=32)
    rng = np.random.default_rng(lanes * 100 + act_bits)
    cases = []
    for _ in range(200):   # random shapes; those whose observation does not fit are skipped
        if len(cases) == 12:
            break
        tr = bool(rng.integers(2))
        dst = ["act", "wgt"][rng.integers(2)]
        case = Case(cfg, rng, n_rows=int(rng.integers(1, 13)),
                    n_elems=int(rng.integers(1, 6 * lanes + 1)), transpose=tr, dst=dst,
                    extreme=bool(rng.integers(2)), hazards=bool(rng.integers(2)))
        if GoldenBackend(cfg).run(case.words, case.mem).status.error == ErrorCode.NONE:
            cases.append(case)
    assert len(cases) == 12
    jobs = [(c.words, c.mem) for c in cases]
    ref = GoldenBackend(cfg).run_sequence(jobs)
    got = CompiledBackend(cfg).run_sequence(jobs, max_cycles=100_000)
    for i, (g, r) in enumerate(zip(got, ref)):
        assert r.status.error == ErrorCode.NONE, (i, r.status)
        _assert_same(g, r, f"case {i}")


# ---- malformed instructions ---------------------------------------------------------------------

def _bad_vrequants(cfg) -> list[tuple[ErrorCode, int]]:
    L = cfg.cols
    ok = encode(Opcode.VREQUANT, dst="act", src_stride=4, dst_stride=4, n_rows=4, n_elems=2 * L,
                dst_addr=8)
    vr = lambda **kw: encode(Opcode.VREQUANT, **{**dict(dst="act", src_stride=4, dst_stride=4,
                                                        n_rows=4, n_elems=2 * L, dst_addr=8),
                                                 **kw})
    return [
        (ErrorCode.BAD_FIELD, patch_field(ok, Opcode.VREQUANT, "reserved0", 4)),
        (ErrorCode.BAD_FIELD, patch_field(ok, Opcode.VREQUANT, "pre", 1)),
        (ErrorCode.BAD_FIELD, patch_field(ok, Opcode.VREQUANT, "dst", 2)),
        (ErrorCode.BAD_FIELD, patch_field(ok, Opcode.VREQUANT, "dst", 3)),
        (ErrorCode.BAD_FIELD, vr(with_b=1)),
        (ErrorCode.BAD_SIZE, vr(n_rows=0)),
        (ErrorCode.BAD_SIZE, vr(n_elems=0)),
        (ErrorCode.BUF_RANGE, vr(src_addr=cfg.acc_depth - 7)),            # src hull
        (ErrorCode.BUF_RANGE, vr(src_stride=60000)),                      # saturating end
        (ErrorCode.BUF_RANGE, vr(dst_addr=cfg.act_depth - 7)),            # dst hull
        (ErrorCode.BUF_RANGE, vr(dst="wgt", dst_addr=cfg.wgt_depth - 7)),
        (ErrorCode.BUF_RANGE, vr(dst="wgt", transpose=1, n_rows=L + 1, n_elems=L,
                                 dst_stride=cfg.wgt_depth - L + 1)),      # transposed hull
        (ErrorCode.BUF_RANGE, vr(param_addr=cfg.param_depth - 1)),        # parameter entries
        (ErrorCode.BUF_RANGE, vr(n_rows=4095, n_elems=4095, src_stride=65535,
                                 dst_stride=65535, src_addr=65535)),
    ]


#: One malformed word per check (the rest with -m slow): dst, with_b, n_elems, the source
#: hull, a transposed destination hull, the parameter entries.
DEFAULT_BAD = (1, 3, 5, 6, 10, 11)


@pytest.mark.parametrize("which", [DEFAULT_BAD, pytest.param(None, marks=pytest.mark.slow)],
                         ids=["some", "all"])
def test_malformed_vrequant_faults_without_side_effect(which):
    """Each error code with no effect: a program loads ACT/WGT/PARAM/ACC contents, then a bad
    VREQUANT faults; the next program (buffers carry over) stores the destination buffers
    and the accumulator, which must be what the loads left, on golden and pysim alike."""
    cfg = CFG8
    L = cfg.cols
    rng = np.random.default_rng(3)
    setup_case = Case(cfg, rng, n_rows=4, n_elems=2 * L, dst_addr=8, dst_stride=4)
    setup = setup_case.words[:-1]
    vr_index = next(i for i, w in enumerate(setup) if w & 0xFF == Opcode.VREQUANT.value)
    setup = setup[:vr_index]           # params, acc tensor, no VREQUANT yet
    mem = setup_case.mem
    p = Program()
    p.load("act", 0, 32, L, 0, L)
    p.load("wgt", 0, cfg.wgt_depth, L, 512, L)
    prologue = p.words
    observe = Program()
    observe.load("wgt", cfg.wgt_depth - L, L, L, EYE_MEM, L)   # (overwrites one tile)
    observe.matmul(0, 32, cfg.wgt_depth - L, 64, 0)
    observe.store(64, 32, L, OUT_MEM, 4 * L, "raw")
    observe.load("act", EYE_ACT, L, L, EYE_MEM + 256, L)
    for k in range(0, cfg.wgt_depth - L, L):
        observe.matmul(EYE_ACT, L, k, 100 + k, 0)
    observe.store(100, cfg.wgt_depth - L, L, OUT_MEM + 2048, 4 * L, "raw")
    observe.store(0, 40, L, OUT_MEM + 4096, 4 * L, "raw")       # the source tensor
    observe.halt()
    bad = _bad_vrequants(cfg)
    if which is not None:
        bad = [bad[k] for k in which]
    jobs = []
    for code, word in bad:
        jobs.append((prologue + setup + [word, encode(Opcode.HALT)], mem))
        jobs.append((observe.words, mem))
    jobs.append((prologue + setup + [encode(Opcode.HALT)], mem))  # no VREQUANT at all
    jobs.append((observe.words, mem))
    ref = GoldenBackend(cfg).run_sequence(jobs)
    got = PysimBackend(cfg).run_sequence(jobs, max_cycles=20_000)
    clean = ref[-1].memory
    for k, (code, _) in enumerate(bad):
        fault, after = ref[2 * k], ref[2 * k + 1]
        assert fault.status.error == code, (k, fault.status, code)
        assert fault.status.fault_index == len(prologue) + len(setup)
        assert np.array_equal(after.memory, clean), f"bad word {k} ({code.name}) had an effect"
        _assert_same(got[2 * k], fault, f"fault {k}")
        _assert_same(got[2 * k + 1], after, f"after fault {k}")
    assert np.any(clean[OUT_MEM:OUT_MEM + 4096] != 0)


def test_vector_opcodes_are_bad_opcode_without_the_unit():
    cfg = AcceleratorConfig(rows=4, cols=4, act_depth=64, wgt_depth=16, acc_depth=64,
                            param_depth=4, mem_bytes=4096)
    assert not cfg.vector and isa.opcodes(cfg) == tuple(
        op for op in Opcode if op not in isa.VECTOR_OPCODES)
    words = [encode(Opcode.NOP),
             encode(Opcode.VREQUANT, dst="act", n_rows=1, n_elems=1), encode(Opcode.HALT)]
    mem = np.zeros(64, np.uint8)
    for backend in (GoldenBackend(cfg), PysimBackend(cfg)):
        res = backend.run(words, mem)
        assert res.status.error == ErrorCode.BAD_OPCODE and res.status.fault_index == 1
    # The same word is valid with the unit.
    res = GoldenBackend(vcfg()).run(words, mem)
    assert res.status.error == ErrorCode.NONE


def test_vector_config_and_unit_validation():
    with pytest.raises(ValueError, match="square array"):
        AcceleratorConfig(rows=4, cols=8, vector=True)
    with pytest.raises(ValueError, match="square array"):
        AcceleratorConfig(rows=6, cols=6, vector=True)
    with pytest.raises(ValueError, match="vector must be a bool"):
        AcceleratorConfig(vector=1)
    with pytest.raises(ValueError, match="vector=True"):
        VectorUnit(AcceleratorConfig())
    from serrano.hw.mult import MultiplierTarget
    with pytest.raises(ValueError, match="ice40"):
        VectorUnit(vcfg(16), MultiplierTarget(family="ice40"))
    # Without the unit the accelerator has no vector ports, buffers' extra read ports or muxes.
    from amaranth.hdl import Fragment
    frag = Fragment.get(Accelerator(AcceleratorConfig(rows=2, cols=2)), None)
    names = {name for _, name, _ in frag.subfragments}
    assert "vector" not in names and "act_write_mux" not in names
    frag = Fragment.get(Accelerator(vcfg(lanes=2)), None)
    names = {name for _, name, _ in frag.subfragments}
    assert {"vector", "act_write_mux", "wgt_write_mux"} <= names


# ---- cycle cost ------------------------------------------------------------------------------------

def test_vrequant_cycles_match_the_documented_formula():
    """docs/performance.md: a VREQUANT keeps the vector unit busy ``VectorUnit.cycles`` (rows
    x blocks, the pipeline, L more transposed); a program of one VREQUANT and HALT takes that
    plus a fixed dispatch-and-retire overhead, measured here on pysim for several shapes."""
    cfg = vcfg(8)
    unit = VectorUnit(cfg)
    unit._MustUse__silence = unit.requant._MustUse__silence = True  # only asked for cycles
    L = cfg.cols
    shapes = [(1, 1, False), (5, 7, False), (20, 13, False), (1, 1, True), (6, 7, True),
              (9, 16, True)]
    jobs = [([encode(Opcode.VREQUANT, dst="act", src_stride=32, dst_stride=32, n_rows=r,
                     n_elems=e, transpose=int(t)), encode(Opcode.HALT)],
             np.zeros(64, np.uint8)) for r, e, t in shapes]
    jobs.append(([encode(Opcode.HALT)], np.zeros(64, np.uint8)))
    res = PysimBackend(cfg).run_sequence(jobs, max_cycles=5000)
    halt_only = res[-1].counters["cycles"]
    overheads = set()
    for (r, e, t), got in zip(shapes, res):
        assert got.status.error == ErrorCode.NONE
        overheads.add(got.counters["cycles"] - unit.cycles(r, e, t) - halt_only)
    assert overheads == {VECTOR_DISPATCH_OVERHEAD}, overheads
    # The formula itself, as docs/performance.md writes it.
    for r, e, t in shapes:
        nb = -(-e // L)
        rows = -(-r // L) * L if t else r
        assert unit.cycles(r, e, t) == rows * nb + unit.latency + (L if t else 0) + 1


#: Cycles a VREQUANT + HALT program takes beyond ``VectorUnit.cycles`` and a lone HALT's
#: cycles (the VREQUANT's check and dispatch ahead of the HALT's; measured, documented).
VECTOR_DISPATCH_OVERHEAD = 2


def test_vrequant_without_overlap():
    """``overlap=False`` (SerialScoreboard): a vector instruction waits for every unit like
    any other; the hazard programs still give the sequential result."""
    cfg = vcfg(8, overlap=False)
    cases = _cases(cfg, seed=21)
    _pysim_matches_golden(cfg, [cases[k] for k in (0, 3, 8)] + _hazard_cases(cfg, seed=22)[:3])


@pytest.mark.parametrize("family", ["generic", "ecp5"])
def test_requant_lanes_are_the_output_stage(family):
    """``RequantLanes`` (VREQUANT's datapath, on products from a bank) gives the output
    stage's int8 result and kernels.requant at 16 bits, on the output-stage corner values,
    random rows and rows around the int16 bounds, back to back, one row per cycle at its documented latency."""
    from amaranth.lib import data
    from serrano.hw.mult import MultiplierTarget
    from serrano.hw.vector_lanes import RequantLanes, SoloLanes
    from serrano.sim import kernels
    from simutil import simulate
    from test_output_stage import corner_rows, halfword_rows, random_rows
    cols = 4
    target = None if family == "generic" else MultiplierTarget(family="ecp5", simulation=True)
    dut = SoloLanes(RequantLanes(lanes=cols, tag_shape=data.ArrayLayout(1, 1), target=target))
    assert dut.latency == (12 if family == "generic" else 17)
    rng = np.random.default_rng(5)
    rows = corner_rows(cols) + random_rows(rng, cols, 30) + halfword_rows(rng, cols, 20)
    # Extra rows whose y lands on and around the int16 bounds.
    for y in (32767, 32768, -32768, -32769, 2**20, -2**20):
        rows.append(type(rows[0])(np.full(cols, y - 3, dtype=np.int64),
                                  dict(bias=np.full(cols, 0), multiplier=np.full(cols, 2**31 - 1),
                                       shift=np.full(cols, 0), zero_point=np.full(cols, 3),
                                       lo=np.full(cols, -128), hi=np.full(cols, 127))))
    got = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for cycle in range(len(rows) + dut.latency + 2):
            if cycle < len(rows):
                row = rows[cycle]
                assert ctx.get(dut.i.ready)
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload.x, [int(v) for v in row.acc])
                ctx.set(dut.params, [{f: int(row.params[f][n]) for f in row.params}
                                     for n in range(cols)])
            else:
                ctx.set(dut.i.valid, 0)
            if ctx.get(dut.o.valid):
                y = ctx.get(dut.o.payload.y)
                got.append((cycle, [int(y[n].int8) for n in range(cols)],
                            [int(y[n].int16) for n in range(cols)]))
            await ctx.tick()

    simulate(dut, bench, max_cycles=len(rows) + dut.latency + 10, name=f"requant_{family}")
    assert [c for c, *_ in got] == [dut.latency + i for i in range(len(rows))]
    for (cycle, y8, y16), row in zip(got, rows):
        p = {f: np.asarray(v) for f, v in row.params.items()}
        assert y8 == row.expected().tolist(), (cycle, row.acc.tolist())
        assert y16 == kernels.requant(row.acc[None, :], p, 16)[0].tolist(), cycle
