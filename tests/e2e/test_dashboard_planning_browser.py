"""The dashboard's capacity planning panel in a real headless Chromium (issue 21).

The service runs in process with planning on; its history is two days of a noisy daily
cycle written as the service writes it (LoadStatus snapshots at past wall times), then
the planner is refreshed, so the panel shows what GetRecommendations answers. Chromium
and its DevTools session are the ones of ``test_dashboard_browser``. The charts are
canvases: that they were drawn is read from their pixels, by colour and position.

The screenshot is saved under the test's tmp dir and as ``build/dashboard-planning.png``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from loadwarden.server import AdminSettings, PoolSettings, PoolSpec, RunningService, ServerSpec
from loadwarden.server.app._config import MonitorSettings
from loadwarden.server.engine._planner import PlanningSettings, PoolScaling
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc
from loadwarden.v1 import planning_pb2

from ..conftest import wait_for
from ._harness import REPO
from .test_dashboard_browser import TOKEN, Tab, chromium

pytestmark = pytest.mark.e2e

STEP_S = 60.0
DAY_S = 86_400.0
# The page's PALETTE: the actual load, the forecast and its band, the desired servers.
ACTUAL, FORECAST, DESIRED = (0x3B, 0x7D, 0xD8), (0xE0, 0x80, 0x3A), (0x2F, 0x9E, 0x5B)
DEMAND_CANVAS = "#plan-charts .chart:nth-child(1) canvas"
SERVERS_CANVAS = "#plan-charts .chart:nth-child(2) canvas"
# Pixels of one colour on a canvas: how many, and their leftmost and rightmost x. A line is
# opaque where drawn; the prediction band is the forecast's colour at 20 % alpha.
PIXELS = """((selector, rgb, band) => {
  const c = document.querySelector(selector);
  if (!c || !c.width) return null;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0, min = Infinity, max = -1;
  for (let i = 0; i < d.length; i += 4) {
    const a = d[i + 3], near = Math.abs(d[i] - rgb[0]) + Math.abs(d[i + 1] - rgb[1]) + Math.abs(d[i + 2] - rgb[2]);
    if (band ? a >= 30 && a <= 80 && near <= 60 : a >= 200 && near <= 60) {
      n++; const x = (i / 4) % c.width; min = Math.min(min, x); max = Math.max(max, x);
    }
  }
  return {n, min, max};
})"""


def daily(t: float) -> float:
    """A daily cycle of requests per second, 10 to 70."""
    return 40.0 + 30.0 * math.sin(2 * math.pi * t / DAY_S)


def servers(prefix: str, count: int) -> tuple[ServerSpec, ...]:
    return tuple(ServerSpec(f"{prefix}{i}", f"127.0.0.1:{9200 + i}") for i in range(1, count + 1))


async def planned_service(start: Callable[..., Awaitable[RunningService]]) -> RunningService:
    """Pool ``api`` (3 servers, scaled on requests per second, predictive) with two days of a
    noisy daily cycle in its history, a day of the plans made for it every 5 minutes, and a
    refreshed plan; pool ``jobs`` with no history."""
    planning = PlanningSettings(
        enabled=True,
        interval_s=3_600.0,  # the loop refreshes at start; the test refreshes after writing the history
        step_s=STEP_S,
        horizon_s=900.0,
        history_s=2 * DAY_S,
        seasons_s=(DAY_S,),
        pools={"api": PoolScaling(metric="requests_per_s", target=10.0, predictive=True, lead_time_s=600.0)},
    )
    running = await start(
        PoolSpec(PoolSettings(name="api"), servers("a", 3)),
        PoolSpec(PoolSettings(name="jobs"), servers("j", 1)),
        planning=planning,
        monitor=MonitorSettings(enabled=False),
        admin=AdminSettings(
            listen="127.0.0.1:0",
            token=TOKEN,
            history_interval_ms=500,  # the plans show once a sample follows them
            history_retention_s=3 * 86_400,
        ),
    )
    planner = running.planner
    assert planner is not None

    async def refreshes() -> int:
        return planner.refreshes

    # The loop's own first refresh (of an empty history) must not land after the test's.
    await wait_for(refreshes, lambda n: n >= 1, "the planner's first refresh", timeout_s=30.0)
    rng = random.Random(21)
    now = time.time()

    def write() -> None:
        total, t = 0, now - 2 * DAY_S
        members = [{"id": s.id, "state": "SERVER_STATE_SERVING"} for s in servers("a", 3)]
        while (t := t + STEP_S) <= now - 30.0:  # all before the service's own samples, which count from 0
            total += max(0, round(daily(t) * (1 + 0.08 * rng.gauss(0.0, 1.0)) * STEP_S))
            planner.history.record({"pools": [{"name": "api", "servers": members, "requests_total": total}]}, at=t)
            if t > now - DAY_S and round(t / STEP_S) % 5 == 0:  # as the planner records them, at 10 requests/s each
                reactive, predictive = math.ceil(daily(t) / 10.0), math.ceil(daily(t + 600.0) / 10.0)
                planner.history.record_plan(t, [("api", 3, max(reactive, predictive), reactive, predictive)])

    await asyncio.to_thread(write)
    await planner.refresh()
    return running


async def page_errors(tab: Tab, base: str) -> list[dict[str, Any]]:
    errors = tab.session_events("Runtime.exceptionThrown")
    errors += [
        e
        for e in tab.session_events("Log.entryAdded")
        if e["params"]["entry"]["level"] == "error"
        # the page itself arrives as a 401 (no token in a navigation): expected, not an error
        and not e["params"]["entry"].get("url", "").startswith(f"{base}/admin/load")
    ]
    return errors


async def pixels(tab: Tab, selector: str, rgb: tuple[int, int, int], *, band: bool = False) -> dict[str, int]:
    found = await tab.evaluate(f"{PIXELS}({json.dumps(selector)}, {json.dumps(rgb)}, {json.dumps(band)})")
    assert found is not None, f"no canvas at {selector}"
    return dict(found)


async def test_planning_panel_shows_the_recommendation_and_charts_the_forecast(
    start: Callable[..., Awaitable[RunningService]],
    channel_to: Callable[[RunningService], grpc.aio.Channel],
    tmp_path: Path,
) -> None:
    running = await planned_service(start)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    (rec,) = (await stub.GetRecommendations(pb.GetRecommendationsRequest(pools=["api"]))).recommendations
    demand = next(f for f in rec.forecasts if f.series == planning_pb2.FORECAST_SERIES_REQUESTS_PER_S)
    assert demand.model and demand.points, demand.reason
    assert any(p.upper > p.lower for p in demand.points), "a band of zero width would draw nothing"
    base = f"http://127.0.0.1:{running.admin_port}"

    async with chromium(tmp_path) as browser:
        tab = await browser.new_tab()
        await tab.navigate(f"{base}/admin/load#token={TOKEN}")
        desired = "(document.querySelector('#plans tr[data-plan-pool=\"api\"] [data-plan=desired]') || {}).textContent"
        assert await tab.wait_for(f"{desired} === '{rec.desired_servers}'", f"api's {rec.desired_servers} servers")
        row = await tab.evaluate("document.querySelector('#plans tr[data-plan-pool=\"api\"]').innerText")
        model = await tab.evaluate(
            "document.querySelector('#plans tr[data-plan-pool=\"api\"] [data-plan=model]').textContent"
        )
        mape = next(s.mape for s in demand.scores if s.model == demand.model)
        assert model.startswith(f"{demand.model} ({100 * mape:.1f} %)"), model
        assert rec.lead_time_s == 600.0
        assert rec.reason in row and "10 min" in row, row
        cell = "document.querySelector('#plans tr[data-plan-pool=\"api\"] td:nth-child({})').textContent"
        predictive = str(rec.predictive_servers) if rec.HasField("predictive_servers") else "no forecast"
        assert await tab.evaluate(cell.format(5)) == predictive
        metric = await tab.evaluate(cell.format(6))  # the metric per server against its target
        assert metric.endswith(" / 10 requests/s"), metric
        if rec.HasField("metric_value"):  # unknown when the newest step had no sample of the counter's rise
            assert float(metric.split()[0]) == pytest.approx(rec.metric_value, abs=0.005), metric
        else:
            assert metric.startswith("unknown"), metric
        assert await tab.evaluate("document.querySelector('#plans tr[data-plan-pool=\"jobs\"]') !== null")
        words = await tab.evaluate("document.getElementById('plan-words').textContent")
        assert words.startswith(f"api: {rec.desired_servers} servers recommended, 3 now"), words

        # The demand chart: the actual rate, then the forecast and its band from now to the horizon.
        await tab.wait_for(
            f"document.querySelectorAll('#plan-charts canvas').length === 2 && "
            f"{PIXELS}({json.dumps(DEMAND_CANVAS)}, {json.dumps(FORECAST)}, false).n > 20",
            "the forecast drawn",
        )
        actual = await pixels(tab, DEMAND_CANVAS, ACTUAL)
        forecast = await pixels(tab, DEMAND_CANVAS, FORECAST)
        band = await pixels(tab, DEMAND_CANVAS, FORECAST, band=True)
        assert actual["n"] > 100 and forecast["n"] > 20 and band["n"] > 20, (actual, forecast, band)
        assert actual["max"] < forecast["min"], (actual, forecast)  # the forecast continues where the past ends
        width = await tab.evaluate(f"document.querySelector({json.dumps(DEMAND_CANVAS)}).width")
        assert forecast["max"] > 0.9 * width, forecast  # up to the horizon, the right end of the axis
        legend = await tab.evaluate("document.querySelector('#plan-charts .chart .legend').textContent")
        assert f"forecast ({demand.model})" in legend and "80 % prediction interval" in legend, legend
        # The servers chart: the recommendations recorded, held until now.
        await tab.wait_for(
            f"{PIXELS}({json.dumps(SERVERS_CANVAS)}, {json.dumps(DESIRED)}, false).n > 20", "the desired servers drawn"
        )
        drawn = await pixels(tab, SERVERS_CANVAS, DESIRED)
        assert drawn["max"] - drawn["min"] > 0.5 * width, drawn  # the hour of plans, held until now
        assert drawn["max"] < forecast["min"], drawn  # and none in the future

        # Another pool: no history, so no forecast; the panel says why instead of drawing one.
        await tab.evaluate(
            "const s = document.getElementById('plan-pool'); s.value = 'jobs'; s.dispatchEvent(new Event('change'))"
        )
        await tab.wait_for(
            "document.getElementById('plan-words').textContent.startsWith('jobs:') && "
            "document.querySelector('#plans tr.chosen').dataset.planPool === 'jobs'",
            "pool jobs chosen",
        )
        assert (await pixels(tab, DEMAND_CANVAS, FORECAST))["n"] == 0
        jobs_model = await tab.evaluate(
            "document.querySelector('#plans tr[data-plan-pool=\"jobs\"] [data-plan=model]').textContent"
        )
        assert jobs_model.startswith("none: ") and "usable points" in jobs_model, jobs_model
        # Back to api by its row, for the screenshot.
        await tab.evaluate("document.querySelector('#plans tr[data-plan-pool=\"api\"] td').click()")
        await tab.wait_for(
            f"document.getElementById('plan-words').textContent.startsWith('api:') && "
            f"{PIXELS}({json.dumps(DEMAND_CANVAS)}, {json.dumps(FORECAST)}, false).n > 20",
            "pool api chosen again by its row",
        )
        assert not await page_errors(tab, base), "the page logged errors (CSP violations appear here too)"
        png = await tab.screenshot(tmp_path / "dashboard-planning.png", REPO / "build" / "dashboard-planning.png")
        assert png.startswith(b"\x89PNG")
