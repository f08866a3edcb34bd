"""`rendezvous models …`: register, import, list/search, show, tag, describe, card, alias."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rendezvous.cli.common import (
    Home,
    RegistryUrl,
    ago,
    models_app,
    open_registry,
    out,
)
from rendezvous.errors import ConfigError
from rendezvous.ids import check_name

import_app = typer.Typer(help="Import models from other tools.", no_args_is_help=True)
models_app.add_typer(import_app, name="import")

Pairs = Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE")]


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"invalid {what} {item!r}: write KEY=VALUE")
        pairs[key.strip()] = value
    return pairs


def _metrics(items: list[str] | None) -> dict[str, float]:
    metrics = {}
    for key, value in _pairs(items, "metric").items():
        try:
            metrics[key] = float(value)
        except ValueError:
            raise ConfigError(f"metric {key}={value!r} is not a number") from None
    return metrics


@models_app.command("register")
def models_register(
    name: str,
    path: Annotated[Path | None, typer.Argument(
        help="Saved model: .skops, XGBoost .json/.ubj, LightGBM .txt, .onnx (.pkl/.joblib with "
             "RENDEZVOUS_ALLOW_PICKLE=1)")] = None,
    flavor: Annotated[str | None, typer.Option(help="Flavor of PATH [default: from the file]")]
    = None,
    trust: Annotated[list[str] | None, typer.Option(
        "--trust", metavar="TYPE", help="Extra skops type to trust (repeatable; recorded)")]
    = None,
    example: Annotated[Path | None, typer.Option(
        help="Training rows (CSV or Parquet): signature, fingerprint, warm-up rows")] = None,
    callable_ref: Annotated[str | None, typer.Option("--callable",
                            help="Register a Python callable 'package.module:function'")] = None,
    columns: Annotated[str | None, typer.Option(help="Input columns, comma-separated, e.g. "
                       "'x,y' (all FP64)")] = None,
    description: str = "",
    param: Pairs = None,
    metric: Pairs = None,
    tag: Pairs = None,
    parent: Annotated[str | None, typer.Option(help="NAME@VERSION this one derives from")]
    = None,
    run: Annotated[str, typer.Option(help="External run reference, e.g. mlflow:runs/ID")] = "",
    home: Home = None,
    registry: RegistryUrl = None,
) -> None:
    """Register a new version of model NAME from a saved model file or a Python callable."""
    from rendezvous.core.schema import Column, Datatype, Signature
    from rendezvous.flavors.python import CallableModel
    from rendezvous.registry.examples import read_table

    check_name(name, "model name")
    sig = (Signature(tuple(Column(c.strip(), Datatype.FP64) for c in columns.split(",")))
           if columns else None)
    rows = read_table(example) if example is not None else None
    lineage: dict[str, Any] = {"params": _pairs(param, "param"), "metrics": _metrics(metric),
                               "tags": _pairs(tag, "tag"), "parent": parent, "run": run,
                               "description": description}
    with open_registry(home, registry) as reg:
        if callable_ref:
            if sig is None and rows is None:
                raise ConfigError("--callable needs --columns 'a,b,...' or --example naming "
                                  "its inputs")
            mv = reg.register(name, CallableModel(callable_ref), signature=sig, example=rows,
                              **lineage)
        elif path is not None:
            if not path.is_file():
                raise ConfigError(f"model file {path} does not exist")
            mv = reg.register_file(name, path, flavor=flavor, trust=trust or (), signature=sig,
                                   example=rows, **lineage)
        else:
            raise ConfigError("give a model file (PATH) or --callable package.module:function")
    out.print(f"registered [bold]{mv.ref}[/] ({mv.flavor}, sha256:{mv.digest[:12]}…)")


@import_app.command("mlflow")
def models_import_mlflow(
    source: Annotated[str, typer.Argument(
        help="MLflow model directory, models:/NAME/VERSION or runs:/RUN_ID/PATH")],
    name: Annotated[str | None, typer.Option(help="Model name [default: from SOURCE]")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI for models:/ and runs:/ [env MLFLOW_TRACKING_URI]")] = None,
    description: str = "",
    trust: Annotated[list[str] | None, typer.Option(
        "--trust", metavar="TYPE", help="Extra skops type to trust (repeatable; recorded)")]
    = None,
    home: Home = None,
    registry: RegistryUrl = None,
) -> None:
    """Import an MLflow model: signature, input example, run id; safe flavors only."""
    from rendezvous.flavors.mlflow import import_model

    with open_registry(home, registry) as reg:
        mv = import_model(reg, source, name=name, tracking_uri=tracking_uri,
                          description=description, trust=trust or ())
    out.print(f"registered [bold]{mv.ref}[/] ({mv.flavor}, {mv.run_ref or 'no run'}) from "
              f"{source}")


@models_app.command("list")
def models_list(
    tag: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE",
                   help="Only versions with this tag (on the version or its model)")] = None,
    name: Annotated[str | None, typer.Option(help="Name glob, e.g. 'fraud-*'")] = None,
    since: Annotated[str | None, typer.Option(help="Registered on or after DATE "
                                                   "(YYYY-MM-DD[THH:MM])")] = None,
    flavor: str | None = None,
    home: Home = None,
    registry: RegistryUrl = None,
) -> None:
    """List model versions, optionally filtered."""
    with open_registry(home, registry) as reg:
        versions = reg.search(name=name, tags=_pairs(tag, "tag"), since=since, flavor=flavor)
        aliases = {n: reg.store.aliases_of(n) for n in {v.name for v in versions}}
        tags = {v.ref: reg.tags(v.ref) for v in versions}
    table = Table("model", "flavor", "aliases", "tags", "created", "description")
    for v in versions:
        names = [a for a, ver in aliases[v.name].items() if ver == v.version]
        table.add_row(v.ref, v.flavor, ", ".join(names),
                      ", ".join(f"{k}={val}" for k, val in tags[v.ref].items()),
                      ago(v.created_at), v.description)
    filtered = tag or name or since or flavor
    out.print(table if versions else "no model versions match" if filtered else
              "no models yet: `rendezvous models register` or `rendezvous demo`")


@models_app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@ALIAS")],
                home: Home = None, registry: RegistryUrl = None) -> None:
    """Show one version: signature, metrics, lineage, tags, aliases and alias history."""
    with open_registry(home, registry) as reg:
        mv = reg.get(ref)
        doc = {k: v for k, v in mv.__dict__.items()
               if k not in ("flavor_meta", "signature", "data_summary")}
        doc["inputs"] = ", ".join(f"{c['name']}:{c['datatype']}"
                                  for c in mv.signature["inputs"])
        doc["data_summary"] = {k: v for k, v in mv.data_summary.items() if k != "example_rows"}
        doc["lineage"] = {
            "data_fingerprint": mv.data_fingerprint, "parent": mv.parent,
            "run": mv.run_ref or None, "code_version": mv.code_version or None,
            "code_dirty": mv.code_dirty, "params": mv.params, "metrics": mv.metrics,
            "environment": mv.environment,
        }
        for key in ("data_fingerprint", "parent", "run_ref", "code_version", "code_dirty",
                    "params", "metrics", "environment"):
            doc.pop(key)
        doc["trusted_types"] = mv.flavor_meta.get("user_trusted", [])
        doc["tags"] = reg.tags(mv.ref)
        doc["aliases"] = dict(reg.store.aliases_of(mv.name).items())
        doc["alias_history"] = [c.__dict__ for c in reg.alias_history(mv.name)]
    out.print_json(json.dumps(doc, default=str))


@models_app.command("tag")
def models_tag(
    ref: Annotated[str, typer.Argument(help="NAME (the model) or NAME@VERSION")],
    tags: Annotated[list[str] | None, typer.Argument(metavar="KEY=VALUE...")] = None,
    delete: Annotated[list[str] | None, typer.Option("--delete", metavar="KEY",
                      help="Remove this tag (repeatable)")] = None,
    home: Home = None,
    registry: RegistryUrl = None,
) -> None:
    """Set (KEY=VALUE) or --delete tags on a model or a version."""
    if not tags and not delete:
        raise ConfigError("give KEY=VALUE tags to set, or --delete KEY")
    with open_registry(home, registry) as reg:
        now = reg.tag(ref, _pairs(tags, "tag"), delete or ())
    out.print(f"{ref}: " + (", ".join(f"{k}={v}" for k, v in now.items()) or "no tags"))


@models_app.command("describe")
def models_describe(ref: Annotated[str, typer.Argument(help="NAME@VERSION")], text: str,
                    home: Home = None, registry: RegistryUrl = None) -> None:
    """Replace the description of a version."""
    with open_registry(home, registry) as reg:
        mv = reg.describe(ref, text)
    out.print(f"{mv.ref}: {mv.description}")


@models_app.command("card")
def models_card(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@ALIAS")],
    out_path: Annotated[Path | None, typer.Option("--out", help="Write to FILE (.md or "
                        ".html) instead of printing Markdown")] = None,
    home: Home = None,
    registry: RegistryUrl = None,
) -> None:
    """The model card of a version: use, inputs, data, metrics, lineage, deployments."""
    fmt = "html" if out_path is not None and out_path.suffix.lower() in (".html", ".htm") \
        else "md"
    with open_registry(home, registry) as reg:
        text = reg.card(ref, fmt=fmt)
    if out_path is None:
        print(text)
        return
    try:
        out_path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {out_path}: {exc.strerror}") from None
    out.print(f"wrote {out_path}")


@models_app.command("alias")
def models_alias(name: str, alias: str,
                 version: Annotated[int | None, typer.Argument()] = None,
                 delete: Annotated[bool, typer.Option("--delete")] = False,
                 home: Home = None, registry: RegistryUrl = None) -> None:
    """Point NAME@ALIAS at VERSION (or --delete it); the change is kept in history."""
    if version is None and not delete:
        raise ConfigError("give a VERSION, or --delete to remove the alias")
    with open_registry(home, registry) as reg:
        change = reg.set_alias(name, alias, None if delete else version)
    out.print(f"{name}@{alias}: {change.from_version} -> {change.to_version}")
