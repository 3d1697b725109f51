"""Netlist passes between Yosys and nextpnr: ECP5 block RAM output registers."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BRAM_OUTREG_CELLS", "fold_bram_output_registers", "fold_netlist_file",
           "discount_folded"]

# A DP16KD read port without its output register (REGMODE "NOREG", all Yosys 0.70's synth_ecp5
# ever produces) has a slow clock-to-output: on LFE5U-85F speed 6 nextpnr times ~6 ns of logic
# and routing from the block RAM to the next fabric flip-flop. With REGMODE "OUTREG" the data
# leaves the block RAM from a register of its own, one cycle later. A design whose read data
# already goes straight into a register (the usual "register the read" pipeline stage) loses
# nothing by moving that register into the RAM: `fold_bram_output_registers` does exactly
# that, on the JSON netlist between Yosys and nextpnr (no Yosys plugin is available to a
# pip-installed toolchain).
#
# Pin and parameter names are those of the Lattice cell library shipped with Yosys
# (techlibs/lattice/cells_sim_ecp5.v, cells_bb_ecp5.v, brams_map_16kd.v) and of nextpnr-ecp5's
# packer, which turns a PDPW16KD into a DP16KD in pseudo-dual-port mode (DATA_WIDTH_A = 36,
# DO0..17 -> DOB, DO18..35 -> DOA, OCER -> OCEB, REGMODE -> REGMODE_A and REGMODE_B) and times a
# DP16KD's outputs from the REGMODE_A/REGMODE_B combination it is configured with.

BRAM_OUTREG_CELLS = ("DP16KD", "PDPW16KD")


@dataclass(frozen=True)
class _RamReadPort:
    """The pins and parameters of one read port of a block RAM cell."""
    name: str                    # "A", "B" (DP16KD), "B (PDP)" (DP16KD, 36 bits), "R" (PDPW16KD)
    data_out: tuple[str, ...]    # DO pins, bit 0 first
    clock: str                   # clock pin
    clock_mux: str               # its polarity parameter ...
    clock_mux_plain: str         # ... and the value that means "not inverted"
    output_enables: tuple[str, ...]  # OCE pins (all get the flip-flops' clock enable)
    resets: tuple[str, ...]      # RST pins of this read port
    regmodes: tuple[str, ...]    # REGMODE parameters (all set to "OUTREG")
    write_enable: str | None     # WE pin if the port can also write (a read reset blocks it)
    other_resets: tuple[str, ...] = ()   # RST pins of the cell's other port (RESETMODE is shared)


def _ram_read_ports(cell: dict) -> list[_RamReadPort]:
    """The read ports of a DP16KD or PDPW16KD cell of a Yosys JSON netlist."""
    if cell["type"] == "PDPW16KD":
        return [_RamReadPort("R", tuple(f"DO{i}" for i in range(36)), "CLKR", "CLKRMUX", "CLKR",
                             ("OCER",), ("RST",), ("REGMODE",), None)]
    width_a = _param_int(cell.get("parameters", {}).get("DATA_WIDTH_A", 18))
    if width_a == 36:
        # Pseudo-dual-port: port A only writes; all 36 outputs are the read port B's, clocked
        # by CLKB. Which half's OCE/REGMODE governs which output bits is not documented
        # anywhere we can check, so both are set alike (as nextpnr's PDPW16KD packing does).
        return [_RamReadPort("B (PDP)",
                             tuple(f"DOA{i}" for i in range(18)) + tuple(f"DOB{i}"
                                                                         for i in range(18)),
                             "CLKB", "CLKBMUX", "CLKB", ("OCEA", "OCEB"), ("RSTA", "RSTB"),
                             ("REGMODE_A", "REGMODE_B"), None)]
    return [_RamReadPort(p, tuple(f"DO{p}{i}" for i in range(18)), f"CLK{p}", f"CLK{p}MUX",
                         f"CLK{p}", (f"OCE{p}",), (f"RST{p}",), (f"REGMODE_{p}",), f"WE{p}",
                         (f"RST{q}",))
            for p, q in (("A", "B"), ("B", "A"))]


def _param_str(value: Any, default: str) -> str:
    """A string parameter of a Yosys JSON netlist. Yosys marks a string made only of 0/1/x/z
    characters (``CEMUX = "1"``) with one trailing space, to tell it from a bit vector."""
    if value is None:
        return default
    if isinstance(value, str) and value.endswith(" "):
        return value[:-1]
    return str(value)


def _param_int(value: Any) -> int | None:
    """An integer parameter (Yosys writes them as binary strings); ``None`` if not one."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value and set(value) <= {"0", "1"}:
        return int(value, 2)
    return None


