"""The floor: a Python HTTP server that does nothing, to show how far the HTTP stack alone goes.

A bare ASGI app on the same stack as the FastAPI baseline and Rendezvous (gunicorn with 2
uvicorn workers, uvloop and httptools): it reads the request's body and answers a constant
``{"prediction":0}``, with no framework, no validation and no model. Its throughput and p99
at c=32 show how far this HTTP stack alone goes on the machine, against what the contenders
reach with their work behind it (see ``bench.report.floor``)::

    bench/.venv/bin/gunicorn -w 2 -k uvicorn_worker.UvicornWorker bench.floor_app:app

Runs in ``bench/.venv``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]

BODY = b'{"prediction":0}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
              send: Callable[[Message], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole body, as every contender must
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
