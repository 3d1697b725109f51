"""Target-specific signed multipliers with a registered product.

The processing element of the systolic array multiplies an activation (int8, or int16 with
``AcceleratorConfig.act_bits = 16``) by an int8 weight every cycle. What that multiplier
should be depends on the FPGA:

* ``generic``: a plain ``a * b`` followed by a register. Portable; on ECP5 Yosys infers a
  *combinational* MULT18X18D from it and packs none of the registers.
* ``ecp5``: an instantiated ``MULT18X18D`` with its input, pipeline and output registers
  enabled, and fabric registers after it.
* ``ice40``: an instantiated ``SB_MAC16`` (16x16 mode on sign-extended operands) with its
  input, multiplier and pipeline registers enabled.
* ``lut``: a shift-and-add multiplier over the 8 bits of ``b`` (8 partial products of ``a``,
  which may be up to 16 bits wide) written out in fabric logic, pipelined to the same
  latency as the DSP it stands in for. Used for the PEs beyond the device's DSP count, since
  Yosys has no per-cell way to keep an ``a * b`` out of a DSP.

Every kind computes ``p(t + latency) = a(t) * b(t)`` (``en = 1``); all kinds of one
:class:`MultiplierTarget` share one latency, so a systolic array can mix DSP and LUT PEs
without changing its skew. Vendor primitives cannot run in the Amaranth simulator:
``simulation=True`` replaces them with a cycle-equivalent Amaranth model (same registers,
same latency) so that a board top built for a device can still be simulated.
"""

import enum
from dataclasses import dataclass

from amaranth import ClockSignal, Const, Module, Mux, Signal, signed
from amaranth.hdl import Instance
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .delay import delay

__all__ = ["KINDS", "Family", "Multiplier", "MultiplierTarget", "natural_latency", "sb_mac16"]


class Family(enum.Enum):
    """An FPGA family: the only tool knowledge gateware has is which primitives it targets.

    ``GENERIC`` is portable RTL (plain ``a * b``, inferred memories) for simulation, ASIC
    flows and unknown devices.
    """
    GENERIC = "generic"
    ECP5 = "ecp5"
    ICE40 = "ice40"


KINDS = ("generic", "lut", "ecp5", "ice40")

# ecp5: the MULT18X18D's input, pipeline and output registers, then two fabric registers
# that cut the route from the DSP to the PE's adder, which the placer may put far from it.
_NATURAL_LATENCY = {"generic": 1, "lut": 1, "ecp5": 5, "ice40": 3}
# Registers each DSP can absorb; latency beyond this is added as fabric registers after it.
_DSP_MAX_INTERNAL = {"ecp5": 3, "ice40": 3}

_OPERAND_WIDTH = 8
# Widest operands per kind (None: no limit): the DSPs' multiplier inputs; the lut kind's
# adder tree is built for an 8-bit b and takes a up to 16 bits.
_MAX_A_WIDTH = {"generic": None, "ecp5": 18, "ice40": 16, "lut": 16}
_MAX_B_WIDTH = {"generic": None, "ecp5": 18, "ice40": 16, "lut": _OPERAND_WIDTH}


