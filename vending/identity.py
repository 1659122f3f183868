"""Who is calling: verify caller OIDC tokens and signed chat-ops bot messages.

Caller tokens (``Verifier``)
- Only pinned issuers are trusted: the unverified ``iss`` selects one of the
  configured ``Issuer`` entries by exact string, and keys come only from that
  issuer's configured ``jwks_uri``. Header parameters that name keys
  (``jku``, ``x5u``, ``jwk``, ``x5c``) are ignored.
- Only the issuer's listed asymmetric algorithms are accepted; the key is
  built for the token's (allow-listed) algorithm and must match it, so a
  key's type never picks the algorithm and HMAC or ``none`` never verify.
- The compact token is parsed here, strictly (size limit, three base64url
  segments, UTF-8 JSON objects without duplicate keys), and the payload
  bytes are parsed again after PyJWT verified the signature over them.
- Claims are checked against ``clock.now()`` with the issuer's leeway.

Bot messages (``BotVerifier``)
- A chat-ops bot's service account signs a JWT with the IAM Credentials API
  ``signJwt``; it is verified against that account's public JWKS
  (``{keys_base_url}/service_accounts/v1/metadata/jwk/{email}``).

Keys (``JwksCache``)
- One in-process cache per JWKS URL, shared by both verifiers. A set is kept
  for the issuer's TTL; an unknown ``kid`` refetches at most once per
  cooldown (measured with ``clock`` so tests can move it), concurrent misses
  share one HTTP fetch, and a failed fetch fails closed while a still-valid
  cached set keeps serving the keys it holds.

Every failure raises ``AuthenticationError`` with a stable ``reason`` and a
precise ``detail`` for the log; the caller only sees the generic message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import quote

import jwt
import requests

from vending import clock
from vending.config import Bot, Issuer, has_control
from vending.errors import AuthenticationError, JwksUnavailableError

MAX_TOKEN_CHARS = 16 * 1024  # compact JWT, checked before any parsing
MAX_JWKS_BYTES = 512 * 1024  # a JWKS response larger than this is refused
MAX_EPOCH_S = 253402300799  # 9999-12-31T23:59:59Z: bounds exp/iat/nbf
MAX_KID_CHARS = 1024

BOT_JWKS_TTL_S = 3600  # service account public keys, cached this long
BOT_JWKS_COOLDOWN_S = 30  # at most one refetch per unknown kid per this
BOT_CLOCK_SKEW_S = 30  # a bot's iat may be this far in our future

# Header parameters that change how the JWS is processed; none is supported.
_UNSUPPORTED_HEADERS = ("crit", "b64", "zip", "enc")

# Which JWK a given algorithm may be verified with: (kty, crv).
_KEY_SHAPE: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
}

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Principal:
    """Who is calling: an identity is (issuer, subject); compare ``qualified``, never ``identity`` alone."""

    issuer: str  # Issuer.name from config
    identity: str  # value of the issuer's identity_claim (default "sub")
    claims: Mapping[str, Any]  # all verified claims

    @property
    def qualified(self) -> str:
        """``ISSUER/IDENTITY``: the form every comparison, record, event and log line uses."""
        return f"{self.issuer}/{self.identity}"


@dataclass(frozen=True)
class VerifiedToken:
    """A caller token that passed every check: its principal, replay key and expiry."""

    principal: Principal
    replay_key: str | None  # see Verifier.verify
    expires_at: datetime  # the token's exp (aware UTC)
    replay_until: datetime  # exp + leeway: the token is accepted until then, so its replay record lives that long


def _fail(detail: str, reason: str) -> NoReturn:
    if reason == "jwks-unavailable":
        raise JwksUnavailableError(detail)
    raise AuthenticationError(detail, reason=reason)


def sha256hex(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# Compact JWS parsing (no trust in anything yet)


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(key)
        obj[key] = value
    return obj


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"non-finite number {name} is not JSON")


def _json_object(data: bytes, part: str) -> dict[str, Any]:
    """Strict UTF-8 JSON object, duplicate keys rejected at every level."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(f"{part} is not valid UTF-8: {exc}", "malformed-token")
    try:
        value = json.loads(text, object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant)
    except _DuplicateKeyError as exc:
        _fail(f"{part} has a duplicate key {exc.key!r}", f"duplicate-{'header' if part == 'header' else 'claim'}")
    except (ValueError, RecursionError) as exc:
        _fail(f"{part} is not JSON: {exc}", "malformed-token")
    if not isinstance(value, dict):
        _fail(f"{part} is a JSON {type(value).__name__}, not an object", "malformed-token")
    return value


