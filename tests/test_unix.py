"""The Unix datagram listener: socket file life cycle, origin tags from real sender processes
(in real, different cgroups where this machine lets us create them), env tags, supervision."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from statsyard_agent import _unix
from statsyard_agent._config import UnixConfig, build_config
from statsyard_agent._exceptions import ConfigError
from statsyard_agent._faults import FaultInjector
from statsyard_agent._protocol import ParserConfig
from statsyard_agent._unix import UnixListener

from .conftest import RunningAgent, make_config, query_async, start_agent, wait_for

# Sender process: names itself (/proc/self/comm), optionally moves into a cgroup, sends, reports,
# then stays alive until its stdin closes (the agent looks its pid up when it reads a datagram).
SENDER = r"""
import socket, sys
path, name, cgroup, count, client = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
with open("/proc/self/comm", "w") as f:
    f.write(name)
if cgroup:
    with open(cgroup, "w") as f:
        f.write("0")
if client == "datadog":
    from datadog.dogstatsd import DogStatsd
    # socket_timeout=None blocks while the agent's queue is full; the default (0) drops instead.
    dd = DogStatsd(socket_path=path, disable_telemetry=True, disable_buffering=True,
                   disable_background_sender=True, origin_detection_enabled=False,
                   socket_timeout=None)
    for _ in range(count):
        dd.increment("requests", tags=["route:/a"])
    dd.close_socket()
else:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    for _ in range(count):
        sock.sendto(b"requests:1|c|#route:/a", path)
print("sent", flush=True)
sys.stdin.read()
"""


# net.unix.max_dgram_qlen: datagrams the kernel queues per Unix socket (10 is the kernel default;
# this machine has 10). The tests never have more than this many in flight from the loop's thread.
QUEUE = min(10, int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text()))
# The in-process agent's own senders are this process.
OWN_COMM = Path("/proc/self/comm").read_text().strip()


class Sender:
    def __init__(
        self, path: Path, name: str, count: int, *, cgroup: Path | None = None, client: str = "socket"
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SENDER, str(path), name, str(cgroup or ""), str(count), client],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_sent(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "sent\n", self.proc.communicate(timeout=30)[1]

    def stop(self) -> None:
        self.proc.communicate(timeout=30)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory: pytest's tmp_path can exceed the 107-byte limit of socket paths."""
    path = Path(tempfile.mkdtemp(prefix="sy-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def unix_config(data_dir: Path, sock: Path, **values: Any) -> Any:
    base: dict[str, Any] = {"unix": str(sock), "env_tags": {"low": {}, "orchestrator": {}}}
    return make_config(data_dir, **(base | values))


async def requests_by_origin(agent: RunningAgent) -> dict[tuple[tuple[str, str], ...], float]:
    got = await query_async(agent.config.data_dir, "stats.counters.requests.count")
    return {tags: sum(values) for (_, tags), values in got.items()}


# --- the socket file ---------------------------------------------------------------------------


def open_listener(path: Path, **kwargs: Any) -> UnixListener:
    return UnixListener.open(UnixConfig(path, **kwargs), ParserConfig(), "low")


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666])
def test_socket_file_gets_the_mode_and_is_removed_on_close(sock_dir: Path, mode: int) -> None:
    path = sock_dir / "s.sock"
    listener = open_listener(path, mode=mode)
    st = path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == mode
    listener.close()
    assert not path.exists()


def test_a_stale_socket_is_replaced(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()  # the file stays behind, as after a SIGKILL
    listener = open_listener(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"x:1|c", str(path))
    assert listener.sock.recv(100) == b"x:1|c"
    listener.close()


def test_a_live_socket_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    first = open_listener(path)
    with pytest.raises(ConfigError, match=r"^unix: .* in use by another process"):
        open_listener(path)
    assert path.exists()  # the first agent's socket is untouched
    first.close()


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("file", "exists and is not a socket"),
        ("dir", "exists and is not a socket"),
        ("missing_dir", "No such file or directory"),
    ],
)
def test_bad_paths_are_refused_naming_unix(sock_dir: Path, setup: str, words: str) -> None:
    path = sock_dir / "s.sock"
    if setup == "file":
        path.write_text("keep me")
    elif setup == "dir":
        path.mkdir()
    else:
        path = sock_dir / "nope" / "s.sock"
    with pytest.raises(ConfigError) as caught:
        open_listener(path)
    assert caught.value.key == "unix"
    assert words in caught.value.message
    if setup == "file":
        assert path.read_text() == "keep me"


