"""Unit tests for ``vending.ledger`` that kill the mutants the HTTP suites let live (issue 19, item 9).

The ledger on a real SQLite store (``:memory:``) and the ``MemoryEvents``
fake, the clock frozen at T0. Each test pins one transition or one edge:
what a reservation writes (every field, the replay record, atomicity, a
retried commit, a replay), each ``mark_*``, the sweep steps just before, at
and just after their boundaries, the live listing, the effective state, the
API view and the listing's filters, pages and cursors. See tests/MUTATION.md.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from freezegun import freeze_time

from tests.support.grants import access_grant
from vending import ledger as L
from vending.errors import AuthenticationError, BadRequestError, ConflictError
from vending.events import MemoryEvents
from vending.grant import Bounds
from vending.ledger import Ledger
from vending.store import batch
from vending.store.base import Create, Query, StoreConflict, Update
from vending.store.indexes import ISSUANCES, REPLAY
from vending.store.sqlite import SqliteStore

T0 = _dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=_dt.UTC)
SA = "demo-deployer@local-project.iam.gserviceaccount.com"
OTHER_SA = "other@local-project.iam.gserviceaccount.com"
US = _dt.timedelta(microseconds=1)


def _at(seconds: float) -> _dt.datetime:
    return T0 + _dt.timedelta(seconds=seconds)


def _id(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture
def frozen() -> Iterator[Any]:
    with freeze_time(T0) as frozen_time:
        yield frozen_time


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    s = SqliteStore(":memory:")
    yield s
    s.close()


@pytest.fixture
def events() -> MemoryEvents:
    return MemoryEvents()


@pytest.fixture
def ledger(store: SqliteStore, events: MemoryEvents, frozen: Any) -> Ledger:
    return Ledger(store, events, retention_days=90)


def _reserve(
    ledger: Ledger,
    n: int,
    *,
    until: float = 900,
    replay_key: str | None = None,
    replay_until: _dt.datetime | None = None,
    extra: tuple[Any, ...] = (),
    **grant: Any,
) -> str:
    issuance_id = _id(n)
    ledger.reserve(
        issuance_id,
        access_grant(**grant),
        reserved_until=_at(until),
        reason="deploy",
        details={},
        replay_key=replay_key,
        replay_until=replay_until,
        extra=extra,
    )
    return issuance_id


def _data(store: SqliteStore, issuance_id: str) -> dict[str, Any]:
    doc = store.get(ISSUANCES, issuance_id)
    assert doc is not None
    return doc.data


def _raised(call: Callable[[], Any], kind: type[Exception]) -> Any:
    with pytest.raises(kind) as caught:
        call()
    return caught.value


# ---------------------------------------------------------------------------
# reserve


def test_a_reservation_records_the_whole_grant_before_the_call(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a grant (caller, entitlement, account, bounds) of an approved break-glass request
    WHEN it is reserved until T0+900 with a reason and the kind's details
    THEN the record holds all of it, state issuing, nothing issued yet, purged 90 days after the reservation."""
    grant = access_grant(request_id="req-1", break_glass=True, delegates=("projects/-/serviceAccounts/hop@p",))

    ledger.reserve(
        _id(1),
        grant,
        reserved_until=_at(900),
        reason="INC-1: down",
        details={"scopes": ["s"]},
        replay_key=None,
        replay_until=None,
    )

    assert _data(store, _id(1)) == {
        "id": _id(1),
        "kind": "access_token",
        "state": "issuing",
        "principal": grant.caller,
        "issuer": "ci",
        "subject": grant.subject,
        "entitlement": "deploy",
        "service_account": SA,
        "delegates": ["projects/-/serviceAccounts/hop@p"],
        "reason": "INC-1: down",
        "request_id": "req-1",
        "break_glass": True,
        "bounds": grant.bounds.record(),
        "created_at": T0,
        "reserved_until": _at(900),
        "expire_time": None,
        "issued_at": None,
        "token_sha256": None,
        "key_id": None,
        "failure": None,
        "purge_at": _at(900) + _dt.timedelta(days=90),
        "scopes": ["s"],
    }


def test_the_retention_is_the_ledgers(store: SqliteStore, events: MemoryEvents, frozen: Any) -> None:
    """GIVEN a ledger keeping records 7 days
    WHEN a reservation is written
    THEN it is purged 7 days after its horizon."""
    ledger = Ledger(store, events, retention_days=7)

    _reserve(ledger, 1)

    assert _data(store, _id(1))["purge_at"] == _at(900) + _dt.timedelta(days=7)


def test_the_default_retention_is_ninety_days(store: SqliteStore, events: MemoryEvents, frozen: Any) -> None:
    """GIVEN a ledger built without a retention
    WHEN a reservation is written
    THEN it is purged 90 days after its horizon."""
    ledger = Ledger(store, events)

    _reserve(ledger, 1)

    assert _data(store, _id(1))["purge_at"] == _at(900) + _dt.timedelta(days=90)


def test_a_reservation_consumes_the_caller_token_until_it_is_no_longer_accepted(
    ledger: Ledger, store: SqliteStore
) -> None:
    """GIVEN a caller token accepted until T0+60
    WHEN a vend reserves with its replay key
    THEN the replay record lives until T0+60 and is purged a day later."""
    _reserve(ledger, 1, replay_key="ci:abc", replay_until=_at(60))

    replay = store.get(REPLAY, "ci:abc")
    assert replay is not None
    assert replay.data == {"expires_at": _at(60), "used_at": T0, "purge_at": _at(60) + _dt.timedelta(days=1)}


