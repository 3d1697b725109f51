"""The Serrano instruction set: the single definition of every encoding.

The hardware decoder, the assembler (``sim.asm``), the golden model (``sim.golden``) and the
documentation generator (``scripts/gen_isa_doc.py`` -> ``docs/isa.md``) all import this module.
Nothing else in the project spells out a field offset, an opcode value or an error code.

Every instruction is one 128-bit word. Bits [7:0] hold the opcode; the rest is laid out by the
opcode's ``Struct`` below (fields are packed from bit 0 upwards in declaration order). Reserved
fields must be zero; a nonzero reserved field is rejected with ``ErrorCode.BAD_FIELD`` so that
later versions can give those bits a meaning without old hardware silently misreading them.
"""

import functools
from dataclasses import dataclass

from amaranth import unsigned, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "INSTR_WIDTH", "Opcode", "LoadTarget", "StoreMode", "VectorDst", "ErrorCode",
    "Header", "LoadInstr", "MatmulInstr", "StoreInstr", "ControlInstr", "VectorInstr",
    "INSTR_LAYOUTS", "VECTOR_OPCODES", "VECTOR_RULES",
    "VectorOpRules", "SecondOperand", "opcodes", "vector_blocks", "END_LIMIT",
    "SoftmaxScalars", "AddScalars", "GeluScalars", "LayerNormScalars", "LayerNormChannel",
    "VECTOR_SCALARS", "VECTOR_SCALAR_FIELDS", "LN_GAMMA_BITS", "LN_BETA_BITS", "OutputParams", "OUTPUT_PARAMS_BYTES", "Status", "Counters",
    "PERF_COUNTERS", "ACTIVITY_COUNTERS",
    "mem_request_layout", "MemoryPortSignature",
    "encode", "decode", "instruction_ends", "instruction_checks", "mem_extent_end",
    "store_row_bytes", "layout_subset", "opcode_of", "RAW_BYTES_PER_COL",
    "COUNTER_WIDTH", "FIELD_DOCS", "OPCODE_DOCS", "ERROR_DOCS",
]

INSTR_WIDTH = 128


class Opcode(enum.Enum, shape=8):
    """Instruction opcodes. 0x06-0x0F are reserved for matrix/control instructions and
    0x10-0x1F for vector operations (on accumulator rows, in the vector unit); every value
    not listed here is rejected with ``ErrorCode.BAD_OPCODE``, and so are the vector opcodes
    on an accelerator built with ``vector=False`` (``isa.opcodes``)."""
    NOP = 0x00
    LOAD = 0x01
    MATMUL = 0x02
    STORE = 0x03
    FENCE = 0x04
    HALT = 0x05
    VREQUANT = 0x10
    VADD = 0x11
    VSOFTMAX = 0x12
    VLAYERNORM = 0x13
    VGELU = 0x14


class LoadTarget(enum.Enum, shape=2):
    """Which on-chip buffer a LOAD writes."""
    ACT = 0
    WGT = 1
    PARAM = 2


class StoreMode(enum.Enum, shape=2):
    """How a STORE turns accumulator rows into memory bytes."""
    REQUANT = 0  # output stage: bias, requantize, zero point, clamp -> int8
    RAW = 1      # int32, little-endian, no output stage


class VectorDst(enum.Enum, shape=2):
    """Which on-chip buffer a vector instruction writes (values 2 and 3: ``BAD_FIELD``)."""
    ACT = 0
    WGT = 1


class ErrorCode(enum.Enum, shape=4):
    """Error codes reported in ``Status.error``. Checks run in this order; the first failing
    one is reported."""
    NONE = 0
    BAD_OPCODE = 1
    BAD_FIELD = 2
    BAD_SIZE = 3
    BUF_RANGE = 4
    MEM_RANGE = 5


class Header(data.Struct):
    opcode: Opcode
    rest: unsigned(INSTR_WIDTH - 8)


class LoadInstr(data.Struct):
    opcode: Opcode
    target: LoadTarget
    reserved0: unsigned(6)
    buf_addr: unsigned(16)
    n_rows: unsigned(16)
    row_bytes: unsigned(16)
    mem_addr: unsigned(32)
    mem_stride: unsigned(24)
    reserved1: unsigned(8)


class MatmulInstr(data.Struct):
    opcode: Opcode
    accumulate: unsigned(1)
    reserved0: unsigned(7)
    act_addr: unsigned(16)
    n_rows: unsigned(16)
    wgt_addr: unsigned(16)
    acc_addr: unsigned(16)
    reserved1: unsigned(48)


class StoreInstr(data.Struct):
    opcode: Opcode
    mode: StoreMode
    reserved0: unsigned(6)
    acc_addr: unsigned(16)
    n_rows: unsigned(16)
    n_cols: unsigned(8)
    param_addr: unsigned(16)
    mem_addr: unsigned(32)
    mem_stride: unsigned(24)


class ControlInstr(data.Struct):
    """NOP, FENCE and HALT carry no operands."""
    opcode: Opcode
    reserved0: unsigned(INSTR_WIDTH - 8)