def natural_latency(kind: str) -> int:
    """Latency a multiplier kind has when nothing else constrains it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    return _NATURAL_LATENCY[kind]


class Multiplier(wiring.Component):
    """Signed ``a_width`` x ``b_width`` multiplier with a registered product (8x8 or 16x8 in
    the PEs).

    Parameters
    ----------
    kind : str
        ``"generic"``, ``"lut"``, ``"ecp5"`` or ``"ice40"`` (see the module docstring).
    latency : int or None
        Cycles from operands to product, at least 1. ``None`` takes the kind's natural latency
        (generic/lut 1, ecp5 5, ice40 3). DSP kinds use their internal registers first
        (ecp5: output; input + output; input + pipeline + output) and add fabric registers
        after the DSP for more.
    simulation : bool
        For ``ecp5``/``ice40``: elaborate a cycle-equivalent Amaranth model instead of the
        vendor primitive (the primitive has no model in the Amaranth simulator).
    width : int
        Width of both operands unless ``a_width``/``b_width`` say otherwise (default 8).
    a_width, b_width : int or None
        Width of ``a`` and of ``b``; ``None`` takes ``width``. ``generic`` takes any width
        from 2; ``ecp5`` up to the MULT18X18D's 18 each (the decoder's memory-extent multiply
        uses 18x18); ``ice40`` up to the SB_MAC16's 16 each; ``lut`` an ``a`` of 2..16 bits
        and an 8-bit ``b``.

    Attributes
    ----------
    a : In(signed(a_width))
    b : In(signed(b_width))
        Operands, sampled on every clock edge where ``en`` is high.
    en : In(1), init 1
        Clock enable of every register in the multiplier (the whole pipeline stalls).
    p : Out(signed(a_width + b_width))
        ``a * b`` from ``latency`` enabled cycles earlier.
    """

    def __init__(self, kind: str = "generic", *, latency: int | None = None,
                 simulation: bool = False, width: int = _OPERAND_WIDTH,
                 a_width: int | None = None, b_width: int | None = None):
        a_width = width if a_width is None else a_width
        b_width = width if b_width is None else b_width
        try:
            self._check(kind, latency, simulation, a_width, b_width)
        except (TypeError, ValueError):
            self._MustUse__silence = True   # a rejected object is not "unused" by mistake
            raise
        self._kind = kind
        self._latency = _NATURAL_LATENCY[kind] if latency is None else latency
        self._simulation = simulation
        self._a_width, self._b_width = a_width, b_width
        self._p_width = a_width + b_width
        super().__init__({
            "a": In(signed(a_width)),
            "b": In(signed(b_width)),
            "en": In(1, init=1),
            "p": Out(signed(self._p_width)),
        })

    @staticmethod
    def _check(kind, latency, simulation, a_width=_OPERAND_WIDTH,
               b_width=_OPERAND_WIDTH) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        for name, width, limits in (("a", a_width, _MAX_A_WIDTH), ("b", b_width, _MAX_B_WIDTH)):
            max_width = limits[kind]
            if (isinstance(width, bool) or not isinstance(width, int) or width < 2
                    or (max_width is not None and width > max_width)
                    or (name == "b" and kind == "lut" and width != _OPERAND_WIDTH)):
                limit = ("at least 2" if max_width is None else
                         str(max_width) if name == "b" and kind == "lut" else
                         f"from 2 to {max_width}")
                raise ValueError(f"width of a {kind} multiplier must be {limit} for operand "
                                 f"{name}, not {width!r}")
        if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int)
                                    or latency < 1):
            raise ValueError(f"latency must be a positive integer, not {latency!r}")
        if not isinstance(simulation, bool):
            raise TypeError(f"simulation must be a bool, not {simulation!r}")

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def latency(self) -> int:
        """Cycles from ``a``/``b`` to ``p``."""
        return self._latency

    @property
    def uses_dsp(self) -> bool:
        """Whether this multiplier occupies one hard DSP block (when synthesized)."""
        return self._kind in ("ecp5", "ice40")

    def elaborate(self, platform):
        m = Module()
        if self._kind == "generic":
            self._elaborate_generic(m)
        elif self._kind == "lut":
            self._elaborate_lut(m)
        else:
            self._elaborate_dsp(m)
        return m

    # ---- helpers ---------------------------------------------------------------------------
    def _delay(self, m, value, stages, name, reset_less=False):
        """``value`` through ``stages`` enabled registers ``{name}_d0``, ``{name}_d1``, ..."""
        return delay(m, value, stages, name=f"{name}_d{{}}", reset_less=reset_less, en=self.en)

    def _elaborate_generic(self, m):
        # Extra latency goes in front so that a retiming-capable tool can push it into the
        # multiplier; the product register is always the last stage.
        a = self._delay(m, self.a, self._latency - 1, "a")
        b = self._delay(m, self.b, self._latency - 1, "b")
        product = Signal(signed(self._p_width))
        with m.If(self.en):
            m.d.sync += product.eq(a * b)
        m.d.comb += self.p.eq(product)

    def _elaborate_lut(self, m):
        # Shift-and-add on the two's-complement digits of b: b = -b7*2^7 + sum bi*2^i.
        # No `*` appears, so no synthesis tool turns it into a DSP. All arithmetic is modulo
        # 2^(a_width + 8): intermediate sums may wrap, the final product
        # (|p| <= 2^(a_width + 6)) does not.
        # Pipeline: optional input registers, the 4 first-level sums, the 2 second-level sums
        # (from latency 2), the product register last.
        stages_in = max(0, self._latency - 3)
        mid_regs = 1 if self._latency >= 2 else 0
        late_regs = 1 if self._latency >= 3 else 0
        a = self._delay(m, self.a, stages_in, "a")
        b = self._delay(m, self.b, stages_in, "b")

        a_ext = Signal(signed(self._p_width))
        m.d.comb += a_ext.eq(a)
        partial = []
        for i in range(_OPERAND_WIDTH):
            pp = Signal(signed(self._p_width), name=f"pp{i}")
            m.d.comb += pp.eq(Mux(b[i], a_ext << i, 0))
            partial.append(pp)

        def wrap_sum(x, y, name, subtract=False):
            s = Signal(signed(self._p_width), name=name)
            m.d.comb += s.eq(x - y if subtract else x + y)
            return s

        level1 = [wrap_sum(partial[0], partial[1], "s01"), wrap_sum(partial[2], partial[3], "s23"),
                  wrap_sum(partial[4], partial[5], "s45"),
                  wrap_sum(partial[6], partial[7], "s67", subtract=True)]
        level1 = [self._delay(m, s, late_regs, s.name) for s in level1]
        level2 = [wrap_sum(level1[0], level1[1], "s0123"), wrap_sum(level1[2], level1[3], "s4567")]
        level2 = [self._delay(m, s, mid_regs, s.name) for s in level2]
        product = Signal(signed(self._p_width))
        with m.If(self.en):
            m.d.sync += product.eq(level2[0] + level2[1])
        m.d.comb += self.p.eq(product)

    def _elaborate_dsp(self, m):
        internal = min(self._latency, _DSP_MAX_INTERNAL[self._kind])
        extra = self._latency - internal
        reg_in = internal >= 2
        reg_mid = internal >= 3
        raw = Signal(signed(self._p_width))
        if self._simulation:
            self._model_dsp(m, raw, reg_in, reg_mid)
        elif self._kind == "ecp5":
            self._instance_ecp5(m, raw, reg_in, reg_mid)
        else:
            self._instance_ice40(m, raw, reg_in, reg_mid)
        # Fabric registers after the DSP: they also cut the DSP-to-fabric route.
        m.d.comb += self.p.eq(self._delay(m, raw, extra, "p"))

    def _model_dsp(self, m, raw, reg_in, reg_mid):
        """Cycle-equivalent model of the DSP configurations below: registers on the inputs
        (``reg_in``), after the multiplier (``reg_mid``) and on the output (always). Like the
        primitives' registers (whose reset inputs are tied off) they ignore the domain reset."""
        a = self._delay(m, self.a, int(reg_in), "a_model", reset_less=True)
        b = self._delay(m, self.b, int(reg_in), "b_model", reset_less=True)
        mid = Signal(signed(self._p_width))
        m.d.comb += mid.eq(a * b)
        mid = self._delay(m, mid, int(reg_mid), "mid_model", reset_less=True)
        m.d.comb += raw.eq(self._delay(m, mid, 1, "out_model", reset_less=True))

    def _instance_ecp5(self, m, raw, reg_in, reg_mid):
        # Operands sign-extended to the DSP's 18 bits, SIGNEDA/B = 1; the product is the
        # low a_width + b_width bits.
        def clk(enabled):
            return "CLK0" if enabled else "NONE"

        a18 = Signal(signed(18))
        b18 = Signal(signed(18))
        p36 = Signal(36)
        m.d.comb += [a18.eq(self.a), b18.eq(self.b), raw.eq(p36[:self._p_width])]
        ports = {}
        for i in range(18):
            ports[f"i_A{i}"] = a18[i]
            ports[f"i_B{i}"] = b18[i]
            ports[f"i_C{i}"] = Const(0, 1)
        for i in range(36):
            ports[f"o_P{i}"] = p36[i]
        m.submodules.dsp = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK=clk(reg_in), p_REG_INPUTB_CLK=clk(reg_in),
            p_REG_INPUTC_CLK="NONE",
            p_REG_PIPELINE_CLK=clk(reg_mid), p_REG_OUTPUT_CLK="CLK0",
            p_REG_INPUTA_CE="CE0", p_REG_INPUTB_CE="CE0", p_REG_PIPELINE_CE="CE0",
            p_REG_OUTPUT_CE="CE0",
            p_REG_INPUTA_RST="RST0", p_REG_INPUTB_RST="RST0", p_REG_PIPELINE_RST="RST0",
            p_REG_OUTPUT_RST="RST0",
            p_CLK0_DIV="ENABLED", p_CLK1_DIV="ENABLED", p_CLK2_DIV="ENABLED",
            p_CLK3_DIV="ENABLED", p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED",
            p_CAS_MATCH_REG="FALSE", p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
            p_RESETMODE="SYNC",
            i_SIGNEDA=Const(1, 1), i_SIGNEDB=Const(1, 1),
            i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
            i_CLK0=ClockSignal("sync"), i_CE0=self.en,
            i_RST0=Const(0, 1),
            i_CLK1=Const(0, 1), i_CLK2=Const(0, 1), i_CLK3=Const(0, 1),
            i_CE1=Const(0, 1), i_CE2=Const(0, 1), i_CE3=Const(0, 1),
            i_RST1=Const(0, 1), i_RST2=Const(0, 1), i_RST3=Const(0, 1),
            **ports)

    def _instance_ice40(self, m, raw, reg_in, reg_mid):
        # 16x16 mode on sign-extended operands: the low a_width + b_width bits of the 32-bit
        # product are the signed product whatever A_SIGNED/B_SIGNED say (both operands fit
        # 16 bits, so the product fits 32), and the signed 8x8 mode (whose sign handling is
        # the least documented corner of SB_MAC16) is not needed.
        a16 = Signal(signed(16))
        b16 = Signal(signed(16))
        o32 = Signal(32)
        m.d.comb += [a16.eq(self.a), b16.eq(self.b), raw.eq(o32[:self._p_width])]
        m.submodules.dsp = sb_mac16(a16, b16, o32, a_signed=True, b_signed=True,
                                    reg_in=reg_in, reg_mid=reg_mid, ce=self.en)


