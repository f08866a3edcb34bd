"""The NATS JetStream engine, for scale-out across processes and machines."""

from rendezvous.streams.nats.engine import NatsStream

__all__ = ["NatsStream"]
