"""What the flows synthesize: the accelerator, its array, or one of its blocks, as a
:class:`Design` that builds the core for a multiplier target."""

import inspect
from dataclasses import dataclass, field
from typing import Callable

from amaranth.lib import wiring

from serrano.hw.config import AcceleratorConfig
from serrano.hw.mult import MultiplierTarget

__all__ = ["Design", "accepts_target", "accelerator_design", "array_design", "block_design",
           "BLOCKS", "config_buffers"]


@dataclass
class Design:
    """What the flow synthesizes.

    ``build(target)`` returns the core component with its PE multipliers chosen by ``target``
    (a :class:`~hw.mult.MultiplierTarget`). ``n_pes`` is how many PE multipliers it has;
    ``buffers`` lists ``(name, width_bits, depth)`` of the memories the pre-flight check
    expects; ``wired`` says whether the core accepts a multiplier target at all.
    """
    name: str
    build: Callable[[MultiplierTarget], wiring.Component]
    n_pes: int = 0
    config: AcceleratorConfig | None = None
    buffers: list = field(default_factory=list)
    wired: bool = True


def accepts_target(cls) -> bool:
    try:
        return "target" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def config_buffers(config: AcceleratorConfig) -> list:
    return [
        ("act", 8 * config.act_entry_bytes, config.act_depth),
        ("wgt", 8 * config.wgt_entry_bytes, config.wgt_depth),
        ("acc", 8 * config.acc_entry_bytes, config.acc_depth),
        ("param", 8 * config.param_entry_bytes, config.param_depth),
    ]


def _check_config(config: AcceleratorConfig) -> None:
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")


def _config_design(name: str, cls: type, config: AcceleratorConfig, **extra) -> Design:
    """A design built as ``cls(config[, target=...])``."""
    _check_config(config)
    wired = accepts_target(cls)

    def build(target: MultiplierTarget):
        return cls(config, target=target) if wired else cls(config)
    return Design(name, build, n_pes=config.rows * config.cols, config=config, wired=wired,
                  **extra)


def accelerator_design(config: AcceleratorConfig) -> Design:
    """The whole accelerator, ``hw.top.Accelerator(config[, target=...])``."""
    from serrano.hw.top import Accelerator
    _check_config(config)
    return _config_design("accelerator", Accelerator, config, buffers=config_buffers(config))


def array_design(config: AcceleratorConfig) -> Design:
    """The systolic array alone, ``hw.array.SystolicArray(config[, target=...])``."""
    from serrano.hw.array import SystolicArray
    return _config_design("array", SystolicArray, config)


def _unit_design(name: str, config: AcceleratorConfig) -> Design:
    def build(target: MultiplierTarget):
        if name == "decoder":
            from serrano.hw.decoder import Decoder
            return Decoder(config, target)
        if name == "load":
            from serrano.hw.loadstore import LoadUnit
            return LoadUnit(config)
        if name == "store":
            from serrano.hw.loadstore import StoreUnit
            return StoreUnit(config, target)
        if name == "execute":
            from serrano.hw.execute import ExecuteUnit
            return ExecuteUnit(config) if not accepts_target(ExecuteUnit) \
                else ExecuteUnit(config, target=target)
        if name == "acc_buf":
            from serrano.hw.buffers import AccumulatorBuffer
            return AccumulatorBuffer(config)
        if name == "output_stage":
            from amaranth import unsigned
            from serrano.hw.output_stage import OutputStage
            return OutputStage(config, unsigned(1), target)
        if name in ("softmax_row", "layernorm_row"):
            from amaranth import unsigned
            from serrano.hw.vector_rows import LayerNormRow, SoftmaxRow, SoloRow
            cls = SoftmaxRow if name == "softmax_row" else LayerNormRow
            # (with its multipliers: in the vector unit the row engines share a bank)
            return SoloRow(cls(config, unsigned(1),
                               target=MultiplierTarget(family=target.family)))
        raise AssertionError(name)
    n_pes = config.rows * config.cols if name == "execute" else 0
    wired = True
    if name == "execute":
        from serrano.hw.execute import ExecuteUnit
        wired = accepts_target(ExecuteUnit)
    return Design(name, build, n_pes=n_pes, config=config, wired=wired)


BLOCKS = ("accelerator", "array", "decoder", "load", "store", "execute", "output_stage",
          "acc_buf", "softmax_row", "layernorm_row")


def block_design(block: str, config: AcceleratorConfig) -> Design:
    """A :class:`Design` for one block of the accelerator (or the whole of it), synthesized
    on its own: ``accelerator``, ``array``, ``decoder``, ``load``, ``store``, ``execute``,
    ``output_stage``, ``acc_buf`` (the accumulator buffer and its read-modify-write),
    ``softmax_row``, ``layernorm_row`` (the vector unit's row engines, ``L = cols``)."""
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; choose one of: {', '.join(BLOCKS)}")
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
    if block == "accelerator":
        return accelerator_design(config)
    if block == "array":
        return array_design(config)
    return _unit_design(block, config)