def _pin(cell: dict, pin: str) -> int | str | None:
    """The single bit on a one-bit pin: a net number, a constant "0"/"1"/"x"/"z", or ``None``
    when the pin is not connected."""
    bits = cell.get("connections", {}).get(pin)
    if not bits:
        return None
    return bits[0] if len(bits) == 1 else "?"


def _tied(cell: dict, pin: str, value: str) -> bool:
    """Whether ``pin`` is unconnected or tied to the constant ``value``."""
    return _pin(cell, pin) in (None, value)


@dataclass
class _FFControls:
    """What a TRELLIS_FF does besides D -> Q, reduced to what a RAM output register can do."""
    enable: int | str          # clock-enable net, or "1" (always enabled)
    reset: int | None          # synchronous active-high reset-to-0 net, or None (no reset)


def _ff_controls(ff: dict, ram_gsr: str) -> tuple[_FFControls | None, str]:
    """The clock enable and reset of a TRELLIS_FF if a DP16KD output register can reproduce
    them exactly, else ``(None, reason)``. Clock net and polarity are checked by the caller.

    Semantics (techlibs/lattice/common_sim.vh): ``if (LSR') Q <= srval; else if (CE') Q <= DI``
    with LSR' = LSR (inverted if LSRMUX = "INV"), CE' per CEMUX ("1", "0", "CE", "INV"), srval =
    0 for REGSET "RESET" (also the value after configuration), the reset asynchronous when
    SRMODE = "ASYNC".
    """
    params = ff.get("parameters", {})
    attrs = ff.get("attributes", {})
    if attrs.get("keep") is not None and _param_int(attrs["keep"]) != 0:
        return None, "flip-flop has a keep attribute"
    # The RAM's output register starts at 0 after configuration (and on GSR, if enabled):
    # only a flip-flop that starts at 0 behaves the same from the first cycle.
    if _param_str(params.get("REGSET"), "RESET") != "RESET":
        return None, "flip-flop resets/initialises to 1"
    if _param_str(params.get("LSRMODE"), "LSR") != "LSR":
        return None, "flip-flop uses LSRMODE PRLD (preload)"
    # GSR: both must (or must not) be cleared by the global set/reset, else folding changes
    # what a GSR pulse does to the value.
    if _param_str(params.get("GSR"), "ENABLED") != ram_gsr:
        return None, f"flip-flop GSR {_param_str(params.get('GSR'), 'ENABLED')} != RAM GSR " \
                     f"{ram_gsr}"

    cemux = _param_str(params.get("CEMUX"), "1")
    if cemux == "1":
        enable: int | str = "1"
    elif cemux == "CE":
        ce = _pin(ff, "CE")
        if ce == "1":
            enable = "1"
        elif isinstance(ce, int):
            enable = ce
        else:
            return None, f"flip-flop clock enable is {ce!r}"
    else:
        return None, f"flip-flop CEMUX {cemux!r} (inverted or never enabled)"

    lsrmux = _param_str(params.get("LSRMUX"), "LSR")
    lsr = _pin(ff, "LSR")
    inactive = {"LSR": "0", "INV": "1"}.get(lsrmux)
    if inactive is None:
        return None, f"flip-flop LSRMUX {lsrmux!r}"
    if lsr is None or lsr == inactive:
        return _FFControls(enable, None), ""
    if not isinstance(lsr, int):
        return None, f"flip-flop reset is tied to {lsr!r}"
    if lsrmux != "LSR":
        return None, "flip-flop has an active-low reset"
    if _param_str(params.get("SRMODE"), "LSR_OVER_CE") == "ASYNC":
        return None, "flip-flop has an asynchronous reset"
    return _FFControls(enable, lsr), ""