def _b64url_segment(segment: str, part: str) -> bytes:
    if not _B64URL_RE.fullmatch(segment):
        _fail(f"{part} segment is not unpadded base64url", "malformed-token")
    if len(segment) % 4 == 1:
        _fail(f"{part} segment has an impossible base64url length", "malformed-token")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        _fail(f"{part} segment is not base64url: {exc}", "malformed-token")
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != segment:
        _fail(f"{part} segment is not canonical base64url", "malformed-token")
    return data


@dataclass(frozen=True)
class _Parsed:
    """A compact JWS split and strictly parsed, before any signature check."""

    header: dict[str, Any]
    unverified: dict[str, Any]  # payload claims, NOT verified: only to pick issuer and key
    payload: bytes  # the payload segment's bytes, which ``unverified`` was parsed from (strictly)
    signature_empty: bool


def _parse_compact(token: Any) -> _Parsed:
    if token is None or token == "":
        _fail("no token", "missing-token")
    if not isinstance(token, str):
        _fail(f"token is a {type(token).__name__}, not a string", "malformed-token")
    if len(token) > MAX_TOKEN_CHARS:
        _fail(f"token is {len(token)} characters, above the {MAX_TOKEN_CHARS} limit", "token-too-large")
    if not token.isascii():
        _fail("token contains non-ASCII characters", "malformed-token")
    segments = token.split(".")
    if len(segments) != 3:
        _fail(f"token has {len(segments)} segments, a JWS has 3", "malformed-token")
    header_seg, payload_seg, signature_seg = segments
    if not header_seg or not payload_seg:
        _fail("token has an empty header or payload segment", "malformed-token")
    header = _json_object(_b64url_segment(header_seg, "header"), "header")
    payload = _b64url_segment(payload_seg, "payload")
    unverified = _json_object(payload, "payload")
    _b64url_segment(signature_seg, "signature")
    for name in _UNSUPPORTED_HEADERS:
        if name in header:
            _fail(f"header parameter {name!r} is not supported", "unsupported-header")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS):
        _fail("header kid must be a non-empty string", "malformed-token")
    return _Parsed(header, unverified, payload, signature_empty=not signature_seg)


def _check_algorithm(parsed: _Parsed, allowed: Sequence[str], who: str) -> str:
    alg = parsed.header.get("alg")
    if not isinstance(alg, str) or not alg:
        _fail("header has no alg", "malformed-token")
    if alg not in allowed:
        _fail(f"alg {alg!r} is not allowed for {who} (allowed: {', '.join(allowed)})", "disallowed-algorithm")
    if parsed.signature_empty:
        _fail("token has an empty signature", "invalid-signature")
    return alg


_JWS = jwt.PyJWS(options={"enforce_minimum_key_length": True})


