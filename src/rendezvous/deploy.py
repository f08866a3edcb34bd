"""Deployment specs: TOML files and CLI flags -> a validated ``Policy`` in the registry.

A spec file::

    name = "demo"
    deadline_ms = 50          # hard SLA from arrival
    decoy = true              # archive inputs (default)

    [[models]]
    model = "churn@3"         # NAME@VERSION or NAME@ALIAS (resolved when applied)
    role = "champion"         # champion | fallback | challenger | canary
    wait_ms = 20              # how long later candidates wait for this one

    [[models]]
    model = "churn-lite@1"
    role = "fallback"
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from rendezvous.analysis.gates import GateReport, evaluate
from rendezvous.core.policy import ModelSpec, Policy, Role
from rendezvous.errors import ConfigError, GatesFailedError, ModelLoadError
from rendezvous.ids import check_name
from rendezvous.registry import PolicyRecord, Registry


class DeploymentSpec(Policy, kw_only=True, forbid_unknown_fields=True):
    name: str


def load_spec(path: Path) -> tuple[str, Policy]:
    """Parse a TOML spec; errors name the file and the field."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"spec file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        spec = msgspec.convert(raw, DeploymentSpec)
    except msgspec.ValidationError as exc:
        raise ConfigError(
            f"{path}: {exc}. Roles are champion, fallback, challenger or canary"
        ) from None
    check_name(spec.name, "deployment name")
    policy = msgspec.convert(
        {k: v for k, v in msgspec.to_builtins(spec).items() if k != "name"}, Policy)
    return spec.name, policy


def policy_from_flags(
    *, champion: str, fallbacks: list[str] | None = None, challengers: list[str] | None = None,
    canary: str | None = None, deadline_ms: float = 100.0, wait_ms: float | None = None,
    decoy: bool = True,
) -> Policy:
    """The policy ``rendezvous deploy create`` builds from its flags."""
    models = [ModelSpec(champion, Role.CHAMPION, wait_ms)]
    models += [ModelSpec(m, Role.FALLBACK) for m in fallbacks or []]
    models += [ModelSpec(m, Role.CHALLENGER) for m in challengers or []]
    if canary:
        models.append(ModelSpec(canary, Role.CANARY))
    return Policy(deadline_ms=deadline_ms, models=models, decoy=decoy)


def apply_policy(registry: Registry, name: str, policy: Policy, *, by: str | None = None,
                 note: str = "") -> PolicyRecord:
    """Record ``policy`` once every one of its models loads and warms up in a model host of
    its own, as serving would load it; raises ``ModelLoadError`` (nothing recorded) if not.
    (With a server running, ask it instead: ``POST /v1/admin/deployments/{d}/apply``.)"""
    from rendezvous.hosting.checks import check_loads

    resolved = registry.resolve_policy(name, policy)
    failed = asyncio.run(check_loads(resolved, home=registry.home, deployment=name,
                                     registry_url=registry.url))
    if failed:
        raise ModelLoadError(name, failed)
    return registry.apply_policy(name, resolved, by=by, note=note)


def promote(registry: Registry, deployment: str, model: str, *,
            documents: Mapping[str, Any], force: bool = False,
            by: str | None = None) -> tuple[PolicyRecord, GateReport]:
    """Promote ``model`` (``NAME@VERSION`` or an alias) to champion of ``deployment`` if the
    policy's gates pass on the monitor's ``documents`` (``compare``, ``accuracy`` and
    ``windows``); raises ``GatesFailedError`` with every row otherwise, unless ``force``.
    The promotion is recorded with the gate rows and the ``forced`` flag as its evidence.
    The one path of ``rendezvous promote`` and ``POST /v1/admin/deployments/{d}/promote``.

    >>> rec, report = promote(reg, "fraud", "fraud@4", documents=docs)  # doctest: +SKIP
    """
    policy, rec = registry.policy(deployment)
    ref = str(registry.resolve(model))
    if ref == policy.champion:
        raise ConfigError(f"{ref} is already the champion of {deployment!r}; nothing to "
                          "promote")
    windows = documents.get("windows") or {}
    report = evaluate(policy.promotion_gates(), policy, ref,
                      compare=documents.get("compare") or {},
                      accuracy=documents.get("accuracy") or {},
                      windows=windows.get("windows", []) if isinstance(windows, Mapping)
                      else windows)
    evidence = {**report.to_dict(), "forced": force, "from_policy": rec.version}
    if not report.passed and not force:
        raise GatesFailedError(deployment, ref, evidence)
    new = registry.promote(deployment, ref, by=by, evidence=evidence,
                           expect_current=rec.version)
    return new, report


def apply(registry: Registry, path: Path, *, by: str | None = None) -> PolicyRecord:
    """Apply a spec file: aliases resolved, signatures checked, every model loaded once, a new
    policy version recorded."""
    name, policy = load_spec(path)
    return apply_policy(registry, name, policy, by=by, note=f"applied from {Path(path).name}")
