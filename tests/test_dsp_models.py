"""The instantiated DSP primitives against cell simulation models, in Verilator.

Every other test simulates ``hw.mult.Multiplier`` and ``hw.output_stage.OutputStage`` with
``simulation=True``, i.e. with the cycle-equivalent Amaranth model in place of ``SB_MAC16`` /
``MULT18X18D``. Here the Verilog with the real instances (``simulation=False``) runs against
the cells' simulation models (``tests/dsp_sim.py``: Yosys' ``SB_MAC16`` model as shipped; for
``MULT18X18D``, of which Yosys ships only a blackbox, that blackbox's declarations with a
behavioural body written from Lattice's documentation), and the results are compared with
Python's products and ``sim.numerics.output_stage``, cycle by cycle, at the block's latency.

The compiled models are cached under ``build/dsp_models`` (keyed by the generated Verilog, the
cell models and the Verilator version): one build of everything, ~25 s cold.
"""

import numpy as np
import pytest
from amaranth import Module
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

import dsp_sim
from serrano.hw.config import AcceleratorConfig
from serrano.hw.mult import Multiplier, MultiplierTarget
from serrano.hw.output_stage import OutputStage
from serrano.sim.numerics import INT32_MAX, INT32_MIN, output_stage
from test_output_stage import PARAM_FIELDS, Row, corner_rows, halfword_rows, random_rows

_MISSING = dsp_sim.missing_prerequisites()
pytestmark = pytest.mark.skipif(bool(_MISSING), reason="DSP cell-model simulation needs "
                                + "; ".join(_MISSING))


# ---- multipliers ------------------------------------------------------------------------------

# (kind, width, latency): every DSP register configuration (internal registers 1..3) and
# fabric registers after the DSP (ice40 4, ecp5 4 and 5). Width 16 is the 16-bit activation
# PE's int16 x int8 (a16 x b8), the others are width x width.
MULT_VARIANTS = ([("ice40", w, lat) for w in (8, 16) for lat in (1, 2, 3, 4)]
                 + [("ecp5", w, lat) for w in (8, 16, 18) for lat in (1, 2, 3, 4, 5)])
# Stimulus columns (a, b) of each width, and the operand widths.
_OPERANDS = {8: (0, 1), 18: (2, 3), 16: (5, 1)}
_OPERAND_WIDTHS = {8: (8, 8), 18: (18, 18), 16: (16, 8)}


def _pname(kind, width, latency):
    return f"p_{kind}_w{width}_l{latency}"


_MULT_INPUTS = ["a8", "b8", "a18", "b18", "en", "a16"]


class MultiplierBench(wiring.Component):
    """Every variant of MULT_VARIANTS side by side: 8-bit ones on a8/b8, 18-bit on a18/b18,
    16x8 on a16/b8, one shared clock enable; ports are plain bit patterns."""

    def __init__(self):
        ports = {"a8": In(8), "b8": In(8), "a18": In(18), "b18": In(18), "en": In(1),
                 "a16": In(16)}
        ports.update({_pname(*v): Out(sum(_OPERAND_WIDTHS[v[1]])) for v in MULT_VARIANTS})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        for kind, width, latency in MULT_VARIANTS:
            a_width, b_width = _OPERAND_WIDTHS[width]
            mult = Multiplier(kind, latency=latency, a_width=a_width, b_width=b_width,
                              simulation=False)
            m.submodules[f"m_{kind}_w{width}_l{latency}"] = mult
            a, b = (getattr(self, _MULT_INPUTS[i]) for i in _OPERANDS[width])
            m.d.comb += [mult.a.eq(a), mult.b.eq(b), mult.en.eq(self.en),
                         getattr(self, _pname(kind, width, latency)).eq(mult.p)]
        return m


def _signed(values, width):
    v = np.asarray(values, dtype=np.int64) & ((1 << width) - 1)
    return np.where(v >> (width - 1), v - (1 << width), v)


CORNERS_8 = [-128, -127, -65, -64, -1, 0, 1, 2, 63, 64, 126, 127]
CORNERS_16 = [-(1 << 15), -(1 << 15) + 1, -(1 << 14), -257, -256, -129, -128, -1, 0, 1, 127,
              128, 255, 256, (1 << 14) - 1, 1 << 14, (1 << 15) - 2, (1 << 15) - 1]
