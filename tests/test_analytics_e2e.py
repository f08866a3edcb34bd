"""Meta-analytics end to end: a real server, real streams and archive files; feedback in,
compare/drift/accuracy/alarms out, score archive export, history kept across a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.roles import monitor as monitor_role
from rendezvous.roles.scorekeeper import export_scores
from tests.conftest import register_callable, webhook_listener

Serve = Callable[..., Any]
N_FEATURES = 3


def training(seed: int = 0, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype(int)
    return x, y


def classifiers(registry: Registry, *, window_s: float = 1.0) -> dict[str, str]:
    x, y = training()
    refs = {}
    for name, role, c in (("champ", Role.CHAMPION, 1.0), ("chal", Role.CHALLENGER, 0.001),
                          ("can", Role.CANARY, 0.1)):
        refs[role.value] = registry.register(name, LogisticRegression(C=c).fit(x, y),
                                             example=x).ref
    registry.apply_policy("dep", Policy(
        deadline_ms=500, alarms={"window_s": window_s, "drift_block_rows": 100},
        models=[ModelSpec(refs["champion"], Role.CHAMPION), ModelSpec(refs["challenger"],
                                                                      Role.CHALLENGER),
                ModelSpec(refs["canary"], Role.CANARY)]))
    return refs


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def scores_seen(client: httpx.AsyncClient, n: int) -> None:
    """Wait until the monitor holds every model's score of the ``n`` requests sent: a label
    that comes before its scores waits only ``RENDEZVOUS_FEEDBACK_WAIT_S`` (shortened here), so on a
    loaded machine it could count as unknown."""
    async def seen() -> bool:
        models = (await client.get("/v1/deployments/dep/compare")).json()["models"]
        return bool(models) and all(m.get("requests") == n for m in models.values())

    await until(seen, timeout=60)


async def send(client: httpx.AsyncClient, rows: np.ndarray) -> list[str]:
    ids = []
    for chunk in np.array_split(rows, max(1, len(rows) // 10)):
        replies = await asyncio.gather(*(client.post(
            "/v1/deployments/dep/predict",
            json=[{f"f{i}": float(v) for i, v in enumerate(r)}]) for r in chunk))
        for r in replies:
            assert r.status_code == 200, r.text
            ids.append(r.json()["request_id"])
    return ids


@pytest.fixture(autouse=True)
def short_feedback_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # Labels for ids no model scored wait this long before they count as unknown.
    monkeypatch.setenv("RENDEZVOUS_FEEDBACK_WAIT_S", "0.5")


async def test_feedback_compare_accuracy_and_score_archive(registry: Registry, serve: Serve,
                                                           tmp_path: Path) -> None:
    refs = classifiers(registry)
    x, y = training(seed=1, n=120)
    async with serve("dep") as client:
        ids = await send(client, x)
        await scores_seen(client, len(ids))
        labels = [{"request_id": rid, "label": int(lab)}
                  for rid, lab in zip(ids[:80], y[:80], strict=True)]
        r = await client.post("/v1/deployments/dep/feedback", json={"feedback": [
            *labels[:60], labels[0], {"request_id": "never-seen", "label": 1},
            {"label": 1}, {"request_id": ids[90], "label": [1]}]})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["accepted"] == 61 and body["duplicates"] == 1
        assert [b["index"] for b in body["rejected"]] == [62, 63]
        for item in labels[60:]:  # one at a time, and one resent
            r = await client.post("/v1/deployments/dep/feedback", json=item)
            assert r.status_code == 202 and r.json()["accepted"] == 1
        await client.post("/v1/deployments/dep/feedback", json=labels[5])

        async def joined() -> bool:
            fb = (await client.get("/v1/deployments/dep/accuracy")).json()["feedback"]
            return fb["joined"] == 80 and fb["unknown"] == 1

        await until(joined)
        acc = (await client.get("/v1/deployments/dep/accuracy")).json()
        for ref in refs.values():
            m = acc["models"][ref]
            assert m["labels"] == 80 and 0.5 < m["accuracy"] <= 1
            lo, hi = m["accuracy_ci"]
            assert lo <= m["accuracy"] <= hi
            assert 0 <= m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1] <= 1
            assert m["log_loss"] > 0

        async def compared() -> bool:
            doc = (await client.get("/v1/deployments/dep/compare")).json()
            return doc["models"].get(refs["challenger"], {}).get("rows") == 120

        await until(compared)
        cmp = (await client.get("/v1/deployments/dep/compare")).json()
        chal = cmp["models"][refs["challenger"]]
        assert cmp["champion"] == refs["champion"]
        assert 0.5 < chal["agreement"] <= 1 and chal["spearman"] > 0.5
        assert set(chal["diff"]) == {"p5", "p25", "p50", "p75", "p95"}

        drift = (await client.get("/v1/deployments/dep/drift")).json()
        assert drift["column_drift"]["rows_seen"] == 120
        assert drift["canary_drift"]["rows_seen"] == 120
        assert drift["designed_false_alarms_per_million_rows"] == pytest.approx(0.1)
        alarms = (await client.get("/v1/deployments/dep/alarms")).json()
        assert isinstance(alarms["alarms"], list)

        bad = await client.post("/v1/deployments/dep/feedback", content=b"{nope")
        assert bad.status_code == 400
        none = await client.post("/v1/deployments/dep/feedback", json={"feedback": [{"x": 1}]})
        assert none.status_code == 422 and "request_id" in none.json()["error"]
        missing = await client.get("/v1/deployments/nope/compare")
        assert missing.status_code == 404
    n = export_scores(registry.home, "dep", tmp_path / "scores.parquet")
    table = pq.read_table(tmp_path / "scores.parquet").to_pylist()
    assert n == 120 * 3 == len(table)
    assert {row["status"] for row in table} <= {"on_time", "late"}
    assert all(row["policy_version"] == 1 for row in table)
    assert sum(row["chosen"] for row in table) == 120


async def test_a_label_sent_before_a_slow_models_score_joins_every_model(
        registry: Registry, serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDEZVOUS_FEEDBACK_WAIT_S", "30.0")  # far more than it needs
    fast = register_callable(registry, "fast", "tests.models:make_constant", value=1.0)
    slow = register_callable(registry, "slow", "tests.models:make_constant", value=0.0,
                             sleep_ms=300)
    registry.apply_policy("dep", Policy(deadline_ms=1000, models=[
        ModelSpec(fast, Role.CHAMPION, wait_ms=50), ModelSpec(slow, Role.CHALLENGER)]))
    async with serve("dep") as client:
        replies = [await client.post("/v1/deployments/dep/predict",
                                     json=[{"x": 1.0, "y": 2.0}]) for _ in range(3)]
        assert [r.json()["model"] for r in replies] == [fast] * 3
        ids = [r.json()["request_id"] for r in replies]
        # The labels come right after the champion's answers, before the challenger's
        # scores: each label waits for them and counts for both models, once.
        r = await client.post("/v1/deployments/dep/feedback", json={"feedback": [
            {"request_id": rid, "label": 1.0} for rid in ids]})
        assert r.status_code == 202, r.text

        async def joined() -> bool:
            doc = (await client.get("/v1/deployments/dep/accuracy")).json()
            return doc["feedback"]["joined"] == 3

        await until(joined)
        acc = (await client.get("/v1/deployments/dep/accuracy")).json()
    assert acc["models"][fast]["labels"] == 3 and acc["models"][slow]["labels"] == 3
    assert acc["feedback"].get("unknown", 0) == 0


async def test_a_restart_keeps_windows_and_never_counts_a_label_twice(
        registry: Registry, serve: Serve) -> None:
    classifiers(registry, window_s=0.5)
    x, y = training(seed=2, n=40)
    async with serve("dep") as client:
        ids = await send(client, x)
        item = {"request_id": ids[0], "label": int(y[0])}
        await client.post("/v1/deployments/dep/feedback", json=item)

        async def closed() -> bool:
            doc = (await client.get("/v1/deployments/dep/windows")).json()
            fb = (await client.get("/v1/deployments/dep/accuracy")).json()["feedback"]
            return sum(w["requests"] for w in doc["windows"] if not w.get("open")) == 40 \
                and fb["joined"] == 1

        await until(closed)
        paired = (await client.get("/v1/deployments/dep/accuracy")).json()["paired"]
        assert paired["models"] and all(m["pairs"] == 1 for m in paired["models"].values())
    async with serve("dep") as client:
        doc = (await client.get("/v1/deployments/dep/windows")).json()
        assert sum(w["requests"] for w in doc["windows"]) == 40
        await client.post("/v1/deployments/dep/feedback",
                          json={"request_id": ids[0], "label": 1 - int(y[0])})
        await client.post("/v1/deployments/dep/feedback",
                          json={"request_id": ids[1], "label": int(y[1])})

        async def second() -> bool:
            fb = (await client.get("/v1/deployments/dep/accuracy")).json()["feedback"]
            return fb["joined"] == 2

        await until(second)
        acc = (await client.get("/v1/deployments/dep/accuracy")).json()
        # The resent label was dropped: by the engine's de-duplication or by the monitor.
        assert all(m["labels"] == 2 for m in acc["models"].values())
        assert acc["feedback"]["unknown"] == 0
        # the label pairs with the champion resumed too: the gates count both
        assert acc["paired"]["champion"] == paired["champion"]
        assert {m: p["pairs"] for m, p in acc["paired"]["models"].items()} == {
            m: 2 for m in paired["models"]}


async def test_prometheus_gauges_and_the_monitor_app(registry: Registry, serve: Serve) -> None:
    from rendezvous.http.monitor_app import MonitorApp

    refs = classifiers(registry)
    x, y = training(seed=3, n=30)
    async with serve("dep") as client:
        ids = await send(client, x)
        await client.post("/v1/deployments/dep/feedback", json={"feedback": [
            {"request_id": r, "label": int(v)} for r, v in zip(ids, y, strict=True)]})

        async def scraped() -> bool:
            text = (await client.get("/metrics")).text
            quality = (f'rendezvous_live_quality{{deployment="dep",metric="accuracy",'
                       f'model="{refs["champion"]}"}}')
            return quality in text and "rendezvous_agreement{" in text

        await until(scraped)
        app = MonitorApp(client.proxy_app.server)  # type: ignore[attr-defined]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://monitor") as mon:
            for doc in ("compare", "drift", "accuracy", "alarms", "windows"):
                r = await mon.get(f"/v1/deployments/dep/{doc}")
                assert r.status_code == 200 and r.json()["deployment"] == "dep", r.text
            assert (await mon.get("/dashboard")).status_code == 200
            assert (await mon.get("/dashboard/uPlot.iife.min.js")).status_code == 200
            assert (await mon.get("/v1/deployments/nope/drift")).status_code == 404


async def test_alarm_webhook_is_retried_until_delivered() -> None:
    with webhook_listener(fail_first=2) as (url, got):  # down twice, then up
        event = {"alarm": "sla_miss_rate", "state": "firing"}
        assert await monitor_role.post_with_retries(url, event, backoff_s=0.01)
        assert got == [event] * 3
        assert not await monitor_role.post_with_retries("http://127.0.0.1:9/none", event,
                                                        tries=2, backoff_s=0.01)
