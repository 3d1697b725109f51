"""Design-space sweep tests: a two-point sweep on a local Dask cluster and one on an existing
scheduler, with the CSV/JSON/plots checked against the per-point reports."""

import csv
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("luts.png", "dsps.png", "bram.png", "fmax.png", "gops.png")


def _sweep_module():
    from serrano.commands import sweep
    return sweep


def _rows(out):
    with open(out / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_point_sweep_local_cluster(tmp_path):
    sweep = _sweep_module()
    out = tmp_path / "sweep"
    assert sweep.main(["--sizes", "1x1,2x2", "--devices", "ice40-up5k", "--block", "array",
                       "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    rows = _rows(out)
    assert [(r["rows"], r["cols"]) for r in rows] == [("1", "1"), ("2", "2")]
    for r in rows:
        assert r["status"] == "ok", r
        rep = json.loads((Path(r["report"]).parent / "report.json").read_text())
        assert int(r["LUT"]) == rep["resources"]["LUT"]["used"] > 0
        assert int(r["DSP"]) == rep["resources"]["DSP"]["used"]
        assert int(r["LUT_available"]) == 5280 and int(r["DSP_available"]) == 8
        fmax = float(r["fmax_mhz"])
        assert fmax == min(c["achieved_mhz"] for c in rep["timing"]["clocks"]) > 0
        pes = int(r["rows"]) * int(r["cols"])
        assert int(r["pes"]) == pes
        assert float(r["peak_gops"]) == pytest.approx(2 * pes * fmax / 1000, abs=1e-3)
        assert r["critical_start"] and r["critical_end"]
    # More PEs, more of the array.
    assert int(rows[1]["LUT"]) + int(rows[1]["DSP"]) > int(rows[0]["LUT"]) + int(rows[0]["DSP"])
    data = json.loads((out / "sweep.json").read_text())
    assert data["command"].startswith("python scripts/sweep.py --sizes 1x1,2x2")
    assert [p["pes"] for p in data["points"]] == [1, 4]
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_sweep_on_existing_scheduler(tmp_path):
    """Points go to a scheduler given by its address (generic gate counts: no P&R)."""
    from dask.distributed import LocalCluster
    sweep = _sweep_module()
    out = tmp_path / "sweep"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster:  # any free port: 8787 may be taken
        assert sweep.main(["--sizes", "1x1,2x1", "--devices", "generic", "--block", "array",
                           "--out", str(out), "--scheduler", cluster.scheduler_address,
                           "--no-progress"]) == 0
    rows = _rows(out)
    assert [(r["device"], r["pes"], r["status"]) for r in rows] == \
        [("generic", "1", "ok"), ("generic", "2", "ok")]
    assert all(int(r["LUT"]) > 0 and r["fmax_mhz"] == "" for r in rows)   # gates, no timing
    assert int(rows[1]["LUT"]) > int(rows[0]["LUT"])


def test_sweep_point_records_misfits(tmp_path):
    """A point that cannot fit is recorded as such (before any tool runs), not fatal."""
    from serrano.flows.sweep import sweep_point
    result = sweep_point({"device": "ecp5-25k", "block": "accelerator",
                          "config": {"rows": 2, "cols": 2, "act_depth": 65536},
                          "out_dir": str(tmp_path / "p")})
    assert result["status"] == "does not fit" and "block RAMs" in result["error"]
    assert result["report"] is None
    bad = sweep_point({"device": "ecp5-25k", "config": {"rows": 0, "cols": 2},
                       "out_dir": str(tmp_path / "q")})
    assert bad["status"] == "bad config" and "rows" in bad["error"]
    sweep = _sweep_module()
    row = sweep.row_of({"device": "ecp5-25k", "block": "accelerator", "out_dir": "x",
                        "config": {"rows": 2, "cols": 2, "act_depth": 65536,
                                   "acc_depth": 1024}}, result)
    assert row["status"] == "does not fit" and row["LUT"] == "" and row["pes"] == 4


def test_sweep_arguments(capsys):
    sweep = _sweep_module()
    assert sweep.main(["--devices", "ice40-up5k,virtex7", "--out", "/nonexistent/x"]) == 2
    assert "unknown device 'virtex7'" in capsys.readouterr().err
    assert sweep.main(["--block", "fpu", "--out", "/nonexistent/x"]) == 2
    with pytest.raises(SystemExit):
        sweep.parse_args(["--sizes", "4by4"])
