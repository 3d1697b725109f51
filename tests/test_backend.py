"""The helpers every backend shares (sim/backend.py): status and counter decoding from the
``isa`` layouts, the waveform option, the cycle budget; and the constants the compiled
model's C++ harness gets from Python instead of spelling them itself."""

import re
from pathlib import Path

import numpy as np
import pytest
from amaranth.lib import data

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import ErrorCode, Opcode, encode
from serrano.sim import backend as be
from serrano.sim import compiled
from serrano.sim.backend import (COUNTER_NAMES, RunStatus, check_max_cycles, check_mem_latency,
                                 check_vcd, counters_from_bits, join_words, resolve_vcd,
                                 unpack_fields)
from serrano.sim.pysim import PysimBackend

CSRC = Path(compiled.__file__).resolve().parent / "csrc"


# ---- decoding --------------------------------------------------------------------------------

@pytest.mark.parametrize("error", list(ErrorCode))
def test_status_from_bits_matches_the_layout(error):
    layout = data.Layout.cast(isa.Status)
    raw = layout.const({"busy": 1, "done": 1, "error": error, "idle": 0,
                        "fault_index": 0xDEADBEEF}).as_value().value
    assert RunStatus.from_bits(raw) == RunStatus(done=True, error=error,
                                                 fault_index=0xDEADBEEF)
    raw = layout.const({"idle": 1}).as_value().value
    assert RunStatus.from_bits(raw) == RunStatus(done=False, error=ErrorCode.NONE,
                                                 fault_index=0)
    # Bits above the layout (the padding of a word array) are ignored.
    assert RunStatus.from_bits(raw | (1 << layout.size)) == RunStatus.from_bits(raw)


def test_status_with_an_unknown_error_code_is_rejected():
    layout = data.Layout.cast(isa.Status)
    raw = 15 << layout["error"].offset
    with pytest.raises(ValueError):
        RunStatus.from_bits(raw)
    assert unpack_fields(isa.Status, raw)["error"] == 15  # the raw field, for the UART driver


def test_counters_from_bits_and_words():
    layout = data.Layout.cast(isa.Counters)
    values = {name: (i + 1) * 1_000_003 + (i << 40) for i, name in enumerate(COUNTER_NAMES)}
    raw = layout.const(values).as_value().value
    assert counters_from_bits(raw) == values
    assert list(counters_from_bits(raw)) == [name for name, _ in layout]
    words = [(raw >> (32 * i)) & 0xFFFFFFFF for i in range(-(-layout.size // 32))]
    assert join_words(words) == raw
    assert unpack_fields(isa.Counters, raw.to_bytes(layout.size // 8, "little")) == values


# ---- options -------------------------------------------------------------------------------

def test_check_vcd():
    assert check_vcd(None) is None and check_vcd(False) is False and check_vcd(True) is True
    assert check_vcd("a/b.vcd") == Path("a/b.vcd")
    with pytest.raises(TypeError, match="vcd must be a path, True or None, not int"):
        check_vcd(3)


def test_resolve_vcd(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "run.vcd"
    assert resolve_vcd(path, "x") == path and path.parent.is_dir()
    assert resolve_vcd(None, "x") is None and resolve_vcd(False, "x") is None
    monkeypatch.setattr(be, "_PROJECT_ROOT", tmp_path)
    stamped = resolve_vcd(True, "pysim")
    assert stamped.parent == tmp_path / "build" / "waves" and stamped.parent.is_dir()
    assert re.fullmatch(r"pysim-\d{8}-\d{6}-\d+\.vcd", stamped.name)
    # The environment variable is read only for vcd=None.
    for value, expect in (("", None), ("0", None), (str(path), path)):
        monkeypatch.setenv("SERRANO_TEST_VCD", value)
        assert resolve_vcd(None, "x", env_var="SERRANO_TEST_VCD") == expect
    monkeypatch.setenv("SERRANO_TEST_VCD", "1")
    assert resolve_vcd(None, "x", env_var="SERRANO_TEST_VCD").name.startswith("x-")
    assert resolve_vcd(False, "x", env_var="SERRANO_TEST_VCD") is None
    assert resolve_vcd(None, "x") is None


def test_check_max_cycles():
    assert check_max_cycles(None, 123) == 123
    assert check_max_cycles(None, None) is None
    assert check_max_cycles(np.int64(7), 123) == 7 and type(check_max_cycles(7, 1)) is int
    assert check_max_cycles(0, 123) == 0
    for bad in (-1, True, 2.5, "10"):
        with pytest.raises(ValueError, match="max_cycles must be a non-negative integer"):
            check_max_cycles(bad, 123)


def test_check_mem_latency():
    assert check_mem_latency(1) == 1
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="mem_latency"):
            check_mem_latency(bad)


def test_pysim_options_use_the_shared_checks(tmp_path):
    cfg = AcceleratorConfig(rows=2, cols=2, act_depth=8, acc_depth=8, param_depth=2,
                            mem_width=4, mem_bytes=256)
    with pytest.raises(ValueError, match="mem_latency"):
        PysimBackend(cfg, mem_latency=0)
    with pytest.raises(TypeError, match="vcd"):
        PysimBackend(cfg, vcd=3)
    sim = PysimBackend(cfg, vcd=tmp_path / "w" / "halt.vcd")
    halt = [encode(Opcode.HALT)]
    with pytest.raises(ValueError, match="max_cycles"):
        sim.run(halt, np.zeros(8, np.uint8), max_cycles=-1)
    assert sim.run(halt, np.zeros(8, np.uint8), max_cycles=100).status.ok
    assert sim.last_vcd == tmp_path / "w" / "halt.vcd" and sim.last_vcd.stat().st_size > 0


# ---- constants the C++ harness gets from Python -------------------------------------------

def test_run_end_codes_are_generated_not_spelled_in_cpp():
    header = compiled._config_header(AcceleratorConfig(), trace=False)
    for end in compiled.RunEnd:
        assert f"END_{end.name} = {end.value}" in header
    for src in CSRC.iterdir():
        text = src.read_text()
        assert not re.search(r"END_\w+\s*=", text), f"{src.name} defines a RunEnd value"
        assert "enum RunEnd" not in text, src.name
    assert f"#define SERRANO_WORD_BITS {compiled._WORD_BITS}" in header


def test_header_offsets_come_from_the_status_layout():
    header = compiled._config_header(AcceleratorConfig(), trace=False)
    layout = data.Layout.cast(isa.Status)
    assert f"#define SERRANO_STATUS_DONE_OFFSET {layout['done'].offset}\n" in header
    assert f"#define SERRANO_STATUS_IDLE_OFFSET {layout['idle'].offset}\n" in header
