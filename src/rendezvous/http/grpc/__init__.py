"""The Open Inference Protocol v2 gRPC endpoint (``inference.GRPCInferenceService``), served
by grpc.aio in the proxy's event loop, on its own port.

Off unless a port is given (``port=`` or ``RENDEZVOUS_GRPC_PORT``); grpcio comes with the
``grpc`` extra (``pip install 'rendezvous-ml[grpc]'``) and is imported only when serving.

>>> # async with running(["fraud"]) as s, serving(s.edge[0], port=8001) as address:
>>> #     ...  # tritonclient.grpc.InferenceServerClient(address)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from rendezvous import config
from rendezvous.errors import ConfigError

if TYPE_CHECKING:
    from rendezvous.http.app import Proxy

GRACE_S = 5.0  # on exit, how long calls in flight get to finish


@contextlib.asynccontextmanager
async def serving(proxy: Proxy, *, host: str | None = None, port: int | None = None,
                  reuse_port: bool = False) -> AsyncIterator[str | None]:
    """Serve gRPC for ``proxy``'s deployments while the block runs; yields ``"host:port"``,
    or None when gRPC is off (``port`` and ``RENDEZVOUS_GRPC_PORT`` unset or -1).

    Enter it once the proxy has started (inside ``hosting.serving.running``) and leave it
    before the proxy stops. ``reuse_port``: several processes listen on the same port and
    the kernel spreads connections across them (``serve --processes N``); otherwise a port
    in use is an error.
    """
    port = config.GRPC_PORT.get(port)
    if port < 0:
        yield None
        return
    try:
        import grpc

        from rendezvous.http.grpc.service import handler
    except ImportError as exc:
        raise ConfigError(f"RENDEZVOUS_GRPC_PORT={port} needs gRPC support ({exc.name} is not "
                          "installed): pip install 'rendezvous-ml[grpc]'") from None
    host = config.HOST.get(host)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", config.MAX_BODY_BYTES.get()),
        ("grpc.so_reuseport", int(reuse_port)),
    ])
    server.add_generic_rpc_handlers((handler(proxy),))
    try:
        bound = server.add_insecure_port(target)
    except RuntimeError as exc:
        raise ConfigError(f"cannot serve gRPC on {target}: {exc}; choose another "
                          "RENDEZVOUS_GRPC_PORT") from None
    await server.start()
    try:
        yield target.rsplit(":", 1)[0] + f":{bound}"
    finally:
        await server.stop(GRACE_S)
