"""Meta-analytics: consumes a deployment's results, scores, inputs and feedback labels.

The monitor keeps ``DeploymentStats`` (counts and latency since start) and, unless
``analytics=False``, a ``DeploymentAnalytics`` (``core.analytics``): windows, paired
comparisons with the champion, drift against the references recorded at registration, live
accuracy from feedback and alarms. It persists the analytics state (closed windows, alarms,
labels already counted) under ``<home>/monitor/<deployment>.json`` whenever a window closes and
before it acknowledges feedback, so a restart keeps its history and never counts a label twice.
Alarm changes go to the webhook, if one is set, from a task of their own: a slow or dead
webhook never holds up anything else.

After a promotion the monitor watches the new champion for the policy's ``watch_s``
(``analysis.gates.watch_verdict``): if its error-rate or the SLA-miss alarm fires, or the
previous champion (still scoring, as a challenger) beats it on the labels, the monitor rolls
the deployment back in the registry (``by`` ``rendezvous (auto-rollback)``, with the reasons
and evidence), which every serving process follows, and posts the event to the webhook. The
rollback is conditional on the promoted policy still being current, so where several monitors
watch (partitions), one records it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from rendezvous import config
from rendezvous.analysis.gates import Watch, watch_verdict
from rendezvous.core import messages
from rendezvous.core.alarms import AlarmSettings
from rendezvous.core.analytics import DeploymentAnalytics, Timed
from rendezvous.core.compare import Scored, reduce, reduce_rows
from rendezvous.core.drift import gather_columns
from rendezvous.core.messages import Feedback
from rendezvous.core.policy import Policy
from rendezvous.core.stats import DeploymentStats
from rendezvous.errors import ConflictError, RendezvousError
from rendezvous.roles.reads import GROUP, READ_PAUSE_S, count_results, groups
from rendezvous.streams.base import Source, open_stream, partitions

if TYPE_CHECKING:
    from rendezvous.archive import Archive
    from rendezvous.registry.store import PolicyRecord

log = logging.getLogger(__name__)

__all__ = ["GROUP", "READ_PAUSE_S", "DeploymentStats", "Monitor", "groups", "stats_from_log"]

TICK_S = 1.0
WEBHOOK_TRIES = 4
AUTO_ROLLBACK_BY = "rendezvous (auto-rollback)"


@contextlib.contextmanager
def _contained(deployment: str, what: str, offset: int) -> Iterator[None]:
    """Statistics over data of unexpected shape (a model's odd outputs, tensor inputs) skip
    that record with an error in the log: the monitor's counts must keep going."""
    try:
        yield
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        _skipped(deployment, what, offset, exc)


def _skipped(deployment: str, what: str, offset: int, exc: Exception) -> None:
    log.error("monitor %s: skipped %s %s in the analytics: %s", deployment, what, offset, exc)


def reduced_scores(data: bytes) -> list[tuple[Timed, Scored]]:
    """The scores of one scores record, each with its outputs reduced. The usual outputs
    decode straight into the tuples a reduction keeps (``ScoreSummary``): this runs for every
    score of every model. Any other outputs are read as a whole ``Score``. Raises
    ``msgspec.DecodeError`` for a record that is not a list of scores, and what ``reduce``
    raises for outputs it cannot reduce."""
    try:
        return [(s, reduce_rows(s.outputs.predictions, s.outputs.probabilities,
                                error=s.error is not None))
                for s in messages.score_summaries_decoder.decode(data)]
    except msgspec.ValidationError:
        return [(s, reduce(s.outputs, error=s.error is not None))
                for s in messages.scores_decoder.decode(data)]


def _label_horizon_ns() -> int:
    return int(config.LABEL_HORIZON_HOURS.get() * 3600 * 10**9)


def state_path(home: Path, deployment: str) -> Path:
    return home / "monitor" / f"{deployment}.json"


class Monitor:
    """Keeps ``DeploymentStats`` and the deployment's analytics current from its streams."""

    def __init__(self, stream: Source, deployment: str, *, home: Path | None = None,
                 registry: Any = None, policy: Policy | None = None,
                 analytics: bool | None = None, archive: Archive | None = None,
                 clock: Callable[[], int] = time.time_ns,
                 read_pause_s: float = READ_PAUSE_S) -> None:
        self.stream = stream
        self.deployment = deployment
        self.stats = DeploymentStats(deployment)
        self.home = home
        self.archive = archive  # where older scores are looked up (rendezvous.archive)
        self.registry = registry
        self.clock = clock
        self.read_pause_s = read_pause_s  # see ``READ_PAUSE_S``; 0 where a relay paces reads
        self.settings = AlarmSettings.parse(policy.alarms if policy is not None else None)
        self.analytics: DeploymentAnalytics | None = (
            DeploymentAnalytics(deployment, settings=self.settings,
                                label_horizon_ns=_label_horizon_ns())
            if config.ANALYTICS.get(analytics) else None)
        self._policy = policy
        self._refs: dict[str, dict[str, Any]] = {}
        self._consumers: list[Any] = []
        self._wake = asyncio.Event()
        self._saving: asyncio.Future[None] | None = None  # the latest save of the state
        self.watch: Watch | None = None  # the promotion under watch, if any
        if self.analytics is not None and home is not None:
            path = state_path(home, deployment)
            if path.exists():
                try:
                    self.analytics.restore(msgspec.json.decode(path.read_bytes()))
                except (msgspec.DecodeError, OSError, TypeError, KeyError) as exc:
                    log.error("monitor %s: ignoring unreadable state %s (%s)", deployment,
                              path, exc)

    # -- policy and references ------------------------------------------------------------------

    def set_policy(self, policy: Policy, record: PolicyRecord | None = None) -> None:
        """Follow a new policy: champion, canary, deadline, and the models' references;
        ``record`` (its ``PolicyRecord``): a promotion starts the watch, anything else ends
        it."""
        self._policy = policy
        if self.analytics is not None:
            self._apply_policy()
        if record is not None:
            self._follow(policy, record)

    def _follow(self, policy: Policy, record: PolicyRecord) -> None:
        gates = policy.promotion_gates()
        start_ns = int(record.at * 1e9)
        until_ns = start_ns + int(gates.watch_s * 1e9)
        if record.action != "promote" or policy.champion is None or self.analytics is None \
                or self.clock() >= until_ns:
            self.watch = None
            return
        previous = (record.evidence or {}).get("champion")
        self.watch = Watch(record.version, policy.champion, previous, start_ns, until_ns,
                           gates)
        log.info("monitor %s: watching %s (policy %s) for %g s", self.deployment,
                 policy.champion, record.version, gates.watch_s)

    async def _check_watch(self) -> None:
        """Roll back the watched promotion if ``watch_verdict`` finds a reason."""
        w, a = self.watch, self.analytics
        if w is None or a is None:
            return
        now = self.clock()
        if now >= w.until_ns:
            log.info("monitor %s: %s held up through its watch", self.deployment, w.champion)
            self.watch = None
            return
        reasons = watch_verdict(w, alarms=a.alarms.to_list(), accuracy={"paired":
                                                                         a.paired_doc()})
        if not reasons:
            return
        if self.registry is None:
            log.error("monitor %s: %s should be rolled back (%s) but this monitor has no "
                      "registry", self.deployment, w.champion, reasons)
            self.watch = None
            return
        evidence = {"promoted_policy": w.version, "champion": w.champion,
                    "previous": w.previous, "watch_s": w.gates.watch_s, "reasons": reasons}
        note = "; ".join(r["reason"] for r in reasons)
        try:
            rec = await asyncio.to_thread(
                self.registry.rollback, self.deployment, by=AUTO_ROLLBACK_BY,
                action="auto-rollback", note=note, evidence=evidence, expect_current=w.version)
        except ConflictError as exc:  # changed meanwhile, or another monitor rolled it back
            log.info("monitor %s: no automatic rollback: %s", self.deployment, exc)
            self.watch = None
            return
        except RendezvousError as exc:  # e.g. the registry is unreachable: try next tick
            log.error("monitor %s: automatic rollback failed (%s); retrying", self.deployment,
                      exc)
            return
        self.watch = None
        log.warning("monitor %s: rolled back %s automatically (policy %s): %s",
                    self.deployment, w.champion, rec.version, note)
        a.events.append({"deployment": self.deployment, "alarm": "auto_rollback",
                         "state": "rolled_back", "at_ns": now, "policy_version": rec.version,
                         "evidence": evidence})
        self._wake.set()

    def _apply_policy(self) -> None:
        pol = self._policy
        if pol is None or self.analytics is None:
            return
        self.analytics.set_policy(models=pol.model_names(), champion=pol.champion,
                                  canary=pol.canary, deadline_ms=pol.deadline_ms,
                                  references=self._refs)

    async def _load_references(self) -> None:
        if self.registry is None or self._policy is None:
            return
        for model in self._policy.model_names():
            if model in self._refs:
                continue
            try:
                mv = await asyncio.to_thread(self.registry.get, model)
            except RendezvousError as exc:
                log.warning("monitor %s: no reference for %s (%s)", self.deployment, model, exc)
                continue
            self._refs[model] = mv.data_summary.get("reference") or {}
        self._apply_policy()

    async def _resume_watch(self) -> None:
        """A monitor (re)started during a promotion's watch takes the watch up."""
        if self.registry is None or self._policy is None:
            return
        try:
            policy, rec = await asyncio.to_thread(self.registry.policy, self.deployment)
        except RendezvousError as exc:
            log.warning("monitor %s: cannot read the policy record (%s)", self.deployment, exc)
            return
        if policy.champion == self._policy.champion:
            self._follow(policy, rec)

    # -- the loops ------------------------------------------------------------------------------

    async def run(self) -> None:
        topic = messages.topic
        loops = [self._pump(topic(self.deployment, "results"), self._on_results)]
        background: list[asyncio.Future[None]] = []
        if self.analytics is not None:
            await self._load_references()
            await self._resume_watch()
            loops += [self._pump(topic(self.deployment, "scores"), self._on_scores),
                      self._pump(topic(self.deployment, "input"), self._on_inputs),
                      self._pump(topic(self.deployment, "feedback"), self._on_feedback,
                                 max_batch=500, pause_s=0.0)]
            background = [asyncio.ensure_future(self._tick()),
                          asyncio.ensure_future(self._webhook())]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in background:
                task.cancel()

    async def _pump(self, topic: str, handle: Callable[[list[Any]], Any], *,
                    max_batch: int = 2048, pause_s: float | None = None) -> None:
        """Hand each delivery of ``topic`` to ``handle``, then acknowledge it; after a
        delivery that was not full, wait ``pause_s`` (default ``read_pause_s``) for more
        records to gather."""
        if pause_s is None:
            pause_s = self.read_pause_s
        consumer = self.stream.consume(topic, GROUP, start="latest", max_batch=max_batch)
        self._consumers.append(consumer)
        async for batch in consumer:
            done = handle(batch.records)
            if asyncio.iscoroutine(done):
                await done
            await batch.ack()
            if pause_s and len(batch.records) < max_batch:
                await asyncio.sleep(pause_s)

    def _on_results(self, records: list[Any]) -> None:
        results = count_results(self.stats, records)
        if self.analytics is not None and results:
            with _contained(self.deployment, "results up to", records[-1].offset):
                self.analytics.add_results(results)

    def _on_scores(self, records: list[Any]) -> None:
        """Each record's outputs are reduced on their own (a model's odd outputs skip its
        record alone), then the whole delivery goes to the analytics at once: their cost is
        mostly per call."""
        assert self.analytics is not None
        reduced: list[tuple[Timed, Scored]] = []
        for rec in records:
            try:
                scores = reduced_scores(rec.data)
            except msgspec.DecodeError:
                log.error("monitor %s: undecodable scores %s", self.deployment, rec.offset)
                continue
            except (TypeError, ValueError, IndexError) as exc:
                _skipped(self.deployment, "scores", rec.offset, exc)
                continue
            with _contained(self.deployment, "scores", rec.offset):
                for s, scored in scores:
                    self.analytics.learn(s.model, scored)
                reduced += scores
        if reduced:
            with _contained(self.deployment, "scores up to", records[-1].offset):
                self.analytics.add_reduced(reduced)

    def _on_inputs(self, records: list[Any]) -> None:
        """The inputs of a whole batch of requests go to the drift test at once: its cost is
        per call, not per row."""
        assert self.analytics is not None
        requests = []
        last_ns = 0
        for rec in records:
            try:
                req = messages.request_inputs_decoder.decode(rec.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # the decoy and the workers log undecodable requests already
            requests.append((req.inputs, req.n_rows))
            last_ns = req.received_ns
        if requests:
            with _contained(self.deployment, "requests up to", records[-1].offset):
                self.analytics.add_inputs(gather_columns(requests), last_ns)

    async def _on_feedback(self, records: list[Any]) -> None:
        """Join each label with its request's scores (recent ones from memory, older ones from
        the score archive); labels whose scores have not all arrived yet wait a little
        (``RENDEZVOUS_FEEDBACK_WAIT_S``). The state is written before the batch is acknowledged."""
        assert self.analytics is not None
        waiting: list[Feedback] = []
        for rec in records:
            try:
                waiting.append(messages.feedback_decoder.decode(rec.data))
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("monitor %s: undecodable feedback %s", self.deployment, rec.offset)
        give_up = time.monotonic() + config.FEEDBACK_WAIT_S.get()
        while waiting:
            book, expected = self.analytics.book, set(self.analytics.models)
            archived = await self._lookup([fb.request_id for fb in waiting
                                           if book.get(fb.request_id) is None])
            later = []
            for fb in waiting:
                recent = book.get(fb.request_id)
                scored = recent or archived.get(fb.request_id)
                # A recent request may still have scores on their way (the topics are read
                # apart): a label joins once, so it waits for every model's score.
                pending = not scored or (recent is not None and not expected <= recent.keys())
                if pending and fb.request_id not in self.analytics.labelled \
                        and time.monotonic() < give_up:
                    later.append(fb)
                    continue
                self.analytics.add_feedback(fb, scored, self.clock())
            waiting = later
            if waiting:
                await asyncio.sleep(0.5)
        await self._persist()

    async def _lookup(self, ids: list[str]) -> dict[str, dict[str, Scored]]:
        if not ids or self.home is None:
            return {}
        from rendezvous.roles.scorekeeper import lookup_scores

        try:
            return await asyncio.to_thread(lookup_scores, self.home, self.deployment, ids,
                                           archive=self.archive)
        except (OSError, RendezvousError) as exc:
            log.warning("monitor %s: cannot read the score archive (%s)", self.deployment, exc)
            return {}

    async def _tick(self) -> None:
        assert self.analytics is not None
        while True:
            await asyncio.sleep(TICK_S)
            closed = len(self.analytics.ring.closed)
            self.analytics.tick(self.clock())
            await self._check_watch()
            if self.analytics.events:
                self._wake.set()
            if len(self.analytics.ring.closed) != closed:
                await self._persist()

    async def _persist(self) -> None:
        """Save the analytics' state. Saves run one after the other, in the order they were
        asked for, even when the one asking is cancelled mid-save (the tick, at stop): the
        last state asked for is the one on disk."""
        if self.analytics is None or self.home is None:
            return
        data = msgspec.json.encode(self.analytics.to_state())
        path, previous = state_path(self.home, self.deployment), self._saving

        async def save() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await asyncio.to_thread(config.write_private, path, data)

        self._saving = saving = asyncio.ensure_future(save())
        await asyncio.shield(saving)

    async def _webhook(self) -> None:
        """POST each alarm change (JSON) to the webhook, retried with backoff; changes that
        cannot be delivered are logged and dropped, never queued without bound."""
        assert self.analytics is not None
        events = self.analytics.events
        while True:
            await self._wake.wait()
            self._wake.clear()
            url = self.settings.webhook_url
            while events:
                event = events.popleft()
                if url:
                    await post_with_retries(url, event)

    async def stop(self) -> None:
        for consumer in self._consumers:
            await consumer.close()
        await self._persist()


async def post_with_retries(url: str, body: dict[str, Any], *, tries: int = WEBHOOK_TRIES,
                            backoff_s: float = 0.5) -> bool:
    """POST ``body`` as JSON; retried on errors and 5xx. True when delivered."""
    import httpx

    async with httpx.AsyncClient(timeout=5) as client:
        for attempt in range(tries):
            try:
                r = await client.post(url, json=body)
                if r.status_code < 500:
                    return r.status_code < 400
            except httpx.HTTPError as exc:
                log.warning("alarm webhook %s: %s (try %d of %d)", url, exc, attempt + 1, tries)
            await asyncio.sleep(backoff_s * 2 ** attempt)
    log.error("alarm webhook %s: giving up on %s", url, body.get("alarm"))
    return False


async def stats_from_log(home: Path, deployment: str, *, streams: str = "embedded",
                         since_ns: int | None = None) -> DeploymentStats:
    """Statistics over every recorded result of a deployment (or those since ``since_ns``),
    read straight from the results stream; works whether or not a server is running. With
    the embedded engine, the logs of every partition (``serve --processes N``) are merged."""

    stats = DeploymentStats(deployment)
    urls = partitions(streams, home=home)
    topic = messages.topic(deployment, "results")
    for url in urls:
        stream = await open_stream(url, home=home, read_only=True)
        try:
            records = await stream.read(topic, from_time_ns=since_ns, limit=50_000) \
                if since_ns else await stream.read(topic, from_offset=1, limit=50_000)
            while records:
                for rec in records:
                    stats.add(messages.result_summary_decoder.decode(rec.data))
                records = await stream.read(topic, from_offset=records[-1].offset + 1,
                                            limit=50_000)
        finally:
            await stream.close()
    return stats


async def analytics_from_log(home: Path, deployment: str, registry: Any, *,
                             streams: str = "embedded", limit: int = 200_000,
                             archive: Archive | str | None = None) -> DeploymentAnalytics:
    """The deployment's analytics rebuilt from its streams (the last ``limit`` records of
    each topic, replayed in time order) and the archive for older scores and labels: what
    the CLI shows when no server is running."""
    from rendezvous.roles.scorekeeper import archived_feedback, lookup_scores

    policy, _ = await asyncio.to_thread(registry.policy, deployment)
    a = DeploymentAnalytics(deployment, settings=AlarmSettings.parse(policy.alarms),
                            label_horizon_ns=_label_horizon_ns())
    refs = {}
    for model in policy.model_names():
        mv = await asyncio.to_thread(registry.get, model)
        refs[model] = mv.data_summary.get("reference") or {}
    a.set_policy(models=policy.model_names(), champion=policy.champion, canary=policy.canary,
                 deadline_ms=policy.deadline_ms, references=refs)
    urls = partitions(streams, home=home)
    timeline: list[tuple[int, int, str, bytes]] = []
    order = {"input": 0, "scores": 1, "results": 2, "feedback": 3}
    for url in urls:
        stream = await open_stream(url, home=home, read_only=True)
        try:
            for kind, rank in order.items():
                topic = messages.topic(deployment, kind)
                last = await stream.last_offset(topic)
                if not last:
                    continue
                start = max(1, last - limit + 1)
                while start <= last:
                    records = await stream.read(topic, from_offset=start, limit=10_000)
                    if not records:
                        break
                    timeline += [(r.ts_ns, rank, kind, r.data) for r in records]
                    start = records[-1].offset + 1
        finally:
            await stream.close()
    timeline.sort(key=lambda t: (t[0], t[1]))
    older: list[Feedback] = []  # labels for requests before the replayed records
    replayed: set[str] = set()  # request ids of the labels in the replayed records
    for ts, _, kind, data in timeline:
        a.tick(ts)
        if kind == "input":
            req = messages.request_decoder.decode(data)
            a.add_inputs(req.inputs, req.received_ns)
        elif kind == "scores":
            a.add_scores(messages.scores_decoder.decode(data))
        elif kind == "results":
            a.add_result(messages.result_summary_decoder.decode(data))
        else:
            fb = messages.feedback_decoder.decode(data)
            replayed.add(fb.request_id)
            scored = a.book.get(fb.request_id)
            if scored is None:
                older.append(fb)
            else:
                a.add_feedback(fb, scored, ts)
    # Labels older than the stream log's retention (or the replayed records) are archived.
    older = await asyncio.to_thread(archived_feedback, home, deployment, skip=replayed,
                                    archive=archive) + older
    archived = await asyncio.to_thread(lookup_scores, home, deployment,
                                       [fb.request_id for fb in older], archive=archive)
    for fb in older:
        a.add_feedback(fb, archived.get(fb.request_id), fb.at_ns)
    return a
