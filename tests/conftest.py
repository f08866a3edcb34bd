"""Shared fixtures: a fresh data directory, a registry in it, and real servers on free ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest

from rendezvous import CallableModel, Column, Datatype, Registry, Signature
from rendezvous.hosting.serving import running

# The test models are callables in tests/models.py; the python flavor imports only modules the
# operator trusts. Set in the environment so that model-host processes inherit it.
os.environ.setdefault("RENDEZVOUS_TRUSTED_MODULES", "tests")

XY = Signature((Column("x", Datatype.FP64), Column("y", Datatype.FP64)))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    reg = Registry(home)
    yield reg
    reg.close()


def register_callable(reg: Registry, name: str, ref: str, **kwargs: object) -> str:
    return reg.register(name, CallableModel(ref, **kwargs), signature=XY).ref


@pytest.fixture
def serve(home: Path) -> Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]:
    """``async with serve("dep") as client:`` — a real server on a free port."""
    import contextlib

    @contextlib.asynccontextmanager
    async def _serve(*deployments: str, **kwargs: object) -> AsyncIterator[httpx.AsyncClient]:
        async with (
            running(list(deployments), home=home, port=0, **kwargs) as (proxy, url),
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            client.proxy_app = proxy  # type: ignore[attr-defined]
            yield client

    return _serve
