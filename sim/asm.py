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

__all__ = [
    "Program", "encode", "disassemble", "listing",
    "output_params_dtype", "pack_output_params", "unpack_output_params",
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

def output_params_dtype() -> np.dtype:
    """numpy structured dtype of one ``isa.OutputParams`` (little-endian), with field offsets
    and widths taken from its Amaranth layout."""
    layout = data.Layout.cast(isa.OutputParams)
    names, formats, offsets = [], [], []
    for name, field in layout:
        if field.offset % 8 or field.width % 8 or field.width // 8 not in (1, 2, 4, 8):
            raise AssertionError(f"OutputParams.{name} is not a byte-aligned integer")
        kind = "i" if field.shape.signed else "u"
        names.append(name)
        formats.append(f"<{kind}{field.width // 8}")
        offsets.append(field.offset // 8)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": isa.OUTPUT_PARAMS_BYTES})


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
