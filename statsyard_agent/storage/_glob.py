"""Graphite metric globs: wildcards that stay inside one dot-separated node.

graphite-web splits a query on ``.`` and matches each node with :mod:`fnmatch` after
expanding ``{...}``; :class:`Glob` gives the same answers with one compiled regex:

``*``        any run of characters within the node, including none (never a ``.``)
``?``        exactly one character (never a ``.``)
``[a-z0_]``  one character of the class; ``[!a-z]`` one character outside it (never a
             ``.``). As in fnmatch, ``!`` negates and ``^`` is a literal, a ``]`` right after
             ``[`` or ``[!`` is a member, and a ``-`` first or last is a literal.
``{a,b*,}``  any of the alternatives, which may hold wildcards, nested braces, or be empty.

A name matches only when it has exactly as many nodes as the pattern. Matching is
case-sensitive, and every other character (``}``, ``]`` or ``,`` outside a brace included)
matches itself; there is no escape character.

Syntax errors raise :class:`QueryError`: an empty pattern, an unclosed ``[`` or ``{``, a
``.`` inside ``[...]`` or ``{...}`` (a wildcard cannot span nodes), a reversed range such as
``[z-a]``, braces nested deeper than 32, or more than 1024 brace combinations.

Braces are expanded into alternatives, and each ``*`` that is followed by more pattern in the
same node becomes a lazy atomic group (the trick :func:`fnmatch.translate` uses), so that
patterns like ``*a*a*a*b`` cannot backtrack exponentially on a long name.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from typing import NoReturn

from statsyard_agent._exceptions import QueryError

__all__ = ["Glob"]

_MAX_DEPTH = 32
_MAX_VARIANTS = 1024
_CACHE_SIZE = 1024

_WILDCARD_START = frozenset("*?[{")


@dataclass(frozen=True, slots=True)
class _Star:
    pass


@dataclass(frozen=True, slots=True)
class _One:
    """One character within a node: ``regex`` is a fixed-width, dot-free regex fragment."""

    regex: str


@dataclass(frozen=True, slots=True)
class _Alternatives:
    options: tuple[tuple[_Token, ...], ...]


_Token = _Star | _One | _Alternatives
_Flat = _Star | _One

_STAR = _Star()
_DOT = _One(r"\.")


class Glob:
    """A compiled Graphite glob (see the module docstring for the syntax).

    Construction raises :class:`QueryError` on bad syntax. Compilation is cached (the last
    1024 distinct patterns), so building the same ``Glob`` repeatedly is cheap.
    """

    __slots__ = ("_compiled", "_pattern")

    def __init__(self, pattern: str) -> None:
        self._pattern = pattern
        self._compiled = _compile(pattern)

    @property
    def pattern(self) -> str:
        """The pattern as given."""
        return self._pattern

    def match(self, name: str) -> bool:
        """True when ``name`` matches the whole pattern, node for node."""
        return self._compiled.regex.fullmatch(name) is not None

    @property
    def literal_prefix(self) -> str:
        """A prefix every matching name starts with, cut at a node boundary.

        The leading nodes that hold no wildcard, each with its ``.``: ``"stats.timers."`` for
        ``stats.timers.*.p99``, ``""`` for ``*.cpu``. When the whole pattern is literal this is
        the pattern itself (see :attr:`is_literal`).
        """
        return self._compiled.literal_prefix

    @property
    def is_literal(self) -> bool:
        """True when the pattern has no wildcard at all, so only the name equal to it matches."""
        return self._compiled.literal_prefix == self._pattern

    @property
    def node_count(self) -> int:
        """How many dot-separated nodes the pattern (and so every matching name) has."""
        return self._compiled.node_count

    def __repr__(self) -> str:
        return f"Glob({self._pattern!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Glob):
            return NotImplemented
        return self._pattern == other._pattern

    def __hash__(self) -> int:
        return hash(self._pattern)


@dataclass(frozen=True, slots=True)
class _Compiled:
    regex: re.Pattern[str]
    literal_prefix: str
    node_count: int


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile(pattern: str) -> _Compiled:
    if not pattern:
        raise QueryError("bad glob '': the pattern is empty; use '*' to match every top node")
    tokens = _Parser(pattern).parse()
    variants = _expand(pattern, tokens)
    regex = "|".join(dict.fromkeys(_variant_regex(variant) for variant in variants))
    return _Compiled(
        regex=re.compile(regex, re.DOTALL),
        literal_prefix=_literal_prefix(pattern),
        node_count=pattern.count(".") + 1,
    )


def _literal_prefix(pattern: str) -> str:
    first_wild = next((i for i, c in enumerate(pattern) if c in _WILDCARD_START), None)
    if first_wild is None:
        return pattern
    return pattern[: pattern.rfind(".", 0, first_wild) + 1]


class _Parser:
    """Recursive descent over the pattern into tokens; ``.`` becomes the ``_DOT`` token."""

    def __init__(self, pattern: str) -> None:
        self._pattern = pattern
        self._pos = 0

    def parse(self) -> tuple[_Token, ...]:
        return self._sequence(depth=0)

    def _sequence(self, depth: int) -> tuple[_Token, ...]:
        pattern = self._pattern
        tokens: list[_Token] = []
        while self._pos < len(pattern):
            char = pattern[self._pos]
            if depth and char in ",}":
                break
            if char == "*":
                tokens.append(_STAR)
                self._pos += 1
            elif char == "?":
                tokens.append(_One(r"[^.]"))
                self._pos += 1
            elif char == "[":
                tokens.append(self._char_class())
            elif char == "{":
                tokens.append(self._alternatives(depth + 1))
            elif char == ".":
                if depth:
                    self._fail("a '.' inside {...}: alternatives cannot span nodes")
                tokens.append(_DOT)
                self._pos += 1
            else:
                tokens.append(_One(re.escape(char)))
                self._pos += 1
        return tuple(tokens)

    def _alternatives(self, depth: int) -> _Alternatives:
        start = self._pos
        if depth > _MAX_DEPTH:
            self._fail(f"braces nested deeper than {_MAX_DEPTH}")
        self._pos += 1
        options = [self._sequence(depth)]
        while self._pos < len(self._pattern) and self._pattern[self._pos] == ",":
            self._pos += 1
            options.append(self._sequence(depth))
        if self._pos >= len(self._pattern):
            self._fail(f"unclosed '{{' at offset {start}")
        self._pos += 1  # the closing brace
        return _Alternatives(tuple(options))

    def _char_class(self) -> _One:
        pattern = self._pattern
        start = self._pos
        pos = start + 1
        negate = pos < len(pattern) and pattern[pos] == "!"
        if negate:
            pos += 1
        # fnmatch: a ']' right after '[' or '[!' is a member, not the end of the class.
        close = pattern.find("]", pos + 1)
        if pos >= len(pattern) or close < 0:
            self._fail(f"unclosed '[' at offset {start}")
        body = pattern[pos:close]
        self._pos = close + 1
        if "." in body:
            self._fail(f"a '.' inside [...] at offset {start}: a class cannot match a dot")
        members: list[str] = []
        spans_dot = False
        index = 0
        while index < len(body):
            if index + 2 < len(body) and body[index + 1] == "-":
                low, high = body[index], body[index + 2]
                if low > high:
                    self._fail(f"reversed range {low}-{high} in [...] at offset {start}")
                spans_dot = spans_dot or low <= "." <= high
                members.append(f"{_class_escape(low)}-{_class_escape(high)}")
                index += 3
            else:
                members.append(_class_escape(body[index]))
                index += 1
        if negate:
            return _One(f"[^.{''.join(members)}]")
        regex = f"[{''.join(members)}]"
        return _One(rf"(?!\.){regex}" if spans_dot else regex)

    def _fail(self, reason: str) -> NoReturn:
        raise QueryError(f"bad glob {self._pattern!r}: {reason}")


def _class_escape(char: str) -> str:
    return "\\" + char if char in "\\]^-[" else char


def _expand(pattern: str, tokens: tuple[_Token, ...]) -> list[tuple[_Flat, ...]]:
    """Every brace-free token sequence the pattern stands for (at most ``_MAX_VARIANTS``)."""
    variants: list[tuple[_Flat, ...]] = [()]
    run: list[_Flat] = []
    for token in tokens:
        if not isinstance(token, _Alternatives):
            run.append(token)
            continue
        options = [sub for option in token.options for sub in _expand(pattern, option)]
        if len(variants) * len(options) > _MAX_VARIANTS:
            raise QueryError(f"bad glob {pattern!r}: more than {_MAX_VARIANTS} brace combinations")
        prefix = tuple(run)
        run = []
        variants = [head + prefix + tail for head, tail in itertools.product(variants, options)]
    suffix = tuple(run)
    return [head + suffix for head in variants]


def _variant_regex(tokens: tuple[_Flat, ...]) -> str:
    nodes: list[list[_Flat]] = [[]]
    for token in tokens:
        if token is _DOT:
            nodes.append([])
        else:
            nodes[-1].append(token)
    return r"\.".join(_node_regex(node) for node in nodes)


def _node_regex(tokens: list[_Flat]) -> str:
    # Split at stars: seg0 * seg1 * ... * segN. Every middle segment can take its leftmost
    # occurrence (the next star absorbs whatever lies between), so it is matched lazily inside
    # an atomic group and never retried: matching stays polynomial however many stars.
    segments: list[str] = [""]
    for token in tokens:
        if isinstance(token, _Star):
            segments.append("")
        else:
            segments[-1] += token.regex
    if len(segments) == 1:
        return segments[0]
    head, *middle, tail = segments
    return head + "".join(f"(?>[^.]*?{seg})" for seg in middle) + f"[^.]*{tail}"
