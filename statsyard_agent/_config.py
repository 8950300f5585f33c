"""One immutable agent configuration: embedded defaults < TOML file < command-line flags.

Every value is validated once, here, at start; a bad one raises :class:`ConfigError` naming the key.
Each component later receives only its own slice (``parser``, ``aggregator``, ``storage`` ...).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._aggregate import AggregatorConfig
from ._exceptions import ConfigError
from ._graphite import GraphiteConfig, parse_graphite_config
from ._promexport import PromExportConfig, parse_prometheus_config
from ._protocol import ParserConfig
from ._types import Tags
from .forward._config import SinkConfig, parse_forward
from .storage import DEFAULT_RETENTION, StorageConfig, parse_retention

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Address:
    """A ``HOST:PORT`` to bind; port 0 asks the kernel for a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """OTP-style restart intensity: more than ``max_restarts`` in ``max_seconds`` escalates."""

    max_restarts: int = 5
    max_seconds: float = 30.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """UDP receive workers (:mod:`statsyard_agent._workers`). ``workers`` processes read their
    own ``SO_REUSEPORT`` socket on the UDP port and pre-aggregate; 0 receives on the event loop.
    Each worker ships its partial aggregate every ``ship_interval`` seconds (and before each
    flush), which bounds what a killed worker can lose; one that does not answer within
    ``ship_timeout`` seconds is killed and restarted."""

    workers: int = 2
    ship_interval: float = 1.0
    ship_timeout: float = 10.0


#: Socket paths longer than this do not fit ``sockaddr_un.sun_path`` (108 bytes with the NUL).
MAX_UNIX_PATH_BYTES = 107


@dataclass(frozen=True, slots=True)
class UnixConfig:
    """The Unix datagram listener (DogStatsD style). ``path`` None disables it; ``mode`` is set
    on the socket file after bind; ``origin_detection`` tags each datagram's series with where its
    sender runs (SO_PASSCRED pid -> /proc), see :mod:`statsyard_agent._origin`."""

    path: Path | None = None
    mode: int = 0o660
    origin_detection: bool = True


#: Tag cardinality levels, lowest first; a level allows its own tags and every lower level's.
CARDINALITIES = ("low", "orchestrator", "high")

#: ``(tag key, environment variable, cardinality)``: the Kubernetes Downward API names.
DEFAULT_ENV_TAGS: tuple[tuple[str, str, str], ...] = (
    ("kube_namespace", "POD_NAMESPACE", "low"),
    ("kube_node", "NODE_NAME", "low"),
    ("pod_name", "POD_NAME", "orchestrator"),
    ("pod_uid", "POD_UID", "orchestrator"),
)


@dataclass(frozen=True, slots=True)
class TagsConfig:
    """Tags the agent adds to every series (see :mod:`statsyard_agent._tags`).

    ``static``: from the config, always added. ``host``: ``""`` (none, the default: a local
    TSDB holds one host's data, and a new tag would split every existing series), ``"auto"``
    (this machine's name) or a fixed name. ``env``: ``(tag, variable, cardinality)`` read at start.
    ``cardinality``: the highest level allowed, for these and for the Unix socket's origin tags.
    """

    static: Tags = ()
    cardinality: str = "low"
    host: str = ""
    env: tuple[tuple[str, str, str], ...] = DEFAULT_ENV_TAGS