def test_close_leaves_a_replaced_socket_alone(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    listener = open_listener(path)
    path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as newer:
        newer.bind(str(path))  # e.g. a new agent that started while this one stopped
        listener.close()
        assert path.exists()


# --- origin tags on stored series --------------------------------------------------------------


def _cgroup_root() -> Path | None:
    """A writable cgroup hierarchy (v2 preferred) if we may create cgroups here, else None."""
    candidates = [Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/pids")]
    for root in candidates:
        if (root / "cgroup.procs").exists() and os.access(root, os.W_OK):
            return root
    return None


@pytest.fixture
def container_cgroups() -> Iterator[list[tuple[Path, str, str]]]:
    """Two cgroups laid out as Kubernetes + containerd would (systemd driver): [(cgroup.procs,
    container id, pod uid)]. Skips where cgroups cannot be created (no root, read-only
    /sys/fs/cgroup as in most containers)."""
    root = _cgroup_root()
    if root is None:
        pytest.skip(
            "cannot create cgroups here (needs root and a writable /sys/fs/cgroup); "
            "the different-pids test still runs"
        )
    top = root / f"statsyard-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    made: list[Path] = []
    out = []
    try:
        top.mkdir()
        made.append(top)
        for _ in range(2):
            pod = str(uuid.uuid4())
            cid = uuid.uuid4().hex + uuid.uuid4().hex
            pod_dir = top / f"kubepods-besteffort-pod{pod.replace('-', '_')}.slice"
            leaf = pod_dir / f"cri-containerd-{cid}.scope"
            pod_dir.mkdir()
            made.append(pod_dir)
            leaf.mkdir()
            made.append(leaf)
            out.append((leaf / "cgroup.procs", cid, pod))
        # Moving a process in can still be refused (cgroup namespaces, delegation rules): try.
        probe = subprocess.Popen(["sleep", "60"])
        try:
            out[0][0].write_text(str(probe.pid))
        finally:
            probe.kill()
            probe.wait()
    except OSError as exc:
        for path in reversed(made):
            for _ in range(500):
                try:
                    path.rmdir()
                    break
                except OSError:  # EBUSY until the killed probe is gone
                    time.sleep(0.01)
        pytest.skip(f"cannot create cgroups under {root} and move processes into them: {exc}")
    yield out
    for procs, _, _ in out:  # a failed test may have left a sender running in one
        for pid in procs.read_text().split():
            os.kill(int(pid), signal.SIGKILL)
    for path in reversed(made):
        for _ in range(500):
            try:
                path.rmdir()
                break
            except OSError:  # EBUSY until the killed senders are gone
                time.sleep(0.01)


async def wait_sent(*senders: Sender) -> None:
    """Both processes start at once (each takes a while to import); wait until both have sent."""
    for sender in senders:
        await trio.to_thread.run_sync(sender.wait_sent)


async def test_two_senders_in_two_containers_get_their_own_tags(
    nursery: trio.Nursery,
    tmp_path: Path,
    sock_dir: Path,
    container_cgroups: list[tuple[Path, str, str]],
) -> None:
    path = sock_dir / "s.sock"
    agent = await start_agent(nursery, unix_config(tmp_path / "data", path, tag_cardinality="high"))
    (procs_a, cid_a, pod_a), (procs_b, cid_b, pod_b) = container_cgroups
    alpha = Sender(path, "sy-alpha", 30, cgroup=procs_a)
    beta = Sender(path, "sy-beta", 20, cgroup=procs_b, client="datadog")
    await wait_sent(alpha, beta)
    await agent.wait_lines(50)
    with trio.fail_after(30):
        await agent.handle.flush()
    await trio.to_thread.run_sync(alpha.stop)
    await trio.to_thread.run_sync(beta.stop)
    route = ("route", "/a")
    assert await requests_by_origin(agent) == {
        (("container_id", cid_a), ("pod_uid", pod_a), ("process", "sy-alpha"), route): 30,
        (("container_id", cid_b), ("pod_uid", pod_b), ("process", "sy-beta"), route): 20,
    }


@pytest.mark.parametrize(
    ("values", "origin"),
    [
        ({}, True),  # tag_cardinality low: the process name only
        ({"origin_detection": False}, False),
    ],
)
async def test_two_sender_processes_get_their_process_tag(
    nursery: trio.Nursery, tmp_path: Path, sock_dir: Path, values: dict[str, Any], origin: bool
) -> None:
    path = sock_dir / "s.sock"
    agent = await start_agent(nursery, unix_config(tmp_path / "data", path, **values))
    alpha = Sender(path, "sy-alpha", 30)
    beta = Sender(path, "sy-beta", 20, client="datadog")
    await wait_sent(alpha, beta)
    assert alpha.proc.pid != beta.proc.pid
    await agent.wait_lines(50)
    with trio.fail_after(30):
        await agent.handle.flush()
    await trio.to_thread.run_sync(alpha.stop)
    await trio.to_thread.run_sync(beta.stop)
    route = ("route", "/a")
    expected = (
        {(("process", "sy-alpha"), route): 30, (("process", "sy-beta"), route): 20}
        if origin
        else {(route,): 50}
    )
    assert await requests_by_origin(agent) == expected
    unix = agent.handle.unix
    assert unix is not None
    assert unix.packets == 50
    if origin:
        assert unix.resolver is not None
        assert len(unix.resolver) == 2  # one lookup per sender pid, then the cache
    else:
        assert unix.resolver is None


async def test_events_and_service_checks_are_tagged_too(
    nursery: trio.Nursery, tmp_path: Path, sock_dir: Path
) -> None:
    path = sock_dir / "s.sock"
    agent = await start_agent(nursery, unix_config(tmp_path / "data", path))
    comm = OWN_COMM
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"_e{2,2}:hi|yo|#process:mine\n_e{2,2}:hi|yo|t:error\n_sc|db|0", str(path))
    await agent.wait_lines(3)
    with trio.fail_after(30):
        await agent.handle.flush()
    got = await query_async(agent.config.data_dir, "stats.*")
    assert got == {
        ("stats.events", (("alert_type", "info"), ("process", "mine"))): [1],  # its own wins
        ("stats.events", (("alert_type", "error"), ("process", comm))): [1],
        ("stats.service_checks", (("check", "db"), ("process", comm), ("status", "0"))): [1],
    }


# --- environment and static tags on stored series ----------------------------------------------


async def test_environment_and_static_tags_on_every_stored_series(
    nursery: trio.Nursery, tmp_path: Path, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "POD_NAME": "web-7d9f",
        "POD_NAMESPACE": "shop",
        "NODE_NAME": "node-3",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
    }.items():
        monkeypatch.setenv(name, value)
    path = sock_dir / "s.sock"
    config = make_config(tmp_path / "data", unix=str(path), tags=["env:prod"], host_tag="auto")
    agent = await start_agent(nursery, config)
    comm = OWN_COMM
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"requests:3|c|#env:dev", ("127.0.0.1", agent.udp_port))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"requests:4|c", str(path))
    await agent.wait_lines(2)
    with trio.fail_after(30):
        await agent.handle.flush()
    k8s = (("kube_namespace", "shop"), ("kube_node", "node-3"))  # no pod_name, no host: low
    assert await requests_by_origin(agent) == {
        (("env", "dev"), *k8s): 3,  # the series' own env wins
        (("env", "prod"), *k8s, ("process", comm)): 4,
    }


