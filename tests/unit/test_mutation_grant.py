"""Unit tests for ``vending.grant`` that kill the mutants the HTTP suites let live (issue 19, item 9).

The grant's promise is that bounds only narrow: ``Bounds.narrow`` takes the
earlier ``not_after``, the intersection of scopes (in the grant's order) and
the fewer uses; ``ApprovalUse.narrow`` applies an approval's window, scopes
and remaining uses; ``Bounds.record`` is the ledger's exact copy;
``Grant.seconds_left`` never goes negative. See tests/MUTATION.md.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt

import pytest
from freezegun import freeze_time

from vending.config import BucketRule, Pattern
from vending.grant import ApprovalUse, Bounds, Grant

T0 = _dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=_dt.UTC)
A, B, C = "scope-a", "scope-b", "scope-c"


def _at(seconds: float) -> _dt.datetime:
    return T0 + _dt.timedelta(seconds=seconds)


def _full() -> Bounds:
    return Bounds(
        not_after=_at(600),
        scopes=(A, B),
        audiences=("https://x.example", Pattern(pattern=r"https://.*")),
        claims=("scope",),
        max_payload_bytes=4096,
        buckets=(BucketRule(bucket="b1", methods=("GET", "PUT")), BucketRule(bucket=Pattern(pattern=r"logs-.*"))),
        raw_blobs=True,
        uses_left=3,
    )


# ---------------------------------------------------------------------------
# Bounds.narrow


def test_narrowing_by_nothing_changes_nothing() -> None:
    """GIVEN bounds with every field set
    WHEN narrowed with no argument
    THEN they are equal to the original."""
    bounds = _full()

    narrowed = bounds.narrow()

    assert narrowed == bounds


@pytest.mark.parametrize(("asked", "expected"), [(300, 300), (599, 599), (600, 600), (601, 600), (900, 600)])
def test_not_after_only_moves_earlier(asked: int, expected: int) -> None:
    """GIVEN bounds ending at T0+600
    WHEN narrowed to an end before, at or after it
    THEN the result ends at the earlier of the two."""
    narrowed = _full().narrow(not_after=_at(asked))

    assert narrowed.not_after == _at(expected)


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ((A,), (A,)),
        ((B, A), (A, B)),
        ((A, B, C), (A, B)),
        ((C,), ()),
        ((), ()),
    ],
)
def test_scopes_are_the_intersection_in_the_grants_order(asked: tuple[str, ...], expected: tuple[str, ...]) -> None:
    """GIVEN bounds with scopes (A, B)
    WHEN narrowed to another set of scopes
    THEN only scopes in both remain, in the bounds' own order; nothing is added."""
    narrowed = _full().narrow(scopes=asked)

    assert narrowed.scopes == expected


@pytest.mark.parametrize(
    ("mine", "asked", "expected"),
    [
        (None, 2, 2),
        (None, None, None),
        (3, None, 3),
        (3, 2, 2),
        (3, 3, 3),
        (3, 5, 3),
        (0, 5, 0),
    ],
)
def test_uses_left_only_shrink(mine: int | None, asked: int | None, expected: int | None) -> None:
    """GIVEN bounds with ``mine`` uses left (None: no approval)
    WHEN narrowed to ``asked`` uses
    THEN the result has the fewer of the two (an approval's count when the bounds had none)."""
    bounds = dataclasses.replace(_full(), uses_left=mine)

    narrowed = bounds.narrow(uses_left=asked)

    assert narrowed.uses_left == expected


def test_narrowing_keeps_every_other_limit() -> None:
    """GIVEN bounds with audiences, claims, payload size, buckets and raw signing
    WHEN narrowed in time, scopes and uses
    THEN those other limits are unchanged."""
    bounds = _full()

    narrowed = bounds.narrow(not_after=_at(60), scopes=(B,), uses_left=1)

    assert narrowed == dataclasses.replace(bounds, not_after=_at(60), scopes=(B,), uses_left=1)


def test_narrowing_does_not_change_the_original() -> None:
    """GIVEN bounds
    WHEN narrowed
    THEN the original bounds still hold their values (the value is immutable)."""
    bounds = _full()

    bounds.narrow(not_after=_at(1), scopes=(), uses_left=0)

    assert bounds == _full()


# ---------------------------------------------------------------------------
# ApprovalUse.narrow


def _approval(**over: object) -> ApprovalUse:
    fields: dict[str, object] = {
        "request_id": "r1",
        "entitlement": "prod",
        "requester": "ci/alice",
        "not_after": _at(300),
        "scopes": (B, C),
        "uses": 1,
        "max_uses": 3,
        "break_glass": False,
        "version": "7",
    }
    fields.update(over)
    return ApprovalUse(**fields)  # type: ignore[arg-type]


