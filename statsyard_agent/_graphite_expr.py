"""Graphite render targets: a small sans-IO parser from text to an expression tree.

Grammar (graphite-web 1.1, what Grafana's query editor produces)::

    target    := expr ('|' call)*                 a pipe passes the left side as first argument
    expr      := call | string | number | boolean | 'None' | path
    call      := IDENT '(' [arg (',' arg)*] ')'
    arg       := IDENT '=' expr | expr            keyword or positional
    string    := '...' | "..."                    kept verbatim; a backslash lets the quote in
    number    := -?digits[.digits][e[+-]digits]   the whole word, so ``1min.x`` is a path
    boolean   := true | false                     any case
    path      := a Graphite glob, optionally followed by ``;tag=value`` filters

Inside a path, ``{a,b}`` may hold commas and ``[...]`` anything up to its ``]``; a path ends at
whitespace, ``(``, ``)``, ``,``, ``|`` or a quote. Syntax errors raise :class:`QueryError`
naming the offset, so the HTTP layer can answer 400 with a useful message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

from ._exceptions import QueryError

__all__ = ["Bool", "Call", "Expr", "NoneValue", "Number", "Path", "String", "format_expr", "parse_target"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=|~)")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WORD_END = frozenset(" \t\r\n(),|'\"")
#: Deeper nesting than this is refused (a target is typed by a person or a dashboard).
_MAX_DEPTH = 64
_MAX_LENGTH = 16 * 1024


@dataclass(frozen=True, slots=True)
class Path:
    """A series path: a Graphite glob, with optional ``;tag=value`` filters after it."""

    text: str


@dataclass(frozen=True, slots=True)
class String:
    value: str


@dataclass(frozen=True, slots=True)
class Number:
    """A numeric literal; ``text`` keeps the spelling (``100`` vs ``100.0``) for series names."""

    value: float
    text: str

    @property
    def is_int(self) -> bool:
        return re.fullmatch(r"-?[0-9]+", self.text) is not None


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool


@dataclass(frozen=True, slots=True)
class NoneValue:
    pass


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Expr, ...]
    kwargs: tuple[tuple[str, Expr], ...] = ()


Expr = Path | String | Number | Bool | NoneValue | Call


def parse_target(text: str) -> Expr:
    """Parse one render target. Raises QueryError (with the offset) on any syntax error."""
    if len(text) > _MAX_LENGTH:
        raise QueryError(f"target longer than {_MAX_LENGTH} characters")
    parser = _Parser(text)
    expr = parser.target(0)
    parser.skip_space()
    if parser.pos != len(text):
        parser.fail(f"unexpected {text[parser.pos]!r}")
    return expr


def format_expr(expr: Expr) -> str:
    """The canonical text of ``expr`` (strings single-quoted, no spaces), as graphite-web
    prints nested expressions in series names."""
    if isinstance(expr, Path):
        return expr.text
    if isinstance(expr, String):
        value = expr.value
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value:
            return f'"{value}"'
        return "'" + re.sub(r"(?<!\\)'", r"\\'", value) + "'"
    if isinstance(expr, Number):
        return expr.text
    if isinstance(expr, Bool):
        return "true" if expr.value else "false"
    if isinstance(expr, NoneValue):
        return "None"
    parts = [format_expr(a) for a in expr.args] + [f"{k}={format_expr(v)}" for k, v in expr.kwargs]
    return f"{expr.name}({','.join(parts)})"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, reason: str) -> NoReturn:
        raise QueryError(f"bad target {self.text!r}: {reason} at offset {self.pos}")

    def skip_space(self) -> None:
        text = self.text
        while self.pos < len(text) and text[self.pos] in " \t\r\n":
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def target(self, depth: int) -> Expr:
        expr = self.expr(depth)
        self.skip_space()
        while self.peek() == "|":
            self.pos += 1
            self.skip_space()
            start = self.pos
            match = _IDENT.match(self.text, self.pos)
            if match is None:
                self.fail("expected a function name after '|'")
            self.pos = match.end()
            self.skip_space()
            if self.peek() != "(":
                self.pos = start
                self.fail("expected '(' after the function name following '|'")
            args, kwargs = self.arguments(depth + 1)
            expr = Call(match.group(), (expr, *args), kwargs)
            self.skip_space()
        return expr

    def expr(self, depth: int) -> Expr:
        if depth > _MAX_DEPTH:
            self.fail(f"nested deeper than {_MAX_DEPTH}")
        self.skip_space()
        char = self.peek()
        if not char:
            self.fail("expected an expression")
        if char in "'\"":
            return String(self.string(char))
        start = self.pos
        word = self.word()
        if not word:
            self.fail(f"unexpected {char!r}")
        self.skip_space()
        if self.peek() == "(":
            if not _IDENT.fullmatch(word):
                self.pos = start
                self.fail(f"{word!r} is not a function name")
            args, kwargs = self.arguments(depth + 1)
            return Call(word, args, kwargs)
        if _NUMBER.fullmatch(word):
            return Number(float(word), word)
        lowered = word.lower()
        if lowered in ("true", "false"):
            return Bool(lowered == "true")
        if lowered == "none":
            return NoneValue()
        return Path(word)

    def arguments(self, depth: int) -> tuple[tuple[Expr, ...], tuple[tuple[str, Expr], ...]]:
        self.pos += 1  # the '('
        args: list[Expr] = []
        kwargs: list[tuple[str, Expr]] = []
        self.skip_space()
        if self.peek() == ")":
            self.pos += 1
            return (), ()
        while True:
            self.skip_space()
            keyword = _KEYWORD.match(self.text, self.pos)
            if keyword is not None:
                self.pos = keyword.end()
                name = keyword.group(1)
                if any(name == k for k, _ in kwargs):
                    self.fail(f"keyword argument {name!r} given twice")
                kwargs.append((name, self.target(depth)))
            else:
                if kwargs:
                    self.fail("positional argument after a keyword argument")
                args.append(self.target(depth))
            self.skip_space()
            char = self.peek()
            if char == ",":
                self.pos += 1
                continue
            if char == ")":
                self.pos += 1
                return tuple(args), tuple(kwargs)
            self.fail("expected ',' or ')'" if char else "unclosed '('")

    def string(self, quote: str) -> str:
        """A quoted string, kept verbatim as graphite-web does (so ``'\\1'`` reaches aliasSub
        as a backreference); a backslash only stops the next character from ending it."""
        text = self.text
        self.pos += 1
        start = self.pos
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\\" and self.pos + 1 < len(text):
                self.pos += 2
                continue
            if char == quote:
                self.pos += 1
                return text[start : self.pos - 1]
            self.pos += 1
        self.fail(f"unclosed string (missing {quote})")

    def word(self) -> str:
        """A path or literal word; commas are allowed inside ``{}`` and anything in ``[]``."""
        text = self.text
        start = self.pos
        braces = 0
        while self.pos < len(text):
            char = text[self.pos]
            if char == "[":
                close = text.find("]", self.pos + 2)
                if close < 0:
                    self.fail("unclosed '['")
                self.pos = close + 1
                continue
            if char == "{":
                braces += 1
            elif char == "}" and braces:
                braces -= 1
            elif char in _WORD_END and not (char == "," and braces):
                break
            self.pos += 1
        if braces:
            self.fail("unclosed '{'")
        return text[start : self.pos]
