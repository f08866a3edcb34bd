"""The serving report's headline ratios: what the targets are measured against."""

from __future__ import annotations

from typing import Any

import pytest
from bench.report import ratios


def _row(contender: str, c: int, rps: float, p50: float, p99: float) -> dict[str, Any]:
    return {"contender": contender, "concurrency": c, "rps": rps, "p50_ms": p50,
            "p99_ms": p99, "p999_ms": p99, "errors": 0, "peak_rss_mb": 100.0}


ROWS = [
    _row("mlserver", 32, 2000.0, 12.0, 80.0),
    _row("fastapi", 32, 1600.0, 18.0, 60.0),
    _row("fastapi", 1, 1000.0, 1.0, 2.0),
    _row("floor", 32, 9000.0, 3.0, 15.0),
    _row("rendezvous-4", 32, 3000.0, 9.0, 40.0),
]


def test_the_floor_is_reported_against_the_anchors_and_never_counted_as_one() -> None:
    lines = "\n".join(ratios(ROWS))
    # rendezvous-4 is compared with the best anchor (mlserver) and the lowest anchor p99
    # (fastapi), not with the floor's far better numbers
    assert "1.50x (3000 vs mlserver 2000 req/s)" in lines
    assert "0.67x (40.0 ms vs fastapi 60.0 ms" in lines
    assert "4.50x (9000 vs mlserver 2000 req/s; the target for rendezvous-4 is 2x)" in lines
    assert ("0.25x (15.0 ms vs fastapi 60.0 ms, -45.0 ms; the target for rendezvous-4 is at "
            "most 0.33x)") in lines


def test_no_floor_line_without_the_floor() -> None:
    assert not [line for line in ratios([r for r in ROWS if r["contender"] != "floor"])
                if "floor" in line]


def test_ab_rounds_are_named_by_their_arms_and_weigh_both_orders_alike(tmp_path) -> None:
    from bench.analytics_serving_cpu import write

    def rnd(i: int, first: str, new: float, old: float) -> dict[str, Any]:
        return {"round": i, "first": first, "new_rps": new, "old_rps": old,
                "new_errors": 0, "old_errors": 0, "new_p99_ms": 10.0, "old_p99_ms": 20.0,
                "new_cpu_ms": 0.5, "old_cpu_ms": 1.0, "new_serving_cpu_ms": 0.3,
                "old_serving_cpu_ms": 0.6, "new_hosts_cpu_ms": 0.2, "old_hosts_cpu_ms": 0.8,
                "ratio": new / old}

    doc = {"command": "x", "rounds": [rnd(1, "new", 1200.0, 1000.0), rnd(2, "old", 900.0,
                                                                        1000.0)],
           "arms": [{"name": "new", "analytics": True, "src": "/a", "serve": "--processes 1"},
                    {"name": "old", "analytics": True, "src": "/b"}]}  # from before "serve"
    write(doc, tmp_path)
    md = (tmp_path / "ab-rounds.md").read_text()
    assert md.startswith("# new / old, alternating rounds")
    assert "- `new`: `/a`, analytics on, `rendezvous serve --processes 1`" in md
    assert "- `old`: `/b`, analytics on\n" in md
    assert doc["balanced_ratio"] == round((1.2 * 0.9) ** 0.5, 3)
    assert doc["median_cpu_ratio"] == 0.5 and doc["median_p99_ratio"] == 0.5
    assert doc["median_part_cpu_ratio"] == {"serving processes": 0.5, "model hosts": 0.25}
    assert "- CPU per request new/old, model hosts: median **0.25**." in md
    assert not (tmp_path / "analytics-rounds.md").exists()


