"""Promotion gates, the watch after a promotion and automatic rollback: the pure evaluation
as tables, then end to end against a real server with labels sent to the feedback endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.analysis.gates import Outcome, Watch, evaluate, watch_verdict
from rendezvous.core.accuracy import PairedOutcomes
from rendezvous.core.analytics import DeploymentAnalytics
from rendezvous.core.compare import reduce
from rendezvous.core.messages import Feedback
from rendezvous.core.policy import Gates
from rendezvous.errors import ConfigError
from rendezvous.roles import monitor as monitor_role
from tests.conftest import register_callable, webhook_listener
from tests.test_analytics_e2e import Serve, scores_seen, until

POLICY = Policy(deadline_ms=100, models=[ModelSpec("a@1", Role.CHAMPION, wait_ms=40),
                                         ModelSpec("b@1", Role.CHALLENGER)])


def docs(*, requests: int = 500, pairs: int = 0, mean: float = 0.0, sd: float = 0.3,
         p99: float = 10.0, errors: int = 0, agreement: float | None = 0.9,
         labels: int | None = None, diff: tuple[float, float] = (-0.1, 0.1)) -> dict[str, Any]:
    """The monitor's documents as the gates read them, for challenger ``b@1``."""
    paired = {"b@1": {"pairs": pairs, "mean_diff": mean, "sd": sd, "kind": "classification"}}
    return {
        "compare": {"models": {"b@1": {"requests": requests, "rows": requests, "errors": 0,
                                       "agreement": agreement,
                                       "diff": {"p5": diff[0], "p95": diff[1]}}}},
        "accuracy": {"feedback": {"joined": pairs if labels is None else labels},
                     "paired": {"champion": "a@1", "models": paired if pairs else {}}},
        "windows": [{"models": {"b@1": {"requests": requests, "statuses": {"error": errors},
                                        "latency_ms": {"p99": p99}}}}],
    }


def outcomes(gates: Gates, **kw: Any) -> dict[str, str]:
    report = evaluate(gates, POLICY, "b@1", **docs(**kw))
    return {r.gate: r.outcome.value for r in report.rows}


@pytest.mark.parametrize(("kw", "gate", "expected"), [
    ({}, "requests", "pass"),
    ({"requests": 199}, "requests", "not enough data"),
    ({"pairs": 150, "mean": 0.03}, "accuracy", "pass"),
    ({"pairs": 150, "mean": -0.3}, "accuracy", "fail"),  # clearly worse
    ({"pairs": 12, "mean": -0.5, "sd": 0.1}, "accuracy", "fail"),  # worse, few labels
    ({"pairs": 50, "mean": 0.05}, "accuracy", "not enough data"),  # < min_labels
    ({"pairs": 150, "mean": -0.02}, "accuracy", "not enough data"),  # inconclusive
    ({"pairs": 5, "mean": -1.0, "sd": 0.0}, "accuracy", "not enough data"),  # < MIN_PAIRS
    ({}, "accuracy", "not enough data"),  # no labels at all (not blocking by default)
    ({"p99": 39.0}, "p99_latency", "pass"),
    ({"p99": 41.0}, "p99_latency", "fail"),  # over the champion's wait_ms (40)
    ({"errors": 5}, "error_rate", "pass"),  # 1% of 500
    ({"errors": 6}, "error_rate", "fail"),
    ({"requests": 0}, "error_rate", "not enough data"),
])
def test_default_gates(kw: dict[str, Any], gate: str, expected: str) -> None:
    assert outcomes(Gates(), **kw)[gate] == expected


@pytest.mark.parametrize(("kw", "passed", "refusing"), [
    ({}, True, []),  # no labels came back: the accuracy gate does not hold it back
    ({"pairs": 150, "mean": 0.03}, True, []),
    ({"pairs": 150, "mean": -0.3}, False, ["accuracy"]),
    ({"pairs": 50, "mean": 0.05}, False, ["accuracy"]),  # labels come: wait for enough
    ({"requests": 10, "p99": 90.0}, False, ["requests", "p99_latency"]),
])
def test_a_policy_without_gates_gets_the_defaults(kw: dict[str, Any], passed: bool,
                                                  refusing: list[str]) -> None:
    report = evaluate(POLICY.promotion_gates(), POLICY, "b@1", **docs(**kw))
    assert report.passed is passed
    assert [r.gate for r in report.failing] == refusing
    doc = report.to_dict()
    assert doc["champion"] == "a@1" and all(
        set(r) >= {"gate", "required", "observed", "outcome", "evidence"} for r in doc["rows"])


