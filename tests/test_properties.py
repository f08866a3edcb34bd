"""Property tests (Hypothesis): the input decoders never fail with anything but a
``ValidationError`` and keep every value they accept; ``decide()`` never returns a shadow, never
returns after the deadline a model that was not on time, and depends only on the mailbox and
the clock."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from rendezvous.core.policy import (
    Candidate,
    Decision,
    Mailbox,
    Schedule,
    ScoreState,
    Wait,
    decide,
)
from rendezvous.core.schema import (
    Column,
    Datatype,
    InferInput,
    InferRequest,
    Signature,
    columns_from_oip,
    columns_from_records,
)
from rendezvous.errors import ValidationError

SIG = Signature((Column("x", Datatype.FP64), Column("n", Datatype.INT64),
                 Column("s", Datatype.BYTES)))
PROPS = settings(max_examples=150, deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["x", "n", "s", "z"]), inner, max_size=4),
    max_leaves=20,
)
rows = st.fixed_dictionaries({
    "x": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**53, 2**53),
    "n": st.integers(-2**63, 2**63 - 1), "s": st.text(max_size=8)})


@PROPS
@given(json_values)
def test_records_decoder_accepts_or_raises_a_validation_error(doc: Any) -> None:
    try:
        cols, n = columns_from_records(doc, SIG)
    except ValidationError as exc:
        assert str(exc)
        return
    assert n >= 1 and all(len(v) == n for v in cols.values())


@PROPS
@given(st.lists(rows, min_size=1, max_size=30))
def test_records_decoder_keeps_every_valid_row(records: list[dict[str, Any]]) -> None:
    cols, n = columns_from_records(records, SIG)
    assert n == len(records)
    assert cols["x"] == [float(r["x"]) for r in records]
    assert cols["n"] == [r["n"] for r in records] and cols["s"] == [r["s"] for r in records]


infer_inputs = st.builds(
    InferInput, name=st.sampled_from(["x", "n", "s", "input-0"]),
    shape=st.lists(st.integers(-2, 6), max_size=3),
    datatype=st.sampled_from(["FP64", "INT64", "BYTES", "FP32", "BOOL"]),
    data=st.lists(json_values, max_size=8))


@PROPS
@given(st.builds(InferRequest, inputs=st.lists(infer_inputs, max_size=4)))
def test_oip_decoder_accepts_or_raises_a_validation_error(req: InferRequest) -> None:
    try:
        cols, n = columns_from_oip(req, SIG)
    except ValidationError as exc:
        assert str(exc)
        return
    assert n >= 1 and all(len(v) == n for v in cols.values())


@PROPS
@given(st.lists(rows, min_size=1, max_size=30), st.booleans())
def test_oip_decoder_keeps_every_valid_value(records: list[dict[str, Any]],
                                             as_column: bool) -> None:
    n = len(records)
    shape = [n, 1] if as_column else [n]

    def data(name: str) -> list[Any]:
        values = [r[name] for r in records]
        return [[v] for v in values] if as_column else values

    req = msgspec.convert({"inputs": [
        {"name": "x", "shape": shape, "datatype": "FP64", "data": data("x")},
        {"name": "n", "shape": shape, "datatype": "INT64", "data": data("n")},
        {"name": "s", "shape": shape, "datatype": "BYTES", "data": data("s")}]}, InferRequest)
    cols, got = columns_from_oip(req, SIG)
    assert got == n and cols["x"] == [float(r["x"]) for r in records]
    assert cols["n"] == [r["n"] for r in records] and cols["s"] == [r["s"] for r in records]


# -- decide() ------------------------------------------------------------------------------

MS = 1_000_000
MODELS = [f"m{i}@1" for i in range(6)]


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    names = draw(st.permutations(MODELS))
    n_cand = draw(st.integers(1, 4))
    deadline = draw(st.integers(1, 200))
    cands = tuple(Candidate(m, draw(st.integers(0, deadline))) for m in names[:n_cand])
    shadows = tuple(names[n_cand:n_cand + draw(st.integers(0, 2))])
    split = ()
    if draw(st.booleans()):  # a split may even name a shadow: decide must not return it
        named = draw(st.lists(st.sampled_from(cands + tuple(Candidate(s, 0) for s in shadows)),
                              min_size=1, max_size=3, unique=True))
        split = tuple((c.model, draw(st.floats(0.1, 5))) for c in named)
    return Schedule("d", 1, float(deadline), cands, shadows, split)


@st.composite
def mailboxes(draw: st.DrawFn, sched: Schedule) -> Mailbox:
    deadline_ns = int(sched.deadline_ms * MS)
    box = Mailbox(received_ns=0, deadline_ns=deadline_ns, split_key=draw(st.text(max_size=4)))
    for model in draw(st.lists(st.sampled_from(MODELS), unique=True)):
        box.scores[model] = ScoreState(ok=draw(st.booleans()),
                                       finished_ns=draw(st.integers(0, 2 * deadline_ns)))
    return box


@st.composite
def cases(draw: st.DrawFn) -> tuple[Schedule, Mailbox, int]:
    sched = draw(schedules())
    box = draw(mailboxes(sched))
    return sched, box, draw(st.integers(0, int(3 * sched.deadline_ms * MS)))


@PROPS
@given(cases())
def test_decide_never_returns_a_shadow_or_a_late_model(case: tuple[Schedule, Mailbox,
                                                                  int]) -> None:
    sched, box, now = case
    outcome = decide(box, sched, now)
    if isinstance(outcome, Decision) and outcome.model is not None:
        assert outcome.model in {c.model for c in sched.candidates}
        assert outcome.model not in sched.shadows
        state = box.scores[outcome.model]
        assert state.ok
        assert state.finished_ns <= box.deadline_ns, "returned a model that was not on time"
    if isinstance(outcome, Wait):
        assert now < box.deadline_ns
        assert outcome.until_ns is not None and now < outcome.until_ns <= box.deadline_ns


@PROPS
@given(cases())
def test_decide_depends_only_on_the_mailbox_and_the_clock(case: tuple[Schedule, Mailbox,
                                                                     int]) -> None:
    sched, box, now = case
    before = copy.deepcopy(box)
    first = decide(box, sched, now)
    assert box == before, "decide() changed the mailbox"
    assert decide(copy.deepcopy(box), sched, now) == first
    assert decide(box, copy.deepcopy(sched), now) == first
