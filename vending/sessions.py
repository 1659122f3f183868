"""Console sessions: a person signs in once and works for the life of their ID token.

A machine caller sends a fresh OIDC token with every call, and each token of a
state-changing call is spent once (replay protection on what it asserts). A
person in a browser signs in once instead: the console posts one ID token
(Google Identity Services in production; on the embedded default a token the
server mints itself from the development issuer) to ``POST /console/session``;
it is verified exactly like a caller token (a pinned issuer of the policy, its
audience, its algorithms) and spent, and the answer sets a session cookie:

    __Host-vending-session = base64url(JSON payload) "." base64url(HMAC-SHA256)

signed with a key derived from ``VENDING_SESSION_KEY``. The payload holds a
random session id, the person's issuer, identity and the claims the policy's
principal rules read, and the expiry: the ID token's own, at most one hour
away. Nothing is stored per session; signing out records the session id as
used (the replay records, live until the session's expiry), and every request
made with a session reads that record once.

A session authenticates only the calls the console makes (access requests,
the ledger, who am I, entitlements); it never vends a credential and never
works the kill switch, which keep their bearer tokens. A state-changing call
made with a session must carry ``X-CSRF-Token``: a value bound to the session
(HMAC of its id under a separate derived key), handed to the page by ``GET
/console/session`` (same-origin only: no CORS). The cookie is ``HttpOnly;
Secure; SameSite=Strict; Path=/``. docs/console.md draws the threats.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from vending import clock
from vending.config import Policy
from vending.errors import AuthenticationError, PermissionDeniedError
from vending.identity import Principal, VerifiedToken, Verifier

COOKIE = "__Host-vending-session"
CSRF_HEADER = "X-CSRF-Token"
MAX_SESSION_S = 3600  # a session never outlives its ID token, nor one hour
MIN_SESSION_S = 60  # an ID token with less left than this starts no session
MAX_COOKIE_CHARS = 3800  # browsers keep 4096 bytes per cookie, name and attributes included
SESSION_REPLAY_PREFIX = "session-ended:"


class UsedMarks(Protocol):
    """The replay records (``vending.ledger.Ledger``): spend a key once, ask whether it was spent."""

    def consume(self, replay_key: str | None, replay_until: _dt.datetime) -> None: ...
    def is_used(self, replay_key: str) -> bool: ...


@dataclass(frozen=True)
class Session:
    """A console session, checked: whose it is and when it ends."""

    sid: str
    principal: Principal
    issued_at: _dt.datetime
    expires_at: _dt.datetime


@dataclass(frozen=True)
class SessionCredential:
    """What a browser request carries instead of ``Authorization``: the cookie, and the CSRF header."""

    cookie: str
    csrf: str | None
    state_changing: bool


Credential = str | SessionCredential | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_kept(policy: Policy, issuer: str, identity_claim: str) -> frozenset[str]:
    """The claims a session keeps: those the policy's principal rules of ``issuer`` read, and the identity."""
    names = {"sub", identity_claim}
    for ent in policy.entitlements:
        for rule in ent.principals:
            if rule.issuer == issuer:
                names.update(rule.claims)
    return frozenset(names)


