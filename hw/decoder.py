"""Command decoder: checks instructions, dispatches them in order, keeps status and counters."""

from amaranth import *
from amaranth.hdl import Assert
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .checker import END_SLOT_COUNT, InstructionChecker
from .config import AcceleratorConfig
from .counters import PerfCounters, counters_layout
from .execute import MatmulCmd
from .fetch import BufferedFetch, InPlaceFetch, OpFlags, op_flag
from .interfaces import FOOTPRINT_WIDTH, FootprintSignature, UnitActivitySignature
from .loadstore import LoadCmd, StoreCmd
from .mult import MultiplierTarget
from .scoreboard import OverlapScoreboard, SerialScoreboard
from .vector import VectorCmd

__all__ = ["Decoder"]

# Counter events that come from the units, a long route away (see PerfCounters).
_LATE_EVENTS = ("array_busy", "load_stall", "exec_stall", "store_stall")
# Cycles a word waits in decode for the scoreboard's verdict (the longer of the two).
_DECODE_WAIT = max(OverlapScoreboard.verdict_latency, SerialScoreboard.verdict_latency)


def _fill(m: Module, payload, view, **derived) -> None:
    """Drive each field of a unit command ``payload`` from the instruction ``view`` field of
    the same name, or from ``derived``."""
    for name, _ in data.Layout.cast(payload.shape()):
        m.d.comb += payload[name].eq(derived[name] if name in derived else view[name])


