"""The one table mapping errors to HTTP statuses, and the error body every endpoint returns."""

from __future__ import annotations

from typing import Any

import msgspec

from rendezvous import errors as e

STATUS: list[tuple[type[e.RendezvousError], int, str]] = [
    (e.BadRequestError, 400, "bad_request"),
    (e.AuthError, 401, "unauthorized"),
    (e.NotFoundError, 404, "not_found"),
    (e.AlreadyExistsError, 409, "conflict"),
    (e.GatesFailedError, 409, "gates_failed"),
    (e.ConflictError, 409, "conflict"),
    (e.TooManyRowsError, 413, "too_many_rows"),
    (e.PayloadTooLargeError, 413, "payload_too_large"),
    (e.ValidationError, 422, "validation_error"),
    (e.ConfigError, 422, "invalid_config"),
    (e.ModelLoadError, 422, "model_load_failed"),
    (e.UnavailableError, 503, "unavailable"),
    (e.LogInUseError, 503, "log_in_use"),
    (e.LogMismatchError, 503, "log_mismatch"),
    (e.SlaMissError, 504, "sla_miss"),
    (e.ArtifactIntegrityError, 500, "artifact_integrity"),
    (e.UnsafeArtifactError, 422, "unsafe_artifact"),
    (e.FlavorError, 422, "flavor_error"),
    (e.RendezvousError, 500, "internal_error"),
]


def status_for(exc: e.RendezvousError) -> tuple[int, str]:
    for cls, status, code in STATUS:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal_error"


def error_body(exc: e.RendezvousError, request_id: str | None = None) -> tuple[int, bytes,
                                                                                list[Any]]:
    """(status, JSON body, extra headers). The body's ``error`` string is what Open Inference
    Protocol clients read; ``code`` and ``problems`` are for programs."""
    status, code = status_for(exc)
    body: dict[str, Any] = {"error": str(exc), "code": code}
    if isinstance(exc, e.ValidationError) and exc.problems:
        body["problems"] = exc.problems
    if isinstance(exc, e.ModelLoadError):
        body["failures"] = exc.failures
    if isinstance(exc, e.GatesFailedError):
        body["gates"] = exc.report
    if request_id:
        body["request_id"] = request_id
    headers: list[Any] = []
    if isinstance(exc, e.SlaMissError):
        body["reason"] = "sla_miss"
    if isinstance(exc, e.UnavailableError):
        headers.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
    return status, msgspec.json.encode(body), headers
