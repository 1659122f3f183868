"""Platform-neutral chat-ops: the card of an access request, a click turned into the existing
signed approval message, replay records and the apps' JSON errors.

Nothing here (nor anywhere in ``vending/chat``) imports ``vending.client`` or ``vending.local``:
neither ships in the functions' source archive.

A card is rendered from the access request as the service stored it (``vending.approvals.view``):
whatever order the notifications arrive in, a card shows the request as it is. A click becomes
the message a chat-ops bot has always sent (the claims of ``vending.client.bot.approval_claims``),
signed by the bot's service account with IAM ``signJwt``, published to the approvals topic (or,
on the embedded default, delivered to the local ``handle_pubsub``). The service verifies and
decides it; nothing here decides who may approve.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vending import clock, log
from vending.approvals import ACTIVE, AWAITED, KILL_SWITCH_RELEASE, view
from vending.config import Bot, Policy
from vending.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    VendingError,
)
from vending.store import Create, Store, StoreConflict
from vending.store.indexes import REQUESTS

ACTIONS = ("approve", "deny", "revoke")
REPLAYS = "chat_replays"  # one document per accepted click: its replay key (sha256), until it can no longer verify
CARDS = "chat_cards"  # one document per access request: the messages that show its card
EVENTS = "chat_events"  # one document per handled notification: its event id (sha256 of the event)
RECORD_RETENTION = _dt.timedelta(days=30)  # chat_cards / chat_events purge_at (Firestore TTL clean-up)


# -- the card -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Card:
    """What every platform shows of one access request."""

    request_id: str
    entitlement: str
    service_account: str
    requester: str  # the identity without its issuer
    justification: str | None
    state: str
    quorum: int
    approved_by: tuple[str, ...]
    uses: int
    max_uses: int | None
    window_end: str | None
    break_glass: bool

    @property
    def actions(self) -> tuple[str, ...]:
        """The buttons: decide while it awaits approval; revoke while it is active."""
        if self.state == AWAITED:
            return ("approve", "deny")
        if self.state == ACTIVE:
            return ("revoke",)
        return ()

    @property
    def title(self) -> str:
        what = "Release the kill switch of" if self.entitlement == KILL_SWITCH_RELEASE else "Access request"
        return f"{what} {self.entitlement} for {self.requester}"

    def lines(self) -> list[str]:
        """The card's facts, one per line, the same on every platform."""
        out = [
            f"request: {self.request_id}",
            f"service account: {self.service_account}",
            f"justification: {self.justification or '-'}",
            f"state: {self.state}",
            f"approvals: {len(self.approved_by)}/{self.quorum}"
            + (f" ({', '.join(self.approved_by)})" if self.approved_by else ""),
        ]
        if self.max_uses:
            out.append(f"uses: {self.uses}/{self.max_uses}")
        if self.window_end and self.state == ACTIVE:
            out.append(f"active until: {self.window_end}")
        if self.break_glass:
            out.append("BREAK-GLASS")
        return out

    def text(self) -> str:
        return "\n".join([self.title, *self.lines()])


def bare(identity: str) -> str:
    """``ISSUER/alice@example.com`` -> ``alice@example.com`` (what a chat platform knows)."""
    return identity.rsplit("/", 1)[-1]


def card_of(record: dict[str, Any]) -> Card:
    """The card of a stored access-request record, as of now (an overdue request reads EXPIRED)."""
    v = view(record, clock.now())
    approvals = v.get("approvals") or []
    return Card(
        request_id=str(v["id"]),
        entitlement=str(v["entitlement"]),
        service_account=str(v["service_account"]),
        requester=bare(str(v["requester"])),
        justification=v.get("justification"),
        state=str(v["state"]),
        quorum=int(v.get("quorum") or 0),
        approved_by=tuple(bare(str(a.get("approver"))) for a in approvals if isinstance(a, dict)),
        uses=int(v.get("uses") or 0),
        max_uses=int(v["max_uses"]) if v.get("max_uses") else None,
        window_end=v.get("window_end"),
        break_glass=bool(v.get("break_glass")),
    )


def load_card(store: Store, request_id: str) -> Card:
    doc = store.get(REQUESTS, request_id)
    if doc is None:
        raise NotFoundError(f"No access request {request_id}.", reason="request-not-found")
    return card_of(doc.data)


def approvers_of(policy: Policy, card: Card) -> list[str]:
    """Who gets the card: the request's approvers (bare identities), never its requester."""
    if card.entitlement == KILL_SWITCH_RELEASE:
        refs = policy.kill_switch.approvers if policy.kill_switch else ()
    else:
        ent = policy.entitlement(card.entitlement)
        refs = ent.approval.approvers if ent and ent.approval else ()
    return sorted({bare(i) for i in policy.expand(refs)} - {card.requester})


