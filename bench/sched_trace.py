"""Where one thread's wall time goes, from the kernel's scheduler trace: on a core, waiting
for a core after being preempted (and by whom), or asleep (and who woke it).

``ready()`` says why tracing cannot run here (Linux, root, tracefs with the two events; it
mounts tracefs at ``/sys/kernel/tracing`` when it is not there yet); ``record(seconds)`` turns
on the ``sched_switch`` and ``sched_waking`` tracepoints for that long and returns the trace;
``summarize(trace, tid, names)`` reads it for the thread ``tid``:

- *on a core*: from being switched in to being switched out;
- *waiting for a core*: switched out while runnable (``prev_state=R``: preempted), until it
  runs again, attributed to the task that took its core;
- *asleep*: switched out while sleeping (waiting in ``epoll``, for the GIL, for a lock),
  attributed to the task whose ``sched_waking`` woke it (logged on the waker's side, so a
  wake-up from the other core names its task, not the idle task that completes it).

``bench.analytics_serving_cpu --sched-trace FILE.md`` records the event-loop thread of a
serving process this way during its measured run. Pure Python over the trace's text; no ``perf``.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("sched/sched_switch", "sched/sched_waking")

_SWITCH = re.compile(r"\s([\d.]+): sched_switch: prev_comm=.*? prev_pid=(\d+) prev_prio=\d+ "
                     r"prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)")
_WAKING = re.compile(r"^\s*(.*?)-(\d+)\s+\[\d+\].*?\s([\d.]+): sched_waking: comm=.*? pid=(\d+)")


def ready(tracefs: Path = TRACEFS) -> str:
    """Why ``record`` cannot run here ("" when it can), mounting tracefs when it is missing."""
    if os.geteuid() != 0:
        return "tracing the scheduler needs root (tracefs); run as root or drop --sched-trace"
    if not (tracefs / "trace").exists():
        done = subprocess.run(["mount", "-t", "tracefs", "nodev", str(tracefs)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return f"cannot mount tracefs at {tracefs}: {done.stderr.strip()}"
    if not all((tracefs / "events" / e / "enable").exists() for e in EVENTS):
        return f"this kernel's tracefs ({tracefs}) has no {' or '.join(EVENTS)} event"
    return ""


def record(seconds: float, tracefs: Path = TRACEFS) -> str:
    """The scheduler's switches and wake-ups on every core for ``seconds`` (``ready`` says
    whether it can run)."""
    (tracefs / "trace").write_text("")
    (tracefs / "buffer_size_kb").write_text("20000")
    for event in EVENTS:
        (tracefs / "events" / event / "enable").write_text("1")
    try:
        time.sleep(seconds)
    finally:
        for event in EVENTS:
            (tracefs / "events" / event / "enable").write_text("0")
    text = (tracefs / "trace").read_text()
    (tracefs / "trace").write_text("")  # the kernel's buffer, freed
    return text


@dataclass
class Summary:
    """How ``tid`` spent the traced span (seconds), and the spells by whom they ended."""

    span_s: float = 0.0
    on_s: float = 0.0
    waiting_s: float = 0.0
    asleep_s: float = 0.0
    preempted_by: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    woken_by: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def table(self, top: int = 8) -> str:
        """A Markdown table: shares of the span, then the largest spells by whom."""
        span = self.span_s or 1.0
        lines = [f"Traced {self.span_s:.2f} s: on a core {self.on_s / span:.0%}, waiting for "
                 f"a core {self.waiting_s / span:.0%}, asleep {self.asleep_s / span:.0%}.",
                 "", "| spell | by | count | share of the span | p50 us | p90 us |",
                 "|---|---|---|---|---|---|"]
        for what, spells in (("waiting for a core, preempted by", self.preempted_by),
                             ("asleep, woken by", self.woken_by)):
            ranked = sorted(spells.items(), key=lambda kv: -sum(kv[1]))[:top]
            for who, xs in ranked:
                xs = sorted(xs)
                p90 = xs[int(len(xs) * 0.9)] if len(xs) > 1 else xs[0]
                lines.append(f"| {what} | {who} | {len(xs)} | {sum(xs) / span:.1%} | "
                             f"{statistics.median(xs) * 1e6:.0f} | {p90 * 1e6:.0f} |")
        return "\n".join(lines)


def summarize(trace: str, tid: int, names: Mapping[int, str] | None = None) -> Summary:
    """Read ``trace`` (``record``'s text) for thread ``tid``; ``names`` label other tasks by
    thread id (default: the trace's ``comm-pid``)."""
    names = names or {}
    events: list[tuple[float, str, int, str, int, str]] = []
    for line in trace.splitlines():
        m = _SWITCH.search(line)
        if m:
            events.append((float(m[1]), "switch", int(m[2]), m[3], int(m[5]), m[4]))
            continue
        w = _WAKING.search(line)
        if w:
            events.append((float(w[3]), "waking", int(w[4]), "", int(w[2]), w[1]))
    events.sort(key=lambda e: e[0])
    out = Summary()
    if not events:
        return out
    out.span_s = events[-1][0] - events[0][0]
    since: float | None = None
    state = ""  # "on", "R" (preempted) or "S" (asleep)
    by = ""

    def label(pid: int, comm: str) -> str:
        return names.get(pid, f"{comm}-{pid}")

    for ts, kind, a, prev_state, b, comm in events:
        if kind == "waking":
            if a == tid and state == "S" and not by:
                by = label(b, comm)
            continue
        if a == tid:  # switched out
            if since is not None and state == "on":
                out.on_s += ts - since
            since, by = ts, ""
            if prev_state.startswith("R"):
                state, by = "R", label(b, comm)
            else:
                state = "S"
        elif b == tid:  # switched in
            if since is not None and state == "R":
                out.waiting_s += ts - since
                out.preempted_by[by].append(ts - since)
            elif since is not None and state == "S":
                out.asleep_s += ts - since
                out.woken_by[by or "unknown"].append(ts - since)
            since, state, by = ts, "on", ""
    return out
