"""The Graphite read API of a running agent, driven with the request shapes Grafana's Graphite
datasource sends (recorded from grafana/grafana ``pkg/tsdb/graphite`` and the datasource's
frontend), answered the way graphite-web 1.1 answers them."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from statsyard_agent import _graphite

from .conftest import RunningAgent, make_config, start_agent

Reply = tuple[int, dict[str, str], bytes]


def request(
    port: int, path: str, *, method: str = "GET", form: dict[str, str] | list[tuple[str, str]] | None = None
) -> Reply:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


async def call(port: int, path: str, **kwargs: object) -> Reply:
    return await trio.to_thread.run_sync(lambda: request(port, path, **kwargs))  # type: ignore[arg-type]


async def get_json(port: int, path: str, **kwargs: object) -> object:
    status, _, body = await call(port, path, **kwargs)
    assert status == 200, body
    return json.loads(body)


async def send(agent: RunningAgent, payload: bytes) -> None:
    lines = agent.handle.state.ingest.lines + payload.count(b"\n") + 1
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.sendto(payload, ("127.0.0.1", agent.udp_port))
    await agent.wait_lines(lines)


async def seed(agent: RunningAgent) -> int:
    """Two flushes, at T1 and T1 + 10 where T1 (returned) is the start of a recent minute:
    recent enough that the storage has not sealed its window (it drops points for sealed ones)."""
    # 15 s back first, so T1 + 10 is already in the past for "until=now" queries.
    t1 = (int(time.time()) - 15) // 60 * 60
    await send(
        agent,
        b"api.hits:3|c\napi.errors:1|c\ntemp:20|g\nlat:100|ms\nlat:100|ms\nlat:100|ms\n"
        b"req:1|c|#env:prod,dc:eu\nreq:2|c|#env:dev,dc:eu",
    )
    await agent.handle.flush(now=t1)
    await send(agent, b"api.hits:5|c\ntemp:25|g\nlat:200|ms\nreq:4|c|#env:prod,dc:eu")
    await agent.handle.flush(now=t1 + 10)
    assert agent.handle.state.tsdb.stats.late_points_dropped == 0
    return t1


@dataclass
class Seeded:
    agent: RunningAgent
    t1: int

    @property
    def port(self) -> int:
        return self.agent.http_port


@pytest.fixture
async def seeded(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Seeded]:
    running = await start_agent(nursery, make_config(tmp_path / "data"))
    t1 = await seed(running)
    yield Seeded(running, t1)
    await running.stop()


def series_points(start: int, values: list[float | None]) -> list[list[float | int | None]]:
    return [[v, start + i] for i, v in enumerate(values)]


# -- /render: what Grafana sends --------------------------------------------------------------------


async def test_grafana_backend_render_request(seeded: Seeded) -> None:
    # pkg/tsdb/graphite: POST /render, form-encoded, unix from/until, format=json, maxDataPoints
    form = {
        "from": str(seeded.t1 - 2),
        "until": str(seeded.t1 + 13),
        "format": "json",
        "maxDataPoints": "1188",
        "target": "stats.counters.api.hits.count",
    }
    status, headers, body = await call(seeded.port, "/render", method="POST", form=form)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    values: list[float | None] = [None] * 15
    values[2], values[12] = 3.0, 5.0
    assert json.loads(body) == [
        {
            "target": "stats.counters.api.hits.count",
            "tags": {"name": "stats.counters.api.hits.count"},
            "datapoints": series_points(seeded.t1 - 2, values),
        }
    ]


async def test_grafana_health_check_is_a_constant_line(seeded: Seeded) -> None:
    now = int(time.time())
    form = {
        "from": str(now - 3600),
        "until": str(now),
        "format": "json",
        "maxDataPoints": "100",
        "target": "constantLine(100)",
    }
    reply = await get_json(seeded.port, "/render", method="POST", form=form)
    assert reply == [
        {
            "target": "100",
            "tags": {"name": "100"},
            "datapoints": [[100.0, now - 3600], [100.0, now - 1800], [100.0, now]],
        }
    ]


async def test_grafana_frontend_render_with_relative_times(seeded: Seeded) -> None:
    # the datasource's frontend: now-6h -> -6h, and a panel's maxDataPoints
    form = [
        ("target", "aliasByNode(stats.counters.api.*.count, 3)"),
        ("target", "stats.gauges.temp"),
        ("from", "-6h"),
        ("until", "now"),
        ("format", "json"),
        ("maxDataPoints", "500"),
    ]
    reply = await get_json(seeded.port, "/render", method="POST", form=form)
    assert isinstance(reply, list)
    assert [s["target"] for s in reply] == ["errors", "hits", "stats.gauges.temp"]
    non_null = {s["target"]: [v for v, _ in s["datapoints"] if v is not None] for s in reply}
    # 6 h of the 1 s tier in 500 points: consolidated by each stat's own function. The 44 s
    # buckets are aligned to multiples of 44 (graphite-web's nudge), so the two seeded flushes
    # 10 s apart share a bucket on most minutes but not all: compare what consolidation keeps.
    assert sum(non_null["errors"]) == 1.0  # 1, then 0 while idle: in one bucket or two
    assert sum(non_null["hits"]) == 8.0  # counts add up, in one bucket or two
    assert non_null["stats.gauges.temp"][-1] == 25.0  # a gauge keeps its last value
    steps = {s["datapoints"][1][1] - s["datapoints"][0][1] for s in reply}
    assert steps == {44}  # ceil(21600 / 500) = 44 s buckets


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("stats.counters.api.hits.count", [8.0]),  # counts add up
        ("stats.gauges.temp", [25.0]),  # a gauge keeps its last value
        ("stats.timers.lat.upper", [200.0]),  # upper: the maximum
        ("stats.timers.lat.mean", [125.0]),  # mean: weighted by the count (300 + 200) / 4
        ("stats.timers.lat.count", [4.0]),
    ],
)
async def test_max_data_points_consolidates_by_the_stat_s_own_function(
    seeded: Seeded, target: str, expected: list[float]
) -> None:
    path = f"/render?target={target}&from={seeded.t1}&until={seeded.t1 + 20}&maxDataPoints=1"
    [series] = await get_json(seeded.port, path)  # type: ignore[misc]
    assert [v for v, _ in series["datapoints"] if v is not None] == expected


async def test_percentiles_come_from_the_merged_sketches(seeded: Seeded) -> None:
    base = f"/render?target=stats.timers.lat.p50&from={seeded.t1}&until={seeded.t1 + 20}"
    [per_flush] = await get_json(seeded.port, base + "&maxDataPoints=2")  # type: ignore[misc]
    assert [v for v, _ in per_flush["datapoints"]] == [
        pytest.approx(100, rel=0.01),
        pytest.approx(200, rel=0.01),
    ]
    # one slot: the median of all four samples (100, 100, 100, 200), not a mean of medians (150)
    [merged] = await get_json(seeded.port, base + "&maxDataPoints=1")  # type: ignore[misc]
    assert merged["datapoints"][0][0] == pytest.approx(100, rel=0.01)


async def test_functions_over_http(seeded: Seeded) -> None:
    base = f"&from={seeded.t1}&until={seeded.t1 + 20}"
    [total] = await get_json(seeded.port, "/render?target=sumSeries(stats.counters.api.*.count)" + base)  # type: ignore[misc]
    assert total["target"] == "sumSeries(stats.counters.api.*.count)"
    assert total["tags"] == {"name": "sumSeries(stats.counters.api.*.count)", "aggregatedBy": "sum"}
    assert [(v, t) for v, t in total["datapoints"] if v is not None] == [
        (4.0, seeded.t1),
        (5.0, seeded.t1 + 10),
    ]
    target = urllib.parse.quote("summarize(stats.counters.req.count, '1min', 'sum')")
    reply = await get_json(seeded.port, f"/render?target={target}&from={seeded.t1}&until={seeded.t1 + 60}")
    assert isinstance(reply, list)
    assert {s["target"]: s["datapoints"] for s in reply} == {
        'summarize(stats.counters.req.count;dc=eu;env=dev, "1min", "sum")': [[2.0, seeded.t1]],
        'summarize(stats.counters.req.count;dc=eu;env=prod, "1min", "sum")': [[5.0, seeded.t1]],
    }


async def test_tagged_series(seeded: Seeded) -> None:
    base = f"&from={seeded.t1}&until={seeded.t1 + 20}&maxDataPoints=2"
    target = urllib.parse.quote("seriesByTag('name=stats.counters.req.count','env=prod')")
    [prod] = await get_json(seeded.port, f"/render?target={target}{base}")  # type: ignore[misc]
    assert prod["target"] == "stats.counters.req.count;dc=eu;env=prod"
    assert prod["tags"] == {"name": "stats.counters.req.count", "env": "prod", "dc": "eu"}
    assert prod["datapoints"] == [[1.0, seeded.t1], [4.0, seeded.t1 + 10]]
    target = urllib.parse.quote("stats.counters.req.count;env=dev")
    [dev] = await get_json(seeded.port, f"/render?target={target}{base}")  # type: ignore[misc]
    assert dev["datapoints"] == [[2.0, seeded.t1], [0.0, seeded.t1 + 10]]


async def test_csv_and_svg_formats(seeded: Seeded) -> None:
    path = (
        f"/render?target=stats.gauges.temp&from={seeded.t1}&until={seeded.t1 + 20}&maxDataPoints=2&format=csv"
    )
    status, headers, body = await call(seeded.port, path)
    assert status == 200
    assert headers["Content-Type"].startswith("text/csv")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seeded.t1))
    assert body.decode().splitlines()[0] == f"stats.gauges.temp,{stamp},20"
    t1 = seeded.t1
    path = f"/render?target=stats.gauges.temp&from={t1}&until={t1 + 20}&format=svg&width=400&height=200"
    status, headers, body = await call(seeded.port, path)
    assert status == 200
    assert headers["Content-Type"].startswith("image/svg+xml")
    svg = ET.fromstring(body)
    dots = svg.findall(".//{http://www.w3.org/2000/svg}circle")
    assert [(int(d.get("data-t", 0)), float(d.get("data-v", 0))) for d in dots] == [
        (seeded.t1, 20.0),
        (seeded.t1 + 10, 25.0),
    ]


async def test_no_null_points(seeded: Seeded) -> None:
    t1 = seeded.t1
    path = f"/render?target=stats.gauges.{{temp,nothing}}&from={t1 - 5}&until={t1 + 20}&noNullPoints=true"
    reply = await get_json(seeded.port, path)
    assert reply == [
        {
            "target": "stats.gauges.temp",
            "tags": {"name": "stats.gauges.temp"},
            "datapoints": [[20.0, seeded.t1], [25.0, seeded.t1 + 10]],
        }
    ]


async def test_no_target_renders_an_empty_list(seeded: Seeded) -> None:
    assert await get_json(seeded.port, "/render?from=-1h") == []


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/render?target=nope(stats.gauges.temp)", 400, "unknown function 'nope'"),
        ("/render?target=sumSeries(", 400, "bad target"),
        ("/render?target=a&from=yesterdayish", 400, "bad time 'yesterdayish'"),
        ("/render?target=a&from=-1h&until=-2h", 400, "must be after"),
        ("/render?target=a&format=png", 400, "format 'png' is not supported"),
        ("/render?target=a&maxDataPoints=0", 400, "maxDataPoints must be between"),
        ("/render?target=a.{b", 400, "unclosed"),
        ("/metrics/find", 400, "missing required parameter 'query'"),
        ("/metrics/find?query=a.[b", 400, "bad glob"),
        ("/tags/autoComplete/values?expr=env%3Dprod", 400, "missing required parameter 'tag'"),
        ("/tags/autoComplete/tags?expr=nonsense", 400, "bad tag expression"),
        ("/functions/nope", 404, "no such function"),
    ],
)
async def test_bad_requests_say_why(seeded: Seeded, path: str, status: int, message: str) -> None:
    got, _, body = await call(seeded.port, path)
    assert got == status
    assert message in body.decode()


async def test_limits_answer_413_naming_the_limit(nursery: trio.Nursery, tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", graphite={"max_series": 3, "max_points": 100})
    agent = await start_agent(nursery, config)
    t1 = await seed(agent)
    status, _, body = await call(
        agent.http_port, f"/render?target=stats.timers.lat.*&from={t1}&until={t1 + 20}"
    )
    assert status == 413
    assert "max_series" in body.decode()
    assert "limit" in body.decode()
    status, _, body = await call(
        agent.http_port, f"/render?target=stats.gauges.temp&from={t1 - 200}&until={t1 + 20}"
    )
    assert status == 413
    assert "max_points" in body.decode()
    # the same ranges within the limits are fine
    status, _, _ = await call(agent.http_port, f"/render?target=stats.gauges.temp&from={t1}&until={t1 + 20}")
    assert status == 200
    await agent.stop()


async def test_renders_run_in_a_worker_thread(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[bool] = []
    original = _graphite.run_render

    def spy(*args: object) -> object:
        threads.append(threading.current_thread() is threading.main_thread())
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_graphite, "run_render", spy)
    status, _, _ = await call(seeded.port, "/render?target=stats.gauges.temp&from=-1h")
    assert status == 200
    assert threads == [False]


# -- /metrics/find and friends ---------------------------------------------------------------------

BRANCH = {"allowChildren": 1, "expandable": 1, "leaf": 0, "context": {}}
LEAF = {"allowChildren": 0, "expandable": 0, "leaf": 1, "context": {}}


async def test_grafana_backend_metrics_find(seeded: Seeded) -> None:
    # pkg/tsdb/graphite resource handler: POST /metrics/find?from&until with form query=...
    reply = await get_json(
        seeded.port,
        f"/metrics/find?from={seeded.t1}&until={seeded.t1 + 60}",
        method="POST",
        form={"query": "*"},
    )
    assert reply == [{"text": "stats", "id": "stats", **BRANCH}]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "stats.*",
            [
                ("counters", "stats.counters", BRANCH),
                ("gauges", "stats.gauges", BRANCH),
                ("timers", "stats.timers", BRANCH),
            ],
        ),
        ("stats.gauges.*", [("temp", "stats.gauges.temp", LEAF)]),
        (
            "stats.counters.api.*",
            [("errors", "stats.counters.api.errors", BRANCH), ("hits", "stats.counters.api.hits", BRANCH)],
        ),
        (
            "stats.counters.api.h*.*",
            [("count", "stats.counters.api.h*.count", LEAF), ("rate", "stats.counters.api.h*.rate", LEAF)],
        ),
        (
            "stats.timers.lat.p9*",
            [
                ("p90", "stats.timers.lat.p90", LEAF),
                ("p95", "stats.timers.lat.p95", LEAF),
                ("p99", "stats.timers.lat.p99", LEAF),
                ("p999", "stats.timers.lat.p999", LEAF),
            ],
        ),
        ("nothing.*", []),
    ],
)
async def test_grafana_frontend_metrics_find(
    seeded: Seeded, query: str, expected: list[tuple[str, str, dict[str, object]]]
) -> None:
    reply = await get_json(seeded.port, "/metrics/find?query=" + urllib.parse.quote(query))
    assert reply == [{"text": text, "id": node_id, **kind} for text, node_id, kind in expected]


async def test_find_wildcards_and_completer(seeded: Seeded) -> None:
    reply = await get_json(seeded.port, "/metrics/find?query=stats.counters.api.*&wildcards=1")
    assert isinstance(reply, list)
    assert reply[0] == {
        "text": "*",
        "id": "stats.counters.api.*",
        "allowChildren": 1,
        "expandable": 1,
        "leaf": 0,
    }
    reply = await get_json(seeded.port, "/metrics/find?query=stats.gauges.*&format=completer")
    assert reply == {"metrics": [{"path": "stats.gauges.temp", "name": "temp", "is_leaf": "1"}]}


async def test_metrics_expand_and_index(seeded: Seeded) -> None:
    reply = await get_json(
        seeded.port, "/metrics/expand?query=stats.counters.api.*.count&query=stats.gauges.*"
    )
    assert reply == {
        "results": ["stats.counters.api.errors.count", "stats.counters.api.hits.count", "stats.gauges.temp"]
    }
    reply = await get_json(seeded.port, "/metrics/expand?query=stats.*&groupByExpr=1")
    assert reply == {"results": {"stats.*": ["stats.counters", "stats.gauges", "stats.timers"]}}
    names = await get_json(seeded.port, "/metrics/index.json")
    assert isinstance(names, list)
    assert "stats.gauges.temp" in names
    assert names == sorted(set(names))


async def test_health_metrics_and_find_both_answer(seeded: Seeded) -> None:
    status, headers, body = await call(seeded.port, "/metrics")
    assert status == 200
    assert b"statsyard_lines_received_total" in body
    status, headers, body = await call(seeded.port, "/metrics/find?query=*")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    status, _, _ = await call(seeded.port, "/render?target=a", method="DELETE")
    assert status == 405


# -- tags ------------------------------------------------------------------------------------------


async def test_tags_endpoints(seeded: Seeded) -> None:
    port = seeded.port
    assert await get_json(port, "/tags") == [{"tag": "dc"}, {"tag": "env"}, {"tag": "name"}]
    assert await get_json(port, "/tags?filter=^e") == [{"tag": "env"}]
    assert await get_json(port, "/tags/env") == {
        "tag": "env",
        "values": [{"count": 2, "value": "dev"}, {"count": 2, "value": "prod"}],
    }
    # the frontend's autocomplete: tags of the series the expressions select, minus those used
    expr = urllib.parse.quote("name=stats.counters.req.count")
    assert await get_json(port, f"/tags/autoComplete/tags?expr={expr}&limit=100") == ["dc", "env"]
    assert await get_json(port, f"/tags/autoComplete/tags?expr={expr}&tagPrefix=e") == ["env"]
    assert await get_json(port, f"/tags/autoComplete/values?expr={expr}&tag=env") == ["dev", "prod"]
    assert await get_json(port, "/tags/autoComplete/values?tag=env&valuePrefix=p") == ["prod"]
    values = await get_json(port, "/tags/autoComplete/values?tag=name&valuePrefix=stats.gauges")
    assert values == ["stats.gauges.temp"]


async def test_version_functions_and_events(seeded: Seeded) -> None:
    status, _headers, body = await call(seeded.port, "/version")
    assert (status, body) == (200, b"1.1.10")
    functions = await get_json(seeded.port, "/functions")
    assert isinstance(functions, dict)
    assert functions["sumSeries"]["group"] == "Combine"
    one = await get_json(seeded.port, "/functions/aliasByNode")
    assert isinstance(one, dict)
    assert one["name"] == "aliasByNode"
    assert await get_json(seeded.port, "/events/get_data?from=-6h&until=now") == []


async def test_series_by_tag_over_many_names(seeded: Seeded) -> None:
    agent = seeded.agent
    noise = b"\n".join(b"noise.n%d:%d|c" % (i, i) for i in range(150))
    await send(agent, noise)
    await agent.handle.flush(now=seeded.t1 + 20)
    base = f"&from={seeded.t1 + 20}&until={seeded.t1 + 21}"
    # two names out of 150 alike: read one by one rather than through a broad glob
    target = urllib.parse.quote("seriesByTag('name=~stats\\.counters\\.noise\\.n(7|42)\\.count$')")
    reply = await get_json(seeded.port, f"/render?target={target}{base}")
    assert isinstance(reply, list)
    assert {s["target"]: s["datapoints"][0][0] for s in reply} == {
        "stats.counters.noise.n42.count": 42.0,
        "stats.counters.noise.n7.count": 7.0,
    }
    # many names sharing a shape: one glob for all of them
    target = urllib.parse.quote("seriesByTag('name=~stats\\.counters\\.noise\\..*\\.count$')")
    reply = await get_json(seeded.port, f"/render?target={target}{base}")
    assert isinstance(reply, list)
    assert len(reply) == 150
    assert sum(s["datapoints"][0][0] for s in reply) == sum(range(150))