CORNERS_18 = [-(1 << 17), -(1 << 17) + 1, -(1 << 16) - 1, -(1 << 16), -(1 << 15), -257, -256,
              -129, -128, -1, 0, 1, 127, 128, 255, 256, (1 << 15) - 1, 1 << 15, (1 << 16) - 1,
              1 << 16, (1 << 17) - 2, (1 << 17) - 1]


def _mult_stimulus() -> np.ndarray:
    """Columns a8, b8, a18, b18, en, a16. First every 8x8 pair (65,536 cycles, the 18-bit
    operands cycling through their corner pairs, then random; a16 holds each of its corners
    for 256 cycles, i.e. against every b8, then random), en held high; then 4,000 random
    cycles with en low 25 % of the time (stalls of every register)."""
    rng = np.random.default_rng(2024)
    a8, b8 = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    a8, b8 = a8.ravel(), b8.ravel()
    n = len(a8)
    c18 = np.array(CORNERS_18)
    ca, cb = np.meshgrid(c18, c18, indexing="ij")
    a18 = rng.integers(-(1 << 17), 1 << 17, n)
    b18 = rng.integers(-(1 << 17), 1 << 17, n)
    a18[:ca.size], b18[:cb.size] = ca.ravel(), cb.ravel()
    a16 = rng.integers(-(1 << 15), 1 << 15, n)
    a16[:256 * len(CORNERS_16)] = np.repeat(CORNERS_16, 256)
    en = np.ones(n, dtype=np.int64)
    m = 4000
    a8 = np.concatenate([a8, rng.integers(-128, 128, m)])
    b8 = np.concatenate([b8, rng.integers(-128, 128, m)])
    a18 = np.concatenate([a18, rng.choice(c18, m) * (rng.random(m) < 0.3)
                          + rng.integers(-(1 << 17), 1 << 17, m) * (rng.random(m) >= 0.3)])
    b18 = np.concatenate([b18, rng.integers(-(1 << 17), 1 << 17, m)])
    en = np.concatenate([en, (rng.random(m) >= 0.25).astype(np.int64)])
    a16 = np.concatenate([a16, rng.integers(-(1 << 15), 1 << 15, m)])
    return np.stack([a8 & 0xFF, b8 & 0xFF, a18 & 0x3FFFF, b18 & 0x3FFFF, en, a16 & 0xFFFF],
                    axis=1)


def _expected_products(a, b, en, latency):
    """``expected[t]``: the product of the operands of the ``latency``-th most recent enabled
    cycle before ``t`` (-1 where fewer cycles were enabled: not checked)."""
    enabled = np.flatnonzero(en)
    count = np.concatenate([[0], np.cumsum(en)[:-1]])   # enabled cycles before t
    valid = count >= latency
    src = enabled[np.where(valid, count - latency, 0)]
    return valid, a[src] * b[src]


@pytest.fixture(scope="module")
def mult_run():
    stim = _mult_stimulus()
    out = _block().run_named({f"m_{n}": stim[:, i] for i, n in enumerate(_MULT_INPUTS)})
    return stim, {v: np.array(out[f"m_{_pname(*v)}"], dtype=np.int64) for v in MULT_VARIANTS}


def _mult_mismatches(stim, got, kind, width, latency):
    (col_a, col_b), (a_width, b_width) = _OPERANDS[width], _OPERAND_WIDTHS[width]
    a, b = _signed(stim[:, col_a], a_width), _signed(stim[:, col_b], b_width)
    valid, want = _expected_products(a, b, stim[:, 4], latency)
    got = _signed(got, a_width + b_width)
    bad = np.flatnonzero(valid & (got != want))
    return valid, bad, want, got


@pytest.mark.parametrize("variant", MULT_VARIANTS, ids=[_pname(*v)[2:] for v in MULT_VARIANTS])
def test_multiplier_primitive_matches_products(mult_run, variant):
    kind, width, latency = variant
    stim, outs = mult_run
    valid, bad, want, got = _mult_mismatches(stim, outs[variant], kind, width, latency)
    assert valid.sum() > len(stim) - 10
    details = [f"cycle {t}: want {want[t]}, got {got[t]}" for t in bad[:5]]
    assert not len(bad), (f"{kind} width {width} latency {latency}: {len(bad)} mismatches "
                          f"(first: {details})")