# --- supervision, shutdown, self-metrics ---------------------------------------------------------


async def test_listener_crash_keeps_the_socket_and_loses_nothing(
    nursery: trio.Nursery, tmp_path: Path, sock_dir: Path
) -> None:
    path = sock_dir / "s.sock"
    faults = FaultInjector()
    agent = await start_agent(nursery, unix_config(tmp_path / "data", path), faults)
    faults.arm("unix_listener", 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"requests:1|c", str(path))
        await wait_for(lambda: agent.handle.supervisor.children["unix_listener"].restarts == 1, 10)
        for _ in range(9):
            client.sendto(b"requests:1|c", str(path))
    await agent.wait_lines(10)
    with trio.fail_after(30):
        await agent.handle.flush()
    assert sum((await requests_by_origin(agent)).values()) == 10


async def test_shutdown_reads_what_is_queued_and_removes_the_socket(
    nursery: trio.Nursery, tmp_path: Path, sock_dir: Path
) -> None:
    path = sock_dir / "s.sock"
    agent = await start_agent(nursery, unix_config(tmp_path / "data", path, origin_detection=False))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        # Sent from the event loop's own thread, so nothing reads them before the shutdown
        # starts. At most QUEUE: a blocking send beyond the kernel's queue would wait forever.
        for _ in range(QUEUE):
            client.sendto(b"requests:1|c", str(path))
    assert await agent.stop() == 0
    assert not path.exists()
    assert sum((await requests_by_origin(agent)).values()) == QUEUE


