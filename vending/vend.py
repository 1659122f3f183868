"""The one vend pipeline, for every credential kind.

    authenticate -> decode -> decide -> reserve -> IAM -> check -> confirm -> audit
                               (switch?)                          (switch?)

``Vend.__call__(kind, authorization, body)`` reads top to bottom in ``_vend``:
the caller's token is verified (``identity``), the body decoded by the kind's
module (``kinds``), the decision made as one immutable ``Grant`` (``policy``,
narrowed by an approval from ``approvals``), the issuance reserved before IAM
is called (``ledger``: one atomic batch with the caller token's jti and, for
an approval, one use conditional on the request's version), the credential
minted (the kind's IAM call), checked against its grant, confirmed in the
ledger, announced, and written to one audit line, allowed or denied.

The target's kill switch (``vending.killswitch``) is read twice: after the
decision, before anything is reserved (a vend for a disabled account is
refused at once: ``403 target-disabled``), and again after the ledger confirm,
before the credential is returned. A switch engaged in between is found by the
second read; the vend then marks its own record ``revoked`` and refuses. An
engage writes ENGAGING before it asks IAM or reads the ledger, so a credential is
handed out only if its vend's second read came before that write, and then the
engage finds the record confirmed and marks it revoked itself. If the second
read fails the vend fails closed (the record stays ``active``: the credential
exists, nobody holds it). Cost: one document read before reserving and one after
confirming (a Firestore get, the cheapest call; one read only for a refused vend).
"""

from __future__ import annotations

import datetime as _dt
import random
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from vending import clock, inputs, ledger, log, policy
from vending.approvals import Approvals
from vending.config import Policy
from vending.errors import ConflictError, VendingError
from vending.events import Events, issuance_event
from vending.grant import ApprovalUse, Grant
from vending.iam import IamCredentials
from vending.identity import VerifiedToken, Verifier
from vending.killswitch import KillSwitch, TargetDisabledError
from vending.kinds import Minted, OutOfBoundsError, registry
from vending.ledger import Ledger
from vending.store.base import StoreConflict

# IAM failures after which a credential may nevertheless exist: no answer in time, a dropped
# connection, or a 200 whose body could not be read. The record becomes ``unconfirmed``. An IAM
# error answer (4xx, 5xx after retries) minted nothing the service could hand out.
AMBIGUOUS_IAM_FAILURES = frozenset({"iam-unavailable", "iam-bad-response"})
IAM_CLOCK_SKEW_S = 1.0  # IAM's clock against ours, when checking a minted expiry
MAX_RESERVE_ATTEMPTS = 20  # an approval's request changed under us: re-check and retry