def test_declared_gates_agreement_score_diff_and_required_labels() -> None:
    gates = Gates(min_requests=10, min_agreement=0.95, max_score_diff=0.05,
                  require_labels=True)
    got = outcomes(gates, agreement=0.9, diff=(-0.01, 0.2))
    assert got["agreement"] == got["score_diff"] == "fail"
    assert outcomes(gates, agreement=0.97, diff=(-0.01, 0.04))["score_diff"] == "pass"
    report = evaluate(gates, POLICY, "b@1", **docs(agreement=None))
    rows = {r.gate: r for r in report.rows}
    assert rows["agreement"].outcome is Outcome.NO_DATA and rows["accuracy"].refuses


@pytest.mark.parametrize(("raw", "message"), [
    ({"min_requests": "many"}, r"\[gates\].*min_requests"),
    ({"watch": 5}, r"\[gates\].*watch.*known keys: .*watch_s"),
    ({"confidence": 1.5}, r"confidence = 1.5 must be in \[0.5, 1\)"),
    ({"max_error_rate": 2}, r"max_error_rate = 2 must be in \[0, 1\]"),
    ({"watch_s": -1}, r"watch_s = -1 must be 0 or more"),
])
def test_bad_gates_are_refused_naming_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Gates.parse(raw)


def test_a_spec_file_declares_gates(tmp_path: Path) -> None:
    from rendezvous.deploy import load_spec

    spec = tmp_path / "dep.toml"
    head = "name = 'dep'\n[[models]]\nmodel = 'a@1'\nrole = 'champion'\n[gates]\n"
    spec.write_text(head + "min_requests = 50\naccuracy_margin = 0.01\nwatch_s = 30\n")
    _, policy = load_spec(spec)
    assert policy.promotion_gates() == Gates(min_requests=50, accuracy_margin=0.01,
                                             watch_s=30)
    spec.write_text(head + "watch = 30\n")
    with pytest.raises(ConfigError, match=r"dep.toml.*unknown field `watch`.*gates"):
        load_spec(spec)


WATCH = Watch(version=2, champion="b@1", previous="a@1", started_ns=100, until_ns=10**12,
              gates=Gates())


@pytest.mark.parametrize(("alarms", "paired", "reasons"), [
    ([], {}, []),
    ([{"name": "error_rate:b@1", "state": "firing", "since_ns": 50}], {}, ["error_rate:b@1"]),
    ([{"name": "error_rate:a@1", "state": "firing", "since_ns": 150}], {}, []),
    ([{"name": "sla_miss_rate", "state": "firing", "since_ns": 50}], {}, []),  # before
    ([{"name": "sla_miss_rate", "state": "firing", "since_ns": 150}], {}, ["sla_miss_rate"]),
    ([{"name": "error_rate:b@1", "state": "resolved", "since_ns": 150}], {}, []),
    # the previous champion against the new one on the same labels
    ([], {"pairs": 40, "mean_diff": 0.6, "sd": 0.5}, ["previous champion"]),
    ([], {"pairs": 40, "mean_diff": 0.03, "sd": 0.5}, []),  # not shown at 95%
    ([], {"pairs": 5, "mean_diff": 1.0, "sd": 0.0}, []),  # too few pairs
])
def test_watch_verdict(alarms: list[dict[str, Any]], paired: dict[str, Any],
                       reasons: list[str]) -> None:
    accuracy = {"paired": {"champion": "b@1", "models": {"a@1": paired} if paired else {}}}
    got = watch_verdict(WATCH, alarms=alarms, accuracy=accuracy)
    assert len(got) == len(reasons)
    for reason, want in zip(got, reasons, strict=True):
        assert want in reason["reason"]


def test_analytics_pair_label_outcomes_with_the_current_champion() -> None:
    a = DeploymentAnalytics("dep")
    a.set_policy(models=["a@1", "b@1"], champion="a@1", canary=None, deadline_ms=100,
                 references={})
    right, wrong = reduce({"predictions": ["yes"]}), reduce({"predictions": ["no"]})
    for i, (champ, chal) in enumerate([(right, right), (wrong, right), (right, wrong),
                                       (wrong, right)]):
        fb = Feedback(request_id=f"r{i}", deployment="dep", labels=["yes"], at_ns=i)
        assert a.add_feedback(fb, {"a@1": champ, "b@1": chal}, i) == "joined"
    doc = a.accuracy()["paired"]
    assert doc["champion"] == "a@1"
    assert doc["models"]["b@1"]["pairs"] == 4
    assert doc["models"]["b@1"]["mean_diff"] == pytest.approx(0.25)
    assert doc["models"]["b@1"]["kind"] == "classification"
    p = PairedOutcomes()
    for d in (1.0, 0.0, -1.0, 1.0):
        p.add(d)
    assert p.to_dict()["mean_diff"] == pytest.approx(0.25)
    a.set_policy(models=["a@1", "b@1"], champion="b@1", canary=None, deadline_ms=100,
                 references={})
    assert a.accuracy()["paired"] == {"champion": "b@1", "models": {}}  # a new champion


