"""IAM Service Account Credentials API client (REST), errors wrapped.

Calls ``{endpoint}/v1/projects/-/serviceAccounts/{email}:{method}`` with the
service's own Google credentials (google-auth Application Default
Credentials, or a static bearer for the local stand-in). One overall deadline
per call; bounded retries with full-jitter backoff on 500, 502, 503 and 504
only (a timeout is never retried: the first attempt may have minted).
Redirects are never followed. Nothing above this module sees ``requests``
exceptions; every failure is a ``VendingError``, and only what can succeed on
retry is labelled ``retryable``:

    IAM answered             error class            HTTP  status               reason                  retryable
    429                      RateLimitedError       429   RESOURCE_EXHAUSTED   iam-rate-limited        yes (1)
    400                      BadRequestError        400   FAILED_PRECONDITION  iam-rejected            no  (2)
    401                      InternalError          500   INTERNAL             iam-unauthenticated     no  (3)
    403                      PermissionDeniedError  403   PERMISSION_DENIED    iam-permission-denied   no
    404                      NotFoundError          404   NOT_FOUND            iam-target-not-found    no
    other 4xx                BadRequestError        400   FAILED_PRECONDITION  iam-rejected            no  (2)
    5xx, retries exhausted   UpstreamError          502   UNAVAILABLE          iam-error               yes
    timeout, refused, reset  UnavailableError       503   UNAVAILABLE          iam-unavailable         yes (4)
    200 unreadable (5)       UpstreamError          502   UNAVAILABLE          iam-bad-response        yes (4)
    1xx, 3xx, other 2xx      UpstreamError          502   UNAVAILABLE          iam-bad-response        yes (4)

(1) ``Retry-After`` is IAM's header when it is delta-seconds (capped at
    3600), else 5 seconds (missing, not an integer, an HTTP date).
(2) The message quotes IAM's own message, truncated to one line of 300
    characters.
(3) The service's own credentials were refused: a server misconfiguration
    the caller cannot fix.
(4) IAM may have minted: the caller of this client records the issuance as
    unconfirmed. Retrying is safe for the caller.
(5) A 200 whose body is not JSON, not a JSON object, or lacks a field or has
    it of the wrong type: ``accessToken``, ``expireTime`` (RFC 3339),
    ``token``, ``keyId``, ``signedJwt``, ``signedBlob``.

An error body is read for its ``error.message`` when it is a JSON object of
that shape; anything else (HTML, empty, truncated JSON, a list) maps by the
status code alone. ``detail`` (for the log) is ``"{method} {status}: {IAM's
message}"``; the body of a 200 is never logged, it may hold a credential.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
import urllib3.exceptions

from vending import clock
from vending.errors import (
    BadRequestError,
    InternalError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    UnavailableError,
    UpstreamError,
    VendingError,
)

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
RETRY_STATUSES = frozenset({500, 502, 503, 504})
RETRY_AFTER_DEFAULT_S = 5  # IAM's 429 without a usable Retry-After (missing, not an integer, an HTTP date)
RETRY_AFTER_MAX_S = 3600  # a larger Retry-After from IAM is capped
UPSTREAM_MESSAGE_MAX = 300  # characters of IAM's own error message kept (one line)
# Anything a transport can raise below ``requests`` that it may fail to wrap: all end as ``iam-unavailable``.
TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)
RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
BAD_RESPONSE = "The IAM Credentials API returned an unexpected response; retry later."


@dataclass(frozen=True)
class AccessToken:
    """``generateAccessToken``'s answer: the token and when it expires."""

    token: str
    expire_time: Any  # aware datetime


@dataclass(frozen=True)
class Signature:
    """``signJwt`` / ``signBlob``'s answer: the signing key's id and the signature."""

    key_id: str
    value: str  # signed JWT, or base64 signature for signBlob


class StaticToken:
    """A fixed bearer (local stand-in only)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self) -> str:
        return self._token


class GoogleCredentialsToken:
    """Application Default Credentials, refreshed when stale, shared across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._creds: Any = None
        self._request: Any = None

    def __call__(self) -> str:
        with self._lock:
            if self._creds is None:
                import google.auth
                import google.auth.exceptions
                import google.auth.transport.requests

                try:
                    self._creds, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
                except google.auth.exceptions.DefaultCredentialsError as exc:
                    raise UnavailableError(
                        "The service has no Google credentials of its own.",
                        reason="service-credentials-unavailable",
                        detail=repr(exc),
                    ) from exc
                self._request = google.auth.transport.requests.Request()
            if not self._creds.valid:
                try:
                    self._creds.refresh(self._request)
                except Exception as exc:  # google.auth.exceptions.* -> our tree
                    raise UnavailableError(
                        "Could not obtain the service's own Google credentials.",
                        reason="service-credentials-unavailable",
                        detail=repr(exc),
                    ) from exc
            return str(self._creds.token)