class Sessions:
    """Start, read and end console sessions; check the CSRF token of a state-changing call."""

    def __init__(
        self,
        key: str,
        policy: Policy,
        verifier: Verifier,
        used: UsedMarks,
        *,
        dev_minter: Callable[[str], str] | None = None,
    ) -> None:
        secret = key.encode("utf-8")
        self._sign_key = hmac.new(secret, b"vending console session v1", hashlib.sha256).digest()
        self._csrf_key = hmac.new(secret, b"vending console csrf v1", hashlib.sha256).digest()
        self.policy = policy
        self.verifier = verifier
        self.used = used
        self.dev_minter = dev_minter

    # -- signing in and out -----------------------------------------------------------------
    def start(self, id_token: str) -> tuple[str, Session]:
        """Verify an ID token like any caller token, spend it, and return (cookie value, session)."""
        caller = self.verifier.verify(id_token)
        now = clock.now()
        expires = min(caller.expires_at, now + _dt.timedelta(seconds=MAX_SESSION_S))
        if (expires - now).total_seconds() < MIN_SESSION_S:
            raise AuthenticationError("the ID token expires within a minute: no session", reason="token-expiring")
        self.used.consume(caller.replay_key, caller.replay_until)
        issuer = self.policy.issuer(caller.principal.issuer)
        keep = claims_kept(self.policy, caller.principal.issuer, issuer.identity_claim if issuer else "sub")
        claims = {k: v for k, v in caller.principal.claims.items() if k in keep}
        session = Session(
            sid=secrets.token_hex(16),
            principal=Principal(issuer=caller.principal.issuer, identity=caller.principal.identity, claims=claims),
            issued_at=now,
            expires_at=expires,
        )
        cookie = self._encode(session)
        if len(cookie) > MAX_COOKIE_CHARS:
            raise AuthenticationError(
                f"session of {len(cookie)} characters does not fit a cookie", reason="session-too-large"
            )
        return cookie, session

    def start_development(self, subject: str) -> tuple[str, Session]:
        """The embedded default's sign-in: the server mints a development token for ``subject`` itself."""
        if self.dev_minter is None:
            raise PermissionDeniedError(
                "This service has no development issuer: sign in with your identity provider.",
                reason="development-sign-in-disabled",
            )
        return self.start(self.dev_minter(subject))

    def end(self, session: Session) -> None:
        """Sign out: the session id is spent until the session would have expired."""
        try:
            self.used.consume(SESSION_REPLAY_PREFIX + session.sid, session.expires_at)
        except AuthenticationError:
            pass  # already ended

    # -- reading -------------------------------------------------------------------------------
    def read(self, cookie: str) -> Session:
        """The session a cookie carries, or AuthenticationError (forged, expired, ended)."""
        session = self._decode(cookie)
        if session.expires_at <= clock.now():
            raise AuthenticationError("session expired", reason="session-expired")
        if self.used.is_used(SESSION_REPLAY_PREFIX + session.sid):
            raise AuthenticationError("session ended (signed out)", reason="session-ended")
        return session

    def csrf_token(self, session: Session) -> str:
        return _b64(hmac.new(self._csrf_key, session.sid.encode("ascii"), hashlib.sha256).digest())

    def check_csrf(self, session: Session, presented: str | None) -> None:
        if not presented or not hmac.compare_digest(
            presented.encode("utf-8", "replace"), self.csrf_token(session).encode("ascii")
        ):
            raise PermissionDeniedError(
                f"A call made with a console session needs the session's {CSRF_HEADER} header.",
                reason="csrf-token-invalid",
            )

    def caller(self, credential: SessionCredential) -> VerifiedToken:
        """A request authenticated by its session: the person, no replay key (a session is not a bearer)."""
        session = self.read(credential.cookie)
        if credential.state_changing:
            self.check_csrf(session, credential.csrf)
        return VerifiedToken(
            principal=session.principal, replay_key=None, expires_at=session.expires_at, replay_until=session.expires_at
        )

    # -- the cookie ------------------------------------------------------------------------------
    def _encode(self, session: Session) -> str:
        payload = {
            "v": 1,
            "sid": session.sid,
            "iss": session.principal.issuer,
            "id": session.principal.identity,
            "claims": dict(session.principal.claims),
            "iat": int(session.issued_at.timestamp()),
            "exp": int(session.expires_at.timestamp()),
        }
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        return f"{body}.{_b64(hmac.new(self._sign_key, body.encode('ascii'), hashlib.sha256).digest())}"

    def _decode(self, cookie: str) -> Session:
        if not cookie or len(cookie) > MAX_COOKIE_CHARS or not cookie.isascii() or cookie.count(".") != 1:
            raise AuthenticationError("malformed session cookie", reason="invalid-session")
        body, mac = cookie.split(".")
        expected = _b64(hmac.new(self._sign_key, body.encode("ascii"), hashlib.sha256).digest())
        if not hmac.compare_digest(mac.encode("ascii"), expected.encode("ascii")):
            raise AuthenticationError("session cookie signature does not verify", reason="invalid-session")
        try:
            data = json.loads(_unb64(body))
            claims = data["claims"]
            if data.get("v") != 1 or not isinstance(claims, Mapping):
                raise ValueError("unknown session version")
            principal = Principal(issuer=str(data["iss"]), identity=str(data["id"]), claims=dict(claims))
            return Session(
                sid=str(data["sid"]),
                principal=principal,
                issued_at=clock.from_epoch(data["iat"]),
                expires_at=clock.from_epoch(data["exp"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error, OverflowError) as exc:
            raise AuthenticationError(
                f"session cookie payload unreadable: {type(exc).__name__}", reason="invalid-session"
            ) from exc


class Callers:
    """Who is calling a console-capable endpoint: a bearer token (``Verifier``) or a console session."""

    def __init__(self, verifier: Verifier, sessions: Sessions | None) -> None:
        self.verifier = verifier
        self.sessions = sessions

    def verify_authorization(self, credential: Credential) -> VerifiedToken:
        if isinstance(credential, SessionCredential):
            if self.sessions is None:
                raise AuthenticationError("console sessions are not configured", reason="invalid-session")
            return self.sessions.caller(credential)
        return self.verifier.verify_authorization(credential)


def session_view(sessions: Sessions, session: Session) -> dict[str, Any]:
    """What ``GET /console/session`` tells the page: who, until when, and the CSRF token (never the cookie)."""
    return {
        "signed_in": True,
        "identity": session.principal.qualified,
        "issuer": session.principal.issuer,
        "expires_at": clock.rfc3339(session.expires_at),
        "csrf_token": sessions.csrf_token(session),
    }
