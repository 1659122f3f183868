"""Builds the chat-ops pieces from settings, once per instance (cached, thread-safe), and turns
their answers and errors into HTTP responses (the apps' one place for that).

The vending service's own settings (policy, store, IAM endpoint) come from ``vending.wiring``;
the chat settings from ``vending.chat.settings``. Nothing here is imported by ``vend_http``.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from vending import log, wiring
from vending.chat.core import ApprovalPublisher, ReplayGuard, bot_of, error_body
from vending.chat.settings import ChatSettings, load_chat_settings
from vending.errors import MethodNotAllowedError, NotFoundError, VendingError
from vending.startup import loading

_lock = threading.RLock()
_parts: dict[str, Any] = {}


def _cached(name: str, build: Any) -> Any:
    with _lock:
        if name not in _parts:
            with loading():  # built on first use: no garbage collection meanwhile (vending/startup.py)
                _parts[name] = build()
        return _parts[name]


def chat_settings() -> ChatSettings:
    return _cached("settings", load_chat_settings)  # type: ignore[no-any-return]


def store() -> Any:
    def build() -> Any:
        from vending.store import open_store

        return open_store(wiring.settings())

    return _cached("store", build)


def chat_store() -> Any:
    """The apps' own records: ``CHATOPS_STORE``, else the service's store."""

    def build() -> Any:
        kind, _, where = (chat_settings().store or "").partition(":")
        if kind == "firestore":
            from vending.store.firestore import FirestoreStore

            return FirestoreStore(wiring.settings().project, where)
        if kind == "sqlite":
            from vending.store.sqlite import SqliteStore

            return SqliteStore(where)
        return store()

    return _cached("chat_store", build)


def publisher() -> ApprovalPublisher:
    def build() -> ApprovalPublisher:
        from vending.iam import GoogleCredentialsToken, IamCredentials, StaticToken

        s, c = wiring.settings(), chat_settings()
        bot = bot_of(s.policy, c.bot_service_account)
        token_source: Any = StaticToken(s.iam_token) if s.iam_token else GoogleCredentialsToken()
        iam = IamCredentials(s.iam_endpoint, token_source, timeout_s=s.iam_timeout_s, retries=s.iam_retries)
        return ApprovalPublisher(
            iam,
            bot.service_account,
            s.policy.bot_audience or s.policy.issuers[0].audience,
            topic=c.approvals_topic,
            deliver_to=c.deliver_to,
            ttl_s=c.message_ttl_s,
        )

    return _cached("publisher", build)  # type: ignore[no-any-return]


def slack_poster() -> Any:
    from vending.chat.slack import SlackPoster

    return _cached("slack_poster", lambda: SlackPoster(chat_settings()))


def google_poster() -> Any:
    from vending.chat.google_chat import ChatPoster

    return _cached("google_poster", lambda: ChatPoster(chat_settings()))


def google_app() -> Any:
    def build() -> Any:
        from vending.chat.google_chat import ChatTokenVerifier, GoogleChatApp

        c = chat_settings()
        if c.google_audience is None:
            raise NotFoundError("Google Chat is not configured.", reason="chat-not-configured")
        verifier = ChatTokenVerifier(c.google_issuer, c.google_jwks_uri, c.google_audience)
        return GoogleChatApp(c, verifier, publisher(), store(), ReplayGuard(chat_store()))

    return _cached("google_app", build)


def slack_app() -> Any:
    def build() -> Any:
        from vending.chat.slack import SlackApp, SlackSignature

        c = chat_settings()
        if c.slack_signing_secret is None:
            raise NotFoundError("Slack is not configured.", reason="chat-not-configured")
        signature = SlackSignature(
            c.slack_signing_secret.get_secret_value(), ReplayGuard(chat_store()), max_age_s=c.slack_max_age_s
        )
        return SlackApp(c, signature, publisher(), slack_poster())

    return _cached("slack_app", build)


def notifier() -> Any:
    def build() -> Any:
        from vending.chat.notifier import Notifier

        s, c = wiring.settings(), chat_settings()
        posters = []
        if c.slack_bot_token is not None:  # the notifier posts with the bot token alone (no signing secret)
            posters.append(slack_poster())
        if c.google_enabled:
            posters.append(google_poster())
        return Notifier(
            s.policy, store(), chat_store(), posters, bot=bot_of(s.policy, c.bot_service_account).service_account
        )

    return _cached("notifier", build)


def install(**parts: Any) -> None:
    """Tests: use these parts (``settings``, ``store``, ``publisher``, ``slack_poster``, ...)."""
    with _lock:
        _parts.clear()
        _parts.update(parts)


def reset() -> None:
    with _lock:
        _parts.clear()


def respond(app: Any, request: Any) -> tuple[str, int, dict[str, str]]:
    """An HTTP function's answer: the app's JSON, or the error envelope (nothing secret, no trace)."""
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    try:
        if request.method != "POST":
            raise MethodNotAllowedError("Use POST.")
        body: dict[str, Any] = app().handle(request.headers, request.get_data(cache=False))
        return json.dumps(body), 200, headers
    except VendingError as exc:
        status, payload = error_body(exc)
        emit = log.info if isinstance(exc, MethodNotAllowedError) else log.warning  # probes GET it
        emit("chat request refused", path=request.path, reason=exc.reason, detail=exc.detail)
        return json.dumps(payload), status, headers
