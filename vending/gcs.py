"""Cloud Storage V4 signing: parse and check a string-to-sign and its canonical request.

A V4 string-to-sign carries only a hash of the canonical request, so a caller
that wants a signature for a signed URL sends both; we check the hash, the
algorithm, the time and credential scope, and extract the bucket (path-style
``storage.googleapis.com/BUCKET/OBJECT`` or virtual-host ``BUCKET.storage.googleapis.com``)
and when the URL expires, so entitlements can mean "sign URLs for bucket X only".

The format (https://cloud.google.com/storage/docs/authentication/signatures)::

    string-to-sign      GOOG4-RSA-SHA256 \\n TIMESTAMP \\n SCOPE \\n HEX(SHA256(canonical request))
    SCOPE               DATE/LOCATION/storage/goog4_request
    canonical request   METHOD \\n PATH \\n QUERY \\n HEADER:VALUE \\n ... \\n \\n SIGNED_HEADERS \\n PAYLOAD

Cloud Storage rebuilds the string-to-sign from the request it receives (the
``X-Goog-Date`` and ``X-Goog-Credential`` query parameters), so we insist
that they agree with the string-to-sign: the expiry we record is then the
expiry Cloud Storage enforces.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from vending.errors import BadRequestError

ALGORITHM = "GOOG4-RSA-SHA256"
MAX_EXPIRES_S = 604800  # Cloud Storage's limit for V4 signed URLs: 7 days
MAX_SKEW_S = 900  # the string-to-sign's timestamp may be at most 15 minutes from now
_STAMP_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_BUCKET = r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]"
_HOST_RE = re.compile(rf"(?:({_BUCKET})\.)?storage\.googleapis\.com")
_BUCKET_RE = re.compile(_BUCKET)
_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})


@dataclass(frozen=True)
class V4Request:
    """A checked V4 signed-URL request: the bucket, object and method it allows, and when it was signed and expires."""

    bucket: str
    object_path: str
    method: str
    signed_at: _dt.datetime
    expires_at: _dt.datetime


def _bad(message: str) -> BadRequestError:
    return BadRequestError(message, reason="invalid-string-to-sign")


def parse(string_to_sign: bytes, canonical_request: str | None, now: _dt.datetime) -> V4Request:
    """Check a V4 string-to-sign against its canonical request; raise 400 invalid-string-to-sign."""
    try:
        text = string_to_sign.decode("ascii")
    except UnicodeDecodeError as exc:
        raise _bad("payload is not a Cloud Storage V4 string-to-sign (not ASCII).") from exc
    lines = text.split("\n")
    if len(lines) != 4 or lines[0] != ALGORITHM:
        raise _bad(
            f"payload must be a Cloud Storage V4 string-to-sign: {ALGORITHM}, timestamp, "
            "credential scope and canonical request hash on four lines."
        )
    stamp, scope, digest = lines[1], lines[2], lines[3]
    if not _STAMP_RE.fullmatch(stamp):
        raise _bad("the string-to-sign has no valid timestamp (YYYYMMDDTHHMMSSZ).")
    try:
        signed_at = _dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.UTC)
    except ValueError as exc:
        raise _bad("the string-to-sign has no valid timestamp (YYYYMMDDTHHMMSSZ).") from exc
    if abs((signed_at - now).total_seconds()) > MAX_SKEW_S:
        raise _bad(f"the string-to-sign's timestamp is more than {MAX_SKEW_S} seconds from now.")
    parts = scope.split("/")
    if len(parts) != 4 or parts[0] != stamp[:8] or not parts[1] or parts[2] != "storage" or parts[3] != "goog4_request":
        raise _bad("the credential scope must be DATE/LOCATION/storage/goog4_request, with the timestamp's date.")
    if not _HEX64_RE.fullmatch(digest):
        raise _bad("the string-to-sign's last line must be the hex SHA-256 of the canonical request.")
    if canonical_request is None:
        raise _bad("canonical_request is required with a Cloud Storage V4 string-to-sign.")
    if hashlib.sha256(canonical_request.encode("utf-8")).hexdigest() != digest:
        raise _bad("canonical_request does not match the hash in the string-to-sign.")

    req = canonical_request.split("\n")
    # METHOD, PATH, QUERY, >= 1 header line, the blank line, SIGNED_HEADERS, PAYLOAD.
    if len(req) < 7 or "" not in req[3:]:
        raise _bad("canonical_request is not a V4 canonical request.")
    method, path, query = req[0], req[1], req[2]
    blank = req.index("", 3)
    header_lines, rest = req[3:blank], req[blank + 1 :]
    if method not in _METHODS or len(rest) != 2 or not header_lines:
        raise _bad("canonical_request is not a V4 canonical request.")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip().lower() or name in headers:
            raise _bad("canonical_request headers must be distinct lowercase name:value lines.")
        headers[name] = value.strip()
    signed_headers = rest[0].split(";")
    if signed_headers != sorted(headers) or "host" not in headers:
        raise _bad("canonical_request must sign the host header, and list exactly its headers as signed headers.")

    m = _HOST_RE.fullmatch(headers["host"])
    if not m:
        raise _bad("canonical_request must sign the host header of storage.googleapis.com.")
    if not path.startswith("/") or path.startswith("//"):
        raise _bad("canonical_request's path must be an absolute path.")
    if m.group(1):  # virtual-host style: the bucket is in the host
        bucket, object_path = m.group(1), path[1:]
    else:  # path-style: /BUCKET/OBJECT
        bucket, _, object_path = path[1:].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise _bad("canonical_request names no valid bucket.")

    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise _bad("canonical_request's query string is malformed.") from exc
    for key, value in pairs:
        if key in params:
            raise _bad(f"canonical_request's query string repeats {key}.")
        params[key] = value
    if params.get("X-Goog-Algorithm") != ALGORITHM:
        raise _bad(f"X-Goog-Algorithm must be {ALGORITHM}.")
    if params.get("X-Goog-Date") != stamp:
        raise _bad("X-Goog-Date must equal the string-to-sign's timestamp.")
    credential = params.get("X-Goog-Credential", "")
    if credential.partition("/")[2] != scope or not credential.partition("/")[0]:
        raise _bad("X-Goog-Credential must be SIGNER/ followed by the string-to-sign's credential scope.")
    if params.get("X-Goog-SignedHeaders") != rest[0]:
        raise _bad("X-Goog-SignedHeaders must equal the canonical request's signed headers.")
    raw_expires = params.get("X-Goog-Expires", "")
    if not re.fullmatch(r"[0-9]{1,7}", raw_expires):
        raise _bad("canonical_request has no X-Goog-Expires (whole seconds).")
    expires = int(raw_expires)
    if not 1 <= expires <= MAX_EXPIRES_S:
        raise _bad(f"X-Goog-Expires must be between 1 and {MAX_EXPIRES_S} seconds.")
    expires_at = signed_at + _dt.timedelta(seconds=expires)
    if expires_at <= now:
        raise _bad("the signed URL would already have expired (X-Goog-Date + X-Goog-Expires is in the past).")
    return V4Request(bucket, object_path, method, signed_at, expires_at)
