"""Pure policy decisions: claims + request -> ``Grant``, or a refusal naming the rule.

No I/O, no clock reads: everything comes in as arguments, so every rule is a
plain function that unit and property tests can hammer. Deny by default: a
request is granted only by an entitlement whose principal rule matches the
caller, whose service account is the target, which lists the credential
kind, and whose bounds (the kind module's, narrowed by an approval) the
request stays within.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from vending.config import Entitlement, Policy, PrincipalRule, matches
from vending.errors import BadRequestError, PermissionDeniedError
from vending.grant import ApprovalUse, Grant
from vending.identity import Principal


def rule_matches(rule: PrincipalRule, principal: Principal) -> bool:
    if rule.issuer != principal.issuer:
        return False
    return all(matches(m, principal.claims.get(claim)) for claim, m in rule.claims.items())


def is_principal_of(entitlement: Entitlement, principal: Principal) -> bool:
    return any(rule_matches(r, principal) for r in entitlement.principals)


def entitlements_for(policy: Policy, principal: Principal, service_account: str) -> list[Entitlement]:
    return [e for e in policy.entitlements if e.service_account == service_account and is_principal_of(e, principal)]


def _check_delegates(entitlement: Entitlement, delegates: Sequence[str] | None) -> tuple[str, ...]:
    """Caller-supplied delegates (already normalized) must equal the chain exactly."""
    if delegates is None:
        return entitlement.delegates
    if tuple(delegates) != entitlement.delegates:
        raise PermissionDeniedError(
            "The delegation chain must equal the entitlement's chain "
            f"({list(entitlement.delegates) or 'none'}), in order.",
            reason="delegates-not-allowed",
        )
    return entitlement.delegates


def candidates(
    policy: Policy, principal: Principal, kind: str, service_account: str, approval: ApprovalUse | None
) -> list[Entitlement]:
    """Entitlements that could grant ``kind`` of ``service_account`` to the caller.

    With an approval only its entitlement is considered, and its principal rule is
    checked again for this caller (the token that vends is not the one that asked).
    Otherwise entitlements that need approval are excluded, and if they were the
    only match the caller is told an approval is required.
    """
    if approval is not None:
        ent = policy.entitlement(approval.entitlement)
        if ent is None:
            raise PermissionDeniedError("The request's entitlement no longer exists.", reason="entitlement-removed")
        if ent.service_account != service_account:
            raise PermissionDeniedError(
                "The access request is for another service account.", reason="service-account-not-allowed"
            )
        if approval.requester != principal.qualified:
            raise PermissionDeniedError("This access request belongs to another requester.", reason="not-requester")
        if not is_principal_of(ent, principal):
            raise PermissionDeniedError(
                f"This caller no longer matches entitlement {ent.name!r}'s principal rule.",
                reason="entitlement-not-allowed",
            )
        found = [ent]
    else:
        found = entitlements_for(policy, principal, service_account)
        if not found:
            raise PermissionDeniedError(
                f"No entitlement lets this caller obtain credentials for {service_account}.",
                reason="service-account-not-allowed",
            )
        direct = [e for e in found if not e.requires_approval]
        if not direct:
            raise PermissionDeniedError(
                f"Credentials for {service_account} require an approved access request "
                f"(entitlement {found[0].name!r}); create one with POST /v1/requests.",
                reason="approval-required",
            )
        found = direct
    kinds = [e for e in found if kind in e.credentials]
    if not kinds:
        raise PermissionDeniedError(
            f"This caller may not obtain {kind.replace('_', ' ')}s for {service_account}.",
            reason="credential-kind-not-allowed",
        )
    return kinds


def decide(
    policy: Policy, principal: Principal, kind: Any, ask: Any, now: _dt.datetime, approval: ApprovalUse | None = None
) -> Grant:
    """The grant for this request, or the refusal of the first candidate entitlement.

    ``kind`` is a ``vending.kinds`` module; ``ask`` its decoded request.
    """
    first_error: Exception | None = None
    for ent in candidates(policy, principal, kind.NAME, ask.service_account, approval):
        try:
            chain = _check_delegates(ent, ask.delegates)
            bounds = kind.bounds(ent, now)
            if approval is not None:
                bounds = approval.narrow(bounds)
            return Grant(
                caller=principal.qualified,
                issuer=principal.issuer,
                subject=str(principal.claims.get("sub", "")),
                entitlement=ent.name,
                kind=kind.NAME,
                service_account=ent.service_account,
                delegates=chain,
                bounds=bounds,
                terms=kind.terms(ent, bounds, ask, now),
                decided_at=now,
                request_id=approval.request_id if approval else None,
                break_glass=bool(approval and approval.break_glass),
            )
        except (PermissionDeniedError, BadRequestError) as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def can_read(policy: Policy, principal: Principal, owner: str, extra_readers: frozenset[str] = frozenset()) -> bool:
    """Auditors read everything; others read their own records (and listed readers). Identities are qualified."""
    who = principal.qualified
    return who == owner or policy.is_auditor(who) or who in extra_readers
