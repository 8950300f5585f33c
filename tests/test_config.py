"""Config: defaults, file + flag precedence, and every bad key refused with its name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from statsyard_agent._cli import _overrides, build_parser
from statsyard_agent._config import EXAMPLE_CONFIG, Address, build_config, load_config
from statsyard_agent._exceptions import ConfigError


def test_defaults_match_the_documented_ones() -> None:
    config = build_config({})
    assert config.udp == Address("127.0.0.1", 8125)
    assert config.http == Address("127.0.0.1", 8126)
    assert config.data_dir == Path("statsyard-data")
    assert config.flush_interval == 10
    assert config.aggregator.percentiles == (90.0,)
    assert config.aggregator.idle_ttl == 300
    assert config.aggregator.max_series == 100_000
    assert [str(t) for t in config.storage.retention] == ["10s:7d", "1m:90d", "1h:2y"]
    assert (config.supervisor.max_restarts, config.supervisor.max_seconds) == (5, 30)


def test_example_config_is_valid_and_equals_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(EXAMPLE_CONFIG)
    assert load_config(path, {}) == build_config({})


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('flush_interval = 5\nudp = "127.0.0.1:9000"\n[storage]\nfsync = false\n')
    config = load_config(path, {"flush_interval": 2, "storage.retention": "1s:1h,10s:1d"})
    assert config.flush_interval == 2
    assert config.udp == Address("127.0.0.1", 9000)
    assert config.storage.fsync is False
    assert [t.step for t in config.storage.retention] == [1, 10]


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"flush_intervall": 10}, "flush_intervall"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"flush_interval": 2.5}, "flush_interval"),
        ({"flush_interval": "10"}, "flush_interval"),
        ({"flush_interval": True}, "flush_interval"),
        ({"udp": "localhost"}, "udp"),
        ({"udp": "127.0.0.1:70000"}, "udp"),
        ({"udp": 8125}, "udp"),
        ({"http": "::1:8126"}, "http"),
        ({"percentiles": [0]}, "percentiles"),
        ({"percentiles": [101]}, "percentiles"),
        ({"percentiles": "90,abc"}, "percentiles"),
        ({"percentiles": {"a": 1}}, "percentiles"),
        ({"log_level": "verbose"}, "log_level"),
        ({"gauge_sign": "add"}, "gauge_sign"),
        ({"idle_ttl": -1}, "idle_ttl"),
        ({"max_series": 0}, "max_series"),
        ({"max_series": 1.5}, "max_series"),
        ({"udp_rcvbuf": 10}, "udp_rcvbuf"),
        ({"sanitize_names": "yes"}, "sanitize_names"),
        ({"prefix": "stats..x"}, "prefix"),
        ({"data_dir": 3}, "data_dir"),
        ({"data_dir": ""}, "data_dir"),
        ({"data_dir": "  "}, "data_dir"),
        ({"unix": "@abstract"}, "unix"),
        ({"unix_mode": "999"}, "unix_mode"),
        ({"origin_detection": "yes"}, "origin_detection"),
        ({"tags": ["bad tag"]}, "tags"),
        ({"tag_cardinality": "max"}, "tag_cardinality"),
        ({"host_tag": "a b"}, "host_tag"),
        ({"env_tags": {"low": 5}}, "env_tags.low"),
        ({"graphite": {"max_series": 0}}, "graphite.max_series"),
        ({"forward": 5}, "forward"),
        ({"writer_queue_max_batches": 0}, "writer_queue_max_batches"),
        ({"storage": {"retention": "10s:1d,15s:7d"}}, "storage.retention"),
        ({"storage": {"retention": "1m:1d,10s:7d"}}, "storage.retention"),
        ({"storage": {"retention": "banana"}}, "storage.retention"),
        ({"storage": {"fsync": "always"}}, "storage.fsync"),
        ({"storage": {"xfiles_factor": 2}}, "storage.xfiles_factor"),
        ({"storage": {"compression": "zstd"}}, "storage.compression"),
        ({"storage": {"schemas": [{"pattern": "(", "retention": "10s:1d"}]}},
         "storage.schemas[0].pattern"),
        ({"storage": {"schemas": [{"pattern": "x", "retention": "1d:1s"}]}},
         "storage.schemas[0].retention"),
        ({"storage": {"schemas": [{"pattern": "x"}]}}, "storage.schemas[0]"),
        ({"storage": "fast"}, "storage"),
        ({"supervisor": {"max_restarts": -1}}, "supervisor.max_restarts"),
        ({"supervisor": {"max_seconds": 0}}, "supervisor.max_seconds"),
        ({"supervisor": {"intensity": 3}}, "supervisor.intensity"),
        ({"limits": {"max_tags": -1}}, "limits.max_tags"),
        ({"limits": {"max_line_bytes": 10}}, "limits.max_line_bytes"),
    ],
)
def test_bad_values_are_refused_naming_the_key(values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(values)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_ipv6_and_disabled_listeners() -> None:
    config = build_config({"udp": "[::1]:0", "http": ""})
    assert config.udp == Address("::1", 0)
    assert config.http is None


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "statsyard_agent", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("flush_interval = 10\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage]\nretention = '10s:1d,15s:7d'\n")
    broken = tmp_path / "broken.toml"
    broken.write_text("flush_interval = \n")

    ok = _cli("check-config", str(good))
    assert ok.returncode == 0, ok.stderr
    refused = _cli("check-config", str(bad))
    assert refused.returncode == 2
    assert "storage.retention" in refused.stderr
    not_toml = _cli("check-config", str(broken))
    assert not_toml.returncode == 2
    assert "not valid TOML" in not_toml.stderr
    missing = _cli("check-config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert "file not found" in missing.stderr


def test_udp_rcvbuf_flag_sets_the_key_and_a_too_small_one_is_refused() -> None:
    args = build_parser().parse_args(["--udp-rcvbuf", "65536", "--ingest-workers", "1"])
    overrides = _overrides(args)
    assert overrides == {"udp_rcvbuf": 65536, "ingest.workers": 1}
    assert load_config(None, overrides).udp_rcvbuf == 65536
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"udp_rcvbuf": 100})
    assert caught.value.key == "udp_rcvbuf"


def test_help_lists_every_flag_and_command() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for word in ("--udp", "--http", "--data-dir", "--flush-interval", "--percentiles",
                 "--log-level", "--config", "query", "check-config", "storage verify"):
        assert word in result.stdout
    query_help = _cli("query", "--help")
    for word in ("--from", "--until", "--format", "--tag", "--max-points"):
        assert word in query_help.stdout
