"""Random instruction programs for cross-checking backends (valid and malformed)."""

import numpy as np

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import LoadTarget, Opcode, StoreMode, encode


# Small buffers and memories: instructions collide often, so the scoreboard is exercised; and
# memory widths from 1 to 16 bytes (8- to 128-bit memory words).
SMALL_CONFIGS = {
    "2x2_w4": AcceleratorConfig(rows=2, cols=2, act_depth=16, wgt_depth=4, acc_depth=16,
                                param_depth=2, mem_width=4, mem_bytes=1024),
    "3x2_w8": AcceleratorConfig(rows=3, cols=2, act_depth=16, wgt_depth=6, acc_depth=16,
                                param_depth=2, mem_width=8, mem_bytes=1024),
    "1x3_w1": AcceleratorConfig(rows=1, cols=3, act_depth=8, wgt_depth=2, acc_depth=8,
                                param_depth=2, mem_width=1, mem_bytes=1024),
    "4x1_w16": AcceleratorConfig(rows=4, cols=1, act_depth=16, wgt_depth=8, acc_depth=16,
                                 param_depth=2, mem_width=16, mem_bytes=1024),
}


# With the vector unit (square power-of-two arrays): the vector ops join the random programs.
VECTOR_CONFIGS = {
    "2x2_vec16": AcceleratorConfig(rows=2, cols=2, act_depth=128, wgt_depth=32, acc_depth=128,
                                   param_depth=16, mem_width=8, mem_bytes=1 << 14,
                                   vector=True, act_bits=16),
}


def gemm_program(cfg: AcceleratorConfig, x_addr: int, w_addr: int, out_addr: int, m: int, *,
                 halt: bool = False) -> list[int]:
    """One tile: x[m, rows] (row-major at x_addr) times w[rows, cols] (at w_addr), raw int32
    rows of ``cols`` values stored at out_addr; HALT appended when ``halt``."""
    words = [
        encode(Opcode.LOAD, target=LoadTarget.ACT.value, n_rows=m, row_bytes=cfg.rows,
               mem_addr=x_addr, mem_stride=cfg.rows),
        encode(Opcode.LOAD, target=LoadTarget.WGT.value, n_rows=cfg.rows, row_bytes=cfg.cols,
               mem_addr=w_addr, mem_stride=cfg.cols),
        encode(Opcode.MATMUL, n_rows=m),
        encode(Opcode.STORE, mode=StoreMode.RAW.value, n_rows=m, n_cols=cfg.cols,
               mem_addr=out_addr, mem_stride=4 * cfg.cols),
    ]
    return words + [encode(Opcode.HALT)] if halt else words


def patch_field(word: int, opcode: Opcode, name: str, value: int) -> int:
    """Overwrite one field of an encoded word with raw bits (for malformed instructions that
    ``isa.encode`` rightly refuses to build)."""
    from amaranth.lib import data
    field = data.Layout.cast(isa.INSTR_LAYOUTS[opcode])[name]
    mask = ((1 << field.width) - 1) << field.offset
    return (word & ~mask) | ((value << field.offset) & mask)


