"""VADD, VSOFTMAX, VLAYERNORM and VGELU in the gateware (hw/vector_ops.py): golden vs pysim
(and compiled) on random data and the corners, bit-exact in memory, status and counters."""

import numpy as np
import pytest

from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import ErrorCode, Opcode
from serrano.sim import kernels as K
from serrano.sim.asm import Program, vector_params
from serrano.sim.compiled import CompiledBackend
from serrano.sim.golden import GoldenBackend
from serrano.sim.pysim import PysimBackend
from simutil import needs_verilator



def vcfg(act_bits: int = 16, lanes: int = 4, **kw) -> AcceleratorConfig:
    base = dict(rows=lanes, cols=lanes, act_depth=128, wgt_depth=8 * lanes, acc_depth=128,
                param_depth=32, mem_width=8, mem_bytes=1 << 14, vector=True,
                act_bits=act_bits)
    return AcceleratorConfig(**{**base, **kw})


# Memory map of the malformed-word programs.
EYE_MEM, OUT_MEM = 6144, 8192


def _params(op: Opcode, rng, n: int, a: int, with_b: bool, scale: float):
    q = K.act_range(a)[1]
    if op == Opcode.VADD:
        return K.add_params(scale, 3.0 / q, 8.0 / q, a)
    if op == Opcode.VSOFTMAX:
        return K.softmax_params(scale, a)
    if op == Opcode.VGELU:
        return K.gelu_params(scale, 8.0 / q, a)
    return K.layernorm_params(scale, 8.0 / q, rng.normal(1, 0.3, n), rng.normal(0, 0.3, n),
                              1e-12, a, s_residual=(4.0 / q) if with_b else None)


