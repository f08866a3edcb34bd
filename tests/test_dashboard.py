"""The dashboard in a real browser: Playwright drives Debian's headless chromium against a live
server under traffic, and the plots must hold what the JSON endpoints report."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rendezvous import Registry
from tests.test_analytics_e2e import classifiers, training, until

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; `make test` installs it when missing
Serve = Any

pytestmark = pytest.mark.slow


def _value(chart: dict[str, Any], label: str, x: float) -> Any:
    xs = chart["data"][0]
    return chart["data"][1 + chart["labels"].index(label)][xs.index(x)]


async def test_dashboard_plots_hold_what_the_json_endpoints_report(
        registry: Registry, serve: Serve) -> None:
    playwright = pytest.importorskip("playwright.async_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is missing: `make test` installs it (apt-get install "
                    "chromium)")
    refs = classifiers(registry, window_s=1.0)
    champ, chal = refs["champion"], refs["challenger"]
    x, y = training(seed=5, n=4000)
    stop = asyncio.Event()

    async with serve("dep") as client:
        async def traffic() -> None:
            i = 0
            while not stop.is_set():
                batch = range(i, i + 8)
                replies = await asyncio.gather(*(client.post(
                    "/v1/deployments/dep/predict",
                    json=[{f"f{k}": float(v) for k, v in enumerate(x[j % len(x)])}])
                    for j in batch))
                await client.post("/v1/deployments/dep/feedback", json={"feedback": [
                    {"request_id": r.json()["request_id"], "label": int(y[j % len(y)])}
                    for j, r in zip(batch, replies, strict=True) if j % 2 == 0]})
                i += 8

        sender = asyncio.ensure_future(traffic())
        try:
            async with playwright.async_playwright() as p:
                browser = await p.chromium.launch(executable_path=str(CHROMIUM),
                                                  args=["--no-sandbox"])
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                await page.goto(str(client.base_url.join("/dashboard")))
                await page.wait_for_function(
                    "window.rendezvousRefreshes >= 3 && window.rendezvousCharts.dep")
                stop.set()
                await sender

                async def settled() -> bool:
                    doc = (await client.get("/v1/deployments/dep/windows")).json()
                    closed = [w for w in doc["windows"] if not w.get("open")]
                    return len(closed) >= 2 and bool(closed[-1]["accuracy"])

                await until(settled, timeout=30)
                doc = (await client.get("/v1/deployments/dep/windows")).json()
                alarms = (await client.get("/v1/deployments/dep/alarms")).json()
                seen = await page.evaluate("window.rendezvousRefreshes")
                await page.wait_for_function(f"window.rendezvousRefreshes > {seen + 1}")
                charts = await page.evaluate("window.rendezvousCharts.dep")
                assert await page.locator("section[data-deployment=dep] canvas").count() >= 7
                rows = await page.locator("table[data-role=alarms] tr[data-alarm]").count()
                assert rows >= len(alarms["alarms"])
                await browser.close()
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await sender
    closed = [w for w in doc["windows"] if not w.get("open")]
    checked = 0
    for w in closed:
        t = w["start_ns"] / 1e9
        if t not in charts["latency"]["data"][0] or not w["requests"]:
            continue  # (a window may hold only late scores or labels)
        m = w["models"][champ]
        assert _value(charts["latency"], f"{champ} p50", t) == m["latency_ms"]["p50"]
        assert _value(charts["latency"], f"{champ} p99", t) == m["latency_ms"]["p99"]
        assert _value(charts["chosen"], f"{champ} chosen %", t) == pytest.approx(
            100 * m["chosen"] / w["requests"])
        if "score" in m:
            assert _value(charts["scores"], f"{champ} p50", t) == m["score"]["p50"]
        agreement = w["compare"].get(chal, {}).get("agreement")
        assert _value(charts["agreement"], f"{chal} agreement", t) == agreement
        acc = w["accuracy"].get(champ, {})
        assert _value(charts["accuracy"], f"{champ} accuracy", t) == acc.get("accuracy")
        if acc.get("accuracy_ci"):
            assert _value(charts["accuracy"], f"{champ} low", t) == acc["accuracy_ci"][0]
        checked += 1
    assert checked >= 2
    assert np.isfinite([v for v in charts["agreement"]["data"][1] if v is not None]).all()
