"""Command decoder: checks instructions, dispatches them in order, keeps status and counters."""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig
from .execute import MatmulCmd
from .footprint import RangeLayout, overlaps
from .loadstore import LoadCmd, StoreCmd

__all__ = ["Decoder"]

_MEM_BITS = 34


class Decoder(wiring.Component):
    """Front end of the accelerator.

    Instruction words go through two registers: *fetch* (the raw word and its index) and
    *decode* (the word, its error code and its memory extent; the checks are those of
    ``isa.instruction_checks``, the same function the golden model runs). From *decode* an
    instruction is dispatched to its unit when

    - the unit can take it (``*_cmd.ready``), and
    - no instruction still in flight in *another* unit touches an overlapping range of a
      buffer or of memory where at least one of the two writes (the scoreboard).

    Units run their own instructions in order, so this rule gives every program the result
    of executing it one instruction at a time, while loads and stores proceed under compute.
    FENCE and HALT wait until every unit is idle.

    A failing check stops dispatch before the faulting instruction has any effect; once the
    units have finished the instructions before it, ``status.done`` rises with the error code
    and the instruction's index. After ``done`` (HALT or error) the decoder keeps accepting
    and discarding words, so a host can never block on the instruction stream; ``clear``
    (a reset of the whole accelerator's control state, applied by the top level) starts
    over.
    """

    def __init__(self, config: AcceleratorConfig):
        self._config = config
        fp = RangeLayout(17)
        super().__init__({
            "instr": In(stream.Signature(isa.INSTR_WIDTH)),
            "load_cmd": Out(stream.Signature(LoadCmd())),
            "exec_cmd": Out(stream.Signature(MatmulCmd(config))),
            "store_cmd": Out(stream.Signature(StoreCmd())),
            "load_busy": In(1),
            "exec_busy": In(1),
            "store_busy": In(1),
            "fp_pre_act": In(fp),
            "fp_pre_wgt": In(fp),
            "fp_pre_acc": In(fp),
            "fp_stream_act": In(fp),
            "fp_stream_acc": In(fp),
            "fp_drain": In(data.ArrayLayout(fp, 2)),
            "array_busy": In(1),
            "load_stall": In(1),
            "exec_stall": In(1),
            "store_stall": In(1),
            "status": Out(isa.Status),
            "counters": Out(isa.Counters),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        Op, Target = isa.Opcode, isa.LoadTarget

        # ---- local signals --------------------------------------------------------------
        accepted = Signal(32)  # words accepted so far: the index of the next one
        started = Signal()
        halted = Signal()

        fe_valid = Signal()
        fe_word = Signal(isa.INSTR_WIDTH)
        fe_index = Signal(32)
        fe_error = Signal(isa.ErrorCode)
        fe_mem_end = Signal(_MEM_BITS)

        de_valid = Signal()
        de_word = Signal(isa.INSTR_WIDTH)
        de_index = Signal(32)
        de_error = Signal(isa.ErrorCode)
        de_mem_end = Signal(_MEM_BITS)

        # Footprints of the instruction each single-slot unit is working on.
        ld_buf = Signal(RangeLayout(17))
        ld_target = Signal(Target)
        ld_mem = Signal(RangeLayout(_MEM_BITS))
        st_acc = Signal(RangeLayout(17))
        st_param = Signal(RangeLayout(17))
        st_mem = Signal(RangeLayout(_MEM_BITS))

        issue = Signal()      # the instruction in decode leaves it this cycle
        can_issue = Signal()
        de_take = Signal()
        fe_take = Signal()
        all_idle = Signal()
        fault = Signal()

        # ---- fetch: accept a word; discard words once the program is over ----------------
        running = ~halted & (self.status.error == isa.ErrorCode.NONE)
        m.d.comb += [
            de_take.eq(~de_valid | issue),
            fe_take.eq(~fe_valid | de_take),
            self.instr.ready.eq(~running | fe_take),
        ]
        word_in = self.instr.valid & self.instr.ready
        with m.If(word_in):
            m.d.sync += [accepted.eq(accepted + 1), started.eq(1)]

        # ---- check: the same rules as the golden model ----------------------------------
        opcode = fe_word[:8]
        with m.Switch(opcode):
            for op, layout in isa.INSTR_LAYOUTS.items():
                with m.Case(op):
                    view = layout(fe_word)
                    fields = {name: Value.cast(view[name])
                              for name, _ in data.Layout.cast(layout) if name != "opcode"}
                    checks = isa.instruction_checks(op, fields, cfg, Mux)
                    for i, (code, cond) in enumerate(checks):
                        with (m.If if i == 0 else m.Elif)(cond):
                            m.d.comb += fe_error.eq(code)
                    if op == Op.LOAD:
                        m.d.comb += fe_mem_end.eq(isa.mem_extent_end(
                            view.mem_addr, view.n_rows, view.mem_stride, view.row_bytes))
                    elif op == Op.STORE:
                        raw = view.mode.as_value() == isa.StoreMode.RAW.value
                        m.d.comb += fe_mem_end.eq(isa.mem_extent_end(
                            view.mem_addr, view.n_rows, view.mem_stride,
                            isa.store_row_bytes(view.n_cols, raw, Mux)))
            with m.Default():
                m.d.comb += fe_error.eq(isa.ErrorCode.BAD_OPCODE)

        with m.If(fe_take):
            m.d.sync += [fe_valid.eq(word_in & running), fe_word.eq(self.instr.payload),
                         fe_index.eq(accepted)]
        with m.If(de_take):
            m.d.sync += [de_valid.eq(fe_valid & running), de_word.eq(fe_word),
                         de_index.eq(fe_index), de_error.eq(fe_error),
                         de_mem_end.eq(fe_mem_end)]

        # ---- dispatch ------------------------------------------------------------------
        ld = isa.LoadInstr(de_word)
        mm = isa.MatmulInstr(de_word)
        sto = isa.StoreInstr(de_word)
        de_op = de_word[:8]

        def rng(lo, n, width=17):
            r = Signal(RangeLayout(width))
            m.d.comb += [r.valid.eq(1), r.lo.eq(lo), r.hi.eq(lo + n)]
            return r

        new_ld_buf = rng(ld.buf_addr, ld.n_rows)
        new_ld_mem = Signal(RangeLayout(_MEM_BITS))
        new_st_mem = Signal(RangeLayout(_MEM_BITS))
        m.d.comb += [
            new_ld_mem.valid.eq(1), new_ld_mem.lo.eq(ld.mem_addr), new_ld_mem.hi.eq(de_mem_end),
            new_st_mem.valid.eq(1), new_st_mem.lo.eq(sto.mem_addr), new_st_mem.hi.eq(de_mem_end),
        ]
        new_mm_act = rng(mm.act_addr, mm.n_rows)
        new_mm_wgt = rng(mm.wgt_addr, cfg.rows)
        new_mm_acc = rng(mm.acc_addr, mm.n_rows)
        new_st_acc = rng(sto.acc_addr, sto.n_rows)
        new_st_param = rng(sto.param_addr, 1)
        st_raw = sto.mode == isa.StoreMode.RAW

        ld_live = Signal(RangeLayout(17))
        ld_mem_live = Signal(RangeLayout(_MEM_BITS))
        st_acc_live = Signal(RangeLayout(17))
        st_param_live = Signal(RangeLayout(17))
        st_mem_live = Signal(RangeLayout(_MEM_BITS))
        m.d.comb += [
            ld_live.eq(ld_buf), ld_live.valid.eq(ld_buf.valid & self.load_busy),
            ld_mem_live.eq(ld_mem), ld_mem_live.valid.eq(ld_mem.valid & self.load_busy),
            st_acc_live.eq(st_acc), st_acc_live.valid.eq(st_acc.valid & self.store_busy),
            st_param_live.eq(st_param),
            st_param_live.valid.eq(st_param.valid & self.store_busy),
            st_mem_live.eq(st_mem), st_mem_live.valid.eq(st_mem.valid & self.store_busy),
        ]
        ld_is = lambda target: ld_target == target

        load_conflict = Mux(
            ld.target == Target.ACT,
            overlaps(new_ld_buf, self.fp_pre_act) | overlaps(new_ld_buf, self.fp_stream_act),
            Mux(ld.target == Target.WGT,
                overlaps(new_ld_buf, self.fp_pre_wgt),
                overlaps(new_ld_buf, st_param_live))) | overlaps(new_ld_mem, st_mem_live)
        matmul_conflict = (
            (ld_is(Target.ACT) & overlaps(new_mm_act, ld_live)) |
            (ld_is(Target.WGT) & overlaps(new_mm_wgt, ld_live)) |
            overlaps(new_mm_acc, st_acc_live))
        store_conflict = (
            overlaps(new_st_acc, self.fp_pre_acc) | overlaps(new_st_acc, self.fp_stream_acc) |
            overlaps(new_st_acc, self.fp_drain[0]) | overlaps(new_st_acc, self.fp_drain[1]) |
            (~st_raw & ld_is(Target.PARAM) & overlaps(new_st_param, ld_live)) |
            overlaps(new_st_mem, ld_mem_live))

        m.d.comb += [
            all_idle.eq(~self.load_busy & ~self.exec_busy & ~self.store_busy),
            fault.eq(de_valid & (de_error != isa.ErrorCode.NONE)),

            self.load_cmd.payload.target.eq(ld.target),
            self.load_cmd.payload.buf_addr.eq(ld.buf_addr),
            self.load_cmd.payload.n_rows.eq(ld.n_rows),
            self.load_cmd.payload.row_bytes.eq(ld.row_bytes),
            self.load_cmd.payload.mem_addr.eq(ld.mem_addr),
            self.load_cmd.payload.mem_stride.eq(ld.mem_stride),
            self.exec_cmd.payload.act_addr.eq(mm.act_addr),
            self.exec_cmd.payload.n_rows.eq(mm.n_rows),
            self.exec_cmd.payload.wgt_addr.eq(mm.wgt_addr),
            self.exec_cmd.payload.acc_addr.eq(mm.acc_addr),
            self.exec_cmd.payload.accumulate.eq(mm.accumulate),
            self.store_cmd.payload.raw.eq(st_raw),
            self.store_cmd.payload.acc_addr.eq(sto.acc_addr),
            self.store_cmd.payload.n_rows.eq(sto.n_rows),
            self.store_cmd.payload.n_cols.eq(sto.n_cols),
            self.store_cmd.payload.param_addr.eq(sto.param_addr),
            self.store_cmd.payload.mem_addr.eq(sto.mem_addr),
            self.store_cmd.payload.mem_stride.eq(sto.mem_stride),
        ]

        ok = de_valid & ~fault & running
        with m.Switch(de_op):
            with m.Case(Op.LOAD):
                m.d.comb += [can_issue.eq(~load_conflict),
                             self.load_cmd.valid.eq(ok & ~load_conflict),
                             issue.eq(self.load_cmd.valid & self.load_cmd.ready)]
            with m.Case(Op.MATMUL):
                m.d.comb += [can_issue.eq(~matmul_conflict),
                             self.exec_cmd.valid.eq(ok & ~matmul_conflict),
                             issue.eq(self.exec_cmd.valid & self.exec_cmd.ready)]
            with m.Case(Op.STORE):
                m.d.comb += [can_issue.eq(~store_conflict),
                             self.store_cmd.valid.eq(ok & ~store_conflict),
                             issue.eq(self.store_cmd.valid & self.store_cmd.ready)]
            with m.Case(Op.FENCE, Op.HALT):
                m.d.comb += [can_issue.eq(all_idle), issue.eq(ok & all_idle)]
            with m.Default():  # NOP (anything else has faulted)
                m.d.comb += [can_issue.eq(1), issue.eq(ok)]

        with m.If(self.load_cmd.valid & self.load_cmd.ready):
            m.d.sync += [ld_buf.eq(new_ld_buf), ld_target.eq(ld.target), ld_mem.eq(new_ld_mem)]
        with m.If(self.store_cmd.valid & self.store_cmd.ready):
            m.d.sync += [st_acc.eq(new_st_acc), st_mem.eq(new_st_mem),
                         st_param.eq(new_st_param), st_param.valid.eq(~st_raw)]
        with m.If(issue & (de_op == Op.HALT)):
            m.d.sync += halted.eq(1)

        # ---- status ----------------------------------------------------------------------
        with m.If(fault & running):
            m.d.sync += [self.status.error.eq(de_error), self.status.fault_index.eq(de_index)]
        done = Signal()
        m.d.comb += [
            done.eq(halted | ((self.status.error != isa.ErrorCode.NONE) & all_idle)),
            self.status.done.eq(done),
            self.status.busy.eq(started & ~done),
            self.status.idle.eq(~fe_valid & ~de_valid & all_idle),
        ]

        # ---- counters: from the first accepted word until done ---------------------------
        counting = (started | word_in) & ~done
        ctr = self.counters
        with m.If(counting):
            m.d.sync += [
                ctr.cycles.eq(ctr.cycles + 1),
                ctr.array_busy.eq(ctr.array_busy + self.array_busy),
                ctr.instructions.eq(ctr.instructions + (issue & running)),
                ctr.dispatch_stall.eq(ctr.dispatch_stall + (ok & ~issue)),
                ctr.load_stall.eq(ctr.load_stall + self.load_stall),
                ctr.exec_stall.eq(ctr.exec_stall + self.exec_stall),
                ctr.store_stall.eq(ctr.store_stall + self.store_stall),
            ]

        return m
