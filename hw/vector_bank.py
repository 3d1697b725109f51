"""A bank of 18x18 multipliers that the vector unit's lane datapaths time-share.

Only one vector op runs at a time, so the engines that never run together (``AddLanes``,
``GeluLanes``) need not each own their multipliers: each gets its products through a
:class:`ProductsSignature` port, and one :class:`ProductBank` per group of such engines holds
the multipliers (per lane, as many as the hungriest engine needs) with a multiplexer in front
of each that the ``sel`` input (held for a command) sets to the running engine.

An engine computes ``p = a * b`` on slot ``k`` of lane ``n`` by driving ``a[n][k]`` and
``b[n][k]`` and reading ``p[n][k]`` :attr:`ProductBank.latency` cycles later: the same
latency as the multiplier the engine would own (``hw.vector_steps``), since the multiplexer
is combinational in front of the multiplier's input registers.
"""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .mult import Family, Multiplier, MultiplierTarget

__all__ = ["OPERAND", "PRODUCT", "ProductsSignature", "ProductBank", "LaneProducts", "Solo",
           "product_latency"]

#: The multipliers' operands (MULT18X18D: 18x18 signed) and product.
OPERAND = signed(18)
PRODUCT = signed(36)


def product_latency(target: MultiplierTarget) -> int:
    """Cycles of one product for ``target.family``: the ECP5 DSP's input, pipeline and output
    registers (``hw.output_wide.ECP5OutputStage``), one register generic."""
    from .output_wide import ECP5OutputStage
    return ECP5OutputStage.PRODUCT_LATENCY if target.family is Family.ECP5 else 1


class ProductsSignature(wiring.Signature):
    """An engine's products: ``slots`` per lane, for ``lanes`` lanes (engine's view: it drives
    the operands ``a``, ``b`` and receives the products ``p``)."""

    def __init__(self, lanes: int, slots: int):
        self.lanes, self.slots = lanes, slots
        grid = lambda shape: data.ArrayLayout(data.ArrayLayout(shape, slots), lanes)
        super().__init__({"a": Out(grid(OPERAND)), "b": Out(grid(OPERAND)),
                          "p": In(grid(PRODUCT))})

    def __eq__(self, other):
        return (isinstance(other, ProductsSignature) and
                (self.lanes, self.slots) == (other.lanes, other.slots))

    def __repr__(self):
        return f"ProductsSignature({self.lanes}, {self.slots})"


class ProductBank(wiring.Component):
    """``lanes`` x ``max(users.values())`` multipliers shared by the ``users``.

    Parameters
    ----------
    target : MultiplierTarget
        ECP5: MULT18X18D (``hw.mult.Multiplier``, with ``target.simulation`` its model);
        generic: a registered ``*``.
    lanes : int
    users : dict of str to int
        Each user's name and its products per lane; the bank has a port of that name.
    latency : int or None
        Cycles from operands to product: ``None`` for :func:`product_latency` (the lane
        datapaths'), 1 for the row engines' (on ECP5 the DSP's output register only).

    Attributes
    ----------
    <name> : In(ProductsSignature(lanes, slots)), one per user
    sel : In(range(len(users)))
        The user whose operands reach the multipliers (its index in ``users``); it must be
        held while that user's products are in flight. Every user receives the products.
    """

    def __init__(self, target: MultiplierTarget, *, lanes: int, users: dict,
                 latency: int | None = None):
        assert users and all(name.isidentifier() and name != "sel" for name in users), users
        assert all(isinstance(s, int) and s >= 1 for s in users.values()), users
        self._target = target
        self._latency = product_latency(target) if latency is None else latency
        assert self._latency >= 1
        self._lanes = lanes
        self._users = dict(users)
        self.slots = max(users.values())
        super().__init__({
            **{name: In(ProductsSignature(lanes, s)) for name, s in users.items()},
            "sel": In(range(len(users))),
        })

    @property
    def latency(self) -> int:
        return self._latency

    def _multiplier(self) -> Multiplier:
        t = self._target
        if t.family is Family.ECP5:
            return Multiplier("ecp5", latency=self._latency, width=18, simulation=t.simulation)
        # (generic with more latency puts registers in front; every user here has 1 or P)
        return Multiplier("generic", latency=self._latency, width=18)

    def elaborate(self, platform):
        m = Module()
        ports = [getattr(self, name) for name in self._users]
        for n in range(self._lanes):
            for k in range(self.slots):
                m.submodules[f"l{n}_m{k}"] = mult = self._multiplier()
                a, b = 0, 0
                for index, port in enumerate(ports):
                    if k < port.signature.slots:
                        a = Mux(self.sel == index, port.a[n][k], a)
                        b = Mux(self.sel == index, port.b[n][k], b)
                        m.d.comb += port.p[n][k].eq(mult.p)
                m.d.comb += [mult.a.eq(a), mult.b.eq(b)]
        return m


