"""A local, faithful stand-in for the IAM Service Account Credentials API.

It is a real HTTP server (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive)
that speaks the wire format of ``iamcredentials.googleapis.com`` v1 as written
down in ``reference/iamcredentials-api.md``: the four methods
(generateAccessToken, generateIdToken, signBlob, signJwt) with Google's JSON
shapes, error envelope and verbatim error texts, the delegation-chain
permission walk, lifetime rules, real RS256 / RSASSA-PKCS1-v1_5 signatures,
and the public key endpoints (``/service_accounts/v1/metadata/...``,
``/robot/v1/metadata/x509/...``, ``/oauth2/v1/certs``, ``/oauth2/v3/certs``)
so every credential it returns verifies with standard libraries.

It also speaks the three methods of the IAM API (``iam.googleapis.com`` v1,
``projects.serviceAccounts``) the kill switch uses, on the same host:
``POST .../serviceAccounts/{email}:disable`` and ``:enable`` (body ``{}``,
answer ``{}``) and ``GET .../serviceAccounts/{email}`` (the ServiceAccount
resource; ``disabled`` only when true), each needing its permission
(``service_account_admins`` in the policy): 404 for an unknown account, 403
without the permission. A disabled account cannot be impersonated
(generateAccessToken, generateIdToken, signJwt, signBlob answer 400
``FAILED_PRECONDITION``; also as a delegate), and the access tokens the
stand-in minted for it are refused as bearers (401) until it is enabled again,
when those not yet expired work again, as on Google Cloud. Its public keys stay
published: signatures it made stay verifiable.

Use it in-process::

    with IamStandIn(StandInPolicy.load("config/local-iam.yaml")) as iam:
        requests.post(iam.endpoint(email, "generateAccessToken"), ...)

or as a process::

    python -m vending.local.iamcredentials --policy config/local-iam.yaml --port 8081

Test hooks, as Python methods and under ``/_standin/`` over HTTP: fault
injection (429 with ``Retry-After``, 500, 503, added latency, hanging
requests), the list of everything minted (with the raw credential, in memory
only, so tests can prove it leaks nowhere), per-method call counters and
``reset``::

    GET    /_standin/health                 {"status": "ok"}
    GET    /_standin/faults                 current fault and latency
    POST   /_standin/faults                 {"status": 503, "count": 2, "methods": [...], "retry_after_s": 1}
                                            {"hang_seconds": 5, "count": 1} | {"latency_ms": 20} | {"clear": true}
    DELETE /_standin/faults                 clear faults and latency
    GET    /_standin/minted[?include_credentials=true]
    GET    /_standin/calls                  {"calls": {"generateAccessToken": 3, ...}}
    POST   /_standin/reset                  faults, records, counters, disabled accounts (keys and policy stay)
    GET    /_standin/disabled               {"disabled": ["EMAIL", ...]}
    POST   /_standin/callers                {"token": "...", "principal": "EMAIL"}

Faults and hangs apply to the four credential methods, and to the IAM API's
``disable``, ``enable`` and ``get`` only when a fault lists them in ``methods``;
latency to every non-admin response. Admin endpoints take no authentication:
bind to loopback.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as _dt
import email.utils
import hashlib
import json
import logging
import re
import secrets
import signal
import socket
import socketserver
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from vending import clock
from vending.local.iam_policy import (
    DISABLE,
    ENABLE,
    GET,
    GET_ACCESS_TOKEN,
    GET_OPENID_TOKEN,
    IMPLICIT_DELEGATION,
    SIGN_BLOB,
    SIGN_JWT,
    ServiceAccount,
    StandInPolicy,
)

__all__ = ["IamStandIn", "KeyRing", "MintedCredential", "SigningKey", "StandInPolicy", "main"]

log = logging.getLogger(__name__)

DEFAULT_POLICY_PATH = Path("config/local-iam.yaml")

# Method name in the URL -> permission needed on the target (reference §3).
METHOD_PERMISSIONS: Mapping[str, str] = {
    "generateAccessToken": GET_ACCESS_TOKEN,
    "generateIdToken": GET_OPENID_TOKEN,
    "signBlob": SIGN_BLOB,
    "signJwt": SIGN_JWT,
}
# The IAM API's service account methods (the kill switch): name -> permission needed on the account.
ADMIN_PERMISSIONS: Mapping[str, str] = {"disable": DISABLE, "enable": ENABLE, "get": GET}
_RPC_NAMES = {
    "generateAccessToken": "GenerateAccessToken",
    "generateIdToken": "GenerateIdToken",
    "signBlob": "SignBlob",
    "signJwt": "SignJwt",
    "allowedLocations": "GetAllowedLocations",
    "disable": "DisableServiceAccount",
    "enable": "EnableServiceAccount",
    "get": "GetServiceAccount",
}
SERVICE = "iamcredentials.googleapis.com"
ADMIN_SERVICE = "iam.googleapis.com"
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
GOOGLE_ISSUER = "https://accounts.google.com"
ID_TOKEN_LIFETIME_S = 3600
DEFAULT_ACCESS_TOKEN_LIFETIME_S = 3600
SIGNED_JWT_MAX_TTL_S = 43200
CERTS_MAX_AGE_S = 3600
MAX_BODY_BYTES = 8 * 1024 * 1024
_ISSUED_PRUNE_AT = 10_000  # drop expired minted access tokens (usable as bearers) beyond this many
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
CALLER_SCOPES = frozenset({CLOUD_PLATFORM, "https://www.googleapis.com/auth/iam"})
_SHORT_SCOPES = frozenset({"openid", "email", "profile"})
_OAUTH_KEY_NAME = "google-oauth2"

# Verbatim texts (reference §2.2). The signJwt ``exp`` texts are ours: no real text was found.
TEXT_MISSING_CREDENTIALS = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
TEXT_INVALID_CREDENTIALS = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
TEXT_INSUFFICIENT_SCOPES = "Request had insufficient authentication scopes."
TEXT_INVALID_ARGUMENT = "Request contains an invalid argument."
TEXT_PERMISSION_DENIED = "Permission '{permission}' denied on resource (or it may not exist)."
TEXT_NOT_FOUND = "Not found; Gaia id not found for email {email}"
TEXT_ZERO_LIFETIME = "Lifetime of access token must be larger then zero."
TEXT_LIFETIME_TOO_LONG = (
    "Access tokens for service account {email} can not have lifetimes of more than 1 hour. Use the Org Policy "
    "Constraint constraints/iam.allowServiceAccountCredentialLifetimeExtension to allow up to 12 hours."
)
TEXT_UNKNOWN_FIELD = 'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
TEXT_BAD_JSON = "Invalid JSON payload received. Unexpected token."
TEXT_NOT_OBJECT = "Invalid JSON payload received. Expected an object."
TEXT_INVALID_VALUE = "Invalid value at '{field}' ({type}), {value}"
TEXT_JWT_NOT_OBJECT = "Invalid JWT payload: the payload must be a JSON object (a JWT claim set)."
TEXT_JWT_EXP_TYPE = "Invalid JWT payload: the 'exp' claim must be an integer timestamp."
TEXT_JWT_EXP_PAST = "Invalid JWT payload: the 'exp' claim must not be in the past."
TEXT_JWT_EXP_FAR = "Invalid JWT payload: the 'exp' claim must be no more than 12 hours in the future."
# No verbatim texts were found for these two; they are ours.
TEXT_ACCOUNT_DISABLED = "Service account {email} is disabled."
TEXT_ADMIN_NOT_FOUND = "Service account projects/-/serviceAccounts/{email} not found."
TEXT_INTERNAL = "Internal error encountered."
TEXT_UNAVAILABLE = "The service is currently unavailable."
TEXT_QUOTA = (
    "Quota exceeded for quota metric '{metric}' and limit '{limit}' of service "
    "'iamcredentials.googleapis.com' for consumer 'project_number:{number}'."
)

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_FAULT_TEXTS = {
    500: TEXT_INTERNAL,
    502: TEXT_UNAVAILABLE,
    503: TEXT_UNAVAILABLE,
    504: "The request was aborted because it timed out.",
}
FAULT_STATUSES = frozenset({429, *_FAULT_TEXTS})

# Body fields per method: JSON name (camelCase or proto name) -> proto field name.
_COMMON_FIELDS = {"name": "name", "delegates": "delegates"}
_BODY_FIELDS: Mapping[str, Mapping[str, str]] = {
    "generateAccessToken": {**_COMMON_FIELDS, "scope": "scope", "lifetime": "lifetime"},
    "generateIdToken": {
        **_COMMON_FIELDS,
        "audience": "audience",
        "includeEmail": "include_email",
        "include_email": "include_email",
        # Undocumented but accepted by the real API (reference §4.4).
        "useEmailAzp": "use_email_azp",
        "use_email_azp": "use_email_azp",
    },
    "signBlob": {**_COMMON_FIELDS, "payload": "payload"},
    "signJwt": {**_COMMON_FIELDS, "payload": "payload"},
}
_FIELD_TYPES = {
    "name": "TYPE_STRING",
    "delegates": "TYPE_STRING",
    "scope": "TYPE_STRING",
    "lifetime": "type.googleapis.com/google.protobuf.Duration",
    "audience": "TYPE_STRING",
    "include_email": "TYPE_BOOL",
    "use_email_azp": "TYPE_BOOL",
}
_REPEATED = frozenset({"delegates", "scope"})
_DURATION_RE = re.compile(r"(-)?([0-9]+)(?:\.([0-9]{1,9}))?s")
_API_PATH_RE = re.compile(r"/v1/projects/([^/]+)/serviceAccounts/([^/]+):([A-Za-z]+)")
_LOCATIONS_PATH_RE = re.compile(r"/v1/projects/([^/]+)/serviceAccounts/([^/:]+)/allowedLocations")
_ACCOUNT_PATH_RE = re.compile(r"/v1/projects/([^/]+)/serviceAccounts/([^/:]+)")
_KEYS_PATH_RE = re.compile(
    r"/(?:service_accounts/v1/metadata/(x509|jwk|raw)|service_accounts/v1/(jwk)|robot/v1/metadata/(x509))/([^/]+)"
)
_DELEGATE_RE = re.compile(r"projects/([^/]+)/serviceAccounts/([^/]+)")


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A Google-style error response: ``{"error": {code, message, status, details}}``."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        status: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS_NAMES.get(code, "UNKNOWN")
        self.details = details or []
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def _error_info(reason: str, domain: str, metadata: Mapping[str, str]) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": domain,
        "metadata": dict(metadata),
    }


def _bad_request(message: str, field_name: str | None = None) -> ApiError:
    violation: dict[str, str] = {"description": message}
    if field_name is not None:
        violation = {"field": field_name, "description": message}
    return ApiError(
        400, message, details=[{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}]
    )


def _invalid_value(proto_field: str, value: Any, type_name: str | None = None) -> ApiError:
    text = TEXT_INVALID_VALUE.format(
        field=proto_field, type=type_name or _FIELD_TYPES.get(proto_field, "TYPE_STRING"), value=json.dumps(value)
    )
    return _bad_request(text, proto_field)


def _permission_denied(permission: str) -> ApiError:
    return ApiError(
        403,
        TEXT_PERMISSION_DENIED.format(permission=permission),
        details=[_error_info("IAM_PERMISSION_DENIED", "iam.googleapis.com", {"permission": permission})],
    )


def _not_found(email: str) -> ApiError:
    return ApiError(404, TEXT_NOT_FOUND.format(email=email))


# --------------------------------------------------------------------------- keys


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


class SigningKey:
    """One RSA 2048 key pair with a 40-hex ``key_id`` (like a system-managed key)."""

    def __init__(self, subject: str, private_key: rsa.RSAPrivateKey) -> None:
        self.subject = subject
        self.private_key = private_key
        spki = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = hashlib.sha1(spki, usedforsecurity=False).hexdigest()
        self._certificate_pem: str | None = None
        self._lock = threading.Lock()

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 over ``data``."""
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def sign_jwt(self, header: Mapping[str, Any], payload: bytes) -> str:
        """A compact RS256 JWS of the raw ``payload`` bytes."""
        signing_input = _b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + _b64url(payload)
        return signing_input + "." + _b64url(self.sign(signing_input.encode("ascii")))

    def certificate_pem(self) -> str:
        """A self-signed X.509 certificate for the public key (built once)."""
        with self._lock:
            if self._certificate_pem is None:
                now = clock.now()
                name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.subject)])
                cert = (
                    x509.CertificateBuilder()
                    .subject_name(name)
                    .issuer_name(name)
                    .public_key(self.public_key)
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - _dt.timedelta(days=1))
                    .not_valid_after(now + _dt.timedelta(days=3650))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                    .sign(self.private_key, hashes.SHA256())
                )
                self._certificate_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
            return self._certificate_pem

    def jwk(self) -> dict[str, str]:
        numbers = self.public_key.public_numbers()
        return {
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.key_id,
            "n": _b64url(_int_bytes(numbers.n)),
            "e": _b64url(_int_bytes(numbers.e)),
        }

    def raw(self) -> dict[str, str]:
        numbers = self.public_key.public_numbers()
        return {
            "algorithm": "RSA",
            "modulus": base64.b64encode(_int_bytes(numbers.n)).decode("ascii"),
            "exponent": base64.b64encode(_int_bytes(numbers.e)).decode("ascii"),
            "keyid": self.key_id,
        }


