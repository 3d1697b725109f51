"""Assembler, disassembler and output-parameter packing for the Serrano ISA.

Every encoding comes from :mod:`hw.isa`: words are built by :func:`hw.isa.encode` (re-exported
here), whose field offsets and widths are read from the instruction ``Struct`` layouts.

Example
-------
>>> from serrano.sim.asm import Program
>>> p = Program()
>>> p.load("act", buf_addr=0, n_rows=4, row_bytes=8, mem_addr=0, mem_stride=8)
0
>>> p.halt()
1
>>> len(p)
2
"""

from typing import Iterable, Sequence

import numpy as np
from amaranth.lib import data, enum

from serrano.hw import isa
from serrano.hw.isa import LoadTarget, Opcode, StoreMode, VectorDst, encode

from . import kernels

__all__ = [
    "Program", "encode", "disassemble", "listing",
    "output_params_dtype", "pack_output_params", "unpack_output_params", "struct_dtype",
    "vector_params", "vector_kernel_params",
]


# ---- program builder -------------------------------------------------------------------------

class Program:
    """An instruction sequence under construction.

    Each method appends one instruction and returns its index (the ``fault_index`` a backend
    would report for it). Operands are checked only for fitting their fields; whether an
    instruction is valid for a configuration is the hardware's (and the golden model's) call,
    so tests can build faulting programs on purpose.
    """

    def __init__(self, words: Iterable[int] = ()):
        self._words: list[int] = []
        for w in words:
            self.emit(w)

    # -- instructions
    def load(self, target: LoadTarget | int | str, buf_addr: int, n_rows: int, row_bytes: int,
             mem_addr: int, mem_stride: int) -> int:
        """LOAD ``n_rows`` rows of ``row_bytes`` bytes from ``mem_addr`` (``mem_stride`` apart)
        into entries ``buf_addr..`` of the ``target`` buffer (ACT, WGT or PARAM)."""
        return self._append(encode(Opcode.LOAD, target=target, buf_addr=buf_addr,
                                   n_rows=n_rows, row_bytes=row_bytes, mem_addr=mem_addr,
                                   mem_stride=mem_stride))

    def matmul(self, act_addr: int, n_rows: int, wgt_addr: int, acc_addr: int,
               accumulate: bool | int) -> int:
        """MATMUL activation entries ``act_addr..+n_rows`` against the weight tile at
        ``wgt_addr`` into accumulator entries ``acc_addr..`` (add into them if
        ``accumulate``)."""
        return self._append(encode(Opcode.MATMUL, act_addr=act_addr, n_rows=n_rows,
                                   wgt_addr=wgt_addr, acc_addr=acc_addr,
                                   accumulate=int(bool(accumulate))))

    def store(self, acc_addr: int, n_rows: int, n_cols: int, mem_addr: int, mem_stride: int,
              mode: StoreMode | int | str, param_addr: int = 0) -> int:
        """STORE accumulator entries ``acc_addr..+n_rows`` (columns ``0..n_cols-1``) to memory,
        REQUANT (int8 through parameter entry ``param_addr``) or RAW (int32)."""
        return self._append(encode(Opcode.STORE, acc_addr=acc_addr, n_rows=n_rows,
                                   n_cols=n_cols, mem_addr=mem_addr, mem_stride=mem_stride,
                                   mode=mode, param_addr=param_addr))

    def vrequant(self, dst: VectorDst | int | str, src_addr: int, src_stride: int,
                 dst_addr: int, dst_stride: int, n_rows: int, n_elems: int,
                 param_addr: int = 0, transpose: bool | int = False) -> int:
        """VREQUANT the int32 ``n_rows`` x ``n_elems`` tensor at accumulator entry
        ``src_addr`` (blocks ``src_stride`` apart) into the ``dst`` buffer (ACT or WGT) at
        ``dst_addr`` (blocks ``dst_stride`` apart), block ``b`` with parameter entry
        ``param_addr + b``; ``transpose`` writes the ``[n_elems, n_rows]`` transpose."""
        return self._append(encode(Opcode.VREQUANT, dst=dst, src_addr=src_addr,
                                   src_stride=src_stride, dst_addr=dst_addr,
                                   dst_stride=dst_stride, n_rows=n_rows, n_elems=n_elems,
                                   param_addr=param_addr, transpose=int(bool(transpose))))

    def _vector(self, op: Opcode, src_addr: int, src_stride: int, dst_addr: int,
                dst_stride: int, n_rows: int, n_elems: int, param_addr: int,
                b_addr: int | None, pre: bool | int) -> int:
        return self._append(encode(op, dst=VectorDst.ACT, src_addr=src_addr,
                                   src_stride=src_stride, dst_addr=dst_addr,
                                   dst_stride=dst_stride, n_rows=n_rows, n_elems=n_elems,
                                   param_addr=param_addr, with_b=int(b_addr is not None),
                                   b_addr=b_addr or 0, pre=int(bool(pre))))

    def vadd(self, src_addr: int, src_stride: int, dst_addr: int, dst_stride: int,
             n_rows: int, n_elems: int, b_addr: int, param_addr: int = 0,
             pre: bool | int = False) -> int:
        """VADD: the accumulator tensor (through the input stage if ``pre``) plus the
        activation tensor at ``b_addr`` (blocks ``dst_stride`` apart) into ACT."""
        return self._vector(Opcode.VADD, src_addr, src_stride, dst_addr, dst_stride, n_rows,
                            n_elems, param_addr, b_addr, pre)

    def vsoftmax(self, src_addr: int, src_stride: int, dst_addr: int, dst_stride: int,
                 n_rows: int, n_elems: int, param_addr: int = 0,
                 mask_addr: int | None = None) -> int:
        """VSOFTMAX along rows into ACT; ``mask_addr``: the additive mask row (block ``k``
        in activation entry ``mask_addr + k``)."""
        return self._vector(Opcode.VSOFTMAX, src_addr, src_stride, dst_addr, dst_stride,
                            n_rows, n_elems, param_addr, mask_addr, False)

    def vlayernorm(self, src_addr: int, src_stride: int, dst_addr: int, dst_stride: int,
                   n_rows: int, n_elems: int, param_addr: int = 0,
                   residual_addr: int | None = None, pre: bool | int = False) -> int:
        """VLAYERNORM along rows into ACT, of the source (through the input stage if
        ``pre``) plus the residual activation tensor at ``residual_addr``."""
        return self._vector(Opcode.VLAYERNORM, src_addr, src_stride, dst_addr, dst_stride,
                            n_rows, n_elems, param_addr, residual_addr, pre)

    def vgelu(self, src_addr: int, src_stride: int, dst_addr: int, dst_stride: int,
              n_rows: int, n_elems: int, param_addr: int = 0, pre: bool | int = False) -> int:
        """VGELU into ACT (through the input stage if ``pre``)."""
        return self._vector(Opcode.VGELU, src_addr, src_stride, dst_addr, dst_stride, n_rows,
                            n_elems, param_addr, None, pre)

    def nop(self) -> int:
        return self._append(encode(Opcode.NOP))

    def fence(self) -> int:
        return self._append(encode(Opcode.FENCE))

    def halt(self) -> int:
        return self._append(encode(Opcode.HALT))

    def emit(self, word: int) -> int:
        """Append a raw 128-bit word (any bit pattern, e.g. a deliberately bad one)."""
        if isinstance(word, np.integer):
            word = int(word)
        if not isinstance(word, int) or isinstance(word, bool) or \
                not 0 <= word < (1 << isa.INSTR_WIDTH):
            raise ValueError(f"instruction word must be an integer in [0, 2**{isa.INSTR_WIDTH}),"
                             f" not {word!r}")
        return self._append(word)

    def _append(self, word: int) -> int:
        self._words.append(word)
        return len(self._words) - 1

    # -- access
    @property
    def words(self) -> list[int]:
        """The instruction words (a copy)."""
        return list(self._words)

    def __len__(self) -> int:
        return len(self._words)

    def __iter__(self):
        return iter(list(self._words))

    def listing(self) -> str:
        return listing(self._words)

    def __repr__(self) -> str:
        return f"<Program {len(self._words)} instructions>"


