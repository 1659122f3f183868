"""OpenID Connect ID tokens (IAM ``generateIdToken``).

IAM fixes an ID token's lifetime at one hour and it cannot be shortened. So
``not_after`` is now + 1 h, an approval window that ends sooner than that
refuses the request (``window-too-short``) rather than hand out a token that
outlives it, and the minted token's ``exp`` and ``aud`` are checked.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from vending import clock, inputs
from vending.config import Entitlement, matches
from vending.errors import PermissionDeniedError
from vending.grant import Bounds, Grant
from vending.iam import IamCredentials
from vending.kinds import Minted, OutOfBoundsError, decode_jwt_part

NAME = "id_token"
PATH = "/v1/id-tokens"
MAX_BODY_BYTES = inputs.MAX_BODY_BYTES
LIFETIME_S = 3600  # fixed by IAM

Ask = inputs.IdTokenBody


@dataclass(frozen=True)
class Terms:
    """What the grant lets IAM mint: an ID token for this audience."""

    audience: str
    include_email: bool


def decode(body: dict[str, Any]) -> Ask:
    return inputs.id_token_body(body)


def bounds(ent: Entitlement, now: _dt.datetime) -> Bounds:
    assert ent.id_token is not None
    return Bounds(not_after=now + _dt.timedelta(seconds=LIFETIME_S), audiences=ent.id_token.audiences)


def terms(ent: Entitlement, b: Bounds, ask: Ask, now: _dt.datetime) -> Terms:
    if not any(matches(m, ask.audience) for m in b.audiences):
        raise PermissionDeniedError(
            f"Audience {ask.audience[:200]!r} is not allowed for ID tokens of this service account.",
            reason="audience-not-allowed",
        )
    left = int((b.not_after - now).total_seconds())
    if left < LIFETIME_S:
        raise PermissionDeniedError(
            f"ID tokens live {LIFETIME_S}s (fixed by IAM) but the approval window ends in "
            f"{max(left, 0)}s; an ID token would outlive it.",
            reason="window-too-short",
        )
    return Terms(ask.audience, ask.include_email)


def reserve_until(grant: Grant, now: _dt.datetime, deadline_s: float) -> _dt.datetime:
    return now + _dt.timedelta(seconds=LIFETIME_S + deadline_s)


def mint(iam: IamCredentials, grant: Grant, reason: str) -> Minted:
    token = iam.generate_id_token(
        grant.service_account, grant.terms.audience, grant.terms.include_email, grant.delegates, reason=reason
    )
    claims = decode_jwt_part(token, 1)
    exp = claims.get("exp") if isinstance(claims, dict) else None
    expire = clock.from_epoch(exp) if isinstance(exp, int) and not isinstance(exp, bool) else None
    return Minted(token, expire)


def check(minted: Minted, grant: Grant, slack_s: float) -> None:
    claims = decode_jwt_part(minted.credential, 1)
    if not isinstance(claims, dict) or claims.get("aud") != grant.terms.audience:
        raise OutOfBoundsError("ID token audience differs from the grant")
    if minted.expire_time is None or minted.expire_time > grant.bounds.not_after + _dt.timedelta(seconds=slack_s):
        raise OutOfBoundsError(f"ID token expires {minted.expire_time}, grant ends {grant.bounds.not_after}")


def details(grant: Grant) -> dict[str, Any]:
    return {"audience": grant.terms.audience}


def audit(ask: Ask) -> dict[str, Any]:
    return {"audience": ask.audience[:1000]}


def response(minted: Minted, grant: Grant, issuance_id: str, now: _dt.datetime) -> dict[str, Any]:
    return {
        "id_token": minted.credential,
        "expire_time": clock.rfc3339(minted.expire_time) if minted.expire_time else None,
        "issuance_id": issuance_id,
        "service_account": grant.service_account,
    }
