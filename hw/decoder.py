"""Command decoder: checks instructions, dispatches them in order, keeps status and counters."""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig
from .execute import MatmulCmd
from .footprint import RangeLayout, overlaps
from .loadstore import LoadCmd, StoreCmd
from .mult import Family, Multiplier, MultiplierTarget

__all__ = ["Decoder"]

# Which register of the check pipeline holds which of ``isa.instruction_ends`` (the memory
# end has its own pipeline). Shared across opcodes: only one instruction is checked at a time.
_END_SLOTS = {
    isa.Opcode.LOAD: ("buf",),
    isa.Opcode.MATMUL: ("act", "wgt", "acc"),
    isa.Opcode.STORE: ("acc",),
}
_END_BITS = 17  # 16-bit address + 16-bit count (or + rows <= 128)


class Decoder(wiring.Component):
    """Front end of the accelerator.

    Instruction words go through two registers: *fetch* (the raw word and its index) and
    *decode* (the word, its error code and the ends of its ranges). A word stays in *fetch*
    for :attr:`check_cycles` cycles while a free-running pipeline computes the ends of its
    ranges (``isa.instruction_ends``; the memory end ``mem_addr + (n_rows - 1) * stride +
    row_bytes`` takes a multiply and two wide adds, one per cycle) and the ordered checks of
    ``isa.instruction_checks``, the same function the golden model runs. Checking in place
    instead of in a pipeline of word registers keeps the area small; it limits the decoder
    to one instruction every ``check_cycles + 1`` cycles, far more than the units consume
    (a MATMUL streams at least one vector per row). From *decode* an instruction is
    dispatched to its unit when

    - the unit can take it (``*_cmd.ready``; the load and store units, whose ``ready`` is
      ``~busy``, are only offered a command when ``*_busy`` was low in the previous cycle,
      so the decoder relies on those units being ready whenever idle), and
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

    def __init__(self, config: AcceleratorConfig, target: MultiplierTarget | None = None):
        if target is not None and not isinstance(target, MultiplierTarget):
            raise TypeError(f"target must be a MultiplierTarget or None, not {target!r}")
        self._config = config
        self._target = target or MultiplierTarget()
        # On ECP5 the extent multiply uses registered MULT18X18Ds (inferred ones are
        # combinational: 4.5 ns of a 6.7 ns cycle); elsewhere a plain registered product.
        self._mult_kind = "ecp5" if self._target.family is Family.ECP5 else "generic"
        self._mult_latency = 3 if self._mult_kind == "ecp5" else 1
        fp = RangeLayout(17)
        self._mem_bits = config.mem_bytes.bit_length()
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

    @property
    def check_cycles(self) -> int:
        """Cycles a word spends in *fetch* before it may move to *decode*: the depth of the
        range-end pipeline (operands; the partial products' multiplier latency, 1, or 3 on
        ECP5; their sum; the end)."""
        return 3 + self._mult_latency

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        Op, Target = isa.Opcode, isa.LoadTarget

        # ---- local signals --------------------------------------------------------------
        accepted = Signal(32)  # words accepted so far: the index of the next one
        started = Signal()
        halted = Signal()
        mem_bits = self._mem_bits

        fe_valid = Signal()
        fe_word = Signal(isa.INSTR_WIDTH)
        fe_index = Signal(32)
        fe_age = Signal(range(self.check_cycles + 1))  # cycles since fe_word was loaded
        fe_error = Signal(isa.ErrorCode)

        # The check pipeline: free-running registers, each a function of fe_word and the
        # stage before; they describe fe_word once fe_age reaches their depth.
        k1_end = [Signal(_END_BITS, name=f"k1_end{i}") for i in range(3)]
        k1_n_rows = Signal(16)
        k1_stride = Signal(24)
        k1_addr = Signal(32)          # mem_addr
        k1_len = Signal(17)           # row length in memory
        k1_mem_op = Signal()
        k2_addr_len = Signal(34)      # mem_addr + row length
        k2_stride_room = Signal(34)   # mem_bytes + stride
        k2_mem_op = Signal()
        k3_base = Signal(signed(35))  # mem_addr + row length - stride
        k_prod = Signal(40)           # n_rows * stride, mult_latency + 2 cycles in
        k3_error = Signal(isa.ErrorCode)  # first failing check other than MEM_RANGE
        k_mem_end = Signal(signed(42))  # check_cycles in
        k_room = Signal(signed(37))     # mem_bytes - k3_base
        k_mem_fail = Signal()           # k_mem_end > mem_bytes, as k_prod > k_room
        room_bits = (cfg.mem_bytes + (1 << len(k1_stride)) - 1).bit_length()
        assert room_bits < len(k_prod) and room_bits < len(k_room)

        de_valid = Signal()
        de_word = Signal(isa.INSTR_WIDTH)
        de_index = Signal(32)
        de_error = Signal(isa.ErrorCode)
        de_end = [Signal(_END_BITS, name=f"de_end{i}") for i in range(3)]
        de_mem_end = Signal(mem_bits)
        de_param_end = Signal(17)

        # Footprints of the instruction each single-slot unit is working on.
        ld_buf = Signal(RangeLayout(17))
        ld_target = Signal(Target)
        ld_mem = Signal(RangeLayout(mem_bits))
        st_acc = Signal(RangeLayout(17))
        st_param = Signal(RangeLayout(17))
        st_mem = Signal(RangeLayout(mem_bits))

        issue = Signal()      # the instruction in decode leaves it this cycle
        conflict = Signal()   # the instruction in decode overlaps one in flight
        conflict_q = Signal()
        de_wait = Signal(range(3))  # cycles until conflict_q describes the word in decode
        de_fault = Signal()
        # The opcode in decode, one-hot, decoded as it enters: it steers the issue decision.
        de_is = {op: Signal(name=f"de_is_{op.name.lower()}") for op in
                 (Op.NOP, Op.LOAD, Op.MATMUL, Op.STORE, Op.FENCE, Op.HALT)}
        de_take = Signal()
        fe_load = Signal()    # fetch follows the stream (it is empty, or the program is over)
        fe_move = Signal()    # the word in fetch moves to decode
        checked = Signal()    # fe_age == check_cycles, registered
        all_idle = Signal()   # every unit was idle in the previous cycle (registered)
        fault = Signal()

        # ---- fetch: accept a word; discard words once the program is over ----------------
        # running == ~halted & (status.error == NONE), kept as a register of its own
        # because it gates the issue decision and the fetch/decode enables.
        running = Signal(init=1)
        m.d.comb += [
            # Decode refills only once empty, one cycle after an issue: the issue decision
            # (the scoreboard's compares) then never drives the enables of the fetch and
            # decode registers. The check pipeline limits throughput more than this bubble.
            de_take.eq(~de_valid),
        ]
        if cfg.overlap:
            # Fetch takes a word only when empty, so that the stream's valid (from outside,
            # possibly far away) reaches nothing but fetch's valid flag: the word, its index
            # and the check pipeline's age follow the stream while fetch is empty, on an
            # enable that is a register. That costs a cycle per instruction, against
            # check_cycles of checking.
            m.d.comb += [
                fe_load.eq(~fe_valid | ~running),
                fe_move.eq(fe_valid & checked & de_take),
                self.instr.ready.eq(fe_load),
            ]
        else:
            # Without overlap instructions are dispatched one at a time anyway, so the word is
            # checked in place on the stream, whose payload holds until it is taken, instead
            # of in a fetch register (128 flip-flops fewer); it is taken into decode.
            m.d.comb += [
                fe_valid.eq(self.instr.valid & running),
                fe_word.eq(self.instr.payload),
                fe_index.eq(accepted),
                self.instr.ready.eq(~running | (checked & de_take)),
            ]
        # The word count lags a cycle (the handshake comes late in the cycle and would be the
        # enable of 32 flip-flops); words are at least check_cycles apart while the program
        # runs, so a word entering fetch always finds the count of the words before it.
        word_in = self.instr.valid & self.instr.ready
        word_in_q = Signal()
        m.d.sync += [
            word_in_q.eq(word_in),
            accepted.eq(accepted + word_in_q),
            started.eq(started | word_in),
        ]

        # ---- check: the same rules as the golden model, over check_cycles cycles ----------
        # One carry chain or one multiplier between registers per stage: the one-cycle
        # version (a 16x24 multiply, two adds and a compare) limited the decoder to 45 MHz.
        opcode = fe_word[:8]
        # The opcode in fetch, one-hot. With overlap fetch is a register, and the flags are
        # registered beside it from the stream's payload: decoded from fe_word they were the
        # enable of the ends' 51 registers, and with the checks on fe_word too, 7 ns on the
        # whole 8x8 for ECP5.
        if cfg.overlap:
            fe_is = {op: Signal(name=f"fe_is_{op.name.lower()}") for op in Op}
        else:
            fe_is = {op: opcode == op for op in Op}
        ld_view, st_view = isa.LoadInstr(fe_word), isa.StoreInstr(fe_word)
        is_store = fe_is[Op.STORE]
        st_row_bytes = isa.store_row_bytes(
            st_view.n_cols, st_view.mode.as_value() == isa.StoreMode.RAW.value, Mux)
        m.d.sync += [
            k1_n_rows.eq(ld_view.n_rows),  # same position in LOAD and STORE
            k1_stride.eq(Mux(is_store, st_view.mem_stride, ld_view.mem_stride)),
            # The operands are selected in one stage and added in the next: select and
            # 33-bit sum together were the iCEBreaker's next worst path.
            k1_addr.eq(Mux(is_store, st_view.mem_addr, ld_view.mem_addr)),
            k1_len.eq(Mux(is_store, st_row_bytes, ld_view.row_bytes)),
            k1_mem_op.eq(fe_is[Op.LOAD] | is_store),
            k2_addr_len.eq(k1_addr + k1_len),
            k2_stride_room.eq(cfg.mem_bytes + k1_stride),
            k2_mem_op.eq(k1_mem_op),
            k3_base.eq(k2_addr_len - k1_stride),
            # The stride is split so that each partial product fits one 18x18 DSP.
            k_prod.eq(self._product(m, k1_n_rows, k1_stride[:17], "prod_lo") +
                      (self._product(m, k1_n_rows, k1_stride[17:], "prod_hi") << 17)),
            k_mem_end.eq(k_prod + k3_base),
            # MEM_RANGE decided beside the sum rather than from it (a compare after the last
            # adder, then the error mux, missed 150 MHz on the whole 8x8 for ECP5):
            # k_mem_end > mem_bytes is k_prod > mem_bytes - k3_base.
            k_room.eq(k2_stride_room - k2_addr_len),
            # A room that is not negative is below 2**room_bits (mem_bytes + the largest
            # stride bounds it): a product with a bit set above that fails, and the rest is
            # a compare of room_bits, not of 41 bits (that carry chain was the iCEBreaker's
            # worst path and missed 150 MHz on the whole 8x8 for ECP5).
            k_mem_fail.eq(k_room[-1] | (k_prod[room_bits:] != 0) |
                          (k_prod[:room_bits] > k_room[:room_bits])),
        ]
        mem_range = isa.ErrorCode.MEM_RANGE
        # Stage 1 registers the buffer ends; stage 2 every check condition of every opcode
        # against them; stage 3 the first failing one for the opcode in fetch. MEM_RANGE,
        # always the last check, is decided beside k_mem_end (k_mem_fail).
        # The checks read a stage-1 copy of the word (with overlap, where fe_word is a
        # register): fe_word also feeds the ends, the memory checks and decode, and with the
        # checks' wide field tests on top its fan-out made them miss 150 MHz on the whole
        # 8x8 for ECP5. The copy equals fe_word from the cycle after it was loaded, when
        # the ends they also read are ready, so the verdict is as early as before.
        if cfg.overlap:
            k1_word = Signal(isa.INSTR_WIDTH)
            m.d.sync += k1_word.eq(fe_word)
        else:
            k1_word = fe_word
        failed = {}
        for op, layout in isa.INSTR_LAYOUTS.items():
            def fields_of(word):
                view = layout(word)
                return {name: Value.cast(view[name])
                        for name, _ in data.Layout.cast(layout) if name != "opcode"}
            ends = isa.instruction_ends(op, fields_of(fe_word), cfg, Mux)
            with m.If(fe_is[op]):
                for slot, name in enumerate(_END_SLOTS.get(op, ())):
                    m.d.sync += k1_end[slot].eq(ends[name])
            registered = {name: k1_end[_END_SLOTS[op].index(name)]
                          for name in ends if name != "mem"}
            checks = isa.instruction_checks(op, fields_of(k1_word), cfg, Mux,
                                            ends={**registered, "mem": Const(0)})
            assert ("mem" in ends) == (checks[-1][0] == mem_range)
            failed[op] = []
            for code, cond in checks:
                if code == mem_range:
                    continue
                bit = Signal(name=f"k2_{op.name.lower()}_{code.name.lower()}")
                m.d.sync += bit.eq(cond)
                failed[op].append((code, bit))
        # Stage 3 reads the opcode as registered one-hot flags (stage 2, like the check
        # bits), and combines the opcodes' verdicts as an AND-OR: a switch on fe_word's
        # opcode in front of the priority chains missed 150 MHz on the whole 8x8 for ECP5.
        k1_is = {op: Signal(name=f"k1_is_{op.name.lower()}") for op in failed}
        k2_is = {op: Signal(name=f"k2_is_{op.name.lower()}") for op in failed}
        m.d.sync += [k1_is[op].eq(fe_is[op]) for op in failed]
        m.d.sync += [k2_is[op].eq(k1_is[op]) for op in failed]
        # (ErrorCode.NONE is 0, so the OR of the masked verdicts is the one-hot select.)
        assert isa.ErrorCode.NONE.value == 0
        error = Mux(~Cat(*k2_is.values()).any(), isa.ErrorCode.BAD_OPCODE.value, 0)
        for op, conds in failed.items():
            verdict = Const(isa.ErrorCode.NONE.value, 4)
            for code, bit in reversed(conds):   # the first failing check wins
                verdict = Mux(bit, code.value, verdict)
            error = error | Mux(k2_is[op], verdict, 0)
        m.d.sync += k3_error.eq(error)
        m.d.comb += fe_error.eq(Mux(
            k3_error != isa.ErrorCode.NONE, k3_error,
            Mux(k2_mem_op & k_mem_fail, mem_range, isa.ErrorCode.NONE)))

        if cfg.overlap:
            with m.If(fe_load):
                m.d.sync += [fe_valid.eq(self.instr.valid & running),
                             fe_word.eq(self.instr.payload), fe_index.eq(accepted),
                             *[flag.eq(self.instr.payload[:8] == op)
                               for op, flag in fe_is.items()]]
            with m.Elif(fe_move):
                m.d.sync += fe_valid.eq(0)
        with m.If(fe_load if cfg.overlap else (word_in | ~self.instr.valid)):
            m.d.sync += [fe_age.eq(0), checked.eq(0)]
        with m.Elif(~checked):
            m.d.sync += [fe_age.eq(fe_age + 1),
                         checked.eq(fe_age == self.check_cycles - 1)]
        with m.If(de_take):
            m.d.sync += de_wait.eq(2)
        with m.Elif(de_wait != 0):
            m.d.sync += de_wait.eq(de_wait - 1)
        with m.If(de_take):  # de_take and issue exclude each other (~de_valid vs de_valid)
            m.d.sync += [de_valid.eq(fe_valid & checked & running), de_word.eq(fe_word),
                         de_index.eq(fe_index), de_error.eq(fe_error),
                         de_fault.eq(fe_error != isa.ErrorCode.NONE),
                         de_param_end.eq(st_view.param_addr + 1),
                         *[is_op.eq(k2_is[op]) for op, is_op in de_is.items()],
                         de_mem_end.eq(k_mem_end[:mem_bits])]
            m.d.sync += [de.eq(k1) for de, k1 in zip(de_end, k1_end)]
        with m.If(issue):
            m.d.sync += de_valid.eq(0)

        # ---- dispatch ------------------------------------------------------------------
        ld = isa.LoadInstr(de_word)
        mm = isa.MatmulInstr(de_word)
        sto = isa.StoreInstr(de_word)

        st_raw = sto.mode == isa.StoreMode.RAW
        if cfg.overlap:
            # The scoreboard reads its own copy of the decode word: de_word also drives the
            # three units' command payloads, and with the dozen range compares on top its
            # fan-out put the compares at 6.9 ns on the whole 8x8 for ECP5.
            sb_word = Signal(isa.INSTR_WIDTH, name="de_word_replica")
            with m.If(de_take):
                m.d.sync += sb_word.eq(fe_word)
            sb_ld = isa.LoadInstr(sb_word)
            sb_mm = isa.MatmulInstr(sb_word)
            sb_sto = isa.StoreInstr(sb_word)
            sb_raw = sb_sto.mode == isa.StoreMode.RAW

            def rng(lo, hi, width=17):
                r = Signal(RangeLayout(width))
                m.d.comb += [r.valid.eq(1), r.lo.eq(lo), r.hi.eq(hi)]
                return r

            def de_end_of(op, name):
                return de_end[_END_SLOTS[op].index(name)]

            new_ld_buf = rng(sb_ld.buf_addr, de_end_of(Op.LOAD, "buf"))
            new_ld_mem = rng(sb_ld.mem_addr, de_mem_end, mem_bits)
            new_st_mem = rng(sb_sto.mem_addr, de_mem_end, mem_bits)
            new_mm_act = rng(sb_mm.act_addr, de_end_of(Op.MATMUL, "act"))
            new_mm_wgt = rng(sb_mm.wgt_addr, de_end_of(Op.MATMUL, "wgt"))
            new_mm_acc = rng(sb_mm.acc_addr, de_end_of(Op.MATMUL, "acc"))
            new_st_acc = rng(sb_sto.acc_addr, de_end_of(Op.STORE, "acc"))
            new_st_param = rng(sb_sto.param_addr, de_param_end)

            # A load/store footprint (ld_buf, ld_mem, st_*) is live while its unit is busy.
            # The busy flag is registered beside the overlap and applied in the OR stage: the
            # same verdict, but the units' control logic stays out of the compare stage (on
            # the whole 8x8 for ECP5 it made the overlaps miss 150 MHz).
            load_busy_q = Signal()
            store_busy_q = Signal()
            m.d.sync += [load_busy_q.eq(self.load_busy), store_busy_q.eq(self.store_busy)]
            # Each pairwise overlap is registered, then combined: the compares and the OR tree
            # behind them do not fit in one cycle together. The overlap's register also takes
            # the static part of its condition (decode's opcode, the load target), so that
            # the OR stage is only the OR of the overlaps, each with its unit's busy flag.
            # A buffer footprint's compares are as wide as that buffer's addresses: a
            # footprint that can issue passed BUF_RANGE, so its ends lie in [0, depth] and
            # fit in depth.bit_length() bits exactly (a word that faults never issues,
            # whatever its verdict). At 17 bits the carry chains were longer than needed.
            terms = []
            width = {"act": cfg.act_depth.bit_length(), "wgt": cfg.wgt_depth.bit_length(),
                     "acc": cfg.acc_depth.bit_length(), "param": cfg.param_depth.bit_length()}

            def trim(r, bits, name):
                t = Signal(RangeLayout(bits), name=name)
                m.d.comb += [t.valid.eq(r.valid), t.lo.eq(r.lo[:bits]), t.hi.eq(r.hi[:bits])]
                return t

            def remote(r, buf, name):
                # The execute unit's footprints, registered here first (trimmed): compared
                # straight from execute's registers, the route across the chip and the
                # compare missed 150 MHz on the whole 8x8 for ECP5. A cycle older is still
                # safe (see the verdict's timing below).
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

            is_ld, is_mm, is_st = de_is[Op.LOAD], de_is[Op.MATMUL], de_is[Op.STORE]
            ld_to = lambda target: is_ld & (sb_ld.target == target)   # the load in decode
            ld_in = lambda target: ld_target == target             # the load unit's
            ex = {name: remote(fp, buf, name) for name, fp, buf in [
                ("pre_act", self.fp_pre_act, "act"), ("stream_act", self.fp_stream_act, "act"),
                ("pre_wgt", self.fp_pre_wgt, "wgt"), ("pre_acc", self.fp_pre_acc, "acc"),
                ("stream_acc", self.fp_stream_acc, "acc"), ("drain0", self.fp_drain[0], "acc"),
                ("drain1", self.fp_drain[1], "acc")]}
            ov(new_ld_buf, ex["pre_act"], "ld_pre_act", ld_to(Target.ACT), buf="act")
            ov(new_ld_buf, ex["stream_act"], "ld_stream_act", ld_to(Target.ACT), buf="act")
            ov(new_ld_buf, ex["pre_wgt"], "ld_pre_wgt", ld_to(Target.WGT), buf="wgt")
            ov(new_ld_buf, st_param, "ld_st_param", ld_to(Target.PARAM), store_busy_q,
               buf="param")
            ov(new_ld_mem, st_mem, "ld_st_mem", is_ld, store_busy_q)
            ov(new_mm_act, ld_buf, "mm_act_ld", is_mm & ld_in(Target.ACT), load_busy_q,
               buf="act")
            ov(new_mm_wgt, ld_buf, "mm_wgt_ld", is_mm & ld_in(Target.WGT), load_busy_q,
               buf="wgt")
            ov(new_mm_acc, st_acc, "mm_acc_st", is_mm, store_busy_q, buf="acc")
            for name in ("pre_acc", "stream_acc", "drain0", "drain1"):
                ov(new_st_acc, ex[name], f"st_{name}", is_st, buf="acc")
            ov(new_st_param, ld_buf, "st_param_ld", is_st & ~sb_raw & ld_in(Target.PARAM),
               load_busy_q, buf="param")
            ov(new_st_mem, ld_mem, "st_ld_mem", is_st, load_busy_q)
            unit_conflict = Cat(*terms).any()

            # While a load or store unit is idle its footprint registers follow decode, so they
            # hold the instruction it accepts (these units take a command only when idle:
            # ``cmd.ready`` is ``~busy``). Enabling them by ``~busy`` rather than by the
            # handshake keeps the issue decision off a hundred-odd clock enables.
            with m.If(~self.load_busy):
                m.d.sync += [ld_buf.eq(new_ld_buf), ld_target.eq(sb_ld.target),
                             ld_mem.eq(new_ld_mem)]
            with m.If(~self.store_busy):
                m.d.sync += [st_acc.eq(new_st_acc), st_mem.eq(new_st_mem),
                             st_param.eq(new_st_param), st_param.valid.eq(~sb_raw)]
        else:
            # Without overlap every instruction waits, like FENCE, until all units are idle.
            unit_conflict = ((de_is[Op.LOAD] | de_is[Op.MATMUL] | de_is[Op.STORE]) &
                             ~all_idle)

        m.d.comb += [
            fault.eq(de_valid & de_fault),

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

        # The scoreboard's verdict takes two register stages (overlaps, then their OR), so it
        # describes the state of two cycles ago. That is safe because the only thing that
        # creates a new conflict is a dispatch, and none happens between a refill of decode
        # and the verdict on it (decode refills only when empty, and waits de_wait cycles);
        # units finishing or footprints moving between execute stages merely make the
        # verdict conservative for two cycles.
        # The execute unit's footprints are registered once more on the way in (`remote`),
        # so for them the verdict on a word in decode since cycle T is on the state of cycle
        # T - 1. That still covers every dispatch before the word: one in cycle T - 2 (the
        # latest: issue empties decode, which refills a cycle later) is in execute's preload
        # stage in cycle T - 1. What moved since (preload to stream to drain) was covered
        # where it came from, and what was freed since is one more cycle conservative.
        # The units' busy flags come out of their control logic: registered here so that
        # they do not reach the issue decision combinationally (a 36 ns path across the
        # iCEBreaker). A cycle-old "all idle" is safe: units only become busy by a dispatch,
        # and none happens while decode waits for de_wait.
        m.d.sync += all_idle.eq(~self.load_busy & ~self.exec_busy & ~self.store_busy)
        m.d.comb += conflict.eq(unit_conflict)
        m.d.sync += conflict_q.eq(conflict)

        # `ok` (decode holds a word that passed its checks, the scoreboard's verdict on it is
        # in, and the program runs) heads the issue decision, whose result clears de_valid
        # and enables the counters. It is a register: as a LUT of de_valid, de_fault,
        # running and a registered de_wait == 0 it made that path miss 150 MHz on the whole
        # 8x8 for ECP5. Its next value: a word entering decode (de_take) waits de_wait
        # cycles; otherwise the word stays unless issued, and running only drops through a
        # HALT's issue or a fault (which excludes ok anyway).
        ok = Signal()
        halt_issue = Signal()   # a HALT leaves decode (every unit idle)
        m.d.sync += ok.eq(de_valid & ~de_fault & running & (de_wait <= 1) & ~issue)
        cmds = (self.load_cmd, self.exec_cmd, self.store_cmd)
        if cfg.overlap:
            # The load and store units are ready exactly when idle (cmd.ready is ~busy), so
            # their commands are offered only when the unit was idle in the previous cycle,
            # and such an offer is always taken: a unit only becomes busy by a dispatch, and
            # none happens in the cycle after one (ok is low then). Their handshakes, logic
            # in the units a long route away, thus stay off the issue decision (it clears
            # de_valid and ok and counts instructions: it missed 150 MHz on the whole 8x8 for
            # ECP5), for at most a cycle of issue delay after a unit finishes. The execute
            # unit's ready is one register (an empty preload stage), ahead of its busy.
            load_go, store_go = ~load_busy_q, ~store_busy_q
            unit_issue = (self.load_cmd.valid | (self.exec_cmd.valid & self.exec_cmd.ready)
                          | self.store_cmd.valid)
        else:
            # A command goes out only when every unit is idle, and an idle unit is ready
            # (cmd.ready is ~busy, or implied by it): the units' handshake logic stays off
            # the issue decision, which on the iCEBreaker was a 36 ns path.
            load_go = store_go = C(1)
            unit_issue = Cat(cmd.valid for cmd in cmds).any()
        m.d.comb += [
            self.load_cmd.valid.eq(ok & de_is[Op.LOAD] & ~conflict_q & load_go),
            self.exec_cmd.valid.eq(ok & de_is[Op.MATMUL] & ~conflict_q),
            self.store_cmd.valid.eq(ok & de_is[Op.STORE] & ~conflict_q & store_go),
            halt_issue.eq(ok & de_is[Op.HALT] & all_idle),
            issue.eq(unit_issue | halt_issue | (ok & de_is[Op.FENCE] & all_idle) |
                     (ok & de_is[Op.NOP])),  # (anything else has faulted)
        ]

        # (`halt_issue` rather than `issue & de_is[HALT]`: the units' handshakes in `issue`
        # made these two enables miss 150 MHz on the whole 8x8 for ECP5.)
        with m.If(halt_issue):
            m.d.sync += [halted.eq(1), running.eq(0)]

        # ---- status ----------------------------------------------------------------------
        with m.If(fault & running):
            m.d.sync += [self.status.error.eq(de_error), self.status.fault_index.eq(de_index),
                         running.eq(0)]
        # Status and counters are registered one cycle behind the state they describe: the
        # counters add registered increments (an issue decision feeding a 48-bit carry chain
        # does not fit in a cycle), and done/idle wait for the last increment to land, so a
        # host that sees done (or idle) reads final counters.
        done = Signal()
        issue_q = Signal()
        m.d.comb += done.eq(halted | ((self.status.error != isa.ErrorCode.NONE) & all_idle))
        m.d.sync += [
            self.status.done.eq(done),
            self.status.busy.eq(started & ~done),
            # (all_idle is a cycle old, and a unit that took an instruction a cycle ago is
            # busy now without all_idle knowing, hence issue_q; units only become busy by a
            # dispatch. The units' own busy flags, read here directly, missed 150 MHz on the
            # whole 8x8 for ECP5.)
            self.status.idle.eq(~fe_valid & ~de_valid & ~word_in & all_idle & ~issue_q),
            issue_q.eq(issue),
        ]

        # ---- counters: from the cycle after the first accepted word until done ---------
        # (``started`` rather than the accepting handshake, which is late in the cycle,
        # gates the increments.)
        counting = started & ~done
        ctr = self.counters
        increments = {
            "cycles": 1,
            "array_busy": self.array_busy,
            "instructions": issue & running,
            "dispatch_stall": ok & ~issue,
            "load_stall": self.load_stall,
            "exec_stall": self.exec_stall,
            "store_stall": self.store_stall,
        }
        # Each term is registered (`inc_*`) and gated by a registered `counting` on its way
        # into the count: the same sum as gating before the register (both operands are a
        # cycle late), but the gate's inputs (`counting` is a function of the run state, the
        # error code and all_idle) stay off the terms' paths, and one register, not seven
        # LUTs, takes `counting`'s fan-out (as inc = counting & term they missed 150 MHz on
        # the whole 8x8 for ECP5). The units' terms arrive from their modules, a long route
        # away, and are registered once more: the gate then sees them a cycle late, which
        # counts the same, since every unit is idle, and these terms are low, in the cycle
        # before counting starts and in the one before it stops (done waits for all_idle).
        counting_q = Signal()
        m.d.sync += counting_q.eq(counting)
        late = ("array_busy", "load_stall", "exec_stall", "store_stall")
        for name, term in increments.items():
            if name in late:
                term_q = Signal(name=f"{name}_q")
                m.d.sync += term_q.eq(term)
                term = term_q
            inc = Signal(name=f"inc_{name}")
            count = Signal(cfg.counter_width, name=f"count_{name}")  # wraps; zero-extended
            m.d.sync += [inc.eq(term), count.eq(count + (inc & counting_q))]
            m.d.comb += ctr[name].eq(count)

        return m

    def _product(self, m: Module, a: Value, b: Value, name: str) -> Value:
        """``a * b`` (unsigned, at most 17 bits each), ``self._mult_latency`` cycles later."""
        width = len(a) + len(b)
        if self._mult_kind == "generic":
            product = Signal(width, name=name)
            m.d.sync += product.eq(a * b)
            return product
        mult = Multiplier(self._mult_kind, latency=self._mult_latency, width=18,
                          simulation=self._target.simulation)
        m.submodules[name] = mult
        m.d.comb += [mult.a.eq(a), mult.b.eq(b)]  # zero-extended into signed(18)
        return mult.p.as_unsigned()[:width]
