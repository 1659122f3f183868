"""Builds the service from settings, once per instance (cached, thread-safe).

Settings and the policy are validated at import of ``main`` (cold start);
clients (store, IAM session, JWKS cache, Pub/Sub) are built on first use so
that heavy imports stay off paths that do not need them.
"""

from __future__ import annotations

import threading
from typing import Any

from vending import config, log
from vending.config import Settings

_lock = threading.RLock()
_settings: Settings | None = None
_service: Any = None
_handlers: Any = None


def settings() -> Settings:
    global _settings
    with _lock:
        if _settings is None:
            _settings = config.load_settings()
            log.configure(_settings.log_level)
        return _settings


def build_service(s: Settings, **overrides: Any) -> Any:
    """Assemble the service; ``overrides`` replace parts (tests pass fakes or emulator clients)."""
    from vending import events as events_mod
    from vending.approvals import Approvals
    from vending.iam import GoogleCredentialsToken, IamCredentials, StaticToken
    from vending.identity import Verifier
    from vending.service import Service
    from vending.store import open_store

    store = overrides.get("store") or open_store(s)
    iam = overrides.get("iam") or IamCredentials(
        s.iam_endpoint, StaticToken(s.iam_token) if s.iam_token else GoogleCredentialsToken(),
        timeout_s=s.iam_timeout_s, retries=s.iam_retries)
    verifier = overrides.get("verifier") or Verifier(s.policy.issuers)
    if "events" in overrides:
        events = overrides["events"]
    elif s.notifications_topic or s.alerts_topic:
        events = events_mod.PubSubEvents({"notifications": s.notifications_topic, "alerts": s.alerts_topic},
                                         s.project)
    else:
        events = events_mod.FileEvents(s.events_file)
    service = Service(s, store, iam, verifier, events)
    service.approvals = overrides.get("approvals") or Approvals(service)
    return service


def service() -> Any:
    global _service
    with _lock:
        if _service is None:
            _service = build_service(settings())
        return _service


def handlers() -> Any:
    global _handlers
    with _lock:
        if _handlers is None:
            from vending.api import Handlers

            _handlers = Handlers(service())
        return _handlers


def install(service_obj: Any) -> None:
    """Tests: use this service for the entry points (reset with ``reset()``)."""
    global _service, _handlers, _settings
    with _lock:
        _service, _handlers, _settings = service_obj, None, service_obj.settings


def reset() -> None:
    global _service, _handlers, _settings
    with _lock:
        if _service is not None:
            try:
                _service.store.close()
            except Exception as exc:  # noqa: BLE001 - tests only: a store that cannot close is dropped
                log.debug("store close failed", error=repr(exc))
        _service = _handlers = _settings = None
