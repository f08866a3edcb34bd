"""uvicorn's httptools protocol with deadlines for headers and bodies and a cap on headers' size.

uvicorn bounds the idle time between requests (keep-alive) but not the time a client takes to
send one request's headers or body, nor (with httptools) the headers' size: a client trickling
a request holds a connection and its buffers forever. Each request's headers must arrive within
``header_timeout_s`` of its first byte (of the connection, for the first request) and weigh at
most ``max_header_bytes``; its body may pause at most ``body_timeout_s`` between two pieces.
Otherwise the client gets 408 or 431 and the connection closes.

The body's deadline is kept here rather than around each ASGI ``receive`` (a middleware did
that before, with an ``asyncio.wait_for``, a task and a timer per request): a body that arrives
with its headers, as nearly every one does, costs no timer at all.

It also sends each response's status line and headers together with its body, in one
``send`` (``_OneSend``): uvicorn writes them apart, which costs a system call and a segment
per response, and the client a second read.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _OneSend:
    """A response's transport that holds the status line and headers (its first write) until
    the body's first write, and sends both at once. What is held goes out by the end of the
    event loop's current iteration in any case (a response without a body, a streamed one
    whose first chunk comes later), and before a close."""

    __slots__ = ("_fresh", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None  # the first write, until it goes out
        self._fresh = True

    def write(self, data: bytes) -> None:
        if self._fresh:
            self._fresh = False
            self._held = data
            self._loop.call_soon(self._flush)
        elif self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held + data)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Hardened(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    body_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._refused = False
        # While a request's body is still coming: when its last piece (or its headers) came,
        # and the timer that checks on it, armed only once a read ends with the body unfinished.
        self._body_pending = False
        self._body_at = 0.0
        self._body_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._header_bytes = 0
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._body_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._header_bytes > self.max_header_bytes and not self._refused:
            self._refuse(431, "Request Header Fields Too Large",
                         f"request line and headers exceed {self.max_header_bytes} bytes; "
                         "send fewer or shorter headers (RENDEZVOUS_MAX_HEADER_BYTES)")
        elif self._body_pending and self._body_timer is None and not self._refused:
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_check)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes <= self.max_header_bytes:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        if self._header_bytes > self.max_header_bytes:
            return  # refused in data_received, once the parser returns
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.transport is self.transport:
            self.cycle.transport = _OneSend(self.transport, self.loop)  # type: ignore[assignment]
        self._body_pending = True
        self._body_at = self.loop.time()

    def on_body(self, body: bytes) -> None:
        if not self._refused and self._header_bytes <= self.max_header_bytes:
            self._body_at = self.loop.time()
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_done()
        if not self._refused and self._header_bytes <= self.max_header_bytes:
            super().on_message_complete()

    def _body_done(self) -> None:
        self._body_pending = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_check(self) -> None:
        self._body_timer = None
        if not self._body_pending or self._refused:
            return
        if self.flow.read_paused:  # the app has not taken what came yet: not the client's pause
            self._body_at = self.loop.time()
        idle = self.loop.time() - self._body_at
        if idle < self.body_timeout_s:  # a piece came meanwhile: check again when due
            self._body_timer = self.loop.call_later(self.body_timeout_s - idle, self._body_check)
            return
        self._body_pending = False
        if self.cycle is not None and self.cycle.response_started:
            # Answered already (say, refused by its declared length): nobody waits for the rest.
            self._refused = True
            self.transport.close()
            return
        self._refuse(408, "Request Timeout",
                     f"the request body paused for more than {self.body_timeout_s:g} s; send "
                     "it faster (RENDEZVOUS_BODY_TIMEOUT_S)")

    def _too_slow(self) -> None:
        self._header_timer = None
        self._refuse(408, "Request Timeout",
                     f"request headers not received within {self.header_timeout_s:g} s "
                     "(RENDEZVOUS_HEADER_TIMEOUT_S)")

    def _refuse(self, status: int, phrase: str, message: str) -> None:
        self._refused = True
        if self.transport.is_closing():
            return
        body = json.dumps({"error": message,
                           "code": phrase.lower().replace(" ", "_")}).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, phrase.encode(), len(body), body))
        self.transport.close()


def hardened_protocol(*, header_timeout_s: float, max_header_bytes: int,
                      body_timeout_s: float) -> type[_Hardened]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type("HardenedHttpToolsProtocol", (_Hardened,),
                {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes,
                 "body_timeout_s": body_timeout_s})
