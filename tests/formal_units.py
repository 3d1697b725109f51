"""Formal harness of the decoder's dispatch: the real decoder and scoreboard, abstract units.

Each abstract unit takes a command under the same handshake contract as the real one and
finishes after a delay that the solver chooses (``AnySeq``), so a proof over them holds for
every timing the real units can have. Against them the harness states, independently of the
scoreboard's own pairwise compares, *what the instructions in flight touch*, from the ISA's
range ends (``isa.instruction_ends``) and the access table below, and asserts:

* **scoreboard invariant**: no two instructions in flight in different units touch
  overlapping ranges of one buffer or of memory where at least one of them writes (RAW, WAR
  and WAW alike: every pair that has a write); units run their own instructions in order,
  so pairs inside one unit are not hazards;
* **no hang**: while every unit is idle, the instruction stream's ``ready`` is never low for
  more than :attr:`DispatchHarness.hang_bound` consecutive cycles.

Access table (who reads ``R`` / writes ``W`` which range)::

    LOAD    target buffer [buf_addr, buf end)  W     memory [mem_addr, mem end)  R
    MATMUL  act [act_addr, act end)            R     wgt [wgt_addr, wgt end)     R
            acc [acc_addr, acc end)            W
    STORE   acc [acc_addr, acc end)            R     param [param_addr, +1)      R (not RAW)
            memory [mem_addr, mem end)         W

The execute unit is modelled as the real one is built: a *preload* slot (act, acc, and wgt
until its weights are in the array), a *stream* slot (act, acc) and a *drain* slot (acc:
results still on their way to the accumulator buffer); a command moves on when the solver
says so and the next slot is free. The real unit reports exactly these stages' ranges in its
``footprint`` (``hw/execute.py``), which the abstract one reproduces.
"""

from amaranth import *
from amaranth.hdl import Assert
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.decoder import Decoder
from serrano.hw.execute import MatmulCmd
from serrano.hw.interfaces import FootprintSignature, UnitActivitySignature
from serrano.hw.loadstore import LoadCmd, StoreCmd
from serrano.hw.vector import VectorCmd

from formal_harness import AnySeq, assume_stream_rule

__all__ = ["Access", "accesses", "vector_accesses", "BUFFERS", "RESOURCES", "AbstractUnit", "AbstractExecuteUnit", "DispatchHarness"]

Op, Target = isa.Opcode, isa.LoadTarget
_BUFFER_OF = {Target.ACT: "act", Target.WGT: "wgt", Target.PARAM: "param"}
#: The buffers, and every resource the scoreboard guards.
BUFFERS = ("act", "wgt", "acc", "param")
RESOURCES = BUFFERS + ("mem",)


class Access:
    """One range an instruction touches: ``resource`` ('act', 'wgt', 'acc', 'param', 'mem'),
    ``[lo, hi)``, whether it writes, and when it applies (``when``: a 1-bit value)."""

    def __init__(self, resource: str, lo, hi, write: bool, when=C(1)):
        self.resource, self.lo, self.hi, self.write, self.when = \
            resource, Value.cast(lo), Value.cast(hi), write, Value.cast(when)

    def conflicts(self, other: "Access") -> Value:
        if self.resource != other.resource or not (self.write or other.write):
            return C(0)
        return (self.when & other.when & (self.lo < other.hi) & (other.lo < self.hi))


def _fields(payload, names) -> dict:
    return {name: Value.cast(payload[name]) for name in names}


def accesses(op: isa.Opcode, payload, cfg: AcceleratorConfig, parts=None) -> list[Access]:
    """The accesses of a unit command ``payload`` (a LoadCmd, MatmulCmd or StoreCmd view),
    from the access table; ``parts`` restricts a MATMUL to some of 'act', 'wgt', 'acc'.
    The ends are ``isa.instruction_ends``'."""
    if op == Op.LOAD:
        f = _fields(payload, ("target", "buf_addr", "n_rows", "row_bytes", "mem_addr",
                              "mem_stride"))
        ends = isa.instruction_ends(op, f, cfg, Mux)
        return [Access(buf, f["buf_addr"], ends["buf"], True, f["target"] == t.value)
                for t, buf in _BUFFER_OF.items()] + \
               [Access("mem", f["mem_addr"], ends["mem"], False)]
    if op == Op.MATMUL:
        f = _fields(payload, ("act_addr", "n_rows", "wgt_addr", "acc_addr"))
        ends = isa.instruction_ends(op, f, cfg, Mux)
        found = [Access("act", f["act_addr"], ends["act"], False),
                 Access("wgt", f["wgt_addr"], ends["wgt"], False),
                 Access("acc", f["acc_addr"], ends["acc"], True)]
        return [a for a in found if parts is None or a.resource in parts]
    if op == Op.STORE:
        f = _fields(payload, ("acc_addr", "n_rows", "n_cols", "param_addr", "mem_addr",
                              "mem_stride"))
        raw = Value.cast(payload.raw)
        f["mode"] = Mux(raw, isa.StoreMode.RAW.value, isa.StoreMode.REQUANT.value)
        ends = isa.instruction_ends(op, f, cfg, Mux)
        return [Access("acc", f["acc_addr"], ends["acc"], False),
                Access("param", f["param_addr"], f["param_addr"] + 1, False, ~raw),
                Access("mem", f["mem_addr"], ends["mem"], True)]
    raise ValueError(f"no unit executes {op!r}")


