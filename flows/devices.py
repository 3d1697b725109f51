"""The synthesis targets (:data:`DEVICES`) and the pre-flight fit check made before any
tool runs."""

import math
from dataclasses import dataclass, field
from typing import Any

from serrano.hw.mult import Family

from .designs import Design

__all__ = ["RESOURCE_KINDS", "DesignDoesNotFit", "Device", "DEVICES", "get_device",
           "preflight"]

RESOURCE_KINDS = ("LUT", "FF", "DSP", "BRAM", "SPRAM", "LUTRAM")


class DesignDoesNotFit(ValueError):
    """The design needs more of a resource than the device has."""



@dataclass(frozen=True)
class Device:
    """One synthesis target.

    ``resources`` are the totals the device offers per kind (``LUT`` = 4-input LUTs / logic
    cells, ``FF``, ``DSP`` = MULT18X18D or SB_MAC16, ``BRAM`` = DP16KD (18 Kbit) or
    SB_RAM40_4K (4 Kbit), ``SPRAM`` = SB_SPRAM256KA (256 Kbit)). ``bram_shapes`` lists the
    (depth, width) aspect ratios of one block RAM, used by the pre-flight estimate.
    """
    name: str
    family: Family
    part: str
    speed: str | None = None
    package: str | None = None
    resources: dict = field(default_factory=dict)
    bram_shapes: tuple = ()
    spram_bits: int = 0
    default_mhz: float | None = None
    nextpnr_args: tuple = ()
    description: str = ""

    @property
    def has_pnr(self) -> bool:
        return self.family is not Family.GENERIC


_ECP5_BRAM_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
_ICE40_BRAM_SHAPES = ((2048, 2), (1024, 4), (512, 8), (256, 16))

def _ecp5(size: int, luts: int, dsp: int, bram: int) -> Device:
    """An ECP5 LFE5U in the CABGA381 package, speed grade 6."""
    return Device(f"ecp5-{size}k", Family.ECP5, f"LFE5U-{size}F", speed="6", package="CABGA381",
                  resources={"LUT": luts, "FF": luts, "DSP": dsp, "BRAM": bram, "SPRAM": 0},
                  bram_shapes=_ECP5_BRAM_SHAPES, default_mhz=150.0,
                  nextpnr_args=(f"--{size}k", "--package", "CABGA381", "--speed", "6"),
                  description=f"Lattice ECP5 LFE5U-{size}F, speed grade 6")


DEVICES: dict[str, Device] = {d.name: d for d in [
    Device("generic", Family.GENERIC, "generic",
           description="technology-independent Yosys synth: gates, flip-flops, memory bits"),
    Device("ice40-up5k", Family.ICE40, "iCE40UP5K", speed=None, package="sg48",
           resources={"LUT": 5280, "FF": 5280, "DSP": 8, "BRAM": 30, "SPRAM": 4},
           bram_shapes=_ICE40_BRAM_SHAPES, spram_bits=256 * 1024, default_mhz=40.0,
           nextpnr_args=("--up5k", "--package", "sg48"),
           description="Lattice iCE40 UltraPlus 5K (iCEBreaker)"),
    *[_ecp5(size, luts, dsp, bram) for size, luts, dsp, bram in [
        (25, 24288, 28, 56), (45, 43848, 72, 108), (85, 83640, 156, 208)]],
]}


def get_device(name: "str | Device") -> Device:
    """Look up a device by name; ``ValueError`` lists the valid names."""
    if isinstance(name, Device):
        return name
    if not isinstance(name, str):
        raise TypeError(f"device must be a device name (str), not {name!r}")
    try:
        return DEVICES[name]
    except KeyError:
        raise ValueError(f"unknown device {name!r}; choose one of: "
                         f"{', '.join(DEVICES)}") from None


# A LUT-built 8x8 multiplier plus its PE's adder and registers needs at least this many LUT4s
# (the shift-add multiplier alone maps to ~70 on iCE40 and ECP5). A lower bound: the check
# only rejects what certainly cannot fit.
_LUT_PE_MIN_LUTS = 40


def _blocks_for(width: int, depth: int, shapes) -> int:
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in shapes)


def preflight(design: Design, device: "str | Device", *, dsp_pes: int | None = None) -> dict:
    """Resource lower bounds from the configuration alone; raises :class:`DesignDoesNotFit`
    when one already exceeds the device. Returns the estimate."""
    dev = get_device(device)
    est: dict[str, Any] = {"buffers": []}
    if dev.family is Family.GENERIC:
        return est
    avail = dev.resources
    dsp_pe = 0 if dsp_pes is None else min(dsp_pes, design.n_pes)
    if dsp_pes is None:
        dsp_pe = min(design.n_pes, avail["DSP"])
    lut_pes = design.n_pes - dsp_pe
    est["DSP_PEs"] = dsp_pe
    est["LUT_PEs"] = lut_pes
    est["LUT_min"] = lut_pes * _LUT_PE_MIN_LUTS
    if dsp_pes is not None and dsp_pes > avail["DSP"]:
        raise DesignDoesNotFit(f"dsp_pes={dsp_pes} exceeds the {avail['DSP']} DSP blocks of "
                               f"{dev.name}")
    blocks = 0
    for name, width, depth in design.buffers:
        n = _blocks_for(width, depth, dev.bram_shapes)
        est["buffers"].append({"name": name, "width": width, "depth": depth, "blocks_min": n})
        blocks += n
    est["BRAM_min"] = blocks
    # SPRAM can take single-port memories only; a buffer may land there, so the certain
    # shortfall is what exceeds block RAM *and* SPRAM together.
    spram_as_blocks = 0
    if dev.spram_bits:
        block_bits = max(d * w for d, w in dev.bram_shapes)
        spram_as_blocks = avail.get("SPRAM", 0) * dev.spram_bits // block_bits
    if blocks > avail["BRAM"] + spram_as_blocks:
        detail = ", ".join(f"{b['name']} {b['depth']}x{b['width']} bits: >= {b['blocks_min']}"
                           for b in est["buffers"])
        raise DesignDoesNotFit(
            f"the buffers of this configuration need at least {blocks} block RAMs but "
            f"{dev.name} has {avail['BRAM']}"
            + (f" (+{avail['SPRAM']} SPRAM)" if spram_as_blocks else "")
            + f" ({detail}); reduce act_depth/acc_depth/wgt_depth or the array size")
    if est["LUT_min"] > avail["LUT"]:
        raise DesignDoesNotFit(
            f"{lut_pes} PEs with LUT multipliers need at least {est['LUT_min']} LUTs but "
            f"{dev.name} has {avail['LUT']} (and {avail['DSP']} DSPs for the other "
            f"{dsp_pe}); choose a smaller array")
    return est
