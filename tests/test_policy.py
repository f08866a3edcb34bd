"""Table tests for the pure rendezvous decision and policy edits."""

from __future__ import annotations

import pytest

from rendezvous.core.messages import Reason
from rendezvous.core.policy import (
    Candidate,
    Decision,
    Mailbox,
    ModelSpec,
    Policy,
    Role,
    Schedule,
    ScoreState,
    Wait,
    decide,
    pick_split,
    promote,
)
from rendezvous.errors import ConfigError

MS = 1_000_000
POLICY = Policy(deadline_ms=100, models=[
    ModelSpec("champ@1", Role.CHAMPION, wait_ms=20),
    ModelSpec("fb@1", Role.FALLBACK, wait_ms=50),
    ModelSpec("fb2@1", Role.FALLBACK),
    ModelSpec("chal@1", Role.CHALLENGER),
    ModelSpec("can@1", Role.CANARY),
])
SCHED = POLICY.schedule("d", version=1)


def box(scores: dict[str, bool], received: int | None = 0) -> Mailbox:
    b = Mailbox(received_ns=received, deadline_ns=None if received is None else 100 * MS)
    for model, ok in scores.items():
        b.scores[model] = ScoreState(ok=ok, finished_ns=1)
    return b


CASES = [
    # (name, scores, now_ms, expected)
    ("nothing yet waits for the champion's wait", {}, 1, Wait(20 * MS)),
    ("champion answers first: preferred", {"champ@1": True}, 1,
     Decision("champ@1", Reason.PREFERRED)),
    ("fallback ready but champion still within its wait", {"fb@1": True}, 5, Wait(20 * MS)),
    ("fallback after the champion's wait", {"fb@1": True}, 20,
     Decision("fb@1", Reason.FALLBACK)),
    ("champion preferred over a ready fallback", {"champ@1": True, "fb@1": True}, 30,
     Decision("champ@1", Reason.PREFERRED)),
    ("second fallback waits for the first fallback's wait", {"fb2@1": True}, 30, Wait(50 * MS)),
    ("second fallback once both waits passed", {"fb2@1": True}, 50,
     Decision("fb2@1", Reason.FALLBACK)),
    ("champion error: fallback at once", {"champ@1": False, "fb@1": True}, 1,
     Decision("fb@1", Reason.FALLBACK)),
    ("all candidates failed: error", {"champ@1": False, "fb@1": False, "fb2@1": False}, 1,
     Decision(None, Reason.ERROR)),
    ("shadows are never returned", {"chal@1": True, "can@1": True}, 60, Wait(100 * MS)),
    ("shadows are never returned, even at the deadline", {"chal@1": True, "can@1": True}, 100,
     Decision(None, Reason.SLA_MISS)),
    ("deadline with no answer: sla_miss", {}, 100, Decision(None, Reason.SLA_MISS)),
    ("deadline with an answer: the best present", {"fb2@1": True, "fb@1": True}, 100,
     Decision("fb@1", Reason.FALLBACK)),
    ("deadline with only errors and shadows: sla_miss", {"champ@1": False, "chal@1": True},
     100, Decision(None, Reason.SLA_MISS)),
    ("waits passed, nothing answered: wait for the deadline", {}, 60, Wait(100 * MS)),
]


