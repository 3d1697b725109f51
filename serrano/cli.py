"""The ``serrano`` command: one subcommand per tool in :mod:`serrano.commands`.

``serrano synth --rows 8 --cols 8 --device ecp5-85k --out build/synth/8x8`` is
``python scripts/synth.py ...``; ``serrano --help`` lists the commands.
"""

import importlib
import sys

__all__ = ["COMMANDS", "main"]

# Subcommand -> (module in serrano.commands, one-line summary).
COMMANDS = {
    "generate": ("generate", "Verilog and RTLIL of the top level"),
    "simulate": ("simulate", "one random GEMM, checked against numpy"),
    "benchmark": ("benchmark", "utilization over GEMM shapes and array sizes"),
    "bench-sim": ("bench_sim", "simulation speed: pysim against compiled"),
    "demo": ("demo", "what `make demo` runs"),
    "gen-isa-doc": ("gen_isa_doc", "regenerate docs/isa.md from hw/isa.py"),
    "synth": ("synth", "Yosys + nextpnr resource and timing report"),
    "synth-lanes": ("synth_lanes", "the vector lane datapaths alone through the ECP5 flow"),
    "build-board": ("build_board", "a board top to a bitstream"),
    "sweep": ("sweep", "design-space sweep on dask.distributed"),
    "precision-study": ("precision_study", "activation precision a BERT model needs"),
    "kernel-errors": ("kernel_errors", "error of the vector unit's integer kernels"),
    "bench-layer": ("bench_layer", "a MiniLM-shaped encoder layer as one program: cycles"),
    "run-model": ("run_model", "embed sentences with a Hugging Face BERT on the accelerator"),
    "cycle-model": ("cycle_model", "calibrate the encoder's cycle model against the RTL"),
    "serve": ("serve", "an OpenAI-compatible embeddings server with dynamic batching"),
    "loadtest": ("loadtest", "the batcher's latency against throughput in device time"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: serrano COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`serrano COMMAND --help` describes each command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``serrano COMMAND ARGS...``; returns the command's exit status (2 on bad usage)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"serrano: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"serrano.commands.{COMMANDS[name][0]}")
    return module.main(rest)
