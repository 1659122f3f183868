"""At-least-once delivery through the real Pub/Sub emulator, against an independent oracle (issue 19).

Each scenario is a set of signed bot messages and the final state it must
reach, written down by hand (not computed by running the code in order).
Every message is published three times to the emulator and the test is the
push endpoint: it pulls in batches, shuffles each batch, hands every message
to ``main.handle_pubsub`` as Eventarc would, acknowledges when the handler
returns and nacks (immediate redelivery) only when it raises a *retryable*
``VendingError``. Any other exception fails the test: a bug must never pass
for a redelivery.

Malformed messages (bad base64, wrong schema, unknown action, unsigned,
wrong audience, expired, oversized) are acknowledged without a change, each
with its reason in the log.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from freezegun import freeze_time

import main
from tests.support.app import ServiceHarness
from tests.support.audit import dump_store
from tests.support.bots import Bot, cloud_event
from tests.support.fixtures import *
from tests.support.oidc import b64url
from vending import approvals as ap
from vending import clock
from vending.errors import VendingError

PROJECT = "vending-test"
REQUESTER = "dave@example.com"
JUSTIFICATION = "TICKET-42: rotate the database password"


# -- scenarios: messages and the state they must reach -----------------------------------------------

Build = Callable[[Bot, str], list[str]]


def _request(bot: Bot) -> tuple[str, str]:
    claims = bot.claims("request", REQUESTER, entitlement="prod-admin", justification=JUSTIFICATION)
    return bot.sign(claims), ap.bot_request_id(claims["jti"])


# name -> (follow-up messages, expected state, expected approvers or None when order decides them)
SCENARIOS: dict[str, tuple[Build, str, frozenset[str] | None]] = {
    "two approvals": (
        lambda b, r: [
            b.message("approve", "alice@example.com", request_id=r),
            b.message("approve", "bob@example.com", request_id=r),
        ],
        ap.ACTIVE,
        frozenset({"ci/alice@example.com", "ci/bob@example.com"}),
    ),
    "one approver twice": (
        lambda b, r: [
            b.message("approve", "alice@example.com", request_id=r),
            b.message("approve", "alice@example.com", request_id=r, comment="again"),
        ],
        ap.AWAITED,
        frozenset({"ci/alice@example.com"}),
    ),
    "self-approval counts for nothing": (
        lambda b, r: [
            b.message("approve", "alice@example.com", request_id=r),
            b.message("approve", REQUESTER, request_id=r),
        ],
        ap.AWAITED,
        frozenset({"ci/alice@example.com"}),
    ),
    "a revoke ends it whatever the order": (
        lambda b, r: [
            b.message("approve", "alice@example.com", request_id=r),
            b.message("approve", "bob@example.com", request_id=r),
            b.message("revoke", "carol@example.com", request_id=r),
        ],
        ap.REVOKED,
        None,
    ),
    "a deny before quorum ends it": (
        lambda b, r: [
            b.message("approve", "alice@example.com", request_id=r),
            b.message("deny", "carol@example.com", request_id=r),
        ],
        ap.DENIED,
        None,
    ),
    "an outsider changes nothing": (
        lambda b, r: [
            b.message("approve", "eve@example.com", request_id=r),
            b.message("revoke", "eve@example.com", request_id=r),
        ],
        ap.AWAITED,
        frozenset(),
    ),
}


@pytest.fixture
def approvals_topic(pubsub_emulator: Any) -> Iterator[tuple[Any, Any, str, str]]:
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    name = f"approvals-{uuid.uuid4().hex[:8]}"
    topic, sub = publisher.topic_path(PROJECT, name), subscriber.subscription_path(PROJECT, name)
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=30)
    yield publisher, subscriber, topic, sub
    subscriber.delete_subscription(subscription=sub)
    publisher.delete_topic(topic=topic)
    subscriber.close()


def _event(received: Any, sub: str) -> CloudEvent:
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


def push(subscriber: Any, sub: str, expected: int, rng: random.Random) -> Counter[str]:
    """Deliver until ``expected`` messages were acknowledged; nack (redeliver) only on a retryable error."""
    outcome: Counter[str] = Counter()
    for _ in range(200):
        if outcome["acked"] >= expected:
            break
        resp = subscriber.pull(subscription=sub, max_messages=50, timeout=5)
        batch = list(resp.received_messages)
        rng.shuffle(batch)
        for received in batch:
            try:
                main.handle_pubsub(_event(received, sub))
            except VendingError as exc:
                assert exc.retryable or exc.reason == "request-busy", f"a permanent error was raised: {exc!r}"
                outcome["redelivered"] += 1
                subscriber.modify_ack_deadline(subscription=sub, ack_ids=[received.ack_id], ack_deadline_seconds=0)
                continue
            outcome["acked"] += 1
            subscriber.acknowledge(subscription=sub, ack_ids=[received.ack_id])
    assert outcome["acked"] == expected, outcome
    assert outcome["redelivered"] <= 50 * expected, "a message was redelivered without end"
    return outcome


@pytest.mark.emulator
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_three_deliveries_in_any_order_reach_the_stated_state(
    fs_harness: ServiceHarness, approvals_topic: tuple[Any, Any, str, str], suite_figures: Any, name: str
) -> None:
    """GIVEN a scenario's messages, each published three times to the emulator / WHEN delivered in shuffled
    batches, redelivering only what raised a retryable error / THEN the request reaches the stated state."""
    h = fs_harness
    publisher, subscriber, topic, sub = approvals_topic
    bot = Bot(h.standin.url, h.policy.bot_audience or "")
    build, expected_state, expected_approvers = SCENARIOS[name]
    request, request_id = _request(bot)
    messages = [request, *build(bot, request_id)]
    for jwt in messages * 3:
        publisher.publish(topic, jwt.encode()).result(10)
    outcome = push(subscriber, sub, len(messages) * 3, random.Random(name))
    doc = h.store.get("requests", request_id)
    assert doc is not None
    assert doc.data["state"] == expected_state
    approvers = {a["approver"] for a in doc.data["approvals"]}
    if expected_approvers is not None:
        assert approvers == expected_approvers
    assert approvers <= {"ci/alice@example.com", "ci/bob@example.com", "ci/carol@example.com"}
    suite_figures.add(
        f"pubsub redelivery ({name}): {len(messages) * 3} deliveries, "
        f"{outcome['redelivered']} redelivered after a retryable error -> {expected_state}"
    )


# -- malformed messages: acknowledged, nothing changes, the reason is logged ------------------------------


def _raw_event(data: Any, message_id: str = "m-1") -> CloudEvent:
    attributes = {
        "id": message_id,
        "source": "//pubsub.googleapis.com/projects/vending-test/topics/approvals",
        "type": "google.cloud.pubsub.topic.v1.messagePublished",
        "specversion": "1.0",
    }
    return CloudEvent(attributes, data)


def _message_data(text: str) -> dict[str, Any]:
    return {"message": {"data": base64.b64encode(text.encode()).decode(), "messageId": "m-1"}}


def _malformed(bot: Bot, request_id: str, case: str) -> tuple[CloudEvent, str]:
    def approve(**extra: Any) -> dict[str, Any]:
        return bot.claims("approve", "alice@example.com", request_id=request_id, **extra)

    if case == "bad base64":
        return _raw_event({"message": {"data": "%%%not base64%%%", "messageId": "m-1"}}), "invalid-message"
    if case == "no message":
        return _raw_event({"subscription": "x"}), "invalid-message"
    if case == "data not a string":
        return _raw_event({"message": {"data": 42}}), "invalid-message"
    if case == "not a JWT":
        return _raw_event(_message_data("hello")), "malformed-token"
    if case == "unknown action":
        return cloud_event(bot.message("promote", "alice@example.com", request_id=request_id)), "action-not-allowed"
    if case == "unsigned":
        unsigned = b64url(json.dumps({"alg": "none", "typ": "JWT"})) + "." + b64url(json.dumps(approve())) + "."
        return cloud_event(unsigned), "disallowed-algorithm"
    if case == "wrong audience":
        return cloud_event(bot.sign(approve(aud="https://elsewhere.example"))), "wrong-audience"
    if case == "expired":  # signed while valid (IAM refuses to sign a past exp), delivered after it
        now = int(clock.epoch())
        return cloud_event(bot.sign(approve(iat=now, exp=now + 60))), "token-expired"
    if case == "oversized":
        return cloud_event(bot.sign(approve(comment="x" * 20000))), "invalid-message"
    assert case == "no actor"
    return cloud_event(bot.sign({k: v for k, v in approve().items() if k != "actor"})), "invalid-message"


@pytest.mark.parametrize(
    "case",
    [
        "bad base64",
        "no message",
        "data not a string",
        "not a JWT",
        "unknown action",
        "unsigned",
        "wrong audience",
        "expired",
        "oversized",
        "no actor",
    ],
)
def test_a_malformed_message_is_acknowledged_and_changes_nothing(
    harness: ServiceHarness, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """GIVEN an open request / WHEN a malformed message arrives / THEN the handler returns (acknowledged:
    redelivering it cannot help), the store is unchanged, and the log names the reason."""
    h = harness
    request_id = h.post(
        "/v1/requests", {"entitlement": "prod-admin", "justification": JUSTIFICATION}, subject=REQUESTER
    ).get_json()["id"]
    bot = Bot(h.standin.url, h.policy.bot_audience or "")
    event, reason = _malformed(bot, request_id, case)
    before = dump_store(h.store)
    capsys.readouterr()
    with freeze_time(clock.now() + _dt.timedelta(seconds=120 if case == "expired" else 0)):
        main.handle_pubsub(event)
    assert dump_store(h.store) == before
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    rejected = [entry for entry in lines if entry.get("message") == "approval message rejected"]
    assert [entry["reason"] for entry in rejected] == [reason], lines
