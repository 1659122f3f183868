"""Expiry tracking: the sweep, GET /v1/issuances, boundaries, concurrency, scale.

Every boundary is tested just before, at and just after (freezegun), on both
store backends (Firestore through the emulator).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from freezegun import freeze_time

import main
from tests.support.app import CI_SUBJECT, DEMO_SA, PROD_SA, ServiceHarness
from tests.support.grants import access_grant
from vending import clock, ledger
from vending.store.base import Create, Query
from vending.store.indexes import ISSUANCES, REPLAY

T0 = "2026-11-28T10:00:00Z"


def listing(h: ServiceHarness, subject: str = "auditor@example.com", **query: str) -> Any:
    resp = h.get("/v1/issuances", subject=subject, query=query)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def state(h: ServiceHarness, issuance_id: str) -> str:
    resp = h.get(f"/v1/issuances/{issuance_id}", subject="auditor@example.com")
    return str(resp.get_json()["state"])


def expired_events(h: ServiceHarness) -> list[dict[str, Any]]:
    return [e for _, e in h.events.published if e["type"] == "credential.expired"]


# -- expire_time boundary --------------------------------------------------------------------------


def test_sixty_second_token_is_active_then_expired_with_and_without_sweep(any_harness: ServiceHarness) -> None:
    h = any_harness
    with freeze_time(T0) as frozen:
        # GIVEN a token vended with a 60 s lifetime
        issuance_id = h.vend(lifetime=60).get_json()["issuance_id"]
        # WHEN 59 s pass: active, and the sweep leaves it alone
        frozen.tick(59)
        assert state(h, issuance_id) == "active"
        assert h.service.sweep()["counts"].get("issuances_expired_from_active", 0) == 0
        assert [i["id"] for i in listing(h, state="active")["issuances"]] == [issuance_id]
        # WHEN it reaches expire_time: it reads expired before any sweep
        frozen.tick(1)
        assert state(h, issuance_id) == "expired"
        assert listing(h, state="active")["issuances"] == []
        assert [i["id"] for i in listing(h, state="expired")["issuances"]] == [issuance_id]
        # AND the sweep records it, once, with one event and a summary
        summary = h.service.sweep()
        assert summary["counts"]["issuances_expired_from_active"] == 1 and summary["live_credentials"] == 0
        frozen.tick(1)
        assert h.service.sweep()["counts"].get("issuances_expired_from_active", 0) == 0
    doc = h.service.ledger.get(issuance_id)
    assert doc is not None and doc.data["state"] == "expired"
    assert [e["issuance_id"] for e in expired_events(h)] == [issuance_id]


def test_sweep_summary_counts_live_credentials(harness: ServiceHarness) -> None:
    harness.vend(lifetime=600)
    harness.vend(lifetime=600)
    summary = harness.service.sweep()
    assert summary["live_credentials"] == 2 and summary["live_by_service_account"] == {DEMO_SA: 2}
    assert summary["live_break_glass"] == 0


# -- reservation timeout ------------------------------------------------------------------------------


def reserve(h: ServiceHarness, *, max_lifetime_s: int = 900) -> str:
    issuance_id = ledger.new_id()
    h.service.ledger.reserve(
        issuance_id,
        access_grant(),
        reason=None,
        details={},
        reserved_until=clock.now() + _dt.timedelta(seconds=max_lifetime_s),
        replay_key=None,
        replay_until=None,
    )
    return issuance_id


@pytest.mark.parametrize("offset,expected", [(-1, "issuing"), (0, "unconfirmed"), (1, "unconfirmed")])
def test_reservation_timeout_boundary(any_harness: ServiceHarness, offset: int, expected: str) -> None:
    h = any_harness
    with freeze_time(T0) as frozen:
        # GIVEN a reservation whose process died before finalizing
        issuance_id = reserve(h)
        # WHEN the sweep runs around the reservation timeout
        frozen.tick(h.settings.reservation_timeout_s + offset)
        h.service.sweep()
        # THEN it says a credential may exist until reservation time + the maximum
        doc = h.service.ledger.get(issuance_id)
        assert doc is not None and doc.data["state"] == expected
        if expected == "unconfirmed":
            assert doc.data["expire_time"] == clock.parse_rfc3339(T0) + _dt.timedelta(seconds=900)


@pytest.mark.parametrize("offset,expected", [(-1, "unconfirmed"), (0, "expired"), (1, "expired")])
def test_unconfirmed_expires_at_reserved_until(harness: ServiceHarness, offset: int, expected: str) -> None:
    with freeze_time(T0) as frozen:
        issuance_id = reserve(harness)
        frozen.tick(300)
        harness.service.sweep()
        frozen.tick(600 + offset)  # reserved_until = T0 + 900
        assert state(harness, issuance_id) == expected
        harness.service.sweep()
        doc = harness.service.ledger.get(issuance_id)
        assert doc is not None and doc.data["state"] == expected


# -- requests and replay records --------------------------------------------------------------------


@pytest.mark.parametrize("offset,expected", [(-1, "ACTIVE"), (0, "EXPIRED"), (1, "EXPIRED")])
def test_sweep_expires_requests_at_window_end(any_harness: ServiceHarness, offset: int, expected: str) -> None:
    h = any_harness
    with freeze_time(T0) as frozen:
        body = {"entitlement": "prod-admin", "justification": "TICKET-1: fix", "duration": 600}
        request_id = h.post("/v1/requests", body, subject="dave@example.com").get_json()["id"]
        h.post(f"/v1/requests/{request_id}:approve", subject="alice@example.com")
        h.post(f"/v1/requests/{request_id}:approve", subject="bob@example.com")
        frozen.tick(600 + offset)
        h.service.sweep()
    from vending.store.indexes import REQUESTS

    doc = h.store.get(REQUESTS, request_id)
    assert doc is not None and doc.data["state"] == expected


def test_sweep_deletes_used_jti_only_once_the_token_is_no_longer_accepted(any_harness: ServiceHarness) -> None:
    h = any_harness
    leeway = h.policy.issuers[0].leeway_seconds
    with freeze_time(T0) as frozen:
        # GIVEN a used caller token, accepted until exp + leeway
        token = h.token(exp=int(clock.epoch()) + 120)
        assert h.post("/v1/access-tokens", {"service_account": DEMO_SA}, token=token).status_code == 200
        # WHEN the sweep runs past exp but within the leeway
        frozen.tick(120 + leeway - 1)
        h.service.sweep()
        # THEN the replay record stays, and the token is still refused as a replay
        assert len(h.store.query(Query(REPLAY, order_by="expires_at", limit=10))) == 1
        again = h.post("/v1/access-tokens", {"service_account": DEMO_SA}, token=token)
        assert (again.status_code, again.get_json()["error"]["reason"]) == (401, "token-replayed")
        # AND once the token is no longer accepted, the sweep deletes it
        frozen.tick(1)
        summary = h.service.sweep()
        assert summary["counts"]["replay_records_deleted"] == 1
        assert h.store.query(Query(REPLAY, order_by="expires_at", limit=10)) == []


# -- concurrency and scale --------------------------------------------------------------------------


def seed(h: ServiceHarness, *, history: int, due: int, now: _dt.datetime) -> None:
    """``history`` long-expired records and ``due`` active records past their expiry."""
    writes = []
    for i in range(history + due):
        is_due = i >= history
        created = now - _dt.timedelta(hours=2, seconds=i)
        writes.append(
            Create(
                ISSUANCES,
                ledger.new_id(),
                {
                    "kind": "access_token",
                    "state": "active" if is_due else "expired",
                    "principal": CI_SUBJECT,
                    "service_account": DEMO_SA if i % 2 else PROD_SA,
                    "entitlement": "deploy",
                    "created_at": created,
                    "expire_time": now - _dt.timedelta(seconds=1 + i % 50),
                    "reserved_until": created,
                    "break_glass": False,
                    "purge_at": now + _dt.timedelta(days=90),
                },
            )
        )
        if len(writes) == 500:
            h.store.write(writes)
            writes = []
    if writes:
        h.store.write(writes)


class CountingStore:
    """Wraps a store to count documents read by queries (the sweep's cost)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.read, self.queries = inner, 0, 0

    def query(self, q: Any) -> Any:
        out = self.inner.query(q)
        self.read += len(out)
        self.queries += 1
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.emulator
@pytest.mark.parametrize("history", [1_000, 10_000])
def test_sweep_cost_grows_with_due_records_not_history(fs_harness: ServiceHarness, history: int) -> None:
    h = fs_harness
    now = clock.now()
    seed(h, history=history - 100, due=100, now=now)
    counting = CountingStore(h.store)
    h.rebuild(store=counting)
    summary = h.service.sweep()
    assert summary["counts"]["issuances_expired_from_active"] == 100
    assert counting.read <= 100 + 5, counting.read
    assert len(expired_events(h)) == 100


def test_sweep_over_ten_thousand_records_on_sqlite(harness: ServiceHarness) -> None:
    now = clock.now()
    seed(harness, history=9_900, due=100, now=now)
    counting = CountingStore(harness.store)
    harness.rebuild(store=counting)
    assert harness.service.sweep()["counts"]["issuances_expired_from_active"] == 100
    assert counting.read <= 105


def test_two_sweeps_at_once_expire_each_record_once(any_harness: ServiceHarness) -> None:
    h = any_harness
    seed(h, history=0, due=300, now=clock.now())
    results: list[dict[str, Any]] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        results.append(h.service.sweep())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(r["counts"].get("issuances_expired_from_active", 0) for r in results)
    assert total == 300
    ids = [e["issuance_id"] for e in expired_events(h)]
    assert len(ids) == len(set(ids)) == 300


# -- GET /v1/issuances ---------------------------------------------------------------------------


def test_listing_filters_pagination_and_no_token(any_harness: ServiceHarness) -> None:
    h = any_harness
    tokens = []
    with freeze_time(T0) as frozen:
        for _ in range(5):
            tokens.append(h.vend(lifetime=600).get_json()["access_token"])
            frozen.tick(1)
        since = clock.rfc3339(clock.now() - _dt.timedelta(seconds=2))
        page1 = listing(h, page_size="2")
        page2 = listing(h, page_size="2", page_token=page1["next_page_token"])
        page3 = listing(h, page_size="2", page_token=page2["next_page_token"])
        ids = [i["id"] for p in (page1, page2, page3) for i in p["issuances"]]
        assert len(ids) == len(set(ids)) == 5 and "next_page_token" not in page3
        created = [i["created_at"] for p in (page1, page2, page3) for i in p["issuances"]]
        assert created == sorted(created, reverse=True)
        assert len(listing(h, since=since)["issuances"]) == 2
        assert len(listing(h, service_account=DEMO_SA, principal=CI_SUBJECT, state="active")["issuances"]) == 5
        assert listing(h, service_account=PROD_SA)["issuances"] == []
    dump = json.dumps([page1, page2, page3])
    assert not any(t in dump for t in tokens)
    assert all(len(i["token_sha256"]) == 64 for i in page1["issuances"])


def test_callers_list_only_their_own(harness: ServiceHarness) -> None:
    harness.vend()
    mine = listing(harness, subject=CI_SUBJECT)
    assert len(mine["issuances"]) == 1
    other = harness.get("/v1/issuances", subject="mallory@example.com").get_json()
    assert other["issuances"] == []
    resp = harness.get("/v1/issuances", subject="mallory@example.com", query={"principal": CI_SUBJECT})
    assert (resp.status_code, resp.get_json()["error"]["reason"]) == (403, "not-an-auditor")
    issuance_id = mine["issuances"][0]["id"]
    assert harness.get(f"/v1/issuances/{issuance_id}", subject=CI_SUBJECT).status_code == 200
    denied = harness.get(f"/v1/issuances/{issuance_id}", subject="mallory@example.com")
    assert (denied.status_code, denied.get_json()["error"]["reason"]) == (403, "not-a-reader")


@pytest.mark.parametrize(
    "query,why",
    [
        ({"state": "alive"}, "invalid-state"),
        ({"since": "yesterday"}, "invalid-since"),
        ({"page_size": "0"}, "invalid-page-size"),
        ({"page_size": "501"}, "invalid-page-size"),
        ({"page_token": "garbage!"}, "invalid-page-token"),
        ({"colour": "red"}, "unknown-field"),
        ({"service_account": "nope"}, "invalid-service-account"),
    ],
)
def test_listing_bad_queries(harness: ServiceHarness, query: dict[str, str], why: str) -> None:
    resp = harness.get("/v1/issuances", subject="auditor@example.com", query=query)
    assert (resp.status_code, resp.get_json()["error"]["reason"]) == (400, why)


def test_unknown_issuance(harness: ServiceHarness) -> None:
    resp = harness.get("/v1/issuances/" + "a" * 32, subject="auditor@example.com")
    assert (resp.status_code, resp.get_json()["error"]["reason"]) == (404, "issuance-not-found")


# -- entry points -----------------------------------------------------------------------------------


def test_sweep_expired_entry_point(harness: ServiceHarness) -> None:
    seed(harness, history=0, due=3, now=clock.now())
    event = CloudEvent(
        {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//scheduler", "id": "1"},
        {"message": {"data": ""}},
    )
    main.sweep_expired(event)
    assert len(expired_events(harness)) == 3


def test_sweep_command_on_the_embedded_store(tmp_path: Path) -> None:
    from vending.store.sqlite import SqliteStore

    db = tmp_path / "vending.db"
    store = SqliteStore(str(db))
    now = clock.now()
    store.write(
        [
            Create(
                ISSUANCES,
                "b" * 32,
                {
                    "kind": "access_token",
                    "state": "active",
                    "principal": CI_SUBJECT,
                    "service_account": DEMO_SA,
                    "created_at": now - _dt.timedelta(minutes=2),
                    "expire_time": now - _dt.timedelta(minutes=1),
                    "break_glass": False,
                },
            )
        ]
    )
    store.close()
    env = {
        **os.environ,
        "VENDING_STORE": f"sqlite:{db}",
        "VENDING_CONFIG": "config/example.yaml",
        "VENDING_EVENTS_FILE": str(tmp_path / "events.jsonl"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "vending", "sweep"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    summary = json.loads(out.stdout)
    assert summary["counts"]["issuances_expired_from_active"] == 1
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events] == ["credential.expired"]
