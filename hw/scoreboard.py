"""Scoreboards: whether the instruction in decode may be dispatched next to those in flight.

Two implementations with the same ports: :class:`OverlapScoreboard` compares the address
ranges of the instruction in decode with those of the instructions in flight, so that loads
and stores proceed under compute; :class:`SerialScoreboard` lets an instruction go only when
every unit is idle.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .checker import END_SLOT_COUNT, END_SLOTS, end_slot
from .config import AcceleratorConfig
from .fetch import OpFlags, op_flag
from .footprint import RangeLayout, overlaps
from .interfaces import FOOTPRINT_WIDTH, FootprintSignature

__all__ = ["OverlapScoreboard", "SerialScoreboard"]


class _Scoreboard(wiring.Component):
    """Ports shared by both implementations.

    Attributes
    ----------
    take : In(1)
        Decode is empty and takes the word in fetch (``word``) this cycle.
    word : In(INSTR_WIDTH)
        The word in fetch.
    ends, mem_end, param_end : In
        Decode's range ends (:data:`checker.END_SLOTS`), memory end and ``param_addr + 1``.
    is_op : In(OpFlags)
        Decode's opcode, one-hot.
    all_idle : In(1)
        Every unit was idle in the previous cycle.
    load_busy, store_busy : In(1)
    vector_busy : In(1)
        Only with ``config.vector``.
    footprint : In(FootprintSignature)
        The execute unit's in-flight ranges.
    conflict : Out(1)
        The instruction in decode may not go yet (registered by the decoder).
    load_go, store_go : Out(1)
        The load (store) unit may be offered a command this cycle.
    vector_go : Out(1)
        The same for the vector unit (only with ``config.vector``).
    """

    def __init__(self, config: AcceleratorConfig):
        self._config = config
        vector = {"vector_busy": In(1), "vector_go": Out(1)} if config.vector else {}
        super().__init__({
            **vector,
            "take": In(1),
            "word": In(isa.INSTR_WIDTH),
            "ends": In(data.ArrayLayout(FOOTPRINT_WIDTH, END_SLOT_COUNT)),
            "mem_end": In(config.mem_bytes.bit_length()),
            "param_end": In(FOOTPRINT_WIDTH),
            "is_op": In(OpFlags(config)),
            "all_idle": In(1),
            "load_busy": In(1),
            "store_busy": In(1),
            "footprint": In(FootprintSignature()),
            "conflict": Out(1),
            "load_go": Out(1),
            "store_go": Out(1),
        })


class SerialScoreboard(_Scoreboard):
    """Every instruction waits, like FENCE, until all units are idle.

    An idle unit is ready, so commands are offered whenever the verdict allows."""

    #: Register stages between the state the verdict describes and its use.
    verdict_latency = 1
    #: Cycles from a dispatch to the unit's busy flag as ``all_idle`` shows it.
    footprint_delay = 2

    def elaborate(self, platform):
        m = Module()
        is_op = lambda op: op_flag(self.is_op, op)
        units = [isa.Opcode.LOAD, isa.Opcode.MATMUL, isa.Opcode.STORE]
        if self._config.vector:
            units += isa.VECTOR_OPCODES
            m.d.comb += self.vector_go.eq(1)
        m.d.comb += [
            self.conflict.eq(Cat(is_op(op) for op in units).any() & ~self.all_idle),
            self.load_go.eq(1),
            self.store_go.eq(1),
        ]
        return m


class OverlapScoreboard(_Scoreboard):
    """No instruction still in flight in *another* unit may touch an overlapping range of a
    buffer or of memory where at least one of the two writes.

    Units run their own instructions in order, so this rule gives every program the result
    of executing it one instruction at a time. The verdict takes two register stages (the
    pairwise overlaps, then their OR in the decoder), and the execute unit's footprints are
    registered once more on the way in; the decoder checks in simulation that no dispatch
    falls inside that window (``Decoder(assertions=True)``).

    The load and store units take a command only when idle (``cmd.ready`` is ``~busy``):
    their footprint registers follow decode while the unit is idle, so they hold the
    instruction it accepts, and a command is offered only when the unit was idle in the
    previous cycle (``load_go``, ``store_go``), an offer that is always taken.
    """

    #: Register stages between the state the verdict describes and its use.
    verdict_latency = 2
    #: Cycles from a dispatch to the execute unit's footprint as this scoreboard sees it.
    footprint_delay = 2

    def elaborate(self, platform):
        m = Module()
        cfg, Op, Target = self._config, isa.Opcode, isa.LoadTarget
        mem_bits = len(self.mem_end)
        # Its own copy of the decode word: de_word also drives the units' command payloads.
        sb_word = Signal(isa.INSTR_WIDTH, name="de_word_replica")
        with m.If(self.take):
            m.d.sync += sb_word.eq(self.word)
        sb_ld, sb_mm, sb_sto = isa.LoadInstr(sb_word), isa.MatmulInstr(sb_word), \
            isa.StoreInstr(sb_word)
        sb_raw = sb_sto.mode == isa.StoreMode.RAW

        def rng(lo, hi, width=FOOTPRINT_WIDTH):
            r = Signal(RangeLayout(width))
            m.d.comb += [r.valid.eq(1), r.lo.eq(lo), r.hi.eq(hi)]
            return r

        new = {
            "ld_buf": rng(sb_ld.buf_addr, end_slot(self.ends, Op.LOAD, "buf")),
            "ld_mem": rng(sb_ld.mem_addr, self.mem_end, mem_bits),
            "st_mem": rng(sb_sto.mem_addr, self.mem_end, mem_bits),
            "mm_act": rng(sb_mm.act_addr, end_slot(self.ends, Op.MATMUL, "act")),
            "mm_wgt": rng(sb_mm.wgt_addr, end_slot(self.ends, Op.MATMUL, "wgt")),
            "mm_acc": rng(sb_mm.acc_addr, end_slot(self.ends, Op.MATMUL, "acc")),
            "st_acc": rng(sb_sto.acc_addr, end_slot(self.ends, Op.STORE, "acc")),
            "st_param": rng(sb_sto.param_addr, self.param_end),
        }
        # Footprints of the instruction each single-slot unit is working on, live while it is
        # busy. They follow decode while the unit is idle: enabled by ~busy rather than by the
        # handshake, which keeps the issue decision off a hundred-odd clock enables.
        held = {name: Signal(new[name].shape(), name=name)
                for name in ("ld_buf", "ld_mem", "st_acc", "st_param", "st_mem")}
        ld_target = Signal(Target)
        with m.If(~self.load_busy):
            m.d.sync += [held["ld_buf"].eq(new["ld_buf"]), ld_target.eq(sb_ld.target),
                         held["ld_mem"].eq(new["ld_mem"])]
        with m.If(~self.store_busy):
            m.d.sync += [held["st_acc"].eq(new["st_acc"]), held["st_mem"].eq(new["st_mem"]),
                         held["st_param"].eq(new["st_param"]),
                         held["st_param"].valid.eq(~sb_raw)]

        # The busy flags are registered beside the overlaps and applied in the OR stage: the
        # same verdict, with the units' control logic out of the compare stage.
        load_busy_q = Signal()
        store_busy_q = Signal()
        m.d.sync += [load_busy_q.eq(self.load_busy), store_busy_q.eq(self.store_busy)]
        m.d.comb += [self.load_go.eq(~load_busy_q), self.store_go.eq(~store_busy_q)]

        terms = self._overlaps(m, new, held, sb_ld.target, ld_target, sb_raw, load_busy_q,
                               store_busy_q)
        if cfg.vector:
            terms += self._vector_overlaps(m, sb_word, new, held, sb_ld.target, ld_target,
                                           load_busy_q)
        m.d.comb += self.conflict.eq(Cat(*terms).any())
        return m

    def _vector_overlaps(self, m: Module, sb_word: Value, new: dict, held: dict,
                         new_target: Value, ld_target: Value, load_busy_q: Value) -> list:
        """The vector unit's hazards, ``docs/vector.md``'s table: its footprints (source in
        the accumulator, destination in ACT or WGT, parameter entries) held while it is
        busy, as the load and store units' are, against decode's, and decode's vector
        instruction against the load unit's and the execute unit's. A LOAD into the vector
        destination's buffer and a vector instruction never run together (they share the
        buffer's write port: structural, whatever the addresses). Stores only read what the
        vector unit reads, so they never conflict with it."""
        cfg, Op, Target = self._config, isa.Opcode, isa.LoadTarget
        vr = isa.VectorInstr(sb_word)
        op = isa.VECTOR_OPCODES[0]   # (all vector opcodes share the format and the slots)
        is_v = Cat(op_flag(self.is_op, v) for v in isa.VECTOR_OPCODES).any()
        is_ld, is_mm = op_flag(self.is_op, Op.LOAD), op_flag(self.is_op, Op.MATMUL)

        def rng(lo, name):
            r = Signal(RangeLayout(FOOTPRINT_WIDTH), name=f"v_new_{name}")
            m.d.comb += [r.valid.eq(1), r.lo.eq(lo), r.hi.eq(end_slot(self.ends, op, name))]
            return r

        new_v = {"src": rng(vr.src_addr, "src"), "dst": rng(vr.dst_addr, "dst"),
                 "param": rng(vr.param_addr, "param")}
        new_to_act = vr.dst == isa.VectorDst.ACT
        held_v = {name: Signal(r.shape(), name=f"v_held_{name}") for name, r in new_v.items()}
        held_to_act = Signal(name="v_held_to_act")
        with m.If(~self.vector_busy):
            m.d.sync += [*(held_v[name].eq(new_v[name]) for name in new_v),
                         held_to_act.eq(new_to_act)]
        busy_q = Signal(name="vector_busy_q")
        m.d.sync += busy_q.eq(self.vector_busy)
        m.d.comb += self.vector_go.eq(~busy_q)

        width = {"act": cfg.act_depth.bit_length(), "wgt": cfg.wgt_depth.bit_length(),
                 "acc": cfg.acc_depth.bit_length(), "param": cfg.param_depth.bit_length()}
        terms = []

        def flag(cond, name, busy):
            r = Signal(name=f"vsb_{name}")
            m.d.sync += r.eq(cond)
            terms.append(r & busy)

        def ov(a, b, name, when, busy, buf):
            def trim(r, side):
                t = Signal(RangeLayout(width[buf]), name=f"vsb_{name}_{side}")
                m.d.comb += [t.valid.eq(r.valid), t.lo.eq(r.lo[:width[buf]]),
                             t.hi.eq(r.hi[:width[buf]])]
                return t
            flag(overlaps(trim(a, "a"), trim(b, "b")) & when, name, busy)

        ld_to = lambda target: is_ld & (new_target == target)
        ld_in = lambda target: ld_target == target
        # LOAD in decode, vector in flight: the shared write port; parameters (WAR).
        flag(ld_to(Target.ACT) & held_to_act, "ld_act_port", busy_q)
        flag(ld_to(Target.WGT) & ~held_to_act, "ld_wgt_port", busy_q)
        ov(new["ld_buf"], held_v["param"], "ld_v_param", ld_to(Target.PARAM), busy_q, "param")
        # MATMUL in decode, vector in flight: its destination (RAW), its source (WAR).
        ov(new["mm_act"], held_v["dst"], "mm_act_v", is_mm & held_to_act, busy_q, "act")
        ov(new["mm_wgt"], held_v["dst"], "mm_wgt_v", is_mm & ~held_to_act, busy_q, "wgt")
        ov(new["mm_acc"], held_v["src"], "mm_acc_v", is_mm, busy_q, "acc")
        # Vector in decode, LOAD in flight: the shared write port; parameters (RAW).
        flag(is_v & ld_in(Target.ACT) & new_to_act, "v_ld_act_port", load_busy_q)
        flag(is_v & ld_in(Target.WGT) & ~new_to_act, "v_ld_wgt_port", load_busy_q)
        ov(new_v["param"], held["ld_buf"], "v_param_ld", is_v & ld_in(Target.PARAM),
           load_busy_q, "param")
        # Vector in decode, MATMULs in flight: its source (RAW), its destination (WAR).
        fp = self.footprint
        for name, r in [("pre_acc", fp.pre_acc), ("stream_acc", fp.stream_acc),
                        ("drain0", fp.drain[0]), ("drain1", fp.drain[1])]:
            ov(new_v["src"], self._remote(m, r, width["acc"], f"v_{name}"), f"v_src_{name}",
               is_v, C(1), "acc")
        for name, r in [("pre_act", fp.pre_act), ("stream_act", fp.stream_act)]:
            ov(new_v["dst"], self._remote(m, r, width["act"], f"v_{name}"), f"v_dst_{name}",
               is_v & new_to_act, C(1), "act")
        ov(new_v["dst"], self._remote(m, fp.pre_wgt, width["wgt"], "v_pre_wgt"),
           "v_dst_pre_wgt", is_v & ~new_to_act, C(1), "wgt")
        return terms

    @staticmethod
    def _remote(m: Module, r, bits: int, name: str):
        """An execute-unit footprint registered on the way in (trimmed), as ``_overlaps``
        registers its own copies (a cycle older is still safe: ``footprint_delay``)."""
        q = Signal(RangeLayout(bits), name=f"fp_{name}_q")
        m.d.sync += [q.valid.eq(r.valid), q.lo.eq(r.lo[:bits]), q.hi.eq(r.hi[:bits])]
        return q

    def _overlaps(self, m: Module, new: dict, held: dict, new_target: Value,
                  ld_target: Value, sb_raw: Value, load_busy_q: Value,
                  store_busy_q: Value) -> list:
        """The registered pairwise overlaps of decode's ranges (``new``) with those in
        flight (``held`` by the load and store units, the execute unit's footprint), each
        ANDed with its unit's busy flag.

        Each overlap's register also takes the static part of its condition (decode's
        opcode, the load target), so that the OR stage is only the OR of the overlaps. A
        buffer footprint's compares are as wide as that buffer's addresses: a footprint that
        can issue passed BUF_RANGE, so its ends lie in [0, depth] (a word that faults never
        issues, whatever its verdict)."""
        cfg, Op, Target = self._config, isa.Opcode, isa.LoadTarget
        width = {"act": cfg.act_depth.bit_length(), "wgt": cfg.wgt_depth.bit_length(),
                 "acc": cfg.acc_depth.bit_length(), "param": cfg.param_depth.bit_length()}
        terms = []

        def trim(r, bits, name):
            t = Signal(RangeLayout(bits), name=name)
            m.d.comb += [t.valid.eq(r.valid), t.lo.eq(r.lo[:bits]), t.hi.eq(r.hi[:bits])]
            return t

        def remote(r, buf, name):
            # Registered here first (trimmed), so the route from the execute unit is a path
            # of its own; a cycle older is still safe (footprint_delay).
            q = Signal(RangeLayout(width[buf]), name=f"fp_{name}_q")
            m.d.sync += [q.valid.eq(r.valid), q.lo.eq(r.lo[:width[buf]]),
                         q.hi.eq(r.hi[:width[buf]])]
            return q

        def ov(a, b, name, when, busy_q=C(1), buf=None):
            if buf is not None:
                a = trim(a, width[buf], f"ov_{name}_a")
                b = trim(b, width[buf], f"ov_{name}_b")
            r = Signal(name=f"ov_{name}")
            m.d.sync += r.eq(overlaps(a, b) & when)
            terms.append(r & busy_q)

        is_ld, is_mm, is_st = (op_flag(self.is_op, op) for op in (Op.LOAD, Op.MATMUL, Op.STORE))
        ld_to = lambda target: is_ld & (new_target == target)     # the load in decode
        ld_in = lambda target: ld_target == target                 # the load unit's
        fp = self.footprint
        ex = {name: remote(r, buf, name) for name, r, buf in [
            ("pre_act", fp.pre_act, "act"), ("stream_act", fp.stream_act, "act"),
            ("pre_wgt", fp.pre_wgt, "wgt"), ("pre_acc", fp.pre_acc, "acc"),
            ("stream_acc", fp.stream_acc, "acc"), ("drain0", fp.drain[0], "acc"),
            ("drain1", fp.drain[1], "acc")]}
        ov(new["ld_buf"], ex["pre_act"], "ld_pre_act", ld_to(Target.ACT), buf="act")
        ov(new["ld_buf"], ex["stream_act"], "ld_stream_act", ld_to(Target.ACT), buf="act")
        ov(new["ld_buf"], ex["pre_wgt"], "ld_pre_wgt", ld_to(Target.WGT), buf="wgt")
        ov(new["ld_buf"], held["st_param"], "ld_st_param", ld_to(Target.PARAM), store_busy_q,
           buf="param")
        ov(new["ld_mem"], held["st_mem"], "ld_st_mem", is_ld, store_busy_q)
        ov(new["mm_act"], held["ld_buf"], "mm_act_ld", is_mm & ld_in(Target.ACT), load_busy_q,
           buf="act")
        ov(new["mm_wgt"], held["ld_buf"], "mm_wgt_ld", is_mm & ld_in(Target.WGT), load_busy_q,
           buf="wgt")
        ov(new["mm_acc"], held["st_acc"], "mm_acc_st", is_mm, store_busy_q, buf="acc")
        for name in ("pre_acc", "stream_acc", "drain0", "drain1"):
            ov(new["st_acc"], ex[name], f"st_{name}", is_st, buf="acc")
        ov(new["st_param"], held["ld_buf"], "st_param_ld", is_st & ~sb_raw & ld_in(Target.PARAM),
           load_busy_q, buf="param")
        ov(new["st_mem"], held["ld_mem"], "st_ld_mem", is_st, load_busy_q)
        return terms
