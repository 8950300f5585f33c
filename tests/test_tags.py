"""Agent-added tags: precedence, cardinality, environment, and adding them to flushed batches."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsyard_agent._aggregate import Aggregator, AggregatorConfig
from statsyard_agent._config import TagsConfig, build_config
from statsyard_agent._exceptions import ConfigError
from statsyard_agent._protocol import Parser
from statsyard_agent._tags import BatchTagger, agent_tags, merge_tags, resolve_agent_tags
from statsyard_agent._types import FlushBatch, Tags

A, B, C = ("a", "1"), ("b", "2"), ("c", "3")


@pytest.mark.parametrize(
    ("tags", "extra", "expected"),
    [
        ((), (), ()),
        ((A,), (), (A,)),
        ((), (B,), (B,)),
        ((A, C), (B,), (A, B, C)),
        ((("b", "own"),), (B, C), (("b", "own"), C)),  # the series' own value wins
        ((("web", ""),), (("web", "x"),), (("web", ""),)),  # a bare tag counts as its key
    ],
)
def test_merge_tags(tags: Tags, extra: Tags, expected: Tags) -> None:
    assert merge_tags(tags, extra) == expected


def test_merge_tags_returns_the_same_object_when_nothing_is_added() -> None:
    tags = (A, B)
    assert merge_tags(tags, (("a", "other"),)) is tags


K8S_ENV = {
    "POD_NAME": "web-7d9f",
    "POD_NAMESPACE": "shop",
    "NODE_NAME": "node-3",
    "POD_UID": "1b2c",
    "KUBERNETES_SERVICE_HOST": "10.0.0.1",
}


def tags_for(environ: dict[str, str], hostname: str = "web-7d9f", **values: object) -> Tags:
    config = build_config(values).tagging
    return agent_tags(config, resolve_agent_tags(config, environ, hostname))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, {"kube_namespace": "shop", "kube_node": "node-3"}),
        (
            {"tag_cardinality": "orchestrator"},
            {"kube_namespace": "shop", "kube_node": "node-3", "pod_name": "web-7d9f", "pod_uid": "1b2c"},
        ),
        # in a pod, the host name is the pod name: orchestrator-level like pod_name
        ({"host_tag": "auto"}, {"kube_namespace": "shop", "kube_node": "node-3"}),
        (
            {"host_tag": "auto", "tag_cardinality": "orchestrator"},
            {
                "kube_namespace": "shop",
                "kube_node": "node-3",
                "pod_name": "web-7d9f",
                "pod_uid": "1b2c",
                "host": "web-7d9f",
            },
        ),
        ({"host_tag": "edge-1"}, {"kube_namespace": "shop", "kube_node": "node-3", "host": "edge-1"}),
        # static tags always; they win over the environment on the same key
        (
            {"tags": ["env:prod", "kube_node:pinned", "canary"]},
            {"kube_namespace": "shop", "kube_node": "pinned", "env": "prod", "canary": ""},
        ),
        # names are configurable, per level
        ({"env_tags": {"low": {"ns": "POD_NAMESPACE"}, "orchestrator": {}}}, {"ns": "shop"}),
        (
            {"env_tags": {"high": {"pod": "POD_NAME"}}, "tag_cardinality": "high"},
            {
                "kube_namespace": "shop",
                "kube_node": "node-3",
                "pod_name": "web-7d9f",
                "pod_uid": "1b2c",
                "pod": "web-7d9f",
            },
        ),
    ],
)
def test_agent_tags_in_kubernetes(values: dict[str, object], expected: dict[str, str]) -> None:
    assert dict(tags_for(K8S_ENV, **values)) == expected


def test_agent_tags_outside_kubernetes() -> None:
    assert tags_for({}, hostname="build-box") == ()
    assert tags_for({}, hostname="build-box", host_tag="auto") == (("host", "build-box"),)
    assert tags_for({"POD_NAMESPACE": "  "}, hostname="") == ()  # blank values add nothing
    assert tags_for({"NODE_NAME": "node 3,a"}, hostname="") == (("kube_node", "node_3_a"),)


def test_resolve_reports_withheld_tags_with_their_source() -> None:
    config = TagsConfig(host="auto")
    candidates = resolve_agent_tags(config, K8S_ENV, "web-7d9f")
    by_key = {t.key: (t.level, t.source) for t in candidates}
    assert by_key["pod_name"] == ("orchestrator", "$POD_NAME")
    assert by_key["host"] == ("orchestrator", "host name")


# --- batches -------------------------------------------------------------------------------------


def flushed(datagram: bytes, tagger: BatchTagger) -> FlushBatch:
    aggregator = Aggregator(AggregatorConfig())
    for metric in Parser().parse_datagram(datagram).metrics:
        aggregator.add(metric)
    return tagger.build(aggregator.take_snapshot(1_000, 10.0))


def points(batch: FlushBatch) -> dict[tuple[str, Tags], float]:
    return {(n, t): float(v) for n, t, v in zip(batch.names, batch.tags, batch.values, strict=True)}


def test_batch_tagger_adds_tags_to_points_and_sketches() -> None:
    agent = (("env", "prod"), ("kube_node", "n1"))
    batch = flushed(b"hits:2|c\nhits:5|c|#env:dev\nlat:3|ms|#a:1", BatchTagger(agent))
    got = points(batch)
    assert got[("stats.counters.hits.count", agent)] == 2
    assert got[("stats.counters.hits.count", (("env", "dev"), ("kube_node", "n1")))] == 5
    assert got[("stats.timers.lat.mean", (("a", "1"), *agent))] == 3
    assert {s.tags for s in batch.sketches} == {(("a", "1"), *agent)}


def test_batch_tagger_without_tags_returns_the_batch_itself() -> None:
    aggregator = Aggregator(AggregatorConfig())
    for metric in Parser().parse_datagram(b"hits:2|c").metrics:
        aggregator.add(metric)
    snapshot = aggregator.take_snapshot(1_000, 10.0)
    tagger = BatchTagger()
    batch = tagger.build(snapshot)
    assert tagger.apply(batch) is batch


def test_batch_tagger_keeps_twins_apart(caplog: pytest.LogCaptureFixture) -> None:
    # hits with env:prod sent explicitly, and hits without: adding env:prod to the second would
    # make the two one series, and one point would overwrite the other in storage.
    tagger = BatchTagger((("env", "prod"),))
    with caplog.at_level(logging.WARNING):
        batch = flushed(b"hits:2|c|#env:prod\nhits:5|c\nother:1|c", tagger)
    got = points(batch)
    assert got[("stats.counters.hits.count", (("env", "prod"),))] == 2
    assert got[("stats.counters.hits.count", ())] == 5
    assert got[("stats.counters.other.count", (("env", "prod"),))] == 1  # not a twin: tagged
    assert tagger.collisions == 2  # .count and .rate
    assert "keeps its own tags" in caplog.text


_tag = st.tuples(st.sampled_from("abc"), st.sampled_from(["", "1", "2"]))


@given(
    series=st.lists(
        st.tuples(
            st.sampled_from(["x", "y"]), st.lists(_tag, max_size=3).map(lambda t: tuple(sorted(set(t))))
        ),
        max_size=12,
        unique=True,
    ),
    extra=st.dictionaries(st.sampled_from("abd"), st.sampled_from(["1", "9"]), max_size=3),
)
def test_batch_tagger_never_merges_series_and_only_adds(
    series: list[tuple[str, Tags]], extra: dict[str, str]
) -> None:
    import numpy as np

    batch = FlushBatch(
        1, 1.0, tuple(n for n, _ in series), tuple(t for _, t in series), (), np.zeros(len(series))
    )
    out = BatchTagger(tuple(sorted(extra.items()))).apply(batch)
    keys = list(zip(out.names, out.tags, strict=True))
    assert len(set(keys)) == len(keys)  # distinct in, distinct out
    for (_, old), new in zip(series, out.tags, strict=True):
        assert set(old) <= set(new)
        assert new == tuple(sorted(new))
        added = set(new) - set(old)
        assert added <= set(extra.items())


@pytest.mark.parametrize(
    ("values", "key", "words"),
    [
        ({"tags": "env:prod"}, None, ""),  # a comma-separated string is accepted (flags, env)
        ({"tags": [1]}, "tags", "as strings"),
        ({"tags": {"env": "prod"}}, "tags", "a list"),
        ({"tags": ["env:pr od"]}, "tags", "bad tag"),
        ({"tags": ["env:a;b"]}, "tags", "bad tag"),
        ({"tags": [":prod"]}, "tags", "bad tag"),
        ({"tag_cardinality": "medium"}, "tag_cardinality", "low, orchestrator, high"),
        ({"host_tag": "my host"}, "host_tag", "spaces"),
        ({"env_tags": {"low": {"ns": "1BAD"}}}, "env_tags.low", "environment variable name"),
        ({"env_tags": {"low": {"bad key": "X"}}}, "env_tags.low", "bad tag key"),
        ({"env_tags": {"low": {"x": "A"}, "high": {"x": "B"}}}, "env_tags.high", "also in"),
        ({"env_tags": {"low": ["POD_NAME"]}}, "env_tags.low", "a table"),
        ({"env_tags": {"medium": {}}}, "env_tags.medium", "unknown key"),
    ],
)
def test_tag_settings_are_validated_naming_the_key(
    values: dict[str, object], key: str | None, words: str
) -> None:
    if key is None:
        build_config(values)
        return
    with pytest.raises(ConfigError) as caught:
        build_config(values)
    assert caught.value.key == key
    assert words in caught.value.message
