"""What the analytics host and its serving process say to each other. Pure: no I/O.

Frames as in ``protocol`` (``protocol.frame``: a 4-byte length, then a msgpack message).
The serving process relays each delivery of the monitor's topics (``Delivery``: the records
as the stream holds them), asks for documents (``Ask``) and says when the policy changed
(``Follow``); the host acknowledges deliveries once its roles have (``Acked``), answers
(``Answer``) and reports its progress with ``HostReport`` (``loading``, ``ready``, or
``failed`` with the reason).

>>> from_parent.decode(frame(Ask(1, "compare"))[4:])
Ask(seq=1, what='compare')
"""

from __future__ import annotations

import msgspec

from rendezvous.hosting.protocol import HostReport, frame

__all__ = ["DOCUMENTS", "Acked", "Answer", "Ask", "Delivery", "Follow", "frame", "from_host",
           "from_parent"]

# What ``Ask`` may ask for, besides "gauges": ``DeploymentAnalytics.document``'s kinds.
DOCUMENTS = ("compare", "drift", "accuracy", "alarms", "windows")


class Delivery(msgspec.Struct, tag="delivery", gc=False):
    seq: int
    topic: str
    group: str
    offsets: list[int]
    datas: list[bytes]
    ts_ns: list[int]


class Follow(msgspec.Struct, tag="follow", gc=False):
    """The serving process switched to this policy version: read it from the registry."""

    version: int


class Ask(msgspec.Struct, tag="ask", gc=False):
    seq: int
    what: str  # one of ``DOCUMENTS``, or "gauges"


class Acked(msgspec.Struct, tag="acked", gc=False):
    seq: int


class Answer(msgspec.Struct, tag="answer", gc=False):
    seq: int
    body: bytes  # the JSON document; empty with ``error``
    error: str = ""


from_host = msgspec.msgpack.Decoder(Acked | Answer | HostReport)
from_parent = msgspec.msgpack.Decoder(Delivery | Follow | Ask)
