"""Graphite globs: graphite-web's answers (fnmatch per node after brace expansion)."""

from __future__ import annotations

import fnmatch
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsyard_agent._exceptions import QueryError
from statsyard_agent.storage._glob import Glob, _compile


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        # literal
        ("stats.api.count", "stats.api.count", True),
        ("stats.api.count", "stats.api.counts", False),
        ("stats.api", "stats.api.count", False),  # same node count only
        ("stats.api.count", "stats.api", False),
        ("stats.api.count", "STATS.api.count", False),  # case-sensitive
        # * stays within one node
        ("*", "stats", True),
        ("*", "stats.api", False),
        ("*", "", True),
        ("stats.*", "stats.api", True),
        ("stats.*", "stats.", True),  # an empty node matches *
        ("stats.*", "stats.api.count", False),
        ("stats.*.count", "stats.api.count", True),
        ("stats.*.count", "stats.a.b.count", False),
        ("stats.*.*", "stats.api.count", True),
        ("stats.api*", "stats.api_v2", True),
        ("stats.*_v2", "stats.api_v2", True),
        ("stats.a*i*2", "stats.api_v2", True),
        ("stats.a*i*3", "stats.api_v2", False),
        ("*.*", "a.b", True),
        ("*.*", "a.b.c", False),
        # ? is one character, never a dot
        ("stats.ap?", "stats.api", True),
        ("stats.ap?", "stats.ap", False),
        ("stats.ap?", "stats.apis", False),
        ("stats?api", "stats.api", False),
        # character classes
        ("host[0-9]", "host7", True),
        ("host[0-9]", "hostx", False),
        ("host[0-9][0-9]", "host42", True),
        ("host[abc]", "hostb", True),
        ("host[!abc]", "hostd", True),
        ("host[!abc]", "hostb", False),
        ("a[!x]b", "a.b", False),  # a negated class never matches the dot
        ("a[+-/]b", "a-b", True),
        ("a[+-/]b", "a.b", False),  # nor a range that spans it
        ("a[]]b", "a]b", True),  # ']' first is a member, as in fnmatch
        ("a[!]]b", "a]b", False),
        ("a[!]]b", "axb", True),
        ("a[^x]b", "a^b", True),  # '^' is a literal; fnmatch negates with '!'
        ("a[^x]b", "ayb", False),
        ("a[-x]b", "a-b", True),
        ("a[x-]b", "a-b", True),
        # alternatives
        ("stats.{api,web}.count", "stats.web.count", True),
        ("stats.{api,web}.count", "stats.db.count", False),
        ("stats.{api*,db}.count", "stats.api_v2.count", True),
        ("stats.{a,b}{1,2}", "stats.b2", True),
        ("stats.{a,{b,c}x}", "stats.cx", True),  # nested
        ("stats.{a,{b,c}x}", "stats.c", False),
        ("stats.count{,_ps}", "stats.count", True),  # an empty alternative
        ("stats.count{,_ps}", "stats.count_ps", True),
        ("{stats,other}.*", "other.x", True),
        ("x.{a}", "x.a", True),
        ("{*}", "anything", True),
        ("{*}", "any.thing", False),
        # characters that are only special inside brackets or braces
        ("a}b", "a}b", True),
        ("a,b", "a,b", True),
        ("a]b", "a]b", True),
        ("a\\b", "a\\b", True),  # no escape character
        ("a(b)+c$", "a(b)+c$", True),  # regex metacharacters are literal
        ("a|b", "a", False),
    ],
)
def test_graphite_web_behaviour(pattern: str, name: str, matches: bool) -> None:
    assert Glob(pattern).match(name) is matches


@pytest.mark.parametrize(
    ("pattern", "prefix", "nodes", "literal"),
    [
        ("stats.timers.*.p99", "stats.timers.", 4, False),
        ("stats.timers.api.p99", "stats.timers.api.p99", 4, True),
        ("*", "", 1, False),
        ("*.cpu", "", 2, False),
        ("stats.tim*.x", "stats.", 3, False),
        ("stats.{a,b}.x", "stats.", 3, False),
        ("a.b.[xy]", "a.b.", 3, False),
        ("a.b?", "a.", 2, False),
        ("stats.x}", "stats.x}", 2, True),
    ],
)
def test_literal_prefix_and_node_count(
    pattern: str, prefix: str, nodes: int, literal: bool
) -> None:
    glob = Glob(pattern)
    assert glob.literal_prefix == prefix
    assert glob.node_count == nodes
    assert glob.is_literal is literal
    assert glob.pattern == pattern


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("", "empty"),
        ("stats.{api,web", "unclosed '{' at offset 6"),
        ("stats.{api,{web}", "unclosed '{'"),
        ("host[0-9", "unclosed '[' at offset 4"),
        ("host[]", "unclosed '['"),
        ("host[!]", "unclosed '['"),
        ("stats.{a.b,c}", "'.' inside {...}"),
        ("a[.]b", "'.' inside [...]"),
        ("a[z-a]", "reversed range z-a"),
        ("{" * 40 + "}" * 40, "nested deeper than 32"),
        ("{a,b}" * 11, "more than 1024 brace combinations"),
    ],
)
def test_bad_syntax_raises_query_error(pattern: str, fragment: str) -> None:
    with pytest.raises(QueryError) as info:
        Glob(pattern)
    assert fragment in str(info.value)
    assert repr(pattern) in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "a\x00b",
        "line\nbreak",
        "ünïcödé.名前.📈",
        "x" * 10_000,
    ],
)
def test_hostile_names_match_literally_and_by_wildcard(name: str) -> None:
    assert Glob(name).match(name)
    nodes = name.count(".") + 1
    assert Glob(".".join(["*"] * nodes)).match(name)
    assert not Glob(".".join(["*"] * (nodes + 1))).match(name)


