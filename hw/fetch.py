"""Instruction fetch: takes words from the instruction stream and holds each while it is checked.

Two variants with the same ports: :class:`BufferedFetch` (a fetch register, for overlapped
dispatch) and :class:`InPlaceFetch` (the word is checked on the stream itself, for a decoder
that dispatches one instruction at a time).
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa

__all__ = ["OpFlags", "FetchSignature", "BufferedFetch", "InPlaceFetch"]


def OpFlags(config) -> data.StructLayout:
    """One flag per opcode of ``config``'s table (``isa.opcodes``), named by the opcode in
    lower case: a word's opcode, one-hot (all clear: not in the table)."""
    return data.StructLayout({op.name.lower(): unsigned(1) for op in isa.opcodes(config)})


def op_flag(flags, op: isa.Opcode) -> Value:
    """The flag of ``op`` in an :func:`OpFlags` view."""
    return flags[op.name.lower()]


class FetchSignature(wiring.Signature):
    """What fetch offers the checker and the decode stage (fetch's view).

    Members
    -------
    valid : Out(1)
        Fetch holds a word of a running program.
    word : Out(INSTR_WIDTH)
    check_word : Out(INSTR_WIDTH)
        The word again, for the checks: equal to ``word`` from the cycle after it arrived.
    index : Out(32)
        The word's index in the program (words accepted before it).
    is_op : Out(OpFlags)
        The word's opcode, one-hot.
    checked : Out(1)
        The word has been in fetch for ``check_cycles`` cycles: the checker's verdict on it
        is ready.
    take : In(1)
        Decode is empty: a checked word moves there this cycle.
    """

    def __init__(self, config):
        super().__init__({
            "valid": Out(1), "word": Out(isa.INSTR_WIDTH), "check_word": Out(isa.INSTR_WIDTH),
            "index": Out(32), "is_op": Out(OpFlags(config)), "checked": Out(1), "take": In(1),
        })


class _Fetch(wiring.Component):
    """Ports shared by both variants.

    Parameters
    ----------
    check_cycles : int
        Cycles a word must stay in fetch (the checker's latency).
    config : AcceleratorConfig
        Its opcode table (``isa.opcodes``) sets the opcode flags.

    Attributes
    ----------
    instr : In(stream)
        The instruction stream. Once the program is over (``running`` low) words are
        accepted and discarded, so a host never blocks on the stream.
    running : In(1)
        The program neither halted nor faulted.
    out : Out(FetchSignature)
    word_in : Out(1)
        A word is accepted this cycle.
    started : Out(1)
        A word has been accepted since reset.
    """

    def __init__(self, check_cycles: int, config):
        if not isinstance(check_cycles, int) or check_cycles < 1:
            raise ValueError(f"check_cycles must be a positive integer, not {check_cycles!r}")
        self._check_cycles = check_cycles
        self._ops = isa.opcodes(config)
        super().__init__({
            "instr": In(stream.Signature(isa.INSTR_WIDTH)),
            "running": In(1),
            "out": Out(FetchSignature(config)),
            "word_in": Out(1),
            "started": Out(1),
        })

    @property
    def check_cycles(self) -> int:
        return self._check_cycles

    def _count_words(self, m: Module) -> Signal:
        """``word_in``, ``started`` and the number of accepted words (returned).

        The count lags a cycle (the handshake comes late in the cycle and would be the enable
        of 32 flip-flops); words are at least ``check_cycles`` apart while the program runs,
        so a word entering fetch always finds the count of the words before it.
        """
        accepted = Signal(32)
        word_in_q = Signal()
        m.d.comb += self.word_in.eq(self.instr.valid & self.instr.ready)
        m.d.sync += [
            word_in_q.eq(self.word_in),
            accepted.eq(accepted + word_in_q),
            self.started.eq(self.started | self.word_in),
        ]
        return accepted

    def _age(self, m: Module, restart: Value) -> None:
        """Count cycles since the word arrived (``restart``); ``checked`` after check_cycles."""
        age = Signal(range(self._check_cycles + 1), name="fe_age")
        with m.If(restart):
            m.d.sync += [age.eq(0), self.out.checked.eq(0)]
        with m.Elif(~self.out.checked):
            m.d.sync += [age.eq(age + 1),
                         self.out.checked.eq(age == self._check_cycles - 1)]


class BufferedFetch(_Fetch):
    """A fetch register, refilled only when empty.

    The stream's ``valid`` (from outside, possibly far away) then reaches nothing but the
    register's valid flag: the word, its index and the age follow the stream while fetch is
    empty, on an enable that is a register. That costs a cycle per instruction, against
    ``check_cycles`` of checking. The opcode flags are registered beside the word, from the
    stream's payload, so that they are not a decode of the register's output.
    """

    def elaborate(self, platform):
        m = Module()
        out = self.out
        accepted = self._count_words(m)
        load = Signal()
        m.d.comb += [
            load.eq(~out.valid | ~self.running),
            self.instr.ready.eq(load),
        ]
        opcode = isa.opcode_of(self.instr.payload)
        with m.If(load):
            m.d.sync += [out.valid.eq(self.instr.valid & self.running),
                         out.word.eq(self.instr.payload), out.index.eq(accepted),
                         *[op_flag(out.is_op, op).eq(opcode == op) for op in self._ops]]
        with m.Elif(out.valid & out.checked & out.take):
            m.d.sync += out.valid.eq(0)
        # The checks read a copy: the word also feeds the range ends, the memory checks and
        # decode, and the checks' wide field tests on top would add to its fan-out.
        m.d.sync += out.check_word.eq(out.word)
        self._age(m, load)
        return m


class InPlaceFetch(_Fetch):
    """No fetch register: the word is checked on the stream, whose payload holds until it is
    taken, and taken straight into decode (128 flip-flops fewer). Suits a decoder that
    dispatches one instruction at a time."""

    def elaborate(self, platform):
        m = Module()
        out = self.out
        accepted = self._count_words(m)
        opcode = isa.opcode_of(self.instr.payload)
        m.d.comb += [
            out.valid.eq(self.instr.valid & self.running),
            out.word.eq(self.instr.payload),
            out.check_word.eq(self.instr.payload),
            out.index.eq(accepted),
            *[op_flag(out.is_op, op).eq(opcode == op) for op in self._ops],
            self.instr.ready.eq(~self.running | (out.checked & out.take)),
        ]
        self._age(m, self.word_in | ~self.instr.valid)
        return m
