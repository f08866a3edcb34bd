"""The embedded engine (the default): a durable SQLite (WAL) log under the data directory."""

from rendezvous.streams.embedded.log import (
    EmbeddedStream,
    log_path,
    partition_url,
    partition_urls,
)

__all__ = ["EmbeddedStream", "log_path", "partition_url", "partition_urls"]