def _netlist_connectivity(module: dict) -> tuple[dict, dict]:
    """``(drivers, loads)``: for each net bit, the (cell, pin) pairs driving / reading it.
    Module ports count as the cell ``None``. A pin of unknown direction counts as both."""
    drivers: dict[int, list[tuple[str | None, str]]] = {}
    loads: dict[int, list[tuple[str | None, str]]] = {}
    for name, cell in module.get("cells", {}).items():
        dirs = cell.get("port_directions", {})
        for pin, bits in cell.get("connections", {}).items():
            d = dirs.get(pin, "inout")
            for bit in bits:
                if isinstance(bit, str):
                    continue
                if d in ("output", "inout"):
                    drivers.setdefault(bit, []).append((name, pin))
                if d in ("input", "inout"):
                    loads.setdefault(bit, []).append((name, pin))
    for pname, port in module.get("ports", {}).items():
        for bit in port.get("bits", []):
            if isinstance(bit, str):
                continue
            if port.get("direction") in ("input", "inout"):
                drivers.setdefault(bit, []).append((None, pname))
            if port.get("direction") in ("output", "inout"):
                loads.setdefault(bit, []).append((None, pname))
    return drivers, loads


def _plan_port_fold(module: dict, ram_name: str, ram: dict, port: _RamReadPort,
                    drivers: dict, loads: dict, sync_reset: bool
                    ) -> tuple[dict[str, str] | None, _FFControls | None, str]:
    """Check one read port. Returns ``(pin -> flip-flop name, controls, "")`` when every used
    output bit feeds exactly one matching flip-flop, ``(None, None, reason)`` otherwise, and
    ``({}, None, reason)`` when no output bit of the port is used at all."""
    params = ram.get("parameters", {})
    cells = module["cells"]
    used = []
    for pin in port.data_out:
        bit = _pin(ram, pin)
        if bit == "?":
            return None, None, f"{pin} is not a one-bit connection"
        if isinstance(bit, int) and loads.get(bit):
            used.append((pin, bit))
    if not used:
        return {}, None, "no output bit used"     # e.g. the write port of a Yosys mapping
    for regmode in port.regmodes:
        if _param_str(params.get(regmode), "NOREG") != "NOREG":
            return None, None, f"{regmode} is already {_param_str(params.get(regmode), '')}"
    clock = _pin(ram, port.clock)
    if not isinstance(clock, int):
        return None, None, f"{port.clock} is {clock!r}"
    clock_mux = _param_str(params.get(port.clock_mux), port.clock_mux_plain)
    if clock_mux not in (port.clock_mux_plain, "INV"):
        return None, None, f"{port.clock_mux} is {clock_mux!r}"
    ram_inverted = clock_mux == "INV"
    # The RAM's own read reset (which clears the read latch) must be unused: with it, a
    # register after the RAM and the RAM's output register behave differently.
    for rst in port.resets:
        if not _tied(ram, rst, "0"):
            return None, None, f"the RAM's own {rst} is in use"
    # OCE does nothing in NOREG mode; Yosys ties it to a constant. Anything else: leave alone.
    for oce in port.output_enables:
        if _pin(ram, oce) not in (None, "0", "1"):
            return None, None, f"{oce} is already driven by a net"
    ram_gsr = _param_str(params.get("GSR"), "ENABLED")

    pairs: dict[str, str] = {}
    controls: _FFControls | None = None
    for pin, bit in used:
        if drivers.get(bit) != [(ram_name, pin)]:
            return None, None, f"{pin}'s net has another driver"
        sinks = loads[bit]
        if len(sinks) != 1:
            return None, None, f"{pin} drives {len(sinks)} loads"
        ff_name, ff_pin = sinks[0]
        if ff_name is None:
            return None, None, f"{pin} drives the module port {ff_pin!r} (no register in " \
                               f"this module)"
        ff = cells[ff_name]
        if ff["type"] != "TRELLIS_FF" or ff_pin != "DI":
            return None, None, f"{pin} drives {ff['type']} pin {ff_pin}, not a flip-flop's DI"
        if _pin(ff, "CLK") != clock:
            return None, None, f"{pin}'s flip-flop {ff_name} is on another clock"
        ff_clkmux = _param_str(ff.get("parameters", {}).get("CLKMUX"), "CLK")
        if ff_clkmux not in ("CLK", "INV") or (ff_clkmux == "INV") != ram_inverted:
            return None, None, f"{pin}'s flip-flop {ff_name} uses the other clock edge"
        q = _pin(ff, "Q")
        if not isinstance(q, int) or drivers.get(q) != [(ff_name, "Q")]:
            return None, None, f"{pin}'s flip-flop {ff_name} has an odd Q connection"
        ctl, why = _ff_controls(ff, ram_gsr)
        if ctl is None:
            return None, None, f"{pin}'s flip-flop {ff_name}: {why}"
        if controls is None:
            controls = ctl
        elif (ctl.enable, ctl.reset) != (controls.enable, controls.reset):
            return None, None, "the flip-flops do not share one clock enable and reset"
        pairs[pin] = ff_name
    assert controls is not None
    if controls.reset is not None:
        if not sync_reset:
            return None, None, "the flip-flops have a synchronous reset (not folded: the RAM's " \
                               "RST also clears its read latch)"
        if port.write_enable is None:
            return None, None, "the flip-flops have a synchronous reset and the RAM is in " \
                               "pseudo-dual-port mode"
        if not _tied(ram, port.write_enable, "0"):
            return None, None, "the flip-flops have a synchronous reset and the port also " \
                               "writes (RST blocks writes)"
        if not isinstance(controls.enable, str):
            return None, None, "the flip-flops have both a clock enable and a synchronous " \
                               "reset (their priority on the RAM is undocumented)"
        if _param_str(params.get("RESETMODE"), "SYNC") != "SYNC" and \
                not all(_tied(ram, r, "0") for r in port.other_resets):
            return None, None, "a synchronous reset needs RESETMODE SYNC but the other " \
                               "port uses an asynchronous one"
    return pairs, controls, ""


