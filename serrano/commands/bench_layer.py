#!/usr/bin/env python3
"""One MiniLM-shaped encoder layer as one accelerator program, on the compiled model.

For each batch (``sequences x tokens``): the layer program (``sim.encoder``) with random
weights (384 hidden, 12 heads, 1536 FFN, calibrated like ``sim.quantized``), run on the
compiled (Verilator) backend and on the golden model; prints its cycles, the cycles of the
same program with every vector instruction replaced by a NOP ("MATMULs alone": the LOADs and
MATMULs with their own stalls), the overhead of the vector work over that, and the MAC
utilization ``ideal MAC cycles / cycles`` (ideal: the layer's multiply-accumulates over
``rows * cols`` per cycle, no padding); checks the result bit-exact with the golden model and
with ``QuantizedEncoder.layer`` per sequence, and reports the cosine of the dequantized output
against the float layer. Targets (issue 13): 8 x 32 overhead <= 5 % and utilization >= 90 %,
1 x 16 utilization >= 70 %. Figures in docs/performance.md.

Usage: serrano bench-layer [--batch 1x16 --batch 8x32] [--seed 1] [--json FILE]
"""

import argparse
import json
import sys
import time

import numpy as np

from serrano.hw.isa import Opcode, VECTOR_OPCODES, decode, encode
from serrano.sim import transformer as tr
from serrano.sim.encoder import build_layer, layer_config, layer_macs, plan_layer
from serrano.sim.golden import GoldenBackend
from serrano.sim.quantized import QuantizedEncoder

HIDDEN, HEADS, FFN, LANES = 384, 12, 1536, 8


def _model(seed: int):
    rng = np.random.default_rng(seed)
    w = tr.random_bert(tr.BertConfig(hidden=HIDDEN, heads=HEADS, intermediate=FFN, layers=1,
                                     vocab=100, max_positions=64), rng)
    return w, QuantizedEncoder(w, [rng.integers(0, 100, n) for n in (5, 9, 17)]), rng


def _batch(text: str) -> tuple[int, int]:
    try:
        s, t = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a batch is SEQUENCESxTOKENS, not {text!r}")
    if s < 1 or t < 1:
        raise argparse.ArgumentTypeError(f"sequences and tokens must be positive: {text!r}")
    return s, t


def _without_vector(words: list[int]) -> list[int]:
    nop = encode(Opcode.NOP)
    vector = {op.value for op in VECTOR_OPCODES}
    return [nop if decode(w)[0] in vector else w for w in words]


def measure(sequences: int, tokens: int, seed: int = 1) -> dict:
    """The figures of one batch (see the module docstring)."""
    from serrano.sim.compiled import CompiledBackend
    w, qe, rng = _model(seed)
    S, T = sequences, tokens
    ids = rng.integers(0, 100, (S, T))
    x_float = tr.embeddings(w, ids)
    xs = [qe._grid(x_float[s], qe.s_x0) for s in range(S)]
    x = np.concatenate(xs)
    plan = plan_layer(T, HIDDEN, HEADS, FFN, LANES, sequences=S)
    cfg = layer_config(plan)
    words, mem, out = build_layer(qe.layers[0], x, cfg, plan)
    image = np.zeros(cfg.mem_bytes, np.uint8)
    image[:len(mem)] = mem
    t0 = time.perf_counter()
    backend = CompiledBackend(cfg)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res, alone = backend.run_sequence([(words, image), (_without_vector(words), image)],
                                      max_cycles=200_000_000)
    run_s = time.perf_counter() - t0
    ref = GoldenBackend(cfg).run(words, image)
    if res.status.error.value != 0:
        raise RuntimeError(f"the layer program faulted: {res.status}")
    N, nh = plan.rows, HIDDEN // LANES
    raw = res.memory[out:out + nh * N * 4 * LANES].view("<i4").reshape(nh, N, LANES)
    y = raw.transpose(1, 0, 2).reshape(N, HIDDEN).astype(np.int64)
    exact_golden = bool(res.status.error.value == 0 and np.array_equal(res.memory, ref.memory))
    exact_ref = all(np.array_equal(y[s * T:(s + 1) * T], qe.layer(0, xs[s]))
                    for s in range(S))
    yf = tr.encoder_layer(np.stack(xs) * qe.s_x0, w.layers[0], w.config).reshape(N, HIDDEN)
    got = y * qe.layers[0].scales["y"]
    cos = np.sum(got * yf, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(yf, axis=1)
    ideal = layer_macs(plan) / (LANES * LANES)
    cycles, mm = res.counters["cycles"], alone.counters["cycles"]
    return {"sequences": S, "tokens": T, "cycles": cycles, "matmul_alone_cycles": mm,
            "overhead": cycles / mm - 1, "ideal_mac_cycles": ideal,
            "utilization": ideal / cycles, "array_busy": res.counters["array_busy"],
            "instructions": len(words), "bit_exact_golden": exact_golden,
            "bit_exact_reference": exact_ref, "cosine_min": float(cos.min()),
            "build_s": build_s, "run_s": run_s, "sim_cycles_per_s": (cycles + mm) / run_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=_batch, action="append",
                    help="SEQUENCESxTOKENS (repeatable; default 1x16 and 8x32)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    from serrano.sim.compiled import check_prerequisites
    missing = check_prerequisites("verilator")
    if missing:
        print("bench-layer needs the compiled backend: " + "; ".join(missing), file=sys.stderr)
        return 1
    rows = []
    for s, t in args.batch or [(1, 16), (8, 32)]:
        print(f"{s} x {t} tokens: building and running ...", flush=True)
        r = measure(s, t, args.seed)
        rows.append(r)
        print(f"  cycles {r['cycles']:,}  MATMULs alone {r['matmul_alone_cycles']:,}  "
              f"overhead {100 * r['overhead']:.1f} %  utilization {100 * r['utilization']:.1f} %"
              f"  (array busy {r['array_busy']:,}, ideal {r['ideal_mac_cycles']:,.0f})")
        print(f"  bit-exact: golden {r['bit_exact_golden']}, integer reference "
              f"{r['bit_exact_reference']}; min cosine vs float {r['cosine_min']:.4f}; "
              f"build {r['build_s']:.0f} s, run {r['run_s']:.1f} s "
              f"({r['sim_cycles_per_s'] / 1e6:.2f} M cycles/s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    ok = all(r["bit_exact_golden"] and r["bit_exact_reference"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