def random_program(cfg: AcceleratorConfig, rng: np.random.Generator, *, length: int = 12,
                   mem_size: int = 512, malformed: bool = False) -> tuple[list[int], np.ndarray]:
    """A program of ``length`` random instructions plus HALT, and a random memory image.

    Buffer and memory ranges are drawn from small spaces so that instructions in different
    units overlap often (exercising the decoder's scoreboard) and stores overwrite bytes
    that later loads read. With ``malformed``, one instruction somewhere is replaced by a
    faulting one (every error code is reachable).
    """
    memory = rng.integers(0, 256, mem_size, dtype=np.uint8)
    entry = {LoadTarget.ACT: cfg.act_entry_bytes, LoadTarget.WGT: cfg.wgt_entry_bytes,
             LoadTarget.PARAM: cfg.param_entry_bytes}
    depth = {LoadTarget.ACT: cfg.act_depth, LoadTarget.WGT: cfg.wgt_depth,
             LoadTarget.PARAM: cfg.param_depth}

    def span(limit: int) -> tuple[int, int]:
        n = int(rng.integers(1, min(limit, 12) + 1))
        return int(rng.integers(0, limit - n + 1)), n

    def mem_range(n_rows: int, row_bytes: int) -> tuple[int, int]:
        stride = int(rng.choice([0, row_bytes, row_bytes + int(rng.integers(0, 9))]))
        extent = (n_rows - 1) * stride + row_bytes
        if extent > mem_size:
            stride = 0
            extent = row_bytes
        return int(rng.integers(0, mem_size - extent + 1)), stride

    def hull(addr_limit: int, n_blocks: int, n_rows: int) -> tuple[int, int]:
        """(addr, stride) of a block-major tensor whose hull fits ``addr_limit`` entries."""
        stride = int(rng.choice([n_rows, n_rows + int(rng.integers(0, 4)),
                                 max(1, n_rows - 1)]))
        extent = (n_blocks - 1) * stride + n_rows
        if extent > addr_limit:
            stride, extent = n_rows, n_blocks * n_rows
        return int(rng.integers(0, addr_limit - extent + 1)), stride

    def valid_vrequant() -> int:
        L = cfg.cols
        dst = int(rng.integers(0, 2))
        transpose = int(rng.integers(0, 2))
        dst_depth = cfg.act_depth if dst == 0 else cfg.wgt_depth
        n_rows = int(rng.integers(1, 2 * L + 2))
        n_elems = int(rng.integers(1, 4 * L + 2))
        nb = -(-n_elems // L)
        d_blocks, d_rows = (-(-n_rows // L), n_elems) if transpose else (nb, n_rows)
        if nb * n_rows > cfg.acc_depth or d_blocks * d_rows > dst_depth or \
                nb > cfg.param_depth:
            n_rows, n_elems, nb, d_blocks, d_rows = 1, 1, 1, 1, 1
        src_addr, src_stride = hull(cfg.acc_depth, nb, n_rows)
        dst_addr, dst_stride = hull(dst_depth, d_blocks, d_rows)
        return encode(Opcode.VREQUANT, dst=dst, transpose=transpose, src_addr=src_addr,
                      src_stride=src_stride, dst_addr=dst_addr, dst_stride=dst_stride,
                      n_rows=n_rows, n_elems=n_elems,
                      param_addr=int(rng.integers(0, cfg.param_depth - nb + 1)))

    def valid_stream_op() -> int:
        """VADD, VSOFTMAX, VLAYERNORM or VGELU with in-range tensors (drawn until the ISA's
        checks pass: b may meet the destination only in place)."""
        from serrano.hw import isa
        L = cfg.cols
        for _ in range(20):
            op = rng.choice([Opcode.VADD, Opcode.VSOFTMAX, Opcode.VLAYERNORM, Opcode.VGELU])
            rules = isa.VECTOR_RULES[op]
            n_rows = int(rng.integers(1, 2 * L + 2))
            n_elems = int(rng.integers(1, 4 * L + 2))
            nb = -(-n_elems // L)
            if nb * n_rows > min(cfg.acc_depth, cfg.act_depth) // 2:
                n_rows, n_elems, nb = 1, 1, 1
            pre = int(rules.pre and rng.integers(0, 2))
            with_b = int(rules.b == isa.SecondOperand.REQUIRED or
                         (rules.b != isa.SecondOperand.NONE and rng.integers(0, 2)))
            src_addr, src_stride = hull(cfg.acc_depth, nb, n_rows)
            dst_addr, dst_stride = hull(cfg.act_depth, nb, n_rows)
            if rules.b == isa.SecondOperand.ROW:
                b_addr = int(rng.integers(0, cfg.act_depth - nb + 1))
            elif rng.integers(0, 4) == 0:
                b_addr = dst_addr                                   # in place
            else:
                b_addr = int(rng.integers(0, cfg.act_depth - ((nb - 1) * dst_stride + n_rows)
                                          + 1))
            n_params = rules.scalars + rules.channel * nb + pre * nb
            word = encode(op, dst=0, src_addr=src_addr, src_stride=src_stride,
                          dst_addr=dst_addr, dst_stride=dst_stride, b_addr=b_addr,
                          with_b=with_b, pre=pre, n_rows=n_rows, n_elems=n_elems,
                          param_addr=int(rng.integers(0, cfg.param_depth - n_params + 1)))
            _, fields = isa.decode(word)
            if not any(bad for _, bad in isa.instruction_checks(op, fields, cfg)):
                return word
        return encode(Opcode.VGELU, dst=0, n_rows=1, n_elems=1)

    def valid_instruction() -> int:
        kinds = ["load", "load", "load", "matmul", "matmul", "store", "store", "nop", "fence"]
        kind = rng.choice(kinds + (["vrequant", "vrequant", "vop", "vop"] if cfg.vector
                                   else []))
        if kind == "vrequant":
            return valid_vrequant()
        if kind == "vop":
            return valid_stream_op()
        if kind == "load":
            target = LoadTarget(int(rng.integers(0, 3)))
            buf_addr, n_rows = span(depth[target])
            step = cfg.act_bytes if target == LoadTarget.ACT else 1  # whole activations
            row_bytes = int(rng.integers(1, entry[target] // step + 1)) * step
            mem_addr, stride = mem_range(n_rows, row_bytes)
            return encode(Opcode.LOAD, target=target.value, buf_addr=buf_addr, n_rows=n_rows,
                          row_bytes=row_bytes, mem_addr=mem_addr, mem_stride=stride)
        if kind == "matmul":
            n_rows = int(rng.integers(1, min(cfg.act_depth, cfg.acc_depth, 12) + 1))
            return encode(Opcode.MATMUL,
                          act_addr=int(rng.integers(0, cfg.act_depth - n_rows + 1)),
                          n_rows=n_rows,
                          wgt_addr=int(rng.integers(0, cfg.wgt_depth - cfg.rows + 1)),
                          acc_addr=int(rng.integers(0, cfg.acc_depth - n_rows + 1)),
                          accumulate=int(rng.integers(0, 2)))
        if kind == "store":
            mode = StoreMode(int(rng.integers(0, 2)))
            acc_addr, n_rows = span(cfg.acc_depth)
            n_cols = int(rng.integers(1, cfg.cols + 1))
            row = n_cols * (4 if mode == StoreMode.RAW else 1)
            mem_addr, stride = mem_range(n_rows, row)
            return encode(Opcode.STORE, mode=mode.value, acc_addr=acc_addr, n_rows=n_rows,
                          n_cols=n_cols, param_addr=int(rng.integers(0, cfg.param_depth)),
                          mem_addr=mem_addr, mem_stride=stride)
        return encode(Opcode.NOP if kind == "nop" else Opcode.FENCE)

    def faulting_instruction() -> int:
        kind = rng.choice(["opcode", "reserved", "target", "size", "buffer", "memory",
                           "store_cols", "store_param"])
        if kind == "opcode":
            return int(rng.choice([0x06, 0x10, 0x1F, 0xFF])) | (int(rng.integers(0, 1 << 60)) << 8)
        if kind == "reserved":
            return encode(Opcode.MATMUL, n_rows=1, reserved1=1)
        if kind == "target":
            return patch_field(encode(Opcode.LOAD, n_rows=1, row_bytes=1), Opcode.LOAD,
                               "target", 3)
        if kind == "size":
            return encode(Opcode.LOAD, target=0, n_rows=0, row_bytes=1)
        if kind == "buffer":
            return encode(Opcode.MATMUL, act_addr=cfg.act_depth - 1, n_rows=2)
        if kind == "store_cols":
            return encode(Opcode.STORE, mode=0, n_rows=1, n_cols=cfg.cols + 1)
        if kind == "store_param":
            return encode(Opcode.STORE, mode=0, n_rows=1, n_cols=1, param_addr=cfg.param_depth)
        return encode(Opcode.LOAD, target=0, n_rows=2, row_bytes=1,
                      mem_addr=cfg.mem_bytes - 1, mem_stride=1)

    words = [valid_instruction() for _ in range(length)]
    if malformed:
        words[int(rng.integers(0, length))] = faulting_instruction()
    words.append(encode(Opcode.HALT))
    return words, memory


def garbage_program(cfg: AcceleratorConfig, rng: np.random.Generator,
                    length: int) -> list[int]:
    """Random 128-bit words whose opcode is mostly a real one: field checks in every order."""
    opcodes = [op.value for op in Opcode] + [0x06, 0x10, 0xFF]
    words = []
    for _ in range(length):
        word = int.from_bytes(rng.bytes(16), "little") & ~0xFF
        words.append(word | int(rng.choice(opcodes)))
    return words


def boundary_words(cfg: AcceleratorConfig, rng: np.random.Generator, count: int) -> list[int]:
    """LOAD and STORE words whose memory ends cluster around ``mem_bytes``, plus MATMULs and
    LOADs whose buffer ends cluster around the depths, and a few random words."""
    words = []
    strides = [0, 1, 3, (1 << 17) - 1, 1 << 17, (1 << 17) + 1, (1 << 24) - 1, 1 << 16]
    for i in range(count):
        kind = i % 5
        n_rows = int(rng.choice([0, 1, 2, 3, 0xFFFF, int(rng.integers(1, 1 << 16))]))
        stride = int(rng.choice(strides + [int(rng.integers(0, 1 << 24))]))
        if kind in (0, 1):  # memory end near mem_bytes
            row_len = int(rng.integers(1, cfg.act_entry_bytes + 1))
            if n_rows > 4:
                stride = int(rng.integers(0, 4))
            span = (max(n_rows, 1) - 1) * stride + row_len
            mem_addr = max(0, cfg.mem_bytes - span + int(rng.integers(-2, 3)))
            if rng.random() < 0.2:
                mem_addr = int(rng.choice([0, cfg.mem_bytes, (1 << 32) - 1,
                                           int(rng.integers(0, 1 << 32))]))
            if kind == 0:
                words.append(encode(Opcode.LOAD, target=int(rng.integers(0, 3)),
                                    buf_addr=int(rng.integers(0, 4)),
                                    n_rows=min(n_rows, 0xFFFF), row_bytes=row_len,
                                    mem_addr=mem_addr, mem_stride=stride))
            else:
                raw = int(rng.integers(0, 2))
                n_cols = max(1, row_len // (4 if raw else 1))
                words.append(encode(Opcode.STORE, mode=raw, acc_addr=int(rng.integers(0, 4)),
                                    n_rows=n_rows, n_cols=min(n_cols, cfg.cols),
                                    param_addr=int(rng.integers(0, cfg.param_depth + 1)),
                                    mem_addr=mem_addr, mem_stride=stride))
        elif kind == 2:  # big products: the stride split and the carries between partials
            words.append(encode(Opcode.LOAD, target=0, buf_addr=0, n_rows=n_rows,
                                row_bytes=int(rng.integers(1, cfg.act_entry_bytes + 1)),
                                mem_addr=int(rng.integers(0, 1 << 32)), mem_stride=stride))
        elif kind == 3:  # buffer ends near the depths
            n = int(rng.integers(0, 10))
            words.append(encode(Opcode.MATMUL, accumulate=int(rng.integers(0, 2)),
                                act_addr=int(rng.integers(0, cfg.act_depth + 2)) % (1 << 16),
                                n_rows=n, wgt_addr=int(rng.integers(0, cfg.wgt_depth)),
                                acc_addr=int(rng.integers(0, cfg.acc_depth))))
        else:  # anything at all
            words.append(int.from_bytes(rng.bytes(16), "little") & ~0xF8
                         if rng.random() < 0.5 else int.from_bytes(rng.bytes(16), "little"))
    return words
