"""Issuance records: the one owner of their transitions.

    issuing --IAM answered, within the grant--> active (or signed: a raw blob signature)
    issuing --IAM refused, nothing minted-----> failed   (the caller token's jti is given back)
    issuing --no usable answer----------------> unconfirmed (a credential may exist until expire_time)
    issuing --answer outside the grant--------> withheld (it exists until expire_time; never returned)
    issuing --process died (sweep)------------> unconfirmed
    active | unconfirmed | withheld --past expire_time (sweep)--> expired
    issuing | active | unconfirmed | withheld --kill switch engaged--> revoked

A record is written *before* the IAM call (state ``issuing``) in the same
atomic batch that consumes the caller token's ``jti`` (and, for an approved
request, one use of the approval, conditional on the request's version). It
holds the grant: entitlement, request, bounds. After the call it holds the
credential's SHA-256 and expiry; the raw credential is never stored. An
``unconfirmed`` record's ``expire_time`` covers the whole IAM deadline plus
the credential's lifetime (``reserved_until``), so a late answer cannot
outlive it. Replay records (used caller tokens) live until the token is no
longer accepted (``exp`` + leeway); the sweep deletes only those past it.

``revoked`` (``revoke_live``, ``mark_revoked``): the target account's kill switch
(``vending.killswitch``) was engaged while the credential was within its
expiry; IAM rejects what it can of it from then on. It says who and why
(``revoked_by``, ``revoked_reason``, ``revoked_at``) and keeps its
``expire_time`` (for an ``issuing`` record, its ``reserved_until``): until then
re-enabling the account would make the credential valid again.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vending import clock
from vending.errors import AuthenticationError, BadRequestError, ConflictError
from vending.events import Events, issuance_event
from vending.grant import Grant
from vending.store.base import Create, Delete, Doc, Filter, Query, Store, StoreConflict, Update, Write
from vending.store.batch import apply_each, due
from vending.store.indexes import ISSUANCES, REPLAY

ISSUING, ACTIVE, FAILED, EXPIRED, UNCONFIRMED, SIGNED, WITHHELD, REVOKED = (
    "issuing",
    "active",
    "failed",
    "expired",
    "unconfirmed",
    "signed",
    "withheld",
    "revoked",
)
STATES = (ISSUING, ACTIVE, FAILED, EXPIRED, UNCONFIRMED, SIGNED, WITHHELD, REVOKED)
LIVE_STATES = (ACTIVE, UNCONFIRMED, WITHHELD)  # a credential may be valid until expire_time
REVOCABLE_STATES = (ISSUING, *LIVE_STATES)  # what a kill switch marks revoked (within expiry)
MAX_REVOKE_PASSES = 20  # a vend finishing under the kill switch: query again


@dataclass(frozen=True)
class Revocation:
    """What ``Ledger.revoke_live`` found for one service account."""

    marked: int  # records this call moved to ``revoked``
    within_expiry: int  # revoked records of the account still within their expiry
    safe_at: _dt.datetime | None  # the latest of their expiries (None: none is left)


def sha256(value: str | bytes) -> str:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex


class Ledger:
    def __init__(self, store: Store, events: Events, *, retention_days: int = 90) -> None:
        self.store = store
        self.events = events
        self.retention = _dt.timedelta(days=retention_days)

    # -- the vend path ----------------------------------------------------------
    def reserve(
        self,
        issuance_id: str,
        grant: Grant,
        *,
        reserved_until: _dt.datetime,
        reason: str | None,
        details: dict[str, Any],
        replay_key: str | None,
        replay_until: _dt.datetime | None,
        extra: Sequence[Write] = (),
    ) -> None:
        """One atomic batch: consume the caller token, reserve the record, plus ``extra`` (an approval use).

        A retried commit whose first attempt landed (its answer was lost) is recognised
        by the record it wrote, and counts as done. Raises AuthenticationError
        (token-replayed) if the token was already used, StoreConflict if one of
        ``extra`` lost a race, StoreUnavailable (fail closed).
        """
        now = clock.now()
        record: dict[str, Any] = {
            "id": issuance_id,
            "kind": grant.kind,
            "state": ISSUING,
            "principal": grant.caller,
            "issuer": grant.issuer,
            "subject": grant.subject,
            "entitlement": grant.entitlement,
            "service_account": grant.service_account,
            "delegates": list(grant.delegates),
            "reason": reason,
            "request_id": grant.request_id,
            "break_glass": grant.break_glass,
            "bounds": grant.bounds.record(),
            "created_at": now,
            "reserved_until": reserved_until,
            "expire_time": None,
            "issued_at": None,
            "token_sha256": None,
            "key_id": None,
            "failure": None,
            "purge_at": reserved_until + self.retention,
            **details,
        }
        writes: list[Write] = [Create(ISSUANCES, issuance_id, record), *extra]
        if replay_key is not None:
            writes.insert(0, self._replay(replay_key, replay_until or now, now))
        try:
            self.store.write(writes)
        except StoreConflict:
            if self.store.get(ISSUANCES, issuance_id) is not None:
                return  # our own earlier attempt landed: the batch is atomic, so all of it did
            if replay_key is not None and self.store.get(REPLAY, replay_key) is not None:
                raise AuthenticationError("token already used (jti replay)", reason="token-replayed") from None
            raise

    def consume(self, replay_key: str | None, replay_until: _dt.datetime) -> None:
        """Record a caller token as used (state-changing endpoints other than vends)."""
        if replay_key is None:
            return
        try:
            self.store.write([self._replay(replay_key, replay_until, clock.now())])
        except StoreConflict:
            raise AuthenticationError("token already used (jti replay)", reason="token-replayed") from None

    def is_used(self, replay_key: str) -> bool:
        """Whether a key was spent and its record is still live (a console session ended by sign-out)."""
        doc = self.store.get(REPLAY, replay_key)
        return doc is not None and doc.data["expires_at"] > clock.now()

    def _replay(self, key: str, until: _dt.datetime, now: _dt.datetime) -> Create:
        return Create(REPLAY, key, {"expires_at": until, "used_at": now, "purge_at": until + _dt.timedelta(days=1)})

    def mark_issued(
        self,
        issuance_id: str,
        credential: str,
        *,
        expire_time: _dt.datetime | None,
        key_id: str | None = None,
        state: str = ACTIVE,
    ) -> str:
        """Finalize: store the credential's SHA-256 (never the credential). Returns the digest."""
        return self._finish(issuance_id, credential, expire_time=expire_time, key_id=key_id, state=state)

    def mark_withheld(
        self, issuance_id: str, credential: str, *, expire_time: _dt.datetime | None, key_id: str | None, failure: str
    ) -> str:
        """IAM returned a credential outside its grant: it exists but is never handed out."""
        return self._finish(
            issuance_id, credential, expire_time=expire_time, key_id=key_id, state=WITHHELD, failure=failure
        )

    def _finish(
        self,
        issuance_id: str,
        credential: str,
        *,
        expire_time: _dt.datetime | None,
        key_id: str | None,
        state: str,
        failure: str | None = None,
    ) -> str:
        digest = sha256(credential)
        now = clock.now()
        changes: dict[str, Any] = {
            "state": state,
            "token_sha256": digest,
            "issued_at": now,
            "expire_time": expire_time,
            "key_id": key_id,
            "purge_at": (expire_time or now) + self.retention,
        }
        if failure:
            changes["failure"] = failure
        self.store.write([Update(ISSUANCES, issuance_id, changes)])
        return digest

    def mark_unconfirmed(self, issuance_id: str, failure: str, *, until: _dt.datetime) -> None:
        """IAM gave no usable answer (timeout, dropped connection, unreadable 200): it may have minted.

        The record says so honestly (``unconfirmed``: a credential may exist until ``until``, the
        reservation's horizon) instead of ``failed``, and counts as live until then.
        """
        self.store.write(
            [
                Update(
                    ISSUANCES,
                    issuance_id,
                    {
                        "state": UNCONFIRMED,
                        "failure": failure,
                        "expire_time": until,
                        "purge_at": until + self.retention,
                    },
                )
            ]
        )

    def mark_revoked(self, issuance_id: str, *, by: str, reason: str) -> None:
        """The vend path, after its final kill-switch check: this record's credential is never handed out."""
        now = clock.now()
        self.store.write(
            [
                Update(
                    ISSUANCES,
                    issuance_id,
                    {"state": REVOKED, "revoked_by": by, "revoked_reason": reason, "revoked_at": now},
                )
            ]
        )

    def give_back(self, replay_key: str | None) -> None:
        """Forget a used caller token (a state-changing call failed before it changed anything)."""
        if replay_key is not None:
            self.store.write([Delete(REPLAY, replay_key)])

    def mark_failed(self, issuance_id: str, failure: str, *, replay_key: str | None) -> None:
        """Nothing was minted: record why, and in the same write give back the caller token's jti."""
        now = clock.now()
        release: list[Write] = [Delete(REPLAY, replay_key)] if replay_key else []
        self.store.write(
            [
                Update(ISSUANCES, issuance_id, {"state": FAILED, "failure": failure, "purge_at": now + self.retention}),
                *release,
            ]
        )

    # -- the kill switch -----------------------------------------------------------------
    def revoke_live(self, service_account: str, *, by: str, reason: str, now: _dt.datetime) -> Revocation:
        """Mark every record of ``service_account`` that may hold a valid credential ``revoked``.

        That is ``issuing`` records (any age: IAM may be answering right now) and ``active``,
        ``unconfirmed`` and ``withheld`` ones within their expiry. Each write carries the
        version read, so a vend that finishes in between makes us read again rather than
        overwrite it; passes repeat until none is left. Then the account's revoked records
        still within their expiry (these, and any of an earlier engagement released early)
        give ``safe_at``: re-enabling the account before then makes them valid again.
        Idempotent: a second call marks nothing and answers the same ``safe_at``.
        """
        marked = 0
        for _ in range(MAX_REVOKE_PASSES):
            live = self._revocable(service_account, now)
            if not live:
                break

            def revoke(d: Doc) -> Update:
                until = d.data.get("expire_time") or d.data.get("reserved_until")
                return Update(
                    ISSUANCES,
                    d.id,
                    {
                        "state": REVOKED,
                        "revoked_by": by,
                        "revoked_reason": reason,
                        "revoked_at": now,
                        "expire_time": until,
                    },
                    expect_version=d.version,
                )

            for start in range(0, len(live), 200):
                marked += len(apply_each(self.store, live[start : start + 200], revoke))
        else:
            raise ConflictError(
                "Credentials of this service account keep changing; call again to finish.", reason="kill-switch-busy"
            )
        outstanding = self.revoked_outstanding(service_account, now)
        return Revocation(marked=marked, within_expiry=outstanding.within_expiry, safe_at=outstanding.safe_at)

    def revoked_outstanding(self, service_account: str, now: _dt.datetime) -> Revocation:
        """The account's revoked credentials still within their expiry, and the latest expiry."""
        revoked = self._within_expiry(REVOKED, service_account, now)
        return Revocation(
            marked=0, within_expiry=len(revoked), safe_at=max((d.data["expire_time"] for d in revoked), default=None)
        )

    def _revocable(self, service_account: str, now: _dt.datetime) -> list[Doc]:
        docs: list[Doc] = []
        after = None
        while True:  # issuing: few, by created_at (newest first, the listing's index)
            batch = self.store.query(
                Query(
                    ISSUANCES,
                    (Filter("state", "==", ISSUING), Filter("service_account", "==", service_account)),
                    order_by="created_at",
                    descending=True,
                    limit=200,
                    start_after=after,
                )
            )
            docs += batch
            if len(batch) < 200:
                break
            after = (batch[-1].data["created_at"], batch[-1].id)
        for state in LIVE_STATES:
            docs += self._within_expiry(state, service_account, now)
        return docs

    def _within_expiry(self, state: str, service_account: str, now: _dt.datetime) -> list[Doc]:
        filters = (
            Filter("state", "==", state),
            Filter("service_account", "==", service_account),
            Filter("expire_time", ">", now),
        )
        return [d for batch in due(self.store, ISSUANCES, filters, "expire_time") for d in batch]

    # -- the sweep --------------------------------------------------------------------
    def expire_due(self, now: _dt.datetime) -> Counter[str]:
        """Live records past their expiry -> expired, one ``credential.expired`` event each."""
        counts: Counter[str] = Counter()
        for state in LIVE_STATES:
            filters = (Filter("state", "==", state), Filter("expire_time", "<=", now))
            for batch in due(self.store, ISSUANCES, filters, "expire_time"):
                won = apply_each(
                    self.store,
                    batch,
                    lambda d: Update(ISSUANCES, d.id, {"state": EXPIRED, "expired_at": now}, expect_version=d.version),
                )
                counts[f"issuances_expired_from_{state}"] += len(won)
                for doc in won:
                    self.events.publish(
                        "notifications", issuance_event("credential.expired", {**doc.data, "id": doc.id})
                    )
        return counts

    def unconfirm_stale(self, stale_before: _dt.datetime) -> list[Doc]:
        """Reservations whose process died between reserve and finalize -> unconfirmed until reserved_until."""
        changed: list[Doc] = []
        filters = (Filter("state", "==", ISSUING), Filter("created_at", "<=", stale_before))
        for batch in due(self.store, ISSUANCES, filters, "created_at"):
            changed += apply_each(
                self.store,
                batch,
                lambda d: Update(
                    ISSUANCES,
                    d.id,
                    {
                        "state": UNCONFIRMED,
                        "expire_time": d.data.get("reserved_until"),
                        "failure": "reservation-not-finalized",
                    },
                    expect_version=d.version,
                ),
            )
        return changed

    def purge_replay(self, now: _dt.datetime) -> int:
        """Delete used caller-token records whose token is no longer accepted (past exp + leeway)."""
        count = 0
        for batch in due(self.store, REPLAY, (Filter("expires_at", "<=", now),), "expires_at"):
            count += len(apply_each(self.store, batch, lambda d: Delete(REPLAY, d.id, expect_version=d.version)))
        return count

    def live(self, now: _dt.datetime) -> list[dict[str, Any]]:
        """Records that may hold a valid credential now (bounded by live credentials, not history)."""
        out: list[dict[str, Any]] = []
        for state in LIVE_STATES:
            for batch in due(
                self.store, ISSUANCES, (Filter("state", "==", state), Filter("expire_time", ">", now)), "expire_time"
            ):
                out += [d.data for d in batch]
        return out

    # -- reading ------------------------------------------------------------------------
    def get(self, issuance_id: str) -> Doc | None:
        return self.store.get(ISSUANCES, issuance_id)

    def list(
        self,
        *,
        state: str | None,
        service_account: str | None,
        principal: str | None,
        since: _dt.datetime | None,
        page_size: int,
        page_token: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
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
            parts = [(EXPIRED, None), (ACTIVE, EXPIRED), (UNCONFIRMED, EXPIRED), (WITHHELD, EXPIRED)]
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
                batch = self.store.query(
                    Query(
                        ISSUANCES,
                        tuple(filters),
                        order_by="created_at",
                        descending=True,
                        limit=page_size + 1,
                        start_after=after,
                    )
                )
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
    """A live record past its expiry reads as expired, sweep or not."""
    state = record.get("state", "")
    if state in LIVE_STATES:
        until = record.get("reserved_until") if state == UNCONFIRMED else record.get("expire_time")
        if until is not None and until <= now:
            return EXPIRED
    return str(state)


PUBLIC_FIELDS = (
    "id",
    "kind",
    "state",
    "principal",
    "issuer",
    "subject",
    "entitlement",
    "service_account",
    "delegates",
    "scopes",
    "lifetime_s",
    "reason",
    "request_id",
    "break_glass",
    "created_at",
    "reserved_until",
    "issued_at",
    "expire_time",
    "token_sha256",
    "key_id",
    "failure",
    "audience",
    "expired_at",
    "payload_sha256",
    "payload_bytes",
    "bucket",
    "object",
    "method",
    "bounds",
    "revoked_by",
    "revoked_reason",
    "revoked_at",
)


def view(record: dict[str, Any], now: _dt.datetime) -> dict[str, Any]:
    """The API representation: metadata and the SHA-256, never a credential."""
    out: dict[str, Any] = {}
    for key in PUBLIC_FIELDS:
        if key in record:
            out[key] = _plain(record[key])
    out["state"] = effective_state(record, now)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        return clock.rfc3339(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


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
        raise BadRequestError(
            "page_token is not a token returned by this service.", reason="invalid-page-token"
        ) from exc
