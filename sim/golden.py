"""The golden model: a numpy interpreter of the Serrano ISA, bit-exact with the hardware.

It has no notion of time. Instructions run one after another in program order, which is the
semantics the hardware guarantees (its scoreboard stalls dispatch on every buffer or memory
range conflict), so the final memory and buffer contents of any program are the same here
and on the cycle-accurate backends.

Of the counters (``isa.Counters``) it reports those that do not depend on timing, exactly as
the hardware counts them: ``instructions``, ``array_busy`` (one per activation vector
streamed) and the activity counters (``hw.activity``; docs/performance.md defines each).
"""

from typing import Sequence

import numpy as np

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import ErrorCode, LoadTarget, Opcode, StoreMode, VectorDst

from . import kernels, numerics
from .asm import unpack_output_params, vector_kernel_params
from .backend import RunResult, RunStatus

__all__ = ["GoldenBackend"]

# Activation buffer element per AcceleratorConfig.act_bits; an entry's bytes are its elements
# little-endian, as the load unit assembles them.
_ACT_DTYPES = {8: np.dtype(np.int8), 16: np.dtype("<i2")}


class GoldenBackend:
    """Instruction-level reference model implementing :class:`sim.backend.Backend`.

    The four on-chip buffers are numpy arrays. As the backend contract specifies, every
    :meth:`run` starts from a reset accelerator with all-zero buffers; :meth:`run_sequence`
    runs several programs on one accelerator, keeping buffer contents from one to the next
    (the hardware's ``clear`` resets only control state), and :meth:`execute` runs on the
    current contents without a reset:

    - ``act``: ``int8[act_depth, rows]`` (``act_bits = 8``) or little-endian
      ``int16[act_depth, rows]`` (``act_bits = 16``)
    - ``wgt``: ``int8[wgt_depth, cols]``
    - ``param``: ``uint8[param_depth, cols * OUTPUT_PARAMS_BYTES]`` (raw ``OutputParams``)
    - ``acc``: ``int32[acc_depth, cols]``

    Parameters
    ----------
    config : AcceleratorConfig
        The instance being modelled.
    """

    name = "golden"

    def __init__(self, config: AcceleratorConfig | None = None):
        if config is None:
            config = AcceleratorConfig()
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {type(config).__name__}")
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Zero every buffer (the state of a freshly reset accelerator)."""
        c = self.config
        self.act = np.zeros((c.act_depth, c.rows), dtype=_ACT_DTYPES[c.act_bits])
        self.wgt = np.zeros((c.wgt_depth, c.cols), dtype=np.int8)
        self.param = np.zeros((c.param_depth, c.param_entry_bytes), dtype=np.uint8)
        self.acc = np.zeros((c.acc_depth, c.cols), dtype=np.int32)

    # ------------------------------------------------------------------------------------------
    def run(self, words: Sequence[int], memory: np.ndarray, *,
            max_cycles: int | None = None) -> RunResult:
        """Execute ``words`` on a freshly reset accelerator against a copy of ``memory``
        (``max_cycles`` is ignored: the model takes no time). Bytes past the end of
        ``memory`` read as zero and writes to them are dropped."""
        self.reset()
        return self.execute(words, memory)

    def run_sequence(self, programs: Sequence[tuple[Sequence[int], np.ndarray]], *,
                     max_cycles: int | None = None) -> list[RunResult]:
        """Run several ``(words, memory)`` programs on one accelerator: reset once, then
        buffer contents carry over from each program to the next, as across ``clear``."""
        self.reset()
        return [self.execute(words, memory) for words, memory in programs]

    def execute(self, words: Sequence[int], memory: np.ndarray) -> RunResult:
        """Execute ``words`` on the current buffer contents (no reset).

        ``RunResult.counters`` holds ``instructions``, ``array_busy`` and every field of
        ``isa.ACTIVITY_COUNTERS`` (0 with ``activity_counters=False``), wrapped at
        ``2**counter_width`` as the hardware's counters wrap."""
        mem = _check_memory(memory, self.config)
        self._counts = dict.fromkeys(_TIMELESS_COUNTERS, 0)
        retired = 0
        status = RunStatus(done=False, error=ErrorCode.NONE, fault_index=0)
        for index, word in enumerate(words):
            if isinstance(word, np.integer):
                word = int(word)
            if not isinstance(word, int) or isinstance(word, bool):
                raise TypeError(f"instruction word {index} must be an int, not {word!r}")
            opcode, fields = isa.decode(word)
            op = _OPCODES.get(opcode)
            if op is None:
                status = RunStatus(done=True, error=ErrorCode.BAD_OPCODE, fault_index=index)
                break
            error = ErrorCode.NONE
            for code, failed in isa.instruction_checks(op, fields, self.config):
                if failed:
                    error = code
                    break
            if error != ErrorCode.NONE:
                status = RunStatus(done=True, error=error, fault_index=index)
                break
            if op == Opcode.LOAD:
                self._load(mem, **fields)
            elif op == Opcode.MATMUL:
                self._matmul(**fields)
            elif op == Opcode.STORE:
                self._store(mem, **fields)
            elif op == Opcode.VREQUANT:
                self._vrequant(**fields)
            elif op in isa.VECTOR_OPCODES:
                self._vector(op, **fields)
            retired += 1
            if op == Opcode.HALT:
                status = RunStatus(done=True, error=ErrorCode.NONE, fault_index=0)
                break
        self._counts["instructions"] = retired
        c = self.config
        if not c.activity_counters:
            self._counts.update(dict.fromkeys(isa.ACTIVITY_COUNTERS, 0))
        mask = (1 << c.counter_width) - 1
        return RunResult(memory=mem, status=status,
                         counters={name: n & mask for name, n in self._counts.items()})

    def _count(self, **counts: int) -> None:
        for name, n in counts.items():
            self._counts[name] += int(n)

    # ------------------------------------------------------------------------------------------
    def _load(self, mem: np.ndarray, *, target: int, buf_addr: int, n_rows: int,
              row_bytes: int, mem_addr: int, mem_stride: int, **_reserved) -> None:
        rows = _read_rows(mem, mem_addr, n_rows, mem_stride, row_bytes)
        buf, written = {LoadTarget.ACT.value: (self.act, "act_writes"),
                        LoadTarget.WGT.value: (self.wgt, "wgt_writes"),
                        LoadTarget.PARAM.value: (self.param, "param_writes")}[target]
        entries = buf[buf_addr:buf_addr + n_rows]
        entries_bytes = entries.view(np.uint8)
        entries_bytes[:, :row_bytes] = rows
        entries_bytes[:, row_bytes:] = 0
        self._count(**{written: n_rows,
                       "mem_read_beats": _beats(mem_addr, n_rows, mem_stride, row_bytes,
                                                self.config.mem_width)})

    def _matmul(self, *, act_addr: int, n_rows: int, wgt_addr: int, acc_addr: int,
                accumulate: int, **_reserved) -> None:
        rows = self.config.rows
        a = self.act[act_addr:act_addr + n_rows].astype(np.int64)
        w = self.wgt[wgt_addr:wgt_addr + rows].astype(np.int64)
        # |sum| <= rows * 2**22 <= 2**29 (int16 activations; 2**21 for int8): the product of
        # one tile cannot wrap (the array's partial sums are psum_width bits); the add can.
        prod = (a @ w).astype(np.int32)
        dst = self.acc[acc_addr:acc_addr + n_rows]
        # One vector (an activation entry) per row, the weight tile's rows entries, one
        # accumulator write per row and, adding into it, one accumulator read.
        self._count(array_busy=n_rows, act_reads=n_rows, wgt_reads=rows, acc_writes=n_rows,
                    acc_reads=n_rows if accumulate else 0)
        if accumulate:
            dst += prod  # int32 array arithmetic wraps modulo 2**32 silently
        else:
            dst[...] = prod

    def _store(self, mem: np.ndarray, *, mode: int, acc_addr: int, n_rows: int, n_cols: int,
               param_addr: int, mem_addr: int, mem_stride: int, **_reserved) -> None:
        vals = self.acc[acc_addr:acc_addr + n_rows, :n_cols]
        raw = StoreMode(mode) == StoreMode.RAW
        self._count(acc_reads=n_rows, param_reads=0 if raw else 1,
                    mem_write_beats=_beats(mem_addr, n_rows, mem_stride,
                                           isa.store_row_bytes(n_cols, raw),
                                           self.config.mem_width))
        if raw:
            out = np.ascontiguousarray(vals, dtype="<i4").view(np.uint8)
        else:
            p = unpack_output_params(self.param[param_addr])[:n_cols]
            # The 8-bit shift field holds more than docs/numerics.md defines; the hardware
            # saturates it into [SHIFT_MIN, SHIFT_MAX] (hw/output_stage.py), so do we.
            shift = np.clip(p["shift"].astype(np.int32), numerics.SHIFT_MIN,
                            numerics.SHIFT_MAX)
            y = numerics.output_stage(vals, p["bias"].astype(np.int32),
                                      p["multiplier"].astype(np.int32), shift,
                                      p["zero_point"].astype(np.int32),
                                      p["lo"].astype(np.int32), p["hi"].astype(np.int32))
            out = np.ascontiguousarray(y, dtype=np.int8).view(np.uint8)
        _write_rows(mem, mem_addr, mem_stride, out.reshape(n_rows, -1))

    def _vrequant(self, *, dst: int, transpose: int, src_addr: int, src_stride: int,
                  dst_addr: int, dst_stride: int, n_rows: int, n_elems: int, param_addr: int,
                  **_unused) -> None:
        c = self.config
        lanes = c.cols
        nb = isa.vector_blocks(n_elems, c)
        # The source as one [n_rows, nb * L] matrix (block b is columns b*L .. b*L + L - 1)
        # and its parameters as one row of nb * L columns, so requant is one numpy call.
        entries = src_addr + np.arange(nb)[:, None] * src_stride + np.arange(n_rows)[None, :]
        x = self.acc[entries].transpose(1, 0, 2).reshape(n_rows, nb * lanes)
        params = unpack_output_params(self.param[param_addr:param_addr + nb])
        to_act = VectorDst(dst) == VectorDst.ACT
        buf = self.act if to_act else self.wgt
        # One accumulator entry per source row and block, each with its block's parameter
        # entry (the unit reads it with every row; a tile's padding rows are not counted),
        # and every element below n_elems; the writes: n_rows per block, or transposed
        # n_elems per row block.
        writes = n_rows * nb if not transpose else n_elems * isa.vector_blocks(n_rows, c)
        self._count(acc_reads=n_rows * nb, param_reads=n_rows * nb,
                    vector_elements=n_rows * n_elems,
                    **{"act_writes" if to_act else "wgt_writes": writes})
        y = kernels.requant(x, params, c.act_bits if to_act else 8)
        y[:, n_elems:] = 0
        if transpose:
            nbt = isa.vector_blocks(n_rows, c)
            t = np.zeros((n_elems, nbt * lanes), dtype=y.dtype)
            t[:, :n_rows] = y[:, :n_elems].T
            # Block by block, in the order the unit writes (a later block wins where the
            # destination's blocks overlap).
            for ib in range(nbt):
                base = dst_addr + ib * dst_stride
                buf[base:base + n_elems] = t[:, ib * lanes:(ib + 1) * lanes]
        else:
            for b in range(nb):
                base = dst_addr + b * dst_stride
                buf[base:base + n_rows] = y[:, b * lanes:(b + 1) * lanes]

    def _vector(self, op: Opcode, *, src_addr: int, src_stride: int, dst_addr: int,
                dst_stride: int, b_addr: int, with_b: int, pre: int, n_rows: int,
                n_elems: int, param_addr: int, **_unused) -> None:
        """VADD, VSOFTMAX, VLAYERNORM, VGELU (``docs/vector.md``): one ``sim.kernels`` call
        on the whole tensor; the destination is always ACT."""
        c = self.config
        nb = isa.vector_blocks(n_elems, c)
        passes = _VECTOR_PASSES[op]
        # What the unit reads (hw.vector_ops): every pass reads the source (and b) but
        # softmax's output pass, which uses only its stored exponentials; the scalars entry
        # once; with pre the input stage's entry of each block on every pass; VLAYERNORM's
        # output pass also the channel entry of each block.
        used = n_rows * nb * (2 if op == Opcode.VSOFTMAX else passes)
        self._count(vector_elements=n_rows * n_elems * passes, acc_reads=used,
                    act_reads=used if with_b else 0, act_writes=n_rows * nb,
                    param_reads=1 + (n_rows * nb * passes if pre else 0)
                    + (n_rows * nb if op == Opcode.VLAYERNORM else 0))
        x = _gather(self.acc, src_addr, src_stride, n_rows, nb)[:, :n_elems]
        params, pre_params = vector_kernel_params(op, self.param[param_addr:], c, n_elems,
                                                  bool(pre), bool(with_b))
        b = None
        if with_b and op == Opcode.VSOFTMAX:
            b = self.act[b_addr:b_addr + nb].reshape(-1)[:n_elems]
        elif with_b:
            b = _gather(self.act, b_addr, dst_stride, n_rows, nb)[:, :n_elems]
        if op == Opcode.VADD:
            y = kernels.add(x, b, params, pre=pre_params)
        elif op == Opcode.VSOFTMAX:
            y = kernels.softmax(x, b, params)
        elif op == Opcode.VLAYERNORM:
            y = kernels.layernorm(x, params, residual=b, pre=pre_params)
        else:
            y = kernels.gelu(x, params, pre=pre_params)
        out = np.zeros((n_rows, nb * c.cols), dtype=self.act.dtype)
        out[:, :n_elems] = y
        if passes > 1 and nb > 1 and dst_stride < n_rows:
            # Row by row, as the unit writes the row ops (their blocks overlap here).
            for i in range(n_rows):
                _scatter(self.act, dst_addr + i, dst_stride, out[i:i + 1])
        else:
            _scatter(self.act, dst_addr, dst_stride, out)


