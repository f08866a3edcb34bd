"""Time ranges of the archive as users write them. Pure.

``--from``/``--to`` take an ISO date (``2026-11-27``, midnight UTC), an ISO date and time
(``2026-11-27T10:30``, UTC unless it names an offset), ``now``, or a time ago: a number and a
unit (``90s``, ``30m``, ``2h``, ``7d``, ``1w``).

>>> t = Span.parse("2h", None, now_ns=10 * 3600 * 10**9)
>>> (t.start_ns, t.end_ns) == (8 * 3600 * 10**9, 10 * 3600 * 10**9)
True
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from rendezvous.errors import ConfigError

__all__ = ["Span", "TimeRangeError", "parse_time"]

_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
FORMS = "an ISO date or time (2026-11-27, 2026-11-27T10:30), 'now', or a time ago (30m, 2h, 7d)"


class TimeRangeError(ConfigError):
    """A ``--from``/``--to`` value that is not a time, or a range that holds nothing."""

    def __init__(self, message: str, value: str = "") -> None:
        self.value = value
        super().__init__(message)


def parse_time(text: str, *, now_ns: int, flag: str = "--from") -> int:
    """Nanoseconds since the epoch of ``text`` (module docstring for the forms)."""
    value = text.strip()
    if value == "now":
        return now_ns
    m = _AGO.fullmatch(value)
    if m:
        return now_ns - int(float(m.group(1)) * _UNIT_S[m.group(2)] * 1e9)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise TimeRangeError(f"{flag} {text!r} is not a time; use {FORMS}", text) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


@dataclass(frozen=True, slots=True)
class Span:
    """A half-open range of arrival times ``[start_ns, end_ns)``."""

    start_ns: int = 0
    end_ns: int = 2**63 - 1

    @classmethod
    def parse(cls, start: str | None, end: str | None, *, now_ns: int) -> Span:
        lo = parse_time(start, now_ns=now_ns, flag="--from") if start else 0
        hi = parse_time(end, now_ns=now_ns, flag="--to") if end else 2**63 - 1
        if lo >= hi:
            raise TimeRangeError(
                f"--from {start!r} is not before --to {end!r}; the range holds nothing. "
                "Swap them, or leave one out", f"{start}..{end}")
        return cls(lo, hi)

    def __contains__(self, ns: int) -> bool:
        return self.start_ns <= ns < self.end_ns

    def days(self) -> tuple[str, str]:
        """The first and last UTC day (``YYYY-MM-DD``) the range touches."""
        first = dt.datetime.fromtimestamp(self.start_ns / 1e9, dt.UTC)
        last = dt.datetime.fromtimestamp(min(self.end_ns, 4_102_444_800 * 10**9) / 1e9, dt.UTC)
        return f"{first:%Y-%m-%d}", f"{last:%Y-%m-%d}"

    def describe(self) -> str:
        def fmt(ns: int, edge: str) -> str:
            if ns in (0, 2**63 - 1):
                return edge
            return f"{dt.datetime.fromtimestamp(ns / 1e9, dt.UTC):%Y-%m-%d %H:%M:%S}Z"

        return f"{fmt(self.start_ns, 'the beginning')} to {fmt(self.end_ns, 'now')}"
