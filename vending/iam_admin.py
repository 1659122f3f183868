"""IAM API client (REST) for the kill switch: disable, enable and get a service account.

Calls ``{endpoint}/v1/projects/-/serviceAccounts/{email}`` (``iam.googleapis.com`` v1,
``projects.serviceAccounts``) with the service's own Google credentials, like
``vending.iam`` does for the IAM Credentials API:

    POST {email}:disable   body {}   -> {}        (iam.serviceAccounts.disable)
    POST {email}:enable    body {}   -> {}        (iam.serviceAccounts.enable)
    GET  {email}                     -> ServiceAccount {name, projectId, uniqueId, email, ..., disabled}
                                                  (iam.serviceAccounts.get; ``disabled`` omitted when false)

All three are idempotent, so unlike the credential methods a timeout or a dropped
connection is retried too (within one overall deadline), as are 500, 502, 503 and
504. Redirects are never followed. Nothing above this module sees ``requests``
exceptions; every failure is a ``VendingError`` and only what can succeed on retry
is labelled ``retryable``:

    IAM answered             error class            HTTP  reason                   retryable
    429                      RateLimitedError       429   iam-rate-limited         yes
    400, other 4xx           BadRequestError        400   iam-rejected             no  (FAILED_PRECONDITION)
    401                      InternalError          500   iam-unauthenticated      no
    403                      PermissionDeniedError  403   iam-permission-denied    no  (the kill switch role is missing)
    404                      NotFoundError          404   iam-target-not-found     no
    5xx, retries exhausted   UpstreamError          502   iam-error                yes
    timeout, refused, reset  UnavailableError       503   iam-unavailable          yes (the call may have landed)
    unreadable 200 / 1xx-3xx UpstreamError          502   iam-bad-response         yes

``detail`` (for the log) is ``"{method} {status}: {IAM's message}"``.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

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
from vending.iam import RETRY_STATUSES, TRANSPORT_ERRORS, _retry_after, _upstream_message

KILL_SWITCH_PERMISSIONS = ("iam.serviceAccounts.disable", "iam.serviceAccounts.enable", "iam.serviceAccounts.get")
BAD_RESPONSE = "The IAM API returned an unexpected response; retry later."


@dataclass(frozen=True)
class AccountState:
    """What IAM says of a service account (``projects.serviceAccounts.get``)."""

    email: str
    unique_id: str | None
    disabled: bool


class IamAdmin:
    """Client of ``projects.serviceAccounts`` disable, enable and get."""

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
            adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=8, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            env = session.merge_environment_settings(self.endpoint, {}, None, None, None)
            session.proxies.update(env["proxies"])
            session.verify = env["verify"]
            session.trust_env = False
        self._session = session
        self.calls: Counter[str] = Counter()

    def disable(self, email: str, *, reason: str) -> None:
        self._call("POST", email, "disable", reason)

    def enable(self, email: str, *, reason: str) -> None:
        self._call("POST", email, "enable", reason)

    def get(self, email: str) -> AccountState:
        data = self._call("GET", email, "get", None)
        disabled = data.get("disabled", False)
        if not isinstance(disabled, bool):
            raise _bad_response("get", "disabled is not a boolean")
        unique_id = data.get("uniqueId")
        return AccountState(
            email=str(data.get("email") or email),
            unique_id=unique_id if isinstance(unique_id, str) else None,
            disabled=disabled,
        )

    # -- transport ----------------------------------------------------------
    def _call(self, verb: str, email: str, method: str, reason: str | None) -> dict[str, Any]:
        url = f"{self.endpoint}/v1/projects/-/serviceAccounts/{quote(email, safe='@')}"
        if verb == "POST":
            url += f":{method}"
        headers = {"Authorization": f"Bearer {self._token()}"}
        if reason:
            headers["X-Goog-Request-Reason"] = reason
        data = "{}" if verb == "POST" else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnavailableError(
                    "The IAM API did not answer in time.",
                    reason="iam-unavailable",
                    detail=f"{method} deadline after {attempt - 1} attempts",
                )
            self.calls[method] += 1
            cause: Exception | None = None
            outcome: VendingError
            try:
                resp = self._session.request(
                    verb, url, data=data, headers=headers, timeout=remaining, allow_redirects=False
                )
            except requests.Timeout as exc:
                cause, outcome = (
                    exc,
                    UnavailableError(
                        "The IAM API did not answer in time.", reason="iam-unavailable", detail=f"{method} timeout"
                    ),
                )
            except TRANSPORT_ERRORS as exc:
                cause, outcome = (
                    exc,
                    UnavailableError(
                        "The IAM API could not be reached.",
                        reason="iam-unavailable",
                        detail=f"{method}: {type(exc).__name__}",
                    ),
                )
            else:
                if resp.status_code == 200:
                    return _body(resp, method)
                outcome = _error(resp, email, method)
                if resp.status_code not in RETRY_STATUSES:
                    raise outcome
            # idempotent calls: a 5xx, a timeout or a dropped connection is retried, within the deadline
            sleep = random.uniform(0, self._backoff * (2 ** (attempt - 1)))
            if attempt > self._retries or time.monotonic() + sleep >= deadline:
                raise outcome from cause
            time.sleep(sleep)


def _body(resp: requests.Response, method: str) -> dict[str, Any]:
    try:
        data = json.loads(resp.content) if resp.content.strip() else {}
    except (ValueError, RecursionError) as exc:
        raise _bad_response(method, f"200 body is not JSON ({len(resp.content)} bytes)") from exc
    if not isinstance(data, dict):
        raise _bad_response(method, f"200 body is a JSON {type(data).__name__}, not an object")
    return data


def _error(resp: requests.Response, email: str, method: str) -> VendingError:
    status = resp.status_code
    upstream = _upstream_message(resp)
    detail = f"{method} {status}: {upstream}"
    error: VendingError
    if status == 429:
        return RateLimitedError(
            "The IAM API quota is exhausted; retry later.",
            retry_after=_retry_after(resp.headers.get("Retry-After")),
            reason="iam-rate-limited",
            detail=detail,
        )
    if status == 401:
        return InternalError(
            "The IAM API did not accept the service's own credentials; the service is misconfigured.",
            reason="iam-unauthenticated",
            detail=detail,
        )
    if status == 403:
        return PermissionDeniedError(
            f"The vending service account may not {method} {email} (it needs the kill switch role with "
            f"{', '.join(KILL_SWITCH_PERMISSIONS)} on that account).",
            reason="iam-permission-denied",
            detail=detail,
        )
    if status == 404:
        return NotFoundError(f"IAM knows no service account {email}.", reason="iam-target-not-found", detail=detail)
    if 400 <= status < 500:
        error = BadRequestError(
            f"The IAM API rejected the request (HTTP {status}): {upstream or 'no message'}",
            reason="iam-rejected",
            detail=detail,
        )
        error.status = "FAILED_PRECONDITION"
        return error
    if 500 <= status < 600:
        error = UpstreamError("The IAM API failed; retry later.", reason="iam-error", detail=detail)
        error.retryable = True
        return error
    return _bad_response(method, f"HTTP {status}")


def _bad_response(method: str, what: str) -> UpstreamError:
    error = UpstreamError(BAD_RESPONSE, reason="iam-bad-response", detail=f"{method}: {what}")
    error.retryable = True
    return error
