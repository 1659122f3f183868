"""Google Chat: verify Chat's bearer token, map the clicking user, answer with the updated card;
post and update cards with the Chat API client (``google-apps-chat``) as the app's service account.

Verification (the "project number" authentication audience): every request carries
``Authorization: Bearer JWT``, signed by ``chat@system.gserviceaccount.com`` (RS256, keys from its
public JWKS, cached per process by ``vending.identity.JwksCache`` like the service's own issuers),
with ``aud`` exactly the Chat app's Cloud project number, ``iat``/``exp`` checked against
``vending.clock``. The clicking user comes from that verified request: ``user.email`` (or the
configured table by ``user.name``), a HUMAN only. A click is accepted once: its key (user, message,
action, request, ``eventTime``) is remembered, and an ``eventTime`` outside 5 minutes is refused.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from vending import clock, log
from vending.chat.core import ApprovalPublisher, Card, Click, ReplayGuard, digest, load_card
from vending.chat.settings import ChatSettings
from vending.errors import AuthenticationError, BadRequestError, PermissionDeniedError, UnavailableError
from vending.identity import JwksCache, _audience_is, _check_algorithm, _numeric, _parse_compact, _verified_payload
from vending.store import Store

PLATFORM = "google-chat"
CHAT_SCOPE = "https://www.googleapis.com/auth/chat.bot"
EVENT_WINDOW_S = 300  # a click's eventTime may be this far from now, either way
MAX_BODY_BYTES = 64 * 1024
JWKS_TTL_S = 3600
JWKS_COOLDOWN_S = 30
LEEWAY_S = 30
MAX_TOKEN_TTL_S = 3600 + 60


class ChatTokenVerifier:
    """Chat's bearer token: RS256 from the pinned issuer's JWKS, for this app's audience, in time."""

    ALGORITHMS = ("RS256",)

    def __init__(self, issuer: str, jwks_uri: str, audience: str, *, jwks: JwksCache | None = None) -> None:
        self.issuer, self.jwks_uri, self.audience = issuer, jwks_uri, audience
        self._jwks = jwks or JwksCache()

    def verify_authorization(self, header: str | None) -> dict[str, Any]:
        parts = (header or "").strip().split(" ")
        if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1]:
            raise AuthenticationError("no Bearer token from Google Chat", reason="missing-token")
        token = parts[1]
        parsed = _parse_compact(token)
        if parsed.unverified.get("iss") != self.issuer:
            raise AuthenticationError("token is not from Google Chat's issuer", reason="untrusted-issuer")
        alg = _check_algorithm(parsed, self.ALGORITHMS, "Google Chat")
        key = self._jwks.key(
            self.jwks_uri, parsed.header.get("kid"), ttl_s=JWKS_TTL_S, cooldown_s=JWKS_COOLDOWN_S, algorithm=alg
        )
        claims = _verified_payload(token, parsed, key, alg)
        now = clock.epoch()
        if claims.get("iss") != self.issuer:
            raise AuthenticationError("verified iss is not Google Chat's", reason="untrusted-issuer")
        if not _audience_is(claims.get("aud"), self.audience):
            raise AuthenticationError(f"aud is not exactly {self.audience!r}", reason="wrong-audience")
        exp = _numeric(claims, "exp", required=True)
        iat = _numeric(claims, "iat", required=True)
        assert exp is not None and iat is not None
        if exp <= now - LEEWAY_S:
            raise AuthenticationError("token expired", reason="token-expired")
        if iat > now + LEEWAY_S:
            raise AuthenticationError("token issued in the future", reason="issued-in-future")
        if exp <= iat or exp - iat > MAX_TOKEN_TTL_S:
            raise AuthenticationError("token lifetime out of bounds", reason="token-lifetime-too-long")
        return claims


# -- cards ----------------------------------------------------------------------------------------
BUTTON_TEXT = {"approve": "Approve", "deny": "Deny", "revoke": "Revoke"}


