"""The command-line tools, one module each with a ``main(argv) -> int``.

``serrano <command>`` (:mod:`serrano.cli`) and ``python scripts/<command>.py`` both call them.
"""

import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any


def script_command_line(script: str, argv: Sequence[str] | None) -> str:
    """``python scripts/<script>.py ARGS``, shell-quoted, for a report's "how to rebuild"."""
    args = sys.argv[1:] if argv is None else list(argv)
    return "python " + " ".join(shlex.quote(a) for a in [f"scripts/{script}.py", *args])


def run_flow_reporting_errors(call: Callable[[], Any]) -> Any:
    """Run an FPGA flow; on a flow error print it and return the exit code instead.

    Exit codes: 3 the design does not fit, 2 a bad request, 1 a tool failed."""
    from serrano.flows.devices import DesignDoesNotFit
    from serrano.flows.tools import ToolError
    try:
        return call()
    except DesignDoesNotFit as exc:
        print(f"error: does not fit: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