def test_paired_label_evidence_survives_a_restart_under_the_same_champion() -> None:
    """The state a monitor saves keeps the label pairs with the champion: a restart under the
    same champion resumes them (the promotion gates and the watch need not wait for new
    labels); under another champion, or after a policy change that keeps the champion, the
    pairs are what they would have been without the restart."""
    def paired(a: DeploymentAnalytics) -> dict[str, Any]:
        return a.accuracy()["paired"]

    policy = {"models": ["a@1", "b@1"], "canary": None, "deadline_ms": 100, "references": {}}
    a = DeploymentAnalytics("dep")
    a.set_policy(champion="a@1", **policy)
    right, wrong = reduce({"predictions": ["yes"]}), reduce({"predictions": ["no"]})
    for i, (champ, chal) in enumerate([(wrong, right), (right, right), (wrong, right)]):
        fb = Feedback(request_id=f"r{i}", deployment="dep", labels=["yes"], at_ns=i)
        assert a.add_feedback(fb, {"a@1": champ, "b@1": chal}, i) == "joined"
    before = paired(a)
    assert before["models"]["b@1"]["pairs"] == 3
    state = msgspec.json.decode(msgspec.json.encode(a.to_state()))  # as the monitor saves it

    restarted = DeploymentAnalytics("dep")  # the monitor restores, then follows the policy
    restarted.restore(state)
    restarted.set_policy(champion="a@1", **policy)
    assert paired(restarted) == before
    restarted.set_policy(champion="a@1", **{**policy, "models": ["a@1", "b@1", "c@1"]})
    assert paired(restarted) == before  # a new shadow does not change the champion
    policy_first = DeploymentAnalytics("dep")  # the other order
    policy_first.set_policy(champion="a@1", **policy)
    policy_first.restore(state)
    assert paired(policy_first) == before

    promoted = DeploymentAnalytics("dep")
    promoted.restore(state)
    promoted.set_policy(champion="b@1", **policy)
    assert paired(promoted) == {"champion": "b@1", "models": {}}


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def short_feedback_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDEZVOUS_FEEDBACK_WAIT_S", "0.5")


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real local HTTP listener for the alarm webhook: (URL, bodies received)."""
    with webhook_listener() as listener:
        yield listener


def threshold(registry: Registry, name: str, **kwargs: Any) -> str:
    return register_callable(registry, name, "tests.models:make_threshold", **kwargs)


async def predict(client: httpx.AsyncClient, xs: np.ndarray) -> tuple[list[str], list[int]]:
    replies = await asyncio.gather(*(client.post(
        "/v1/deployments/dep/predict", json=[{"x": float(x), "y": 0.0}]) for x in xs))
    return [r.json().get("request_id", "") for r in replies], [r.status_code for r in replies]


async def test_gates_pass_a_better_challenger_and_refuse_a_worse_one(registry: Registry,
                                                                    serve: Serve) -> None:
    from typer.testing import CliRunner

    from rendezvous.cli import app

    champ = threshold(registry, "champ", cut=0.5)  # wrong on 0 < x <= 0.5
    good = threshold(registry, "good", cut=0.0)  # always right
    bad = threshold(registry, "bad", cut=0.0, flip=True)  # always wrong
    registry.apply_policy("dep", Policy(
        deadline_ms=1000, alarms={"window_s": 1.0},
        gates=Gates(min_requests=40, min_labels=40, watch_s=5),
        models=[ModelSpec(champ, Role.CHAMPION), ModelSpec(good, Role.CHALLENGER),
                ModelSpec(bad, Role.CHALLENGER)]).validate())
    xs = np.random.default_rng(7).normal(size=60)
    xs[:10] = np.linspace(0.05, 0.45, 10)  # the champion surely errs on some
    async with serve("dep") as client:
        ids, statuses = await predict(client, xs)
        assert set(statuses) == {200}
        await scores_seen(client, len(ids))
        r = await client.post("/v1/deployments/dep/feedback", json={"feedback": [
            {"request_id": i, "label": "yes" if x > 0 else "no"}
            for i, x in zip(ids, xs, strict=True)]})
        assert r.status_code == 202

        async def evidence_in() -> bool:
            acc = (await client.get("/v1/deployments/dep/accuracy")).json()
            cmp = (await client.get("/v1/deployments/dep/compare")).json()["models"]
            pairs = acc["paired"]["models"]
            return all(pairs.get(m, {}).get("pairs") == 60 for m in (good, bad)) and all(
                cmp.get(m, {}).get("requests") == 60 for m in (good, bad))

        await until(evidence_in, timeout=30)
        auth = {"authorization": f"Bearer {client.proxy_app.admin_token}"}  # type: ignore
        r = await client.post("/v1/admin/deployments/dep/promote", json={"model": bad},
                              headers=auth)
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["code"] == "gates_failed" and "accuracy" in body["error"]
        rows = {row["gate"]: row for row in body["gates"]["rows"]}
        assert rows["accuracy"]["outcome"] == "fail"
        assert rows["accuracy"]["evidence"]["pairs"] == 60
        assert rows["accuracy"]["evidence"]["upper"] < -0.02
        assert rows["requests"]["outcome"] == "pass"

        refused = await asyncio.to_thread(
            CliRunner().invoke, app, ["promote", "dep", bad, "--home", str(registry.home)])
        assert refused.exit_code != 0
        assert "accuracy" in refused.output and "fail" in refused.output

        result = await asyncio.to_thread(CliRunner().invoke, app, [
            "promote", "dep", good, "--json", "--home", str(registry.home)])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output.splitlines()[0])
        assert report["passed"] and report["model"] == good and report["champion"] == champ
        meta = (await client.get("/v2/models/dep")).json()
        assert meta["parameters"]["champion"] == good
    history = registry.policy_history("dep")
    assert [r.action for r in history] == ["apply", "promote"]
    evidence = history[-1].evidence
    assert evidence is not None and evidence["passed"] and evidence["forced"] is False
    accuracy = next(r for r in evidence["rows"] if r["gate"] == "accuracy")
    assert accuracy["outcome"] == "pass" and accuracy["evidence"]["mean_diff"] > 0


async def test_a_forced_promotion_that_starts_failing_rolls_back_by_itself(
        registry: Registry, serve: Serve, hook: tuple[str, list[dict[str, Any]]]) -> None:
    from typer.testing import CliRunner

    from rendezvous.cli import app

    url, received = hook
    champ = threshold(registry, "champ", cut=0.0)
    backup = threshold(registry, "backup", cut=0.0)
    flaky = threshold(registry, "flaky", cut=0.0, fail_after=8)
    registry.apply_policy("dep", Policy(
        deadline_ms=1000, alarms={"window_s": 0.5, "min_requests": 5, "webhook_url": url},
        gates=Gates(watch_s=60),
        models=[ModelSpec(champ, Role.CHAMPION, wait_ms=500),
                ModelSpec(backup, Role.FALLBACK), ModelSpec(flaky, Role.CHALLENGER)]).validate())
    statuses: list[int] = []
    stop = asyncio.Event()
    async with serve("dep") as client:
        auth = {"authorization": f"Bearer {client.proxy_app.admin_token}"}  # type: ignore
        rng = np.random.default_rng(3)

        async def traffic() -> None:
            while not stop.is_set():
                statuses.extend((await predict(client, rng.normal(size=4)))[1])

        sender = asyncio.create_task(traffic())
        r = await client.post("/v1/admin/deployments/dep/promote",
                              json={"model": flaky, "force": True}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["gates"]["forced"] and not r.json()["gates"]["passed"]

        async def rolled_back() -> bool:
            meta = (await client.get("/v2/models/dep")).json()
            return meta["parameters"]["champion"] == champ and bool(received)

        await until(rolled_back, timeout=40)
        await asyncio.sleep(0.5)  # traffic goes on after the switch
        stop.set()
        await sender
    assert statuses and set(statuses) == {200}, f"failed requests: {set(statuses)}"
    history = registry.policy_history("dep")
    assert [r.action for r in history] == ["apply", "promote", "auto-rollback"]
    promoted, back = history[1], history[2]
    assert promoted.evidence is not None and promoted.evidence["forced"] is True
    assert back.by == monitor_role.AUTO_ROLLBACK_BY and back.body == history[0].body
    assert back.evidence is not None and back.evidence["champion"] == flaky
    assert any(f"error_rate:{flaky}" in r["reason"] for r in back.evidence["reasons"])
    event = next(e for e in received if e["alarm"] == "auto_rollback")
    assert event["deployment"] == "dep" and event["policy_version"] == back.version

    shown = await asyncio.to_thread(CliRunner().invoke, app, [
        "deploy", "history", "dep", "--home", str(registry.home)])
    assert shown.exit_code == 0
    assert "auto-rollback" in shown.output and "error_rate" in shown.output
    whole = await asyncio.to_thread(CliRunner().invoke, app, [
        "deploy", "history", "dep", "--json", "--home", str(registry.home)])
    assert json.loads(whole.output)[1]["evidence"]["forced"] is True


async def test_a_server_started_during_a_watch_takes_it_up(registry: Registry,
                                                           serve: Serve) -> None:
    """A promotion recorded while no monitor ran (or before the server restarted) is still
    under watch when the server starts: the monitor takes the watch up from the policy
    record, and the promoted champion that starts failing is rolled back."""
    from rendezvous import deploy

    champ = threshold(registry, "champ", cut=0.0)
    backup = threshold(registry, "backup", cut=0.0)
    flaky = threshold(registry, "flaky", cut=0.0, fail_after=8)
    registry.apply_policy("dep", Policy(
        deadline_ms=1000, alarms={"window_s": 0.5, "min_requests": 5},
        gates=Gates(watch_s=120),
        models=[ModelSpec(champ, Role.CHAMPION, wait_ms=500),
                ModelSpec(backup, Role.FALLBACK), ModelSpec(flaky, Role.CHALLENGER)]).validate())
    promoted, _ = deploy.promote(registry, "dep", flaky, documents={}, force=True)
    statuses: list[int] = []
    async with serve("dep") as client:
        async def watching() -> bool:  # the monitor reads the policy record as it starts
            r = await client.get("/v1/deployments/dep/alarms")
            return r.status_code == 200 and r.json()["watch"] is not None

        await until(watching, timeout=20)
        watch = (await client.get("/v1/deployments/dep/alarms")).json()["watch"]
        assert (watch["policy_version"], watch["champion"], watch["previous"]) == (
            promoted.version, flaky, champ)
        rng = np.random.default_rng(5)

        async def rolled_back() -> bool:
            statuses.extend((await predict(client, rng.normal(size=4)))[1])
            meta = (await client.get("/v2/models/dep")).json()
            return meta["parameters"]["champion"] == champ

        await until(rolled_back, timeout=40)
    assert statuses and set(statuses) == {200}, f"failed requests: {set(statuses)}"
    history = registry.policy_history("dep")
    assert [r.action for r in history] == ["apply", "promote", "auto-rollback"]
    assert history[2].evidence is not None and \
        history[2].evidence["promoted_policy"] == promoted.version


async def test_a_promoted_champion_worse_on_labels_rolls_back_by_itself(
        registry: Registry, serve: Serve) -> None:
    good = threshold(registry, "good", cut=0.0)  # always right
    bad = threshold(registry, "bad", cut=0.0, flip=True)  # always wrong, never an error
    registry.apply_policy("dep", Policy(
        deadline_ms=1000, alarms={"window_s": 1.0}, gates=Gates(watch_s=120),
        models=[ModelSpec(good, Role.CHAMPION), ModelSpec(bad, Role.CHALLENGER)]).validate())
    rng = np.random.default_rng(11)
    async with serve("dep") as client:
        auth = {"authorization": f"Bearer {client.proxy_app.admin_token}"}  # type: ignore
        r = await client.post("/v1/admin/deployments/dep/promote",
                              json={"model": bad, "force": True}, headers=auth)
        assert r.status_code == 200, r.text

        async def labelled_traffic_brings_it_back() -> bool:
            xs = rng.normal(size=10)
            ids, statuses = await predict(client, xs)
            assert set(statuses) == {200}
            r = await client.post("/v1/deployments/dep/feedback", json={"feedback": [
                {"request_id": i, "label": "yes" if x > 0 else "no"}
                for i, x in zip(ids, xs, strict=True)]})
            assert r.status_code == 202
            meta = (await client.get("/v2/models/dep")).json()
            return bool(meta["parameters"]["champion"] == good)

        await until(labelled_traffic_brings_it_back, timeout=90)
    history = registry.policy_history("dep")
    assert [h.action for h in history] == ["apply", "promote", "auto-rollback"]
    back = history[2]
    assert back.by == monitor_role.AUTO_ROLLBACK_BY and back.body == history[0].body
    assert back.evidence is not None and back.evidence["champion"] == bad
    (reason,) = back.evidence["reasons"]  # labels alone: the bad champion raises no error
    assert f"the previous champion {good} beats {bad}" in reason["reason"]
    assert reason["evidence"]["pairs"] >= 10 and reason["evidence"]["lower"] > 0
