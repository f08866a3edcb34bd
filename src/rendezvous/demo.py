"""``rendezvous demo``: train four models, deploy them as ``demo``, serve, send traffic, report.

The champion is a gradient-boosted classifier, the fallback a fast logistic regression, the
challenger a random forest and the canary a pinned logistic regression trained once on a fixed
sample. Traffic mixes Open Inference Protocol and plain-record requests, single rows and small
batches, and a few bad requests (which get their 4xx and change nothing).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from rendezvous.core.policy import ModelSpec, Policy, Role
from rendezvous.registry import Registry

DEPLOYMENT = "demo"
N_FEATURES = 12


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    return make_classification(n_samples=6000, n_features=N_FEATURES, n_informative=6,
                               random_state=seed)


def setup(registry: Registry) -> list[str]:
    """Train and register the demo models and deploy them (once per data directory)."""
    if DEPLOYMENT in registry.deployments():
        pol, _ = registry.policy(DEPLOYMENT)
        return pol.model_names()
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = make_data()
    train, test = slice(0, 5000), slice(5000, None)
    models: list[tuple[str, Any, Role, float | None]] = [
        ("demo-hgb", HistGradientBoostingClassifier(max_iter=60, random_state=0), Role.CHAMPION,
         15.0),
        ("demo-logreg", LogisticRegression(max_iter=500), Role.FALLBACK, None),
        ("demo-forest", RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0),
         Role.CHALLENGER, None),
        ("demo-canary", LogisticRegression(max_iter=500, C=0.1), Role.CANARY, None),
    ]
    specs = []
    for name, model, role, wait in models:
        rows = slice(0, 1000) if role is Role.CANARY else train  # the canary stays small, pinned
        model.fit(x[rows], y[rows])
        acc = float((model.predict(x[test]) == y[test]).mean())
        mv = registry.register(name, model, example=x[rows], metrics={"accuracy": acc},
                               params={"role_hint": role.value},
                               description=f"demo {role.value}")
        specs.append(ModelSpec(mv.ref, role, wait))
        registry.set_alias(name, "canary" if role is Role.CANARY else "live", mv.version)
    registry.apply_policy(DEPLOYMENT, Policy(deadline_ms=60.0, models=specs),
                          note="created by rendezvous demo")
    return [s.model for s in specs]


def _records(rows: np.ndarray) -> list[dict[str, float]]:
    return [{f"f{i}": float(v) for i, v in enumerate(r)} for r in rows]


def _oip(rows: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.ravel().tolist()}]}


async def traffic(url: str, duration: float | None, *, concurrency: int = 8,
                  on_reply: Callable[[int, str], None] | None = None) -> Counter[str]:
    """Mixed demo traffic until ``duration`` seconds pass (forever when None)."""
    x, _ = make_data(seed=1)
    outcomes: Counter[str] = Counter()
    stop_at = None if duration is None else time.monotonic() + duration
    rng = random.Random(0)

    async def one(client: httpx.AsyncClient) -> None:
        while stop_at is None or time.monotonic() < stop_at:
            i = rng.randrange(len(x) - 8)
            kind = rng.random()
            if kind < 0.02:  # a bad request: wrong column name
                r = await client.post(f"/v1/deployments/{DEPLOYMENT}/predict",
                                      json=[{"nope": 1.0}])
            elif kind < 0.5:
                r = await client.post(f"/v2/models/{DEPLOYMENT}/infer", json=_oip(x[i:i + 1]))
            else:
                n = 1 if kind < 0.9 else 4
                r = await client.post(f"/v1/deployments/{DEPLOYMENT}/predict",
                                      json=_records(x[i:i + n]))
            model = r.headers.get("x-rendezvous-model", "")
            outcomes[f"{r.status_code}"] += 1
            if on_reply is not None:
                on_reply(r.status_code, model)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        await asyncio.gather(*(one(client) for _ in range(concurrency)))
    return outcomes

