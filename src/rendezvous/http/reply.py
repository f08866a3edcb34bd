"""What every HTTP handler returns: status, body and headers, sent as is by the proxy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

JSON = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


async def send_reply(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, body: bytes,
                     headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Send a whole response over ASGI, with its ``content-length``: without one, uvicorn
    frames the body as chunks, which every client must then take apart."""
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
