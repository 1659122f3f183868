"""Approvals through real Pub/Sub: bot messages published to the emulator, pulled,
delivered to ``handle_pubsub`` as CloudEvents (at least once, shuffled), on Firestore.

Also the notifications topic: lifecycle events published with google-cloud-pubsub.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from cloudevents.http import CloudEvent

import main
from tests.support.app import PROD_SA, ServiceHarness
from tests.support.bots import Bot
from tests.support.fixtures import *
from vending.events import PubSubEvents

pytestmark = pytest.mark.emulator
PROJECT = "vending-test"
REQUESTER = "dave@example.com"


@pytest.fixture
def pubsub(pubsub_emulator: Any) -> Iterator[tuple[Any, Any]]:
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    yield publisher, subscriber
    subscriber.close()


def make_topic(publisher: Any, subscriber: Any, name: str) -> tuple[str, str]:
    topic = publisher.topic_path(PROJECT, name)
    sub = subscriber.subscription_path(PROJECT, name + "-sub")
    for call in (
        lambda: publisher.create_topic(name=topic),
        lambda: subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=10),
    ):
        try:
            call()
        except Exception as exc:  # AlreadyExists from an earlier test in the session
            if "AlreadyExists" not in type(exc).__name__:
                raise
    return topic, sub


def pull_all(subscriber: Any, sub: str, expected: int) -> list[Any]:
    got: list[Any] = []
    for _ in range(20):
        resp = subscriber.pull(subscription=sub, max_messages=100, timeout=5)
        got.extend(resp.received_messages)
        if resp.received_messages:
            subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in resp.received_messages])
        if len(got) >= expected:
            break
    return got


def as_cloud_event(received: Any, sub: str) -> CloudEvent:
    msg = received.message
    return CloudEvent(
        {
            "id": msg.message_id,
            "source": f"//pubsub.googleapis.com/{sub}",
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "specversion": "1.0",
        },
        {"message": {"data": base64.b64encode(msg.data).decode(), "messageId": msg.message_id}, "subscription": sub},
    )


def test_bot_messages_through_pubsub_redelivered_and_shuffled(
    fs_harness: ServiceHarness, pubsub: tuple[Any, Any]
) -> None:
    h = fs_harness
    publisher, subscriber = pubsub
    topic, sub = make_topic(publisher, subscriber, "approvals")
    bot = Bot(h.standin.url, h.policy.bot_audience or "")
    # GIVEN dave's request, filed in chat
    request = h.post(
        "/v1/requests", {"entitlement": "prod-admin", "justification": "INC-9: disk full"}, subject=REQUESTER
    ).get_json()
    # WHEN two approvers click approve and the bot publishes signed messages
    for actor in ("alice@example.com", "bob@example.com"):
        publisher.publish(topic, bot.message("approve", actor, request_id=request["id"]).encode()).result(10)
    received = pull_all(subscriber, sub, 2)
    assert len(received) == 2
    # AND Pub/Sub delivers each three times, out of order
    deliveries = received * 3
    random.Random(3).shuffle(deliveries)
    for message in deliveries:
        main.handle_pubsub(as_cloud_event(message, sub))
    # THEN the request is active with exactly two distinct approvals, and one token follows
    state = h.get(f"/v1/requests/{request['id']}", subject=REQUESTER).get_json()
    assert state["state"] == "ACTIVE" and len(state["approvals"]) == 2
    assert all(a["via"].startswith("pubsub:") for a in state["approvals"])
    vend = h.post("/v1/access-tokens", {"service_account": PROD_SA, "request_id": request["id"]}, subject=REQUESTER)
    assert vend.status_code == 200, vend.get_json()


def test_lifecycle_events_reach_the_notifications_topic(fs_harness: ServiceHarness, pubsub: tuple[Any, Any]) -> None:
    h = fs_harness
    publisher, subscriber = pubsub
    topic, sub = make_topic(publisher, subscriber, "notifications")
    alerts_topic, alerts_sub = make_topic(publisher, subscriber, "alerts")
    h.events = PubSubEvents({"notifications": topic, "alerts": alerts_topic}, PROJECT)
    h.rebuild()
    # GIVEN a break-glass request and a token vended against it
    req = h.post(
        "/v1/requests",
        {"entitlement": "prod-break-glass", "justification": "INC-1: outage"},
        subject="oncall@example.com",
    ).get_json()
    token = h.post(
        "/v1/access-tokens", {"service_account": PROD_SA, "request_id": req["id"]}, subject="oncall@example.com"
    )
    assert token.status_code == 200
    # THEN chat bots see the lifecycle, and the alert arrives on its own topic; never a token
    events = [json.loads(m.message.data) for m in pull_all(subscriber, sub, 3)]
    assert {"request.created", "request.activated", "credential.issued"} <= {e["type"] for e in events}
    alerts = [json.loads(m.message.data) for m in pull_all(subscriber, alerts_sub, 2)]
    assert {"break_glass.activated", "break_glass.used"} <= {e["type"] for e in alerts}
    raw = json.dumps(events + alerts)
    assert token.get_json()["access_token"] not in raw
