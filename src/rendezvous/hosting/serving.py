"""Serve deployments over HTTP with uvicorn and httptools, in the process's event loop (uvloop's:
``hosting.serve.run_loop``).

While serving, ``<home>/run/<deployment>.json`` (mode 0600) tells local commands where the
server is and holds its admin token, so ``rendezvous promote`` reaches the running process.

``running`` runs the roles of one process: by default every role, with the proxy as the HTTP
edge; a process without the proxy (one role each, on a shared engine) that runs the monitor
answers the monitor's endpoints on its own port instead
(``<home>/run/<deployment>.monitor.json`` says where).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import uvicorn

from rendezvous import config
from rendezvous.errors import ConfigError
from rendezvous.hosting import heap
from rendezvous.hosting.runtime import Server
from rendezvous.hosting.topology import ProcessRole, Roles
from rendezvous.http import Proxy
from rendezvous.http.grpc import serving as grpc_serving

ALL = "_all"  # run file of a server serving every deployment (names start alphanumeric)


def run_file(home: Path, deployment: str) -> Path:
    return home / "run" / f"{deployment}.json"


def monitor_run_file(home: Path, deployment: str) -> Path:
    return home / "run" / f"{deployment}.monitor.json"


def read_run_file(home: Path, deployment: str) -> dict[str, Any] | None:
    """Where the server serving ``deployment`` listens, and its admin token; a server that
    serves every deployment also answers for one created after it started."""
    for name in (deployment, ALL):
        try:
            info: dict[str, Any] = json.loads(run_file(home, name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        return info
    return None


def write_run_files(home: Path, deployments: list[str], info: dict[str, Any], *,
                     kind: str = "") -> list[Path]:
    paths = []
    for name in deployments:
        path = monitor_run_file(home, name) if kind == "monitor" else run_file(home, name)
        # It may hold the admin token: the owner's only, whatever RENDEZVOUS_FILE_MODE says.
        config.write_private(path, json.dumps(info).encode(), mode=0o600)
        paths.append(path)
    return paths


def uvicorn_config(app: Any, host: str, port: int, *,
                   lifespan: Literal["on", "off"] = "on") -> uvicorn.Config:
    """uvicorn's settings, with the HTTP edge's limits: ``app`` behind the middlewares of
    ``rendezvous.http.middleware`` (Host check, inference token), headers bounded in time and
    size and bodies in pace (``http.protocol``), and HTTPS when RENDEZVOUS_SSL_CERTFILE/KEYFILE
    are set."""
    from rendezvous.http.middleware import harden
    from rendezvous.http.protocol import hardened_protocol

    certfile, keyfile = config.SSL_CERTFILE.get(), config.SSL_KEYFILE.get()
    if bool(certfile) != bool(keyfile):
        raise ConfigError("HTTPS needs both RENDEZVOUS_SSL_CERTFILE and RENDEZVOUS_SSL_KEYFILE "
                          f"(got certfile={certfile!r}, keyfile={keyfile!r})")
    for name, path in (("RENDEZVOUS_SSL_CERTFILE", certfile), ("RENDEZVOUS_SSL_KEYFILE", keyfile)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{name}={path!r} is not a file; give the PEM file's path")
    protocol = hardened_protocol(header_timeout_s=config.HEADER_TIMEOUT_S.get(),
                                 max_header_bytes=config.MAX_HEADER_BYTES.get(),
                                 body_timeout_s=config.BODY_TIMEOUT_S.get())
    # loop="none": uvicorn serves in the running loop (``_http``), never makes one of its own.
    return uvicorn.Config(harden(app, host=host), host=host, port=port, loop="none",
                          http=protocol, lifespan=lifespan, access_log=False,
                          log_level="warning", timeout_keep_alive=30,
                          ssl_certfile=certfile or None, ssl_keyfile=keyfile or None,
                          # We bind to loopback by default and read no X-Forwarded-* headers;
                          # the proxy-headers middleware would only add work per request.
                          proxy_headers=False)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; a port in use is one line naming the fix."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another "
                          "--port or stop the server using it") from None
    # Accepted connections inherit it: answers are not held back for the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn leaving signals alone: whoever runs the event loop decides what they do."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def _http(app: Any, host: str | None, port: int | None, *,
                lifespan: Literal["on", "off"] = "on",
                sock: socket.socket | None = None) -> AsyncIterator[tuple[uvicorn.Server, str]]:
    """Run uvicorn in this event loop; yields (server, base URL) once it listens, and shuts it
    down (letting requests in flight finish) on exit."""
    bind_host, bind_port = config.HOST.get(host), config.PORT.get(port)
    uv = _Uvicorn(uvicorn_config(app, bind_host, bind_port, lifespan=lifespan))
    # Bound here rather than by uvicorn, which ends the process (sys.exit) when it cannot bind.
    task = asyncio.ensure_future(uv.serve(sockets=[sock or _listen(bind_host, bind_port)]))
    while not uv.started:
        if task.done():
            await task  # surfaces the startup error
            raise RuntimeError("the HTTP server stopped during startup")
        await asyncio.sleep(0.02)
    addr = uv.servers[0].sockets[0].getsockname()
    try:
        yield uv, f"http://{addr[0]}:{addr[1]}"
    finally:
        uv.should_exit = True
        await task


@dataclass(frozen=True, slots=True)
class Serving:
    """What ``running`` yields: the process's ``Server``; its HTTP edge (``proxy``), or None
    in a process that runs no proxy; and the base URL it answers on: the proxy's, else the
    monitor's status endpoint, else None (a process of workers, say, answers no HTTP)."""

    server: Server
    proxy: Proxy | None
    url: str | None

    @property
    def edge(self) -> tuple[Proxy, str]:
        """The proxy and its base URL, for a process that runs the proxy (the default)."""
        if self.proxy is None or self.url is None:
            raise ConfigError(f"this process runs {self.server.roles.label}, not the proxy; "
                              "serve with every role, or with --role proxy, for the HTTP edge")
        return self.proxy, self.url


