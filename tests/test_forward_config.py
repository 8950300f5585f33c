"""Forwarding config: sink URLs, [[forward]] tables, --forward flags and STATSYARD_FORWARD."""

from __future__ import annotations

from pathlib import Path

import pytest

from statsyard_agent._cli import _overrides, build_parser
from statsyard_agent._config import build_config, load_config
from statsyard_agent._envconfig import load_layered_config
from statsyard_agent._exceptions import ConfigError
from statsyard_agent.forward import parse_forward


@pytest.mark.parametrize(
    ("url", "kind", "endpoints", "path", "name"),
    [
        ("graphite://127.0.0.1:2003", "graphite", [("127.0.0.1", 2003)], "", "graphite-127.0.0.1-2003"),
        ("graphite://carbon", "graphite", [("carbon", 2003)], "", "graphite-carbon-2003"),
        ("graphite://[::1]:2004/", "graphite", [("::1", 2004)], "", "graphite-__1-2004"),
        (
            "remote-write+http://vm:8428/api/v1/write",
            "remote_write",
            [("vm", 8428)],
            "/api/v1/write",
            "remote-write-vm-8428",
        ),
        (
            "remote-write+http://vminsert:8480/insert/42/prometheus/api/v1/write?extra_label=a=b",
            "remote_write",
            [("vminsert", 8480)],
            "/insert/42/prometheus/api/v1/write?extra_label=a=b",
            "remote-write-vminsert-8480",
        ),
        (
            "REMOTE-WRITE+HTTP://mimir",
            "remote_write",
            [("mimir", 80)],
            "/api/v1/write",
            "remote-write-mimir-80",
        ),
        (
            "statsd://10.0.0.1:8125,10.0.0.2",
            "statsd",
            [("10.0.0.1", 8125), ("10.0.0.2", 8125)],
            "",
            "statsd-10.0.0.1-8125",
        ),
    ],
)
def test_urls(url: str, kind: str, endpoints: list[tuple[str, int]], path: str, name: str) -> None:
    (sink,) = parse_forward([url])
    assert (sink.kind, list(sink.endpoints), sink.path, sink.name) == (kind, endpoints, path, name)
    assert sink.spooled is (kind != "statsd")


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("http://x:1", "forward[0].url"),
        (["graphite:/x:1"], "forward[0].url"),
        (["graphite://x:0"], "forward[0].url"),
        (["graphite://x:70000"], "forward[0].url"),
        (["graphite://x y:1"], "forward[1].url"),  # whitespace splits a string into two URLs
        (["statsd://a:1,a:1"], "forward[0].url"),
        ([{"name": "x"}], "forward[0].url"),
        ([{"url": 3}], "forward[0].url"),
        ([3], "forward[0]"),
        ({"url": "graphite://x"}, "forward"),
        ([{"url": "graphite://x", "timeout": 0}], "forward[0].timeout"),
        ([{"url": "graphite://x", "timeout": "5s"}], "forward[0].timeout"),
        ([{"url": "graphite://x", "name": "a/b"}], "forward[0].name"),
        ([{"url": "graphite://x", "name": ""}], "forward[0].name"),
        ([{"url": "graphite://x", "spool_max_bytes": 1000}], "forward[0].spool_max_bytes"),
        ([{"url": "graphite://x", "spool_max_bytes": 1.5e9}], "forward[0].spool_max_bytes"),
        ([{"url": "graphite://x", "max_points_per_send": 0}], "forward[0].max_points_per_send"),
        ([{"url": "graphite://x", "backoff_initial": 2, "backoff_max": 1}], "forward[0].backoff_max"),
        ([{"url": "graphite://x", "self_metrics": "yes"}], "forward[0].self_metrics"),
        ([{"url": "graphite://x", "fsync": 1}], "forward[0].fsync"),
        ([{"url": "graphite://x", "max_lag": -1}], "forward[0].max_lag"),
        ([{"url": "graphite://x", "tags": {"a": "b"}}], "forward[0].tags"),
        ([{"url": "graphite://x", "tags": ["a b"]}], "forward[0].tags"),
        ([{"url": "graphite://x", "headers": {"A": "b"}}], "forward[0].headers"),
        ([{"url": "remote-write+http://x", "headers": {"Bad Name": "b"}}], "forward[0].headers.Bad Name"),
        ([{"url": "remote-write+http://x", "headers": {"A": 1}}], "forward[0].headers.A"),
        ([{"url": "statsd://x", "spool_max_bytes": 1 << 20}], "forward[0].spool_max_bytes"),
        ([{"url": "statsd://x", "self_metrics": True}], "forward[0].self_metrics"),
        ([{"url": "statsd://x", "max_datagram": 10}], "forward[0].max_datagram"),
        ([{"url": "graphite://x", "max_datagram": 512}], "forward[0].max_datagram"),
        ([{"url": "graphite://x", "colour": "red"}], "forward[0].colour"),
        (["graphite://x", "graphite://x:2003"], "forward[1].name"),
    ],
)
def test_bad_values_name_the_key(value: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"forward": value})
    assert info.value.key == key


