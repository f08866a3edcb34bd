"""The pure statistics of meta-analytics: tables of cases and properties (Hypothesis)."""

from __future__ import annotations

import doctest
import math
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rendezvous.core import (
    accuracy,
    alarms,
    analytics,
    compare,
    drift,
    reference,
    windows,
)
from rendezvous.core.accuracy import (
    DropDetector,
    LabelStats,
    PairedDetector,
    auc_ci,
    mean_ci,
    wilson,
)
from rendezvous.core.alarms import AlarmBook, AlarmSettings, window_checks
from rendezvous.core.compare import PairStats, ScoreBook, label_key, reduce, spearman
from rendezvous.core.drift import DriftDetector, chi2_homogeneity, ks_binned
from rendezvous.core.messages import (
    Feedback,
    ModelOutcome,
    Reason,
    ResultSummary,
    Score,
    Status,
)
from rendezvous.core.policy import ModelSpec, Policy, Role
from rendezvous.core.reference import OTHER, column_reference, score_series
from rendezvous.core.windows import WindowRing
from rendezvous.errors import ConfigError
from rendezvous.http.analytics import parse_feedback

SECOND = 10**9


@pytest.mark.parametrize("module", [accuracy, alarms, analytics, compare, drift, reference,
                                    windows])
def test_docstring_examples(module: object) -> None:
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert failed == 0


# -- references -------------------------------------------------------------------------------

@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=300))
def test_numeric_reference_counts_every_value_once(values: list[float]) -> None:
    ref = column_reference(values)
    assert ref["kind"] == "numeric" and ref["n"] == len(values) == sum(ref["counts"])
    assert ref["edges"] == sorted(set(ref["edges"]))
    assert len(ref["counts"]) == len(ref["edges"]) + 1


def test_categorical_reference_pools_the_rare_tail() -> None:
    values = [f"c{i}" for i in range(60)] + ["c0"] * 10
    ref = column_reference(values)
    assert ref["kind"] == "categorical" and sum(ref["counts"].values()) == 70
    assert ref["counts"]["c0"] == 11 and ref["counts"][OTHER] == 10


@pytest.mark.parametrize(("outputs", "expected"), [
    ({"predictions": [1], "probabilities": [[0.25, 0.75]]}, {"prediction": [1], "score": [0.75]}),
    ({"predictions": ["b"], "probabilities": [[0.1, 0.7, 0.2]]},
     {"prediction": ["b"], "score": [0.7]}),
    ({"predictions": [3.5, 1.0]}, {"prediction": [3.5, 1.0], "score": [3.5, 1.0]}),
    ({"predictions": ["x"]}, {"prediction": ["x"]}),
])
def test_score_series(outputs: dict[str, list[object]], expected: dict[str, list[object]]) -> None:
    assert score_series(outputs) == expected


# -- windows ----------------------------------------------------------------------------------

@given(st.lists(st.integers(0, 600 * SECOND), min_size=1, max_size=200),
       st.integers(1, 120), st.integers(1, 20))
def test_windows_lose_nothing_and_close_in_order(times: list[int], width_s: int,
                                                 keep: int) -> None:
    ring: WindowRing[Counter[str]] = WindowRing(Counter, width_s=width_s, keep=10_000,
                                                summarize=dict)
    for t in sorted(times):
        ring.at(t)["n"] += 1
    series = ring.series()
    assert sum(w.get("n", 0) for w in series) == len(times)
    starts = [w["start_ns"] for w in series]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(s % (width_s * SECOND) == 0 for s in starts)
    small: WindowRing[Counter[str]] = WindowRing(Counter, width_s=width_s, keep=keep,
                                                 summarize=dict)
    small.restore(ring.to_state())
    assert len(small.closed) == min(keep, len(ring.closed))


def test_a_late_point_counts_in_the_open_window() -> None:
    ring: WindowRing[Counter[str]] = WindowRing(Counter, width_s=1, keep=5, summarize=dict)
    ring.at(5 * SECOND)["n"] += 1
    ring.at(7 * SECOND)["n"] += 1
    ring.at(6 * SECOND)["n"] += 1  # late
    assert [w.get("n") for w in ring.series()] == [1, 2]


# -- drift ------------------------------------------------------------------------------------

