"""The HTTP edge's protocol, on a real server over raw sockets: each response leaves in one
send (status line, headers and body together), and answers without a body, error answers and
the answers to pipelined requests still arrive whole and in order."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

import pytest

from rendezvous import Registry
from tests.test_hardening import deploy, oip

Serve = Callable[..., Any]
_DATA_SEGS_IN = 152  # offset of tcpi_data_segs_in in Linux's struct tcp_info (since 4.6)


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    return host, int(port)


def _response(sock: socket.socket, buffered: bytes = b"", *, head: bool = False
              ) -> tuple[bytes, bytes, bytes]:
    """One whole response (headers, body) read off ``sock``, and what came after it."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before the headers ended: {data!r}"
        data += chunk
    headers, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in headers.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if head:
        length = 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-response"
        rest += chunk
    return headers, rest[:length], rest[length:]


def _data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, _DATA_SEGS_IN)[0])


def _exchange(url: str, requests: list[bytes]) -> tuple[list[bytes], int]:
    """Send each request after the previous answer; the responses and how many data segments
    the client received in all. A HEAD request's answer has no body."""
    with socket.create_connection(_address(url), timeout=30) as sock:
        out, rest = [], b""
        for req in requests:
            sock.sendall(req)
            headers, body, rest = _response(sock, rest, head=req.startswith(b"HEAD"))
            out.append(headers + b"\r\n\r\n" + body)
        return out, _data_segments_in(sock)


@pytest.mark.skipif(sys.platform != "linux", reason="counts segments with Linux's TCP_INFO")
async def test_each_response_leaves_in_one_segment(registry: Registry, serve: Serve) -> None:
    deploy(registry)
    body = json.dumps(oip(1)).encode()
    infer = (b"POST /v2/models/dep/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    async with serve("dep") as client:
        url = str(client.base_url)
        responses, segments = await asyncio.to_thread(_exchange, url, [live, infer, live])
    assert [r.split(b"\r\n", 1)[0] for r in responses] == [b"HTTP/1.1 200 OK"] * 3
    assert b'"outputs"' in responses[1]
    # uvicorn alone writes the headers and the body apart: 6 segments for these 3 answers
    assert segments == 3


async def test_bodiless_error_and_pipelined_answers_arrive_whole(registry: Registry,
                                                                 serve: Serve) -> None:
    deploy(registry)
    async with serve("dep") as client:
        url = str(client.base_url)
        live = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        head, _ = await asyncio.to_thread(
            _exchange, url, [b"HEAD /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                             live])
        # a HEAD answer (405 here: GET it) carries no body, and the connection goes on
        assert head[0].startswith(b"HTTP/1.1 405") and head[0].endswith(b"\r\n\r\n")
        assert head[1].startswith(b"HTTP/1.1 200") and head[1].endswith(b'{"live":true}')

        def pipelined() -> list[bytes]:
            with socket.create_connection(_address(url), timeout=30) as sock:
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                             b"GET /v2/models/nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                             b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                out, rest = [], b""
                for _ in range(3):
                    headers, body, rest = _response(sock, rest)
                    out.append(headers.split(b"\r\n", 1)[0] + b" " + body)
                return out

        answers = await asyncio.to_thread(pipelined)
        assert answers[0].startswith(b"HTTP/1.1 200")
        assert answers[1].startswith(b"HTTP/1.1 404") and b"nope" in answers[1]
        assert answers[2].startswith(b"HTTP/1.1 200")
        assert (await client.get("/v2/health/live")).status_code == 200