def test_an_approval_narrows_to_its_window_scopes_and_remaining_uses() -> None:
    """GIVEN bounds (T0+600, scopes A and B, no use count) and an approval (T0+300, B and C, 1 of 3 used)
    WHEN the approval narrows the bounds
    THEN they end at T0+300, keep only B, and have 2 uses left."""
    bounds = dataclasses.replace(_full(), uses_left=None)

    narrowed = _approval().narrow(bounds)

    assert narrowed.not_after == _at(300)
    assert narrowed.scopes == (B,)
    assert narrowed.uses_left == 2
    assert narrowed.audiences == bounds.audiences


def test_an_approval_never_extends_the_bounds() -> None:
    """GIVEN bounds ending at T0+600 with 1 use left and an approval ending later with 3 uses left
    WHEN the approval narrows the bounds
    THEN the bounds' own end and use count stand."""
    bounds = dataclasses.replace(_full(), uses_left=1)

    narrowed = _approval(not_after=_at(900), uses=0).narrow(bounds)

    assert narrowed.not_after == _at(600)
    assert narrowed.uses_left == 1


def test_a_spent_approval_leaves_no_uses() -> None:
    """GIVEN an approval with every use reserved
    WHEN it narrows bounds
    THEN no use is left."""
    narrowed = _approval(uses=3).narrow(dataclasses.replace(_full(), uses_left=None))

    assert narrowed.uses_left == 0


# ---------------------------------------------------------------------------
# Bounds.record


def test_the_record_of_full_bounds_holds_every_limit_as_plain_values() -> None:
    """GIVEN bounds with every field set (string and pattern matchers)
    WHEN recorded for the ledger
    THEN the record holds each limit as plain lists, strings and numbers."""
    record = _full().record()

    assert record == {
        "not_after": _at(600),
        "scopes": [A, B],
        "audiences": ["https://x.example", "pattern:https://.*"],
        "claims": ["scope"],
        "max_payload_bytes": 4096,
        "buckets": [{"bucket": "b1", "methods": ["GET", "PUT"]}, {"bucket": "pattern:logs-.*", "methods": ["GET"]}],
        "raw_blobs": True,
        "uses_left": 3,
    }


def test_the_record_of_bare_bounds_holds_only_the_end() -> None:
    """GIVEN bounds with only ``not_after``
    WHEN recorded
    THEN the record holds only ``not_after``."""
    record = Bounds(not_after=_at(60)).record()

    assert record == {"not_after": _at(60)}


def test_zero_uses_left_is_recorded() -> None:
    """GIVEN bounds with no approval use left (0, not None)
    WHEN recorded
    THEN ``uses_left`` 0 is in the record."""
    record = Bounds(not_after=_at(60), uses_left=0).record()

    assert record == {"not_after": _at(60), "uses_left": 0}


# ---------------------------------------------------------------------------
# Grant.seconds_left


def _grant(not_after: _dt.datetime) -> Grant:
    return Grant(
        caller="ci/alice",
        issuer="ci",
        subject="alice",
        entitlement="e",
        kind="access_token",
        service_account="sa@p.iam.gserviceaccount.com",
        delegates=(),
        bounds=Bounds(not_after=not_after),
        terms=None,
        decided_at=T0,
    )


@pytest.mark.parametrize(("now", "left"), [(0, 600), (0.5, 599), (599, 1), (599.9, 0), (600, 0), (601, 0), (10_000, 0)])
def test_seconds_left_counts_whole_seconds_and_never_goes_negative(now: float, left: int) -> None:
    """GIVEN a grant ending at T0+600
    WHEN asked at T0+now
    THEN the whole seconds left, cut not rounded, and 0 once past."""
    grant = _grant(_at(600))

    result = grant.seconds_left(_at(now))

    assert result == left


def test_seconds_left_defaults_to_the_clock() -> None:
    """GIVEN a grant ending at T0+600 and the clock frozen at T0+100
    WHEN asked without a time
    THEN 500 seconds are left."""
    grant = _grant(_at(600))

    with freeze_time(_at(100)):
        result = grant.seconds_left()

    assert result == 500


def test_a_grant_is_not_break_glass_and_has_no_request_by_default() -> None:
    """GIVEN a grant built without request or break-glass
    WHEN read
    THEN it names no request and is not break-glass."""
    grant = _grant(_at(600))

    assert (grant.request_id, grant.break_glass) == (None, False)
