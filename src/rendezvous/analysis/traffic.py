"""Traffic replay: re-drive archived requests against a running deployment.

Requests are sent in archive order at their recorded pacing divided by ``speed`` (``speed=2``:
twice as fast), as JSON records to ``POST {url}/v1/deployments/{deployment}/predict`` with
their recorded meta tags, with at most ``concurrency`` in flight. Each is a new request (no
client id is sent, so the server's idempotency cache does not answer from memory). The run
stops by itself after the range (or ``limit`` requests) and reports what was sent and got.

>>> # report = await drive(home, "demo", "http://127.0.0.1:8000", speed=10, limit=1000)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from rendezvous.analysis import evidence
from rendezvous.analysis.outcomes import quantiles_ms
from rendezvous.analysis.times import Span, TimeRangeError
from rendezvous.core.messages import Request
from rendezvous.errors import ConfigError
from rendezvous.registry import Registry

__all__ = ["drive"]

CONCURRENCY = 64


def body(req: Request) -> dict[str, Any]:
    """The JSON predict body of an archived request."""
    names = list(req.inputs)
    records = [{n: req.inputs[n][i] for n in names} for i in range(req.n_rows)]
    return {"records": records, "meta": req.meta} if req.meta else {"records": records}


async def drive(home: Path, deployment: str, url: str, *, span: Span = Span(),
                speed: float = 1.0, limit: int | None = None, concurrency: int = CONCURRENCY,
                timeout_s: float = 30.0, registry_url: str | None = None,
                progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Send the archived requests of ``span`` to the deployment served at ``url``; returns
    the report (sent, status counts, latency quantiles, pacing)."""
    if not speed > 0:
        raise ConfigError(f"--speed {speed} must be positive (1: recorded pace, 10: ten times "
                          "faster)")
    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit {limit} must be a positive number of requests")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--to {url!r} is not an HTTP URL; use e.g. http://127.0.0.1:8000")
    with Registry(home, url=registry_url) as reg:
        sig = reg.deployment_signature(deployment)  # an unknown deployment fails here
    statuses: Counter[str] = Counter()
    latencies: list[int] = []
    gate = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    sent = behind = 0
    first_rec = last_rec = 0
    started = time.perf_counter()

    async def one(client: httpx.AsyncClient, req: Request) -> None:
        t0 = time.perf_counter_ns()
        try:
            r = await client.post(f"/v1/deployments/{deployment}/predict", json=body(req))
            statuses[str(r.status_code)] += 1
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1
        finally:
            latencies.append(time.perf_counter_ns() - t0)
            gate.release()

    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s) as client:
        for group in evidence.requests(home, deployment, span, sig):
            for a in group:
                if limit is not None and sent >= limit:
                    break
                rec = a.request.received_ns
                first_rec = first_rec or rec
                last_rec = max(last_rec, rec)
                due = started + (rec - first_rec) / 1e9 / speed
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                await gate.acquire()
                behind += time.perf_counter() - due > 0.05  # pacing slipped (server slow)
                task = asyncio.ensure_future(one(client, a.request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
                if progress is not None:
                    progress(sent)
            if limit is not None and sent >= limit:
                break
        if tasks:
            await asyncio.gather(*tasks)
    if sent == 0:
        raise TimeRangeError(f"no archived requests of {deployment!r} from {span.describe()}; "
                             "widen --from/--to", span.describe())
    seconds = time.perf_counter() - started
    return {"deployment": deployment, "url": url, "range": span.describe(), "speed": speed,
            "sent": sent, "statuses": dict(statuses.most_common()),
            "ok": statuses["200"], "latency_ms": quantiles_ms(latencies, (0.5, 0.9, 0.99, 1.0)),
            "seconds": round(seconds, 3),
            "recorded_seconds": round((last_rec - first_rec) / 1e9, 3),
            "sent_per_s": round(sent / seconds, 1) if seconds else None,
            "late_sends": behind}