@dataclass(frozen=True, kw_only=True)
class MultiplierTarget:
    """How the processing elements of one array get their multipliers.

    Parameters
    ----------
    family : Family or str
        ``Family.GENERIC`` (every PE gets a plain registered ``a * b``), ``ECP5`` or ``ICE40``
        (PEs get the hard DSP of that family, up to ``dsp_pes`` of them, the rest ``lut``).
        A family's name (``"ecp5"``) is accepted and converted.
    dsp_pes : int or None
        How many PEs, counted row-major from PE(0, 0), use a hard DSP; ``None`` means all.
        Ignored for ``generic``.
    latency : int or None
        Multiplier latency shared by every PE; ``None`` takes the natural latency of the
        family's DSP (generic: 1, ecp5: 5, ice40: 3).
    simulation : bool
        Elaborate vendor primitives as cycle-equivalent Amaranth models (for simulation).

    Examples
    --------
    In the PE at ``(row, col)`` of a ``rows x cols`` array::

        m.submodules.mult = mult = target.make(row * cols + col, a_width=config.act_bits)
        # mult.a: the activation, mult.b: the int8 weight; mult.p: their product
        # mult.latency cycles later
    """

    family: Family = Family.GENERIC
    dsp_pes: int | None = None
    latency: int | None = None
    simulation: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "family", Family(self.family))
        except ValueError:
            names = ", ".join(f.value for f in Family)
            raise ValueError(f"family must be a Family or one of {names}, "
                             f"not {self.family!r}") from None
        if self.dsp_pes is not None and (isinstance(self.dsp_pes, bool)
                                         or not isinstance(self.dsp_pes, int)
                                         or self.dsp_pes < 0):
            raise ValueError(f"dsp_pes must be a non-negative integer or None, "
                             f"not {self.dsp_pes!r}")
        if self.latency is not None and (isinstance(self.latency, bool)
                                         or not isinstance(self.latency, int)
                                         or self.latency < 1):
            raise ValueError(f"latency must be a positive integer or None, not {self.latency!r}")
        if not isinstance(self.simulation, bool):
            raise TypeError(f"simulation must be a bool, not {self.simulation!r}")

    @property
    def pe_latency(self) -> int:
        """The latency every multiplier of the array has."""
        if self.latency is not None:
            return self.latency
        return _NATURAL_LATENCY[self.family.value]

    def kind(self, index: int) -> str:
        """Multiplier kind of the PE with row-major ``index``."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"index must be a non-negative integer, not {index!r}")
        if self.family is Family.GENERIC:
            return "generic"
        if self.dsp_pes is None or index < self.dsp_pes:
            return self.family.value
        return "lut"

    def dsp_count(self, n_pes: int) -> int:
        """How many of ``n_pes`` PEs use a hard DSP."""
        if self.family is Family.GENERIC:
            return 0
        return n_pes if self.dsp_pes is None else min(n_pes, self.dsp_pes)

    def make(self, index: int, *, a_width: int = _OPERAND_WIDTH) -> Multiplier:
        """The multiplier of the PE with row-major ``index``: an ``a_width``-bit activation
        (8 or 16) times an 8-bit weight."""
        return Multiplier(self.kind(index), latency=self.pe_latency, simulation=self.simulation,
                          a_width=a_width, b_width=_OPERAND_WIDTH)


def sb_mac16(a, b, o, *, a_signed: bool, b_signed: bool, reg_in: bool, reg_mid: bool,
             ce=1) -> Instance:
    """An iCE40 SB_MAC16 in 16x16 mode: ``o`` (32 bits) = ``a * b`` (16 bits each, signed
    as told), with input registers (``reg_in``), the multiplier's pipeline registers
    (``reg_mid``) and the output register always, all on the ``sync`` clock with enable
    ``ce``. Accumulator, adder and hold paths are tied off."""
    bit = lambda v: Const(int(v), 1)
    return Instance(
        "SB_MAC16",
        p_NEG_TRIGGER=bit(0), p_C_REG=bit(0), p_A_REG=bit(reg_in), p_B_REG=bit(reg_in),
        p_D_REG=bit(0),
        p_TOP_8x8_MULT_REG=bit(reg_mid), p_BOT_8x8_MULT_REG=bit(reg_mid),
        p_PIPELINE_16x16_MULT_REG1=bit(reg_mid), p_PIPELINE_16x16_MULT_REG2=bit(1),
        p_TOPOUTPUT_SELECT=Const(3, 2), p_TOPADDSUB_LOWERINPUT=Const(0, 2),
        p_TOPADDSUB_UPPERINPUT=bit(0), p_TOPADDSUB_CARRYSELECT=Const(0, 2),
        p_BOTOUTPUT_SELECT=Const(3, 2), p_BOTADDSUB_LOWERINPUT=Const(0, 2),
        p_BOTADDSUB_UPPERINPUT=bit(0), p_BOTADDSUB_CARRYSELECT=Const(0, 2),
        p_MODE_8x8=bit(0), p_A_SIGNED=bit(a_signed), p_B_SIGNED=bit(b_signed),
        i_CLK=ClockSignal("sync"), i_CE=ce,
        i_A=a, i_B=b, i_C=Const(0, 16), i_D=Const(0, 16),
        i_AHOLD=bit(0), i_BHOLD=bit(0), i_CHOLD=bit(0), i_DHOLD=bit(0),
        i_IRSTTOP=bit(0), i_IRSTBOT=bit(0), i_ORSTTOP=bit(0), i_ORSTBOT=bit(0),
        i_OLOADTOP=bit(0), i_OLOADBOT=bit(0), i_ADDSUBTOP=bit(0), i_ADDSUBBOT=bit(0),
        i_OHOLDTOP=bit(0), i_OHOLDBOT=bit(0), i_CI=bit(0), i_ACCUMCI=bit(0),
        i_SIGNEXTIN=bit(0),
        o_O=o)
