"""One point of a design-space sweep (``serrano.commands.sweep`` runs many on Dask)."""

import time

from serrano.hw.config import AcceleratorConfig

from .designs import block_design
from .devices import DesignDoesNotFit
from .flow import run_flow
from .tools import ToolError

__all__ = ["sweep_point"]


def sweep_point(point: dict) -> dict:
    """Run one point of a design-space sweep (in a Dask worker): ``point`` has ``device``,
    ``block``, ``config`` (AcceleratorConfig keyword arguments), ``out_dir`` and optionally
    ``freq_mhz``, ``pnr``. Returns ``{"status": "ok" | "does not fit" | "bad config" |
    "tool error", "report": ... or None, "error": str, "runtime_s": float}``; never raises
    for a point that merely fails."""
    start = time.monotonic()
    try:
        config = AcceleratorConfig(**point["config"])
        design = block_design(point.get("block", "accelerator"), config)
        report = run_flow(design, point["device"], point["out_dir"],
                          freq_mhz=point.get("freq_mhz"), pnr=point.get("pnr", True))
        status, error = "ok", ""
    except DesignDoesNotFit as exc:
        report, status, error = None, "does not fit", str(exc)
    except ValueError as exc:
        report, status, error = None, "bad config", str(exc)
    except ToolError as exc:
        report, status, error = None, "tool error", str(exc).splitlines()[0]
    return {"status": status, "report": report, "error": error,
            "runtime_s": round(time.monotonic() - start, 1)}
