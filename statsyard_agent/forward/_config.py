"""Forwarding configuration: the ``[[forward]]`` tables and the ``--forward URL`` flag.

Each entry names one sink by URL (the scheme picks the protocol) plus optional tuning keys::

    graphite://HOST[:PORT]                      Graphite plaintext over TCP (default port 2003)
    remote-write+http://HOST[:PORT][/PATH]      Prometheus remote write 1.0 (default path
                                                /api/v1/write, default port 80)
    statsd://HOST[:PORT][,HOST[:PORT]...]       StatsD relay, sharded by metric name (port 8125)

A flag's URL is the same as a table holding only ``url``. Every value is validated here, once; a
bad one raises :class:`ConfigError` naming the key (``forward[1].timeout``).
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from statsyard_agent._exceptions import ConfigError
from statsyard_agent._types import Tags

SinkKind = Literal["graphite", "remote_write", "statsd"]

_SCHEMES: dict[str, SinkKind] = {
    "graphite": "graphite",
    "remote-write+http": "remote_write",
    "statsd": "statsd",
}
_DEFAULT_PORTS: dict[SinkKind, int] = {"graphite": 2003, "remote_write": 80, "statsd": 8125}
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

#: Keys every sink accepts, and those only some kinds accept.
_COMMON_KEYS = {"url", "name"}
_BATCH_KEYS = {
    "max_lag",
    "tags",
    "self_metrics",
    "spool_max_bytes",
    "fsync",
    "max_points_per_send",
    "timeout",
    "backoff_initial",
    "backoff_max",
    "shutdown_grace",
}
_KIND_KEYS: dict[SinkKind, set[str]] = {
    "graphite": _COMMON_KEYS | _BATCH_KEYS,
    "remote_write": _COMMON_KEYS | _BATCH_KEYS | {"headers"},
    "statsd": _COMMON_KEYS | {"max_datagram"},
}


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """One upstream sink.

    ``endpoints`` holds one ``(host, port)`` for Graphite and remote write, one or more for the
    StatsD relay (the hash ring's members, in the given order). ``path`` is the remote-write
    request target (path plus query). ``tags`` are added to every forwarded series (a sink's
    own tags win over a series' tag of the same name). ``max_lag`` seconds: ``/healthz`` is
    degraded while the oldest unsent point is older than that (0 turns the check off).
    ``shutdown_grace`` seconds: at shutdown, what is spooled is sent for up to that long (the
    rest waits on disk for the next start).
    """

    name: str
    kind: SinkKind
    url: str
    endpoints: tuple[tuple[str, int], ...]
    path: str = "/api/v1/write"
    headers: tuple[tuple[str, str], ...] = ()
    tags: Tags = ()
    self_metrics: bool = False
    spool_max_bytes: int = 256 << 20
    fsync: bool = True
    max_points_per_send: int = 2000
    timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_lag: float = 300.0
    shutdown_grace: float = 5.0
    max_datagram: int = 1432

    @property
    def spooled(self) -> bool:
        """True for the sinks with a disk spool (all but the StatsD relay)."""
        return self.kind != "statsd"


def _host_port(text: str, default_port: int, key: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([A-Za-z0-9_.-]+)(?::(\d+))?", text)
    if not match:
        raise ConfigError(key, f"expected HOST[:PORT], got {text!r}")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    port = int(port_text) if port_text else default_port
    if not 0 < port < 65536:
        raise ConfigError(key, f"port {port} is out of range 1..65535")
    return host, port


def parse_url(url: object, key: str) -> tuple[SinkKind, tuple[tuple[str, int], ...], str]:
    """Split a sink URL into ``(kind, endpoints, path)``; raise ConfigError naming ``key``."""
    if not isinstance(url, str):
        raise ConfigError(key, f"expected a URL string, got {url!r}")
    scheme, sep, rest = url.partition("://")
    kind = _SCHEMES.get(scheme.lower()) if sep else None
    if kind is None:
        raise ConfigError(
            key,
            f"expected graphite://HOST:PORT, remote-write+http://HOST:PORT/PATH "
            f"or statsd://HOST:PORT,HOST:PORT; got {url!r}",
        )
    default_port = _DEFAULT_PORTS[kind]
    if kind == "remote_write":
        parts = urllib.parse.urlsplit("http://" + rest)
        if parts.fragment or not parts.netloc:
            raise ConfigError(key, f"expected remote-write+http://HOST:PORT/PATH, got {url!r}")
        endpoint = _host_port(parts.netloc, default_port, key)
        path = (parts.path or "/api/v1/write") + (f"?{parts.query}" if parts.query else "")
        return kind, (endpoint,), path
    rest = rest.rstrip("/")
    if kind == "graphite":
        return kind, (_host_port(rest, default_port, key),), ""
    endpoints = tuple(_host_port(item.strip(), default_port, key) for item in rest.split(","))
    if len(set(endpoints)) != len(endpoints):
        raise ConfigError(key, f"an upstream is listed twice in {url!r}")
    return kind, endpoints, ""


def _default_name(kind: SinkKind, endpoints: Sequence[tuple[str, int]]) -> str:
    host, port = endpoints[0]
    stem = {"graphite": "graphite", "remote_write": "remote-write", "statsd": "statsd"}[kind]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{stem}-{host}-{port}")[:64]


def _seconds(value: object, key: str, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(key, f"expected a number of seconds, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum:g}, got {value!r}")
    return float(value)


def _integer(value: object, key: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected a whole number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(key, f"must be {bound}, got {value!r}")
    return value


def _string_table(value: object, key: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f'expected a table of strings like {{ X-Scope-OrgID = "a" }}, got {value!r}')
    for k, v in value.items():
        if not isinstance(v, str) or not k:
            raise ConfigError(f"{key}.{k}", f"expected a string, got {v!r}")
    return tuple(sorted((str(k), v) for k, v in value.items()))


def _tags(value: object, key: str) -> Tags:
    """``["KEY:VALUE", ...]`` (the form of the agent-wide ``tags``); a bare KEY is ``KEY:true``."""
    if not isinstance(value, list):
        raise ConfigError(key, f'expected a list like ["instance:web-01"], got {value!r}')
    tags: dict[str, str] = {}
    for item in value:
        if not isinstance(item, str) or not re.fullmatch(r"[^\s:,|;]+(:[^\s,|;]*)?", item):
            raise ConfigError(key, f"bad tag {item!r}: want KEY:VALUE without spaces, ',', '|' or ';'")
        name, _, text = item.partition(":")
        tags[name] = text or "true"
    return tuple(sorted(tags.items()))


def parse_sink(entry: object, key: str) -> SinkConfig:
    """Validate one ``[[forward]]`` table (or a bare URL string from ``--forward``)."""
    table: Mapping[str, object] = (
        {"url": entry} if isinstance(entry, str) else (entry if isinstance(entry, Mapping) else {})
    )
    if not table:
        raise ConfigError(key, f"expected a table with a url (or a URL string), got {entry!r}")
    if "url" not in table:
        raise ConfigError(f"{key}.url", "missing: every [[forward]] table needs a url")
    kind, endpoints, path = parse_url(table["url"], f"{key}.url")
    allowed = _KIND_KEYS[kind]
    for item in table:
        if item not in allowed:
            raise ConfigError(
                f"{key}.{item}", f"unknown key for a {kind} sink; known keys: {', '.join(sorted(allowed))}"
            )
    defaults = SinkConfig("", kind, "", endpoints)
    name: object = table.get("name", _default_name(kind, endpoints))
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{key}.name",
            f"expected 1-64 characters of [A-Za-z0-9_.-] (it names the spool directory), got {name!r}",
        )
    self_metrics = table.get("self_metrics", defaults.self_metrics)
    fsync = table.get("fsync", defaults.fsync)
    for flag, value in (("self_metrics", self_metrics), ("fsync", fsync)):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}.{flag}", f"expected true or false, got {value!r}")
    backoff_initial = _seconds(
        table.get("backoff_initial", defaults.backoff_initial), f"{key}.backoff_initial", minimum=0.001
    )
    backoff_max = _seconds(
        table.get("backoff_max", defaults.backoff_max), f"{key}.backoff_max", minimum=0.001
    )
    if backoff_max < backoff_initial:
        raise ConfigError(
            f"{key}.backoff_max", f"must be >= backoff_initial ({backoff_initial:g}), got {backoff_max:g}"
        )
    headers = _string_table(table.get("headers", {}), f"{key}.headers")
    for header, value in headers:
        if not re.fullmatch(r"[A-Za-z0-9-]+", header) or "\n" in value or "\r" in value:
            raise ConfigError(f"{key}.headers.{header}", "not a valid HTTP header name or value")
    return SinkConfig(
        name=name,
        kind=kind,
        url=str(table["url"]),
        endpoints=endpoints,
        path=path,
        headers=headers,
        tags=_tags(table.get("tags", []), f"{key}.tags"),
        self_metrics=bool(self_metrics),
        spool_max_bytes=_integer(
            table.get("spool_max_bytes", defaults.spool_max_bytes), f"{key}.spool_max_bytes", minimum=64 << 10
        ),
        fsync=bool(fsync),
        max_points_per_send=_integer(
            table.get("max_points_per_send", defaults.max_points_per_send),
            f"{key}.max_points_per_send",
            minimum=1,
            maximum=1_000_000,
        ),
        timeout=_seconds(table.get("timeout", defaults.timeout), f"{key}.timeout", minimum=0.1),
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        max_lag=_seconds(table.get("max_lag", defaults.max_lag), f"{key}.max_lag", minimum=0),
        shutdown_grace=_seconds(
            table.get("shutdown_grace", defaults.shutdown_grace), f"{key}.shutdown_grace", minimum=0
        ),
        max_datagram=_integer(
            table.get("max_datagram", defaults.max_datagram), f"{key}.max_datagram", minimum=64, maximum=65507
        ),
    )


def parse_forward(value: object, key: str = "forward") -> tuple[SinkConfig, ...]:
    """Validate the ``forward`` array (tables and/or URL strings); names must be unique.

    A string (``STATSYARD_FORWARD``, or an item of the array) may hold several URLs separated
    by whitespace.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(key, "expected an array of tables [[forward]] (or --forward URL flags)")
    entries: list[object] = []
    for entry in value:
        entries.extend(entry.split() if isinstance(entry, str) else [entry])
    sinks = tuple(parse_sink(entry, f"{key}[{i}]") for i, entry in enumerate(entries))
    seen: set[str] = set()
    for i, sink in enumerate(sinks):
        if sink.name in seen:
            raise ConfigError(
                f"{key}[{i}].name", f"sink name {sink.name!r} is used twice; give each sink its own name"
            )
        seen.add(sink.name)
    return sinks
