"""The web console: plain HTML, CSS and JavaScript served by ``vend_http`` at ``/console/``.

No build step and nothing fetched at run time (on the embedded default the page
loads only its own three files; in production it also loads Google Identity
Services, the one script the Content-Security-Policy then names). The pages
call the same ``/v1`` endpoints as every client, with the session cookie of
``vending.sessions`` instead of a bearer token and ``X-CSRF-Token`` on every
state-changing call. Routes:

    GET    /console/             the page (``static/index.html``; views by hash: requests, approvals, credentials)
    GET    /console/static/NAME  its script, style sheet and images
    GET    /console/session      who is signed in (and the CSRF token), or how to sign in
    POST   /console/session      sign in: {"id_token"} (Google) or {"dev_subject"} (embedded default only)
    DELETE /console/session      sign out (needs the CSRF token)

Every console response carries the security headers of ``secure_headers``.
docs/console.md has the design and the threats.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Request, Response

from vending import log
from vending.config import Policy, has_control
from vending.errors import (
    AuthenticationError,
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
)
from vending.sessions import COOKIE, CSRF_HEADER, Sessions, session_view

STATIC_DIR = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
GOOGLE_ISSUER = "https://accounts.google.com"
GIS_SCRIPT = "https://accounts.google.com/gsi/client"
GIS_ORIGIN = "https://accounts.google.com/gsi/"
STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
MAX_SIGN_IN_BODY = 16 * 1024


def content_security_policy(google: bool) -> str:
    """The strict policy; with Google sign-in configured, GIS's script, frame and styles are added by name."""
    if not google:
        return STRICT_CSP
    return (
        f"default-src 'self'; script-src 'self' {GIS_SCRIPT}; style-src 'self' {GIS_ORIGIN}style; "
        f"img-src 'self'; connect-src 'self' {GIS_ORIGIN}; frame-src {GIS_ORIGIN}; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'; object-src 'none'"
    )


def secure_headers(response: Response, *, google: bool = False) -> Response:
    """The headers of every console response: no framing, no sniffing, no referrer, strict CSP."""
    response.headers["Content-Security-Policy"] = content_security_policy(google)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin-allow-popups" if google else "same-origin"
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def development_subjects(policy: Policy, issuer: str) -> list[str]:
    """Identities of the development issuer that the policy names: suggestions for the sign-in picker."""
    prefix = f"{issuer}/"
    named: set[str] = set()
    for members in policy.groups.values():
        named.update(policy.expand(members))
    named.update(policy.auditor_set)
    for ent in policy.entitlements:
        if ent.approval:
            named.update(policy.expand(ent.approval.approvers))
        for rule in ent.principals:
            sub = rule.claims.get("sub")
            if rule.issuer == issuer and isinstance(sub, str):
                named.add(prefix + sub)
    named.update(policy.kill_switch_operator_set)
    return sorted(n[len(prefix) :] for n in named if n.startswith(prefix))


