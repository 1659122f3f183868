"""Cloud Storage V4 signing: parse and check a string-to-sign and its canonical request.

A V4 string-to-sign carries only a hash of the canonical request, so a caller
that wants a signature for a signed URL sends both; we check the hash, the
algorithm, the time and credential scope, and extract the bucket (path-style
``storage.googleapis.com/BUCKET/OBJECT`` or virtual-host ``BUCKET.storage.googleapis.com``)
and when the URL expires, so entitlements can mean "sign URLs for bucket X only".
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import parse_qs

from vending.errors import BadRequestError

ALGORITHM = "GOOG4-RSA-SHA256"
MAX_EXPIRES_S = 604800  # Cloud Storage's limit for V4 signed URLs: 7 days
MAX_SKEW_S = 900
_HOST_RE = re.compile(r"(?:([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])\.)?storage\.googleapis\.com")


@dataclass(frozen=True)
class V4Request:
    bucket: str
    object_path: str
    method: str
    signed_at: _dt.datetime
    expires_at: _dt.datetime


def _bad(message: str) -> BadRequestError:
    return BadRequestError(message, reason="invalid-string-to-sign")


def parse(string_to_sign: bytes, canonical_request: str | None, now: _dt.datetime) -> V4Request:
    try:
        text = string_to_sign.decode("ascii")
    except UnicodeDecodeError as exc:
        raise _bad("payload is not a Cloud Storage V4 string-to-sign (not ASCII).") from exc
    lines = text.split("\n")
    if len(lines) != 4 or lines[0] != ALGORITHM:
        raise _bad(f"payload must be a Cloud Storage V4 string-to-sign starting with {ALGORITHM}.")
    stamp, scope, digest = lines[1], lines[2], lines[3]
    try:
        signed_at = _dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.timezone.utc)
    except ValueError as exc:
        raise _bad("the string-to-sign has no valid timestamp.") from exc
    if abs((signed_at - now).total_seconds()) > MAX_SKEW_S:
        raise _bad("the string-to-sign's timestamp is more than 15 minutes from now.")
    parts = scope.split("/")
    if len(parts) != 4 or parts[0] != stamp[:8] or parts[2] != "storage" or parts[3] != "goog4_request":
        raise _bad("the credential scope must be DATE/LOCATION/storage/goog4_request.")
    if canonical_request is None:
        raise _bad("canonical_request is required with a Cloud Storage V4 string-to-sign.")
    if hashlib.sha256(canonical_request.encode("utf-8")).hexdigest() != digest:
        raise _bad("canonical_request does not match the hash in the string-to-sign.")
    req = canonical_request.split("\n")
    if len(req) < 6:
        raise _bad("canonical_request is not a V4 canonical request.")
    method, path, query = req[0], req[1], req[2]
    headers = {}
    for line in req[3:]:
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    m = _HOST_RE.fullmatch(headers.get("host", ""))
    if not m:
        raise _bad("canonical_request must sign the host header of storage.googleapis.com.")
    if m.group(1):
        bucket, object_path = m.group(1), path.lstrip("/")
    else:
        bucket, _, object_path = path.lstrip("/").partition("/")
    if not bucket:
        raise _bad("canonical_request names no bucket.")
    params = parse_qs(query, keep_blank_values=True)
    try:
        expires = int(params["X-Goog-Expires"][0])
    except (KeyError, ValueError, IndexError) as exc:
        raise _bad("canonical_request has no X-Goog-Expires.") from exc
    if not 1 <= expires <= MAX_EXPIRES_S:
        raise _bad(f"X-Goog-Expires must be between 1 and {MAX_EXPIRES_S} seconds.")
    if params.get("X-Goog-Algorithm", [ALGORITHM])[0] != ALGORITHM:
        raise _bad(f"X-Goog-Algorithm must be {ALGORITHM}.")
    return V4Request(bucket, object_path, method, signed_at, signed_at + _dt.timedelta(seconds=expires))
