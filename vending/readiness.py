"""``GET /readyz``: can this instance serve a vend? The store and the IAM endpoint, cheaply.

``/healthz`` says the process is up; ``/readyz`` says its two dependencies
answer: one read of a fixed document of the store (a missing document is an
answer) and one unauthenticated ``GET`` of the IAM Credentials endpoint's root
(any HTTP answer below 500 means it is reachable; no credential is sent, no
quota is spent). The endpoint is public like the rest of ``vend_http``, so the
result is cached per instance (``ttl_s``, 10 s): a caller hammering it costs
at most one store read and one HTTP request per instance every 10 s. The
answer names which check failed, never why (the reason goes to the log).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from vending import log
from vending.errors import UnavailableError
from vending.store.indexes import KILL_SWITCHES

PROBE_ID = "readyz-probe"  # never written: reading a missing document is the cheapest store round trip


class Readiness:
    """The two checks behind ``/readyz``, cached for ``ttl_s`` seconds per instance."""

    def __init__(
        self,
        store: Any,
        iam_endpoint: str,
        *,
        timeout_s: float = 2.0,
        ttl_s: float = 10.0,
        http_get: Callable[..., Any] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._iam_endpoint = iam_endpoint.rstrip("/")
        self._timeout_s = timeout_s
        self._ttl_s = ttl_s
        self._http_get = http_get
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, str]] | None = None

    def _store_ok(self) -> bool:
        try:
            self._store.get(KILL_SWITCHES, PROBE_ID)
        except Exception as exc:  # noqa: BLE001 - any failure of the store means not ready
            log.warning("readyz: store check failed", error_type=type(exc).__name__)
            return False
        return True

    def _iam_ok(self) -> bool:
        get = self._http_get
        if get is None:
            import requests

            get = requests.get
        try:
            resp = get(self._iam_endpoint + "/", timeout=self._timeout_s, allow_redirects=False)
        except Exception as exc:  # noqa: BLE001 - unreachable, refused, timed out: not ready
            log.warning("readyz: IAM endpoint check failed", error_type=type(exc).__name__)
            return False
        if int(resp.status_code) >= 500:
            log.warning("readyz: IAM endpoint check failed", status=int(resp.status_code))
            return False
        return True

    def checks(self) -> dict[str, str]:
        """``{"store": "ok"|"failed", "iam": "ok"|"failed"}``, at most one real check per ``ttl_s``."""
        with self._lock:
            now = self._monotonic()
            if self._cached is not None and now - self._cached[0] < self._ttl_s:
                return dict(self._cached[1])
            result = {
                "store": "ok" if self._store_ok() else "failed",
                "iam": "ok" if self._iam_ok() else "failed",
            }
            self._cached = (now, result)
            return dict(result)

    def check(self) -> dict[str, Any]:
        """The ``/readyz`` body, or ``UnavailableError`` (503 ``not-ready``) naming the failed checks."""
        result = self.checks()
        failed = sorted(name for name, state in result.items() if state != "ok")
        if failed:
            raise UnavailableError(f"Not ready: {', '.join(failed)} unavailable.", reason="not-ready")
        return {"status": "ok", "checks": result}
