"""What every HTTP handler returns: status, body and headers, sent as is by the proxy."""

from __future__ import annotations

from dataclasses import dataclass

JSON = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]