def fold_bram_output_registers(netlist: dict, *, sync_reset: bool = False) -> dict[str, Any]:
    """Move the flip-flops that register an ECP5 block RAM's read data into the RAM.

    For each read port of every ``DP16KD`` (ports A and B; the read side of one in
    pseudo-dual-port mode) and ``PDPW16KD`` (read side) in the Yosys JSON ``netlist``: if every
    used data output bit drives exactly one load, and that load is the ``DI`` input of a
    ``TRELLIS_FF`` with the RAM port's clock net and edge, and all those flip-flops have one
    common clock enable and a reset the RAM's output register reproduces, then the
    flip-flops are deleted, their ``Q`` nets are driven by the RAM's ``DO`` pins, the port's
    ``REGMODE`` becomes ``"OUTREG"`` and its ``OCE`` pin gets the common clock enable (or 1).
    Any other port is left exactly as it was (all or nothing per port).

    Parameters
    ----------
    netlist : dict
        A netlist as written by Yosys ``write_json`` after ``synth_ecp5``; modified in place.
        Each module is handled on its own: a read register in another module (through a
        kept hierarchy boundary) is not folded.
    sync_reset : bool, optional
        Also fold flip-flops that share a synchronous, active-high reset to 0 (into the RAM's
        ``RST`` pin, ``RESETMODE "SYNC"``), when the port never writes, the flip-flops have no
        clock enable and the RAM's own reset pins are unused. Off by default: ``RST`` also
        clears the RAM's read latch, so the read issued in the last reset cycle returns 0
        instead of the data (the vendor documentation does not say otherwise), which a
        design may or may not care about.

    Returns
    -------
    dict
        ``{"ports": folded ports, "flip_flops": folded flip-flops, "by_module": {module:
        flip-flops removed}, "folded": [...], "not_folded": [...]}``; the two lists hold
        ``{"module", "cell", "port", "flip_flops", "reason"}`` entries (``reason`` empty for
        folded ports), sorted by module, cell and port. Ports with no used output bit (write
        ports) appear in neither.

    Notes
    -----
    Safety conditions, all required:

    * the port's REGMODE is NOREG, its clock a net and its clock polarity CLK or INV; its
      own RST pins are unconnected or tied to 0 (so it has no read reset to interact with)
      and its OCE pins are unconnected or constant (they have no function in NOREG mode);
    * every used DO bit is driven by the RAM only and read by exactly one pin, the DI pin of
      a TRELLIS_FF on the same clock net and edge, whose Q net it alone drives;
    * each flip-flop resets/initialises to 0 (REGSET "RESET": the RAM's output register is
      0 after configuration), has GSR like the RAM, no keep attribute, no preload (LSRMODE),
      a clock enable that is 1 or a net (not inverted), and no reset (LSR inactive) -- or,
      with ``sync_reset``, a synchronous active-high one, see above;
    * all the flip-flops of the port share one clock enable net (or none) and one reset.

    In pseudo-dual-port mode (DP16KD with DATA_WIDTH_A = 36) both halves' OCE and REGMODE are
    set, as nextpnr-ecp5 does when it packs a PDPW16KD. The RAM's former DO nets are left
    without driver or load; their bits are replaced by ``"x"`` in the net names. The result
    does not depend on anything but the netlist (cells are visited in sorted order).
    """
    folded: list[dict] = []
    not_folded: list[dict] = []
    by_module: dict[str, int] = {}
    for mod_name in sorted(netlist.get("modules", {})):
        module = netlist["modules"][mod_name]
        cells = module.get("cells", {})
        rams = sorted(n for n, c in cells.items() if c.get("type") in BRAM_OUTREG_CELLS)
        if not rams:
            continue
        drivers, loads = _netlist_connectivity(module)
        for ram_name in rams:
            ram = cells[ram_name]
            for port in _ram_read_ports(ram):
                pairs, controls, reason = _plan_port_fold(module, ram_name, ram, port, drivers,
                                                          loads, sync_reset)
                entry = {"module": mod_name, "cell": ram_name, "port": port.name,
                         "flip_flops": len(pairs or {}), "reason": reason}
                if pairs is None:
                    not_folded.append(entry)
                    continue
                if not pairs:
                    continue
                assert controls is not None
                dead: set[int] = set()
                for pin, ff_name in pairs.items():
                    ff = cells.pop(ff_name)
                    old = ram["connections"][pin][0]
                    q = ff["connections"]["Q"][0]
                    ram["connections"][pin] = [q]
                    dead.add(old)
                    # Keep the connectivity maps true for the RAM's other port.
                    drivers[q] = [(ram_name, pin)]
                    drivers.pop(old, None)
                    loads.pop(old, None)
                    for other_pin in ("CLK", "CE", "LSR"):
                        bit = _pin(ff, other_pin)
                        if isinstance(bit, int) and bit in loads:
                            loads[bit] = [s for s in loads[bit] if s[0] != ff_name]
                dirs = ram.setdefault("port_directions", {})
                for oce in port.output_enables:
                    ram["connections"][oce] = [controls.enable]
                    dirs[oce] = "input"
                for regmode in port.regmodes:
                    ram["parameters"][regmode] = "OUTREG"
                if controls.reset is not None:
                    for rst in port.resets:
                        ram["connections"][rst] = [controls.reset]
                        dirs[rst] = "input"
                    ram["parameters"]["RESETMODE"] = "SYNC"
                    ram["parameters"]["ASYNC_RESET_RELEASE"] = "SYNC"
                for net in module.get("netnames", {}).values():
                    if any(b in dead for b in net.get("bits", [])):
                        net["bits"] = ["x" if b in dead else b for b in net["bits"]]
                by_module[mod_name] = by_module.get(mod_name, 0) + len(pairs)
                folded.append(entry)
    return {"ports": len(folded), "flip_flops": sum(e["flip_flops"] for e in folded),
            "by_module": by_module, "folded": folded, "not_folded": not_folded}


def fold_netlist_file(out: Path) -> dict[str, Any]:
    """Run :func:`fold_bram_output_registers` on ``out/netlist.json`` (Yosys' own netlist is
    kept as ``out/netlist.yosys.json``, the folded one replaces ``netlist.json``, which is
    what nextpnr reads). Returns the fold summary."""
    text = (out / "netlist.json").read_text()
    (out / "netlist.yosys.json").write_text(text)
    netlist = json.loads(text)
    summary = fold_bram_output_registers(netlist)
    (out / "netlist.json").write_text(json.dumps(netlist, indent=1) + "\n")
    return summary


def discount_folded(stat: dict, by_module: dict[str, int]) -> dict:
    """Yosys ``stat -json`` output with the flip-flops that `fold_bram_output_registers`
    removed taken off each module's TRELLIS_FF count (stat ran before the fold)."""
    for name, info in stat.get("modules", {}).items():
        removed = by_module.get(name[1:] if name.startswith("\\") else name, 0)
        if removed:
            counts = info.get("num_cells_by_type", {})
            counts["TRELLIS_FF"] = counts.get("TRELLIS_FF", 0) - removed
            if "num_cells" in info:
                info["num_cells"] -= removed
    return stat
