"""Assembler, disassembler, output-parameter packing and the generated ISA document."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.lib import data, enum
from hypothesis import given, settings, strategies as st

from serrano.hw import isa
from serrano.hw.isa import LoadTarget, Opcode, StoreMode
from serrano.sim import asm
from serrano.sim.asm import Program, disassemble, listing, output_params_dtype, pack_output_params

ROOT = Path(__file__).resolve().parent.parent


def _fields(op: Opcode):
    """(name, width, enum class or None) of every non-opcode field, from the isa layout."""
    out = []
    for name, f in data.Layout.cast(isa.INSTR_LAYOUTS[op]):
        if name == "opcode":
            continue
        enum_cls = f.shape if isinstance(f.shape, type) and issubclass(f.shape, enum.Enum) \
            else None
        out.append((name, f.width, enum_cls))
    return out


@st.composite
def instructions(draw, valid_enums: bool = True):
    op = draw(st.sampled_from(list(Opcode)))
    fields = {}
    for name, width, enum_cls in _fields(op):
        if enum_cls is not None and valid_enums:
            fields[name] = draw(st.sampled_from([m.value for m in enum_cls]))
        else:
            fields[name] = draw(st.one_of(st.integers(0, (1 << width) - 1),
                                          st.sampled_from([0, 1, (1 << width) - 1])))
    return op, fields


# ---- encoding --------------------------------------------------------------------------------

def _amaranth_encode(op: Opcode, fields: dict) -> int:
    """Independent oracle: Amaranth's own constant encoding of the instruction Struct."""
    layout = data.Layout.cast(isa.INSTR_LAYOUTS[op])
    init = {"opcode": op}
    for name, value in fields.items():
        shape = layout[name].shape
        is_enum = isinstance(shape, type) and issubclass(shape, enum.Enum)
        init[name] = shape(value) if is_enum else value
    return layout.const(init).as_value().value


@settings(max_examples=300, deadline=None)
@given(instructions())
def test_encode_matches_amaranth_layout_and_round_trips(instr):
    op, fields = instr
    word = asm.encode(op, **fields)
    assert word == _amaranth_encode(op, fields)
    opcode, decoded = isa.decode(word)
    assert opcode == op.value
    assert decoded == fields


@pytest.mark.parametrize("op", list(Opcode))
@pytest.mark.parametrize("extreme", ["zero", "max"])
def test_every_opcode_field_extremes(op, extreme):
    fields = {}
    for name, width, enum_cls in _fields(op):
        if enum_cls is not None:
            fields[name] = max(m.value for m in enum_cls) if extreme == "max" else 0
        else:
            fields[name] = (1 << width) - 1 if extreme == "max" else 0
    word = asm.encode(op, **fields)
    assert word == _amaranth_encode(op, fields)
    assert word < (1 << isa.INSTR_WIDTH)
    assert isa.decode(word) == (op.value, fields)


def test_program_builder_fields():
    p = Program()
    assert p.load("wgt", buf_addr=3, n_rows=4, row_bytes=5, mem_addr=0x1234, mem_stride=7) == 0
    assert p.matmul(act_addr=1, n_rows=2, wgt_addr=3, acc_addr=4, accumulate=True) == 1
    assert p.store(acc_addr=5, n_rows=6, n_cols=7, mem_addr=8, mem_stride=9, mode="raw",
                   param_addr=10) == 2
    p.nop(); p.fence(); p.halt()
    assert len(p) == 6
    decoded = [isa.decode(w) for w in p.words]
    assert decoded[0] == (Opcode.LOAD.value, dict(
        target=LoadTarget.WGT.value, reserved0=0, buf_addr=3, n_rows=4, row_bytes=5,
        mem_addr=0x1234, mem_stride=7, reserved1=0))
    assert decoded[1] == (Opcode.MATMUL.value, dict(
        accumulate=1, reserved0=0, act_addr=1, n_rows=2, wgt_addr=3, acc_addr=4, reserved1=0))
    assert decoded[2] == (Opcode.STORE.value, dict(
        mode=StoreMode.RAW.value, reserved0=0, acc_addr=5, n_rows=6, n_cols=7, param_addr=10,
        mem_addr=8, mem_stride=9))
    assert [d[0] for d in decoded[3:]] == [Opcode.NOP.value, Opcode.FENCE.value,
                                          Opcode.HALT.value]
    assert p.words[3:] == [isa.encode(Opcode.NOP), isa.encode(Opcode.FENCE),
                           isa.encode(Opcode.HALT)]
    # enum spellings are equivalent
    assert Program().load(LoadTarget.PARAM, 0, 1, 1, 0, 0) == 0
    a, b, c = Program(), Program(), Program()
    a.load(LoadTarget.PARAM, 0, 1, 1, 0, 0)
    b.load("param", 0, 1, 1, 0, 0)
    c.load(2, 0, 1, 1, 0, 0)
    assert a.words == b.words == c.words
    # words is a copy
    w = p.words
    w.append(0)
    assert len(p) == 6


