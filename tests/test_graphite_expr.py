"""The render target parser: what Grafana's query editor produces parses, anything else raises
our QueryError with an offset, and printing a parsed target parses back to the same tree."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsyard_agent._exceptions import QueryError
from statsyard_agent._graphite_expr import (
    Bool,
    Call,
    NoneValue,
    Number,
    Path,
    String,
    format_expr,
    parse_target,
)

PARSED = [
    ("stats.counters.api.count", Path("stats.counters.api.count")),
    ("stats.{a,b}.c*", Path("stats.{a,b}.c*")),
    ("a.[a-c,].b", Path("a.[a-c,].b")),
    ("a.b;env=prod;dc=x", Path("a.b;env=prod;dc=x")),
    ("1min.x", Path("1min.x")),
    ("sumSeries(a.*, b)", Call("sumSeries", (Path("a.*"), Path("b")))),
    ("alias(a.b,'x y')", Call("alias", (Path("a.b"), String("x y")))),
    ('alias(a.b,"it\'s")', Call("alias", (Path("a.b"), String("it's")))),
    (r"alias(a.b,'a\'b')", Call("alias", (Path("a.b"), String(r"a\'b")))),
    (r"aliasSub(a.b,'(\d+)','\1')", Call("aliasSub", (Path("a.b"), String(r"(\d+)"), String(r"\1")))),
    ("scale(a, -1.5e3)", Call("scale", (Path("a"), Number(-1500.0, "-1.5e3")))),
    ("scale(a, .5)", Call("scale", (Path("a"), Number(0.5, ".5")))),
    ("f(true, FALSE, None)", Call("f", (Bool(True), Bool(False), NoneValue()))),
    (
        "summarize(a, '1h', func='max', alignToFrom=true)",
        Call("summarize", (Path("a"), String("1h")), (("func", String("max")), ("alignToFrom", Bool(True)))),
    ),
    (
        "seriesByTag('name=a','env=~pr.*')|aliasByNode(1)",
        Call("aliasByNode", (Call("seriesByTag", (String("name=a"), String("env=~pr.*"))), Number(1.0, "1"))),
    ),
    (
        "a.b | scale(2) | alias('x')",
        Call("alias", (Call("scale", (Path("a.b"), Number(2.0, "2"))), String("x"))),
    ),
    ("  constantLine( 100 )  ", Call("constantLine", (Number(100.0, "100"),))),
    ("group()", Call("group", ())),
]


@pytest.mark.parametrize(("text", "tree"), PARSED)
def test_targets_parse_to_their_tree(text: str, tree: object) -> None:
    assert parse_target(text) == tree


@pytest.mark.parametrize(("text", "tree"), PARSED)
def test_printed_targets_parse_back_to_the_same_tree(text: str, tree: object) -> None:
    printed = format_expr(parse_target(text))
    assert parse_target(printed) == tree


BAD = [
    ("", "expected an expression at offset 0"),
    ("sum(", "expected an expression"),
    ("a.b)", "unexpected ')' at offset 3"),
    ("f(a,", "expected an expression"),
    ("f(a b)", "expected ',' or ')'"),
    ("alias(a,'x)", "unclosed string"),
    ("f(x=1, a)", "positional argument after a keyword argument"),
    ("f(x=1, x=2)", "given twice"),
    ("a.{b,c", "unclosed '{'"),
    ("a.[bc", "unclosed '['"),
    ("1.5(a)", "is not a function name"),
    ("a|", "expected a function name after '|'"),
    ("a|scale", "expected '(' after"),
    ("f(" * 70 + "a" + ")" * 70, "nested deeper"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_targets_raise_query_error_saying_where(text: str, message: str) -> None:
    with pytest.raises(QueryError, match="bad target") as caught:
        parse_target(text)
    assert message in str(caught.value)


def test_overlong_target_is_refused() -> None:
    with pytest.raises(QueryError, match="longer than"):
        parse_target("a" * 20_000)


@given(st.text(max_size=80))
def test_any_text_parses_or_raises_only_query_error(text: str) -> None:
    with contextlib.suppress(QueryError):
        parse_target(text)


@given(st.text(alphabet="abc.*{},()'\"|=;[]-0123 ", max_size=60))
def test_near_valid_text_parses_or_raises_only_query_error(text: str) -> None:
    try:
        tree = parse_target(text)
    except QueryError:
        return
    assert parse_target(format_expr(tree)) == tree
