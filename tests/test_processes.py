"""``serve --processes N``: several processes, one port, one partition of the streams each."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.hosting.serving import read_run_file
from rendezvous.roles.decoy import read_archive
from rendezvous.roles.monitor import stats_from_log
from rendezvous.streams import open_stream
from tests.cluster import ROOT, free_port
from tests.conftest import register_callable


async def _traffic(url: str, n: int, clients: int) -> list[httpx.Response]:
    # One client per connection, so the kernel spreads them across the processes.
    async def one(k: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=10,
                                     limits=httpx.Limits(max_connections=1)) as c:
            return [await c.post("/v1/deployments/dep/predict", json=[{"x": 1.0, "y": float(i)}])
                    for i in range(k, n, clients)]

    return [r for rs in await asyncio.gather(*(one(k) for k in range(clients))) for r in rs]


@pytest.mark.slow
async def test_two_processes_share_a_port_and_follow_one_promote(registry: Registry) -> None:
    champ = register_callable(registry, "champ", "tests.models:make_constant", value=1.0)
    other = register_callable(registry, "other", "tests.models:make_constant", value=2.0)
    registry.apply_policy("dep", Policy(deadline_ms=500, models=[
        ModelSpec(champ, Role.CHAMPION), ModelSpec(other, Role.CHALLENGER)]))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rendezvous.cli", "serve", "dep", "--processes", "2",
         "--port", str(port), "--home", str(registry.home)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while read_run_file(registry.home, "dep") is None:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the server did not start"
            await asyncio.sleep(0.1)
        # Open to traffic only once every process listens: connections made earlier would
        # all land on the first one, and keep-alive connections stay where they landed.
        if shutil.which("ss"):
            listed = subprocess.run(["ss", "-tlnpH", f"( sport = :{port} )"],
                                    capture_output=True, text=True, check=True).stdout
            assert len(set(re.findall(r"pid=(\d+)", listed))) == 2, listed
        first = await _traffic(url, 120, 16)
        assert {r.status_code for r in first} == {200}
        assert {r.json()["model"] for r in first} == {champ}

        token = read_run_file(registry.home, "dep")["token"]  # type: ignore[index]
        async with httpx.AsyncClient(base_url=url) as c:
            r = await c.post("/v1/admin/deployments/dep/promote",
                             json={"model": other, "force": True},  # no evidence yet
                             headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        await asyncio.sleep(1.5)  # the other process picks the change up from the registry
        second = await _traffic(url, 120, 16)
        assert {r.status_code for r in second} == {200}
        assert {r.json()["model"] for r in second} == {other}, "a process missed the promote"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "with 2 processes" in out

    logs = sorted(p.name for p in registry.home.glob("streams*.db"))
    assert logs == ["streams-p1.db", "streams.db"], "each process owns a partition"
    for url_ in ("embedded", "embedded://streams-p1.db"):
        stream = await open_stream(url_, home=registry.home)
        try:  # 16 connections: both processes got some (all on one: p = 2 ** -15)
            assert await stream.last_offset("dep.results") > 0, url_
        finally:
            await stream.close()
    stats = await stats_from_log(registry.home, "dep")
    assert stats.requests == 240  # every answered request is recorded, across partitions
    assert read_archive(registry.home, "dep").num_rows == 240
    assert json.loads(json.dumps(stats.to_dict()))["models"][other]["chosen"] == 120


def test_processes_need_the_embedded_engine(registry: Registry) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rendezvous.cli", "serve", "dep", "--processes", "2",
         "--streams", "nats://127.0.0.1:1", "--home", str(registry.home)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--processes partitions the embedded engine" in proc.stderr


def test_processes_say_they_take_no_registry_url(registry: Registry) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rendezvous.cli", "serve", "dep", "--processes", "2",
         "--registry", "postgresql://127.0.0.1/test", "--home", str(registry.home)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "takes no --registry" in proc.stderr.replace("\n", " ")
