"""Origin detection: from a sender's pid to tags saying where it runs.

The Unix listener learns each datagram's sender pid from the kernel (``SO_PASSCRED``); this
module turns a pid into tags by reading ``/proc/PID/cgroup`` and ``/proc/PID/comm``:

* ``container_id`` (``high``): the 64-hex id in the deepest cgroup path component that has one,
  in the forms Docker, containerd (incl. CRI), CRI-O and Podman use on cgroup v1 and v2:
  ``/docker/ID``, ``/kubepods/burstable/podUID/ID``, ``docker-ID.scope``,
  ``cri-containerd-ID.scope``, ``crio-ID.scope``, ``libpod-ID.scope[/container]``, and the
  ECS Fargate form ``32HEX-DIGITS``. Conmon's own scopes (``libpod-conmon-ID``) are not matched.
* ``pod_uid`` (``orchestrator``): the Kubernetes pod uid in a kubepods path, cgroupfs
  (``pod1b2c...-...``) or systemd (``kubepods-burstable-pod1b2c..._....slice``) driver.
* ``process`` (``low``): the command name, ``/proc/PID/comm``.

Only tags the ``tag_cardinality`` setting allows are returned. Results are cached per pid for a
short time (pids are reused; a process can exec into another command), with a bound on entries.

Limits, by design of the kernel: the pid is translated into the agent's pid namespace, and it is
0 when the sender's namespace is not visible from the agent's (a sidecar without
``shareProcessNamespace``, a DaemonSet without ``hostPID``): then nothing is added. A sender that
exits before its datagram is read can no longer be looked up either.

Pure apart from reading ``/proc`` (a root other than ``/proc`` can be given, for tests).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._tags import allowed, clean_tag_value
from ._types import Tags

CONTAINER_ID_TAG = "container_id"
POD_UID_TAG = "pod_uid"
PROCESS_TAG = "process"

_CONTAINER_COMPONENT = re.compile(
    r"(?:docker-|crio-|cri-containerd-|libpod-|containerd-)?([0-9a-f]{64})(?:\.scope)?"
    r"|([0-9a-f]{32}-[0-9]{1,10})"
)
_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_POD_COMPONENT = re.compile(rf"(?:kubepods(?:-[a-z]+)?-)?pod({_UUID})(?:\.slice)?")


@dataclass(frozen=True, slots=True)
class CgroupOrigin:
    container_id: str | None
    pod_uid: str | None


def parse_cgroup(text: str) -> CgroupOrigin:
    """The container id and pod uid in the text of a ``/proc/PID/cgroup`` file.

    Lines are ``HIERARCHY:CONTROLLERS:PATH`` (v1: one per hierarchy; v2: ``0::PATH``). The v2
    line is read first, then the others in order; within a path, the deepest component that
    names a container wins (nested containers report the innermost). Malformed lines are
    skipped; nothing found gives ``None`` for either field.
    """
    lines = [line.split(":", 2) for line in text.splitlines()]
    paths = [parts[2] for parts in lines if len(parts) == 3 and parts[0] == "0"]
    paths += [parts[2] for parts in lines if len(parts) == 3 and parts[0] != "0"]
    container_id = pod_uid = None
    for path in paths:
        for component in reversed(path.split("/")):
            if container_id is None and (match := _CONTAINER_COMPONENT.fullmatch(component)):
                container_id = match.group(1) or match.group(2)
            if pod_uid is None and (match := _POD_COMPONENT.fullmatch(component)):
                pod_uid = match.group(1).replace("_", "-")
        if container_id is not None:
            break
    return CgroupOrigin(container_id, pod_uid)


@dataclass
class OriginStats:
    """Lookups by result (the cache's hits are not lookups)."""

    container: int = 0  # a container id was found
    host: int = 0  # the process was found, but in no container
    unknown: int = 0  # pid 0 (another pid namespace) or /proc/PID gone or unreadable


class OriginResolver:
    """pid -> origin tags (sorted ``Tags``), with a time-bounded, size-bounded cache.

    ``max_entries``: when full, the oldest entry is evicted. ``ttl``: seconds an answer is
    reused. ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        cardinality: str,
        *,
        proc: Path = Path("/proc"),
        ttl: float = 30.0,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cardinality = cardinality
        self._proc = proc
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._cache: dict[int, tuple[float, Tags]] = {}
        self.stats = OriginStats()

    def __len__(self) -> int:
        return len(self._cache)

    def tags_for(self, pid: int) -> Tags:
        """The allowed origin tags of ``pid``; ``()`` when unknown (pid 0 included)."""
        if pid <= 0:
            self.stats.unknown += 1
            return ()
        now = self._clock()
        cached = self._cache.get(pid)
        if cached is not None and cached[0] > now:
            return cached[1]
        tags = self._lookup(pid)
        cache = self._cache
        cache.pop(pid, None)
        if len(cache) >= self._max_entries:
            del cache[next(iter(cache))]
        cache[pid] = (now + self._ttl, tags)
        return tags

    def _lookup(self, pid: int) -> Tags:
        base = self._proc / str(pid)
        try:
            comm = (base / "comm").read_text(errors="replace").strip()
            cgroup = parse_cgroup((base / "cgroup").read_text(errors="replace"))
        except OSError:
            self.stats.unknown += 1
            return ()
        if cgroup.container_id is None:
            self.stats.host += 1
        else:
            self.stats.container += 1
        found = [
            (PROCESS_TAG, clean_tag_value(comm), "low"),
            (POD_UID_TAG, cgroup.pod_uid, "orchestrator"),
            (CONTAINER_ID_TAG, cgroup.container_id, "high"),
        ]
        return tuple(
            sorted((key, value) for key, value, level in found if value and allowed(level, self._cardinality))
        )
