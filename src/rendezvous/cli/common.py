"""What every command shares: the Typer apps, consoles and option types."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rendezvous import config
from rendezvous.registry import Registry

app = typer.Typer(help="Rendezvous: every model scores every request; the best answer ready "
                       "before the deadline wins.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
models_app = typer.Typer(help="Register, list, show and alias model versions.",
                         no_args_is_help=True)
deploy_app = typer.Typer(help="Create and inspect deployments.", no_args_is_help=True)
archive_app = typer.Typer(help="The decoy's archive of inputs.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(deploy_app, name="deploy")
app.add_typer(archive_app, name="archive")

# Tables are wide; when output is not a terminal, do not squeeze them to 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

Home = Annotated[Path | None, typer.Option("--home", help="Data directory "
                                           "[env RENDEZVOUS_HOME, default ./.rendezvous]")]

ArchiveUrl = Annotated[str | None, typer.Option(
    "--archive", help="Evidence archive (inputs, scores, labels): a path or an fsspec URL "
    "such as s3://bucket/prefix [env RENDEZVOUS_ARCHIVE, default <home>/archive]")]


def use_archive(url: str | None) -> None:
    """Make ``--archive`` the archive of this command and of every process it starts (they
    inherit it through the environment)."""
    if url:
        os.environ[config.ARCHIVE.env] = url

RegistryUrl = Annotated[str | None, typer.Option(
    "--registry", help="Registry database URL (sqlite:///PATH or postgresql://USER@HOST/DB) "
    "[env RENDEZVOUS_REGISTRY, default <home>/registry.db]")]


def open_registry(home: Path | None, registry: str | None = None) -> Registry:
    return Registry(config.home(home), url=registry)


def ago(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


