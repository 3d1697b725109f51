"""Formal harness of the whole accelerator (small configuration): ``clear`` and the memory
port's stream rule.

The accelerator gets arbitrary instruction words (from a producer that keeps the stream
rule), an arbitrary ``clear`` at any cycle (stronger than the documented contract, which asks
for ``clear`` only while not busy), and a memory that takes requests whenever it likes and
answers each accepted read once, in order, after any delay, with any data (responses to reads
accepted before a ``clear`` may still arrive after it).

Asserted:

* **clear**: the cycle after ``clear``, every unit (load, execute, store) is idle, the
  memory port offers no request, and status reads as after reset (not busy, not done, no
  error); that is ``N = 1`` (``clear`` is a synchronous reset of every control register).
* **stream rule**, on the load and the store unit's request streams and on the memory port:
  a request offered and not taken is offered again in the next cycle with the same payload
  (unless ``clear`` came in between). :class:`~serrano.hw.top.MemoryArbiter` pre-empts by
  design (loads first): a store request waiting at the port is replaced by a load request
  when the load unit raises ``valid``; at the port the harness therefore allows exactly that
  case (the previous payload was a write, the new one is a read from the load unit, and the
  store unit's own request is still held) and asserts everything else: ``valid`` stays up,
  and the payload holds otherwise.
"""

from amaranth import *
from amaranth.hdl import Assert, Assume

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.top import Accelerator

from formal_harness import AnySeq

__all__ = ["SystemHarness"]


def _assert_stream_rule(m: Module, intf, clear: Value, what: str, allow=C(0)) -> Signal:
    """Assert that ``intf`` (a stream) keeps ``valid`` and its payload until ``ready``,
    except in the cycle after ``clear`` and where ``allow`` (a payload change) holds.
    Returns the registered "was waiting" flag."""
    waiting = Signal(name=f"{what}_waiting")
    last = Signal(len(Value.cast(intf.payload)), name=f"{what}_last")
    m.d.sync += [waiting.eq(intf.valid & ~intf.ready & ~clear),
                 last.eq(Value.cast(intf.payload))]
    with m.If(waiting):
        m.d.comb += Assert(intf.valid, f"{what}: valid dropped before ready")
        m.d.comb += Assert((Value.cast(intf.payload) == last) | allow,
                           f"{what}: payload changed before ready")
    return waiting, last


class SystemHarness(Elaboratable):
    """See the module docstring. ``check``: "clear", "stream" or both (a tuple);
    ``allow_pre_emption=False`` asserts the plain stream rule at the memory port too (which
    the arbiter breaks: the proof then fails, showing the case is real)."""

    def __init__(self, cfg: AcceleratorConfig, check=("clear", "stream"), *,
                 allow_pre_emption: bool = True):
        self.cfg = cfg
        self.acc = Accelerator(cfg)
        self.check = tuple(check)
        self.allow_pre_emption = allow_pre_emption

    def elaborate(self, platform):
        m = Module()
        acc = self.acc
        # Elaborated here so that the harness can see the units inside.
        top = acc.elaborate(platform)
        acc._MustUse__silence = True    # (used through `top`, its elaborated module)
        m.submodules.acc = top
        units = {name: getattr(top.submodules, name) for name in ("load", "execute", "store")}

        m.d.comb += [acc.instr.valid.eq(AnySeq(1)),
                     acc.instr.payload.eq(AnySeq(isa.INSTR_WIDTH)),
                     acc.clear.eq(AnySeq(1)),
                     acc.mem.req.ready.eq(AnySeq(1)),
                     acc.mem.resp.valid.eq(AnySeq(1)),
                     acc.mem.resp.payload.eq(AnySeq(len(acc.mem.resp.payload)))]
        # (a clear also withdraws a word on the stream: the producer is reset with it)
        waiting = Signal()
        last = Signal(isa.INSTR_WIDTH)
        m.d.sync += [waiting.eq(acc.instr.valid & ~acc.instr.ready & ~acc.clear),
                     last.eq(acc.instr.payload)]
        with m.If(waiting):
            m.d.comb += Assume(acc.instr.valid & (acc.instr.payload == last))
        # One response per accepted read, in order, none early (clear does not cancel them).
        outstanding = Signal(6)
        read = acc.mem.req.valid & acc.mem.req.ready & ~acc.mem.req.payload.write
        m.d.sync += outstanding.eq(outstanding + read - acc.mem.resp.valid)
        m.d.comb += Assume(~acc.mem.resp.valid | (outstanding != 0))
        m.d.comb += Assume(outstanding != (1 << len(outstanding)) - 1)

        cleared = Signal()
        m.d.sync += cleared.eq(acc.clear)
        if "clear" in self.check:
            with m.If(cleared):
                for name, unit in units.items():
                    m.d.comb += Assert(~unit.activity.busy, f"{name} unit busy after clear")
                m.d.comb += [
                    Assert(~acc.mem.req.valid, "a memory request the cycle after clear"),
                    Assert(~acc.status.busy & ~acc.status.done &
                           (acc.status.error == isa.ErrorCode.NONE),
                           "status not reset by clear"),
                ]
        if "stream" in self.check:
            load, store = units["load"], units["store"]
            _assert_stream_rule(m, load.mem_req, acc.clear, "load_req")
            store_waiting, _ = _assert_stream_rule(m, store.mem_req, acc.clear, "store_req")
            port = acc.mem.req
            last_port = Signal.like(port.payload)
            m.d.sync += last_port.eq(port.payload)
            pre_empted = (last_port.write & ~port.payload.write & load.mem_req.valid &
                          store_waiting & store.mem_req.valid)
            _assert_stream_rule(m, port, acc.clear, "mem_req",
                                allow=pre_empted if self.allow_pre_emption else C(0))
        return m
