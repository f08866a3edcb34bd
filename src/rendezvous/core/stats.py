"""Live statistics of a deployment from its results. Pure: results in, numbers out.

Per model: how many requests it was scheduled for, how many it answered on time, late, with an
error or not at all, how often it was the chosen answer, and its latency quantiles (t-digest,
so memory stays flat however many requests pass).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fastdigest import TDigest

from rendezvous.core.messages import Result, ResultSummary, Status

QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class ModelStats:
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    chosen: int = 0
    latency: TDigest = field(default_factory=lambda: TDigest(max_centroids=200))
    # How long a shadow's worker held requests for its batches (left out of ``latency``).
    held: TDigest = field(default_factory=lambda: TDigest(max_centroids=200))

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            **{s.value: self.statuses.get(s.value, 0) for s in Status},
            "chosen": self.chosen,
            "latency_ms": _quantiles(self.latency),
            "held_ms": _quantiles(self.held),
        }


def _quantiles(digest: TDigest) -> dict[str, float | None]:
    """``QUANTILES`` of ``digest``, None each while it is empty."""
    if not digest.n_values:
        return {f"p{round(p * 100)}": None for p in QUANTILES}
    return {f"p{round(p * 100)}": round(digest.quantile(p), 3) for p in QUANTILES}


@dataclass
class DeploymentStats:
    deployment: str
    requests: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    models: dict[str, ModelStats] = field(default_factory=dict)
    response: TDigest = field(default_factory=lambda: TDigest(max_centroids=200))
    policy_version: int = 0

    def add(self, result: Result | ResultSummary) -> None:
        self.requests += 1
        self.reasons[result.reason.value] += 1
        self.policy_version = max(self.policy_version, result.policy_version)
        if result.responded_ns and result.received_ns:
            self.response.update((result.responded_ns - result.received_ns) / 1e6)
        for model, outcome in result.models.items():
            ms = self.models.get(model)
            if ms is None:
                ms = self.models[model] = ModelStats()
            ms.requests += 1
            ms.statuses[outcome.status.value] += 1
            if outcome.latency_ms is not None and outcome.status is not Status.ERROR:
                ms.latency.update(outcome.latency_ms)
            if outcome.held_ms:
                ms.held.update(outcome.held_ms)
            if model == result.model:
                ms.chosen += 1

    def to_dict(self) -> dict[str, Any]:
        resp = ({f"p{round(p * 100)}": round(self.response.quantile(p), 3) for p in QUANTILES}
                if self.response.n_values else {})
        return {
            "deployment": self.deployment,
            "requests": self.requests,
            "policy_version": self.policy_version,
            "reasons": dict(self.reasons),
            "response_ms": resp,
            "models": {m: s.to_dict() for m, s in sorted(self.models.items())},
        }
