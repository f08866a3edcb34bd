"""`rendezvous deploy …`, `promote`, `rollback`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from rendezvous import config, deploy
from rendezvous.cli.analytics import JsonOut, Streams
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
from rendezvous.errors import GatesFailedError, RendezvousError
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
def deploy_history(name: str, json_out: JsonOut = False, home: Home = None,
                   registry: RegistryUrl = None) -> None:
    """Every policy version of a deployment: action (apply, promote, rollback,
    auto-rollback), who, when, whether forced, the gates' outcome and the evidence."""
    with open_registry(home, registry) as reg:
        hist = reg.policy_history(name)
    if json_out:
        print(json.dumps([dataclasses.asdict(rec) for rec in hist]))
        return
    table = Table("version", "action", "at", "by", "champion", "forced", "gates", "evidence",
                  "note")
    for rec in hist:
        champ = next((m["model"] for m in rec.body["models"] if m["role"] == "champion"), "-")
        forced, gates, evidence = _evidence_summary(rec.evidence)
        table.add_row(str(rec.version), rec.action, ago(rec.at), rec.by, champ, forced, gates,
                      evidence, rec.note)
    out.print(table)


def _evidence_summary(evidence: dict[str, Any] | None) -> tuple[str, str, str]:
    """(forced, gates outcome, evidence in a few words) of a policy record's evidence."""
    if not evidence:
        return "-", "-", "-"
    if "rows" in evidence:  # a promotion's gate rows
        rows = evidence["rows"]
        refused = [r["gate"] for r in rows if r.get("refuses")]
        outcome = "passed" if not refused else f"failed: {', '.join(refused)}"
        summary = "; ".join(f"{r['gate']} {r['observed']}" for r in rows)
        return ("yes" if evidence.get("forced") else "no"), outcome, summary
    reasons = evidence.get("reasons") or []  # an automatic rollback's causes
    return "-", "-", "; ".join(r.get("reason", "") for r in reasons) or "-"


def gate_table(title: str, report: dict[str, Any]) -> Table:
    """The evidence table of a promotion's gates."""
    table = Table("gate", "required", "observed", "outcome", title=title)
    colour = {"pass": "green", "fail": "red", "not enough data": "yellow"}
    for row in report.get("rows", []):
        outcome = row["outcome"]
        if outcome == "not enough data" and not row.get("blocking", True):
            outcome += " (not blocking)"
        table.add_row(row["gate"], row["required"], row["observed"],
                      f"[{colour.get(row['outcome'], 'white')}]{escape(outcome)}[/]")
    return table


def _notify(home: Path | None, deployment: str, op: str,
            body: dict[str, Any] | None = None, *, announce: bool = True) -> dict[str, Any] | None:
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
    if r.status_code == 409 and "gates" in r.text:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            refusal = r.json()
            raise GatesFailedError(deployment, refusal["gates"]["model"], refusal["gates"])
    if r.status_code != 200:
        try:
            why = r.json()["error"]
        except (ValueError, KeyError, TypeError):
            why = r.text
        raise RendezvousError(f"the running server refused {op}: {why}")
    answer: dict[str, Any] = r.json()
    if announce:
        out.print(f"running server at {info['url']} switched to policy "
                  f"{answer['policy_version']}")
    return answer


@app.command()
def promote(deployment: str,
            model: Annotated[str, typer.Argument(help="NAME@VERSION to become champion")],
            force: Annotated[bool, typer.Option(
                "--force", help="Promote even if gates refuse (recorded as forced)")] = False,
            json_out: JsonOut = False, streams: Streams = "embedded",
            home: Home = None, registry: RegistryUrl = None) -> None:
    """Make MODEL the champion if the policy's promotion gates pass on the live analytics
    (the running server's monitor, else rebuilt from the streams); prints the evidence and
    exits 1 with the failing rows when refused. The old champion keeps scoring as a
    challenger, and the monitor watches the new one (see README: gates)."""
    from rendezvous.hosting.serving import read_run_file

    try:
        answer = _notify(home, deployment, "promote", {"model": model, "force": force},
                         announce=not json_out) \
            if read_run_file(config.home(home), deployment) else None
        if answer is not None:
            report, version = answer["gates"], answer["policy_version"]
        else:
            report, version = _promote_offline(deployment, model, force, home, registry,
                                               streams)
    except GatesFailedError as exc:
        _show_gates(deployment, exc.report, json_out)
        raise
    _show_gates(deployment, {**report, "policy_version": version}, json_out)
    if not json_out:
        forced = ", forced past the refusing gates" if force and not report["passed"] else ""
        out.print(f"{deployment}: {model} is champion (policy version {version}){forced}")


def _promote_offline(deployment: str, model: str, force: bool, home: Path | None,
                     registry: str | None, streams: str) -> tuple[dict[str, Any], int]:
    from rendezvous.roles.monitor import analytics_from_log

    with open_registry(home, registry) as reg:
        a = asyncio.run(analytics_from_log(config.home(home), deployment, reg,
                                           streams=streams))
        docs = {"compare": a.compare(), "accuracy": a.accuracy(), "windows": a.windows()}
        rec, report = deploy.promote(reg, deployment, model, documents=docs, force=force)
    return {**report.to_dict(), "forced": force}, rec.version


def _show_gates(deployment: str, report: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print(json.dumps(report))
    else:
        out.print(gate_table(f"{deployment}: promotion gates for {report.get('model')} "
                             f"(champion {report.get('champion')})", report))


@app.command()
def rollback(deployment: str, home: Home = None, registry: RegistryUrl = None) -> None:
    """Restore the policy the current one replaced."""
    from rendezvous.hosting.serving import read_run_file

    if read_run_file(config.home(home), deployment) and _notify(home, deployment, "rollback"):
        return
    with open_registry(home, registry) as reg:
        rec = reg.rollback(deployment)
    out.print(f"{deployment}: rolled back ({rec.note}); policy version {rec.version}")
