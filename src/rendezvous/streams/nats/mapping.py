"""Pure mapping between the ``Stream`` contract and JetStream (no I/O; table-tested).

- topic ``demo.input`` -> stream ``RV_demo_input`` holding the one subject ``rv.demo.input``
  (stream names may not contain dots); offsets are the stream's sequence numbers.
- group ``scorers`` -> durable consumer ``scorers`` (characters NATS forbids become ``_``).
- ``msg_id`` -> the ``Nats-Msg-Id`` header, de-duplicated within the stream's duplicate window.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.js import api

from rendezvous.errors import ConfigError, StreamError
from rendezvous.streams.base import Record, Retention, Start

__all__ = [
    "CHUNK",
    "GROUP_KEY",
    "MSG_ID_HEADER",
    "chunks",
    "deliver_policy",
    "durable_name",
    "parse_ack_reply",
    "read_start",
    "stream_config",
    "stream_name",
    "subject_for",
    "to_record",
]

_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
MSG_ID_HEADER = "Nats-Msg-Id"
GROUP_KEY = "rendezvous_group"  # consumer metadata: the group name before sanitising
DUPLICATE_WINDOW_S = 120.0
CHUNK = 256  # publishes or acks in flight per call: bounded memory, still pipelined

T = TypeVar("T")


def check_topic(topic: str) -> str:
    """``topic`` if it is a valid name, else ``ConfigError`` saying what is allowed."""
    if not _TOPIC_RE.fullmatch(topic):
        raise ConfigError(
            f"invalid topic name {topic!r}: use letters, digits, '_' and '-' in dot-separated "
            "parts, like 'demo.input'"
        )
    return topic


def stream_name(topic: str) -> str:
    """JetStream stream holding ``topic``."""
    return "RV_" + check_topic(topic).replace(".", "_")


def subject_for(topic: str) -> str:
    """The one subject the topic's stream holds."""
    return "rv." + check_topic(topic)


def durable_name(group: str) -> str:
    """Durable consumer name for ``group``."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", group)
    if not name:
        raise ConfigError("consumer group name must not be empty")
    return name


def stream_config(topic: str, retention: Retention) -> api.StreamConfig:
    """File-backed, limits-based stream config for ``topic`` with ``retention``."""
    max_age = retention.max_age_s or 0.0  # 0 = unlimited for JetStream
    # The server rejects a duplicate window longer than max_age.
    window = min(DUPLICATE_WINDOW_S, max_age) if max_age else DUPLICATE_WINDOW_S
    return api.StreamConfig(
        name=stream_name(topic),
        description=f"rendezvous topic {topic}",
        subjects=[subject_for(topic)],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.OLD,
        max_age=max_age,
        max_msgs=retention.max_records if retention.max_records is not None else -1,
        duplicate_window=window,
    )


def deliver_policy(start: Start) -> dict[str, Any]:
    """Consumer-config fields for where a new group starts."""
    if start == "earliest":
        return {"deliver_policy": api.DeliverPolicy.ALL}
    if start == "latest":
        return {"deliver_policy": api.DeliverPolicy.NEW}
    if isinstance(start, int) and not isinstance(start, bool) and start >= 1:
        return {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": start}
    raise ConfigError(f"invalid start {start!r}: use 'earliest', 'latest' or an offset >= 1")


def read_start(from_offset: int | None, from_time_ns: int | None) -> dict[str, Any]:
    """Consumer-config fields for ``read``: by offset when past 1, else by time, else all.

    With both bounds the offset picks the start and the caller filters by time.
    """
    if from_offset is not None and from_offset > 1:
        return {
            "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
            "opt_start_seq": from_offset,
        }
    if from_time_ns is not None:
        # RFC 3339 with nanoseconds: nats-py passes strings through, the server parses them.
        return {"deliver_policy": api.DeliverPolicy.BY_START_TIME,
                "opt_start_time": rfc3339_ns(from_time_ns)}
    return {"deliver_policy": api.DeliverPolicy.ALL}


def rfc3339_ns(ts_ns: int) -> str:
    """UTC RFC 3339 timestamp with nanoseconds, as JetStream accepts it."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def parse_ack_reply(reply: str) -> tuple[int, int, int, int]:
    """``(stream_seq, num_delivered, ts_ns, num_pending)`` from a JetStream ack subject.

    Parsed here rather than through ``Msg.metadata``, which rounds the timestamp to a float
    datetime: ``Record.ts_ns`` needs the exact nanoseconds.
    """
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        first = 4
    elif len(tokens) >= 11:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>... (+ a token)
        first = 6
    else:
        raise StreamError(f"not a JetStream message reply subject: {reply!r}")
    delivered, sseq, _cseq, ts, pending = (int(t) for t in tokens[first : first + 5])
    return sseq, delivered, ts, pending


def to_record(msg: Msg) -> Record:
    """The ``Record`` a JetStream message carries."""
    sseq, delivered, ts_ns, _ = parse_ack_reply(msg.reply)
    msg_id = msg.headers.get(MSG_ID_HEADER, "") if msg.headers else ""
    return Record(offset=sseq, data=msg.data, msg_id=msg_id, ts_ns=ts_ns, deliveries=delivered)


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