async def test_self_metrics(
    nursery: trio.Nursery, tmp_path: Path, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_unix, "MAX_UNIX_DATAGRAM", 1024)  # so a plain sender can exceed it
    path = sock_dir / "s.sock"
    agent = await start_agent(nursery, unix_config(tmp_path / "data", path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"a:1|c", str(path))
        client.sendto(b"b:1|c\nc:1|c", str(path))
        client.sendto(b"x" * 2000 + b":1|c", str(path))  # over the receive buffer
    unix = agent.handle.unix
    assert unix is not None
    await wait_for(lambda: unix.packets + unix.truncated == 3, 10)

    def scrape() -> str:
        url = f"http://127.0.0.1:{agent.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    text = await trio.to_thread.run_sync(scrape)
    for line in (
        "statsyard_unix_packets_received_total 2.0",
        "statsyard_unix_bytes_received_total 16.0",
        "statsyard_unix_truncated_total 1.0",
        'statsyard_origin_lookups_total{result="host"} 1.0',
        "statsyard_origin_cache_entries 1.0",
        "statsyard_agent_tag_collisions_total 0.0",
        'statsyard_task_up{task="unix_listener"} 1.0',
    ):
        assert line in text.splitlines(), line


async def test_origins_beyond_the_bound_are_merged_not_lost(
    nursery: trio.Nursery, tmp_path: Path, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_unix, "MAX_ORIGINS", 2)
    agent = await start_agent(nursery, unix_config(tmp_path / "data", sock_dir / "s.sock"))
    unix, state = agent.handle.unix, agent.handle.state
    assert unix is not None
    for _ in range(2):
        for n in range(3):  # three origins through two pre-aggregators
            unix.handle(state, b"requests:1|c\nrequests:2|c", (("process", f"p{n}"),))
        assert unix.origins == 2
    assert state.ingest.lines == 12
    with trio.fail_after(30):
        await agent.handle.flush()
    assert await requests_by_origin(agent) == {(("process", f"p{n}"),): 6 for n in range(3)}


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"unix": 5}, "expected a string"),
        ({"unix": "@statsd"}, "abstract sockets"),
        ({"unix": "/run/a\0b"}, "NUL byte"),
        ({"unix": "/" + "x" * 107}, "107 bytes"),
        ({"unix_mode": 660}, "a plain 660 is decimal"),
        ({"unix_mode": "0o1777"}, "within 0..0777"),
        ({"unix_mode": "rw-rw----"}, "octal mode"),
        ({"unix_mode": True}, "octal mode"),
        ({"origin_detection": "yes"}, "true or false"),
    ],
)
def test_bad_unix_settings_are_refused_naming_the_key(values: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(values)
    assert caught.value.key == next(iter(values))
    assert words in caught.value.message


@pytest.mark.parametrize(
    ("mode", "expected"), [("0660", 0o660), ("600", 0o600), ("0o640", 0o640), (0o644, 0o644), (0, 0)]
)
def test_unix_mode_forms(mode: object, expected: int) -> None:
    assert build_config({"unix": "/run/s.sock", "unix_mode": mode}).unix.mode == expected
