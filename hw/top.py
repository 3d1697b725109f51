"""The Serrano accelerator top level."""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .activity import ActivityCounters
from .buffers import AccumulatorBuffer, Buffer
from .config import AcceleratorConfig
from .decoder import Decoder
from .execute import ExecuteUnit
from .loadstore import LoadUnit, StoreUnit
from .mult import Family, MultiplierTarget
from .vector import VectorUnit, WriteMux

__all__ = ["MemoryArbiter", "Accelerator"]


class MemoryArbiter(wiring.Component):
    """Shares the memory request stream between the load and the store unit.

    Loads first: a store request waits while the load unit has one. Loads feed the array
    and stores do not, and a LOAD's requests end (its unit drops ``valid`` for at least the
    set-up cycle of the next), so a store is delayed, never starved. Against round robin
    this keeps the array busier, and each unit's ``ready`` is a function of the other's
    ``valid`` register and the port's ``ready`` only, with no state flip-flop in front of
    the store unit's request registers (docs/fpga.md). Combinational: no added latency.
    """

    def __init__(self, config: AcceleratorConfig):
        req = stream.Signature(isa.mem_request_layout(config))
        super().__init__({"load": In(req), "store": In(req), "out": Out(req)})

    def elaborate(self, platform):
        m = Module()
        pick_store = Signal()
        m.d.comb += [
            pick_store.eq(self.store.valid & ~self.load.valid),
            self.out.valid.eq(self.load.valid | self.store.valid),
            self.out.payload.eq(Mux(pick_store, self.store.payload, self.load.payload)),
            self.store.ready.eq(pick_store & self.out.ready),
            self.load.ready.eq(~pick_store & self.out.ready),
        ]
        return m


