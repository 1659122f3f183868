"""The whole chat-ops loop through the real Pub/Sub emulator, on the Firestore emulator: the service
publishes request.created, the notifier posts cards, two approvers click (Slack and Google Chat),
the apps publish signed approvals to the approvals topic, ``handle_pubsub`` applies them (each
delivered twice, shuffled), the cards follow (each notification delivered three times)."""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent

import main
from tests.chat.rig import ChatRig
from tests.integration.test_pubsub_approvals import PROJECT, as_cloud_event, make_topic, pull_all
from tests.support.app import PROD_SA, ServiceHarness
from tests.support.fixtures import *
from vending.events import PubSubEvents

pytestmark = pytest.mark.emulator


@pytest.fixture
def pubsub(pubsub_emulator: Any) -> Iterator[tuple[Any, Any]]:
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    yield publisher, subscriber
    subscriber.close()


def deliver(subscriber: Any, sub: str, expected: int, target: Any, times: int, seed: int) -> int:
    received = pull_all(subscriber, sub, expected)
    deliveries = received * times
    random.Random(seed).shuffle(deliveries)
    for message in deliveries:
        event: CloudEvent = as_cloud_event(message, sub)
        target(event)
    return len(received)


def test_the_whole_loop_through_pubsub(fs_harness: ServiceHarness, pubsub: tuple[Any, Any], tmp_path: Path) -> None:
    h = fs_harness
    publisher, subscriber = pubsub
    approvals_topic, approvals_sub = make_topic(publisher, subscriber, "chat-approvals")
    notifications_topic, notifications_sub = make_topic(publisher, subscriber, "chat-notifications")
    alerts_topic, _ = make_topic(publisher, subscriber, "chat-alerts")
    h.events = PubSubEvents({"notifications": notifications_topic, "alerts": alerts_topic}, PROJECT)
    h.rebuild()
    rig = ChatRig(h, tmp_path, topic=approvals_topic)
    try:
        # GIVEN dave's request; request.created reaches the notifier three times
        request_id = rig.request()
        assert deliver(subscriber, notifications_sub, 1, main.chat_notify, 3, seed=1) >= 1
        cards = rig.cards(request_id)
        assert len(cards) == 6 and all("state: APPROVAL_AWAITED" in c["text"] for c in cards)
        # WHEN alice (Slack) and bob (Google Chat) click Approve: the apps publish to the approvals topic
        assert rig.slack_click("alice@example.com", request_id)[0].status_code == 200
        assert rig.chat_click("bob@example.com", request_id).status_code == 200
        assert rig.published == []  # nothing delivered in process: it went to Pub/Sub
        # AND Pub/Sub delivers each signed approval twice, out of order
        assert deliver(subscriber, approvals_sub, 2, main.handle_pubsub, 2, seed=2) == 2
        # THEN the request is ACTIVE with two distinct approvals, and a token follows
        state = rig.state(request_id)
        assert state["state"] == "ACTIVE" and len(state["approvals"]) == 2
        vend = h.post(
            "/v1/access-tokens", {"service_account": PROD_SA, "request_id": request_id}, subject="dave@example.com"
        )
        assert vend.status_code == 200, vend.get_json()
        # AND the notifications (approvals, activation, the credential) bring every card up to date
        deliver(subscriber, notifications_sub, 4, main.chat_notify, 3, seed=3)
        cards = rig.cards(request_id)
        assert len(cards) == 6
        assert all("state: ENDED" in c["text"] or "state: ACTIVE" in c["text"] for c in cards)
        assert all("approvals: 2/2 (" in c["text"] for c in cards)  # in the order Pub/Sub delivered them
        assert all("alice@example.com" in c["text"] and "bob@example.com" in c["text"] for c in cards)
        assert all("uses: 1/1" in c["text"] for c in cards)
        # AND no credential, no signed approval reached a card
        text = " ".join(c["text"] for c in cards)
        assert vend.get_json()["access_token"] not in text
        assert base64.b64encode(b"eyJ").decode() not in text
    finally:
        rig.close()
