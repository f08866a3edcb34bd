"""Serve deployments over HTTP with uvicorn (its fastest settings: uvloop and httptools).

While serving, ``<home>/run/<deployment>.json`` (mode 0600) tells local commands where the
server is and holds its admin token, so ``rendezvous promote`` reaches the running process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

from rendezvous import config
from rendezvous.proxy import Proxy
from rendezvous.runtime import Server


def run_file(home: Path, deployment: str) -> Path:
    return home / "run" / f"{deployment}.json"


def read_run_file(home: Path, deployment: str) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads(run_file(home, deployment).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return info


def _write_run_files(home: Path, deployments: list[str], info: dict[str, Any]) -> list[Path]:
    paths = []
    for name in deployments:
        path = run_file(home, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools",
                          lifespan="on", access_log=False, log_level="warning",
                          timeout_keep_alive=30)


@contextlib.asynccontextmanager
async def running(
    deployments: list[str] | None = None, *, home: Path | str | None = None,
    host: str | None = None, port: int | None = None, streams: str | None = None,
    admin_token: str | None = None,
) -> AsyncIterator[tuple[Proxy, str]]:
    """Serve in the current event loop; yields (proxy, base URL) once ready.

    >>> # async with running(["demo"], port=0) as (proxy, url): ...
    """
    home = config.home(home)
    server = Server(home, deployments, streams=streams)
    token = config.ADMIN_TOKEN.get(admin_token) or secrets.token_urlsafe(24)
    proxy = Proxy(server, admin_token=token)
    uv = uvicorn.Server(uvicorn_config(proxy, config.HOST.get(host), config.PORT.get(port)))
    uv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.ensure_future(uv.serve())
    while not uv.started:
        if task.done():
            await task  # surfaces the startup error
            raise RuntimeError("the HTTP server stopped during startup")
        await asyncio.sleep(0.02)
    # Everything loaded so far (libraries, models) lives as long as the process: move it out
    # of the collector's sight so full collections stay short while serving.
    gc.collect()
    gc.freeze()
    sock = uv.servers[0].sockets[0].getsockname()
    url = f"http://{sock[0]}:{sock[1]}"
    files = _write_run_files(home, server.deployment_names,
                             {"url": url, "pid": os.getpid(), "token": token})
    try:
        yield proxy, url
    finally:
        uv.should_exit = True
        await task
        for f in files:
            f.unlink(missing_ok=True)


async def serve_forever(deployments: list[str] | None = None, **kwargs: Any) -> None:
    async with running(deployments, **kwargs):
        await asyncio.Event().wait()
