"""Faults, against a real nats-server and real role processes (issue 4).

Under steady load: kill -9 one role process at a time and restart it; stop the nats-server for a
few seconds; send the same request twice. Whatever happens, every request answered 200 is in
the results stream exactly once and in the archive, nobody waits past the deadline plus a small
margin, and the restarted consumers resume from their committed positions.

The processes are shared by the tests of this module (starting them is most of the cost); each
test checks only what its own traffic left behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from rendezvous import Registry
from rendezvous.core import messages
from rendezvous.core.policy import Policy
from rendezvous.hosting.topology import ProcessRole
from rendezvous.roles.monitor import stats_from_log
from rendezvous.roles.worker import group_name
from rendezvous.streams.nats.server import LocalNatsServer
from tests.cluster import (
    DEP,
    HANG_LIMIT_S,
    Cluster,
    Outcome,
    drive,
    free_port,
    ids,
    two_models,
)

pytestmark = [pytest.mark.nats, pytest.mark.slow]

SETTLE_S = 20.0  # ack_wait (2 s) + late grace + a loaded machine's slack


@dataclass
class Setup:
    cluster: Cluster
    policy: Policy
    refs: dict[str, str]
    url: str


async def _start(c: Cluster, policy: Policy, refs: dict[str, str], port: int) -> None:
    c.start("rendezvous", ProcessRole.RENDEZVOUS)
    c.start("decoy", ProcessRole.DECOY)
    c.start("champion", ProcessRole.WORKER, models=[refs["champion"]])
    c.start("fallback", ProcessRole.WORKER, models=[refs["fallback"]])
    for role in (ProcessRole.RENDEZVOUS, ProcessRole.DECOY, ProcessRole.WORKER):
        await c.wait_reading(role, policy)
    c.start("proxy", ProcessRole.PROXY, port=port)
    await c.wait_http(f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("faults")
    home = root / "home"
    with Registry(home) as reg:
        refs = two_models(reg)
        policy = reg.policy(DEP)[0]
    nats = LocalNatsServer(root / "nats").start()
    cluster = Cluster(home, nats, root / "logs")
    port = free_port()
    try:
        with asyncio.Runner() as runner:
            runner.run(_start(cluster, policy, refs, port))
        yield Setup(cluster, policy, refs, f"http://127.0.0.1:{port}")
    finally:
        cluster.stop_all()
        nats.stop()


async def _settle(s: Setup, answered: set[str], recorded: set[str]) -> None:
    """Wait until the groups have caught up and ``recorded`` ids are all in the results
    stream, ``answered`` ones in the archive too; then check each is there exactly once."""
    c = s.cluster
    input_groups = ["rendezvous", "decoy", *(group_name(m) for m in s.policy.model_names())]
    deadline = time.monotonic() + SETTLE_S
    while True:
        results, archive = await c.result_ids(), c.archive_ids()
        lag = {g: await c.pending(f"{DEP}.input", g) for g in input_groups}
        missing = (recorded - set(results)) | (answered - set(archive))
        behind = {g: p for g, p in lag.items() if p != (0, 0)}
        if (not missing and not behind) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    assert not behind, f"groups did not catch up (pending, unacked): {behind}\n{c.tails()}"
    assert recorded <= set(results), \
        f"{len(recorded - set(results))} requests missing from results\n{c.tails()}"
    assert answered <= set(archive), \
        f"{len(answered - set(archive))} answered requests missing from the archive\n{c.tails()}"
    twice = {r: n for r, n in results.items() if n > 1}
    assert not twice, f"recorded more than once: {twice}"
    assert all(archive[r] == 1 for r in answered)


def _check_answers(outcomes: list[Outcome], *, allow_conn: bool) -> None:
    allowed = [o for o in outcomes if o.status == 200 or (isinstance(o.status, int)
               and o.status in (503, 504)) or (allow_conn and o.status == "conn")]
    wrong = [(o.status, round(o.elapsed, 3)) for o in outcomes if o not in allowed]
    assert not wrong, f"unexpected answers: {wrong[:10]}"
    slowest = max(o.elapsed for o in outcomes)
    assert slowest < HANG_LIMIT_S, f"a request waited {slowest:.2f} s (limit {HANG_LIMIT_S} s)"
    assert all(o.retry_after for o in outcomes if o.status == 503), "503 without Retry-After"


async def _back(s: Setup, name: str) -> None:
    """Until the restarted process does its job again."""
    c = s.cluster
    if name == "proxy":
        await c.wait_http(s.url)
        return
    role = ProcessRole(c.procs[name].args[c.procs[name].args.index("--role") + 1])
    models = [s.refs[name]] if role is ProcessRole.WORKER else []
    await c.wait_reading(role, s.policy, models=models)


@pytest.mark.parametrize("name", ["champion", "rendezvous", "decoy", "proxy"])
async def test_kill_9_a_role_under_load_then_restart_it(setup: Setup, name: str) -> None:
    c = setup.cluster
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    load = asyncio.ensure_future(drive(setup.url, stop, outcomes))
    try:
        await asyncio.sleep(1.0)
        c.kill(name)
        await asyncio.sleep(1.0)  # traffic goes on while it is down
        c.restart(name)
        await _back(setup, name)
        back_at = time.monotonic()
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await load
    _check_answers(outcomes, allow_conn=name == "proxy")
    assert any(o.status == 200 and o.at > back_at for o in outcomes), \
        f"no request answered after the restart\n{c.tails()}"
    if name != "rendezvous":
        # With the rendezvous server up, a dead worker, decoy or proxy costs no answers.
        assert not [o for o in outcomes if o.status == 503], c.tails()
    # Requests the proxy answered with an error after appending them (it names their ids)
    # are decided and recorded too, once the rendezvous server is back.
    await _settle(setup, ids(outcomes, 200), ids(outcomes, 200, 503, 504))


async def test_nats_outage_answers_503_and_recovers_by_itself(setup: Setup) -> None:
    c = setup.cluster
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    load = asyncio.ensure_future(drive(setup.url, stop, outcomes))
    try:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(c.nats.stop)
        down_at = time.monotonic()
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(base_url=setup.url, timeout=5) as client:
            assert (await client.get("/v2/health/live")).status_code == 200
            ready = await client.get("/v2/health/ready")
            assert ready.status_code == 503, ready.text
        await asyncio.sleep(1.5)
        await asyncio.to_thread(c.nats.start)
        up_at = time.monotonic()
        async with asyncio.timeout(20):
            while not any(o.status == 200 and o.at > up_at for o in outcomes):
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await load
    _check_answers(outcomes, allow_conn=False)
    during = [o for o in outcomes if down_at + 0.5 < o.at < up_at]
    assert during and all(o.status == 503 for o in during), \
        f"while NATS was down: {sorted({o.status for o in during})}"
    await _settle(setup, ids(outcomes, 200), ids(outcomes, 200))


async def test_the_same_request_twice_gives_one_result_and_one_archive_row(
    setup: Setup,
) -> None:
    c = setup.cluster
    second = free_port()
    c.start("proxy-2", ProcessRole.PROXY, port=second)
    other = f"http://127.0.0.1:{second}"
    await c.wait_http(other)
    body = [{"x": 1.0, "y": 2.0}]

    async def post(url: str, rid: str) -> tuple[int, float]:
        t0 = time.monotonic()
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            r = await client.post(f"/v1/deployments/{DEP}/predict", json=body,
                                  headers={"x-request-id": rid})
        return r.status_code, time.monotonic() - t0

    # A retry to the same proxy gets the same answer (200, or 504 on a starved machine).
    first, again = await post(setup.url, "dup-same"), await post(setup.url, "dup-same")
    assert first[0] == again[0] and first[0] in (200, 504), (first, again)
    # Retries through two proxies at once: the input stream keeps one of them. The proxy
    # whose copy was dropped cannot get the answer (it went to the other one) and says so.
    both = await asyncio.gather(post(setup.url, "dup-two"), post(other, "dup-two"))
    assert all(code in (200, 503, 504) and t < HANG_LIMIT_S for code, t in both), both
    # A retry of a request that was answered long ago (client timeout, then another proxy).
    late = [await post(other, "dup-late"), await post(setup.url, "dup-late")]
    assert all(code in (200, 503, 504) and t < HANG_LIMIT_S for code, t in late), late

    rids = {"dup-same", "dup-two", "dup-late"}
    await _settle(setup, rids, rids)
    async with c.connection() as stream:
        inputs = await stream.read(messages.topic(DEP, "input"), from_offset=1,
                                   limit=1_000_000)
    copies = [r.msg_id for r in inputs if r.msg_id in rids]
    assert sorted(copies) == sorted(rids), "a duplicate reached the input stream"
    # `rendezvous status --streams nats://…` reads the same results stream.
    stats = await stats_from_log(c.home, DEP, streams=c.nats.url)
    assert stats.requests == sum((await c.result_ids()).values()) and stats.requests >= len(rids)
