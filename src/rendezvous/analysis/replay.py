"""Replay: score archived inputs with a candidate model, in a model host, and judge it.

The candidate runs in a ``hosting.ModelHost`` process exactly as serving runs it, and is sent
the archived requests re-encoded to the very bytes the workers scored (each request's digest is
checked against the one the decoy recorded). Its scores go beside the archive, under
``replays/<model>/date=…/part-*.parquet`` in the score archive's schema; a rerun skips the
requests already scored there (resumable). The report compares the candidate with the champion
of each request's time (from the score archive) and with feedback labels where they exist, and
gives its latency per batch size.

>>> # report = await replay(home, "demo", "demo-lr@2", span=Span.parse("2h", None, now_ns=...))
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rendezvous import config
from rendezvous.analysis import evidence
from rendezvous.analysis.outcomes import LabelTally
from rendezvous.analysis.times import Span, TimeRangeError
from rendezvous.archive import Archive, open_archive
from rendezvous.core.compare import PairStats, Scored, reduce
from rendezvous.errors import ConfigError, RendezvousError
from rendezvous.hosting.model_host import ModelHost
from rendezvous.hosting.protocol import HostState
from rendezvous.registry import Registry
from rendezvous.roles.scorekeeper import score_items, scores_table
from rendezvous.streams.base import Record

__all__ = ["CandidateError", "Progress", "replay"]

BATCH = 256  # requests per predict call
WARM_LADDER = (1, 4, 16, 64)  # the first calls, so the report has latency at small batches
FLUSH_REQUESTS = 8192  # requests per output part: what a crash can lose of a run


class CandidateError(RendezvousError):
    """The candidate model could not be hosted for a replay."""

    def __init__(self, model: str, detail: str) -> None:
        self.model = model
        self.detail = detail
        super().__init__(f"cannot replay with {model}: {detail}; check it loads with "
                         f"`rendezvous models show {model}` and register a working version")


Progress = Callable[[int, int], None]  # (requests done in this run, requests to do)


@dataclass(slots=True)
class _Run:
    """What one replay run measured."""

    scored: int = 0
    rows: int = 0
    digests_checked: int = 0
    digests_matched: int = 0
    errors: int = 0
    calls: list[tuple[int, int, float]] = field(default_factory=list)  # requests, rows, s
    # Scores not yet written, as Arrow tables (few Python objects for the collector to walk).
    pending: list[pa.Table] = field(default_factory=list)
    pending_requests: int = 0
    pending_at_ns: int = 0  # the day of the part being gathered: its first request's
    loop_s: float = 0.0  # from the host being ready to the last scores written


def sampled(request_id: str, fraction: float) -> bool:
    """A stable choice of requests: the same id is always in or out (reruns resume)."""
    if fraction >= 1:
        return True
    h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return h < fraction * 2**64


async def replay(home: Path, deployment: str, model: str, *, span: Span = Span(),
                 sample: int | None = None, batch: int = BATCH,
                 registry_url: str | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Score the archived inputs of ``span`` with ``model`` (``name@version`` or an alias),
    write its scores beside the archive and return the report document."""
    if sample is not None and sample <= 0:
        raise ConfigError(f"--sample {sample} must be a positive number of requests")
    with Registry(home, url=registry_url) as reg:
        policy, _ = reg.policy(deployment)  # an unknown deployment fails here
        ref = str(reg.resolve(model))  # an unknown model fails here
        sig = reg.deployment_signature(deployment)
        champions = {r.version: _champion(r.body) for r in reg.policy_history(deployment)}
    in_range = evidence.request_ids(home, deployment, span, sig)
    if not in_range:
        raise TimeRangeError(
            f"no archived requests of {deployment!r} from {span.describe()}; widen --from/--to "
            "(`rendezvous archive export` shows what is archived)")
    fraction = 1.0 if sample is None else min(1.0, sample / len(in_range))
    archive = open_archive(home)
    out = evidence.replay_dataset(deployment, ref)
    done = set(evidence.scores(home, deployment, Span(), replay_of=ref,
                               columns=["request_id"])["request_id"].to_pylist())
    todo = sum(1 for i in in_range - done if sampled(i, fraction))
    total = len(in_range)
    del in_range
    run = _Run()
    host = ModelHost(home=home, deployment=deployment, model=ref, worker="replay",
                     registry_url=registry_url,
                     max_predict_ms=max(60_000.0, 10 * policy.deadline_ms))
    started = time.perf_counter()
    await host.start()
    try:
        state = await host.settled(timeout_s=config.READY_TIMEOUT_S.get())
        if state is not HostState.READY:
            raise CandidateError(ref, host.detail or f"not ready (still {state.value})")
        parts = _parts(evidence.requests(home, deployment, span, sig, batch=batch, skip=done),
                       fraction, batch)
        await _score_all(host, ref, parts, archive, out, run,
                         lambda: progress(run.scored, todo) if progress else None)
    finally:
        await host.stop()
    elapsed = time.perf_counter() - started
    report = await _judge(home, deployment, ref, span, fraction, champions, policy.champion)
    report.update({
        "deployment": deployment, "model": ref, "range": span.describe(),
        "requests_in_range": total, "sample_fraction": round(fraction, 6),
        "scored_now": run.scored, "rows_now": run.rows, "already_scored": len(done),
        "errors_now": run.errors,
        "digests": {"checked": run.digests_checked, "matched": run.digests_matched},
        "seconds": round(elapsed, 3), "scoring_seconds": round(run.loop_s, 3),
        "rows_per_s": round(run.rows / run.loop_s, 1) if run.rows and run.loop_s else None,
        "latency_by_batch": _latency(run.calls), "output": archive.where(out),
    })
    return report