@contextlib.asynccontextmanager
async def running(
    deployments: list[str] | None = None, *, roles: Roles | None = None,
    home: Path | str | None = None, host: str | None = None, port: int | None = None,
    streams: str | None = None, admin_token: str | None = None,
    registry_url: str | None = None, sock: socket.socket | None = None,
    run_files: bool = True, reset_log: bool = False, archive: str | None = None,
) -> AsyncIterator[Serving]:
    """Run ``roles`` (default every role) of ``deployments`` (default all of the registry's)
    in the current event loop; yields a ``Serving`` once ready, and stops cleanly on exit
    (requests in flight finish, the archive is flushed).

    With the proxy, the port opens only once every candidate model is warm (or has failed,
    with its reason: see ``server.runtimes[d].failed_models()``), so the first request is
    answered like the thousandth. Without it, a process that runs the monitor answers the
    monitor's read-only endpoints (``rendezvous.http.monitor_app``) instead; one running
    only some roles needs an engine shared between processes (``streams="nats://…"``).
    ``sock``: serve on this socket (one of the ``SO_REUSEPORT`` group of ``serve --processes
    N``) instead of binding ``host:port``. ``archive``: where the evidence archive goes, a
    path or fsspec URL (default ``RENDEZVOUS_ARCHIVE``, else ``<home>/archive``).

    >>> # async with running(["demo"], port=0) as serving: print(serving.url)
    >>> # async with running(["fraud"], roles=Roles.only("worker", ["fraud@3"]),
    >>> #                    streams="nats://10.0.0.5:4222") as serving: ...
    """
    home = config.home(home)
    server = Server(home, deployments, streams=streams, roles=roles, registry_url=registry_url,
                    archive=archive, reset_log=reset_log)
    if ProcessRole.PROXY in server.roles:
        token = config.ADMIN_TOKEN.get(admin_token) or secrets.token_urlsafe(24)
        edge = Proxy(server, admin_token=token)
        await edge.start()
        proxy: Proxy | None = edge
        app: Any = edge
    else:
        proxy = None
        from rendezvous.http.monitor_app import MonitorApp

        app = MonitorApp(server) if ProcessRole.MONITOR in server.roles else None
        await server.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            url = None
            if app is not None:
                _, url = await stack.enter_async_context(
                    _http(app, host, port, sock=sock, lifespan="off"))
            info: dict[str, Any] = {"url": url, "pid": os.getpid()}
            if proxy is not None:
                # The OIP gRPC endpoint on its own port when RENDEZVOUS_GRPC_PORT is set.
                grpc_address = await stack.enter_async_context(
                    grpc_serving(proxy, host=host, reuse_port=sock is not None))
                info.update(token=proxy.admin_token, grpc=grpc_address)
            # Everything loaded so far (libraries) lives as long as the process.
            heap.settle()
            if run_files and url is not None:
                names = [ALL] if proxy is not None and server.serves_all \
                    else server.deployment_names
                kind = "" if proxy is not None else "monitor"
                for f in write_run_files(home, names, info, kind=kind):
                    stack.callback(f.unlink, missing_ok=True)
            yield Serving(server, proxy, url)
    finally:
        if proxy is not None:
            await proxy.stop()
        else:
            await server.stop()
