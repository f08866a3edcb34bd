"""One root for every error Rendezvous raises, one subclass per distinct recovery.

Messages name the offending value and say how to fix it. The HTTP edge maps these classes to
status codes in one table (``rendezvous.http.errors``).
"""

from __future__ import annotations

from typing import Any


class RendezvousError(Exception):
    """Root of all Rendezvous errors."""

    request_id: str | None = None  # the request it concerns, when there is one (error bodies)


class ConfigError(RendezvousError):
    """A setting, flag or spec file is invalid."""


class NotFoundError(RendezvousError):
    """A named thing (model, version, alias, deployment, topic) does not exist."""

    def __init__(self, kind: str, name: str, hint: str = "") -> None:
        self.kind = kind
        self.name = name
        msg = f"unknown {kind} {name!r}"
        super().__init__(f"{msg}; {hint}" if hint else msg)


class AlreadyExistsError(RendezvousError):
    """Creating something that already exists."""


class ValidationError(RendezvousError):
    """Input does not match the expected signature; ``problems`` lists each offending field."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        detail = "; ".join(self.problems)
        super().__init__(f"{message}: {detail}" if detail else message)


class BadRequestError(RendezvousError):
    """The request body cannot be decoded at all (malformed JSON, wrong envelope)."""


class PayloadTooLargeError(RendezvousError):
    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"request body of {size} bytes exceeds the limit of {limit} bytes; send smaller "
            "batches or raise RENDEZVOUS_MAX_BODY_BYTES"
        )


class ArtifactIntegrityError(RendezvousError):
    """An artifact's bytes do not hash to the digest the registry recorded."""

    def __init__(self, digest: str, actual: str) -> None:
        self.digest = digest
        self.actual = actual
        super().__init__(
            f"artifact sha256:{digest} is corrupt (its bytes hash to sha256:{actual}); "
            "refusing to load it. Re-register the model from its source."
        )


class UnsafeArtifactError(RendezvousError):
    """Loading the artifact would run untrusted code (pickle) without an explicit opt-in."""


class FlavorError(RendezvousError):
    """A model cannot be saved, loaded or called by its flavor."""


class MissingDependencyError(ConfigError):
    """An optional package is not installed; the message names the pip command."""

    def __init__(self, what: str, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{what}: the {package!r} package is missing; pip install 'rendezvous-ml[{extra}]'"
        )


class SlaMissError(RendezvousError):
    """No model answered before the deadline."""

    def __init__(self, request_id: str, deadline_ms: float) -> None:
        self.request_id = request_id
        self.deadline_ms = deadline_ms
        super().__init__(
            f"no model answered request {request_id} within its {deadline_ms:g} ms deadline"
        )


class UnavailableError(RendezvousError):
    """A dependency (stream engine, server) is down; retrying later may succeed."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class AuthError(RendezvousError):
    """Missing or wrong admin token."""


class StreamError(RendezvousError):
    """A stream engine operation failed."""


class ModelLoadError(RendezvousError):
    """Models of a policy could not be loaded or warmed up; the policy was not recorded."""

    def __init__(self, deployment: str, failures: dict[str, str]) -> None:
        self.deployment = deployment
        self.failures = dict(failures)
        lines = "; ".join(f"{m}: {why}" for m, why in sorted(failures.items()))
        super().__init__(
            f"deployment {deployment!r}: {len(failures)} model(s) cannot be served ({lines}); "
            "the policy was not recorded. Register a working version (rendezvous models "
            "register) or leave the model out of the policy, then apply it again")


class ConflictError(RendezvousError):
    """The request conflicts with what is already recorded (a reused request id with other
    data, a policy changed meanwhile); the caller decides again and retries."""


class GatesFailedError(ConflictError):
    """A promotion refused by its gates; ``report`` holds every gate row (JSON). Wait for more
    evidence, fix the challenger, or promote with ``--force`` (recorded as forced)."""

    def __init__(self, deployment: str, model: str, report: dict[str, Any]) -> None:
        self.report = report
        failing = [r for r in report.get("rows", []) if r.get("refuses")]
        lines = "; ".join(f"{r['gate']}: {r['outcome']} (required {r['required']}, observed "
                          f"{r['observed']})" for r in failing)
        super().__init__(
            f"deployment {deployment!r}: promoting {model} is refused by {len(failing)} "
            f"gate(s): {lines}. Wait for more evidence, or promote with --force (recorded "
            "in the policy history as forced)")


class TooManyRowsError(RendezvousError):
    """A request carries more rows than the server accepts at once."""

    def __init__(self, n_rows: int, limit: int) -> None:
        self.n_rows = n_rows
        self.limit = limit
        super().__init__(
            f"request has {n_rows} rows, more than the limit of {limit} rows per request; "
            "split it into smaller batches or raise RENDEZVOUS_MAX_ROWS"
        )


class LogInUseError(StreamError):
    """Another process holds the stream log open for writing."""

    def __init__(self, path: str, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(
            f"the stream log {path} is in use by {holder}; stop that server first, or serve "
            "from another data directory (--home / RENDEZVOUS_HOME)"
        )


class LogMismatchError(StreamError):
    """The stream log on disk is not the one this data directory recorded (emptied, replaced,
    or left with a stale write-ahead log)."""
