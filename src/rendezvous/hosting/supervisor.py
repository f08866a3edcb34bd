"""The one supervisor: it runs a topology's child processes, restarts them, stops them in order.

Every way of serving that needs more than one process is a ``Plan`` (``hosting.plans``) run by
``Supervisor.run``: the partitions of ``serve --processes N``, every role of
``serve --streams local-nats``, and the replicas of ``serve --role worker --replicas N``. A plan
says which children start in which order and how they follow policy changes; the supervisor
starts each in its own process group, restarts one that exits (after a capped exponential
backoff), and on SIGINT or SIGTERM lets the plan stop them in its order.

Model hosts (``model_host``) are restarted the same way: after an unexpected exit, wait
``Backoff.delay(attempt)`` (doubling, capped) and start it again; once a child has run well for
``reset_after_s`` its next failure starts from the first delay again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["PARENT_ENV", "Backoff", "Child", "Plan", "Say", "Supervisor", "describe_exit",
           "parent_gone"]

Say = Callable[[str], None]  # where progress lines go (``print``, a Rich console, a log)
PARENT_ENV = "RENDEZVOUS_PARENT_PID"  # set in the environment of the processes we start


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential restart delays.

    >>> [Backoff(first_s=0.5, cap_s=3).delay(a) for a in range(5)]
    [0.5, 1.0, 2.0, 3, 3]
    """

    first_s: float = 0.25
    cap_s: float = 10.0
    reset_after_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.cap_s, self.first_s * 2 ** min(attempt, 30))


def describe_exit(returncode: int | None) -> str:
    """How a child's exit reads in status and logs.

    >>> describe_exit(-6), describe_exit(3), describe_exit(0)
    ('killed by SIGABRT', 'exited with code 3', 'exited')
    """
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return "exited" if returncode == 0 else f"exited with code {returncode}"


async def parent_gone() -> None:
    """Return once the supervisor that started this process has died; never, if none did.

    Children live in their own process groups (for an ordered Ctrl-C), so a supervisor killed
    with -9 would otherwise leave them running with nobody to stop them.
    """
    raw = os.environ.get(PARENT_ENV, "")
    if not raw.isdigit():
        await asyncio.Event().wait()
    while os.getppid() == int(raw):
        await asyncio.sleep(0.5)


@dataclass
class Child:
    """One supervised process."""

    label: str  # e.g. "worker demo fraud@3 #2"
    role: str  # the ProcessRole it runs ("partition" for one of ``serve --processes N``)
    args: list[str]
    model: tuple[str, str] | None = None  # (deployment, model) of a worker
    env: dict[str, str] = field(default_factory=dict)  # added to the supervisor's environment
    proc: subprocess.Popen[bytes] | None = None
    reported: bool = False  # stopped on purpose: not restarted
    attempts: int = 0
    started_at: float = 0.0
    restart_at: float = 0.0  # when a pending restart is due (0: none pending)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Plan(Protocol):
    """What a supervisor runs: which children, in which order, and how they follow changes."""

    async def start(self, sup: Supervisor) -> None:
        """Spawn the children in order; return once the plan serves (raise if it cannot)."""

    async def follow(self, sup: Supervisor) -> None:
        """Called about twice a second while serving: follow policy changes."""

    async def stop(self, sup: Supervisor) -> None:
        """Stop the children in the plan's order (what is left is stopped afterwards)."""


TICK_S = 0.5


@dataclass
class Supervisor:
    """Starts children in their own process groups, reports deaths, stops them gracefully."""

    say: Say
    children: list[Child] = field(default_factory=list)
    backoff: Backoff = field(default_factory=Backoff)

    async def run(self, plan: Plan, stopped: Awaitable[object]) -> None:
        """Start ``plan``, restart children that exit and let the plan follow changes until
        ``stopped`` completes, then stop everything (the plan's order first)."""
        stop = asyncio.ensure_future(stopped)
        # Let ``stopped`` get going (install its signal handlers) before there are children
        # that a signal arriving in between would orphan.
        await asyncio.sleep(0.05)
        main = asyncio.ensure_future(self._serve(plan))
        try:
            done, _ = await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
            if main in done:
                main.result()  # startup errors surface here
        finally:
            for task in (main, stop):
                task.cancel()
            await asyncio.gather(main, stop, return_exceptions=True)
            try:
                await plan.stop(self)
            finally:
                await self.stop(list(self.children))

    async def _serve(self, plan: Plan) -> None:
        await plan.start(self)
        while True:
            self.restart_dead()
            await plan.follow(self)
            await asyncio.sleep(TICK_S)

    def spawn(self, child: Child) -> Child:
        self.children.append(child)
        self._start(child)
        return child

    def _start(self, child: Child) -> None:
        # Own process group: a terminal Ctrl-C reaches the supervisor only, which then stops
        # the children in order instead of all of them at once.
        env = {**os.environ, **child.env, PARENT_ENV: str(os.getpid())}
        child.proc = subprocess.Popen(child.args, stdin=subprocess.DEVNULL, env=env,
                                      process_group=0)
        child.started_at, child.restart_at = time.monotonic(), 0.0
        self.say(f"started {child.label} (pid {child.pid})")

    def restart_dead(self) -> None:
        """Start again, after a capped backoff, each child that exited without being asked."""
        now = time.monotonic()
        for c in self.children:
            if c.alive or c.reported or c.proc is None:
                continue
            if c.restart_at == 0.0:
                if now - c.started_at > self.backoff.reset_after_s:
                    c.attempts = 0
                delay = self.backoff.delay(c.attempts)
                c.attempts += 1
                c.restart_at = now + delay
                self.say(f"{c.label} (pid {c.pid}) {describe_exit(c.proc.returncode)}; "
                         f"starting it again in {delay:.2g} s")
            elif now >= c.restart_at:
                self._start(c)

    async def stop(self, children: list[Child], timeout_s: float = 15.0) -> None:
        """SIGTERM (a clean stop), then SIGKILL whatever still runs after ``timeout_s``."""
        alive = [c for c in children if c.alive]
        for c in alive:
            c.reported = True  # an exit we asked for is no news
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        while any(c.alive for c in alive) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for c in alive:
            if c.alive:
                self.say(f"{c.label} (pid {c.pid}) did not stop within {timeout_s:g} s; killing")
                c.proc.kill()  # type: ignore[union-attr]
            if c.proc is not None:
                await asyncio.to_thread(c.proc.wait)
        for c in children:
            if c in self.children:
                self.children.remove(c)
