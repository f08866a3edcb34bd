"""Model cards: what a version is, and how it did where it was deployed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx

from rendezvous import CallableModel, ModelSpec, Policy, Registry, Role
from rendezvous.registry.cards import CardData, markdown, to_html
from tests.conftest import XY, register_callable

Serve = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def test_markdown_and_html_are_pure_and_escaped(registry: Registry) -> None:
    mv = registry.register("m", CallableModel("tests.models:doubler"), signature=XY,
                           description="doubles <x>", metrics={"rmse": 0.5},
                           params={"note": "a|b"})
    md = markdown(CardData(mv, {"intended_use": "tests"}))
    assert "| rmse | 0.5 |" in md and "| note | a\\|b |" in md and "_Never deployed._" in md
    page = to_html(md, title="card")
    assert "<p>doubles &lt;x&gt;</p>" in page and "<td>rmse</td><td>0.5</td>" in page
    assert "<td>note</td><td>a|b</td>" in page


async def test_a_deployed_version_shows_its_live_figures(registry: Registry,
                                                         serve: Serve) -> None:
    champ = register_callable(registry, "champ", "tests.models:doubler")
    registry.apply_policy("dep", Policy(deadline_ms=2000, models=[
        ModelSpec(champ, Role.CHAMPION)]))
    async with serve("dep") as client:
        for _ in range(3):
            r = await client.post("/v1/deployments/dep/predict", json=[{"x": 1.0, "y": 2.0}])
            assert r.status_code == 200
    card = await asyncio.to_thread(registry.card, champ)
    assert "| dep | champion | 1..1 |" in card
    row = next(line for line in card.splitlines() if line.startswith("| dep | 3 |"))
    assert row.split(" | ")[2] == "3"  # three requests, each on time
