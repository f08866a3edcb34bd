"""Content-addressed artifact storage: bytes stored under their SHA-256, verified on every read."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

from rendezvous import config
from rendezvous.errors import ArtifactIntegrityError, NotFoundError

_DIGEST = re.compile(r"[0-9a-f]{64}")


class ArtifactStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store bytes; return their hex SHA-256."""

    def get(self, digest: str) -> bytes:
        """The bytes for ``digest``; raises ``ArtifactIntegrityError`` if they do not match."""

    def exists(self, digest: str) -> bool: ...


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalArtifacts:
    """Artifacts as files ``<root>/sha256/ab/abcdef...`` written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):  # digests come from the database; never trust a path
            raise NotFoundError("artifact", digest, "digests are 64 lowercase hex characters")
        return self.root / "sha256" / digest[:2] / digest

    def put(self, data: bytes) -> str:
        digest = sha256(data)
        path = self._path(digest)
        if path.exists():
            return digest
        config.private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            config.private_file(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
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
