"""CPU cost of the meta-analytics, per part, without servers: ``python -m bench.analytics_cpu``.

Feeds the messages of N requests of the ``rendezvous-4`` benchmark deployment (one row of 20
features; champion, fallback, challenger and canary, each a binary classifier) through what a
serving process runs for them beyond the rendezvous decision, in stream-sized batches:

- ``monitor.results``: the monitor's results handler (``DeploymentStats`` and the analytics);
  ``monitor.results (stats only)`` is the same with analytics off, what every deployment pays;
- ``monitor.scores``, ``monitor.inputs``: the analytics' scores and inputs handlers (paired
  comparisons, score digests, canary and column drift);
- ``monitor.tick``: the once-a-second tick (window roll, alarm rules, early drift blocks);
- ``scorekeeper.*``: turning the records into Parquet parts and writing them (to a temporary
  directory), one part per topic per ``--flush`` requests (one second at the benchmark's
  rate per serving process).

Prints CPU seconds (``time.process_time``) per 1,000 requests for each part. Throughput on a
shared two-core machine is noisy; CPU time per request is what the analytics cost and is
stable between runs. ``--profile`` adds the top of a cProfile profile of the whole feed.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rendezvous.core import messages
from rendezvous.core.messages import ModelOutcome, Reason, Request, Result, Score, Status
from rendezvous.core.reference import build_reference

DEPLOYMENT = "bench4"
MODELS = ["hgb@1", "hgb-fallback@1", "hgb-challenger@1", "hgb-canary@1"]
CHAMPION, CANARY = MODELS[0], MODELS[3]
FEATURES = [f"f{i}" for i in range(20)]
START_NS = 1_700_000_000 * 10**9


@dataclass(frozen=True)
class Rec:
    """What a consumer hands a handler: a record's offset and bytes."""

    offset: int
    data: bytes


@dataclass
class Feed:
    """The encoded records of N requests, in the order the streams carry them."""

    inputs: list[Rec]
    scores: list[Rec]  # one record per worker micro-batch (a list of Score)
    results: list[Rec]
    references: dict[str, dict[str, Any]]
    end_ns: int


def _row(rng: random.Random) -> list[float]:
    return [rng.gauss(0.0, 1.5) for _ in FEATURES]


def _outputs(rng: random.Random) -> dict[str, list[Any]]:
    p = rng.random()
    return {"predictions": [int(p > 0.5)], "probabilities": [[1.0 - p, p]]}


def make_feed(n: int, *, rate: float, micro_batch: int, seed: int = 0) -> Feed:
    rng = random.Random(seed)
    step = int(1e9 / rate)
    inputs, scores, results = [], [], []
    pending: dict[str, list[Score]] = {m: [] for m in MODELS}
    for i in range(n):
        rid = f"{i:026d}"
        at = START_NS + i * step
        inputs.append(Rec(i + 1, messages.encode(Request(
            request_id=rid, deployment=DEPLOYMENT, received_ns=at, deadline_ns=at + 200 * 10**6,
            inputs={f: [v] for f, v in zip(FEATURES, _row(rng), strict=True)}, n_rows=1,
            return_to="p1"))))
        for m in MODELS:
            pending[m].append(Score(request_id=rid, deployment=DEPLOYMENT, model=m,
                                    outputs=_outputs(rng), started_ns=at + 10**6,
                                    finished_ns=at + 3 * 10**6, worker=f"w/{m}",
                                    input_digest="0" * 32))
            if len(pending[m]) == micro_batch or i == n - 1:
                scores.append(Rec(len(scores) + 1, messages.encode(pending[m])))
                pending[m] = []
        results.append(Rec(i + 1, messages.encode(Result(
            request_id=rid, deployment=DEPLOYMENT, model=CHAMPION, reason=Reason.PREFERRED,
            policy_version=1, received_ns=at, responded_ns=at + 4 * 10**6,
            models={m: ModelOutcome(status=Status.ON_TIME, latency_ms=2.0 + rng.random(),
                                    filed_ns=at + 3 * 10**6) for m in MODELS},
            outputs=_outputs(rng)))))
    ref_rng = random.Random(seed + 1)
    sample = [_row(ref_rng) for _ in range(2000)]
    columns = {f: [r[j] for r in sample] for j, f in enumerate(FEATURES)}
    outs = [_outputs(ref_rng) for _ in range(2000)]
    out_cols = {k: [o[k][0] for o in outs] for k in ("predictions", "probabilities")}
    ref = build_reference(columns, out_cols)
    return Feed(inputs, scores, results, {m: ref for m in MODELS}, START_NS + n * step)


def _batches(recs: list[Rec], size: int) -> list[list[Rec]]:
    return [recs[i:i + size] for i in range(0, len(recs), size)]