@given(st.lists(st.integers(0, 1000), min_size=2, max_size=30).flatmap(
    lambda a: st.tuples(st.just(a), st.lists(st.integers(0, 1000), min_size=len(a),
                                             max_size=len(a)))))
def test_ks_is_a_distance_with_a_p_value(pair: tuple[list[int], list[int]]) -> None:
    a, b = pair
    d, p = ks_binned(a, b)
    assert 0 <= d <= 1 and 0 <= p <= 1
    assert ks_binned(b, a)[0] == pytest.approx(d)
    assert ks_binned(a, a) == (0.0, 1.0)


@pytest.mark.parametrize(("live", "drifted"), [
    ({"a": 500, "b": 500}, False),
    ({"a": 520, "b": 480}, False),
    ({"a": 700, "b": 300}, True),
    ({"a": 500, "b": 300, "new": 200}, True),
])
def test_chi2_table(live: dict[str, int], drifted: bool) -> None:
    _, p, tv = chi2_homogeneity({"a": 5000, "b": 5000}, live)
    assert (p < 1e-6 and tv >= 0.05) is drifted


def ref_normal(rng: np.random.Generator, n: int = 8000) -> dict[str, dict[str, object]]:
    return {f"c{i}": column_reference(rng.normal(size=n).tolist()) for i in range(4)}


def test_drift_detector_fires_on_a_half_sigma_shift_and_not_on_the_same_data() -> None:
    rng = np.random.default_rng(0)
    det = DriftDetector(ref_normal(rng), block_rows=500)
    for _ in range(20):
        reports = det.add({f"c{i}": rng.normal(size=500).tolist() for i in range(4)})
        assert reports and not reports[0].drifted
    cols = {f"c{i}": rng.normal(size=500).tolist() for i in range(4)}
    cols["c1"] = (rng.normal(size=500) + 0.5).tolist()
    (report,) = det.add(cols)
    assert report.drifted == ["c1"]


@pytest.mark.parametrize(("requests", "columns"), [
    ([], {}),
    ([({"a": [1.0]}, 1), ({"a": [2.0]}, 1)], {"a": [1.0, 2.0]}),
    ([({"a": [1.0]}, 1), ({"b": ["x", "y"]}, 2)], {"a": [1.0, None, None],
                                                   "b": [None, "x", "y"]}),
    ([({"a": (1, 2), "b": ("x", "y")}, 2), ({"a": (3,)}, 1), ({"b": ("z",)}, 1)],
     {"a": [1, 2, 3, None], "b": ["x", "y", None, "z"]}),
])
def test_gather_columns_keeps_rows_aligned(requests: list[tuple[dict[str, Any], int]],
                                           columns: dict[str, list[Any]]) -> None:
    assert drift.gather_columns(requests) == columns


@given(st.lists(st.integers(1, 700), min_size=1, max_size=30), st.integers(50, 500))
@settings(max_examples=30, deadline=None)
def test_drift_spends_its_false_alarm_budget_by_rows(batches: list[int], block: int) -> None:
    rng = np.random.default_rng(1)
    det = DriftDetector({"x": column_reference(rng.normal(size=500).tolist())},
                        block_rows=block, rate_per_million=1.0)
    reports = []
    for n in batches:
        reports += det.add({"x": rng.normal(size=n).tolist()})
    assert len(reports) == sum(batches) // block
    # Spent = sum over blocks of alpha x tests at that block; never more than rows / 10^6.
    spent = sum(r.alpha * (1 if i == 0 else 2) for i, r in enumerate(reports))
    assert spent <= sum(batches) / 1e6 * 1.0000001


# -- accuracy ---------------------------------------------------------------------------------

@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_wilson_contains_the_estimate(k: int, extra: int) -> None:
    n = k + extra
    lo, hi = wilson(k, n)
    assert 0 <= lo <= hi <= 1
    if n:
        assert lo - 1e-12 <= k / n <= hi + 1e-12


@pytest.mark.parametrize(("pos", "neg", "auc"), [
    ([0.9, 0.8], [0.1, 0.2], 1.0), ([0.1], [0.9], 0.0), ([0.5, 0.5], [0.5], 0.5),
    ([0.9, 0.2], [0.5], 0.5)])
