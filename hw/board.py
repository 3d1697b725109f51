"""Board tops: the accelerator, on-chip memory standing in for external memory, and a UART
bridge to a host PC, and the amaranth-boards platforms they run on.

``BoardTop`` is the platform-independent part (simulated by ``tests/test_board.py``);
``PlatformTop`` connects it to a board's UART and LEDs (and a PLL). Building a bitstream is
the flows' job: :func:`serrano.flows.boards.build_board`.
"""

from amaranth import Cat, Elaboratable, Module, Mux, Signal
from amaranth.build import Attrs, ResourceError
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig
from .mult import Family, MultiplierTarget
from .uart import _checked

__all__ = ["SharedMemory", "BoardTop", "PlatformTop", "uart_divisor", "ecp5_pll_params",
           "ice40_pll_params", "pll_params", "buildable", "icebreaker_platform",
           "ulx3s_85f_platform", "orangecrab_25f_platform"]

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
        # straight from flip-flops, not through the arbiter, this multiplexer and the SPRAM
        # write-enable decode.
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
        m.submodules.accel = accel = Accelerator(cfg, target=self._target)
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


def pll_params(family: "Family | str", f_in: float, f_out: float) -> dict:
    """The PLL settings of ``family`` (ECP5 or iCE40, or its name) for ``f_out`` from
    ``f_in``; ``["f_out"]`` is the frequency the design then runs at."""
    known = {f.value: f for f in Family}
    fam = family if isinstance(family, Family) else known.get(family)
    if fam is Family.ECP5:
        return ecp5_pll_params(f_in, f_out)
    if fam is Family.ICE40:
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
        family = Family(platform.family.lower())   # amaranth's iCE40 platform says "iCE40"
        params = pll_params(family, platform.default_clk_frequency, self.sys_clk_hz)
        build = {Family.ICE40: self._ice40_pll, Family.ECP5: self._ecp5_pll}[family]
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

def buildable(cls, extra_resources: list | None = None):
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


def icebreaker_platform():
    """The iCEBreaker's platform class."""
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    return buildable(ICEBreakerPlatform)


def ulx3s_85f_platform():
    """The ULX3S 85F's platform class."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return buildable(ULX3S_85F_Platform)


def orangecrab_25f_platform():
    """The OrangeCrab r0.2 25F's platform class, with a UART on the feather header."""
    from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_25FPlatform
    from amaranth_boards.resources import UARTResource
    # The OrangeCrab has no USB-serial chip: a 3.3 V USB-serial adapter goes on the feather
    # header, FPGA TX on pin "0" (N17), FPGA RX on pin "1" (M18).
    uart = UARTResource(0, rx="1", tx="0", conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33"))
    return buildable(OrangeCrabR0_2_25FPlatform, [uart])
