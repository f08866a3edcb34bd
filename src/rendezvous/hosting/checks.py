"""Checking that the models of a policy load, before the policy is recorded.

``deploy apply`` while a server runs asks that server, which starts hosts for the added models
and keeps them (``DeploymentRuntime.check_models``). With no server running, each model is
loaded and warmed up in a model host of its own, exactly as serving would, and stopped again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from rendezvous import config
from rendezvous.core.policy import Policy
from rendezvous.hosting.model_host import ModelHost
from rendezvous.hosting.protocol import HostState

__all__ = ["check_loads"]


async def check_loads(policy: Policy, *, home: Path, deployment: str,
                      registry_url: str | None = None) -> dict[str, str]:
    """The models of ``policy`` that cannot be loaded and warmed up, with the reason.

    >>> # failed = await check_loads(policy, home=home, deployment="demo")
    """
    hosts = [ModelHost(home=home, deployment=deployment, model=spec.model, worker="check",
                       registry_url=registry_url) for spec in policy.models]
    for host in hosts:
        await host.start()
    try:
        timeout = config.READY_TIMEOUT_S.get()
        await asyncio.gather(*(h.settled(timeout_s=timeout) for h in hosts))
        return {h.model: h.detail if h.state is HostState.FAILED
                else f"not ready after {timeout:g} s (still {h.state.value})"
                for h in hosts if h.state is not HostState.READY}
    finally:
        await asyncio.gather(*(h.stop() for h in hosts))
