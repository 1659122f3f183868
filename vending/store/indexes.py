"""Every query shape the code runs, declared once.

Both store backends refuse a query whose shape is not listed here, the SQLite
backend creates matching expression indexes from it, and the Terraform tests
check that each composite entry has a ``google_firestore_index`` resource.

A shape is (kind, equality fields, range-or-order field). Firestore serves
single-field shapes from its automatic indexes; shapes with equality fields
plus a different range/order field need a composite index.
"""

from __future__ import annotations

from dataclasses import dataclass

ISSUANCES = "issuances"
REQUESTS = "requests"
REPLAY = "replay"
USES = "uses"
KILL_SWITCHES = "kill_switches"  # one document per service account (id: its email); read by id only


@dataclass(frozen=True)
class IndexShape:
    """A query shape the stores index: equality fields, then an optional order."""

    kind: str
    equality: tuple[str, ...]
    order: str | None

    @property
    def composite(self) -> bool:
        return bool(self.equality) and self.order is not None and self.order not in self.equality


INDEXES: tuple[IndexShape, ...] = (
    # sweep: active / issuing issuances due by expire_time or created_at
    IndexShape(ISSUANCES, ("state",), "expire_time"),
    IndexShape(ISSUANCES, ("state",), "created_at"),
    # GET /v1/issuances filters, newest first
    IndexShape(ISSUANCES, (), "created_at"),
    IndexShape(ISSUANCES, ("principal",), "created_at"),
    IndexShape(ISSUANCES, ("service_account",), "created_at"),
    IndexShape(ISSUANCES, ("state", "service_account"), "created_at"),
    IndexShape(ISSUANCES, ("state", "principal"), "created_at"),
    IndexShape(ISSUANCES, ("principal", "service_account"), "created_at"),
    IndexShape(ISSUANCES, ("state", "principal", "service_account"), "created_at"),
    # kill switch: an account's live (and revoked) credentials still within their expiry
    IndexShape(ISSUANCES, ("state", "service_account"), "expire_time"),
    # sweep: requests waiting too long / active past their window (and the ACTIVE break-glass ones)
    IndexShape(REQUESTS, ("state",), "expires_at"),
    # GET /v1/requests, newest first: a requester's own, an approver's per entitlement, an auditor's all
    IndexShape(REQUESTS, (), "created_at"),
    IndexShape(REQUESTS, ("state",), "created_at"),
    IndexShape(REQUESTS, ("requester",), "created_at"),
    IndexShape(REQUESTS, ("entitlement",), "created_at"),
    IndexShape(REQUESTS, ("requester", "state"), "created_at"),
    IndexShape(REQUESTS, ("entitlement", "state"), "created_at"),
    IndexShape(REQUESTS, ("entitlement", "requester"), "created_at"),
    IndexShape(REQUESTS, ("entitlement", "requester", "state"), "created_at"),
    # sweep: used jti records past expiry
    IndexShape(REPLAY, (), "expires_at"),
)


def shape_of(kind: str, equality_fields: list[str], order_field: str | None) -> IndexShape:
    return IndexShape(kind, tuple(sorted(equality_fields)), order_field)


def is_declared(kind: str, equality_fields: list[str], order_field: str | None) -> bool:
    wanted = shape_of(kind, equality_fields, order_field)
    return any(
        s.kind == wanted.kind and tuple(sorted(s.equality)) == wanted.equality and s.order == wanted.order
        for s in INDEXES
    )
