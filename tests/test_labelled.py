"""The labelled-id set: never counts a label twice, bounded by the label horizon and a cap."""

from __future__ import annotations

import pytest
from ulid import ULID

from rendezvous.core.analytics import DeploymentAnalytics
from rendezvous.core.labelled import LabelledIds
from rendezvous.core.messages import Feedback
from rendezvous.ids import ulid_ms

S = 10**9


def made_at(seconds: float) -> str:
    """A ULID request id made at this time; the same one for the same time."""
    return str(ULID.from_timestamp(float(seconds)))[:10] + "0" * 16


# (request id, label arrives at [s], verdict): horizon 100 s, at most 3 ids kept.
STEPS = [
    (made_at(1000), 1000, "new"),
    (made_at(1000), 1001, "duplicate"),
    (made_at(850), 1001, "too_late"),     # made before the horizon
    ("order-7", 1001, "new"),             # a client's id: kept under its label's time
    ("order-7", 1050, "duplicate"),
    (made_at(990), 1002, "new"),
    (made_at(995), 1003, "new"),          # a 4th id: the oldest (990) is forgotten...
    (made_at(990), 1004, "too_late"),     # ...and never counted again
    (made_at(1150), 1200, "new"),         # the horizon moves: 1000, 995 and order-7 go
    (made_at(1000), 1200, "too_late"),
    ("order-7", 1200, "new"),             # a client's id is forgotten a horizon later
]


def test_verdicts_through_the_horizon_and_the_cap() -> None:
    ids = LabelledIds(horizon_ns=100 * S, max_ids=3)
    for i, (rid, at_s, verdict) in enumerate(STEPS):
        assert ids.check(rid, at_s * S) == verdict, f"step {i}: {rid} at {at_s}"
        if verdict == "new":
            ids.add(rid, at_s * S)
        assert len(ids) <= 3
    assert set(ids.to_state()["ids"]) == {(made_at(1150), 1150 * S), ("order-7", 1200 * S)}


def test_state_round_trip_and_the_older_plain_list() -> None:
    ids = LabelledIds(horizon_ns=100 * S, max_ids=2)
    for rid, at_s in [(made_at(1000), 1000), ("order-7", 1001), (made_at(1002), 1002)]:
        ids.add(rid, at_s * S)
    again = LabelledIds(horizon_ns=100 * S, max_ids=2)
    again.restore(ids.to_state())
    assert again.check(made_at(1000), 1003 * S) == "too_late"  # forgotten by the cap
    assert again.check("order-7", 1003 * S) == "duplicate"
    old = LabelledIds(horizon_ns=100 * S)
    old.restore([made_at(1000), "order-7"])
    assert old.check("order-7", 1050 * S) == old.check(made_at(1000), 1050 * S) == "duplicate"
    old.add(made_at(1100), 1101 * S)  # an id of the older state gets its ULID's time
    assert old.check(made_at(1000), 1101 * S) == "too_late"
    assert old.check("order-7", 1101 * S) == "new"


@pytest.mark.parametrize("text", ["", "order-7", "8" + "0" * 25, "01ARZ3NDEKTSV4RRFFQ69G5FAU!",
                                  "01ARZ3NDEKTSV4RRFFQ69G5FAI"])
def test_ids_that_are_not_ulids_have_no_time(text: str) -> None:
    assert ulid_ms(text) is None


def test_a_label_past_the_horizon_is_counted_as_too_late() -> None:
    a = DeploymentAnalytics("dep", label_horizon_ns=3600 * S)
    fb = Feedback(request_id=made_at(1000), deployment="dep", labels=[1], at_ns=0)
    assert a.add_feedback(fb, None, (1000 + 3601) * S) == "too_late"
    assert a.feedback["too_late"] == 1 and a.feedback["unknown"] == 0
    assert a.to_state()["feedback"]["too_late"] == 1