def vector_accesses(payload, cfg: AcceleratorConfig) -> list[Access]:
    """The accesses of a vector command (a ``VectorCmd`` view), per opcode (``docs/vector.md``):
    the source in the accumulator ``R``, the destination (ACT or WGT) ``W``, the parameter
    entries ``R``, and with ``with_b`` the second operand in ACT ``R``. The ends are
    ``isa.instruction_ends``'."""
    names = [name for name, _ in data.Layout.cast(VectorCmd())]
    f = _fields(payload, names)
    found = []
    for op in isa.VECTOR_OPCODES:
        is_op = f["opcode"] == op.value
        ends = isa.instruction_ends(op, f, cfg, Mux)
        to_act = f["dst"] == isa.VectorDst.ACT.value
        found += [Access("acc", f["src_addr"], ends["src"], False, is_op),
                  Access("act", f["dst_addr"], ends["dst"], True, is_op & to_act),
                  Access("wgt", f["dst_addr"], ends["dst"], True, is_op & ~to_act),
                  Access("param", f["param_addr"], ends["param"], False, is_op)]
        if "b" in ends:
            found.append(Access("act", f["b_addr"], ends["b"], False, is_op & f["with_b"]))
    return found


class AbstractUnit(wiring.Component):
    """A single-command unit (the load or the store unit's contract): ``cmd.ready`` is
    ``~busy``, an accepted command is held (``held``) and finishes after any delay.

    Attributes
    ----------
    busy : Signal
    held : View of the command layout
    """

    def __init__(self, layout):
        super().__init__({"cmd": In(stream.Signature(layout)),
                          "activity": Out(UnitActivitySignature())})
        self.busy = Signal()
        self.held = Signal(layout)

    def elaborate(self, platform):
        m = Module()
        finish = AnySeq(1)
        m.d.comb += [self.cmd.ready.eq(~self.busy), self.activity.busy.eq(self.busy),
                     self.activity.stalled.eq(0)]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [self.busy.eq(1), self.held.eq(self.cmd.payload)]
        with m.Elif(finish):
            m.d.sync += self.busy.eq(0)
        return m


class AbstractExecuteUnit(wiring.Component):
    """The execute unit's contract: preload, stream and drain slots (module docstring),
    ``cmd.ready`` when the preload slot is free, ``footprint`` from the slots.

    Attributes
    ----------
    slots : dict name -> (valid Signal, MatmulCmd view)
    """

    SLOT_PARTS = {"pre": ("act", "wgt", "acc"), "stream": ("act", "acc"), "drain": ("acc",)}

    def __init__(self, config: AcceleratorConfig):
        self._config = config
        super().__init__({"cmd": In(stream.Signature(MatmulCmd(config))),
                          "activity": Out(UnitActivitySignature()),
                          "footprint": Out(FootprintSignature())})
        self.slots = {name: (Signal(name=f"{name}_valid"),
                             Signal(MatmulCmd(config), name=f"{name}_cmd"))
                      for name in self.SLOT_PARTS}
        #: The preload slot's weights are all in the array (the real unit's ``pre_done``):
        #: from then on it no longer reads the weight buffer.
        self.wgt_done = Signal()

    def _range(self, m: Module, port, valid, cmd, part: str) -> None:
        [acc] = accesses(Op.MATMUL, cmd, self._config, parts=(part,))
        m.d.comb += [port.valid.eq(valid), port.lo.eq(acc.lo), port.hi.eq(acc.hi)]

    def elaborate(self, platform):
        m = Module()
        (pv, pc), (sv, sc), (dv, dc) = self.slots.values()
        advance_pre, advance_stream, retire = AnySeq(1), AnySeq(1), AnySeq(1)
        drain_leaves = dv & retire
        stream_leaves = sv & advance_stream & (~dv | drain_leaves)
        pre_leaves = pv & advance_pre & (~sv | stream_leaves)
        m.d.comb += [self.cmd.ready.eq(~pv),
                     self.activity.busy.eq(pv | sv | dv), self.activity.stalled.eq(0)]
        with m.If(drain_leaves):
            m.d.sync += dv.eq(0)
        with m.If(stream_leaves):
            m.d.sync += [dv.eq(1), dc.eq(sc), sv.eq(0)]
        with m.If(pre_leaves):
            m.d.sync += [sv.eq(1), sc.eq(pc), pv.eq(0)]
        with m.If(pv & AnySeq(1)):
            m.d.sync += self.wgt_done.eq(1)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [pv.eq(1), pc.eq(self.cmd.payload), self.wgt_done.eq(0)]
        fp = self.footprint
        self._range(m, fp.pre_act, pv, pc, "act")
        self._range(m, fp.pre_wgt, pv & ~self.wgt_done, pc, "wgt")
        self._range(m, fp.pre_acc, pv, pc, "acc")
        self._range(m, fp.stream_act, sv, sc, "act")
        self._range(m, fp.stream_acc, sv, sc, "acc")
        self._range(m, fp.drain[0], dv, dc, "acc")
        m.d.comb += [fp.drain[1].valid.eq(0), fp.issued.eq(0)]
        return m