@pytest.mark.parametrize(("scores", "now_ms", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(scores: dict[str, bool], now_ms: int, expected: object) -> None:
    assert decide(box(scores), SCHED, now_ms * MS) == expected


def test_score_before_request_waits_for_the_request() -> None:
    b = box({"champ@1": True}, received=None)
    assert decide(b, SCHED, 1 * MS) == Wait(None)
    b.received_ns, b.deadline_ns = 0, 100 * MS  # the request arrives
    assert decide(b, SCHED, 2 * MS) == Decision("champ@1", Reason.PREFERRED)


def test_split_is_stable_and_weighted() -> None:
    split = (("a@1", 3.0), ("b@1", 1.0))
    picks = [pick_split(split, f"user-{i}") for i in range(4000)]
    assert picks == [pick_split(split, f"user-{i}") for i in range(4000)]
    share = picks.count("a@1") / len(picks)
    assert 0.7 < share < 0.8


def test_split_reason_and_order() -> None:
    pol = Policy(deadline_ms=50, split={"a@1": 1.0, "b@1": 1.0}, models=[
        ModelSpec("a@1", Role.CHAMPION, wait_ms=10), ModelSpec("b@1", Role.FALLBACK)])
    sched = pol.schedule("d", 1)
    key = next(k for k in (f"k{i}" for i in range(100)) if pick_split(sched.split, k) == "b@1")
    b = Mailbox(received_ns=0, deadline_ns=50 * MS, split_key=key)
    b.scores["b@1"] = ScoreState(True, 1)
    assert decide(b, sched, 1 * MS) == Decision("b@1", Reason.SPLIT)


def test_promote_keeps_old_champion_as_challenger() -> None:
    new = promote(POLICY, "chal@1")
    roles = {m.model: m.role for m in new.models}
    assert new.champion == "chal@1"
    assert roles["champ@1"] is Role.CHALLENGER
    assert roles["fb@1"] is Role.FALLBACK and roles["can@1"] is Role.CANARY
    assert next(m for m in new.models if m.model == "chal@1").wait_ms == 20


@pytest.mark.parametrize(("policy", "message"), [
    (Policy(deadline_ms=0, models=[ModelSpec("a@1", Role.CHAMPION)]), "deadline_ms"),
    (Policy(models=[ModelSpec("a@1", Role.FALLBACK)]), "exactly one champion"),
    (Policy(models=[ModelSpec("a@1", Role.CHAMPION), ModelSpec("a@1", Role.FALLBACK)]),
     "appears twice"),
    (Policy(deadline_ms=10, models=[ModelSpec("a@1", Role.CHAMPION, wait_ms=20)]),
     "between 0 and the deadline"),
    (Policy(models=[ModelSpec("a@latest", Role.CHAMPION)]), "not resolved"),
    (Policy(models=[ModelSpec("a@1", Role.CHAMPION)], split={"zz@1": 1}), "not a model"),
])
def test_invalid_policies_name_the_problem(policy: Policy, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        policy.validate()


def test_promoting_the_champion_is_an_error() -> None:
    with pytest.raises(ConfigError, match="already the champion"):
        promote(POLICY, "champ@1")


# -- a promote in an A/B split (issue 8, item 4) --------------------------------------------

AB = Policy(deadline_ms=100, split={"a@1": 1.0, "b@1": 1.0}, models=[
    ModelSpec("a@1", Role.CHAMPION, wait_ms=20), ModelSpec("b@1", Role.CHAMPION),
    ModelSpec("c@1", Role.CHALLENGER), ModelSpec("can@1", Role.CANARY)])


@pytest.mark.parametrize(("model", "split", "roles"), [
    ("c@1", {"c@1": 1.0, "b@1": 1.0},
     {"c@1": Role.CHAMPION, "a@1": Role.CHALLENGER, "b@1": Role.CHAMPION}),
    ("b@1", {"b@1": 2.0}, {"b@1": Role.CHAMPION, "a@1": Role.CHALLENGER}),
])
def test_promote_in_a_split_gives_the_old_champions_share_to_the_new(
        model: str, split: dict[str, float], roles: dict[str, Role]) -> None:
    new = promote(AB, model)
    assert new.split == split
    assert {m.model: m.role for m in new.models if m.model in roles} == roles
    sched = new.schedule("d", 2)
    assert "a@1" in sched.shadows
    for i in range(200):  # the old champion, now a shadow, is never returned
        b = Mailbox(received_ns=0, deadline_ns=100 * MS, split_key=f"user-{i}")
        b.scores["a@1"] = ScoreState(True, 1)
        assert decide(b, sched, 1 * MS) != Decision("a@1", Reason.SPLIT)
        assert getattr(decide(b, sched, 100 * MS), "model", None) is None


def test_a_split_naming_a_shadow_is_refused() -> None:
    with pytest.raises(ConfigError, match="shadow"):
        Policy(split={"a@1": 1.0, "c@1": 1.0}, models=[
            ModelSpec("a@1", Role.CHAMPION), ModelSpec("c@1", Role.CHALLENGER)]).validate()


SPLIT_TO_SHADOW = Schedule(deployment="d", version=1, deadline_ms=100,
                           candidates=(Candidate("a@1", 20),), shadows=("c@1",),
                           split=(("c@1", 1.0),))


@pytest.mark.parametrize(("scores", "now_ms", "expected"), [
    ({"c@1": True}, 1, Wait(20 * MS)),
    ({"c@1": True}, 100, Decision(None, Reason.SLA_MISS)),
    ({"c@1": True, "a@1": True}, 1, Decision("a@1", Reason.SPLIT)),
], ids=["shadow ready, champion within its wait", "shadow only at the deadline",
        "champion answers"])
def test_decide_never_returns_a_shadow_even_if_a_split_names_one(
        scores: dict[str, bool], now_ms: int, expected: object) -> None:
    assert decide(box(scores), SPLIT_TO_SHADOW, now_ms * MS) == expected
