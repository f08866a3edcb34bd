"""The model host process: one model version, loaded, warmed up, scoring batches its parent sends.

Started by ``ModelHost`` (never by hand) as::

    python -m rendezvous.hosting.host_main --deployment demo --model demo-hgb@1 --fd 5 --home …

so ``ps`` names the model each process hosts. It reports ``loading``, ``warming`` and
``ready`` (or ``failed`` with the reason, then exits with ``LOAD_FAILED``) and then answers
each ``ScoreBatch`` with ``Scored``. It exits when its parent closes the socket or dies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import sys
from pathlib import Path

from rendezvous import config
from rendezvous.core import messages
from rendezvous.errors import ConfigError, NotFoundError
from rendezvous.hosting import heap
from rendezvous.hosting.protocol import (
    HEADER,
    HostReport,
    HostState,
    Scored,
    frame,
    from_parent,
)

LOAD_FAILED = 3  # exit code of a host whose model could not be loaded or warmed up


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies, even mid-predict (elsewhere the
    closed socket alone ends it, once the current predict returns)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _never_preempt_the_parent() -> None:
    """Run as ``SCHED_BATCH`` (Linux), whose wake-ups do not preempt a running process. When
    the serving process hands this host a batch, it goes on handing batches to the other hosts
    and answering clients instead of being pushed off its core in the middle of the write; the
    host runs on a free core, or as soon as one frees up. It is still an ordinary time-shared
    process (no privilege needed, the same nice weight). ``RENDEZVOUS_HOSTS_PREEMPT=1``
    keeps the default policy; the two are compared in ``bench/results/host-sched``."""
    if config.HOSTS_PREEMPT.get():
        return
    with contextlib.suppress(AttributeError, OSError):  # elsewhere: the default policy
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def below_the_parent() -> None:
    """Run ``RENDEZVOUS_HOSTS_NICE`` nice steps below the serving process (no privilege is
    needed to lower one's own priority). On a machine with fewer cores than busy processes, a
    host woken with a batch then less often takes the serving process's core while it hands
    out batches, answers clients and files scores (5 steps: about a third of its weight).
    Priorities decide only who runs while processes wait for a core. Compared on 2 cores in
    ``bench/results/hosts-nice``."""
    steps = config.HOSTS_NICE.get()
    if steps:
        with contextlib.suppress(AttributeError, OSError):  # no os.nice: the same priority
            os.nice(steps)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def serve(sock: socket.socket, *, home: Path, registry_url: str | None, deployment: str,
          model: str, worker: str) -> int:
    """Load, warm up, then score until the parent closes the socket; returns the exit code."""
    from rendezvous.registry import Registry
    from rendezvous.roles.scoring import BatchScorer, one_thread_each

    sock.sendall(frame(HostReport(HostState.LOADING)))
    try:
        with Registry(home, url=registry_url) as reg:
            predictor = reg.load(model)  # verifies the artifact's digest
            try:
                signature = reg.deployment_signature(deployment)
            except NotFoundError:  # checking a model for a deployment not recorded yet
                signature = reg.signature(model)
            example = reg.get(model).data_summary.get("example_rows")
    except Exception as exc:  # whatever loading raises is this model's failure, reported
        sock.sendall(frame(HostReport(HostState.FAILED, f"{type(exc).__name__}: {exc}")))
        return LOAD_FAILED
    one_thread_each()
    scorer = BatchScorer(predictor, signature, deployment=deployment, model=model,
                         worker=worker)
    sock.sendall(frame(HostReport(HostState.WARMING)))
    try:
        scorer.warm_up(example)
    except Exception as exc:  # a model that cannot predict its own example rows is broken
        sock.sendall(frame(HostReport(
            HostState.FAILED, f"warm-up predict on the registration's example rows failed: "
                              f"{type(exc).__name__}: {exc}")))
        return LOAD_FAILED
    heap.settle()  # the model and its libraries, out of the collector's sight
    sock.sendall(frame(HostReport(HostState.READY)))
    while True:
        head = _recv_exact(sock, HEADER.size)
        if head is None:
            return 0
        body = _recv_exact(sock, HEADER.unpack(head)[0])
        if body is None:
            return 0
        batch = from_parent.decode(body)
        scores = scorer.score(batch.records, held_ns=batch.held_ns)
        sock.sendall(frame(Scored(batch.seq, messages.encode(scores) if scores else b"")))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rendezvous-model-host")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--registry", default=None)
    p.add_argument("--deployment", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--worker", required=True)
    args = p.parse_args(argv)
    die_with_parent()
    # Ctrl-C in a terminal reaches the whole foreground group; the parent stops us in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    try:
        try:
            _never_preempt_the_parent()
            below_the_parent()
        except ConfigError as exc:  # a bad setting fails the model the same way every time
            sock.sendall(frame(HostReport(HostState.FAILED, str(exc))))
            sys.exit(LOAD_FAILED)
        code = serve(sock, home=args.home, registry_url=args.registry,
                     deployment=args.deployment, model=args.model, worker=args.worker)
    except (BrokenPipeError, ConnectionResetError):
        code = 0  # the parent went away
    sys.exit(code)


if __name__ == "__main__":
    main()
