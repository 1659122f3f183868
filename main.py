"""Cloud Functions entry points (functions-framework). Transport only.

- ``vend_http``: the HTTP JSON API (vend credentials, access requests, ledger).
- ``handle_pubsub``: signed chat-ops approval messages (Pub/Sub CloudEvent).
- ``sweep_expired``: the scheduled expiry sweep (Cloud Scheduler -> Pub/Sub).

Settings and the policy file are validated at import (cold start): a bad
file stops the process with a message naming the file and the field.
"""

from __future__ import annotations

import sys
from typing import Any

import flask
import functions_framework
from werkzeug.exceptions import HTTPException

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
