"""OAuth 2.0 access tokens (IAM ``generateAccessToken``).

Bounds: the entitlement's scopes, ``not_after`` = now + ``max_lifetime``.
Terms: the requested scopes (default: all allowed) and a lifetime clamped to
``not_after`` (an approval window ends it). A lifetime above the entitlement's
maximum is refused rather than clamped, so a caller learns the limit.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any

from vending import clock, inputs
from vending.config import Entitlement
from vending.errors import BadRequestError, PermissionDeniedError
from vending.grant import Bounds, Grant
from vending.iam import IamCredentials
from vending.kinds import Minted, OutOfBoundsError

NAME = "access_token"
PATH = "/v1/access-tokens"
MAX_BODY_BYTES = inputs.MAX_BODY_BYTES

Ask = inputs.AccessTokenBody


@dataclass(frozen=True)
class Terms:
    """What the grant lets IAM mint: these scopes, for this many seconds."""

    scopes: tuple[str, ...]
    lifetime_s: int


def decode(body: dict[str, Any]) -> Ask:
    return inputs.access_token_body(body)


def bounds(ent: Entitlement, now: _dt.datetime) -> Bounds:
    return Bounds(not_after=now + _dt.timedelta(seconds=ent.max_lifetime), scopes=ent.scopes)


def terms(ent: Entitlement, b: Bounds, ask: Ask, now: _dt.datetime) -> Terms:
    wanted = tuple(dict.fromkeys(ask.scopes)) if ask.scopes else b.scopes
    extra = [s for s in wanted if s not in b.scopes]
    if extra or not wanted:
        raise PermissionDeniedError(
            f"Scope(s) {extra or list(wanted)} are not granted by the entitlement"
            f"{' or its approval' if b.uses_left is not None else ''}.",
            reason="scope-not-allowed",
        )
    if ask.lifetime_s is not None and ask.lifetime_s > ent.max_lifetime:
        raise BadRequestError(
            f"lifetime {ask.lifetime_s}s is above the maximum of {ent.max_lifetime}s for this service account.",
            reason="lifetime-too-long",
        )
    left = int((b.not_after - now).total_seconds())
    if left < 1:
        raise PermissionDeniedError("The approval window ends now; ask for a new request.", reason="approval-expired")
    return Terms(wanted, min(ask.lifetime_s or ent.max_lifetime, left))


def reserve_until(grant: Grant, now: _dt.datetime, deadline_s: float) -> _dt.datetime:
    return now + _dt.timedelta(seconds=grant.terms.lifetime_s + deadline_s)


def mint(iam: IamCredentials, grant: Grant, reason: str) -> Minted:
    tok = iam.generate_access_token(
        grant.service_account, grant.terms.scopes, grant.terms.lifetime_s, grant.delegates, reason=reason
    )
    return Minted(tok.token, tok.expire_time)


def check(minted: Minted, grant: Grant, slack_s: float) -> None:
    if minted.expire_time is None or minted.expire_time > grant.bounds.not_after + _dt.timedelta(seconds=slack_s):
        raise OutOfBoundsError(f"access token expires {minted.expire_time}, grant ends {grant.bounds.not_after}")


def details(grant: Grant) -> dict[str, Any]:
    return {"scopes": list(grant.terms.scopes), "lifetime_s": grant.terms.lifetime_s}


def audit(ask: Ask) -> dict[str, Any]:
    return {"scopes": ask.scopes, "lifetime_s": ask.lifetime_s}


def response(minted: Minted, grant: Grant, issuance_id: str, now: _dt.datetime) -> dict[str, Any]:
    assert minted.expire_time is not None
    return {
        "access_token": minted.credential,
        "token_type": "Bearer",
        "expire_time": clock.rfc3339(minted.expire_time),
        # IAM states expiry in whole seconds (cut, not rounded): a 600 s token reads 600, never 599.
        "expires_in": max(0, min(grant.terms.lifetime_s, math.ceil((minted.expire_time - now).total_seconds()))),
        "issuance_id": issuance_id,
        "service_account": grant.service_account,
    }
