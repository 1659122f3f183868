"""A minimal chat-ops bot handler: a button click becomes a signed approval.

For Google Chat and Slack the project ships complete apps (``vending/chat/``, docs/chatops.md);
this example is the smallest starting point for another platform.

How it works
------------
The service posts an access request to chat (its ``request.created`` event on
the notifications topic) with Approve / Deny buttons. When an approver clicks
one, the chat platform calls the bot, and the bot calls::

    on_button_click(user_email, request_id, "approve")

which builds the message claims ``{iss, sub: the bot's service account, aud,
iat, exp (5 min), jti, action, request_id, actor: user_email}``, has the bot's
service account sign them with the IAM Credentials API ``signJwt``, and
publishes the JWT to the approvals Pub/Sub topic. The service's
``handle_pubsub`` function verifies the signature against the bot's public
keys, checks that ``actor`` is an approver of the request's entitlement (and
not its requester), and records the approval. It is the same code path as
``vending publish-approval`` (``vending.client.send_approval``).

``user_email`` must be the identity your chat platform verified for the
click, never text a user typed: the service trusts the bot's word for who
clicked.

Setup
-----
- ``pip install`` this repository (the ``vending`` package) and
  google-cloud-pubsub in the bot's environment.
- The policy lists the bot under ``bots:`` and sets ``bot_audience``.
- The bot's runtime identity needs ``roles/iam.serviceAccountTokenCreator`` on
  the bot service account (to ``signJwt`` as it) and ``roles/pubsub.publisher``
  on the topic; it uses Application Default Credentials.
- Environment:

  ``VENDING_BOT_SERVICE_ACCOUNT``  the bot's service account email
  ``VENDING_BOT_AUDIENCE``         the policy's ``bot_audience``
  ``VENDING_APPROVALS_TOPIC``      ``projects/P/topics/T``, or, on the embedded default,
  ``VENDING_DELIVER_TO``           ``http://127.0.0.1:8083`` (its ``handle_pubsub``)
  ``VENDING_IAM_ENDPOINT`` / ``VENDING_IAM_TOKEN``  only for the local IAM stand-in

Try it on the embedded default (``make run``)::

    VENDING_BOT_SERVICE_ACCOUNT=chatops-bot@local-project.iam.gserviceaccount.com \\
    VENDING_BOT_AUDIENCE=http://127.0.0.1:8080 VENDING_DELIVER_TO=http://127.0.0.1:8083 \\
    VENDING_IAM_ENDPOINT=http://127.0.0.1:8081 VENDING_IAM_TOKEN=local-vending-service-token \\
    .venv/bin/python examples/chatops-bot/bot.py alice@example.com REQUEST_ID approve
"""

from __future__ import annotations

import os
import sys

from vending.client import ClientError, send_approval

ACTIONS = ("approve", "deny", "revoke")


def on_button_click(user_email: str, request_id: str, action: str, comment: str | None = None) -> str:
    """Publish ``user_email``'s decision on ``request_id``; returns the reply to show in chat."""
    if action not in ACTIONS:
        return f"Unknown action {action!r}."
    try:
        message_id = send_approval(
            bot=os.environ["VENDING_BOT_SERVICE_ACCOUNT"],
            audience=os.environ["VENDING_BOT_AUDIENCE"],
            action=action,
            actor=user_email,
            request_id=request_id,
            comment=comment,
            topic=os.environ.get("VENDING_APPROVALS_TOPIC"),
            deliver_to=os.environ.get("VENDING_DELIVER_TO"),
        )
    except ClientError as exc:
        return f"Could not send your {action}: {exc.message}"
    return f"Your {action} of request {request_id} was sent (message {message_id})."


if __name__ == "__main__":
    print(on_button_click(*sys.argv[1:4]))
