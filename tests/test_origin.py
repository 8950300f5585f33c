"""Origin detection: container ids and pod uids from /proc/PID/cgroup, the pid cache, cardinality."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsyard_agent._origin import CgroupOrigin, OriginResolver, parse_cgroup

CID = "3f2a" * 16  # 64 hex digits
CID2 = "9b" * 32
POD = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"
POD_ = POD.replace("-", "_")  # the systemd cgroup driver writes the uid with underscores

V1_REST = "11:pids:/\n10:cpu,cpuacct:/\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Docker, cgroupfs driver, cgroup v1
        (f"12:memory:/docker/{CID}\n11:pids:/docker/{CID}\n0::/\n", (CID, None)),
        # Docker, systemd driver, cgroup v2
        (f"0::/system.slice/docker-{CID}.scope\n", (CID, None)),
        # Kubernetes + containerd (CRI), cgroupfs driver, v1
        (f"{V1_REST}4:memory:/kubepods/burstable/pod{POD}/{CID}\n", (CID, POD)),
        # Kubernetes + containerd, systemd driver, v2
        (
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
            f"cri-containerd-{CID}.scope\n",
            (CID, POD),
        ),
        # Guaranteed QoS pods sit directly under kubepods
        (f"0::/kubepods.slice/kubepods-pod{POD_}.slice/cri-containerd-{CID}.scope\n", (CID, POD)),
        # CRI-O
        (
            f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/"
            f"crio-{CID}.scope\n",
            (CID, POD),
        ),
        # Podman, rootless, v2: the payload runs in a "container" child cgroup
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container\n",
            (CID, None),
        ),
        # Podman's conmon monitors a container but is not in it
        (f"0::/machine.slice/libpod-conmon-{CID}.scope\n", (None, None)),
        # seen through the reader's own cgroup namespace: a path relative to another container
        (f"0::/../cri-containerd-{CID}.scope\n", (CID, None)),
        # nested (Docker in Docker): the innermost container
        (f"0::/docker/{CID2}/docker/{CID}\n", (CID, None)),
        # ECS on Fargate
        (
            "0::/ecs/8cd79b803960412e9d8b4a1b1f5b2c4e/8cd79b803960412e9d8b4a1b1f5b2c4e-1234567890\n",
            ("8cd79b803960412e9d8b4a1b1f5b2c4e-1234567890", None),
        ),
        # hybrid: v2 line at the root, the id only in v1 lines
        (f"0::/\n4:memory:/docker/{CID}\n", (CID, None)),
        # the v2 line is read first
        (f"4:memory:/docker/{CID2}\n0::/system.slice/docker-{CID}.scope\n", (CID, None)),
        # plain host processes
        ("0::/user.slice/user-1000.slice/session-3.scope\n", (None, None)),
        ("4:memory:/process_api/3db769c226cafe51f79cdb7ce26c1e9d\n0::/\n", (None, None)),
        # an id that is not the whole component, upper case, one digit short
        (f"0::/system.slice/my-{CID}-thing.service\n", (None, None)),
        (f"0::/docker/{CID.upper()}\n", (None, None)),
        (f"0::/docker/{CID[:-1]}\n", (None, None)),
        ("", (None, None)),
        ("garbage\n::\n0:\n", (None, None)),
    ],
)
def test_parse_cgroup(text: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_cgroup(text) == CgroupOrigin(*expected)


@given(st.text())
def test_parse_cgroup_never_raises(text: str) -> None:
    result = parse_cgroup(text)
    assert result.container_id is None or result.container_id in text


def fake_proc(root: Path, pid: int, comm: str, cgroup: str) -> None:
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "comm").write_text(comm + "\n")
    (root / str(pid) / "cgroup").write_text(cgroup)


K8S_CGROUP = (
    f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
    f"cri-containerd-{CID}.scope\n"
)


@pytest.mark.parametrize(
    ("cardinality", "expected"),
    [
        ("low", (("process", "gunicorn"),)),
        ("orchestrator", (("pod_uid", POD), ("process", "gunicorn"))),
        ("high", (("container_id", CID), ("pod_uid", POD), ("process", "gunicorn"))),
    ],
)
def test_resolver_returns_what_the_cardinality_allows(
    tmp_path: Path, cardinality: str, expected: tuple[tuple[str, str], ...]
) -> None:
    fake_proc(tmp_path, 42, "gunicorn", K8S_CGROUP)
    resolver = OriginResolver(cardinality, proc=tmp_path)
    assert resolver.tags_for(42) == expected
    assert (resolver.stats.container, resolver.stats.host, resolver.stats.unknown) == (1, 0, 0)


def test_resolver_unknown_pids_give_no_tags(tmp_path: Path) -> None:
    resolver = OriginResolver("high", proc=tmp_path)
    assert resolver.tags_for(0) == ()  # the sender is in a pid namespace we cannot see
    assert resolver.tags_for(-1) == ()
    assert resolver.tags_for(77) == ()  # exited before its datagram was read
    assert resolver.stats.unknown == 3


def test_resolver_host_process_and_awkward_comm(tmp_path: Path) -> None:
    fake_proc(tmp_path, 5, "my worker,1|x;y", "0::/user.slice/session-2.scope\n")
    resolver = OriginResolver("high", proc=tmp_path)
    assert resolver.tags_for(5) == (("process", "my_worker_1_x_y"),)
    assert resolver.stats.host == 1


def test_resolver_caches_per_pid_until_the_ttl(tmp_path: Path) -> None:
    now = [100.0]
    fake_proc(tmp_path, 7, "before", "0::/\n")
    resolver = OriginResolver("low", proc=tmp_path, ttl=30, clock=lambda: now[0])
    assert resolver.tags_for(7) == (("process", "before"),)
    fake_proc(tmp_path, 7, "after", "0::/\n")  # pid reused, or the process exec'd
    now[0] = 129.9
    assert resolver.tags_for(7) == (("process", "before"),)
    now[0] = 130.0
    assert resolver.tags_for(7) == (("process", "after"),)
    assert resolver.stats.host == 2  # two lookups, one cache hit


def test_resolver_cache_is_bounded_evicting_the_oldest(tmp_path: Path) -> None:
    for pid in range(1, 6):
        fake_proc(tmp_path, pid, f"p{pid}", "0::/\n")
    resolver = OriginResolver("low", proc=tmp_path, max_entries=3, clock=lambda: 0.0)
    for pid in range(1, 6):
        resolver.tags_for(pid)
    assert len(resolver) == 3
    lookups = resolver.stats.host
    resolver.tags_for(5)  # still cached
    assert resolver.stats.host == lookups
    resolver.tags_for(1)  # evicted: looked up again
    assert resolver.stats.host == lookups + 1
    assert len(resolver) == 3


def test_resolver_reads_the_real_proc() -> None:
    comm = Path("/proc/self/comm").read_text().strip()
    assert OriginResolver("low").tags_for(os.getpid()) == (("process", comm),)
