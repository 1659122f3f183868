"""The expiry sweep: keep the ledger true, cheaply, however long its history.

Run every minute by Cloud Scheduler (``sweep_expired``) and by
``python -m vending sweep`` locally. It changes nothing itself: it asks each
record's owner to apply its own transitions (``Ledger`` for issuances and
replay records, ``Approvals`` for access requests). Each step queries by
state and due time (declared indexes), so its cost grows with the records
that are due, not with the size of the ledger, and writes with version
preconditions, so two sweeps at once never both act on a record.

Steps: live issuances past ``expire_time`` -> expired (one
``credential.expired`` event each); ``issuing`` reservations older than the
reservation timeout -> unconfirmed (a credential may exist until
``reserved_until``); access requests past their pending time or window ->
EXPIRED; used caller-token records whose token is no longer accepted
(``exp`` + leeway) deleted. Then one summary line.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from typing import Any

from vending import clock, log
from vending.approvals import Approvals
from vending.events import Events
from vending.ledger import Ledger


def sweep(ledger: Ledger, approvals: Approvals, events: Events, *, reservation_timeout_s: int) -> dict[str, Any]:
    now = clock.now()
    counts: Counter[str] = ledger.expire_due(now)
    for doc in ledger.unconfirm_stale(now - _dt.timedelta(seconds=reservation_timeout_s)):
        counts["issuances_unconfirmed"] += 1
        log.warning(
            "issuance reservation not finalized: a credential may exist until reserved_until",
            issuance_id=doc.id,
            service_account=doc.data.get("service_account"),
            reserved_until=doc.data.get("reserved_until"),
        )
    counts["requests_expired"] += approvals.expire_due(now)
    counts["replay_records_deleted"] += ledger.purge_replay(now)
    live = ledger.live(now)
    by_sa = Counter(str(r.get("service_account")) for r in live)
    summary = {
        "swept_at": clock.rfc3339(now),
        "counts": dict(sorted(counts.items())),
        "live_credentials": len(live),
        "live_by_service_account": dict(sorted(by_sa.items())),
        "live_break_glass": sum(bool(r.get("break_glass")) for r in live),
    }
    log.info("sweep summary", sweep=summary)
    events.flush(5.0)
    return summary
