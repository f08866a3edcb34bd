"""The local nats-server launcher: start, connect, stop, restart with the data kept."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import nats
import pytest

from rendezvous.errors import StreamError
from rendezvous.streams.nats.server import LocalNatsServer, find_nats_server

pytestmark = pytest.mark.nats


def test_binary_comes_from_the_wheel() -> None:
    assert find_nats_server().is_file()


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


async def test_start_connect_stop(tmp_path: Path) -> None:
    async with LocalNatsServer(tmp_path / "nats") as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert server.running
        nc = await nats.connect(server.url)
        try:
            account = await nc.jetstream().account_info()  # JetStream is on
            assert account.limits is not None
        finally:
            await nc.close()
    assert not server.running
    assert _refused(server.port)
    assert "Server is ready" in server.log_path.read_text()


async def test_restart_keeps_port_and_jetstream_data(tmp_path: Path) -> None:
    server = LocalNatsServer(tmp_path / "nats")
    with server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep"])
        await js.publish("keep", b"one")
        await nc.close()
        url = server.url
        server.stop()
        assert _refused(server.port)
        server.start()
        assert server.url == url
        server.kill()  # a crash loses nothing acknowledged either
        server.start()
        nc = await nats.connect(server.url)
        try:
            msg = await nc.jetstream().get_msg("KEEP", 1)
            assert msg.data == b"one"
        finally:
            await nc.close()


def test_failed_start_names_the_log_file(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = LocalNatsServer(tmp_path / "nats", port=taken.getsockname()[1])
        with pytest.raises(StreamError, match=re.escape("nats-server.log")):
            server.start()
    assert not server.running


def test_stop_and_kill_are_idempotent(tmp_path: Path) -> None:
    server = LocalNatsServer(tmp_path / "nats")
    server.stop()
    server.kill()
    with server:
        pass
    server.stop()
