"""Registry metadata in SQL (SQLAlchemy Core): SQLite file by default, PostgreSQL by URL.

Model versions, aliases with their full history, deployments with their policy history. Every
write is one transaction; version numbers are allocated inside it, so concurrent registrations
of one name get distinct versions.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from rendezvous import config
from rendezvous.errors import AlreadyExistsError, ConflictError, NotFoundError

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
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        database = self.engine.url.database
        if url.startswith("sqlite") and database and database != ":memory:":
            for suffix in ("", "-wal", "-shm"):  # readable by the owner only (a setting)
                with contextlib.suppress(FileNotFoundError):
                    config.private_file(Path(database + suffix))

    def dispose(self) -> None:
        self.engine.dispose()

    # -- model versions -----------------------------------------------------------------------

    def add_version(self, **fields: Any) -> ModelVersion:
        for _ in range(5):  # concurrent writers may race for the next number
            try:
                with self.engine.begin() as conn:
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
        q = sa.select(model_versions).order_by(model_versions.c.name, model_versions.c.version)
        if name is not None:
            q = q.where(model_versions.c.name == name)
        with self.engine.connect() as conn:
            return [ModelVersion(**r) for r in conn.execute(q).mappings()]

    # -- aliases ------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int | None, by: str) -> AliasChange:
        with self.engine.begin() as conn:
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
        expect_current: int | None = None,
    ) -> PolicyRecord:
        """Append a policy version and make it current. ``parent`` (the version a rollback
        would restore) defaults to the current one.

        Concurrent writers are serialized: a transaction that loses the race for the next
        version number is retried, so history stays a chain (each version's parent is the
        version current when it was written). With ``expect_current`` (a body derived from
        that version, e.g. a promote) a changed deployment is a ``ConflictError`` instead."""
        for attempt in range(POLICY_WRITE_ATTEMPTS):
            try:
                return self._add_policy(deployment, body, action=action, by=by, parent=parent,
                                        note=note, expect_current=expect_current)
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
                    parent: int | object | None, note: str,
                    expect_current: int | None) -> PolicyRecord:
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
            rec = PolicyRecord(deployment, latest + 1, body,
                               current if parent is CURRENT else parent, action, time.time(),
                               by, note)
            conn.execute(policies.insert().values(
                deployment=deployment, version=rec.version, body=body, parent=rec.parent,
                action=action, at=rec.at, by=by, note=note))
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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
