"""Instruction checker: the golden model's checks (``isa.instruction_checks``) as a pipeline."""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig
from .fetch import OpFlags, op_flag
from .interfaces import FOOTPRINT_WIDTH
from .mult import Family, Multiplier, MultiplierTarget

__all__ = ["END_SLOTS", "END_SLOT_COUNT", "InstructionChecker"]

#: Which output slot of :attr:`InstructionChecker.ends` holds which of
#: ``isa.instruction_ends`` (the memory end has its own output). Shared across opcodes: only
#: one instruction is checked at a time.
END_SLOTS = {
    isa.Opcode.LOAD: ("buf",),
    isa.Opcode.MATMUL: ("act", "wgt", "acc"),
    isa.Opcode.STORE: ("acc",),
    **{op: ("src", "dst", "param") + (("b",) if isa.VECTOR_RULES[op].b != isa.SecondOperand.NONE else ())
       for op in isa.VECTOR_OPCODES},
}
#: Slots of :attr:`InstructionChecker.ends`: the most any opcode has.
END_SLOT_COUNT = max(len(slots) for slots in END_SLOTS.values())


def end_slot(ends, op: isa.Opcode, name: str) -> Value:
    """The end ``name`` of opcode ``op`` in an array laid out as :data:`END_SLOTS`."""
    return ends[END_SLOTS[op].index(name)]


def _fields(layout, word) -> dict:
    """The operand fields of ``word`` read through an instruction ``Struct``."""
    view = layout(word)
    return {name: Value.cast(view[name])
            for name, _ in data.Layout.cast(layout) if name != "opcode"}


