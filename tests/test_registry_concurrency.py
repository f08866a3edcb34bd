"""Several processes registering and moving aliases at once: versions stay unique and dense,
alias history stays one unbroken chain."""

from __future__ import annotations

import itertools
import multiprocessing
from pathlib import Path

from rendezvous import Registry
from tests.registry_db import (  # noqa: F401  (both backends)
    move_alias_many,
    register_many,
    registry,
    registry_url,
)

PROCS = 4
EACH = 6


def test_concurrent_registrations_and_alias_moves(registry: Registry, home: Path,
                                                  registry_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as separate servers
    with ctx.Pool(PROCS) as pool:
        got = pool.starmap(register_many, [(str(home), registry_url, "m", EACH)] * PROCS)
    versions = sorted(v for vs in got for v in vs)
    assert versions == list(range(1, PROCS * EACH + 1))
    assert [v.version for v in registry.versions("m")] == versions

    plans = [[(i * EACH + k) % len(versions) + 1 for k in range(EACH)] for i in range(PROCS)]
    with ctx.Pool(PROCS) as pool:
        pool.starmap(move_alias_many, [(str(home), registry_url, "m", p) for p in plans])
    history = registry.alias_history("m")
    assert len(history) == PROCS * EACH
    assert history[0].from_version is None
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version  # no move lost or interleaved
    assert registry.resolve("m@live").version == history[-1].to_version