def test_auc_table(pos: list[float], neg: list[float], auc: float) -> None:
    got = auc_ci(pos, neg)
    assert got is not None and got[0] == pytest.approx(auc)
    assert auc_ci(pos, []) is None


def test_mean_ci_and_regression_metrics() -> None:
    m, lo, hi = mean_ci(10.0, 30.0, 5)
    assert m == 2 and lo < 2 < hi
    s = LabelStats("regression")
    for e in (1.0, -1.0, 3.0, -3.0):
        s.add_error(e)
    d = s.to_dict()
    assert d["mae"] == 2 and d["rmse"] == pytest.approx(math.sqrt(5))
    assert d["mae_ci"][0] < 2 < d["mae_ci"][1]


def test_drop_detector_fires_on_a_drop_and_stays_quiet_without_one() -> None:
    rng = np.random.default_rng(3)
    quiet = DropDetector(baseline=2000)
    assert not any(c.firing for c in (quiet.add(float(rng.random() < 0.9))
                                      for _ in range(20_000)) if c)
    loud = DropDetector(baseline=2000)
    for _ in range(2000):
        loud.add(float(rng.random() < 0.9))
    fired_at = None
    for i in range(10_000):
        c = loud.add(float(rng.random() < 0.8))
        if c and c.firing:
            fired_at = i
            break
    assert fired_at is not None and fired_at < 2000


def test_paired_detector_needs_a_real_gain() -> None:
    det = PairedDetector()
    checks = [det.add(1.0 if i % 10 == 0 else 0.0) for i in range(1000)]
    assert any(c and c.firing for c in checks)
    det = PairedDetector()
    checks = [det.add([1.0, -1.0][i % 2]) for i in range(1000)]
    assert not any(c and c.firing for c in checks)


# -- comparisons ------------------------------------------------------------------------------

@given(st.lists(st.integers(-1000, 1000), min_size=3, max_size=50, unique=True))
def test_spearman_of_a_monotone_map_is_one(xs: list[int]) -> None:
    assert spearman(xs, [x ** 3 + 1 for x in xs]) == pytest.approx(1.0)
    assert spearman(xs, [-x for x in xs]) == pytest.approx(-1.0)
    assert spearman(xs, [1.0] * len(xs)) is None


def test_score_book_pairs_each_model_once_whatever_the_order() -> None:
    book = ScoreBook(capacity=10)
    a, c = reduce({"predictions": [1.0]}), reduce({"predictions": [2.0]})
    assert book.add("r1", "chal@1", a, 0, "champ@1") == []
    assert [p[0] for p in book.add("r1", "champ@1", c, 0, "champ@1")] == ["chal@1"]
    assert book.add("r1", "chal@1", a, 0, "champ@1") == []  # redelivered: no second pair
    for i in range(20):
        book.add(f"x{i}", "m", a, 0, None)
    assert len(book.entries) == 10 and book.get("r1") is None


def test_pair_stats_agreement_and_differences() -> None:
    p = PairStats()
    champ = reduce({"predictions": [1, 0], "probabilities": [[0.2, 0.8], [0.7, 0.3]]})
    p.add(reduce({"predictions": [1, 1], "probabilities": [[0.4, 0.6], [0.4, 0.6]]}), champ)
    p.add(reduce({}, error=True), champ)
    s = p.summary()
    assert s["agreement"] == 0.5 and s["errors"] == 1 and s["requests"] == 2
    assert s["mean_abs_diff"] == pytest.approx(0.25)
    assert label_key(1.0) == label_key(1) == label_key("1")


# -- batches: the same numbers as one at a time -----------------------------------------------

def _reduce_row_by_row(outputs: dict[str, Any]) -> compare.Scored:
    """``reduce`` written plainly, row by row: what the builtins in ``reduce`` must match."""
    preds = outputs.get("predictions") or []
    probs = outputs.get("probabilities")
    if probs is not None and len(probs) and isinstance(probs[0], list | tuple):
        rows = tuple(tuple(row) for row in probs)
        return compare.Scored(
            scores=tuple(float(r[1] if len(r) == 2 else max(r)) for r in rows),
            labels=tuple(label_key(p) for p in preds), probabilities=rows)
    if any(type(p) is str or type(p) is bool for p in preds):
        return compare.Scored(labels=tuple(label_key(p) for p in preds))
    if all(type(p) is float or type(p) is int for p in preds):
        return compare.Scored(scores=tuple(float(p) for p in preds))
    return compare.Scored()


