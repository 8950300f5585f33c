"""The built-in dashboard: its HTTP surface, and the page end to end in headless Chromium
(Debian ``chromium`` driven by Playwright): it loads, a series is chosen, the chart shows the
points that were sent. The test saves a screenshot in ``tests/artifacts/dashboard.png``."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from .conftest import RunningAgent
from .test_graphite import call, get_json, send

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def test_index_page_is_served_with_a_strict_policy(agent: RunningAgent) -> None:
    status, headers, body = await call(agent.http_port, "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "default-src 'none'" in policy
    assert "unsafe" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    page = body.decode()
    assert '<script src="/static/dashboard.js" defer></script>' in page
    assert "http://" not in page
    assert "https://" not in page


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/static/dashboard.js", 200, "text/javascript; charset=utf-8"),
        ("/static/dashboard.css", 200, "text/css; charset=utf-8"),
        ("/static/favicon.svg", 200, "image/svg+xml"),
        ("/static/nope.js", 404, None),
        ("/static/../_api.py", 404, None),
        ("/static/%2e%2e/_api.py", 404, None),
    ],
)
async def test_static_files_only_from_the_web_folder(
    agent: RunningAgent, path: str, status: int, kind: str | None
) -> None:
    got, headers, _ = await call(agent.http_port, path)
    assert got == status
    if kind is not None:
        assert headers["Content-Type"] == kind


async def test_dashboard_paths_refuse_other_methods(agent: RunningAgent) -> None:
    status, _, _ = await call(agent.http_port, "/", method="POST", form={"a": "b"})
    assert status == 405


async def test_health_panel_data(agent: RunningAgent) -> None:
    await send(agent, b"a:1|c\nb:2|g\nnot a line")
    await agent.handle.flush()
    health = await get_json(agent.http_port, "/dashboard/health")
    assert isinstance(health, dict)
    assert health["status"] == "ok"
    ingest = health["ingest"]
    assert (ingest["lines"], ingest["packets"], ingest["metrics"]) == (3, 1, 2)
    assert ingest["lines_per_second"] > 0
    assert health["errors"]["parse_errors"] == 1
    assert health["errors"]["parse_errors_by_reason"] == {"malformed_line": 1}
    assert health["errors"]["kernel_drops"] == 0
    assert health["flush"]["flushes"] == 1
    assert health["flush"]["average_seconds"] > 0
    assert health["restarts"] == 0
    assert health["tasks"]["listener"] == {"state": "running", "restarts": 0}


async def test_search(agent: RunningAgent) -> None:
    await send(agent, b"web.latency:1|ms\nweb.hits:1|c\ndb.hits:1|c")
    await agent.handle.flush()
    found = await get_json(agent.http_port, "/dashboard/search?q=HITS.count")
    assert found == {"results": ["stats.counters.db.hits.count", "stats.counters.web.hits.count"], "total": 2}
    found = await get_json(agent.http_port, "/dashboard/search?q=stats.*.web.*.count&limit=1")
    assert found == {"results": ["stats.counters.web.hits.count"], "total": 2}  # and the timer's count
    assert await get_json(agent.http_port, "/dashboard/search?q=") == {"results": [], "total": 0}


# -- the page in a real browser ------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def drive_dashboard(url: str, executable: str, screenshot: Path) -> dict[str, Any]:
    """Open the dashboard, choose two series (one by search, one through the tree), read what
    the charts drew, and save a screenshot. Blocking: run it in a worker thread."""
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {"errors": []}
    with tempfile.TemporaryDirectory(prefix="statsyard-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
            device_scale_factor=1,
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: out["errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out["errors"].append(str(e)))
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("body[data-health='loaded']", timeout=30_000)
            page.fill("#search", "demo.temperature")
            gauge = "stats.gauges.demo.temperature"
            page.click(f"#results li[data-series='{gauge}']", timeout=30_000)
            page.wait_for_selector(f".chart-card[data-target='{gauge}'] circle.point", timeout=30_000)
            out["gauge"] = page.eval_on_selector_all(
                f".chart-card[data-target='{gauge}'] circle.point",
                "els => els.map(e => [Number(e.dataset.t), Number(e.dataset.v)])",
            )
            for node in ("stats", "counters", "demo", "requests"):
                page.click(f"#tree span.branch:text-is('{node}')", timeout=30_000)
            page.click("#tree span[data-series='stats.counters.demo.requests.count']", timeout=30_000)
            counter = "stats.counters.demo.requests.count"
            page.wait_for_selector(f".chart-card[data-target='{counter}'] circle.point", timeout=30_000)
            out["counter"] = page.eval_on_selector_all(
                f".chart-card[data-target='{counter}'] circle.point",
                "els => els.map(e => [Number(e.dataset.t), Number(e.dataset.v)])",
            )
            out["rate"] = page.inner_text("#h-rate")
            out["status"] = page.inner_text("#status")
            out["hash"] = page.evaluate("location.hash")
            page.mouse.move(0, 0)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return out


async def test_dashboard_in_headless_chromium(agent: RunningAgent) -> None:
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium binary (Debian package 'chromium'; tests/run-all.sh installs it)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

    # The last 48 s, a flush every 2 s. The storage drops points of a window it has sealed, and
    # it seals a window 60 s after its end, so a stamp s stays writable until at least s + 61:
    # these are all written long before that.
    now = int(time.time())
    first = now - 48
    sent_gauge: list[tuple[int, float]] = []
    sent_counter: list[tuple[int, float]] = []
    for i, stamp in enumerate(range(first, now + 1, 2)):
        temperature = round(21 + 4 * math.sin(i / 4) + (i % 5) * 0.3, 1)
        requests = 20 + (i * 37) % 23
        await send(
            agent,
            f"demo.temperature:{temperature}|g\ndemo.requests:{requests}|c\n"
            f"demo.latency:{10 + i % 7}|ms".encode(),
        )
        await agent.handle.flush(now=stamp)
        sent_gauge.append((stamp, temperature))
        sent_counter.append((stamp, float(requests)))
    assert agent.handle.state.tsdb.stats.late_points_dropped == 0

    shot = ARTIFACTS / "dashboard.png"
    url = f"http://127.0.0.1:{agent.http_port}/#range=-2min"
    seen = await trio.to_thread.run_sync(drive_dashboard, url, executable, shot)

    assert seen["errors"] == []
    assert seen["gauge"] == [[t, v] for t, v in sent_gauge]
    assert seen["counter"] == [[t, v] for t, v in sent_counter]
    assert seen["status"] == "ok"
    assert seen["rate"] not in ("", "\u2013")  # the page's placeholder is an en dash
    assert "s=stats.gauges.demo.temperature" in seen["hash"]
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(seen)  # plain data only
