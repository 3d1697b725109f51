"""Small pure helpers shared by the row engines (``hw.vector_rows``).

Registers made through :class:`Pipe` load only while its enable is high (the row engines
tie it to 1: their output FIFO absorbs the backpressure, so no clock enable fans out to
every register). Nothing here holds state of its own except the registers the names say.
"""

from collections.abc import Callable, Sequence

from amaranth import C, Cat, Const, Module, Mux, Signal, Value

from .delay import delay

__all__ = ["Pipe", "tree_reduce", "tree_levels", "bit_length_steps", "ceil_log2", "smax", "smin",
           "shift_right_low", "mask_from", "fits_above", "LIMB", "limb_products", "limb_count",
           "limb_sum"]


def ceil_log2(n: int) -> int:
    """``ceil(log2(n))`` for ``n >= 1``."""
    return max(0, (n - 1).bit_length())


class Pipe:
    """The registers of a pipeline that advances only while ``en`` is 1.

    Payload registers are reset-less (they pack into fabric and DSP registers); the valid
    bits that need a reset are made with ``resettable=True``.
    """

    def __init__(self, m: Module, en: Value):
        self.m = m
        self.en = en

    def reg(self, shape, name: str, value, *, resettable: bool = False) -> Signal:
        """A register ``name`` of ``shape`` loading ``value`` whenever the pipe advances."""
        sig = Signal(shape, name=name, reset_less=not resettable)
        with self.m.If(self.en):
            self.m.d.sync += sig.eq(value)
        return sig

    def delay(self, value, stages: int, name: str, *, resettable: bool = False):
        """``value`` delayed by ``stages`` pipe steps through ``{name}_d{k}`` registers."""
        return delay(self.m, value, stages, name=f"{name}_d{{}}", first=1,
                     reset_less=not resettable, en=self.en)


def tree_levels(n: int) -> int:
    """Register levels of :func:`tree_reduce` over ``n`` values."""
    return ceil_log2(n)


def tree_reduce(pipe: Pipe, values: Sequence, op: Callable, shape, name: str):
    """Reduce ``values`` with the associative ``op`` in a tree, one register per level.

    Returns the registered result ``tree_levels(len(values))`` pipe steps later (the value
    itself for a single input). ``shape`` is the shape of every node (wide enough for the
    result: sums must be given their grown width by the caller).
    """
    level = list(values)
    k = 0
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            nxt.append(pipe.reg(shape, f"{name}_l{k}_{i // 2}", op(level[i], level[i + 1])))
        if len(level) % 2:
            nxt.append(pipe.reg(shape, f"{name}_l{k}_{len(level) // 2}", level[-1]))
        level = nxt
        k += 1
    return level[0]


def bit_length_steps(m: Module, v: Value, name: str) -> tuple[Signal, int]:
    """The bit length of the unsigned ``v`` (0 for 0) by binary search, one free-running
    register per step (``v >= 2**s``, then ``s`` more and ``v >> s``, for ``s`` = 16, 8, ...,
    1): a few LUT levels per cycle instead of a chain of ``len(v)`` multiplexers.

    Returns ``(result, steps)``: the result register follows ``v`` ``steps`` cycles late.
    """
    v = Value.cast(v)
    width = len(v)
    n = Const(0, range(width + 1))
    steps = 0
    s = 1 << max(0, (width - 1).bit_length() - 1)
    while s >= 1:
        big = v[s:] != 0 if s < width else C(0, 1)
        nv = Signal(width, name=f"{name}_v{s}")
        nn = Signal(range(width + 1), name=f"{name}_n{s}")
        m.d.sync += [nv.eq(Mux(big, v >> s, v)), nn.eq(n + Mux(big, s, 0))]
        v, n = nv, nn
        s >>= 1
        steps += 1
    out = Signal(range(width + 1), name=f"{name}_len")
    m.d.sync += out.eq(n + v[0])
    return out, steps + 1


def smax(a, b):
    """``max(a, b)`` of two signed values."""
    return Mux(a > b, a, b)


def smin(a, b):
    """``min(a, b)`` of two signed values."""
    return Mux(a < b, a, b)


