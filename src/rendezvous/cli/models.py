"""`rendezvous models …`: register, list, show, alias."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rendezvous.cli.common import (
    Home,
    ago,
    models_app,
    open_registry,
    out,
)
from rendezvous.errors import ConfigError
from rendezvous.ids import check_name

# -- models -----------------------------------------------------------------------------------


@models_app.command("register")
def models_register(
    name: str,
    path: Annotated[Path | None, typer.Argument(help="Saved model (.skops for scikit-learn)")]
    = None,
    callable_ref: Annotated[str | None, typer.Option("--callable",
                            help="Register a Python callable 'package.module:function'")] = None,
    columns: Annotated[str | None, typer.Option(help="Input columns for --callable, "
                       "comma-separated, e.g. 'x,y' (all FP64)")] = None,
    description: str = "",
    home: Home = None,
) -> None:
    """Register a new version of model NAME from a .skops file or a Python callable."""
    from rendezvous.core.schema import Column, Datatype, Signature
    from rendezvous.flavors.python import CallableModel

    check_name(name, "model name")
    with open_registry(home) as reg:
        if callable_ref:
            if not columns:
                raise ConfigError("--callable needs --columns 'a,b,...' naming its inputs")
            sig = Signature(tuple(Column(c.strip(), Datatype.FP64) for c in columns.split(",")))
            mv = reg.register(name, CallableModel(callable_ref), signature=sig,
                              description=description)
        elif path is not None:
            if not path.is_file():
                raise ConfigError(f"model file {path} does not exist")
            mv = reg.register_file(name, path, description=description)
        else:
            raise ConfigError("give a model file (PATH) or --callable package.module:function")
    out.print(f"registered [bold]{mv.ref}[/] ({mv.flavor}, sha256:{mv.digest[:12]}…)")


@models_app.command("list")
def models_list(home: Home = None) -> None:
    """List every model version."""
    with open_registry(home) as reg:
        versions = reg.versions()
        aliases = {n: reg.store.aliases_of(n) for n in {v.name for v in versions}}
    table = Table("model", "flavor", "aliases", "created", "description")
    for v in versions:
        names = [a for a, ver in aliases[v.name].items() if ver == v.version]
        table.add_row(v.ref, v.flavor, ", ".join(names), ago(v.created_at), v.description)
    out.print(table if versions else "no models yet: `rendezvous models register` or "
              "`rendezvous demo`")


@models_app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@ALIAS")],
                home: Home = None) -> None:
    """Show one version: signature, metrics, lineage, aliases and alias history."""
    with open_registry(home) as reg:
        mv = reg.get(ref)
        doc = {k: v for k, v in mv.__dict__.items() if k not in ("flavor_meta", "signature")}
        doc["inputs"] = ", ".join(f"{c['name']}:{c['datatype']}"
                                  for c in mv.signature["inputs"])
        doc["aliases"] = {a: v for a, v in reg.store.aliases_of(mv.name).items()}
        doc["alias_history"] = [c.__dict__ for c in reg.alias_history(mv.name)]
    out.print_json(json.dumps(doc, default=str))


@models_app.command("alias")
def models_alias(name: str, alias: str,
                 version: Annotated[int | None, typer.Argument()] = None,
                 delete: Annotated[bool, typer.Option("--delete")] = False,
                 home: Home = None) -> None:
    """Point NAME@ALIAS at VERSION (or --delete it); the change is kept in history."""
    if version is None and not delete:
        raise ConfigError("give a VERSION, or --delete to remove the alias")
    with open_registry(home) as reg:
        change = reg.set_alias(name, alias, None if delete else version)
    out.print(f"{name}@{alias}: {change.from_version} -> {change.to_version}")
