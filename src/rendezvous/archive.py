"""Where the evidence archive lives: a local directory (default ``<home>/archive``) or any
fsspec URL (``s3://bucket/prefix``), set by ``RENDEZVOUS_ARCHIVE`` or ``--archive``.

The archive holds Parquet *parts* in datasets partitioned by day::

    <archive>/<deployment>/date=YYYY-MM-DD/part-<ULID>.parquet           inputs (the decoy)
    <archive>/<deployment>/scores/date=…/part-<ULID>.parquet              (the scorekeeper)
    <archive>/<deployment>/results/date=…/…  and  …/labels/date=…/…

A part appears whole or not at all: a local part is written to a temp file and renamed, an
object-store part is one PUT (object stores make a single PUT atomic). Part names are ULIDs,
unique across processes and machines and sorted by time. Readers list ``part-*.parquet`` only,
so a temp file is never read. Writers acknowledge their stream batches only after ``write``
returns, so a crash re-archives at worst; readers drop such duplicates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rendezvous import config
from rendezvous.errors import ConfigError, RendezvousError, UnavailableError
from rendezvous.fsurl import is_remote, local_path, open_url
from rendezvous.ids import check_name, new_request_id

__all__ = ["Archive", "LocalArchive", "ObjectArchive", "import_table_modules", "open_archive",
           "write_atomic"]

PATTERN = "date=*/part-*.parquet"


@contextlib.contextmanager
def _reaching(what: str) -> Iterator[None]:
    """Errors of a remote backend as ``UnavailableError``. fsspec backends raise their own
    types (botocore's for S3, not OSError, when the endpoint cannot be reached), so anything
    but our own errors is converted, with the backend's message kept."""
    try:
        yield
    except RendezvousError:
        raise
    except Exception as exc:
        raise UnavailableError(f"{what}: {type(exc).__name__}: {exc}") from exc


def import_table_modules() -> None:
    """Build one tiny table now: the first table pyarrow builds from Python lists imports
    pandas (hundreds of modules, about 0.2 s here). A serving process calls this before it
    opens, so its first archive flush does not stall its event loop (and the requests in
    flight) for that long."""
    pa.table([[0]], names=["warm"])


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` as the Parquet file ``path``, whole or not at all (temp file, rename),
    with the data directory's modes."""
    config.replace_private(path, lambda tmp: pq.write_table(table, tmp))


def day_of(at_ns: int) -> str:
    """The UTC day partition of a time in nanoseconds."""
    return f"{dt.datetime.fromtimestamp(at_ns / 1e9, dt.UTC):%Y-%m-%d}"


class Archive:
    """The parts of every dataset under one root, through an fsspec filesystem. Subclasses
    say how a part is written and how the location is checked at start-up."""

    fs: Any
    root: str

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def where(self, dataset: str) -> str:
        """The location of a dataset, for messages."""
        return f"{self.url.rstrip('/')}/{dataset}"

    def _part_path(self, dataset: str, at_ns: int) -> str:
        return f"{self.root}/{dataset}/date={day_of(at_ns)}/part-{new_request_id()}.parquet"

    def write(self, table: pa.Table, dataset: str, at_ns: int) -> str:
        """Write one part of ``dataset`` in the day of ``at_ns``; returns its path."""
        raise NotImplementedError

    def check(self) -> None:
        """Fail now, with one clear error, when parts cannot be written here."""
        raise NotImplementedError

    def parts(self, dataset: str, days: Iterable[str] | None = None) -> list[str]:
        """The parts of ``dataset`` (all days, or only ``days``), oldest first."""
        base = f"{self.root}/{dataset}"
        self.fs.invalidate_cache()  # a listing cached earlier would miss newer parts
        try:
            with _reaching(f"cannot list the archive {self.where(dataset)}"):
                if days is None:
                    found = self.fs.glob(f"{base}/{PATTERN}")
                else:
                    found = [p for d in sorted(set(days))
                             for p in self.fs.glob(f"{base}/date={d}/part-*.parquet")]
        except UnavailableError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return []  # a bucket that does not exist holds nothing
            raise
        return sorted(found)

    def read(self, part: str, columns: list[str] | None = None) -> pa.Table:
        """One part as a table (only ``columns`` when given)."""
        raise NotImplementedError

    def read_all(self, parts: Iterable[str], columns: list[str] | None = None) -> pa.Table:
        return pa.concat_tables([self.read(p, columns) for p in parts],
                                promote_options="default")


class LocalArchive(Archive):
    """Parts as files under a local directory, written atomically with the data directory's
    modes."""

    def __init__(self, root: Path) -> None:
        from fsspec.implementations.local import LocalFileSystem

        super().__init__(str(root))
        self.fs = LocalFileSystem()
        self.root = str(root)

    def write(self, table: pa.Table, dataset: str, at_ns: int) -> str:
        path = self._part_path(dataset, at_ns)
        write_atomic(table, Path(path))
        return path

    def check(self) -> None:
        root = Path(self.root)
        try:
            config.private_dir(root)
        except OSError as exc:
            raise ConfigError(f"archive {self.url!r} cannot be created: {exc}; set "
                              "RENDEZVOUS_ARCHIVE (or --archive) to a writable directory "
                              "or URL") from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise ConfigError(f"archive {self.url!r} is not writable; set RENDEZVOUS_ARCHIVE "
                              "(or --archive) to a writable directory or URL")

    def read(self, part: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(part, columns=columns)


class ObjectArchive(Archive):
    """Parts as objects under any fsspec URL, each written in one PUT. Credentials and
    endpoints come from the backend's usual environment (``AWS_*`` for S3)."""

    def __init__(self, url: str) -> None:
        super().__init__(url.rstrip("/"))
        self.fs, self.root = open_url(self.url, "archive")

    def write(self, table: pa.Table, dataset: str, at_ns: int) -> str:
        path = self._part_path(dataset, at_ns)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        with _reaching(f"cannot write to the archive {self.url}"):
            self.fs.pipe_file(path, sink.getvalue().to_pybytes())
        return path

    def check(self) -> None:
        probe = f"{self.root}/_probe-{new_request_id()}"
        try:
            with _reaching("cannot write"):
                self.fs.pipe_file(probe, b"")
        except UnavailableError as exc:
            cause = exc.__cause__
            raise ConfigError(
                f"archive {self.url!r} is not writable ({type(cause).__name__}: {cause}); "
                "check that the endpoint is reachable, the bucket exists and the credentials "
                "may write to it, or set RENDEZVOUS_ARCHIVE (or --archive) to another "
                "location") from None
        # A leftover empty probe is harmless: readers list part-*.parquet only.
        with contextlib.suppress(UnavailableError), _reaching("cannot remove the probe"):
            self.fs.rm_file(probe)

    def read(self, part: str, columns: list[str] | None = None) -> pa.Table:
        with _reaching(f"cannot read {part} from the archive {self.url}"):
            data = self.fs.cat_file(part)
        return pq.read_table(pa.BufferReader(data), columns=columns)


def open_archive(home: Path | str | None = None,
                 location: str | Path | Archive | None = None) -> Archive:
    """The archive at ``location`` (a path or fsspec URL), else ``RENDEZVOUS_ARCHIVE``, else
    ``<home>/archive``. Opening checks nothing remote; call ``check()`` to fail early.

    >>> open_archive("/srv/rv", "s3://evidence/rv")  # doctest: +SKIP
    ObjectArchive('s3://evidence/rv')
    """
    if isinstance(location, Archive):
        return location
    text = config.ARCHIVE.get(str(location) if location else None)
    if not text:
        base = Path(home) if home is not None else config.HOME.get()
        return LocalArchive(base.expanduser().resolve() / "archive")
    if is_remote(text):
        return ObjectArchive(text)
    return LocalArchive(local_path(text))


def dataset(deployment: str, kind: str = "") -> str:
    """The dataset path of a deployment's inputs (``kind`` empty) or of its ``scores``,
    ``results`` or ``labels``."""
    name = check_name(deployment, "deployment name")
    return f"{name}/{kind}" if kind else name
