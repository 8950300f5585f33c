"""STATSYARD_* environment variables: conversion, precedence, and errors naming the variable."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from statsyard_agent._config import _SECTIONS, _TOP_KEYS, Address, build_config
from statsyard_agent._envconfig import load_layered_config, read_environment, variable_names
from statsyard_agent._exceptions import ConfigError


def test_every_config_key_has_exactly_one_variable() -> None:
    names = variable_names()
    keys = set(_TOP_KEYS) | {f"{s}.{k}" for s, ks in _SECTIONS.items() for k in ks}
    assert sorted(names.values()) == sorted(keys)  # no two keys share a variable name
    assert names["STATSYARD_FLUSH_INTERVAL"] == "flush_interval"
    assert names["STATSYARD_STORAGE_RETENTION"] == "storage.retention"
    assert names["STATSYARD_ENV_TAGS_ORCHESTRATOR"] == "env_tags.orchestrator"


@pytest.mark.parametrize(
    ("environ", "check"),
    [
        ({"STATSYARD_FLUSH_INTERVAL": "5"}, lambda c: c.flush_interval == 5),
        ({"STATSYARD_UDP": "0.0.0.0:9125"}, lambda c: c.udp == Address("0.0.0.0", 9125)),
        ({"STATSYARD_UDP": ""}, lambda c: c.udp is None),
        ({"STATSYARD_PERCENTILES": "90,99.9"}, lambda c: c.aggregator.percentiles == (90, 99.9)),
        ({"STATSYARD_IDLE_TTL": "2.5"}, lambda c: c.aggregator.idle_ttl == 2.5),
        ({"STATSYARD_SANITIZE_NAMES": "No"}, lambda c: c.parser.sanitize_names is False),
        ({"STATSYARD_STORAGE_FSYNC": "off"}, lambda c: c.storage.fsync is False),
        (
            {"STATSYARD_STORAGE_RETENTION": "1s:1h,1m:1d"},
            lambda c: [t.step for t in c.storage.retention] == [1, 60],
        ),
        ({"STATSYARD_SUPERVISOR_MAX_RESTARTS": " 9 "}, lambda c: c.supervisor.max_restarts == 9),
        ({"STATSYARD_LIMITS_MAX_TAGS": "7"}, lambda c: c.parser.max_tags == 7),
        (
            {"STATSYARD_TAGS": "env:prod, team:core,canary"},
            lambda c: c.tagging.static == (("canary", ""), ("env", "prod"), ("team", "core")),
        ),
        ({"STATSYARD_TAG_CARDINALITY": "high"}, lambda c: c.tagging.cardinality == "high"),
        (
            {"STATSYARD_PROMETHEUS_QUANTILES": "0.5, 0.99", "STATSYARD_PROMETHEUS_BUCKETS": "0.1,1,10"},
            lambda c: (c.prometheus.quantiles, c.prometheus.buckets) == ((0.5, 0.99), (0.1, 1.0, 10.0)),
        ),
        (
            {"STATSYARD_ENV_TAGS_LOW": "ns=POD_NAMESPACE,node=NODE_NAME"},
            lambda c: (
                [e for e in c.tagging.env if e[2] == "low"]
                == [("ns", "POD_NAMESPACE", "low"), ("node", "NODE_NAME", "low")]
            ),
        ),
        ({"STATSYARD_ENV_TAGS_ORCHESTRATOR": ""}, lambda c: all(e[2] == "low" for e in c.tagging.env)),
        (
            {
                "STATSYARD_UNIX": "/run/s.sock",
                "STATSYARD_UNIX_MODE": "0600",
                "STATSYARD_ORIGIN_DETECTION": "false",
            },
            lambda c: (
                (str(c.unix.path), c.unix.mode, c.unix.origin_detection) == ("/run/s.sock", 0o600, False)
            ),
        ),
    ],
)
def test_variables_set_their_keys(environ: dict[str, str], check: Any) -> None:
    assert check(load_layered_config(None, {}, environ))


@pytest.mark.parametrize(
    ("environ", "variable", "words"),
    [
        ({"STATSYARD_FLUSH_INTERVAL": "ten"}, "STATSYARD_FLUSH_INTERVAL", "whole number"),
        ({"STATSYARD_FLUSH_INTERVAL": ""}, "STATSYARD_FLUSH_INTERVAL", "whole number"),
        # converted fine, refused by the config's own validation: still named by the variable
        ({"STATSYARD_FLUSH_INTERVAL": "0"}, "STATSYARD_FLUSH_INTERVAL", ">= 1"),
        ({"STATSYARD_IDLE_TTL": "soon"}, "STATSYARD_IDLE_TTL", "a number"),
        ({"STATSYARD_SANITIZE_NAMES": "maybe"}, "STATSYARD_SANITIZE_NAMES", "true or false"),
        ({"STATSYARD_UDP": "localhost"}, "STATSYARD_UDP", "HOST:PORT"),
        ({"STATSYARD_STORAGE_RETENTION": "forever"}, "STATSYARD_STORAGE_RETENTION", ""),
        ({"STATSYARD_STORAGE_SCHEMAS": "x"}, "STATSYARD_STORAGE_SCHEMAS", "config file"),
        ({"STATSYARD_TAGS": "env:prod,bad tag"}, "STATSYARD_TAGS", "bad tag"),
        ({"STATSYARD_TAG_CARDINALITY": "medium"}, "STATSYARD_TAG_CARDINALITY", "low"),
        ({"STATSYARD_PROMETHEUS_QUANTILES": "0.5,high"}, "STATSYARD_PROMETHEUS_QUANTILES", "numbers"),
        ({"STATSYARD_PROMETHEUS_QUANTILES": "0.5,1.5"}, "STATSYARD_PROMETHEUS_QUANTILES", "1"),
        ({"STATSYARD_ENV_TAGS_LOW": "pod"}, "STATSYARD_ENV_TAGS_LOW", "tag=VARIABLE"),
        ({"STATSYARD_UNIX_MODE": "999"}, "STATSYARD_UNIX_MODE", "octal"),
        ({"STATSYARD_UNIX": "/" + "x" * 120}, "STATSYARD_UNIX", "107 bytes"),
        ({"STATSYARD_CONFIG": "/nonexistent/statsyard.toml"}, "STATSYARD_CONFIG", "not found"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(
    environ: dict[str, str], variable: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_layered_config(None, {}, environ)
    assert caught.value.key == variable
    assert words in caught.value.message


def test_precedence_flags_over_environment_over_file_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'flush_interval = 2\nprefix = "file"\nmax_series = 50\n'
        '[storage]\nretention = "1s:1h"\nfsync = false\n'
    )
    environ = {
        "STATSYARD_FLUSH_INTERVAL": "3",
        "STATSYARD_PREFIX": "env",
        "STATSYARD_STORAGE_RETENTION": "2s:1h",
    }
    flags = {"flush_interval": 4}
    config = load_layered_config(path, flags, environ)
    assert config.flush_interval == 4  # flag
    assert config.aggregator.prefix == "env"  # environment over file
    assert [str(t) for t in config.storage.retention] == ["2s:1h"]  # environment, in a section
    assert config.storage.fsync is False  # file, the section's other key kept
    assert config.aggregator.max_series == 50  # file
    assert config.aggregator.percentiles == build_config({}).aggregator.percentiles  # default


def test_a_flag_overriding_a_bad_variable_wins() -> None:
    config = load_layered_config(None, {"flush_interval": 7}, {"STATSYARD_FLUSH_INTERVAL": "0"})
    assert config.flush_interval == 7


def test_config_file_from_the_environment_and_flag_over_it(tmp_path: Path) -> None:
    env_file = tmp_path / "env.toml"
    env_file.write_text("flush_interval = 6\n")
    flag_file = tmp_path / "flag.toml"
    flag_file.write_text("flush_interval = 8\n")
    environ = {"STATSYARD_CONFIG": str(env_file)}
    assert load_layered_config(None, {}, environ).flush_interval == 6
    assert load_layered_config(flag_file, {}, environ).flush_interval == 8


def test_unknown_variables_are_ignored_and_typos_logged(caplog: pytest.LogCaptureFixture) -> None:
    environ = {
        # what Kubernetes injects for a Service named "statsyard" in the pod's namespace
        "STATSYARD_SERVICE_HOST": "10.0.0.7",
        "STATSYARD_SERVICE_PORT": "8125",
        "STATSYARD_SERVICE_PORT_STATSD": "8125",
        "STATSYARD_PORT": "udp://10.0.0.7:8125",
        "STATSYARD_PORT_8125_UDP": "udp://10.0.0.7:8125",
        "STATSYARD_PORT_8125_UDP_PROTO": "udp",
        "STATSYARD_PORT_8125_UDP_PORT": "8125",
        "STATSYARD_PORT_8125_UDP_ADDR": "10.0.0.7",
        "STATSYARD_INJECT_FAULTS": "",  # read by the fault injector, not config
        "STATSYARD_FLUSH_INTERVL": "5",  # a typo
        "OTHER_FLUSH_INTERVAL": "5",
    }
    assert read_environment(environ).ignored == ("STATSYARD_FLUSH_INTERVL",)
    with caplog.at_level(logging.WARNING):
        config = load_layered_config(None, {}, environ)
    assert config == build_config({})
    assert "ignoring STATSYARD_FLUSH_INTERVL" in caplog.text
    assert "SERVICE_HOST" not in caplog.text


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "statsyard_agent", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_command_refuses_a_bad_variable_by_name(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "STATSYARD_FLUSH_INTERVAL": "soon"}
    result = _cli("--udp", "127.0.0.1:0", "--http", "", "--data-dir", str(tmp_path / "d"), env=env)
    assert result.returncode == 2
    assert "STATSYARD_FLUSH_INTERVAL: expected a whole number, got 'soon'" in result.stderr
