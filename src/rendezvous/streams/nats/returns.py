"""The return channel between processes: results travel to their proxy over core NATS.

When every role runs in one process, the rendezvous server hands a ``Result`` straight to the
proxy's callback. When they run in separate processes (``serve --role …``), each proxy listens
on the subject ``rendezvous.return.<address>`` of the NATS connection its stream engine already
holds, and the rendezvous server publishes there.

Core NATS, not JetStream: a result is only useful to the proxy that is waiting for it, and that
proxy is alive or it is not. Every result is recorded durably in the results stream anyway; a
result published while its proxy is gone is simply dropped (the client's connection went with
the proxy).

Example::

    returns = NatsReturns(stream.nc)
    returns.listen("proxy-01J…", on_result)
    await returns.ready()
    await returns.send("proxy-01J…", encoded_result)  # from any process on the same NATS
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from rendezvous.errors import UnavailableError

__all__ = ["SUBJECT_PREFIX", "NatsReturns", "return_subject"]

log = logging.getLogger(__name__)

# Not under "rv.", where the stream engine keeps its topics: no topic can ever collide.
SUBJECT_PREFIX = "rendezvous.return."


def return_subject(address: str) -> str:
    """Core NATS subject of a return address (addresses are ``proxy-<ULID>``)."""
    return SUBJECT_PREFIX + address


class NatsReturns:
    """Sends results to, and receives them for, return addresses on one NATS connection."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._subs: dict[str, Subscription] = {}
        self._wanted: set[str] = set()
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        """False while the connection is lost (nats-py keeps reconnecting meanwhile)."""
        return bool(self.nc.is_connected)

    def listen(self, address: str, handler: Callable[[bytes], None]) -> None:
        """Call ``handler(data)`` for every result sent to ``address``, from now on.

        Synchronous, like ``LocalReturns.register``: the subscription is made in the
        background; ``await ready()`` waits until the server has it.
        """
        self._wanted.add(address)
        task = asyncio.ensure_future(self._subscribe(address, handler))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def ready(self) -> None:
        """Wait until every ``listen`` so far is known to the server."""
        if self._pending:
            await asyncio.gather(*self._pending)
        # A flush round-trip: the server has processed our SUBs, so a result published right
        # after this (from any process) reaches us.
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            if self.nc.is_connected:
                await self.nc.flush(timeout=5)

    def forget(self, address: str) -> None:
        """Stop listening on ``address`` (in the background)."""
        self._wanted.discard(address)
        sub = self._subs.pop(address, None)
        if sub is not None:
            task = asyncio.ensure_future(self._unsubscribe(sub))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def send(self, return_to: str, data: bytes) -> None:
        """Publish ``data`` to the proxy listening on ``return_to``.

        Raises ``UnavailableError`` at once while disconnected, rather than queueing a result
        that will be stale by the time the connection is back.
        """
        if not self.nc.is_connected:
            raise UnavailableError(
                f"cannot return a result to {return_to!r}: not connected to NATS; the result "
                "is still recorded in the results stream"
            )
        try:
            await self.nc.publish(return_subject(return_to), data)
        except nats.errors.Error as exc:
            raise UnavailableError(
                f"cannot return a result to {return_to!r}: {exc or type(exc).__name__}"
            ) from exc

    async def close(self) -> None:
        """Unsubscribe everything (the connection itself belongs to the stream engine)."""
        for address in list(self._wanted):
            self.forget(address)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _subscribe(self, address: str, handler: Callable[[bytes], None]) -> None:
        async def on_msg(msg: Msg) -> None:
            handler(msg.data)

        sub = await self.nc.subscribe(return_subject(address), cb=on_msg)
        if address in self._wanted:
            self._subs[address] = sub
        else:  # forgotten while we subscribed
            await self._unsubscribe(sub)

    @staticmethod
    async def _unsubscribe(sub: Subscription) -> None:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
