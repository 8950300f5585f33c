"""Configuration from the environment: ``STATSYARD_*`` variables mirroring the config keys.

Containers are configured through their environment, so every config key can be set as
``STATSYARD_<KEY>`` (``STATSYARD_FLUSH_INTERVAL=5``), a key of a section as
``STATSYARD_<SECTION>_<KEY>`` (``STATSYARD_STORAGE_RETENTION=10s:7d``), and the config file
itself as ``STATSYARD_CONFIG``. Lists are comma-separated (``STATSYARD_TAGS=env:prod,team:core``,
``STATSYARD_PROMETHEUS_QUANTILES=0.5,0.9,0.99``),
tables ``tag=VARIABLE`` pairs (``STATSYARD_ENV_TAGS_LOW=kube_node=NODE_NAME``), booleans
``true/false/1/0/yes/no/on/off``. Precedence: flags > environment > config file > defaults.

A bad value is refused with a :class:`ConfigError` naming the variable (not the config key, which
the user did not write). Variables with the prefix that are not config keys are ignored: a
Kubernetes Service called ``statsyard`` injects ``STATSYARD_PORT``, ``STATSYARD_SERVICE_HOST``
and friends into every pod of its namespace, and those must not stop the agent. Such service
links are ignored silently; any other unknown name is logged, since it is most likely a typo.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._config import _SECTIONS, _TOP_KEYS, AgentConfig, load_config
from ._exceptions import ConfigError

log = logging.getLogger(__name__)

PREFIX = "STATSYARD_"
CONFIG_FILE_VARIABLE = "STATSYARD_CONFIG"
#: Variables with the prefix that are not config keys but are read elsewhere.
RESERVED = frozenset({CONFIG_FILE_VARIABLE, "STATSYARD_INJECT_FAULTS"})

# Kubernetes "Docker links" service variables: NAME_SERVICE_HOST, NAME_SERVICE_PORT[_PORTNAME],
# NAME_PORT, NAME_PORT_8125_UDP[_PROTO|_PORT|_ADDR].
_SERVICE_LINK = re.compile(
    r"[A-Z0-9_]+_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT(?:_\d+_(?:TCP|UDP|SCTP)"
    r"(?:_(?:PROTO|PORT|ADDR))?)?)"
)

# How a variable's text becomes a config value. Keys not listed here (added later) are read as a
# TOML literal when they parse as a number or boolean, else as a string.
_KINDS: dict[str, str] = {
    "flush_interval": "int",
    "max_series": "int",
    "udp_rcvbuf": "int",
    "writer_queue_max_batches": "int",
    "idle_ttl": "number",
    "sanitize_names": "bool",
    "origin_detection": "bool",
    "storage.fsync": "bool",
    "storage.xfiles_factor": "number",
    "storage.schemas": "unsupported",
    "prometheus.quantiles": "numbers",
    "prometheus.buckets": "numbers",
    "supervisor.max_restarts": "int",
    "supervisor.max_seconds": "number",
    "limits.max_line_bytes": "int",
    "limits.max_name_bytes": "int",
    "limits.max_tags": "int",
    "limits.max_tag_bytes": "int",
    # strings, and lists/tables that the config validators accept in their comma-separated form
    "udp": "str",
    "http": "str",
    "data_dir": "str",
    "percentiles": "str",
    "log_level": "str",
    "prefix": "str",
    "gauge_sign": "str",
    "storage.retention": "str",
    "unix": "str",
    "unix_mode": "str",
    "tags": "str",
    "tag_cardinality": "str",
    "host_tag": "str",
    "env_tags.low": "str",
    "env_tags.orchestrator": "str",
    "env_tags.high": "str",
}
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def variable_names() -> dict[str, str]:
    """Every variable the agent reads as config, mapped to its config key (``a`` or ``s.k``)."""
    names = {f"{PREFIX}{key.upper()}": key for key in _TOP_KEYS}
    for section, keys in _SECTIONS.items():
        for key in keys:
            names[f"{PREFIX}{section.upper()}_{key.upper()}"] = f"{section}.{key}"
    return names


@dataclass(frozen=True)
class EnvConfig:
    """What the environment says: config values by key, and where each came from."""

    values: dict[str, Any]
    variables: dict[str, str]  # config key -> the variable that set it
    config_file: Path | None
    ignored: tuple[str, ...]  # unknown STATSYARD_* names (service links excluded)


def read_environment(environ: Mapping[str, str]) -> EnvConfig:
    """Convert every ``STATSYARD_*`` variable; ConfigError naming the variable if one is bad."""
    names = variable_names()
    values: dict[str, Any] = {}
    variables: dict[str, str] = {}
    ignored = []
    for variable in sorted(environ):
        if not variable.startswith(PREFIX) or variable in RESERVED:
            continue
        key = names.get(variable)
        if key is None:
            if not _SERVICE_LINK.fullmatch(variable):
                ignored.append(variable)
            continue
        values[key] = _convert(variable, key, environ[variable])
        variables[key] = variable
    config_file = environ.get(CONFIG_FILE_VARIABLE) or None
    return EnvConfig(values, variables, Path(config_file) if config_file else None, tuple(ignored))


def _convert(variable: str, key: str, text: str) -> Any:
    kind = _KINDS.get(key)
    if kind is None:
        try:
            literal = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            return text
        return literal if isinstance(literal, bool | int | float) else text
    if kind == "str":
        return text
    if kind == "unsupported":
        raise ConfigError(variable, f"{key} cannot be set from the environment; use the config file")
    stripped = text.strip()
    if kind == "numbers":  # "0.5,0.9,0.99"
        try:
            return [float(item) for item in stripped.split(",")] if stripped else []
        except ValueError:
            raise ConfigError(variable, f"expected comma-separated numbers, got {text!r}") from None
    if kind == "bool":
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise ConfigError(variable, f"expected true or false, got {text!r}")
    try:
        return int(stripped) if kind == "int" else float(stripped)
    except ValueError:
        what = "a whole number" if kind == "int" else "a number"
        raise ConfigError(variable, f"expected {what}, got {text!r}") from None


def load_layered_config(
    config_file: Path | None, flags: Mapping[str, Any], environ: Mapping[str, str]
) -> AgentConfig:
    """Defaults < config file < environment < flags, validated once.

    ``config_file`` is ``--config``; without it, ``STATSYARD_CONFIG`` names the file. ``flags``
    uses the keys of :func:`~statsyard_agent._config.load_config` (``storage.retention`` ...).
    An invalid value that came from the environment is reported under its variable's name.
    """
    env = read_environment(environ)
    for variable in env.ignored:
        log.warning(
            "ignoring %s: not a config variable (known: %s<KEY> for each config key, "
            "see 'statsyard-agent example-config')",
            variable,
            PREFIX,
        )
    try:
        return load_config(config_file or env.config_file, {**env.values, **flags})
    except ConfigError as exc:
        if exc.key == "--config" and config_file is None:
            raise ConfigError(CONFIG_FILE_VARIABLE, exc.message) from None
        for key, variable in env.variables.items():
            if key in flags:
                continue
            if exc.key == key or exc.key.startswith((f"{key}.", f"{key}[")):
                raise ConfigError(variable, f"{exc.message} (as config key {exc.key})") from None
        raise