class InstructionChecker(wiring.Component):
    """Error code and range ends of the word held in fetch, :attr:`latency` cycles after it
    arrived.

    A free-running pipeline: every register is a function of the word and the stage
    before, so it describes a word once the word has been held for the register's depth.
    The memory end ``mem_addr + (n_rows - 1) * stride + row_bytes`` takes a multiply and two
    wide adds, one per cycle; stage 1 registers the buffer ends, stage 2 every check
    condition of every opcode against them, stage 3 the first failing one for the opcode in
    fetch. MEM_RANGE, always the last check, is decided beside the memory end.

    Parameters
    ----------
    config : AcceleratorConfig
    target : MultiplierTarget or None
        On ECP5 the extent multiply uses registered MULT18X18Ds (inferred ones are
        combinational and take most of a 150 MHz cycle); elsewhere a plain registered
        product.

    Attributes
    ----------
    word : In(INSTR_WIDTH)
        The word in fetch (it feeds the ends and the memory checks).
    check_word : In(INSTR_WIDTH)
        The same word, from the cycle after it arrived (it feeds the field checks).
    is_op : In(OpFlags)
        The word's opcode, one-hot.
    error : Out(ErrorCode)
        The first failing check, ``NONE`` if the word passes.
    ends : Out(ArrayLayout(FOOTPRINT_WIDTH, END_SLOT_COUNT))
        The buffer ends of ``isa.instruction_ends``, slotted by :data:`END_SLOTS`.
    mem_end : Out(mem_bytes.bit_length())
        The memory end (LOAD, STORE), meaningful when the word passes.
    is_op_out : Out(OpFlags)
        ``is_op`` delayed to match ``error``'s stage 2 (decode keeps these flags).
    """

    def __init__(self, config: AcceleratorConfig, target: MultiplierTarget | None = None):
        if target is not None and not isinstance(target, MultiplierTarget):
            raise TypeError(f"target must be a MultiplierTarget or None, not {target!r}")
        self._config = config
        self._target = target or MultiplierTarget()
        self._ecp5 = self._target.family is Family.ECP5
        super().__init__({
            "word": In(isa.INSTR_WIDTH),
            "check_word": In(isa.INSTR_WIDTH),
            "is_op": In(OpFlags(config)),
            "error": Out(isa.ErrorCode),
            "ends": Out(data.ArrayLayout(FOOTPRINT_WIDTH, END_SLOT_COUNT)),
            "mem_end": Out(config.mem_bytes.bit_length()),
            "is_op_out": Out(OpFlags(config)),
        })

    @property
    def mult_latency(self) -> int:
        """Cycles of the partial products' multipliers."""
        return 3 if self._ecp5 else 1

    @property
    def latency(self) -> int:
        """Cycles from a word's arrival to its verdict: the range-end pipeline's depth
        (operands; the partial products; their sum; the end)."""
        return 3 + self.mult_latency

    def elaborate(self, platform):
        m = Module()
        k_mem_fail, k2_mem_op = self._memory_check(m)
        failed = self._field_checks(m)
        # Stage 3 reads the opcode as registered one-hot flags (stage 2, like the check
        # bits) and combines the opcodes' verdicts as an AND-OR, not as a switch on the
        # opcode in front of the priority chains.
        k1_is = {op: Signal(name=f"k1_is_{op.name.lower()}") for op in failed}
        k2_is = {op: Signal(name=f"k2_is_{op.name.lower()}") for op in failed}
        m.d.sync += [k1_is[op].eq(op_flag(self.is_op, op)) for op in failed]
        m.d.sync += [k2_is[op].eq(k1_is[op]) for op in failed]
        m.d.comb += [op_flag(self.is_op_out, op).eq(k2_is[op]) for op in failed]
        # (ErrorCode.NONE is 0, so the OR of the masked verdicts is the one-hot select.)
        assert isa.ErrorCode.NONE.value == 0
        error = Mux(~Cat(*k2_is.values()).any(), isa.ErrorCode.BAD_OPCODE.value, 0)
        for op, conds in failed.items():
            verdict = Const(isa.ErrorCode.NONE.value, 4)
            for code, bit in reversed(conds):   # the first failing check wins
                verdict = Mux(bit, code.value, verdict)
            error = error | Mux(k2_is[op], verdict, 0)
        k3_error = Signal(isa.ErrorCode)  # first failing check other than MEM_RANGE
        m.d.sync += k3_error.eq(error)
        mem_range = isa.ErrorCode.MEM_RANGE
        m.d.comb += self.error.eq(Mux(
            k3_error != isa.ErrorCode.NONE, k3_error,
            Mux(k2_mem_op & k_mem_fail, mem_range, isa.ErrorCode.NONE)))
        return m

    def _field_checks(self, m: Module) -> dict:
        """Stage 1: the buffer ends; stage 2: one register per check and opcode.

        Returns ``{opcode: [(code, bit), ...]}`` in check order, MEM_RANGE left out."""
        cfg, mem_range = self._config, isa.ErrorCode.MEM_RANGE
        failed = {}
        for op in isa.opcodes(cfg):
            layout = isa.INSTR_LAYOUTS[op]
            ends = isa.instruction_ends(op, _fields(layout, self.word), cfg, Mux)
            with m.If(op_flag(self.is_op, op)):
                for slot, name in enumerate(END_SLOTS.get(op, ())):
                    m.d.sync += self.ends[slot].eq(ends[name])
            registered = {name: end_slot(self.ends, op, name) for name in ends if name != "mem"}
            checks = isa.instruction_checks(op, _fields(layout, self.check_word), cfg, Mux,
                                            ends={**registered, "mem": Const(0)})
            assert ("mem" in ends) == (checks[-1][0] == mem_range)
            failed[op] = []
            for code, cond in checks:
                if code == mem_range:
                    continue
                bit = Signal(name=f"k2_{op.name.lower()}_{code.name.lower()}")
                m.d.sync += bit.eq(cond)
                failed[op].append((code, bit))
        return failed

    def _memory_check(self, m: Module) -> tuple[Signal, Signal]:
        """The memory end, one carry chain or one multiplier between registers per stage.

        Returns ``(k_mem_fail, k2_mem_op)``: the end exceeds ``mem_bytes``, and the word
        accesses memory (both ``latency - 1`` cycles in)."""
        cfg = self._config
        ld, st = isa.LoadInstr(self.word), isa.StoreInstr(self.word)
        is_store = op_flag(self.is_op, isa.Opcode.STORE)
        st_row_bytes = isa.store_row_bytes(
            st.n_cols, st.mode.as_value() == isa.StoreMode.RAW.value, Mux)
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
        k_mem_end = Signal(signed(42))  # latency in
        k_room = Signal(signed(37))     # mem_bytes - k3_base
        k_mem_fail = Signal()           # k_mem_end > mem_bytes, as k_prod > k_room
        room_bits = (cfg.mem_bytes + (1 << len(k1_stride)) - 1).bit_length()
        assert room_bits < len(k_prod) and room_bits < len(k_room)
        m.d.sync += [
            k1_n_rows.eq(ld.n_rows),  # same position in LOAD and STORE
            k1_stride.eq(Mux(is_store, st.mem_stride, ld.mem_stride)),
            # The operands are selected in one stage and added in the next.
            k1_addr.eq(Mux(is_store, st.mem_addr, ld.mem_addr)),
            k1_len.eq(Mux(is_store, st_row_bytes, ld.row_bytes)),
            k1_mem_op.eq(op_flag(self.is_op, isa.Opcode.LOAD) | is_store),
            k2_addr_len.eq(k1_addr + k1_len),
            k2_stride_room.eq(cfg.mem_bytes + k1_stride),
            k2_mem_op.eq(k1_mem_op),
            k3_base.eq(k2_addr_len - k1_stride),
            # The stride is split so that each partial product fits one 18x18 DSP.
            k_prod.eq(self._product(m, k1_n_rows, k1_stride[:17], "prod_lo") +
                      (self._product(m, k1_n_rows, k1_stride[17:], "prod_hi") << 17)),
            k_mem_end.eq(k_prod + k3_base),
            # MEM_RANGE is decided beside the sum rather than from it, keeping a compare off
            # the last adder: k_mem_end > mem_bytes is k_prod > mem_bytes - k3_base.
            k_room.eq(k2_stride_room - k2_addr_len),
            # A room that is not negative is below 2**room_bits (mem_bytes + the largest
            # stride bounds it): a product with a bit set above that fails, and the rest is
            # a compare of room_bits, not of 41 bits.
            k_mem_fail.eq(k_room[-1] | (k_prod[room_bits:] != 0) |
                          (k_prod[:room_bits] > k_room[:room_bits])),
        ]
        m.d.comb += self.mem_end.eq(k_mem_end[:len(self.mem_end)])
        return k_mem_fail, k2_mem_op

    def _product(self, m: Module, a: Value, b: Value, name: str) -> Value:
        """``a * b`` (unsigned, at most 17 bits each), :attr:`mult_latency` cycles later."""
        width = len(a) + len(b)
        if not self._ecp5:
            product = Signal(width, name=name)
            m.d.sync += product.eq(a * b)
            return product
        mult = Multiplier("ecp5", latency=self.mult_latency, width=18,
                          simulation=self._target.simulation)
        m.submodules[name] = mult
        m.d.comb += [mult.a.eq(a), mult.b.eq(b)]  # zero-extended into signed(18)
        return mult.p.as_unsigned()[:width]
