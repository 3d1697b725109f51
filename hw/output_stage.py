"""The requantizing output stage: int32 accumulator rows to int8, one row per cycle.

``OutputStage(config, tag_shape, target)`` builds the pipeline for ``target.family``: a
:class:`~.output_wide.GenericOutputStage` (plain ``*`` partial products), an
:class:`~.output_wide.ECP5OutputStage` (MULT18X18D partial products) or an
:class:`~.output_ice40.ICE40OutputStage` (SB_MAC16 partial products, a compact pipeline).
"""

from amaranth import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig
from .delay import delay
from .mult import Family, MultiplierTarget
from .output_steps import check_tag_shape

__all__ = ["OutputStage", "output_stage_class"]


def output_stage_class(target: MultiplierTarget | None) -> type:
    """The :class:`OutputStage` subclass that ``OutputStage(config, tag_shape, target)``
    builds for ``target`` (``None``: generic)."""
    from .output_ice40 import ICE40OutputStage
    from .output_wide import ECP5OutputStage, GenericOutputStage
    _check_target(target)
    family = Family.GENERIC if target is None else target.family
    return {Family.ECP5: ECP5OutputStage, Family.ICE40: ICE40OutputStage}.get(
        family, GenericOutputStage)


def _check_target(target) -> None:
    if target is not None and not isinstance(target, MultiplierTarget):
        raise TypeError(f"target must be a MultiplierTarget or None, not {target!r}")


class OutputStage(wiring.Component):
    """Bias, ``MultiplyByQuantizedMultiplier``, zero point and clamp for a row of ``cols``
    int32 accumulators, bit-exact with ``sim.numerics.output_stage``.

    ``OutputStage(config, tag_shape, target)`` returns the subclass for ``target.family``
    (:func:`output_stage_class`); the subclasses are the pipelines, this class their ports
    and the control/tag delay line.

    Fully pipelined: a row may enter on every cycle (or with gaps); all columns are processed
    in parallel; there is no backpressure. A row presented with ``i_valid`` in cycle ``t``
    appears on ``o_data`` / ``o_tag`` with ``o_valid`` in cycle ``t + latency``. ``o_data``
    and ``o_tag`` are only meaningful while ``o_valid`` is high.

    Column ``n`` uses ``i_params[n]`` (``isa.OutputParams``): ``bias``, ``multiplier``,
    ``shift``, ``zero_point``, ``lo``, ``hi``. ``acc + bias`` and ``y + zero_point`` wrap in
    int32; the clamp applies ``lo`` then ``hi``, so ``lo > hi`` gives ``hi``.

    ``shift`` is an 8-bit field but ``numerics.md`` only defines ``[-31, 30]``: the hardware
    saturates it into that range (a shift of 40 acts as 30, -40 as -31). A golden model fed
    arbitrary parameter bytes must ``clip`` the shift the same way before calling
    ``sim.numerics.output_stage``.

    Parameters
    ----------
    config : AcceleratorConfig
        Supplies ``cols``.
    tag_shape : shape-castable
        Shape of ``i_tag`` / ``o_tag``: bookkeeping carried alongside each row, untouched, and
        delayed by ``latency`` cycles.
    target : MultiplierTarget or None
        Only ``family`` and ``simulation`` matter. ``family`` picks the pipeline and with it
        ``latency``: 9 generic, 15 ECP5, 8 iCE40. With ``simulation`` the vendor DSPs are
        their cycle-equivalent models.

    Attributes
    ----------
    i_valid : In(1)
    i_acc : In(ArrayLayout(signed(32), cols))
    i_params : In(ArrayLayout(isa.OutputParams, cols))
    i_tag : In(tag_shape)
    o_valid : Out(1)
    o_data : Out(ArrayLayout(signed(8), cols))
    o_tag : Out(tag_shape)
    """

    def __new__(cls, config: AcceleratorConfig, tag_shape,
                target: MultiplierTarget | None = None):
        if cls is OutputStage:
            cls = output_stage_class(target)
        return super().__new__(cls, src_loc_at=1)

    def __init__(self, config: AcceleratorConfig, tag_shape,
                 target: MultiplierTarget | None = None):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        _check_target(target)
        check_tag_shape(tag_shape)
        self._config = config
        self._tag_shape = tag_shape
        self._target = target or MultiplierTarget()
        members = {
            "i_valid": In(1),
            "i_acc": In(data.ArrayLayout(signed(32), config.cols)),
            "i_params": In(data.ArrayLayout(isa.OutputParams, config.cols)),
            "i_tag": In(tag_shape),
            "o_valid": Out(1),
            "o_data": Out(data.ArrayLayout(signed(8), config.cols)),
            "o_tag": Out(tag_shape),
        }
        super().__init__(members)

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    @property
    def latency(self) -> int:
        """Cycles from a row on the inputs (``i_valid``) to its result (``o_valid``)."""
        raise NotImplementedError

    @property
    def target(self) -> MultiplierTarget:
        return self._target

    def elaborate(self, platform):
        m = Module()
        # Control and tag travel in a delay line as long as the datapath; only valid needs a
        # reset, the payload registers are reset-less so they pack into fabric/DSP registers.
        m.d.comb += [
            self.o_valid.eq(delay(m, self.i_valid, self.latency, name="s{}_valid", first=1)),
            self.o_tag.eq(delay(m, self.i_tag, self.latency, name="s{}_tag", first=1,
                                reset_less=True)),
        ]
        for n in range(self._config.cols):
            self._column(m, n, self.i_acc[n], self.i_params[n], self.o_data[n])
        return m

    def _column(self, m: Module, n: int, acc, params, out) -> None:
        """Column ``n``'s pipeline from ``acc`` and ``params`` to ``out``."""
        raise NotImplementedError
