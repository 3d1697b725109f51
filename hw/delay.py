"""Delay lines: one helper for every chain of pipeline registers in the gateware."""

from amaranth import Module, Signal, Value

__all__ = ["delay_line", "delay"]


def delay_line(m: Module, value, stages: int, *, name: str, first: int = 0,
               reset_less: bool = False, en=None, domain: str = "sync") -> list:
    """Copy ``value`` through ``stages`` registers; return the registers, oldest last.

    Parameters
    ----------
    m : Module
        The module that receives the registers.
    value : Value-like
        The input (a plain value or a ``data.View``; each register takes its shape).
    stages : int
        Number of registers, at least 0.
    name : str
        Register name with one ``{}`` field, filled with the stage index
        ``first, first + 1, ...`` (names are kept stable: the flows and waveforms use them).
    first : int
        Index of the first register's name.
    reset_less : bool
        Payload registers are reset-less so they pack into fabric or DSP registers.
    en : Value-like or None
        Clock enable: the line advances only when it is 1.
    domain : str
        Clock domain of the registers.
    """
    if not isinstance(stages, int) or stages < 0:
        raise ValueError(f"stages must be a non-negative integer, not {stages!r}")
    shape = value.shape() if hasattr(value, "shape") else Value.cast(value).shape()
    taps = []
    for stage in range(first, first + stages):
        reg = Signal(shape, name=name.format(stage), reset_less=reset_less)
        if en is None:
            m.d[domain] += reg.eq(value)
        else:
            with m.If(en):
                m.d[domain] += reg.eq(value)
        taps.append(reg)
        value = reg
    return taps


def delay(m: Module, value, stages: int, **kwargs):
    """``value`` delayed by ``stages`` cycles (``value`` itself when ``stages`` is 0).

    Takes the keyword arguments of :func:`delay_line`.
    """
    taps = delay_line(m, value, stages, **kwargs)
    return taps[-1] if taps else value