class VectorInstr(data.Struct):
    """Every vector opcode (``docs/vector.md``): an int32 source tensor of ``n_rows`` x
    ``n_elems`` in the accumulator buffer, block-major (element ``(i, j)`` in entry ``addr +
    (j // L) * stride + i``, lane ``j % L``, ``L = cols``), and a destination tensor of the
    same layout in ``dst`` (the ``[n_elems, n_rows]`` transpose with ``transpose = 1``)."""
    opcode: Opcode
    dst: VectorDst
    transpose: unsigned(1)
    with_b: unsigned(1)
    pre: unsigned(1)
    reserved0: unsigned(3)
    src_addr: unsigned(16)
    src_stride: unsigned(16)
    dst_addr: unsigned(16)
    dst_stride: unsigned(16)
    b_addr: unsigned(16)
    n_rows: unsigned(12)
    n_elems: unsigned(12)
    param_addr: unsigned(8)


INSTR_LAYOUTS: dict[Opcode, type[data.Struct]] = {
    Opcode.NOP: ControlInstr,
    Opcode.LOAD: LoadInstr,
    Opcode.MATMUL: MatmulInstr,
    Opcode.STORE: StoreInstr,
    Opcode.FENCE: ControlInstr,
    Opcode.HALT: ControlInstr,
    Opcode.VREQUANT: VectorInstr,
    Opcode.VADD: VectorInstr,
    Opcode.VSOFTMAX: VectorInstr,
    Opcode.VLAYERNORM: VectorInstr,
    Opcode.VGELU: VectorInstr,
}

for _layout in INSTR_LAYOUTS.values():
    assert data.Layout.cast(_layout).size == INSTR_WIDTH, _layout

# (field, offset, mask) per opcode value, read once from the layouts: decode() is the golden
# model's inner loop.
_DECODE_TABLES = {
    op.value: tuple((name, f.offset, (1 << f.width) - 1)
                    for name, f in data.Layout.cast(layout) if name != "opcode")
    for op, layout in INSTR_LAYOUTS.items()}

#: The vector opcodes of the ISA: valid only on an accelerator with ``vector=True``.
VECTOR_OPCODES = (Opcode.VREQUANT, Opcode.VADD, Opcode.VSOFTMAX, Opcode.VLAYERNORM, Opcode.VGELU)


class SecondOperand(enum.Enum):
    """How a vector op uses its second operand ``b`` (activation buffer, at ``b_addr``)."""
    NONE = "none"          # with_b must be 0
    TENSOR = "tensor"      # with_b optional: n_rows x n_elems, block-major, dst_stride apart
    REQUIRED = "required"  # with_b must be 1: a tensor as above
    ROW = "row"            # with_b optional: one row of n_elems broadcast to every row,
                           # block k in entry b_addr + k


@dataclass(frozen=True)
class VectorOpRules:
    """What one vector opcode allows (``docs/vector.md``, "Operations"): a WGT destination,
    ``transpose``, the per-channel input stage ``pre``, the second operand ``b``, and the
    parameter entries it reads: ``scalars`` entries first (one ``*Scalars`` struct at the
    start of the entry), then ``channel`` per-channel entries per block (e.g. LayerNorm's
    gamma and beta), then, with ``pre``, one ``OutputParams`` entry per block."""
    wgt: bool = False
    transpose: bool = False
    pre: bool = False
    b: "SecondOperand" = SecondOperand.NONE
    scalars: int = 1
    channel: int = 0


VECTOR_RULES = {
    Opcode.VREQUANT: VectorOpRules(wgt=True, transpose=True, scalars=0, channel=1),
    Opcode.VADD: VectorOpRules(pre=True, b=SecondOperand.REQUIRED),
    Opcode.VSOFTMAX: VectorOpRules(b=SecondOperand.ROW),
    Opcode.VLAYERNORM: VectorOpRules(pre=True, b=SecondOperand.TENSOR, channel=1),
    Opcode.VGELU: VectorOpRules(pre=True),
}
assert set(VECTOR_RULES) == set(VECTOR_OPCODES)




@functools.lru_cache(maxsize=64)
def opcodes(config) -> tuple:
    """The opcode table of an accelerator built with ``config``, in ``Opcode`` order: the
    one place that decides which opcodes a configuration executes (the decoder's checker,
    its opcode flags and the golden model all ask here). Every other opcode is
    ``BAD_OPCODE``: the vector opcodes without ``config.vector``."""
    return tuple(op for op in Opcode if op not in VECTOR_OPCODES or config.vector)


def layout_subset(layout, *names: str, **extra) -> data.StructLayout:
    """A ``StructLayout`` of some fields of ``layout`` (in the order named), plus ``extra``.

    Unit command layouts are built this way from the instruction ``Struct``s, so a field's
    width is written once, here in ``isa``. ``extra`` adds fields a decoder derives (for
    example a flag decoded from an enum field)::

        layout_subset(StoreInstr, "acc_addr", "n_rows", raw=unsigned(1))
    """
    fields = dict(data.Layout.cast(layout))
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise ValueError(f"{layout.__name__} has no field {', '.join(unknown)}")
    return data.StructLayout({**{name: fields[name].shape for name in names}, **extra})


