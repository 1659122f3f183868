"""Request bodies: decode JSON and validate each field into a typed value.

Every problem raises ``BadRequestError`` with a stable reason naming the
field, before anything is read from or written to storage. Unknown fields
are refused (a typo must not silently change what is granted).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from vending.config import SA_EMAIL_RE, normalize_delegate, parse_duration
from vending.errors import BadRequestError

MAX_BODY_BYTES = 64 * 1024
# signBlob bodies carry a base64 payload of up to 64 KiB (87,384 characters) plus a V4 canonical request.
MAX_BLOB_BODY_BYTES = 128 * 1024
MAX_DURATION_S = 7 * 86400  # no credential or window of this service is longer
_SCOPE_RE = re.compile(r"https://www\.googleapis\.com/auth/[A-Za-z0-9._/-]{1,200}|openid|email|profile")
_ID_RE = re.compile(r"[a-f0-9]{32}")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BadRequestError(f"The body repeats the field {key!r}.", reason="duplicate-field")
        out[key] = value
    return out


def parse_json(raw: bytes, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    if len(raw) > limit:
        raise BadRequestError(f"The body is larger than {limit} bytes.", reason="body-too-large")
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, object_pairs_hook=_reject_duplicates) if text.strip() else None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        if isinstance(exc, BadRequestError):
            raise
        raise BadRequestError("The body is not valid JSON.", reason="invalid-json") from exc
    if not isinstance(body, dict):
        raise BadRequestError("The body must be a JSON object.", reason="invalid-body")
    return body


def check_fields(body: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise BadRequestError(f"Unknown field(s): {', '.join(unknown)}.", reason="unknown-field")
    missing = [f for f in required if body.get(f) is None]
    if missing:
        raise BadRequestError(f"Missing required field(s): {', '.join(missing)}.", reason="missing-field")


def service_account(value: Any) -> str:
    if not isinstance(value, str) or not SA_EMAIL_RE.fullmatch(value):
        raise BadRequestError(
            "service_account must be a service account email (NAME@PROJECT.iam.gserviceaccount.com).",
            reason="invalid-service-account",
        )
    return value


def scopes(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > 20:
        raise BadRequestError("scopes must be a non-empty list of OAuth scope URLs.", reason="invalid-scopes")
    for scope in value:
        if not isinstance(scope, str) or not _SCOPE_RE.fullmatch(scope):
            raise BadRequestError(f"scopes: {str(scope)[:100]!r} is not an OAuth scope.", reason="invalid-scopes")
    return tuple(value)


def lifetime(value: Any, field: str = "lifetime") -> int | None:
    """A duration in the one grammar of the service (``config.parse_duration``): ``600``, ``"600"``,
    ``"600s"``, ``"10m"``, ``"1h"``; whole seconds, strictly positive."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value) if isinstance(value, (int, str)) else None
    except ValueError:
        seconds = None
    if seconds is None or (isinstance(value, str) and value != value.strip()):
        raise BadRequestError(
            f"{field} must be a duration: whole seconds as a number (600) or a string such as "
            f'"600", "600s", "10m" or "1h".',
            reason=f"invalid-{field}",
        )
    if seconds <= 0:
        raise BadRequestError(f"{field} must be larger than zero.", reason=f"invalid-{field}")
    if seconds > MAX_DURATION_S:
        raise BadRequestError(f"{field} must be at most {MAX_DURATION_S}s.", reason=f"invalid-{field}")
    return seconds


