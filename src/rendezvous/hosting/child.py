"""A child process on one end of a socket pair, kept running: how the model hosts and the
analytics host are started and supervised, and how their frames are read."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from rendezvous.hosting.protocol import HEADER, HostState
from rendezvous.hosting.supervisor import Backoff

__all__ = ["SupervisedChild", "read_frame", "spawn_on_socket"]

log = logging.getLogger(__name__)

M = TypeVar("M")


async def spawn_on_socket(
        command: Callable[[int], list[str]], env: dict[str, str] | None = None,
) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader, asyncio.StreamWriter]:
    """Start ``command(fd)`` with ``fd`` its end of a new socket pair, in a session of its own
    (a terminal's Ctrl-C reaches the serving process, which then stops its children in order,
    instead of every child dying at once); returns it and this end as streams."""
    ours, theirs = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            *command(theirs.fileno()), pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL, env=env if env is not None else dict(os.environ),
            start_new_session=True)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return proc, reader, writer


async def read_frame(reader: asyncio.StreamReader, decoder: msgspec.msgpack.Decoder[M]) -> M | None:
    """The next message, None once the other end closed. Raises ``msgspec.DecodeError`` or
    ``ValidationError`` for a malformed frame."""
    try:
        head = await reader.readexactly(HEADER.size)
        return decoder.decode(await reader.readexactly(HEADER.unpack(head)[0]))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class SupervisedChild:
    """A child process kept running: its state as status shows it, its restarts, and the
    loop that starts it again after a capped exponential backoff (``supervisor.Backoff``).

    Subclasses name themselves in logs (``label``), run one child until it exits
    (``_run_once``, returning how it ended) and may follow state changes (``_changed``).
    A child that reports ``failed`` is not started again when ``failed_is_final``.
    """

    label = "child"
    failed_is_final = True

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()
        self.state = HostState.LOADING
        self.detail = ""
        self.restarts = 0
        self.last_exit = ""
        self.pid = 0
        self.since = time.time()
        self._stopping = False
        self._ready_at = 0.0

    def _set(self, state: HostState, detail: str = "") -> None:
        if state is not self.state or detail != self.detail:
            self.state, self.detail, self.since = state, detail, time.time()
            level = logging.WARNING if state in (HostState.FAILED, HostState.RESTARTING) \
                else logging.INFO
            log.log(level, "%s: %s%s", self.label, state.value, f" ({detail})" if detail else "")
        if state is HostState.READY:
            self._ready_at = time.monotonic()
        self._changed(state)

    def info(self) -> dict[str, Any]:
        """The child as status shows it."""
        return {"state": self.state.value, "detail": self.detail, "restarts": self.restarts,
                "last_exit": self.last_exit, "pid": self.pid, "since": self.since}

    def _changed(self, state: HostState) -> None:
        """Called on every state report."""

    async def _run_once(self) -> str:
        raise NotImplementedError

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping:
            self._ready_at = 0.0
            try:
                cause = await self._run_once()
            except OSError as exc:  # could not even start the interpreter
                cause = f"could not start: {exc}"
            if self._stopping:
                return
            if self.state is HostState.FAILED and self.failed_is_final:
                return  # loading fails the same way every time: wait for a policy change
            if self._ready_at and time.monotonic() - self._ready_at > self.backoff.reset_after_s:
                attempt = 0
            delay = self.backoff.delay(attempt)
            attempt += 1
            self.restarts += 1
            self.last_exit = cause
            self._set(HostState.RESTARTING, f"{cause}; starting again in {delay:.2g} s")
            await asyncio.sleep(delay)