def opcode_of(word):
    """The opcode field of an instruction word (a ``Value``), as an ``Opcode`` view."""
    return Header(word).opcode


class OutputParams(data.Struct):
    """Output-stage parameters of one output column, as stored in memory (little-endian,
    12 bytes) and in the parameter buffer. ``numerics.md`` defines the arithmetic."""
    bias: signed(32)
    multiplier: signed(32)
    shift: signed(8)       # TFLite convention: > 0 left, < 0 right shift; [-31, 30] (clamped)
    zero_point: signed(8)  # output zero point
    lo: signed(8)          # clamp bounds; ReLU is lo = zero_point
    hi: signed(8)


OUTPUT_PARAMS_BYTES = data.Layout.cast(OutputParams).size // 8

# ---- vector-op parameter entries (little-endian, at the start of a parameter entry) ----------
# Every field is byte-aligned; a field's hardware width (the bits used) and range (a shift is
# clamped into it) are in docs/vector.md, the same for the unit and the golden model
# (sim.asm.vector_kernel_params). Each fits in OUTPUT_PARAMS_BYTES, the smallest entry.

class SoftmaxScalars(data.Struct):
    multiplier: unsigned(32)   # low 29 bits used
    shift: unsigned(8)         # clamped to [1, 61]
    reserved: unsigned(56)


class AddScalars(data.Struct):
    x_mult: unsigned(32)       # low 31 bits used
    x_shift: unsigned(8)       # clamped to [1, 62]
    b_mult: unsigned(32)       # low 31 bits used
    b_shift: unsigned(8)       # clamped to [1, 62]
    reserved: unsigned(16)


class GeluScalars(data.Struct):
    in_mult: unsigned(32)      # low 31 bits used
    in_shift: unsigned(8)      # clamped to [1, 62]
    out_mult: signed(32)
    out_shift: signed(8)       # clamped to [-31, 30], as OutputParams.shift
    reserved: unsigned(16)


class LayerNormScalars(data.Struct):
    eps_mult: unsigned(32)
    res_mult: unsigned(32)     # low 24 bits used
    eps_shift: signed(16)
    out_shift: unsigned(8)     # clamped to [1, 37]
    res_shift: unsigned(8)     # clamped to [1, 62]


class LayerNormChannel(data.Struct):
    """One channel's gamma and beta (``cols`` of them per entry, like OutputParams)."""
    gamma_mult: signed(32)     # low 18 bits used, sign-extended
    beta_add: signed(64)       # low 62 bits used, sign-extended


VECTOR_SCALARS = {Opcode.VADD: AddScalars, Opcode.VSOFTMAX: SoftmaxScalars,
                  Opcode.VLAYERNORM: LayerNormScalars, Opcode.VGELU: GeluScalars}

# The shifts docs/numerics.md defines (TFLite's exponent range: > 0 left, < 0 right). The
# 8-bit field saturates into it, in the output stage and in the golden model alike.
SHIFT_MIN = -31
SHIFT_MAX = 30

#: How the unit reads each scalar of a parameter entry: ``{op: {field: (bits, range)}}``, the
#: low ``bits`` used (``None``: all) and the value then clamped into ``range`` (``None``: as
#: it is). The vector unit's decoder (``hw.vector_ops``) and the golden model's
#: (``sim.asm.vector_kernel_params``) both read this table, so any bit pattern has one result.
VECTOR_SCALAR_FIELDS = {
    Opcode.VSOFTMAX: {"multiplier": (29, None), "shift": (None, (1, 61))},
    Opcode.VADD: {"x_mult": (31, None), "x_shift": (None, (1, 62)),
                  "b_mult": (31, None), "b_shift": (None, (1, 62))},
    Opcode.VGELU: {"in_mult": (31, None), "in_shift": (None, (1, 62)),
                   "out_mult": (None, None), "out_shift": (None, (SHIFT_MIN, SHIFT_MAX))},
    Opcode.VLAYERNORM: {"eps_mult": (None, None), "res_mult": (24, None),
                        "eps_shift": (None, (-2048, 2047)), "out_shift": (None, (1, 37)),
                        "res_shift": (None, (1, 62))},
}
#: ``LayerNormChannel``: the low bits of ``gamma_mult`` and ``beta_add`` used, sign-extended.
LN_GAMMA_BITS, LN_BETA_BITS = 18, 62
for _layout in (*VECTOR_SCALARS.values(), LayerNormChannel):
    assert data.Layout.cast(_layout).size == 8 * OUTPUT_PARAMS_BYTES, _layout



class Status(data.Struct):
    """Host-visible status word."""
    busy: unsigned(1)          # a program has started and has not finished
    done: unsigned(1)          # HALT retired, or an error stopped the program
    error: ErrorCode
    idle: unsigned(1)          # no instruction held by the decoder and every unit idle
    reserved0: unsigned(1)
    fault_index: unsigned(32)  # index (from 0) of the instruction that faulted


COUNTER_WIDTH = 48


