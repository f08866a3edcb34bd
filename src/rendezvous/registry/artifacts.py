"""Content-addressed artifact storage: bytes stored under their SHA-256, verified on every read.

Local directories by default; any fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``memory://…``)
for registries shared across machines. Either way the digest is checked on every ``get``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Protocol

from rendezvous import config
from rendezvous.errors import ArtifactIntegrityError, NotFoundError, UnavailableError
from rendezvous.fsurl import is_remote, local_path, open_url

_DIGEST = re.compile(r"[0-9a-f]{64}")


class ArtifactStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store bytes; return their hex SHA-256."""

    def get(self, digest: str) -> bytes:
        """The bytes for ``digest``; raises ``ArtifactIntegrityError`` if they do not match."""

    def exists(self, digest: str) -> bool: ...

    @property
    def url(self) -> str:
        """Where the store is: a local path or an fsspec URL."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalArtifacts:
    """Artifacts as files ``<root>/sha256/ab/abcdef...`` written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, digest: str) -> Path:
        return self.root / _relative(digest)

    def put(self, data: bytes) -> str:
        digest = sha256(data)
        path = self._path(digest)
        if path.exists():
            return digest
        config.write_private(path, data)
        return digest

    def get(self, digest: str) -> bytes:
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                "artifact", f"sha256:{digest}", f"expected at {path}; restore the data directory"
            ) from None
        actual = sha256(data)
        if actual != digest:
            raise ArtifactIntegrityError(digest, actual)
        return data

    def exists(self, digest: str) -> bool:
        return self._path(digest).exists()


def _relative(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):  # digests come from the database; never trust a path
        raise NotFoundError("artifact", digest, "digests are 64 lowercase hex characters")
    return f"sha256/{digest[:2]}/{digest}"


class FsspecArtifacts:
    """Artifacts under any fsspec URL, laid out as the local store (``<url>/sha256/ab/…``).

    Object stores write each object whole, so a reader never sees half an artifact; the
    digest check on ``get`` covers the rest. Credentials and endpoints come from the
    backend's usual environment (``AWS_*`` for S3).
    """

    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")
        self.fs: Any
        self.fs, self.root = open_url(self._url, "artifact store")

    @property
    def url(self) -> str:
        return self._url

    def _path(self, digest: str) -> str:
        return f"{self.root}/{_relative(digest)}"

    def put(self, data: bytes) -> str:
        digest = sha256(data)
        if not self.exists(digest):
            try:
                self.fs.pipe_file(self._path(digest), data)
            except OSError as exc:
                raise UnavailableError(f"cannot write artifact to {self._url}: {exc}") from exc
        return digest

    def get(self, digest: str) -> bytes:
        path = self._path(digest)
        try:
            data: bytes = self.fs.cat_file(path)
        except FileNotFoundError:
            raise NotFoundError("artifact", f"sha256:{digest}",
                                f"expected at {self._url}/{_relative(digest)}") from None
        except OSError as exc:
            raise UnavailableError(f"cannot read artifact from {self._url}: {exc}") from exc
        actual = sha256(data)
        if actual != digest:
            raise ArtifactIntegrityError(digest, actual)
        return data

    def exists(self, digest: str) -> bool:
        try:
            return bool(self.fs.exists(self._path(digest)))
        except OSError as exc:
            raise UnavailableError(f"cannot reach artifact store {self._url}: {exc}") from exc


def open_store(location: str | Path) -> ArtifactStore:
    """The artifact store at a local path or an fsspec URL (picked by its scheme)."""
    if is_remote(location):
        return FsspecArtifacts(str(location))
    return LocalArtifacts(local_path(location))
