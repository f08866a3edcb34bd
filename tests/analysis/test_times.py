"""Time ranges as users write them."""

from __future__ import annotations

import pytest

from rendezvous.analysis.times import Span, TimeRangeError, parse_time
from rendezvous.errors import ConfigError

NOW = 1_800_000_000 * 10**9


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW), ("2h", NOW - 7200 * 10**9), ("30m", NOW - 1800 * 10**9),
    ("1.5d", NOW - 129600 * 10**9), ("1w", NOW - 604800 * 10**9),
    ("2026-11-27", 1795737600 * 10**9), ("2026-11-27T10:30", 1795775400 * 10**9),
    ("2026-11-27T10:30:00+02:00", 1795768200 * 10**9),
])
def test_forms(text: str, expected: int) -> None:
    assert parse_time(text, now_ns=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-3h", "2026-13-01", ""])
def test_bad_times_name_the_value_and_the_forms(text: str) -> None:
    with pytest.raises(TimeRangeError) as info:
        parse_time(text, now_ns=NOW, flag="--to")
    assert f"--to {text!r} is not a time" in str(info.value) and "30m" in str(info.value)
    assert isinstance(info.value, ConfigError) and info.value.value == text


def test_an_empty_range_is_refused() -> None:
    with pytest.raises(TimeRangeError, match="not before --to"):
        Span.parse("1h", "2h", now_ns=NOW)
    span = Span.parse("2h", None, now_ns=NOW)
    assert NOW - 3600 * 10**9 in span and NOW - 3 * 3600 * 10**9 not in span
