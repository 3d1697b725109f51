"""Yosys scripts of the flows, and the script fragments the board builds share with them.

The first-level submodules of the core keep their hierarchy through synthesis
(``keep_hierarchy``) so that Yosys ``stat`` gives a per-module breakdown (array, buffers,
decoder, load/store, ...). Everything below them is flattened and optimised as usual.
"""

import re

from serrano.hw.mult import Family

from .devices import Device
from .parse import MODULE_RE, categorize

__all__ = ["TOP", "ICE40_DSP_STUB", "ICE40_DSP_STUB_NAME", "ICE40_DSP_HIDE",
           "ICE40_DSP_RESTORE", "HIDE_BRACKET_WIRES", "KEEP_REPLICAS", "ECP5_ABC9_WIRE_DELAY_PS",
           "kept_modules", "buffer_ram_style", "buffer_collisions_dont_care", "yosys_script"]


# synth_ice40's ice40_dsp pass re-derives the configuration of every SB_MAC16 it sees from the
# fabric flip-flops around it: on an instantiated, internally registered SB_MAC16 it clears
# A_REG/B_REG/... and ties CLK and CE to 0, silently turning the registered multiplier of
# hw.mult into a combinational one. The flows therefore rename instantiated SB_MAC16 cells
# to a blackbox type for the duration of synth_ice40 and rename them back afterwards.
ICE40_DSP_STUB_NAME = "serrano_cells.v"
ICE40_DSP_STUB = """\
(* blackbox *)
module SERRANO_SB_MAC16 (CLK, CE, C, A, B, D, AHOLD, BHOLD, CHOLD, DHOLD, IRSTTOP, IRSTBOT,
    ORSTTOP, ORSTBOT, OLOADTOP, OLOADBOT, ADDSUBTOP, ADDSUBBOT, OHOLDTOP, OHOLDBOT, CI,
    ACCUMCI, SIGNEXTIN, O, CO, ACCUMCO, SIGNEXTOUT);
  input CLK, CE;
  input [15:0] C, A, B, D;
  input AHOLD, BHOLD, CHOLD, DHOLD, IRSTTOP, IRSTBOT, ORSTTOP, ORSTBOT, OLOADTOP, OLOADBOT;
  input ADDSUBTOP, ADDSUBBOT, OHOLDTOP, OHOLDBOT, CI, ACCUMCI, SIGNEXTIN;
  output [31:0] O;
  output CO, ACCUMCO, SIGNEXTOUT;
  parameter [0:0] NEG_TRIGGER = 0;
  parameter [0:0] C_REG = 0;
  parameter [0:0] A_REG = 0;
  parameter [0:0] B_REG = 0;
  parameter [0:0] D_REG = 0;
  parameter [0:0] TOP_8x8_MULT_REG = 0;
  parameter [0:0] BOT_8x8_MULT_REG = 0;
  parameter [0:0] PIPELINE_16x16_MULT_REG1 = 0;
  parameter [0:0] PIPELINE_16x16_MULT_REG2 = 0;
  parameter [1:0] TOPOUTPUT_SELECT = 0;
  parameter [1:0] TOPADDSUB_LOWERINPUT = 0;
  parameter [0:0] TOPADDSUB_UPPERINPUT = 0;
  parameter [1:0] TOPADDSUB_CARRYSELECT = 0;
  parameter [1:0] BOTOUTPUT_SELECT = 0;
  parameter [1:0] BOTADDSUB_LOWERINPUT = 0;
  parameter [0:0] BOTADDSUB_UPPERINPUT = 0;
  parameter [1:0] BOTADDSUB_CARRYSELECT = 0;
  parameter [0:0] MODE_8x8 = 0;
  parameter [0:0] A_SIGNED = 0;
  parameter [0:0] B_SIGNED = 0;
endmodule
"""
ICE40_DSP_HIDE = (f"read_verilog -lib {ICE40_DSP_STUB_NAME}; "
                  "chtype -set SERRANO_SB_MAC16 t:SB_MAC16")
ICE40_DSP_RESTORE = "chtype -set SB_MAC16 t:SERRANO_SB_MAC16; delete =SERRANO_SB_MAC16"



_PE_RE = re.compile(r"^pe_\d", re.I)


def kept_modules(il_text: str, core: str) -> list[str]:
    """Modules that keep their hierarchy: the core's direct children, plus the shallowest
    descendants that are an array or an output stage (so that those get their own line in
    the breakdown even when another unit instantiates them)."""
    names = [m.group(1) for m in map(MODULE_RE.match, il_text.splitlines()) if m]
    prefix = core + "."
    kept = []
    for name in names:
        if not name.startswith(prefix):
            continue
        rel = name[len(prefix):].split(".")
        if _PE_RE.match(rel[-1]):
            continue  # a grid of PEs stays flat: one line per PE says nothing
        if len(rel) == 1:
            kept.append(name)
        elif categorize(rel[-1]) in ("array", "output stage") and not any(
                categorize(part) in ("array", "output stage") for part in rel[1:-1]):
            kept.append(name)
    return kept


TOP = "serrano"   # name of the synthesized top module

