"""Registry tests run on both backends: a SQLite file and a real PostgreSQL (127.0.0.1:5432,
user postgres, database test; override with RENDEZVOUS_TEST_POSTGRES). Each PostgreSQL test gets
a schema of its own, dropped afterwards.

Test modules opt in with ``from tests.registry_db import registry, registry_url  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rendezvous import Registry

PG_URL = os.environ.get("RENDEZVOUS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A registry URL on a fresh PostgreSQL schema, dropped on exit."""
    psycopg = pytest.importorskip("psycopg")
    schema = f"rdv_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{PG_URL}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, home: Path) -> Iterator[str]:
    if request.param == "sqlite":
        home.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{home / 'registry.db'}"
        return
    with pg_schema() as url:
        yield url


@pytest.fixture
def registry(home: Path, registry_url: str) -> Iterator[Registry]:
    reg = Registry(home, url=registry_url)
    yield reg
    reg.close()


def register_many(home: str, url: str, name: str, n: int) -> list[int]:
    """Worker for multi-process tests: register ``n`` versions of ``name``."""
    from rendezvous import CallableModel
    from tests.conftest import XY

    with Registry(home, url=url) as reg:
        return [reg.register(name, CallableModel("tests.models:doubler"), signature=XY).version
                for _ in range(n)]


def move_alias_many(home: str, url: str, name: str, versions: list[int]) -> None:
    """Worker for multi-process tests: point ``name@live`` at each of ``versions`` in turn."""
    with Registry(home, url=url) as reg:
        for v in versions:
            reg.set_alias(name, "live", v)