class Accelerator(wiring.Component):
    """One Serrano accelerator: decoder, load/execute/store units, systolic array, buffers.

    Ports are described in ``docs/architecture.md``: ``instr`` (128-bit instruction words),
    ``mem`` (memory port), ``clear`` (soft reset of control state; buffer contents are kept),
    ``status`` and ``counters``.

    Parameters
    ----------
    config : AcceleratorConfig
    target : MultiplierTarget or None
        PE multipliers for an FPGA family (``hw.mult``); ``None``: portable ``a * w``.
        Timing adapts by itself (the array's ``latency`` grows with the multiplier's).
    assertions : bool
        Add the decoder's simulation assertions (``Decoder(assertions=True)``); simulation
        backends set it, synthesis must not.
    """

    def __init__(self, config: AcceleratorConfig = AcceleratorConfig(),
                 target: MultiplierTarget | None = None, *, assertions: bool = False):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        self._config = config
        self._target = target
        self._assertions = bool(assertions)
        super().__init__({
            "instr": In(stream.Signature(isa.INSTR_WIDTH)),
            "mem": Out(isa.MemoryPortSignature(config)),
            "clear": In(1),
            "status": Out(isa.Status),
            "counters": Out(isa.Counters),
        })

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config

        # The accumulator's pipelined read-modify-write costs registers that only fast
        # fabrics need; iCE40 (40 MHz, 5k logic cells) takes the one-cycle version.
        family = self._target.family if self._target is not None else Family.GENERIC
        vec = cfg.vector
        acc_buf = AccumulatorBuffer(cfg, pipelined=family is not Family.ICE40, vector_read=vec)
        decoder = Decoder(cfg, self._target, assertions=self._assertions)
        load = LoadUnit(cfg)
        execute = ExecuteUnit(cfg, self._target, acc_latency=acc_buf.latency)
        store = StoreUnit(cfg, self._target)
        arbiter = MemoryArbiter(cfg)
        act_buf = Buffer(data.ArrayLayout(signed(cfg.act_bits), cfg.rows), cfg.act_depth,
                         vector_reads=int(vec))
        wgt_buf = Buffer(data.ArrayLayout(signed(8), cfg.cols), cfg.wgt_depth)
        param_buf = Buffer(data.ArrayLayout(isa.OutputParams, cfg.cols), cfg.param_depth,
                           vector_reads=2 * vec)

        # `clear` resets every register of the control path; memories keep their contents.
        with_clear = ResetInserter(self.clear)
        m.submodules.decoder = with_clear(decoder)
        m.submodules.load = with_clear(load)
        m.submodules.execute = with_clear(execute)
        m.submodules.store = with_clear(store)
        m.submodules.arbiter = with_clear(arbiter)
        m.submodules.act_buf = act_buf
        m.submodules.wgt_buf = wgt_buf
        m.submodules.param_buf = param_buf
        m.submodules.acc_buf = with_clear(acc_buf)

        wiring.connect(m, wiring.flipped(self.instr), decoder.instr)
        wiring.connect(m, decoder.load_cmd, load.cmd)
        wiring.connect(m, decoder.exec_cmd, execute.cmd)
        wiring.connect(m, decoder.store_cmd, store.cmd)

        vector = None
        if vec:
            vector = self._add_vector_unit(m, decoder, load, act_buf, wgt_buf, acc_buf,
                                           param_buf, with_clear)
        else:
            wiring.connect(m, load.act_wr, act_buf.write)
            wiring.connect(m, load.wgt_wr, wgt_buf.write)
        wiring.connect(m, load.param_wr, param_buf.write)
        wiring.connect(m, execute.act_rd, act_buf.read)
        wiring.connect(m, execute.wgt_rd, wgt_buf.read)
        wiring.connect(m, store.param_rd, param_buf.read)
        wiring.connect(m, store.acc_rd, acc_buf.read)

        wiring.connect(m, load.mem_req, arbiter.load)
        wiring.connect(m, store.mem_req, arbiter.store)
        wiring.connect(m, arbiter.out, wiring.flipped(self.mem.req))
        wiring.connect(m, wiring.flipped(self.mem.resp), load.mem_resp)

        wiring.connect(m, execute.acc_update, acc_buf.update)
        wiring.connect(m, execute.footprint, decoder.footprint)
        wiring.connect(m, load.activity, decoder.load_activity)
        wiring.connect(m, execute.activity, decoder.exec_activity)
        wiring.connect(m, store.activity, decoder.store_activity)

        m.d.comb += self.status.eq(decoder.status)
        for name in isa.PERF_COUNTERS:
            m.d.comb += self.counters[name].eq(decoder.counters[name])
        if cfg.activity_counters:
            m.submodules.activity = activity = with_clear(ActivityCounters(cfg))
            self._tap_activity(m, activity, decoder, load, execute, store, vector)
            for name in activity.fields:
                m.d.comb += self.counters[name].eq(activity.counters[name])
        # (without them, and for fields no event feeds, the activity fields stay 0)
        return m

    def _add_vector_unit(self, m: Module, decoder, load, act_buf, wgt_buf, acc_buf, param_buf,
                         with_clear) -> VectorUnit:
        """The vector unit: its own read ports on the accumulator and parameter buffers, and
        the activation and weight buffers' write ports shared with the load unit (one
        :class:`~.vector.WriteMux` each; the scoreboard keeps their writes apart)."""
        cfg = self._config
        m.submodules.vector = vector = with_clear(VectorUnit(cfg, self._target))
        muxes = {}
        for name, buf, aw in (("act", act_buf, cfg.act_addr_width),
                              ("wgt", wgt_buf, cfg.wgt_addr_width)):
            mux = WriteMux(aw, buf.write.signature.members["data"].shape,
                           assertions=self._assertions)
            m.submodules[f"{name}_write_mux"] = muxes[name] = mux
            wiring.connect(m, mux.out, buf.write)
        wiring.connect(m, load.act_wr, muxes["act"].a)
        wiring.connect(m, vector.act_wr, muxes["act"].b)
        wiring.connect(m, load.wgt_wr, muxes["wgt"].a)
        wiring.connect(m, vector.wgt_wr, muxes["wgt"].b)
        wiring.connect(m, decoder.vector_cmd, vector.cmd)
        wiring.connect(m, vector.activity, decoder.vector_activity)
        wiring.connect(m, vector.acc_rd, acc_buf.vector_read)
        wiring.connect(m, vector.param_rd, param_buf.vector_read)
        wiring.connect(m, vector.chan_rd, param_buf.vector_read2)
        wiring.connect(m, vector.act_rd, act_buf.vector_read)
        return vector

    def _tap_activity(self, m: Module, activity: ActivityCounters, decoder: Decoder,
                      load: LoadUnit, execute: ExecuteUnit, store: StoreUnit,
                      vector: VectorUnit | None) -> None:
        """Drive the activity counters' sources (``hw.activity.activity_events``) from the
        buffer ports' enables, the memory port's handshakes and the units' ``reads``."""
        ev, upd, req = activity.events, execute.acc_update, self.mem.req
        accepted = req.valid & req.ready
        m.d.comb += [
            activity.counting.eq(decoder.counting),
            ev.act_read.eq(execute.act_rd.en),
            ev.act_write.eq(load.act_wr.en),
            ev.wgt_read.eq(execute.reads.wgt),
            ev.wgt_write.eq(load.wgt_wr.en),
            ev.acc_store_read.eq(store.reads.acc),
            # The read-modify-write port reads for every update; only an add-into uses it.
            ev.acc_update_read.eq(upd.valid & upd.accumulate),
            ev.acc_write.eq(upd.committed),    # the accumulator buffer's write enable
            ev.param_read.eq(store.reads.param),
            ev.param_write.eq(load.param_wr.en),
            ev.mem_read.eq(accepted & ~req.payload.write),
            ev.mem_write.eq(accepted & req.payload.write),
        ]
        if vector is not None:
            # The load unit's writes are tapped before the write muxes, the vector unit's
            # here: each write enable is one entry written (the two never write together).
            m.d.comb += [
                ev.vector_act_write.eq(vector.act_wr.en),
                ev.vector_wgt_write.eq(vector.wgt_wr.en),
                ev.vector_acc_read.eq(vector.reads.acc),
                ev.vector_act_read.eq(vector.reads.act),
                ev.vector_param_read.eq(vector.reads.param),
                ev.vector_elements.eq(vector.reads.elements),
            ]
