"""Issue 8 at the HTTP edge, each against a real server on a free port: reused request ids,
row caps, slow clients, Host and token checks, bad bodies, the audit trail, and a log that
cannot be written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.errors import LogInUseError, NotFoundError, SlaMissError
from rendezvous.hosting.runtime import Server
from rendezvous.roles.decoy import read_archive
from rendezvous.roles.scorekeeper import read_scores
from tests.conftest import register_callable
from tests.test_hardening_engine import fill_disk, free_disk, wait_for

Serve = Callable[..., Any]
ROW = {"x": 1.0, "y": 2.0}


def deploy(registry: Registry, name: str = "dep", value: float = 1.0,
           sleep_ms: float = 0.0, deadline_ms: float = 2000.0) -> str:
    ref = register_callable(registry, f"{name}-m", "tests.models:make_constant", value=value,
                            sleep_ms=sleep_ms)
    registry.apply_policy(name, Policy(deadline_ms=deadline_ms,
                                       models=[ModelSpec(ref, Role.CHAMPION)]))
    return ref


def oip(n: int, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [n], "datatype": "FP64", "data": [1.0] * n},
                       {"name": "y", "shape": [n], "datatype": "FP64", "data": [2.0] * n}],
            **extra}


# -- item 2 ------------------------------------------------------------------------------------


async def test_a_second_server_on_the_same_home_is_refused(registry: Registry,
                                                           serve: Serve) -> None:
    deploy(registry)
    async with serve("dep"):
        second = Server(registry.home, ["dep"])
        with pytest.raises(LogInUseError, match=rf"process {os.getpid()} serving http://"):
            await second.start()


# -- item 3: request ids ----------------------------------------------------------------------


async def test_a_reused_request_id_never_returns_another_requests_answer(
        registry: Registry, serve: Serve) -> None:
    a = deploy(registry, "a", value=1.0)
    b = deploy(registry, "b", value=2.0)
    async with serve("a", "b") as client:
        h = {"x-request-id": "client-42"}
        ra = await client.post("/v1/deployments/a/predict", json=[ROW], headers=h)
        rb = await client.post("/v1/deployments/b/predict", json=[ROW], headers=h)
        assert (ra.status_code, rb.status_code) == (200, 200)
        assert ra.json()["model"] == a and rb.json()["model"] == b
        assert rb.json()["predictions"] == [2.0]
        again = await client.post("/v1/deployments/a/predict", json=[ROW], headers=h)
        assert again.json() == ra.json()  # an idempotent retry
        other = await client.post("/v1/deployments/a/predict", json=[ROW, ROW, ROW],
                                  headers=h)
        assert other.status_code == 409 and "client-42" in other.json()["error"]
        r = await client.post("/v2/models/a/infer", json=oip(1, id="abc\n"))
        assert r.status_code == 400 and "request id" in r.json()["error"]


# -- item 6: rows, sla_miss -------------------------------------------------------------------


async def test_rows_over_the_cap_are_413_naming_it(registry: Registry, serve: Serve,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    deploy(registry)
    monkeypatch.setenv("RENDEZVOUS_MAX_ROWS", "5")
    async with serve("dep") as client:
        r = await client.post("/v1/deployments/dep/predict", json=[ROW] * 6)
        assert r.status_code == 413 and "limit of 5 rows" in r.json()["error"]
        assert "RENDEZVOUS_MAX_ROWS" in r.json()["error"]
        r = await client.post("/v2/models/dep/infer", json=oip(6))
        assert r.status_code == 413 and "limit of 5 rows" in r.json()["error"]
        r = await client.post("/v1/deployments/dep/predict", json=[ROW] * 5)
        assert r.status_code == 200


async def test_a_large_body_is_decoded_off_the_loop_and_answered(registry: Registry,
                                                                 serve: Serve) -> None:
    deploy(registry)
    async with serve("dep") as client:
        r = await client.post("/v1/deployments/dep/predict", json=[ROW] * 5000)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 5000
        r = await client.post("/v2/models/dep/infer", json=oip(5000))
        assert r.status_code == 200


async def test_an_answer_that_never_comes_is_a_504_not_a_503(registry: Registry,
                                                             serve: Serve) -> None:
    deploy(registry)
    async with serve("dep") as client:
        proxy = client.proxy_app  # type: ignore[attr-defined]
        fut = asyncio.get_running_loop().create_future()
        proxy.pending[("dep", "lost")] = fut
        proxy._expire(("dep", "lost"), 100.0)
        with pytest.raises(SlaMissError):
            fut.result()
        del proxy.pending[("dep", "lost")]


async def test_sla_misses_and_errors_are_counted(registry: Registry, serve: Serve) -> None:
    deploy(registry, sleep_ms=300, deadline_ms=50)
    async with serve("dep") as client:
        r = await client.post("/v1/deployments/dep/predict", json=[ROW])
        assert r.status_code == 504 and r.json()["reason"] == "sla_miss"
        metrics = (await client.get("/metrics")).text
        assert 'rendezvous_responses_total{deployment="dep",reason="sla_miss"} 1.0' in metrics


# -- item 8: slow clients ---------------------------------------------------------------------


def _raw(url: str, data: bytes, *, wait_s: float = 30.0, then: list[bytes] | None = None,
         pause_s: float = 0.0) -> bytes:
    """What the server sends back for ``data``, and for each of ``then`` sent ``pause_s``
    after the last, until it closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as s:
        s.sendall(data)
        for piece in then or []:
            time.sleep(pause_s)
            s.sendall(piece)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_slow_headers_and_bodies_time_out_and_huge_headers_are_refused(
        registry: Registry, serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    deploy(registry)
    monkeypatch.setenv("RENDEZVOUS_HEADER_TIMEOUT_S", "0.3")
    monkeypatch.setenv("RENDEZVOUS_BODY_TIMEOUT_S", "0.3")
    monkeypatch.setenv("RENDEZVOUS_MAX_BODY_BYTES", "2000")
    async with serve("dep") as client:
        url = str(client.base_url).rstrip("/")
        slow_headers = await asyncio.to_thread(
            _raw, url, b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert slow_headers.startswith(b"HTTP/1.1 408")
        slow_body = await asyncio.to_thread(
            _raw, url, b"POST /v1/deployments/dep/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Length: 100\r\n\r\n[{\"x\"")
        assert slow_body.startswith(b"HTTP/1.1 408"), slow_body
        assert b"RENDEZVOUS_BODY_TIMEOUT_S" in slow_body
        # Refused by its declared length (413) at once; the rest never comes, and the server
        # closes the connection once the body has paused past its limit.
        refused = await asyncio.to_thread(
            _raw, url, b"POST /v1/deployments/dep/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Length: 5000\r\n\r\n[{", wait_s=20)
        assert refused.startswith(b"HTTP/1.1 413"), refused
        assert refused.count(b"HTTP/1.1") == 1, refused  # closed, nothing more
        big = await asyncio.to_thread(
            _raw, url, b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
                       + b"a" * 40_000 + b"\r\n\r\n")
        assert big.startswith(b"HTTP/1.1 431")
        assert (await client.get("/v2/health/live")).status_code == 200


async def test_a_body_that_keeps_coming_is_answered_however_long_it_takes_in_all(
        registry: Registry, serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    # The body's limit is on each pause, not on the whole: four pauses of 0.6 s, 2.4 s in all,
    # under a 2 s limit (a loaded machine would have to stall the server 1.4 s to fail it).
    deploy(registry)
    monkeypatch.setenv("RENDEZVOUS_BODY_TIMEOUT_S", "2")
    body = json.dumps([ROW]).encode()
    async with serve("dep") as client:
        url = str(client.base_url).rstrip("/")
        answer = await asyncio.to_thread(
            _raw, url, b"POST /v1/deployments/dep/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body),
            then=[body[:5], body[5:10], body[10:15], body[15:]], pause_s=0.6)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert b'"model":"dep-m@1"' in answer, answer


# -- DNS rebinding, tokens, TLS settings ------------------------------------------------------


async def test_host_header_must_name_this_server(registry: Registry, serve: Serve,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    deploy(registry)
    async with serve("dep") as client:
        r = await client.post("/v1/deployments/dep/predict", json=[ROW],
                              headers={"host": "attacker.example"})
        assert r.status_code == 400 and "RENDEZVOUS_ALLOWED_HOSTS" in r.json()["error"]
        for host in ("localhost", "127.0.0.1:1234", "[::1]:80"):
            r = await client.get("/v2/health/live", headers={"host": host})
            assert r.status_code == 200, host
    monkeypatch.setenv("RENDEZVOUS_ALLOWED_HOSTS", "models.internal")
    async with serve("dep") as client:
        r = await client.get("/v2/health/live", headers={"host": "models.internal:8000"})
        assert r.status_code == 200


async def test_an_inference_token_guards_inference_only(registry: Registry, serve: Serve,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    deploy(registry)
    monkeypatch.setenv("RENDEZVOUS_INFER_TOKEN", "s3cret")
    async with serve("dep") as client:
        r = await client.post("/v1/deployments/dep/predict", json=[ROW])
        assert r.status_code == 401 and "RENDEZVOUS_INFER_TOKEN" in r.json()["error"]
        r = await client.post("/v2/models/dep/infer", json=oip(1),
                              headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await client.post("/v1/deployments/dep/predict", json=[ROW],
                              headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 200


async def test_tls_settings_must_come_in_pairs(registry: Registry, serve: Serve,
                                               monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    from rendezvous.errors import ConfigError

    deploy(registry)
    monkeypatch.setenv("RENDEZVOUS_SSL_CERTFILE", str(tmp_path / "cert.pem"))
    with pytest.raises(ConfigError, match="RENDEZVOUS_SSL_KEYFILE"):
        async with serve("dep"):
            pass


# -- low: bodies and tokens that used to be 500s ----------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v2/models/dep/infer", b'{"inputs": [{"name": "x", "shape": [1], '
                                     b'"datatype": "FP64", "data": ' + b"[" * 1000 + b"]" * 1000
                                     + b"}]}"),
    ("POST", "/v1/deployments/dep/predict", b"[" * 1000 + b"]" * 1000),
    ("POST", "/v1/deployments/dep/predict", b'[{"x": ' + b"[" * 1000 + b"]" * 1000
     + b', "y": 1}]'),
    ("POST", "/v1/deployments/dep/predict", b'[{"x": "\xff\xfe", "y": 1.0}]'),
    ("POST", "/v2/models/dep/infer", b"\xff\xfe\xfd"),
])
async def test_bad_bodies_are_4xx(registry: Registry, serve: Serve, method: str, path: str,
                                  body: bytes) -> None:
    deploy(registry)
    async with serve("dep") as client:
        r = await client.request(method, path, content=body,
                                 headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["error"]


async def test_admin_refusals_are_401_naming_the_run_file(registry: Registry,
                                                          serve: Serve) -> None:
    deploy(registry)
    async with serve("dep") as client:
        for auth in ("Bearer é-not-ascii", "Bearer wrong", ""):
            r = await client.post("/v1/admin/deployments/dep/rollback",
                                  headers={"authorization": auth.encode("utf-8")})
            assert r.status_code == 401, auth
            assert "run/dep.json" in r.json()["error"]
        token = client.proxy_app.admin_token  # type: ignore[attr-defined]
        r = await client.post("/v1/admin/deployments/dep/promote",
                              content=b'{"model": ' + b"[" * 1000 + b"]" * 1000 + b"}",
                              headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 400


async def test_model_metadata_declares_the_datatypes_infer_returns(registry: Registry,
                                                                   serve: Serve) -> None:
    ref = register_callable(registry, "ints", "tests.models:make_constant", value=3)
    registry.apply_policy("dep", Policy(deadline_ms=2000, models=[ModelSpec(ref,
                                                                            Role.CHAMPION)]))
    async with serve("dep") as client:
        before = (await client.get("/v2/models/dep")).json()
        r = await client.post("/v2/models/dep/infer", json=oip(2))
        assert r.status_code == 200
        returned = {o["name"]: o["datatype"] for o in r.json()["outputs"]}
        meta = (await client.get("/v2/models/dep")).json()
        declared = {o["name"]: o["datatype"] for o in meta["outputs"]}
        assert declared == returned
        assert all(o["datatype"] == returned.get(o["name"]) for o in before["outputs"])


# -- item 11: who asked -----------------------------------------------------------------------


async def test_the_audit_trail_records_who_asked(registry: Registry, serve: Serve) -> None:
    champ = deploy(registry)
    other = register_callable(registry, "other", "tests.models:doubler")
    registry.apply_policy("dep", Policy(deadline_ms=2000, models=[
        ModelSpec(champ, Role.CHAMPION), ModelSpec(other, Role.CHALLENGER)]))
    async with serve("dep") as client:
        token = client.proxy_app.admin_token  # type: ignore[attr-defined]
        r = await client.post("/v1/admin/deployments/dep/promote",
                              json={"model": other, "force": True},
                              headers={"authorization": f"Bearer {token}",
                                       "x-rendezvous-user": "alice"})
        assert r.status_code == 200, r.text
    last = registry.policy_history("dep")[-1]
    assert last.by.startswith("alice (admin token, 127.0.0.1:")


async def test_a_cli_promote_through_a_running_server_records_the_user(
        registry: Registry, serve: Serve) -> None:
    import getpass

    from typer.testing import CliRunner

    from rendezvous.cli import app

    champ = deploy(registry)
    other = register_callable(registry, "other", "tests.models:doubler")
    registry.apply_policy("dep", Policy(deadline_ms=2000, models=[
        ModelSpec(champ, Role.CHAMPION), ModelSpec(other, Role.CHALLENGER)]))
    async with serve("dep"):
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["promote", "dep", other, "--force", "--home",
                                        str(registry.home)])
        assert result.exit_code == 0, result.output
        assert "running server" in result.output
    last = registry.policy_history("dep")[-1]
    assert last.by.startswith(f"{getpass.getuser()} (admin token, 127.0.0.1:")


async def test_concurrent_admin_writes_are_200_or_409(registry: Registry, serve: Serve) -> None:
    refs = [register_callable(registry, f"m{i}", "tests.models:doubler") for i in range(3)]
    registry.apply_policy("dep", Policy(deadline_ms=2000, models=[
        ModelSpec(refs[0], Role.CHAMPION), ModelSpec(refs[1], Role.CHALLENGER),
        ModelSpec(refs[2], Role.CHALLENGER)]))
    async with serve("dep") as client:
        token = client.proxy_app.admin_token  # type: ignore[attr-defined]
        auth = {"authorization": f"Bearer {token}"}

        async def one(i: int) -> httpx.Response:
            if i % 2:
                return await client.post("/v1/admin/deployments/dep/rollback", headers=auth)
            return await client.post("/v1/admin/deployments/dep/promote", headers=auth,
                                     json={"model": refs[1 + (i // 2) % 2], "force": True})

        answers = await asyncio.gather(*(one(i) for i in range(16)))
    assert all(r.status_code in (200, 409, 422) for r in answers), [
        (r.status_code, r.text) for r in answers if r.status_code not in (200, 409, 422)]
    versions = [r.version for r in registry.policy_history("dep")]
    assert versions == list(range(1, len(versions) + 1))


# -- item 10: a log that cannot be written ----------------------------------------------------


async def test_while_the_log_cannot_be_written_readiness_is_503_and_writes_resume(
        registry: Registry, serve: Serve) -> None:
    deploy(registry)
    async with serve("dep") as client:
        server = client.proxy_app.server  # type: ignore[attr-defined]
        assert (await client.post("/v1/deployments/dep/predict", json=[ROW])).status_code == 200
        fill_disk(server.stream)
        big = [{"x": float(i), "y": 0.5} for i in range(3000)]
        r = await client.post("/v1/deployments/dep/predict", json=big)
        assert r.status_code == 503
        assert (await client.get("/v2/health/ready")).status_code == 503
        status = (await client.get("/v1/deployments/dep/status")).json()
        assert status["backlog"]["stream_writable"] is False
        assert status["backlog"]["stream_backlog"] >= 1
        assert "rendezvous_stream_writable 0.0" in (await client.get("/metrics")).text
        free_disk(server.stream)
        await wait_for(lambda: server.stream.health().writable)
        assert (await client.get("/v2/health/ready")).status_code == 200
        assert (await client.post("/v1/deployments/dep/predict", json=[ROW])).status_code == 200


async def test_the_decoy_retries_a_failed_archive_write_while_running(registry: Registry,
                                                                      serve: Serve) -> None:
    deploy(registry)
    blocker = registry.home / "archive" / "dep"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")  # the archive cannot be written
    async with serve("dep") as client:
        for _ in range(3):
            r = await client.post("/v1/deployments/dep/predict", json=[ROW])
            assert r.status_code == 200
        rt = client.proxy_app.server.runtimes["dep"]  # type: ignore[attr-defined]
        await wait_for(lambda: rt.decoy.backlog >= 3)
        status = (await client.get("/v1/deployments/dep/status")).json()
        assert status["backlog"]["decoy_rows"] >= 3
        blocker.unlink()
        await wait_for(lambda: rt.decoy.backlog == 0)
        assert read_archive(registry.home, "dep").num_rows == 3

        def scores_archived() -> bool:  # the scorekeeper kept its rows for the retry too
            with contextlib.suppress(NotFoundError):
                return read_scores(registry.home, "dep").num_rows == 3 * len(rt.hosts)
            return False

        await wait_for(scores_archived)


async def test_results_that_fail_to_be_recorded_are_recorded_once_the_disk_has_room(
        registry: Registry, serve: Serve) -> None:
    from rendezvous.core import messages

    deploy(registry, sleep_ms=300)
    async with serve("dep") as client:
        server = client.proxy_app.server  # type: ignore[attr-defined]
        rt = server.runtimes["dep"]
        answer = asyncio.ensure_future(
            client.post("/v1/deployments/dep/predict", json=[ROW]))
        await wait_for(lambda: server.stream._topics["dep.input"].durable >= 1)
        # While the champion scores, every write fails (small ones would still fit in a
        # "full" file's free pages, so refuse writes outright).
        server.stream._writer.conn.execute("PRAGMA query_only = ON")
        await wait_for(lambda: rt.rendezvous.backlog > 0)
        assert not server.stream.health().writable
        server.stream._writer.conn.execute("PRAGMA query_only = OFF")
        r = await answer
        assert r.status_code in (200, 504, 503)

        async def recorded() -> list[bytes]:
            return [rec.data for rec in await server.stream.read("dep.results", from_offset=1)]

        for _ in range(400):
            if await recorded():
                break
            await asyncio.sleep(0.05)
        (result,) = [messages.result_decoder.decode(b) for b in await recorded()]
        assert result.request_id == r.headers.get("x-request-id", result.request_id)
        await wait_for(lambda: rt.rendezvous.backlog == 0)  # its retry went through too
        assert server.stream.health().backlog == 0
