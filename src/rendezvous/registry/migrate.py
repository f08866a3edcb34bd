"""Registry schema migrations (Alembic): where a database stands and bringing it to head.

A registry opened on an older schema is upgraded in place when ``RENDEZVOUS_REGISTRY_UPGRADE``
is on (the default); otherwise opening it fails naming ``rendezvous registry upgrade``. Upgrades
hold a lock (a PostgreSQL advisory lock, or a lock file beside a SQLite file) so that several
processes starting at once upgrade once. Databases made before migrations existed (tables
without ``alembic_version``) are taken to be at the first revision.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from rendezvous import config
from rendezvous.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only to migrate: every process opens the registry (model hosts too), and
# checking that a database is at head needs one SELECT, not Alembic's 0.5 s of imports.
_SCRIPTS = Path(__file__).with_name("migrations")
FIRST = "0001"
_PG_LOCK_KEY = 0x52_44_56_5A  # "RDVZ": one advisory lock id for schema upgrades


@dataclass(frozen=True)
class SchemaState:
    """Where a registry database stands: ``current`` is None for an empty database."""

    url: str
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def _alembic_config(conn: sa.Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


@functools.cache
def head() -> str:
    """The newest revision this version of Rendezvous knows: revisions are numbered and
    linear, and each script's file name starts with its revision (``0002_tags_lineage.py``),
    so the highest number is the head (a test checks this against Alembic's own answer)."""
    return max(p.name.split("_", 1)[0] for p in (_SCRIPTS / "versions").glob("[0-9]*_*.py"))


def _current(conn: sa.Connection) -> str | None:
    rev = None
    if sa.inspect(conn).has_table("alembic_version"):
        rev = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    if rev is None and sa.inspect(conn).has_table("model_versions"):
        return FIRST  # made by create_all before migrations existed
    return None if rev is None else str(rev)


def state(engine: sa.Engine) -> SchemaState:
    with engine.connect() as conn:
        return SchemaState(engine.url.render_as_string(hide_password=True), _current(conn),
                           head())


@contextlib.contextmanager
def _upgrade_lock(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection holding the registry's upgrade lock."""
    if engine.dialect.name == "sqlite":
        db = engine.url.database
        lock_path = Path(f"{db}.migrate.lock") if db and db != ":memory:" else None
        with contextlib.ExitStack() as stack:
            if lock_path is not None:
                fh = stack.enter_context(open(lock_path, "a"))
                config.private_file(lock_path)
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield stack.enter_context(engine.connect())
        return
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_LOCK_KEY})")
            conn.commit()
        try:
            yield conn
        finally:
            if engine.dialect.name == "postgresql":
                conn.rollback()
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_LOCK_KEY})")
                conn.commit()


def upgrade(engine: sa.Engine) -> tuple[str | None, str]:
    """Bring the schema to head; returns (revision before, revision after)."""
    from alembic import command

    with _upgrade_lock(engine) as conn:
        before = _current(conn)  # re-read under the lock: another process may have upgraded
        target = head()
        if before == target:
            return before, target
        _check_known(engine, before)
        from alembic.runtime.migration import MigrationContext

        cfg = _alembic_config(conn)
        if before == FIRST and MigrationContext.configure(conn).get_current_revision() is None:
            command.stamp(cfg, FIRST)
        command.upgrade(cfg, "head")
        conn.commit()
        return before, target


def _check_known(engine: sa.Engine, rev: str | None) -> None:
    if rev is None:
        return
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    try:
        script.get_revision(rev)
    except Exception:  # alembic raises its own CommandError/ResolutionError subclasses
        raise ConfigError(
            f"the registry at {engine.url.render_as_string(hide_password=True)} is at schema "
            f"revision {rev!r}, newer than this Rendezvous knows (head {head()!r}); upgrade "
            "rendezvous-ml on this machine"
        ) from None


def ensure_current(engine: sa.Engine, *, upgrade_allowed: bool | None = None) -> SchemaState:
    """Check the schema on open: create or upgrade it, or say which command does."""
    st = state(engine)
    if st.up_to_date:
        return st
    _check_known(engine, st.current)
    if st.current is not None and not config.REGISTRY_UPGRADE.get(upgrade_allowed):
        raise ConfigError(
            f"the registry at {st.url} is at schema revision {st.current}, this Rendezvous "
            f"needs {st.head}: run `rendezvous registry upgrade --registry {st.url}` (or set "
            "RENDEZVOUS_REGISTRY_UPGRADE=1 to upgrade on open)"
        )
    upgrade(engine)
    return SchemaState(st.url, st.head, st.head)
