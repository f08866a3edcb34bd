"""Roles in separate processes on NATS: role selection, the return channel between processes,
policy changes through the control topic, the monitor's endpoint, and the local launcher."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from rendezvous import Registry
from rendezvous.cli import app
from rendezvous.errors import ConfigError
from rendezvous.hosting.plans import wait_for_groups
from rendezvous.hosting.serving import running
from rendezvous.hosting.topology import ProcessRole, Roles, groups_of
from rendezvous.streams.nats.engine import NatsStream
from rendezvous.streams.nats.returns import NatsReturns
from rendezvous.streams.nats.server import LocalNatsServer
from tests.cluster import DEP, ENV, ROOT, free_port, two_models
from tests.conftest import register_callable

# -- choosing roles (no server) -----------------------------------------------------------


def test_roles_default_to_everything() -> None:
    roles = Roles()
    assert roles.everything and all(r in roles for r in ProcessRole)
    assert roles.label == "all roles"


def test_a_worker_role_names_its_model_versions() -> None:
    roles = Roles.only("worker", ["fraud@3", "fraud@4"])
    assert ProcessRole.WORKER in roles and ProcessRole.PROXY not in roles
    assert roles.label == "worker (fraud@3, fraud@4)"


@pytest.mark.parametrize(("role", "models", "match"), [
    ("cook", (), "unknown role 'cook'; use one of: proxy, worker"),
    ("proxy", ("fraud@3",), "--model applies to workers only"),
    ("worker", ("fraud@champion",), "names an alias"),
    ("worker", ("fraud",), "invalid model reference"),
])
def test_invalid_role_choices_say_what_to_do(role: str, models: tuple[str, ...],
                                             match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Roles.only(role, models)


@pytest.mark.parametrize(("args", "match"), [
    (["--role", "proxy", "--streams", "local-nats"], "point it at a running server"),
    (["--model", "a@1"], "add --role worker"),
    (["--replicas", "2"], "--role worker or --streams local-nats"),
    (["--role", "decoy", "--replicas", "2", "--streams", "nats://127.0.0.1:1"],
     "--role worker or --streams local-nats"),
    (["--monitor-port", "9000"], "applies to --streams local-nats"),
])
def test_serve_refuses_option_combinations_that_mean_nothing(args: list[str], match: str,
                                                            home: Path) -> None:
    result = CliRunner().invoke(app, ["serve", DEP, "--home", str(home), *args])
    assert isinstance(result.exception, ConfigError), result.output
    assert match in str(result.exception)


async def test_one_role_per_process_needs_a_shared_engine(registry: Registry) -> None:
    two_models(registry)
    with pytest.raises(ConfigError, match="needs a stream engine shared between processes"):
        async with running([DEP], roles=Roles.only("decoy"), home=registry.home,
                           streams="embedded"):
            pass


def test_groups_of_each_role(registry: Registry) -> None:
    refs = two_models(registry)
    policy = registry.policy(DEP)[0]
    assert groups_of(DEP, policy, ProcessRole.WORKER) == [
        ("dep.input", f"model-{refs['champion']}"), ("dep.input", f"model-{refs['fallback']}")]
    assert groups_of(DEP, policy, ProcessRole.WORKER, ["x@1"]) == [("dep.input", "model-x@1")]
    assert groups_of(DEP, policy, ProcessRole.RENDEZVOUS) == [
        ("dep.input", "rendezvous"), ("dep.scores", "rendezvous")]
    assert groups_of(DEP, policy, ProcessRole.PROXY) == []


# -- on a real nats-server, in this process ----------------------------------------------


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    with LocalNatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
async def nats_stream(nats_server: LocalNatsServer) -> AsyncIterator[NatsStream]:
    stream = await NatsStream.connect(nats_server.url)
    yield stream
    await stream.close()


@pytest.mark.nats
async def test_results_reach_a_proxy_in_another_process(nats_stream: NatsStream,
                                                        nats_server: LocalNatsServer) -> None:
    got: list[bytes] = []
    listener = NatsReturns(nats_stream.nc)
    listener.listen("proxy-A", got.append)
    await listener.ready()
    sender = await NatsStream.connect(nats_server.url)
    try:
        await NatsReturns(sender.nc).send("proxy-A", b"result-1")
        await NatsReturns(sender.nc).send("proxy-B", b"nobody listens: dropped")
        async with asyncio.timeout(5):
            while not got:
                await asyncio.sleep(0.01)
        listener.forget("proxy-A")
        await listener.ready()
        await NatsReturns(sender.nc).send("proxy-A", b"after forget")
        await asyncio.sleep(0.2)
    finally:
        await sender.close()
        await listener.close()
    assert got == [b"result-1"]


@pytest.mark.nats
async def test_proxy_and_backend_in_separate_servers_follow_one_policy(
    registry: Registry, nats_server: LocalNatsServer, nats_stream: NatsStream, tmp_path: Path,
) -> None:
    refs = two_models(registry)
    backend = Roles(frozenset(set(ProcessRole) - {ProcessRole.PROXY}))
    url = nats_server.url
    async with running([DEP], roles=backend, home=registry.home, streams=url,
                       port=0) as backend_serving:
        server, monitor_url = backend_serving.server, backend_serving.url
        assert backend_serving.proxy is None
        policy = registry.policy(DEP)[0]
        await wait_for_groups(nats_stream, [p for r in backend.run
                                            for p in groups_of(DEP, policy, r)], timeout_s=20)
        async with (
            # As on another machine: its own data directory, the registry shared by URL.
            running([DEP], home=tmp_path / "elsewhere", streams=url, port=0,
                    roles=Roles.only("proxy"),
                    registry_url=f"sqlite:///{registry.home / 'registry.db'}") as serving,
            httpx.AsyncClient(base_url=serving.edge[1], timeout=5) as client,
        ):
            proxy = serving.edge[0]
            assert (await client.get("/v2/health/ready")).status_code == 200
            r = await client.post(f"/v1/deployments/{DEP}/predict", json=[{"x": 1, "y": 2}])
            assert r.status_code == 200, r.text
            # (The fallback answers if a cold champion misses its wait on a loaded machine.)
            assert r.json()["model"] in (refs["champion"], refs["fallback"])
            # Model states travel from the worker process: the proxy reports them too.
            async with asyncio.timeout(20):
                while (states := (await client.get(f"/v2/models/{DEP}")).json()[
                        "parameters"]["model_states"]).get(
                            refs["fallback"], {}).get("state") != "ready":
                    await asyncio.sleep(0.1)
            assert states[refs["champion"]]["isolation"] == "process"
            # Statistics live with the monitor; the proxy says where to ask.
            status = await client.get(f"/v1/deployments/{DEP}/status")
            assert status.status_code == 404 and "--role monitor" in status.json()["error"]

            # Promote through the proxy: the rendezvous server in the other Server follows.
            admin = {"authorization": f"Bearer {proxy.admin_token}"}
            r = await client.post(f"/v1/admin/deployments/{DEP}/promote", headers=admin,
                                  json={"model": refs["fallback"], "force": True})
            assert r.status_code == 200, r.text
            version = r.json()["policy_version"]
            async with asyncio.timeout(5):
                while server.runtimes[DEP].policy_version != version:
                    await asyncio.sleep(0.05)
            r = await client.post(f"/v1/deployments/{DEP}/predict", json=[{"x": 1, "y": 2}])
            assert r.json()["model"] == refs["fallback"] and r.json()["policy_version"] == version

        assert monitor_url is not None
        async with httpx.AsyncClient(base_url=monitor_url, timeout=5) as client:
            async with asyncio.timeout(5):
                while (doc := (await client.get(f"/v1/deployments/{DEP}/status")).json())[
                        "requests"] < 2:
                    await asyncio.sleep(0.05)
            assert doc["policy_version"] == version
            assert sum(m["chosen"] for m in doc["models"].values()) == doc["requests"]
            metrics = await client.get("/metrics")
            assert b"rendezvous_model_chosen" in metrics.content
            assert (await client.get("/v1/deployments/nope/status")).status_code == 404


# -- the local launcher, as a user runs it ------------------------------------------------


def _role_processes(home: Path) -> dict[int, list[str]]:
    """pid -> command line of every role process serving ``home``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if str(home) in args and "--role" in args:
            found[int(entry.name)] = args
    return found