@dataclass(frozen=True, slots=True)
class AgentConfig:
    udp: Address | None = Address("127.0.0.1", 8125)
    http: Address | None = Address("127.0.0.1", 8126)
    data_dir: Path = Path("statsyard-data")
    flush_interval: int = 10
    log_level: str = "info"
    udp_rcvbuf: int = 8 * 1024 * 1024
    writer_queue_max_batches: int = 360
    parser: ParserConfig = field(default_factory=ParserConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    unix: UnixConfig = field(default_factory=UnixConfig)
    tagging: TagsConfig = field(default_factory=TagsConfig)
    forward: tuple[SinkConfig, ...] = ()
    graphite: GraphiteConfig = field(default_factory=GraphiteConfig)
    prometheus: PromExportConfig = field(default_factory=PromExportConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)


# The accepted keys: top level and per section. Each maps to a converter that raises ConfigError.
_TOP_KEYS = {
    "udp",
    "http",
    "data_dir",
    "flush_interval",
    "percentiles",
    "log_level",
    "prefix",
    "gauge_sign",
    "idle_ttl",
    "max_series",
    "udp_rcvbuf",
    "sanitize_names",
    "writer_queue_max_batches",
    "unix",
    "unix_mode",
    "origin_detection",
    "tags",
    "tag_cardinality",
    "host_tag",
    "forward",
}
_SECTIONS = {
    "storage": {"retention", "fsync", "xfiles_factor", "schemas"},
    "supervisor": {"max_restarts", "max_seconds"},
    "limits": {"max_line_bytes", "max_name_bytes", "max_tags", "max_tag_bytes"},
    "env_tags": set(CARDINALITIES),
    "graphite": {"max_series", "max_points", "max_find_results"},
    "ingest": {"workers", "ship_interval", "ship_timeout"},
    "prometheus": {"enabled", "observer_type", "quantiles", "buckets", "summary_max_age", "max_series",
                   "ttl", "mappings"},
}

EXAMPLE_CONFIG = f"""\
# statsyard-agent configuration (TOML). Every key is optional; flags override the file.
udp = "127.0.0.1:8125"          # StatsD/DogStatsD UDP listener; "" disables it; port 0 = any free port
http = "127.0.0.1:8126"         # /metrics, /healthz; "" disables it
data_dir = "./statsyard-data"
flush_interval = 10             # seconds, a whole number >= 1; flushes align to multiples of it
percentiles = [90]              # timer percentiles (Etsy percentThreshold); -10 gives lower_top10
prefix = "stats"                # series prefix, Etsy graphite backend style
gauge_sign = "delta"            # "delta": g:+5 adds (Etsy); "set": g:+5 sets 5 (DogStatsD clients)
idle_ttl = 300                  # seconds a silent series is still emitted, then forgotten
max_series = 100000             # cardinality guard: new series beyond it are refused and counted
udp_rcvbuf = 8388608            # SO_RCVBUF asked for (the kernel may grant less)
sanitize_names = true           # Etsy keyNameSanitize
log_level = "info"              # debug | info | warning | error
writer_queue_max_batches = 360  # flushed batches buffered while the disk fails (drop-oldest, counted)
unix = ""                       # Unix datagram socket path (DogStatsD style); "" disables it
unix_mode = "0660"              # permissions of the socket file (octal)
origin_detection = true         # tag Unix-socket series with the sender's process/pod/container
tags = []                       # on every series, e.g. ["env:prod", "team:core"]
tag_cardinality = "low"         # low | orchestrator (+ pod name/uid) | high (+ container id)
host_tag = ""                   # host:NAME on every series: "auto" = this machine's name, "" = none

[storage]
retention = "{DEFAULT_RETENTION}"  # Whisper-style tiers step:keep
fsync = true
xfiles_factor = 0.0
# [[storage.schemas]]           # per-pattern retention, first match wins (carbon storage-schemas)
# pattern = "^stats\\\\.timers\\\\."
# retention = "10s:1d,1m:30d"

[supervisor]
max_restarts = 5                # more than this many task restarts ...
max_seconds = 30                # ... within this many seconds: final flush, exit non-zero

[limits]
max_line_bytes = 8192
max_name_bytes = 1024
max_tags = 100
max_tag_bytes = 512

[graphite]                      # the Graphite render API (/render, /metrics/find, /tags ...) and dashboard
max_series = 10000              # series one request may select (413 beyond)
max_points = 5000000            # points one request may return (413 beyond)
max_find_results = 100000       # tree nodes one /metrics/find may return

[prometheus]                    # GET /metrics/statsd: the StatsD data itself for Prometheus (opt-in)
enabled = false
observer_type = "summary"       # timers/histograms/distributions as "summary" or "histogram"
quantiles = [0.5, 0.9, 0.99]    # summary quantiles, over the last summary_max_age seconds
summary_max_age = 600
buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]  # histogram bounds (timers: s)
max_series = 100000             # StatsD series exposed at most (the rest counted, not exposed)
ttl = 0                         # seconds after which a silent series is dropped; 0 = keep
# [[prometheus.mappings]]       # first match wins (statsd_exporter style); $1.. = what * matched
# match = "api.*.requests"      # glob on the StatsD name ('*' = one dot-free part), or a regex
# match_type = "glob"           # glob | regex
# match_metric_type = "counter" # optional: counter gauge timer histogram distribution set
# name = "api_requests"         # the Prometheus name (counters get _total)
# labels = {{ endpoint = "$1" }}
# action = "map"                # map | drop
# observer_type = "histogram"   # optional, for timers
[ingest]                        # UDP receive worker processes (SO_REUSEPORT); README "Performance"
workers = 2                     # processes parsing and pre-aggregating UDP; 0 = on the event loop
ship_interval = 1.0             # seconds between partial aggregates shipped (bounds a crash's loss)
ship_timeout = 10.0             # seconds a worker may take to ship before it is killed and restarted

[env_tags]                      # tag = "ENVIRONMENT_VARIABLE" (Kubernetes Downward API), per cardinality
low = {{ kube_namespace = "POD_NAMESPACE", kube_node = "NODE_NAME" }}
orchestrator = {{ pod_name = "POD_NAME", pod_uid = "POD_UID" }}
high = {{}}

# Forwarding to the engines a fleet runs (docs/scale-out.md): one [[forward]] table per sink, or
# --forward URL on the command line (adds a sink with the defaults below).
# [[forward]]
# url = "remote-write+http://127.0.0.1:8428/api/v1/write"  # or graphite://HOST:2003,
#                                 # or statsd://HOST:8125,HOST:8125 (relay, sharded by name)
# name = "vm"                     # the sink label and spool directory (default from the url)
# tags = ["instance:web-01"]      # added to every forwarded series (not to the local store)
# self_metrics = false            # forward the agent's own /metrics too
# spool_max_bytes = 268435456     # on-disk spool bound; beyond it the oldest is dropped (counted)
# fsync = true                    # fsync each spooled batch
# max_points_per_send = 2000      # points per request / connection
# timeout = 10                    # seconds per send
# backoff_initial = 0.5           # retry delay doubling up to backoff_max (with jitter)
# backoff_max = 30
# max_lag = 300                   # /healthz degraded while the oldest unsent point is older; 0 = off
# shutdown_grace = 5              # at shutdown, seconds to send what is spooled (the rest waits)
# headers = {{ X-Scope-OrgID = "team-a" }}  # remote write only: extra HTTP headers
# max_datagram = 1432             # statsd relay only: bytes per datagram upstream
"""


def parse_address(value: object, key: str) -> Address | None:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``; an empty string disables the listener."""
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string like '127.0.0.1:8125', got {value!r}")
    if value == "":
        return None
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
    if not match:
        raise ConfigError(key, f"expected HOST:PORT (e.g. '127.0.0.1:8125'), got {value!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ConfigError(key, f"port {port} is out of range 0..65535")
    return Address(host, port)


def _number(value: object, key: str, *, minimum: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(key, f"must be a number >= {minimum:g}, got {value!r}")
    if integer and value != int(value):
        raise ConfigError(key, f"must be a whole number, got {value!r}")
    return value


def _int(value: object, key: str, *, minimum: int) -> int:
    return int(_number(value, key, minimum=minimum, integer=True))


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def _percentiles(value: object, key: str) -> tuple[float, ...]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            items: list[object] = [float(p) for p in parts]
        except ValueError:
            raise ConfigError(key, f"expected numbers like '90,99', got {value!r}") from None
    elif isinstance(value, list):
        items = list(value)
    else:
        raise ConfigError(key, f"expected a list like [90, 99], got {value!r}")
    result = []
    for item in items:
        pct = _number(item, key, minimum=-100.0)
        if pct == 0 or pct > 100:
            raise ConfigError(key, f"each percentile must be in -100..100 and not 0, got {item!r}")
        result.append(float(pct))
    return tuple(dict.fromkeys(result))


def _choice(value: object, key: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(key, f"expected one of {', '.join(choices)}, got {value!r}")
    return value.lower()


def _string(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def _schemas(value: object, key: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(value, list):
        raise ConfigError(key, "expected an array of tables [[storage.schemas]]")
    result = []
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"pattern", "retention"}:
            raise ConfigError(where, "each schema needs exactly 'pattern' and 'retention'")
        pattern = _string(entry["pattern"], f"{where}.pattern")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}.pattern", f"invalid regular expression: {exc}") from None
        tiers = parse_retention(_string(entry["retention"], f"{where}.retention"),
                                key=f"{where}.retention")
        result.append((pattern, tiers))
    return tuple(result)


_TAG_KEY = re.compile(r"[A-Za-z0-9_.\-/]+")
_TAG_VALUE = re.compile(r"[^\s,|;]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _tag_pair(item: object, key: str) -> tuple[str, str]:
    if not isinstance(item, str):
        raise ConfigError(key, f"expected tags as strings like 'env:prod', got {item!r}")
    name, _, value = item.partition(":")
    if not _TAG_KEY.fullmatch(name) or not _TAG_VALUE.fullmatch(value):
        raise ConfigError(key, f"bad tag {item!r}: want KEY or KEY:VALUE, the key of "
                               "[A-Za-z0-9_.-/], the value without spaces, ',', '|' or ';'")
    return name, value


def _tag_list(value: object, key: str) -> Tags:
    """A list of ``KEY:VALUE`` strings, or one comma-separated string (flags, environment)."""
    if isinstance(value, str):
        items: list[object] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise ConfigError(key, f"expected a list like [\"env:prod\"], got {value!r}")
    return tuple(sorted({_tag_pair(item, key) for item in items}))


def _env_tag_table(value: object, key: str) -> tuple[tuple[str, str], ...]:
    """``{tag = "VARIABLE", ...}``, or ``"tag=VARIABLE,..."`` (flags, environment)."""
    if isinstance(value, str):
        items = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            tag, sep, variable = part.partition("=")
            if not sep:
                raise ConfigError(key, f"expected tag=VARIABLE pairs, got {part!r}")
            items.append((tag.strip(), variable.strip()))
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise ConfigError(key, f"expected a table like {{ pod_name = \"POD_NAME\" }}, got {value!r}")
    for tag, variable in items:
        if not isinstance(tag, str) or not _TAG_KEY.fullmatch(tag):
            raise ConfigError(key, f"bad tag key {tag!r}: use [A-Za-z0-9_.-/]")
        if not isinstance(variable, str) or not _ENV_NAME.fullmatch(variable):
            raise ConfigError(key, f"bad environment variable name {variable!r} for tag {tag!r}")
    return tuple(items)


def _file_mode(value: object, key: str) -> int:
    """``"0660"``, ``"660"``, ``"0o660"`` or a TOML octal integer ``0o660``."""
    if isinstance(value, str) and re.fullmatch(r"(0o)?[0-7]{1,4}", value):
        mode = int(value.removeprefix("0o"), 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ConfigError(key, f"expected an octal mode like \"0660\", got {value!r}")
    if not 0 <= mode <= 0o777:
        raise ConfigError(key, f"must be within 0..0777 (write it as a string \"0660\" or as "
                               f"0o660; a plain 660 is decimal), got {value!r}")
    return mode


def _unix_config(values: Mapping[str, Any]) -> UnixConfig:
    defaults = UnixConfig()
    path = None
    raw = _string(values.get("unix", ""), "unix")
    if raw:
        if raw.startswith("@"):
            raise ConfigError("unix", "abstract sockets (@name) are not supported; give a file path")
        if "\0" in raw:
            raise ConfigError("unix", "the path must not contain a NUL byte")
        if len(raw.encode()) > MAX_UNIX_PATH_BYTES:
            raise ConfigError("unix", f"{raw!r} is longer than {MAX_UNIX_PATH_BYTES} bytes, the "
                                      "kernel's limit for socket paths; choose a shorter path")
        path = Path(raw)
    return UnixConfig(
        path=path,
        mode=_file_mode(values.get("unix_mode", f"{defaults.mode:04o}"), "unix_mode"),
        origin_detection=_bool(values.get("origin_detection", defaults.origin_detection),
                               "origin_detection"),
    )


def _tags_config(values: Mapping[str, Any], env_section: Mapping[str, Any]) -> TagsConfig:
    defaults = TagsConfig()
    host = _string(values.get("host_tag", defaults.host), "host_tag")
    if host and not _TAG_VALUE.fullmatch(host):
        raise ConfigError("host_tag", f"must not contain spaces, ',', '|' or ';', got {host!r}")
    env: list[tuple[str, str, str]] = []
    for level in CARDINALITIES:
        key = f"env_tags.{level}"
        if level in env_section:
            env += [(t, v, level) for t, v in _env_tag_table(env_section[level], key)]
        else:
            env += [entry for entry in defaults.env if entry[2] == level]
    seen: dict[str, str] = {}
    for tag, _, level in env:
        if tag in seen:
            raise ConfigError(f"env_tags.{level}", f"tag {tag!r} is also in env_tags.{seen[tag]}")
        seen[tag] = level
    return TagsConfig(
        static=_tag_list(values.get("tags", []), "tags"),
        cardinality=_choice(values.get("tag_cardinality", defaults.cardinality),
                            "tag_cardinality", CARDINALITIES),
        host=host,
        env=tuple(env),
    )


def _ingest_config(section: Mapping[str, Any]) -> IngestConfig:
    defaults = IngestConfig()
    workers = _int(section.get("workers", defaults.workers), "ingest.workers", minimum=0)
    if workers > 64:
        raise ConfigError("ingest.workers", f"at most 64 receive workers, got {workers}")
    ship_interval = _number(section.get("ship_interval", defaults.ship_interval),
                            "ingest.ship_interval", minimum=0.01)
    ship_timeout = _number(section.get("ship_timeout", defaults.ship_timeout),
                           "ingest.ship_timeout", minimum=0.1)
    return IngestConfig(workers=workers, ship_interval=float(ship_interval),
                        ship_timeout=float(ship_timeout))


def build_config(values: Mapping[str, Any]) -> AgentConfig:
    """Validate a merged mapping (file values overlaid by flags) into an :class:`AgentConfig`.

    Unknown keys are refused (a typo must not be silently ignored).
    """
    for key in values:
        if key not in _TOP_KEYS and key not in _SECTIONS:
            raise ConfigError(key, f"unknown key; known keys: {', '.join(sorted(_TOP_KEYS))}, "
                                   f"and sections [{'], ['.join(sorted(_SECTIONS))}]")
    sections: dict[str, Mapping[str, Any]] = {}
    for name, allowed in _SECTIONS.items():
        section = values.get(name, {})
        if not isinstance(section, Mapping):
            raise ConfigError(name, "expected a table, e.g. [storage]")
        for key in section:
            if key not in allowed:
                raise ConfigError(f"{name}.{key}",
                                  f"unknown key; known keys: {', '.join(sorted(allowed))}")
        sections[name] = section

    defaults = AgentConfig()
    get = values.get
    udp = parse_address(get("udp"), "udp") if "udp" in values else defaults.udp
    http = parse_address(get("http"), "http") if "http" in values else defaults.http
    raw_data_dir = _string(get("data_dir", str(defaults.data_dir)), "data_dir")
    if not raw_data_dir.strip():  # Path("") is ".": it would silently mean the working directory
        raise ConfigError("data_dir", "must not be empty")
    data_dir = Path(raw_data_dir)
    flush_interval = _int(get("flush_interval", defaults.flush_interval), "flush_interval",
                          minimum=1)
    log_level = _choice(get("log_level", defaults.log_level), "log_level", LOG_LEVELS)

    agg_defaults = AggregatorConfig()
    prefix = _string(get("prefix", agg_defaults.prefix), "prefix")
    if prefix and not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", prefix):
        raise ConfigError("prefix", f"must be dot-separated [A-Za-z0-9_-] nodes, got {prefix!r}")
    aggregator = AggregatorConfig(
        prefix=prefix,
        percentiles=_percentiles(get("percentiles", list(agg_defaults.percentiles)),
                                 "percentiles"),
        idle_ttl=_number(get("idle_ttl", agg_defaults.idle_ttl), "idle_ttl", minimum=1),
        max_series=_int(get("max_series", agg_defaults.max_series), "max_series", minimum=1),
    )

    limits = sections["limits"]
    parser_defaults = ParserConfig()
    gauge_sign: Literal["delta", "set"] = (
        "delta"
        if _choice(get("gauge_sign", parser_defaults.gauge_sign), "gauge_sign",
                   ("delta", "set")) == "delta"
        else "set"
    )
    parser = ParserConfig(
        gauge_sign=gauge_sign,
        sanitize_names=_bool(get("sanitize_names", parser_defaults.sanitize_names),
                             "sanitize_names"),
        max_line_bytes=_int(limits.get("max_line_bytes", parser_defaults.max_line_bytes),
                            "limits.max_line_bytes", minimum=64),
        max_name_bytes=_int(limits.get("max_name_bytes", parser_defaults.max_name_bytes),
                            "limits.max_name_bytes", minimum=1),
        max_tags=_int(limits.get("max_tags", parser_defaults.max_tags), "limits.max_tags",
                      minimum=0),
        max_tag_bytes=_int(limits.get("max_tag_bytes", parser_defaults.max_tag_bytes),
                           "limits.max_tag_bytes", minimum=1),
    )

    st = sections["storage"]
    st_defaults = StorageConfig()
    xff = _number(st.get("xfiles_factor", st_defaults.xfiles_factor), "storage.xfiles_factor",
                  minimum=0)
    if xff > 1:
        raise ConfigError("storage.xfiles_factor", f"must be between 0 and 1, got {xff!r}")
    storage = StorageConfig(
        retention=(parse_retention(_string(st["retention"], "storage.retention"),
                                   key="storage.retention")
                   if "retention" in st else st_defaults.retention),
        schemas=_schemas(st["schemas"], "storage.schemas") if "schemas" in st else (),
        fsync=_bool(st.get("fsync", st_defaults.fsync), "storage.fsync"),
        xfiles_factor=float(xff),
    )

    sv = sections["supervisor"]
    sv_defaults = SupervisorConfig()
    supervisor = SupervisorConfig(
        max_restarts=_int(sv.get("max_restarts", sv_defaults.max_restarts),
                          "supervisor.max_restarts", minimum=0),
        max_seconds=_number(sv.get("max_seconds", sv_defaults.max_seconds),
                            "supervisor.max_seconds", minimum=0.001),
    )

    return AgentConfig(
        udp=udp,
        http=http,
        data_dir=data_dir,
        flush_interval=flush_interval,
        log_level=log_level,
        udp_rcvbuf=_int(get("udp_rcvbuf", defaults.udp_rcvbuf), "udp_rcvbuf", minimum=4096),
        writer_queue_max_batches=_int(get("writer_queue_max_batches",
                                          defaults.writer_queue_max_batches),
                                      "writer_queue_max_batches", minimum=1),
        parser=parser,
        aggregator=aggregator,
        storage=storage,
        supervisor=supervisor,
        unix=_unix_config(values),
        tagging=_tags_config(values, sections["env_tags"]),
        forward=parse_forward(get("forward", []), "forward"),
        graphite=parse_graphite_config(sections["graphite"]),
        prometheus=parse_prometheus_config(sections["prometheus"]),
        ingest=_ingest_config(sections["ingest"]),
    )


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file; a missing or malformed file is a ConfigError naming it."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("--config", f"file not found: {path}") from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None


def load_config(path: Path | None, overrides: Mapping[str, Any]) -> AgentConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` (from flags)."""
    values: dict[str, Any] = read_config_file(path) if path is not None else {}
    for key, value in overrides.items():
        if "." in key:
            section, sub = key.split(".", 1)
            merged = dict(values.get(section, {}))
            merged[sub] = value
            values[section] = merged
        elif key == "forward" and isinstance(values.get(key), list):
            values[key] = [*values[key], *(value if isinstance(value, list) else [value])]
        else:
            values[key] = value
    return build_config(values)