def test_a_table_sets_every_option() -> None:
    (sink,) = build_config(
        {
            "forward": [
                {
                    "url": "remote-write+http://127.0.0.1:8428/api/v1/write",
                    "name": "vm",
                    "tags": ["instance:web-01", "canary"],
                    "self_metrics": True,
                    "spool_max_bytes": 1 << 20,
                    "fsync": False,
                    "max_points_per_send": 500,
                    "timeout": 2.5,
                    "backoff_initial": 0.1,
                    "backoff_max": 3,
                    "max_lag": 0,
                    "shutdown_grace": 1,
                    "headers": {"X-Scope-OrgID": "t1"},
                }
            ]
        }
    ).forward
    assert sink.name == "vm"
    assert sink.tags == (("canary", "true"), ("instance", "web-01"))
    assert sink.headers == (("X-Scope-OrgID", "t1"),)
    assert (sink.self_metrics, sink.spool_max_bytes, sink.fsync, sink.max_points_per_send) == (
        True,
        1 << 20,
        False,
        500,
    )
    assert (sink.timeout, sink.backoff_initial, sink.backoff_max, sink.max_lag, sink.shutdown_grace) == (
        2.5,
        0.1,
        3.0,
        0.0,
        1.0,
    )


def test_no_sinks_by_default() -> None:
    assert build_config({}).forward == ()


def test_flags_add_sinks_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[forward]]\nurl = "graphite://a:2003"\nname = "file"\nmax_lag = 60\n')
    args = build_parser().parse_args(
        ["--forward", "statsd://b:8125,c:8125", "--forward", "remote-write+http://d:8428/api/v1/write"]
    )
    sinks = load_config(path, _overrides(args)).forward
    assert [(s.name, s.kind) for s in sinks] == [
        ("file", "graphite"),
        ("statsd-b-8125", "statsd"),
        ("remote-write-d-8428", "remote_write"),
    ]
    assert sinks[0].max_lag == 60


def test_run_subcommand_takes_the_flag_too() -> None:
    args = build_parser().parse_args(["run", "--forward", "graphite://a:1"])
    assert _overrides(args)["forward"] == ["graphite://a:1"]


def test_environment_variable_holds_urls_separated_by_spaces(tmp_path: Path) -> None:
    config = load_layered_config(
        None,
        {},
        {
            "STATSYARD_FORWARD": "graphite://a:2003 remote-write+http://b:8428/api/v1/write",
            "STATSYARD_DATA_DIR": str(tmp_path),
        },
    )
    assert [s.kind for s in config.forward] == ["graphite", "remote_write"]


def test_environment_error_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_layered_config(None, {}, {"STATSYARD_FORWARD": "ftp://a"})
    assert info.value.key == "STATSYARD_FORWARD"