class Counters(data.Struct):
    """Performance counters, cleared by ``clear``; they count from the cycle the first
    instruction word is accepted until ``done`` rises.

    The fields from ``act_reads`` on are activity counters for an energy model: one count
    per buffer entry read whose data is used, per buffer entry written, per memory request
    accepted, per source element the vector unit takes into its datapath
    (``docs/performance.md``, "Activity counters", defines each). They depend on
    the program only, not on timing, and read 0 with
    ``AcceleratorConfig(activity_counters=False)``. ``array_busy`` is the MAC-active count:
    each of its cycles is ``rows * cols`` multiply-accumulates."""
    cycles: unsigned(COUNTER_WIDTH)
    array_busy: unsigned(COUNTER_WIDTH)      # MAC-active cycles: a vector entered the array
    instructions: unsigned(COUNTER_WIDTH)    # instructions retired by the decoder
    dispatch_stall: unsigned(COUNTER_WIDTH)  # decoder held an instruction it could not issue
    load_stall: unsigned(COUNTER_WIDTH)      # load unit waited for the memory port
    exec_stall: unsigned(COUNTER_WIDTH)      # execute unit held work but issued no vector
    store_stall: unsigned(COUNTER_WIDTH)     # store unit waited for the memory port
    # activity counters (hw/activity.py), appended: the fields above keep their offsets
    act_reads: unsigned(COUNTER_WIDTH)        # activation entries read (MATMUL vectors)
    act_writes: unsigned(COUNTER_WIDTH)       # activation entries written (LOAD, VREQUANT)
    wgt_reads: unsigned(COUNTER_WIDTH)        # weight entries read into the array
    wgt_writes: unsigned(COUNTER_WIDTH)       # weight entries written (LOAD, VREQUANT)
    acc_reads: unsigned(COUNTER_WIDTH)        # accumulator entries read (STORE, add-into, vector)
    acc_writes: unsigned(COUNTER_WIDTH)       # accumulator entries written (MATMUL rows)
    param_reads: unsigned(COUNTER_WIDTH)      # parameter entries read (STORE REQUANT, vector)
    param_writes: unsigned(COUNTER_WIDTH)     # parameter entries written (LOAD rows)
    mem_read_beats: unsigned(COUNTER_WIDTH)   # memory read requests accepted (words)
    mem_write_beats: unsigned(COUNTER_WIDTH)  # memory write requests accepted (words)
    # appended with the vector unit: the fields above keep their offsets
    vector_elements: unsigned(COUNTER_WIDTH)  # source elements the vector unit took in


#: The fields of ``Counters`` that the decoder's ``PerfCounters`` count (time and stalls).
PERF_COUNTERS: tuple[str, ...] = ("cycles", "array_busy", "instructions", "dispatch_stall",
                                  "load_stall", "exec_stall", "store_stall")
#: The activity counters, appended after them (``hw.activity``): counts of actions, for an
#: energy model. Independent of timing, so the golden model reproduces them.
ACTIVITY_COUNTERS: tuple[str, ...] = ("act_reads", "act_writes", "wgt_reads", "wgt_writes",
                                      "acc_reads", "acc_writes", "param_reads",
                                      "param_writes", "mem_read_beats", "mem_write_beats",
                                      "vector_elements")
assert tuple(name for name, _ in data.Layout.cast(Counters)) == \
    PERF_COUNTERS + ACTIVITY_COUNTERS


def mem_request_layout(config) -> data.StructLayout:
    """One memory request: a read (``write = 0``) or a masked write of one memory word."""
    return data.StructLayout({
        "addr": unsigned(config.mem_addr_width),  # word address (byte address // mem_width)
        "write": unsigned(1),
        "mask": unsigned(config.mem_width),        # byte enables, writes only
        "data": unsigned(8 * config.mem_width),    # write data, byte i in bits [8i+7:8i]
    })


class MemoryPortSignature(wiring.Signature):
    """The accelerator's external memory port (initiator side).

    ``req`` carries requests; ``resp`` returns the data of reads, one word per read, in the
    order the reads were accepted. Writes have no response. The memory must apply requests in
    the order it accepts them, and a read returns the memory contents as of the cycle it was
    accepted. Both streams use valid/ready handshakes; the accelerator always keeps
    ``resp.ready`` high.
    """

    def __init__(self, config):
        super().__init__({
            "req": Out(stream.Signature(mem_request_layout(config))),
            "resp": In(stream.Signature(8 * config.mem_width)),
        })


# ---- host-side encoding ----------------------------------------------------------------------

class _Field:
    """Bit position and accepted range of one instruction field, read from its layout."""
    __slots__ = ("offset", "width", "lo", "hi", "enum")

    def __init__(self, offset: int, width: int, shape):
        self.offset, self.width = offset, width
        self.enum = shape if isinstance(shape, type) and issubclass(shape, enum.Enum) else None
        is_signed = self.enum is None and getattr(shape, "signed", False)
        self.lo, self.hi = ((-(1 << (width - 1)), (1 << (width - 1)) - 1) if is_signed
                            else (0, (1 << width) - 1))


_FIELDS = {op: {name: _Field(f.offset, f.width, f.shape)
                for name, f in data.Layout.cast(layout) if name != "opcode"}
           for op, layout in INSTR_LAYOUTS.items()}


