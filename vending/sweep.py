"""The expiry sweep: keep the ledger true, cheaply, however long its history.

Run every minute by Cloud Scheduler (``sweep_expired``) and by
``python -m vending sweep`` locally. Each step queries by state and due time
(declared indexes), so its cost grows with the records that are due, not
with the size of the ledger; each works in batches and writes with
``expect_version`` preconditions, so two sweeps at once never both act on a
record (the loser skips it) and running it twice changes nothing more.

Steps: active / unconfirmed issuances past ``expire_time`` -> expired (one
``credential.expired`` event each); ``issuing`` reservations older than the
reservation timeout -> unconfirmed (a credential may exist until
``reserved_until``); access requests past their pending time or window ->
EXPIRED; used ``jti`` records past expiry deleted. Then one summary line.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from collections.abc import Callable
from typing import Any

from vending import approvals, clock, ledger, log
from vending.events import make_event
from vending.store.base import Delete, Doc, Filter, Query, StoreConflict, Update
from vending.store.indexes import ISSUANCES, REPLAY, REQUESTS

BATCH = 200
MAX_BATCHES = 50  # at most 10,000 records per step per run; the next run continues


def _due(store: Any, kind: str, filters: tuple[Filter, ...], order: str) -> Any:
    """Yield batches of due documents, oldest first."""
    after = None
    for _ in range(MAX_BATCHES):
        batch = store.query(Query(kind, filters, order_by=order, limit=BATCH, start_after=after))
        if not batch:
            return
        yield batch
        if len(batch) < BATCH:
            return
        after = (batch[-1].data[order], batch[-1].id)


def _apply(store: Any, docs: list[Doc], change: Callable[[Doc], Any]) -> list[Doc]:
    """Write one batch with per-document preconditions; on a race fall back to one by one.

    Returns the documents this sweep changed (a concurrent sweep took the others).
    """
    writes = [change(d) for d in docs]
    try:
        store.write(writes)
        return docs
    except StoreConflict:
        won = []
        for doc, write in zip(docs, writes):
            try:
                store.write([write])
                won.append(doc)
            except StoreConflict:
                continue
        return won


def sweep(service: Any) -> dict[str, Any]:
    store, events = service.store, service.events
    now = clock.now()
    counts: Counter[str] = Counter()

    # 1. issuances past their expiry (active, and unconfirmed past reserved_until)
    for state in (ledger.ACTIVE, ledger.UNCONFIRMED):
        filters = (Filter("state", "==", state), Filter("expire_time", "<=", now))
        for batch in _due(store, ISSUANCES, filters, "expire_time"):
            won = _apply(store, batch, lambda d: Update(ISSUANCES, d.id, {"state": ledger.EXPIRED, "expired_at": now},
                                                       expect_version=d.version))
            counts[f"issuances_expired_from_{state}"] += len(won)
            for doc in won:
                events.publish("notifications", make_event(
                    "credential.expired", issuance_id=doc.id, kind=doc.data.get("kind"),
                    service_account=doc.data.get("service_account"), principal=doc.data.get("principal"),
                    entitlement=doc.data.get("entitlement"), request_id=doc.data.get("request_id"),
                    expire_time=doc.data.get("expire_time"), break_glass=bool(doc.data.get("break_glass"))))

    # 2. reservations whose process died between reserve and finalize
    stale = now - _dt.timedelta(seconds=service.settings.reservation_timeout_s)
    filters = (Filter("state", "==", ledger.ISSUING), Filter("created_at", "<=", stale))
    for batch in _due(store, ISSUANCES, filters, "created_at"):
        won = _apply(store, batch, lambda d: Update(
            ISSUANCES, d.id, {"state": ledger.UNCONFIRMED, "expire_time": d.data.get("reserved_until"),
                              "failure": "reservation-not-finalized"}, expect_version=d.version))
        counts["issuances_unconfirmed"] += len(won)
        for doc in won:
            log.warning("issuance reservation not finalized: a credential may exist until reserved_until",
                        issuance_id=doc.id, service_account=doc.data.get("service_account"),
                        reserved_until=doc.data.get("reserved_until"))

    # 3. access requests past their pending time or window
    for state in (approvals.AWAITED, approvals.ACTIVE):
        filters = (Filter("state", "==", state), Filter("expires_at", "<=", now))
        for batch in _due(store, REQUESTS, filters, "expires_at"):
            def expire(d: Doc) -> Update:
                timeline = list(d.data.get("timeline", [])) + [
                    {"at": now, "event": "expired", "actor": "system", "via": "sweep"}]
                return Update(REQUESTS, d.id, {"state": approvals.transition(d.data["state"], "expire"),
                                               "expires_at": None, "timeline": timeline},
                              expect_version=d.version)
            won = _apply(store, batch, expire)
            counts["requests_expired"] += len(won)
            for doc in won:
                events.publish("notifications", make_event(
                    "request.expired", request_id=doc.id, entitlement=doc.data.get("entitlement"),
                    requester=doc.data.get("requester"), previous_state=doc.data.get("state")))

    # 4. used caller-token ids past their expiry
    for batch in _due(store, REPLAY, (Filter("expires_at", "<=", now),), "expires_at"):
        won = _apply(store, batch, lambda d: Delete(REPLAY, d.id, expect_version=d.version))
        counts["replay_records_deleted"] += len(won)

    # 5. what is live now (bounded by live credentials, not by history)
    live: Counter[str] = Counter()
    live_break_glass = 0
    for state in (ledger.ACTIVE, ledger.UNCONFIRMED):
        for batch in _due(store, ISSUANCES, (Filter("state", "==", state), Filter("expire_time", ">", now)),
                          "expire_time"):
            for doc in batch:
                live[str(doc.data.get("service_account"))] += 1
                live_break_glass += bool(doc.data.get("break_glass"))
    summary = {
        "swept_at": clock.rfc3339(now),
        "counts": dict(sorted(counts.items())),
        "live_credentials": sum(live.values()),
        "live_by_service_account": dict(sorted(live.items())),
        "live_break_glass": live_break_glass,
    }
    log.info("sweep summary", sweep=summary)
    events.flush(5.0)
    return summary
