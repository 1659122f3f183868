"""Pure policy decisions: may this caller get this credential, and on what terms?

No I/O, no clock reads: everything comes in as arguments, so every rule is a
plain function that unit and property tests can hammer. Deny by default: a
request is granted only by an entitlement whose principal rule matches the
caller, whose service account is the target, which lists the credential
kind, and whose limits the request stays within.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vending.config import Entitlement, Policy, PrincipalRule, matches
from vending.errors import BadRequestError, PermissionDeniedError
from vending.identity import Principal


@dataclass(frozen=True)
class Grant:
    """What the policy allows for one request."""

    entitlement: Entitlement
    kind: str
    service_account: str
    delegates: tuple[str, ...]
    scopes: tuple[str, ...] = ()
    lifetime_s: int = 0


def rule_matches(rule: PrincipalRule, principal: Principal) -> bool:
    if rule.issuer != principal.issuer:
        return False
    return all(matches(m, principal.claims.get(claim)) for claim, m in rule.claims.items())


def is_principal_of(entitlement: Entitlement, principal: Principal) -> bool:
    return any(rule_matches(r, principal) for r in entitlement.principals)


def entitlements_for(policy: Policy, principal: Principal, service_account: str) -> list[Entitlement]:
    return [e for e in policy.entitlements
            if e.service_account == service_account and is_principal_of(e, principal)]


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


def select(policy: Policy, principal: Principal, kind: str, service_account: str,
           *, via_request: Entitlement | None = None) -> list[Entitlement]:
    """Entitlements that could grant ``kind`` of ``service_account`` to the caller.

    With ``via_request`` (an ACTIVE approved request) only that entitlement is
    considered. Otherwise entitlements that need approval are excluded, and if
    they were the only match the caller is told an approval is required.
    """
    if via_request is not None:
        if via_request.service_account != service_account:
            raise PermissionDeniedError("The access request is for another service account.",
                                        reason="service-account-not-allowed")
        found = [via_request]
    else:
        found = entitlements_for(policy, principal, service_account)
        if not found:
            raise PermissionDeniedError(
                f"No entitlement lets this caller obtain credentials for {service_account}.",
                reason="service-account-not-allowed")
        direct = [e for e in found if not e.requires_approval]
        if not direct:
            raise PermissionDeniedError(
                f"Credentials for {service_account} require an approved access request "
                f"(entitlement {found[0].name!r}); create one with POST /v1/requests.",
                reason="approval-required")
        found = direct
    kinds = [e for e in found if kind in e.credentials]
    if not kinds:
        raise PermissionDeniedError(f"This caller may not obtain {kind.replace('_', ' ')}s for {service_account}.",
                                    reason="credential-kind-not-allowed")
    return kinds


def decide_access_token(policy: Policy, principal: Principal, service_account: str,
                        scopes: Sequence[str] | None, lifetime_s: int | None,
                        delegates: Sequence[str] | None, *, via_request: Entitlement | None = None,
                        max_lifetime_s: int | None = None) -> Grant:
    """Grant an access token or raise. ``max_lifetime_s`` clamps (approval windows)."""
    candidates = select(policy, principal, "access_token", service_account, via_request=via_request)
    first_error: Exception | None = None
    for ent in candidates:
        try:
            return _grant_access_token(ent, scopes, lifetime_s, delegates, max_lifetime_s)
        except (PermissionDeniedError, BadRequestError) as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def _grant_access_token(ent: Entitlement, scopes: Sequence[str] | None, lifetime_s: int | None,
                        delegates: Sequence[str] | None, max_lifetime_s: int | None) -> Grant:
    wanted = tuple(scopes) if scopes else ent.scopes
    extra = [s for s in wanted if s not in ent.scopes]
    if extra:
        raise PermissionDeniedError(f"Scope(s) {extra} are not granted by the entitlement.",
                                    reason="scope-not-allowed")
    chain = _check_delegates(ent, delegates)
    if lifetime_s is not None and lifetime_s > ent.max_lifetime:
        raise BadRequestError(
            f"lifetime {lifetime_s}s is above the maximum of {ent.max_lifetime}s for this service account.",
            reason="lifetime-too-long")
    lifetime = lifetime_s if lifetime_s is not None else ent.max_lifetime
    if max_lifetime_s is not None:
        lifetime = min(lifetime, max_lifetime_s)
    return Grant(ent, "access_token", ent.service_account, chain, tuple(dict.fromkeys(wanted)), lifetime)


def decide_kind(policy: Policy, principal: Principal, kind: str, service_account: str,
                delegates: Sequence[str] | None, check: Any, *, via_request: Entitlement | None = None) -> Grant:
    """Grant an ID token / signed JWT / signed blob: ``check(entitlement)`` applies kind rules."""
    candidates = select(policy, principal, kind, service_account, via_request=via_request)
    first_error: Exception | None = None
    for ent in candidates:
        try:
            chain = _check_delegates(ent, delegates)
            check(ent)
            return Grant(ent, kind, ent.service_account, chain)
        except (PermissionDeniedError, BadRequestError) as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def can_read(policy: Policy, principal: Principal, owner: str, extra_readers: frozenset[str] = frozenset()) -> bool:
    """Auditors read everything; others read their own records (and listed readers)."""
    return principal.identity == owner or policy.is_auditor(principal.identity) or principal.identity in extra_readers
