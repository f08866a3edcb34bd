"""Deployment policies and the rendezvous decision (DESIGN.md §3). Pure: no I/O, no clocks.

A ``Policy`` is what users write (TOML or flags): the models of a deployment with their roles,
the deadline and the waits. A ``Schedule`` is the compiled form the rendezvous server uses, and
``decide(mailbox, schedule, now_ns)`` is the whole decision rule:

    return the first candidate that has answered, provided every candidate before it has
    either failed or passed its own wait; at the deadline, return the best answer present;
    with none, answer ``sla_miss``.

>>> pol = Policy(deadline_ms=50, models=[ModelSpec("a@1", Role.CHAMPION, wait_ms=10),
...                                      ModelSpec("b@1", Role.FALLBACK)])
>>> sched = pol.schedule("demo", version=1)
>>> box = Mailbox(received_ns=0, deadline_ns=50_000_000)
>>> box.scores["b@1"] = ScoreState(ok=True, finished_ns=2_000_000)
>>> decide(box, sched, now_ns=2_000_000)
Wait(until_ns=10000000)
>>> decide(box, sched, now_ns=10_000_000)
Decision(model='b@1', reason=<Reason.FALLBACK: 'fallback'>)
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from rendezvous.core.messages import Reason
from rendezvous.errors import ConfigError
from rendezvous.ids import ModelRef

MAX_DEADLINE_MS = 600_000.0


class Role(enum.StrEnum):
    CHAMPION = "champion"
    FALLBACK = "fallback"
    CHALLENGER = "challenger"
    CANARY = "canary"


class Isolation(enum.StrEnum):
    """Where a model computes. ``process`` (the default): its own supervised OS process, so a
    slow, leaking or crashing model cannot slow or stop the others. ``thread``: a thread of
    the serving process, for trusted, light models (no hop between processes, but a model
    that holds the GIL slows every other role, and one that crashes takes the server down)."""

    PROCESS = "process"
    THREAD = "thread"


class ModelSpec(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    model: str
    role: Role
    wait_ms: float | None = None  # candidates only; defaults to the deadline
    isolation: Isolation = Isolation.PROCESS
    max_memory_mb: float | None = None  # a model host over this is restarted; None: no limit
    max_predict_ms: float | None = None  # one predict call longer: restarted; 10 x deadline

    def predict_limit_ms(self, deadline_ms: float) -> float:
        """How long one predict call may take before its host is killed and restarted."""
        return self.max_predict_ms if self.max_predict_ms is not None else 10 * deadline_ms


class Gates(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """The ``[gates]`` table: what a challenger must show before ``promote`` makes it champion,
    and how long the new champion is watched afterwards. Every key is optional; a policy
    without the table gets these defaults:

    - ``min_requests = 200``: requests scored by both the challenger and the champion;
    - ``min_agreement`` (classifiers: share of rows where they agree) and ``max_score_diff``
      (the largest of |p5| and |p95| of the score difference): off unless set;
    - ``accuracy_margin = 0.02`` at ``confidence = 0.95``: on the labelled requests both
      scored, the challenger's accuracy (for regression: minus its absolute error) is not
      worse than the champion's by more than the margin, by a one-sided paired t bound on
      the per-request differences. It passes once ``min_labels = 100`` pairs show it; a
      challenger shown worse (its upper bound below minus the margin) fails with any number
      of pairs (10 at least); in between it refuses for want of data. A deployment that gets
      no labels at all is not held back by this gate unless ``require_labels = true``;
    - ``p99_within_wait = true``: the challenger's p99 latency (worst kept window) within the
      ``wait_ms`` it gets as champion (the champion's, else the deadline);
    - ``max_error_rate = 0.01``: the challenger's share of errors over the kept windows;
    - ``watch_s = 600``: after a promotion, the monitor watches the new champion this long and
      rolls back by itself if its error rate or SLA-miss alarm fires or the previous champion
      beats it on the labels by more than the margin at the confidence (0 turns it off).

    >>> Gates.parse({"min_requests": 50}).min_requests
    50
    """

    min_requests: int = 200
    min_agreement: float | None = None
    max_score_diff: float | None = None
    accuracy_margin: float = 0.02
    confidence: float = 0.95
    min_labels: int = 100
    require_labels: bool = False
    p99_within_wait: bool = True
    max_error_rate: float = 0.01
    watch_s: float = 600.0

    @classmethod
    def parse(cls, raw: dict[str, Any] | Gates | None) -> Gates:
        """Gates from a policy's ``gates`` table (None: the defaults); a bad key or value is a
        ``ConfigError`` naming it and the fix."""
        if isinstance(raw, Gates):
            return raw.validate()
        try:
            return msgspec.convert(raw or {}, cls).validate()
        except msgspec.ValidationError as exc:
            known = ", ".join(cls.__struct_fields__)
            raise ConfigError(f"[gates]: {exc}; known keys: {known}") from None

    def validate(self) -> Gates:
        for name in ("min_requests", "min_labels"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[gates] {name} = {getattr(self, name)} must be 0 or more")
        for name in ("min_agreement", "max_error_rate"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise ConfigError(f"[gates] {name} = {v:g} must be in [0, 1]; e.g. 0.9")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"[gates] confidence = {self.confidence:g} must be in [0.5, 1); "
                              "e.g. 0.95")
        for name in ("accuracy_margin", "max_score_diff", "watch_s"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"[gates] {name} = {v:g} must be 0 or more")
        return self


class Policy(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A deployment's policy as users write it; stored (versioned) in the registry."""

    deadline_ms: float = 100.0
    models: list[ModelSpec] = []
    split: dict[str, float] = {}  # model -> weight, among champion-tier models
    decoy: bool = True
    split_key: str = ""  # request meta key to hash for the split; request id when empty
    alarms: dict[str, Any] = {}  # thresholds of the alarm rules (core.alarms.AlarmSettings)
    gates: Gates | None = None  # promotion gates and watch period; None: ``Gates()`` defaults

    def validate(self) -> Policy:
        """Check the policy; raise ``ConfigError`` naming the problem and the fix."""
        if not 0 < self.deadline_ms <= MAX_DEADLINE_MS:
            raise ConfigError(
                f"deadline_ms={self.deadline_ms} is out of range; use 0 < deadline_ms <= "
                f"{MAX_DEADLINE_MS:g}"
            )
        seen: set[str] = set()
        for spec in self.models:
            ref = ModelRef.parse(spec.model)
            if not ref.resolved:
                raise ConfigError(
                    f"model {spec.model!r} is not resolved to a version; resolve aliases "
                    "before building a policy"
                )
            if spec.model in seen:
                raise ConfigError(f"model {spec.model!r} appears twice; list each version once")
            seen.add(spec.model)
            for field_name in ("max_memory_mb", "max_predict_ms"):
                limit = getattr(spec, field_name)
                if limit is not None and limit <= 0:
                    raise ConfigError(
                        f"{field_name}={limit} for {spec.model} must be positive; leave it out "
                        "for the default")
            if spec.wait_ms is not None and not 0 <= spec.wait_ms <= self.deadline_ms:
                raise ConfigError(
                    f"wait_ms={spec.wait_ms} for {spec.model} must be between 0 and the "
                    f"deadline ({self.deadline_ms:g} ms)"
                )
        champions = [m for m in self.models if m.role is Role.CHAMPION]
        if len(champions) != 1 and not self.split:
            raise ConfigError(
                f"a deployment needs exactly one champion, found {len(champions)}; mark one "
                "model with role = \"champion\" (or declare a split)"
            )
        canaries = [m for m in self.models if m.role is Role.CANARY]
        if len(canaries) > 1:
            raise ConfigError("a deployment has at most one canary model")
        tier = {m.model for m in self.models if m.role in (Role.CHAMPION, Role.FALLBACK)}
        for name, weight in self.split.items():
            if name not in seen:
                raise ConfigError(f"split names {name!r}, which is not a model of the policy")
            if name not in tier:
                raise ConfigError(
                    f"split names {name!r}, a shadow model (never returned); a split divides "
                    "traffic among champion and fallback models: give it one of those roles")
            if weight <= 0:
                raise ConfigError(f"split weight for {name!r} must be positive, got {weight}")
        from rendezvous.core.alarms import AlarmSettings

        AlarmSettings.parse(self.alarms)
        self.promotion_gates()
        return self

    def promotion_gates(self) -> Gates:
        """The gates a promotion must pass: the policy's ``[gates]``, else the defaults."""
        return Gates.parse(self.gates)

    @property
    def champion(self) -> str | None:
        return next((m.model for m in self.models if m.role is Role.CHAMPION), None)

    @property
    def canary(self) -> str | None:
        return next((m.model for m in self.models if m.role is Role.CANARY), None)

    def model_names(self) -> list[str]:
        return [m.model for m in self.models]

    def schedule(self, deployment: str, version: int) -> Schedule:
        self.validate()
        cands = [m for m in self.models if m.role in (Role.CHAMPION, Role.FALLBACK)]
        cands.sort(key=lambda m: 0 if m.role is Role.CHAMPION else 1)  # stable: spec order
        return Schedule(
            deployment=deployment,
            version=version,
            deadline_ms=self.deadline_ms,
            candidates=tuple(
                Candidate(m.model, self.deadline_ms if m.wait_ms is None else m.wait_ms)
                for m in cands
            ),
            shadows=tuple(
                m.model for m in self.models if m.role in (Role.CHALLENGER, Role.CANARY)
            ),
            split=tuple(self.split.items()),
            split_key=self.split_key,
        )


def promote(policy: Policy, model: str) -> Policy:
    """The policy with ``model`` as champion; the previous champion keeps scoring as challenger.
    In a split, the new champion takes the old one's share, so the old champion (now a shadow)
    is never returned.

    >>> p = Policy(models=[ModelSpec("a@1", Role.CHAMPION), ModelSpec("b@1", Role.CHALLENGER)])
    >>> [(m.model, m.role.value) for m in promote(p, "b@1").models]
    [('b@1', 'champion'), ('a@1', 'challenger')]
    >>> p = msgspec.structs.replace(p, split={"a@1": 1.0})
    >>> promote(p, "b@1").split
    {'b@1': 1.0}
    """
    ModelRef.parse(model)
    old = next((m for m in policy.models if m.role is Role.CHAMPION), None)
    if old is not None and old.model == model:
        raise ConfigError(f"{model} is already the champion; nothing to promote")
    gone = {model} | ({old.model} if old is not None else set())
    rest = [m for m in policy.models if m.model not in gone]
    wait = old.wait_ms if old is not None else None
    # Each model keeps its hosting settings (isolation, limits) across the swap.
    spec = next((m for m in policy.models if m.model == model), None) \
        or ModelSpec(model, Role.CHAMPION)
    models = [msgspec.structs.replace(spec, role=Role.CHAMPION, wait_ms=wait)]
    if old is not None:
        models.append(msgspec.structs.replace(old, role=Role.CHALLENGER, wait_ms=None))
    models.extend(rest)
    split: dict[str, float] = {}
    for name, weight in policy.split.items():
        # The old champion's share (and the new one's own, if it had one) go to the new one.
        key = model if old is not None and name == old.model else name
        split[key] = split.get(key, 0.0) + weight
    return msgspec.structs.replace(policy, models=models, split=split).validate()


# -- the decision --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    model: str
    wait_ms: float


@dataclass(frozen=True, slots=True)
class Schedule:
    deployment: str
    version: int
    deadline_ms: float
    candidates: tuple[Candidate, ...]
    shadows: tuple[str, ...] = ()
    split: tuple[tuple[str, float], ...] = ()
    split_key: str = ""

    models: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Asked for every score the rendezvous server files: computed once.
        object.__setattr__(self, "models",
                           tuple(c.model for c in self.candidates) + self.shadows)

    def ordered(self, key: str) -> tuple[Candidate, ...]:
        """Candidates in the order they are preferred for a request whose split key is ``key``."""
        if not self.split:
            return self.candidates
        picked = pick_split(self.split, key)
        first = [c for c in self.candidates if c.model == picked]
        if not first:  # never a shadow (a validated policy's split names candidates only)
            return self.candidates
        return tuple(first) + tuple(c for c in self.candidates if c.model != picked)


def pick_split(split: tuple[tuple[str, float], ...], key: str) -> str:
    """Stable weighted choice: the same key always picks the same model."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2**64 * sum(w for _, w in split)
    acc = 0.0
    for model, weight in split:
        acc += weight
        if point < acc:
            return model
    return split[-1][0]


@dataclass(frozen=True, slots=True)
class ScoreState:
    ok: bool
    finished_ns: int


@dataclass(slots=True)
class Mailbox:
    """What the rendezvous server knows about one request. ``received_ns`` is None while the
    request itself has not arrived yet (a score may come first)."""

    received_ns: int | None = None
    deadline_ns: int | None = None
    split_key: str = ""
    scores: dict[str, ScoreState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    model: str | None
    reason: Reason


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to decide yet; decide again at ``until_ns`` or when a score arrives.
    ``until_ns`` is None when only an event (the request itself) can change things."""

    until_ns: int | None


def decide(box: Mailbox, schedule: Schedule, now_ns: int) -> Decision | Wait:
    """The rendezvous rule (module docstring). Shadows are never returned, nor a score that
    finished after the deadline."""
    if box.received_ns is None or box.deadline_ns is None:
        return Wait(None)
    received, deadline = box.received_ns, box.deadline_ns
    at_deadline = now_ns >= deadline
    order = schedule.ordered(box.split_key)
    blocked_until: int | None = None
    failed = 0
    for i, cand in enumerate(order):
        state = box.scores.get(cand.model)
        if state is not None and state.ok and state.finished_ns > deadline:
            state = None  # late: kept in the record, never returned
        if state is not None and state.ok:
            if blocked_until is None:
                return Decision(cand.model, _reason(i, schedule))
            continue
        if state is not None:
            failed += 1
            continue
        wait_end = received + int(cand.wait_ms * 1_000_000)
        if not at_deadline and now_ns < wait_end:
            blocked_until = wait_end if blocked_until is None else min(blocked_until, wait_end)
    if at_deadline:
        return Decision(None, Reason.SLA_MISS)
    if failed == len(order):
        return Decision(None, Reason.ERROR)
    return Wait(deadline if blocked_until is None else min(blocked_until, deadline))


def _reason(index: int, schedule: Schedule) -> Reason:
    if index > 0:
        return Reason.FALLBACK
    return Reason.SPLIT if schedule.split else Reason.PREFERRED
