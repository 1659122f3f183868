"""Signatures over bytes (IAM ``signBlob``): Cloud Storage V4 signed URLs, or raw blobs.

A signature over arbitrary bytes is the key's whole power: ``signBlob`` over
``base64url(header).base64url(claims)`` is a JWT, over a V4 string-to-sign a
signed URL for any method and up to 7 days. So:

- a payload that is a JWT signing input (two base64url segments, the first a
  JSON object) is always refused (``payload-is-jwt``): signed JWTs have their
  own endpoint and rules;
- with ``gcs_v4_only`` (the default way to use this kind) the payload must be a
  V4 string-to-sign for a listed bucket and method, and the URL's expiry is
  bounded by ``not_after`` like every other credential;
- raw signing needs ``acknowledge_raw_signing`` in the entitlement (loading such
  a policy logs a warning), and even then a signed-URL string-to-sign (V4 or
  V2) is refused (``payload-is-signed-url``): URLs go through the V4 rules.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import re
from dataclasses import dataclass
from typing import Any

from vending import clock, gcs, inputs
from vending.config import Entitlement, matches
from vending.errors import BadRequestError, PermissionDeniedError
from vending.grant import Bounds, Grant
from vending.iam import IamCredentials
from vending.kinds import Minted, OutOfBoundsError

NAME = "signed_blob"
PATH = "/v1/signed-blobs"
MAX_BODY_BYTES = inputs.MAX_BLOB_BODY_BYTES
RAW_RECORD_HORIZON_S = 43200  # a raw signature has no expiry; its reservation is kept this long

Ask = inputs.SignedBlobBody

_B64URL = re.compile(rb"[A-Za-z0-9_\-]+={0,2}")
_V2_EXPIRY = re.compile(rb"[0-9]{1,12}")


@dataclass(frozen=True)
class Terms:
    """What the grant lets IAM sign: these bytes (a checked V4 URL's, or a raw blob)."""

    payload: bytes
    url: gcs.V4Request | None  # a V4 signed URL, or None for a raw blob


def decode(body: dict[str, Any]) -> Ask:
    return inputs.signed_blob_body(body)


def bounds(ent: Entitlement, now: _dt.datetime) -> Bounds:
    rules = ent.signed_blob
    assert rules is not None
    return Bounds(
        not_after=now + _dt.timedelta(seconds=rules.max_ttl),
        max_payload_bytes=rules.max_payload_bytes,
        buckets=rules.buckets,
        raw_blobs=rules.acknowledge_raw_signing,
    )


def is_jwt_signing_input(payload: bytes) -> bool:
    """``base64url(header).base64url(claims)``: two or more dot-separated base64url segments, the first a JSON object."""
    parts = payload.strip().split(b".")
    if len(parts) < 2 or not _B64URL.fullmatch(parts[0]):
        return False
    head = parts[0].rstrip(b"=")
    try:
        header = json.loads(base64.urlsafe_b64decode(head + b"=" * (-len(head) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict)


def is_signed_url_input(payload: bytes) -> bool:
    """A Cloud Storage V4 string-to-sign, or a V2 one (VERB, MD5, type, expiry, resource lines)."""
    if payload.startswith((b"GOOG4-", b"GOOG1\n")):
        return True
    lines = payload.split(b"\n")
    return (
        len(lines) >= 5
        and lines[0] in (b"GET", b"HEAD", b"PUT", b"POST", b"DELETE")
        and _V2_EXPIRY.fullmatch(lines[3]) is not None
    )


def terms(ent: Entitlement, b: Bounds, ask: Ask, now: _dt.datetime) -> Terms:
    if len(ask.payload) > b.max_payload_bytes:
        raise BadRequestError(
            f"payload is {len(ask.payload)} bytes; the maximum is {b.max_payload_bytes}.", reason="payload-too-large"
        )
    if is_jwt_signing_input(ask.payload):
        raise PermissionDeniedError(
            "The payload is a JWT signing input; use POST /v1/signed-jwts, whose claims the entitlement bounds.",
            reason="payload-is-jwt",
        )
    if not b.buckets:
        if not b.raw_blobs:
            raise PermissionDeniedError(
                "This entitlement allows no raw blob signing.", reason="raw-signing-not-allowed"
            )
        if is_signed_url_input(ask.payload):
            raise PermissionDeniedError(
                "The payload is a Cloud Storage signed-URL string-to-sign; only an "
                "entitlement with gcs_v4_only and buckets may sign URLs.",
                reason="payload-is-signed-url",
            )
        return Terms(ask.payload, None)
    url = gcs.parse(ask.payload, ask.canonical_request, now)
    rule = next((r for r in b.buckets if matches(r.bucket, url.bucket)), None)
    if rule is None:
        raise PermissionDeniedError(
            f"Signing URLs for bucket {url.bucket!r} is not allowed.", reason="bucket-not-allowed"
        )
    if url.method not in rule.methods:
        raise PermissionDeniedError(
            f"Signing {url.method} URLs for bucket {url.bucket!r} is not allowed (allowed: {', '.join(rule.methods)}).",
            reason="method-not-allowed",
        )
    if url.expires_at > b.not_after:
        left = max(0, int((b.not_after - now).total_seconds()))
        raise BadRequestError(
            f"The signed URL would expire {int((url.expires_at - now).total_seconds())}s from now; "
            f"the maximum is {left}s.",
            reason="expires-too-far",
        )
    return Terms(ask.payload, url)


def reserve_until(grant: Grant, now: _dt.datetime, deadline_s: float) -> _dt.datetime:
    url = grant.terms.url
    return url.expires_at if url is not None else now + _dt.timedelta(seconds=RAW_RECORD_HORIZON_S)


def mint(iam: IamCredentials, grant: Grant, reason: str) -> Minted:
    sig = iam.sign_blob(grant.service_account, grant.terms.payload, grant.delegates, reason=reason)
    url = grant.terms.url
    if url is not None:  # a signed URL: live until the URL expires
        return Minted(sig.value, url.expires_at, key_id=sig.key_id)
    return Minted(sig.value, None, key_id=sig.key_id, state="signed")


def check(minted: Minted, grant: Grant, slack_s: float) -> None:
    url = grant.terms.url
    if url is not None and (minted.expire_time is None or minted.expire_time > grant.bounds.not_after):
        raise OutOfBoundsError("signed URL expires past the grant's end")
    if url is None and not grant.bounds.raw_blobs:
        raise OutOfBoundsError("raw signature without an acknowledged raw-signing grant")


def details(grant: Grant) -> dict[str, Any]:
    out: dict[str, Any] = {"payload_sha256": _sha256(grant.terms.payload), "payload_bytes": len(grant.terms.payload)}
    url = grant.terms.url
    if url is not None:
        out.update(bucket=url.bucket, object=url.object_path[:1024], method=url.method)
    return out


def audit(ask: Ask) -> dict[str, Any]:
    return {"payload_bytes": len(ask.payload), "payload_sha256": _sha256(ask.payload)}


def response(minted: Minted, grant: Grant, issuance_id: str, now: _dt.datetime) -> dict[str, Any]:
    out: dict[str, Any] = {
        "signed_blob": minted.credential,
        "key_id": minted.key_id,
        "issuance_id": issuance_id,
        "service_account": grant.service_account,
    }
    if minted.expire_time is not None:
        out["expire_time"] = clock.rfc3339(minted.expire_time)
    return out


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
