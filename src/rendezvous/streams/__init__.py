"""Stream engines behind one contract (see ``base``)."""

from rendezvous.streams.base import (
    Batch,
    Consumer,
    Health,
    Record,
    Retention,
    ReturnChannel,
    Stream,
    dead_letter_topic,
    open_stream,
    register_engine,
)

__all__ = [
    "Batch",
    "Consumer",
    "Health",
    "Record",
    "Retention",
    "ReturnChannel",
    "Stream",
    "dead_letter_topic",
    "open_stream",
    "register_engine",
]
