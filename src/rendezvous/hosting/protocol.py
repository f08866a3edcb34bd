"""What a model host and its parent say to each other over their socket. Pure: no I/O.

Each frame is a 4-byte big-endian length followed by a msgpack message. The parent sends
``ScoreBatch`` (the exact bytes of input records, as the stream holds them, and how long each
waited only because its worker paused); the host answers
``Scored`` (the encoded ``list[Score]`` the worker appends as it is) and reports its progress
with ``HostReport`` (``loading``, ``warming``, ``ready``, or ``failed`` with the reason).
"""

from __future__ import annotations

import enum
import struct

import msgspec

__all__ = ["HEADER", "HostReport", "HostState", "ScoreBatch", "Scored", "frame",
           "from_host", "from_parent"]

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30


class HostState(enum.StrEnum):
    """A model's state, as status and metadata report it."""

    LOADING = "loading"  # the process starts and loads the artifact (digest verified)
    WARMING = "warming"  # loaded; predicting on the registration's example rows
    READY = "ready"  # scoring
    RESTARTING = "restarting"  # exited, was killed or hung; starting again after a backoff
    FAILED = "failed"  # cannot load (reason says why); not restarted until the policy changes
    STOPPED = "stopped"


class ScoreBatch(msgspec.Struct, tag="batch", gc=False):
    seq: int
    records: list[bytes]
    held_ns: list[int] = []  # per record (``Score.held_ns``); empty: none was held


class Scored(msgspec.Struct, tag="scored", gc=False):
    seq: int
    scores: bytes  # encoded list[Score], empty when no record could be decoded


class HostReport(msgspec.Struct, tag="report", gc=False):
    state: HostState
    detail: str = ""


_encoder = msgspec.msgpack.Encoder()
from_host = msgspec.msgpack.Decoder(Scored | HostReport)
from_parent = msgspec.msgpack.Decoder(ScoreBatch)


def frame(msg: msgspec.Struct) -> bytes:
    """One length-prefixed frame of any message of this protocol or the analytics host's.

    >>> body = frame(HostReport(HostState.READY))
    >>> int.from_bytes(body[:4], "big") == len(body) - 4
    True
    """
    body = _encoder.encode(msg)
    return HEADER.pack(len(body)) + body