def _verified_payload(token: str, parsed: _Parsed, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
    """Check the signature with PyJWT; the claims are those ``_parse_compact`` parsed strictly from the
    very bytes PyJWT verified (compared here, so no second parse: a difference fails closed)."""
    try:
        decoded = _JWS.decode_complete(token, key=key, algorithms=[alg])
    except jwt.InvalidSignatureError as exc:
        _fail(f"signature does not verify with key {key.key_id!r}: {exc}", "invalid-signature")
    except jwt.InvalidAlgorithmError as exc:
        _fail(f"algorithm rejected: {exc}", "disallowed-algorithm")
    except jwt.InvalidKeyError as exc:
        _fail(f"key {key.key_id!r} is unusable: {exc}", "invalid-key")
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        _fail(f"signature check failed: {exc}", "invalid-signature")
    if decoded["payload"] != parsed.payload:
        _fail("signed payload is not the parsed payload", "malformed-token")
    return parsed.unverified


# ---------------------------------------------------------------------------
# Claim helpers


def _numeric(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    if name not in claims:
        if required:
            _fail(f"claim {name!r} is required", "missing-claim")
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(f"claim {name!r} must be a number, got {type(value).__name__}", "invalid-claim")
    if (isinstance(value, float) and not math.isfinite(value)) or not 0 <= value <= MAX_EPOCH_S:
        _fail(f"claim {name!r} = {value!r} is out of range", "invalid-claim")
    return float(value)


def _clean_string(claims: Mapping[str, Any], name: str) -> str:
    """A required, non-empty string claim without control characters."""
    if name not in claims:
        _fail(f"claim {name!r} is required", "missing-claim")
    value = claims[name]
    if not isinstance(value, str) or not value:
        _fail(f"claim {name!r} must be a non-empty string", "invalid-claim")
    if has_control(value):
        _fail(f"claim {name!r} contains control characters", "invalid-claim")
    return value


def _audience_is(aud: Any, expected: str) -> bool:
    """``aud`` is exactly ``expected``: the string itself or a one-element list of it."""
    if isinstance(aud, str):
        return aud == expected
    return isinstance(aud, list) and len(aud) == 1 and aud[0] == expected


# ---------------------------------------------------------------------------
# JWKS cache


@dataclass
class _Entry:
    """The cache state of one JWKS URL."""

    keys: list[dict[str, Any]] | None = None  # usable JWKs of the last good fetch
    by_kid: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched_at: float = 0.0  # clock epoch of the last good fetch
    attempted_at: float | None = None  # clock epoch of the last fetch attempt
    failed_at: float | None = None  # clock epoch of the last failed attempt
    error: str | None = None  # detail of the last failure
    inflight: threading.Event | None = None  # set when the running fetch finishes
    built: dict[tuple[str | None, str], jwt.PyJWK] = field(default_factory=dict)


class JwksCache:
    """Per-URL JWKS cache with a refetch cooldown and single-flight fetches."""

    def __init__(self, session: requests.Session | None = None, timeout_s: float = 5.0) -> None:
        self._session = session or requests.Session()
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self.fetches: Counter[str] = Counter()

    def key(self, url: str, kid: str | None, *, ttl_s: int, cooldown_s: int, algorithm: str | None = None) -> jwt.PyJWK:
        """The key ``kid`` of the JWKS at ``url``, built for ``algorithm``.

        ``kid=None`` selects the only key of a one-key set. ``algorithm`` (the
        token's allow-listed ``alg``) must fit the key's type and its ``alg``
        member; without it the key's own ``alg`` (or type) decides.
        """
        with self._lock:
            entry = self._entries.setdefault(url, _Entry())
            now = clock.epoch()
            fresh = entry.keys is not None and now < entry.fetched_at + ttl_s
            if fresh:
                jwk = self._select(entry, kid, url)
                if jwk is not None:
                    return self._build(entry, jwk, algorithm, url)
            event = entry.inflight
            leader = event is None
            if leader:
                # No fetch running: start one unless the cooldown forbids it.
                if fresh and entry.attempted_at is not None and now - entry.attempted_at < cooldown_s:
                    _fail(f"kid {kid!r} is not in the JWKS of {url} (refetch cooling down)", "unknown-key")
                if not fresh and entry.failed_at is not None and now - entry.failed_at < cooldown_s:
                    _fail(
                        f"JWKS {url} unavailable (last fetch failed {now - entry.failed_at:.0f}s ago: {entry.error})",
                        "jwks-unavailable",
                    )
                event = entry.inflight = threading.Event()
                entry.attempted_at = now
                self.fetches[url] += 1
        assert event is not None
        if leader:
            self._refresh(url, entry, event)
        elif not event.wait(self._timeout_s * 2 + 1):
            _fail(f"JWKS {url}: timed out waiting for the running fetch", "jwks-unavailable")
        with self._lock:
            now = clock.epoch()
            if entry.keys is None or now >= entry.fetched_at + ttl_s:
                _fail(f"JWKS {url} unavailable: {entry.error}", "jwks-unavailable")
            jwk = self._select(entry, kid, url)
            if jwk is None:
                if entry.failed_at is not None and entry.failed_at >= (entry.attempted_at or 0.0):
                    _fail(f"kid {kid!r} not cached and JWKS {url} refetch failed: {entry.error}", "jwks-unavailable")
                _fail(f"kid {kid!r} is not in the JWKS of {url}", "unknown-key")
            return self._build(entry, jwk, algorithm, url)

    def _refresh(self, url: str, entry: _Entry, event: threading.Event) -> None:
        keys: list[dict[str, Any]] | None = None
        error: str | None = None
        try:
            keys = self._fetch(url)
        except AuthenticationError as exc:
            error = exc.detail
        except (requests.RequestException, OSError, ValueError, TypeError) as exc:  # fail closed
            error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                if keys is not None:
                    entry.keys = keys
                    entry.by_kid = {}
                    for jwk in keys:
                        kid = jwk.get("kid")
                        if isinstance(kid, str):
                            entry.by_kid.setdefault(kid, jwk)
                    entry.fetched_at = clock.epoch()
                    entry.built = {}
                    entry.failed_at = None
                    entry.error = None
                else:
                    entry.failed_at = clock.epoch()
                    entry.error = error or "fetch interrupted"
                entry.inflight = None
                event.set()

    def _fetch(self, url: str) -> list[dict[str, Any]]:
        try:
            resp = self._session.get(
                url, timeout=self._timeout_s, allow_redirects=False, stream=True, headers={"Accept": "application/json"}
            )
        except requests.RequestException as exc:
            _fail(f"GET {url}: {type(exc).__name__}: {exc}", "jwks-unavailable")
        try:
            if resp.status_code != 200:
                _fail(f"GET {url}: HTTP {resp.status_code}", "jwks-unavailable")
            body = bytearray()
            for chunk in resp.iter_content(65536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    _fail(f"GET {url}: response above {MAX_JWKS_BYTES} bytes", "jwks-unavailable")
        except requests.RequestException as exc:
            _fail(f"GET {url}: {type(exc).__name__}: {exc}", "jwks-unavailable")
        finally:
            resp.close()
        try:
            doc = json.loads(bytes(body).decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            _fail(f"GET {url}: not JSON: {exc}", "jwks-unavailable")
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            _fail(f"GET {url}: not a JWKS (no 'keys' list)", "jwks-unavailable")
        return [k for k in doc["keys"] if _usable_jwk(k)]

    @staticmethod
    def _select(entry: _Entry, kid: str | None, url: str) -> dict[str, Any] | None:
        assert entry.keys is not None
        if kid is not None:
            return entry.by_kid.get(kid)
        if len(entry.keys) == 1:
            return entry.keys[0]
        _fail(f"token has no kid and the JWKS of {url} holds {len(entry.keys)} keys", "unknown-key")

    @staticmethod
    def _build(entry: _Entry, jwk: dict[str, Any], algorithm: str | None, url: str) -> jwt.PyJWK:
        kid = jwk.get("kid")
        label = f"key {kid!r} of {url}"
        published = jwk.get("alg")
        alg = algorithm or (published if isinstance(published, str) else None) or ""
        cache_key = (kid if isinstance(kid, str) else None, alg)
        if cache_key in entry.built:
            return entry.built[cache_key]
        if algorithm is not None:
            if published is not None and published != algorithm:
                _fail(f"{label} is published for {published!r}, token says {algorithm!r}", "disallowed-algorithm")
            kty, crv = _KEY_SHAPE.get(algorithm, (None, None))
            if kty is None:
                _fail(f"algorithm {algorithm!r} is not an asymmetric JWS algorithm", "disallowed-algorithm")
            if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
                _fail(
                    f"{label} is kty={jwk.get('kty')!r} crv={jwk.get('crv')!r}, unusable for {algorithm}",
                    "disallowed-algorithm",
                )
        try:
            built = jwt.PyJWK(jwk, algorithm or None)
        except jwt.PyJWTError as exc:
            _fail(f"{label} cannot be loaded: {exc}", "invalid-key")
        if built.algorithm_name not in _KEY_SHAPE:
            _fail(f"{label} resolves to {built.algorithm_name!r}, not an allowed algorithm", "disallowed-algorithm")
        entry.built[cache_key] = built
        return built


def _usable_jwk(jwk: Any) -> bool:
    """Only public signature keys of the asymmetric types we verify with."""
    if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC"):
        return False
    if jwk.get("use", "sig") != "sig" or "d" in jwk:
        return False
    return "kid" not in jwk or isinstance(jwk["kid"], str)


# ---------------------------------------------------------------------------
# Caller tokens


class Verifier:
    """Verify a caller's OIDC token against the pinned issuers."""

    def __init__(self, issuers: Sequence[Issuer], *, jwks: JwksCache | None = None) -> None:
        self._issuers = tuple(issuers)
        self._by_iss: dict[str, list[Issuer]] = {}
        for issuer in self._issuers:
            self._by_iss.setdefault(issuer.issuer, []).append(issuer)
        self._jwks = jwks or JwksCache()

    def verify_authorization(self, header: str | None) -> VerifiedToken:
        """``Authorization: Bearer <jwt>``; the scheme is case-insensitive."""
        if header is None or not header.strip(" \t"):
            _fail("no Authorization header", "missing-token")
        if len(header) > MAX_TOKEN_CHARS + 64:
            _fail(f"Authorization header is {len(header)} characters", "token-too-large")
        parts = header.strip(" \t").split(" ")
        if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1]:
            scheme = parts[0][:16] if parts[0].isascii() and parts[0].isprintable() else "?"
            _fail(
                f"Authorization must be 'Bearer <token>' (scheme {scheme!r}, {len(parts)} parts)",
                "malformed-authorization",
            )
        return self.verify(parts[1])

    def verify(self, token: str) -> VerifiedToken:
        """Verify ``token`` and return its principal, replay key and expiry.

        ``replay_key`` is None when the issuer has ``replay_protection`` off;
        otherwise ``"{issuer.name}:{sha256hex(jti)}"``, or, when the token has no
        jti, a digest of what it asserts (``replay_key_of_claims``): never of its
        encoding, since an ECDSA signature has two valid forms (s and n - s).
        """
        parsed = _parse_compact(token)
        issuer = self._issuer_for(parsed.unverified)
        alg = _check_algorithm(parsed, issuer.algorithms, f"issuer {issuer.name!r}")
        key = self._jwks.key(
            issuer.jwks_uri,
            parsed.header.get("kid"),
            ttl_s=issuer.jwks_ttl_seconds,
            cooldown_s=issuer.jwks_cooldown_seconds,
            algorithm=alg,
        )
        claims = _verified_payload(token, parsed, key, alg)
        exp = self._check_claims(issuer, claims)
        if not issuer.replay_protection:
            replay_key = None
        elif "jti" in claims:
            replay_key = f"{issuer.name}:{sha256hex(claims['jti'])}"
        else:
            replay_key = replay_key_of_claims(issuer.name, claims)
        identity = claims[issuer.identity_claim]
        return VerifiedToken(
            principal=Principal(issuer=issuer.name, identity=identity, claims=claims),
            replay_key=replay_key,
            expires_at=clock.from_epoch(exp),
            replay_until=clock.from_epoch(exp + issuer.leeway_seconds),
        )

    def _issuer_for(self, unverified: Mapping[str, Any]) -> Issuer:
        iss = unverified.get("iss")
        if iss is None:
            _fail("claim 'iss' is required", "missing-claim")
        if not isinstance(iss, str):
            _fail(f"claim 'iss' is a {type(iss).__name__}", "untrusted-issuer")
        candidates = self._by_iss.get(iss)
        if not candidates:
            shown = iss[:200].encode("unicode_escape").decode("ascii")
            _fail(f"issuer {shown!r} is not pinned", "untrusted-issuer")
        if len(candidates) > 1:
            # Same issuer configured twice (different audiences): the audience picks.
            for candidate in candidates:
                if _audience_is(unverified.get("aud"), candidate.audience):
                    return candidate
        return candidates[0]

    @staticmethod
    def _check_claims(issuer: Issuer, claims: Mapping[str, Any]) -> float:
        now = clock.epoch()
        leeway = issuer.leeway_seconds
        if claims.get("iss") != issuer.issuer:
            _fail(f"verified iss {claims.get('iss')!r} is not {issuer.issuer!r}", "untrusted-issuer")
        exp = _numeric(claims, "exp", required=True)
        iat = _numeric(claims, "iat", required=True)
        nbf = _numeric(claims, "nbf", required=False)
        assert exp is not None and iat is not None
        if exp <= now - leeway:
            _fail(f"token expired at {exp:.0f} (now {now:.0f}, leeway {leeway}s)", "token-expired")
        if iat > now + leeway:
            _fail(f"token issued in the future: iat {iat:.0f} (now {now:.0f}, leeway {leeway}s)", "issued-in-future")
        if nbf is not None and nbf > now + leeway:
            _fail(f"token not valid before {nbf:.0f} (now {now:.0f}, leeway {leeway}s)", "token-not-yet-valid")
        if exp <= iat:
            _fail(f"token exp {exp:.0f} is not after iat {iat:.0f}", "invalid-claim")
        if exp - iat > issuer.max_token_ttl_seconds:
            _fail(f"token lifetime {exp - iat:.0f}s exceeds {issuer.max_token_ttl_seconds}s", "token-lifetime-too-long")
        if "aud" not in claims:
            _fail("claim 'aud' is required", "missing-claim")
        if not _audience_is(claims["aud"], issuer.audience):
            _fail(f"aud {str(claims['aud'])[:200]!r} is not exactly {issuer.audience!r}", "wrong-audience")
        _clean_string(claims, "sub")
        _clean_string(claims, issuer.identity_claim)
        if "jti" in claims and (not isinstance(claims["jti"], str) or not claims["jti"]):
            _fail("claim 'jti' must be a non-empty string", "invalid-claim")
        return exp


def replay_key_of_claims(issuer_name: str, claims: Mapping[str, Any]) -> str:
    """The replay key of a token without ``jti``: issuer, subject, issued-at and the whole signed
    content, as canonical JSON. Re-encoding the token (another valid signature, other base64
    or JSON spelling) asserts the same thing and so gets the same key."""
    canonical = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    asserted = json.dumps([claims.get("iss"), claims.get("sub"), claims.get("iat"), canonical])
    return f"{issuer_name}:claims:{sha256hex(asserted)}"


# ---------------------------------------------------------------------------
# Chat-ops bot messages


def bot_jwks_url(keys_base_url: str, email: str) -> str:
    return f"{keys_base_url.rstrip('/')}/service_accounts/v1/metadata/jwk/{quote(email, safe='@')}"


class BotVerifier:
    """Verify a bot message: a JWT its service account signed with ``signJwt``."""

    ALGORITHMS = ("RS256",)

    def __init__(
        self,
        bots: Sequence[Bot],
        *,
        audience: str,
        keys_base_url: str,
        max_ttl_s: int,
        jwks: JwksCache | None = None,
        jwks_ttl_s: int = BOT_JWKS_TTL_S,
        jwks_cooldown_s: int = BOT_JWKS_COOLDOWN_S,
        clock_skew_s: int = BOT_CLOCK_SKEW_S,
    ) -> None:
        self._bots = {bot.service_account: bot for bot in bots}
        self._audience = audience
        self._keys_base_url = keys_base_url
        self._max_ttl_s = max_ttl_s
        self._jwks = jwks or JwksCache()
        self._jwks_ttl_s = jwks_ttl_s
        self._jwks_cooldown_s = jwks_cooldown_s
        self._skew_s = clock_skew_s

    def verify(self, token: str) -> tuple[Bot, dict[str, Any]]:
        parsed = _parse_compact(token)
        iss = parsed.unverified.get("iss")
        if iss is None:
            _fail("claim 'iss' is required", "missing-claim")
        bot = self._bots.get(iss) if isinstance(iss, str) else None
        if bot is None:
            shown = str(iss)[:200].encode("unicode_escape").decode("ascii")
            _fail(f"iss {shown!r} is not a configured bot", "unknown-bot")
        alg = _check_algorithm(parsed, self.ALGORITHMS, f"bot {bot.service_account}")
        kid = parsed.header.get("kid")
        if kid is None:
            _fail("signJwt tokens carry a kid; this one has none", "unknown-key")
        key = self._jwks.key(
            bot_jwks_url(self._keys_base_url, bot.service_account),
            kid,
            ttl_s=self._jwks_ttl_s,
            cooldown_s=self._jwks_cooldown_s,
            algorithm=alg,
        )
        claims = _verified_payload(token, parsed, key, alg)
        self._check_claims(bot, claims)
        return bot, claims

    def _check_claims(self, bot: Bot, claims: Mapping[str, Any]) -> None:
        now = clock.epoch()
        if claims.get("iss") != bot.service_account:
            _fail(f"verified iss {claims.get('iss')!r} is not {bot.service_account!r}", "unknown-bot")
        if "sub" not in claims:
            _fail("claim 'sub' is required", "missing-claim")
        if claims["sub"] != bot.service_account:
            _fail(
                f"sub {str(claims['sub'])[:200]!r} is not the signing account {bot.service_account!r}",
                "subject-mismatch",
            )
        if "aud" not in claims:
            _fail("claim 'aud' is required", "missing-claim")
        if not isinstance(claims["aud"], str) or claims["aud"] != self._audience:
            _fail(f"aud {str(claims['aud'])[:200]!r} is not exactly {self._audience!r}", "wrong-audience")
        exp = _numeric(claims, "exp", required=True)
        iat = _numeric(claims, "iat", required=True)
        nbf = _numeric(claims, "nbf", required=False)
        assert exp is not None and iat is not None
        if exp <= now:
            _fail(f"message expired at {exp:.0f} (now {now:.0f})", "token-expired")
        if iat > now + self._skew_s:
            _fail(f"message issued in the future: iat {iat:.0f} (now {now:.0f})", "issued-in-future")
        if nbf is not None and nbf > now + self._skew_s:
            _fail(f"message not valid before {nbf:.0f} (now {now:.0f})", "token-not-yet-valid")
        if exp <= iat:
            _fail(f"message exp {exp:.0f} is not after iat {iat:.0f}", "invalid-claim")
        if exp - iat > self._max_ttl_s:
            _fail(f"message lifetime {exp - iat:.0f}s exceeds {self._max_ttl_s}s", "token-lifetime-too-long")
        if "jti" not in claims:
            _fail("claim 'jti' is required", "missing-claim")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            _fail("claim 'jti' must be a non-empty string", "invalid-claim")