def test_many_stars_on_a_long_node_do_not_backtrack_exponentially() -> None:
    # Without the atomic groups this pattern takes minutes on a 5000-character node.
    assert not Glob("*a*a*a*a*a*a*a*a*b").match("a" * 5000)
    assert Glob("*a*a*a*a*a*a*a*a*b").match("a" * 5000 + "b")


def test_compilation_is_cached_and_bounded() -> None:
    assert _compile("stats.cached.*") is _compile("stats.cached.*")
    maxsize = _compile.cache_info().maxsize
    assert maxsize is not None
    assert 0 < maxsize <= 4096


def test_globs_compare_by_pattern() -> None:
    assert Glob("a.*") == Glob("a.*")
    assert Glob("a.*") != Glob("a.?")
    assert len({Glob("a.*"), Glob("a.*")}) == 1
    assert repr(Glob("a.*")) == "Glob('a.*')"


# A reference implementation the way graphite-web does it: expand the braces, split on dots,
# fnmatch each node. Patterns are generated as trees, so the expansion needs no parser.

_ATOMS = ["a", "b", "_", "*", "?", "[ab]", "[!a]", "[a-b]"]


@st.composite
def _node(draw: st.DrawFn, depth: int = 0) -> tuple[str, list[str]]:
    """(pattern text of one node, its brace-free variants)."""
    parts: list[tuple[str, list[str]]] = []
    for _ in range(draw(st.integers(0, 4))):
        if depth < 2 and draw(st.integers(0, 4)) == 0:
            options = draw(st.lists(_node(depth + 1), min_size=1, max_size=3))
            text = "{" + ",".join(o[0] for o in options) + "}"
            parts.append((text, [v for o in options for v in o[1]]))
        else:
            atom = draw(st.sampled_from(_ATOMS))
            parts.append((atom, [atom]))
    text = "".join(p[0] for p in parts)
    variants = ["".join(combo) for combo in itertools.product(*(p[1] for p in parts))]
    return text, variants


@st.composite
def _pattern(draw: st.DrawFn) -> tuple[str, list[list[str]]]:
    nodes = draw(st.lists(_node(), min_size=1, max_size=3))
    text = ".".join(n[0] for n in nodes)
    variants = [list(combo) for combo in itertools.product(*(n[1] for n in nodes))]
    return text, variants


def _graphite_match(variants: list[list[str]], name: str) -> bool:
    nodes = name.split(".")
    return any(
        len(variant) == len(nodes)
        and all(fnmatch.fnmatchcase(node, part) for node, part in zip(nodes, variant, strict=True))
        for variant in variants
    )


_names = st.lists(st.text(alphabet="ab_c", max_size=5), min_size=1, max_size=3).map(".".join)


@given(_pattern(), st.lists(_names, min_size=1, max_size=10))
def test_agrees_with_graphite_web_reference(
    pattern: tuple[str, list[list[str]]], names: list[str]
) -> None:
    text, variants = pattern
    if text == "":
        return
    if len(variants) > 1024:  # the documented limit on brace combinations
        with pytest.raises(QueryError, match="brace combinations"):
            Glob(text)
        return
    glob = Glob(text)
    for name in names:
        assert glob.match(name) is _graphite_match(variants, name), (text, name)
        if glob.match(name):
            assert name.startswith(glob.literal_prefix)
            assert name.count(".") + 1 == glob.node_count


@given(st.text(alphabet="ab.*?[]{}!,-^", max_size=12), _names)
def test_any_pattern_compiles_or_raises_query_error(pattern: str, name: str) -> None:
    try:
        glob = Glob(pattern)
    except QueryError:
        return
    assert isinstance(glob.match(name), bool)
