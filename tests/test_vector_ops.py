"""VADD, VSOFTMAX, VLAYERNORM, VGELU in the golden model: the ISA's layout and parameter
entries (docs/vector.md) against sim.kernels applied element by element, parameter-entry
round trips, and malformed instructions."""

import numpy as np
import pytest

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import ErrorCode, Opcode
from serrano.sim import kernels as K
from serrano.sim.asm import Program, vector_kernel_params, vector_params
from serrano.sim.golden import GoldenBackend


def vcfg(act_bits: int = 16, lanes: int = 4, **kw) -> AcceleratorConfig:
    base = dict(rows=lanes, cols=lanes, act_depth=256, wgt_depth=8 * lanes, acc_depth=256,
                param_depth=64, mem_width=8, mem_bytes=1 << 12, vector=True,
                act_bits=act_bits)
    return AcceleratorConfig(**{**base, **kw})


def _tensor(buf: np.ndarray, addr: int, stride: int, n_rows: int, n_elems: int) -> np.ndarray:
    """Element (i, j) of the block-major tensor, read one element at a time (the layout
    rule of docs/vector.md written out, independent of the golden model's gather)."""
    lanes = buf.shape[1]
    return np.array([[buf[addr + (j // lanes) * stride + i, j % lanes]
                      for j in range(n_elems)] for i in range(n_rows)], dtype=np.int64)


def _params(op: Opcode, rng: np.random.Generator, n: int, a: int, with_b: bool):
    q = K.act_range(a)[1]
    if op == Opcode.VADD:
        return K.add_params(1e-5, 3.0 / q, 8.0 / q, a)
    if op == Opcode.VSOFTMAX:
        return K.softmax_params(2 ** -11, a)
    if op == Opcode.VGELU:
        return K.gelu_params(2 ** -12, 8.0 / q, a)
    return K.layernorm_params(2 ** -14, 8.0 / q, rng.normal(1, 0.3, n), rng.normal(0, 0.3, n),
                              1e-12, a, s_residual=(4.0 / q) if with_b else None)


def _reference(op, x, b, params, pre):
    if op == Opcode.VADD:
        return K.add(x, b, params, pre=pre)
    if op == Opcode.VSOFTMAX:
        return K.softmax(x, b, params)
    if op == Opcode.VGELU:
        return K.gelu(x, params, pre=pre)
    return K.layernorm(x, params, residual=b, pre=pre)


CASES = [  # (op, n_rows, n_elems, with_b, pre)
    (Opcode.VADD, 5, 9, True, False), (Opcode.VADD, 3, 16, True, True),
    (Opcode.VSOFTMAX, 6, 1, False, False), (Opcode.VSOFTMAX, 6, 13, True, False),
    (Opcode.VLAYERNORM, 4, 10, False, False), (Opcode.VLAYERNORM, 3, 37, True, True),
    (Opcode.VLAYERNORM, 1, 1, True, False),
    (Opcode.VGELU, 7, 6, False, False), (Opcode.VGELU, 2, 33, False, True),
]


@pytest.mark.parametrize("act_bits", [8, 16])
@pytest.mark.parametrize("op, n_rows, n_elems, with_b, pre", CASES)
def test_golden_op_is_the_kernel_on_the_layout(act_bits, op, n_rows, n_elems, with_b, pre):
    cfg = vcfg(act_bits)
    lanes = cfg.cols
    rng = np.random.default_rng([act_bits, op.value, n_elems])
    g = GoldenBackend(cfg)
    lo, hi = K.act_range(act_bits)
    g.acc[:] = rng.integers(-2 ** 24, 2 ** 24, g.acc.shape)
    g.acc[3, 1], g.acc[4, 2] = -2 ** 31, 2 ** 31 - 1
    g.act[:] = rng.integers(lo, hi + 1, g.act.shape)
    nb = -(-n_elems // lanes)
    params = _params(op, rng, n_elems, act_bits, with_b)
    pre_p = K.prescale_params(rng.uniform(1e-7, 1e-6, n_elems), 2e-6,
                              rng.normal(0, 1e-3, n_elems)) if pre else None
    entries = vector_params(op, params, cfg, pre=pre_p)
    g.param[2:2 + len(entries)] = entries
    src, s_stride, dst, d_stride, b_addr = 7, n_rows + 2, 100, n_rows + 1, 180
    if op == Opcode.VSOFTMAX and with_b:
        mask = np.where(rng.random(nb * lanes) < 0.3, K.mask_sentinel(act_bits), 0)
        g.act[b_addr:b_addr + nb] = mask.reshape(nb, lanes)
    before = g.act.copy()
    f = dict(src_addr=src, src_stride=s_stride, dst_addr=dst, dst_stride=d_stride,
             n_rows=n_rows, n_elems=n_elems, param_addr=2)
    p = Program()
    if op == Opcode.VADD:
        p.vadd(**f, b_addr=b_addr, pre=pre)
    elif op == Opcode.VSOFTMAX:
        p.vsoftmax(**f, mask_addr=b_addr if with_b else None)
    elif op == Opcode.VLAYERNORM:
        p.vlayernorm(**f, residual_addr=b_addr if with_b else None, pre=pre)
    else:
        p.vgelu(**f, pre=pre)
    res = g.execute(p.words, np.zeros(cfg.mem_bytes, np.uint8))
    assert res.status.error == ErrorCode.NONE
    x = _tensor(g.acc, src, s_stride, n_rows, n_elems)
    b = None
    if with_b and op == Opcode.VSOFTMAX:
        b = np.array([before[b_addr + j // lanes, j % lanes] for j in range(n_elems)])
    elif with_b:
        b = _tensor(before, b_addr, d_stride, n_rows, n_elems)
    want = _reference(op, x, b, params, pre_p)
    assert np.array_equal(_tensor(g.act, dst, d_stride, n_rows, n_elems), want)
    # lanes past n_elems in the last block are 0; nothing else in ACT changed
    touched = np.zeros(g.act.shape, bool)
    for k in range(nb):
        touched[dst + k * d_stride:dst + k * d_stride + n_rows] = True
        lanes_used = min(lanes, n_elems - k * lanes)
        assert not g.act[dst + k * d_stride:dst + k * d_stride + n_rows, lanes_used:].any()
    assert np.array_equal(g.act[~touched], before[~touched])


@pytest.mark.parametrize("op", [Opcode.VADD, Opcode.VSOFTMAX, Opcode.VLAYERNORM, Opcode.VGELU])
def test_parameter_entries_round_trip(op):
    cfg = vcfg(16)
    rng = np.random.default_rng(op.value)
    n = 11
    params = _params(op, rng, n, 16, True)
    rules = isa.VECTOR_RULES[op]
    pre = K.prescale_params(np.full(n, 1e-6), 4e-6) if rules.pre else None
    entries = vector_params(op, params, cfg, pre=pre)
    nb = -(-n // cfg.cols)
    assert len(entries) == rules.scalars + rules.channel * nb + (nb if pre is not None else 0)
    got, got_pre = vector_kernel_params(op, entries, cfg, n, pre is not None, with_b=True)
    assert got == params
    if pre is not None:
        for f in ("bias", "multiplier", "shift"):
            assert got_pre[f].tolist() == pre[f].tolist()


def test_any_parameter_bits_decode_to_valid_params():
    """Garbage in the parameter buffer: fields masked and shifts clamped, every kernel runs."""
    cfg = vcfg(16)
    rng = np.random.default_rng(5)
    x = rng.integers(-2 ** 31, 2 ** 31, (3, 9))
    b = rng.integers(-2 ** 15, 2 ** 15, (3, 9))
    for trial in range(20):
        entries = rng.integers(0, 256, (8, cfg.param_entry_bytes), dtype=np.uint8)
        for op in (Opcode.VADD, Opcode.VSOFTMAX, Opcode.VLAYERNORM, Opcode.VGELU):
            params, pre = vector_kernel_params(op, entries, cfg, 9, isa.VECTOR_RULES[op].pre,
                                               with_b=True)
            y = _reference(op, x, b[0] if op == Opcode.VSOFTMAX else b, params, pre)
            assert y.shape == x.shape and y.dtype == np.int16


def test_vector_params_rejects_mismatches():
    cfg = vcfg(16)
    with pytest.raises(TypeError, match="VGELU takes GeluParams"):
        vector_params(Opcode.VGELU, K.softmax_params(0.01, 16), cfg)
    with pytest.raises(ValueError, match="act_bits=8"):
        vector_params(Opcode.VSOFTMAX, K.softmax_params(0.01, 8), cfg)
    with pytest.raises(ValueError, match="no input stage"):
        vector_params(Opcode.VSOFTMAX, K.softmax_params(0.01, 16), cfg,
                      pre=K.prescale_params(1e-6, 4e-6, n_elems=3))


def _word(op: Opcode, **kw) -> int:
    f = dict(dst=0, src_addr=0, src_stride=8, dst_addr=0, dst_stride=8, n_rows=4,
             n_elems=8, param_addr=0, with_b=int(op == Opcode.VADD))
    f.update(kw)
    return isa.encode(op, **f)


BAD = [
    (ErrorCode.BAD_FIELD, _word(Opcode.VGELU, dst=1)),           # only VREQUANT writes WGT
    (ErrorCode.BAD_FIELD, _word(Opcode.VSOFTMAX, transpose=1)),
    (ErrorCode.BAD_FIELD, _word(Opcode.VSOFTMAX, pre=1)),
    (ErrorCode.BAD_FIELD, _word(Opcode.VGELU, with_b=1)),
    (ErrorCode.BAD_FIELD, _word(Opcode.VADD, with_b=0)),
    (ErrorCode.BAD_FIELD, _word(Opcode.VREQUANT, pre=1)),
    (ErrorCode.BAD_FIELD, _word(Opcode.VLAYERNORM, reserved0=4)),
    (ErrorCode.BAD_SIZE, _word(Opcode.VLAYERNORM, n_elems=0)),
    (ErrorCode.BUF_RANGE, _word(Opcode.VADD, b_addr=250)),
    (ErrorCode.BUF_RANGE, _word(Opcode.VSOFTMAX, with_b=1, b_addr=255)),
    (ErrorCode.BUF_RANGE, _word(Opcode.VLAYERNORM, param_addr=62)),   # 1 + 2 entries > 64-62
    (ErrorCode.BUF_RANGE, _word(Opcode.VLAYERNORM, param_addr=60, pre=1)),
    (ErrorCode.BUF_RANGE, _word(Opcode.VGELU, src_addr=250)),
]


@pytest.mark.parametrize("code, word", BAD)
def test_malformed_vector_ops_fault_without_side_effect(code, word):
    cfg = vcfg(16)
    g = GoldenBackend(cfg)
    rng = np.random.default_rng(1)
    g.act[:] = rng.integers(-100, 100, g.act.shape)
    act = g.act.copy()
    res = g.execute([word], np.zeros(cfg.mem_bytes, np.uint8))
    assert res.status.error == code and res.status.fault_index == 0
    assert np.array_equal(g.act, act)


def test_layernorm_parameter_ends_at_the_edge():
    """1 + nb (+ nb with pre) entries from param_addr: the last valid start passes."""
    cfg = vcfg(16)
    g = GoldenBackend(cfg)
    assert g.execute([_word(Opcode.VLAYERNORM, param_addr=61)],
                     np.zeros(cfg.mem_bytes, np.uint8)).status.error == ErrorCode.NONE
    assert g.execute([_word(Opcode.VLAYERNORM, param_addr=59, pre=1)],
                     np.zeros(cfg.mem_bytes, np.uint8)).status.error == ErrorCode.NONE


def test_vector_ops_are_bad_opcode_without_the_unit():
    no_unit = vcfg(16, vector=False)
    for op in isa.VECTOR_OPCODES:
        res = GoldenBackend(no_unit).execute([_word(op)], np.zeros(no_unit.mem_bytes, np.uint8))
        assert res.status.error == ErrorCode.BAD_OPCODE, op