#: Opcode values to ``Opcode`` (a dict: the enum's call is slow in the inner loop).
_OPCODES = {op.value: op for op in Opcode}
#: Passes over each source row of VADD, VSOFTMAX, VLAYERNORM and VGELU.
_VECTOR_PASSES = {Opcode.VADD: 1, Opcode.VGELU: 1, Opcode.VSOFTMAX: 3, Opcode.VLAYERNORM: 3}


def _gather(buf: np.ndarray, addr: int, stride: int, n_rows: int, nb: int) -> np.ndarray:
    """The block-major tensor of ``n_rows`` rows and ``nb`` blocks at ``(addr, stride)`` as
    one ``[n_rows, nb * L]`` matrix (block ``k`` is columns ``k*L .. k*L + L - 1``)."""
    entries = addr + np.arange(nb)[:, None] * stride + np.arange(n_rows)[None, :]
    return buf[entries].transpose(1, 0, 2).reshape(n_rows, -1)


def _scatter(buf: np.ndarray, addr: int, stride: int, y: np.ndarray) -> None:
    """Write ``y`` ``[n_rows, nb * L]`` block-major at ``(addr, stride)``, block by block in
    the order the unit writes (a later block wins where blocks overlap)."""
    n_rows, width = y.shape
    lanes = buf.shape[1]
    for k in range(width // lanes):
        base = addr + k * stride
        buf[base:base + n_rows] = y[:, k * lanes:(k + 1) * lanes]


#: The counters the model reports (those that do not depend on timing), in isa order.
_TIMELESS_COUNTERS = ("array_busy", "instructions") + isa.ACTIVITY_COUNTERS


# ---- memory helpers ------------------------------------------------------------------------

def _beats(mem_addr: int, n_rows: int, stride: int, row_bytes: int, width: int) -> int:
    """Memory words a strided access touches, row by row: the requests the load or store
    unit makes (a row of ``row_bytes`` bytes at lane ``addr % width`` spans
    ``(addr % width + row_bytes - 1) // width + 1`` words; rows that share a word each
    request it)."""
    if stride % width == 0:   # every row at the same lane (weight tiles, aligned rows)
        return n_rows * ((mem_addr % width + row_bytes - 1) // width + 1)
    lanes = (mem_addr + stride * np.arange(n_rows, dtype=np.int64)) % width
    return int(((lanes + row_bytes - 1) // width + 1).sum())


def _check_memory(memory, config: AcceleratorConfig) -> np.ndarray:
    if not isinstance(memory, np.ndarray) or memory.dtype != np.uint8:
        raise TypeError("memory must be a numpy uint8 array, not "
                        f"{getattr(memory, 'dtype', type(memory).__name__)}")
    if memory.ndim != 1:
        raise ValueError(f"memory must be 1-D, not shape {memory.shape}")
    if memory.size > config.mem_bytes:
        raise ValueError(f"memory image ({memory.size} bytes) is larger than mem_bytes "
                         f"({config.mem_bytes})")
    return memory.copy()


def _row_index(mem_addr: int, n_rows: int, stride: int, row_bytes: int) -> np.ndarray:
    return (mem_addr + stride * np.arange(n_rows, dtype=np.int64))[:, None] + \
        np.arange(row_bytes, dtype=np.int64)[None, :]


def _read_rows(mem: np.ndarray, mem_addr: int, n_rows: int, stride: int,
               row_bytes: int) -> np.ndarray:
    """``uint8[n_rows, row_bytes]``; bytes past the end of the image read as zero."""
    if isa.mem_extent_end(mem_addr, n_rows, stride, row_bytes) <= mem.size:
        if stride == row_bytes:   # contiguous rows (weight tiles, activations)
            return mem[mem_addr:mem_addr + n_rows * row_bytes].reshape(n_rows, row_bytes)
        view = np.lib.stride_tricks.as_strided(mem[mem_addr:], shape=(n_rows, row_bytes),
                                               strides=(stride, 1), writeable=False)
        return view.copy()
    idx = _row_index(mem_addr, n_rows, stride, row_bytes)
    out = np.zeros(idx.shape, dtype=np.uint8)
    inside = idx < mem.size
    out[inside] = mem[idx[inside]]
    return out


def _write_rows(mem: np.ndarray, mem_addr: int, stride: int, rows: np.ndarray) -> None:
    """Write rows in order (a later row wins where rows overlap); bytes past the end of the
    image are dropped."""
    n_rows, row_bytes = rows.shape
    idx = _row_index(mem_addr, n_rows, stride, row_bytes).reshape(-1)
    vals = rows.reshape(-1)
    if n_rows > 1 and stride < row_bytes:
        # Overlapping rows: keep the last write of every byte (fancy-index assignment does
        # not promise an order for repeated indices).
        rev_unique, rev_first = np.unique(idx[::-1], return_index=True)
        idx, vals = rev_unique, vals[::-1][rev_first]
    inside = idx < mem.size
    mem[idx[inside]] = vals[inside]
