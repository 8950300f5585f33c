"""deploy/: the Dockerfile, the Kubernetes manifests and the systemd unit, held to the real agent.

Docker and Kubernetes cannot run on the machine these files were written on, so nothing here builds
an image or applies a manifest. Instead every file is parsed (PyYAML for the manifests, a small
parser each for the Dockerfile and the unit) and checked against what the agent really does: each
agent command line goes through the real ``build_parser()`` and ``load_config()``, the example
configs through ``statsyard-agent check-config``, the probe and scrape paths are fetched from a
real agent, and the Dockerfile's HEALTHCHECK command is executed against a local HTTP server.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from statsyard_agent._cli import EXIT_USAGE, _overrides, build_parser
from statsyard_agent._config import AgentConfig
from statsyard_agent._envconfig import PREFIX, load_layered_config, variable_names

from .conftest import ROOT, RunningAgent

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
SIDECAR = DEPLOY / "kubernetes" / "sidecar.yaml"
DAEMONSET = DEPLOY / "kubernetes" / "daemonset.yaml"
UNIT = DEPLOY / "systemd" / "statsyard-agent.service"
UNIT_TOML = DEPLOY / "systemd" / "statsyard.toml"

# The ports every file must agree on are the agent's own defaults, not numbers repeated here.
_DEFAULTS = AgentConfig()
assert _DEFAULTS.udp is not None
assert _DEFAULTS.http is not None
UDP_PORT = _DEFAULTS.udp.port
HTTP_PORT = _DEFAULTS.http.port
DATA_DIR = "/var/lib/statsyard"
AGENT = "statsyard-agent"  # the console script, and the agent's container name
# Seconds the agent may need after SIGTERM for its final flush ("a few seconds at most"), plus room.
FLUSH_BUDGET = 10


def test_agent_defaults_are_the_documented_ports() -> None:
    assert (UDP_PORT, HTTP_PORT) == (8125, 8126)


# --- parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True)
class Stage:
    image: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in the stage from {self.image}, got {found}"
        return found[0]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage; continuation lines joined, comments and directives dropped,
    ARGs declared before the first FROM substituted into FROM lines."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        instructions.append(Instruction(keyword.upper(), " ".join(args.split())))
    assert not pending, "the Dockerfile ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[Instruction] = []
    for instruction in instructions:
        if instruction.keyword == "ARG" and not stages:
            name, _, default = instruction.args.partition("=")
            global_args[name] = default
        elif instruction.keyword == "FROM":
            image, *alias = re.sub(
                r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], instruction.args
            ).split()
            current = []
            stages.append(Stage(image, alias[1] if alias else None, ()))
        elif stages:
            current.append(instruction)
            stages[-1] = Stage(stages[-1].image, stages[-1].name, tuple(current))
        else:
            raise AssertionError(f"{instruction.keyword} before the first FROM")
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON exec-form argument list (``["a", "b"]``); shell form is refused."""
    value = json.loads(args)
    assert isinstance(value, list), args
    assert all(isinstance(v, str) for v in value), args
    return value


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as section -> [(key, value)], repeats kept in order (units allow them)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    section: list[tuple[str, str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"line {number} is not KEY=VALUE: {raw!r}"
        assert section is not None, f"line {number} is outside any [section]"
        assert not line.endswith("\\"), f"line {number}: continuation lines are not expected"
        section.append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


@cache
def dockerfile() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@cache
def manifests(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, path
    assert all(isinstance(d, dict) for d in docs), path
    return docs


@cache
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text())


def workload(path: Path) -> dict[str, Any]:
    (found,) = [d for d in manifests(path) if d["kind"] in ("Deployment", "DaemonSet")]
    return found


def pod_spec(path: Path) -> dict[str, Any]:
    spec: dict[str, Any] = workload(path)["spec"]["template"]["spec"]
    return spec


def container(path: Path, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod_spec(path)["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected one container named {name!r}"
    return found[0]


def mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> volumeMount."""
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def volume(path: Path, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in pod_spec(path)["volumes"] if v["name"] == name]
    assert len(found) == 1, f"expected one volume named {name!r}"
    return found[0]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- every agent command line, through the real parser and config loader ------------------------


def configmap_toml(tmp_path: Path) -> Path:
    """The DaemonSet's ConfigMap file, written out, whatever its key is called."""
    args = container(DAEMONSET, AGENT)["args"]
    config_path = Path(args[args.index("--config") + 1])
    (cm,) = [d for d in manifests(DAEMONSET) if d["kind"] == "ConfigMap"]
    target = tmp_path / config_path.name
    target.write_text(cm["data"][config_path.name])
    return target


def invocation(where: str, tmp_path: Path) -> tuple[list[str], dict[str, Path]]:
    """(argv after the program name, config path in the file -> a local copy of that file)."""
    if where == "Dockerfile":
        final = dockerfile()[-1]
        entrypoint, cmd = exec_form(final.one("ENTRYPOINT")), exec_form(final.one("CMD"))
        assert entrypoint == [AGENT]
        return cmd, {}
    if where == "systemd":
        (exec_start,) = unit_values(unit(), "Service", "ExecStart")
        program, *argv = shlex.split(exec_start)
        assert program == f"/usr/local/bin/{AGENT}"
        return argv, {"/etc/statsyard/statsyard.toml": UNIT_TOML}
    path = {"sidecar": SIDECAR, "daemonset": DAEMONSET}[where]
    agent = container(path, AGENT)
    assert "command" not in agent, "the image's ENTRYPOINT must stay statsyard-agent"
    files = {"/etc/statsyard/statsyard.toml": configmap_toml(tmp_path)} if where == "daemonset" else {}
    return list(agent["args"]), files


def agent_environment(where: str) -> dict[str, str]:
    """The plain environment values the file gives the agent (Downward-API ones excluded)."""
    if where == "Dockerfile":
        items = [item for args in dockerfile()[-1].all("ENV") for item in shlex.split(args)]
        return dict(item.split("=", 1) for item in items)
    if where == "systemd":
        items = [i for v in unit_values(unit(), "Service", "Environment") for i in shlex.split(v)]
        return dict(item.split("=", 1) for item in items)
    path = {"sidecar": SIDECAR, "daemonset": DAEMONSET}[where]
    return {e["name"]: e["value"] for e in container(path, AGENT).get("env", []) if "value" in e}


def effective_config(where: str, tmp_path: Path) -> AgentConfig:
    """What the agent would run with: its flags, config file and STATSYARD_* environment."""
    argv, files = invocation(where, tmp_path)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: the agent refuses its command line {argv}")
    assert args.command in (None, "run"), f"{where} must run the agent, not {args.command!r}"
    config_file = None
    if args.config is not None:
        assert str(args.config) in files, f"{where}: no known file for --config {args.config}"
        config_file = files[str(args.config)]
    return load_layered_config(config_file, _overrides(args), agent_environment(where))


# where: (UDP bind host, HTTP bind host). Ports and the data directory are the same everywhere.
BIND_HOSTS = {
    "Dockerfile": ("0.0.0.0", "0.0.0.0"),  # published ports decide reachability
    "sidecar": ("127.0.0.1", "0.0.0.0"),  # StatsD only from the pod; probes come from outside
    "daemonset": ("0.0.0.0", "0.0.0.0"),  # a hostPort forwards to the pod IP, not to loopback
    "systemd": ("127.0.0.1", "127.0.0.1"),  # the example config's safe default
}


@pytest.mark.parametrize(("where", "hosts"), sorted(BIND_HOSTS.items()))
def test_agent_command_line_is_accepted_and_binds_as_intended(
    where: str, hosts: tuple[str, str], tmp_path: Path
) -> None:
    config = effective_config(where, tmp_path)
    assert config.udp is not None
    assert config.http is not None
    assert (config.udp.host, config.http.host) == hosts
    assert (config.udp.port, config.http.port) == (UDP_PORT, HTTP_PORT)
    assert config.data_dir == Path(DATA_DIR)


def test_console_script_is_what_the_files_start() -> None:
    assert pyproject()["project"]["scripts"][AGENT] == "statsyard_agent._cli:main"


@pytest.mark.parametrize("where", ["systemd", "daemonset"])
def test_example_config_passes_check_config(where: str, tmp_path: Path) -> None:
    path = UNIT_TOML if where == "systemd" else configmap_toml(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "statsyard_agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def readme_agent_commands() -> list[list[str]]:
    """Every agent command line shown in deploy/README.md (code blocks and inline code)."""
    text = (DEPLOY / "README.md").read_text()
    snippets = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    lines = [line for block in snippets for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    commands = []
    for line in lines:
        if AGENT not in line and "docker" not in line:
            continue  # prose in backticks need not be shell
        tokens = shlex.split(line, comments=True)
        if tokens[:1] == [AGENT]:
            commands.append(tokens[1:])
        elif tokens[:2] == ["docker", "exec"] and AGENT in tokens:
            commands.append(tokens[tokens.index(AGENT) + 1 :])
        elif tokens[:3] == ["docker", "run", "IMAGE"]:
            commands.append(tokens[3:])
    return commands


def test_readme_agent_commands_are_accepted() -> None:
    commands = readme_agent_commands()
    assert len(commands) >= 3
    for argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"deploy/README.md shows a command the agent refuses: {argv}")


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_base_is_slim_official_python_meeting_requires_python() -> None:
    stages = dockerfile()
    assert {s.image for s in stages} == {stages[-1].image}, "build and runtime Python must match"
    match = re.fullmatch(r"python:3\.(\d+)-slim(-[a-z]+)?", stages[-1].image)
    assert match, stages[-1].image
    required = re.fullmatch(r">=\s*3\.(\d+)", pyproject()["project"]["requires-python"])
    assert required
    assert int(match.group(1)) >= int(required.group(1))


def test_dockerfile_copies_what_the_build_needs_and_dockerignore_keeps_it() -> None:
    sources = []
    for args in dockerfile()[0].all("COPY"):
        *srcs, _dest = args.split()
        sources += [s for s in srcs if not s.startswith("--")]
    assert pyproject()["project"]["readme"] in sources  # setuptools reads it to build the wheel
    assert "pyproject.toml" in sources
    assert "statsyard_agent" in sources
    patterns = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in sources:
        assert (ROOT / source).exists(), source
        included = True  # Docker's rule: the last matching pattern wins, '!' re-includes
        for pattern in patterns:
            if fnmatch(source, pattern.removeprefix("!").rstrip("/")):
                included = pattern.startswith("!")
        assert included, f"{source} is COPYed but excluded from the build context"


def test_dockerfile_runs_as_a_fixed_non_root_uid_that_owns_the_data_dir() -> None:
    final = dockerfile()[-1]
    uid, _, gid = final.one("USER").partition(":")
    assert uid.isdigit(), "numeric, or Kubernetes cannot verify runAsNonRoot"
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    owners = re.findall(r"chown (\d+):(\d+) (\S+)", " ".join(final.all("RUN")))
    assert (uid, gid, DATA_DIR) in owners


def test_dockerfile_data_volume_ports_signal_and_env() -> None:
    final = dockerfile()[-1]
    assert exec_form(final.one("VOLUME")) == [DATA_DIR]
    assert set(final.one("EXPOSE").split()) == {f"{UDP_PORT}/udp", f"{HTTP_PORT}/tcp"}
    assert final.one("STOPSIGNAL") == "SIGTERM"
    env = dict(item.split("=", 1) for args in final.all("ENV") for item in shlex.split(args))
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"


def test_dockerfile_pip_installs_keep_no_cache() -> None:
    runs = [args for stage in dockerfile() for args in stage.all("RUN") if re.search(r"\bpip ", args)]
    assert runs
    for args in runs:
        assert "--no-cache-dir" in args, args


def healthcheck() -> tuple[list[str], str]:
    """(the HEALTHCHECK's exec-form command, the URL in it)."""
    match = re.fullmatch(r"((?:--\S+ )*)CMD (.+)", dockerfile()[-1].one("HEALTHCHECK"))
    assert match, "HEALTHCHECK must use CMD"
    command = exec_form(match.group(2))
    (url,) = re.findall(r"https?://[^'\"\s]+", " ".join(command))
    return command, url


def test_dockerfile_healthcheck_targets_healthz_on_the_http_port() -> None:
    command, url = healthcheck()
    assert command[:2] == ["python", "-c"], "slim images have no curl"
    parts = urllib.parse.urlsplit(url)
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", HTTP_PORT, "/healthz")


class _StatusServer(http.server.ThreadingHTTPServer):
    status = 200


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    server: _StatusServer

    def do_GET(self) -> None:
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[_StatusServer]:
    server = _StatusServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


def run_healthcheck(port: int) -> int:
    command, url = healthcheck()
    code = command[2].replace(url, url.replace(f":{HTTP_PORT}/", f":{port}/"))
    # A dead proxy in the environment: the check must still talk to the agent directly.
    env = {"PATH": "/usr/bin:/bin", "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=30, check=False
    ).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (500, False)])
def test_dockerfile_healthcheck_exit_status_follows_healthz(
    status_server: _StatusServer, status: int, healthy: bool
) -> None:
    status_server.status = status
    returncode = run_healthcheck(status_server.server_address[1])
    assert (returncode == 0) is healthy, returncode


def test_dockerfile_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        assert run_healthcheck(port) != 0


# --- Kubernetes: both workloads -----------------------------------------------------------------

WORKLOADS = [pytest.param(SIDECAR, id="sidecar"), pytest.param(DAEMONSET, id="daemonset")]


def test_manifest_kinds() -> None:
    assert [d["kind"] for d in manifests(SIDECAR)] == ["Deployment"]
    assert sorted(d["kind"] for d in manifests(DAEMONSET)) == ["ConfigMap", "DaemonSet", "Namespace"]


@pytest.mark.parametrize("path", WORKLOADS)
def test_selector_matches_the_pod_template(path: Path) -> None:
    spec = workload(path)["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


def named_port(c: dict[str, Any], port: int | str) -> tuple[int, str]:
    """(containerPort, protocol) for a probe's port, which may be a number or a port name."""
    for p in c.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return p["containerPort"], p.get("protocol", "TCP")
    if isinstance(port, int):
        return port, "TCP"
    raise AssertionError(f"no container port named {port!r}")


@pytest.mark.parametrize("path", WORKLOADS)
def test_agent_ports_are_the_agent_defaults(path: Path) -> None:
    declared = {(p["containerPort"], p.get("protocol", "TCP")) for p in container(path, AGENT)["ports"]}
    assert (HTTP_PORT, "TCP") in declared
    assert declared <= {(UDP_PORT, "UDP"), (HTTP_PORT, "TCP")}


@pytest.mark.parametrize("path", WORKLOADS)
def test_probes_use_the_http_port_readiness_on_healthz(path: Path) -> None:
    agent = container(path, AGENT)
    for kind in ("readinessProbe", "livenessProbe"):
        get = agent[kind]["httpGet"]
        assert named_port(agent, get["port"]) == (HTTP_PORT, "TCP"), kind
    assert agent["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # Liveness deliberately avoids /healthz (see the manifests): a restart would drop the batches
    # the agent buffers while its disk fails. It must still be a path the agent serves.
    assert agent["livenessProbe"]["httpGet"]["path"] in ("/", "/healthz")


@pytest.mark.parametrize("path", WORKLOADS)
def test_prometheus_annotations_point_at_metrics(path: Path) -> None:
    annotations = workload(path)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def served_paths() -> set[str]:
    paths = {urllib.parse.urlsplit(healthcheck()[1]).path}
    for path in (SIDECAR, DAEMONSET):
        agent = container(path, AGENT)
        paths |= {agent[k]["httpGet"]["path"] for k in ("readinessProbe", "livenessProbe")}
        paths.add(workload(path)["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    return paths


def _status(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


async def test_every_probed_or_scraped_path_answers_200_on_a_healthy_agent(
    agent: RunningAgent,
) -> None:
    for path in sorted(served_paths()):
        url = f"http://127.0.0.1:{agent.http_port}{path}"
        assert await trio.to_thread.run_sync(_status, url) == 200, path


@pytest.mark.parametrize("path", WORKLOADS)
def test_data_dir_is_a_writable_volume(path: Path, tmp_path: Path) -> None:
    where = "sidecar" if path == SIDECAR else "daemonset"
    data_dir = str(effective_config(where, tmp_path).data_dir)
    mount = mounts(container(path, AGENT)).get(data_dir)
    assert mount is not None, f"--data-dir {data_dir} is not a volume (the root fs is read-only)"
    assert not mount.get("readOnly", False)
    vol = volume(path, mount["name"])
    if path == SIDECAR:
        assert "emptyDir" in vol
    else:
        assert vol["hostPath"]["path"] == DATA_DIR


def dockerfile_uid() -> int:
    return int(dockerfile()[-1].one("USER").partition(":")[0])


@pytest.mark.parametrize("path", WORKLOADS)
def test_agent_security_context(path: Path) -> None:
    ctx = container(path, AGENT)["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == dockerfile_uid()
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert pod_spec(path)["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}


def quantity(value: str | int) -> float:
    match = re.fullmatch(r"([\d.]+)(Ki|Mi|Gi|m|)", str(value))
    assert match, f"unexpected quantity {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


@pytest.mark.parametrize("path", WORKLOADS)
def test_agent_resources(path: Path) -> None:
    resources = container(path, AGENT)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert quantity(resources["limits"]["memory"]) >= quantity(resources["requests"]["memory"])
    # A request below what the agent uses idle (about 45 MiB resident) invites OOM kills.
    assert quantity(resources["requests"]["memory"]) >= 64 * 2**20


@pytest.mark.parametrize("path", WORKLOADS)
def test_grace_period_covers_pre_stop_and_final_flush(path: Path) -> None:
    pre_stop = container(path, AGENT).get("lifecycle", {}).get("preStop")
    delay = 0
    if pre_stop is not None:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        assert len(command) == 2, command
        delay = int(command[1])
    assert pod_spec(path)["terminationGracePeriodSeconds"] >= delay + FLUSH_BUDGET


def downward_api_env(path: Path) -> dict[str, str]:
    """variable -> fieldPath, for the agent's Downward-API environment variables."""
    return {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container(path, AGENT)["env"]
        if "fieldRef" in e.get("valueFrom", {})
    }


def env_tag_variables(where: str, tmp_path: Path) -> dict[str, str]:
    """variable -> the tag the agent makes of it, in the effective config."""
    return {var: tag for tag, var, _ in effective_config(where, tmp_path).tagging.env}


@pytest.mark.parametrize("path", WORKLOADS)
def test_environment_variables_are_all_understood(path: Path, tmp_path: Path) -> None:
    where = "sidecar" if path == SIDECAR else "daemonset"
    env = container(path, AGENT)["env"]
    config_vars = [e["name"] for e in env if e["name"].startswith(PREFIX)]
    assert set(config_vars) <= set(variable_names()), "the agent would ignore a misspelt one"
    effective_config(where, tmp_path)  # refuses a bad value, naming the variable
    assert all(var != "STATSYARD_CONFIG" for var in config_vars), "use --config, next to its mount"
    # every Downward-API variable is one the agent turns into a tag
    assert set(downward_api_env(path)) <= set(env_tag_variables(where, tmp_path))


def test_sidecar_downward_api_env_describes_the_pod(tmp_path: Path) -> None:
    assert downward_api_env(SIDECAR) == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "NODE_NAME": "spec.nodeName",
        "POD_UID": "metadata.uid",
    }
    tagging = effective_config("sidecar", tmp_path).tagging
    levels = {var: level for _, var, level in tagging.env}
    # pod names are a cardinality trap: never added by default
    assert tagging.cardinality == "low"
    assert levels["POD_NAME"] == levels["POD_UID"] == "orchestrator"
    assert ("service", "example-app") in tagging.static


def test_daemonset_reads_no_pod_identity_from_its_own_environment(tmp_path: Path) -> None:
    # The agent's own pod name/namespace/uid would be wrong on every series from other pods.
    node_level = {"spec.nodeName", "status.hostIP"}
    env = downward_api_env(DAEMONSET)
    assert env == {"NODE_NAME": "spec.nodeName"}
    read_as_tags = env_tag_variables("daemonset", tmp_path)
    assert all(field in node_level for var, field in env.items() if var in read_as_tags)


# --- Kubernetes: sidecar ------------------------------------------------------------------------


def test_sidecar_app_sends_to_the_agent_over_loopback(tmp_path: Path) -> None:
    udp = effective_config("sidecar", tmp_path).udp
    assert udp is not None
    assert udp.host == "127.0.0.1"
    (app,) = [c for c in pod_spec(SIDECAR)["containers"] if c["name"] != AGENT]
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["STATSD_HOST"] == env["DD_AGENT_HOST"] == udp.host
    assert env["STATSD_PORT"] == env["DD_DOGSTATSD_PORT"] == str(udp.port)


def test_sidecar_shares_a_socket_directory() -> None:
    path = "/var/run/statsyard"
    names = {mounts(c)[path]["name"] for c in pod_spec(SIDECAR)["containers"]}
    assert len(names) == 1
    assert len(pod_spec(SIDECAR)["containers"]) == 2
    assert "emptyDir" in volume(SIDECAR, names.pop())


# --- Kubernetes: DaemonSet ----------------------------------------------------------------------


def test_daemonset_publishes_statsd_as_a_udp_host_port() -> None:
    ports = container(DAEMONSET, AGENT)["ports"]
    (statsd,) = [p for p in ports if p.get("protocol") == "UDP"]
    assert statsd["containerPort"] == statsd["hostPort"] == UDP_PORT
    # HTTP stays off the node's address: Prometheus and the kubelet reach the pod IP.
    assert all("hostPort" not in p for p in ports if p is not statsd)
    assert not pod_spec(DAEMONSET).get("hostNetwork", False)
    # Two pods on one node would fight over the hostPort and the data directory.
    assert workload(DAEMONSET)["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0


def test_daemonset_mounts_its_config_map_where_config_points() -> None:
    args = container(DAEMONSET, AGENT)["args"]
    config_path = Path(args[args.index("--config") + 1])
    mount = mounts(container(DAEMONSET, AGENT))[str(config_path.parent)]
    assert mount["readOnly"] is True
    (cm,) = [d for d in manifests(DAEMONSET) if d["kind"] == "ConfigMap"]
    assert volume(DAEMONSET, mount["name"])["configMap"]["name"] == cm["metadata"]["name"]
    assert config_path.name in cm["data"]
    # A configMap volume can only name a ConfigMap in the pod's own namespace.
    (ns,) = [d for d in manifests(DAEMONSET) if d["kind"] == "Namespace"]
    namespaces = {d["metadata"].get("namespace") for d in manifests(DAEMONSET) if d["kind"] != "Namespace"}
    assert namespaces == {ns["metadata"]["name"]}
    # hostPath and hostPort are refused by the baseline Pod Security Standard.
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_daemonset_init_container_hands_the_host_dir_to_the_agent_uid() -> None:
    (init,) = pod_spec(DAEMONSET)["initContainers"]
    uid = container(DAEMONSET, AGENT)["securityContext"]["runAsUser"]
    script = " ".join(init["command"])
    assert f"chown {uid}:{uid} {DATA_DIR}" in script
    assert mounts(init)[DATA_DIR]["name"] == mounts(container(DAEMONSET, AGENT))[DATA_DIR]["name"]
    ctx = init["securityContext"]
    # Root, but only with what chown/chmod of a directory it may no longer own need.
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True


# --- systemd ------------------------------------------------------------------------------------

UNIT_SETTINGS = [
    ("Service", "Type", "exec"),
    ("Service", "DynamicUser", "yes"),
    ("Service", "StateDirectory", "statsyard"),
    ("Service", "ConfigurationDirectory", "statsyard"),
    ("Service", "ProtectSystem", "strict"),
    ("Service", "ProtectHome", "yes"),
    ("Service", "PrivateTmp", "yes"),
    ("Service", "NoNewPrivileges", "yes"),
    ("Service", "Restart", "on-failure"),
    ("Service", "KillSignal", "SIGTERM"),
    ("Service", "CapabilityBoundingSet", ""),
    ("Service", "SystemCallErrorNumber", "EPERM"),  # a filtered call must not SIGSYS the agent
    ("Install", "WantedBy", "multi-user.target"),
]


@pytest.mark.parametrize(("section", "key", "value"), UNIT_SETTINGS)
def test_systemd_unit_setting(section: str, key: str, value: str) -> None:
    assert unit_values(unit(), section, key) == [value]


def test_systemd_paths_follow_the_managed_directories() -> None:
    (exec_start,) = unit_values(unit(), "Service", "ExecStart")
    argv = shlex.split(exec_start)
    (state,) = unit_values(unit(), "Service", "StateDirectory")
    (conf,) = unit_values(unit(), "Service", "ConfigurationDirectory")
    assert argv[argv.index("--data-dir") + 1] == f"/var/lib/{state}"
    config = argv[argv.index("--config") + 1]
    assert Path(config).parent == Path(f"/etc/{conf}")
    assert Path(config).name == UNIT_TOML.name


def test_systemd_restart_policy_matches_exit_codes() -> None:
    # A bad config exits 2: restarting cannot help.
    assert str(EXIT_USAGE) in unit_values(unit(), "Service", "RestartPreventExitStatus")[0].split()
    assert unit_values(unit(), "Service", "RestartSec")
    (timeout,) = unit_values(unit(), "Service", "TimeoutStopSec")
    assert int(timeout) >= FLUSH_BUDGET


def test_systemd_sandbox_leaves_what_the_agent_needs() -> None:
    (families,) = unit_values(unit(), "Service", "RestrictAddressFamilies")
    assert set(families.split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # ProcSubset=pid hides /proc/net/udp, the source of statsyard_udp_kernel_drops_total.
    assert unit_values(unit(), "Service", "ProcSubset") in ([], ["all"])
    # numpy's OpenBLAS calls mbind (in @resources) at import: denied, it would fail with EPERM.
    filters = unit_values(unit(), "Service", "SystemCallFilter")
    denied = [i for i, f in enumerate(filters) if f.startswith("~") and "@resources" in f.split()]
    if denied:
        assert any("mbind" in f.split() for f in filters[denied[-1] + 1 :] if not f.startswith("~"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists: point it at this machine's installed script.
    installed = shutil.which(AGENT)
    if installed is None:
        pytest.skip(f"{AGENT} is not installed as a script here")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(f"/usr/local/bin/{AGENT}", installed))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    # Unknown or misspelt directives are only warnings (exit 0), so stderr must be empty too.
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# --- Unix socket ---------------------------------------------------------------------------------

SOCKET_DIR = "/var/run/statsyard"


def unix_path(where: str, tmp_path: Path) -> Path:
    path = effective_config(where, tmp_path).unix.path
    assert path is not None, f"{where}: no --unix socket"
    return path


@pytest.mark.parametrize("path", WORKLOADS)
def test_unix_socket_lives_in_a_writable_volume(path: Path, tmp_path: Path) -> None:
    where = "sidecar" if path == SIDECAR else "daemonset"
    sock = unix_path(where, tmp_path)
    assert str(sock.parent) == SOCKET_DIR
    mount = mounts(container(path, AGENT))[SOCKET_DIR]
    assert not mount.get("readOnly", False)
    vol = volume(path, mount["name"])
    if path == SIDECAR:
        assert "emptyDir" in vol
    else:
        assert vol["hostPath"]["path"] == SOCKET_DIR


def test_sidecar_app_reaches_and_may_write_the_socket(tmp_path: Path) -> None:
    config = effective_config("sidecar", tmp_path)
    sock = unix_path("sidecar", tmp_path)
    (app,) = [c for c in pod_spec(SIDECAR)["containers"] if c["name"] != AGENT]
    assert mounts(app)[SOCKET_DIR]["name"] == mounts(container(SIDECAR, AGENT))[SOCKET_DIR]["name"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["DD_DOGSTATSD_URL"] == f"unix://{sock}"
    # The socket belongs to the agent's group (mode 0660); fsGroup puts the app in that group.
    agent_gid = container(SIDECAR, AGENT)["securityContext"]["runAsGroup"]
    assert pod_spec(SIDECAR)["securityContext"]["fsGroup"] == agent_gid
    assert config.unix.mode & 0o060 == 0o060


@pytest.mark.parametrize(("path", "setting"), [pytest.param(SIDECAR, "shareProcessNamespace",
                                                            id="sidecar"),
                                               pytest.param(DAEMONSET, "hostPID", id="daemonset")])
def test_origin_detection_can_see_the_senders_pids(path: Path, setting: str, tmp_path: Path) -> None:
    where = "sidecar" if path == SIDECAR else "daemonset"
    if effective_config(where, tmp_path).unix.origin_detection:
        # otherwise the kernel reports pid 0 for every sender in another pid namespace
        assert pod_spec(path).get(setting) is True


def test_daemonset_socket_dir_is_handed_to_the_agent_and_open_to_apps(tmp_path: Path) -> None:
    config = effective_config("daemonset", tmp_path)
    assert config.unix.mode & 0o006 == 0o006  # apps in other pods run as any uid
    (init,) = pod_spec(DAEMONSET)["initContainers"]
    uid = container(DAEMONSET, AGENT)["securityContext"]["runAsUser"]
    script = " ".join(init["command"])
    assert re.search(rf"chown {uid}:{uid} [^&]*{SOCKET_DIR}", script)
    assert re.search(rf"chmod 0755 {SOCKET_DIR}", script)
    assert mounts(init)[SOCKET_DIR]["name"] == mounts(container(DAEMONSET, AGENT))[SOCKET_DIR]["name"]


def test_dockerfile_prepares_the_socket_dir_for_the_agent() -> None:
    final = dockerfile()[-1]
    uid, _, gid = final.one("USER").partition(":")
    owners = re.findall(r"chown (\d+):(\d+) (\S+)", " ".join(final.all("RUN")))
    assert (uid, gid, SOCKET_DIR) in owners


def test_systemd_socket_is_in_the_runtime_directory(tmp_path: Path) -> None:
    config = effective_config("systemd", tmp_path)
    sock = unix_path("systemd", tmp_path)
    (runtime,) = unit_values(unit(), "Service", "RuntimeDirectory")
    assert sock.parent == Path(f"/run/{runtime}")
    assert unit_values(unit(), "Service", "RuntimeDirectoryMode") == ["0755"]
    # DynamicUser: no local app shares the agent's group, so the socket must be open to all
    assert config.unix.mode & 0o006 == 0o006
    if config.unix.origin_detection:
        # invisible/noaccess/ptraceable hide the senders' /proc entries from the agent
        assert unit_values(unit(), "Service", "ProtectProc") in ([], ["default"])


# --- README: "Run as a sidecar" -----------------------------------------------------------------


def _is_part_of(excerpt: Any, full: Any, where: str) -> None:
    if isinstance(excerpt, dict):
        assert isinstance(full, dict), where
        for key, value in excerpt.items():
            assert key in full, f"{where}.{key} is not in {SIDECAR.name}"
            _is_part_of(value, full[key], f"{where}.{key}")
    elif isinstance(excerpt, list) and excerpt and all(
        isinstance(item, dict) and "name" in item for item in excerpt
    ):
        by_name = {item["name"]: item for item in full}
        for item in excerpt:
            assert item["name"] in by_name, f"{where}: no {item['name']!r} in {SIDECAR.name}"
            _is_part_of(item, by_name[item["name"]], f"{where}[{item['name']}]")
    else:
        assert excerpt == full, f"{where}: README shows {excerpt!r}, {SIDECAR.name} has {full!r}"


def test_readme_sidecar_excerpt_is_taken_from_the_manifest() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Run as a sidecar\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    excerpt = yaml.safe_load(block)
    _is_part_of(excerpt, pod_spec(SIDECAR), "spec.template.spec")
    assert {c["name"] for c in excerpt["containers"]} == {"app", AGENT}
