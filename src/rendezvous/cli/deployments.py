"""`rendezvous deploy …`, `promote`, `rollback`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import msgspec
import typer
from rich.table import Table

from rendezvous import config, deploy
from rendezvous.cli.common import (
    Home,
    RegistryUrl,
    ago,
    app,
    deploy_app,
    err,
    open_registry,
    out,
)
from rendezvous.core.policy import Policy
from rendezvous.errors import RendezvousError
from rendezvous.registry import current_user

# -- deployments ------------------------------------------------------------------------------


@deploy_app.command("apply")
def deploy_apply(file: Path, home: Home = None, registry: RegistryUrl = None) -> None:
    """Create or update a deployment from a TOML spec (see README). Every model is loaded and
    warmed up first (by the running server, if any); nothing is recorded if one fails."""
    name, policy = deploy.load_spec(file)
    _apply(home, registry, name, policy, note=f"applied from {file.name}")


def _apply(home: Path | None, registry: str | None, name: str, policy: Policy, *,
           note: str) -> None:
    answer = _notify(home, name, "apply", {"policy": msgspec.to_builtins(policy),
                                           "note": note})
    if answer is None:
        with open_registry(home, registry) as reg:
            version = deploy.apply_policy(reg, name, policy, note=note).version
    else:
        version = answer["policy_version"]
    out.print(f"deployment [bold]{name}[/] at policy version {version}")


@deploy_app.command("create")
def deploy_create(
    name: str,
    champion: Annotated[str, typer.Option(help="NAME@VERSION answering first")],
    fallback: Annotated[list[str] | None, typer.Option(help="Fallback model (repeatable)")]
    = None,
    challenger: Annotated[list[str] | None, typer.Option(help="Shadow model (repeatable)")]
    = None,
    canary: Annotated[str | None, typer.Option(help="Pinned reference model")] = None,
    deadline_ms: float = 100.0,
    wait_ms: Annotated[float | None, typer.Option(help="How long fallbacks wait for the "
                                                   "champion [default: the deadline]")] = None,
    no_decoy: bool = False,
    home: Home = None,
    registry: RegistryUrl = None,
) -> None:
    """Create or update a deployment from flags."""
    policy = deploy.policy_from_flags(champion=champion, fallbacks=fallback,
                                      challengers=challenger, canary=canary,
                                      deadline_ms=deadline_ms, wait_ms=wait_ms,
                                      decoy=not no_decoy)
    _apply(home, registry, name, policy, note="created from flags")


@deploy_app.command("list")
def deploy_list(home: Home = None, registry: RegistryUrl = None) -> None:
    """List deployments with their champion and policy version."""
    with open_registry(home, registry) as reg:
        rows = [(n, *reg.policy(n)) for n in reg.deployments()]
    table = Table("deployment", "policy", "champion", "models", "deadline")
    for name, pol, rec in rows:
        table.add_row(name, str(rec.version), pol.champion or "-",
                      ", ".join(f"{m.model} ({m.role.value})" for m in pol.models),
                      f"{pol.deadline_ms:g} ms")
    out.print(table if rows else "no deployments yet: `rendezvous deploy apply FILE`")


@deploy_app.command("history")
def deploy_history(name: str, home: Home = None, registry: RegistryUrl = None) -> None:
    """Every policy version of a deployment: who, when, what."""
    with open_registry(home, registry) as reg:
        hist = reg.policy_history(name)
    table = Table("version", "action", "at", "by", "champion", "note")
    for rec in hist:
        champ = next((m["model"] for m in rec.body["models"] if m["role"] == "champion"), "-")
        table.add_row(str(rec.version), rec.action, ago(rec.at), rec.by, champ, rec.note)
    out.print(table)


def _notify(home: Path | None, deployment: str, op: str,
            body: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Tell a running server (if any) to apply the change now; returns its answer."""
    from rendezvous.hosting.serving import read_run_file

    info = read_run_file(config.home(home), deployment)
    if info is None:
        return None
    try:
        # Applying loads and warms up new models first: allow for that.
        r = httpx.post(f"{info['url']}/v1/admin/deployments/{deployment}/{op}", json=body or {},
                       headers={"authorization": f"Bearer {info['token']}",
                                # who asked, for the audit trail (the server adds the address)
                                "x-rendezvous-user": current_user()},
                       timeout=config.READY_TIMEOUT_S.get() + 30)
    except httpx.HTTPError:
        err.print(f"[yellow]note:[/] no server answered at {info['url']}; the change applies "
                  "when the deployment is served next")
        return None
    if r.status_code != 200:
        try:
            why = r.json()["error"]
        except (ValueError, KeyError, TypeError):
            why = r.text
        raise RendezvousError(f"the running server refused {op}: {why}")
    answer: dict[str, Any] = r.json()
    out.print(f"running server at {info['url']} switched to policy {answer['policy_version']}")
    return answer


@app.command()
def promote(deployment: str,
            model: Annotated[str, typer.Argument(help="NAME@VERSION to become champion")],
            home: Home = None, registry: RegistryUrl = None) -> None:
    """Make MODEL the champion (the old champion keeps scoring as a challenger)."""
    from rendezvous.hosting.serving import read_run_file

    if read_run_file(config.home(home), deployment) and _notify(
            home, deployment, "promote", {"model": model}):
        return
    with open_registry(home, registry) as reg:
        rec = reg.promote(deployment, model)
    out.print(f"{deployment}: {model} is champion (policy version {rec.version})")


@app.command()
def rollback(deployment: str, home: Home = None, registry: RegistryUrl = None) -> None:
    """Restore the policy the current one replaced."""
    from rendezvous.hosting.serving import read_run_file

    if read_run_file(config.home(home), deployment) and _notify(home, deployment, "rollback"):
        return
    with open_registry(home, registry) as reg:
        rec = reg.rollback(deployment)
    out.print(f"{deployment}: rolled back ({rec.note}); policy version {rec.version}")