def _json(x: object) -> bytes:
    """For comparing states: an empty digest's NaN bounds become null, equal to each other."""
    return msgspec.json.encode(x)


_probability = st.floats(0, 1)
_outputs: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.integers(1, 3).flatmap(lambda n: st.fixed_dictionaries({
        "predictions": st.lists(st.sampled_from([0, 1, 1.0, "a", True]), min_size=n,
                                max_size=n),
        "probabilities": st.lists(st.lists(_probability, min_size=2, max_size=3), min_size=n,
                                  max_size=n)})),
    st.fixed_dictionaries({"predictions": st.lists(
        st.one_of(st.floats(-1e6, 1e6), st.integers(-5, 5)), max_size=3)}),
    st.fixed_dictionaries({"predictions": st.lists(st.sampled_from(["a", "b", False]),
                                                   max_size=3)}),
    st.just({"predictions": [None]}),
)


@given(_outputs)
def test_reduce_matches_the_row_by_row_rule(outputs: dict[str, Any]) -> None:
    assert reduce(outputs) == _reduce_row_by_row(outputs)


@pytest.mark.parametrize("outputs", [
    {"predictions": [1], "probabilities": [[]]},
    {"predictions": [1], "probabilities": [[0.5, "x"]]},
    {"predictions": [1, 0], "probabilities": [[0.5, 0.5], 3]},
    {"predictions": [1], "probabilities": [[0.5, "0.5", 0.1]]},
])
def test_reduce_rejects_outputs_of_an_odd_shape(outputs: dict[str, list[object]]) -> None:
    with pytest.raises((TypeError, ValueError)):
        reduce(outputs)


@given(st.lists(st.one_of(_outputs, st.fixed_dictionaries({
    "predictions": st.lists(st.integers(0, 1), min_size=1, max_size=2),
    "probabilities": st.one_of(st.lists(_probability, max_size=2),  # 1-D: not the usual
                               st.lists(st.lists(st.integers(0, 1), min_size=2, max_size=2),
                                        min_size=1, max_size=2)),
    "embedding": st.just([[0.5, 0.5]])})), max_size=5), st.booleans())
def test_the_monitor_reduces_a_record_as_reduce_does(outputs: list[dict[str, Any]],
                                                     failed: bool) -> None:
    from rendezvous.roles.monitor import reduced_scores

    scores = [Score(request_id=f"r{i}", deployment="d", model="m@1", outputs=o,
                    error="boom" if failed else None, finished_ns=i)
              for i, o in enumerate(outputs)]
    try:
        expected = [reduce(s.outputs, error=failed) for s in scores]
    except (TypeError, ValueError):
        with pytest.raises((TypeError, ValueError)):
            reduced_scores(msgspec.msgpack.encode(scores))
        return
    got = reduced_scores(msgspec.msgpack.encode(scores))
    assert [sc for _, sc in got] == expected
    assert [(s.request_id, s.model, s.finished_ns) for s, _ in got] == [
        (s.request_id, s.model, s.finished_ns) for s in scores]


_scored = st.one_of(_outputs.map(lambda o: reduce(o)), st.just(compare.Scored(error=True)))
_single_row = st.tuples(_probability, st.sampled_from([0, 1])).map(
    lambda t: reduce({"predictions": [t[1]], "probabilities": [[1 - t[0], t[0]]]}))


@given(st.lists(st.tuples(st.one_of(_scored, _single_row), st.one_of(_scored, _single_row)),
                max_size=30))
def test_pair_rows_in_columns_match_pair_by_pair(pairs: list[tuple[compare.Scored,
                                                                   compare.Scored]]) -> None:
    assert compare.pair_rows(pairs) == compare._pair_rows_each(pairs)


@given(st.lists(st.tuples(_single_row, _single_row), max_size=1500),
       st.lists(st.integers(1, 40), min_size=1))
