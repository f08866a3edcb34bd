"""Registry metadata in SQL (SQLAlchemy Core): SQLite file by default, PostgreSQL by URL.

Model versions, aliases with their full history, tags, deployments with their policy history.
Every write is one transaction; version numbers and alias moves are serialized per name (an
advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so concurrent registrations from
several processes get distinct versions and alias history stays a chain. The tables are created
and upgraded by Alembic migrations (``rendezvous.registry.migrate``); the definitions below must
match the head revision.
"""

from __future__ import annotations

import contextlib
import random
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from rendezvous import config
from rendezvous.errors import (
    AlreadyExistsError,
    ConflictError,
    MissingDependencyError,
    NotFoundError,
    UnavailableError,
)
from rendezvous.registry import migrate

metadata = sa.MetaData()
POLICY_WRITE_ATTEMPTS = 50
CURRENT: Any = object()  # sentinel: "the deployment's current policy version"

model_versions = sa.Table(
    "model_versions", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("flavor", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("flavor_meta", sa.JSON, nullable=False),
    sa.Column("signature", sa.JSON, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("data_fingerprint", sa.String(64), nullable=False, default=""),
    sa.Column("data_summary", sa.JSON, nullable=False),
    sa.Column("code_version", sa.String(128), nullable=False, default=""),
    sa.Column("environment", sa.JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False, default=""),
    sa.Column("parent", sa.String(160), nullable=True),
    sa.Column("run_ref", sa.String(512), nullable=False, default=""),
    sa.Column("code_dirty", sa.Boolean, nullable=True),
    sa.Column("artifact_uri", sa.String(1024), nullable=True),
)

model_tags = sa.Table(
    "model_tags", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),  # 0: the model as a whole
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

aliases = sa.Table(
    "aliases", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("alias", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

alias_history = sa.Table(
    "alias_history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("alias", sa.String(128), nullable=False),
    sa.Column("from_version", sa.Integer, nullable=True),
    sa.Column("to_version", sa.Integer, nullable=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("by", sa.String(128), nullable=False),
)

policies = sa.Table(
    "policies", metadata,
    sa.Column("deployment", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("parent", sa.Integer, nullable=True),  # the version this one replaced
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("by", sa.String(128), nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
    # What justified the change (a promotion's gate rows, an automatic rollback's alarms)
    sa.Column("evidence", sa.JSON, nullable=True),
)

deployments = sa.Table(
    "deployments", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("current", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    flavor: str
    digest: str
    flavor_meta: dict[str, Any]
    signature: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    data_summary: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    created_at: float = 0.0
    created_by: str = ""
    parent: str | None = None  # the version this one was derived from (name@N)
    run_ref: str = ""  # an external run, e.g. "mlflow:runs/<id>"
    code_dirty: bool | None = None  # uncommitted changes in the caller's repository
    artifact_uri: str | None = None  # None: the registry's local artifact directory

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class PolicyRecord:
    deployment: str
    version: int
    body: dict[str, Any]
    parent: int | None
    action: str
    at: float
    by: str
    note: str = ""
    evidence: dict[str, Any] | None = None


@dataclass(frozen=True)
class AliasChange:
    name: str
    alias: str
    from_version: int | None
    to_version: int | None
    at: float
    by: str


class SqlStore:
    """Registry metadata behind SQLAlchemy; ``url`` is any SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        try:
            self.engine = sa.create_engine(url, **kwargs)
        except ModuleNotFoundError as exc:
            raise MissingDependencyError(f"the registry at {url.split('@')[-1]}",
                                         exc.name or "psycopg", "postgres") from None
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            migrate.ensure_current(self.engine)
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            where = self.engine.url.render_as_string(hide_password=True)
            raise UnavailableError(f"cannot open the registry at {where}: "
                                   f"{str(exc.orig).strip().splitlines()[0]}") from None
        except BaseException:
            self.engine.dispose()
            raise
        database = self.engine.url.database
        if self.engine.url.get_backend_name() == "sqlite" and database \
                and database != ":memory:":
            for suffix in ("", "-wal", "-shm"):  # readable by the owner only (a setting)
                with contextlib.suppress(FileNotFoundError):
                    config.private_file(Path(database + suffix))

    def dispose(self) -> None:
        self.engine.dispose()

    # -- model versions -----------------------------------------------------------------------

    def add_version(self, **fields: Any) -> ModelVersion:
        for _ in range(5):  # the lock makes a race unlikely; a retry covers the rest
            try:
                with self.engine.begin() as conn:
                    _serialize(conn, f"version:{fields['name']}")
                    latest = conn.execute(
                        sa.select(sa.func.max(model_versions.c.version)).where(
                            model_versions.c.name == fields["name"])
                    ).scalar()
                    row = {**fields, "version": (latest or 0) + 1, "created_at": time.time()}
                    conn.execute(model_versions.insert().values(**row))
                return ModelVersion(**row)
            except IntegrityError:
                continue
        raise AlreadyExistsError(f"could not allocate a version for {fields['name']!r}; retry")

    def get_version(self, name: str, version: int) -> ModelVersion:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(model_versions).where(
                    model_versions.c.name == name, model_versions.c.version == version)
            ).mappings().first()
        if row is None:
            known = self.versions(name)
            hint = (f"known versions: {', '.join(str(v.version) for v in known)}" if known
                    else "register it first with `rendezvous models register`")
            raise NotFoundError("model version", f"{name}@{version}", hint)
        return ModelVersion(**row)

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        return self.search(name=name)

    def search(
        self, *, name: str | None = None, name_like: str | None = None,
        tags: Mapping[str, str] | None = None, since: float | None = None,
        flavor: str | None = None,
    ) -> list[ModelVersion]:
        """Versions matching every filter given: exact ``name``, a SQL LIKE pattern on the
        name, tags (on the version or on its model), created at or after ``since``, flavor."""
        mv = model_versions
        q = sa.select(mv).order_by(mv.c.name, mv.c.version)
        if name is not None:
            q = q.where(mv.c.name == name)
        if name_like is not None:
            q = q.where(mv.c.name.like(name_like, escape="\\"))
        if since is not None:
            q = q.where(mv.c.created_at >= since)
        if flavor is not None:
            q = q.where(mv.c.flavor == flavor)
        for key, value in (tags or {}).items():
            q = q.where(sa.exists().where(
                model_tags.c.name == mv.c.name, model_tags.c.version.in_([0, mv.c.version]),
                model_tags.c.key == key, model_tags.c.value == value))
        with self.engine.connect() as conn:
            return [ModelVersion(**r) for r in conn.execute(q).mappings()]

    def set_description(self, name: str, version: int, text: str) -> None:
        self.get_version(name, version)
        with self.engine.begin() as conn:
            conn.execute(model_versions.update().where(
                model_versions.c.name == name, model_versions.c.version == version)
                .values(description=text))

    # -- tags ---------------------------------------------------------------------------------

    def set_tags(self, name: str, version: int, tags: Mapping[str, str],
                 delete: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
        """Set and delete tags of ``name@version`` (version 0: the model); returns them all."""
        with self.engine.begin() as conn:
            _serialize(conn, f"tags:{name}")
            where = (model_tags.c.name == name, model_tags.c.version == version)
            keys = [*tags, *delete]
            if keys:
                conn.execute(model_tags.delete().where(*where, model_tags.c.key.in_(keys)))
            if tags:
                conn.execute(model_tags.insert(), [
                    {"name": name, "version": version, "key": k, "value": v}
                    for k, v in tags.items()])
        return self.tags(name, version)

    def tags(self, name: str, version: int) -> dict[str, str]:
        """Tags of ``name@version`` exactly (version 0: the model's own)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(model_tags.c.key, model_tags.c.value).where(
                model_tags.c.name == name, model_tags.c.version == version)
                .order_by(model_tags.c.key)).all()
        return {k: v for k, v in rows}

    # -- aliases ------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int | None, by: str) -> AliasChange:
        with self.engine.begin() as conn:
            _serialize(conn, f"alias:{name}@{alias}")
            old = conn.execute(
                sa.select(aliases.c.version).where(aliases.c.name == name, aliases.c.alias == alias)
            ).scalar()
            conn.execute(aliases.delete().where(aliases.c.name == name, aliases.c.alias == alias))
            if version is not None:
                conn.execute(aliases.insert().values(name=name, alias=alias, version=version))
            change = AliasChange(name, alias, old, version, time.time(), by)
            conn.execute(alias_history.insert().values(
                name=name, alias=alias, from_version=old, to_version=version, at=change.at, by=by))
        return change

    def get_alias(self, name: str, alias: str) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(aliases.c.version).where(aliases.c.name == name, aliases.c.alias == alias)
            ).scalar()

    def aliases_of(self, name: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(aliases.c.alias, aliases.c.version).where(
                aliases.c.name == name)).all()
        return {a: v for a, v in rows}

    def alias_history(self, name: str) -> list[AliasChange]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(alias_history).where(alias_history.c.name == name)
                .order_by(alias_history.c.id)
            ).mappings().all()
        return [AliasChange(r["name"], r["alias"], r["from_version"], r["to_version"], r["at"],
                            r["by"]) for r in rows]

    # -- deployments and policies ---------------------------------------------------------------

    def add_policy(
        self, deployment: str, body: dict[str, Any], *, action: str, by: str,
        parent: int | object | None = CURRENT, note: str = "",
        expect_current: int | None = None, evidence: dict[str, Any] | None = None,
    ) -> PolicyRecord:
        """Append a policy version and make it current. ``parent`` (the version a rollback
        would restore) defaults to the current one.

        Concurrent writers are serialized: a transaction that loses the race for the next
        version number is retried, so history stays a chain (each version's parent is the
        version current when it was written). With ``expect_current`` (a body derived from
        that version, e.g. a promote) a changed deployment is a ``ConflictError`` instead.
        ``evidence``: a JSON document kept with the record (gate rows, alarms)."""
        for attempt in range(POLICY_WRITE_ATTEMPTS):
            try:
                return self._add_policy(deployment, body, action=action, by=by, parent=parent,
                                        note=note, expect_current=expect_current,
                                        evidence=evidence)
            except (IntegrityError, OperationalError) as exc:
                # IntegrityError: another writer took the version number first. SQLite's
                # "database is locked": another writer upgraded to a write lock first.
                if isinstance(exc, OperationalError) and "locked" not in str(exc):
                    raise
                time.sleep(0.005 * (attempt + 1) * (1 + random.random()))
        raise ConflictError(
            f"deployment {deployment!r}: {POLICY_WRITE_ATTEMPTS} concurrent policy changes "
            "raced this one; retry it")

    def _add_policy(self, deployment: str, body: dict[str, Any], *, action: str, by: str,
                    parent: int | object | None, note: str, expect_current: int | None,
                    evidence: dict[str, Any] | None) -> PolicyRecord:
        with self.engine.begin() as conn:
            # Read and write under one lock: SQLite's driver would otherwise begin the
            # transaction only at the first write, and PostgreSQL reads committed data.
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            current = conn.execute(
                sa.select(deployments.c.current).where(deployments.c.name == deployment)
                .with_for_update()
            ).scalar()
            if expect_current is not None and current != expect_current:
                raise ConflictError(
                    f"deployment {deployment!r} changed meanwhile (policy {expect_current} is "
                    f"now {current}); look at `rendezvous deploy history {deployment}` and "
                    "retry")
            latest = conn.execute(sa.select(sa.func.max(policies.c.version)).where(
                policies.c.deployment == deployment)).scalar() or 0
            parent_version = current if parent is CURRENT else cast("int | None", parent)
            rec = PolicyRecord(deployment, latest + 1, body, parent_version, action,
                               time.time(), by, note, evidence)
            conn.execute(policies.insert().values(
                deployment=deployment, version=rec.version, body=body, parent=rec.parent,
                action=action, at=rec.at, by=by, note=note, evidence=evidence))
            if current is None:
                conn.execute(deployments.insert().values(
                    name=deployment, current=rec.version, created_at=rec.at))
            else:
                conn.execute(deployments.update().where(deployments.c.name == deployment)
                             .values(current=rec.version))
        return rec

    def policy(self, deployment: str, version: int | None = None) -> PolicyRecord:
        with self.engine.connect() as conn:
            if version is None:
                version = conn.execute(sa.select(deployments.c.current).where(
                    deployments.c.name == deployment)).scalar()
            row = None if version is None else conn.execute(
                sa.select(policies).where(policies.c.deployment == deployment,
                                          policies.c.version == version)
            ).mappings().first()
        if row is None:
            known = self.deployment_names()
            hint = (f"known deployments: {', '.join(known)}" if known
                    else "create one with `rendezvous deploy apply FILE`")
            raise NotFoundError("deployment", deployment, hint)
        return PolicyRecord(**row)

    def policy_history(self, deployment: str) -> list[PolicyRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(policies).where(policies.c.deployment == deployment)
                                .order_by(policies.c.version)).mappings().all()
        return [PolicyRecord(**r) for r in rows]

    def deployment_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(deployments.c.name).order_by(deployments.c.name))
                        .scalars())


def _serialize(conn: sa.Connection, key: str) -> None:
    """Hold a write lock for ``key`` until the transaction ends, so that read-then-write
    sequences (next version number, alias from/to) see every earlier writer's commit."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"),
                     {"k": zlib.crc32(key.encode())})
    elif conn.dialect.name == "sqlite":
        # The whole file is one lock; taking it first avoids WAL "stale snapshot" failures
        # that a deferred transaction hits when it starts writing after another commit.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
