"""The load generator every contender gets: ``wrk`` with ``wrk_post.lua``.

``parse`` is pure (wrk's stdout in, a ``LoadResult`` out); ``run_wrk`` is the thin shell
that starts wrk and waits for it.
"""

from __future__ import annotations

import json
import math
import os
import re
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


# -- gRPC: h2load -------------------------------------------------------------------------------
# wrk speaks HTTP/1.1 only; gRPC needs HTTP/2. h2load (nghttp2, Debian's nghttp2-client) is
# wrk's counterpart there: C, one thread, N connections with one stream in flight each (-m 1),
# as wrk -c N keeps one request in flight per connection. It writes each request's duration
# to a log file, from which the same percentiles are taken. It sees HTTP statuses only, and
# gRPC answers 200 even for errors (the status is in the trailers), so a gRPC error is counted
# from the data: an error carries no response message, a success one of the same size each.

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
_H2_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                          r"(\d+) failed, (\d+) errored, (\d+) timeout")
_H2_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def _h2_data_bytes(stdout: str) -> int:
    for line in stdout.splitlines():
        if line.startswith("traffic:"):
            return int(line.rsplit("(", 1)[1].split(")")[0])
    raise LoadError(f"h2load printed no traffic line; its output was:\n{stdout}")


def parse_h2load(stdout: str, log_lines: Sequence[str], *, duration_s: float,
                 ok_message_bytes: int) -> LoadResult:
    """h2load's summary and per-request log (start µs, status, duration µs) as a
    ``LoadResult``; ``ok_message_bytes``: the data bytes of one successful answer."""
    counts = _H2_REQUESTS.search(stdout)
    status = _H2_STATUS.search(stdout)
    if counts is None or status is None:
        raise LoadError(f"h2load printed no result; its output was:\n{stdout}")
    # "errored" (network errors, resets; timeouts among them) is a subset of "failed", which
    # also counts non-2xx answers.
    done, errored = int(counts.group(3)), int(counts.group(6))
    non_2xx = sum(int(status.group(i)) for i in (2, 3, 4))
    answered = round(_h2_data_bytes(stdout) / ok_message_bytes) if ok_message_bytes else done
    durations = sorted(int(line.split("\t")[2]) / 1000.0 for line in log_lines if line.strip())
    if not durations:
        raise LoadError("h2load logged no request")

    def pct(q: float) -> float:
        return durations[min(len(durations) - 1, math.ceil(q * len(durations)) - 1)]

    return LoadResult(
        requests=done, duration_s=duration_s,
        errors_by_kind={"status": non_2xx + max(0, done - non_2xx - errored - answered),
                        "socket": errored},
        p50_ms=pct(0.50), p90_ms=pct(0.90), p99_ms=pct(0.99), p999_ms=pct(0.999),
        mean_ms=sum(durations) / len(durations), max_ms=durations[-1])


def ensure_h2load() -> str:
    """The h2load binary; installs Debian's nghttp2-client when missing and running as root."""
    found = shutil.which("h2load")
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        print("h2load not found: installing Debian's nghttp2-client package")
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "nghttp2-client"], check=True,
                       stdout=subprocess.DEVNULL)
        found = shutil.which("h2load")
    if not found:
        raise LoadError("h2load is not installed; install it (Debian: apt-get install "
                        "nghttp2-client)")
    return found


def h2load_argv(url: str, body: Path, *, connections: int, duration_s: float | None,
                log_file: Path | None = None) -> list[str]:
    """h2load's command line: ``duration_s`` None sends one request."""
    argv = ["h2load", "-t", "1", "-c", str(connections), "-m", "1", "-d", str(body),
            *(a for h in GRPC_HEADERS for a in ("-H", h))]
    argv += ["-n", "1"] if duration_s is None else ["-D", str(max(1, math.ceil(duration_s)))]
    if log_file is not None:
        argv.append(f"--log-file={log_file}")
    return [*argv, url]


def _h2load(argv: list[str], timeout_s: float) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"h2load did not finish: {' '.join(argv)}") from exc
    if proc.returncode != 0:
        raise LoadError(f"h2load exited with {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def grpc_smoke(url: str, body: Path) -> int:
    """Send one gRPC request; the data bytes of its (successful) answer."""
    stdout = _h2load(h2load_argv(url, body, connections=1, duration_s=None), TIMEOUT_S + 30)
    status = _H2_STATUS.search(stdout)
    size = _h2_data_bytes(stdout)
    if status is None or status.group(1) != "1" or size == 0:
        raise LoadError(f"the gRPC smoke request to {url} failed (an empty answer is a gRPC "
                        f"error; see the server log); h2load said:\n{stdout}")
    return size


def run_h2load(url: str, body: Path, *, connections: int, duration_s: float,
               ok_message_bytes: int) -> LoadResult:
    """Run h2load once for ``duration_s`` with ``connections`` connections (gRPC)."""
    log_file = body.with_name(f"h2load-c{connections}.tsv")
    log_file.unlink(missing_ok=True)
    stdout = _h2load(h2load_argv(url, body, connections=connections, duration_s=duration_s,
                                 log_file=log_file), math.ceil(duration_s) + TIMEOUT_S + 30)
    return parse_h2load(stdout, log_file.read_text().splitlines(),
                        duration_s=max(1, math.ceil(duration_s)),
                        ok_message_bytes=ok_message_bytes)
