"""Replay and what-if end to end: a real server records traffic and feedback; then a
challenger is replayed on the archive (the very bytes, resumable), what-if reproduces every
recorded decision and shows a swap's effect, and the archive is re-sent to a running server."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.analysis import evidence
from rendezvous.analysis.replay import replay
from rendezvous.analysis.times import Span, TimeRangeError
from rendezvous.analysis.traffic import drive
from rendezvous.analysis.whatif import ReplayNeededError, whatif
from rendezvous.errors import NotFoundError, RendezvousError
from tests.conftest import register_callable
from tests.test_cli import run as run_cli

Serve = Callable[..., Any]
N = 48


def data(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return x, (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype(int)


def _outputs_by_request(table: Any) -> dict[str, dict[str, Any]]:
    return {rid: msgspec.msgpack.decode(out) for rid, out in
            zip(table["request_id"].to_pylist(), table["outputs"].to_pylist(), strict=True)}


def models(registry: Registry) -> dict[str, str]:
    x, y = data(0, 1000)
    refs = {name: registry.register(name, LogisticRegression(C=c).fit(x, y), example=x).ref
            for name, c in (("champ", 1.0), ("chal", 0.001), ("fresh", 0.01))}
    registry.apply_policy("dep", policy(refs["champ"], refs["chal"]))
    return refs


def policy(champion: str, challenger: str) -> Policy:
    return Policy(deadline_ms=2000, models=[ModelSpec(champion, Role.CHAMPION),
                                            ModelSpec(challenger, Role.CHALLENGER)])


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except NotFoundError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


async def record_traffic(client: httpx.AsyncClient, home: Path) -> list[str]:
    x, y = data(1, N)
    replies = []
    for i in range(0, N, 8):  # a few requests of two rows, the rest of one
        batch = [x[i:i + 2]] + [x[j:j + 1] for j in range(i + 2, i + 8)]
        replies += await asyncio.gather(*(client.post(
            "/v1/deployments/dep/predict", json={
                "records": [{f"f{k}": float(v) for k, v in enumerate(r)} for r in rows],
                "meta": {"user": f"u{i}"}}) for rows in batch))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    ids = [r.json()["request_id"] for r in replies]
    first_rows = [k for k in range(N) if k % 8 != 1]  # each request's first row
    labels = [{"request_id": rid, "label": int(y[k])}  # one label per one-row request
              for rid, k in zip(ids, first_rows, strict=True) if k % 8][:30]
    r = await client.post("/v1/deployments/dep/feedback", json={"feedback": labels})
    assert r.status_code == 202 and r.json()["accepted"] == 30, r.text
    n = len(ids)
    await eventually(lambda: evidence.results(home, "dep", Span()).num_rows == n)
    await eventually(lambda: evidence.scores(home, "dep", Span()).num_rows == 2 * n)
    return ids


async def test_replay_whatif_and_traffic_replay(registry: Registry, serve: Serve,
                                                tmp_path: Path) -> None:
    refs = models(registry)
    home = registry.home
    async with serve("dep") as client:
        ids = await record_traffic(client, home)
    n = len(ids)
    assert n == 42

    first = await replay(home, "dep", refs["chal"])
    assert first["scored_now"] == n and first["rows_now"] == N and first["errors_now"] == 0
    assert first["digests"] == {"checked": n, "matched": n}
    assert first["judged_requests"] == n and first["champions"] == [refs["champ"]]
    assert first["against_champion"]["rows"] == N
    assert 0.5 < first["against_champion"]["agreement"] <= 1
    assert first["labelled_requests"] == 30
    assert first["labels"][refs["chal"]]["labels"] == 30
    assert first["latency_by_batch"][0]["batch_up_to"] == 1
    again = await replay(home, "dep", refs["chal"])
    assert again["scored_now"] == 0 and again["already_scored"] == n
    assert again["judged_requests"] == n
    # The replay's scores are the challenger's served scores: same bytes in, same model. The
    # probabilities may differ in their last bits only: a matrix product over a micro-batch of
    # other rows (served ones gather by timing) can round differently.
    served = evidence.scores(home, "dep", Span(), models=[refs["chal"]])
    replayed = evidence.scores(home, "dep", Span(), replay_of=refs["chal"])
    assert replayed.schema == served.schema
    mine, theirs = _outputs_by_request(served), _outputs_by_request(replayed)
    assert mine.keys() == theirs.keys() and len(mine) == n
    for rid, out in mine.items():
        assert out["predictions"] == theirs[rid]["predictions"], rid
        np.testing.assert_allclose(out["probabilities"], theirs[rid]["probabilities"],
                                   rtol=1e-12, atol=0, err_msg=rid)

    same = await whatif(home, "dep", policy(refs["champ"], refs["chal"]))
    assert same["reproduced"]["matched"] == n == same["reproduced"]["exact_record"]
    assert same["changed_answers"] == 0 and same["new"]["share"] == {refs["champ"]: 1.0}
    assert same["actual"]["labels"]["labels"] == 30 == same["new"]["labels"]["labels"]
    swapped = await whatif(home, "dep", policy(refs["chal"], refs["champ"]))
    assert swapped["actual"]["share"] == {refs["champ"]: 1.0}
    assert swapped["new"]["share"] == {refs["chal"]: 1.0}
    assert swapped["changed_answers"] == n and swapped["reproduced"]["matched"] == n

    with pytest.raises(ReplayNeededError) as info:
        await whatif(home, "dep", policy(refs["fresh"], refs["champ"]))
    assert f"rendezvous replay dep --model {refs['fresh']}" in str(info.value)
    await replay(home, "dep", refs["fresh"], sample=10)
    fresh = await whatif(home, "dep", policy(refs["fresh"], refs["champ"]))
    assert fresh["replayed_models"][refs["fresh"]] >= 1
    assert sum(fresh["new"]["share"].values()) == pytest.approx(1.0)

    async with serve("dep") as client:
        sent = await drive(home, "dep", str(client.base_url), speed=20, limit=30)
    assert sent["sent"] == 30 and sent["statuses"] == {"200": 30}
    assert sent["latency_ms"]["p50"] is not None


async def test_bad_input_names_the_value_and_the_fix(registry: Registry, home: Path) -> None:
    refs = models(registry)
    with pytest.raises(NotFoundError, match="nope"):
        await replay(home, "nope", refs["chal"])
    with pytest.raises(NotFoundError, match="ghost"):
        await replay(home, "dep", "ghost@1")
    with pytest.raises(NotFoundError, match="serve the deployment with the decoy"):
        await replay(home, "dep", refs["chal"])  # nothing archived yet
    with pytest.raises(NotFoundError, match="results archive"):
        await whatif(home, "dep", policy(refs["chal"], refs["champ"]))
    with pytest.raises(RendezvousError, match="--speed 0"):
        await drive(home, "dep", "http://127.0.0.1:9", speed=0)
    with pytest.raises(TimeRangeError):
        Span.parse("2000-01-02", "2000-01-01", now_ns=time.time_ns())


@pytest.mark.parametrize(("args", "message"), [
    (["replay", "dep", "--model", "champ@1", "--from", "yesterday"], "--from 'yesterday'"),
    (["replay", "dep", "--model", "champ@1", "--from", "1h", "--to", "2h"], "holds nothing"),
    (["replay", "dep", "--traffic", "--speed", "2"], "needs the server: --to URL"),
    (["replay", "dep", "--to", "http://127.0.0.1:9"], "add --traffic"),
    (["replay", "dep"], "needs --model"),
    (["replay", "dep", "--model", "champ@1"], "serve the deployment with the decoy"),
    (["whatif", "dep", "--policy", "missing.toml"], "missing.toml does not exist"),
])
def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch, registry: Registry,
                                 home: Path, args: list[str], message: str) -> None:
    models(registry)
    code, out = run_cli(capsys, monkeypatch, home, *args)
    text = " ".join(out.split())  # the console wraps long messages (paths) at its width
    assert code == 1 and message in text and "Traceback" not in out
    assert text.startswith("error:") and text.count("error:") == 1, out


def test_cli_whatif_of_another_deployment_is_refused(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        registry: Registry, home: Path, tmp_path: Path) -> None:
    models(registry)
    spec = tmp_path / "other.toml"
    spec.write_text('name = "other"\n[[models]]\nmodel = "champ@1"\nrole = "champion"\n')
    code, out = run_cli(capsys, monkeypatch, home, "whatif", "dep", "--policy", str(spec))
    assert code == 1 and "not 'dep'" in out


def spec(home: Path, pol: Policy) -> Path:
    path = home / "new.toml"
    lines = [f"deadline_ms = {pol.deadline_ms}"] + [
        f'[[models]]\nmodel = "{m.model}"\nrole = "{m.role.value}"' for m in pol.models]
    path.write_text('name = "dep"\n' + "\n".join(lines) + "\n")
    return path


async def cli_prints(home: Path, args: list[str], *expected: str) -> None:
    """Run the installed command line in its own process and check what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rendezvous.cli", *args, "--home", str(home),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"})
    out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, out
    for text in expected:
        assert text in out, out


