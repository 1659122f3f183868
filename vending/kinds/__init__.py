"""Credential kinds: one module each, all served by the one pipeline (``vending.vend``).

Each kind module declares, for its endpoint:

- ``NAME``, ``PATH`` and ``MAX_BODY_BYTES``;
- ``decode(body) -> Ask``: its request fields, validated (400 on anything off);
- ``bounds(entitlement, now) -> Bounds``: what the entitlement allows for this kind;
- ``terms(bounds, ask, now) -> Terms``: the exact request inside the bounds, or a refusal;
- ``reserve_until(grant, deadline_s) -> datetime``: the latest a credential of this grant
  could be valid if IAM answered at the very end of its deadline (the ``unconfirmed`` horizon);
- ``mint(iam, grant, reason) -> Minted``: its IAM call;
- ``check(minted, grant, slack_s)``: the minted credential against its grant;
- ``details(grant)``: ledger fields; ``audit(ask)``: audit-line fields;
- ``response(minted, grant, issuance_id, now)``: the JSON answer.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from types import ModuleType

from vending.errors import UpstreamError


@dataclass(frozen=True)
class Minted:
    """What IAM returned for one vend: the credential, when it expires, the signing key, and the ledger state it leaves."""

    credential: str
    expire_time: _dt.datetime | None
    key_id: str | None = None
    state: str = "active"


class OutOfBoundsError(UpstreamError):
    """IAM returned a credential its grant does not allow: it is withheld, never returned."""

    reason = "credential-out-of-bounds"

    def __init__(self, detail: str) -> None:
        super().__init__(
            "The IAM Credentials API returned a credential outside the grant; it was withheld.", detail=detail
        )


def registry() -> dict[str, ModuleType]:
    from vending.kinds import access_token, id_token, signed_blob, signed_jwt

    return {m.NAME: m for m in (access_token, id_token, signed_jwt, signed_blob)}


def decode_jwt_part(token: str, index: int) -> object:
    """A segment of a compact JWT returned by IAM, JSON-decoded (None if it is not one)."""
    import base64
    import json

    try:
        part = token.split(".")[index]
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError, TypeError):
        return None