@pytest.mark.parametrize("call, match", [
    (lambda p: p.load("act", -1, 1, 1, 0, 0), "buf_addr"),
    (lambda p: p.load("act", 1 << 16, 1, 1, 0, 0), "buf_addr"),
    (lambda p: p.load("act", 0, 1 << 16, 1, 0, 0), "n_rows"),
    (lambda p: p.load("act", 0, 1, 1, 1 << 32, 0), "mem_addr"),
    (lambda p: p.load("act", 0, 1, 1, 0, 1 << 24), "mem_stride"),
    (lambda p: p.load("bogus", 0, 1, 1, 0, 0), "target"),
    (lambda p: p.load(3, 0, 1, 1, 0, 0), "target"),
    (lambda p: p.load("act", 0, 1.0, 1, 0, 0), "n_rows"),
    (lambda p: p.matmul(0, 1, 0, 1 << 16, 0), "acc_addr"),
    (lambda p: p.store(0, 1, 256, 0, 0, "raw"), "n_cols"),
    (lambda p: p.store(0, 1, 1, 0, 0, "raw", param_addr=-1), "param_addr"),
    (lambda p: p.store(0, 1, 1, 0, 0, 2), "mode"),
    (lambda p: p.emit(1 << 128), "instruction word"),
    (lambda p: p.emit(-1), "instruction word"),
])
def test_out_of_range_fields_raise(call, match):
    p = Program()
    with pytest.raises(ValueError, match=match):
        call(p)
    assert len(p) == 0


def test_unknown_field_raises():
    with pytest.raises(ValueError, match="no field"):
        asm.encode(Opcode.MATMUL, bogus=1)
    with pytest.raises(ValueError, match="no field"):
        isa.encode(Opcode.MATMUL, bogus=1)


def test_emit_raw_words():
    p = Program()
    p.emit(0x7F)
    p.emit(np.uint64(5))
    assert p.words == [0x7F, 5]


# ---- disassembler ----------------------------------------------------------------------------

def test_disassemble_every_opcode():
    assert disassemble(asm.encode(Opcode.NOP)) == "NOP"
    assert disassemble(asm.encode(Opcode.HALT)) == "HALT"
    assert disassemble(asm.encode(Opcode.FENCE)) == "FENCE"
    assert disassemble(asm.encode(Opcode.LOAD, target="act", buf_addr=1, n_rows=2,
                                  row_bytes=3, mem_addr=0x40, mem_stride=5)) == \
        "LOAD target=ACT buf_addr=1 n_rows=2 row_bytes=3 mem_addr=0x40 mem_stride=5"
    assert disassemble(asm.encode(Opcode.MATMUL, accumulate=1, act_addr=1, n_rows=2,
                                  wgt_addr=3, acc_addr=4)) == \
        "MATMUL accumulate=1 act_addr=1 n_rows=2 wgt_addr=3 acc_addr=4"
    assert disassemble(asm.encode(Opcode.STORE, mode="requant", acc_addr=1, n_rows=2,
                                  n_cols=3, param_addr=4, mem_addr=0x10, mem_stride=6)) == \
        "STORE mode=REQUANT acc_addr=1 n_rows=2 n_cols=3 param_addr=4 mem_addr=0x10 mem_stride=6"


def test_disassemble_bad_words():
    assert "bad opcode 0x06" in disassemble(0x06)
    assert "bad opcode 0xff" in disassemble(0xFF)
    # reserved bits and unassigned enum values are visible
    text = disassemble(asm.encode(Opcode.NOP, reserved0=3))
    assert text == "NOP reserved0=0x3"
    target = data.Layout.cast(isa.LoadInstr)["target"]
    word = asm.encode(Opcode.LOAD, n_rows=1, row_bytes=1) | (3 << target.offset)
    text = disassemble(word)
    assert text.startswith("LOAD target=3 ")