@dataclass
class Audit:
    """Fields of the one audit line written per vend attempt."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    def set(self, **kw: Any) -> None:
        self.fields.update({k: v for k, v in kw.items() if v is not None})


class Vend:
    def __init__(
        self,
        policy_: Policy,
        verifier: Verifier,
        ledger_: Ledger,
        approvals: Approvals,
        iam: IamCredentials,
        events: Events,
        switch: KillSwitch,
        *,
        iam_deadline_s: float,
    ) -> None:
        self.policy = policy_
        self.verifier = verifier
        self.ledger = ledger_
        self.approvals = approvals
        self.iam = iam
        self.events = events
        self.switch = switch
        self.iam_deadline_s = iam_deadline_s
        self.kinds = registry()

    def __call__(self, kind_name: str, authorization: str | None, raw_body: bytes) -> dict[str, Any]:
        kind = self.kinds[kind_name]
        audit = Audit(kind.NAME)
        try:
            result = self._vend(kind, authorization, raw_body, audit)
        except VendingError as exc:
            denied = exc.http_status < 500
            log.emit(
                "WARNING" if denied else "ERROR",
                "vend denied" if denied else "vend failed",
                audit=True,
                kind=kind.NAME,
                decision="deny",
                reason=exc.reason,
                status=exc.http_status,
                detail=exc.detail or exc.message,
                **audit.fields,
            )
            exc.logged = True
            raise
        log.notice("vend allowed", audit=True, kind=kind.NAME, decision="allow", reason="granted", **audit.fields)
        return result

    def _vend(self, kind: ModuleType, authorization: str | None, raw_body: bytes, audit: Audit) -> dict[str, Any]:
        caller = self.verifier.verify_authorization(authorization)  # authenticate
        audit.set(principal=caller.principal.qualified, issuer=caller.principal.issuer)
        ask = kind.decode(inputs.parse_json(raw_body, kind.MAX_BODY_BYTES))  # decode
        audit.set(service_account=ask.service_account, access_request_id=ask.request_id, **kind.audit(ask))
        issuance_id = ledger.new_id()
        audit.set(issuance_id=issuance_id)
        grant, use, reserved_until = self._decide_and_reserve(kind, caller, ask, issuance_id, audit)
        started = clock.now()
        try:
            minted = kind.mint(self.iam, grant, f"token-vending issuance {issuance_id}")  # IAM
        except VendingError as exc:
            maybe_minted = self._settle_failure(issuance_id, exc, caller, use, reserved_until)
            switched = self._switch_after_failure(grant, issuance_id, mark=maybe_minted)
            if switched is not None:  # IAM refused a disabled account, or may have minted under the switch
                raise switched from exc
            raise
        try:
            kind.check(minted, grant, (clock.now() - started).total_seconds() + IAM_CLOCK_SKEW_S)
        except OutOfBoundsError as exc:  # check
            self.ledger.mark_withheld(
                issuance_id, minted.credential, expire_time=minted.expire_time, key_id=minted.key_id, failure=exc.reason
            )
            switched = self._switch_after_failure(grant, issuance_id, mark=True)
            if switched is not None:
                raise switched from exc
            raise
        digest = self.ledger.mark_issued(
            issuance_id, minted.credential, expire_time=minted.expire_time, key_id=minted.key_id, state=minted.state
        )  # confirm
        audit.set(token_sha256=digest, expire_time=minted.expire_time, break_glass=grant.break_glass or None)
        switched = self._recheck_switch(grant, issuance_id)  # switch?
        if switched is not None:
            raise switched
        if use is not None:
            try:  # bookkeeping only: the use was spent atomically with the reservation
                self.approvals.settle_use(use.request_id, issuance_id)
            except VendingError as exc:  # the credential is minted and recorded: hand it out
                log.error(
                    "could not settle the approval use",
                    request_id=use.request_id,
                    issuance_id=issuance_id,
                    error=exc.reason,
                )
        self._announce(issuance_id, grant, minted)
        # Time left is counted from when IAM was asked (IAM counts the lifetime from then, in whole seconds),
        # so a slow confirm never makes a 600 s token read 599.
        return dict(kind.response(minted, grant, issuance_id, started))

    def _decide_and_reserve(
        self, kind: ModuleType, caller: VerifiedToken, ask: Any, issuance_id: str, audit: Audit
    ) -> tuple[Grant, ApprovalUse | None, _dt.datetime]:
        """Decide and reserve; with an approval, the reservation commits only if the request is
        still as checked, so a revoke or another vend in between makes us check again."""
        for attempt in range(MAX_RESERVE_ATTEMPTS):
            now = clock.now()
            use = self.approvals.check_use(caller.principal, ask.request_id, now) if ask.request_id else None
            grant = policy.decide(self.policy, caller.principal, kind, ask, now, use)  # decide
            audit.set(entitlement=grant.entitlement, not_after=grant.bounds.not_after)
            self.switch.refuse_if_engaged(grant.service_account)  # switch?
            reserved_until = kind.reserve_until(grant, now, self.iam_deadline_s)
            try:
                self.ledger.reserve(
                    issuance_id,
                    grant,
                    reserved_until=reserved_until,
                    reason=ask.reason,
                    details=kind.details(grant),
                    replay_key=caller.replay_key,
                    replay_until=caller.replay_until,
                    extra=[self.approvals.use_write(use, now)] if use else [],
                )  # reserve
                return grant, use, reserved_until
            except StoreConflict:
                if use is None:
                    raise
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise ConflictError("The access request is being changed concurrently; retry.", reason="request-busy")

    def _settle_failure(
        self,
        issuance_id: str,
        exc: VendingError,
        caller: VerifiedToken,
        use: ApprovalUse | None,
        reserved_until: _dt.datetime,
    ) -> bool:
        """Record the IAM failure; True when a credential may nevertheless exist (unconfirmed)."""
        try:
            if exc.reason in AMBIGUOUS_IAM_FAILURES:  # IAM may have minted: never claim "failed"
                self.ledger.mark_unconfirmed(issuance_id, exc.reason, until=reserved_until)
                return True
            # IAM refused: nothing minted, so the caller may retry with the same token and approval
            self.ledger.mark_failed(issuance_id, exc.reason, replay_key=caller.replay_key)
            if use is not None:
                self.approvals.release_use(use.request_id)
        except VendingError as store_exc:  # the sweep reconciles a record left 'issuing'
            log.error("could not record the IAM failure", issuance_id=issuance_id, error=store_exc.reason)
        return False

    def _recheck_switch(self, grant: Grant, issuance_id: str) -> TargetDisabledError | None:
        """After the ledger holds the credential: if the kill switch is on by now, mark the record
        revoked (it is never handed out) and return the refusal; None when the switch is off."""
        record = self.switch.blocking(grant.service_account)
        if record is None:
            return None
        self.ledger.mark_revoked(
            issuance_id,
            by=str(record.get("engaged_by")),
            reason=f"kill switch engaged while issuing: {record.get('justification')}",
        )
        return TargetDisabledError(grant.service_account, record.get("requested_at"))

    def _switch_after_failure(self, grant: Grant, issuance_id: str, *, mark: bool) -> TargetDisabledError | None:
        """After an IAM failure (one read, on that path only): if the switch is on, the refusal to answer
        instead, and a credential that may exist (``mark``: unconfirmed, withheld) is marked revoked too."""
        try:
            if mark:
                return self._recheck_switch(grant, issuance_id)
            record = self.switch.blocking(grant.service_account)
            return None if record is None else TargetDisabledError(grant.service_account, record.get("requested_at"))
        except VendingError as exc:  # the IAM failure stays the answer
            log.error("could not check the kill switch after an IAM failure", issuance_id=issuance_id, error=exc.reason)
            return None

    def _announce(self, issuance_id: str, grant: Grant, minted: Minted) -> None:
        record = {
            "id": issuance_id,
            "kind": grant.kind,
            "entitlement": grant.entitlement,
            "service_account": grant.service_account,
            "principal": grant.caller,
            "request_id": grant.request_id,
            "expire_time": minted.expire_time,
            "break_glass": grant.break_glass,
        }
        event = issuance_event("credential.issued", record)
        self.events.publish("notifications", event)
        if grant.break_glass:
            self.events.publish("alerts", issuance_event("break_glass.used", record))
