"""Use cases other than vending: access requests over HTTP, reading the ledger, kill switches.

Each class receives the collaborators it uses. Vending itself is ``vending.vend``.
"""

from __future__ import annotations

import re
from typing import Any

from vending import clock, inputs, ledger, log, policy
from vending.approvals import Approvals
from vending.config import Policy, split_qualified
from vending.errors import BadRequestError, NotFoundError, PermissionDeniedError, VendingError
from vending.identity import VerifiedToken, Verifier
from vending.killswitch import KillSwitch
from vending.ledger import Ledger
from vending.sessions import Callers, Credential


def valid_id(value: str, what: str) -> str:
    if not re.fullmatch(r"[a-f0-9]{32}", value or ""):
        raise NotFoundError(f"No {what} {value[:64]!r}.", reason=f"{what}-not-found")
    return value


class AccessRequests:
    """``POST /v1/requests``, ``GET /v1/requests/{id}``, ``POST /v1/requests/{id}:ACTION``.

    The caller is a bearer token or a console session (``vending.sessions.Callers``); a session
    has no replay key, so ``consume`` spends nothing for it (its state-changing calls carry the
    session's CSRF token instead).
    """

    def __init__(self, verifier: Callers, ledger_: Ledger, approvals: Approvals) -> None:
        self.verifier = verifier
        self.ledger = ledger_
        self.approvals = approvals

    def create(self, authorization: Credential, raw_body: bytes) -> dict[str, Any]:
        caller = self.verifier.verify_authorization(authorization)
        body = inputs.parse_json(raw_body)  # malformed bodies are refused before the token is consumed
        self.ledger.consume(caller.replay_key, caller.replay_until)
        try:
            result = self.approvals.create(caller.principal, body)
        except VendingError:
            self.ledger.give_back(caller.replay_key)  # a refusal changes nothing, not even the token
            raise
        log.notice(
            "access request created",
            audit=True,
            principal=caller.principal.qualified,
            access_request_id=result["id"],
            entitlement=result["entitlement"],
            state=result["state"],
            break_glass=result["break_glass"],
        )
        return result

    def get(self, authorization: Credential, request_id: str) -> dict[str, Any]:
        caller = self.verifier.verify_authorization(authorization)
        return self.approvals.get(caller.principal, valid_id(request_id, "request"))

    def act(self, authorization: Credential, request_id: str, action: str, raw_body: bytes) -> dict[str, Any]:
        caller = self.verifier.verify_authorization(authorization)
        request_id = valid_id(request_id, "request")
        comment = None
        if raw_body.strip():
            body = inputs.parse_json(raw_body)
            inputs.check_fields(body, (), ("comment",))
            comment = inputs.text(body.get("comment"), "comment")
        self.ledger.consume(caller.replay_key, caller.replay_until)
        try:
            result = self.approvals.act(caller.principal.qualified, request_id, action, via="http", comment=comment)
        except VendingError:
            self.ledger.give_back(caller.replay_key)  # a refusal changes nothing, not even the token
            raise
        log.notice(
            "access request action",
            audit=True,
            principal=caller.principal.qualified,
            access_request_id=request_id,
            action=action,
            state=result["state"],
        )
        return result


class Issuances:
    """``GET /v1/issuances`` and ``GET /v1/issuances/{id}``: auditors read all, callers their own."""

    def __init__(self, verifier: Callers, policy_: Policy, ledger_: Ledger) -> None:
        self.verifier = verifier
        self.policy = policy_
        self.ledger = ledger_

    def get(self, authorization: Credential, issuance_id: str) -> dict[str, Any]:
        caller = self.verifier.verify_authorization(authorization)
        doc = self.ledger.get(valid_id(issuance_id, "issuance"))
        if doc is None:
            raise NotFoundError(f"No issuance {issuance_id}.", reason="issuance-not-found")
        if not policy.can_read(self.policy, caller.principal, doc.data.get("principal", "")):
            raise PermissionDeniedError(
                "Only auditors and the caller it was issued to may read an issuance.", reason="not-a-reader"
            )
        return ledger.view(doc.data, clock.now())

    def list(self, authorization: Credential, args: dict[str, str]) -> dict[str, Any]:
        caller = self.verifier.verify_authorization(authorization)
        me = caller.principal.qualified
        allowed = {"state", "service_account", "principal", "since", "page_size", "page_token"}
        unknown = sorted(set(args) - allowed)
        if unknown:
            raise BadRequestError(f"Unknown query parameter(s): {', '.join(unknown)}.", reason="unknown-field")
        state = args.get("state")
        if state is not None and state not in ledger.STATES:
            raise BadRequestError(f"state must be one of {', '.join(ledger.STATES)}.", reason="invalid-state")
        sa = inputs.service_account(args["service_account"]) if "service_account" in args else None
        principal = args.get("principal")
        if principal is not None:
            inputs.text(principal, "principal", required=True)
            principal = self._qualified(principal, caller.principal.issuer)
        if not self.policy.is_auditor(me):
            if principal not in (None, me):
                raise PermissionDeniedError("Only auditors may list other callers' issuances.", reason="not-an-auditor")
            principal = me
        since = None
        if "since" in args:
            try:
                since = clock.parse_rfc3339(args["since"])
            except ValueError as exc:
                raise BadRequestError("since must be an RFC 3339 timestamp.", reason="invalid-since") from exc
        try:
            page_size = int(args.get("page_size", "50"))
        except ValueError:
            page_size = 0
        if not 1 <= page_size <= 500:
            raise BadRequestError("page_size must be between 1 and 500.", reason="invalid-page-size")
        records, token = self.ledger.list(
            state=state,
            service_account=sa,
            principal=principal,
            since=since,
            page_size=page_size,
            page_token=args.get("page_token"),
        )
        now = clock.now()
        out: dict[str, Any] = {"issuances": [ledger.view(r, now) for r in records]}
        if token:
            out["next_page_token"] = token
        return out

    def _qualified(self, principal: str, default_issuer: str) -> str:
        """``ISSUER/IDENTITY`` as given, or a bare identity of the caller's own issuer."""
        return principal if split_qualified(principal, self.policy.issuer_names) else f"{default_issuer}/{principal}"


