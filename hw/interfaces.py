"""Signatures of the signal groups that travel between Serrano's units inside the top level.

Each group is declared once here, from the producer's side, and joined in ``hw/top.py`` with
``wiring.connect``; encodings visible to software stay in ``hw/isa.py``.
"""

from amaranth import signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import AcceleratorConfig
from .footprint import RangeLayout

__all__ = ["FOOTPRINT_WIDTH", "UnitActivitySignature", "BufferReadsSignature",
           "VectorReadsSignature", "AccUpdateSignature", "FootprintSignature"]

#: Address width of scoreboard footprints: covers the deepest buffer any configuration has.
FOOTPRINT_WIDTH = 17


class UnitActivitySignature(wiring.Signature):
    """What a unit tells the decoder every cycle (producer's view).

    Members
    -------
    busy : Out(1)
        The unit holds an accepted command that has not finished.
    stalled : Out(1)
        The unit holds work but made no progress this cycle (the stall counters count it).
    """

    def __init__(self):
        super().__init__({"busy": Out(1), "stalled": Out(1)})


class BufferReadsSignature(wiring.Signature):
    """Buffer reads a unit uses, for the activity counters (producer's view).

    For the read ports whose enable says more than which reads count: the execute unit
    keeps the weight buffer enabled while a tile waits in its preload stage, the store unit
    keeps the accumulator buffer enabled while it waits for FIFO credits and the parameter
    buffer enabled always. Each member pulses once per entry read whose data the unit uses
    (``hw.activity``, docs/performance.md).

    Parameters
    ----------
    *names : str
        The buffers (``"wgt"``, ``"acc"``, ``"param"``): one ``Out(1)`` member each.
    """

    def __init__(self, *names: str):
        super().__init__({name: Out(1) for name in names})


class VectorReadsSignature(wiring.Signature):
    """What the vector unit takes in, for the activity counters (producer's view).

    Its accumulator and parameter read ports are enabled every cycle, so their enables say
    nothing; these members pulse once per entry read whose data the unit uses (a transposed
    tile's padding rows past ``n_rows`` are read but not used, so not counted).

    Parameters
    ----------
    lanes : int
        Lanes of one accumulator entry (``config.cols``).

    Members
    -------
    acc : Out(1)
        An accumulator entry read (one source row of one block).
    act : Out(1)
        An activation entry read (the second operand ``b`` of that block).
    param : Out(range(4))
        Parameter entries read in this cycle (a block's ``OutputParams``, input-stage and
        channel entries, an op's scalars entry).
    elements : Out(range(lanes + 1))
        The valid lanes of that entry (lanes below the ``n_elems`` left), 0 without a read.
    """

    def __init__(self, lanes: int):
        super().__init__({"acc": Out(1), "act": Out(1), "param": Out(range(4)),
                          "elements": Out(range(lanes + 1))})


class AccUpdateSignature(wiring.Signature):
    """The execute unit's writes into the accumulator buffer (execute's view).

    Members
    -------
    valid : Out(1)
    addr : Out(range of the accumulator depth)
    accumulate : Out(1)
        1: add ``data`` to the row; 0: overwrite it.
    data : Out(ArrayLayout(signed(psum_width), cols))
    committed : In(1)
        The buffer finished the last update (its read-modify-write pipeline is empty).
    """

    def __init__(self, config: AcceleratorConfig):
        super().__init__({
            "valid": Out(1),
            "addr": Out(config.acc_addr_width),
            "accumulate": Out(1),
            "data": Out(data.ArrayLayout(signed(config.psum_width), config.cols)),
            "committed": In(1),
        })


class FootprintSignature(wiring.Signature):
    """Buffer ranges that the execute unit's in-flight work touches (execute's view).

    Members
    -------
    pre_act, pre_wgt, pre_acc : Out(RangeLayout)
        The accepted command that has not started streaming.
    stream_act, stream_acc : Out(RangeLayout)
        The command streaming through the array.
    drain : Out(ArrayLayout(RangeLayout, 2))
        Accumulator rows still draining from the two drain slots.
    issued : Out(1)
        A vector entered the array this cycle.
    """

    def __init__(self):
        fp = RangeLayout(FOOTPRINT_WIDTH)
        super().__init__({
            "pre_act": Out(fp), "pre_wgt": Out(fp), "pre_acc": Out(fp),
            "stream_act": Out(fp), "stream_acc": Out(fp),
            "drain": Out(data.ArrayLayout(fp, 2)),
            "issued": Out(1),
        })