def test_multiplier_check_detects_wrong_latency(mult_run):
    """The comparison is tight: one cycle more or less than the block's latency fails."""
    stim, outs = mult_run
    for kind, width, latency in MULT_VARIANTS:
        for wrong in (latency - 1, latency + 1):
            if wrong < 1:
                continue
            _, bad, _, _ = _mult_mismatches(stim, outs[(kind, width, latency)], kind, width,
                                            wrong)
            assert len(bad) > len(stim) // 2, (kind, width, latency, wrong)


# ---- output stage -----------------------------------------------------------------------------

_OS_INPUTS = ["valid", "acc", "bias", "mult", "shift", "zp", "lo", "hi", "tag"]
_OS_WIDTHS = [1, 32, 32, 32, 8, 8, 8, 8, 8]
_OS_OUTPUTS = ["o_valid", "o_data", "o_tag"]


class OutputStageBench(wiring.Component):
    """A one-column OutputStage with flat ports (no port wider than 64 bits)."""

    def __init__(self, family: str):
        self._target = MultiplierTarget(family=family, simulation=False)
        ports = {n: In(w) for n, w in zip(_OS_INPUTS, _OS_WIDTHS)}
        ports.update({"o_valid": Out(1), "o_data": Out(8), "o_tag": Out(8)})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        m.submodules.os = dut = OutputStage(AcceleratorConfig(rows=1, cols=1), 8, self._target)
        p = dut.i_params[0]
        m.d.comb += [
            dut.i_valid.eq(self.valid), dut.i_acc[0].eq(self.acc), dut.i_tag.eq(self.tag),
            p.bias.eq(self.bias), p.multiplier.eq(self.mult), p.shift.eq(self.shift),
            p.zero_point.eq(self.zp), p.lo.eq(self.lo), p.hi.eq(self.hi),
            self.o_valid.eq(dut.o_valid), self.o_data.eq(dut.o_data[0]),
            self.o_tag.eq(dut.o_tag),
        ]
        return m


class Benches(wiring.Component):
    """Everything checked here in one top level, so that one Verilator build (~25 s cold,
    cached afterwards) serves every test: the multipliers (ports ``m_*``) and the iCE40 and
    ECP5 output stages (ports ``ice40_*``, ``ecp5_*``), each driven on its own ports."""

    def __init__(self):
        self._parts = {"m": MultiplierBench(), "ice40": OutputStageBench("ice40"),
                       "ecp5": OutputStageBench("ecp5")}
        ports = {}
        for prefix, part in self._parts.items():
            for name, member in part.signature.members.items():
                ports[f"{prefix}_{name}"] = member
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        for prefix, part in self._parts.items():
            m.submodules[prefix] = part
            for name, member in part.signature.members.items():
                outer, inner = getattr(self, f"{prefix}_{name}"), getattr(part, name)
                m.d.comb += inner.eq(outer) if member.flow == In else outer.eq(inner)
        return m


_BLOCK = None


def _block() -> dsp_sim.VerilatedBlock:
    global _BLOCK
    if _BLOCK is None:
        top = Benches()
        names = list(top.signature.members.keys())
        inputs = [n for n in names if top.signature.members[n].flow == In]
        outputs = [n for n in names if n not in inputs]
        _BLOCK = dsp_sim.VerilatedBlock(
            verilog.convert(top, name="top"),
            [dsp_sim.sb_mac16_model(), dsp_sim.mult18x18d_model()], inputs, outputs)
    return _BLOCK


def _shift_sweep_rows(rng: np.random.Generator) -> list[Row]:
    """Every 8-bit shift field value (the defined -31..30 and the saturated rest) with full-range,
    extreme and small operands, and INT32_MIN / INT32_MAX multipliers."""
    rows = []
    accs = [INT32_MIN, INT32_MAX, -1, 1, 0x4000_0001, -0x4000_0001]
    muls = [INT32_MIN, INT32_MAX, 1 << 30, INT32_MIN + 1]
    for shift in range(-128, 128):
        for k in range(4):
            acc = accs[(shift + k) % len(accs)] if k < 2 else int(rng.integers(INT32_MIN,
                                                                               INT32_MAX))
            mul = muls[(shift + 3 * k) % len(muls)] if k != 3 else int(
                rng.integers(INT32_MIN, INT32_MAX))
            zp = int(rng.integers(-128, 128))
            lo, hi = sorted(rng.integers(-128, 128, 2)) if k != 2 else (50, -50)  # lo > hi
            rows.append(Row(np.array([acc]), dict(
                bias=np.array([0 if k < 2 else int(rng.integers(INT32_MIN, INT32_MAX))]),
                multiplier=np.array([mul]), shift=np.array([shift]),
                zero_point=np.array([zp]), lo=np.array([lo]), hi=np.array([hi]))))
    return rows


