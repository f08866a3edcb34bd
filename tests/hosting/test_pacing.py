"""Workers by role: candidates prompt, shadows paced (``RENDEZVOUS_SHADOW_BATCH_MS``).

A shadow's worker gathers requests into batches; the time a request waited only for that is
recorded in its score (``held_ns``) and left out of the shadow's latency and lateness. A
promoted challenger's worker turns prompt at once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.core import messages
from rendezvous.core.policy import Candidate, Schedule
from rendezvous.roles.worker import SHADOW_PRIORITY, held_ns, urgency
from rendezvous.streams.base import Record
from tests.conftest import register_callable

Serve = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
WAIT_S = 60.0


@pytest.mark.parametrize(("model", "expected"), [
    ("champ@1", (-2, 0.0)), ("fb@1", (-1, 0.0)), ("chal@1", (SHADOW_PRIORITY, 0.05)),
    ("canary@1", (SHADOW_PRIORITY, 0.05)), ("unnamed@1", (SHADOW_PRIORITY, 0.05))])
def test_candidates_are_prompt_and_first_others_are_paced(
        model: str, expected: tuple[int, float]) -> None:
    schedule = Schedule("d", 1, 100.0, (Candidate("champ@1", 50.0), Candidate("fb@1", 80.0)),
                        shadows=("chal@1", "canary@1"))
    assert urgency(schedule, model, shadow_batch_s=0.05) == expected


@pytest.mark.parametrize(("ts", "paused", "resumed", "expected"), [
    (100, 200, 300, 100),  # appended before the pause: waited from its start
    (250, 200, 300, 50),  # appended during the pause: waited from its append
    (300, 200, 300, 0),  # appended as the pause ended
    (400, 200, 300, 0),  # appended after it
])
def test_held_time_counts_only_the_pause(ts: int, paused: int, resumed: int,
                                         expected: int) -> None:
    assert held_ns([Record(1, b"", ts_ns=ts)], paused, resumed) == [expected]


async def _records(client: httpx.AsyncClient, kind: str) -> list[Any]:
    stream = client.proxy_app.server.stream  # type: ignore[attr-defined]
    return await stream.read(f"dep.{kind}", from_offset=1, limit=100_000)


async def _scores(client: httpx.AsyncClient, ids: set[str],
                  models: tuple[str, ...]) -> list[tuple[int, messages.Score]]:
    """Every score with the offset of the record (the batch) that carried it, once each of
    ``models`` has a score of each request in ``ids`` in the log. A worker records its scores
    in the background: an answer may reach the client before its score is committed."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        found = [(r.offset, s) for r in await _records(client, "scores")
                 for s in messages.scores_decoder.decode(r.data)]
        if all(ids <= {s.request_id for _, s in found if s.model == m} for m in models):
            return found
        assert asyncio.get_running_loop().time() < deadline, "scores not recorded in time"
        await asyncio.sleep(0.1)


async def _results(client: httpx.AsyncClient, n: int) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        found = [messages.result_decoder.decode(r.data) for r in await _records(client,
                                                                               "results")]
        if len(found) >= n:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"{len(found)} of {n} results"
        await asyncio.sleep(0.1)


async def _ask(client: httpx.AsyncClient, n: int, model: str) -> set[str]:
    """Send ``n`` requests one after the other, each answered by ``model``; their ids."""
    ids = set()
    for i in range(n):
        r = await client.post("/v1/deployments/dep/predict", json=[{"x": i, "y": 1.0}])
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model and r.json()["reason"] == "preferred"
        ids.add(r.json()["request_id"])
    return ids


def _two_doublers(registry: Registry, monkeypatch: pytest.MonkeyPatch, *,
                  deadline_ms: float) -> tuple[str, str]:
    """A champion and a challenger computing the same; shadows gather for 400 ms."""
    monkeypatch.setenv("RENDEZVOUS_SHADOW_BATCH_MS", "400")
    champ = register_callable(registry, "champ", "tests.models:doubler")
    chal = register_callable(registry, "chal", "tests.models:doubler")
    registry.apply_policy("dep", Policy(deadline_ms=deadline_ms, models=[
        ModelSpec(champ, Role.CHAMPION, wait_ms=deadline_ms * 0.75),
        ModelSpec(chal, Role.CHALLENGER)]))
    return champ, chal