def _enum_value(enum_cls, name: str, value) -> int:
    if isinstance(value, enum_cls):
        return value.value
    if isinstance(value, str):
        try:
            return enum_cls[value.upper()].value
        except KeyError:
            raise ValueError(f"{name} must be one of {[m.name for m in enum_cls]}, "
                             f"not {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return enum_cls(value).value
        except ValueError:
            raise ValueError(f"{name} must be one of "
                             f"{[(m.name, m.value) for m in enum_cls]}, not {value!r}") from None
    raise ValueError(f"{name} must be a {enum_cls.__name__}, its name or value, not {value!r}")


def encode(opcode: Opcode, **fields) -> int:
    """Encode one instruction word. Unnamed fields are zero.

    Enum fields (``target``, ``mode``) take the member, its value or its name; other fields
    take integers (numpy integers too) that fit the field. Raises ``ValueError`` naming the
    field otherwise. Offsets come from the instruction ``Struct`` layouts, read once.

    >>> hex(encode(Opcode.HALT))
    '0x5'
    """
    opcode = Opcode(opcode)
    infos = _FIELDS[opcode]
    word = opcode.value
    for name, value in fields.items():
        info = infos.get(name)
        if info is None:
            raise ValueError(f"{opcode.name} has no field(s) [{name!r}]; "
                             f"fields are {sorted(infos)}")
        if info.enum is not None:
            value = _enum_value(info.enum, name, value)
        elif hasattr(value, "__index__") and not isinstance(value, int):
            value = value.__index__()  # numpy integers and bools
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int) or not info.lo <= value <= info.hi:
            raise ValueError(f"{opcode.name}.{name} must be an integer in "
                             f"[{info.lo}, {info.hi}], not {value!r}")
        word |= (value & ((1 << info.width) - 1)) << info.offset
    return word


def decode(word: int) -> tuple[int, dict[str, int]]:
    """Decode one instruction word into ``(opcode value, {field: int})``.

    An opcode outside ``Opcode`` decodes with an empty field dict; the caller reports
    ``ErrorCode.BAD_OPCODE``. Enum fields decode to their integer value (which may be outside
    the enum: that is ``ErrorCode.BAD_FIELD``).
    """
    if not 0 <= word < (1 << INSTR_WIDTH):
        raise ValueError(f"instruction word must fit in {INSTR_WIDTH} bits, not {word!r}")
    opcode = word & 0xFF
    table = _DECODE_TABLES.get(opcode)
    if table is None:
        return opcode, {}
    return opcode, {name: (word >> offset) & mask for name, offset, mask in table}


# ---- documentation (read by scripts/gen_isa_doc.py) -----------------------------------------

OPCODE_DOCS = {
    Opcode.NOP: "Does nothing; retires immediately.",
    Opcode.LOAD: (
        "Copies a 2-D strided tile from memory into a buffer: row *i* (0 <= i < `n_rows`) is "
        "the `row_bytes` bytes at `mem_addr + i * mem_stride`, written to entry `buf_addr + i` "
        "of the `target` buffer; entry bytes beyond `row_bytes` are zero-filled. Runs in the "
        "load unit."),
    Opcode.MATMUL: (
        "Streams activation entries `act_addr .. act_addr + n_rows - 1` through the array "
        "against the weight tile in weight entries `wgt_addr .. wgt_addr + rows - 1` (entry "
        "`wgt_addr + k` holds row *k* of the tile). Result row *i* goes to accumulator entry "
        "`acc_addr + i`: overwritten (`accumulate = 0`) or added into with int32 wrap-around "
        "(`accumulate = 1`). Runs in the execute unit; the next tile's weights are preloaded "
        "while the current one streams."),
    Opcode.STORE: (
        "Writes accumulator entries `acc_addr .. acc_addr + n_rows - 1` to memory: entry "
        "`acc_addr + i`, columns 0 .. `n_cols - 1`, goes to `mem_addr + i * mem_stride`. "
        "`mode = REQUANT` passes each value through the output stage with the column "
        "parameters in parameter entry `param_addr` and writes int8 bytes; `mode = RAW` writes "
        "int32 little-endian (4 bytes per column). Runs in the store unit."),
    Opcode.FENCE: "Waits until every unit is idle and every memory write has been accepted.",
    Opcode.HALT: "Waits like FENCE, then sets `Status.done`; the program is over.",
    Opcode.VREQUANT: (
        "Vector unit (only with `vector=True`; `BAD_OPCODE` otherwise). Requantizes the int32 "
        "tensor of `n_rows` x `n_elems` at accumulator entry `src_addr` (block-major: element "
        "(i, j) in entry `src_addr + (j // L) * src_stride + i`, lane `j % L`, `L = cols = "
        "rows`) through the output stage's arithmetic, block `b = j // L` with the "
        "OutputParams in parameter entry `param_addr + b`, into the `dst` buffer at "
        "`dst_addr` with `dst_stride`, same layout: int8 (WGT, or ACT with `act_bits = 8`) "
        "or int16 (ACT with `act_bits = 16`: clamped to int16, `lo`/`hi` unused). Lanes past "
        "`n_elems` in a row's last block are written 0. `transpose = 1` writes the "
        "`[n_elems, n_rows]` transpose instead (element (j, i) in entry `dst_addr + (i // L) "
        "* dst_stride + j`; lanes past `n_rows` are 0). `with_b` and `pre` must be 0."),
    Opcode.VADD: (
        "Vector unit. `dst[i, j] = sat((ux + ub + 2**11) >> 12)`: the source (through the "
        "input stage if `pre`) and the activation tensor `b` (`with_b` must be 1; at `b_addr`, "
        "blocks `dst_stride` apart) each rescaled to the output by the AddScalars in "
        "parameter entry `param_addr` (residual connections). Writes ACT; with `pre`, block "
        "`k`'s input stage is in entry `param_addr + 1 + k`."),
    Opcode.VSOFTMAX: (
        "Vector unit. Softmax along each row (integer exp, one reciprocal per row; "
        "probabilities with scale `1 / q_max`), SoftmaxScalars in entry `param_addr`; with "
        "`with_b`, the additive mask row at `b_addr` (block `k` in entry `b_addr + k`, one row "
        "for every row; the activation minimum masks a key). Writes ACT."),
    Opcode.VLAYERNORM: (
        "Vector unit. LayerNorm along each row of the source (through the input stage if "
        "`pre`), plus the residual tensor `b` if `with_b` (blocks `dst_stride` apart): "
        "LayerNormScalars in entry `param_addr`, each block's gamma and beta "
        "(LayerNormChannel per lane) in `param_addr + 1 + k`, the input stage (with `pre`) in "
        "`param_addr + 1 + nb + k`. Writes ACT."),
    Opcode.VGELU: (
        "Vector unit. GELU with a piecewise-linear Phi, GeluScalars in entry `param_addr`; "
        "with `pre`, block `k`'s input stage in `param_addr + 1 + k`. Writes ACT."),
}