def _os_rows(seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    rows = corner_rows(1) + _shift_sweep_rows(rng) + halfword_rows(rng, 1, 1500)
    rows += random_rows(rng, 1, 3000)
    # lo > hi with random everything else
    for row in random_rows(rng, 1, 300):
        row.params["lo"], row.params["hi"] = (np.maximum(row.params["lo"], row.params["hi"]),
                                              np.minimum(row.params["lo"], row.params["hi"]))
        rows.append(row)
    return rows


def _os_check(family: str, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    rows = _os_rows(seed)
    probe = OutputStage(AcceleratorConfig(rows=1, cols=1), 8, MultiplierTarget(family=family))
    probe._MustUse__silence = True   # only asked for its latency
    latency = probe.latency
    # The rows back to back, then with idle cycles (junk on the data inputs) between them.
    stream: list[Row | None] = []
    for i, row in enumerate(rows):
        stream.append(row)
        if i >= len(rows) // 2 and rng.random() < 0.3:
            stream += [None] * int(rng.integers(1, 4))
    stream += [None] * (latency + 2)
    stim = np.zeros((len(stream), len(_OS_INPUTS)), dtype=object)
    for t, row in enumerate(stream):
        if row is None:
            vals = [0, *(int(x) for x in rng.integers(0, 1 << 32, 3)),
                    *(int(x) for x in rng.integers(0, 256, 5))]
        else:
            p = row.params
            vals = [1, row.acc[0], p["bias"][0], p["multiplier"][0], p["shift"][0],
                    p["zero_point"][0], p["lo"][0], p["hi"][0], t & 0xFF]
        stim[t] = [int(v) & ((1 << w) - 1) for v, w in zip(vals, _OS_WIDTHS)]

    # Expected outputs, all rows at once (one row per numerics "column").
    acc = np.array([r.acc[0] for r in rows], dtype=np.int64)
    par = {f: np.array([r.params[f][0] for r in rows], dtype=np.int64) for f in PARAM_FIELDS}
    want_rows = output_stage(acc[None, :], par["bias"], par["multiplier"],
                             np.clip(par["shift"], -31, 30), par["zero_point"], par["lo"],
                             par["hi"])[0]
    want = {}
    k = 0
    for t, row in enumerate(stream):
        if row is not None:
            want[t + latency] = (int(want_rows[k]), t & 0xFF, row)
            k += 1

    named = _block().run_named({f"{family}_{n}": stim[:, i] for i, n in enumerate(_OS_INPUTS)})
    out = np.stack([named[f"{family}_{n}"] for n in _OS_OUTPUTS], axis=1)
    errors = []
    for t in range(latency, len(stream)):
        o_valid, o_data, o_tag = (int(x) for x in out[t])
        if t not in want:
            if o_valid:
                errors.append(f"cycle {t}: o_valid without an input row")
            continue
        data, tag, row = want[t]
        got = dsp_sim.to_signed(o_data, 8)
        if not o_valid or got != data or o_tag != tag:
            errors.append(f"cycle {t}: valid {o_valid}, data {got} (want {data}), "
                          f"tag {o_tag} (want {tag}); acc {row.acc[0]}, "
                          + ", ".join(f"{f} {row.params[f][0]}" for f in PARAM_FIELDS))
    assert not errors, f"{family}: {len(errors)} errors, first: " + "\n".join(errors[:8])
    assert k == len(rows) and len(want) > 5000


def test_output_stage_ice40_sb_mac16():
    """The iCE40 OutputStage (latency 7, four SB_MAC16 per column with per-operand signedness,
    one of them latency 3) through Yosys' SB_MAC16 model."""
    _os_check("ice40", seed=7)


def test_output_stage_ecp5_mult18x18d():
    """The ECP5 OutputStage (three Karatsuba MULT18X18D per column on zero-/sign-extended
    16-bit halves and their 18-bit sums) through the MULT18X18D model."""
    _os_check("ecp5", seed=11)
