"""Schema migrations: a registry made at the first schema, with data, opens at head."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from rendezvous import Registry
from rendezvous.errors import ConfigError
from rendezvous.registry import migrate, registry_url
from tests.registry_db import registry_url as backend_url  # noqa: F401  (both backends)


def _first_schema_with_data(url: str) -> None:
    """A database exactly as the first revision made it, holding a model, an alias and a
    deployment."""
    engine = sa.create_engine(registry_url(url, Path()))
    with engine.begin() as conn:
        command.upgrade(migrate._alembic_config(conn), migrate.FIRST)
        conn.execute(sa.text(
            "INSERT INTO model_versions VALUES ('old', 1, 'python', :d, '{\"ref\": "
            "\"tests.models:doubler\"}', '{\"inputs\": [{\"name\": \"x\", \"datatype\": "
            "\"FP64\"}, {\"name\": \"y\", \"datatype\": \"FP64\"}]}', '{}', '{\"auc\": 0.8}', "
            "'', '{}', 'abc', '{}', 'first', :t, 'me')"), {"d": "0" * 64, "t": time.time()})
        conn.execute(sa.text("INSERT INTO aliases VALUES ('old', 'live', 1)"))
        conn.execute(sa.text("INSERT INTO alias_history (name, alias, from_version, "
                             "to_version, at, by) VALUES ('old', 'live', NULL, 1, 0, 'me')"))
        conn.execute(sa.text(
            "INSERT INTO policies (deployment, version, body, parent, action, at, by, note) "
            "VALUES ('dep', 1, '{\"models\": [{\"model\": \"old@1\", \"role\": "
            "\"champion\"}]}', NULL, 'apply', 0, 'me', '')"))
        conn.execute(sa.text("INSERT INTO deployments VALUES ('dep', 1, 0)"))
    engine.dispose()


def test_first_schema_to_head_keeps_data(home: Path, backend_url: str) -> None:
    _first_schema_with_data(backend_url)
    with Registry(home, url=backend_url) as reg:  # upgrades on open
        assert migrate.state(reg.store.engine).up_to_date
        old = reg.get("old@live")
        assert (old.description, old.metrics, old.parent, old.run_ref) == (
            "first", {"auc": 0.8}, None, "")
        reg.tag("old@1", {"stage": "legacy"})  # the new tables work on old rows
        assert reg.search(tags={"stage": "legacy"})[0].ref == "old@1"
        assert [h.to_version for h in reg.alias_history("old")] == [1]
        # Policy records of the first schema read back without evidence; new ones keep it.
        assert [(r.action, r.evidence) for r in reg.policy_history("dep")] == [("apply", None)]
        pol, _ = reg.policy("dep")
        reg.apply_policy("dep", pol, action="promote", evidence={"forced": True})
        assert reg.policy_history("dep")[-1].evidence == {"forced": True}


def test_an_old_schema_without_auto_upgrade_names_the_command(
        home: Path, backend_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _first_schema_with_data(backend_url)
    monkeypatch.setenv("RENDEZVOUS_REGISTRY_UPGRADE", "0")
    with pytest.raises(ConfigError, match=r"schema revision 0001.*rendezvous registry upgrade "
                                          r"--registry"):
        Registry(home, url=backend_url)
    engine = sa.create_engine(registry_url(backend_url, home))
    assert migrate.upgrade(engine) == ("0001", migrate.head())
    assert migrate.upgrade(engine) == (migrate.head(), migrate.head())
    engine.dispose()
    Registry(home, url=backend_url).close()


def test_a_registry_made_before_migrations_is_taken_as_the_first(home: Path) -> None:
    """Tables made by create_all, no alembic_version: stamped as 0001, then upgraded."""
    url = f"sqlite:///{home / 'legacy.db'}"
    home.mkdir(parents=True)
    _first_schema_with_data(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
    assert migrate.state(engine).current == migrate.FIRST
    engine.dispose()
    with Registry(home, url=url) as reg:
        assert reg.get("old@1").description == "first"


def test_a_newer_schema_is_refused(home: Path, backend_url: str) -> None:
    Registry(home, url=backend_url).close()
    engine = sa.create_engine(registry_url(backend_url, home))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(ConfigError, match="newer than this Rendezvous knows"):
        Registry(home, url=backend_url)


def test_head_from_file_names_is_alembics_head() -> None:
    """``migrate.head()`` reads the scripts' file names (no Alembic import on open): it must
    agree with Alembic, so a new script must be named after its revision."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate._alembic_config())
    assert migrate.head() == script.get_current_head()
    assert len(script.get_heads()) == 1
