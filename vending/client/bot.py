"""Chat-ops bots: build an approval message, have the bot's service account sign it
with the IAM Credentials API ``signJwt``, and publish it to Pub/Sub.

``send_approval(...)`` is the whole path (``examples/chatops-bot/bot.py`` calls it);
``publish-approval`` is the same as a command. The service verifies the message in
``vending.identity.BotVerifier`` and applies it in ``vending.approvals``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from vending.client.common import (
    EXIT_AUTH,
    EXIT_DENIED,
    EXIT_NETWORK,
    EXIT_NOT_FOUND,
    EXIT_RATE_LIMITED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    IAM_ENDPOINT,
    IAM_ENDPOINT_ENV,
    IAM_TOKEN_ENV,
    PUBSUB_TYPE,
    ClientError,
    as_seconds,
    http_error,
    note,
    one_line,
    send,
)


# -- chat-ops bots: signed approval messages ---------------------------------------------------
def approval_claims(
    *,
    bot: str,
    audience: str,
    action: str,
    actor: str,
    request_id: str | None = None,
    comment: str | None = None,
    entitlement: str | None = None,
    justification: str | None = None,
    duration: str | None = None,
    service_account: str | None = None,
    ttl_s: int = 300,
) -> dict[str, Any]:
    """The claims of one approval message (see vending.approvals.apply_bot_message), or of a kill switch
    message (``action: disable``, see vending.killswitch.KillSwitch.apply_bot_message)."""
    if action == "request":
        if not entitlement:
            raise ClientError("--action request needs --entitlement.", EXIT_USAGE)
    elif action == "disable":
        if not service_account or not justification:
            raise ClientError("--action disable needs --service-account and --justification.", EXIT_USAGE)
    elif not request_id:
        raise ClientError(f"--action {action} needs --access-request.", EXIT_USAGE)
    now = int(time.time())
    claims = {
        "iss": bot,
        "sub": bot,
        "aud": audience,
        "iat": now,
        "exp": now + int(ttl_s),
        "jti": uuid.uuid4().hex,
        "action": action,
        "actor": actor,
        "request_id": request_id,
        "comment": comment,
        "entitlement": entitlement,
        "justification": justification,
        "duration": as_seconds(duration),
        "service_account": service_account,
    }
    return {k: v for k, v in claims.items() if v is not None}


def sign_approval(claims: dict[str, Any], *, iam_endpoint: str | None = None, iam_token: str | None = None) -> str:
    """Sign ``claims`` as the bot (``claims['iss']``) with IAM Credentials ``signJwt``."""
    from vending.errors import VendingError
    from vending.iam import GoogleCredentialsToken, IamCredentials, StaticToken

    endpoint = iam_endpoint or os.environ.get(IAM_ENDPOINT_ENV) or IAM_ENDPOINT
    token = iam_token or os.environ.get(IAM_TOKEN_ENV)
    source: Callable[[], str] = StaticToken(token) if token else GoogleCredentialsToken()
    bot = str(claims["iss"])
    try:
        return (
            IamCredentials(endpoint, source, timeout_s=30, retries=2)
            .sign_jwt(bot, claims, [], reason="chat-ops approval message")
            .value
        )
    except VendingError as exc:
        status = (exc.detail or "").split(":")[0].removeprefix("signJwt ")  # the IAM HTTP status
        if exc.reason == "iam-permission-denied":
            raise ClientError(
                f"signJwt 403: this caller lacks roles/iam.serviceAccountTokenCreator on {bot}.", EXIT_DENIED
            ) from None
        if exc.reason == "iam-target-not-found":
            raise ClientError(f"signJwt 404: service account {bot} does not exist.", EXIT_NOT_FOUND) from None
        if status == "401" or exc.reason == "service-credentials-unavailable":
            raise ClientError(
                "signJwt 401: the IAM Credentials API did not accept this caller's credentials.", EXIT_AUTH
            ) from None
        code = {"iam-rate-limited": EXIT_RATE_LIMITED, "iam-unavailable": EXIT_NETWORK}.get(
            exc.reason, EXIT_UNAVAILABLE
        )
        raise ClientError(f"signJwt {exc.reason}: {one_line(exc.message)}", code) from None
    except Exception as exc:  # noqa: BLE001 - google.auth: no Application Default Credentials
        raise ClientError(
            f"signJwt: no Google credentials for this caller ({type(exc).__name__}); "
            "run `gcloud auth application-default login` or pass --iam-token.",
            EXIT_AUTH,
        ) from None


def _topic_path(topic: str, project: str | None) -> str:
    if topic.startswith("projects/"):
        return topic
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")
    if not project:
        raise ClientError("--topic is not projects/P/topics/T: give --project (or $GOOGLE_CLOUD_PROJECT).", EXIT_USAGE)
    return f"projects/{project}/topics/{topic}"


def publish_message(
    signed: str, *, topic: str | None = None, project: str | None = None, deliver_to: str | None = None
) -> str:
    """Publish a signed message to Pub/Sub (or POST it as a CloudEvent); returns the message id."""
    if deliver_to:
        message_id = str(uuid.uuid4().int)[:16]
        source = _topic_path(topic, project) if topic else "projects/local-project/topics/approvals"
        now = _dt.datetime.now(_dt.UTC).isoformat().replace("+00:00", "Z")
        headers = {
            "ce-id": message_id,
            "ce-source": f"//pubsub.googleapis.com/{source}",
            "ce-specversion": "1.0",
            "ce-type": PUBSUB_TYPE,
            "ce-time": now,
            "Content-Type": "application/json",
        }
        body = {
            "message": {
                "data": base64.b64encode(signed.encode()).decode(),
                "messageId": message_id,
                "publishTime": now,
            },
            "subscription": f"{source.replace('/topics/', '/subscriptions/')}",
        }
        resp = send("POST", deliver_to, json=body, headers=headers)
        if not 200 <= resp.status_code < 300:
            raise http_error(resp)
        return message_id
    if not topic:
        raise ClientError("give --topic (Pub/Sub) or --deliver-to (a local handle_pubsub function).", EXIT_USAGE)
    path = _topic_path(topic, project)
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    try:
        return str(pubsub_v1.PublisherClient().publish(path, signed.encode("ascii")).result(timeout=60))
    except gexc.NotFound:
        raise ClientError(f"404 topic {path} not found.", EXIT_NOT_FOUND) from None
    except gexc.PermissionDenied:
        raise ClientError(f"403 this caller may not publish to {path}.", EXIT_DENIED) from None
    except Exception as exc:  # noqa: BLE001 - any other publish failure is one line
        raise ClientError(
            f"publishing to {path} failed: {type(exc).__name__}: {one_line(exc, 200)}", EXIT_UNAVAILABLE
        ) from None


def send_approval(
    *,
    bot: str,
    audience: str,
    action: str,
    actor: str,
    topic: str | None = None,
    project: str | None = None,
    deliver_to: str | None = None,
    iam_endpoint: str | None = None,
    iam_token: str | None = None,
    ttl_s: int = 300,
    **fields: Any,
) -> str:
    """Build, sign (as the bot, via signJwt) and publish one message; returns the message id."""
    claims = approval_claims(bot=bot, audience=audience, action=action, actor=actor, ttl_s=ttl_s, **fields)
    signed = sign_approval(claims, iam_endpoint=iam_endpoint, iam_token=iam_token)
    return publish_message(signed, topic=topic, project=project, deliver_to=deliver_to)


def policy_bot_defaults(path: str | None) -> tuple[str | None, str | None]:
    """The first trusted bot and the bot audience named by a policy file (None when absent)."""
    import os

    import yaml

    path = path or os.environ.get("VENDING_CONFIG") or "config/example.yaml"
    try:
        with open(path, encoding="utf-8") as fh:
            policy = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError):
        return None, None
    bots = policy.get("bots") or [{}]
    issuers = policy.get("issuers") or [{}]
    return bots[0].get("service_account"), policy.get("bot_audience") or issuers[0].get("audience")


def cmd_publish_approval(args: argparse.Namespace) -> int:
    if not 1 <= args.ttl <= 600:
        raise ClientError("--ttl must be between 1 and 600 seconds.", EXIT_USAGE)
    if not args.bot_service_account or not args.bot_audience:
        bot, audience = policy_bot_defaults(args.config)
        args.bot_service_account = args.bot_service_account or bot
        args.bot_audience = args.bot_audience or audience
        if not args.bot_service_account or not args.bot_audience:
            raise ClientError(
                "name the bot with --bot-service-account and --bot-audience (no policy file to read them from).",
                EXIT_USAGE,
            )
    message_id = send_approval(
        bot=args.bot_service_account,
        audience=args.bot_audience,
        action=args.action,
        actor=args.actor,
        topic=args.topic,
        project=args.project,
        deliver_to=args.deliver_to,
        iam_endpoint=args.iam_endpoint,
        iam_token=args.iam_token,
        ttl_s=args.ttl,
        request_id=args.access_request,
        comment=args.comment,
        entitlement=args.entitlement,
        justification=args.justification,
        duration=args.duration,
        service_account=args.service_account,
    )
    print(message_id)
    note(f"published {args.action} by {args.actor} as {args.bot_service_account} (message {message_id})")
    return 0
