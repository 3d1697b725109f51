"""A few-pin wrapper around a core, for place and route tools without an out-of-context mode."""

from amaranth import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Harness"]


class Harness(wiring.Component):
    """Few-pin wrapper that keeps all of a core's logic alive (for nextpnr-ice40).

    Every input bit of ``core`` is one stage of a shift register fed from ``din``; every
    output bit enters a pipelined XOR tree (4 inputs per LUT, one register per level) whose
    root drives ``dout``. Clock and reset are the ``sync`` domain's.
    """
    din: In(1)
    dout: Out(1)

    def __init__(self, core: wiring.Component):
        self.core = core
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        inputs, outputs = [], []
        for path, member, value in core.signature.flatten(core):
            (inputs if member.flow == In else outputs).append(value)

        n_in = sum(len(Value.cast(v)) for v in inputs)
        if n_in:
            chain = Signal(n_in, name="chain")
            m.d.sync += chain.eq(Cat(self.din, chain[:-1]))
            offset = 0
            for v in inputs:
                width = len(Value.cast(v))
                m.d.comb += v.eq(chain[offset:offset + width])
                offset += width
        bits = [b for v in outputs for b in Value.cast(v)]
        if not bits:
            bits = [self.din]
        level = 0
        while len(bits) > 1:
            nxt = []
            for i in range(0, len(bits), 4):
                r = Signal(name=f"xor_l{level}_{i // 4}")
                group = bits[i:i + 4]
                acc = group[0]
                for b in group[1:]:
                    acc = acc ^ b
                m.d.sync += r.eq(acc)
                nxt.append(r)
            bits = nxt
            level += 1
        out = Signal()
        m.d.sync += out.eq(bits[0])
        m.d.comb += self.dout.eq(out)
        return m