def delegates(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 10:
        raise BadRequestError("delegates must be a list of service accounts.", reason="invalid-delegates")
    out = []
    for item in value:
        try:
            out.append(normalize_delegate(item) if isinstance(item, str) else "")
        except ValueError:
            out.append("")
        if not out[-1]:
            raise BadRequestError(
                f"delegates: {str(item)[:100]!r} is not a service account or projects/-/serviceAccounts/EMAIL.",
                reason="invalid-delegates",
            )
    return tuple(out)


def text(value: Any, field: str, *, max_len: int = 500, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if (
        not isinstance(value, str)
        or (required and not value.strip())
        or len(value) > max_len
        or any(ord(c) < 0x20 and c not in "\t" for c in value)
    ):
        raise BadRequestError(
            f"{field} must be a string of at most {max_len} printable characters.",
            reason=f"invalid-{field.replace('_', '-')}",
        )
    return value


def record_id(value: Any, field: str = "request_id") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise BadRequestError(
            f"{field} must be an id as returned by this service.", reason=f"invalid-{field.replace('_', '-')}"
        )
    return value


def boolean(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequestError(f"{field} must be true or false.", reason=f"invalid-{field.replace('_', '-')}")
    return value


def base64_payload(value: Any, field: str = "payload") -> bytes:
    if not isinstance(value, str):
        raise BadRequestError(f"{field} must be a base64 string.", reason="invalid-payload")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"{field} is not valid base64.", reason="invalid-payload") from exc


@dataclass(frozen=True)
class AccessTokenBody:
    """A checked ``POST /v1/access-tokens`` body."""

    service_account: str
    scopes: tuple[str, ...] | None
    lifetime_s: int | None
    delegates: tuple[str, ...] | None
    reason: str | None
    request_id: str | None


def access_token_body(body: dict[str, Any]) -> AccessTokenBody:
    check_fields(body, ("service_account",), ("scopes", "lifetime", "delegates", "reason", "request_id"))
    return AccessTokenBody(
        service_account=service_account(body["service_account"]),
        scopes=scopes(body.get("scopes")),
        lifetime_s=lifetime(body.get("lifetime")),
        delegates=delegates(body.get("delegates")),
        reason=text(body.get("reason"), "reason"),
        request_id=record_id(body.get("request_id")),
    )


@dataclass(frozen=True)
class IdTokenBody:
    """A checked ``POST /v1/id-tokens`` body."""

    service_account: str
    audience: str
    include_email: bool
    delegates: tuple[str, ...] | None
    reason: str | None
    request_id: str | None


def id_token_body(body: dict[str, Any]) -> IdTokenBody:
    check_fields(body, ("service_account", "audience"), ("include_email", "delegates", "reason", "request_id"))
    audience = body["audience"]
    # Shape only: a string of bounded length. Whether it is an acceptable audience (no control
    # characters, exact or anchored full match) is the policy's decision: 403 audience-not-allowed.
    if not isinstance(audience, str) or not audience.strip() or len(audience) > 1000:
        raise BadRequestError(
            "audience must be a non-empty string of at most 1000 characters.", reason="invalid-audience"
        )
    return IdTokenBody(
        service_account(body["service_account"]),
        audience,
        boolean(body.get("include_email"), "include_email"),
        delegates(body.get("delegates")),
        text(body.get("reason"), "reason"),
        record_id(body.get("request_id")),
    )


@dataclass(frozen=True)
class SignedJwtBody:
    """A checked ``POST /v1/signed-jwts`` body."""

    service_account: str
    claims: dict[str, Any]
    delegates: tuple[str, ...] | None
    reason: str | None
    request_id: str | None


def signed_jwt_body(body: dict[str, Any]) -> SignedJwtBody:
    check_fields(body, ("service_account", "claims"), ("delegates", "reason", "request_id"))
    claims = body["claims"]
    if not isinstance(claims, dict):
        raise BadRequestError("claims must be a JSON object.", reason="invalid-claims")
    return SignedJwtBody(
        service_account(body["service_account"]),
        claims,
        delegates(body.get("delegates")),
        text(body.get("reason"), "reason"),
        record_id(body.get("request_id")),
    )


@dataclass(frozen=True)
class SignedBlobBody:
    """A checked ``POST /v1/signed-blobs`` body."""

    service_account: str
    payload: bytes
    canonical_request: str | None
    delegates: tuple[str, ...] | None
    reason: str | None
    request_id: str | None


def signed_blob_body(body: dict[str, Any]) -> SignedBlobBody:
    check_fields(body, ("service_account", "payload"), ("canonical_request", "delegates", "reason", "request_id"))
    payload = base64_payload(body["payload"])
    if not payload:
        raise BadRequestError("payload must not be empty.", reason="invalid-payload")
    canonical_request = body.get("canonical_request")
    # A V4 canonical request is lines separated by "\n": newlines are allowed, other controls are not.
    if canonical_request is not None and (
        not isinstance(canonical_request, str)
        or not canonical_request
        or len(canonical_request) > 16384
        or any((ord(c) < 0x20 and c != "\n") or c == "\x7f" for c in canonical_request)
    ):
        raise BadRequestError(
            "canonical_request must be a Cloud Storage V4 canonical request: at most 16384 "
            "printable characters in lines separated by \\n.",
            reason="invalid-canonical-request",
        )
    return SignedBlobBody(
        service_account(body["service_account"]),
        payload,
        canonical_request,
        delegates(body.get("delegates")),
        text(body.get("reason"), "reason"),
        record_id(body.get("request_id")),
    )
