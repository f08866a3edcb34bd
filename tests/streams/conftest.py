"""Fixtures for the stream contract suite: one harness per engine, a real nats-server per module."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from rendezvous.streams.base import Stream
from rendezvous.streams.nats.server import LocalNatsServer

from .harness import Engines

ENGINES = ["embedded", pytest.param("nats", marks=pytest.mark.nats)]


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    """One nats-server per test module; tests keep apart by using their own topics."""
    with LocalNatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}.input"


@pytest.fixture(params=ENGINES)
async def engines(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engines]:
    kind: str = request.param
    url = None
    if kind == "embedded":
        pytest.importorskip(
            "rendezvous.streams.embedded.log", reason="the embedded engine is not written yet"
        )
    else:
        url = request.getfixturevalue("nats_server").url
    harness = Engines(kind, tmp_path / "home", url)
    try:
        yield harness
    finally:
        await harness.aclose()


@pytest.fixture
async def stream(engines: Engines) -> Stream:
    """An open engine of the parametrized kind."""
    return await engines.open()