def test_py_spy_samples_go_to_the_outermost_role_of_their_stack() -> None:
    from bench.spy_roles import OTHER, shares, table

    lines = [
        "run (uvloop/__init__.py:92);Monitor._pump (roles/monitor.py:285);"
        "EmbeddedStream.append (streams/embedded/log.py:356) 3",  # the monitor's append
        "_bootstrap (threading.py:995);Writer._run (streams/embedded/writer.py:90) 1",
        "run (uvloop/__init__.py:92);RequestResponseCycle.run_asgi (uvicorn/x.py:1);"
        "infer (rendezvous/http/oip.py:172) 4",
        "Runner.run (asyncio/runners.py:118) 2",
        "not a folded stack",
    ]
    per, total = shares(lines)
    assert total == 10
    assert per == {"monitor (meta-analytics)": 3, "stream log (writer thread, consumers)": 1,
                   "HTTP edge (proxy, middleware, uvicorn)": 4, OTHER: 2}
    assert table(per, total).splitlines()[2] == \
        "| HTTP edge (proxy, middleware, uvicorn) | 40.0 % |"


def test_the_table_shows_cpu_per_request_and_n_a_for_results_from_before_it_was_measured() -> None:
    from bench.report import table

    measured = {**ROWS[0], "cpu_ms_per_req": 1.25, "cores_busy": 2.5}
    lines = table([measured, ROWS[1]]).splitlines()
    assert lines[0].endswith("| CPU ms/req | cores busy |")
    assert lines[2].endswith("| 1.25 | 2.50 |")
    assert lines[3].endswith("| n/a | n/a |")


async def test_stages_split_an_answered_request_by_its_answering_models_timestamps(
        tmp_path) -> None:
    from bench.analytics_serving_cpu import _stages

    from rendezvous.core import messages
    from rendezvous.core.messages import ModelOutcome, Reason, Result, Score, Status
    from rendezvous.streams.embedded.log import EmbeddedStream

    ms = 1_000_000
    home = tmp_path / "home"
    home.mkdir()
    stream = await EmbeddedStream.open(home / "streams.db")
    try:
        for i in range(4):
            t0 = (100 + i) * 1000 * ms  # received; the warm-up's request (i = 0) is left out
            await stream.append("bench4.scores", [messages.encode([
                Score(request_id=f"r{i}", deployment="bench4", model="a@1",
                      started_ns=t0 + 2 * ms, finished_ns=t0 + 3 * ms),
                # a model that did not answer: its times are not the request's
                Score(request_id=f"r{i}", deployment="bench4", model="b@1",
                      started_ns=t0 + 50 * ms, finished_ns=t0 + 90 * ms)])])
            await stream.append("bench4.results", [messages.encode(Result(
                request_id=f"r{i}", deployment="bench4", model="a@1", reason=Reason.PREFERRED,
                received_ns=t0, responded_ns=t0 + (5 + i) * ms,
                models={"a@1": ModelOutcome(status=Status.ON_TIME, filed_ns=t0 + 4 * ms),
                        "b@1": ModelOutcome(status=Status.ON_TIME, filed_ns=t0 + 91 * ms)}))])
    finally:
        await stream.close()
    got = _stages(home, since_ns=101 * 1000 * ms)
    assert got["stage p50 ms: to start"] == 2.0
    assert got["stage p50 ms: predict"] == 1.0
    assert got["stage p50 ms: to filed"] == 1.0
    assert got["stage p50 ms: in server"] == 7.0  # 6, 7 and 8 ms: the warm-up's 5 is left out
    assert 7.0 < got["stage p99 ms: in server"] <= 8.0


@pytest.mark.parametrize("args, error", [
    (["--against-serve-args=--processes 1"], "add --rounds N"),
    (["--rounds", "1", "--serve-args=--processes 3", "--against-serve-args=--processes  3"],
     "are the same ('--processes 3')"),
    (["--rounds", "1", "--against", "src", "--against-serve-args=--processes 1"], "not both"),
])
def test_serve_args_rounds_refuse_what_would_compare_nothing(
        args: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.analytics_serving_cpu import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and error in capsys.readouterr().err