class IamCredentials:
    """Client of the four IAM Credentials methods."""

    def __init__(
        self,
        endpoint: str,
        token_source: Callable[[], str],
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        session: requests.Session | None = None,
        backoff_s: float = 0.1,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token = token_source
        self._timeout = timeout_s
        self._retries = retries
        self._backoff = backoff_s
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            # requests re-reads proxy and CA settings from os.environ on every call (~0.2 ms of CPU
            # per call, a fifth of a loopback IAM call): resolve them once for this endpoint.
            env = session.merge_environment_settings(self.endpoint, {}, None, None, None)
            session.proxies.update(env["proxies"])
            session.verify = env["verify"]
            session.trust_env = False
        self._session = session
        self.calls: Counter[str] = Counter()

    # -- the four methods -------------------------------------------------
    def generate_access_token(
        self, email: str, scopes: Sequence[str], lifetime_s: int, delegates: Sequence[str], *, reason: str
    ) -> AccessToken:
        body = {"scope": list(scopes), "lifetime": f"{int(lifetime_s)}s"}
        if delegates:
            body["delegates"] = list(delegates)
        method = "generateAccessToken"
        data = self._call(email, method, body, reason)
        token = _field(data, "accessToken", method)
        expire = _field(data, "expireTime", method)
        if not RFC3339.fullmatch(expire):
            raise _bad_response(method, "expireTime is not an RFC 3339 timestamp")
        try:
            expire_time = clock.parse_rfc3339(expire)
        except ValueError as exc:
            raise _bad_response(method, "expireTime is not an RFC 3339 timestamp") from exc
        return AccessToken(token, expire_time)

    def generate_id_token(
        self, email: str, audience: str, include_email: bool, delegates: Sequence[str], *, reason: str
    ) -> str:
        body: dict[str, Any] = {"audience": audience, "includeEmail": bool(include_email)}
        if delegates:
            body["delegates"] = list(delegates)
        data = self._call(email, "generateIdToken", body, reason)
        return _field(data, "token", "generateIdToken")

    def sign_jwt(self, email: str, claims: dict[str, Any], delegates: Sequence[str], *, reason: str) -> Signature:
        body: dict[str, Any] = {"payload": json.dumps(claims, separators=(",", ":"), sort_keys=True)}
        if delegates:
            body["delegates"] = list(delegates)
        data = self._call(email, "signJwt", body, reason)
        return Signature(_field(data, "keyId", "signJwt"), _field(data, "signedJwt", "signJwt"))

    def sign_blob(self, email: str, payload: bytes, delegates: Sequence[str], *, reason: str) -> Signature:
        body: dict[str, Any] = {"payload": base64.b64encode(payload).decode("ascii")}
        if delegates:
            body["delegates"] = list(delegates)
        data = self._call(email, "signBlob", body, reason)
        return Signature(_field(data, "keyId", "signBlob"), _field(data, "signedBlob", "signBlob"))

    # -- transport ----------------------------------------------------------
    def _call(self, email: str, method: str, body: dict[str, Any], reason: str) -> dict[str, Any]:
        url = f"{self.endpoint}/v1/projects/-/serviceAccounts/{quote(email, safe='@')}:{method}"
        headers = {
            "Authorization": f"Bearer {self._token()}",
            "Content-Type": "application/json",
            "X-Goog-Request-Reason": reason,
        }
        payload = json.dumps(body)
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnavailableError(
                    "The IAM Credentials API did not answer in time.",
                    reason="iam-unavailable",
                    detail=f"{method} deadline after {attempt - 1} attempts",
                )
            self.calls[method] += 1
            try:
                resp = self._session.post(url, data=payload, headers=headers, timeout=remaining, allow_redirects=False)
            except requests.Timeout as exc:
                raise UnavailableError(
                    "The IAM Credentials API did not answer in time.",
                    reason="iam-unavailable",
                    detail=f"{method} timeout",
                ) from exc
            except TRANSPORT_ERRORS as exc:
                raise UnavailableError(
                    "The IAM Credentials API could not be reached.",
                    reason="iam-unavailable",
                    detail=f"{method}: {type(exc).__name__}",
                ) from exc
            if resp.status_code == 200:
                return self._body(resp, method)
            if resp.status_code in RETRY_STATUSES and attempt <= self._retries:
                sleep = random.uniform(0, self._backoff * (2 ** (attempt - 1)))
                if time.monotonic() + sleep < deadline:
                    time.sleep(sleep)
                    continue
            raise self._error(resp, email, method)

    @staticmethod
    def _body(resp: requests.Response, method: str) -> dict[str, Any]:
        """The JSON object of a 200, or ``iam-bad-response`` (the body itself is never logged)."""
        try:
            data = json.loads(resp.content)
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested past the parser's limit
            raise _bad_response(method, f"200 body is not JSON ({len(resp.content)} bytes)") from exc
        if not isinstance(data, dict):
            raise _bad_response(method, f"200 body is a JSON {type(data).__name__}, not an object")
        return data

    @staticmethod
    def _error(resp: requests.Response, email: str, method: str) -> VendingError:
        status = resp.status_code
        upstream = _upstream_message(resp)
        detail = f"{method} {status}: {upstream}"
        error: VendingError
        if status == 429:
            return RateLimitedError(
                "The IAM Credentials API quota is exhausted; retry later.",
                retry_after=_retry_after(resp.headers.get("Retry-After")),
                reason="iam-rate-limited",
                detail=detail,
            )
        if status == 401:
            return InternalError(
                "The IAM Credentials API did not accept the service's own credentials; the service is misconfigured.",
                reason="iam-unauthenticated",
                detail=detail,
            )
        if status == 403:
            return PermissionDeniedError(
                f"The vending service account lacks roles/iam.serviceAccountTokenCreator on {email} "
                "(or on a delegate in the chain).",
                reason="iam-permission-denied",
                detail=detail,
            )
        if status == 404:
            return NotFoundError(
                f"The target service account {email} (or a delegate in the chain) does not exist.",
                reason="iam-target-not-found",
                detail=detail,
            )
        if 400 <= status < 500:
            error = BadRequestError(
                f"The IAM Credentials API rejected the request (HTTP {status}): {upstream or 'no message'}",
                reason="iam-rejected",
                detail=detail,
            )
            error.status = "FAILED_PRECONDITION"
            return error
        if 500 <= status < 600:
            error = UpstreamError("The IAM Credentials API failed; retry later.", reason="iam-error", detail=detail)
            error.retryable = True
            return error
        return _bad_response(method, f"HTTP {status}")  # 1xx, 3xx (redirects are not followed), 2xx but 200


def _field(data: dict[str, Any], name: str, method: str) -> str:
    """A required non-empty string field of IAM's answer, or ``iam-bad-response``."""
    value = data.get(name)
    if isinstance(value, str) and value:
        return value
    what = "missing" if value is None else "empty" if value == "" else f"a JSON {type(value).__name__}, not a string"
    raise _bad_response(method, f"{name} is {what}")


def _bad_response(method: str, what: str) -> UpstreamError:
    """A 200 (or other non-error answer) that could not be read; IAM may have minted, so retryable."""
    error = UpstreamError(BAD_RESPONSE, reason="iam-bad-response", detail=f"{method}: {what}")
    error.retryable = True
    return error


def _upstream_message(resp: requests.Response) -> str:
    """IAM's own ``error.message``, on one line and truncated; "" when the body is not that shape."""
    try:
        err = json.loads(resp.content).get("error")
        message = err.get("message") if isinstance(err, dict) else None
    except (ValueError, RecursionError, AttributeError):  # not JSON, not an object (a list, a string...)
        return ""
    if not isinstance(message, str):
        return ""
    one_line = " ".join("".join(c if c.isprintable() else " " for c in message[: UPSTREAM_MESSAGE_MAX * 2]).split())
    return one_line[:UPSTREAM_MESSAGE_MAX]


def _retry_after(header: str | None) -> int:
    """IAM's ``Retry-After`` in whole seconds when it is delta-seconds; else the default (5 s)."""
    value = (header or "").strip()
    if not re.fullmatch(r"[0-9]{1,9}", value):  # missing, negative, fractional, an HTTP date, garbage
        return RETRY_AFTER_DEFAULT_S
    return max(1, min(int(value), RETRY_AFTER_MAX_S))
