"""Cloud Functions entry points (functions-framework). Transport only.

- ``vend_http``: the HTTP JSON API (vend credentials, access requests, ledger).
- ``handle_pubsub``: signed chat-ops approval messages (Pub/Sub CloudEvent).
- ``sweep_expired``: the scheduled expiry sweep (Cloud Scheduler -> Pub/Sub).
- ``chat_google_http`` / ``chat_slack_http``: the chat-ops apps' interaction endpoints (a verified
  click becomes a signed approval); ``chat_notify``: cards and alerts from the notifications and
  alerts topics (``vending.chat``, imported only by these three: ``vend_http`` never loads it).

Settings and the policy file are validated at import (cold start): a bad
file stops the process with a message naming the file and the field.
"""

from __future__ import annotations

import sys
from typing import Any

import flask
import functions_framework
from werkzeug.exceptions import HTTPException

from vending.startup import loading

with loading():  # no garbage collection while the modules and the policy load (vending/startup.py)
    from vending import api, wiring
    from vending.errors import ConfigError

    try:
        wiring.settings()
    except ConfigError as _exc:
        sys.stderr.write(f"token-vending: invalid configuration:\n{_exc.message}\n")
        raise SystemExit(2) from None


@functions_framework.http
def vend_http(request: Any) -> Any:
    return api.handle(request, wiring.handlers)


@functions_framework.errorhandler(HTTPException)
def framework_error(exc: HTTPException) -> Any:
    """Errors raised by the framework before ``vend_http`` runs: the same JSON envelope."""
    return api.framework_error(exc, flask.request.path)


@functions_framework.cloud_event
def handle_pubsub(event: Any) -> None:
    from vending import pubsub

    svc = wiring.service()
    pubsub.handle_approval_event(event, svc.bot_verifier(), svc.approvals, svc.events, svc.kill_switch)


@functions_framework.cloud_event
def sweep_expired(event: Any) -> None:
    wiring.service().sweep()


@functions_framework.http
def chat_google_http(request: Any) -> Any:
    from vending.chat import wiring as chat

    return chat.respond(chat.google_app, request)


@functions_framework.http
def chat_slack_http(request: Any) -> Any:
    from vending.chat import wiring as chat

    return chat.respond(chat.slack_app, request)


@functions_framework.cloud_event
def chat_notify(event: Any) -> None:
    from vending.chat import wiring as chat

    chat.notifier().handle(event)