class Console:
    """Serves the console's files and its session endpoints."""

    def __init__(self, sessions: Sessions, policy: Policy, *, development: bool, static_dir: Path = STATIC_DIR) -> None:
        self.sessions = sessions
        self.policy = policy
        self.static_dir = static_dir
        self.files = {p.name: p for p in static_dir.iterdir() if p.is_file() and p.suffix in CONTENT_TYPES}
        self.google = next((i for i in policy.issuers if i.issuer == GOOGLE_ISSUER), None)
        dev = next((i for i in policy.issuers if i.development), None) if development else None
        self.dev_issuer = dev.name if dev else None

    def handle(self, request: Request, path: str, request_id: str) -> Response:
        routes: dict[str, dict[str, Callable[[Request], Response]]] = {
            "/console": {"GET": self._index},
            "/console/": {"GET": self._index},
            "/console/session": {"GET": self._whoami, "POST": self._sign_in, "DELETE": self._sign_out},
        }
        if path.startswith("/console/static/"):
            routes[path] = {"GET": self._static}
        methods = routes.get(path)
        if methods is None:
            raise NotFoundError(f"No such endpoint: {path[:200]}.", reason="unknown-path")
        method = "GET" if request.method == "HEAD" else request.method
        if method not in methods:
            raise MethodNotAllowedError(
                f"Method {request.method} is not allowed on {path}.", detail=", ".join(sorted(methods))
            )
        response = methods[method](request)
        response.headers["X-Request-Id"] = request_id
        return secure_headers(response, google=self.google is not None)

    # -- files -----------------------------------------------------------------------------
    def _file(self, name: str) -> Response:
        path = self.files.get(name)
        if path is None:
            raise NotFoundError(f"No such file: {name[:100]}.", reason="unknown-path")
        response = Response(path.read_bytes(), status=200, content_type=CONTENT_TYPES[path.suffix])
        response.headers["Cache-Control"] = "no-cache"
        return response

    def _index(self, request: Request) -> Response:
        return self._file("index.html")

    def _static(self, request: Request) -> Response:
        name = request.path[len("/console/static/") :]
        if name == "index.html":
            raise NotFoundError("No such file.", reason="unknown-path")
        return self._file(name)

    # -- the session -------------------------------------------------------------------------
    def _json(self, payload: dict[str, Any], status: int = 200) -> Response:
        response = Response(json.dumps(payload, separators=(",", ":")), status=status, mimetype="application/json")
        response.headers["Cache-Control"] = "no-store"
        return response

    def sign_in_options(self) -> dict[str, Any]:
        return {
            "development": {"issuer": self.dev_issuer, "subjects": development_subjects(self.policy, self.dev_issuer)}
            if self.dev_issuer
            else None,
            "google": {"client_id": self.google.audience, "issuer": self.google.name} if self.google else None,
        }

    def _whoami(self, request: Request) -> Response:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            try:
                return self._json(session_view(self.sessions, self.sessions.read(cookie)))
            except AuthenticationError:  # expired, ended or forged: signed out, and the page offers sign-in
                pass
        response = self._json({"signed_in": False, "sign_in": self.sign_in_options()})
        if cookie:
            self._clear(response)
        return response

    def _same_origin(self, request: Request) -> None:
        """Refuse a sign-in posted from another site (login CSRF): JSON only, same origin only."""
        if request.mimetype != "application/json":
            raise BadRequestError(
                "Sign-in takes a JSON body (Content-Type: application/json).", reason="invalid-content-type"
            )
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        if (site is not None and site not in ("same-origin", "none")) or (
            origin is not None and urlsplit(origin).netloc != request.host
        ):
            raise PermissionDeniedError(
                "Sign-in is accepted from the console's own origin only.", reason="cross-origin-sign-in"
            )

    def _sign_in(self, request: Request) -> Response:
        self._same_origin(request)
        from vending.api import _read_body
        from vending.inputs import check_fields, parse_json

        body = parse_json(_read_body(request, MAX_SIGN_IN_BODY))
        check_fields(body, (), ("id_token", "dev_subject"))
        token, subject = body.get("id_token"), body.get("dev_subject")
        if (token is None) == (subject is None):
            raise BadRequestError("Give exactly one of id_token and dev_subject.", reason="invalid-sign-in")
        if subject is not None:
            if not isinstance(subject, str) or not subject.strip() or len(subject) > 320 or has_control(subject):
                raise BadRequestError("dev_subject must be an identity.", reason="invalid-sign-in")
            if self.dev_issuer is None:
                raise PermissionDeniedError(
                    "Development sign-in exists only on the embedded default.", reason="development-sign-in-disabled"
                )
            cookie, session = self.sessions.start_development(subject.strip())
            via = "development"
        else:
            if not isinstance(token, str):
                raise BadRequestError("id_token must be a string.", reason="invalid-sign-in")
            cookie, session = self.sessions.start(token)
            via = "id-token"
        log.notice(
            "console session started",
            audit=True,
            principal=session.principal.qualified,
            issuer=session.principal.issuer,
            via=via,
            session=_sid_digest(session.sid),
            expires_at=session.expires_at.isoformat(),
        )
        response = self._json(session_view(self.sessions, session))
        max_age = max(1, int((session.expires_at - session.issued_at).total_seconds()))
        response.set_cookie(COOKIE, cookie, max_age=max_age, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    def _sign_out(self, request: Request) -> Response:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            session = self.sessions.read(cookie)
            self.sessions.check_csrf(session, request.headers.get(CSRF_HEADER))
            self.sessions.end(session)
            log.notice(
                "console session ended",
                audit=True,
                principal=session.principal.qualified,
                session=_sid_digest(session.sid),
            )
        response = self._json({"signed_in": False, "sign_in": self.sign_in_options()})
        self._clear(response)
        return response

    @staticmethod
    def _clear(response: Response) -> None:
        response.set_cookie(COOKIE, "", max_age=0, expires=0, path="/", secure=True, httponly=True, samesite="Strict")


def _sid_digest(sid: str) -> str:
    return hashlib.sha256(sid.encode("ascii")).hexdigest()[:16]