FIELD_DOCS = {
    "target": "buffer written: ACT (entry = `rows` activations of `act_bits`: int8, or "
              "int16 little-endian), WGT (entry = `cols` int8), "
              "PARAM (entry = `cols` x OutputParams)",
    "buf_addr": "first buffer entry written",
    "n_rows": "number of rows (entries / activation vectors); 1 or more",
    "row_bytes": "bytes per row, 1 .. entry size of the target buffer; for ACT with "
                 "`act_bits = 16` a multiple of 2",
    "mem_addr": "byte address of the first row in memory; any alignment",
    "mem_stride": "byte distance between consecutive rows in memory (0 allowed)",
    "accumulate": "0: overwrite accumulator entries; 1: add into them",
    "act_addr": "first activation entry streamed",
    "wgt_addr": "first of the `rows` weight entries holding the tile",
    "acc_addr": "first accumulator entry",
    "mode": "REQUANT (int8 through the output stage) or RAW (int32)",
    "n_cols": "columns stored per row, 1 .. `cols`",
    "param_addr": "STORE: parameter entry used in REQUANT mode (ignored, but not checked, in "
                  "RAW mode); vector ops: first parameter entry (VREQUANT: block `b` "
                  "uses `param_addr + b`; the others: see each opcode)",
    "dst": "buffer written: ACT or WGT",
    "transpose": "0: write the tensor; 1: write its transpose",
    "with_b": "the op reads a second operand at `b_addr` (VADD: must be 1; VSOFTMAX, "
              "VLAYERNORM: optional; others: must be 0)",
    "pre": "the per-channel input stage (bias + multiplier from OutputParams entries) runs "
           "first (VADD, VLAYERNORM, VGELU; others: must be 0)",
    "src_addr": "first accumulator entry of the source tensor",
    "src_stride": "entries between the source tensor's blocks",
    "dst_addr": "first entry of the destination tensor",
    "dst_stride": "entries between the destination tensor's blocks",
    "b_addr": "first activation entry of the second operand (ignored unless `with_b`)",
    "n_elems": "elements per row, 1 .. 4095 (a row spans `ceil(n_elems / L)` blocks)",
    "reserved0": "must be zero",
    "reserved1": "must be zero",
}

ERROR_DOCS = {
    ErrorCode.NONE: "no error",
    ErrorCode.BAD_OPCODE: "opcode not in the table (vector opcodes: also on an accelerator "
                          "built with `vector=False`)",
    ErrorCode.BAD_FIELD: "a reserved field is nonzero, `target`/`mode`/`dst` has an "
                         "unassigned value (vector ops other than VREQUANT: `dst` must be "
                         "ACT), or a vector op sets `transpose`, `pre` or `with_b` where it "
                         "has none (or VADD clears `with_b`)",
    ErrorCode.BAD_SIZE: "`n_rows` is 0, `row_bytes` is 0 or larger than the target entry (or "
                        "odd for ACT with `act_bits = 16`), or `n_cols` is 0 or larger than "
                        "`cols`, or a vector op's `n_rows` or `n_elems` is 0",
    ErrorCode.BUF_RANGE: "a buffer range runs past the end of its buffer (vector ops: the "
                         "hull `addr .. addr + (blocks - 1) * stride + rows` of each tensor, "
                         "the second operand's entries with `with_b`, and the parameter "
                         "entries the op reads from `param_addr`)",
    ErrorCode.MEM_RANGE: "the memory range `mem_addr .. mem_addr + (n_rows - 1) * mem_stride + "
                         "row length` runs past `mem_bytes`",
}