class DispatchHarness(Elaboratable):
    """The decoder (with its scoreboard) over abstract units, fed arbitrary instruction words
    by a producer that keeps the stream rule.

    Parameters
    ----------
    config : AcceleratorConfig
    hang_bound : int or None
        Assert that ``instr.ready`` is low for at most this many consecutive cycles while
        every unit is idle; ``None``: do not assert it.
    resources : tuple of str
        Assert the scoreboard invariant over these resources ('act', 'wgt', 'acc', 'param',
        'mem'); empty: not at all. (The memory hazards take the solver far longer: their
        ranges come out of the checker's 16 x 24 multiply.)
    """

    def __init__(self, config: AcceleratorConfig, *, hang_bound: int | None = None,
                 resources: tuple[str, ...] = BUFFERS):
        self.cfg = config
        self.decoder = Decoder(config)
        self.hang_bound = hang_bound
        self.resources = tuple(resources)
        #: The abstract vector unit (with ``config.vector``), made in ``elaborate``.
        self.vector = None

    def in_flight(self, load: AbstractUnit, store: AbstractUnit,
                  execute: AbstractExecuteUnit) -> list[tuple[str, Value, list[Access]]]:
        """(unit, live, accesses) of every instruction dispatched and not yet done."""
        items = [("load", load.busy, accesses(Op.LOAD, load.held, self.cfg)),
                 ("store", store.busy, accesses(Op.STORE, store.held, self.cfg))]
        if self.vector is not None:
            items.append(("vector", self.vector.busy,
                          vector_accesses(self.vector.held, self.cfg)))
        for name, parts in AbstractExecuteUnit.SLOT_PARTS.items():
            valid, cmd = execute.slots[name]
            found = accesses(Op.MATMUL, cmd, self.cfg, parts)
            if name == "pre":
                for a in found:
                    if a.resource == "wgt":
                        a.when = a.when & ~execute.wgt_done
            items.append(("execute", valid, found))
        return items

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = dec = self.decoder
        m.submodules.load = load = AbstractUnit(LoadCmd())
        m.submodules.store = store = AbstractUnit(StoreCmd())
        m.submodules.execute = execute = AbstractExecuteUnit(self.cfg)
        wiring.connect(m, dec.load_cmd, load.cmd)
        wiring.connect(m, dec.store_cmd, store.cmd)
        wiring.connect(m, dec.exec_cmd, execute.cmd)
        wiring.connect(m, load.activity, dec.load_activity)
        wiring.connect(m, store.activity, dec.store_activity)
        wiring.connect(m, execute.activity, dec.exec_activity)
        wiring.connect(m, execute.footprint, dec.footprint)
        busy = load.busy | store.busy | execute.activity.busy
        if self.cfg.vector:
            m.submodules.vector = self.vector = vector = AbstractUnit(VectorCmd())
            wiring.connect(m, dec.vector_cmd, vector.cmd)
            wiring.connect(m, vector.activity, dec.vector_activity)
            busy = busy | vector.busy
            # The shared write ports: a LOAD into the buffer a vector op writes never runs
            # beside it, whatever the addresses (docs/vector.md, "Scoreboard").
            v_to_act = vector.held.dst == isa.VectorDst.ACT
            for target, to_buf in ((Target.ACT, v_to_act), (Target.WGT, ~v_to_act)):
                m.d.comb += Assert(~(load.busy & (load.held.target == target) &
                                     vector.busy & to_buf),
                                   f"a LOAD and a vector op write {target.name} at once")
        m.d.comb += [dec.instr.valid.eq(AnySeq(1)),
                     dec.instr.payload.eq(AnySeq(isa.INSTR_WIDTH))]
        assume_stream_rule(m, dec.instr)

        if self.resources:
            items = self.in_flight(load, store, execute)
            for i, (unit_a, live_a, acc_a) in enumerate(items):
                for unit_b, live_b, acc_b in items[i + 1:]:
                    if unit_a == unit_b:
                        continue
                    for a in acc_a:
                        for b in acc_b:
                            if (a.resource == b.resource and a.resource in self.resources
                                    and (a.write or b.write)):
                                m.d.comb += Assert(
                                    ~(live_a & live_b & a.conflicts(b)),
                                    f"{unit_a} and {unit_b} in flight with conflicting "
                                    f"{a.resource} ranges")
        if self.hang_bound is not None:
            idle = ~busy
            stuck = Signal(range(self.hang_bound + 2))
            with m.If(idle & ~dec.instr.ready):
                with m.If(stuck != self.hang_bound + 1):
                    m.d.sync += stuck.eq(stuck + 1)
            with m.Else():
                m.d.sync += stuck.eq(0)
            m.d.comb += Assert(stuck <= self.hang_bound,
                               "the instruction stream stayed blocked with every unit idle")
        return m
