"""Grants for tests that reserve ledger records directly (as the vend pipeline does)."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from tests.support.app import CI_SUBJECT, CLOUD, DEMO_SA
from vending import clock
from vending.grant import Bounds, Grant
from vending.kinds.access_token import Terms


def access_grant(*, lifetime_s: int = 600, max_lifetime_s: int = 900, **changes: Any) -> Grant:
    now = clock.now()
    fields: dict[str, Any] = {
        "caller": f"ci/{CI_SUBJECT}",
        "issuer": "ci",
        "subject": CI_SUBJECT,
        "entitlement": "deploy",
        "kind": "access_token",
        "service_account": DEMO_SA,
        "delegates": (),
        "bounds": Bounds(not_after=now + _dt.timedelta(seconds=max_lifetime_s), scopes=(CLOUD,)),
        "terms": Terms((CLOUD,), lifetime_s),
        "decided_at": now,
    }
    fields.update(changes)
    return Grant(**fields)
