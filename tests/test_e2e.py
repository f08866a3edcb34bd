"""End to end: a real HTTP server on a free port, real stream log and archive files."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.core import messages
from rendezvous.roles.decoy import export
from rendezvous.streams import open_stream
from tests.conftest import register_callable

Serve = Callable[..., Any]


def four_models(registry: Registry, *, champion_sleep_ms: float = 0.0,
                deadline_ms: float = 400.0, wait_ms: float = 30.0) -> dict[str, str]:
    refs = {
        "champion": register_callable(registry, "champ", "tests.models:make_constant",
                                      value=1.0, sleep_ms=champion_sleep_ms),
        "fallback": register_callable(registry, "fb", "tests.models:make_constant", value=2.0),
        "challenger": register_callable(registry, "chal", "tests.models:doubler"),
        "canary": register_callable(registry, "can", "tests.models:make_constant", value=3.0),
    }
    registry.apply_policy("dep", Policy(deadline_ms=deadline_ms, models=[
        ModelSpec(refs["champion"], Role.CHAMPION, wait_ms=wait_ms),
        ModelSpec(refs["fallback"], Role.FALLBACK),
        ModelSpec(refs["challenger"], Role.CHALLENGER),
        ModelSpec(refs["canary"], Role.CANARY),
    ]))
    return refs


async def read_topic(home: Path, topic: str) -> list[bytes]:
    stream = await open_stream("embedded", home=home)
    try:
        return [r.data for r in await stream.read(topic, from_offset=1, limit=1_000_000)]
    finally:
        await stream.close()


async def test_slow_champion_is_answered_by_the_fallback(registry: Registry,
                                                         serve: Serve) -> None:
    refs = four_models(registry, champion_sleep_ms=150, deadline_ms=400, wait_ms=30)
    async with serve("dep") as client:
        t0 = time.perf_counter()
        r = await client.post("/v1/deployments/dep/predict", json=[{"x": 1.0, "y": 2.0}])
        elapsed = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == refs["fallback"] and body["reason"] == "fallback"
        assert body["predictions"] == [2.0]
        assert r.headers["x-rendezvous-model"] == refs["fallback"]
        assert r.headers["x-request-id"] == body["request_id"]
        assert elapsed < 0.4, "the fallback answer must come before the deadline"
        # The result is filed once the champion's score is in (after its 150 ms); stopping
        # before that would leave the request undecided for the next start. The monitor
        # counts it once it is filed.
        deadline = time.monotonic() + 30
        while (await client.get("/v1/deployments/dep/status")).json()["requests"] < 1:
            assert time.monotonic() < deadline, "the result was never filed"
            await asyncio.sleep(0.05)
    results = [messages.result_decoder.decode(b)
               for b in await read_topic(registry.home, "dep.results")]
    assert len(results) == 1
    statuses = {m: o.status.value for m, o in results[0].models.items()}
    # The champion finished after its wait but before the deadline: on time, not chosen.
    assert statuses == {refs[k]: "on_time" for k in refs}
    assert results[0].models[refs["champion"]].latency_ms >= 150


async def test_late_scores_are_kept_and_marked_late(registry: Registry, serve: Serve) -> None:
    refs = four_models(registry, champion_sleep_ms=300, deadline_ms=100, wait_ms=20)
    async with serve("dep", ) as client:
        r = await client.post("/v1/deployments/dep/predict", json=[{"x": 1.0, "y": 2.0}])
        assert r.status_code == 200 and r.json()["model"] == refs["fallback"]
        await asyncio.sleep(0.5)  # the champion's late score arrives within the grace window
    (result,) = [messages.result_decoder.decode(b)
                 for b in await read_topic(registry.home, "dep.results")]
    assert result.models[refs["champion"]].status.value == "late"
    assert result.models[refs["champion"]].latency_ms > 100


async def test_every_model_sees_identical_inputs_and_the_decoy_archives_each_once(
        registry: Registry, serve: Serve, tmp_path: Path) -> None:
    four_models(registry)
    sent: dict[str, list[tuple[float, float]]] = {}
    async with serve("dep") as client:
        async def one(i: int) -> None:
            rows = [(float(i), float(j) / 7) for j in range(1 + i % 3)]
            if i % 2:
                r = await client.post("/v1/deployments/dep/predict",
                                      json=[{"x": x, "y": y} for x, y in rows])
            else:
                r = await client.post("/v2/models/dep/infer", json={"inputs": [
                    {"name": "x", "shape": [len(rows)], "datatype": "FP64",
                     "data": [x for x, _ in rows]},
                    {"name": "y", "shape": [len(rows)], "datatype": "FP64",
                     "data": [y for _, y in rows]}]})
            assert r.status_code == 200, r.text
            sent[r.headers["x-request-id"]] = rows

        await asyncio.gather(*(one(i) for i in range(60)))
    scores = [s for b in await read_topic(registry.home, "dep.scores")
              for s in messages.scores_decoder.decode(b)]
    digests: dict[str, dict[str, str]] = defaultdict(dict)
    for s in scores:
        digests[s.request_id][s.model] = s.input_digest
    assert set(digests) == set(sent)
    for rid, per_model in digests.items():
        assert len(per_model) == 4, f"{rid} was not scored by every model"
        assert len(set(per_model.values())) == 1, f"models saw different bytes for {rid}"

    n = export(registry.home, "dep", tmp_path / "archive.parquet")
    table = pq.read_table(tmp_path / "archive.parquet").to_pylist()
    assert n == sum(len(rows) for rows in sent.values())
    keys = [(row["request_id"], row["row"]) for row in table]
    assert len(keys) == len(set(keys)), "a request was archived twice"
    for row in table:
        assert (row["x"], row["y"]) == sent[row["request_id"]][row["row"]]
        assert row["input_digest"] == next(iter(digests[row["request_id"]].values()))


async def test_promote_and_rollback_under_traffic_lose_nothing(registry: Registry,
                                                               serve: Serve) -> None:
    refs = four_models(registry)
    new = register_callable(registry, "fresh", "tests.models:make_constant", value=9.0)
    statuses: list[int] = []
    answered_by: list[str] = []
    stop = asyncio.Event()
    async with serve("dep") as client:
        token = client.proxy_app.admin_token
        auth = {"authorization": f"Bearer {token}"}

        async def traffic() -> None:
            while not stop.is_set():
                r = await client.post("/v1/deployments/dep/predict", json=[{"x": 1, "y": 1}])
                statuses.append(r.status_code)
                answered_by.append(r.json().get("model", ""))

        tasks = [asyncio.create_task(traffic()) for _ in range(4)]
        await asyncio.sleep(0.4)
        r = await client.post("/v1/admin/deployments/dep/promote",
                              json={"model": new, "force": True}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["champion"] == new
        await asyncio.sleep(0.4)
        r = await client.post("/v1/admin/deployments/dep/rollback", headers=auth)
        assert r.status_code == 200 and r.json()["champion"] == refs["champion"]
        await asyncio.sleep(0.4)
        stop.set()
        await asyncio.gather(*tasks)
        meta = (await client.get("/v2/models/dep")).json()
        assert meta["parameters"]["champion"] == refs["champion"]
    assert statuses and set(statuses) == {200}, f"failed requests: {set(statuses)}"
    assert new in answered_by and refs["champion"] in answered_by
    results = await read_topic(registry.home, "dep.results")
    assert len(results) == len(statuses), "every answered request is recorded exactly once"


async def test_bad_input_gets_a_clear_status_and_loses_nothing(
        registry: Registry, serve: Serve, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    four_models(registry)
    monkeypatch.setenv("RENDEZVOUS_MAX_BODY_BYTES", "2000")
    async with serve("dep") as client:
        cases: list[tuple[str, Any, int, str]] = [
            ("/v1/deployments/dep/predict", b"{not json", 400, "malformed JSON"),
            ("/v2/models/dep/infer", b'{"inputs": 3}', 400, "Open Inference Protocol"),
            ("/v1/deployments/dep/predict", [{"x": 1.0, "z": 2.0}], 422, "'z'"),
            ("/v1/deployments/dep/predict", [{"x": "a", "y": 2.0}], 422, "column 'x'"),
            ("/v2/models/dep/infer", {"inputs": [
                {"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0]},
                {"name": "y", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}]},
             422, "input 'x'"),
            ("/v1/deployments/dep/predict", [{"x": 1.0, "y": 2.0}] * 200, 413, "2000 bytes"),
            ("/v1/deployments/nope/predict", [{"x": 1.0, "y": 2.0}], 404, "unknown deployment"),
            ("/v2/models/nope/infer", {"inputs": []}, 404, "serves: dep"),
        ]
        for path, payload, status, fragment in cases:
            if isinstance(payload, bytes):
                r = await client.post(path, content=payload,
                                      headers={"content-type": "application/json"})
            else:
                r = await client.post(path, json=payload)
            assert r.status_code == status, (path, r.text)
            assert fragment in r.json()["error"], (fragment, r.json())
        r = await client.get("/v1/deployments/dep/predict")
        assert r.status_code == 405
        r = await client.post("/v1/admin/deployments/dep/reload")
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        good = await client.post("/v1/deployments/dep/predict", json=[{"x": 1.0, "y": 2.0}])
        assert good.status_code == 200
    assert export(registry.home, "dep", tmp_path / "a.parquet") == 1


async def test_sla_miss_is_a_504_with_request_id(registry: Registry, serve: Serve) -> None:
    slow = register_callable(registry, "slow", "tests.models:make_constant", value=1.0,
                             sleep_ms=400)
    registry.apply_policy("solo", Policy(deadline_ms=80, models=[
        ModelSpec(slow, Role.CHAMPION)]))
    async with serve("solo") as client:
        r = await client.post("/v1/deployments/solo/predict", json=[{"x": 1.0, "y": 2.0}])
        assert r.status_code == 504
        body = r.json()
        assert body["reason"] == "sla_miss" and body["request_id"]
        assert "80 ms deadline" in body["error"]
        ok = await client.get("/v2/health/ready")
        assert ok.status_code == 200


async def test_failing_models_are_errors_not_crashes(registry: Registry, serve: Serve) -> None:
    bad = register_callable(registry, "bad", "tests.models:make_failing", message="boom",
                            above=100.0)
    good = register_callable(registry, "good", "tests.models:doubler")
    registry.apply_policy("dep", Policy(deadline_ms=300, models=[
        ModelSpec(bad, Role.CHAMPION, wait_ms=100), ModelSpec(good, Role.FALLBACK)]))
    async with serve("dep") as client:
        r = await client.post("/v1/deployments/dep/predict", json=[{"x": 1000.0, "y": 2.0}])
        assert r.status_code == 200 and r.json()["model"] == good
        assert r.json()["predictions"] == [2002.0]
        status = (await client.get("/v1/deployments/dep/status")).json()
        for _ in range(50):
            if status["requests"]:
                break
            await asyncio.sleep(0.02)
            status = (await client.get("/v1/deployments/dep/status")).json()
        assert status["models"][bad]["error"] == 1
        assert status["models"][good]["chosen"] == 1
        assert status["model_states"][bad]["state"] == "ready"  # an error is not a crash


async def test_a_model_that_cannot_predict_its_examples_is_failed(registry: Registry,
                                                                  serve: Serve) -> None:
    bad = register_callable(registry, "bad", "tests.models:make_failing", message="boom")
    good = register_callable(registry, "good", "tests.models:doubler")
    registry.apply_policy("dep", Policy(deadline_ms=300, models=[
        ModelSpec(bad, Role.CHAMPION, wait_ms=50), ModelSpec(good, Role.FALLBACK)]))
    async with serve("dep") as client:
        states = (await client.get("/v2/models/dep")).json()["parameters"]["model_states"]
        assert states[bad]["state"] == "failed" and "boom" in states[bad]["detail"]
        assert (await client.get("/v2/health/ready")).status_code == 200  # a fallback is up
        r = await client.post("/v1/deployments/dep/predict", json=[{"x": 1.0, "y": 2.0}])
        assert r.status_code == 200 and r.json()["model"] == good


async def test_oip_metadata_and_health(registry: Registry, serve: Serve) -> None:
    four_models(registry)
    async with serve("dep") as client:
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        meta = (await client.get("/v2/models/dep")).json()
        assert [i["name"] for i in meta["inputs"]] == ["x", "y"]
        assert meta["inputs"][0]["datatype"] == "FP64"
        r = await client.post("/v2/models/dep/infer", json={"id": "client-1", "inputs": [
            {"name": "input-0", "shape": [1, 2], "datatype": "FP64", "data": [[1.0, 2.0]]}]})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["id"] == "client-1" and out["outputs"][0]["data"] == [1.0]
        again = await client.post("/v2/models/dep/infer", json={"id": "client-1", "inputs": [
            {"name": "input-0", "shape": [1, 2], "datatype": "FP64", "data": [[1.0, 2.0]]}]})
        assert again.json() == out  # a client retry with the same id is not scored twice
        metrics = (await client.get("/metrics")).text
        assert 'rendezvous_responses_total{deployment="dep",reason="preferred"}' in metrics