class KeyRing:
    """Signing keys by owner (a service account email, or the Google OAuth signer).

    Keys are generated lazily on first use and cached; with ``key_dir`` the
    current key of each owner is kept as a PEM file, so restarts keep keys.
    Rotation keeps older keys published (the real keys stay valid >= 12 h).
    """

    def __init__(self, key_dir: str | Path | None = None) -> None:
        self.key_dir = Path(key_dir) if key_dir is not None else None
        self._keys: dict[str, list[SigningKey]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def current(self, owner: str) -> SigningKey:
        """The key that signs for ``owner`` now (created on first use)."""
        keys = self._keys.get(owner)
        if keys:
            return keys[-1]
        with self._lock_for(owner):
            keys = self._keys.get(owner)
            if not keys:
                keys = [self._load_or_create(owner)]
                self._keys[owner] = keys
            return keys[-1]

    def published(self, owner: str) -> list[SigningKey]:
        """Every key of ``owner`` whose public half is still served, newest last."""
        self.current(owner)
        return list(self._keys[owner])

    def rotate(self, owner: str) -> SigningKey:
        """Start signing with a fresh key; older keys stay published."""
        self.current(owner)
        with self._lock_for(owner):
            key = self._generate(owner)
            self._keys[owner] = [*self._keys[owner], key]
            self._persist(owner, key)
            return key

    def _lock_for(self, owner: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(owner, threading.Lock())

    def _path(self, owner: str) -> Path | None:
        if self.key_dir is None:
            return None
        return self.key_dir / (re.sub(r"[^A-Za-z0-9@._-]", "_", owner) + ".pem")

    def _load_or_create(self, owner: str) -> SigningKey:
        path = self._path(owner)
        if path is not None and path.exists():
            private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(private_key, rsa.RSAPrivateKey):
                raise ValueError(f"{path}: not an RSA private key")
            return SigningKey(owner, private_key)
        key = self._generate(owner)
        self._persist(owner, key)
        return key

    @staticmethod
    def _generate(owner: str) -> SigningKey:
        return SigningKey(owner, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def _persist(self, owner: str, key: SigningKey) -> None:
        path = self._path(owner)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.touch(mode=0o600)
        tmp.write_bytes(pem)
        tmp.replace(path)


# --------------------------------------------------------------------------- records and faults


@dataclass(frozen=True)
class MintedCredential:
    """One credential the stand-in returned. ``credential`` is the raw value (memory only)."""

    method: str
    target: str  # service account email
    delegates: tuple[str, ...]  # canonical, in order: projects/-/serviceAccounts/EMAIL
    caller: str
    issued_at: _dt.datetime
    expire_time: _dt.datetime | None
    sha256: str
    key_id: str | None
    credential: str = field(repr=False)
    scopes: tuple[str, ...] = ()  # generateAccessToken
    audience: str | None = None  # generateIdToken
    request_reason: str | None = None  # the X-Goog-Request-Reason header, if sent

    def to_json(self, *, include_credential: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "method": self.method,
            "target": self.target,
            "delegates": list(self.delegates),
            "caller": self.caller,
            "issuedAt": clock.rfc3339(self.issued_at),
            "expireTime": clock.rfc3339(self.expire_time) if self.expire_time else None,
            "sha256": self.sha256,
            "keyId": self.key_id,
            "scopes": list(self.scopes),
            "audience": self.audience,
            "requestReason": self.request_reason,
        }
        if include_credential:
            data["credential"] = self.credential
        return data


@dataclass
class _Fault:
    kind: str  # "status" or "hang"
    status: int = 0
    hang_s: float = 0.0
    remaining: int | None = None  # None: until cleared
    methods: frozenset[str] | None = None
    retry_after_s: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status": self.status or None,
            "hangSeconds": self.hang_s or None,
            "remaining": self.remaining,
            "methods": sorted(self.methods) if self.methods else None,
            "retryAfterSeconds": self.retry_after_s if self.status == 429 else None,
        }


@dataclass
class _Reply:
    status: int
    body: Any = None  # JSON-serialisable; None for no body
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float | None = None  # close without answering after this long
    hang_release: threading.Event | None = None
    latency_s: float = 0.0


@dataclass(frozen=True)
class _Call:
    """Who asked for what: the authorized parts of one API request."""

    caller: str
    target: ServiceAccount
    delegates: tuple[str, ...]  # canonical: projects/-/serviceAccounts/EMAIL
    request_reason: str | None


@dataclass
class _IssuedToken:
    email: str
    expire_epoch: float
    scopes: frozenset[str]


# --------------------------------------------------------------------------- request parsing


def _parse_bool(proto_field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise _invalid_value(proto_field, value)


def _parse_duration_ns(value: Any) -> int:
    """Nanoseconds from a proto3 JSON Duration string such as ``"300s"`` or ``"3.5s"``."""
    if not isinstance(value, str):
        raise _invalid_value("lifetime", value)
    match = _DURATION_RE.fullmatch(value)
    if match is None:
        raise _invalid_value("lifetime", value)
    sign, whole, frac = match.groups()
    nanos = int(whole) * 1_000_000_000 + int((frac or "").ljust(9, "0"))
    return -nanos if sign else nanos


def _parse_bytes(value: Any) -> bytes:
    """Proto3 JSON bytes: standard or URL-safe base64, padding optional."""
    if not isinstance(value, str):
        raise _invalid_value("payload", value, "TYPE_BYTES")
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid_value("payload", value, "TYPE_BYTES") from exc


def _parse_body(method: str, raw: bytes) -> dict[str, Any]:
    """Decode and type-check a request body; returns proto field name -> value."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad_request(TEXT_BAD_JSON) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _bad_request(TEXT_NOT_OBJECT)
    known = _BODY_FIELDS[method]
    out: dict[str, Any] = {}
    for key, value in data.items():
        proto_field = known.get(key)
        if proto_field is None:
            raise _bad_request(TEXT_UNKNOWN_FIELD.format(name=key))
        if value is None:
            continue
        if proto_field in _REPEATED:
            if not isinstance(value, list):
                raise _invalid_value(proto_field, value)
            for item in value:
                if not isinstance(item, str):
                    raise _invalid_value(proto_field, item)
            out[proto_field] = list(value)
        elif proto_field == "lifetime":
            out[proto_field] = _parse_duration_ns(value)
        elif proto_field in ("include_email", "use_email_azp"):
            out[proto_field] = _parse_bool(proto_field, value)
        elif proto_field == "payload" and method == "signBlob":
            out[proto_field] = _parse_bytes(value)
        else:
            if not isinstance(value, str):
                raise _invalid_value(proto_field, value)
            out[proto_field] = value
    return out


def _valid_scope(scope: str) -> bool:
    return scope == "" or scope in _SHORT_SCOPES or (scope.startswith("https://") and " " not in scope)


# --------------------------------------------------------------------------- the stand-in


class IamStandIn:
    """The stand-in server: start/stop, test hooks and the request logic.

    ``policy`` says who may do what; ``host``/``port`` where to listen (port 0
    picks a free one); ``key_dir`` optionally keeps keys across restarts;
    ``certs_max_age_s`` is the Cache-Control max-age of the key endpoints;
    ``max_minted`` bounds the in-memory record list (oldest dropped first).
    """

    def __init__(
        self,
        policy: StandInPolicy,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key_dir: str | Path | None = None,
        certs_max_age_s: int = CERTS_MAX_AGE_S,
        max_minted: int = 100_000,
    ) -> None:
        self._policy = policy
        self.host = host
        self._requested_port = port
        self.keys = KeyRing(key_dir)
        self.certs_max_age_s = certs_max_age_s
        self._lock = threading.Lock()
        self._fault: _Fault | None = None
        self._latency_s = 0.0
        self._hang_release = threading.Event()
        self._minted: deque[MintedCredential] = deque(maxlen=max_minted)
        self._issued: dict[str, _IssuedToken] = {}
        self._prune_at = _ISSUED_PRUNE_AT
        self._calls: Counter[str] = Counter()
        self._disabled: set[str] = set()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ---- lifecycle ------------------------------------------------------

    def start(self) -> Self:
        """Bind and serve in a daemon thread. Returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError("IAM stand-in already started")
        self._stopping.clear()
        self._httpd = _HttpServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"iam-standin:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging requests and close every connection."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        self._release_hangs()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("IAM stand-in not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (no trailing slash)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def endpoint(self, service_account: str, method: str) -> str:
        """Full URL of ``method`` for ``service_account`` (email or unique id)."""
        return f"{self.url}/v1/projects/-/serviceAccounts/{service_account}:{method}"

    @property
    def oauth_certs_url(self) -> str:
        """Where ID-token verifiers fetch the x509 map (like googleapis.com/oauth2/v1/certs)."""
        return f"{self.url}/oauth2/v1/certs"

    def x509_url(self, email: str) -> str:
        return f"{self.url}/service_accounts/v1/metadata/x509/{email}"

    def jwk_url(self, email: str) -> str:
        return f"{self.url}/service_accounts/v1/metadata/jwk/{email}"

    # ---- policy ---------------------------------------------------------

    @property
    def policy(self) -> StandInPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: StandInPolicy) -> None:
        self._policy = policy

    def add_caller(self, token: str, principal: str) -> None:
        """Let bearer ``token`` authenticate as ``principal`` from now on."""
        with self._lock:
            self._policy = self._policy.with_caller(token, principal.lower())

    def grant_token_creator(self, member: str, target: str) -> None:
        """Grant ``member`` roles/iam.serviceAccountTokenCreator on ``target``."""
        with self._lock:
            self._policy = self._policy.with_token_creator(member.lower(), target.lower())

    def warm(self) -> None:
        """Create every key now (benchmarks call this so no request pays for it)."""
        self.keys.current(_OAUTH_KEY_NAME).certificate_pem()
        for sa in self._policy.service_accounts:
            self.keys.current(sa.email).certificate_pem()

    def rotate_key(self, email: str) -> str:
        """Rotate ``email``'s system-managed key; returns the new key id."""
        return self.keys.rotate(email.lower()).key_id

    # ---- test hooks -----------------------------------------------------

    def set_fault(
        self, status: int, count: int | None = None, *, methods: set[str] | None = None, retry_after_s: int = 1
    ) -> None:
        """Answer the next ``count`` API requests (all, if None) with ``status``.

        ``status`` is one of 429, 500, 502, 503, 504; ``methods`` limits the
        fault to some of generateAccessToken, generateIdToken, signBlob, signJwt.
        """
        if status not in FAULT_STATUSES:
            raise ValueError(f"fault status must be one of {sorted(FAULT_STATUSES)}, got {status}")
        fault = _Fault(
            "status",
            status=status,
            remaining=_check_count(count),
            methods=_check_methods(methods),
            retry_after_s=int(retry_after_s),
        )
        with self._lock:
            self._fault = fault

    def set_hang(self, seconds: float, count: int | None = None, *, methods: set[str] | None = None) -> None:
        """Hold the next ``count`` API requests for ``seconds``, then close without answering."""
        if seconds <= 0:
            raise ValueError("hang seconds must be > 0")
        fault = _Fault("hang", hang_s=float(seconds), remaining=_check_count(count), methods=_check_methods(methods))
        with self._lock:
            self._fault = fault

    def set_latency(self, ms: float) -> None:
        """Add ``ms`` milliseconds before every response (0 to remove)."""
        if ms < 0:
            raise ValueError("latency must be >= 0 ms")
        with self._lock:
            self._latency_s = ms / 1000.0

    def clear_faults(self) -> None:
        """Remove any fault and latency; release requests that are hanging."""
        with self._lock:
            self._fault = None
            self._latency_s = 0.0
        self._release_hangs()

    @property
    def faults(self) -> dict[str, Any]:
        with self._lock:
            return {"fault": self._fault.to_json() if self._fault else None, "latencyMs": self._latency_s * 1000.0}

    @property
    def minted(self) -> list[MintedCredential]:
        """Everything minted since start or the last ``reset``, oldest first."""
        with self._lock:
            return list(self._minted)

    @property
    def calls(self) -> Counter[str]:
        """Requests received per API method (including failed ones)."""
        with self._lock:
            return Counter(self._calls)

    def reset(self) -> None:
        """Clear faults, latency, minted records, issued tokens, counters and disabled accounts
        (keys and policy stay)."""
        with self._lock:
            self._minted.clear()
            self._issued.clear()
            self._calls.clear()
            self._disabled.clear()
        self.clear_faults()

    @property
    def disabled(self) -> frozenset[str]:
        """Emails of the service accounts disabled now (IAM ``serviceAccounts.disable``)."""
        with self._lock:
            return frozenset(self._disabled)

    def is_disabled(self, email: str) -> bool:
        with self._lock:
            return email.lower() in self._disabled

    def _release_hangs(self) -> None:
        with self._lock:
            old, self._hang_release = self._hang_release, threading.Event()
        old.set()

    # ---- request handling -------------------------------------------------

    def _dispatch(self, verb: str, target: str, headers: Mapping[str, str], body: bytes) -> _Reply:
        """Answer one HTTP request (``headers`` keyed in lower case). Never raises.

        Admin requests (``/_standin/``) get no added latency.
        """
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        try:
            reply = self._route(verb, path, query, headers, body)
        except ApiError as err:
            reply = _error_reply(err)
        except Exception:  # a bug in the stand-in: still answer like Google would
            log.exception("IAM stand-in failed on %s %s", verb, path)
            reply = _error_reply(ApiError(500, TEXT_INTERNAL))
        if not path.startswith("/_standin/"):
            with self._lock:
                reply.latency_s = self._latency_s
        return reply

    def _route(
        self, verb: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> _Reply:
        if path.startswith("/_standin/"):
            return self._admin(verb, path, query, body)

        match = _API_PATH_RE.fullmatch(path)
        if match is not None:
            project, sa_id, method = match.groups()
            if method not in METHOD_PERMISSIONS and method not in ("disable", "enable"):
                raise _not_found_path(path)
            _require_verb(verb, "POST", path)
            if method in ("disable", "enable"):
                reply = self._account_api(method, project, sa_id, headers, body)
            else:
                reply = self._api(method, project, sa_id, headers, body)
        elif (match := _ACCOUNT_PATH_RE.fullmatch(path)) is not None:
            _require_verb(verb, "GET", path)
            reply = self._account_api("get", match.group(1), match.group(2), headers, body)
        elif (match := _LOCATIONS_PATH_RE.fullmatch(path)) is not None:
            _require_verb(verb, "GET", path)
            reply = self._allowed_locations(match.group(1), match.group(2))
        elif (match := _KEYS_PATH_RE.fullmatch(path)) is not None:
            _require_verb(verb, "GET", path)
            kind = next(g for g in match.groups()[:3] if g)
            reply = self._public_keys(kind, match.group(4))
        elif path in ("/oauth2/v1/certs", "/oauth2/v3/certs"):
            _require_verb(verb, "GET", path)
            reply = self._oauth_certs(path.startswith("/oauth2/v3/"))
        else:
            raise _not_found_path(path)
        return reply

    # ---- the API ------------------------------------------------------------

    def _api(self, method: str, project: str, sa_id: str, headers: Mapping[str, str], raw: bytes) -> _Reply:
        with self._lock:
            self._calls[method] += 1
            fault = self._take_fault(method)
            release = self._hang_release
        if fault is not None:
            if fault.kind == "hang":
                return _Reply(0, hang_s=fault.hang_s, hang_release=release)
            raise self._fault_error(fault, method)

        policy = self._policy
        caller = self._authenticate(method, headers.get("authorization"))
        body = _parse_body(method, raw)
        permission = METHOD_PERMISSIONS[method]
        if method == "generateAccessToken" and (
            not body.get("scope") or not all(_valid_scope(s) for s in body["scope"])
        ):
            raise ApiError(400, TEXT_INVALID_ARGUMENT)
        if method == "generateIdToken" and not body.get("audience"):
            raise ApiError(400, TEXT_INVALID_ARGUMENT)
        if method in ("signBlob", "signJwt") and not body.get("payload"):
            raise ApiError(400, TEXT_INVALID_ARGUMENT)
        if project != "-":
            raise ApiError(400, TEXT_INVALID_ARGUMENT)

        target = policy.find(sa_id)
        if target is None:
            raise _not_found(sa_id)
        delegates = [self._resolve_delegate(policy, d) for d in body.get("delegates", [])]
        chain = [caller, *(d.email for d in delegates)]
        for member, delegate in zip(chain, delegates, strict=False):  # chain is one longer
            if not policy.has_permission(member, IMPLICIT_DELEGATION, delegate):
                raise _permission_denied(permission)
        if not policy.has_permission(chain[-1], permission, target):
            raise _permission_denied(permission)
        for account in (*delegates, target):  # a disabled account can neither be impersonated nor delegate
            if self.is_disabled(account.email):
                raise ApiError(400, TEXT_ACCOUNT_DISABLED.format(email=account.email), status="FAILED_PRECONDITION")

        chain_names = tuple(f"projects/-/serviceAccounts/{d.email}" for d in delegates)
        call = _Call(caller, target, chain_names, headers.get("x-goog-request-reason"))
        mint = {
            "generateAccessToken": self._generate_access_token,
            "generateIdToken": self._generate_id_token,
            "signBlob": self._sign_blob,
            "signJwt": self._sign_jwt,
        }[method]
        return mint(policy, call, body)

    def _account_api(self, method: str, project: str, sa_id: str, headers: Mapping[str, str], raw: bytes) -> _Reply:
        """IAM API ``projects.serviceAccounts`` disable / enable / get."""
        with self._lock:
            self._calls[method] += 1
            fault = self._take_fault(method)
            release = self._hang_release
        if fault is not None:
            if fault.kind == "hang":
                return _Reply(0, hang_s=fault.hang_s, hang_release=release)
            raise self._fault_error(fault, method)
        policy = self._policy
        caller = self._authenticate(method, headers.get("authorization"))
        if method != "get" and raw.strip():  # DisableServiceAccountRequest / EnableServiceAccountRequest: no fields
            try:
                data = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise _bad_request(TEXT_BAD_JSON) from exc
            if data is not None and not isinstance(data, dict):
                raise _bad_request(TEXT_NOT_OBJECT)
            for key in data or {}:
                raise _bad_request(TEXT_UNKNOWN_FIELD.format(name=key))
        if project != "-" and project != policy.project:
            raise ApiError(400, TEXT_INVALID_ARGUMENT)
        target = policy.find(sa_id)
        if target is None:
            raise ApiError(404, TEXT_ADMIN_NOT_FOUND.format(email=sa_id))
        permission = ADMIN_PERMISSIONS[method]
        if not policy.has_permission(caller, permission, target):
            raise _permission_denied(permission)
        with self._lock:
            if method == "disable":
                self._disabled.add(target.email)
            elif method == "enable":
                self._disabled.discard(target.email)
            disabled = target.email in self._disabled
        if method != "get":
            return _Reply(200, {})
        account: dict[str, Any] = {
            "name": f"projects/{policy.project}/serviceAccounts/{target.email}",
            "projectId": policy.project,
            "uniqueId": target.unique_id,
            "email": target.email,
            "etag": base64.b64encode(hashlib.sha256(target.email.encode()).digest()[:8]).decode("ascii"),
            "oauth2ClientId": target.unique_id,
        }
        if disabled:  # proto3 JSON leaves a false bool out
            account["disabled"] = True
        return _Reply(200, account)

    def _take_fault(self, method: str) -> _Fault | None:
        fault = self._fault
        if fault is None or (fault.methods is not None and method not in fault.methods):
            return None
        if fault.methods is None and method in ADMIN_PERMISSIONS:  # admin methods only when listed
            return None
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._fault = None
        return fault

    def _fault_error(self, fault: _Fault, method: str) -> ApiError:
        if fault.status != 429:
            return ApiError(fault.status, _FAULT_TEXTS[fault.status])
        signing = method in ("signBlob", "signJwt")
        metric_name = "Sign JWT or blob requests" if signing else "Generate credentials requests"
        metric = f"{SERVICE}/{'sign_requests' if signing else 'generate_credentials_requests'}"
        limit = "SignRequestsPerMinutePerProject" if signing else "GenerateCredentialsRequestsPerMinutePerProject"
        number = self._policy.project_number
        return ApiError(
            429,
            TEXT_QUOTA.format(metric=metric_name, limit=f"{metric_name} per minute per project", number=number),
            details=[
                _error_info(
                    "RATE_LIMIT_EXCEEDED",
                    "googleapis.com",
                    {
                        "service": SERVICE,
                        "quota_metric": metric,
                        "quota_limit": limit,
                        "quota_limit_value": "60000",
                        "consumer": f"projects/{number}",
                    },
                ),
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Request a higher quota limit.",
                            "url": "https://cloud.google.com/docs/quotas/help/request_increase",
                        }
                    ],
                },
            ],
            headers={"Retry-After": str(fault.retry_after_s)},
        )

    def _authenticate(self, method: str, authorization: str | None) -> str:
        if method in ADMIN_PERMISSIONS:
            rpc = {"service": ADMIN_SERVICE, "method": f"google.iam.admin.v1.IAM.{_RPC_NAMES[method]}"}
        else:
            rpc = {"service": SERVICE, "method": f"google.iam.credentials.v1.IAMCredentials.{_RPC_NAMES[method]}"}
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                TEXT_MISSING_CREDENTIALS,
                details=[_error_info("CREDENTIALS_MISSING", "googleapis.com", rpc)],
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )
        caller = self._policy.caller_for(token)
        with self._lock:
            issued = self._issued.get(token) if caller is None else None
            disabled = (caller or (issued.email if issued else "")) in self._disabled
        if disabled:  # a disabled account's tokens are rejected (they work again if it is enabled in time)
            raise ApiError(
                401,
                TEXT_INVALID_CREDENTIALS,
                details=[_error_info("ACCOUNT_STATE_INVALID", "googleapis.com", rpc)],
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
            )
        if caller is not None:
            return caller
        if issued is None or issued.expire_epoch <= clock.epoch():
            reason = "ACCESS_TOKEN_EXPIRED" if issued is not None else "ACCESS_TOKEN_TYPE_UNSUPPORTED"
            raise ApiError(
                401,
                TEXT_INVALID_CREDENTIALS,
                details=[_error_info(reason, "googleapis.com", rpc)],
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
            )
        if not issued.scopes & CALLER_SCOPES:
            raise ApiError(
                403,
                TEXT_INSUFFICIENT_SCOPES,
                details=[_error_info("ACCESS_TOKEN_SCOPE_INSUFFICIENT", "googleapis.com", rpc)],
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="insufficient_scope"'},
            )
        return issued.email

    @staticmethod
    def _resolve_delegate(policy: StandInPolicy, raw: str) -> ServiceAccount:
        match = _DELEGATE_RE.fullmatch(raw)
        if match is not None:
            if match.group(1) != "-":
                raise ApiError(400, TEXT_INVALID_ARGUMENT)
            ident = match.group(2)
        elif "/" in raw or not raw:
            raise ApiError(400, TEXT_INVALID_ARGUMENT)
        else:
            ident = raw
        account = policy.find(ident)
        if account is None:
            raise _not_found(ident)
        return account

    def _record(
        self,
        call: _Call,
        method: str,
        issued_at: _dt.datetime,
        expire: _dt.datetime | None,
        credential: str,
        key_id: str | None,
        *,
        scopes: tuple[str, ...] = (),
        audience: str | None = None,
    ) -> None:
        record = MintedCredential(
            method=method,
            target=call.target.email,
            delegates=call.delegates,
            caller=call.caller,
            issued_at=issued_at,
            expire_time=expire,
            sha256=hashlib.sha256(credential.encode("utf-8")).hexdigest(),
            key_id=key_id,
            credential=credential,
            scopes=scopes,
            audience=audience,
            request_reason=call.request_reason,
        )
        with self._lock:
            self._minted.append(record)

    def _generate_access_token(self, policy: StandInPolicy, call: _Call, body: Mapping[str, Any]) -> _Reply:
        lifetime_ns = body.get("lifetime", DEFAULT_ACCESS_TOKEN_LIFETIME_S * 1_000_000_000)
        if lifetime_ns <= 0:
            raise ApiError(400, TEXT_ZERO_LIFETIME)
        if lifetime_ns > policy.max_lifetime_s(call.target) * 1_000_000_000:
            raise ApiError(400, TEXT_LIFETIME_TOO_LONG.format(email=call.target.email))
        now = clock.now()
        expire = (now + _dt.timedelta(microseconds=lifetime_ns // 1000)).replace(microsecond=0)
        token = "ya29.c." + secrets.token_urlsafe(96)
        scopes = tuple(CLOUD_PLATFORM if s == "" else s for s in body["scope"])
        with self._lock:
            if len(self._issued) >= self._prune_at:
                now_s = now.timestamp()
                self._issued = {t: i for t, i in self._issued.items() if i.expire_epoch > now_s}
                # Next prune when the live set has doubled: O(1) amortized, not a full scan per call.
                self._prune_at = max(_ISSUED_PRUNE_AT, 2 * len(self._issued))
            self._issued[token] = _IssuedToken(call.target.email, expire.timestamp(), frozenset(scopes))
        self._record(call, "generateAccessToken", now, expire, token, None, scopes=scopes)
        return _Reply(200, {"accessToken": token, "expireTime": clock.rfc3339(expire)})

    def _generate_id_token(self, policy: StandInPolicy, call: _Call, body: Mapping[str, Any]) -> _Reply:
        now = clock.now()
        iat = int(now.timestamp())
        claims: dict[str, Any] = {
            "aud": body["audience"],
            "azp": call.target.email if body.get("use_email_azp") else call.target.unique_id,
        }
        if body.get("include_email"):
            claims["email"] = call.target.email
            claims["email_verified"] = True
        claims.update(
            {"exp": iat + ID_TOKEN_LIFETIME_S, "iat": iat, "iss": GOOGLE_ISSUER, "sub": call.target.unique_id}
        )
        key = self.keys.current(_OAUTH_KEY_NAME)
        token = key.sign_jwt(
            {"alg": "RS256", "kid": key.key_id, "typ": "JWT"}, json.dumps(claims, separators=(",", ":")).encode()
        )
        self._record(
            call,
            "generateIdToken",
            now,
            clock.from_epoch(iat + ID_TOKEN_LIFETIME_S),
            token,
            key.key_id,
            audience=body["audience"],
        )
        return _Reply(200, {"token": token})

    def _sign_blob(self, policy: StandInPolicy, call: _Call, body: Mapping[str, Any]) -> _Reply:
        now = clock.now()
        key = self.keys.current(call.target.email)
        signed = base64.b64encode(key.sign(body["payload"])).decode("ascii")
        self._record(call, "signBlob", now, None, signed, key.key_id)
        return _Reply(200, {"keyId": key.key_id, "signedBlob": signed})

    def _sign_jwt(self, policy: StandInPolicy, call: _Call, body: Mapping[str, Any]) -> _Reply:
        payload_text: str = body["payload"]
        try:
            claims = json.loads(payload_text, parse_constant=_reject_constant)
        except ValueError as exc:
            raise ApiError(400, TEXT_JWT_NOT_OBJECT) from exc
        if not isinstance(claims, dict):
            raise ApiError(400, TEXT_JWT_NOT_OBJECT)
        now = clock.now()
        expire: _dt.datetime | None = None
        if "exp" in claims:
            exp = claims["exp"]
            if not isinstance(exp, int) or isinstance(exp, bool):
                raise ApiError(400, TEXT_JWT_EXP_TYPE)
            now_s = now.timestamp()
            if exp < now_s:
                raise ApiError(400, TEXT_JWT_EXP_PAST)
            if exp > now_s + SIGNED_JWT_MAX_TTL_S:
                raise ApiError(400, TEXT_JWT_EXP_FAR)
            expire = clock.from_epoch(exp)
        key = self.keys.current(call.target.email)
        signed = key.sign_jwt({"alg": "RS256", "kid": key.key_id, "typ": "JWT"}, payload_text.encode("utf-8"))
        self._record(call, "signJwt", now, expire, signed, key.key_id)
        return _Reply(200, {"keyId": key.key_id, "signedJwt": signed})

    def _allowed_locations(self, project: str, sa_id: str) -> _Reply:
        with self._lock:
            self._calls["allowedLocations"] += 1
        if project != "-":
            raise ApiError(400, TEXT_INVALID_ARGUMENT)
        if self._policy.find(sa_id) is None:
            raise _not_found(sa_id)
        return _Reply(200, {"locations": [], "encodedLocations": "0x0"})

    # ---- public keys --------------------------------------------------------

    def _cache_headers(self) -> dict[str, str]:
        return {
            "Cache-Control": f"public, max-age={self.certs_max_age_s}, must-revalidate, no-transform",
            "Expires": email.utils.formatdate(clock.epoch() + self.certs_max_age_s, usegmt=True),
        }

    def _public_keys(self, kind: str, ident: str) -> _Reply:
        account = self._policy.find(ident)
        if account is None:
            raise _not_found(ident)
        keys = self.keys.published(account.email)
        if kind == "x509":
            body: Any = {k.key_id: k.certificate_pem() for k in keys}
        elif kind == "jwk":
            body = {"keys": [k.jwk() for k in keys]}
        else:
            body = {"keyvalues": [k.raw() for k in keys]}
        return _Reply(200, body, self._cache_headers())

    def _oauth_certs(self, jwks: bool) -> _Reply:
        keys = self.keys.published(_OAUTH_KEY_NAME)
        body: Any = {"keys": [k.jwk() for k in keys]} if jwks else {k.key_id: k.certificate_pem() for k in keys}
        return _Reply(200, body, self._cache_headers())

    # ---- admin (/_standin/) -----------------------------------------------

    def _admin(self, verb: str, path: str, query: Mapping[str, list[str]], raw: bytes) -> _Reply:
        routes: dict[str, dict[str, Callable[[], _Reply]]] = {
            "/_standin/health": {"GET": lambda: _Reply(200, {"status": "ok"})},
            "/_standin/faults": {
                "GET": lambda: _Reply(200, self.faults),
                "POST": lambda: self._admin_set_faults(_admin_json(raw)),
                "DELETE": self._admin_clear_faults,
            },
            "/_standin/minted": {"GET": lambda: self._admin_minted(query)},
            "/_standin/calls": {"GET": lambda: _Reply(200, {"calls": dict(self.calls)})},
            "/_standin/reset": {"POST": self._admin_reset},
            "/_standin/disabled": {"GET": lambda: _Reply(200, {"disabled": sorted(self.disabled)})},
            "/_standin/callers": {"POST": lambda: self._admin_add_caller(_admin_json(raw))},
        }
        verbs = routes.get(path)
        if verbs is None:
            raise _not_found_path(path)
        handler = verbs.get(verb)
        if handler is None:
            raise _method_not_allowed(verb, path, sorted(verbs))
        return handler()

    def _admin_clear_faults(self) -> _Reply:
        self.clear_faults()
        return _Reply(200, self.faults)

    def _admin_reset(self) -> _Reply:
        self.reset()
        return _Reply(200, {})

    def _admin_set_faults(self, data: Mapping[str, Any]) -> _Reply:
        allowed = {"status", "count", "methods", "retry_after_s", "hang_seconds", "latency_ms", "clear"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ApiError(400, f"unknown fault field(s) {unknown}; allowed: {sorted(allowed)}")
        try:
            if data.get("clear"):
                self.clear_faults()
            methods = set(data["methods"]) if data.get("methods") is not None else None
            if data.get("status") is not None and data.get("hang_seconds") is not None:
                raise ValueError("give either status or hang_seconds, not both")
            if data.get("status") is not None:
                self.set_fault(
                    int(data["status"]),
                    data.get("count"),
                    methods=methods,
                    retry_after_s=int(data.get("retry_after_s", 1)),
                )
            if data.get("hang_seconds") is not None:
                self.set_hang(float(data["hang_seconds"]), data.get("count"), methods=methods)
            if data.get("latency_ms") is not None:
                self.set_latency(float(data["latency_ms"]))
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"invalid fault: {exc}") from exc
        return _Reply(200, self.faults)

    def _admin_minted(self, query: Mapping[str, list[str]]) -> _Reply:
        include = query.get("include_credentials", ["false"])[-1].lower() in ("1", "true", "yes")
        return _Reply(200, {"minted": [m.to_json(include_credential=include) for m in self.minted]})

    def _admin_add_caller(self, data: Mapping[str, Any]) -> _Reply:
        token, principal = data.get("token"), data.get("principal")
        if not isinstance(token, str) or not isinstance(principal, str):
            raise ApiError(400, 'expected {"token": "...", "principal": "EMAIL"}')
        try:
            self.add_caller(token, principal)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        return _Reply(200, {})


def _check_count(count: int | None) -> int | None:
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer or None, got {count!r}")
    return count


def _check_methods(methods: set[str] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    allowed = set(METHOD_PERMISSIONS) | set(ADMIN_PERMISSIONS)
    unknown = sorted(set(methods) - allowed)
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; allowed: {sorted(allowed)}")
    return frozenset(methods)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def _admin_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"admin request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "admin request body must be a JSON object")
    return data


def _error_reply(err: ApiError) -> _Reply:
    return _Reply(err.code, err.body(), dict(err.headers))


def _not_found_path(path: str) -> ApiError:
    return ApiError(404, f"The requested URL {path} was not found on this server.")


def _method_not_allowed(verb: str, path: str, allowed: list[str]) -> ApiError:
    return ApiError(
        405,
        f"Method {verb} is not allowed for {path}; use {', '.join(allowed)}.",
        headers={"Allow": ", ".join(allowed)},
    )


def _require_verb(verb: str, expected: str, path: str) -> None:
    if verb != expected:
        raise _method_not_allowed(verb, path, [expected])


# --------------------------------------------------------------------------- HTTP plumbing


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], standin: IamStandIn) -> None:
        self.standin = standin
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        """Shut down kept-alive and hanging connections so their threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # idle keep-alive connections
    disable_nagle_algorithm = True  # TCP_NODELAY: no 40 ms delayed-ACK stalls
    wbufsize = -1  # headers and body leave in one write (flushed per request)
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def version_string(self) -> str:
        return "ESF"

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr line."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_OPTIONS(self) -> None:
        self._serve("OPTIONS")

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked), or None if unreadable / too large."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                try:
                    size = int(self.rfile.readline(1024).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    return None
                total += size
                if size < 0 or total > MAX_BODY_BYTES:
                    return None
                if size == 0:
                    while self.rfile.readline(8192).strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)  # CRLF after each chunk
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length else b""

    def _serve(self, verb: str) -> None:
        standin = self.server.standin
        body = self._read_body()
        if body is None:
            self.close_connection = True
            reply = _error_reply(
                ApiError(400, "Invalid request body: bad Content-Length or chunked encoding, or larger than 8 MiB.")
            )
        else:
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply = standin._dispatch(verb, self.path, headers, body)

        if reply.hang_s is not None:
            # Hold the request, then close without a response (or earlier on stop / clear_faults).
            release = reply.hang_release or standin._stopping
            release.wait(reply.hang_s)
            self.close_connection = True
            return
        if reply.latency_s > 0:
            standin._stopping.wait(reply.latency_s)
        if standin._stopping.is_set():
            self.close_connection = True
        self._write(reply)

    def _write(self, reply: _Reply) -> None:
        payload = b"" if reply.body is None else (json.dumps(reply.body, indent=2) + "\n").encode("utf-8")
        self.send_response(reply.status)
        self.send_header("Content-Type", JSON_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(payload)))
        headers = {"Cache-Control": "private", "Vary": "Origin, X-Origin, Referer", **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m vending.local.iamcredentials --policy FILE --port 8081``."""
    parser = argparse.ArgumentParser(prog="python -m vending.local.iamcredentials", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy", type=Path, default=DEFAULT_POLICY_PATH, help="YAML policy file (default: %(default)s)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8081, help="port to listen on, 0 for any (default: %(default)s)")
    parser.add_argument(
        "--key-dir", type=Path, default=None, help="keep signing keys here as PEM files across restarts"
    )
    args = parser.parse_args(argv)
    try:
        policy = StandInPolicy.load(args.policy)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = IamStandIn(policy, host=args.host, port=args.port, key_dir=args.key_dir)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: done.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
    with server:
        print(f"IAM Credentials stand-in for project {policy.project} listening on {server.url}", flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
