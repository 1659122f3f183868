"""The chat-ops apps wired to a ``ServiceHarness``: the real HTTP functions (functions-framework's
test client on ``main.chat_slack_http`` / ``main.chat_google_http``), the real notifier, the local
fakes that sign like the platforms (``vending.local.chat``) and a fake workspace over real HTTP.

Clicks publish through the real signing path (IAM ``signJwt`` on the stand-in, as the bot) and are
delivered to ``main.handle_pubsub`` in process, or, with ``topic=``, published to the Pub/Sub
emulator. ``notify()`` hands what the service published to ``main.chat_notify`` as Pub/Sub would.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cloudevents.http import CloudEvent
from pydantic import SecretStr

import main
from tests.support.app import ServiceHarness
from tests.support.bots import cloud_event
from vending import clock
from vending.chat import wiring as chat_wiring
from vending.chat.core import ApprovalPublisher
from vending.chat.settings import ChatSettings
from vending.iam import IamCredentials, StaticToken
from vending.local.chat import (
    JWKS_PATH,
    FakeWorkspace,
    LocalChatIssuer,
    chat_user_name,
    sign_slack,
    slack_user_id,
)

AUDIENCE = "123456789012"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # a test value, like Slack's documentation's
BOT_TOKEN = "xoxb-test-" + "0" * 24
REQUESTER = "dave@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChatRig:
    def __init__(self, h: ServiceHarness, tmp_path: Path, *, topic: str | None = None, **settings: Any) -> None:
        from functions_framework import create_app

        self.h = h
        self.issuer = LocalChatIssuer(tmp_path)
        self.workspace = FakeWorkspace(free_port(), bot_token=BOT_TOKEN, jwks=self.issuer.jwks())
        self.workspace.start()
        ws = self.workspace.url
        values: dict[str, Any] = {
            "google_audience": AUDIENCE,
            "google_jwks_uri": ws + JWKS_PATH,
            "google_api_endpoint": ws,
            "google_anonymous": True,
            "google_alerts_space": "spaces/alerts",
            "slack_signing_secret": SecretStr(SIGNING_SECRET),
            "slack_bot_token": SecretStr(BOT_TOKEN),
            "slack_api_url": ws + "/slack/api/",
            "slack_alerts_channel": "C0ALERTS",
            "approvals_topic": topic,
        }
        values.update(settings)
        self.settings = ChatSettings(**values)
        self.published: list[str] = []  # message ids of the approvals the apps published
        iam = IamCredentials(h.standin.url, StaticToken("bot-token"), timeout_s=5.0, retries=0)
        self.publisher = ApprovalPublisher(
            iam,
            h.policy.bots[0].service_account,
            h.policy.bot_audience or "",
            topic=topic,
            sender=None if topic else self._deliver,
        )
        chat_wiring.install(settings=self.settings, store=h.store, chat_store=h.store, publisher=self.publisher)
        self.slack = create_app("chat_slack_http", "main.py").test_client()
        self.google = create_app("chat_google_http", "main.py").test_client()
        self._notified = 0

    def _deliver(self, signed: str) -> str:
        message_id = uuid.uuid4().hex
        main.handle_pubsub(cloud_event(signed, message_id))
        self.published.append(message_id)
        return message_id

    def close(self) -> None:
        chat_wiring.reset()
        self.workspace.stop()

    # -- the service side
    def request(self, entitlement: str = "prod-admin", subject: str = REQUESTER, **body: Any) -> str:
        body = {"entitlement": entitlement, "justification": "TICKET-42: rotate the keys", **body}
        resp = self.h.post("/v1/requests", body, subject=subject)
        assert resp.status_code in (200, 201), resp.get_json()
        return str(resp.get_json()["id"])

    def state(self, request_id: str) -> dict[str, Any]:
        return dict(self.h.get(f"/v1/requests/{request_id}", subject="auditor@example.com").get_json())

    def events(self) -> list[dict[str, Any]]:
        return [e for _, e in self.h.events.published]

    def notify(self, *, times: int = 1) -> None:
        """Every event published since the last call, each delivered ``times`` times (as Pub/Sub may)."""
        new = self.h.events.published[self._notified :]
        self._notified = len(self.h.events.published)
        for _ in range(times):
            for channel, event in new:
                main.chat_notify(pubsub_event(event, channel))

    def cards(self, request_id: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in self.workspace.messages.values()
            if request_id is None or f"request: {request_id}" in (m.get("text") or "")
        ]

    # -- a person clicks
    def slack_click(
        self,
        email: str,
        request_id: str,
        action: str = "approve",
        *,
        secret: str = SIGNING_SECRET,
        timestamp: int | None = None,
        user_id: str | None = None,
        register: bool = True,
    ) -> tuple[Any, str, dict[str, str]]:
        if register:  # the workspace knows this person (their verified email)
            self.workspace._people[slack_user_id(email)] = email
        payload = {
            "type": "block_actions",
            "user": {"id": user_id or slack_user_id(email), "team_id": "T0TEST"},
            "trigger_id": secrets.token_hex(8),
            "actions": [{"type": "button", "action_id": action, "value": request_id}],
        }
        body = urlencode({"payload": json.dumps(payload)})
        ts = int(clock.epoch()) if timestamp is None else timestamp
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": sign_slack(secret, body, ts),
        }
        return self.slack.post("/", data=body, headers=headers), body, headers

    def chat_event(self, email: str, request_id: str, action: str = "approve", **over: Any) -> dict[str, Any]:
        event = {
            "type": "CARD_CLICKED",
            "eventTime": clock.now().isoformat().replace("+00:00", "Z"),
            "user": {"name": chat_user_name(email), "email": email, "type": "HUMAN"},
            "space": {"name": "spaces/dm", "type": "DM"},
            "message": {"name": "spaces/dm/messages/1"},
            "common": {"invokedFunction": action, "parameters": {"request_id": request_id}},
        }
        event.update(over)
        return event

    def chat_click(
        self, email: str, request_id: str, action: str = "approve", *, token: str | None = None, **over: Any
    ) -> Any:
        token = token if token is not None else self.issuer.mint(AUDIENCE)
        event = self.chat_event(email, request_id, action, **over)
        return self.google.post("/", json=event, headers={"Authorization": f"Bearer {token}"})


def pubsub_event(event: dict[str, Any], channel: str = "notifications", message_id: str | None = None) -> CloudEvent:
    message_id = message_id or uuid.uuid4().hex  # a redelivery by a retrying publisher gets a new id
    data = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    return CloudEvent(
        {
            "id": message_id,
            "source": f"//pubsub.googleapis.com/projects/vending-test/topics/{channel}",
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "specversion": "1.0",
        },
        {"message": {"data": base64.b64encode(data).decode(), "messageId": message_id}},
    )


def reason(resp: Any) -> str | None:
    body = resp.get_json(silent=True) or {}
    return (body.get("error") or {}).get("reason")
