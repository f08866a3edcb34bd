"""Which requests already have a counted label, bounded in memory. Pure: no I/O, no clocks.

A label is never counted twice, and the set of labelled ids must not grow for ever. Each id is
kept under the time its request was made (a ULID carries it; a client-supplied id gets the
time its label arrived) and forgotten once that time is older than the *label horizon*
(``RENDEZVOUS_LABEL_HORIZON_HOURS``, a week by default) or when more than ``max_ids`` are kept
(the oldest first). Forgetting raises a floor: a ULID request made before the horizon, or at
or before the newest forgotten id, is answered ``too_late``, never counted, so a forgotten id
is never counted again. A client-supplied id is forgotten a horizon after its first label; a
label for it after that would count again (ids without a time cannot be bounded otherwise).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any, Literal

from rendezvous.ids import ulid_ms

__all__ = ["HORIZON_NS", "MAX_IDS", "LabelledIds"]

HORIZON_NS = 7 * 24 * 3600 * 10**9
MAX_IDS = 1_000_000  # ~150 MB at most; at a label horizon of a week, 1.6 labels a second

Verdict = Literal["new", "duplicate", "too_late"]


def made_ns(request_id: str) -> int | None:
    """When a ULID request id was made (ns), None for other ids."""
    ms = ulid_ms(request_id)
    return None if ms is None else ms * 1_000_000


class LabelledIds:
    """The labelled request ids within the horizon (see the module docstring).

    >>> ids = LabelledIds(horizon_ns=3_600 * 10**9)
    >>> now = 1_700_000_000 * 10**9
    >>> ids.check("order-7", now), ids.add("order-7", now), ids.check("order-7", now)
    ('new', None, 'duplicate')
    """

    def __init__(self, *, horizon_ns: int = HORIZON_NS, max_ids: int = MAX_IDS) -> None:
        self.horizon_ns = horizon_ns
        self.max_ids = max_ids
        self.floor_ns = 0  # ULID requests made at or before this are too late
        self._at: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []  # (time, id), oldest first

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._at

    def __len__(self) -> int:
        return len(self._at)

    def check(self, request_id: str, now_ns: int) -> Verdict:
        """Whether a label for ``request_id`` arriving at ``now_ns`` may be counted."""
        if request_id in self._at:
            return "duplicate"
        t = made_ns(request_id)
        if t is not None and (t < now_ns - self.horizon_ns or t <= self.floor_ns):
            return "too_late"
        return "new"

    def add(self, request_id: str, now_ns: int) -> None:
        """Remember a counted label; forget what fell out of the horizon or the cap."""
        if request_id not in self._at:
            t = made_ns(request_id)
            key = now_ns if t is None else t
            self._at[request_id] = key
            heapq.heappush(self._heap, (key, request_id))
        self._forget(now_ns - self.horizon_ns)

    def _forget(self, limit_ns: int) -> None:
        """Forget ids older than ``limit_ns``, and the oldest beyond the cap."""
        heap = self._heap
        while heap and (heap[0][0] < limit_ns or len(self._at) > self.max_ids):
            t, rid = heapq.heappop(heap)
            del self._at[rid]
            self.floor_ns = max(self.floor_ns, t)

    def to_state(self) -> dict[str, Any]:
        return {"floor_ns": self.floor_ns, "ids": sorted(self._at.items())}

    def restore(self, state: Mapping[str, Any] | list[str]) -> None:
        """Restore ``to_state``; also takes the plain id list older states kept (an id
        without a ULID time is kept under the newest time among them)."""
        if isinstance(state, list):
            times = [made_ns(i) for i in state]
            newest = max((t for t in times if t is not None), default=0)
            pairs = [(i, newest if t is None else t) for i, t in zip(state, times, strict=True)]
        else:
            self.floor_ns = max(self.floor_ns, int(state.get("floor_ns", 0)))
            pairs = [(str(i), int(t)) for i, t in state.get("ids", [])]
        for rid, t in pairs:
            if rid not in self._at:
                self._at[rid] = t
                self._heap.append((t, rid))
        heapq.heapify(self._heap)
        self._forget(-(2**63))  # only the cap: a state written under a larger one
