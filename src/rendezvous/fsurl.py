"""Opening an fsspec URL the way every store here needs it: fresh credentials, and errors that
name the URL and the fix (an unknown scheme, a backend whose extra is not installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rendezvous.errors import ConfigError, MissingDependencyError

__all__ = ["is_remote", "local_path", "open_url"]

# fsspec protocols whose implementation lives in a package of one of our extras
_EXTRA_OF = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3")}


def is_remote(location: str | Path) -> bool:
    """True for an fsspec URL other than ``file://``; local paths are handled as files."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | Path) -> Path:
    """A local path (or ``file://`` URL) made absolute."""
    return Path(str(location).removeprefix("file://")).expanduser().resolve()


def open_url(url: str, what: str) -> tuple[Any, str]:
    """The fsspec filesystem and root path of ``url``; ``what`` names the store in errors
    (e.g. ``"artifact store"``).

    A fresh filesystem each time: fsspec's instance cache would keep the credentials and
    endpoint read from the environment the first time, whatever they are now.
    """
    import fsspec

    protocol = url.split("://", 1)[0]
    try:
        fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    except ImportError:
        package, extra = _EXTRA_OF.get(protocol, (f"the fsspec backend for {protocol}://",
                                                  protocol))
        raise MissingDependencyError(f"{what} on {protocol}://", package, extra) from None
    except ValueError as exc:  # fsspec: "Protocol not known: …"
        raise ConfigError(f"{what} {url!r}: {exc}; use a local path or an fsspec URL such as "
                          "s3://bucket/prefix") from None
    return fs, str(root).rstrip("/")
