"""The load generator every contender gets: ``wrk`` with ``wrk_post.lua``.

``parse`` is pure (wrk's stdout in, a ``LoadResult`` out); ``run_wrk`` is the thin shell
that starts wrk and waits for it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).resolve().with_name("wrk_post.lua")
MARKER = "BENCH_WRK "
#: One wrk thread drives 64 connections at far more than any contender's rate, and leaves
#: the second core to the servers.
THREADS = 1
TIMEOUT_S = 10


class LoadError(RuntimeError):
    """wrk could not run or printed no result line."""


@dataclass(frozen=True)
class LoadResult:
    """One fixed-duration wrk run against one contender at one concurrency."""

    requests: int
    duration_s: float
    errors_by_kind: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float

    @property
    def errors(self) -> int:
        """Non-2xx answers (wrk counts status >= 400) plus socket errors and timeouts."""
        return sum(self.errors_by_kind.values())

    @property
    def rps(self) -> float:
        """Successful responses per second."""
        ok = self.requests - self.errors_by_kind.get("status", 0)
        return ok / self.duration_s if self.duration_s > 0 else 0.0


def parse(stdout: str) -> LoadResult:
    """The result line that ``wrk_post.lua``'s ``done()`` hook printed."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER):])
            break
    else:
        raise LoadError(f"wrk printed no {MARKER.strip()} line; its output was:\n{stdout}")
    lat = {k: v / 1000.0 for k, v in data["latency_us"].items()}
    return LoadResult(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        errors_by_kind={k: int(v) for k, v in data["errors"].items()},
        p50_ms=lat["p50"], p90_ms=lat["p90"], p99_ms=lat["p99"], p999_ms=lat["p999"],
        mean_ms=lat["mean"], max_ms=lat["max"],
    )


def write_bodies(path: Path, bodies: Sequence[bytes]) -> Path:
    """One JSON body per line, as ``wrk_post.lua`` reads them (written atomically)."""
    if any(b"\n" in b for b in bodies):
        raise ValueError("request bodies must be single-line JSON")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"\n".join(bodies) + b"\n")
    tmp.replace(path)
    return path


def wrk_argv(url: str, bodies: Path, *, connections: int, duration_s: float,
             threads: int = THREADS, timeout_s: int = TIMEOUT_S) -> list[str]:
    """wrk's command line; wrk takes whole seconds, so the duration is rounded up."""
    seconds = max(1, math.ceil(duration_s))
    return ["wrk", "-t", str(min(threads, connections)), "-c", str(connections),
            "-d", f"{seconds}s", "--timeout", f"{timeout_s}s", "--latency",
            "-s", str(LUA_SCRIPT), url, "--", str(bodies)]


def ensure_wrk() -> str:
    """The wrk binary; installs Debian's package when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing Debian's wrk package (apt-get install wrk)")
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True,
                       stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
    if not found:
        raise LoadError("wrk is not installed; install it (Debian: apt-get install wrk)")
    return found


def run_wrk(url: str, bodies: Path, *, connections: int, duration_s: float,
            threads: int = THREADS) -> LoadResult:
    """Run wrk once for ``duration_s`` with ``connections`` open connections."""
    argv = wrk_argv(url, bodies, connections=connections, duration_s=duration_s,
                    threads=threads)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True,
                              timeout=math.ceil(duration_s) + TIMEOUT_S + 30)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish: {' '.join(argv)}") from exc
    if proc.returncode != 0:
        raise LoadError(f"wrk exited with {proc.returncode}: {proc.stderr.strip()}")
    return parse(proc.stdout)
