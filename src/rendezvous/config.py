"""Settings, each declared once with its environment variable, type and default.

Read late: call ``SETTING.get()`` where the value is needed; an explicit argument always beats
the environment.
"""

from __future__ import annotations

import os
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

    def get(self, explicit: T | None = None) -> T:
        if explicit is not None:
            return explicit
        raw = os.environ.get(self.env)
        if raw is None or raw == "":
            return self.default
        try:
            if self.kind is bool:
                if raw.lower() not in {"1", "true", "yes", "0", "false", "no"}:
                    raise ValueError(raw)
                return raw.lower() in {"1", "true", "yes"}  # type: ignore[return-value]
            return self.kind(raw)  # type: ignore[no-any-return]
        except ValueError:
            raise ConfigError(
                f"environment variable {self.env}={raw!r} is not a valid {self.kind.__name__}; "
                f"{self.help}"
            ) from None


HOME = Setting("RENDEZVOUS_HOME", Path, Path(".rendezvous"),
               "data directory holding the registry, artifacts, streams and archive")
HOST = Setting("RENDEZVOUS_HOST", str, "127.0.0.1", "address the HTTP server binds to")
PORT = Setting("RENDEZVOUS_PORT", int, 8000, "port the HTTP server listens on")
MAX_BODY_BYTES = Setting("RENDEZVOUS_MAX_BODY_BYTES", int, 4 * 1024 * 1024,
                         "largest accepted request body, in bytes")
ADMIN_TOKEN = Setting("RENDEZVOUS_ADMIN_TOKEN", str, "",
                      "bearer token for admin endpoints; generated per server when empty")
STREAMS = Setting("RENDEZVOUS_STREAMS", str, "embedded",
                  "stream engine: 'embedded', 'local-nats' or a nats:// URL")
ALLOW_PICKLE = Setting("RENDEZVOUS_ALLOW_PICKLE", bool, False,
                       "allow loading pickle-based artifacts (runs code from the artifact)")
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


def home(explicit: Path | str | None = None) -> Path:
    """The data directory, created if missing."""
    path = Path(explicit) if explicit is not None else HOME.get()
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