async def test_whatif_shares_match_a_live_run_of_the_new_policy(registry: Registry,
                                                                serve: Serve) -> None:
    """Record traffic under one policy, ask what-if for another, then serve that policy on the
    same traffic (replayed) and compare: a champion that fails on x > 0 leaves those requests
    to its fallback, in the evaluation and live alike."""
    home = registry.home
    picky = register_callable(registry, "picky", "tests.models:make_failing", message="no",
                              above=0.0)
    double = register_callable(registry, "double", "tests.models:doubler")
    registry.apply_policy("dep", Policy(deadline_ms=2000, models=[
        ModelSpec(double, Role.CHAMPION), ModelSpec(picky, Role.CHALLENGER)]))
    new = Policy(deadline_ms=2000, models=[ModelSpec(picky, Role.CHAMPION),
                                           ModelSpec(double, Role.FALLBACK)])
    xs = np.random.default_rng(3).normal(size=40)
    async with serve("dep") as client:
        replies = await asyncio.gather(*(client.post(
            "/v1/deployments/dep/predict", json=[{"x": float(x), "y": 1.0}]) for x in xs))
        assert all(r.status_code == 200 for r in replies)
        await eventually(lambda: evidence.results(home, "dep", Span()).num_rows == 40)
        await eventually(lambda: evidence.scores(home, "dep", Span()).num_rows == 80)
    predicted = await whatif(home, "dep", new)
    expected = {picky: int((xs <= 0).sum()), double: int((xs > 0).sum())}
    await cli_prints(home, ["whatif", "dep", "--policy", str(spec(home, new))],
                     "the record reproduces 40 of 40", "share picky@1", "response ms p99")
    await cli_prints(home, ["replay", "dep", "--model", picky, "--from", "1h"],
                     "40 requests scored now", "digests matched 40 of 40")
    assert predicted["new"]["reasons"] == {"preferred": expected[picky],
                                           "fallback": expected[double]}

    registry.apply_policy("dep", new)
    async with serve("dep") as client:
        sent = await drive(home, "dep", str(client.base_url), speed=50)
        assert sent["statuses"] == {"200": 40}

        def live() -> dict[str, int]:
            res = evidence.results(home, "dep", Span()).to_pylist()
            return dict(Counter(r["chosen"] for r in res if r["policy_version"] == 2))

        await eventually(lambda: sum(live().values()) == 40)
    assert live() == {m: n for m, n in expected.items() if n}
    assert {m: round(n / 40, 6) for m, n in live().items()} == predicted["new"]["share"]