# ---- disassembler ----------------------------------------------------------------------------

_HEX_FIELDS = {"mem_addr"}


def disassemble(word: int) -> str:
    """One-line text form of an instruction word.

    Enum fields print by name (or as a number when unassigned), reserved fields only when
    nonzero, ``mem_addr`` in hex. An unknown opcode prints as ``.word 0x...``.
    """
    opcode, fields = isa.decode(word)
    try:
        op = Opcode(opcode)
    except ValueError:
        return f".word 0x{word:032x}  ; bad opcode 0x{opcode:02x}"
    parts = [op.name]
    for name, value in fields.items():
        info = isa._FIELDS[op][name]
        if name.startswith("reserved"):
            if value:
                parts.append(f"{name}=0x{value:x}")
            continue
        if info.enum is not None:
            try:
                text = info.enum(value).name
            except ValueError:
                text = str(value)
        elif name in _HEX_FIELDS:
            text = f"0x{value:x}"
        else:
            text = str(value)
        parts.append(f"{name}={text}")
    return " ".join(parts)


def listing(words: Sequence[int]) -> str:
    """Numbered disassembly of a program, one instruction per line."""
    width = max(1, len(str(max(len(words) - 1, 0))))
    return "\n".join(f"{i:>{width}}: {disassemble(w)}" for i, w in enumerate(words))