async def test_a_shadow_scores_in_batches_and_its_latency_leaves_the_wait_out(
        registry: Registry, serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    champ, chal = _two_doublers(registry, monkeypatch, deadline_ms=200)
    async with serve("dep") as client:
        asked = await _ask(client, 10, champ)
        results = await _results(client, 10)
        scores = await _scores(client, asked, (champ, chal))
        for _ in range(100):  # status counts the results as it reads them, soon after
            status = (await client.get("/v1/deployments/dep/status")).json()
            if status["requests"] == 10:
                break
            await asyncio.sleep(0.1)
    mine = {m: [(o, s) for o, s in scores if s.model == m] for m in (champ, chal)}
    assert len(mine[champ]) == len(mine[chal]) == 10
    # The champion scored each request as it came (one batch each), never held.
    assert len({o for o, _ in mine[champ]}) == 10
    assert all(s.held_ns == 0 for _, s in mine[champ])
    # The challenger gathered them: fewer batches, and some requests waited for the pause.
    assert len({o for o, _ in mine[chal]}) < 10
    assert any(s.held_ns > 0 for _, s in mine[chal])
    by_id = {s.request_id: s for _, s in mine[chal]}
    for res in results:
        s = by_id[res.request_id]
        outcome = res.models[chal]
        assert outcome.status is messages.Status.ON_TIME  # 200 ms deadline, 400 ms batches
        assert outcome.latency_ms == pytest.approx((s.finished_ns - s.held_ns
                                                    - res.received_ns) / 1e6)
        assert outcome.held_ms == pytest.approx(s.held_ns / 1e6)
    # Status shows how long each model's requests were held, apart from their latency.
    assert status["models"][champ]["held_ms"]["p50"] is None
    assert status["models"][chal]["held_ms"]["p99"] > 0


async def test_a_promoted_challenger_turns_prompt(
        registry: Registry, serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    champ, chal = _two_doublers(registry, monkeypatch, deadline_ms=2000)
    async with serve("dep") as client:
        await _ask(client, 3, champ)
        server = client.proxy_app.server  # type: ignore[attr-defined]
        await server.apply_policy("dep", Policy(deadline_ms=2000, models=[
            ModelSpec(chal, Role.CHAMPION, wait_ms=1500), ModelSpec(champ, Role.CHALLENGER)]),
            by="test")
        asked = await _ask(client, 8, chal)
        after = [(o, s) for o, s in await _scores(client, asked, (chal,))
                 if s.model == chal and s.request_id in asked]
    # Sequential requests to a prompt worker: one batch per request, none held.
    assert len(after) == 8 and len({o for o, _ in after}) == 8
    assert all(s.held_ns == 0 for _, s in after)


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="Linux scheduling policies")
@pytest.mark.parametrize(("preempt", "policy"), [("0", "SCHED_BATCH"), ("1", "SCHED_OTHER")])
async def test_model_hosts_do_not_preempt_the_serving_process_unless_told(
        registry: Registry, serve: Serve, monkeypatch: pytest.MonkeyPatch, preempt: str,
        policy: str) -> None:
    monkeypatch.setenv("RENDEZVOUS_HOSTS_PREEMPT", preempt)
    champ, chal = _two_doublers(registry, monkeypatch, deadline_ms=2000)
    async with serve("dep") as client:
        await _ask(client, 1, champ)
        states = (await client.get("/v1/deployments/dep/status")).json()["model_states"]
        pids = [int(states[m]["pid"]) for m in (champ, chal)]
        assert all(os.sched_getscheduler(pid) == getattr(os, policy) for pid in pids), pids


@pytest.mark.skipif(not hasattr(os, "nice"), reason="Unix priorities")
@pytest.mark.parametrize("steps", ["5", "0"])
async def test_model_hosts_run_the_set_nice_steps_below_the_serving_process(
        registry: Registry, serve: Serve, monkeypatch: pytest.MonkeyPatch, steps: str) -> None:
    monkeypatch.setenv("RENDEZVOUS_HOSTS_NICE", steps)
    champ, chal = _two_doublers(registry, monkeypatch, deadline_ms=2000)
    async with serve("dep") as client:
        await _ask(client, 1, champ)
        states = (await client.get("/v1/deployments/dep/status")).json()["model_states"]
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert [os.getpriority(os.PRIO_PROCESS, int(states[m]["pid"])) for m in (champ, chal)] \
            == [min(19, mine + int(steps))] * 2


def test_a_nice_setting_a_host_cannot_use_fails_it_naming_the_setting(tmp_path: Any) -> None:
    """The host reports ``failed`` with the setting's error and exits as a load failure (not
    restarted: it would fail the same way)."""
    import socket
    import subprocess
    import sys

    from rendezvous.hosting.host_main import LOAD_FAILED
    from rendezvous.hosting.protocol import HEADER, HostReport, HostState, from_host

    ours, theirs = socket.socketpair()
    with ours:
        proc = subprocess.run(
            [sys.executable, "-m", "rendezvous.hosting.host_main", "--fd", str(theirs.fileno()),
             "--home", str(tmp_path), "--deployment", "dep", "--model", "m@1", "--worker", "w"],
            pass_fds=(theirs.fileno(),), env={**os.environ, "RENDEZVOUS_HOSTS_NICE": "many"},
            timeout=60, capture_output=True)
        theirs.close()
        size = HEADER.unpack(ours.recv(HEADER.size))[0]
        report = from_host.decode(ours.recv(size))
    assert proc.returncode == LOAD_FAILED, proc.stderr
    assert isinstance(report, HostReport) and report.state is HostState.FAILED
    assert "RENDEZVOUS_HOSTS_NICE='many'" in report.detail, report.detail


def test_each_score_keeps_its_own_records_held_time_past_an_undecodable_record() -> None:
    """The worker sends each record's held time with the batch; the scorer stamps it on that
    record's score, also when a record before it cannot be decoded (and has no score)."""
    import numpy as np

    from rendezvous.core.schema import infer_signature
    from rendezvous.roles.scoring import BatchScorer

    class Doubles:
        def predict(self, columns: dict[str, Any], n_rows: int) -> dict[str, Any]:
            return {"predictions": np.asarray(columns["f0"]) * 2}

    sig = infer_signature(np.zeros((1, 1)))
    scorer = BatchScorer(Doubles(), sig, deployment="d", model="m@1",  # type: ignore[arg-type]
                         worker="w")

    def request(rid: str, x: float) -> bytes:
        return messages.encode(messages.Request(
            request_id=rid, deployment="d", received_ns=1, deadline_ns=2,
            inputs={"f0": [x]}, n_rows=1))

    scores = scorer.score([request("a", 1.0), b"\xc1 not msgpack", request("b", 2.0)],
                          held_ns=[5, 6, 7])
    assert [(s.request_id, s.held_ns, s.outputs["predictions"]) for s in scores] == [
        ("a", 5, [2.0]), ("b", 7, [4.0])]
    assert [s.held_ns for s in scorer.score([request("c", 3.0)])] == [0]
