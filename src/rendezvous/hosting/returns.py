"""The return channel: how a ``Result`` reaches the proxy waiting for it."""

from __future__ import annotations

from collections.abc import Callable

from rendezvous.errors import UnavailableError
from rendezvous.streams.base import ReturnTransport

__all__ = ["LocalReturns"]


class LocalReturns:
    """Return channel: return address -> callback, inside this process first.

    With the engine's ``ReturnTransport`` attached (a shared engine), results for addresses
    this process does not own are sent there, and every address registered here is also
    listened for there, so proxies and rendezvous servers may live in different processes.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self.remote: ReturnTransport | None = None

    @property
    def connected(self) -> bool:
        return self.remote is None or self.remote.connected

    def register(self, address: str, handler: Callable[[bytes], None]) -> None:
        self._handlers[address] = handler
        if self.remote is not None:
            self.remote.listen(address, handler)

    def unregister(self, address: str) -> None:
        self._handlers.pop(address, None)
        if self.remote is not None:
            self.remote.forget(address)

    async def attach(self, remote: ReturnTransport) -> None:
        """Listen on ``remote`` for every address registered so far (and later ones)."""
        self.remote = remote
        for address, handler in self._handlers.items():
            remote.listen(address, handler)
        await remote.ready()

    async def send(self, return_to: str, data: bytes) -> None:
        handler = self._handlers.get(return_to)
        if handler is not None:
            handler(data)
        elif self.remote is not None:
            await self.remote.send(return_to, data)
        else:
            raise UnavailableError(f"no proxy listens on return address {return_to!r}")

    async def close(self) -> None:
        if self.remote is not None:
            await self.remote.close()