# ---- output parameters -----------------------------------------------------------------------

def struct_dtype(struct) -> np.dtype:
    """numpy structured dtype (little-endian) of a byte-aligned ``data.Struct`` of ``isa``,
    with field offsets and widths taken from its Amaranth layout. A field wider than 8 bytes
    (a reserved pad) becomes a byte array."""
    layout = data.Layout.cast(struct)
    names, formats, offsets = [], [], []
    for name, field in layout:
        if field.offset % 8 or field.width % 8:
            raise AssertionError(f"{struct.__name__}.{name} is not byte-aligned")
        nbytes = field.width // 8
        kind = "i" if field.shape.signed else "u"
        names.append(name)
        formats.append(f"<{kind}{nbytes}" if nbytes in (1, 2, 4, 8) else f"({nbytes},)u1")
        offsets.append(field.offset // 8)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": layout.size // 8})


def output_params_dtype() -> np.dtype:
    """numpy structured dtype of one ``isa.OutputParams`` (little-endian), with field offsets
    and widths taken from its Amaranth layout."""
    return struct_dtype(isa.OutputParams)


_PARAM_RANGES = {
    "bias": (-(1 << 31), (1 << 31) - 1),
    "multiplier": (-(1 << 31), (1 << 31) - 1),
    "shift": (isa.SHIFT_MIN, isa.SHIFT_MAX),
    "zero_point": (-128, 127),
    "lo": (-128, 127),
    "hi": (-128, 127),
}


def _check_param(name: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer)) or arr.dtype == bool:
        raise TypeError(f"{name} must be integer (scalar or per-column 1-D), "
                        f"not dtype {arr.dtype}")
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D per-column array, "
                         f"not shape {arr.shape}")
    lo, hi = _PARAM_RANGES[name]
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ValueError(f"{name} values must be in [{lo}, {hi}]")
    return arr.astype(np.int64)