def test_listing():
    p = Program()
    for _ in range(11):
        p.nop()
    p.halt()
    lines = listing(p.words).splitlines()
    assert len(lines) == 12
    assert lines[0] == " 0: NOP"
    assert lines[11] == "11: HALT"
    assert p.listing() == listing(p.words)
    assert listing([]) == ""


# ---- output parameters -----------------------------------------------------------------------

def test_output_params_dtype_matches_layout():
    dt = output_params_dtype()
    layout = data.Layout.cast(isa.OutputParams)
    assert dt.itemsize == isa.OUTPUT_PARAMS_BYTES == 12
    assert list(dt.names) == [name for name, _ in layout]
    for name, f in layout:
        fdt, offset = dt.fields[name]
        assert offset * 8 == f.offset
        assert fdt.itemsize * 8 == f.width
        assert fdt.kind == ("i" if f.shape.signed else "u")


@settings(max_examples=100, deadline=None)
@given(st.integers(-(1 << 31), (1 << 31) - 1), st.integers(-(1 << 31), (1 << 31) - 1),
       st.integers(-31, 30), st.integers(-128, 127), st.integers(-128, 127),
       st.integers(-128, 127))
def test_pack_matches_amaranth_const(bias, mult, shift, zp, lo, hi):
    packed = pack_output_params(bias, mult, shift, zp, lo, hi, cols=1)
    assert packed.shape == (1, 12) and packed.dtype == np.uint8
    value = data.Layout.cast(isa.OutputParams).const(dict(
        bias=bias, multiplier=mult, shift=shift, zero_point=zp, lo=lo, hi=hi)).as_value().value
    assert int.from_bytes(packed.tobytes(), "little") == value


def test_pack_entries_and_padding():
    bias = np.arange(5, dtype=np.int32) - 2
    packed = pack_output_params(bias, 1 << 30, [-1, -2, -3, -4, -5], 3, -128, 127, cols=4)
    assert packed.shape == (2, 48)
    rec = asm.unpack_output_params(packed)
    assert rec.shape == (8,)
    assert list(rec["bias"]) == [-2, -1, 0, 1, 2, 0, 0, 0]
    assert list(rec["shift"]) == [-1, -2, -3, -4, -5, 0, 0, 0]
    assert list(rec["multiplier"][:5]) == [1 << 30] * 5
    assert list(rec["zero_point"]) == [3] * 5 + [0] * 3
    assert list(rec["hi"]) == [127] * 5 + [0] * 3
    assert not packed[1, 12:].any()  # padding columns are all-zero


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(shift=31), ValueError, "shift"),
    (dict(shift=-32), ValueError, "shift"),
    (dict(zero_point=128), ValueError, "zero_point"),
    (dict(bias=1 << 31), ValueError, "bias"),
    (dict(multiplier=1.5), TypeError, "multiplier"),
    (dict(bias=[1, 2, 3], shift=[1, 2]), ValueError, "different lengths"),
    (dict(lo=[[1]]), ValueError, "lo"),
    (dict(cols=0), ValueError, "cols"),
])
def test_pack_errors(kwargs, exc, match):
    args = dict(bias=0, multiplier=1 << 30, shift=0, zero_point=0, lo=-128, hi=127, cols=4)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        pack_output_params(**args)


# ---- generated ISA document ------------------------------------------------------------------

def test_isa_doc_is_up_to_date():
    from serrano.commands import gen_isa_doc
    expected = gen_isa_doc.generate()
    current = (ROOT / "docs" / "isa.md").read_text()
    assert current == expected, "docs/isa.md is stale: run python scripts/gen_isa_doc.py"
    # The document covers every opcode, field doc and error code.
    for op in Opcode:
        assert f"### {op.name} (0x{op.value:02X})" in expected
    for code in isa.ErrorCode:
        assert f"`{code.name}`" in expected
    for doc in isa.FIELD_DOCS.values():
        assert doc in expected


def test_gen_isa_doc_cli(tmp_path):
    out = tmp_path / "isa.md"
    script = str(ROOT / "scripts" / "gen_isa_doc.py")
    r = subprocess.run([sys.executable, script, "--out", str(out)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert out.read_text().startswith("# Serrano instruction set")
    r = subprocess.run([sys.executable, script, "--out", str(out), "--check"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0
    out.write_text("stale")
    r = subprocess.run([sys.executable, script, "--out", str(out), "--check"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "out of date" in r.stderr
