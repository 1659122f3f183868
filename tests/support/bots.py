"""A chat-ops bot for tests: claims signed through the IAM stand-in's signJwt.

``Bot.message(...)`` returns the signed JWT a real bot would publish;
``cloud_event(jwt)`` wraps it the way Eventarc delivers a Pub/Sub message to
``handle_pubsub``.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from cloudevents.http import CloudEvent

from tests.support.app import BOT_SA
from vending import clock
from vending.iam import IamCredentials, StaticToken


class Bot:
    def __init__(self, standin_url: str, audience: str, *, email: str = BOT_SA, token: str = "bot-token") -> None:
        self.email = email
        self.audience = audience
        self.iam = IamCredentials(standin_url, StaticToken(token), timeout_s=5.0, retries=0)

    def claims(self, action: str, actor: str, **extra: Any) -> dict[str, Any]:
        now = int(clock.epoch())
        claims: dict[str, Any] = {
            "iss": self.email,
            "sub": self.email,
            "aud": self.audience,
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "action": action,
            "actor": actor,
        }
        claims.update({k: v for k, v in extra.items() if v is not None})
        return claims

    def sign(self, claims: dict[str, Any]) -> str:
        return self.iam.sign_jwt(self.email, claims, [], reason="test bot").value

    def message(self, action: str, actor: str, **extra: Any) -> str:
        return self.sign(self.claims(action, actor, **extra))


def cloud_event(jwt: str, message_id: str | None = None) -> CloudEvent:
    message_id = message_id or uuid.uuid4().hex
    attributes = {
        "id": message_id,
        "source": "//pubsub.googleapis.com/projects/vending-test/topics/approvals",
        "type": "google.cloud.pubsub.topic.v1.messagePublished",
        "specversion": "1.0",
    }
    data = {
        "message": {"data": base64.b64encode(jwt.encode()).decode(), "messageId": message_id},
        "subscription": "projects/vending-test/subscriptions/approvals",
    }
    return CloudEvent(attributes, data)
