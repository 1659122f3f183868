"""Faults of the store: the Firestore emulator stopped mid-run, and failures around the IAM call (issue 9, part 5).

GIVEN the HTTP function, the IAM stand-in and a store that fails,
WHEN vends run through the failure,
THEN callers get 200 or 503 ``store-unavailable`` (never a bare 5xx, never a
hang: every call returns within ``STORE_BOUND_S``), nothing is minted
unless its reservation was written first (fail closed), and the ledger
agrees with what the stand-in minted (``tests.support.audit.check_ledger``).

The Firestore emulator keeps its data in memory, so stopping it loses what
it held (real Firestore would not). The Firestore run therefore checks the
ledger against a ``ShadowStore``: a mirror of every batch the backend
acknowledged, i.e. what durable storage holds.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from collections import Counter
from typing import Any

import pytest
from freezegun import freeze_time

from tests.support.app import CLOUD, DEMO_SA, PROD_SA, ServiceHarness
from tests.support.audit import FailingStore, ShadowStore, check_ledger, dump_store, use_store, vended
from vending.store.base import Create, Update
from vending.store.indexes import ISSUANCES, REQUESTS

STORE_BOUND_S = 20.0  # FirestoreStore: 5 s per RPC, 2 s retry deadline; a vend makes at most ~4 store calls


def vend(h: ServiceHarness, **body: Any) -> tuple[int, str | None, float, str]:
    body.setdefault("service_account", DEMO_SA)
    body.setdefault("lifetime", 600)
    subject = body.pop("subject", None)
    started = time.monotonic()
    resp = h.post("/v1/access-tokens", body, **({"subject": subject} if subject else {}))
    elapsed = time.monotonic() - started
    data = resp.get_json()
    reason = None
    if resp.status_code != 200:
        assert set(data) == {"error"} and data["error"]["reason"], data
        reason = data["error"]["reason"]
    return resp.status_code, reason, elapsed, resp.get_data(as_text=True)


# ---------------------------------------------------------------------------
# The Firestore emulator stopped in the middle of a run


@pytest.mark.emulator
def test_firestore_stopped_mid_run_then_started(
    fs_harness: ServiceHarness, firestore_emulator: Any, suite_figures: Any
) -> None:
    if not firestore_emulator.owned:
        pytest.fail(
            "this test stops and restarts the Firestore emulator, and the one in use comes from "
            "FIRESTORE_EMULATOR_HOST: unset it so the suite starts its own (as .ci/run does)"
        )
    h = fs_harness
    shadow = ShadowStore(h.store)
    use_store(h, shadow)
    outcomes: list[tuple[str, int, str | None, float]] = []
    lock = threading.Lock()
    stop = threading.Event()
    phase = ["before"]

    def worker() -> None:
        while not stop.is_set():
            status, reason, elapsed, _ = vend(h)
            with lock:
                outcomes.append((phase[0], status, reason, elapsed))

    def count(which: str, status: int | None = None) -> int:
        with lock:
            return sum(1 for p, s, _, _ in outcomes if p == which and (status is None or s == status))

    def wait_for(predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out waiting for the run to progress"
            time.sleep(0.05)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    down_s = 0.0
    try:
        # GIVEN vends succeeding
        wait_for(lambda: count("before", 200) >= 8, 60)
        # WHEN the emulator is stopped while they run
        phase[0] = "down"
        stopped_at = time.monotonic()
        firestore_emulator.stop()
        wait_for(lambda: count("down", 503) >= 8, 60)
        # AND started again (on the same port)
        phase[0] = "restarted"
        firestore_emulator.start()
        down_s = time.monotonic() - stopped_at
        # THEN vends succeed again
        wait_for(lambda: count("restarted", 200) >= 8, 90)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=STORE_BOUND_S + 5)
        if not firestore_emulator.running:
            firestore_emulator.start()
    time.sleep(0.2)

    by_phase = {p: Counter((s, r) for q, s, r, _ in outcomes if q == p) for p in ("before", "down", "restarted")}
    # every caller: 200, or 503 store-unavailable; nothing else, never a hang
    assert {(s, r) for _, s, r, _ in outcomes} <= {(200, None), (503, "store-unavailable")}, by_phase
    slowest = max(e for _, _, _, e in outcomes)
    assert slowest <= STORE_BOUND_S, f"a call took {slowest:.1f}s"
    # the ledger as durable storage holds it agrees with what the stand-in minted
    figures = check_ledger(shadow.docs.get(ISSUANCES, {}), h.standin.minted)
    ok = sum(1 for _, s, _, _ in outcomes if s == 200)
    assert len(vended(h.standin.minted)) >= ok
    active = sum(1 for r in shadow.docs.get(ISSUANCES, {}).values() if r["state"] == "active")
    # Every credential handed out is active. A vend whose confirm landed just before the emulator stopped
    # and whose final kill-switch read did not fails closed (503): its credential exists (the record says
    # active, until it expires) but nobody holds it; at most one such vend per thread per stop.
    assert ok <= active <= ok + len(threads), (ok, active)
    suite_figures.add(
        f"store fault (Firestore emulator stopped for {down_s:.1f}s during 4 vending threads): "
        f"{len(outcomes)} vends, "
        + "; ".join(f"{p} {dict(c)}" for p, c in by_phase.items())
        + f"; slowest {slowest:.1f}s; {shadow.failed_writes} failed writes; {figures}"
    )


# ---------------------------------------------------------------------------
# Failures around the IAM call (SQLite, deterministic)


def _finalize(w: Any) -> bool:
    return isinstance(w, Update) and w.kind == ISSUANCES and "token_sha256" in w.changes


def _reserve(w: Any) -> bool:
    return isinstance(w, Create) and w.kind == ISSUANCES


def _mark_failed(w: Any) -> bool:
    return isinstance(w, Update) and w.kind == ISSUANCES and w.changes.get("state") in ("failed", "unconfirmed")


def _record_use(w: Any) -> bool:
    """The write that settles an approval use after the credential is recorded (timeline, ENDED)."""
    return isinstance(w, Update) and w.kind == REQUESTS and "timeline" in w.changes


def test_store_down_before_the_reservation_mints_nothing(harness: ServiceHarness, suite_figures: Any) -> None:
    h = harness
    use_store(h, FailingStore(h.store, _reserve))
    status, reason, _, _ = vend(h)
    assert (status, reason) == (503, "store-unavailable")
    assert h.standin.calls == Counter() and h.standin.minted == []
    assert dump_store(h.store).get(ISSUANCES, {}) == {}
    suite_figures.add("store fault before the reservation: 503 store-unavailable, 0 IAM calls, 0 records")


def test_store_failure_after_iam_success_keeps_the_reservation(harness: ServiceHarness, suite_figures: Any) -> None:
    h = harness
    use_store(h, FailingStore(h.store, _finalize))
    # WHEN IAM mints but the record cannot be finalized
    status, reason, _, body = vend(h)
    # THEN the caller gets 503 (fail closed: the credential is not handed out), and never sees it
    assert (status, reason) == (503, "store-unavailable")
    [minted] = vended(h.standin.minted)
    assert minted.credential not in body
    # AND the reservation, left issuing under the id IAM was told, accounts for the credential
    issuances = dump_store(h.store)[ISSUANCES]
    figures = check_ledger(issuances, h.standin.minted)
    [record] = issuances.values()
    assert record["state"] == "issuing" and minted.request_reason.endswith(record["id"])
    # AND the sweep turns it into "unconfirmed" once the reservation times out

    with freeze_time(_dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=h.settings.reservation_timeout_s + 1)):
        h.service.sweep()
    [record] = dump_store(h.store)[ISSUANCES].values()
    assert record["state"] == "unconfirmed"
    check_ledger(dump_store(h.store)[ISSUANCES], h.standin.minted)
    suite_figures.add(
        f"store fault after IAM success: 503 store-unavailable, record left issuing -> swept to unconfirmed; {figures}"
    )


def test_store_failure_after_an_iam_error_leaves_the_reservation(harness: ServiceHarness) -> None:
    h = harness
    use_store(h, FailingStore(h.store, _mark_failed))
    h.standin.set_fault(429)
    status, reason, _, _ = vend(h)
    # the caller hears IAM's answer; the record stays issuing (the sweep reconciles it)
    assert (status, reason) == (429, "iam-rate-limited")
    issuances = dump_store(h.store)[ISSUANCES]
    assert [r["state"] for r in issuances.values()] == ["issuing"]
    check_ledger(issuances, h.standin.minted)


def test_store_failure_while_counting_an_approval_use_still_hands_out_the_token(
    harness: ServiceHarness, suite_figures: Any
) -> None:
    h = harness
    resp = h.post(
        "/v1/requests", {"entitlement": "prod-admin", "justification": "TICKET-1: rotate"}, subject="dave@example.com"
    )
    request_id = resp.get_json()["id"]
    h.post(f"/v1/requests/{request_id}:approve", subject="alice@example.com")
    h.post(f"/v1/requests/{request_id}:approve", subject="bob@example.com")
    use_store(h, FailingStore(h.store, _record_use))
    # WHEN the credential is minted and recorded, but the request's use counter cannot be updated
    status, _, _, body = vend(
        h, service_account=PROD_SA, scopes=[CLOUD], request_id=request_id, subject="dave@example.com"
    )
    # THEN the caller still gets the credential the ledger records as active (the use itself was consumed
    # atomically with the reservation), and the approval cannot be used again
    assert status == 200, body
    [minted] = vended(h.standin.minted)
    assert minted.credential in body
    check_ledger(dump_store(h.store)[ISSUANCES], h.standin.minted)
    again = vend(h, service_account=PROD_SA, scopes=[CLOUD], request_id=request_id, subject="dave@example.com")
    assert again[:2] == (409, "approval-consumed")
    assert len(vended(h.standin.minted)) == 1
    suite_figures.add(
        "store fault while counting an approval use: 200 with the recorded credential, "
        "second vend 409 approval-consumed"
    )


def test_intermittent_store_failures_over_a_run(harness: ServiceHarness, suite_figures: Any) -> None:
    h = harness
    import random

    rng = random.Random(3)
    store = FailingStore(h.store, lambda w: w.kind == ISSUANCES and rng.random() < 0.3)
    use_store(h, store)
    outcomes = Counter()
    for _ in range(40):
        status, reason, elapsed, _ = vend(h)
        assert elapsed <= STORE_BOUND_S
        outcomes[(status, reason)] += 1
    assert set(outcomes) <= {(200, None), (503, "store-unavailable")}, outcomes
    figures = check_ledger(dump_store(h.store).get(ISSUANCES, {}), h.standin.minted)
    suite_figures.add(
        f"store faults at random (30% of ledger writes, {store.failed} failed): 40 vends -> {dict(outcomes)}; {figures}"
    )
