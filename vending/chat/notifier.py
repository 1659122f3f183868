"""The notifier: a Pub/Sub function on the notifications (and alerts) topic that keeps chat in step.

- ``request.*`` (created, approval_received, activated, denied, revoked, withdrawn, expired, ended)
  and ``credential.issued`` of a request: the request's card, rendered from the stored request, is
  posted to each approver (never the requester) the first time, and updated everywhere after.
- ``approval.rejected`` sent by our bot: the person who clicked is told the reason.
- break-glass (``request.created`` and ``credential.issued`` of a break-glass request, both on the
  notifications topic): an alert in the configured alerts space / channel. The function listens to
  the notifications topic only; the alerts topic's ``break_glass.*`` copies are ignored, so wiring
  both never alerts twice.

Each event is handled once: its id (the SHA-256 of the event itself; Pub/Sub's message id changes
when a publisher retries) is created atomically in the store before anything is posted, and removed
again when handling fails with a retryable error, so the redelivery does the work. A card is claimed
the same way, so concurrent deliveries post one card, not three.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
from collections.abc import Sequence
from typing import Any, Protocol

from vending import clock, log
from vending.approvals import ACTIVE, AWAITED
from vending.chat.core import CARDS, EVENTS, RECORD_RETENTION, Card, approvers_of, bare, digest, load_card
from vending.config import Policy
from vending.errors import BadRequestError, NotFoundError, UnavailableError, VendingError
from vending.store import Create, Delete, Store, StoreConflict, Update

CARD_EVENTS = frozenset(
    {
        "request.created",
        "request.approval_received",
        "request.approved",
        "request.activated",
        "request.denied",
        "request.revoked",
        "request.withdrawn",
        "request.expired",
        "request.ended",
        "credential.issued",
    }
)
ALERT_EVENTS = frozenset({"request.created", "credential.issued"})  # when the event says break_glass
MAX_EVENT_BYTES = 64 * 1024
POSTING_STALE = _dt.timedelta(seconds=120)  # a card "posting" this long was left by a delivery that died


class Poster(Protocol):
    """One chat platform, as the notifier uses it (``ChatPoster``, ``SlackPoster``)."""

    platform: str

    def post_card(self, person: str, card: Card) -> dict[str, Any] | None: ...
    def update_card(self, ref: dict[str, Any], card: Card) -> None: ...
    def tell(self, person: str, text: str) -> None: ...
    def alert(self, text: str) -> None: ...


def decode(cloud_event: Any) -> dict[str, Any]:
    """The lifecycle event inside a Pub/Sub CloudEvent."""
    data = getattr(cloud_event, "data", None)
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("data"), str):
        raise BadRequestError("The CloudEvent carries no Pub/Sub message.", reason="invalid-message")
    try:
        raw = base64.b64decode(message["data"], validate=True)
        if len(raw) > MAX_EVENT_BYTES:
            raise ValueError("too large")
        event = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError("The message is not a JSON event.", reason="invalid-message") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise BadRequestError("The message is not a lifecycle event.", reason="invalid-message")
    return event


def event_id(event: dict[str, Any]) -> str:
    return digest("event", json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True))


class Notifier:
    def __init__(self, policy: Policy, requests: Store, state: Store, posters: Sequence[Poster], *, bot: str) -> None:
        """``requests``: the service's store, only read (the access requests); ``state``: the chat
        apps' own records (handled events, posted cards); the same store when none is configured."""
        self._policy, self._requests, self._store = policy, requests, state
        self._posters, self._bot = tuple(posters), bot

    def handle(self, cloud_event: Any) -> None:
        """Pub/Sub semantics: retryable failures raise (redelivered), permanent ones are logged and acked."""
        try:
            event = decode(cloud_event)
        except VendingError as exc:
            log.warning("chat notification rejected", reason=exc.reason)
            return
        self.handle_event(event)

    def handle_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind not in CARD_EVENTS and kind != "approval.rejected":
            return
        if kind == "credential.issued" and not event.get("request_id"):
            return
        key = event_id(event)
        now = clock.now()
        try:
            self._store.write([Create(EVENTS, key, {"type": kind, "at": now, "purge_at": now + RECORD_RETENTION})])
        except StoreConflict:
            log.info("chat notification already handled", event_type=kind, event_id=key)
            return
        try:
            if kind in ALERT_EVENTS and event.get("break_glass") is True:
                self._alert(event)
            if kind in CARD_EVENTS:
                self._refresh(str(event.get("request_id") or ""))
            else:
                self._tell(event)
        except VendingError as exc:
            if exc.retryable:
                self._store.write([Delete(EVENTS, key)])  # the redelivery does the work
                log.warning("chat notification will be retried", event_type=kind, reason=exc.reason)
                raise
            log.warning("chat notification dropped", event_type=kind, reason=exc.reason, detail=exc.detail)
        except BaseException:
            self._store.write([Delete(EVENTS, key)])
            raise

    # -- cards ---------------------------------------------------------------------------------
    def _refresh(self, request_id: str) -> None:
        try:
            card = load_card(self._requests, request_id)
        except NotFoundError:
            log.warning("chat notification for an unknown access request", access_request_id=request_id[:64])
            return
        except ValueError:
            return  # not a document id
        doc = self._store.get(CARDS, request_id)
        if doc is not None and doc.data.get("status") == "posted":
            for ref in doc.data.get("messages") or []:
                poster = self._poster(ref.get("platform"))
                if poster is not None:
                    poster.update_card(ref, card)
            log.info("chat card updated", access_request_id=request_id, state=card.state)
            return
        now = clock.now()
        if doc is None:
            if card.break_glass or card.state not in (AWAITED, ACTIVE):
                return  # nothing to decide: break-glass goes to the alerts channel
            claim = {"request_id": request_id, "status": "posting", "messages": [], "at": now}
            write: Create | Update = Create(CARDS, request_id, {**claim, "purge_at": now + RECORD_RETENTION})
            messages: list[dict[str, Any]] = []
        else:
            # Half posted (a failure stopped it), or being posted (by a delivery that may have died).
            at = doc.data.get("at")
            if doc.data.get("status") == "posting" and at is not None and now - at < POSTING_STALE:
                raise UnavailableError("The card is being posted; update it on redelivery.", reason="card-being-posted")
            write = Update(CARDS, request_id, {"status": "posting", "at": now}, expect_version=doc.version)
            messages = list(doc.data.get("messages") or [])
        try:
            self._store.write([write])  # the claim: one delivery posts, the others are redelivered
        except StoreConflict:
            raise UnavailableError("Another delivery posts this card.", reason="card-being-posted") from None
        self._post(card, messages)

    def _post(self, card: Card, messages: list[dict[str, Any]]) -> None:
        """Post to every approver on every platform not yet posted to; progress is saved on failure."""
        done = {(m.get("platform"), m.get("person")) for m in messages}
        try:
            for person in approvers_of(self._policy, card):
                for poster in self._posters:
                    if (poster.platform, person) in done:
                        continue
                    ref = poster.post_card(person, card)
                    if ref is not None:
                        messages.append(ref)
        except BaseException:
            self._store.write([Update(CARDS, card.request_id, {"status": "partial", "messages": messages})])
            raise
        self._store.write([Update(CARDS, card.request_id, {"status": "posted", "messages": messages})])
        log.notice("chat card posted", access_request_id=card.request_id, messages=len(messages))

    def _poster(self, platform: Any) -> Poster | None:
        return next((p for p in self._posters if p.platform == platform), None)

    # -- telling and alerting ------------------------------------------------------------------
    def _tell(self, event: dict[str, Any]) -> None:
        actor = event.get("actor")
        if event.get("bot") != self._bot or not isinstance(actor, str):
            return  # another bot's person, or nobody we could name
        text = (
            f"Your {event.get('action') or 'message'} of access request {event.get('request_id') or '-'} "
            f"was refused ({event.get('reason')}): {event.get('message')}"
        )
        for poster in self._posters:
            poster.tell(bare(actor), text)

    def _alert(self, event: dict[str, Any]) -> None:
        who = bare(str(event.get("principal") or event.get("requester") or "?"))
        what = "used" if event["type"] == "credential.issued" else "activated"
        text = (
            f"BREAK-GLASS {what} by {who}: {event.get('entitlement')} on {event.get('service_account')}"
            f" (request {event.get('request_id')}, until {event.get('window_end') or event.get('expire_time')})"
        )
        for poster in self._posters:
            poster.alert(text)
