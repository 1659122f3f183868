"""JWTs signed by the service account (IAM ``signJwt``).

Bounds: the entitlement's audiences and settable claims; ``not_after`` = now +
``max_ttl`` (at most 12 h). Terms: the caller's claims with ``iss``, ``sub``
and ``iat`` set by the service and ``exp`` defaulting to the latest allowed
(1 h for a Google API audience, never past ``not_after``). The minted JWT's
payload must be exactly those claims.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Any

from vending import clock, inputs
from vending.config import SIGNED_JWT_GOOGLE_API_MAX_TTL_S, SIGNED_JWT_MAX_TTL_S, Entitlement, matches
from vending.errors import BadRequestError, PermissionDeniedError
from vending.grant import Bounds, Grant
from vending.iam import IamCredentials
from vending.kinds import Minted, OutOfBoundsError, decode_jwt_part

NAME = "signed_jwt"
PATH = "/v1/signed-jwts"
MAX_BODY_BYTES = inputs.MAX_BODY_BYTES

Ask = inputs.SignedJwtBody

# A Google API audience: any https URL on googleapis.com or a subdomain (``https://SERVICE.googleapis.com/``,
# also the older ``https://SERVICE.googleapis.com/API_NAME`` form); host compared case-insensitively.
GOOGLE_API_AUDIENCE = re.compile(r"https://(?:[a-z0-9-]+\.)*googleapis\.com(?::443)?(?:/[^?#]*)?", re.IGNORECASE)
RESERVED_CLAIMS = frozenset({"iss", "sub", "iat"})


@dataclass(frozen=True)
class Terms:
    """What the grant lets IAM sign: exactly these claims."""

    claims: dict[str, Any]  # exactly what IAM signs

    @property
    def expire_time(self) -> _dt.datetime:
        return clock.from_epoch(self.claims["exp"])


def decode(body: dict[str, Any]) -> Ask:
    return inputs.signed_jwt_body(body)


def bounds(ent: Entitlement, now: _dt.datetime) -> Bounds:
    rules = ent.signed_jwt
    assert rules is not None
    return Bounds(
        not_after=now + _dt.timedelta(seconds=min(rules.max_ttl, SIGNED_JWT_MAX_TTL_S)),
        audiences=rules.audiences,
        claims=rules.allowed_claims,
    )


def terms(ent: Entitlement, b: Bounds, ask: Ask, now: _dt.datetime) -> Terms:
    requested = ask.claims
    refused = sorted(k for k in requested if k in RESERVED_CLAIMS or (k not in ("aud", "exp") and k not in b.claims))
    if refused:
        shown = ", ".join(repr(k[:100]) for k in refused[:10])
        raise PermissionDeniedError(
            f"Claim(s) {shown} may not be set: iss, sub and iat are set by the service; "
            f"aud, exp and {list(b.claims) or 'no other claims'} may be set.",
            reason="claim-not-allowed",
        )
    aud = requested.get("aud")
    if not isinstance(aud, str) or not any(matches(m, aud) for m in b.audiences):
        what = f"Audience {aud[:200]!r} is" if isinstance(aud, str) else "claims.aud must be a string and"
        raise PermissionDeniedError(
            f"{what} not allowed for signed JWTs of this service account.", reason="audience-not-allowed"
        )
    now_s = int(now.timestamp())
    google_api = GOOGLE_API_AUDIENCE.fullmatch(aud) is not None
    latest = int(b.not_after.timestamp())
    assert ent.signed_jwt is not None
    narrowed = latest < now_s + min(ent.signed_jwt.max_ttl, SIGNED_JWT_MAX_TTL_S)
    why = ", the end of the approval window" if narrowed else ""
    if google_api and now_s + SIGNED_JWT_GOOGLE_API_MAX_TTL_S < latest:
        latest, why = now_s + SIGNED_JWT_GOOGLE_API_MAX_TTL_S, " for a Google API audience"
    exp = requested.get("exp")
    if exp is None:  # absent (or null): the latest allowed
        exp = latest
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise BadRequestError(
            "claims.exp must be an integer timestamp (seconds since the epoch).", reason="invalid-exp"
        )
    if exp <= now_s:
        raise BadRequestError("claims.exp must be in the future.", reason="invalid-exp")
    if exp > latest:
        raise BadRequestError(
            f"claims.exp is {exp - now_s}s away; the maximum is {max(latest - now_s, 0)}s{why}.", reason="exp-too-far"
        )
    return Terms({**requested, "exp": exp, "iss": ent.service_account, "sub": ent.service_account, "iat": now_s})


def reserve_until(grant: Grant, now: _dt.datetime, deadline_s: float) -> _dt.datetime:
    expire_time: _dt.datetime = grant.terms.expire_time  # exp is in the signed claims: IAM's timing cannot move it
    return expire_time


def mint(iam: IamCredentials, grant: Grant, reason: str) -> Minted:
    sig = iam.sign_jwt(grant.service_account, grant.terms.claims, grant.delegates, reason=reason)
    return Minted(sig.value, grant.terms.expire_time, key_id=sig.key_id)


def check(minted: Minted, grant: Grant, slack_s: float) -> None:
    if decode_jwt_part(minted.credential, 1) != grant.terms.claims:
        raise OutOfBoundsError("signed JWT payload differs from the claims the grant allowed")
    if grant.terms.expire_time > grant.bounds.not_after:
        raise OutOfBoundsError("signed JWT exp is past the grant's end")


def details(grant: Grant) -> dict[str, Any]:
    return {"audience": grant.terms.claims.get("aud")}


def audit(ask: Ask) -> dict[str, Any]:
    aud = ask.claims.get("aud")
    return {"audience": aud[:1000] if isinstance(aud, str) else None}


def response(minted: Minted, grant: Grant, issuance_id: str, now: _dt.datetime) -> dict[str, Any]:
    return {
        "signed_jwt": minted.credential,
        "key_id": minted.key_id,
        "expire_time": clock.rfc3339(grant.terms.expire_time),
        "issuance_id": issuance_id,
        "service_account": grant.service_account,
    }
