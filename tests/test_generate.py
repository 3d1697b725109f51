"""Verilog generation: the top level converts, lints clean in Verilator and reads into Yosys."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "generate.py"


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3)])
def test_generate_lint_and_yosys_read(tmp_path, rows, cols):
    res = subprocess.run([sys.executable, str(SCRIPT), "--rows", str(rows), "--cols", str(cols),
                          "--act-depth", "64", "--acc-depth", "32", "--out", str(tmp_path),
                          "--lint"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Yosys read: clean" in res.stdout
    verilog = (tmp_path / "serrano.v").read_text()
    assert "module serrano(" in verilog
    for port in ("instr__payload", "mem__req__valid", "mem__resp__payload", "status",
                 "counters", "clear"):
        assert port in verilog, port
    assert (tmp_path / "serrano.il").stat().st_size > 0


def test_generate_rejects_a_bad_configuration(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--rows", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "rows must be a positive integer, not 0" in res.stderr
