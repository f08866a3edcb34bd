"""Shared fixtures: a fresh data directory, a registry in it, and real servers on free ports."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real local S3 server (moto's server mode, on a free loopback port) with an empty
    bucket ``models``, the ``AWS_*`` environment pointing at it; returns
    ``s3://models/rendezvous``."""
    import socket

    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="models")
    try:
        yield "s3://models/rendezvous"
    finally:
        server.stop()


@pytest.fixture
def serve(home: Path) -> Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]:
    """``async with serve("dep") as client:`` — a real server on a free port."""
    import contextlib

    @contextlib.asynccontextmanager
    async def _serve(*deployments: str, settled: bool = True,
                     **kwargs: object) -> AsyncIterator[httpx.AsyncClient]:
        async with (
            running(list(deployments), home=home, port=0, **kwargs) as serving,
            httpx.AsyncClient(base_url=serving.edge[1], timeout=10) as client,
        ):
            proxy = serving.edge[0]
            client.proxy_app = proxy  # type: ignore[attr-defined]
            if settled:  # shadows too: tests count their scores from the first request on
                await settle(proxy.server)
            yield client

    return _serve


async def settle(server: Any, timeout_s: float = 120.0) -> None:
    """Wait until every model host of ``server`` is ready or failed. The server is ready once
    its candidates are; shadows may still be loading then."""
    import asyncio

    from rendezvous.hosting.protocol import HostState

    for rt in server.runtimes.values():
        await asyncio.gather(*(h.settled(timeout_s=timeout_s) for h in rt.hosts.values()))
    assert all(h.state in (HostState.READY, HostState.FAILED)
               for rt in server.runtimes.values() for h in rt.hosts.values())


@contextlib.contextmanager
def webhook_listener(fail_first: int = 0) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real local HTTP listener for the alarm webhook: (URL, JSON bodies received). The
    first ``fail_first`` posts are answered 503 (a receiver that is down), the rest 204."""
    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(503 if len(got) <= fail_first else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Every async test runs on uvloop's event loop, the one every serving process runs on
    (``hosting.serve.run_loop``)."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}