# ---- validity rules (one definition for the decoder and the golden model) -------------------

def _py_mux(sel, a, b):
    return a if sel else b


def instruction_ends(opcode: Opcode, f: dict, config, mux=_py_mux) -> dict:
    """One-past-the-end addresses of the ranges an instruction touches.

    Returns ``{name: end}``: ``"buf"`` (LOAD), ``"act"``/``"wgt"``/``"acc"`` (MATMUL),
    ``"acc"`` (STORE) are buffer entry indices; ``"mem"`` (LOAD, STORE) is the byte address
    one past the last byte of the strided memory access. Operands as in
    :func:`instruction_checks`. The range checks compare these ends against the buffer depths
    and ``mem_bytes``; the hardware computes them over several pipelined cycles (the memory
    end involves a multiply) and hands the registered values to :func:`instruction_checks`.
    """
    c = config
    if opcode in VECTOR_OPCODES:
        return _vector_ends(opcode, f, config, mux)
    if opcode == Opcode.LOAD:
        return {"buf": f["buf_addr"] + f["n_rows"],
                "mem": mem_extent_end(f["mem_addr"], f["n_rows"], f["mem_stride"],
                                      f["row_bytes"])}
    if opcode == Opcode.MATMUL:
        return {"act": f["act_addr"] + f["n_rows"],
                "wgt": f["wgt_addr"] + c.rows,
                "acc": f["acc_addr"] + f["n_rows"]}
    if opcode == Opcode.STORE:
        raw = f["mode"] == StoreMode.RAW.value
        return {"acc": f["acc_addr"] + f["n_rows"],
                "mem": mem_extent_end(f["mem_addr"], f["n_rows"], f["mem_stride"],
                                      store_row_bytes(f["n_cols"], raw, mux))}
    return {}


def instruction_checks(opcode: Opcode, f: dict, config, mux=_py_mux,
                       ends: dict | None = None) -> list:
    """The ordered error checks of one instruction.

    Returns ``[(ErrorCode, condition), ...]``; the first true condition is the instruction's
    error. ``f`` maps field names to operands and ``mux(sel, a, b)`` selects between two
    operands. With plain ``int`` fields and the default ``mux`` the conditions are Python
    bools (the golden model); with Amaranth values and ``amaranth.hdl.Mux`` they are
    single-bit values (the hardware decoder). Only operators that both support are used.
    ``ends`` is :func:`instruction_ends` of the same instruction, computed here when omitted;
    """
    c = config
    if opcode not in opcodes(config):
        return [(ErrorCode.BAD_OPCODE, True)]
    if ends is None:
        ends = instruction_ends(opcode, f, config, mux)
    if opcode in VECTOR_OPCODES:
        r = VECTOR_RULES[opcode]
        depth = mux(f["dst"] == VectorDst.ACT.value, c.act_depth, c.wgt_depth)
        bad_field = (f["reserved0"] != 0) | (f["dst"] > (VectorDst.WGT if r.wgt
                                                         else VectorDst.ACT).value)
        if not r.transpose:
            bad_field = bad_field | (f["transpose"] != 0)
        if not r.pre:
            bad_field = bad_field | (f["pre"] != 0)
        if r.b == SecondOperand.NONE:
            bad_field = bad_field | (f["with_b"] != 0)
        elif r.b == SecondOperand.REQUIRED:
            bad_field = bad_field | (f["with_b"] == 0)
        bad_range = (ends["src"] > c.acc_depth) | (ends["dst"] > depth) | \
                    (ends["param"] > c.param_depth)
        if r.b != SecondOperand.NONE:
            # The unit reads b while it writes the destination, so the two may share entries
            # only exactly in place (each entry read before it is written, once).
            overlap = (f["b_addr"] < ends["dst"]) & (f["dst_addr"] < ends["b"])
            if r.b != SecondOperand.ROW:
                in_place = (f["b_addr"] == f["dst_addr"]) & (
                    (vector_blocks(f["n_elems"], c) == 1) | (f["dst_stride"] >= f["n_rows"]))
                overlap = overlap & ~in_place
            bad_range = bad_range | ((f["with_b"] != 0) & ((ends["b"] > c.act_depth) | overlap))
        return [
            (ErrorCode.BAD_FIELD, bad_field),
            (ErrorCode.BAD_SIZE, (f["n_rows"] == 0) | (f["n_elems"] == 0)),
            (ErrorCode.BUF_RANGE, bad_range),
        ]
    if opcode == Opcode.LOAD:
        t = f["target"]
        is_act = t == LoadTarget.ACT.value
        is_wgt = t == LoadTarget.WGT.value
        entry_bytes = mux(is_act, c.act_entry_bytes,
                          mux(is_wgt, c.wgt_entry_bytes, c.param_entry_bytes))
        depth = mux(is_act, c.act_depth, mux(is_wgt, c.wgt_depth, c.param_depth))
        bad_size = (f["n_rows"] == 0) | (f["row_bytes"] == 0) | (f["row_bytes"] > entry_bytes)
        if c.act_bytes > 1:
            # An activation row holds whole elements (no half int16 in an entry).
            bad_size = bad_size | (is_act & ((f["row_bytes"] & (c.act_bytes - 1)) != 0))
        return [
            (ErrorCode.BAD_FIELD, (f["reserved0"] != 0) | (f["reserved1"] != 0) | (t == 3)),
            (ErrorCode.BAD_SIZE, bad_size),
            (ErrorCode.BUF_RANGE, ends["buf"] > depth),
            (ErrorCode.MEM_RANGE, ends["mem"] > c.mem_bytes),
        ]
    if opcode == Opcode.MATMUL:
        return [
            (ErrorCode.BAD_FIELD, (f["reserved0"] != 0) | (f["reserved1"] != 0)),
            (ErrorCode.BAD_SIZE, f["n_rows"] == 0),
            (ErrorCode.BUF_RANGE, (ends["act"] > c.act_depth) | (ends["wgt"] > c.wgt_depth) |
                                  (ends["acc"] > c.acc_depth)),
        ]
    if opcode == Opcode.STORE:
        raw = f["mode"] == StoreMode.RAW.value
        return [
            (ErrorCode.BAD_FIELD, (f["reserved0"] != 0) | (f["mode"] > StoreMode.RAW.value)),
            (ErrorCode.BAD_SIZE, (f["n_rows"] == 0) | (f["n_cols"] == 0) |
                                 (f["n_cols"] > c.cols)),
            (ErrorCode.BUF_RANGE, (ends["acc"] > c.acc_depth) |
                                  ((raw == 0) & (f["param_addr"] >= c.param_depth))),
            (ErrorCode.MEM_RANGE, ends["mem"] > c.mem_bytes),
        ]
    return [(ErrorCode.BAD_FIELD, f["reserved0"] != 0)]