class ServiceAccounts:
    """``GET /v1/service-accounts/{email}``, ``POST /v1/service-accounts/{email}:disable|enable``: the kill switch.

    Only auditors and the policy's kill switch operators (issuer-qualified) may call them. Every
    call, allowed or refused, writes one audit line with the caller's qualified identity. The
    state-changing calls consume the caller token's ``jti`` (given back when the call changed
    nothing, so a retry with the same token resumes).
    """

    def __init__(self, verifier: Verifier, policy_: Policy, ledger_: Ledger, switch: KillSwitch) -> None:
        self.verifier = verifier
        self.policy = policy_
        self.ledger = ledger_
        self.switch = switch

    def status(self, authorization: str | None, email: str) -> dict[str, Any]:
        return self._audited("status", authorization, email, b"")

    def act(self, authorization: str | None, email: str, action: str, raw_body: bytes) -> dict[str, Any]:
        return self._audited({"disable": "engage", "enable": "release"}[action], authorization, email, raw_body)

    def _audited(self, action: str, authorization: str | None, email: str, raw_body: bytes) -> dict[str, Any]:
        fields: dict[str, Any] = {"action": action, "service_account": email[:320]}
        try:
            caller = self.verifier.verify_authorization(authorization)
            fields.update(principal=caller.principal.qualified, issuer=caller.principal.issuer)
            result = self._run(action, caller, email, raw_body)
        except VendingError as exc:
            denied = exc.http_status < 500
            log.emit(
                "WARNING" if denied else "ERROR",
                f"kill switch {action} denied" if denied else f"kill switch {action} failed",
                audit=True,
                decision="deny",
                reason=exc.reason,
                status=exc.http_status,
                detail=exc.detail or exc.message,
                **fields,
            )
            exc.logged = True
            raise
        log.notice(
            f"kill switch {action}",
            audit=True,
            decision="allow",
            state=result["state"],
            safe_at=result["safe_at"],
            **fields,
        )
        return result

    def _run(self, action: str, caller: VerifiedToken, email: str, raw_body: bytes) -> dict[str, Any]:
        who = caller.principal.qualified
        if not self.policy.is_kill_switch_operator(who):
            raise PermissionDeniedError(
                "Only kill switch operators and auditors may use the kill switch.", reason="not-a-kill-switch-operator"
            )
        if email not in self.policy.target_service_accounts:
            raise NotFoundError(
                f"{email[:320]!r} is not a service account this service vends for.",
                reason="service-account-not-managed",
            )
        if action == "status":
            return self.switch.status(email)
        body = inputs.parse_json(raw_body)  # malformed bodies are refused before the token is consumed
        if action == "engage":
            inputs.check_fields(body, ("justification",), ())
        else:
            inputs.check_fields(body, ("justification",), ("request_id",))
        justification = inputs.text(body.get("justification"), "justification", required=True)
        assert justification is not None
        request_id = inputs.record_id(body.get("request_id")) if action == "release" else None
        self.ledger.consume(caller.replay_key, caller.replay_until)
        try:
            if action == "engage":
                return self.switch.engage(who, email, justification, via="http")
            return self.switch.release(caller.principal, email, justification, request_id, via="http")
        except VendingError:
            self.ledger.give_back(caller.replay_key)  # nothing was done that a retry would repeat harmfully
            raise
