"""One contender's server process: start it, wait until ready, watch its memory, stop it.

Every server runs in its own session (process group) so that stopping it also stops the
workers it forked, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bench.payloads import Wire

#: The same conditions for every contender: one OpenMP thread per server process.
BASE_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STOP_GRACE_S = 15.0


class ServerError(RuntimeError):
    """A contender's server did not start, did not become ready, or answered wrongly."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one contender and talk to it."""

    argv: list[str]
    ready_url: str
    infer_url: str
    wire: Wire
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 180.0
    #: The model or deployment name, for wires that carry it in the body (gRPC).
    model: str = ""


@dataclass(frozen=True)
class Workspace:
    """What a contender's setup gets: its own directory and the port to listen on."""

    name: str
    dir: Path
    port: int
    #: Worker processes: gunicorn's and MLflow's workers, MLServer's processes (its HTTP
    #: server and ``workers - 1`` inference workers), ``rendezvous serve --processes``.
    workers: int = 2

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def run_step(argv: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None,
             timeout_s: float = 600.0) -> str:
    """Run one setup command to completion; its output, or ``ServerError`` with the output."""
    argv_s = [str(a) for a in argv]
    try:
        proc = subprocess.run(argv_s, cwd=cwd, env={**os.environ, **(env or {})},
                              capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerError(f"setup step failed: {' '.join(argv_s)}: {exc}") from exc
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise ServerError(f"setup step exited with {proc.returncode}: {' '.join(argv_s)}\n{tail}")
    return output


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(url: str, body: bytes | None = None, *, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """GET (or POST a JSON ``body``) and return the status and body, errors included."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class Server:
    """A running contender, as a context manager; ``__enter__`` returns once it is ready.

    >>> with Server(spec, log_path=Path("bench/.work/logs/x.log")) as server:  # doctest: +SKIP
    ...     status, body = server.post(b'{"features": [...]}')
    """

    def __init__(self, spec: ServerSpec, *, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ServerError("server not started")
        return self._proc.pid

    def __enter__(self) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **BASE_ENV, **self.spec.env}
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.spec.argv, cwd=self.spec.cwd, env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        try:
            self._wait_ready(self._proc)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.spec.ready_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerError(
                    f"{self.spec.argv[0]} exited with {proc.returncode} before it was "
                    f"ready; log {self.log_path}:\n{_tail(self.log_path)}")
            with contextlib.suppress(OSError):
                status, _ = http(self.spec.ready_url, timeout_s=2.0)
                if status == 200:
                    return
            time.sleep(0.25)
        raise ServerError(f"not ready after {self.spec.ready_timeout_s:.0f}s at "
                          f"{self.spec.ready_url}; log {self.log_path}:\n{_tail(self.log_path)}")

    def post(self, body: bytes) -> tuple[int, bytes]:
        """One request to the inference URL."""
        return http(self.spec.infer_url, body)

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left after a grace."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_GRACE_S)
        # Workers can outlive their parent; the group is ours alone (start_new_session).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tree_rss_psutil(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


def _tree_rss_proc(pid: int) -> int:
    """The same sum from /proc, for interpreters without psutil (the project's venv)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(entry.path, "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for member in tree:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * page
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` plus all its descendants, summed.

    Pages shared between forked workers count once per process that maps them, as ``ps``
    and ``top`` would show; the sum is an upper bound on what the tree really holds.
    """
    try:
        import psutil  # noqa: F401
    except ImportError:
        return _tree_rss_proc(pid)
    return _tree_rss_psutil(pid)


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds (user and system) that ``pid`` and its living descendants have used so far;
    None without psutil. Take it before and after a level: the difference is what the server
    spent on that level's requests, wherever its processes ran."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class PeakRss:
    """Samples a process tree's RSS in a background thread; keeps the peak per window."""

    def __init__(self, pid: int, *, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self._window_peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss_bytes(self.pid)
            with self._lock:
                self._window_peak = max(self._window_peak, rss)
            self._stop.wait(self.interval_s)

    def take_window(self) -> int:
        """The peak (bytes) since the previous call, starting a new window."""
        current = tree_rss_bytes(self.pid)
        with self._lock:
            peak, self._window_peak = max(self._window_peak, current), current
        return peak

    @contextlib.contextmanager
    def running(self) -> Iterator[PeakRss]:
        """Sample for the duration of the ``with`` block."""
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
