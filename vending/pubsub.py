"""Pub/Sub transport: decode CloudEvents for approvals and the sweep.

``handle_approval_event``: the message data is a JWT signed by a trusted
bot's service account (IAM ``signJwt``). Verified, then applied to the
access request, or (``action: disable``, from a bot whose ``actions`` list it)
to the kill switch of a service account. Permanent problems (malformed, forged, expired, untrusted,
illegal transition) are logged with their reason and acknowledged by
returning normally; retryable ones (storage unavailable, a request that
does not exist yet because the message filing it has not arrived) raise so
that Pub/Sub redelivers.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from vending import log
from vending.approvals import Approvals
from vending.errors import BadRequestError, NotFoundError, UnavailableError, VendingError
from vending.events import Events, rejection_event
from vending.identity import BotVerifier
from vending.killswitch import KillSwitch


def _message(event: Any) -> tuple[str, str]:
    data = getattr(event, "data", None)
    if not isinstance(data, dict):
        raise BadRequestError("The CloudEvent carries no Pub/Sub message.", reason="invalid-message")
    message = data.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("data"), str):
        raise BadRequestError("The Pub/Sub message has no data.", reason="invalid-message")
    message_id = str(message.get("messageId") or message.get("message_id") or "")[:100]
    try:
        raw = base64.b64decode(message["data"], validate=True)
        if len(raw) > 16 * 1024:
            raise ValueError("too large")
        return raw.decode("ascii").strip(), message_id
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError("The Pub/Sub message data is not a signed JWT.", reason="invalid-message") from exc


def _announce_rejection(
    events: Events, approvals: Approvals, bot: Any, claims: dict[str, Any], message_id: str, exc: VendingError
) -> None:
    """``approval.rejected`` on the notifications channel: the bot tells the person what was refused and why."""
    raw_actor = claims.get("actor")
    actor = None
    if isinstance(raw_actor, str) and raw_actor and len(raw_actor) <= 320:
        actor = approvals.policy.bot_actor(bot, raw_actor)
    request_id = claims.get("request_id")
    action = claims.get("action")
    events.publish(
        "notifications",
        rejection_event(
            action=action if isinstance(action, str) else None,
            actor=actor,
            request_id=request_id if isinstance(request_id, str) and len(request_id) <= 64 else None,
            bot=bot.service_account,
            message_id=message_id,
            reason=exc.reason,
            message=exc.message,
        ),
    )


def handle_approval_event(
    event: Any, bot_verifier: BotVerifier, approvals: Approvals, events: Events, switch: KillSwitch | None = None
) -> None:
    message_id = ""
    verified: tuple[Any, dict[str, Any]] | None = None  # (bot, claims) once the signature checked out
    try:
        token, message_id = _message(event)
        bot, claims = bot_verifier.verify(token)
        verified = bot, claims
        action = claims.get("action")
        if action not in bot.actions:
            raise BadRequestError(f"Bot {bot.service_account} may not send {action!r}.", reason="action-not-allowed")
        result: dict[str, Any] | None
        try:
            if action == "disable":
                if switch is None:
                    raise BadRequestError("This function has no kill switch.", reason="action-not-allowed")
                result = switch.apply_bot_message(bot, claims, message_id)
            else:
                result = approvals.apply_bot_message(bot, claims, message_id)
        except NotFoundError as exc:
            if exc.reason != "request-not-found":
                raise
            # Out of order: the message that files this request may not have been delivered yet.
            # Redeliver; bounded by the message's own short exp, after which it is acknowledged as expired.
            raise UnavailableError(
                "The access request does not exist (yet); the message will be redelivered.",
                reason="request-not-yet-known",
                detail=exc.message,
            ) from exc
        log.notice(
            "approval message applied",
            audit=True,
            message_id=message_id,
            bot=bot.service_account,
            action=action,
            actor=claims.get("actor"),
            access_request_id=(result or {}).get("id"),
            service_account=(result or {}).get("service_account"),
            state=(result or {}).get("state"),
        )
    except VendingError as exc:
        if exc.retryable or exc.reason in ("request-busy", "kill-switch-busy"):  # changed concurrently
            log.warning(
                "approval message will be retried",
                message_id=message_id,
                reason=exc.reason,
                detail=exc.detail or exc.message,
            )
            raise
        log.warning(
            "approval message rejected", message_id=message_id, reason=exc.reason, detail=exc.detail or exc.message
        )
        if verified is not None:  # a forged or unreadable message names nobody we could tell
            _announce_rejection(events, approvals, *verified, message_id, exc)
    finally:
        events.flush(5.0)