class Clock:
    """CPU seconds spent per named part (the least of several runs: other processes on the
    machine only ever add to it)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.best: dict[str, float] = {}

    def next_run(self) -> None:
        for part, s in self.spent.items():
            self.best[part] = min(s, self.best.get(part, s))
        self.spent = {}

    def run(self, part: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.process_time()
        out = fn(*args)
        self.spent[part] = self.spent.get(part, 0.0) + time.process_time() - t0
        return out


def _monitor(feed: Feed, analytics: bool) -> Any:
    from rendezvous.roles.monitor import Monitor

    mon = Monitor(None, DEPLOYMENT, analytics=analytics)  # type: ignore[arg-type]
    if mon.analytics is not None:
        mon.analytics.set_policy(models=MODELS, champion=CHAMPION, canary=CANARY,
                                 deadline_ms=200.0, references=feed.references)
    return mon


def run_monitor(feed: Feed, clock: Clock, *, batch: int) -> Any:
    """The monitor's handlers over the feed, interleaved as the streams deliver them."""
    stats_only = _monitor(feed, analytics=False)
    for b in _batches(feed.results, batch):
        clock.run("monitor.results (stats only)", stats_only._on_results, b)
    mon = _monitor(feed, analytics=True)
    a = mon.analytics
    per_score = max(1, len(feed.scores) // max(1, len(feed.results)))
    rb, sb, ib = (_batches(feed.results, batch), _batches(feed.scores, batch * per_score),
                  _batches(feed.inputs, batch))
    next_tick = START_NS
    for i in range(max(len(rb), len(sb), len(ib))):
        if i < len(ib):
            clock.run("monitor.inputs", mon._on_inputs, ib[i])
        if i < len(sb):
            clock.run("monitor.scores", mon._on_scores, sb[i])
        if i < len(rb):
            clock.run("monitor.results", mon._on_results, rb[i])
            now = messages.result_summary_decoder.decode(rb[i][-1].data).received_ns
            while next_tick <= now:
                clock.run("monitor.tick", a.tick, next_tick)
                next_tick += 10**9
    clock.run("monitor.tick", a.tick, feed.end_ns + 120 * 10**9)  # closes the last window
    return a


def _gather(recs: list[Rec], kind: Any, items: list[Any]) -> None:
    for r in recs:
        items += kind.items(r.data)


def _write_part(arc: Any, items: list[Any], kind: Any) -> None:
    from rendezvous.archive import dataset

    stamp = items[0][kind.field] if isinstance(kind, _RowsKind) else \
        getattr(items[0], kind.time_field)
    arc.write(kind.table(items), dataset(DEPLOYMENT, kind.dataset), stamp)


class _RowsKind:
    """The scorekeeper before ``KINDS`` (a dict per row, ``Table.from_pylist``), so that
    this script measures the code before and after that change alike."""

    def __init__(self, topic: str) -> None:
        from rendezvous.roles import scorekeeper as sk

        self.dataset = topic
        self.items = {"scores": sk.score_rows, "results": sk.result_rows}[topic]
        self.schema = {"scores": sk.SCORES_SCHEMA, "results": sk.RESULTS_SCHEMA}[topic]
        self.field = {"scores": "finished_ns", "results": "received_ns"}[topic]

    def table(self, rows: list[dict[str, Any]]) -> Any:
        import pyarrow as pa

        return pa.Table.from_pylist(rows, schema=self.schema)


def _kinds() -> dict[str, Any]:
    try:
        from rendezvous.roles.scorekeeper import KINDS
    except ImportError:
        return {topic: _RowsKind(topic) for topic in ("scores", "results")}
    return KINDS


def run_scorekeeper(feed: Feed, clock: Clock, *, flush: int, batch: int, root: Path) -> None:
    """Each of the scorekeeper's archivers over its topic, a part per ``flush`` requests."""
    from rendezvous.archive import LocalArchive

    arc = LocalArchive(root)
    kinds = _kinds()
    per_flush = {"scores": max(1, flush * len(feed.scores) // len(feed.results)),
                 "results": flush}
    for topic, recs in (("scores", feed.scores), ("results", feed.results)):
        part = f"scorekeeper.{topic}"
        for chunk in _batches(recs, per_flush[topic]):
            items: list[Any] = []
            for b in _batches(chunk, batch):
                clock.run(part, _gather, b, kinds[topic], items)
            clock.run(part, _write_part, arc, items, kinds[topic])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000, help="requests (default 20000)")
    ap.add_argument("--rate", type=float, default=500.0,
                    help="requests per second per serving process (default 500)")
    ap.add_argument("--batch", type=int, default=16,
                    help="records per stream delivery (default 16)")
    ap.add_argument("--micro-batch", type=int, default=4,
                    help="requests per worker micro-batch (default 4)")
    ap.add_argument("--flush", type=int, default=500,
                    help="requests per scorekeeper part (default 500)")
    ap.add_argument("--only", choices=["monitor", "scorekeeper"], help="one role only")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the least CPU counts (3)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile profile too")
    args = ap.parse_args(argv)

    feed = make_feed(args.n, rate=args.rate, micro_batch=args.micro_batch)
    clock = Clock()
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            if args.only != "scorekeeper":
                run_monitor(feed, clock, batch=args.batch)
            if args.only != "monitor":
                run_scorekeeper(feed, clock, flush=args.flush, batch=args.batch,
                                root=Path(tmp))
        clock.next_run()
    if prof:
        prof.disable()
    per = 1000 / args.n
    print(f"CPU ms per 1,000 requests (n={args.n}, batch={args.batch}, "
          f"micro-batch={args.micro_batch}, flush={args.flush}, least of {args.repeat})")
    added = 0.0
    for part, s in clock.best.items():
        print(f"  {part:32s} {s * per * 1000:8.1f}")
        if "stats only" not in part:
            added += s
    stats = clock.best.get("monitor.results (stats only)", 0.0)
    print(f"  {'analytics on, in all':32s} {added * per * 1000:8.1f}")
    print(f"  {'added by analytics':32s} {(added - stats) * per * 1000:8.1f}")
    if prof:
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