def render(card: Card, note: str | None = None) -> dict[str, Any]:
    """A Chat message (REST JSON): a plain-text fallback and one cardsV2 card with its buttons."""
    widgets: list[dict[str, Any]] = [{"textParagraph": {"text": "<br>".join(_escape(x) for x in card.lines())}}]
    if note:
        widgets.append({"textParagraph": {"text": f"<i>{_escape(note)}</i>"}})
    if card.actions:
        widgets.append(
            {
                "buttonList": {
                    "buttons": [
                        {
                            "text": BUTTON_TEXT[action],
                            "onClick": {
                                "action": {
                                    "function": action,
                                    "parameters": [{"key": "request_id", "value": card.request_id}],
                                }
                            },
                        }
                        for action in card.actions
                    ]
                }
            }
        )
    text = card.text() + (f"\n{note}" if note else "")
    return {
        "text": text,
        "cardsV2": [
            {
                "cardId": f"request-{card.request_id}",
                "card": {"header": {"title": card.title, "subtitle": card.state}, "sections": [{"widgets": widgets}]},
            }
        ],
    }


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- the interaction endpoint ---------------------------------------------------------------------
def _action(event: Mapping[str, Any]) -> tuple[str, str]:
    """(function, request_id) from ``common`` (current events) or ``action`` (older ones)."""
    common: dict[str, Any] = event["common"] if isinstance(event.get("common"), dict) else {}
    function = common.get("invokedFunction")
    params: dict[str, Any] = common["parameters"] if isinstance(common.get("parameters"), dict) else {}
    action: dict[str, Any] = event["action"] if isinstance(event.get("action"), dict) else {}
    if not function:
        function = action.get("actionMethodName")
    if not params and isinstance(action.get("parameters"), list):
        params = {str(p.get("key")): p.get("value") for p in action["parameters"] if isinstance(p, dict)}
    request_id = params.get("request_id")
    if not isinstance(function, str) or not isinstance(request_id, str):
        raise BadRequestError("The click names no action and access request.", reason="invalid-event")
    return function, request_id


