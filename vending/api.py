"""HTTP transport: routing, body limits, and the one error-to-response mapping.

``handle(request)`` takes a Flask/Werkzeug request (functions-framework) and
returns a Flask response. Handlers call the use cases (``vending.vend``, ``vending.service``) and return JSON
dicts; every ``VendingError`` becomes
``{"error": {"code", "status", "reason", "message", "request_id"}}`` here and
nowhere else. Unexpected exceptions become a generic 500: no stack trace and
no credential material ever reaches a caller.
"""

from __future__ import annotations

import json
import re
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from flask import Request, Response
from werkzeug.exceptions import HTTPException

from vending import log, tracing
from vending.errors import (
    AuthenticationError,
    BadRequestError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
    VendingError,
)
from vending.inputs import MAX_BLOB_BODY_BYTES, MAX_BODY_BYTES

Handler = Callable[[Request, dict[str, str]], Any]

_ID = r"(?P<id>[^/:]+)"
_EMAIL = r"(?P<email>[^/:]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/healthz"), "healthz"),
    ("GET", re.compile(r"/readyz"), "readyz"),
    ("POST", re.compile(r"/v1/access-tokens"), "access_token"),
    ("POST", re.compile(r"/v1/id-tokens"), "id_token"),
    ("POST", re.compile(r"/v1/signed-jwts"), "signed_jwt"),
    ("POST", re.compile(r"/v1/signed-blobs"), "signed_blob"),
    ("POST", re.compile(r"/v1/requests"), "create_request"),
    ("GET", re.compile(r"/v1/requests"), "list_requests"),
    ("GET", re.compile(rf"/v1/requests/{_ID}"), "get_request"),
    ("POST", re.compile(rf"/v1/requests/{_ID}:(?P<action>withdraw|approve|deny|revoke)"), "act_on_request"),
    ("GET", re.compile(r"/v1/issuances"), "list_issuances"),
    ("GET", re.compile(rf"/v1/issuances/{_ID}"), "get_issuance"),
    ("GET", re.compile(rf"/v1/service-accounts/{_EMAIL}"), "get_kill_switch"),
    ("POST", re.compile(rf"/v1/service-accounts/{_EMAIL}:(?P<action>disable|enable)"), "act_on_kill_switch"),
    ("GET", re.compile(r"/v1/entitlements"), "list_entitlements"),
    ("GET", re.compile(r"/v1/whoami"), "whoami"),
]
# The web console (``vending.console``): static pages and the session endpoints; not part of the JSON API.
CONSOLE_PREFIX = "/console"


def _read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise BadRequestError(f"The body is larger than {limit} bytes.", reason="body-too-large")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise BadRequestError(f"The body is larger than {limit} bytes.", reason="body-too-large")
    return data


def credential(request: Request) -> Any:
    """How the caller of a console-capable endpoint authenticates: its ``Authorization`` header, or
    (without one) the console session cookie with the CSRF header (``vending.sessions``). Vends and
    the kill switch read ``Authorization`` only: a session never mints a credential."""
    from vending.sessions import COOKIE, CSRF_HEADER, SessionCredential

    authorization = request.headers.get("Authorization")
    cookie = request.cookies.get(COOKIE)
    if authorization is not None or not cookie:
        return authorization
    return SessionCredential(
        cookie=cookie, csrf=request.headers.get(CSRF_HEADER), state_changing=request.method not in ("GET", "HEAD")
    )


def _query_args(request: Request, allowed: tuple[str, ...] | None = None) -> dict[str, str]:
    """Query parameters, each at most once (and, with ``allowed``, only those)."""
    args = {}
    for key in request.args:
        values = request.args.getlist(key)
        if len(values) != 1:
            raise BadRequestError(f"Query parameter {key!r} must appear once.", reason="invalid-argument")
        args[key] = values[0]
    if allowed is not None and set(args) - set(allowed):
        raise BadRequestError(
            f"Unknown query parameter(s): {', '.join(sorted(set(args) - set(allowed)))}.", reason="unknown-field"
        )
    return args