def pack_output_params(bias, multiplier, shift, zero_point, lo, hi, cols: int) -> np.ndarray:
    """Pack per-column output-stage parameters into parameter-buffer entries.

    Each argument is a scalar or a 1-D per-column array; they broadcast to ``N`` columns
    (the longest). Returns ``uint8[ceil(N / cols), cols * OUTPUT_PARAMS_BYTES]``: entry *e*
    holds columns ``e*cols .. e*cols + cols - 1`` as consecutive ``OutputParams``; columns
    beyond ``N`` are all-zero.
    """
    if isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 1:
        raise ValueError(f"cols must be a positive integer, not {cols!r}")
    values = {name: _check_param(name, v) for name, v in
              (("bias", bias), ("multiplier", multiplier), ("shift", shift),
               ("zero_point", zero_point), ("lo", lo), ("hi", hi))}
    try:
        n = np.broadcast_shapes(*(v.shape for v in values.values()))
    except ValueError:
        raise ValueError("per-column parameters have different lengths: " + ", ".join(
            f"{k}={v.shape}" for k, v in values.items())) from None
    n_cols = n[0] if n else 1
    if n_cols == 0:
        raise ValueError("output parameters need at least one column")
    n_entries = -(-n_cols // cols)
    packed = np.zeros(n_entries * cols, dtype=output_params_dtype())
    for name, v in values.items():
        packed[name][:n_cols] = np.broadcast_to(v, (n_cols,))
    return packed.view(np.uint8).reshape(n_entries, cols * isa.OUTPUT_PARAMS_BYTES)


def unpack_output_params(entry_bytes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_output_params` for any number of bytes that is a multiple of
    ``OUTPUT_PARAMS_BYTES``: returns a structured array of ``output_params_dtype()``."""
    b = np.ascontiguousarray(entry_bytes, dtype=np.uint8).reshape(-1)
    return b.view(output_params_dtype())


# ---- vector-op parameters --------------------------------------------------------------------
# Field widths the unit uses and the ranges shifts are clamped into (docs/vector.md): the unit
# and the golden model read a parameter entry through vector_kernel_params, so any bit
# pattern in the buffer has one defined result.

_SCALAR_FIELDS = isa.VECTOR_SCALAR_FIELDS
_LN_GAMMA_BITS, _LN_BETA_BITS = isa.LN_GAMMA_BITS, isa.LN_BETA_BITS


def _sign_extend(v: np.ndarray, bits: int) -> np.ndarray:
    v = v.astype(np.int64) & ((1 << bits) - 1)
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v)


def _entry_bytes(config) -> int:
    return config.param_entry_bytes


def _entries(records: np.ndarray, config) -> np.ndarray:
    """Structured records, ``cols`` per entry, as ``uint8[n_entries, entry_bytes]``."""
    per_entry = config.cols
    n = -(-len(records) // per_entry)
    out = np.zeros(n * per_entry, dtype=records.dtype)
    out[:len(records)] = records
    return out.view(np.uint8).reshape(n, _entry_bytes(config))


def vector_params(op: Opcode, params, config, pre=None) -> np.ndarray:
    """The parameter entries a vector op reads, in its order, from ``param_addr``.

    Parameters
    ----------
    op : Opcode
        VREQUANT (``params`` = per-column OutputParams fields, a mapping or structured
        array), VADD, VSOFTMAX, VLAYERNORM or VGELU (``params`` = the ``sim.kernels`` params
        dataclass of the op: ``AddParams``, ``SoftmaxParams``, ``LayerNormParams``,
        ``GeluParams``).
    config : AcceleratorConfig
        The accelerator (``cols`` records per entry, ``act_bits``).
    pre : mapping, optional
        The per-channel input stage (``sim.kernels.prescale_params``) for ops with ``pre``.

    Returns
    -------
    numpy.ndarray
        ``uint8[n_entries, param_entry_bytes]``, to LOAD into the parameter buffer.
    """
    op = Opcode(op)
    rules = isa.VECTOR_RULES[op]
    if op == Opcode.VREQUANT:
        return pack_output_params(*(np.asarray(params[f]) for f in
                                    ("bias", "multiplier", "shift", "zero_point", "lo", "hi")),
                                  cols=config.cols)
    expected = {Opcode.VADD: kernels.AddParams, Opcode.VSOFTMAX: kernels.SoftmaxParams,
                Opcode.VLAYERNORM: kernels.LayerNormParams, Opcode.VGELU: kernels.GeluParams}
    if not isinstance(params, expected[op]):
        raise TypeError(f"{op.name} takes {expected[op].__name__}, not "
                        f"{type(params).__name__}")
    if params.act_bits != config.act_bits:
        raise ValueError(f"params are for act_bits={params.act_bits}, the accelerator has "
                         f"act_bits={config.act_bits}")
    if pre is not None and not rules.pre:
        raise ValueError(f"{op.name} has no input stage")
    struct = isa.VECTOR_SCALARS[op]
    rec = np.zeros(1, dtype=struct_dtype(struct))
    for name in _SCALAR_FIELDS[op]:
        value = getattr(params, name)
        rec[name] = 0 if value is None else value
    blocks = [_entries(rec, config)[:1]]
    if op == Opcode.VLAYERNORM:
        ch = np.zeros(params.n_elems, dtype=struct_dtype(isa.LayerNormChannel))
        ch["gamma_mult"] = params.gamma_mult
        ch["beta_add"] = params.beta_add
        blocks.append(_entries(ch, config))
    if pre is not None:
        blocks.append(pack_output_params(*(np.asarray(pre[f]) for f in
                                           ("bias", "multiplier", "shift", "zero_point", "lo",
                                            "hi")), cols=config.cols))
    return np.concatenate(blocks)


def vector_kernel_params(op: Opcode, entries: np.ndarray, config, n_elems: int, pre: bool,
                         with_b: bool = False):
    """Decode the parameter entries of one vector instruction, as the unit reads them.

    ``entries`` are the ``uint8[k, param_entry_bytes]`` from ``param_addr`` on (at least the
    op's count). Fields are masked to the widths the unit uses and shifts clamped into
    their ranges, so every bit pattern gives valid ``sim.kernels`` parameters.

    Returns
    -------
    (params, pre_params)
        The kernel's params (OutputParams records for VREQUANT) and the input stage's
        OutputParams records (None without ``pre``).
    """
    op = Opcode(op)
    rules = isa.VECTOR_RULES[op]
    nb = isa.vector_blocks(n_elems, config)
    entries = np.ascontiguousarray(entries, dtype=np.uint8)
    at = rules.scalars
    pre_params = None
    if op == Opcode.VREQUANT:
        return unpack_output_params(entries[:nb])[:n_elems], None
    rec = entries[0, :isa.OUTPUT_PARAMS_BYTES].view(struct_dtype(isa.VECTOR_SCALARS[op]))[0]
    f = {}
    for name, (bits, rng) in _SCALAR_FIELDS[op].items():
        v = int(rec[name])
        if bits is not None:
            v &= (1 << bits) - 1
        if rng is not None:
            v = min(max(v, rng[0]), rng[1])
        f[name] = v
    a = config.act_bits
    if op == Opcode.VSOFTMAX:
        k = 34 - a
        params = kernels.SoftmaxParams(a, f["multiplier"], f["shift"], k,
                                       kernels.act_range(a)[1] << k)
    elif op == Opcode.VADD:
        params = kernels.AddParams(a, f["x_mult"], f["x_shift"], f["b_mult"], f["b_shift"])
    elif op == Opcode.VGELU:
        params = kernels.GeluParams(a, f["in_mult"], f["in_shift"], f["out_mult"],
                                    f["out_shift"])
    else:
        ch = entries[at:at + nb].reshape(-1).view(struct_dtype(isa.LayerNormChannel))[:n_elems]
        at += nb
        params = kernels.LayerNormParams(
            a, n_elems, tuple(_sign_extend(ch["gamma_mult"], _LN_GAMMA_BITS).tolist()),
            tuple(_sign_extend(ch["beta_add"], _LN_BETA_BITS).tolist()), f["out_shift"],
            f["eps_mult"], f["eps_shift"], f["res_mult"] if with_b else None,
            f["res_shift"] if with_b else None)
    if pre:
        pre_params = unpack_output_params(entries[at:at + nb])[:n_elems]
    return params, pre_params
