"""The one configuration object every block, the runtime and the scripts are built from."""

from dataclasses import dataclass
from functools import cached_property

__all__ = ["AcceleratorConfig"]

# Field widths in the 128-bit instruction word (see hw/isa.py) bound these parameters.
_MAX_ARRAY_DIM = 128  # rows/cols; STORE.n_cols is 8 bits
_MAX_DEPTH = 1 << 16  # buffer addresses and row counts are 16 bits
_MAX_MEM_BYTES = 1 << 32  # memory addresses are 32 bits
_MAX_MEM_WIDTH = 64
_ACT_BITS = (8, 16)  # int16 x int8 still fits one MULT18X18D / SB_MAC16
_WGT_BITS = 8


def _row_addr_width(depth: int) -> int:
    return max(1, (depth - 1).bit_length())


def _clog2(n: int) -> int:
    return max(0, (n - 1).bit_length())


@dataclass(frozen=True, kw_only=True)
class AcceleratorConfig:
    """Parameters of one Serrano accelerator instance.

    All derived widths and sizes are properties, so a configuration is fully described by the
    fields below.

    Parameters
    ----------
    rows : int
        Height of the systolic array: the K extent of one weight tile (1..128).
    cols : int
        Width of the systolic array: the N extent of one weight tile (1..128).
    act_depth : int
        Activation buffer entries; one entry holds ``rows`` signed ``act_bits``-bit values
        (one K slice of one activation row).
    wgt_depth : int
        Weight buffer entries; one entry holds ``cols`` int8 values (one row of a weight tile).
        A tile occupies ``rows`` consecutive entries. Must hold at least one tile.
    acc_depth : int
        Accumulator buffer entries; one entry holds ``cols`` int32 values.
    param_depth : int
        Output-parameter buffer entries; one entry holds the parameters of ``cols`` output
        columns (``isa.OutputParams``, 12 bytes each).
    mem_width : int
        External memory port width in bytes per cycle; a power of two (1..64).
    mem_bytes : int
        Size of the external memory address space in bytes; a multiple of ``mem_width``, at
        most 2**32. Accesses beyond it are rejected with ``ErrorCode.MEM_RANGE``.
    overlap : bool
        Let loads, MATMULs and stores run at the same time, ordered by the decoder's
        scoreboard (the default). ``False`` dispatches each instruction only once every unit
        is idle: the same results, far lower utilization, and about 600 fewer logic cells
        (for the smallest FPGAs).
    counter_width : int
        Bits of each performance counter (16..48); the ``isa.Counters`` fields are 48 bits
        wide and a narrower counter wraps at ``2**counter_width``. Narrower counters save
        area on the smallest FPGAs.
    act_bits : int
        Width of an activation: 8 (int8, the default) or 16 (int16 activations against int8
        weights; an activation entry then takes 2 bytes per element, little-endian, and the
        partial sums in the array are 8 bits wider). The accumulators stay int32.
    vector : bool
        Build the vector unit (``hw.vector``, ``docs/vector.md``) and accept the vector
        opcodes (``isa.VECTOR_OPCODES``); it needs a square array whose side is a power of
        two (``rows == cols``, the lanes of a block). ``False`` (the default for now): the
        vector opcodes are ``BAD_OPCODE`` and the accelerator is exactly the one without.
    activity_counters : bool
        Count buffer entry reads and writes and memory beats in the activity fields of
        ``isa.Counters`` (``hw.activity``; the default). ``False`` leaves them out (about
        ten counters of ``counter_width`` bits, for the smallest FPGAs): those fields then
        read 0 on every backend, the golden model included.
    """

    rows: int = 8
    cols: int = 8
    act_depth: int = 2048
    wgt_depth: int | None = None
    acc_depth: int = 1024
    param_depth: int = 16
    mem_width: int = 8
    mem_bytes: int = 1 << 24
    overlap: bool = True
    counter_width: int = 48
    act_bits: int = 8
    vector: bool = False
    activity_counters: bool = True

    def __post_init__(self) -> None:
        def check_int(name: str, value: object, lo: int, hi: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be between {lo} and {hi}, not {value!r}")

        check_int("rows", self.rows, 1, _MAX_ARRAY_DIM)
        check_int("cols", self.cols, 1, _MAX_ARRAY_DIM)
        if self.wgt_depth is None:
            # Frozen dataclass: the documented default (4 tiles) is filled in once, here.
            object.__setattr__(self, "wgt_depth", 4 * self.rows)
        check_int("act_depth", self.act_depth, 1, _MAX_DEPTH)
        check_int("wgt_depth", self.wgt_depth, 1, _MAX_DEPTH)
        check_int("acc_depth", self.acc_depth, 1, _MAX_DEPTH)
        check_int("param_depth", self.param_depth, 1, _MAX_DEPTH)
        check_int("mem_width", self.mem_width, 1, _MAX_MEM_WIDTH)
        if self.mem_width & (self.mem_width - 1):
            raise ValueError(f"mem_width must be a power of two, not {self.mem_width!r}")
        check_int("mem_bytes", self.mem_bytes, 1, _MAX_MEM_BYTES)
        if self.mem_bytes % self.mem_width:
            raise ValueError(
                f"mem_bytes must be a multiple of mem_width ({self.mem_width}), "
                f"not {self.mem_bytes!r}")
        if not isinstance(self.overlap, bool):
            raise ValueError(f"overlap must be a bool, not {self.overlap!r}")
        check_int("counter_width", self.counter_width, 16, 48)
        if not isinstance(self.activity_counters, bool):
            raise ValueError(f"activity_counters must be a bool, not "
                             f"{self.activity_counters!r}")
        if (isinstance(self.act_bits, bool) or not isinstance(self.act_bits, int)
                or self.act_bits not in _ACT_BITS):
            raise ValueError(f"act_bits must be one of {_ACT_BITS}, not {self.act_bits!r}")
        if not isinstance(self.vector, bool):
            raise ValueError(f"vector must be a bool, not {self.vector!r}")
        if self.vector and (self.rows != self.cols or self.rows & (self.rows - 1)):
            raise ValueError(
                f"vector=True needs a square array whose side is a power of two (the vector "
                f"unit's blocks are rows = cols lanes), not {self.rows}x{self.cols}")
        if self.wgt_depth < self.rows:
            raise ValueError(
                f"wgt_depth must hold at least one weight tile ({self.rows} entries), "
                f"not {self.wgt_depth!r}")

    # ---- derived widths (cached: the golden model asks for them per instruction) ----------
    @cached_property
    def psum_width(self) -> int:
        """Width of a partial sum inside the array: an ``act_bits`` x int8 product needs
        ``act_bits + 8`` bits (-128 * -128 = 2**14 and -32768 * -128 = 2**22 still fit) and
        the sum of ``rows`` products at most ``clog2(rows)`` more, so nothing overflows."""
        return self.act_bits + _WGT_BITS + _clog2(self.rows)

    @cached_property
    def act_bytes(self) -> int:
        """Bytes of one activation in an entry and in memory (1 or 2)."""
        return self.act_bits // 8

    @cached_property
    def act_entry_bytes(self) -> int:
        return self.rows * self.act_bytes

    @cached_property
    def wgt_entry_bytes(self) -> int:
        return self.cols

    @cached_property
    def param_entry_bytes(self) -> int:
        from .isa import OUTPUT_PARAMS_BYTES
        return OUTPUT_PARAMS_BYTES * self.cols

    @cached_property
    def acc_entry_bytes(self) -> int:
        return 4 * self.cols

    @cached_property
    def max_entry_bytes(self) -> int:
        """Widest buffer entry the load unit assembles."""
        return max(self.act_entry_bytes, self.wgt_entry_bytes, self.param_entry_bytes)

    @cached_property
    def mem_words(self) -> int:
        return self.mem_bytes // self.mem_width

    @cached_property
    def mem_addr_width(self) -> int:
        """Width of the word address on the memory port."""
        return max(1, _clog2(self.mem_words))

    @cached_property
    def mem_lane_bits(self) -> int:
        """Bits of a byte address that select the byte lane within a memory word."""
        return _clog2(self.mem_width)

    @cached_property
    def act_addr_width(self) -> int:
        """Width of an activation-buffer row address."""
        return _row_addr_width(self.act_depth)

    @cached_property
    def wgt_addr_width(self) -> int:
        """Width of a weight-buffer row address."""
        return _row_addr_width(self.wgt_depth)

    @cached_property
    def param_addr_width(self) -> int:
        """Width of a parameter-buffer row address."""
        return _row_addr_width(self.param_depth)

    @cached_property
    def acc_addr_width(self) -> int:
        """Width of an accumulator-buffer row address."""
        return _row_addr_width(self.acc_depth)

    @cached_property
    def wgt_tiles(self) -> int:
        return self.wgt_depth // self.rows

    @cached_property
    def peak_macs_per_cycle(self) -> int:
        return self.rows * self.cols

    def describe(self) -> str:
        return (f"{self.rows}x{self.cols} array, act {self.act_depth} x "
                f"{self.act_entry_bytes} B, "
                f"wgt {self.wgt_depth} x {self.cols} B, acc {self.acc_depth} x {self.cols} x "
                f"int32, params {self.param_depth}, memory {self.mem_width} B/cycle, "
                f"{self.mem_bytes} B"
                + ("" if self.overlap else ", no overlap")
                + ("" if self.counter_width == 48 else f", {self.counter_width}-bit counters")
                + ("" if self.act_bits == 8 else f", {self.act_bits}-bit activations")
                + (", vector unit" if self.vector else "")
                + ("" if self.activity_counters else ", no activity counters"))