def _json(status: int, payload: dict[str, Any], request_id: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"))
    resp = Response(body, status=status, mimetype="application/json")
    resp.headers["X-Request-Id"] = request_id
    resp.headers["Cache-Control"] = "no-store"
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def error_response(exc: VendingError, request_id: str) -> Response:
    """The one mapping from the error tree to HTTP."""
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, AuthenticationError) and exc.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="token-vending"'
    if isinstance(exc, MethodNotAllowedError) and exc.detail:
        headers["Allow"] = exc.detail
    payload = {
        "error": {
            "code": exc.http_status,
            "status": exc.status,
            "reason": exc.reason,
            "message": exc.message,
            "request_id": request_id,
        }
    }
    return _json(exc.http_status, payload, request_id, headers)


def framework_error(exc: HTTPException, path: str) -> Response:
    """An error Flask/werkzeug raised before ``handle`` ran, in the same envelope.

    The framework's router refuses some paths itself (one holding a newline,
    ``/robots.txt``, ``/favicon.ico``) with an HTML 404; callers must only
    ever see the JSON envelope.
    """
    request_id = uuid.uuid4().hex
    code = exc.code or 500
    error: VendingError
    if code == 404:
        error = NotFoundError(f"No such endpoint: {path[:200]}.", reason="unknown-path")
    elif 400 <= code < 500:
        error = BadRequestError("The request could not be understood.", reason="invalid-request")
    else:
        log.error("framework error", request_id=request_id, status=code, error_type=type(exc).__name__)
        error = InternalError("An internal error occurred; it has been logged.")
    return error_response(error, request_id)


def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
    allowed = []
    for route_method, pattern, name in ROUTES:
        m = pattern.fullmatch(path)
        if m:
            if route_method == method:
                return name, m.groupdict()
            allowed.append(route_method)
    if allowed:
        raise MethodNotAllowedError(
            f"Method {method} is not allowed on {path}.", detail=", ".join(sorted(set(allowed)))
        )
    raise NotFoundError(f"No such endpoint: {path}.", reason="unknown-path")


def _trace(request: Request, project: str) -> str | None:
    header = request.headers.get("X-Cloud-Trace-Context", "")
    trace_id = header.split("/", 1)[0]
    if re.fullmatch(r"[0-9a-f]{32}", trace_id):
        return f"projects/{project}/traces/{trace_id}"
    return None


def handle(request: Request, get_handlers: Callable[[], Any]) -> Response:
    """Entry point for every HTTP request."""
    request_id = uuid.uuid4().hex
    raw_path = request.path
    path = raw_path.rstrip("/") or "/"
    token = log.bind(request_id=request_id, http_method=request.method, path=path[:200])
    handlers = None
    console = path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")
    try:
        if console:
            handlers = get_handlers()
            response: Response = handlers.console(request, raw_path, request_id)
            return response
        name, params = _route(request.method, path)
        handlers = get_handlers()
        trace = _trace(request, handlers.project)
        if trace:
            log.bind(trace=trace)
        result = getattr(handlers, name)(request, params)
        status = 200
        if isinstance(result, tuple):
            status, result = result
        return _json(status, result, request_id)
    except VendingError as exc:
        if exc.http_status >= 500 and not exc.logged:  # one log line per failure
            log.error("request failed", reason=exc.reason, status=exc.http_status, detail=exc.detail or exc.message)
        response = error_response(exc, request_id)
        if console:
            from vending.console import secure_headers

            secure_headers(response)
        return response
    except Exception as exc:  # noqa: BLE001 - last resort: never leak a stack trace to the caller
        log.error(
            "unhandled error", error_type=type(exc).__name__, traceback=log.redact(traceback.format_exc(limit=20))
        )
        return error_response(InternalError("An internal error occurred; it has been logged."), request_id)
    finally:
        if handlers is not None:
            handlers.after_request()
        log.reset(token)


