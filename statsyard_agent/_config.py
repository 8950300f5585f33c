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
from ._protocol import ParserConfig
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
}
_SECTIONS = {
    "storage": {"retention", "fsync", "xfiles_factor", "schemas"},
    "supervisor": {"max_restarts", "max_seconds"},
    "limits": {"max_line_bytes", "max_name_bytes", "max_tags", "max_tag_bytes"},
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
    data_dir = Path(_string(get("data_dir", str(defaults.data_dir)), "data_dir"))
    if str(data_dir) == "":
        raise ConfigError("data_dir", "must not be empty")
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
        else:
            values[key] = value
    return build_config(values)