# Amaranth names the wires of array views `a[0]`, `out[1]`, ...; Yosys 0.70's abc9 names the
# bits it re-integrates the same way and dies on the clash (`Assert count_id(wire->name) == 0'
# in ABC_OPS_REINTEGRATE). Those wires are internal aliases: make their names private.
HIDE_BRACKET_WIRES = "rename -hide w:*]"

# Register replication: a register named `*_replica*` (several copies of one register, each
# driving part of a wide fan-out, such as the accumulator buffer's per-column selects) gets
# `keep`, which stops Yosys' opt_merge from merging the copies back into one register. On a
# wire the attribute would not do it: the flip-flop cell itself must carry it.
KEEP_REPLICAS = "setattr -set keep 1 w:*_replica* %ci1 t:$*dff* %i"


def buffer_ram_style(kept: list[str], core: str) -> str | None:
    """A Yosys command putting every memory of the buffer modules among ``kept`` in block
    RAM: left alone, Yosys maps the small ones (weights, parameters) to ECP5 LUT RAM."""
    buffers = [name for name in kept
               if categorize(name[len(core) + 1:].split(".")[-1]) == "buffers"]
    if not buffers:
        return None
    return 'setattr -set ram_style "block" ' + " ".join(f"{b}/m:*" for b in buffers)


def buffer_collisions_dont_care(modules: list[str]) -> str | None:
    """A Yosys command declaring that the buffers' non-transparent read ports never read an
    entry in the cycle it is written (``COLLISION_X_MASK``).

    An Amaranth read port that is not transparent promises the old data on such a collision,
    and Yosys emulates that around every block RAM with a register of the write data, an
    address compare and a multiplexer on the RAM output (a LUT level between the RAM and its
    first register). Our buffers never rely on it: the decoder's scoreboard keeps units off
    entries another unit is writing, and the pipelined accumulator forwards the writes its
    own reads miss
    (``hw.buffers``). Transparent ports (the one-cycle accumulator) are left alone.
    """
    if not modules:
        return None
    return "; ".join(f"setparam -set COLLISION_X_MASK 1'1 {mod}/t:$memrd_v2 "
                     f"{mod}/r:TRANSPARENCY_MASK=1'0 %i" for mod in modules)


# The wire delay abc9 assumes when it maps logic to ECP5 LUTs (synth_ecp5 passes 300 ps, so
# little that a LUT level looks free and abc9 deepens every path off a module's critical one).
ECP5_ABC9_WIRE_DELAY_PS = 1500


def yosys_script(device: Device, keep: list[str], core: str = TOP,
                  buffer_top: bool = False) -> str:
    """The flow's Yosys script for ``device``: reads ``top.il``, keeps the hierarchy of
    ``keep``, writes ``stat.json``, ``stat.txt`` and ``netlist.json``. ``buffer_top``: the
    top module ``core`` is itself a buffer (its read ports get the collision don't-care)."""
    lines = ["read_rtlil top.il", HIDE_BRACKET_WIRES]
    if device.family is Family.ICE40:
        lines.append(ICE40_DSP_HIDE)
    lines += [f"hierarchy -top {TOP}", KEEP_REPLICAS]
    if keep:
        lines.append("setattr -mod -set keep_hierarchy 1 " + " ".join(keep))
    ram_style = buffer_ram_style(keep, core) if device.family is not Family.GENERIC else None
    if ram_style:
        lines.append(ram_style)
    buffers = [name for name in keep
               if categorize(name[len(core) + 1:].split(".")[-1]) == "buffers"]
    collisions = buffer_collisions_dont_care(buffers + ([core] if buffer_top else []))
    if collisions:
        lines.append(collisions)
    if device.family is Family.ECP5:
        # synth_ecp5 with its LUT mapping step spelled out, to pass abc9 another wire delay
        # (ECP5_ABC9_WIRE_DELAY_PS).
        lines += [f"synth_ecp5 -top {TOP} -run :map_luts",
                  "techmap -map +/lattice/latches_map.v",
                  f"abc9 -W {ECP5_ABC9_WIRE_DELAY_PS}", "clean",
                  f"synth_ecp5 -top {TOP} -run map_cells:"]
    elif device.family is Family.ICE40:
        lines += [f"synth_ice40 -top {TOP} -dsp -spram -device u", ICE40_DSP_RESTORE]
    else:
        # Yosys' generic `synth` without memory_map: memories stay memories (an ASIC flow
        # would use SRAM macros), everything else becomes simple gates and flip-flops.
        lines += [f"synth -top {TOP} -flatten -run begin:fine",
                  "opt -fast -full", "techmap", "opt -fast", "abc -g AND,NAND,OR,NOR,XOR,"
                  "XNOR,ANDNOT,ORNOT,MUX", "opt -fast", "hierarchy -check", "check"]
    lines += ["tee -q -o stat.json stat -json", "tee -q -o stat.txt stat"]
    if device.family is Family.ECP5 and keep:
        # The hierarchy was kept for the per-module statistics above; nextpnr flattens
        # anyway, and a flat netlist lets fold_bram_output_registers reach the register
        # that follows a buffer's RAM in the module that reads it.
        lines += ["setattr -mod -unset keep_hierarchy", "flatten"]
    lines += ["write_json netlist.json"]
    return "\n".join(lines) + "\n"
