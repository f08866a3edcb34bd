"""``/openapi.json`` describes every route, and a live server answers whatever schemathesis
generates from it without a 5xx (bar the documented 503/504 of the rendezvous flow) and with
responses that match the document."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.hosting.serving import running
from rendezvous.http.openapi import DOCUMENT
from tests.conftest import register_callable


def test_every_route_is_documented() -> None:
    from rendezvous.http.app import Proxy

    routes = Proxy.__new__(Proxy)
    Proxy.__init__(routes, server=_NoServer())  # type: ignore[arg-type]
    documented = {(m.upper(), path) for path, ops in DOCUMENT["paths"].items() for m in ops}
    for method, pattern, _ in routes._routes:
        example = (pattern.pattern.replace("(?P<d>[^/]+)", "{d}").replace("\\.", ".")
                   .replace("(?P<op>reload|promote|rollback)", "{op}")
                   .replace("(?P<asset>[A-Za-z0-9_.-]+)", "{asset}"))
        example = re.sub(r"\(\?P<\w+>([a-z]+)\)", r"\1", example)  # one literal per route
        paths = ([example.replace("{op}", op) for op in ("reload", "promote", "rollback")]
                 if "{op}" in example else [example])
        for path in paths:
            assert (method, path) in documented, f"{method} {path} is not in /openapi.json"


class _NoServer:
    runtimes: dict[str, Any] = {}
    registry = None


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server in a thread of its own (schemathesis calls it synchronously)."""
    home: Path = tmp_path_factory.mktemp("openapi") / "home"
    reg = Registry(home)
    ref = register_callable(reg, "m", "tests.models:doubler")
    reg.apply_policy("dep", Policy(deadline_ms=2000, models=[ModelSpec(ref, Role.CHAMPION)]))
    reg.close()
    started = threading.Event()
    url: list[str] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with running(["dep"], home=home, port=0) as s:
            url.append(s.edge[1])
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(60), "the server did not start"
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def test_the_server_keeps_to_its_document(live_url: str) -> None:
    # Each operation driven by Hypothesis directly: schemathesis' pytest plugin does not
    # support this pytest's collection.
    api = schemathesis.openapi.from_dict(httpx.get(f"{live_url}/openapi.json", timeout=10).json())
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == sum(len(ops) for ops in DOCUMENT["paths"].values())
    for operation in operations:

        @given(operation.as_strategy())
        @settings(max_examples=20, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def keeps_to_it(case: Any) -> None:
            if "d" in (case.path_parameters or {}):
                case.path_parameters["d"] = "dep"  # the served deployment: handlers run fully
            response = case.call(base_url=live_url, timeout=30)
            case.validate_response(response, checks=CHECKS)

        keeps_to_it()


def test_the_document_is_served(live_url: str) -> None:
    r = httpx.get(f"{live_url}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.json()["openapi"].startswith("3.1")
