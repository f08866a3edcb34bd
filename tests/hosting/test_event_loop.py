"""The event loop every serving process runs on."""

from __future__ import annotations

import asyncio

import uvloop

from rendezvous.hosting.serve import run_loop


def test_run_loop_runs_on_uvloop_to_the_end() -> None:
    seen: list[type] = []

    async def main() -> None:
        await asyncio.sleep(0)
        seen.append(type(asyncio.get_running_loop()))

    run_loop(main())
    assert seen == [uvloop.Loop]


async def test_async_tests_run_on_uvloop_as_served() -> None:
    # tests/conftest.py: in-process servers in the tests see the loop a served process has
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
