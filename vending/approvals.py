"""Access requests: the approval state machine (PAM's vocabulary).

    APPROVAL_AWAITED --quorum of distinct approvers--> ACTIVE
    APPROVAL_AWAITED --deny--> DENIED
    APPROVAL_AWAITED | ACTIVE --withdraw (requester)--> WITHDRAWN
    APPROVAL_AWAITED | ACTIVE --revoke (approver/auditor)--> REVOKED
    APPROVAL_AWAITED --pending time over--> EXPIRED
    ACTIVE --window over--> EXPIRED
    ACTIVE --last use consumed--> ENDED
    DENIED, WITHDRAWN, REVOKED, EXPIRED, ENDED are terminal.

``TRANSITIONS`` is the table; ``transition()`` is the only function that
changes a state and refuses anything else, leaving the record unchanged.
Writes use optimistic concurrency (``expect_version``), never a
transaction, so contention gives a clean conflict rather than a lock
timeout. A vend spends one use of an approval with ``use_write``: an update
of the request's ``uses`` conditional on the version ``check_use`` read, in
the same atomic batch as the issuance reservation. So the reservation
commits only if the request is still ACTIVE as checked (a revoke in
between makes it fail), and of 50 concurrent vends on a single-use approval
exactly one commits; the others re-read, find no use left and get a 409.

Identities are issuer-qualified (``ISSUER/IDENTITY``, see
``config.qualify``): requesters, approvers, auditors and bot actors.

Break-glass entitlements are self-approved at creation (with a
justification matching the entitlement's pattern), every use is flagged
and announced on the alerts topic.

A request is for an entitlement, or (``entitlement`` = ``KILL_SWITCH_RELEASE``)
for releasing a service account's kill switch before it is safe: filed by a
kill switch operator, approved by the ``kill_switch`` section's approvers
(``rules_of`` finds the approval rules of either), spent by
``vending.killswitch`` (``check_release``), never by a vend.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from typing import Any

from vending import clock, inputs, log, policy
from vending.config import ApprovalRules, Bot, Entitlement, Policy, matches
from vending.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from vending.events import Events, request_event
from vending.grant import ApprovalUse
from vending.identity import Principal
from vending.ledger import new_id
from vending.store.base import Create, Doc, Filter, Store, StoreConflict, Update
from vending.store.batch import apply_each, due
from vending.store.indexes import REQUESTS
from vending.store.paging import Part, merged_page

AWAITED, ACTIVE, DENIED, REVOKED, WITHDRAWN, EXPIRED, ENDED = (
    "APPROVAL_AWAITED",
    "ACTIVE",
    "DENIED",
    "REVOKED",
    "WITHDRAWN",
    "EXPIRED",
    "ENDED",
)
STATES = (AWAITED, ACTIVE, DENIED, REVOKED, WITHDRAWN, EXPIRED, ENDED)
TERMINAL = frozenset({DENIED, REVOKED, WITHDRAWN, EXPIRED, ENDED})

# (from state, event) -> to state. Anything not listed is illegal.
TRANSITIONS: dict[tuple[str, str], str] = {
    (AWAITED, "activate"): ACTIVE,
    (AWAITED, "deny"): DENIED,
    (AWAITED, "withdraw"): WITHDRAWN,
    (ACTIVE, "withdraw"): WITHDRAWN,
    (AWAITED, "revoke"): REVOKED,
    (ACTIVE, "revoke"): REVOKED,
    (AWAITED, "expire"): EXPIRED,
    (ACTIVE, "expire"): EXPIRED,
    (ACTIVE, "end"): ENDED,
}
# The ``entitlement`` of a request to release a kill switch early: no entitlement name can take this form.
KILL_SWITCH_RELEASE = "kill-switch:release"
EVENT_NAMES = {
    ACTIVE: "request.activated",
    DENIED: "request.denied",
    WITHDRAWN: "request.withdrawn",
    REVOKED: "request.revoked",
    EXPIRED: "request.expired",
    ENDED: "request.ended",
}
MAX_RETRIES = 8


class IllegalTransitionError(ConflictError):
    reason = "illegal-transition"


def transition(state: str, event: str) -> str:
    """The next state, or IllegalTransitionError (the record stays unchanged)."""
    nxt = TRANSITIONS.get((state, event))
    if nxt is None:
        raise IllegalTransitionError(f"The request is {state}; it cannot {event}.")
    return nxt


def effective_state(req: dict[str, Any], now: _dt.datetime) -> str:
    """A request past its pending time or window reads as EXPIRED, sweep or not."""
    state = str(req.get("state"))
    if state in (AWAITED, ACTIVE):
        until = req.get("expires_at")
        if until is not None and until <= now:
            return EXPIRED
    return state


def view(req: dict[str, Any], now: _dt.datetime) -> dict[str, Any]:
    def fmt(v: Any) -> Any:
        if isinstance(v, _dt.datetime):
            return clock.rfc3339(v)
        if isinstance(v, list):
            return [fmt(x) for x in v]
        if isinstance(v, dict):
            return {k: fmt(x) for k, x in v.items()}
        return v

    keys = (
        "id",
        "state",
        "entitlement",
        "service_account",
        "scopes",
        "requester",
        "duration_s",
        "justification",
        "break_glass",
        "quorum",
        "max_uses",
        "uses",
        "approvals",
        "created_at",
        "pending_until",
        "window_start",
        "window_end",
        "timeline",
    )
    out = {k: fmt(req.get(k)) for k in keys}
    out["state"] = effective_state(req, now)
    return out


class Approvals:
    """The one owner of access-request transitions."""

    def __init__(self, policy: Policy, store: Store, events: Events, *, retention: _dt.timedelta) -> None:
        self.policy = policy
        self.store = store
        self.events = events
        self.retention = retention
        ks = policy.kill_switch
        self.release_rules = (
            ApprovalRules(
                approvers=ks.approvers,
                quorum=ks.quorum,
                max_window=ks.release_window,
                max_uses=1,
                pending_timeout=ks.pending_timeout,
            )
            if ks and ks.approvers
            else None
        )

    # -- reading ---------------------------------------------------------------
    def load(self, request_id: str) -> Doc:
        doc = self.store.get(REQUESTS, request_id)
        if doc is None:
            raise NotFoundError(f"No access request {request_id}.", reason="request-not-found")
        return doc

    def approvers_of(self, ent: Entitlement) -> frozenset[str]:
        return self.policy.expand(ent.approval.approvers) if ent.approval else frozenset()

    def rules_of(self, record: dict[str, Any]) -> ApprovalRules | None:
        """The approval rules a request is decided by: its entitlement's, or the kill switch's."""
        if record.get("entitlement") == KILL_SWITCH_RELEASE:
            return self.release_rules
        ent = self.policy.entitlement(record["entitlement"])
        return ent.approval if ent else None

    def get(self, principal: Principal, request_id: str) -> dict[str, Any]:
        doc = self.load(request_id)
        rules = self.rules_of(doc.data)
        readers = self.policy.expand(rules.approvers) if rules else frozenset()
        if doc.data.get("entitlement") == KILL_SWITCH_RELEASE:
            readers |= self.policy.kill_switch_operator_set
        if not policy.can_read(self.policy, principal, doc.data["requester"], readers):
            raise PermissionDeniedError(
                "Only the requester, its approvers and auditors may read this request.", reason="not-a-reader"
            )
        return view(doc.data, clock.now())

    # -- creating ----------------------------------------------------------------
    def create(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """File a request from a decoded ``POST /v1/requests`` body."""
        inputs.check_fields(
            body, (), ("entitlement", "service_account", "duration", "justification", "scopes", "kill_switch")
        )
        if body.get("kill_switch") is not None:
            return self._create_release(principal, body)
        ent = self._entitlement_for(principal, body)
        scopes = inputs.scopes(body.get("scopes"))
        if scopes and any(s not in ent.scopes for s in scopes):
            raise PermissionDeniedError("Scope(s) not granted by the entitlement.", reason="scope-not-allowed")
        duration = inputs.lifetime(body.get("duration"))
        justification = inputs.text(body.get("justification"), "justification", required=False)
        request_id = new_id()
        assert ent.approval is not None
        record = self._new_record(
            request_id,
            ent.name,
            ent.service_account,
            ent.approval,
            principal.qualified,
            scopes or ent.scopes,
            duration,
            justification,
            via="http",
        )
        self.store.write([Create(REQUESTS, request_id, record)])
        self._announce_created(record)
        return view(record, clock.now())

    def _create_release(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """``{"kill_switch": EMAIL, "justification"}``: ask the kill switch approvers to release EMAIL early."""
        if any(body.get(f) is not None for f in ("entitlement", "service_account", "scopes")):
            raise BadRequestError(
                "kill_switch excludes entitlement, service_account and scopes.", reason="invalid-kill-switch"
            )
        email = inputs.service_account(body.get("kill_switch"))
        if not self.policy.is_kill_switch_operator(principal.qualified):
            raise PermissionDeniedError(
                "Only kill switch operators and auditors may ask for a release.", reason="not-a-kill-switch-operator"
            )
        if email not in self.policy.target_service_accounts:
            raise PermissionDeniedError(
                f"{email} is not a service account this service vends for.", reason="service-account-not-managed"
            )
        if self.release_rules is None:
            raise BadRequestError(
                "The policy names no kill switch approvers: a kill switch is released only once it is safe.",
                reason="approval-not-configured",
            )
        duration = inputs.lifetime(body.get("duration"))
        justification = inputs.text(body.get("justification"), "justification", required=True)
        request_id = new_id()
        record = self._new_record(
            request_id,
            KILL_SWITCH_RELEASE,
            email,
            self.release_rules,
            principal.qualified,
            (),
            duration,
            justification,
            via="http",
        )
        self.store.write([Create(REQUESTS, request_id, record)])
        self._announce_created(record)
        return view(record, clock.now())

    def _entitlement_for(self, principal: Principal, body: dict[str, Any]) -> Entitlement:
        name = body.get("entitlement")
        if name is not None:
            if not isinstance(name, str) or len(name) > 63:
                raise BadRequestError("entitlement must be an entitlement name.", reason="invalid-entitlement")
            ent = self.policy.entitlement(name)
            if ent is None or not policy.is_principal_of(ent, principal):
                raise PermissionDeniedError(
                    f"This caller may not request entitlement {name!r}.", reason="entitlement-not-allowed"
                )
        else:
            sa = inputs.service_account(body.get("service_account"))
            found = [e for e in policy.entitlements_for(self.policy, principal, sa) if e.requires_approval]
            if not found:
                raise PermissionDeniedError(
                    f"No entitlement with approval lets this caller request {sa}.", reason="entitlement-not-allowed"
                )
            ent = found[0]
        if not ent.requires_approval:
            raise BadRequestError(
                f"Entitlement {ent.name!r} needs no approval; vend directly.", reason="approval-not-required"
            )
        return ent

    def _new_record(
        self,
        request_id: str,
        name: str,
        service_account: str,
        rules: ApprovalRules,
        requester: str,
        scopes: tuple[str, ...],
        duration: int | None,
        justification: str | None,
        *,
        via: str,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        if duration is not None and duration > rules.max_window:
            raise BadRequestError(
                f"duration {duration}s is above the maximum window of {rules.max_window}s.", reason="duration-too-long"
            )
        if rules.justification_pattern is not None and not matches(rules.justification_pattern, justification):
            raise BadRequestError(
                f"justification must match {rules.justification_pattern.pattern!r}.", reason="invalid-justification"
            )
        now = clock.now()
        window = duration or rules.max_window
        record: dict[str, Any] = {
            "id": request_id,
            "state": AWAITED,
            "entitlement": name,
            "service_account": service_account,
            "scopes": list(scopes),
            "requester": requester,
            "duration_s": window,
            "justification": justification,
            "break_glass": rules.break_glass,
            "quorum": rules.quorum,
            "max_uses": rules.max_uses,
            "uses": 0,
            "approvals": [],
            "created_at": now,
            "pending_until": now + _dt.timedelta(seconds=rules.pending_timeout),
            "window_start": None,
            "window_end": None,
            "expires_at": now + _dt.timedelta(seconds=rules.pending_timeout),
            "timeline": [{"at": now, "event": "created", "actor": requested_by or requester, "via": via}],
            "purge_at": now + _dt.timedelta(seconds=rules.pending_timeout) + self.retention,
        }
        if rules.break_glass:
            self._activate(record, now, actor=requester, via=via)
            record["timeline"][-1]["event"] = "break-glass self-approved"
        return record

    def _activate(self, record: dict[str, Any], now: _dt.datetime, *, actor: str, via: str) -> None:
        record["state"] = transition(record["state"], "activate")
        end = now + _dt.timedelta(seconds=int(record["duration_s"]))
        record.update(window_start=now, window_end=end, expires_at=end, purge_at=end + self.retention)
        record["timeline"].append({"at": now, "event": "activated", "actor": actor, "via": via})

    def _announce_created(self, record: dict[str, Any]) -> None:
        events = self.events
        events.publish("notifications", self._event("request.created", record, actor=record["requester"]))
        if record["state"] == ACTIVE:
            events.publish("notifications", self._event("request.activated", record, actor=record["requester"]))
        if record["break_glass"]:
            alert = self._event("break_glass.activated", record, actor=record["requester"])
            events.publish("alerts", alert)
            log.alert(
                "break-glass access activated",
                request_id=record["id"],
                entitlement=record["entitlement"],
                requester=record["requester"],
                justification=record["justification"],
            )

    def _event(self, type_: str, record: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return request_event(type_, record, **extra)

    # -- deciding ------------------------------------------------------------------
    def act(
        self, principal_identity: str, request_id: str, action: str, *, via: str, comment: str | None = None
    ) -> dict[str, Any]:
        """Apply approve / deny / withdraw / revoke by ``principal_identity`` (qualified); idempotent per actor."""
        for _ in range(MAX_RETRIES):
            doc = self.load(request_id)
            record = {
                **doc.data,
                "timeline": list(doc.data.get("timeline", [])),
                "approvals": list(doc.data.get("approvals", [])),
            }
            now = clock.now()
            rules = self.rules_of(record)
            if rules is None:
                raise ConflictError("The request's entitlement no longer exists.", reason="entitlement-removed")
            self._authorize(rules, record, principal_identity, action)
            before = record["state"]
            if effective_state(record, now) == EXPIRED and before != EXPIRED:
                record["state"] = transition(before, "expire")
                record["timeline"].append({"at": now, "event": "expired", "actor": "system", "via": via})
                self._save(doc, record)
                self._announce(record, before)
                raise IllegalTransitionError(f"The request is {EXPIRED}; it cannot {action}.")
            changed = self._apply(record, principal_identity, action, via, comment, now)
            if not changed:
                return view(record, now)
            try:
                self._save(doc, record)
            except StoreConflict:
                continue  # someone else changed it: re-read and re-apply
            self._announce(record, before, actor=principal_identity, action=action, via=via)
            return view(record, now)
        raise ConflictError("The request is being changed concurrently; retry.", reason="request-busy")

    def _authorize(self, rules: ApprovalRules, record: dict[str, Any], who: str, action: str) -> None:
        approvers = self.policy.expand(rules.approvers)
        if action == "withdraw":
            if who != record["requester"]:
                raise PermissionDeniedError("Only the requester may withdraw a request.", reason="not-requester")
        elif action in ("approve", "deny"):
            if who == record["requester"]:
                raise PermissionDeniedError("Nobody approves or denies their own request.", reason="self-approval")
            if who not in approvers:
                raise PermissionDeniedError(
                    f"{who} is not an approver of {record['entitlement']!r}.", reason="not-an-approver"
                )
        elif action == "revoke":
            if who not in approvers and not self.policy.is_auditor(who):
                raise PermissionDeniedError(
                    "Only approvers and auditors may revoke a request.", reason="not-an-approver"
                )
        else:
            raise BadRequestError(f"Unknown action {action!r}.", reason="invalid-action")

    def _apply(
        self, record: dict[str, Any], who: str, action: str, via: str, comment: str | None, now: _dt.datetime
    ) -> bool:
        """Mutate ``record``; False when the action changes nothing (a duplicate)."""
        state = record["state"]
        entry = {"at": now, "event": action, "actor": who, "via": via}
        if comment:
            entry["comment"] = comment[:500]
        if action == "approve":
            if any(a["approver"] == who for a in record["approvals"]):
                return False  # the same approver twice counts once
            if state == ACTIVE:
                return False  # quorum already met: extra approvals change nothing
            if state != AWAITED:
                transition(state, "activate")  # raises: illegal
            record["approvals"].append({"approver": who, "at": now, "via": via, "comment": comment})
            record["timeline"].append(entry)
            if len({a["approver"] for a in record["approvals"]}) >= int(record["quorum"]):
                self._activate(record, now, actor=who, via=via)
            return True
        event = {"deny": "deny", "withdraw": "withdraw", "revoke": "revoke"}[action]
        target = TRANSITIONS.get((state, event))
        if target is None and state == {"deny": DENIED, "withdraw": WITHDRAWN, "revoke": REVOKED}[action]:
            return False  # already there: a redelivered message
        record["state"] = transition(state, event)
        record["timeline"].append(entry)
        record["expires_at"] = None
        return True

    def _save(self, doc: Doc, record: dict[str, Any]) -> None:
        changes = {k: v for k, v in record.items() if doc.data.get(k) != v}
        if changes:
            self.store.write([Update(REQUESTS, doc.id, changes, expect_version=doc.version)])

    def _announce(self, record: dict[str, Any], before: str, **extra: Any) -> None:
        events = self.events
        if extra.get("action") == "approve":
            events.publish(
                "notifications",
                self._event("request.approval_received", record, approver=extra.get("actor"), via=extra.get("via")),
            )
        if record["state"] != before and record["state"] in EVENT_NAMES:
            events.publish(
                "notifications", self._event(EVENT_NAMES[record["state"]], record, actor=extra.get("actor", "system"))
            )

    # -- consuming -------------------------------------------------------------------
    def check_use(self, principal: Principal, request_id: str, now: _dt.datetime) -> ApprovalUse:
        """An ACTIVE request of this caller with a use left, as read now (its version travels along)."""
        doc = self.load(request_id)
        req = doc.data
        if req["requester"] != principal.qualified:
            raise PermissionDeniedError("This access request belongs to another requester.", reason="not-requester")
        if req.get("entitlement") == KILL_SWITCH_RELEASE:
            raise PermissionDeniedError("A kill switch release request vends nothing.", reason="not-a-vend-request")
        ent = self.policy.entitlement(req["entitlement"])
        if ent is None:
            raise PermissionDeniedError("The request's entitlement no longer exists.", reason="entitlement-removed")
        uses, max_uses = self._require_active(req, now)
        window_end = req["window_end"]
        # The approvers approved the scopes of the request, not every scope of the entitlement.
        scopes = tuple(s for s in req.get("scopes") or ent.scopes if s in ent.scopes)
        # window end minus one second so no credential outlives the window
        return ApprovalUse(
            request_id=request_id,
            entitlement=ent.name,
            requester=req["requester"],
            not_after=window_end - _dt.timedelta(seconds=1),
            scopes=scopes,
            uses=uses,
            max_uses=max_uses,
            break_glass=bool(req.get("break_glass")),
            version=doc.version,
        )

    def check_release(
        self, principal: Principal, request_id: str, service_account: str, not_before: _dt.datetime, now: _dt.datetime
    ) -> ApprovalUse:
        """An ACTIVE request of this caller to release ``service_account``'s kill switch, filed at or
        after ``not_before`` (the engagement it releases), with its use left, as read now."""
        doc = self.load(request_id)
        req = doc.data
        if req.get("entitlement") != KILL_SWITCH_RELEASE or req.get("service_account") != service_account:
            raise PermissionDeniedError(
                f"Request {request_id} is not a request to release {service_account}.", reason="not-a-release-request"
            )
        if req["requester"] != principal.qualified:
            raise PermissionDeniedError("This release request belongs to another requester.", reason="not-requester")
        if req["created_at"] < not_before:
            raise PermissionDeniedError(
                "This release request was filed before the kill switch was engaged; file a new one.",
                reason="release-request-stale",
            )
        uses, max_uses = self._require_active(req, now)
        return ApprovalUse(
            request_id=request_id,
            entitlement=KILL_SWITCH_RELEASE,
            requester=req["requester"],
            not_after=req["window_end"],
            scopes=(),
            uses=uses,
            max_uses=max_uses,
            break_glass=False,
            version=doc.version,
        )

    @staticmethod
    def _require_active(req: dict[str, Any], now: _dt.datetime) -> tuple[int, int]:
        """(uses, max_uses) of an ACTIVE request with a use left and time left in its window; else refuse."""
        state = effective_state(req, now)
        uses, max_uses = int(req.get("uses", 0)), int(req["max_uses"])
        if state == ACTIVE and uses >= max_uses:
            state = ENDED
        if state != ACTIVE:
            reason = {
                AWAITED: "approval-pending",
                ENDED: "approval-consumed",
                EXPIRED: "approval-expired",
                DENIED: "approval-denied",
                REVOKED: "approval-revoked",
                WITHDRAWN: "approval-withdrawn",
            }.get(state, "approval-not-active")
            if state == ENDED:
                raise ConflictError("Every use of this approval has been consumed.", reason=reason)
            raise PermissionDeniedError(f"The access request is {state}, not ACTIVE.", reason=reason)
        if int((req["window_end"] - now).total_seconds()) - 1 < 1:
            raise PermissionDeniedError(
                "The approval window ends now; ask for a new request.", reason="approval-expired"
            )
        return uses, max_uses

    @staticmethod
    def use_write(use: ApprovalUse, now: _dt.datetime) -> Update:
        """Spend one use: commits only if the request is unchanged since ``check_use`` read it."""
        return Update(REQUESTS, use.request_id, {"uses": use.uses + 1, "last_used_at": now}, expect_version=use.version)

    def is_own_use(self, use: ApprovalUse) -> bool:
        """After a commit whose answer was lost: did our ``use_write`` land?"""
        doc = self.store.get(REQUESTS, use.request_id)
        return doc is not None and int(doc.data.get("uses", 0)) >= use.uses + 1

    def settle_use(self, request_id: str, issuance_id: str | None) -> None:
        """After an issuance: note the use on the timeline, and END the request when none is left."""
        self._update(request_id, lambda r, now: self._settle(r, issuance_id, now))

    def release_use(self, request_id: str) -> None:
        """IAM refused (nothing minted): give the use back."""

        def give_back(record: dict[str, Any], now: _dt.datetime) -> bool:
            if int(record.get("uses", 0)) <= 0 or record["state"] != ACTIVE:
                return False
            record["uses"] = int(record["uses"]) - 1
            record["timeline"].append({"at": now, "event": "use returned", "actor": "system", "via": "http"})
            return True

        self._update(request_id, give_back)

    def _settle(self, record: dict[str, Any], issuance_id: str | None, now: _dt.datetime) -> bool:
        entry = {"at": now, "event": "used", "actor": record["requester"], "via": "http"}
        if issuance_id is not None:  # a vend (a kill switch release has none)
            entry["issuance_id"] = issuance_id
        record["timeline"].append(entry)
        if int(record.get("uses", 0)) >= int(record["max_uses"]) and record["state"] == ACTIVE:
            record["state"] = transition(ACTIVE, "end")
            record["expires_at"] = None
        return True

    def _update(self, request_id: str, change: Any) -> None:
        for _ in range(MAX_RETRIES):
            doc = self.store.get(REQUESTS, request_id)
            if doc is None:
                return
            record = {**doc.data, "timeline": list(doc.data.get("timeline", []))}
            before = record["state"]
            if not change(record, clock.now()):
                return
            try:
                self._save(doc, record)
            except StoreConflict:
                continue
            self._announce(record, before)
            return
        raise ConflictError("The request is being changed concurrently; retry.", reason="request-busy")

    # -- the sweep ----------------------------------------------------------------------
    def expire_due(self, now: _dt.datetime) -> int:
        """Requests past their pending time or window -> EXPIRED (one event each). Returns how many."""
        count = 0
        for state in (AWAITED, ACTIVE):
            filters = (Filter("state", "==", state), Filter("expires_at", "<=", now))
            for batch in due(self.store, REQUESTS, filters, "expires_at"):

                def expire(d: Doc) -> Update:
                    timeline = [
                        *d.data.get("timeline", []),
                        {"at": now, "event": "expired", "actor": "system", "via": "sweep"},
                    ]
                    return Update(
                        REQUESTS,
                        d.id,
                        {"state": transition(d.data["state"], "expire"), "expires_at": None, "timeline": timeline},
                        expect_version=d.version,
                    )

                won = apply_each(self.store, batch, expire)
                count += len(won)
                for doc in won:
                    self.events.publish(
                        "notifications",
                        request_event(
                            "request.expired",
                            {**doc.data, "id": doc.id, "state": EXPIRED},
                            actor="system",
                            previous_state=doc.data.get("state"),
                        ),
                    )
        return count

    # -- listing (GET /v1/requests) -----------------------------------------------------------
    def decided_by(self, principal: Principal) -> list[str]:
        """The entitlements (and ``KILL_SWITCH_RELEASE``) whose requests this person approves."""
        who = principal.qualified
        names = [e.name for e in self.policy.entitlements if e.approval and who in self.approvers_of(e)]
        if self.release_rules and who in self.policy.expand(self.release_rules.approvers):
            names.append(KILL_SWITCH_RELEASE)
        return names

    def listing(
        self,
        principal: Principal,
        *,
        role: str,
        state: str | None,
        entitlement: str | None,
        page_size: int,
        page_token: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the requests ``principal`` may read in ``role``, newest first.

        requester: their own; approver: those of the entitlements they decide, the ones awaiting
        a decision first (without a ``state`` filter); auditor: all (auditors only). ``state`` is
        the effective state (a request past its time lists as EXPIRED before the sweep).
        """
        who = principal.qualified
        scopes: list[tuple[Filter, ...]]
        if role == "requester":
            scopes = [(Filter("requester", "==", who),)]
        elif role == "auditor":
            if not self.policy.is_auditor(who):
                raise PermissionDeniedError("Only auditors may list every access request.", reason="not-an-auditor")
            scopes = [()]
        else:
            decided = self.decided_by(principal)
            if entitlement is not None and entitlement not in decided:
                raise PermissionDeniedError(f"{who} is not an approver of {entitlement!r}.", reason="not-an-approver")
            scopes = [(Filter("entitlement", "==", name),) for name in decided if entitlement in (None, name)]
            entitlement = None
        if entitlement is not None:
            scopes = [(*scope, Filter("entitlement", "==", entitlement)) for scope in scopes]
        now = clock.now()

        def effective_is(wanted: str) -> Any:
            return lambda r: effective_state(r, now) == wanted

        parts: list[Part] = []
        for scope in scopes:
            if state is None and role == "approver":
                parts.append(Part((*scope, Filter("state", "==", AWAITED)), effective_is(AWAITED), phase=0))
                parts.append(Part(scope, lambda r: effective_state(r, now) != AWAITED, phase=1))
            elif state is None:
                parts.append(Part(scope))
            elif state == EXPIRED:
                parts.append(Part((*scope, Filter("state", "==", EXPIRED))))
                parts += [Part((*scope, Filter("state", "==", s)), effective_is(EXPIRED)) for s in (AWAITED, ACTIVE)]
            elif state in (AWAITED, ACTIVE):
                parts.append(Part((*scope, Filter("state", "==", state)), effective_is(state)))
            else:
                parts.append(Part((*scope, Filter("state", "==", state))))
        records, token = merged_page(
            self.store, REQUESTS, parts, order="created_at", page_size=page_size, page_token=page_token
        )
        return [view(r, now) for r in records], token

    def active_break_glass(self, now: _dt.datetime) -> list[dict[str, Any]]:
        """Break-glass requests ACTIVE now (few: bounded by live approvals), soonest end first."""
        filters = (Filter("state", "==", ACTIVE), Filter("expires_at", ">", now))
        return [
            view(d.data, now)
            for batch in due(self.store, REQUESTS, filters, "expires_at")
            for d in batch
            if d.data.get("break_glass")
        ]

    # -- Pub/Sub bot messages -------------------------------------------------------------
    def apply_bot_message(self, bot: Bot, claims: dict[str, Any], message_id: str) -> dict[str, Any] | None:
        action = claims.get("action")
        raw_actor = claims.get("actor")
        comment = claims.get("comment")
        if not isinstance(raw_actor, str) or not raw_actor or len(raw_actor) > 320:
            raise BadRequestError("The message has no acting identity (actor).", reason="invalid-message")
        if comment is not None and not isinstance(comment, str):
            raise BadRequestError("comment must be a string.", reason="invalid-message")
        actor = self.policy.bot_actor(bot, raw_actor)
        via = f"pubsub:{bot.service_account}:{message_id}"
        if action == "request":
            return self._bot_request(bot, claims, actor, via)
        if action not in ("approve", "deny", "revoke"):
            raise BadRequestError(f"Unknown action {action!r}.", reason="invalid-message")
        request_id = inputs.record_id(claims.get("request_id"))
        if request_id is None:
            raise BadRequestError("The message names no request_id.", reason="invalid-message")
        return self.act(actor, request_id, action, via=via, comment=comment)

    def _bot_request(self, bot: Bot, claims: dict[str, Any], actor: str, via: str) -> dict[str, Any]:
        name = claims.get("entitlement")
        requester = claims.get("requester")
        ent = self.policy.entitlement(name) if isinstance(name, str) else None
        if ent is None or ent.approval is None:
            raise BadRequestError(f"Unknown entitlement {name!r} (or it needs no approval).", reason="invalid-message")
        if requester is not None and (not isinstance(requester, str) or self.policy.bot_actor(bot, requester) != actor):
            raise PermissionDeniedError("A bot may only file a request for the acting human.", reason="not-requester")
        issuer, _, identity = actor.partition("/")
        asserted = Principal(issuer=issuer, identity=identity, claims={"sub": identity, "email": identity})
        if not any(_bot_rule_matches(rule, asserted) for rule in ent.principals):
            raise PermissionDeniedError(
                f"{actor} is not a principal of entitlement {ent.name!r}.", reason="entitlement-not-allowed"
            )
        duration = inputs.lifetime(claims.get("duration"))
        justification = inputs.text(claims.get("justification"), "justification")
        # Deterministic id from the message's jti: a redelivered request creates nothing new.
        request_id = bot_request_id(str(claims["jti"]))
        record = self._new_record(
            request_id,
            ent.name,
            ent.service_account,
            ent.approval,
            actor,
            ent.scopes,
            duration,
            justification,
            via=via,
            requested_by=actor,
        )
        try:
            self.store.write([Create(REQUESTS, request_id, record)])
        except StoreConflict:
            return view(self.load(request_id).data, clock.now())
        self._announce_created(record)
        return view(record, clock.now())


def bot_request_id(jti: str) -> str:
    """The id of a request filed by a bot message: derived from its ``jti``, so a
    redelivered message creates nothing new and the bot can tell the user the id."""
    return hashlib.sha256(f"bot-request:{jti}".encode()).hexdigest()[:32]


def _bot_rule_matches(rule: Any, asserted: Principal) -> bool:
    """Bot-asserted humans carry only an identity of the bot's actor issuer: match rules of that
    issuer on sub/email claims alone."""
    if not set(rule.claims) <= {"sub", "email"}:
        return False
    return policy.rule_matches(rule, asserted)