class GoogleChatApp:
    """``chat_google_http``: one verified click -> one signed approval -> the updated card."""

    def __init__(
        self,
        settings: ChatSettings,
        verifier: ChatTokenVerifier,
        publisher: ApprovalPublisher,
        store: Store,
        replays: ReplayGuard,
    ) -> None:
        self._settings, self._verifier, self._publisher = settings, verifier, publisher
        self._store, self._replays = store, replays

    def handle(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        self._verifier.verify_authorization(headers.get("Authorization"))  # before reading anything else
        if len(body) > MAX_BODY_BYTES:
            raise BadRequestError("The event is too large.", reason="body-too-large")
        try:
            event = json.loads(body)
        except ValueError:
            raise BadRequestError("The event is not JSON.", reason="invalid-json") from None
        if not isinstance(event, dict):
            raise BadRequestError("The event is not a JSON object.", reason="invalid-json")
        kind = event.get("type")
        if kind in ("ADDED_TO_SPACE", "MESSAGE"):
            return {"text": "I post access requests for approval here; use the buttons on their cards."}
        if kind == "REMOVED_FROM_SPACE":
            return {}
        if kind != "CARD_CLICKED":
            raise BadRequestError(f"Unsupported event type {str(kind)[:40]!r}.", reason="invalid-event")
        function, request_id = _action(event)
        click = Click(PLATFORM, self._identity(event), request_id, function)
        self._check_fresh(event)
        user = event["user"]["name"] if isinstance(event.get("user"), dict) else ""
        message: dict[str, Any] = event["message"] if isinstance(event.get("message"), dict) else {}
        key = digest(PLATFORM, str(user), str(message.get("name")), function, request_id, str(event.get("eventTime")))
        self._replays.remember(key, clock.now() + _delta(2 * EVENT_WINDOW_S))
        self._publisher.publish(click)
        note = f"{click.actor}: your {function} was sent."
        try:
            card = load_card(self._store, request_id)
        except UnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - the click went out; the card refreshes with the next event
            log.warning("chat card not re-read after a click", access_request_id=request_id, error=type(exc).__name__)
            return {"actionResponse": {"type": "NEW_MESSAGE"}, "text": note}
        return {"actionResponse": {"type": "UPDATE_MESSAGE"}, **render(card, note)}

    def _identity(self, event: Mapping[str, Any]) -> str:
        user = event.get("user")
        if not isinstance(user, dict) or user.get("type", "HUMAN") != "HUMAN":
            raise PermissionDeniedError("Only a person may click.", reason="unknown-user")
        name = user.get("name")
        mapped = self._settings.google_users.get(name) if isinstance(name, str) else None
        email = user.get("email")
        identity = mapped or (email.strip().lower() if isinstance(email, str) else "")
        if not identity:
            raise PermissionDeniedError("The clicking user has no email or mapping.", reason="unknown-user")
        return identity

    @staticmethod
    def _check_fresh(event: Mapping[str, Any]) -> None:
        raw = event.get("eventTime")
        try:
            at = clock.parse_rfc3339(raw) if isinstance(raw, str) else None
        except ValueError:
            at = None
        if at is None:
            raise BadRequestError("The click has no eventTime.", reason="invalid-event")
        if abs((clock.now() - at).total_seconds()) > EVENT_WINDOW_S:
            raise AuthenticationError("click eventTime outside the 5-minute window", reason="stale-event")


def _delta(seconds: int) -> Any:
    import datetime as _dt

    return _dt.timedelta(seconds=seconds)


# -- posting (the notifier's side) ----------------------------------------------------------------
class ChatPoster:
    """Posts and updates cards in Google Chat through ``google.apps.chat_v1`` (REST transport)."""

    platform = PLATFORM

    def __init__(self, settings: ChatSettings) -> None:
        self._settings = settings
        self._client: Any = None
        self._lock = threading.Lock()

    def _chat(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.apps import chat_v1

                if self._settings.google_anonymous:
                    from google.auth.credentials import AnonymousCredentials

                    credentials: Any = AnonymousCredentials()  # type: ignore[no-untyped-call]
                else:
                    import google.auth

                    credentials, _ = google.auth.default(scopes=[CHAT_SCOPE])
                self._client = chat_v1.ChatServiceClient(
                    credentials=credentials,
                    transport="rest",
                    client_options={"api_endpoint": self._settings.google_api_endpoint},
                )
            return self._client

    def _call(self, what: str, fn: Any) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return fn()
        except gexc.NotFound:
            return None
        except (gexc.TooManyRequests, gexc.ServerError, gexc.RetryError) as exc:
            raise UnavailableError(f"Google Chat {what} failed; retry.", detail=type(exc).__name__) from exc
        except gexc.GoogleAPICallError as exc:
            raise UnavailableError(f"Google Chat {what} refused.", detail=f"{type(exc).__name__}") from exc

    def _message(self, payload: dict[str, Any], name: str | None = None) -> Any:
        from google.apps import chat_v1

        body = dict(payload)
        if name:
            body["name"] = name
        return chat_v1.Message.from_json(json.dumps(body))

    def post_card(self, person: str, card: Card) -> dict[str, Any] | None:
        client = self._chat()
        space = self._call("findDirectMessage", lambda: client.find_direct_message(request={"name": f"users/{person}"}))
        if space is None:
            log.warning("no Google Chat direct message with an approver", person=person)
            return None
        created = self._call(
            "messages.create",
            lambda: client.create_message(request={"parent": space.name, "message": self._message(render(card))}),
        )
        return None if created is None else {"platform": PLATFORM, "name": created.name, "person": person}

    def update_card(self, ref: Mapping[str, Any], card: Card) -> None:
        client = self._chat()
        message = self._message(render(card), name=str(ref["name"]))
        self._call(
            "messages.update",
            lambda: client.update_message(request={"message": message, "update_mask": {"paths": ["text", "cards_v2"]}}),
        )

    def tell(self, person: str, text: str) -> None:
        client = self._chat()
        space = self._call("findDirectMessage", lambda: client.find_direct_message(request={"name": f"users/{person}"}))
        if space is not None:
            self._call(
                "messages.create",
                lambda: client.create_message(request={"parent": space.name, "message": self._message({"text": text})}),
            )

    def alert(self, text: str) -> None:
        space = self._settings.google_alerts_space
        if space:
            client = self._chat()
            self._call(
                "messages.create",
                lambda: client.create_message(request={"parent": space, "message": self._message({"text": text})}),
            )
