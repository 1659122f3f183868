"""IAM Service Account Credentials API client (REST), errors wrapped.

Calls ``{endpoint}/v1/projects/-/serviceAccounts/{email}:{method}`` with the
service's own Google credentials (google-auth Application Default
Credentials, or a static bearer for the local stand-in). One overall deadline
per call; bounded retries with full-jitter backoff on 500 and 503 only (a
timeout is never retried: the first attempt may have minted). Nothing above
this module sees ``requests`` exceptions; every failure is a ``VendingError``:

- 429            -> RateLimitedError (429 to the caller, with Retry-After)
- 403            -> UpstreamError 502 ``iam-permission-denied``
- 404            -> UpstreamError 502 ``iam-target-not-found``
- 401            -> UpstreamError 502 ``iam-unauthenticated``
- other 4xx      -> UpstreamError 502 ``iam-rejected``
- 5xx exhausted  -> UpstreamError 502 ``iam-error``
- timeout / network -> UnavailableError 503 ``iam-unavailable``
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from vending import clock
from vending.errors import RateLimitedError, UnavailableError, UpstreamError

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
RETRY_STATUSES = frozenset({500, 503})


@dataclass(frozen=True)
class AccessToken:
    token: str
    expire_time: Any  # aware datetime


@dataclass(frozen=True)
class Signature:
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
                    raise UnavailableError("The service has no Google credentials of its own.",
                                           reason="service-credentials-unavailable", detail=repr(exc)) from exc
                self._request = google.auth.transport.requests.Request()
            if not self._creds.valid:
                try:
                    self._creds.refresh(self._request)
                except Exception as exc:  # google.auth.exceptions.* -> our tree
                    raise UnavailableError("Could not obtain the service's own Google credentials.",
                                           reason="service-credentials-unavailable", detail=repr(exc)) from exc
            return str(self._creds.token)


class IamCredentials:
    """Client of the four IAM Credentials methods."""

    def __init__(self, endpoint: str, token_source: Callable[[], str], *, timeout_s: float = 10.0,
                 retries: int = 2, session: requests.Session | None = None,
                 backoff_s: float = 0.1) -> None:
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
    def generate_access_token(self, email: str, scopes: Sequence[str], lifetime_s: int,
                              delegates: Sequence[str], *, reason: str) -> AccessToken:
        body = {"scope": list(scopes), "lifetime": f"{int(lifetime_s)}s"}
        if delegates:
            body["delegates"] = list(delegates)
        data = self._call(email, "generateAccessToken", body, reason)
        try:
            return AccessToken(str(data["accessToken"]), clock.parse_rfc3339(str(data["expireTime"])))
        except (KeyError, ValueError) as exc:
            raise UpstreamError("The IAM Credentials API returned an unexpected response.",
                                reason="iam-bad-response", detail=f"keys={sorted(data)}") from exc

    def generate_id_token(self, email: str, audience: str, include_email: bool,
                          delegates: Sequence[str], *, reason: str) -> str:
        body: dict[str, Any] = {"audience": audience, "includeEmail": bool(include_email)}
        if delegates:
            body["delegates"] = list(delegates)
        data = self._call(email, "generateIdToken", body, reason)
        token = data.get("token")
        if not isinstance(token, str):
            raise UpstreamError("The IAM Credentials API returned an unexpected response.", reason="iam-bad-response")
        return token

    def sign_jwt(self, email: str, claims: dict[str, Any], delegates: Sequence[str], *, reason: str) -> Signature:
        body: dict[str, Any] = {"payload": json.dumps(claims, separators=(",", ":"), sort_keys=True)}
        if delegates:
            body["delegates"] = list(delegates)
        data = self._call(email, "signJwt", body, reason)
        return self._signature(data, "signedJwt")

    def sign_blob(self, email: str, payload: bytes, delegates: Sequence[str], *, reason: str) -> Signature:
        body: dict[str, Any] = {"payload": base64.b64encode(payload).decode("ascii")}
        if delegates:
            body["delegates"] = list(delegates)
        data = self._call(email, "signBlob", body, reason)
        return self._signature(data, "signedBlob")

    @staticmethod
    def _signature(data: dict[str, Any], field: str) -> Signature:
        key_id, value = data.get("keyId"), data.get(field)
        if not isinstance(key_id, str) or not isinstance(value, str):
            raise UpstreamError("The IAM Credentials API returned an unexpected response.", reason="iam-bad-response")
        return Signature(key_id, value)

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
                raise UnavailableError("The IAM Credentials API did not answer in time.",
                                       reason="iam-unavailable", detail=f"{method} deadline after {attempt - 1} attempts")
            self.calls[method] += 1
            try:
                resp = self._session.post(url, data=payload, headers=headers, timeout=remaining)
            except requests.Timeout as exc:
                raise UnavailableError("The IAM Credentials API did not answer in time.",
                                       reason="iam-unavailable", detail=f"{method} timeout") from exc
            except requests.RequestException as exc:
                raise UnavailableError("The IAM Credentials API could not be reached.",
                                       reason="iam-unavailable", detail=f"{method}: {type(exc).__name__}") from exc
            if resp.status_code == 200:
                try:
                    data = resp.json()
                except ValueError as exc:
                    raise UpstreamError("The IAM Credentials API returned an unexpected response.",
                                        reason="iam-bad-response") from exc
                if not isinstance(data, dict):
                    raise UpstreamError("The IAM Credentials API returned an unexpected response.",
                                        reason="iam-bad-response")
                return data
            if resp.status_code in RETRY_STATUSES and attempt <= self._retries:
                sleep = random.uniform(0, self._backoff * (2 ** (attempt - 1)))
                if time.monotonic() + sleep < deadline:
                    time.sleep(sleep)
                    continue
            raise self._error(resp, email, method)

    @staticmethod
    def _error(resp: requests.Response, email: str, method: str) -> Exception:
        try:
            err = resp.json().get("error", {})
            upstream = str(err.get("message", ""))[:300]
        except (ValueError, AttributeError):
            upstream = ""
        detail = f"{method} {resp.status_code}: {upstream}"
        status = resp.status_code
        if status == 429:
            try:
                retry_after = int(resp.headers.get("Retry-After", "1"))
            except ValueError:
                retry_after = 1
            return RateLimitedError("The IAM Credentials API quota is exhausted; retry later.",
                                    retry_after=retry_after, reason="iam-rate-limited", detail=detail)
        if status == 403:
            err403 = UpstreamError(
                f"The vending service account lacks roles/iam.serviceAccountTokenCreator on {email} "
                "(or on a delegate in the chain).", reason="iam-permission-denied", detail=detail)
            err403.status = "FAILED_PRECONDITION"
            return err403
        if status == 404:
            err404 = UpstreamError(f"The target service account {email} does not exist.",
                                   reason="iam-target-not-found", detail=detail)
            err404.status = "FAILED_PRECONDITION"
            return err404
        if status == 401:
            return UpstreamError("The IAM Credentials API did not accept the service's own credentials.",
                                 reason="iam-unauthenticated", detail=detail)
        if 400 <= status < 500:
            return UpstreamError(f"The IAM Credentials API rejected the request: {upstream or status}",
                                 reason="iam-rejected", detail=detail)
        return UpstreamError("The IAM Credentials API failed; retry later.", reason="iam-error", detail=detail)
