"""Issuance records: reserve -> active / failed -> expired (or unconfirmed).

A record is written *before* the IAM call (state ``issuing``) in the same
atomic batch that consumes the caller token's ``jti`` (and, for approved
requests, one use of the approval). After the call it becomes ``active`` with
the credential's SHA-256 and expiry, or ``failed``. The raw credential is
never stored. A reservation left ``issuing`` (the process died) is turned by
the sweep into ``unconfirmed``: a credential may exist until
``reserved_until`` (reservation time plus the entitlement's maximum).

States: issuing, active, failed, expired, unconfirmed, signed (signBlob:
no expiry of its own; the key id is recorded).
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vending import clock
from vending.errors import AuthenticationError, BadRequestError
from vending.store.base import Create, Doc, Filter, Query, Store, StoreConflict, Update, Write
from vending.store.indexes import ISSUANCES, REPLAY

ISSUING, ACTIVE, FAILED, EXPIRED, UNCONFIRMED, SIGNED = "issuing", "active", "failed", "expired", "unconfirmed", "signed"
STATES = (ISSUING, ACTIVE, FAILED, EXPIRED, UNCONFIRMED, SIGNED)
LIVE_STATES = (ACTIVE, UNCONFIRMED)


def sha256(value: str | bytes) -> str:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Reservation:
    """Everything recorded about an issuance before the credential exists."""

    id: str
    kind: str
    principal: str
    issuer: str
    subject: str
    entitlement: str
    service_account: str
    delegates: tuple[str, ...]
    reserved_until: _dt.datetime
    scopes: tuple[str, ...] = ()
    lifetime_s: int | None = None
    reason: str | None = None
    request_id: str | None = None
    break_glass: bool = False
    details: dict[str, Any] = field(default_factory=dict)


class Ledger:
    def __init__(self, store: Store, *, retention_days: int = 90) -> None:
        self.store = store
        self.retention = _dt.timedelta(days=retention_days)

    def reserve(self, res: Reservation, *, replay_key: str | None, replay_expires_at: _dt.datetime | None,
                extra: Sequence[Write] = ()) -> None:
        """One atomic batch: consume the caller token, reserve the record, plus ``extra`` writes.

        Raises AuthenticationError(token-replayed) if the token was already used,
        StoreConflict if one of ``extra`` lost a race, StoreUnavailable (fail closed).
        """
        now = clock.now()
        record: dict[str, Any] = {
            "id": res.id, "kind": res.kind, "state": ISSUING, "principal": res.principal,
            "issuer": res.issuer, "subject": res.subject, "entitlement": res.entitlement,
            "service_account": res.service_account, "delegates": list(res.delegates),
            "scopes": list(res.scopes), "lifetime_s": res.lifetime_s, "reason": res.reason,
            "request_id": res.request_id, "break_glass": res.break_glass,
            "created_at": now, "reserved_until": res.reserved_until, "expire_time": None,
            "issued_at": None, "token_sha256": None, "key_id": None, "failure": None,
            "purge_at": res.reserved_until + self.retention, **res.details,
        }
        writes: list[Write] = [Create(ISSUANCES, res.id, record), *extra]
        if replay_key is not None:
            expires = replay_expires_at or now
            writes.insert(0, Create(REPLAY, replay_key, {"expires_at": expires, "used_at": now,
                                                         "purge_at": expires + _dt.timedelta(days=1)}))
        try:
            self.store.write(writes)
        except StoreConflict:
            if replay_key is not None and self.store.get(REPLAY, replay_key) is not None:
                raise AuthenticationError("token already used (jti replay)", reason="token-replayed") from None
            raise

    def consume(self, replay_key: str | None, expires_at: _dt.datetime) -> None:
        """Record a caller token as used (state-changing endpoints other than vends)."""
        if replay_key is None:
            return
        now = clock.now()
        try:
            self.store.write([Create(REPLAY, replay_key, {"expires_at": expires_at, "used_at": now,
                                                          "purge_at": expires_at + _dt.timedelta(days=1)})])
        except StoreConflict:
            raise AuthenticationError("token already used (jti replay)", reason="token-replayed") from None

    def mark_issued(self, issuance_id: str, credential: str, *, expire_time: _dt.datetime | None,
                    key_id: str | None = None, state: str = ACTIVE) -> str:
        """Finalize: store the credential's SHA-256 (never the credential). Returns the digest."""
        digest = sha256(credential)
        now = clock.now()
        changes: dict[str, Any] = {"state": state, "token_sha256": digest, "issued_at": now,
                                   "expire_time": expire_time, "key_id": key_id}
        changes["purge_at"] = (expire_time or now) + self.retention
        self.store.write([Update(ISSUANCES, issuance_id, changes)])
        return digest

    def mark_unconfirmed(self, issuance_id: str, failure: str, *, until: _dt.datetime) -> None:
        """IAM gave no usable answer (timeout, dropped connection, unreadable 200): it may have minted.

        The record says so honestly (``unconfirmed``: a credential may exist until ``until``, the
        reservation's end) instead of ``failed``, and counts as live until then.
        """
        self.store.write([Update(ISSUANCES, issuance_id, {"state": UNCONFIRMED, "failure": failure,
                                                          "expire_time": until,
                                                          "purge_at": until + self.retention})])

    def mark_failed(self, issuance_id: str, failure: str, *, release: Sequence[Write] = ()) -> None:
        """Nothing was minted: record why, and in the same write give back what the
        reservation consumed (``release``: the caller token's jti, an approval use)."""
        now = clock.now()
        self.store.write([Update(ISSUANCES, issuance_id, {"state": FAILED, "failure": failure,
                                                          "purge_at": now + self.retention}), *release])

    def get(self, issuance_id: str) -> Doc | None:
        return self.store.get(ISSUANCES, issuance_id)


    def list(self, *, state: str | None, service_account: str | None, principal: str | None,
              since: _dt.datetime | None, page_size: int, page_token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first. ``state`` filters on the *effective* state (an active record past
        its expiry lists as expired), merging the few sub-queries that needs."""
        now = clock.now()
        base = []
        if service_account:
            base.append(Filter("service_account", "==", service_account))
        if principal:
            base.append(Filter("principal", "==", principal))
        if since:
            base.append(Filter("created_at", ">=", since))
        if state is None:
            parts: list[tuple[str | None, str | None]] = [(None, None)]
        elif state == EXPIRED:
            parts = [(EXPIRED, None), (ACTIVE, EXPIRED), (UNCONFIRMED, EXPIRED)]
        elif state in LIVE_STATES:
            parts = [(state, state)]
        else:
            parts = [(state, None)]
        cursor = _decode_cursor(page_token) if page_token else None
        found: list[dict[str, Any]] = []
        for stored_state, effective in parts:
            filters = list(base) + ([Filter("state", "==", stored_state)] if stored_state else [])
            after = cursor
            matched = 0
            while True:
                batch = self.store.query(Query(ISSUANCES, tuple(filters), order_by="created_at", descending=True,
                                               limit=page_size + 1, start_after=after))
                for doc in batch:
                    if effective is None or effective_state(doc.data, now) == effective:
                        found.append(doc.data)
                        matched += 1
                if len(batch) <= page_size or matched > page_size:
                    break
                after = (batch[-1].data["created_at"], batch[-1].id)
        found.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        page = found[:page_size]
        token = _encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(found) > page_size else None
        return page, token


def effective_state(record: dict[str, Any], now: _dt.datetime) -> str:
    """An active (or unconfirmed) record past its expiry reads as expired, sweep or not."""
    state = record.get("state", "")
    if state in LIVE_STATES:
        until = record.get("expire_time") if state == ACTIVE else record.get("reserved_until")
        if until is not None and until <= now:
            return EXPIRED
    return str(state)


PUBLIC_FIELDS = (
    "id", "kind", "state", "principal", "issuer", "subject", "entitlement", "service_account",
    "delegates", "scopes", "lifetime_s", "reason", "request_id", "break_glass", "created_at",
    "reserved_until", "issued_at", "expire_time", "token_sha256", "key_id", "failure",
    "audience", "expired_at", "payload_sha256", "bucket", "object",
)


def view(record: dict[str, Any], now: _dt.datetime) -> dict[str, Any]:
    """The API representation: metadata and the SHA-256, never a credential."""
    out: dict[str, Any] = {}
    for key in PUBLIC_FIELDS:
        if key in record:
            value = record[key]
            out[key] = clock.rfc3339(value) if isinstance(value, _dt.datetime) else value
    out["state"] = effective_state(record, now)
    return out


# -- listing -------------------------------------------------------------------------

def _encode_cursor(created_at: _dt.datetime, doc_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), doc_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(token: str) -> tuple[_dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, doc_id = json.loads(raw)
        value = _dt.datetime.fromisoformat(created)
        if value.tzinfo is None or not isinstance(doc_id, str) or len(doc_id) != 32:
            raise ValueError("bad cursor")
        return value.astimezone(clock.UTC), doc_id
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise BadRequestError("page_token is not a token returned by this service.",
                              reason="invalid-page-token") from exc

