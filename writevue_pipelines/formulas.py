"""Calculated metrics' formulas: ``stripe.gross_volume / stripe.charges`` and the like.

A small recursive-descent parser (never ``eval``) for numbers, metric refs, ``+ - * /``,
unary minus and parentheses. A ref is ``<source>.<metric>`` (``calc.<name>`` for another
calculated metric), optionally pinned to one dimension value in brackets:
``stripe.gross_volume[eur]``. Formulas are evaluated over a tenant's aggregates at view
time by the dashboard (``Formula.evaluate``): a ref without data makes the result None,
and so does a division by zero or a result that is not a finite number.

Bad input raises ``InvalidInput`` naming the position (1-based character) and what was
expected there. Limits: ``MAX_LENGTH`` characters, ``MAX_DEPTH`` nested parentheses or
signs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import InvalidInput

MAX_LENGTH = 500
MAX_DEPTH = 20

#: a source, metric or calculated metric name
NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
#: a dimension value inside brackets: printable, no brackets, backslash or quotes
_DIMENSION = re.compile(
    r"[^\[\]\\\"'\s][^\[\]\\\"'\x00-\x1f\x7f]{0,126}[^\[\]\\\"'\s]|[^\[\]\\\"'\s]"
)
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_REF = re.compile(r"([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)")


@dataclass(frozen=True, order=True)
class Ref:
    """One metric a formula reads: ``stripe.gross_volume`` or ``stripe.gross_volume[eur]``."""

    metric: str
    dimension: str | None = None

    @property
    def source(self) -> str:
        return self.metric.partition(".")[0]

    @property
    def name(self) -> str:
        return self.metric.partition(".")[2]

    @property
    def is_calculated(self) -> bool:
        return self.source == "calc"

    def __str__(self) -> str:
        return self.metric if self.dimension is None else f"{self.metric}[{self.dimension}]"


Values = Callable[[Ref], float | None]


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


# -- the tree ----------------------------------------------------------------------------
# Sums and products are n-ary, so a long chain (a + b + c …) stays one level deep: the
# tree is only as deep as the parentheses and signs, which the parser limits.


class _Node:
    def value(self, values: Values) -> float | None:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class _Number(_Node):
    number: float

    def value(self, values: Values) -> float | None:
        return self.number

    def text(self) -> str:
        number = self.number
        if number == int(number) and abs(number) < 1e15:
            return str(int(number))
        return repr(number)


@dataclass(frozen=True)
class _RefNode(_Node):
    ref: Ref

    def value(self, values: Values) -> float | None:
        return _finite(values(self.ref))

    def text(self) -> str:
        return str(self.ref)


@dataclass(frozen=True)
class _Negate(_Node):
    operand: _Node

    def value(self, values: Values) -> float | None:
        inner = self.operand.value(values)
        return None if inner is None else -inner

    def text(self) -> str:
        return f"-{_wrap(self.operand, isinstance(self.operand, _Chain))}"


@dataclass(frozen=True)
class _Chain(_Node):
    """``first (op operand)*`` for one precedence level: ``+ -`` or ``* /``."""

    first: _Node
    rest: tuple[tuple[str, _Node], ...]

    def value(self, values: Values) -> float | None:
        total = self.first.value(values)
        if total is None:
            return None
        for op, operand in self.rest:
            other = operand.value(values)
            if other is None:
                return None
            if op == "+":
                total = total + other
            elif op == "-":
                total = total - other
            elif op == "*":
                total = total * other
            else:
                if other == 0:
                    return None
                total = total / other
            if not math.isfinite(total):
                return None
        return total

    @property
    def additive(self) -> bool:
        return self.rest[0][0] in "+-"

    def text(self) -> str:
        # a sum in a product needs brackets; so does any chain after - * or /
        first = _wrap(self.first, not self.additive and _is_sum(self.first))
        parts = [first]
        for op, operand in self.rest:
            needs = _is_sum(operand) if self.additive else isinstance(operand, _Chain)
            parts.append(f"{op} {_wrap(operand, needs)}")
        return " ".join(parts)


def _is_sum(node: _Node) -> bool:
    return isinstance(node, _Chain) and node.additive


def _wrap(node: _Node, brackets: bool) -> str:
    return f"({node.text()})" if brackets else node.text()


def _divides(node: _Node) -> bool:
    if isinstance(node, _Chain):
        return any(op == "/" for op, _ in node.rest) or any(
            _divides(n) for n in (node.first, *(operand for _, operand in node.rest))
        )
    if isinstance(node, _Negate):
        return _divides(node.operand)
    return False


def _refs(node: _Node, found: list[Ref]) -> None:
    if isinstance(node, _RefNode):
        if node.ref not in found:
            found.append(node.ref)
    elif isinstance(node, _Negate):
        _refs(node.operand, found)
    elif isinstance(node, _Chain):
        _refs(node.first, found)
        for _, operand in node.rest:
            _refs(operand, found)


@dataclass(frozen=True)
class Formula:
    """A parsed formula: its refs, whether it divides, its value for given ref values."""

    _root: _Node

    @property
    def refs(self) -> tuple[Ref, ...]:
        """Every ref, once each, in the order they first appear."""
        found: list[Ref] = []
        _refs(self._root, found)
        return tuple(found)

    @property
    def divides(self) -> bool:
        return _divides(self._root)

    def evaluate(self, values: Values) -> float | None:
        """The formula's value, ``values`` giving each ref's; None when a ref has no
        value, on a division by zero or when the result is not a finite number."""
        return _finite(self._root.value(values))

    def __str__(self) -> str:
        return self._root.text()


# -- the parser --------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.depth = 0

    def fail(self, message: str, at: int | None = None) -> InvalidInput:
        at = self.pos if at is None else at
        if at >= len(self.text):
            where = "at the end"
        else:
            where = f"at position {at + 1} ({self.text[at]!r})"
        return InvalidInput(f"formula {where}: {message}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"more than {MAX_DEPTH} nested brackets or signs")

    def parse(self) -> Formula:
        if not self.text.strip():
            raise InvalidInput("formula is empty; write one such as stripe.net / stripe.charges")
        root = self.sum()
        if self.peek():
            raise self.fail("expected an operator (+ - * /) or the end")
        return Formula(root)

    def sum(self) -> _Node:
        return self.chain("+-", self.product)

    def product(self) -> _Node:
        return self.chain("*/", self.unary)

    def chain(self, ops: str, operand: Callable[[], _Node]) -> _Node:
        first = operand()
        rest: list[tuple[str, _Node]] = []
        while (op := self.peek()) and op in ops:
            self.pos += 1
            rest.append((op, operand()))
        if not rest:
            return first
        # a nested chain of the same level merges into this one when it is first
        if isinstance(first, _Chain) and first.rest[0][0] in ops:
            return _Chain(first.first, (*first.rest, *rest))
        return _Chain(first, tuple(rest))

    def unary(self) -> _Node:
        if self.peek() == "-":
            self.pos += 1
            self.deeper()
            operand = self.unary()
            self.depth -= 1
            if isinstance(operand, _Number):
                return _Number(-operand.number)
            return _Negate(operand)
        return self.primary()

    def primary(self) -> _Node:
        char = self.peek()
        start = self.pos
        if char == "(":
            self.pos += 1
            self.deeper()
            inner = self.sum()
            self.depth -= 1
            if self.peek() != ")":
                raise self.fail(f"expected ')' to close the '(' at position {start + 1}")
            self.pos += 1
            return inner
        if not char:
            raise self.fail("expected a number, a metric such as stripe.charges, or '('")
        if char in "0123456789.":
            match = _NUMBER.match(self.text, self.pos)
            if match is None:
                raise self.fail("expected a number")
            self.pos = match.end()
            number = float(match.group())
            if not math.isfinite(number):
                raise self.fail("number too large", at=start)
            return _Number(number)
        match = _REF.match(self.text, self.pos)
        if match is None:
            raise self.fail(
                "expected a number, a metric such as stripe.charges (lower case), or '('"
            )
        source, metric = match.groups()
        for part, offset in ((source, match.start(1)), (metric, match.start(2))):
            if not NAME.fullmatch(part):
                raise self.fail("a name is at most 63 characters", at=offset)
        self.pos = match.end()
        dimension = None
        if self.pos < len(self.text) and self.text[self.pos] == "[":
            close = self.text.find("]", self.pos + 1)
            if close < 0:
                raise self.fail("expected ']' to close the dimension")
            dimension = self.text[self.pos + 1 : close]
            if not _DIMENSION.fullmatch(dimension):
                raise self.fail(
                    "a dimension is 1 to 128 printable characters, without brackets, "
                    "quotes or spaces at either end",
                    at=self.pos + 1,
                )
            self.pos = close + 1
        elif self.pos < len(self.text) and (
            self.text[self.pos].isalnum() or self.text[self.pos] in "._"
        ):
            raise self.fail("a metric name is lower case letters, digits and _")
        return _RefNode(Ref(f"{source}.{metric}", dimension))


def parse(text: str) -> Formula:
    """The formula in ``text``; ``InvalidInput`` naming the position if it is not one."""
    if not isinstance(text, str):
        raise InvalidInput("formula must be text, such as stripe.net / stripe.charges")
    if len(text) > MAX_LENGTH:
        raise InvalidInput(f"formula is longer than {MAX_LENGTH} characters")
    if any(ch in text for ch in "\r\n"):
        raise InvalidInput("formula must be on one line")
    return _Parser(text).parse()


def valid_dimension(value: str) -> bool:
    """Whether ``value`` can be a dimension in a ref: 1 to 128 printable characters,
    without brackets, backslashes or quotes, and no space at either end."""
    return isinstance(value, str) and _DIMENSION.fullmatch(value) is not None


def parse_ref(text: str) -> Ref:
    """One metric ref (``stripe.gross_volume`` or ``github.stars[acme/api]``), alone."""
    formula = parse(text)
    root = formula._root
    if not isinstance(root, _RefNode):
        raise InvalidInput(f"{text!r} is not a metric such as stripe.gross_volume")
    return root.ref
