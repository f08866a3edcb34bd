"""The messages that travel on the streams (DESIGN.md §2).

msgspec Structs, encoded as msgpack on the streams and as JSON at the HTTP edge. Each carries a
``v`` field so that readers can evolve; unknown fields are ignored on decode.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

VERSION = 1

Columns = dict[str, list[Any]]

# Every message is a tree of plain values (no reference cycles), so gc=False keeps these very
# numerous objects out of the cyclic garbage collector, whose full passes otherwise grow with
# traffic and show up as latency spikes.


class Reason(enum.StrEnum):
    PREFERRED = "preferred"
    FALLBACK = "fallback"
    SPLIT = "split"
    SLA_MISS = "sla_miss"
    ERROR = "error"


class Status(enum.StrEnum):
    ON_TIME = "on_time"
    LATE = "late"
    MISSING = "missing"
    ERROR = "error"


class ControlKind(enum.StrEnum):
    POLICY = "policy"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    HOSTS = "hosts"  # body: {"process": id, "models": {model: state}}, from worker processes


class Request(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    v: int = VERSION
    request_id: str
    deployment: str
    received_ns: int
    deadline_ns: int
    inputs: Columns
    n_rows: int
    return_to: str = ""
    policy_version: int = 0
    meta: dict[str, str] = {}


class Score(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    v: int = VERSION
    request_id: str
    deployment: str
    model: str
    outputs: dict[str, list[Any]] = {}
    started_ns: int = 0
    finished_ns: int = 0
    error: str | None = None
    worker: str = ""
    input_digest: str = ""  # blake2b of the Request bytes this worker scored
    # How long the request waited only because a shadow's worker gathers a batch
    # (``RENDEZVOUS_SHADOW_BATCH_MS``): the model's latency is ``ready_ns - received_ns``.
    held_ns: int = 0

    @property
    def ready_ns(self) -> int:
        """When the score would have been ready had its worker not paused (``held_ns``)."""
        return self.finished_ns - self.held_ns


class ModelOutcome(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    status: Status
    latency_ms: float | None = None
    error: str | None = None
    # How long a shadow's worker held the request for its batch (``Score.held_ns``), left out
    # of ``latency_ms``; 0 for a prompt worker.
    held_ms: float = 0.0
    # When the rendezvous server filed the score (its clock; 0: never filed, or a record
    # written before this field). With ``responded_ns`` it says exactly which scores the
    # decision saw, so a what-if evaluation can reproduce it (``core.whatif``).
    filed_ns: int = 0


class _ResultFields(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    v: int = VERSION
    request_id: str
    deployment: str
    model: str | None
    reason: Reason
    policy_version: int = 0
    received_ns: int = 0
    responded_ns: int = 0
    models: dict[str, ModelOutcome] = {}
    error: str | None = None


class Result(_ResultFields, kw_only=True, omit_defaults=True, gc=False):
    outputs: dict[str, list[Any]] = {}


class ResultOut(_ResultFields, kw_only=True, omit_defaults=True, gc=False):
    """A ``Result`` as the rendezvous server writes it: the chosen score's outputs are spliced
    in as the worker encoded them (never decoded and re-encoded). Same bytes on the wire;
    read it back as a ``Result``."""

    outputs: msgspec.Raw = msgspec.Raw(b"\x80")  # msgpack for {}


class ResultSummary(msgspec.Struct, kw_only=True, gc=False):
    """What statistics need of a ``Result`` (decoding skips the outputs)."""

    request_id: str
    model: str | None
    reason: Reason
    policy_version: int = 0
    received_ns: int = 0
    responded_ns: int = 0
    models: dict[str, ModelOutcome] = {}


class Feedback(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    v: int = VERSION
    request_id: str
    deployment: str
    labels: list[Any]
    at_ns: int


class Control(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    v: int = VERSION
    deployment: str
    kind: ControlKind
    policy_version: int
    body: dict[str, Any] = {}


class RequestHead(msgspec.Struct, kw_only=True, gc=False):
    """A ``Request`` without its inputs: what the rendezvous server needs to decide."""

    request_id: str
    received_ns: int
    deadline_ns: int
    return_to: str = ""
    policy_version: int = 0
    meta: dict[str, str] = {}


class RequestInputs(msgspec.Struct, kw_only=True, gc=False):
    """What the drift test needs of a ``Request``: its inputs, as tuples (cheaper to decode
    than lists), its row count and arrival time."""

    received_ns: int
    inputs: dict[str, tuple[Any, ...]]
    n_rows: int


class Outputs(msgspec.Struct, frozen=True, gc=False):
    """A model's usual outputs, decoded straight into the tuples the comparisons keep
    (``core.compare.reduce_rows``). Outputs of another shape (a 1-D ``probabilities``, a
    null) do not decode into it: read those as a ``Score``."""

    predictions: tuple[Any, ...] = ()
    probabilities: tuple[tuple[float, ...], ...] | None = None


class ScoreSummary(msgspec.Struct, kw_only=True, gc=False):
    """What statistics need of a ``Score`` with the usual ``Outputs`` (decoding skips its
    deployment, worker and digest)."""

    request_id: str
    model: str
    outputs: Outputs = Outputs()
    started_ns: int = 0
    finished_ns: int = 0
    error: str | None = None


class ScoreHead(msgspec.Struct, kw_only=True, gc=False):
    """A ``Score`` whose outputs stay encoded until they are chosen."""

    request_id: str
    model: str
    outputs: msgspec.Raw = msgspec.Raw(b"\x80")  # msgpack for {}
    started_ns: int = 0
    finished_ns: int = 0
    error: str | None = None
    held_ns: int = 0  # see ``Score.held_ns``

    @property
    def ready_ns(self) -> int:
        return self.finished_ns - self.held_ns


_enc = msgspec.msgpack.Encoder()
encode = _enc.encode
request_decoder = msgspec.msgpack.Decoder(Request)
# A worker frames the scores of one micro-batch as one stream record (a list of Scores, one
# per request): one append, one log row and one delivery per batch instead of per request.
scores_decoder = msgspec.msgpack.Decoder(list[Score])
request_head_decoder = msgspec.msgpack.Decoder(RequestHead)
request_inputs_decoder = msgspec.msgpack.Decoder(RequestInputs)
score_heads_decoder = msgspec.msgpack.Decoder(list[ScoreHead])
score_summaries_decoder = msgspec.msgpack.Decoder(list[ScoreSummary])
result_decoder = msgspec.msgpack.Decoder(Result)
result_summary_decoder = msgspec.msgpack.Decoder(ResultSummary)
feedback_decoder = msgspec.msgpack.Decoder(Feedback)
control_decoder = msgspec.msgpack.Decoder(Control)


def topic(deployment: str, kind: str) -> str:
    """Stream topic name for one deployment, e.g. ``demo.input``."""
    return f"{deployment}.{kind}"
