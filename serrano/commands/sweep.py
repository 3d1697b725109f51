#!/usr/bin/env python3
"""Design-space sweep: synthesize a grid of configurations on dask.distributed, collect the
reports into CSV/JSON and plot LUTs, DSPs, block RAM, Fmax and peak GOPS against array size.

    python scripts/sweep.py --sizes 2x2,4x4,8x8 --act-depths 512,2048 \\
        --devices ecp5-85k,ice40-up5k --out build/sweep

Runs on a local cluster by default (``--workers``), or on an existing Dask scheduler
(``--scheduler tcp://HOST:PORT``; its workers need this project installed). Each point is one
``serrano.flows.flow.run_flow``; a point that does not fit its device is recorded as such, not
dropped. Peak GOPS = 2 x rows x cols x Fmax.
"""

import argparse
import csv
import itertools
import json
import shlex
import sys
import time
from pathlib import Path


from serrano.flows.designs import BLOCKS
from serrano.flows.devices import DEVICES
from serrano.flows.sweep import sweep_point

COLUMNS = ["device", "block", "rows", "cols", "pes", "act_depth", "acc_depth", "status",
           "LUT", "LUT_available", "FF", "DSP", "DSP_available", "BRAM", "BRAM_available",
           "SPRAM", "dsp_pes", "lut_pes", "fmax_mhz", "requested_mhz", "peak_gops",
           "critical_start", "critical_end", "runtime_s", "report", "error"]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        try:
            r, c = (int(v) for v in item.split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad array size {item!r}: use RxC, e.g. 4x4")
        sizes.append((r, c))
    return sizes


def parse_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad list of integers {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes("2x2,4x4,8x8"),
                   help="array sizes RxC, comma separated (default 2x2,4x4,8x8)")
    p.add_argument("--act-depths", type=parse_ints, default=[2048],
                   help="activation buffer depths, comma separated (default 2048)")
    p.add_argument("--acc-depths", type=parse_ints, default=[1024],
                   help="accumulator buffer depths, comma separated (default 1024)")
    p.add_argument("--devices", default="ecp5-85k",
                   help=f"comma separated, from: {', '.join(DEVICES)} (default ecp5-85k)")
    p.add_argument("--block", default="accelerator",
                   help=f"what to synthesize: {', '.join(BLOCKS)} (default accelerator)")
    p.add_argument("--mem-bytes", type=int, default=None)
    p.add_argument("--freq", type=float, default=None, help="requested MHz (device default)")
    p.add_argument("--no-pnr", action="store_true", help="synthesis only (no Fmax)")
    p.add_argument("--out", type=Path, default=Path("build/sweep"))
    p.add_argument("--scheduler", default=None,
                   help="address of an existing Dask scheduler (tcp://HOST:PORT); "
                        "default: a local cluster")
    p.add_argument("--workers", type=int, default=2,
                   help="local cluster worker processes (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def grid(args: argparse.Namespace) -> list[dict]:
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    for d in devices:
        if d not in DEVICES:
            raise ValueError(f"unknown device {d!r}; choose from: {', '.join(DEVICES)}")
    if args.block not in BLOCKS:
        raise ValueError(f"unknown block {args.block!r}; choose from: {', '.join(BLOCKS)}")
    points = []
    for dev, (r, c), act, acc in itertools.product(devices, args.sizes, args.act_depths,
                                                   args.acc_depths):
        config = {"rows": r, "cols": c, "act_depth": act, "acc_depth": acc}
        if args.mem_bytes is not None:
            config["mem_bytes"] = args.mem_bytes
        tag = f"{dev}_{args.block}_{r}x{c}_act{act}_acc{acc}"
        points.append({"device": dev, "block": args.block, "config": config,
                       "out_dir": str((args.out / "points" / tag).resolve()),
                       "freq_mhz": args.freq, "pnr": not args.no_pnr})
    return points


def row_of(point: dict, result: dict) -> dict:
    c = point["config"]
    row = {k: "" for k in COLUMNS}
    row.update(device=point["device"], block=point["block"], rows=c["rows"], cols=c["cols"],
               pes=c["rows"] * c["cols"], act_depth=c["act_depth"], acc_depth=c["acc_depth"],
               status=result["status"], error=result.get("error", ""),
               runtime_s=result.get("runtime_s", ""))
    rep = result.get("report")
    if rep:
        res = rep["resources"]
        for kind in ("LUT", "FF", "DSP", "BRAM", "SPRAM"):
            if kind in res:
                row[kind] = res[kind]["used"]
                if f"{kind}_available" in row:
                    row[f"{kind}_available"] = res[kind].get("available") or ""
        if "gates" in res:  # generic device: gates stand in for LUTs
            row["LUT"] = res["gates"]["used"]
        mult = rep["design"]["multiplier"]
        row["dsp_pes"] = "" if mult["dsp_pes"] is None else mult["dsp_pes"]
        row["lut_pes"] = "" if mult["lut_pes"] is None else mult["lut_pes"]
        clocks = rep.get("timing", {}).get("clocks", [])
        if clocks:
            fmax = min(cl["achieved_mhz"] for cl in clocks)
            row["fmax_mhz"] = fmax
            row["requested_mhz"] = clocks[0]["constraint_mhz"]
            row["peak_gops"] = round(2 * c["rows"] * c["cols"] * fmax / 1000, 3)
            paths = [p for p in rep["timing"]["critical_paths"]
                     if p["from_clock"] == p["to_clock"]]
            if paths:
                row["critical_start"], row["critical_end"] = paths[0]["start"], paths[0]["end"]
        row["report"] = str(Path(point["out_dir"]) / "report.md")
    return row


def plot(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    series: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            series.setdefault((r["device"], r["act_depth"], r["acc_depth"]), []).append(r)
    metrics = [("LUT", "LUTs (logic cells / LUT4; gates for generic)", "luts.png"),
               ("DSP", "DSP blocks", "dsps.png"), ("BRAM", "block RAMs", "bram.png"),
               ("fmax_mhz", "Fmax (MHz)", "fmax.png"), ("peak_gops", "peak GOPS", "gops.png")]
    for key, label, fname in metrics:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        drawn = False
        for (dev, act, acc), pts in sorted(series.items()):
            pts = [p for p in pts if p[key] != ""]
            if not pts:
                continue
            pts.sort(key=lambda p: p["pes"])
            ax.plot([p["pes"] for p in pts], [float(p[key]) for p in pts], marker="o",
                    label=f"{dev} act {act} acc {acc}")
            avail = pts[0].get(f"{key}_available")
            if avail not in ("", None) and key in ("LUT", "DSP", "BRAM"):
                ax.axhline(float(avail), linestyle=":", linewidth=0.8,
                           color=ax.lines[-1].get_color())
            drawn = True
        ax.set_xlabel("array size (PEs = rows x cols)")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label + " vs array size")
        fig.tight_layout()
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def run_sweep(args: argparse.Namespace) -> list[dict]:
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    points = grid(args)
    args.out.mkdir(parents=True, exist_ok=True)
    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0")  # any free port: 8787 may be taken
        client = Client(cluster)
    rows = []
    try:
        futures = {client.submit(sweep_point, p, pure=False): p for p in points}
        bar = tqdm(total=len(points), desc="sweep", unit="point", disable=args.no_progress)
        for fut in as_completed(futures):
            point = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:  # a worker died: record the point, keep going
                result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            rows.append(row_of(point, result))
            bar.set_postfix_str(f"{point['device']} {point['config']['rows']}x"
                                f"{point['config']['cols']}: {result['status']}")
            bar.update()
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    rows.sort(key=lambda r: (r["device"], r["act_depth"], r["acc_depth"], r["pes"],
                             r["rows"]))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        grid(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.monotonic()
    rows = run_sweep(args)
    with open(args.out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    command = "python " + " ".join(shlex.quote(a) for a in
                                   ["scripts/sweep.py", *(sys.argv[1:] if argv is None
                                                          else argv)])
    (args.out / "sweep.json").write_text(json.dumps(
        {"command": command, "seconds": round(time.monotonic() - start, 1), "points": rows},
        indent=2) + "\n")
    plots = plot(rows, args.out)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{ok}/{len(rows)} points synthesized; {args.out / 'sweep.csv'}, "
          f"{args.out / 'sweep.json'}, plots: " + ", ".join(p.name for p in plots))
    for r in rows:
        fmax = f"{r['fmax_mhz']} MHz" if r["fmax_mhz"] != "" else "-"
        print(f"  {r['device']:11s} {r['rows']}x{r['cols']} act {r['act_depth']}: "
              f"{r['status']:12s} LUT {r['LUT']} DSP {r['DSP']} BRAM {r['BRAM']} {fmax}"
              + (f"  ({r['error'][:80]})" if r["error"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
