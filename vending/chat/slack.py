"""Slack: verify the v0 request signature, map the Slack user to an identity, post and update
Block Kit messages with ``slack_sdk``.

Verification: ``X-Slack-Request-Timestamp`` within 5 minutes of ``vending.clock`` (either way),
then ``slack_sdk.signature.SignatureVerifier`` (HMAC-SHA256 of ``v0:TIMESTAMP:BODY`` with the app's
signing secret, constant-time compare) over the raw body, before the body is parsed. A signature
is accepted once: it is remembered (atomic create) for as long as its timestamp is in the window.
The clicking user is mapped through the configured table (Slack user id -> identity), else the
email Slack verified for that account (``users.info``; bots, deleted users and accounts without a
confirmed email are refused).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from vending import clock, log
from vending.chat.core import ApprovalPublisher, Card, Click, ReplayGuard, digest
from vending.chat.settings import ChatSettings
from vending.errors import AuthenticationError, BadRequestError, PermissionDeniedError, UnavailableError

PLATFORM = "slack"
MAX_BODY_BYTES = 64 * 1024


def _clock() -> Any:
    """slack_sdk's ``Clock``, reading ``vending.clock`` (frozen in tests)."""
    from slack_sdk.signature import Clock

    class VendingClock(Clock):
        def now(self) -> float:
            return clock.epoch()

    return VendingClock()


class SlackSignature:
    """Slack's v0 signing: timestamp window, HMAC over the raw body, each signature once."""

    def __init__(self, signing_secret: str, replays: ReplayGuard, *, max_age_s: int = 300) -> None:
        from slack_sdk.signature import SignatureVerifier

        self._verifier = SignatureVerifier(signing_secret, clock=_clock())
        self._replays, self._max_age_s = replays, max_age_s

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        timestamp = headers.get("X-Slack-Request-Timestamp") or ""
        signature = headers.get("X-Slack-Signature") or ""
        if not timestamp or not signature:
            raise AuthenticationError("no Slack signature headers", reason="missing-signature")
        if not timestamp.isdigit() or len(timestamp) > 12:
            raise AuthenticationError("Slack timestamp is not a number", reason="invalid-signature")
        if abs(clock.epoch() - int(timestamp)) > self._max_age_s:
            raise AuthenticationError("Slack timestamp outside the 5-minute window", reason="stale-request")
        if not signature.startswith("v0=") or not self._verifier.is_valid(body, timestamp, signature):
            raise AuthenticationError("Slack signature does not verify", reason="invalid-signature")
        # Accepted while its timestamp is in the window (and a little beyond, for clock skew).
        until = clock.from_epoch(int(timestamp) + self._max_age_s + 60)
        self._replays.remember(digest(PLATFORM, "signature", signature.lower()), until)


# -- Block Kit ------------------------------------------------------------------------------------
BUTTONS = {
    "approve": ("Approve", "primary"),
    "deny": ("Deny", "danger"),
    "revoke": ("Revoke", "danger"),
}


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(card: Card) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, blocks) of a card."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": card.title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn("\n".join(card.lines()))}},
    ]
    if card.actions:
        elements = []
        for action in card.actions:
            label, style = BUTTONS[action]
            elements.append(
                {
                    "type": "button",
                    "action_id": action,
                    "value": card.request_id,
                    "style": style,
                    "text": {"type": "plain_text", "text": label},
                }
            )
        blocks.append({"type": "actions", "block_id": f"vending-{card.request_id}", "elements": elements})
    return card.text(), blocks


# -- the interactivity endpoint -------------------------------------------------------------------
class SlackApp:
    """``chat_slack_http``: one verified click -> one signed approval."""

    def __init__(
        self, settings: ChatSettings, signature: SlackSignature, publisher: ApprovalPublisher, directory: Any
    ) -> None:
        self._settings, self._signature, self._publisher, self._directory = settings, signature, publisher, directory

    def handle(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        if len(body) > MAX_BODY_BYTES:
            raise BadRequestError("The request is too large.", reason="body-too-large")
        self._signature.verify(headers, body)  # before the body is parsed
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=True)
            payload = json.loads(form["payload"][0])
        except (UnicodeDecodeError, ValueError, KeyError, IndexError):
            raise BadRequestError("The request carries no interaction payload.", reason="invalid-payload") from None
        if not isinstance(payload, dict) or payload.get("type") != "block_actions":
            raise BadRequestError("Only button clicks (block_actions) are handled.", reason="invalid-payload")
        actions = payload.get("actions")
        user = payload.get("user")
        if not isinstance(actions, list) or len(actions) != 1 or not isinstance(actions[0], dict):
            raise BadRequestError("The click names no action.", reason="invalid-payload")
        if not isinstance(user, dict) or not isinstance(user.get("id"), str):
            raise BadRequestError("The click names no user.", reason="invalid-payload")
        action = actions[0]
        click = Click(
            PLATFORM, self._identity(user["id"]), str(action.get("value") or ""), str(action.get("action_id") or "")
        )
        self._publisher.publish(click)
        return {"ok": True, "text": f"Your {click.action} of request {click.request_id} was sent."}

    def _identity(self, user_id: str) -> str:
        mapped = self._settings.slack_users.get(user_id)
        if mapped:
            return str(mapped)
        email = self._directory.verified_email(user_id)
        if not email:
            raise PermissionDeniedError("The Slack user has no verified email or mapping.", reason="unknown-user")
        return str(email)