async def _score_all(host: ModelHost, ref: str, parts: Iterator[list[evidence.Archived]],
                     archive: Archive, out: str, run: _Run,
                     tick: Callable[[], None]) -> None:
    """Score every part, one batch in the host at a time while the next is read and encoded;
    write the scores as they accumulate."""
    started = time.perf_counter()
    inflight: asyncio.Future[None] | None = None
    for part in parts:
        if inflight is not None:
            await inflight
            _flush(archive, out, run, force=False)
            tick()
        inflight = asyncio.ensure_future(_score(host, ref, part, run))
        await asyncio.sleep(0)  # let it send its batch before preparing the next
    if inflight is not None:
        await inflight
    _flush(archive, out, run, force=True)
    tick()
    run.loop_s = time.perf_counter() - started


def _parts(groups: Iterator[list[evidence.Archived]], fraction: float,
           batch: int) -> Iterator[list[evidence.Archived]]:
    """The sampled requests in predict calls: first the sizes of ``WARM_LADDER``, then
    ``batch`` at a time."""
    sizes = iter(WARM_LADDER)
    for group in groups:
        group = [a for a in group if sampled(a.request.request_id, fraction)]
        while group:
            n = next(sizes, batch)
            part, group = group[:n], group[n:]
            yield part


def _champion(body: dict[str, Any]) -> str | None:
    return next((m["model"] for m in body.get("models", []) if m.get("role") == "champion"),
                None)


async def _score(host: ModelHost, ref: str, part: list[evidence.Archived], run: _Run) -> None:
    records = [Record(offset=i, data=a.data) for i, a in enumerate(part)]
    for a in part:
        run.digests_checked += bool(a.recorded_digest)
        run.digests_matched += a.digest_matches
    t0 = time.perf_counter()
    data = await host.score(records)
    if data is None:  # restarted meanwhile: wait for it once more, then give up
        await host.settled(timeout_s=config.READY_TIMEOUT_S.get())
        data = await host.score(records)
        if data is None:
            raise CandidateError(ref, f"its host is {host.state.value}: {host.detail}")
    seconds = time.perf_counter() - t0
    table = scores_table(score_items(data))
    n_rows = sum(a.request.n_rows for a in part)
    run.calls.append((len(part), n_rows, seconds))
    run.scored += len(part)
    run.rows += n_rows
    run.errors += table.num_rows - table["error"].null_count
    if not run.pending:
        run.pending_at_ns = part[0].request.received_ns
    run.pending.append(table)
    run.pending_requests += len(part)