class Decoder(wiring.Component):
    """Front end of the accelerator: fetch, check, decode, dispatch.

    Instruction words go through two registers: *fetch* (``hw.fetch``: the raw word and its
    index) and *decode* (the word, its error code and the ends of its ranges). A word stays
    in fetch for :attr:`check_cycles` cycles while the :class:`~.checker.InstructionChecker`
    computes its verdict, the ordered checks of ``isa.instruction_checks`` that the golden
    model runs. Checking in place instead of in a pipeline of word registers keeps the area
    small; it limits the decoder to one instruction every ``check_cycles + 1`` cycles, far
    more than the units consume (a MATMUL streams at least one vector per row). From decode
    an instruction is dispatched to its unit when the unit can take it and the scoreboard
    (``hw.scoreboard``: overlapped or serial, by ``config.overlap``) finds no conflict with
    the instructions in flight. FENCE and HALT wait until every unit is idle.

    A failing check stops dispatch before the faulting instruction has any effect; once the
    units have finished the instructions before it, ``status.done`` rises with the error code
    and the instruction's index. After ``done`` (HALT or error) the decoder keeps accepting
    and discarding words, so a host can never block on the instruction stream; ``clear``
    (a reset of the whole accelerator's control state, applied by the top level) starts
    over.

    Parameters
    ----------
    config : AcceleratorConfig
    target : MultiplierTarget or None
    assertions : bool
        Add simulation assertions (``amaranth.hdl.Assert``) of the scoreboard's timing
        argument and of the units' handshake contract. For simulation only: synthesis would
        keep them as ``$check`` cells.
    """

    def __init__(self, config: AcceleratorConfig, target: MultiplierTarget | None = None, *,
                 assertions: bool = False):
        self._config = config
        self._checker = InstructionChecker(config, target)  # validates target
        self._assertions = bool(assertions)
        members = {
            "instr": In(stream.Signature(isa.INSTR_WIDTH)),
            "load_cmd": Out(stream.Signature(LoadCmd())),
            "exec_cmd": Out(stream.Signature(MatmulCmd(config))),
            "store_cmd": Out(stream.Signature(StoreCmd())),
            "load_activity": In(UnitActivitySignature()),
            "exec_activity": In(UnitActivitySignature()),
            "store_activity": In(UnitActivitySignature()),
            "footprint": In(FootprintSignature()),
            "status": Out(isa.Status),
            # The fields of isa.PERF_COUNTERS; the top level adds the activity counters,
            # which count in the same window, `counting`.
            "counters": Out(counters_layout(isa.PERF_COUNTERS)),
            "counting": Out(1),
        }
        if config.vector:
            # The vector unit: single-slot like the load and store units.
            members["vector_cmd"] = Out(stream.Signature(VectorCmd()))
            members["vector_activity"] = In(UnitActivitySignature())
        super().__init__(members)

    @property
    def check_cycles(self) -> int:
        """Cycles a word spends in fetch before it may move to decode: the checker's latency."""
        return self._checker.latency

    def elaborate(self, platform):
        m = Module()
        cfg, Op = self._config, isa.Opcode
        m.submodules.checker = checker = self._checker
        m.submodules.fetch = fetch = (BufferedFetch if cfg.overlap else InPlaceFetch)(
            checker.latency, cfg)
        m.submodules.scoreboard = sb = (OverlapScoreboard if cfg.overlap else
                                        SerialScoreboard)(cfg)
        m.submodules.counters = counters = PerfCounters(width=cfg.counter_width,
                                                        late=_LATE_EVENTS)
        fe = fetch.out
        wiring.connect(m, wiring.flipped(self.instr), fetch.instr)
        wiring.connect(m, wiring.flipped(self.footprint), sb.footprint)
        m.d.comb += [checker.word.eq(fe.word), checker.check_word.eq(fe.check_word),
                     checker.is_op.eq(fe.is_op)]

        # ---- decode: the checked word, its verdict and its ranges --------------------------
        # running == ~halted & (status.error == NONE), a register of its own: it gates the
        # issue decision and the fetch/decode enables.
        running = Signal(init=1)
        halted = Signal()
        de_valid = Signal()
        de_word = Signal(isa.INSTR_WIDTH)
        de_index = Signal(32)
        de_error = Signal(isa.ErrorCode)
        de_fault = Signal()
        de_end = Signal(data.ArrayLayout(FOOTPRINT_WIDTH, END_SLOT_COUNT))
        de_mem_end = Signal(len(checker.mem_end))
        de_param_end = Signal(FOOTPRINT_WIDTH)
        de_is = Signal(OpFlags(cfg))   # the opcode, one-hot: it steers the issue decision
        de_wait = Signal(range(_DECODE_WAIT + 1))  # cycles until the verdict is on this word
        # Decode refills only once empty, one cycle after an issue: the issue decision (the
        # scoreboard's compares) then never drives the enables of the fetch and decode
        # registers. The check pipeline limits throughput more than this bubble.
        de_take = ~de_valid
        issue = Signal()      # the instruction in decode leaves it this cycle
        m.d.comb += [fetch.running.eq(running), fe.take.eq(de_take)]
        with m.If(de_take):
            m.d.sync += de_wait.eq(_DECODE_WAIT)
        with m.Elif(de_wait != 0):
            m.d.sync += de_wait.eq(de_wait - 1)
        with m.If(de_take):  # de_take and issue exclude each other (~de_valid vs de_valid)
            m.d.sync += [de_valid.eq(fe.valid & fe.checked & running), de_word.eq(fe.word),
                         de_index.eq(fe.index), de_error.eq(checker.error),
                         de_fault.eq(checker.error != isa.ErrorCode.NONE),
                         de_param_end.eq(isa.StoreInstr(fe.word).param_addr + 1),
                         de_is.eq(checker.is_op_out), de_mem_end.eq(checker.mem_end),
                         de_end.eq(checker.ends)]
        with m.If(issue):
            m.d.sync += de_valid.eq(0)

        # ---- scoreboard ------------------------------------------------------------------
        # The units' busy flags come out of their control logic: registered here so that
        # they do not reach the issue decision combinationally. A cycle-old "all idle" is
        # safe: units only become busy by a dispatch, and none happens while decode waits.
        all_idle = Signal()
        units = (self.load_activity, self.exec_activity, self.store_activity)
        if cfg.vector:
            units += (self.vector_activity,)
            m.d.comb += sb.vector_busy.eq(self.vector_activity.busy)
        m.d.sync += all_idle.eq(~Cat(unit.busy for unit in units).any())
        m.d.comb += [
            sb.take.eq(de_take), sb.word.eq(fe.word), sb.ends.eq(de_end),
            sb.mem_end.eq(de_mem_end), sb.param_end.eq(de_param_end), sb.is_op.eq(de_is),
            sb.all_idle.eq(all_idle), sb.load_busy.eq(self.load_activity.busy),
            sb.store_busy.eq(self.store_activity.busy),
        ]
        conflict_q = Signal()
        m.d.sync += conflict_q.eq(sb.conflict)

        # ---- issue control ---------------------------------------------------------------
        ld, mm, sto = isa.LoadInstr(de_word), isa.MatmulInstr(de_word), isa.StoreInstr(de_word)
        _fill(m, self.load_cmd.payload, ld)
        _fill(m, self.exec_cmd.payload, mm)
        _fill(m, self.store_cmd.payload, sto, raw=sto.mode == isa.StoreMode.RAW)
        # `ok` (decode holds a word that passed its checks, the scoreboard's verdict on it is
        # in, and the program runs) heads the issue decision, whose result clears de_valid
        # and enables the counters. It is a register: a word entering decode waits de_wait
        # cycles; otherwise the word stays unless issued, and running only drops through a
        # HALT's issue or a fault (which excludes ok anyway).
        ok = Signal()
        halt_issue = Signal()   # a HALT leaves decode (every unit idle)
        is_op = lambda op: op_flag(de_is, op)
        m.d.sync += ok.eq(de_valid & ~de_fault & running & (de_wait <= 1) & ~issue)
        # The load and store units' offers wait for the scoreboard's go (their handshakes,
        # logic a long route away, stay off the issue decision); execute's ready is one
        # register (an empty preload stage).
        m.d.comb += [
            self.load_cmd.valid.eq(ok & is_op(Op.LOAD) & ~conflict_q & sb.load_go),
            self.exec_cmd.valid.eq(ok & is_op(Op.MATMUL) & ~conflict_q),
            self.store_cmd.valid.eq(ok & is_op(Op.STORE) & ~conflict_q & sb.store_go),
            halt_issue.eq(ok & is_op(Op.HALT) & all_idle),
        ]
        issued = (self.load_cmd.valid | (self.exec_cmd.valid & self.exec_cmd.ready) |
                  self.store_cmd.valid | halt_issue | (ok & is_op(Op.FENCE) & all_idle) |
                  (ok & is_op(Op.NOP)))  # (anything else has faulted)
        if cfg.vector:
            _fill(m, self.vector_cmd.payload, isa.VectorInstr(de_word))
            # Offered like the load unit's commands (the scoreboard's go: idle a cycle ago).
            is_vector = Cat(is_op(op) for op in isa.VECTOR_OPCODES).any()
            m.d.comb += self.vector_cmd.valid.eq(ok & is_vector & ~conflict_q & sb.vector_go)
            issued = issued | self.vector_cmd.valid
        m.d.comb += issue.eq(issued)
        # (`halt_issue` rather than `issue & HALT`: the units' handshakes stay off these enables.)
        with m.If(halt_issue):
            m.d.sync += [halted.eq(1), running.eq(0)]
        if self._assertions:
            self._assert_contracts(m, sb, de_take, issue)

        # ---- status ----------------------------------------------------------------------
        with m.If(de_valid & de_fault & running):
            m.d.sync += [self.status.error.eq(de_error), self.status.fault_index.eq(de_index),
                         running.eq(0)]
        # Status and counters are registered one cycle behind the state they describe: the
        # counters add registered increments, and done/idle wait for the last increment to
        # land, so a host that sees done (or idle) reads final counters.
        done = Signal()
        issue_q = Signal()
        m.d.comb += done.eq(halted | ((self.status.error != isa.ErrorCode.NONE) & all_idle))
        m.d.sync += [
            self.status.done.eq(done),
            self.status.busy.eq(fetch.started & ~done),
            # all_idle is a cycle old, and a unit that took an instruction a cycle ago is busy
            # now without all_idle knowing, hence issue_q.
            self.status.idle.eq(~fe.valid & ~de_valid & ~fetch.word_in & all_idle & ~issue_q),
            issue_q.eq(issue),
        ]

        # ---- counters: from the cycle after the first accepted word until done -----------
        # (``started`` rather than the accepting handshake, which is late in the cycle,
        # gates the increments; the late events are low while every unit is idle, which
        # they are in the cycles before counting starts and stops.)
        ev = counters.events
        m.d.comb += [
            counters.counting.eq(fetch.started & ~done),
            self.counting.eq(counters.counting),
            ev.cycles.eq(1),
            ev.array_busy.eq(self.footprint.issued),
            ev.instructions.eq(issue & running),
            ev.dispatch_stall.eq(ok & ~issue),
            ev.load_stall.eq(self.load_activity.stalled),
            ev.exec_stall.eq(self.exec_activity.stalled),
            ev.store_stall.eq(self.store_activity.stalled),
            self.counters.eq(counters.counters),
        ]
        return m

    def _assert_contracts(self, m: Module, sb, de_take: Value, issue: Value) -> None:
        """Simulation assertions of what the issue decision relies on.

        The scoreboard's verdict describes the state ``sb.verdict_latency`` cycles before
        its use, and a dispatch reaches the state it compares ``sb.footprint_delay`` cycles
        after it happens. Only a dispatch creates a conflict, so the verdict is safe if
        every dispatch finds its word in decode for the verdict's whole window and the
        previous dispatch at least ``verdict_latency + footprint_delay`` cycles back.
        The load and store units are offered a command only when idle, and must take it.
        """
        horizon = sb.verdict_latency + sb.footprint_delay
        in_decode = Signal(range(horizon + 1))     # cycles the word has been in decode
        since_issue = Signal(range(horizon + 1), init=horizon)
        with m.If(de_take):
            m.d.sync += in_decode.eq(0)
        with m.Elif(in_decode != horizon):
            m.d.sync += in_decode.eq(in_decode + 1)
        with m.If(issue):
            m.d.sync += since_issue.eq(1)
        with m.Elif(since_issue != horizon):
            m.d.sync += since_issue.eq(since_issue + 1)
        m.d.sync += [
            Assert(~issue | (in_decode >= sb.verdict_latency),
                   "dispatch on a verdict older than the word in decode"),
            Assert(~issue | (since_issue >= horizon),
                   "dispatch on a verdict that does not see the previous dispatch"),
            Assert(~self.load_cmd.valid | self.load_cmd.ready, "load unit refused a command"),
            Assert(~self.store_cmd.valid | self.store_cmd.ready,
                   "store unit refused a command"),
        ]
        if self._config.vector:
            m.d.sync += Assert(~self.vector_cmd.valid | self.vector_cmd.ready,
                               "vector unit refused a command")