class OpCase:
    """One program: MATMULs make an int32 source tensor, LOADs put ``b`` and the op's
    parameter entries in place, the op runs, identity MATMULs and RAW STOREs copy its
    destination hull to memory."""

    def __init__(self, cfg, rng, op, *, n_rows, n_elems, with_b=False, pre=False,
                 src_addr=0, src_stride=None, dst_addr=40, dst_stride=None, b_addr=80,
                 param_addr=1, extreme=False, mask="random", constant=False):
        c, L, ab = cfg, cfg.cols, cfg.act_bytes
        a = c.act_bits
        nb = -(-n_elems // L)
        src_stride = n_rows if src_stride is None else src_stride
        dst_stride = n_rows if dst_stride is None else dst_stride
        lo, hi = K.act_range(a)
        act_dtype = "<i2" if ab == 2 else np.int8
        mem = np.zeros(c.mem_bytes, dtype=np.uint8)
        x = rng.integers(lo, hi + 1, (n_rows, L)).astype(act_dtype)
        w = rng.integers(-128, 128, (nb, L, L)).astype(np.int8)
        if extreme:      # full-scale products, accumulated up to and past the int32 ends
            x = np.where(rng.random(x.shape) < 0.5, lo, hi).astype(act_dtype)
            w = np.where(rng.random(w.shape) < 0.5, -128, 127).astype(np.int8)
        if constant:     # every column of a row the same: constant LayerNorm rows
            w[:] = w[0, :, :1]
        at = [0]

        def put(raw: np.ndarray) -> int:
            """Place ``raw`` in the memory image (64-byte aligned); its address."""
            addr = at[0]
            raw = raw.view(np.uint8).ravel()
            mem[addr:addr + raw.size] = raw
            at[0] = -(-(addr + raw.size) // 64) * 64
            return addr

        x_mem, w_mem = put(x), put(w)
        # About 2 in real units per source element (the kernels' interesting range).
        scale = 2.0 ** -(a + 6)
        params = _params(op, rng, n_elems, a, with_b, scale)
        pre_p = (K.prescale_params(rng.uniform(1e-7, 1e-6, n_elems), 2e-6,
                                   rng.normal(0, 1e-3, n_elems)) if pre else None)
        entries = vector_params(op, params, c, pre=pre_p)
        param_mem = put(entries)
        if op == Opcode.VSOFTMAX:
            b_rows = nb
            flat = np.zeros(nb * L, np.int64)
            if mask == "random":
                flat[rng.random(nb * L) < 0.3] = K.mask_sentinel(a)
            elif mask == "all":
                flat[:] = K.mask_sentinel(a)
            elif mask == "one":
                flat[:] = K.mask_sentinel(a)
                flat[n_elems - 1] = 0
            bt = flat.reshape(nb, L).astype(act_dtype)
        else:
            b_rows = (nb - 1) * dst_stride + n_rows
            bt = rng.integers(lo, hi + 1, (b_rows, L)).astype(act_dtype)
        b_mem, eye_mem = put(bt), put(np.eye(L, dtype=np.int8))
        self.out_mem = out_mem = at[0]

        p = Program()
        pe = c.param_entry_bytes
        p.load("param", param_addr, len(entries), pe, param_mem, pe)
        p.load("act", 0, n_rows, L * ab, x_mem, L * ab)
        if with_b:
            p.load("act", b_addr, b_rows, L * ab, b_mem, L * ab)
        for k in range(nb):
            slot = (k % 2) * L
            p.load("wgt", slot, L, L, w_mem + k * L * L, L)
            p.matmul(0, n_rows, slot, src_addr + k * src_stride, 0)
            # |x w| sums to 2**24 per MATMUL at act_bits = 16 and L = 4: 150 reach 2**31.
            for _ in range(150 if extreme else 0):
                p.matmul(0, n_rows, slot, src_addr + k * src_stride, 1)
        f = dict(src_addr=src_addr, src_stride=src_stride, dst_addr=dst_addr,
                 dst_stride=dst_stride, n_rows=n_rows, n_elems=n_elems, param_addr=param_addr)
        bb = b_addr if with_b else None
        if op == Opcode.VADD:
            p.vadd(**f, b_addr=b_addr, pre=pre)
        elif op == Opcode.VSOFTMAX:
            p.vsoftmax(**f, mask_addr=bb)
        elif op == Opcode.VLAYERNORM:
            p.vlayernorm(**f, residual_addr=bb, pre=pre)
        else:
            p.vgelu(**f, pre=pre)
        hull = (dst_addr, dst_addr + (nb - 1) * dst_stride + n_rows)
        p.load("wgt", c.wgt_depth - L, L, L, eye_mem, L)
        acc_obs = c.acc_depth - 32
        for k in range(hull[0], hull[1], 32):
            n = min(32, hull[1] - k)
            p.matmul(k, n, c.wgt_depth - L, acc_obs, 0)
            p.store(acc_obs, n, L, out_mem + (k - hull[0]) * 4 * L, 4 * L, "raw")
        if out_mem + (hull[1] - hull[0]) * 4 * L > c.mem_bytes:
            raise ValueError("the case does not fit the configuration's memory")
        p.halt()
        self.words, self.mem, self.op = p.words, mem, op
        # One element, softmax rows with at most one key, saturating extremes: too few
        # distinct values to judge by.
        self.trivial = n_rows * n_elems == 1 or mask in ("all", "one") or extreme


def _run_and_compare(cfg, cases, backend) -> None:
    jobs = [(c.words, c.mem) for c in cases]
    ref = GoldenBackend(cfg).run_sequence(jobs)
    got = backend.run_sequence(jobs, max_cycles=60_000)
    for i, (g, r) in enumerate(zip(got, ref)):
        what = f"case {i} ({cases[i].op.name})"
        assert r.status.error == ErrorCode.NONE and r.status.done, what
        assert g.status == r.status, what
        assert np.array_equal(g.memory, r.memory), what
        for name, value in r.counters.items():
            if name in ("cycles", "array_busy") or name.endswith("_cycles"):
                continue
            assert g.counters[name] == value, f"{what}: counter {name}"


def _cases(cfg, seed: int) -> list[OpCase]:
    rng = np.random.default_rng(seed)
    L = cfg.cols
    V = Opcode
    return [
        OpCase(cfg, rng, V.VADD, n_rows=5, n_elems=7, with_b=True),
        OpCase(cfg, rng, V.VADD, n_rows=3, n_elems=2 * L, with_b=True, pre=True, extreme=True),
        OpCase(cfg, rng, V.VADD, n_rows=4, n_elems=L + 1, with_b=True, b_addr=40),  # in place
        OpCase(cfg, rng, V.VGELU, n_rows=1, n_elems=1),
        OpCase(cfg, rng, V.VGELU, n_rows=6, n_elems=3 * L - 1, pre=True, src_addr=3,
               src_stride=7, dst_stride=8),
        OpCase(cfg, rng, V.VGELU, n_rows=2, n_elems=L, extreme=True),
        OpCase(cfg, rng, V.VSOFTMAX, n_rows=3, n_elems=9 * L + 3, with_b=True),  # many blocks
        OpCase(cfg, rng, V.VSOFTMAX, n_rows=2, n_elems=5, with_b=True, mask="all"),
        OpCase(cfg, rng, V.VSOFTMAX, n_rows=2, n_elems=6, with_b=True, mask="one"),
        OpCase(cfg, rng, V.VSOFTMAX, n_rows=1, n_elems=1),
        OpCase(cfg, rng, V.VSOFTMAX, n_rows=4, n_elems=2 * L, extreme=True),
        OpCase(cfg, rng, V.VLAYERNORM, n_rows=3, n_elems=2 * L + 1, with_b=True, pre=True),
        OpCase(cfg, rng, V.VLAYERNORM, n_rows=1, n_elems=1),
        OpCase(cfg, rng, V.VLAYERNORM, n_rows=2, n_elems=L + 2, constant=True),  # variance 0
        OpCase(cfg, rng, V.VLAYERNORM, n_rows=4, n_elems=3 * L, with_b=True, extreme=True,
               dst_stride=2),   # the destination's blocks overlap: written row by row
        OpCase(cfg, rng, V.VLAYERNORM, n_rows=3, n_elems=L, with_b=True, b_addr=40,
               param_addr=0),   # in place
    ]


@pytest.mark.parametrize("act_bits", [8, 16])
def test_ops_pysim_matches_golden(act_bits):
    """Every op on random data and the corners: one element, many blocks, rows not a
    multiple of L, extreme (wrapped) int32 sources, all-masked and single-unmasked softmax
    rows, constant LayerNorm rows, strides, in-place b, overlapping destination blocks."""
    cfg = vcfg(act_bits)
    _run_and_compare(cfg, _cases(cfg, seed=act_bits), PysimBackend(cfg))


def test_cases_are_not_trivial():
    """The programs' outputs are not all zero and not all one value (the test can fail)."""
    for act_bits in (8, 16):
        cfg = vcfg(act_bits)
        for case in _cases(cfg, seed=act_bits):
            if case.trivial:
                continue
            r = GoldenBackend(cfg).execute(case.words, case.mem)
            out = r.memory[case.out_mem:].view("<i4")
            assert len(np.unique(out)) > 2, (act_bits, case.op)


@needs_verilator
def test_ops_compiled_matches_golden():
    cfg = vcfg(16)
    _run_and_compare(cfg, _cases(cfg, seed=3), CompiledBackend(cfg))


def test_ops_cycles_match_the_documented_formula():
    """docs/performance.md: a program of one op and HALT takes ``VectorOps.cycles`` plus the
    vector dispatch overhead VREQUANT has (tests/test_vector.py) beyond a lone HALT."""
    from serrano.hw.isa import encode
    from serrano.hw.vector_ops import VectorOps
    from test_vector import VECTOR_DISPATCH_OVERHEAD
    cfg = vcfg(16, param_depth=64)
    ops = VectorOps(cfg)
    shapes = [(1, 1), (1, 8), (3, 8), (5, 13)]
    keys, jobs = [], []
    for op in (Opcode.VADD, Opcode.VGELU, Opcode.VSOFTMAX, Opcode.VLAYERNORM):
        for pre in ((0,) if op == Opcode.VSOFTMAX else (0, 1)):
            for r, e in shapes:
                word = encode(op, dst=0, src_stride=16, dst_stride=16, n_rows=r, n_elems=e,
                              with_b=int(op == Opcode.VADD), b_addr=64, pre=pre)
                jobs.append(([word, encode(Opcode.HALT)], np.zeros(64, np.uint8)))
                keys.append((op, r, e, pre))
    jobs.append(([encode(Opcode.HALT)], np.zeros(64, np.uint8)))
    res = PysimBackend(cfg).run_sequence(jobs, max_cycles=20_000)
    halt_only = res[-1].counters["cycles"]
    for (op, r, e, pre), got in zip(keys, res):
        assert got.status.error == ErrorCode.NONE
        want = ops.cycles(op, r, e, bool(pre)) + VECTOR_DISPATCH_OVERHEAD + halt_only
        assert got.counters["cycles"] == want, (op.name, r, e, pre)
    ops._MustUse__silence = True   # (only asked for cycles)


def _bad_words(cfg) -> list[tuple[ErrorCode, int]]:
    from serrano.hw.isa import encode
    from programs import patch_field
    L = cfg.cols
    base = dict(dst=0, src_stride=4, dst_stride=4, n_rows=4, n_elems=2 * L, dst_addr=40,
                b_addr=80, param_addr=1)
    w = lambda op, **kw: encode(op, **{**base, **kw})
    V = Opcode
    return [
        (ErrorCode.BAD_FIELD, patch_field(w(V.VADD, with_b=1), V.VADD, "reserved0", 1)),
        (ErrorCode.BAD_FIELD, w(V.VADD, with_b=1, dst=1)),            # WGT: VREQUANT only
        (ErrorCode.BAD_FIELD, w(V.VGELU, transpose=1)),
        (ErrorCode.BAD_FIELD, w(V.VADD, with_b=0)),                   # VADD needs b
        (ErrorCode.BAD_FIELD, w(V.VGELU, with_b=1)),                  # VGELU has none
        (ErrorCode.BAD_FIELD, w(V.VSOFTMAX, pre=1)),                  # no input stage
        (ErrorCode.BAD_SIZE, w(V.VLAYERNORM, n_rows=0)),
        (ErrorCode.BAD_SIZE, w(V.VSOFTMAX, n_elems=0)),
        (ErrorCode.BUF_RANGE, w(V.VGELU, src_addr=cfg.acc_depth - 7)),
        (ErrorCode.BUF_RANGE, w(V.VSOFTMAX, dst_addr=cfg.act_depth - 7)),
        (ErrorCode.BUF_RANGE, w(V.VADD, with_b=1, b_addr=cfg.act_depth - 7)),
        (ErrorCode.BUF_RANGE, w(V.VSOFTMAX, with_b=1, b_addr=cfg.act_depth - 1)),  # mask row
        (ErrorCode.BUF_RANGE, w(V.VLAYERNORM, pre=1, param_addr=cfg.param_depth - 4)),
        (ErrorCode.BUF_RANGE, w(V.VADD, with_b=1, b_addr=41)),        # b overlaps dst
        # in place, but the destination's blocks overlap each other
        (ErrorCode.BUF_RANGE, w(V.VLAYERNORM, with_b=1, b_addr=40, dst_stride=2)),
        (ErrorCode.BUF_RANGE, w(V.VSOFTMAX, with_b=1, b_addr=44)),    # mask row inside dst
    ]


def test_malformed_ops_fault_without_side_effect():
    """Each bad word faults with its documented code (docs/vector.md, "Checks") on golden
    and pysim alike, and the activation buffer (the only one these ops write) is what the
    loads left: the observing program that follows sees the same as after no op at all."""
    from serrano.hw.isa import encode
    cfg = vcfg(16)
    L, ab = cfg.cols, cfg.act_bytes
    rng = np.random.default_rng(11)
    mem = rng.integers(0, 256, cfg.mem_bytes, dtype=np.uint8)
    setup = Program()
    setup.load("act", 0, cfg.act_depth, L * ab, 0, L * ab)
    setup.load("param", 0, cfg.param_depth, cfg.param_entry_bytes, 4096, cfg.param_entry_bytes)
    observe = Program()
    eye = np.eye(L, dtype=np.int8)
    mem[EYE_MEM:EYE_MEM + L * L] = eye.view(np.uint8).ravel()
    observe.load("wgt", 0, L, L, EYE_MEM, L)
    for k in range(0, cfg.act_depth, 32):
        observe.matmul(k, 32, 0, 0, 0)
        observe.store(0, 32, L, OUT_MEM + k * 4 * L, 4 * L, "raw")
    observe.halt()
    jobs = []
    bad = _bad_words(cfg)
    for _, word in bad:
        jobs += [(setup.words + [word, encode(Opcode.HALT)], mem), (observe.words, mem)]
    jobs += [(setup.words + [encode(Opcode.HALT)], mem), (observe.words, mem)]
    ref = GoldenBackend(cfg).run_sequence(jobs)
    got = PysimBackend(cfg).run_sequence(jobs, max_cycles=20_000)
    clean = ref[-1].memory
    assert np.any(clean[OUT_MEM:] != 0)
    for k, (code, _) in enumerate(bad):
        assert ref[2 * k].status.error == code, (k, ref[2 * k].status)
        assert ref[2 * k].status.fault_index == len(setup.words), k
        assert got[2 * k].status == ref[2 * k].status, k
        assert np.array_equal(ref[2 * k + 1].memory, clean), k
        assert np.array_equal(got[2 * k + 1].memory, clean), k


def test_long_rows_pysim_matches_golden():
    """Rows of many entries: softmax over 512 keys (128 blocks, with a mask), LayerNorm over
    1024 channels (256 blocks, residual and input stage: 513 parameter entries), GELU over
    1024 elements."""
    cfg = vcfg(16, act_depth=1024, acc_depth=1024, param_depth=1024, mem_bytes=1 << 17)
    rng = np.random.default_rng(9)
    V = Opcode
    cases = [
        OpCase(cfg, rng, V.VSOFTMAX, n_rows=2, n_elems=512, with_b=True, dst_addr=300,
               b_addr=600, param_addr=0),
        OpCase(cfg, rng, V.VLAYERNORM, n_rows=1, n_elems=1024, with_b=True, pre=True,
               dst_addr=300, b_addr=600, param_addr=3),
        OpCase(cfg, rng, V.VGELU, n_rows=1, n_elems=1021, pre=True, dst_addr=300,
               param_addr=0),
    ]
    _run_and_compare(cfg, cases, PysimBackend(cfg))
