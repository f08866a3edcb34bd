"""Settings, each declared once with its environment variable, type and default.

Read late: call ``SETTING.get()`` where the value is needed; an explicit argument always beats
the environment.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from rendezvous.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Setting(Generic[T]):
    env: str
    kind: type
    default: T
    help: str
    minimum: float | None = None  # numbers below it are refused, explicit or from the env

    def get(self, explicit: T | None = None) -> T:
        if explicit is not None:
            return self._checked(explicit, repr(explicit))
        raw = os.environ.get(self.env)
        if raw is None or raw == "":
            return self.default
        try:
            if self.kind is bool:
                if raw.lower() not in {"1", "true", "yes", "0", "false", "no"}:
                    raise ValueError(raw)
                return raw.lower() in {"1", "true", "yes"}  # type: ignore[return-value]
            if self.kind is FileMode:
                value: T = FileMode(int(raw, 8))  # type: ignore[assignment]
            else:
                value = self.kind(raw)
        except ValueError:
            raise ConfigError(
                f"environment variable {self.env}={raw!r} is not a valid {self.kind.__name__}; "
                f"{self.help}"
            ) from None
        return self._checked(value, f"environment variable {self.env}={raw!r}")

    def _checked(self, value: T, shown: str) -> T:
        if self.minimum is not None and value < self.minimum:  # type: ignore[operator]
            raise ConfigError(f"{shown} must be at least {self.minimum:g}; {self.help}")
        return value


class FileMode(int):
    """A permission mode written in octal (``0600``)."""

    def __repr__(self) -> str:
        return f"0{self:o}"


HOME = Setting("RENDEZVOUS_HOME", Path, Path(".rendezvous"),
               "data directory holding the registry, artifacts, streams and archive")
HOST = Setting("RENDEZVOUS_HOST", str, "127.0.0.1", "address the HTTP server binds to")
PORT = Setting("RENDEZVOUS_PORT", int, 8000, "port the HTTP server listens on")
GRPC_PORT = Setting("RENDEZVOUS_GRPC_PORT", int, -1,
                    "port of the Open Inference Protocol gRPC endpoint, on RENDEZVOUS_HOST; "
                    "-1 (the default) serves no gRPC, 0 picks a free port; needs "
                    "pip install 'rendezvous-ml[grpc]'")
MAX_BODY_BYTES = Setting("RENDEZVOUS_MAX_BODY_BYTES", int, 4 * 1024 * 1024,
                         "largest accepted request body, in bytes (at least 1024)",
                         minimum=1024)
MAX_ROWS = Setting("RENDEZVOUS_MAX_ROWS", int, 10_000,
                   "most rows accepted in one request (a positive integer)", minimum=1)
MAX_JSON_DEPTH = Setting("RENDEZVOUS_MAX_JSON_DEPTH", int, 32,
                         "deepest nesting of arrays and objects accepted in a JSON body",
                         minimum=2)
HEADER_TIMEOUT_S = Setting("RENDEZVOUS_HEADER_TIMEOUT_S", float, 10.0,
                           "seconds a client may take to send a request's headers (> 0)",
                           minimum=0.001)
BODY_TIMEOUT_S = Setting("RENDEZVOUS_BODY_TIMEOUT_S", float, 30.0,
                         "seconds a client may pause while sending a request body (> 0)",
                         minimum=0.001)
MAX_HEADER_BYTES = Setting("RENDEZVOUS_MAX_HEADER_BYTES", int, 16 * 1024,
                           "largest accepted request line plus headers, in bytes "
                           "(at least 1024)", minimum=1024)
ALLOWED_HOSTS = Setting("RENDEZVOUS_ALLOWED_HOSTS", str, "",
                        "comma-separated Host header names accepted besides the bind address "
                        "('*' accepts any); empty: only the bind address (and localhost names "
                        "when bound to loopback)")
INFER_TOKEN = Setting("RENDEZVOUS_INFER_TOKEN", str, "",
                      "bearer token inference and feedback requests must carry; empty: none")
SSL_CERTFILE = Setting("RENDEZVOUS_SSL_CERTFILE", str, "",
                       "PEM certificate file: serve HTTPS (with RENDEZVOUS_SSL_KEYFILE)")
SSL_KEYFILE = Setting("RENDEZVOUS_SSL_KEYFILE", str, "",
                      "PEM private key file for RENDEZVOUS_SSL_CERTFILE")
DIR_MODE = Setting("RENDEZVOUS_DIR_MODE", FileMode, FileMode(0o700),
                   "octal mode of directories created under the data directory (e.g. 0750)")
FILE_MODE = Setting("RENDEZVOUS_FILE_MODE", FileMode, FileMode(0o600),
                    "octal mode of files written under the data directory (e.g. 0640)")
ADMIN_TOKEN = Setting("RENDEZVOUS_ADMIN_TOKEN", str, "",
                      "bearer token for admin endpoints; generated per server when empty")
STREAMS = Setting("RENDEZVOUS_STREAMS", str, "embedded",
                  "stream engine: 'embedded', 'local-nats' or a nats:// URL")
ALLOW_PICKLE = Setting("RENDEZVOUS_ALLOW_PICKLE", bool, False,
                       "allow loading pickle-based artifacts (runs code from the artifact)")
REGISTRY = Setting("RENDEZVOUS_REGISTRY", str, "",
                   "registry database URL: sqlite:///PATH or postgresql://USER@HOST/DB; "
                   "default <home>/registry.db")
REGISTRY_UPGRADE = Setting("RENDEZVOUS_REGISTRY_UPGRADE", bool, True,
                           "upgrade an older registry schema when opening it (off: opening "
                           "fails naming `rendezvous registry upgrade`)")
ARTIFACTS = Setting("RENDEZVOUS_ARTIFACTS", str, "",
                    "where new artifacts are stored: a local path or any fsspec URL "
                    "(s3://bucket/prefix); default <home>/artifacts")
ARCHIVE = Setting("RENDEZVOUS_ARCHIVE", str, "",
                  "where the evidence archive (inputs, scores, results, labels) is written and "
                  "read: a local path or any fsspec URL (s3://bucket/prefix); default "
                  "<home>/archive")
TRUSTED_MODULES = Setting("RENDEZVOUS_TRUSTED_MODULES", str, "",
                          "comma-separated modules (and their submodules) whose callables the "
                          "python flavor may import, e.g. 'mypkg.models,tests'")
NATS_ACK_WAIT_S = Setting("RENDEZVOUS_NATS_ACK_WAIT_S", float, 30.0,
                          "seconds before records a crashed process held unacknowledged go to "
                          "another member of its group (NATS engine; fixed when a group is "
                          "created)")
RETENTION_HOURS = Setting("RENDEZVOUS_RETENTION_HOURS", float, 24.0,
                          "how long the stream log keeps records (the decoy's archive keeps "
                          "inputs for good)")
ANALYTICS = Setting("RENDEZVOUS_ANALYTICS", bool, True,
                    "meta-analytics in the monitor (comparisons, drift, feedback, alarms) and "
                    "the score archive; off leaves counts and latency only")
LATE_GRACE_MS = Setting("RENDEZVOUS_LATE_GRACE_MS", float, 2000.0,
                        "how long after the deadline late scores are still collected")
SHADOW_BATCH_MS = Setting("RENDEZVOUS_SHADOW_BATCH_MS", float, 50.0,
                          "how long a shadow's worker (challengers, the canary) gathers requests "
                          "into one batch; 0 scores them as soon as they arrive. Shadows never "
                          "answer, so scoring them a little later costs no client anything and "
                          "keeps the cores for the candidates; their latencies leave the wait out",
                          minimum=0.0)
HOSTS_PREEMPT = Setting("RENDEZVOUS_HOSTS_PREEMPT", bool, False,
                        "let model hosts preempt the serving process when they are handed a "
                        "batch (Linux's default policy); off runs them SCHED_BATCH, so the "
                        "serving process keeps its core while it dispatches")
HOSTS_NICE = Setting("RENDEZVOUS_HOSTS_NICE", int, 5,
                     "how many nice steps below the serving process model hosts run (0: the "
                     "same priority). Waking a host to hand it a batch often gives it the "
                     "serving process's core; lower, it does so less often, and a contended "
                     "core gives the serving process the larger share",
                     minimum=0)
LABEL_HORIZON_HOURS = Setting("RENDEZVOUS_LABEL_HORIZON_HOURS", float, 168.0,
                              "how long after a request its feedback label is still counted "
                              "(older labels are counted as too late)", minimum=0.001)
FEEDBACK_WAIT_S = Setting("RENDEZVOUS_FEEDBACK_WAIT_S", float, 10.0,
                          "how long a label of a recent request waits for every model's score "
                          "before it joins what there is (or counts as unknown)", minimum=0.0)

READY_TIMEOUT_S = Setting("RENDEZVOUS_READY_TIMEOUT_S", float, 120.0,
                          "how long start-up waits for every candidate model to load and warm "
                          "up before serving with those that did")


def home(explicit: Path | str | None = None) -> Path:
    """The data directory, created (mode ``RENDEZVOUS_DIR_MODE``, 0700) if missing."""
    path = Path(explicit) if explicit is not None else HOME.get()
    path = path.expanduser().resolve()
    private_dir(path)
    return path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents under it) readable by the owner only, or by
    ``RENDEZVOUS_DIR_MODE``; an existing directory keeps the mode the operator gave it."""
    if path.is_dir():
        return path
    missing = [path, *(p for p in path.parents if not p.exists())]
    mode = DIR_MODE.get()
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, mode)  # mkdir's own mode would be filtered by the umask
    return path


def private_file(path: Path) -> Path:
    """Give a file written under the data directory the mode ``RENDEZVOUS_FILE_MODE`` (0600),
    whatever the umask made of it."""
    os.chmod(path, FILE_MODE.get())
    return path


def replace_private(path: Path, write: Callable[[Path], object], *,
                    mode: int | None = None) -> Path:
    """Make ``path`` whole or not at all: ``write`` fills a temporary file beside it, which
    then takes its place with the mode of ``private_file``, or ``mode``. Each call has its
    own temporary file, so writers of one path never disturb each other (the last to finish
    wins), and a failed write leaves ``path`` as it was and no temporary file behind."""
    private_dir(path.parent)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE.get() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_private(path: Path, data: bytes, *, mode: int | None = None) -> Path:
    """``replace_private`` with ``data``, flushed to the disk before it takes the place."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return replace_private(path, write, mode=mode)
