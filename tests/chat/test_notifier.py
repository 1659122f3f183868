"""The notifier: one card per approver and platform however often Pub/Sub delivers, cards kept in
step with the request, refusals told to the person who clicked, break-glass alerts."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import pytest
from freezegun import freeze_time

import main
from tests.chat.rig import BOT_TOKEN, SIGNING_SECRET, ChatRig, pubsub_event
from tests.support.audit import dump_store
from vending import clock, log
from vending.errors import UnavailableError, VendingError

APPROVERS = {"alice@example.com", "bob@example.com", "carol@example.com"}


def test_a_new_request_gets_one_card_per_approver_and_platform_never_the_requester(rig: ChatRig) -> None:
    request_id = rig.request()
    rig.notify()
    cards = rig.cards(request_id)
    assert sorted((c["platform"], c["person"]) for c in cards) == sorted(
        (p, a) for p in ("slack", "google-chat") for a in APPROVERS
    )
    assert all("state: APPROVAL_AWAITED" in c["text"] and "TICKET-42" in c["text"] for c in cards)
    slack = next(c for c in cards if c["platform"] == "slack")
    assert [e["action_id"] for e in slack["blocks"][-1]["elements"]] == ["approve", "deny"]


def test_redelivered_events_post_one_card_not_three(rig: ChatRig) -> None:
    # GIVEN request.created delivered three times, as Pub/Sub may (same message, and a publisher retry)
    request_id = rig.request()
    created = next(e for e in rig.events() if e["type"] == "request.created")
    main.chat_notify(pubsub_event(created, message_id="m-1"))
    main.chat_notify(pubsub_event(created, message_id="m-1"))
    main.chat_notify(pubsub_event(created, message_id="m-2"))
    # THEN each approver has one card per platform
    assert len(rig.cards(request_id)) == 2 * len(APPROVERS)


def test_concurrent_deliveries_post_one_card(rig: ChatRig) -> None:
    request_id = rig.request()
    created = next(e for e in rig.events() if e["type"] == "request.created")
    errors: list[BaseException] = []

    def deliver(n: int) -> None:
        try:
            main.chat_notify(pubsub_event(created, message_id=f"m-{n}"))
        except VendingError as exc:  # a retryable refusal: Pub/Sub would redeliver
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(e.retryable for e in errors)
    main.chat_notify(pubsub_event(created, message_id="m-late"))  # what a redelivery would do
    assert len(rig.cards(request_id)) == 2 * len(APPROVERS)


def test_cards_follow_the_request_to_active_and_to_used(rig: ChatRig) -> None:
    request_id = rig.request()
    rig.notify()
    # WHEN two approvers click, each event delivered twice
    assert rig.slack_click("alice@example.com", request_id)[0].status_code == 200
    assert rig.chat_click("bob@example.com", request_id).status_code == 200
    rig.notify(times=2)
    # THEN every card says ACTIVE, names both approvers, and offers Revoke only
    cards = rig.cards(request_id)
    assert len(cards) == 2 * len(APPROVERS)
    assert all("state: ACTIVE" in c["text"] for c in cards)
    assert all("approvals: 2/2 (alice@example.com, bob@example.com)" in c["text"] for c in cards)
    slack = next(c for c in cards if c["platform"] == "slack")
    assert [e["action_id"] for e in slack["blocks"][-1]["elements"]] == ["revoke"]
    # AND after the token is vended every card shows the use
    vend = rig.h.post(
        "/v1/access-tokens",
        {"service_account": "prod-admin@local-project.iam.gserviceaccount.com", "request_id": request_id},
        subject="dave@example.com",
    )
    assert vend.status_code == 200, vend.get_json()
    rig.notify()
    assert all("uses: 1/1" in c["text"] for c in rig.cards(request_id))


def test_a_denial_updates_every_card_and_removes_the_buttons(rig: ChatRig) -> None:
    request_id = rig.request()
    rig.notify()
    rig.slack_click("carol@example.com", request_id, action="deny")
    rig.notify()
    cards = rig.cards(request_id)
    assert all("state: DENIED" in c["text"] for c in cards)
    assert all(b["type"] != "actions" for c in cards if c["platform"] == "slack" for b in c["blocks"])


def test_break_glass_goes_to_the_alerts_channel_and_space_not_to_approvers(rig: ChatRig) -> None:
    request_id = rig.request("prod-break-glass", subject="oncall@example.com", justification="INC-7: db down")
    rig.notify()
    assert rig.cards(request_id) == []
    alerts = [
        m
        for m in rig.workspace.messages.values()
        if m.get("channel") == "C0ALERTS" or m.get("space") == "spaces/alerts"
    ]
    assert len(alerts) == 2
    assert all("BREAK-GLASS activated by oncall@example.com" in m["text"] for m in alerts)
    # AND each use is announced too (once, though the alerts topic carries a copy)
    vend = rig.h.post(
        "/v1/access-tokens",
        {"service_account": "prod-admin@local-project.iam.gserviceaccount.com", "request_id": request_id},
        subject="oncall@example.com",
    )
    assert vend.status_code == 200, vend.get_json()
    rig.notify(times=2)
    alerts = [
        m
        for m in rig.workspace.messages.values()
        if m.get("channel") == "C0ALERTS" or m.get("space") == "spaces/alerts"
    ]
    assert sum("BREAK-GLASS used by oncall@example.com" in m["text"] for m in alerts) == 2
    assert len(alerts) == 4


def test_an_event_of_another_kind_or_garbage_is_acknowledged(rig: ChatRig) -> None:
    main.chat_notify(pubsub_event({"type": "credential.issued", "issuance_id": "x"}))
    from cloudevents.http import CloudEvent

    main.chat_notify(
        CloudEvent(
            {"id": "1", "source": "//pubsub", "type": "google.cloud.pubsub.topic.v1.messagePublished"},
            {"message": {"data": "!!"}},
        )
    )
    assert rig.workspace.messages == {}


def test_no_secret_reaches_the_log(rig: ChatRig) -> None:
    # GIVEN the log at DEBUG into a buffer
    buffer = io.StringIO()
    log.configure("DEBUG", stream=buffer)
    try:
        request_id = rig.request()
        rig.notify()
        token = rig.issuer.mint("123456789012")
        rig.slack_click("alice@example.com", request_id)
        rig.slack_click("alice@example.com", request_id, secret="wrong-secret-0123456789abcdef")
        rig.chat_click("bob@example.com", request_id, token=token)
        rig.chat_click("bob@example.com", request_id, token=token[:-4] + "AAAA")
        rig.notify()
    finally:
        log.configure("DEBUG")
    text = buffer.getvalue()
    # THEN neither the Slack signing secret, the bot token nor Chat's bearer token is in it
    assert "chat click published" in text
    for secret in (SIGNING_SECRET, BOT_TOKEN, token, token.split(".")[2]):
        assert secret not in text
    # AND none is in the store or in what the service published
    stored = json.dumps(dump_store(rig.h.store), default=str) + json.dumps(rig.events(), default=str)
    for secret in (SIGNING_SECRET, BOT_TOKEN, token.split(".")[1], token.split(".")[2]):
        assert secret not in stored


class FlakyPoster:
    """A platform that fails once, after its first post (a rate limit, say)."""

    platform = "flaky"

    def __init__(self) -> None:
        self.posted: list[str] = []
        self.failed = False

    def post_card(self, person: str, card: Any) -> dict[str, Any] | None:
        if len(self.posted) == 1 and not self.failed:
            self.failed = True
            raise UnavailableError("rate limited")
        self.posted.append(person)
        return {"platform": self.platform, "person": person, "id": len(self.posted)}

    def update_card(self, ref: dict[str, Any], card: Any) -> None:
        return None

    def tell(self, person: str, text: str) -> None:
        return None

    def alert(self, text: str) -> None:
        return None


def test_a_failure_half_way_is_resumed_without_posting_twice(rig: ChatRig) -> None:
    from vending.chat.notifier import Notifier

    rig.request()
    created = next(e for e in rig.events() if e["type"] == "request.created")
    poster = FlakyPoster()
    notifier = Notifier(rig.h.policy, rig.h.store, rig.h.store, [poster], bot="chatops-bot")
    # WHEN the first delivery fails after one card (retryable: Pub/Sub redelivers)
    with pytest.raises(UnavailableError):
        notifier.handle_event(dict(created))
    # AND the redelivery goes through
    notifier.handle_event(dict(created))
    notifier.handle_event(dict(created))
    # THEN each approver got one card
    assert sorted(poster.posted) == sorted(APPROVERS)


def test_a_card_left_posting_by_a_dead_delivery_is_taken_over_after_two_minutes(rig: ChatRig) -> None:
    from vending.chat.core import CARDS
    from vending.chat.notifier import Notifier
    from vending.store import Create

    with freeze_time("2026-11-28T10:00:00Z") as frozen:
        request_id = rig.request()
        created = next(e for e in rig.events() if e["type"] == "request.created")
        rig.h.store.write([Create(CARDS, request_id, {"status": "posting", "messages": [], "at": clock.now()})])
        poster = FlakyPoster()
        poster.failed = True
        notifier = Notifier(rig.h.policy, rig.h.store, rig.h.store, [poster], bot="chatops-bot")
        # WHEN the claim is younger than two minutes: retry later
        frozen.tick(119)
        with pytest.raises(UnavailableError):
            notifier.handle_event(dict(created))
        assert poster.posted == []
        # AND at two minutes it is taken over
        frozen.tick(1)
        notifier.handle_event(dict(created))
    assert sorted(poster.posted) == sorted(APPROVERS)
