"""Every config key with a bad value, refused at start with a message naming it, before the agent
touches the disk or binds a socket: through the start path of the command (``main``) for the
whole table, and through real processes for one case per source (file, flag, environment).

The value-level table lives in tests/test_config.py; this one is about *start*.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from statsyard_agent import _cli

from .conftest import ROOT

# (config file text, the key the error must name): at least one bad value for every key.
CASES: list[tuple[str, str]] = [
    ("data_dir = 3", "data_dir"),
    ('data_dir = ""', "data_dir"),
    ("flush_interval = 0", "flush_interval"),
    ("flush_interval = 2.5", "flush_interval"),
    ('flush_interval = "10"', "flush_interval"),
    ("forward = 5", "forward"),
    ('[[forward]]\nurl = "ftp://x"', "forward[0].url"),
    ('gauge_sign = "add"', "gauge_sign"),
    ('host_tag = "a b"', "host_tag"),
    ('http = "nope"', "http"),
    ('http = "::1:8126"', "http"),
    ("idle_ttl = -1", "idle_ttl"),
    ('log_level = "loud"', "log_level"),
    ("max_series = 0", "max_series"),
    ('origin_detection = "yes"', "origin_detection"),
    ("percentiles = [0]", "percentiles"),
    ("percentiles = [101]", "percentiles"),
    ('prefix = "a..b"', "prefix"),
    ("sanitize_names = 1", "sanitize_names"),
    ('tag_cardinality = "max"', "tag_cardinality"),
    ('tags = ["bad tag"]', "tags"),
    ('udp = "localhost"', "udp"),
    ('udp = "127.0.0.1:70000"', "udp"),
    ("udp_rcvbuf = 10", "udp_rcvbuf"),
    ('unix = "@abstract"', "unix"),
    ('unix_mode = "999"', "unix_mode"),
    ("writer_queue_max_batches = 0", "writer_queue_max_batches"),
    ("flush_intervall = 10", "flush_intervall"),
    ('storage = "fast"', "storage"),
    ('[storage]\nfsync = "always"', "storage.fsync"),
    ('[storage]\nretention = "banana"', "storage.retention"),
    ('[storage]\nretention = "10s:1d,15s:7d"', "storage.retention"),
    ('[[storage.schemas]]\npattern = "("\nretention = "10s:1d"', "storage.schemas[0].pattern"),
    ("[storage]\nxfiles_factor = 2", "storage.xfiles_factor"),
    ('[storage]\ncompression = "zstd"', "storage.compression"),
    ("[supervisor]\nmax_restarts = -1", "supervisor.max_restarts"),
    ("[supervisor]\nmax_seconds = 0", "supervisor.max_seconds"),
    ("[limits]\nmax_line_bytes = 10", "limits.max_line_bytes"),
    ("[limits]\nmax_name_bytes = 0", "limits.max_name_bytes"),
    ("[limits]\nmax_tag_bytes = 0", "limits.max_tag_bytes"),
    ("[limits]\nmax_tags = -1", "limits.max_tags"),
    ("[env_tags]\nlow = 5", "env_tags.low"),
    ('[env_tags]\nhigh = {"bad key" = "X"}', "env_tags.high"),
    ('[env_tags]\norchestrator = {pod = "1BAD"}', "env_tags.orchestrator"),
    ("[graphite]\nmax_series = 0", "graphite.max_series"),
    ("[graphite]\nmax_points = -1", "graphite.max_points"),
    ('[graphite]\nmax_find_results = "x"', "graphite.max_find_results"),
    ('[prometheus]\nbuckets = "x"', "prometheus.buckets"),
    ('[prometheus]\nenabled = "yes"', "prometheus.enabled"),
    ("[prometheus]\nmappings = 5", "prometheus.mappings"),
    ("[prometheus]\nmax_series = 0", "prometheus.max_series"),
    ('[prometheus]\nobserver_type = "x"', "prometheus.observer_type"),
    ("[prometheus]\nquantiles = [2]", "prometheus.quantiles"),
    ("[prometheus]\nsummary_max_age = -1", "prometheus.summary_max_age"),
    ("[prometheus]\nttl = -1", "prometheus.ttl"),
    ("[ingest]\nworkers = -1", "ingest.workers"),
    ("[ingest]\nworkers = 65", "ingest.workers"),
    ("[ingest]\nship_interval = 0", "ingest.ship_interval"),
    ("[ingest]\nship_timeout = 0", "ingest.ship_timeout"),
    ("flush_interval = ", "--config"),  # not TOML at all
]


@pytest.fixture
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """If a case were accepted, fail instead of running an agent."""

    def refuse_to_run(config: object) -> int:
        raise AssertionError(f"the config was accepted: {config}")

    monkeypatch.setattr(_cli, "_run", refuse_to_run)
    for name in list(os.environ):
        if name.startswith("STATSYARD_") and name != "STATSYARD_INJECT_FAULTS":
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_agent")
@pytest.mark.parametrize(("text", "key"), CASES, ids=[key for _, key in CASES])
def test_bad_config_is_refused_at_start_naming_the_key(
    text: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text + "\n")
    data = tmp_path / "data"
    status = _cli.main(["--config", str(config), *(["--data-dir", str(data)] if key != "data_dir" else [])])
    err = capsys.readouterr().err
    assert status == 2
    assert f"config error: {key}: " in err
    assert not data.exists()  # refused before touching the disk


def test_every_key_has_a_case() -> None:
    """A new config key needs a bad-value case in CASES above."""
    from statsyard_agent._config import _SECTIONS, _TOP_KEYS

    keys = set(_TOP_KEYS) | {f"{s}.{k}" for s, ks in _SECTIONS.items() for k in ks}
    named = {key.split("[")[0] for _, key in CASES}  # storage.schemas[0].pattern: the section key
    assert keys - named == set(), "add a bad value for these keys to CASES"


def test_real_processes_refuse_bad_values_from_each_source(tmp_path: Path) -> None:
    """File, flag and environment variable, each through a real process started at once."""
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("[storage]\nretention = '10s:1d,15s:7d'\n")
    base = [sys.executable, "-m", "statsyard_agent", "--udp", "127.0.0.1:0", "--http", "127.0.0.1:0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATSYARD_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    runs = {
        "storage.retention": (["--config", str(bad_file)], {}),
        "data_dir": (["--data-dir", ""], {}),
        "STATSYARD_FLUSH_INTERVAL": ([], {"STATSYARD_FLUSH_INTERVAL": "soon"}),
    }
    procs = {}
    for key, (args, extra) in runs.items():
        data = ["--data-dir", str(tmp_path / key)] if key != "data_dir" else []
        procs[key] = subprocess.Popen(
            [*base, *data, *args], env={**env, **extra}, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )
    for key, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 2, (key, err)
        assert f"config error: {key}" in err, (key, err)
        assert not (tmp_path / key).exists()