#: Range ends saturate here (the scoreboard's footprints are 17 bits): past every buffer.
END_LIMIT = (1 << 17) - 1


def vector_blocks(n, config):
    """``ceil(n / L)``: the blocks of ``L = cols`` lanes that ``n`` elements take (``L`` is
    a power of two with ``vector=True``, so this is a shift, for ints and Values alike)."""
    return (n + (config.cols - 1)) >> (config.cols.bit_length() - 1)


def _vector_ends(opcode: Opcode, f: dict, config, mux) -> dict:
    """Ends of a vector instruction's tensors: ``"src"`` (accumulator), ``"dst"`` (its
    buffer), ``"param"`` (parameter entries) and, for ops with a second operand, ``"b"``
    (activation entries; meaningful when ``with_b``). A tensor of ``nb`` blocks of ``rows``
    rows at ``(addr, stride)`` spans ``[addr, addr + (nb - 1) * stride + rows)``; a transposed
    destination has ``nb = ceil(n_rows / L)`` and ``rows = n_elems``; a ``ROW`` operand spans
    ``[b_addr, b_addr + nb)``. Each tensor end saturates at :data:`END_LIMIT` (for
    ``n_rows``, ``n_elems >= 1``)."""
    def sat(end):
        return mux(end > END_LIMIT, END_LIMIT, end)
    r = VECTOR_RULES[opcode]
    nb = vector_blocks(f["n_elems"], config)
    nbt = vector_blocks(f["n_rows"], config)
    tr = f["transpose"] != 0
    dst_blocks = mux(tr, nbt, nb)
    dst_rows = mux(tr, f["n_elems"], f["n_rows"])
    param = f["param_addr"] + r.scalars
    if r.channel:
        param = param + r.channel * nb
    if r.pre:
        param = param + mux(f["pre"] != 0, nb, 0)
    ends = {"src": sat(f["src_addr"] + (nb - 1) * f["src_stride"] + f["n_rows"]),
            "dst": sat(f["dst_addr"] + (dst_blocks - 1) * f["dst_stride"] + dst_rows),
            "param": param}
    if r.b == SecondOperand.ROW:
        ends["b"] = f["b_addr"] + nb
    elif r.b != SecondOperand.NONE:
        ends["b"] = sat(f["b_addr"] + (nb - 1) * f["dst_stride"] + f["n_rows"])
    return ends


def mem_extent_end(mem_addr, n_rows, stride, row_bytes):
    """One past the last byte a strided access touches (for ``n_rows >= 1``)."""
    return mem_addr + (n_rows - 1) * stride + row_bytes


#: Bytes a RAW store writes per column: the 32-bit accumulator, little-endian.
RAW_BYTES_PER_COL = 4


def store_row_bytes(n_cols, raw, mux=_py_mux):
    """Bytes one STORE row occupies in memory: 1 per column (REQUANT) or 4 (RAW)."""
    return mux(raw, n_cols * RAW_BYTES_PER_COL, n_cols)
