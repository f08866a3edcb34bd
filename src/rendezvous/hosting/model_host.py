"""A model version in its own OS process, supervised: the default hosting of every model.

``ModelHost`` starts ``python -m rendezvous.hosting.host_main`` with one end of a socket pair,
sends it the exact bytes of each input batch and gets back the encoded scores (see
``protocol``). It keeps the process running:

- an exit or crash (a native extension calling ``abort()``, an out-of-memory kill) is noticed
  at once (the socket closes); the batch in flight gets error scores naming the cause, and the
  host is started again after a capped exponential backoff (``supervisor.Backoff``);
- a host whose resident memory exceeds ``max_memory_mb``, or that stays in one predict call
  longer than ``max_predict_ms``, is killed and restarted the same way;
- a model that cannot be loaded or warmed up (digest mismatch, import error, an exception in
  load or in predicting its example rows) is ``failed`` with the reason and not restarted.

While a host is not ``ready`` its worker takes no scores from it (they are ``missing``) and the
schedule's fallbacks answer. Nothing a model does can block or crash the serving process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from rendezvous.core import messages
from rendezvous.hosting.child import SupervisedChild, read_frame, spawn_on_socket
from rendezvous.hosting.protocol import HostReport, HostState, ScoreBatch, frame, from_host
from rendezvous.hosting.supervisor import Backoff, describe_exit
from rendezvous.roles.scoring import error_scores
from rendezvous.streams.base import Record

__all__ = ["HostGone", "ModelHost"]

log = logging.getLogger(__name__)

MEMORY_CHECK_S = 0.2
STOP_TIMEOUT_S = 5.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class HostGone(Exception):
    """The host process ended while a batch was in flight."""


def resident_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux ``/proc``; None where unavailable)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE / 1e6
    except (OSError, IndexError, ValueError):
        return None


class ModelHost(SupervisedChild):
    """One model version of one deployment in a supervised child process.

    >>> # host = ModelHost(home=home, deployment="demo", model="demo-hgb@1", worker="w1")
    >>> # await host.start(); await host.settled(timeout_s=60); data = await host.score(records)
    """

    isolation = "process"

    def __init__(self, *, home: Path, deployment: str, model: str, worker: str,
                 registry_url: str | None = None, max_memory_mb: float | None = None,
                 max_predict_ms: float = 1000.0, backoff: Backoff | None = None) -> None:
        super().__init__(backoff)
        self.label = f"{deployment} {model}"
        self.home = home
        self.deployment = deployment
        self.model = model
        self.worker = worker
        self.registry_url = registry_url
        self.max_memory_mb = max_memory_mb
        self.max_predict_ms = max_predict_ms
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._seq = 0
        self._kill_cause = ""
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- what status reports --------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {**super().info(), "isolation": self.isolation}

    def _changed(self, state: HostState) -> None:
        if state in (HostState.READY, HostState.FAILED):
            self._settled.set()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the process (and keep it running); returns at once."""
        self._task = asyncio.ensure_future(self._supervise())

    async def settled(self, *, timeout_s: float) -> HostState:
        """Wait until the host is ready or failed for the first time (or ``timeout_s``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout_s)
        return self.state

    async def stop(self) -> None:
        """Close the socket (the host exits), kill it if it does not within a few seconds."""
        self._stopping = True
        if self._writer is not None:
            self._writer.close()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self._kill("did not stop in time")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._set(HostState.STOPPED)

    def _command(self, fd: int) -> list[str]:
        args = [sys.executable, "-m", "rendezvous.hosting.host_main", "--deployment",
                self.deployment, "--model", self.model, "--fd", str(fd), "--home",
                str(self.home), "--worker", self.worker]
        if self.registry_url:
            args += ["--registry", self.registry_url]
        return args

    async def _run_once(self) -> str:
        """Run one host process until it exits; returns how it ended."""
        env = dict(os.environ)
        # Every model scores every request at once: one compute thread each, unless told.
        env.setdefault("OMP_NUM_THREADS", "1")
        self._proc, reader, self._writer = await spawn_on_socket(self._command, env)
        self.pid = self._proc.pid
        self._set(HostState.LOADING)
        watch = asyncio.ensure_future(self._watch_memory(self._proc.pid, self.max_memory_mb)) \
            if self.max_memory_mb is not None else None
        try:
            await self._read(reader)
        finally:
            if watch is not None:
                watch.cancel()
            self._writer.close()
            self._writer = None
            rc = await self._proc.wait()
        cause = self._kill_cause or describe_exit(rc)
        if self.state is HostState.FAILED:
            cause = self.detail
        self._kill_cause = ""
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(HostGone(cause))
        return cause

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                msg = await read_frame(reader, from_host)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._kill(f"sent a malformed frame ({exc})")  # restarted like a crash
                return
            if msg is None:
                return
            if isinstance(msg, HostReport):
                self._set(msg.state, msg.detail)
            else:
                fut = self._pending.get(msg.seq)
                if fut is not None and not fut.done():
                    fut.set_result(msg.scores)

    async def _watch_memory(self, pid: int, limit_mb: float) -> None:
        while True:
            await asyncio.sleep(MEMORY_CHECK_S)
            mb = resident_mb(pid)
            if mb is not None and mb > limit_mb:
                self._kill(f"used {mb:.0f} MB, over max_memory_mb={limit_mb:g}")
                return

    def _kill(self, cause: str) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        self._kill_cause = self._kill_cause or cause
        log.warning("%s %s: killing model host %s: %s", self.deployment, self.model, proc.pid,
                    cause)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)

    # -- scoring ----------------------------------------------------------------------------

    async def score(self, records: Sequence[Record], held_ns: Sequence[int] = ()) -> bytes | None:
        """Encoded scores for ``records`` (``held_ns``: see ``Scoring.score``); None while the
        host is not ready (missing)."""
        writer = self._writer
        if self.state is not HostState.READY or writer is None:
            return None
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        started = time.time_ns()
        datas = [r.data for r in records]
        try:
            writer.write(frame(ScoreBatch(seq, datas, list(held_ns))))
            await writer.drain()
            data = await asyncio.wait_for(fut, self.max_predict_ms / 1000)
        except TimeoutError:
            cause = f"predict took longer than max_predict_ms={self.max_predict_ms:g}"
            self._kill(cause)
            return self._errors(datas, started, f"model host killed: {cause}", held_ns)
        except (HostGone, ConnectionError) as exc:
            return self._errors(datas, started, f"model host ended mid-batch: "
                                                f"{exc or 'connection lost'}", held_ns)
        finally:
            self._pending.pop(seq, None)
        return data or None

    def _errors(self, datas: list[bytes], started: int, error: str,
                held_ns: Sequence[int]) -> bytes | None:
        scores = error_scores(datas, deployment=self.deployment, model=self.model,
                              worker=self.worker, error=error, started_ns=started,
                              finished_ns=time.time_ns(), held_ns=held_ns)
        return messages.encode(scores) if scores else None
