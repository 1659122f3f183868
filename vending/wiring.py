"""Builds the service from settings, once per instance (cached, thread-safe).

Settings and the policy are validated at import of ``main`` (cold start);
clients (store, IAM session, JWKS cache, Pub/Sub) are built on first use so
that heavy imports stay off paths that do not need them. ``Service`` only
holds the parts for the entry points; each part receives the collaborators
it uses, never the whole.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from vending import config, log
from vending.config import Settings
from vending.startup import loading

_lock = threading.RLock()
_settings: Settings | None = None
_service: Any = None
_handlers: Any = None


@dataclass
class Service:
    """The collaborators of one process, built once from the settings."""

    settings: Settings
    store: Any
    iam: Any
    verifier: Any
    events: Any
    ledger: Any
    approvals: Any
    vend: Any
    requests: Any
    issuances: Any
    kill_switch: Any = None
    service_accounts: Any = None
    request_list: Any = None
    profile: Any = None
    console: Any = None
    _bot_verifier: Any = field(default=None, repr=False)

    @property
    def policy(self) -> Any:
        return self.settings.policy

    def bot_verifier(self) -> Any:
        """Verifier of signed chat-ops messages, built on first use."""
        with _lock:
            if self._bot_verifier is None:
                from vending.identity import BotVerifier

                p = self.policy
                self._bot_verifier = BotVerifier(
                    p.bots,
                    audience=p.bot_audience or p.issuers[0].audience,
                    keys_base_url=self.settings.keys_base_url,
                    max_ttl_s=p.bot_message_max_ttl_seconds,
                )
            return self._bot_verifier

    def sweep(self) -> dict[str, Any]:
        from vending.sweep import sweep

        return sweep(
            self.ledger, self.approvals, self.events, reservation_timeout_s=self.settings.reservation_timeout_s
        )


def settings() -> Settings:
    global _settings
    with _lock:
        if _settings is None:
            _settings = config.load_settings()
            log.configure(_settings.log_level)
            for message, fields in config.warnings(_settings.policy):
                log.warning(message, **fields)
        return _settings


def build_service(s: Settings, **overrides: Any) -> Service:
    """Assemble the service; ``overrides`` replace parts (tests pass fakes or emulator clients)."""
    import datetime as _dt

    from vending import events as events_mod
    from vending.approvals import Approvals
    from vending.console import Console
    from vending.directory import Profile, RequestList
    from vending.iam import GoogleCredentialsToken, IamCredentials, StaticToken
    from vending.iam_admin import IamAdmin
    from vending.identity import Verifier
    from vending.killswitch import KillSwitch
    from vending.ledger import Ledger
    from vending.service import AccessRequests, Issuances, ServiceAccounts
    from vending.sessions import Callers, Sessions
    from vending.store import open_store
    from vending.vend import Vend

    store = overrides.get("store") or open_store(s)
    token_source = StaticToken(s.iam_token) if s.iam_token else GoogleCredentialsToken()
    iam = overrides.get("iam") or IamCredentials(
        s.iam_endpoint, token_source, timeout_s=s.iam_timeout_s, retries=s.iam_retries
    )
    iam_admin = overrides.get("iam_admin") or IamAdmin(
        s.iam_admin_endpoint, token_source, timeout_s=s.iam_timeout_s, retries=s.iam_retries
    )
    verifier = overrides.get("verifier") or Verifier(s.policy.issuers)
    if "events" in overrides:
        events = overrides["events"]
    elif s.notifications_topic or s.alerts_topic:
        events = events_mod.PubSubEvents({"notifications": s.notifications_topic, "alerts": s.alerts_topic}, s.project)
    else:
        events = events_mod.FileEvents(s.events_file)
    ledger = Ledger(store, events, retention_days=s.retention_days)
    approvals = overrides.get("approvals") or Approvals(
        s.policy, store, events, retention=_dt.timedelta(days=s.retention_days)
    )
    switch = KillSwitch(
        s.policy, store, ledger, approvals, iam_admin, events, retention=_dt.timedelta(days=s.retention_days)
    )
    vend = Vend(s.policy, verifier, ledger, approvals, iam, events, switch, iam_deadline_s=s.iam_timeout_s)
    # The console's endpoints accept a bearer token or a console session; vends and the kill switch a bearer only.
    sessions = Sessions(
        s.session_key or secrets.token_urlsafe(48),
        s.policy,
        verifier,
        ledger,
        dev_minter=overrides.get("dev_minter") or _dev_minter(s),
    )
    callers = Callers(verifier, sessions)
    console = Console(sessions, s.policy, development=sessions.dev_minter is not None)
    return Service(
        settings=s,
        store=store,
        iam=iam,
        verifier=verifier,
        events=events,
        ledger=ledger,
        approvals=approvals,
        vend=vend,
        requests=AccessRequests(callers, ledger, approvals),
        issuances=Issuances(callers, s.policy, ledger),
        kill_switch=switch,
        service_accounts=ServiceAccounts(verifier, s.policy, ledger, switch),
        request_list=RequestList(callers, approvals),
        profile=Profile(callers, s.policy, approvals),
        console=console,
    )


def _dev_minter(s: Settings) -> Any:
    """The embedded default's sign-in: mint a development token for a subject (never with Firestore)."""
    dev = next((i for i in s.policy.issuers if i.development), None)
    if dev is None or s.store_kind != "sqlite":
        return None

    def mint(subject: str) -> str:
        from vending.local.issuer import DevIssuer
        from vending.local.launcher import STATE_DIR

        return DevIssuer(STATE_DIR, dev.issuer).mint(subject, dev.audience, ttl_s=3600)

    return mint


def service() -> Service:
    global _service
    with _lock:
        if _service is None:
            with loading():  # the first use builds the service: no garbage collection meanwhile
                _service = build_service(settings())
        built: Service = _service
        return built


def handlers() -> Any:
    global _handlers
    with _lock:
        if _handlers is None:
            with loading():  # the first request builds them: no garbage collection meanwhile
                _handlers = _build_handlers()
        return _handlers


def _build_handlers() -> Any:
    from vending import tracing
    from vending.api import Handlers
    from vending.readiness import Readiness

    svc = service()
    if svc.settings.tracing != "off":  # off by default: nothing of OpenTelemetry is imported
        tracing.configure(svc.settings.tracing, svc.settings.project)
    return Handlers(
        svc.vend,
        svc.requests,
        svc.issuances,
        svc.events,
        project=svc.settings.project,
        service_accounts=svc.service_accounts,
        request_list=svc.request_list,
        profile=svc.profile,
        console=svc.console,
        readiness=Readiness(svc.store, svc.settings.iam_endpoint),
    )


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
