"""The kill switch: stop every live credential of a service account, and know when undoing it is safe.

Access tokens cannot be revoked one by one; the one real stop Google Cloud offers is
disabling the service account (IAM ``projects.serviceAccounts.disable``): its access
tokens are rejected at once and new credentials fail. Re-enabling it makes every old
token that has not expired valid again. The ledger knows every live credential, so
this module, the one owner of kill switch records, engages the switch and knows when
releasing it is safe.

One record per service account (kind ``kill_switches``, id: the email)::

    (none) | RELEASED | ENGAGE_FAILED --engage--> ENGAGING    who, why and when, written first
    ENGAGING --IAM disable answered---------------> ENGAGED     then the ledger marks live credentials
                                                                revoked and safe_at is recorded
    ENGAGING --IAM disable failed-----------------> ENGAGE_FAILED  with the reason; engage again resumes
    ENGAGED --release: safe, or approved early----> RELEASING   the approval's use spent in the same write
    RELEASING --IAM enable answered---------------> RELEASED    (failed: stays RELEASING; release resumes)
    ENGAGE_FAILED --release, IAM says enabled-----> RELEASED    (nothing was ever disabled)

Every write is conditional on the version read (no transactions: GUIDE section 3);
a writer that loses re-reads and carries on from what it finds. So concurrent engages
(HTTP calls, redelivered Pub/Sub messages) make one engagement record and one
``kill_switch.engaged`` alert: the alert belongs to whoever records the marking
complete (``revoked_at``), which happens once per engagement. Engaging an engaged
switch changes nothing and answers the current state; a call that finds the work
unfinished (ENGAGING, ENGAGE_FAILED, ENGAGED without ``revoked_at``) finishes it.

Vends (``vending.vend``) are refused in every state but RELEASED: they check before
reserving and again after the ledger confirm, and a vend that finds the switch on
at its second check marks its own record revoked and hands nothing out. So once an
engage call has answered, no vend returns a credential, and every credential handed
out before is marked ``revoked`` in the ledger.

``safe_at`` is the latest expiry among the account's revoked credentials (those of
this engagement, and of an earlier one released early). Raw ``signBlob``
signatures have no expiry and are not counted: disabling the account never stopped
them (a signature stays verifiable with the published public key), so re-enabling
it changes nothing for them either.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from vending import clock, inputs, log
from vending.approvals import Approvals
from vending.config import Bot, Policy
from vending.errors import BadRequestError, ConflictError, NotFoundError, PermissionDeniedError, VendingError
from vending.events import Events, kill_switch_event
from vending.grant import ApprovalUse
from vending.iam_admin import IamAdmin
from vending.identity import Principal
from vending.ledger import Ledger, new_id
from vending.store.base import Create, Doc, Store, StoreConflict, Update, Write
from vending.store.indexes import KILL_SWITCHES

NOT_ENGAGED, ENGAGING, ENGAGED, ENGAGE_FAILED, RELEASING, RELEASED = (
    "NOT_ENGAGED",
    "ENGAGING",
    "ENGAGED",
    "ENGAGE_FAILED",
    "RELEASING",
    "RELEASED",
)
STATES = (NOT_ENGAGED, ENGAGING, ENGAGED, ENGAGE_FAILED, RELEASING, RELEASED)
BLOCKING = frozenset({ENGAGING, ENGAGED, ENGAGE_FAILED, RELEASING})  # vends are refused
MAX_ATTEMPTS = 8  # lost a conditional write: read again and carry on
TIMELINE_MAX = 100  # entries kept on a record (engagements are rare)


class TargetDisabledError(PermissionDeniedError):
    """A vend for a service account whose kill switch is on."""

    reason = "target-disabled"

    def __init__(self, service_account: str, since: Any) -> None:
        when = f" since {clock.rfc3339(since)}" if isinstance(since, _dt.datetime) else ""
        super().__init__(
            f"The service account {service_account} is disabled by its kill switch{when}: no "
            "credential is issued for it until a kill switch operator releases it."
        )


def view(
    service_account: str,
    record: dict[str, Any] | None,
    now: _dt.datetime,
    *,
    iam_disabled: bool | None = None,
    iam_error: str | None = None,
) -> dict[str, Any]:
    """The API representation of a kill switch (every field always present)."""
    r = record or {}
    safe_at = r.get("safe_at")
    state = str(r.get("state") or NOT_ENGAGED)
    out: dict[str, Any] = {
        "service_account": service_account,
        "state": state,
        "vends_refused": state in BLOCKING,
        "engagement_id": r.get("engagement_id"),
        "engaged_by": r.get("engaged_by"),
        "justification": r.get("justification"),
        "via": r.get("via"),
        "requested_at": r.get("requested_at"),
        "engaged_at": r.get("engaged_at"),
        "revoked_at": r.get("revoked_at"),
        "revoked": int(r.get("revoked") or 0),
        "safe_at": safe_at,
        "safe_now": bool(state == ENGAGED and safe_at is not None and safe_at <= now),
        "failure": r.get("failure"),
        "released_by": r.get("released_by"),
        "released_at": r.get("released_at"),
        "release_justification": r.get("release_justification"),
        "released_early": r.get("released_early"),
        "release_request_id": r.get("release_request_id"),
        "iam_disabled": iam_disabled,
        "iam_error": iam_error,
        "timeline": [{k: v for k, v in e.items() if k != "jti"} for e in r.get("timeline") or []],
    }
    plain: dict[str, Any] = _plain(out)
    return plain


def _plain(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        return clock.rfc3339(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _ceil_second(value: _dt.datetime) -> _dt.datetime:
    """Round up to a whole second, so the RFC 3339 text shown is never earlier than the truth."""
    whole = value.replace(microsecond=0)
    return whole if whole == value else whole + _dt.timedelta(seconds=1)


def _amend(exc: VendingError, text: str) -> VendingError:
    exc.message = f"{text} {exc.message}"
    return exc


class KillSwitch:
    """The one owner of kill switch records; engages, releases and reads them."""

    def __init__(
        self,
        policy: Policy,
        store: Store,
        ledger: Ledger,
        approvals: Approvals,
        iam_admin: IamAdmin,
        events: Events,
        *,
        retention: _dt.timedelta,
    ) -> None:
        self.policy = policy
        self.store = store
        self.ledger = ledger
        self.approvals = approvals
        self.iam_admin = iam_admin
        self.events = events
        self.retention = retention

    # -- the vend path: one read each -------------------------------------------------------
    def blocking(self, service_account: str) -> dict[str, Any] | None:
        """The switch record if it refuses vends for ``service_account`` now, else None."""
        doc = self.store.get(KILL_SWITCHES, service_account)
        return doc.data if doc is not None and doc.data.get("state") in BLOCKING else None

    def refuse_if_engaged(self, service_account: str) -> None:
        record = self.blocking(service_account)
        if record is not None:
            raise TargetDisabledError(service_account, record.get("requested_at"))

    # -- reading -------------------------------------------------------------------------------
    def status(self, service_account: str) -> dict[str, Any]:
        """The record, with IAM's own ``disabled`` flag (or why IAM could not be asked)."""
        self._check_target(service_account)
        doc = self.store.get(KILL_SWITCHES, service_account)
        disabled: bool | None = None
        error: str | None = None
        try:
            disabled = self.iam_admin.get(service_account).disabled
        except VendingError as exc:  # the ledger's view still answers when IAM does not
            error = exc.reason
            log.warning(
                "kill switch status: IAM get failed",
                service_account=service_account,
                error=exc.reason,
                detail=exc.detail or exc.message,
            )
        return view(service_account, doc.data if doc else None, clock.now(), iam_disabled=disabled, iam_error=error)

    def _check_target(self, service_account: str) -> None:
        if service_account not in self.policy.target_service_accounts:
            raise PermissionDeniedError(
                f"{service_account} is not a service account this service vends for.",
                reason="service-account-not-managed",
            )

    # -- engaging ---------------------------------------------------------------------------------
    def engage(
        self, actor: str, service_account: str, justification: str, *, via: str, jti: str | None = None
    ) -> dict[str, Any]:
        """Engage (or finish engaging) the switch; idempotent. ``actor`` is issuer-qualified."""
        self._check_target(service_account)
        for _ in range(MAX_ATTEMPTS):
            doc = self.store.get(KILL_SWITCHES, service_account)
            now = clock.now()
            state = doc.data.get("state") if doc else None
            if doc is not None and state == ENGAGED:
                if doc.data.get("revoked_at") is not None:
                    return view(service_account, doc.data, now, iam_disabled=True)  # changes nothing
                done = self._complete(doc)
                if done is None:
                    continue
                return view(service_account, done, clock.now(), iam_disabled=True)
            if doc is not None and state == RELEASING:
                raise ConflictError(
                    f"The kill switch of {service_account} is being released; finish the release "
                    "(call enable again), then engage.",
                    reason="kill-switch-busy",
                )
            if (
                doc is not None
                and state == RELEASED
                and jti
                and any(e.get("jti") == jti for e in doc.data.get("timeline") or [])
            ):
                return view(service_account, doc.data, now)  # a redelivered message of an engagement since released
            if doc is None or state != ENGAGING:
                if not self._begin(doc, service_account, actor, justification, via, jti, now):
                    continue
                doc = self.store.get(KILL_SWITCHES, service_account)
                if doc is None or doc.data.get("state") != ENGAGING:
                    continue
            self._disable(doc, service_account)  # raises after recording ENGAGE_FAILED
        raise ConflictError(
            f"The kill switch of {service_account} is being changed concurrently; call again.",
            reason="kill-switch-busy",
        )

    def _begin(
        self,
        doc: Doc | None,
        service_account: str,
        actor: str,
        justification: str,
        via: str,
        jti: str | None,
        now: _dt.datetime,
    ) -> bool:
        """Write ENGAGING (who, why, when) before anything else; False when another writer won."""
        entry: dict[str, Any] = {
            "at": now,
            "event": "engage requested",
            "actor": actor,
            "via": via,
            "comment": justification,
        }
        if jti:
            entry["jti"] = jti
        write: Write
        if doc is None or doc.data.get("state") == RELEASED:  # a new engagement
            timeline = (list(doc.data.get("timeline") or []) if doc else [])[-(TIMELINE_MAX - 1) :]
            record: dict[str, Any] = {
                "service_account": service_account,
                "state": ENGAGING,
                "engagement_id": new_id(),
                "engaged_by": actor,
                "justification": justification,
                "via": via,
                "requested_at": now,
                "engaged_at": None,
                "revoked_at": None,
                "revoked": 0,
                "safe_at": None,
                "failure": None,
                "released_by": None,
                "released_at": None,
                "release_justification": None,
                "released_early": None,
                "release_request_id": None,
                "purge_at": None,
                "timeline": [*timeline, entry],
            }
            write = (
                Create(KILL_SWITCHES, service_account, record)
                if doc is None
                else Update(KILL_SWITCHES, service_account, record, expect_version=doc.version)
            )
        else:  # ENGAGE_FAILED: resume the same engagement (who and why stay the first asker's)
            entry["event"] = "engage retried"
            write = Update(
                KILL_SWITCHES,
                service_account,
                {"state": ENGAGING, "timeline": self._timeline(doc, entry)},
                expect_version=doc.version,
            )
        try:
            self.store.write([write])
        except StoreConflict:
            return False
        return True

    def _disable(self, doc: Doc, service_account: str) -> None:
        """IAM disable, then ENGAGED; or ENGAGE_FAILED with the reason, and the error raised."""
        try:
            self.iam_admin.disable(service_account, reason=f"token-vending kill switch {doc.data['engagement_id']}")
        except VendingError as exc:
            now = clock.now()
            entry = {"at": now, "event": "engage failed", "actor": "system", "via": "iam", "comment": exc.reason}
            failed = {"state": ENGAGE_FAILED, "failure": exc.reason, "timeline": self._timeline(doc, entry)}
            try:
                self.store.write([Update(KILL_SWITCHES, service_account, failed, expect_version=doc.version)])
            except StoreConflict:
                return  # another caller moved it on (perhaps to ENGAGED): read again
            record = {**doc.data, **failed}
            self.events.publish("alerts", kill_switch_event("kill_switch.engage_failed", record))
            log.alert(
                "kill switch NOT engaged: IAM disable failed; vends stay refused",
                service_account=service_account,
                engaged_by=record.get("engaged_by"),
                error=exc.reason,
                detail=exc.detail or exc.message,
            )
            raise _amend(
                exc,
                f"The kill switch of {service_account} is ENGAGE_FAILED: IAM did not disable the "
                "account. Vends for it stay refused; call engage again to resume.",
            ) from None
        now = clock.now()
        entry = {"at": now, "event": "engaged", "actor": "system", "via": "iam"}
        try:
            self.store.write(
                [
                    Update(
                        KILL_SWITCHES,
                        service_account,
                        {"state": ENGAGED, "engaged_at": now, "failure": None, "timeline": self._timeline(doc, entry)},
                        expect_version=doc.version,
                    )
                ]
            )
        except StoreConflict:
            return  # another engager recorded it first: read again

    def _complete(self, doc: Doc) -> dict[str, Any] | None:
        """Mark the account's live credentials revoked and record safe_at; the first to record it alerts.

        Returns the record, or None when another writer changed it first (read again)."""
        data = doc.data
        sa = data["service_account"]
        now = clock.now()
        revocation = self.ledger.revoke_live(
            sa, by=data["engaged_by"], reason=f"kill switch engaged: {data.get('justification')}", now=now
        )
        safe_at = _ceil_second(revocation.safe_at) if revocation.safe_at else now
        done = clock.now()
        entry = {
            "at": done,
            "event": "credentials revoked",
            "actor": "system",
            "via": "ledger",
            "comment": f"{revocation.within_expiry} within expiry; safe at {clock.rfc3339(safe_at)}",
        }
        changes = {
            "revoked_at": done,
            "revoked": revocation.within_expiry,
            "safe_at": safe_at,
            "timeline": self._timeline(doc, entry),
        }
        try:
            self.store.write([Update(KILL_SWITCHES, sa, changes, expect_version=doc.version)])
        except StoreConflict:
            return None
        record = {**data, **changes}
        self.events.publish("alerts", kill_switch_event("kill_switch.engaged", record))
        log.alert(
            "kill switch engaged: service account disabled, live credentials revoked",
            service_account=sa,
            engaged_by=data.get("engaged_by"),
            justification=data.get("justification"),
            via=data.get("via"),
            revoked=revocation.within_expiry,
            safe_at=clock.rfc3339(safe_at),
        )
        return record

    # -- releasing ----------------------------------------------------------------------------------
    def release(
        self, principal: Principal, service_account: str, justification: str, request_id: str | None, *, via: str
    ) -> dict[str, Any]:
        """Release (or finish releasing) the switch: once safe, or earlier with an approved release request."""
        self._check_target(service_account)
        actor = principal.qualified
        for _ in range(MAX_ATTEMPTS):
            doc = self.store.get(KILL_SWITCHES, service_account)
            now = clock.now()
            state = doc.data.get("state") if doc else None
            if doc is None or state == RELEASED:
                if doc is not None:
                    return view(service_account, doc.data, now)  # already released: changes nothing
                raise ConflictError(
                    f"No kill switch is engaged for {service_account}.", reason="kill-switch-not-engaged"
                )
            if state == ENGAGING or (state == ENGAGED and doc.data.get("revoked_at") is None):
                raise ConflictError(
                    f"The kill switch of {service_account} is still being engaged; call engage "
                    "again to finish it, then release.",
                    reason="kill-switch-busy",
                )
            if state == ENGAGE_FAILED:
                if self._release_failed(doc, service_account, actor, justification, via, now):
                    return view(service_account, self._read(service_account), clock.now(), iam_disabled=False)
                continue
            if state == ENGAGED and not self._begin_release(
                doc, principal, service_account, justification, request_id, via, now
            ):
                continue
            doc = self.store.get(KILL_SWITCHES, service_account)
            if doc is None or doc.data.get("state") != RELEASING:
                continue
            record = self._enable(doc, service_account, actor, justification, via)
            if record is not None:
                return view(service_account, record, clock.now(), iam_disabled=False)
        raise ConflictError(
            f"The kill switch of {service_account} is being changed concurrently; call again.",
            reason="kill-switch-busy",
        )

    def _begin_release(
        self,
        doc: Doc,
        principal: Principal,
        service_account: str,
        justification: str,
        request_id: str | None,
        via: str,
        now: _dt.datetime,
    ) -> bool:
        """ENGAGED -> RELEASING if safe, or with an approved request whose use is spent in the same write."""
        safe_at: _dt.datetime | None = doc.data.get("safe_at")
        early = safe_at is not None and now < safe_at
        use: ApprovalUse | None = None
        if safe_at is not None and early:
            if request_id is None:
                outstanding = self.ledger.revoked_outstanding(service_account, now)
                raise ConflictError(
                    f"Not safe to release {service_account} before {clock.rfc3339(safe_at)}: "
                    f"{outstanding.within_expiry} credential(s) issued before the kill are still within their expiry "
                    "and would become valid again. Wait until then, or release with an ACTIVE release request "
                    f'approved by the kill switch approvers (POST /v1/requests {{"kill_switch": "{service_account}", '
                    '"justification": ...}).',
                    reason="release-not-safe",
                )
            use = self.approvals.check_release(principal, request_id, service_account, doc.data["requested_at"], now)
        entry: dict[str, Any] = {
            "at": now,
            "event": "release requested",
            "actor": principal.qualified,
            "via": via,
            "comment": justification,
        }
        if use is not None:
            entry["request_id"] = use.request_id
        changes = {
            "state": RELEASING,
            "released_by": principal.qualified,
            "release_justification": justification,
            "released_early": early,
            "release_request_id": use.request_id if use else None,
            "failure": None,
            "timeline": self._timeline(doc, entry),
        }
        writes: list[Write] = [Update(KILL_SWITCHES, service_account, changes, expect_version=doc.version)]
        if use is not None:
            writes.append(self.approvals.use_write(use, now))
        try:
            self.store.write(writes)
        except StoreConflict:
            return False
        if use is not None:
            try:  # bookkeeping only: the use was spent atomically with the RELEASING write
                self.approvals.settle_use(use.request_id, None)
            except VendingError as exc:
                log.error("could not settle the release request", request_id=use.request_id, error=exc.reason)
        return True

    def _enable(
        self, doc: Doc, service_account: str, actor: str, justification: str, via: str
    ) -> dict[str, Any] | None:
        """RELEASING -> IAM enable -> RELEASED (the alert); on an IAM error the record says so and it raises."""
        try:
            self.iam_admin.enable(service_account, reason=f"token-vending kill switch {doc.data['engagement_id']}")
        except VendingError as exc:
            entry = {
                "at": clock.now(),
                "event": "release failed",
                "actor": "system",
                "via": "iam",
                "comment": exc.reason,
            }
            try:
                self.store.write(
                    [
                        Update(
                            KILL_SWITCHES,
                            service_account,
                            {"failure": exc.reason, "timeline": self._timeline(doc, entry)},
                            expect_version=doc.version,
                        )
                    ]
                )
            except StoreConflict:
                pass
            raise _amend(
                exc,
                f"The kill switch of {service_account} is RELEASING: IAM did not enable the account "
                "yet; vends for it stay refused. Call enable again to resume.",
            ) from None
        return self._finish_release(doc, service_account, actor, justification, via)

    def _release_failed(
        self, doc: Doc, service_account: str, actor: str, justification: str, via: str, now: _dt.datetime
    ) -> bool:
        """ENGAGE_FAILED -> RELEASED, only when IAM says the account is enabled (the disable never landed),
        or that it does not exist (nothing to disable)."""
        try:
            disabled = self.iam_admin.get(service_account).disabled
        except NotFoundError:
            disabled = False
        if disabled:
            raise ConflictError(
                f"IAM says {service_account} is disabled (the failed disable may have landed after "
                "all): engage again to finish the kill (its live credentials get marked), then "
                "release when safe.",
                reason="kill-switch-busy",
            )
        entry = {"at": now, "event": "release requested", "actor": actor, "via": via, "comment": justification}
        changes = {
            "released_by": actor,
            "release_justification": justification,
            "released_early": False,
            "timeline": self._timeline(doc, entry),
        }
        return (
            self._finish_release(
                Doc(doc.id, {**doc.data, **changes}, doc.version),
                service_account,
                actor,
                justification,
                via,
                extra=changes,
            )
            is not None
        )

    def _finish_release(
        self,
        doc: Doc,
        service_account: str,
        actor: str,
        justification: str,
        via: str,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        now = clock.now()
        outstanding = self.ledger.revoked_outstanding(service_account, now)
        entry = {"at": now, "event": "released", "actor": "system", "via": "iam"}
        changes = {
            **(extra or {}),
            "state": RELEASED,
            "released_at": now,
            "failure": None,
            "purge_at": now + self.retention,
            "timeline": self._timeline(doc, entry),
        }
        try:
            self.store.write([Update(KILL_SWITCHES, service_account, changes, expect_version=doc.version)])
        except StoreConflict:
            return None
        record = {**doc.data, **changes}
        early = bool(record.get("released_early")) and outstanding.within_expiry > 0
        if early and outstanding.safe_at is not None:
            note = (
                f"released early: {outstanding.within_expiry} credential(s) issued before the kill are valid "
                f"again until {clock.rfc3339(outstanding.safe_at)}"
            )
        else:
            note = "released: no credential issued before the kill is still within its expiry"
        self.events.publish(
            "alerts",
            kill_switch_event(
                "kill_switch.released",
                record,
                released_by=record.get("released_by"),
                release_justification=record.get("release_justification"),
                released_early=bool(record.get("released_early")),
                release_request_id=record.get("release_request_id"),
                old_tokens_valid_again=early,
                valid_again=outstanding.within_expiry if early else 0,
                valid_until=outstanding.safe_at if early else None,
                note=note,
            ),
        )
        log.alert(
            f"kill switch {note}",
            service_account=service_account,
            released_by=record.get("released_by"),
            release_request_id=record.get("release_request_id"),
        )
        return record

    def _read(self, service_account: str) -> dict[str, Any] | None:
        doc = self.store.get(KILL_SWITCHES, service_account)
        return doc.data if doc else None

    @staticmethod
    def _timeline(doc: Doc, entry: dict[str, Any]) -> list[dict[str, Any]]:
        return [*list(doc.data.get("timeline") or [])[-(TIMELINE_MAX - 1) :], entry]

    # -- Pub/Sub bot messages ------------------------------------------------------------------------------
    def apply_bot_message(self, bot: Bot, claims: dict[str, Any], message_id: str) -> dict[str, Any]:
        """``action: disable``: engage on behalf of the acting human, who must be a kill switch operator.

        A redelivered message changes nothing more (an engaged switch stays as it is; one the message
        engaged and that was since released is recognised by the message's ``jti``)."""
        raw_actor = claims.get("actor")
        if not isinstance(raw_actor, str) or not raw_actor or len(raw_actor) > 320:
            raise BadRequestError("The message has no acting identity (actor).", reason="invalid-message")
        actor = self.policy.bot_actor(bot, raw_actor)
        if not self.policy.is_kill_switch_operator(actor):
            raise PermissionDeniedError(f"{actor} is not a kill switch operator.", reason="not-a-kill-switch-operator")
        sa = inputs.service_account(claims.get("service_account"))
        justification = inputs.text(
            claims.get("justification") or claims.get("comment"), "justification", required=True
        )
        assert justification is not None
        return self.engage(
            actor, sa, justification, via=f"pubsub:{bot.service_account}:{message_id}", jti=str(claims["jti"])
        )
