"""``rendezvous demo``: train four models, deploy them as ``demo``, serve, send traffic, report.

The champion is a gradient-boosted classifier, the fallback a fast logistic regression, the
challenger a random forest and the canary a pinned logistic regression trained once on a fixed
sample. Traffic mixes Open Inference Protocol and plain-record requests, single rows and small
batches, and a few bad requests (which get their 4xx and change nothing). Half of the answered
requests get their true label back as feedback; halfway through, a quarter of the input columns
shift by one standard deviation, so the dashboard shows column and canary drift, the accuracy
falling and the alarms that follow.
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
SHIFT_SIGMA = 1.0  # how far the shifted columns move, in standard deviations
# Short windows and baselines so that a 20-second demo shows several points and its alarms.
DEMO_ALARMS = {"window_s": 2.0, "accuracy_baseline_labels": 1000}


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
    registry.apply_policy(DEPLOYMENT, Policy(deadline_ms=60.0, models=specs, alarms=DEMO_ALARMS),
                          note="created by rendezvous demo")
    return [s.model for s in specs]


def _records(rows: np.ndarray) -> list[dict[str, float]]:
    return [{f"f{i}": float(v) for i, v in enumerate(r)} for r in rows]


def _oip(rows: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.ravel().tolist()}]}


async def traffic(url: str, duration: float | None, *, concurrency: int = 8,
                  on_reply: Callable[[int, str], None] | None = None,
                  label_share: float = 0.5, shift_after_s: float | None = None) -> Counter[str]:
    """Mixed demo traffic until ``duration`` seconds pass (forever when None). A share of the
    answered requests get their labels back; after ``shift_after_s`` (default: half the
    duration, or 30 s) a quarter of the columns shift by ``SHIFT_SIGMA`` standard deviations."""
    x, y = make_data()
    x, y = x[5000:], y[5000:]  # the rows held out from training: the same world, unseen
    outcomes: Counter[str] = Counter()
    start = time.monotonic()
    stop_at = None if duration is None else start + duration
    shift_at = start + (shift_after_s if shift_after_s is not None
                        else duration / 2 if duration else 30.0)
    shift = np.zeros(N_FEATURES)
    shift[: N_FEATURES // 4] = SHIFT_SIGMA * x.std(axis=0)[: N_FEATURES // 4]
    rng = random.Random(0)
    labels: list[dict[str, Any]] = []

    async def one(client: httpx.AsyncClient) -> None:
        while stop_at is None or time.monotonic() < stop_at:
            i = rng.randrange(len(x) - 8)
            kind = rng.random()
            n = 4 if kind >= 0.9 else 1
            rows = x[i:i + n] + (shift if time.monotonic() >= shift_at else 0.0)
            if kind < 0.02:  # a bad request: wrong column name
                r = await client.post(f"/v1/deployments/{DEPLOYMENT}/predict",
                                      json=[{"nope": 1.0}])
            elif kind < 0.5:
                r = await client.post(f"/v2/models/{DEPLOYMENT}/infer", json=_oip(rows))
            else:
                r = await client.post(f"/v1/deployments/{DEPLOYMENT}/predict",
                                      json=_records(rows))
            model = r.headers.get("x-rendezvous-model", "")
            outcomes[f"{r.status_code}"] += 1
            if r.status_code == 200 and rng.random() < label_share:
                labels.append({"request_id": r.headers["x-request-id"],
                               "labels": y[i:i + n].tolist()})
            if on_reply is not None:
                on_reply(r.status_code, model)

    async def feed(client: httpx.AsyncClient) -> None:
        while stop_at is None or time.monotonic() < stop_at + 1:
            await asyncio.sleep(0.5)
            batch, labels[:] = labels[:], []
            if batch:
                await client.post(f"/v1/deployments/{DEPLOYMENT}/feedback",
                                  json={"feedback": batch})

    limits = httpx.Limits(max_connections=concurrency + 1,
                          max_keepalive_connections=concurrency + 1)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        await asyncio.gather(*(one(client) for _ in range(concurrency)), feed(client))
    return outcomes
