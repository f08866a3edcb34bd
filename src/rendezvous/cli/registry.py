"""`rendezvous registry …`: the registry database's schema."""

from __future__ import annotations

import sqlalchemy as sa
import typer

from rendezvous import config
from rendezvous.cli.common import Home, RegistryUrl, app, out

registry_app = typer.Typer(help="The registry database: schema status and upgrades.",
                           no_args_is_help=True)
app.add_typer(registry_app, name="registry")


def _engine(home: Home, registry: RegistryUrl) -> sa.Engine:
    from rendezvous.registry import registry_url

    return sa.create_engine(registry_url(registry, config.home(home)))


@registry_app.command("status")
def registry_status(home: Home = None, registry: RegistryUrl = None) -> None:
    """The schema revision of the registry database and the one this Rendezvous needs."""
    from rendezvous.registry import migrate

    engine = _engine(home, registry)
    try:
        st = migrate.state(engine)
    finally:
        engine.dispose()
    word = "up to date" if st.up_to_date else "empty" if st.current is None else "needs upgrade"
    out.print(f"{st.url}: schema {st.current or '-'}, head {st.head} ({word})")


@registry_app.command("upgrade")
def registry_upgrade(home: Home = None, registry: RegistryUrl = None) -> None:
    """Upgrade the registry database's schema to this Rendezvous' head revision."""
    from rendezvous.registry import migrate

    engine = _engine(home, registry)
    try:
        before, after = migrate.upgrade(engine)
    finally:
        engine.dispose()
    out.print(f"registry schema {before or 'empty'} -> {after}" if before != after
              else f"registry schema already at {after}")