def _flush(archive: Archive, out: str, run: _Run, *, force: bool) -> None:
    if not run.pending or (not force and run.pending_requests < FLUSH_REQUESTS):
        return
    archive.write(pa.concat_tables(run.pending), out, run.pending_at_ns)
    run.pending, run.pending_requests = [], 0


def _latency(calls: list[tuple[int, int, float]]) -> list[dict[str, Any]]:
    """Predict-call latency by batch size (requests per call, in powers of two)."""
    buckets: dict[int, list[tuple[int, float]]] = {}
    for n, rows, s in calls:
        buckets.setdefault(1 << (n - 1).bit_length(), []).append((rows, s))
    out = []
    for size in sorted(buckets):
        items = buckets[size]
        secs = np.array([s for _, s in items]) * 1000
        rows = sum(r for r, _ in items)
        out.append({"batch_up_to": size, "calls": len(items), "rows": rows,
                    "ms_p50": round(float(np.quantile(secs, 0.5)), 3),
                    "ms_p95": round(float(np.quantile(secs, 0.95)), 3),
                    "rows_per_s": round(float(rows / (secs.sum() / 1000)), 1)
                    if secs.sum() else None})
    return out


async def _judge(home: Path, deployment: str, ref: str, span: Span, fraction: float,
                 champions: dict[int, str | None], current: str | None) -> dict[str, Any]:
    """The candidate's scores of the range against the champion of each request's time (the
    current one where no decision was archived), and against labels. Reads the replay output
    one part at a time."""
    try:
        res = evidence.results(home, deployment, span)
    except RendezvousError:
        res = None  # no decisions archived: nothing to say who was champion
    version = {} if res is None else dict(zip(res["request_id"].to_pylist(),
                                              res["policy_version"].to_pylist(), strict=True))
    labels = await evidence.labels(home, deployment)
    pair = PairStats()
    tally = LabelTally()
    requests = labelled = 0
    champs_seen: set[str] = set()
    archive = open_archive(home)
    for path in evidence.files(archive, evidence.replay_dataset(deployment, ref), span):
        mine = archive.read(path, columns=["request_id", "outputs", "error"])
        ids = [i for i in mine["request_id"].to_pylist()
               if (res is None or i in version) and sampled(i, fraction)]
        if not ids:
            continue
        mine = mine.filter(pc.is_in(mine["request_id"], value_set=pa.array(ids, pa.string())))
        champ_of = {i: champions.get(version[i]) if i in version else current for i in ids}
        theirs = _reduced(evidence.scores(home, deployment, span, ids=ids,
                                          models=[m for m in set(champ_of.values()) if m],
                                          columns=["request_id", "model", "outputs", "error"]))
        for rid, scored in _reduced(mine.append_column(
                "model", pa.array([ref] * mine.num_rows, pa.string()))).items():
            requests += 1
            champ_name = champ_of[rid]
            champ = theirs.get(rid, {}).get(champ_name or "")
            cand = scored[ref]
            if champ is not None and champ_name != ref:
                champs_seen.add(champ_name or "")
                pair.add(cand, champ)
            raw = labels.get(rid)
            if raw is not None:
                labelled += 1
                tally.add(ref, cand, raw)
                if champ is not None and champ_name:
                    tally.add(f"champion ({champ_name})" if champ_name != ref else ref,
                              champ, raw)
    return {"judged_requests": requests, "labelled_requests": labelled,
            "champions": sorted(champs_seen), "against_champion": pair.summary(),
            "labels": tally.to_dict()}


def _reduced(table: pa.Table) -> dict[str, dict[str, Scored]]:
    found: dict[str, dict[str, Scored]] = {}
    for row in table.to_pylist():
        found.setdefault(row["request_id"], {})[row["model"]] = reduce(
            evidence.decode_outputs(row["outputs"]), error=row["error"] is not None)
    return found
