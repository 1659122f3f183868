"""What a caller may see about themselves: the requests they may read, their entitlements, their roles.

Use cases of ``GET /v1/requests``, ``GET /v1/entitlements`` and ``GET /v1/whoami``
(the console's inbox and pages, and ``vending requests`` / ``vending whoami``).
Each receives the collaborators it uses; who may read what is decided by the
owners (``Approvals.listing``) and ``vending.policy``.
"""

from __future__ import annotations

from typing import Any

from vending import approvals as approvals_mod
from vending import clock, policy
from vending.approvals import Approvals
from vending.config import Entitlement, Matcher, Policy
from vending.errors import BadRequestError

ROLES = ("requester", "approver", "auditor")


def _page_size(raw: str | None) -> int:
    try:
        size = int(raw if raw is not None else "50")
    except ValueError:
        size = 0
    if not 1 <= size <= 500:
        raise BadRequestError("page_size must be between 1 and 500.", reason="invalid-page-size")
    return size


def _matcher(m: Matcher) -> Any:
    return m if isinstance(m, str) else {"pattern": m.pattern}


def entitlement_view(ent: Entitlement) -> dict[str, Any]:
    """An entitlement's bounds as a caller may read them: what it grants and how it is approved."""
    out: dict[str, Any] = {
        "name": ent.name,
        "service_account": ent.service_account,
        "credentials": list(ent.credentials),
        "scopes": list(ent.scopes),
        "max_lifetime_s": ent.max_lifetime,
        "delegates": list(ent.delegates),
        "requires_approval": ent.requires_approval,
        "id_token_audiences": [_matcher(m) for m in ent.id_token.audiences] if ent.id_token else None,
        "signed_jwt_audiences": [_matcher(m) for m in ent.signed_jwt.audiences] if ent.signed_jwt else None,
        "approval": None,
    }
    rules = ent.approval
    if rules is not None:
        out["approval"] = {
            "quorum": rules.quorum,
            "max_window_s": rules.max_window,
            "max_uses": rules.max_uses,
            "pending_timeout_s": rules.pending_timeout,
            "break_glass": rules.break_glass,
            "justification_pattern": rules.justification_pattern.pattern if rules.justification_pattern else None,
        }
    return out


class RequestList:
    """``GET /v1/requests``: ``role=requester`` (default) their own, ``approver`` what awaits their
    decision first, ``auditor`` everything (auditors only)."""

    ALLOWED = frozenset({"role", "state", "entitlement", "page_size", "page_token"})

    def __init__(self, verifier: Any, approvals: Approvals) -> None:
        self.verifier = verifier
        self.approvals = approvals

    def list(self, credential: Any, args: dict[str, str]) -> dict[str, Any]:
        caller = self.verifier.verify_authorization(credential)
        unknown = sorted(set(args) - self.ALLOWED)
        if unknown:
            raise BadRequestError(f"Unknown query parameter(s): {', '.join(unknown)}.", reason="unknown-field")
        role = args.get("role", "requester")
        if role not in ROLES:
            raise BadRequestError(f"role must be one of {', '.join(ROLES)}.", reason="invalid-role")
        state = args.get("state")
        if state is not None and state not in approvals_mod.STATES:
            raise BadRequestError(f"state must be one of {', '.join(approvals_mod.STATES)}.", reason="invalid-state")
        entitlement = args.get("entitlement")
        if entitlement is not None and not (0 < len(entitlement) <= 63):
            raise BadRequestError("entitlement must be an entitlement name.", reason="invalid-entitlement")
        records, token = self.approvals.listing(
            caller.principal,
            role=role,
            state=state,
            entitlement=entitlement,
            page_size=_page_size(args.get("page_size")),
            page_token=args.get("page_token"),
        )
        out: dict[str, Any] = {"requests": records}
        if token:
            out["next_page_token"] = token
        return out


class Profile:
    """``GET /v1/whoami`` and ``GET /v1/entitlements``."""

    def __init__(self, verifier: Any, policy_: Policy, approvals: Approvals) -> None:
        self.verifier = verifier
        self.policy = policy_
        self.approvals = approvals

    def whoami(self, credential: Any) -> dict[str, Any]:
        """The caller's qualified identity and roles, and the break-glass access ACTIVE now (for the banner)."""
        caller = self.verifier.verify_authorization(credential)
        who = caller.principal.qualified
        now = clock.now()
        decided = self.approvals.decided_by(caller.principal)
        ks = self.policy.kill_switch
        return {
            "identity": who,
            "issuer": caller.principal.issuer,
            "subject": caller.principal.identity,
            "expires_at": clock.rfc3339(caller.expires_at),
            "auditor": self.policy.is_auditor(who),
            "approver_of": [n for n in decided if n != approvals_mod.KILL_SWITCH_RELEASE],
            "kill_switch_operator": self.policy.is_kill_switch_operator(who),
            "kill_switch_approver": approvals_mod.KILL_SWITCH_RELEASE in decided,
            "may_request": [
                e.name
                for e in self.policy.entitlements
                if e.requires_approval and policy.is_principal_of(e, caller.principal)
            ],
            "kill_switch_configured": ks is not None,
            "break_glass_active": [
                {
                    "request_id": r["id"],
                    "requester": r["requester"],
                    "entitlement": r["entitlement"],
                    "service_account": r["service_account"],
                    "window_end": r["window_end"],
                    "justification": r["justification"],
                }
                for r in self.approvals.active_break_glass(now)
            ],
        }

    def entitlements(self, credential: Any) -> dict[str, Any]:
        """What the caller may request or vend, each with its bounds."""
        caller = self.verifier.verify_authorization(credential)
        return {
            "entitlements": [
                entitlement_view(e) for e in self.policy.entitlements if policy.is_principal_of(e, caller.principal)
            ]
        }
