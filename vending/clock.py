"""The single source of "now": aware UTC datetimes, frozen by freezegun in tests."""

from __future__ import annotations

import datetime as _dt

UTC = _dt.UTC


def now() -> _dt.datetime:
    """Current time, timezone-aware UTC, microsecond precision."""
    return _dt.datetime.now(UTC)


def epoch() -> float:
    """Current time as POSIX seconds (same clock as ``now``)."""
    return now().timestamp()


def rfc3339(value: _dt.datetime) -> str:
    """Format as RFC 3339 UTC with whole seconds: ``2026-11-28T22:40:07Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> _dt.datetime:
    """Parse an RFC 3339 timestamp (``Z`` or offset, optional fraction) to aware UTC."""
    value = _dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("timestamp has no timezone")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValueError("timestamp is out of range") from exc


def from_epoch(seconds: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(seconds, UTC)