def shift_right_low(m: Module, value, amount: Value, out_width: int, name: str) -> Value:
    """``(value >> amount)[:out_width]`` (arithmetic for a signed ``value``), unsigned.

    A logarithmic shifter with the largest step first, so that each stage only makes the
    bits the later (smaller) steps can still move into the result: for a narrow result of
    a wide value about half the multiplexers of a full ``>>``. Each stage is a signal
    ``{name}_k{k}`` of ``m`` (an expression would repeat the earlier stages).
    """
    value = Value.cast(value)
    fill = value[-1] if value.shape().signed else C(0, 1)
    cur = value

    def ext(v, width):              # v (unsigned bits) extended with the fill to width
        return Cat(v, fill.replicate(width - len(v))) if width > len(v) else v[:width]
    for k in reversed(range(len(amount))):
        step = 1 << k
        width = out_width + step - 1
        wide = ext(cur, width + step)
        stage = Signal(width, name=f"{name}_k{k}")
        m.d.comb += stage.eq(Mux(amount[k], wide[step:], wide[:width]))
        cur = stage
    return ext(cur, out_width)


def mask_from(amount: Value, width: int) -> Value:
    """The ``width``-bit mask of the bits at and above position ``amount``."""
    return (Const((1 << width) - 1, width) << amount)[:width]


def fits_above(value: Value, mask: Value) -> Value:
    """Whether the bits of ``value`` under ``mask`` (a :func:`mask_from` mask) all equal its
    sign bit: with the mask from ``s + w - 1``, whether ``value >> s`` fits ``w`` signed
    bits."""
    value = Value.cast(value)
    sign = value[-1] if value.shape().signed else C(0, 1)
    return Mux(sign, (~value & mask) == 0, (value & mask) == 0)


#: Bits of the low limbs of :func:`limb_products`: a 17-bit unsigned limb is an 18-bit signed
#: multiplier operand (ECP5 MULT18X18D, 18x18 signed).
LIMB = 17


def _limbs(v: Value) -> list:
    """``v`` as ``(limb, shift)`` pairs: 17-bit unsigned limbs, the top one keeps the sign."""
    v = Value.cast(v)
    width, signed_ = len(v), v.shape().signed
    out = []
    for lo in range(0, width, LIMB):
        hi = min(lo + LIMB, width)
        limb = v[lo:hi]
        out.append((limb.as_signed() if signed_ and hi == width else limb, lo))
    return out


def limb_products(pipe: Pipe, a, b, name: str, products) -> list:
    """The partial products of ``a * b`` over 17-bit limbs of both operands, each an
    18x18-class product (one DSP) between registers: a wide product in one cycle would run
    the DSP and the fabric adders of its partial products in one path. The products come
    from the lane's slots ``products`` (a :class:`~.vector_bank.LaneProducts`), ``P =
    products.latency`` pipe steps after ``a`` and ``b``, but for a 1-bit limb (a sign), whose
    product is a register in fabric (delayed to the same stage). Returns ``(product,
    shift)`` pairs at their exact widths; :func:`limb_sum` of them (in the next stage) is
    ``a * b``."""
    out = []
    for la, sa in _limbs(a):
        for lb, sb in _limbs(b):
            shape = (Value.cast(la * lb)).shape()
            if min(len(la), len(lb)) == 1:
                pp = f"{name}_pp{sa // LIMB}{sb // LIMB}"
                p = pipe.delay(pipe.reg(shape, pp, la * lb), products.latency - 1, pp)
            else:
                raw = products.take(pipe.m, la, lb)
                p = raw[:shape.width].as_signed() if shape.signed else raw[:shape.width]
            out.append((p, sa + sb))
    return out


def limb_count(a_width: int, b_width: int) -> int:
    """Bank slots :func:`limb_products` takes for operands of these widths."""
    def widths(w):
        return [min(LIMB, w - lo) for lo in range(0, w, LIMB)]
    return sum(1 for x in widths(a_width) for y in widths(b_width) if min(x, y) > 1)


def limb_sum(products: list):
    """``sum(p << shift)`` of :func:`limb_products` (exact, signed if any limb is), as a
    balanced tree of adders (two levels for four products, not a chain of three)."""
    terms = [(p << sh) if sh else p for p, sh in products]
    while len(terms) > 1:
        pairs = [a + b for a, b in zip(terms[::2], terms[1::2])]
        terms = pairs + ([terms[-1]] if len(terms) % 2 else [])
    return terms[0]
