"""The decision as an immutable value: what one request may get, and nothing more.

A ``Grant`` is made by ``policy.decide`` for one request and travels with it
through the vend pipeline (``vending.vend``): the caller as an issuer-qualified
identity, the entitlement, the target and its delegation chain, the credential
kind, the ``Bounds`` that apply to that kind and the kind's exact ``terms``
(what will be asked of IAM, already inside the bounds). The ledger records it
and every credential minted is checked against it before it is returned.

The promise, stated once: no credential may carry more than its grant, and
no grant more than its entitlement and (where there is one) its approval.
``Bounds.narrow`` is the only way to change bounds and it can only shrink
them; an approval narrows a grant's bounds to its window and scopes
(``ApprovalUse.narrow``), nothing widens them.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, replace
from typing import Any

from vending import clock
from vending.config import BucketRule, Matcher


@dataclass(frozen=True)
class Bounds:
    """Every limit that applies to one credential kind of one entitlement.

    ``not_after`` binds every kind: no credential of the grant may be valid past it.
    """

    not_after: _dt.datetime
    scopes: tuple[str, ...] = ()  # access tokens: OAuth scopes allowed
    audiences: tuple[Matcher, ...] = ()  # ID tokens and signed JWTs: allowed audiences
    claims: tuple[str, ...] = ()  # signed JWTs: claims a caller may set besides aud and exp
    max_payload_bytes: int = 0  # signed blobs
    buckets: tuple[BucketRule, ...] = ()  # signed blobs: V4 URLs for these buckets and methods only
    raw_blobs: bool = False  # signed blobs: raw signing acknowledged by the entitlement
    uses_left: int | None = None  # approval uses left; None without an approval

    def narrow(
        self,
        *,
        not_after: _dt.datetime | None = None,
        scopes: tuple[str, ...] | None = None,
        uses_left: int | None = None,
    ) -> Bounds:
        """The same bounds or tighter: an earlier ``not_after``, a subset of scopes, fewer uses."""
        return replace(
            self,
            not_after=min(self.not_after, not_after) if not_after is not None else self.not_after,
            scopes=tuple(s for s in self.scopes if s in scopes) if scopes is not None else self.scopes,
            uses_left=(uses_left if self.uses_left is None else min(self.uses_left, uses_left))
            if uses_left is not None
            else self.uses_left,
        )

    def record(self) -> dict[str, Any]:
        """The ledger's copy: plain values only."""
        out: dict[str, Any] = {"not_after": self.not_after}
        if self.scopes:
            out["scopes"] = list(self.scopes)
        if self.audiences:
            out["audiences"] = [_matcher_text(m) for m in self.audiences]
        if self.claims:
            out["claims"] = list(self.claims)
        if self.max_payload_bytes:
            out["max_payload_bytes"] = self.max_payload_bytes
        if self.buckets:
            out["buckets"] = [{"bucket": _matcher_text(b.bucket), "methods": list(b.methods)} for b in self.buckets]
        if self.raw_blobs:
            out["raw_blobs"] = True
        if self.uses_left is not None:
            out["uses_left"] = self.uses_left
        return out


def _matcher_text(m: Matcher) -> str:
    return m if isinstance(m, str) else f"pattern:{m.pattern}"


@dataclass(frozen=True)
class ApprovalUse:
    """An ACTIVE access request, read at ``version``, that a vend may spend one use of.

    Made by ``approvals.Approvals.check_use``; the reservation commits only if the
    request is still at ``version`` (``approvals.Approvals.use_write``).
    """

    request_id: str
    entitlement: str
    requester: str  # qualified identity
    not_after: _dt.datetime  # window end minus one second
    scopes: tuple[str, ...]  # what the approvers approved
    uses: int  # uses reserved so far
    max_uses: int
    break_glass: bool
    version: str

    def narrow(self, bounds: Bounds) -> Bounds:
        return bounds.narrow(not_after=self.not_after, scopes=self.scopes, uses_left=self.max_uses - self.uses)


@dataclass(frozen=True)
class Grant:
    """What the policy (and an approval) allow for this one request."""

    caller: str  # issuer-qualified identity: ISSUER/IDENTITY
    issuer: str
    subject: str
    entitlement: str
    kind: str
    service_account: str
    delegates: tuple[str, ...]
    bounds: Bounds
    terms: Any  # the kind's exact request inside ``bounds`` (vending.kinds.*.Terms)
    decided_at: _dt.datetime
    request_id: str | None = None
    break_glass: bool = False

    def seconds_left(self, now: _dt.datetime | None = None) -> int:
        """Whole seconds from ``now`` to ``not_after`` (never negative)."""
        return max(0, int((self.bounds.not_after - (now or clock.now())).total_seconds()))
