"""Merging the model states that worker processes report (pure)."""

from __future__ import annotations

from rendezvous.hosting.reports import HOSTS_FORGET_S, HostReports


def _info(state: str, restarts: int = 0) -> dict[str, object]:
    return {"state": state, "detail": "", "restarts": restarts, "last_exit": "", "pid": 1,
            "isolation": "process", "since": 0.0}


def test_a_model_is_ready_while_any_of_its_processes_is() -> None:
    reports = HostReports()
    reports.add({"process": "a:1", "models": {"m@1": _info("restarting", 2)}}, at=0.0)
    reports.add({"process": "b:2", "models": {"m@1": _info("ready", 1),
                                              "n@1": _info("failed")}}, at=1.0)
    merged = reports.merged(now=2.0)
    assert merged["m@1"]["state"] == "ready"
    assert merged["m@1"]["restarts"] == 3 and merged["m@1"]["processes"] == 2
    assert merged["n@1"]["state"] == "failed"


def test_a_process_that_stops_reporting_is_forgotten() -> None:
    reports = HostReports()
    reports.add({"process": "a:1", "models": {"m@1": _info("ready")}}, at=0.0)
    assert reports.merged(now=HOSTS_FORGET_S / 2)
    assert reports.merged(now=HOSTS_FORGET_S + 1) == {}


def test_malformed_reports_are_ignored() -> None:
    reports = HostReports()
    reports.add({"process": 5, "models": {}}, at=0.0)
    reports.add({"models": "nope"}, at=0.0)
    assert reports.merged(now=0.0) == {}
