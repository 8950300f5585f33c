"""Tags the agent adds on its own: static ones from the config, the orchestrator's environment
(Kubernetes Downward API), the host name, and, per datagram, where a Unix-socket sender runs.

Pure: no sockets, no trio. The environment and host name are passed in, so tests can fake them.

Two rules hold everywhere:

* **The series' own tags win.** An agent tag is added only when the series has no tag with that
  key, so an application that sends ``host:web-1`` keeps it.
* **Cardinality decides.** Each agent tag has a level (``low`` < ``orchestrator`` < ``high``);
  ``tag_cardinality`` is the highest level added. Pod names and uids are ``orchestrator`` and
  container ids ``high``, because every new pod or container starts new series that then live as
  long as the longest retention tier. So by default (``low``) neither is added.

Agent-wide tags are added to the flushed batch in the flusher's worker thread (see
:class:`BatchTagger`), so the UDP receive path does no extra work per line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ._aggregate import Snapshot, build_flush_batch
from ._config import CARDINALITIES, TagsConfig
from ._types import FlushBatch, SketchPoint, Tags

log = logging.getLogger(__name__)

#: The agent's own tag keys (besides the configurable environment ones).
HOST_TAG = "host"


def allowed(level: str, cardinality: str) -> bool:
    """Whether a tag of ``level`` may be added under the setting ``cardinality``."""
    return CARDINALITIES.index(level) <= CARDINALITIES.index(cardinality)


def merge_tags(tags: Tags, extra: Tags) -> Tags:
    """``tags`` plus every pair of ``extra`` whose key ``tags`` lacks, sorted.

    Returns ``tags`` itself (the same object) when nothing is added, so callers can skip work
    with an identity check. ``extra`` must be sorted with distinct keys.
    """
    if not extra:
        return tags
    if not tags:
        return extra
    keys = {key for key, _ in tags}
    add = [pair for pair in extra if pair[0] not in keys]
    if not add:
        return tags
    return tuple(sorted((*tags, *add)))


@dataclass(frozen=True, slots=True)
class AgentTag:
    """One agent-wide tag, where it came from (for the start-up log) and its level."""

    key: str
    value: str
    level: str
    source: str


def is_kubernetes(environ: Mapping[str, str]) -> bool:
    """True inside a Kubernetes pod: the kubelet sets ``KUBERNETES_SERVICE_HOST`` in every one."""
    return bool(environ.get("KUBERNETES_SERVICE_HOST"))


def resolve_agent_tags(config: TagsConfig, environ: Mapping[str, str], hostname: str) -> list[AgentTag]:
    """Every candidate agent-wide tag, allowed or not, in precedence order (later wins a key).

    Order: host, then environment tags, then static tags (the most explicit). The host name of a
    pod is its pod name, so an ``"auto"`` host inside Kubernetes counts as ``orchestrator``
    (the node is what ``kube_node`` gives at ``low``). An unset or empty variable adds nothing.
    """
    found: list[AgentTag] = []
    if config.host == "auto":
        if hostname:
            level = "orchestrator" if is_kubernetes(environ) else "low"
            found.append(AgentTag(HOST_TAG, hostname, level, "host name"))
    elif config.host:
        found.append(AgentTag(HOST_TAG, config.host, "low", "host_tag"))
    for key, variable, level in config.env:
        value = environ.get(variable, "").strip()
        if value:
            found.append(AgentTag(key, clean_tag_value(value), level, f"${variable}"))
    found += [AgentTag(key, value, "low", "tags") for key, value in config.static]
    return found


def agent_tags(config: TagsConfig, candidates: Iterable[AgentTag]) -> Tags:
    """The allowed tags as sorted ``Tags`` (one value per key; later candidates win).

    Static tags from the config are always allowed: the operator asked for them by name.
    """
    chosen: dict[str, str] = {}
    for tag in candidates:
        if tag.source == "tags" or allowed(tag.level, config.cardinality):
            chosen[tag.key] = tag.value
    return tuple(sorted(chosen.items()))


def clean_tag_value(value: str) -> str:
    """Tag values from outside (environment, /proc) with whitespace, ``,``, ``|`` and ``;``
    replaced by ``_``: those separate tags on the wire and in query syntax."""
    return "".join("_" if ch.isspace() or ch in ",|;" else ch for ch in value)


@dataclass
class BatchTagger:
    """Adds the agent-wide tags to every point and sketch of a flushed batch.

    Work is per distinct tag set, not per point. If adding tags would make two series of one
    batch identical (a client sent ``host:h`` on one series and nothing on its twin, and the
    agent's host is ``h``), the twin keeps its own tags instead: merging them would make one
    of the two points overwrite the other in storage. That is counted in ``collisions``.
    """

    tags: Tags = ()
    collisions: int = 0
    _warned: bool = field(default=False, repr=False)

    def build(self, snapshot: Snapshot) -> FlushBatch:
        """:func:`build_flush_batch`, then :meth:`apply`; for the flusher's worker thread."""
        return self.apply(build_flush_batch(snapshot))

    def apply(self, batch: FlushBatch) -> FlushBatch:
        extra = self.tags
        if not extra or (not batch.tags and not batch.sketches):
            return batch
        mapping: dict[Tags, Tags] = {}
        for tags in (*batch.tags, *(s.tags for s in batch.sketches)):
            if tags not in mapping:
                mapping[tags] = merge_tags(tags, extra)
        keep: set[tuple[str, Tags]] = set()
        if len(set(mapping.values())) != len(mapping):
            keep = self._colliding(batch, mapping)
        if keep:
            new_tags = tuple(
                tags if (name, tags) in keep else mapping[tags]
                for name, tags in zip(batch.names, batch.tags, strict=True)
            )
        else:
            new_tags = tuple(mapping[tags] for tags in batch.tags)
        sketches = tuple(
            s if (s.name, s.tags) in keep else SketchPoint(s.name, mapping[s.tags], s.sketch)
            for s in batch.sketches
        )
        return FlushBatch(
            batch.timestamp, batch.interval, batch.names, new_tags, batch.rollups, batch.values, sketches
        )

    def _colliding(self, batch: FlushBatch, mapping: dict[Tags, Tags]) -> set[tuple[str, Tags]]:
        """``(name, tags)`` of the series that must keep their own tags to stay distinct."""
        targets: dict[Tags, list[Tags]] = {}
        for old, new in mapping.items():
            targets.setdefault(new, []).append(old)
        shared = {old for olds in targets.values() if len(olds) > 1 for old in olds}
        owners: dict[tuple[str, Tags], set[Tags]] = {}
        pairs = [*zip(batch.names, batch.tags, strict=True), *((s.name, s.tags) for s in batch.sketches)]
        for name, tags in pairs:
            if tags in shared:
                owners.setdefault((name, mapping[tags]), set()).add(tags)
        keep = {
            (name, old) for (name, new), olds in owners.items() if len(olds) > 1 for old in olds if old != new
        }
        if keep:
            self.collisions += len(keep)
            if not self._warned:
                self._warned = True
                example = min(keep)
                log.warning(
                    "series %s %s keeps its own tags: with the agent's tags it would be the same "
                    "series as one sent with them explicitly (counted in "
                    "statsyard_agent_tag_collisions_total; logged once)",
                    example[0],
                    example[1],
                )
        return keep