def test_a_replay_key_without_an_end_lives_until_now(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a replay key without a known end
    WHEN reserved
    THEN its record expires now (the sweep may drop it at once)."""
    _reserve(ledger, 1, replay_key="ci:abc", replay_until=None)

    replay = store.get(REPLAY, "ci:abc")
    assert replay is not None
    assert replay.data["expires_at"] == T0


def test_no_replay_key_writes_no_replay_record(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN an issuer without replay protection (no key)
    WHEN reserved
    THEN no replay record is written."""
    _reserve(ledger, 1, replay_key=None, replay_until=_at(60))

    assert store.query(_all(REPLAY)) == []


def _all(kind: str) -> Query:
    return Query(kind, order_by="expires_at" if kind == REPLAY else "created_at", limit=1000)


def test_a_second_vend_with_the_same_token_is_a_replay_and_writes_nothing(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a reservation that consumed a caller token
    WHEN another reservation (another id) comes with the same token
    THEN it is refused as token-replayed and no second record exists."""
    _reserve(ledger, 1, replay_key="ci:abc", replay_until=_at(60))

    exc = _raised(lambda: _reserve(ledger, 2, replay_key="ci:abc", replay_until=_at(60)), AuthenticationError)

    assert exc.reason == "token-replayed"
    assert exc.detail == "token already used (jti replay)"
    assert store.get(ISSUANCES, _id(2)) is None


def test_a_retried_commit_that_landed_counts_as_done(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a reservation whose commit landed (its answer was lost)
    WHEN the same reservation (same id, same token) is committed again
    THEN it returns without error and the record is the first one."""
    _reserve(ledger, 1, replay_key="ci:abc", replay_until=_at(60))
    first = store.get(ISSUANCES, _id(1))

    _reserve(ledger, 1, replay_key="ci:abc", replay_until=_at(60))

    assert store.get(ISSUANCES, _id(1)) == first


def test_an_extra_write_that_loses_its_race_undoes_the_whole_batch(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN an approval use (an extra create) that conflicts with an existing document
    WHEN reserving with it
    THEN StoreConflict is raised, and neither the record nor the replay record was written."""
    store.write([Create(REPLAY, "taken", {"expires_at": _at(1)})])

    _raised(
        lambda: _reserve(
            ledger,
            1,
            replay_key="ci:abc",
            replay_until=_at(60),
            extra=(Create(REPLAY, "taken", {"expires_at": _at(1)}),),
        ),
        StoreConflict,
    )

    assert store.get(ISSUANCES, _id(1)) is None
    assert store.get(REPLAY, "ci:abc") is None


def test_an_extra_write_is_committed_with_the_reservation(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN an extra write (an approval use)
    WHEN reserving with it
    THEN it is written too."""
    _reserve(ledger, 1, extra=(Create(REPLAY, "extra", {"expires_at": _at(1)}),))

    assert store.get(REPLAY, "extra") is not None


def test_a_conflict_without_replay_key_is_raised_as_is(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN no replay key and an extra write that conflicts
    WHEN reserving
    THEN the StoreConflict itself is raised (not a replay)."""
    store.write([Create(REPLAY, "taken", {"expires_at": _at(1)})])

    exc = _raised(lambda: _reserve(ledger, 1, extra=(Create(REPLAY, "taken", {}),)), StoreConflict)

    assert not isinstance(exc, AuthenticationError)


# ---------------------------------------------------------------------------
# consume and give_back


def test_consume_records_a_token_once(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a caller token on a state-changing endpoint
    WHEN it is consumed, then consumed again
    THEN the first records it until its end, the second is token-replayed."""
    ledger.consume("ci:t1", _at(60))

    exc = _raised(lambda: ledger.consume("ci:t1", _at(60)), AuthenticationError)

    replay = store.get(REPLAY, "ci:t1")
    assert replay is not None
    assert replay.data == {"expires_at": _at(60), "used_at": T0, "purge_at": _at(60) + _dt.timedelta(days=1)}
    assert exc.reason == "token-replayed"
    assert exc.detail == "token already used (jti replay)"


def test_consume_without_a_key_writes_nothing(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN no replay key (protection off)
    WHEN consumed twice
    THEN nothing is written and nothing is refused."""
    ledger.consume(None, _at(60))
    ledger.consume(None, _at(60))

    assert store.query(_all(REPLAY)) == []


# ---------------------------------------------------------------------------
# the outcome of the IAM call


def test_mark_issued_stores_the_digest_never_the_credential(ledger: Ledger, store: SqliteStore, frozen: Any) -> None:
    """GIVEN a reservation
    WHEN IAM's credential is recorded 2 s later, expiring at T0+600
    THEN the record is active with the credential's SHA-256, when and until, and no failure."""
    _reserve(ledger, 1)
    frozen.tick(2)

    digest = ledger.mark_issued(_id(1), "ya29.secret", expire_time=_at(600), key_id="k1")

    data = _data(store, _id(1))
    assert digest == hashlib.sha256(b"ya29.secret").hexdigest()
    assert (data["state"], data["token_sha256"], data["issued_at"], data["expire_time"], data["key_id"]) == (
        "active",
        digest,
        _at(2),
        _at(600),
        "k1",
    )
    assert data["purge_at"] == _at(600) + _dt.timedelta(days=90)
    assert data["failure"] is None
    assert "ya29.secret" not in json.dumps(data, default=str)


def test_mark_issued_can_record_a_signature(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a reservation for a blob signature
    WHEN marked issued as signed, with no expiry
    THEN the state is signed, there is no key id, and the purge counts from now."""
    _reserve(ledger, 1)

    ledger.mark_issued(_id(1), "sig", expire_time=None, state=L.SIGNED)

    data = _data(store, _id(1))
    assert (data["state"], data["key_id"], data["expire_time"]) == ("signed", None, None)
    assert data["purge_at"] == T0 + _dt.timedelta(days=90)


def test_mark_withheld_records_why(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a reservation
    WHEN IAM's answer is outside the grant
    THEN the record is withheld, with the digest, expiry and failure."""
    _reserve(ledger, 1)

    digest = ledger.mark_withheld(_id(1), "ya29.x", expire_time=_at(1000), key_id="k9", failure="too-long")

    data = _data(store, _id(1))
    assert (data["state"], data["token_sha256"], data["failure"], data["expire_time"], data["key_id"]) == (
        "withheld",
        digest,
        "too-long",
        _at(1000),
        "k9",
    )


def test_mark_unconfirmed_covers_the_reservation_horizon(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a reservation
    WHEN IAM gave no usable answer
    THEN the record is unconfirmed until the horizon, with the failure, purged after it."""
    _reserve(ledger, 1)

    ledger.mark_unconfirmed(_id(1), "timeout", until=_at(930))

    data = _data(store, _id(1))
    assert (data["state"], data["failure"], data["expire_time"]) == ("unconfirmed", "timeout", _at(930))
    assert data["purge_at"] == _at(930) + _dt.timedelta(days=90)


def test_mark_failed_gives_the_token_back_in_the_same_write(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a reservation that consumed a caller token
    WHEN IAM refused (nothing minted)
    THEN the record is failed with the reason, purged 90 days from now, and the token is usable again."""
    _reserve(ledger, 1, replay_key="ci:abc", replay_until=_at(60))

    ledger.mark_failed(_id(1), "iam-403", replay_key="ci:abc")

    data = _data(store, _id(1))
    assert (data["state"], data["failure"], data["purge_at"]) == ("failed", "iam-403", T0 + _dt.timedelta(days=90))
    assert store.get(REPLAY, "ci:abc") is None


def test_mark_failed_without_a_key_keeps_other_replay_records(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a reservation without a replay key and another token's replay record
    WHEN marked failed
    THEN the other replay record stays."""
    ledger.consume("ci:other", _at(60))
    _reserve(ledger, 1)

    ledger.mark_failed(_id(1), "iam-403", replay_key=None)

    assert _data(store, _id(1))["state"] == "failed"
    assert store.get(REPLAY, "ci:other") is not None


# ---------------------------------------------------------------------------
# the sweep


def _issued(ledger: Ledger, n: int, expire: float, *, state: str = L.ACTIVE, **grant: Any) -> str:
    issuance_id = _reserve(ledger, n, **grant)
    if state == L.UNCONFIRMED:
        ledger.mark_unconfirmed(issuance_id, "timeout", until=_at(expire))
    elif state == L.WITHHELD:
        ledger.mark_withheld(issuance_id, f"c{n}", expire_time=_at(expire), key_id=None, failure="x")
    else:
        ledger.mark_issued(issuance_id, f"c{n}", expire_time=_at(expire), state=state)
    return issuance_id


def test_expire_due_expires_each_live_state_at_its_expiry(
    ledger: Ledger, store: SqliteStore, events: MemoryEvents
) -> None:
    """GIVEN active, unconfirmed and withheld records expiring at T0+600, and one of each a microsecond later
    WHEN the sweep runs at T0+600
    THEN the three due ones are expired (counted per state, one event each), the others are untouched."""
    due = [_issued(ledger, n, 600, state=s) for n, s in enumerate((L.ACTIVE, L.UNCONFIRMED, L.WITHHELD), 1)]
    later = [_issued(ledger, n, 600.000001, state=s) for n, s in enumerate((L.ACTIVE, L.UNCONFIRMED, L.WITHHELD), 10)]

    counts = ledger.expire_due(_at(600))

    assert counts == {
        "issuances_expired_from_active": 1,
        "issuances_expired_from_unconfirmed": 1,
        "issuances_expired_from_withheld": 1,
    }
    assert [(_data(store, i)["state"], _data(store, i)["expired_at"]) for i in due] == [("expired", _at(600))] * 3
    assert [_data(store, i)["state"] for i in later] == ["active", "unconfirmed", "withheld"]
    assert [(channel, e["type"], e["issuance_id"]) for channel, e in events.published] == [
        ("notifications", "credential.expired", i) for i in due
    ]
    assert events.published[0][1]["service_account"] == SA


def test_expire_due_leaves_finished_states_alone(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a signed record and a failed one, both with past times
    WHEN the sweep runs long after
    THEN neither changes and nothing is counted."""
    _issued(ledger, 1, 10, state=L.SIGNED)
    _reserve(ledger, 2)
    ledger.mark_failed(_id(2), "x", replay_key=None)

    counts = ledger.expire_due(_at(10_000))

    assert sum(counts.values()) == 0
    assert (_data(store, _id(1))["state"], _data(store, _id(2))["state"]) == ("signed", "failed")


def test_unconfirm_stale_takes_reservations_created_up_to_the_cutoff(
    ledger: Ledger, store: SqliteStore, frozen: Any
) -> None:
    """GIVEN reservations created at T0 and T0+1 (horizon T0+900), and an issued one at T0
    WHEN reservations created at or before T0 are declared stale
    THEN only the first becomes unconfirmed until its horizon, with the reason; it is returned."""
    _reserve(ledger, 1)
    _issued(ledger, 3, 600)
    frozen.tick(1)
    _reserve(ledger, 2)

    changed = ledger.unconfirm_stale(T0)

    assert [d.id for d in changed] == [_id(1)]
    data = _data(store, _id(1))
    assert (data["state"], data["expire_time"], data["failure"]) == (
        "unconfirmed",
        _at(900),
        "reservation-not-finalized",
    )
    assert _data(store, _id(2))["state"] == "issuing"
    assert _data(store, _id(3))["state"] == "active"


@pytest.mark.parametrize(("now", "left"), [(59.999999, 2), (60, 1), (61, 0)])
def test_purge_replay_deletes_only_tokens_no_longer_accepted(
    ledger: Ledger, store: SqliteStore, now: float, left: int
) -> None:
    """GIVEN tokens accepted until T0+60 and T0+61
    WHEN the sweep purges at ``now``
    THEN only those whose end is at or before ``now`` are deleted (the count says how many)."""
    ledger.consume("ci:a", _at(60))
    ledger.consume("ci:b", _at(61))

    count = ledger.purge_replay(_at(now))

    assert count == 2 - left
    assert len(store.query(_all(REPLAY))) == left


def test_live_lists_records_that_may_hold_a_valid_credential(ledger: Ledger) -> None:
    """GIVEN live records expiring at T0+600 in each live state, one already expired, a signed and an issuing one
    WHEN listed live at T0+599 and at T0+600
    THEN the three live ones are listed just before, none at their expiry."""
    ids = [_issued(ledger, n, 600, state=s) for n, s in enumerate((L.ACTIVE, L.UNCONFIRMED, L.WITHHELD), 1)]
    _issued(ledger, 5, 100)
    _issued(ledger, 6, 10_000, state=L.SIGNED)
    _reserve(ledger, 7)

    before = ledger.live(_at(599.999999))
    at = ledger.live(_at(600))

    assert sorted(r["id"] for r in before) == sorted(ids)
    assert at == []


# ---------------------------------------------------------------------------
# effective state and the API view


@pytest.mark.parametrize(
    ("record", "now", "expected"),
    [
        ({"state": "active", "expire_time": _at(600)}, _at(599.999999), "active"),
        ({"state": "active", "expire_time": _at(600)}, _at(600), "expired"),
        ({"state": "withheld", "expire_time": _at(600)}, _at(600), "expired"),
        ({"state": "active", "expire_time": None}, _at(600), "active"),
        ({"state": "unconfirmed", "reserved_until": _at(900), "expire_time": _at(100)}, _at(600), "unconfirmed"),
        ({"state": "unconfirmed", "reserved_until": _at(900), "expire_time": _at(100)}, _at(900), "expired"),
        ({"state": "issuing", "reserved_until": _at(1), "expire_time": _at(1)}, _at(900), "issuing"),
        ({"state": "signed", "expire_time": _at(1)}, _at(900), "signed"),
        ({}, _at(900), ""),
    ],
    ids=[
        "active-before",
        "active-at",
        "withheld-at",
        "active-no-expiry",
        "unconfirmed-before-horizon",
        "unconfirmed-at-horizon",
        "issuing-never",
        "signed-never",
        "no-state",
    ],
)
def test_effective_state(record: dict[str, Any], now: _dt.datetime, expected: str) -> None:
    """GIVEN a stored record
    WHEN its effective state is read at ``now``
    THEN a live record past its end reads expired (an unconfirmed one by its reservation horizon)."""
    result = L.effective_state(record, now)

    assert result == expected


def test_the_view_shows_public_fields_as_plain_values(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN an issued record (with bounds) and a private field
    WHEN viewed after its expiry
    THEN only public fields are shown, times as RFC 3339 (nested too), the state effective."""
    _issued(ledger, 1, 600)
    record = dict(_data(store, _id(1)), secret_field="x")

    view = L.view(record, _at(700))

    assert "secret_field" not in view
    assert "purge_at" not in view
    assert view["state"] == "expired"
    assert view["expire_time"] == "2026-11-28T12:10:00Z"
    assert view["bounds"] == {
        "not_after": "2026-11-28T12:15:00Z",
        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
    }
    assert view["id"] == _id(1)
    assert view["token_sha256"] == hashlib.sha256(b"c1").hexdigest()
    assert set(view) <= set(L.PUBLIC_FIELDS)


def test_the_view_keeps_plain_values_and_shows_every_public_field() -> None:
    """GIVEN a record holding every public field as a plain value
    WHEN viewed
    THEN each is shown as it is."""
    record = {key: f"v-{key}" for key in L.PUBLIC_FIELDS}
    record["state"] = "failed"

    view = L.view(record, T0)

    assert view == record


# ---------------------------------------------------------------------------
# listing


def _history(ledger: Ledger, frozen: Any) -> list[str]:
    """Five records, one second apart (newest last): active, active past expiry, failed, unconfirmed, other SA."""
    ids = []
    ids.append(_issued(ledger, 1, 3600))
    frozen.tick(1)
    ids.append(_issued(ledger, 2, 2))
    frozen.tick(1)
    ids.append(_reserve(ledger, 3))
    ledger.mark_failed(ids[-1], "x", replay_key=None)
    frozen.tick(1)
    ids.append(_reserve(ledger, 4))
    ledger.mark_unconfirmed(ids[-1], "t", until=_at(3600))
    frozen.tick(1)
    ids.append(_issued(ledger, 5, 3600, service_account=OTHER_SA, caller="ci/bob"))
    frozen.tick(10)
    return ids


def _list(ledger: Ledger, **query: Any) -> tuple[list[str], str | None]:
    args: dict[str, Any] = {
        "state": None,
        "service_account": None,
        "principal": None,
        "since": None,
        "page_size": 50,
        "page_token": None,
    }
    args.update(query)
    page, token = ledger.list(**args)
    return [r["id"] for r in page], token


def test_listing_is_newest_first(ledger: Ledger, frozen: Any) -> None:
    """GIVEN five records created one second apart
    WHEN listed without filters
    THEN all come newest first, with no next page."""
    ids = _history(ledger, frozen)

    listed, token = _list(ledger)

    assert listed == ids[::-1]
    assert token is None


def test_listing_by_expired_includes_live_records_past_their_expiry(ledger: Ledger, frozen: Any) -> None:
    """GIVEN an active record past its expiry (never swept) among others
    WHEN listed by state expired, and by state active
    THEN it lists as expired, not as active."""
    ids = _history(ledger, frozen)

    expired, _ = _list(ledger, state="expired")
    active, _ = _list(ledger, state="active")

    assert expired == [ids[1]]
    assert active == [ids[4], ids[0]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"state": "failed"}, [2]),
        ({"state": "unconfirmed"}, [3]),
        ({"service_account": OTHER_SA}, [4]),
        ({"principal": "ci/bob"}, [4]),
        ({"since": _at(2)}, [4, 3, 2]),
        ({"since": _at(2), "state": "active"}, [4]),
        ({"service_account": SA, "state": "active"}, [0]),
    ],
    ids=["failed", "unconfirmed", "service-account", "principal", "since", "since-and-state", "account-and-state"],
)
def test_listing_filters(ledger: Ledger, frozen: Any, query: dict[str, Any], expected: list[int]) -> None:
    """GIVEN five records of two accounts and two principals, in several states
    WHEN listed with a filter
    THEN exactly the matching ones come back, newest first."""
    ids = _history(ledger, frozen)

    listed, _ = _list(ledger, **query)

    assert listed == [ids[i] for i in expected]


def test_listing_pages_with_a_cursor(ledger: Ledger, frozen: Any) -> None:
    """GIVEN five records
    WHEN listed two at a time, following the cursor
    THEN the pages are 2, 2, 1 records, newest first, and the last page has no cursor."""
    ids = _history(ledger, frozen)

    first, token1 = _list(ledger, page_size=2)
    second, token2 = _list(ledger, page_size=2, page_token=token1)
    third, token3 = _list(ledger, page_size=2, page_token=token2)

    assert (first, second, third) == (ids[4:2:-1], ids[2:0:-1], ids[0:1])
    assert token1 is not None and token2 is not None
    assert token3 is None


def test_a_page_exactly_full_has_no_cursor(ledger: Ledger, frozen: Any) -> None:
    """GIVEN five records
    WHEN listed five at a time
    THEN one page holds them all and there is no next page."""
    ids = _history(ledger, frozen)

    listed, token = _list(ledger, page_size=5)

    assert listed == ids[::-1]
    assert token is None


def test_listing_by_effective_state_pages_through_what_does_not_match(ledger: Ledger, frozen: Any) -> None:
    """GIVEN six active records where only the oldest two are past their expiry
    WHEN listed by state expired, one at a time
    THEN the first page finds the newest expired one past the four that do not match, and a cursor to the next."""
    old = [_issued(ledger, n, 1) for n in (1, 2)]
    frozen.tick(1)
    for n in range(3, 7):
        _issued(ledger, n, 3600)
        frozen.tick(1)

    first, token = _list(ledger, state="expired", page_size=1)
    second, last = _list(ledger, state="expired", page_size=1, page_token=token)

    assert first == [old[1]]
    assert second == [old[0]]
    assert last is None


def test_listing_by_a_live_state_skips_records_past_their_expiry(ledger: Ledger, frozen: Any) -> None:
    """GIVEN three active records, the newest two past their expiry
    WHEN listed by state active, one at a time
    THEN the one still active is found past the other two, and there is no next page."""
    live = _issued(ledger, 1, 3600)
    frozen.tick(1)
    _issued(ledger, 2, 2)
    frozen.tick(1)
    _issued(ledger, 3, 3)
    frozen.tick(10)

    listed, token = _list(ledger, state="active", page_size=1)

    assert listed == [live]
    assert token is None


@pytest.mark.parametrize("created", [_at(0), _at(1.5), _at(0.000001), _at(86_400.25), _at(-1)])
@pytest.mark.parametrize("doc_id", [_id(7), "f" * 32])
def test_a_cursor_round_trips(created: _dt.datetime, doc_id: str) -> None:
    """GIVEN a creation time and an id (tokens of every length modulo 4)
    WHEN encoded as a page token and decoded
    THEN the same time (UTC) and id come back, and the token carries no padding."""
    token = L._encode_cursor(created, doc_id)

    decoded = L._decode_cursor(token)

    assert decoded == (created, doc_id)
    assert decoded[0].utcoffset() == _dt.timedelta(0)
    assert not token.endswith("=")


def test_cursor_lengths_cover_every_padding() -> None:
    """GIVEN the creation times the round trip uses
    WHEN encoded
    THEN their tokens need no padding and one padding character (the only two lengths a cursor has: whole
    seconds or microseconds), so the round trip tries both."""
    lengths = {len(L._encode_cursor(t, _id(7))) % 4 for t in (_at(0), _at(1.5), _at(0.000001), _at(86_400.25), _at(-1))}

    assert lengths == {0, 3}


def _token(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_a_cursor_in_another_zone_is_read_as_utc() -> None:
    """GIVEN a page token whose time has a +02:00 offset
    WHEN decoded
    THEN the time is the same instant, in UTC."""
    decoded = L._decode_cursor(_token(["2026-11-28T14:00:00+02:00", _id(1)]))

    assert decoded == (T0, _id(1))
    assert decoded[0].utcoffset() == _dt.timedelta(0)


@pytest.mark.parametrize(
    "token",
    [
        "not base64 !",
        _token(["2026-11-28T12:00:00", _id(1)]),
        _token(["2026-11-28T12:00:00+00:00", "short"]),
        _token(["2026-11-28T12:00:00+00:00", 7]),
        _token(["2026-11-28T12:00:00+00:00"]),
        _token({"a": 1}),
        _token(["yesterday", _id(1)]),
        _token(["2026-11-28T12:00:00+00:00", _id(1) + "0"]),
    ],
    ids=["not-base64", "naive-time", "short-id", "id-not-string", "one-element", "object", "bad-time", "long-id"],
)
def test_a_forged_cursor_is_a_bad_request(token: str) -> None:
    """GIVEN a page token this service did not return
    WHEN decoded
    THEN it is refused as invalid-page-token."""
    exc = _raised(lambda: L._decode_cursor(token), BadRequestError)

    assert exc.reason == "invalid-page-token"
    assert exc.message == "page_token is not a token returned by this service."


def test_listing_with_a_forged_cursor_is_a_bad_request(ledger: Ledger) -> None:
    """GIVEN a forged page token
    WHEN a listing is asked with it
    THEN it is refused as invalid-page-token."""
    exc = _raised(lambda: _list(ledger, page_token="AAAA"), BadRequestError)

    assert exc.reason == "invalid-page-token"


# ---------------------------------------------------------------------------
# helpers


def test_sha256_of_text_and_bytes_agree() -> None:
    """GIVEN the same credential as text and as bytes
    WHEN digested
    THEN both give its hex SHA-256."""
    expected = hashlib.sha256("é-token".encode()).hexdigest()

    assert (L.sha256("é-token"), L.sha256("é-token".encode())) == (expected, expected)


def test_new_ids_are_32_hex_characters_and_distinct() -> None:
    """GIVEN nothing
    WHEN two ids are drawn
    THEN each is 32 lowercase hex characters (what a cursor accepts) and they differ."""
    a, b = L.new_id(), L.new_id()

    assert len(a) == 32 and int(a, 16) >= 0 and a == a.lower()
    assert a != b


def test_a_reservation_copies_bounds_as_plain_values(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN a grant whose bounds carry a use count
    WHEN reserved
    THEN the record's bounds are the plain record, use count included."""
    _reserve(ledger, 1, bounds=Bounds(not_after=_at(900), scopes=("s",), uses_left=2))

    assert _data(store, _id(1))["bounds"] == {"not_after": _at(900), "scopes": ["s"], "uses_left": 2}


# ---------------------------------------------------------------------------
# the sweep against a concurrent writer, and past one batch


class RacingStore:
    """A real SQLite store with a concurrent writer: ``race`` runs once, right after the first query answers."""

    def __init__(self, inner: SqliteStore, race: Callable[[], Any]) -> None:
        self.inner = inner
        self.race: Callable[[], Any] | None = race

    def get(self, kind: str, doc_id: str) -> Any:
        return self.inner.get(kind, doc_id)

    def write(self, writes: Any) -> None:
        self.inner.write(writes)

    def query(self, query: Query) -> Any:
        docs = self.inner.query(query)
        race, self.race = self.race, None
        if race is not None:
            race()
        return docs

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()


def test_a_reservation_finalized_during_the_stale_sweep_is_left_alone(
    ledger: Ledger, store: SqliteStore, events: MemoryEvents
) -> None:
    """GIVEN a stale reservation, and a vend that finalizes it after the sweep read it but before it wrote
    WHEN the sweep declares stale reservations unconfirmed
    THEN the record stays active (the sweep's write carried the version it read) and is not returned."""
    issuance_id = _reserve(ledger, 1)
    racing = Ledger(RacingStore(store, lambda: ledger.mark_issued(issuance_id, "c", expire_time=_at(600))), events)

    changed = racing.unconfirm_stale(_at(10))

    assert changed == []
    assert _data(store, issuance_id)["state"] == "active"


def test_a_token_purged_by_another_sweep_is_not_counted_twice(
    ledger: Ledger, store: SqliteStore, events: MemoryEvents
) -> None:
    """GIVEN a used token past its end, and another sweep that purges it after this one read it
    WHEN this sweep purges
    THEN it counts nothing: the other sweep took it."""
    ledger.consume("ci:a", _at(1))
    racing = Ledger(RacingStore(store, lambda: ledger.purge_replay(_at(10))), events)

    count = racing.purge_replay(_at(10))

    assert count == 0
    assert store.get(REPLAY, "ci:a") is None


def test_sweep_steps_go_past_one_batch(ledger: Ledger, store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN sweep batches of 2 records and 5 stale reservations and 5 used tokens past their end
    WHEN the stale sweep, the replay purge and the live listing run
    THEN every one is handled and counted, across batches."""
    monkeypatch.setattr(batch, "BATCH", 2)
    for n in range(5):
        _reserve(ledger, n + 1, until=900)
        ledger.consume(f"ci:{n}", _at(1))

    changed = ledger.unconfirm_stale(T0)
    purged = ledger.purge_replay(_at(10))
    live = ledger.live(_at(10))

    assert len(changed) == 5
    assert purged == 5
    assert len(live) == 5


# ---------------------------------------------------------------------------
# used tokens


@pytest.mark.parametrize(("now", "used"), [(59.999999, True), (60, False), (61, False)])
def test_a_token_counts_as_used_while_its_record_lives(ledger: Ledger, frozen: Any, now: float, used: bool) -> None:
    """GIVEN a token consumed until T0+60
    WHEN asked whether it is used just before, at and after T0+60
    THEN it is used only before its end."""
    ledger.consume("ci:s", _at(60))
    frozen.move_to(_at(now))

    result = ledger.is_used("ci:s")

    assert result is used


def test_an_unknown_token_is_not_used(ledger: Ledger) -> None:
    """GIVEN another token consumed
    WHEN asked about a token never consumed
    THEN it is not used."""
    ledger.consume("ci:other", _at(60))

    assert ledger.is_used("ci:never") is False


# ---------------------------------------------------------------------------
# the kill switch


BY, WHY = "ci/sre-lead", "INC-9: key leaked"


def _record(
    n: int,
    *,
    state: str,
    created: float = 0,
    expire: float | None = None,
    reserved: float = 900,
    service_account: str = SA,
) -> Create:
    return Create(
        ISSUANCES,
        _id(n),
        {
            "id": _id(n),
            "kind": "access_token",
            "state": state,
            "principal": "ci/alice",
            "service_account": service_account,
            "created_at": _at(created),
            "reserved_until": _at(reserved),
            "expire_time": None if expire is None else _at(expire),
        },
    )


def _write(store: SqliteStore, records: list[Create]) -> None:
    for start in range(0, len(records), 400):
        store.write(records[start : start + 400])


def test_revoke_live_marks_what_may_hold_a_valid_credential(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN an account's issuing (old and new), active, unconfirmed and withheld records within their expiry, and
    an expired, a failed, a signed, an active past its expiry and another account's active record
    WHEN its kill switch revokes at T0+100
    THEN the first five are revoked (who, why, when; an issuing one keeps its horizon as expiry), the rest untouched,
    and the answer counts them and gives the latest expiry."""
    _write(
        store,
        [
            _record(1, state="issuing", created=-10_000, reserved=950),
            _record(2, state="issuing", reserved=900),
            _record(3, state="active", expire=600),
            _record(4, state="unconfirmed", expire=930),
            _record(5, state="withheld", expire=700),
            _record(10, state="expired", expire=50),
            _record(11, state="failed"),
            _record(12, state="signed"),
            _record(13, state="active", expire=100),
            _record(14, state="active", expire=600, service_account=OTHER_SA),
        ],
    )

    result = ledger.revoke_live(SA, by=BY, reason=WHY, now=_at(100))

    revoked = {n: _data(store, _id(n)) for n in (1, 2, 3, 4, 5)}
    assert {
        n: (d["state"], d["revoked_by"], d["revoked_reason"], d["revoked_at"], d["expire_time"])
        for n, d in revoked.items()
    } == {
        1: ("revoked", BY, WHY, _at(100), _at(950)),
        2: ("revoked", BY, WHY, _at(100), _at(900)),
        3: ("revoked", BY, WHY, _at(100), _at(600)),
        4: ("revoked", BY, WHY, _at(100), _at(930)),
        5: ("revoked", BY, WHY, _at(100), _at(700)),
    }
    assert [_data(store, _id(n))["state"] for n in (10, 11, 12, 13, 14)] == [
        "expired",
        "failed",
        "signed",
        "active",
        "active",
    ]
    assert result == L.Revocation(marked=5, within_expiry=5, safe_at=_at(950))


def test_revoke_live_again_marks_nothing_and_answers_the_same(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN an account whose live records were revoked
    WHEN the kill switch revokes again, and the outstanding revocations are read
    THEN nothing more is marked, and both answers give the same count and latest expiry."""
    _write(store, [_record(1, state="active", expire=600), _record(2, state="issuing", reserved=900)])
    ledger.revoke_live(SA, by=BY, reason=WHY, now=_at(100))

    again = ledger.revoke_live(SA, by=BY, reason=WHY, now=_at(200))
    outstanding = ledger.revoked_outstanding(SA, _at(200))
    later = ledger.revoked_outstanding(SA, _at(600))

    assert again == L.Revocation(marked=0, within_expiry=2, safe_at=_at(900))
    assert outstanding == L.Revocation(marked=0, within_expiry=2, safe_at=_at(900))
    assert later == L.Revocation(marked=0, within_expiry=1, safe_at=_at(900))


def test_revoke_live_with_nothing_live_answers_nothing(ledger: Ledger) -> None:
    """GIVEN an account without records
    WHEN its kill switch revokes
    THEN nothing is marked and nothing is outstanding."""
    result = ledger.revoke_live(SA, by=BY, reason=WHY, now=_at(100))

    assert result == L.Revocation(marked=0, within_expiry=0, safe_at=None)


def test_revoke_live_goes_past_one_page_of_each_kind(ledger: Ledger, store: SqliteStore) -> None:
    """GIVEN 201 issuing and 201 active records of one account (a page is 200)
    WHEN its kill switch revokes
    THEN all 402 are revoked and counted."""
    _write(
        store,
        [_record(n, state="issuing", created=n / 1000) for n in range(1, 202)]
        + [_record(n, state="active", expire=600 + n) for n in range(1001, 1202)],
    )

    result = ledger.revoke_live(SA, by=BY, reason=WHY, now=_at(100))

    assert result == L.Revocation(marked=402, within_expiry=402, safe_at=_at(600 + 1201))


def test_a_vend_finishing_during_revocation_is_revoked_with_its_real_expiry(
    ledger: Ledger, store: SqliteStore, events: MemoryEvents
) -> None:
    """GIVEN an issuing record (horizon T0+900) whose vend finishes (expiry T0+600) after the kill switch read it
    WHEN the kill switch revokes
    THEN its stale write loses, the next pass revokes the active record, and the expiry kept is T0+600."""
    _write(store, [_record(1, state="issuing", reserved=900)])
    racing = Ledger(RacingStore(store, lambda: ledger.mark_issued(_id(1), "c", expire_time=_at(600))), events)

    result = racing.revoke_live(SA, by=BY, reason=WHY, now=_at(100))

    data = _data(store, _id(1))
    assert (data["state"], data["expire_time"], data["token_sha256"]) == ("revoked", _at(600), L.sha256("c"))
    assert result == L.Revocation(marked=1, within_expiry=1, safe_at=_at(600))


class EverChangingStore(RacingStore):
    """A store where a vend keeps changing one live record after every query."""

    def __init__(self, inner: SqliteStore, issuance_id: str) -> None:
        super().__init__(inner, lambda: None)
        self.issuance_id = issuance_id
        self.touches = 0

    def query(self, query: Query) -> Any:
        docs = self.inner.query(query)
        self.touches += 1
        self.inner.write([Update(ISSUANCES, self.issuance_id, {"key_id": f"k{self.touches}"})])
        return docs


def test_revoke_live_gives_up_after_its_passes_when_records_keep_changing(
    store: SqliteStore, events: MemoryEvents, frozen: Any
) -> None:
    """GIVEN a live record that changes after every read
    WHEN the kill switch revokes
    THEN it stops after its passes with kill-switch-busy, telling the caller to call again."""
    _write(store, [_record(1, state="active", expire=600)])
    racing = Ledger(EverChangingStore(store, _id(1)), events)

    exc = _raised(lambda: racing.revoke_live(SA, by=BY, reason=WHY, now=_at(100)), ConflictError)

    assert exc.reason == "kill-switch-busy"
    assert exc.message == "Credentials of this service account keep changing; call again to finish."
    assert _data(store, _id(1))["state"] == "active"


def test_mark_revoked_records_who_why_and_when(ledger: Ledger, store: SqliteStore, frozen: Any) -> None:
    """GIVEN an issuing record
    WHEN the vend path finds the kill switch engaged after IAM answered, 5 s later
    THEN the record is revoked, saying who, why and when."""
    _reserve(ledger, 1)
    frozen.tick(5)

    ledger.mark_revoked(_id(1), by=BY, reason=WHY)

    data = _data(store, _id(1))
    assert (data["state"], data["revoked_by"], data["revoked_reason"], data["revoked_at"]) == (
        "revoked",
        BY,
        WHY,
        _at(5),
    )


# ---------------------------------------------------------------------------
# listing by effective state: continuing past records that do not match


def _layout(store: SqliteStore, order: str, *, same_instant: bool) -> dict[str, str]:
    """Records newest first as ``order`` spells them: ``x`` active past its expiry, ``l`` active and live."""
    ids: dict[str, str] = {}
    records = []
    for rank, name in enumerate(order.split()):
        n = 100 - rank  # ids descend with the order, so ties list in the same order
        ids[name] = _id(n)
        expire = 50 if name.startswith("x") else 3600
        records.append(_record(n, state="active", created=0 if same_instant else -rank, expire=expire))
    _write(store, records)
    return ids


def _all_pages(ledger: Ledger, page_size: int) -> list[list[str]]:
    pages, token = [], None
    while True:
        page, token = ledger.list(
            state="expired", service_account=None, principal=None, since=None, page_size=page_size, page_token=token
        )
        pages.append([r["id"] for r in page])
        if token is None or len(pages) > 10:
            return pages


@pytest.mark.parametrize("same_instant", [False, True], ids=["distinct-times", "same-instant"])
@pytest.mark.parametrize(
    ("order", "page_size", "expected"),
    [
        ("x1 l1 x2 l2 x3", 1, [["x1"], ["x2"], ["x3"]]),
        ("l1 l2 x1 l3 x2 x3", 2, [["x1", "x2"], ["x3"]]),
        ("l1 x1 l2 l3 x2 l4 x3 x4", 2, [["x1", "x2"], ["x3", "x4"]]),
    ],
    ids=["one-per-page", "two-per-page", "two-per-page-sparse"],
)
def test_listing_expired_pages_through_live_records_exactly(
    ledger: Ledger,
    store: SqliteStore,
    frozen: Any,
    order: str,
    page_size: int,
    expected: list[list[str]],
    same_instant: bool,
) -> None:
    """GIVEN active records past their expiry (x) interleaved with live ones (l), at distinct times or one instant
    WHEN listed by state expired, page by page
    THEN each page holds the next matches in order, never one twice, and only the last page has no cursor."""
    ids = _layout(store, order, same_instant=same_instant)
    frozen.move_to(_at(100))

    pages = _all_pages(ledger, page_size)

    assert pages == [[ids[name] for name in page] for page in expected]