# -- Web API (the notifier's side, and users.info for the app) ---------------------------------------
class SlackPoster:
    """Posts, updates and looks up with ``slack_sdk.WebClient`` (``base_url``: Slack's, or a local fake)."""

    platform = PLATFORM

    def __init__(self, settings: ChatSettings) -> None:
        self._settings = settings
        self._client: Any = None
        self._lock = threading.Lock()

    def _web(self) -> Any:
        with self._lock:
            if self._client is None:
                from slack_sdk import WebClient

                token = self._settings.slack_bot_token
                self._client = WebClient(
                    token=token.get_secret_value() if token else None,
                    base_url=self._settings.slack_api_url,
                    timeout=10,
                )
            return self._client

    def _call(self, method: str, **kwargs: Any) -> Any:
        from slack_sdk.errors import SlackApiError, SlackClientError

        try:
            return (
                self._web().api_call(method, json=kwargs) if method.startswith("chat.") else self._get(method, kwargs)
            )
        except SlackApiError as exc:
            error = str(exc.response.get("error", "")) if exc.response is not None else ""
            if error in ("users_not_found", "user_not_found", "channel_not_found", "message_not_found"):
                return None
            if error == "ratelimited" or (exc.response is not None and exc.response.status_code >= 500):
                raise UnavailableError(f"Slack {method} failed; retry.", detail=error) from exc
            raise UnavailableError(f"Slack {method} refused.", reason="slack-error", detail=error) from exc
        except (SlackClientError, OSError) as exc:
            raise UnavailableError(f"Slack {method} failed; retry.", detail=type(exc).__name__) from exc

    def _get(self, method: str, params: dict[str, Any]) -> Any:
        return self._web().api_call(method, http_verb="GET", params=params)

    def verified_email(self, user_id: str) -> str | None:
        resp = self._call("users.info", user=user_id)
        user = (resp.get("user") if resp is not None else None) or {}
        if user.get("deleted") or user.get("is_bot") or user.get("is_email_confirmed") is False:
            return None
        email = (user.get("profile") or {}).get("email")
        return email.strip().lower() if isinstance(email, str) and email.strip() else None

    def _direct_channel(self, person: str) -> str | None:
        user_id = next((u for u, who in self._settings.slack_users.items() if who == person), None)
        if user_id is None:
            found = self._call("users.lookupByEmail", email=person)
            user_id = ((found.get("user") if found is not None else None) or {}).get("id")
        if not user_id:
            log.warning("no Slack user for an approver", person=person)
            return None
        opened = self._call("conversations.open", users=user_id)
        channel = ((opened.get("channel") if opened is not None else None) or {}).get("id")
        return str(channel) if channel else None

    def post_card(self, person: str, card: Card) -> dict[str, Any] | None:
        channel = self._direct_channel(person)
        if channel is None:
            return None
        text, blocks = render(card)
        posted = self._call("chat.postMessage", channel=channel, text=text, blocks=blocks)
        if posted is None:
            return None
        return {"platform": PLATFORM, "channel": str(posted["channel"]), "ts": str(posted["ts"]), "person": person}

    def update_card(self, ref: Mapping[str, Any], card: Card) -> None:
        text, blocks = render(card)
        self._call("chat.update", channel=str(ref["channel"]), ts=str(ref["ts"]), text=text, blocks=blocks)

    def tell(self, person: str, text: str) -> None:
        channel = self._direct_channel(person)
        if channel is not None:
            self._call("chat.postMessage", channel=channel, text=_mrkdwn(text))

    def alert(self, text: str) -> None:
        channel = self._settings.slack_alerts_channel
        if channel:
            self._call("chat.postMessage", channel=channel, text=_mrkdwn(text))