class LaneProducts:
    """Hands out the slots of one lane of a :class:`ProductsSignature` port, in order.

    ``take(m, a, b)`` drives the next slot's operands in module ``m`` (``a`` and ``b`` at most
    18 bits signed or 17 unsigned: they are extended into the signed operands exactly) and
    returns its product (:data:`PRODUCT`), ``latency`` cycles later (the bank's, which the
    engine states). :meth:`check` asserts that every slot was used, so that the port's width
    and the engine's products agree.
    """

    def __init__(self, port, lane: int, latency: int):
        self._port, self._lane, self.used = port, lane, 0
        self.latency = latency

    def take(self, m: Module, a, b):
        k = self.used
        assert k < self._port.signature.slots, "more products than the port has slots"
        for v in (a, b):
            shape = v.shape()
            assert shape.width <= (18 if shape.signed else 17), shape
        self.used += 1
        m.d.comb += [self._port.a[self._lane][k].eq(a), self._port.b[self._lane][k].eq(b)]
        return self._port.p[self._lane][k]

    def check(self) -> None:
        assert self.used == self._port.signature.slots, (self.used, self._port.signature.slots)


class Solo(wiring.Component):
    """An engine with a :class:`ProductBank` of its own: the engine alone, with its ports but
    ``mul`` (for its tests and block synthesis; the vector unit shares banks between engines).

    Other attributes (``latency``, ``credits``, ``lanes``, ...) are the engine's.

    Parameters
    ----------
    engine : wiring.Component
        With a ``mul`` port (``Out(ProductsSignature)``) and a ``products`` attribute.
    target : MultiplierTarget
    latency : int or None
        The bank's (:class:`ProductBank`).
    """

    def __init__(self, engine, *, target: MultiplierTarget, latency: int | None = None):
        self._engine = engine
        self._bank_args = dict(target=target, latency=latency)
        members = dict(engine.signature.members)
        del members["mul"]
        self._ports = set(members)
        super().__init__(members)

    def __getattr__(self, name):
        # (only for what is not found on self; the ports are our own, made by __init__)
        if name.startswith("_") or name in self._ports:
            raise AttributeError(name)
        return getattr(self._engine, name)

    @property
    def engine(self):
        return self._engine

    def elaborate(self, platform):
        m = Module()
        e = self._engine
        m.submodules.engine = e
        m.submodules.bank = bank = ProductBank(lanes=e.mul.signature.lanes,
                                               users={"engine": e.products}, **self._bank_args)
        assert bank.latency == e.product_latency
        wiring.connect(m, e.mul, bank.engine)
        m.d.comb += bank.sel.eq(0)
        for name, member in self.signature.members.items():
            outer, inner = getattr(self, name), getattr(e, name)
            if member.is_signature:
                if member.flow == wiring.In:
                    wiring.connect(m, wiring.flipped(outer), inner)
                else:
                    wiring.connect(m, inner, wiring.flipped(outer))
            elif member.flow == wiring.In:
                m.d.comb += inner.eq(outer)
            else:
                m.d.comb += outer.eq(inner)
        return m