def _cli(home: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "rendezvous.cli", *args, "--home", str(home)],
                          cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def _until(check: object, timeout_s: float = 30.0, log: Path | None = None) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not await check():  # type: ignore[operator]
                await asyncio.sleep(0.1)
    except TimeoutError:
        tail = "\n".join(log.read_text().splitlines()[-40:]) if log else ""
        raise AssertionError(f"{check.__name__} still false after {timeout_s:g} s\n"  # type: ignore[attr-defined]
                             f"{tail}") from None


def _launch(home: Path, port: int, log: Path, *extra: str,
            deployments: tuple[str, ...] = (DEP,),
            monitor_port: int | None = None) -> subprocess.Popen[bytes]:
    # The monitor's default port (--port + 1) may be taken on a busy machine: pick a free one.
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "rendezvous.cli", "serve", *deployments, "--streams",
             "local-nats", "--home", str(home), "--port", str(port),
             "--monitor-port", str(monitor_port or free_port()), *extra],
            cwd=ROOT, env={**os.environ, **ENV}, stdout=out, stderr=subprocess.STDOUT)


async def _serving(client: httpx.AsyncClient, launcher: subprocess.Popen[bytes],
                   log: Path) -> None:
    async def ready() -> bool:
        assert launcher.poll() is None, log.read_text()
        try:
            return (await client.get("/v2/health/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    await _until(ready, 60, log)


def _nats_servers(home: Path) -> list[Path]:
    return [p for p in Path("/proc").iterdir()
            if p.name.isdigit() and str(home / "nats") in _cmdline(p)]


def _cleanup(launcher: subprocess.Popen[bytes], home: Path) -> None:
    if launcher.poll() is None:
        launcher.kill()
        launcher.wait()
    for pid in [*_role_processes(home), *(int(p.name) for p in _nats_servers(home))]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.nats
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
async def test_local_nats_runs_every_role_as_its_own_process(registry: Registry,
                                                            tmp_path: Path) -> None:
    refs = two_models(registry)
    challenger = register_callable(registry, "chal", "tests.models:doubler")
    home, port, log = registry.home, free_port(), tmp_path / "launcher.log"
    monitor_port = free_port()
    # Naming no deployment: every one, including those created while serving.
    launcher = _launch(home, port, log, "--replicas", "2", deployments=(),
                       monitor_port=monitor_port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            await _serving(client, launcher, log)
            procs = _role_processes(home)
            roles = sorted(a[a.index("--role") + 1] for a in procs.values())
            assert roles == ["decoy", "monitor", "proxy", "rendezvous", *["worker"] * 4]
            worker_lines = [" ".join(a[a.index("serve"):a.index("--streams")])
                            for a in procs.values() if "worker" in a]
            assert worker_lines.count(f"serve dep --role worker --model {refs['champion']}") == 2

            async def champion_answers() -> bool:
                r = await client.post(f"/v1/deployments/{DEP}/predict", json=[{"x": 1, "y": 2}])
                # A cold worker's first batch may miss the champion's wait: the fallback answers.
                assert r.status_code == 200, r.text
                return bool(r.json()["model"] == refs["champion"])

            await _until(champion_answers, log=log)

            # A policy that adds a model: the launcher starts its workers.
            _cli(home, "deploy", "create", DEP, "--champion", refs["champion"], "--fallback",
                 refs["fallback"], "--challenger", challenger, "--deadline-ms", "300")

            async def challenger_scores() -> bool:
                await client.post(f"/v1/deployments/{DEP}/predict", json=[{"x": 1, "y": 2}])
                status = await client.get(
                    f"http://127.0.0.1:{monitor_port}/v1/deployments/{DEP}/status")
                model = status.json()["models"].get(challenger, {})
                return bool(model.get("on_time"))

            await _until(challenger_scores, log=log)
            assert sum(challenger in a for a in _role_processes(home).values()) == 2

            # Promotion through the CLI reaches the rendezvous process (forced: this test
            # sends too few requests for the default gates).
            _cli(home, "promote", DEP, refs["fallback"], "--force")

            async def promoted() -> bool:
                r = await client.post(f"/v1/deployments/{DEP}/predict", json=[{"x": 1, "y": 2}])
                return bool(r.json().get("model") == refs["fallback"])

            await _until(promoted, log=log)

            # A deployment created while serving: its workers start, the other role
            # processes add it, and the proxy opens it once they all read its streams.
            _cli(home, "deploy", "create", "late", "--champion", refs["champion"],
                 "--deadline-ms", "300")

            async def late_answers() -> bool:
                r = await client.post("/v1/deployments/late/predict", json=[{"x": 1, "y": 2}])
                assert r.status_code in (200, 404, 503), r.text
                return r.status_code == 200 and r.json()["model"] == refs["champion"]

            await _until(late_answers, 60, log=log)
        pids = set(_role_processes(home))
        launcher.send_signal(signal.SIGINT)  # one Ctrl-C stops them all
        assert launcher.wait(45) == 0, log.read_text()
        assert not set(_role_processes(home)) & pids
        text = log.read_text()
        assert "exited with code" not in text, text
        assert text.rstrip().endswith("stopped")
        assert not _nats_servers(home)
    finally:
        _cleanup(launcher, home)


@pytest.mark.nats
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
async def test_a_launcher_killed_with_9_leaves_nothing_behind_for_long(
    registry: Registry, tmp_path: Path,
) -> None:
    two_models(registry)
    home, port, log = registry.home, free_port(), tmp_path / "launcher.log"
    first = _launch(home, port, log)
    second = third = first
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            await _serving(client, first, log)
            first.kill()
            first.wait()

            async def roles_gone() -> bool:
                return not _role_processes(home)

            await _until(roles_gone, log=log)  # they noticed their launcher is gone
            assert _nats_servers(home), "expected the orphaned nats-server (it has no watchdog)"

            second = _launch(home, port, log)
            await _serving(client, second, log)
            assert "left running" in log.read_text()
            assert len(_nats_servers(home)) == 1

            third = _launch(home, free_port(), log)
            assert third.wait(30) == 1
            assert "another `rendezvous serve --streams local-nats` is running" in \
                log.read_text().replace("\n", " ")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()
        assert not _role_processes(home) and not _nats_servers(home)
    finally:
        for proc in (first, second, third):
            _cleanup(proc, home)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode().replace("\0", " ")
    except OSError:
        return ""


@pytest.mark.nats
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_worker_replicas_are_processes_stopped_together(
    registry: Registry, nats_server: LocalNatsServer, tmp_path: Path,
) -> None:
    refs = two_models(registry)
    home = registry.home
    registry_url = f"sqlite:///{home / 'registry.db'}"  # a shared one may hold a password
    log = (tmp_path / "replicas.log").open("wb")
    sup = subprocess.Popen(
        [sys.executable, "-m", "rendezvous.cli", "serve", DEP, "--role", "worker", "--model",
         refs["champion"], "--replicas", "3", "--streams", nats_server.url, "--home", str(home),
         "--registry", registry_url],
        cwd=ROOT, env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT)
    banner = f"worker ({refs['champion']}) of dep on"
    try:
        deadline = time.monotonic() + 30
        while (tmp_path / "replicas.log").read_text().count(banner) < 3:
            assert time.monotonic() < deadline and sup.poll() is None, \
                (tmp_path / "replicas.log").read_text()
            time.sleep(0.1)
        children = {p: a for p, a in _role_processes(home).items() if p != sup.pid}
        assert len(children) == 3
        assert all("--replicas" not in a and refs["champion"] in a for a in children.values())
        # The registry URL reaches them through the environment, out of sight of `ps`.
        assert all("--registry" not in a and registry_url not in a for a in children.values())
        assert all(f"RENDEZVOUS_REGISTRY={registry_url}".encode()
                   in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in children)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0, (tmp_path / "replicas.log").read_text()
        assert not _role_processes(home)
        text = (tmp_path / "replicas.log").read_text()
        # Each replica says it stopped, then the command that started them.
        assert text.count(f"worker ({refs['champion']}): stopped") == 3, text
        assert text.rstrip().endswith("stopped"), text
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        for pid in _role_processes(home):
            os.kill(pid, signal.SIGKILL)
        log.close()


@pytest.mark.nats
def test_a_taken_monitor_port_is_named_before_anything_starts(registry: Registry,
                                                               tmp_path: Path) -> None:
    import socket

    two_models(registry)
    log = tmp_path / "launcher.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        launcher = _launch(registry.home, free_port(), log, monitor_port=busy)
        assert launcher.wait(60) == 1
    text = log.read_text().replace("\n", " ")
    assert f"monitor's port 127.0.0.1:{busy} is in use" in text and "--monitor-port" in text
    assert "started" not in text and not _nats_servers(registry.home)