class Handlers:
    """Binds routes to the use cases; one instance per process."""

    def __init__(
        self,
        vend: Any,
        requests: Any,
        issuances: Any,
        events: Any,
        *,
        project: str,
        service_accounts: Any = None,
        request_list: Any = None,
        profile: Any = None,
        console: Any = None,
        readiness: Any = None,
    ) -> None:
        self.vend = vend
        self.readiness = readiness  # vending.readiness.Readiness: GET /readyz
        self.requests = requests
        self.issuances = issuances
        self.service_accounts = service_accounts
        self.request_list = request_list
        self.profile = profile
        self.console_app = console
        self.events = events
        self.project = project

    def console(self, request: Request, path: str, request_id: str) -> Response:
        if self.console_app is None:
            raise NotFoundError(f"No such endpoint: {path[:200]}.", reason="unknown-path")
        response: Response = self.console_app.handle(request, path, request_id)
        return response

    def after_request(self) -> None:
        self.events.flush(2.0)

    def healthz(self, request: Request, params: dict[str, str]) -> dict[str, Any]:
        return {"status": "ok"}

    def readyz(self, request: Request, params: dict[str, str]) -> dict[str, Any]:
        """The store and the IAM endpoint answer (cached per instance); 503 ``not-ready`` otherwise."""
        if self.readiness is None:
            raise UnavailableError("Not ready: no readiness checks are configured.", reason="not-ready")
        result: dict[str, Any] = self.readiness.check()
        return result

    def _vend(self, kind: str, request: Request, limit: int = MAX_BODY_BYTES) -> Any:
        # One span per vend when VENDING_TRACING=cloud-trace (vending/tracing.py); off: not even a no-op span.
        if not tracing.enabled():
            return self.vend(kind, request.headers.get("Authorization"), _read_body(request, limit))
        with tracing.span(f"vend {kind}", **{"vending.kind": kind}) as span:
            try:
                result = self.vend(kind, request.headers.get("Authorization"), _read_body(request, limit))
            except VendingError as exc:
                span.set("http.status_code", exc.http_status)
                span.set("vending.reason", exc.reason)
                raise
            span.set("http.status_code", 200)
            return result

    def access_token(self, request: Request, params: dict[str, str]) -> Any:
        return self._vend("access_token", request)

    def id_token(self, request: Request, params: dict[str, str]) -> Any:
        return self._vend("id_token", request)

    def signed_jwt(self, request: Request, params: dict[str, str]) -> Any:
        return self._vend("signed_jwt", request)

    def signed_blob(self, request: Request, params: dict[str, str]) -> Any:
        return self._vend("signed_blob", request, MAX_BLOB_BODY_BYTES)

    def create_request(self, request: Request, params: dict[str, str]) -> Any:
        return self.requests.create(credential(request), _read_body(request))

    def get_request(self, request: Request, params: dict[str, str]) -> Any:
        return self.requests.get(credential(request), params["id"])

    def act_on_request(self, request: Request, params: dict[str, str]) -> Any:
        return self.requests.act(credential(request), params["id"], params["action"], _read_body(request))

    def list_requests(self, request: Request, params: dict[str, str]) -> Any:
        return self.request_list.list(credential(request), _query_args(request))

    def list_issuances(self, request: Request, params: dict[str, str]) -> Any:
        return self.issuances.list(credential(request), _query_args(request))

    def get_issuance(self, request: Request, params: dict[str, str]) -> Any:
        return self.issuances.get(credential(request), params["id"])

    def list_entitlements(self, request: Request, params: dict[str, str]) -> Any:
        _query_args(request, allowed=())
        return self.profile.entitlements(credential(request))

    def whoami(self, request: Request, params: dict[str, str]) -> Any:
        _query_args(request, allowed=())
        return self.profile.whoami(credential(request))

    def get_kill_switch(self, request: Request, params: dict[str, str]) -> Any:
        return self.service_accounts.status(request.headers.get("Authorization"), params["email"])

    def act_on_kill_switch(self, request: Request, params: dict[str, str]) -> Any:
        return self.service_accounts.act(
            request.headers.get("Authorization"), params["email"], params["action"], _read_body(request)
        )
