"""The analytics host (the monitor's analytics and the scorekeeper in their own process)
against real processes and real signals: killed mid-traffic, it is started again, no client
request fails and nothing it had not finished is lost."""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import os
import signal
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from typer.testing import CliRunner

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.cli import app
from rendezvous.errors import NotFoundError
from rendezvous.hosting import analytics_protocol, protocol
from rendezvous.roles import reads
from rendezvous.roles.scorekeeper import read_scores
from tests.conftest import register_callable

Serve = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
WAIT_S = 60.0  # generous: the host starts a Python process on a busy 2-core machine
ROW = {"x": 1.0, "y": 2.0}


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("module", [protocol, analytics_protocol, reads])
def test_docstring_examples(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted and not result.failed


async def analytics_info(client: httpx.AsyncClient) -> dict[str, object]:
    r = await client.get("/v1/deployments/dep/status")
    assert r.status_code == 200, r.text
    info: dict[str, object] = r.json()["analytics_host"]
    return info


async def test_a_killed_analytics_host_is_restarted_and_loses_nothing(
        registry: Registry, serve: Serve) -> None:
    champ = register_callable(registry, "champ", "tests.models:doubler")
    other = register_callable(registry, "other", "tests.models:doubler")
    registry.apply_policy("dep", Policy(deadline_ms=1000, models=[
        ModelSpec(champ, Role.CHAMPION), ModelSpec(other, Role.CHALLENGER)]))
    statuses: list[int] = []
    async with serve("dep") as client:

        async def ready() -> bool:
            return (await analytics_info(client))["state"] == "ready"

        await until(ready, "the analytics host to be ready")
        first = await analytics_info(client)

        async def traffic(n: int) -> None:
            for _ in range(n):
                r = await client.post("/v1/deployments/dep/predict", json=[ROW])
                statuses.append(r.status_code)

        await traffic(20)
        os.kill(int(str(first["pid"])), signal.SIGKILL)
        await traffic(20)  # answered while the analytics host is down or starting again

        async def restarted() -> bool:
            info = await analytics_info(client)
            return info["state"] == "ready" and int(str(info["restarts"])) >= 1

        await until(restarted, "the analytics host to be started again")
        info = await analytics_info(client)
        assert info["pid"] != first["pid"]
        assert "SIGKILL" in str(info["last_exit"])
        shown = await asyncio.to_thread(CliRunner().invoke, app, [
            "status", "dep", "--home", str(registry.home)])
        assert "analytics host: ready, 1 restarts" in shown.output, shown.output
        await traffic(20)
        compare = await client.get("/v1/deployments/dep/compare")
        assert compare.status_code == 200, compare.text
        assert other in compare.json()["models"]

        def archived() -> bool:  # every score of every request, the killed host's share too
            with contextlib.suppress(NotFoundError):
                scores = read_scores(registry.home, "dep")
                return len(set(zip(scores["request_id"].to_pylist(),
                                   scores["model"].to_pylist(), strict=True))) == 60 * 2
            return False

        async def all_archived() -> bool:
            return await asyncio.to_thread(archived)

        await until(all_archived, "every score to be archived")
        metrics = (await client.get("/metrics")).text
        # The analytics gauges come from the new host.
        assert 'rendezvous_feedback_labels{deployment="dep",outcome="joined"} 0.0' in metrics
    assert statuses == [200] * 60


async def test_documents_name_the_fix_when_analytics_are_off(
        registry: Registry, serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDEZVOUS_ANALYTICS", "0")
    champ = register_callable(registry, "champ", "tests.models:doubler")
    registry.apply_policy("dep", Policy(deadline_ms=1000, models=[
        ModelSpec(champ, Role.CHAMPION)]))
    async with serve("dep") as client:
        r = await client.post("/v1/deployments/dep/predict", json=[ROW])
        assert r.status_code == 200
        r = await client.get("/v1/deployments/dep/compare")
        assert r.status_code == 404 and "analytics off" in r.text

        async def counted() -> bool:  # results are still counted, without a child process
            s = (await client.get("/v1/deployments/dep/status")).json()
            return bool(s["requests"] == 1 and s["analytics_host"]["pid"] == 0)

        await until(counted, "the request to be counted")
