"""Issue 8: the live dashboard, loaded in headless Chromium against a real worker.

Chromium is driven over the DevTools protocol (a websocket, through aiohttp): open the page,
read every ``data-metric`` element while the worker serves traffic, compare the numbers with
the worker's JSON endpoints, and save a screenshot to test-artifacts/dashboard.png.
scripts/install-chromium.sh installs the browser (``make test`` calls it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from connectors.client import SluicegateClient
from tests.integration.conftest import ROOT, Stack, Worker, chat_kwargs, eventually

CHROMIUM = "/usr/bin/chromium"
ARTIFACT = ROOT / "test-artifacts" / "dashboard.png"
READ_METRICS = """JSON.stringify({
  updates: (window.sluicegateDashboard || {}).updates || 0,
  errors: (window.sluicegateDashboard || {}).failures || 0,
  metrics: Object.fromEntries(
    [...document.querySelectorAll('[data-metric]')].map(e => [e.dataset.metric, e.textContent])
  ),
})"""


class Browser:
    """Headless Chromium over the DevTools protocol: just enough to load, read and shoot."""

    def __init__(self, process: subprocess.Popen[bytes], ws: Any, session: Any) -> None:
        self.process = process
        self.ws = ws
        self.session = session
        self.errors: list[str] = []  # uncaught exceptions and console errors on the page
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, profile: Path) -> Browser:
        binary = shutil.which("chromium") or CHROMIUM
        assert Path(binary).exists(), "no Chromium: run scripts/install-chromium.sh"
        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "about:blank",
        ]
        log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 - lives with the process
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        port_file = profile / "DevToolsActivePort"

        async def port_known() -> bool:
            assert process.poll() is None, (profile.parent / "chromium.log").read_text()
            return port_file.exists() and bool(port_file.read_text().strip())

        await eventually(port_known, 60, "Chromium's DevTools port")
        port = int(port_file.read_text().split()[0])
        session = aiohttp.ClientSession()
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        browser = cls(process, ws, session)
        await browser.call("Runtime.enable")
        await browser.call("Page.enable")
        return browser

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(data["params"]["exceptionDetails"])[:500])
            elif (
                data.get("method") == "Runtime.consoleAPICalled"
                and data["params"].get("type") == "error"
            ):
                self.errors.append(json.dumps(data["params"]["args"])[:500])

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self.ws.send_json({"id": message_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 30)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return dict(reply.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        height = int(await self.evaluate("document.documentElement.scrollHeight"))
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=1400,
            height=max(1000, height),
            deviceScaleFactor=1,
            mobile=False,
        )
        await asyncio.sleep(0.3)  # one frame to lay out at the new size
        shot = await self.call("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()
        await self.session.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def get_json(worker: Worker, path: str) -> Any:
    response = httpx.get(f"http://127.0.0.1:{worker.port}{path}", timeout=10)
    response.raise_for_status()
    return response.json()


def number(text: str) -> float:
    """A number as the page shows it: 1,234 / $0.001234 / 75.0%."""
    return float(text.replace(",", "").replace("$", "").replace("%", ""))


def _configure(config: dict[str, Any]) -> None:
    config["tenants"]["t1"]["daily_budget_usd"] = 2.0
    config["tenants"]["t2"]["monthly_budget_usd"] = 50.0
    config["tenants"]["t3"]["rpm"] = 1  # its second request within the minute is rejected


async def test_dashboard_shows_the_workers_live_numbers_in_a_browser(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack: Stack = make_stack(_configure)
    worker = stack.start_worker()
    browser = await Browser.start(tmp_path / "chromium-profile")
    try:
        await browser.call("Page.navigate", url=f"http://127.0.0.1:{worker.port}/dashboard")

        async def page_live() -> Any:
            seen = json.loads(await browser.evaluate(READ_METRICS))
            return seen if seen["updates"] >= 1 else None

        first = await eventually(page_live, 30, "the dashboard's first update")
        assert first["metrics"]["responses.total"] == "0"

        traffic = [
            ("t1", "critical", "what is a sluice gate?"),
            ("t1", "high", "what is a weir?"),
            ("t1", "normal", "what is a lock?"),
            ("t1", "low", "what is a dam?"),
            ("t2", "high", "what is a canal?"),
            ("t2", "normal", "what is a culvert?"),
            ("t3", "normal", "what is a spillway?"),
        ]
        async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
            for wave in range(2):  # two waves, so the charts have something to draw
                # t3 asks something new each wave: a repeat would be answered from cache,
                # which comes before the rate limit.
                asked = [(t, p, f"{q} (wave {wave})" if t == "t3" else q) for t, p, q in traffic]
                answers = await asyncio.gather(
                    *(client.complete(timeout=60, **chat_kwargs(q, t, p)) for t, p, q in asked)
                )
                statuses = {(t, r.status) for (t, _, _), r in zip(traffic, answers, strict=True)}
                if wave == 0:
                    assert ("t3", "ok") in statuses and ("t1", "ok") in statuses
                else:  # repeats come from cache; t3 is over its rate limit
                    assert ("t1", "cached") in statuses and ("t3", "rejected") in statuses
                await asyncio.sleep(2.5)  # let the page see each wave separately

        status = get_json(worker, "/status")
        counts = status["counts"]
        cache = get_json(worker, "/cache")
        budgets = get_json(worker, "/budgets")
        data = get_json(worker, "/dashboard/data")
        assert sum(v for k, v in counts.items() if k.startswith("status.")) == 2 * len(traffic)

        expected = {f"responses.status.{s}": counts.get(f"status.{s}", 0) for s in
                    ("ok", "cached", "degraded", "rejected", "shed", "failed")}  # fmt: skip
        expected |= {
            "responses.total": 2 * len(traffic),
            "worker.received": counts["received"],
            "cache.hits": sum(c.get("hits", 0) for c in cache.values()),
            "cache.misses": sum(c.get("misses", 0) for c in cache.values()),
            "cache.tenant.t1.hits": cache["t1"]["hits"],
            "reason.rate_limited": counts["reason.rate_limited"],
            "responses.priority.high.total": 4,
            "responses.priority.low.total": 2,
            "responses.priority.normal.rejected": 1,
            "provider.calls": status["provider_calls"]["calls"],
            "queue.lag_total": 0,  # every request answered, so committed
        }
        assert expected["cache.hits"] >= 4 and expected["reason.rate_limited"] == 1

        async def page_matches() -> Any:
            seen = json.loads(await browser.evaluate(READ_METRICS))["metrics"]
            wrong = {k: (seen.get(k), v) for k, v in expected.items() if seen.get(k) != str(v)}
            return seen if not wrong else None

        shown = await eventually(page_matches, 20, "the page to show the worker's counts")

        # Spend against budgets, as /budgets reports it (the page rounds to 6 decimals).
        t1_day = next(w for w in budgets["t1"]["windows"] if w["scope"] == "tenant_day")
        assert t1_day["spent_micros"] > 0
        assert number(shown["budget.t1.tenant_day.cap_usd"]) == 2.0
        spent = number(shown["budget.t1.tenant_day.spent_usd"])
        assert abs(spent - t1_day["spent_micros"] / 1e6) <= 1e-6
        t2_month = next(w for w in budgets["t2"]["windows"] if w["scope"] == "tenant_month")
        assert number(shown["budget.t2.tenant_month.cap_usd"]) == 50.0
        assert abs(number(shown["spend.t2"]) - t2_month["spent_micros"] / 1e6) <= 1e-6
        assert number(shown["cache.hit_rate"]) == round(100 * data["cache"]["hit_rate"], 1)
        assert shown["breaker.sim/sim-large.state"] == "closed"
        assert number(shown["latency.e2e.all.count"]) == 2 * len(traffic)
        steps = await browser.evaluate(
            "new Set(window.sluicegateDashboard.history.map("
            "h => Object.values(h.status).reduce((a, b) => a + b, 0))).size"
        )
        assert steps >= 3  # the history the charts draw saw nothing, one wave, then both

        await browser.screenshot(ARTIFACT)
        assert ARTIFACT.stat().st_size > 20_000
        assert browser.errors == []
    finally:
        await browser.close()