@settings(max_examples=25, deadline=None)
def test_pair_stats_of_a_batch_equal_pair_by_pair(
        pairs: list[tuple[compare.Scored, compare.Scored]], cuts: list[int]) -> None:
    one, window, total = PairStats(), PairStats(), PairStats()
    for m, c in pairs:
        one.add(m, c)
    i = 0
    while i < len(pairs):
        n = cuts[i % len(cuts)]
        PairStats.add_all((window, total), pairs[i:i + n])
        i += n
    for batched in (window, total):
        assert batched.abs_diff_sum == one.abs_diff_sum and batched.pending == one.pending
        assert _json(batched.diff.to_dict()) == _json(one.diff.to_dict())
    assert window.summary() == total.summary() == one.summary()


@given(st.lists(st.tuples(st.lists(st.floats(0, 1), max_size=3),
                          st.lists(st.sampled_from("ab"), max_size=2)), max_size=400),
       st.lists(st.integers(1, 30), min_size=1))
@settings(max_examples=25, deadline=None)
def test_model_window_of_a_batch_equals_one_by_one(
        rows: list[tuple[list[float], list[str]]], cuts: list[int]) -> None:
    one, batched = windows.ModelWindow(), windows.ModelWindow()
    for scores, labels in rows:
        one.add_scores(scores, labels)
        one.add_outcome("on_time" if scores else "error", 1.0 + len(scores), bool(labels))
    i = 0
    while i < len(rows):
        part = rows[i:i + cuts[i % len(cuts)]]
        batched.add_scores([x for s, _ in part for x in s], [x for _, ls in part for x in ls])
        batched.add_outcomes(["on_time" if s else "error" for s, _ in part],
                             [1.0 + len(s) for s, _ in part if s], sum(bool(ls) for _, ls in part))
        i += len(part)
    assert _json(batched.to_state()) == _json(one.to_state())