# -- a click --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Click:
    """A verified click: who (the identity the platform vouched for), on what, which button."""

    platform: str
    actor: str
    request_id: str
    action: str

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise BadRequestError(f"Unknown action {self.action!r}.", reason="invalid-action")
        if not (1 <= len(self.request_id) <= 64 and self.request_id.isalnum()):
            raise BadRequestError("The click names no access request.", reason="invalid-request-id")
        if not self.actor or len(self.actor) > 320 or any(c.isspace() for c in self.actor):
            raise PermissionDeniedError("The clicking user has no identity.", reason="unknown-user")


def bot_of(policy: Policy, name: str | None) -> Bot:
    """The policy's bot the apps sign as (by service account), else its first bot."""
    for bot in policy.bots:
        if name is None or bot.service_account == name:
            return bot
    raise BadRequestError(f"No bot {name!r} in the policy.", reason="bot-not-configured")


class ApprovalPublisher:
    """Signs a click's approval as the bot (IAM ``signJwt``) and publishes it: the apps' only power."""

    def __init__(
        self,
        iam: Any,
        bot: str,
        audience: str,
        *,
        topic: str | None = None,
        deliver_to: str | None = None,
        ttl_s: int = 300,
        sender: Callable[[str], str] | None = None,
    ) -> None:
        """``sender`` (tests): delivers the signed message instead of Pub/Sub; returns its message id."""
        if not topic and not deliver_to and sender is None:
            raise BadRequestError("No approvals topic to publish to.", reason="approvals-topic-not-configured")
        self._iam, self.bot, self.audience = iam, bot, audience
        self._topic, self._deliver_to, self._ttl_s = topic, deliver_to, ttl_s
        self._client: Any = None
        self._lock = threading.Lock()
        self._sender = sender

    def claims(self, click: Click) -> dict[str, Any]:
        """The approval message (``vending.approvals.apply_bot_message``), as every chat-ops bot sends it."""
        now = int(clock.epoch())
        return {
            "iss": self.bot,
            "sub": self.bot,
            "aud": self.audience,
            "iat": now,
            "exp": now + self._ttl_s,
            "jti": uuid.uuid4().hex,
            "action": click.action,
            "actor": click.actor,
            "request_id": click.request_id,
        }

    def publish(self, click: Click) -> str:
        """The message id. Raises ``UnavailableError`` (retry the click) when signing or publishing failed."""
        claims = self.claims(click)
        signed = self._iam.sign_jwt(self.bot, claims, [], reason=f"chat-ops {click.platform} {click.action}").value
        try:
            message_id = self._send(signed)
        except VendingError:
            raise
        except Exception as exc:  # any transport failure (ClientError, Pub/Sub): the person may click again
            raise UnavailableError(
                "The approval could not be published; try again.", reason="publish-failed", detail=type(exc).__name__
            ) from exc
        log.notice(
            "chat click published",
            audit=True,
            platform=click.platform,
            actor=click.actor,
            action=click.action,
            access_request_id=click.request_id,
            message_id=message_id,
        )
        return message_id

    def _send(self, signed: str) -> str:
        if self._sender is not None:
            return self._sender(signed)
        if self._deliver_to:
            return self._deliver_local(signed, self._deliver_to)
        with self._lock:
            if self._client is None:
                from google.cloud import pubsub_v1  # type: ignore[attr-defined]

                self._client = pubsub_v1.PublisherClient()
        return str(self._client.publish(self._topic, signed.encode("ascii")).result(timeout=30))

    @staticmethod
    def _deliver_local(signed: str, url: str) -> str:
        """The embedded default's stand-in for Pub/Sub: the message as a CloudEvent POSTed to ``handle_pubsub``."""
        import base64

        import requests

        message_id = str(uuid.uuid4().int)[:16]
        topic = "projects/local-project/topics/approvals"
        headers = {
            "ce-id": message_id,
            "ce-source": f"//pubsub.googleapis.com/{topic}",
            "ce-specversion": "1.0",
            "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
            "ce-time": clock.rfc3339(clock.now()),
        }
        body = {
            "message": {"data": base64.b64encode(signed.encode()).decode(), "messageId": message_id},
            "subscription": "projects/local-project/subscriptions/approvals",
        }
        resp = requests.post(url, json=body, headers=headers, timeout=30)
        if not resp.ok:
            raise UnavailableError("The approval could not be delivered; try again.", reason="publish-failed")
        return message_id


# -- replay records -------------------------------------------------------------------------------
def digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


class ReplayGuard:
    """A click is accepted once: its key is created atomically and kept while it could verify."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def remember(self, key: str, until: _dt.datetime) -> None:
        try:
            self._store.write([Create(REPLAYS, key, {"purge_at": until, "at": clock.now()})])
        except StoreConflict:
            raise ConflictError("This click was already received.", reason="replayed-click") from None


# -- errors as JSON -------------------------------------------------------------------------------
def error_body(exc: VendingError) -> tuple[int, dict[str, Any]]:
    """The apps' one error shape (the service's): generic for authentication, never a secret."""
    return exc.http_status, {
        "error": {"code": exc.http_status, "status": exc.status, "reason": exc.reason, "message": exc.message}
    }
