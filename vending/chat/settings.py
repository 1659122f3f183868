"""Settings of the chat-ops apps: ``CHATOPS_*`` variables, validated once (pydantic).

They live apart from ``vending.config`` on purpose, under their own prefix (``VENDING_*`` are the
service's settings, read in ``vending/config.py`` only): the vending service never needs them, and
the chat functions read the service's own settings (policy, store, IAM endpoint) from there too.
Secrets (the Slack signing secret and bot token) arrive as environment variables that Cloud
Functions fills from Secret Manager when an instance starts (``secret_environment_variables`` in
``terraform/modules/token-vending/chat.tf``); they are kept as ``SecretStr`` and never logged.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from vending.errors import ConfigError

CHAT_ISSUER = "chat@system.gserviceaccount.com"
CHAT_JWKS_URI = f"https://www.googleapis.com/service_accounts/v1/jwk/{CHAT_ISSUER}"
CHAT_API_ENDPOINT = "https://chat.googleapis.com"
SLACK_API_URL = "https://slack.com/api/"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# CHATOPS_<FIELD upper-cased> for each field below.
PREFIX = "CHATOPS_"


def _url(value: str, name: str) -> str:
    parts = urlsplit(value)
    ok = bool(parts.hostname) and (
        parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS)
    )
    if not ok or parts.username or parts.password:
        raise ValueError(f"{name} must be https://HOST/... (plain http only on loopback), got {value!r}")
    return value


class ChatSettings(BaseModel):
    """Every field maps to ``CHATOPS_<NAME>``; defaults sit next to their field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where clicks go: the approvals topic (projects/P/topics/T), or on the embedded default the
    # local handle_pubsub function (a CloudEvent POST, as `vending publish-approval --deliver-to`).
    approvals_topic: str | None = None
    deliver_to: str | None = None
    bot_service_account: str | None = None  # the policy's bot that signs; default: its first bot
    # The apps' own records (replayed clicks, handled events, posted cards): "firestore:DATABASE" or
    # "sqlite:PATH"; None: the service's store. Production keeps them in a database of their own, so
    # the apps only read the service's (its access requests) and can write nothing there.
    store: str | None = None
    message_ttl_s: int = Field(default=300, ge=30, le=600)  # exp - iat of a signed approval, seconds

    # Google Chat: the bearer token Chat sends is a JWT from CHAT_ISSUER for the project number.
    google_audience: str | None = None  # the Cloud project number of the Chat app; None: Chat is off
    google_issuer: str = CHAT_ISSUER
    google_jwks_uri: str = CHAT_JWKS_URI
    google_api_endpoint: str = CHAT_API_ENDPOINT  # the Chat REST API (the client's api_endpoint)
    google_anonymous: bool = False  # local fake only: post without Google credentials (loopback)
    google_alerts_space: str | None = None  # spaces/XXX for break-glass alerts
    google_users: dict[str, str] = Field(default_factory=dict)  # "users/123" -> identity (else its email)

    # Slack: v0 signatures with the app's signing secret; Web API calls with its bot token.
    slack_signing_secret: SecretStr | None = None  # None: Slack is off
    slack_bot_token: SecretStr | None = None
    slack_api_url: str = SLACK_API_URL
    slack_alerts_channel: str | None = None  # C0123... for break-glass alerts
    slack_users: dict[str, str] = Field(default_factory=dict)  # "U0123" -> identity (else the verified email)
    slack_max_age_s: int = Field(default=300, ge=30, le=300)  # Slack's own window: 5 minutes

    @field_validator("deliver_to", "google_jwks_uri", "google_api_endpoint", "slack_api_url")
    @classmethod
    def _urls(cls, value: str | None, info: Any) -> str | None:
        return None if value is None else _url(value, PREFIX + info.field_name.upper())

    @field_validator("store")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith(("firestore:", "sqlite:")) and len(value.split(":", 1)[1]) > 0):
            raise ValueError(f"must be firestore:DATABASE or sqlite:PATH, got {value!r}")
        return value

    @field_validator("approvals_topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("projects/"):
            raise ValueError(f"must be projects/PROJECT/topics/TOPIC, got {value!r}")
        return value

    @property
    def google_enabled(self) -> bool:
        return self.google_audience is not None

    @property
    def slack_enabled(self) -> bool:
        return self.slack_signing_secret is not None

    @property
    def local_google(self) -> bool:
        """The Chat API is a loopback fake: credentials are anonymous there and only there."""
        return urlsplit(self.google_api_endpoint).hostname in LOOPBACK_HOSTS


_JSON_FIELDS = ("google_users", "slack_users")


def load_chat_settings(environ: dict[str, str] | None = None) -> ChatSettings:
    """Read ``CHATOPS_*``; raise ``ConfigError`` naming the variable (never its secret value)."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    known = set(ChatSettings.model_fields)
    for key, value in env.items():
        if not key.startswith(PREFIX) or value == "":
            continue
        name = key[len(PREFIX) :].lower()
        if name not in known:
            raise ConfigError(f"{key}: not a chat setting (known: {', '.join(sorted(known))})")
        if name in _JSON_FIELDS:
            try:
                raw[name] = json.loads(value)
            except ValueError:
                raise ConfigError(f"{key}: must be a JSON object of user id -> identity") from None
        elif name == "google_anonymous":
            raw[name] = value == "1"
        else:
            raw[name] = value
    try:
        settings = ChatSettings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        # pydantic's message, never the input: a secret must not reach a log line.
        raise ConfigError(f"{PREFIX}{field.upper()}: {first['msg']}") from None
    if settings.google_anonymous and not settings.local_google:
        raise ConfigError(f"{PREFIX}GOOGLE_ANONYMOUS: only with a loopback {PREFIX}GOOGLE_API_ENDPOINT")
    if settings.slack_enabled and settings.slack_bot_token is None:
        raise ConfigError(f"{PREFIX}SLACK_BOT_TOKEN: required with {PREFIX}SLACK_SIGNING_SECRET")
    return settings