def _traffic(rng: np.random.Generator, n: int) -> tuple[list[Score], list[ResultSummary]]:
    """Scores and results of ``n`` requests to three models over a few one-second windows,
    some late, some failed, as the monitor would read them."""
    models = ["champ@1", "chal@1", "canary@1"]
    scores, results = [], []
    for i in range(n):
        at = int(i * SECOND / 40 + rng.integers(0, SECOND // 4))
        for m in models:
            p = float(rng.random())
            failed = rng.random() < 0.05
            scores.append(Score(request_id=f"r{i}", deployment="d", model=m,
                                outputs={} if failed else {
                                    "predictions": [int(p > 0.5)],
                                    "probabilities": [[1 - p, p]]},
                                error="boom" if failed else None, finished_ns=at))
        results.append(ResultSummary(
            request_id=f"r{i}", model=models[0], reason=Reason.PREFERRED, received_ns=at,
            models={m: ModelOutcome(status=Status.ERROR if rng.random() < 0.05
                                    else Status.ON_TIME, latency_ms=float(rng.random() * 50))
                    for m in models}))
    order = rng.permutation(len(scores))  # scores arrive in any order
    return [scores[j] for j in order], results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_analytics_of_batches_equal_one_record_at_a_time(seed: int) -> None:
    """Windows, comparisons, totals: the same whether records come one by one or in batches
    of any size. (Not drift: a drift report is filed at the time of the batch that closed
    its block, so its window depends on the batching; it did before batches too.)"""
    rng = np.random.default_rng(seed)
    scores, results = _traffic(rng, 400)
    docs = []
    for batch in (1, 7, 64, 10_000):
        a = analytics.DeploymentAnalytics("d", settings=AlarmSettings(window_s=1))
        a.set_policy(models=["champ@1", "chal@1", "canary@1"], champion="champ@1",
                     canary=None, deadline_ms=100, references={})
        for i in range(0, len(scores), batch):
            a.add_scores(scores[i:i + batch])
        for i in range(0, len(results), batch):
            a.add_results(results[i:i + batch])
        a.tick(100 * SECOND)
        docs.append(_json((a.compare(), a.windows(), a.to_state())))
    assert all(d == docs[0] for d in docs)


# -- alarms and feedback ----------------------------------------------------------------------

@pytest.mark.parametrize(("verdicts", "states"), [
    ([True], ["firing"]),
    ([False, False], ["ok", "ok"]),
    ([True, False, False, False], ["firing", "firing", "firing", "resolved"]),
    ([True, False, True, False, False, False, True],
     ["firing", "firing", "firing", "firing", "firing", "resolved", "firing"]),
])
def test_alarm_states(verdicts: list[bool], states: list[str]) -> None:
    book = AlarmBook()
    got = []
    for t, v in enumerate(verdicts):
        book.update("a", v, {}, now_ns=t, clear_after=3)
        got.append(book.states["a"].state)
    assert got == states


@pytest.mark.parametrize(("raw", "message"), [
    ({"nope": 1}, "nope"), ({"window_s": 0}, "window_s"),
    ({"max_error_rate": 2}, "max_error_rate"), ({"clear_after": "x"}, "clear_after")])
def test_bad_alarm_settings_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AlarmSettings.parse(raw)
    with pytest.raises(ConfigError, match=message):
        Policy(models=[ModelSpec("a@1", Role.CHAMPION)], alarms=raw).validate()


def test_window_checks_table() -> None:
    s = AlarmSettings(min_requests=10)
    summary = {"requests": 100, "reasons": {"sla_miss": 5},
               "models": {"c@1": {"requests": 100, "statuses": {"error": 10},
                                  "latency_ms": {"p99": 120.0}}}}
    got = {n: f for n, f, _ in window_checks(summary, champion="c@1", deadline_ms=100,
                                              settings=s)}
    assert got == {"sla_miss_rate": True, "error_rate:c@1": True, "p99_over_deadline": True}
    assert window_checks({"requests": 5}, champion=None, deadline_ms=1, settings=s) == []


def test_feedback_joins_once_and_counts_unknown_and_invalid() -> None:
    a = analytics.DeploymentAnalytics("d")
    a.set_policy(models=["m@1"], champion="m@1", canary=None, deadline_ms=100,
                 references={})
    scored = {"m@1": reduce({"predictions": [2.0]})}
    fb = Feedback(request_id="r", deployment="d", labels=[3.0], at_ns=0)
    assert a.add_feedback(fb, scored, 0) == "joined"
    assert a.add_feedback(fb, scored, 0) == "duplicate"
    assert a.add_feedback(Feedback(request_id="u", deployment="d", labels=[1], at_ns=0),
                          None, 0) == "unknown"
    assert a.add_feedback(Feedback(request_id="v", deployment="d", labels=["x"], at_ns=0),
                          scored, 0) == "invalid"
    assert a.labels["m@1"].to_dict()["mae"] == 1.0
    restored = analytics.DeploymentAnalytics("d")
    restored.restore(a.to_state())
    assert restored.add_feedback(fb, scored, 0) == "duplicate"
    assert restored.labels["m@1"].n == 1


def test_cumulative_statistics_span_every_window_and_survive_a_restart() -> None:
    """Per model, since the start: what the windows keep, summed over all of them (closed
    windows leave the ring; the cumulative summary does not forget them)."""
    from rendezvous.core.messages import ModelOutcome, Reason, ResultSummary, Score, Status

    a = analytics.DeploymentAnalytics("d", settings=AlarmSettings.parse(
        {"window_s": 1, "windows_kept": 2}))
    a.set_policy(models=["m@1", "c@1"], champion="m@1", canary=None, deadline_ms=100,
                 references={})
    second = 10**9
    for i in range(10):  # ten windows, one request each
        at = i * second
        a.add_scores([Score(request_id=f"r{i}", deployment="d", model="m@1",
                            outputs={"predictions": [float(i)]}, finished_ns=at),
                      Score(request_id=f"r{i}", deployment="d", model="c@1",
                            outputs={"predictions": ["yes" if i % 2 else "no"]},
                            finished_ns=at)])
        a.add_result(ResultSummary(
            request_id=f"r{i}", model="m@1", reason=Reason.PREFERRED, received_ns=at,
            models={"m@1": ModelOutcome(status=Status.ON_TIME, latency_ms=float(i + 1)),
                    "c@1": ModelOutcome(status=Status.LATE if i < 3 else Status.ON_TIME,
                                        latency_ms=50.0)}))
    assert len(a.windows()) == 3  # two closed kept, one open
    total = a.compare()["cumulative"]
    assert total["m@1"]["requests"] == 10 and total["m@1"]["chosen"] == 10
    assert total["m@1"]["score"]["n"] == 10 and total["m@1"]["score"]["p50"] == pytest.approx(
        4.5, abs=0.51)
    assert total["c@1"]["statuses"] == {"late": 3, "on_time": 7}
    assert total["c@1"]["class_rates"] == {"no": 0.5, "yes": 0.5}
    restored = analytics.DeploymentAnalytics("d")
    restored.restore(a.to_state())
    assert restored.compare()["cumulative"] == total


@pytest.mark.parametrize(("body", "accepted", "rejected"), [
    (b'{"request_id": "a", "label": 1}', 1, 0),
    (b'{"request_id": "a", "labels": [1, 0]}', 1, 0),
    (b'{"request_id": "a", "labels": []}', 0, 1),
    (b'{"request_id": "../x", "label": 1}', 0, 1),
    (b'{"request_id": "a", "label": null}', 0, 1),
    (b'{"feedback": [{"request_id": "a", "label": "cat"}, 3]}', 1, 1),
])
def test_parse_feedback_table(body: bytes, accepted: int, rejected: int) -> None:
    ok, bad, _ = parse_feedback(body, "d", 0)
    assert (len(ok), len(bad)) == (accepted, rejected)


def test_alarm_thresholds_come_from_the_spec_file(tmp_path: Path) -> None:
    from rendezvous.deploy import load_spec

    spec = tmp_path / "d.toml"
    spec.write_text('name = "d"\n[[models]]\nmodel = "a@1"\nrole = "champion"\n'
                    '[alarms]\nwindow_s = 5\nmax_error_rate = 0.2\n')
    _, policy = load_spec(spec)
    assert AlarmSettings.parse(policy.alarms).max_error_rate == 0.2
    spec.write_text(spec.read_text() + "typo = 1\n")
    with pytest.raises(ConfigError, match="typo"):
        load_spec(spec)[1].validate()  # what `deploy apply` runs before recording it


def test_every_closed_window_is_judged_even_when_data_closed_it() -> None:
    a = analytics.DeploymentAnalytics("d", settings=AlarmSettings(window_s=1, min_requests=1))
    a.set_policy(models=["m@1"], champion="m@1", canary=None, deadline_ms=100, references={})
    from rendezvous.core.messages import ModelOutcome, Reason, ResultSummary, Status

    for t in (0, SECOND // 2, SECOND + 1, 2 * SECOND + 1):  # data closes windows 0 and 1
        a.add_result(ResultSummary(request_id=str(t), model=None, reason=Reason.SLA_MISS,
                                   received_ns=t, models={"m@1": ModelOutcome(
                                       status=Status.MISSING)}))
    a.tick(2 * SECOND + 2)
    assert a.alarms.states["sla_miss_rate"].state == "firing"
    assert a.alarms.states["sla_miss_rate"].evidence["requests"] == 1  # the second window


def test_label_detectors_survive_a_restart_under_the_same_champion() -> None:
    """The accuracy-drop and champion-worse detectors go on from their saved outcomes; a new
    champion starts the paired ones afresh."""
    a = analytics.DeploymentAnalytics("d")
    a.set_policy(models=["m@1", "c@1"], champion="m@1", canary=None, deadline_ms=100,
                 references={})
    for i in range(300):
        scored = {"m@1": reduce({"predictions": ["yes"]}),
                  "c@1": reduce({"predictions": ["yes" if i % 3 else "no"]})}
        fb = Feedback(request_id=f"r{i}", deployment="d", labels=["yes"], at_ns=0)
        assert a.add_feedback(fb, scored, 0) == "joined"
    state = msgspec.json.decode(msgspec.json.encode(a.to_state()))  # as the monitor saves it

    def detectors(x: analytics.DeploymentAnalytics) -> Any:
        return ({m: d.to_state() for m, d in x.drops.items()},
                {m: d.to_state() for m, d in x.paired.items()})

    restored = analytics.DeploymentAnalytics("d")
    restored.restore(state)
    restored.set_policy(models=["m@1", "c@1"], champion="m@1", canary=None, deadline_ms=100,
                        references={})
    assert detectors(restored) == detectors(a)
    assert len(restored.paired["c@1"].diffs.values) == 300
    assert len(restored.drops["m@1"].baseline.values) == 300
    other = analytics.DeploymentAnalytics("d")
    other.restore(state)
    other.set_policy(models=["m@1", "c@1"], champion="c@1", canary=None, deadline_ms=100,
                     references={})
    assert other.paired == {} and other.paired_labels == {}
    assert len(other.drops["m@1"].baseline.values) == 300  # a model's own baseline stays
