"""Client commands of ``vending``, for CI jobs, operators and chat-ops bots.

``vending.cli`` calls ``register(subparsers)``; this package adds ``token``,
``id-token``, ``sign-jwt``, ``sign-blob``, ``request``, ``status``, ``requests``,
``approve``, ``deny``, ``withdraw``, ``revoke``, ``whoami``, ``issuances``,
``kill-switch`` and ``publish-approval``. Only the standard library and
``requests`` load at import; google-auth and google-cloud-pubsub load inside
``publish-approval``.

- ``identity``: the caller's OIDC token, discovered from the environment.
- ``commands``: calls to the service; ``output``: where a credential goes.
- ``bot``: signed approval messages (``send_approval`` for bot authors).
- ``common``: exit codes (``EPILOG``), environment names, errors, HTTP.

A credential goes only to the chosen sink; stderr gets one line per error
(``vending: STATUS REASON: MESSAGE``) and the expiry, never a secret.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from vending.client import bot, commands
from vending.client.bot import approval_claims, publish_message, send_approval, sign_approval
from vending.client.common import (
    AUDIENCE_ENV,
    DEFAULT_TOKEN_FILE_HELP,
    EPILOG,
    GITLAB_DEFAULT_VAR,
    IAM_ENDPOINT,
    IAM_ENDPOINT_ENV,
    IAM_TOKEN_ENV,
    ID_TOKEN_COMMAND_ENV,
    URL_ENV,
    ClientError,
    duration_arg,
    note,
)
from vending.client.identity import discover_id_token

__all__ = [
    "ClientError",
    "approval_claims",
    "discover_id_token",
    "publish_message",
    "register",
    "send_approval",
    "sign_approval",
]


# -- argument parsing ---------------------------------------------------------------------------
def _run(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ClientError as exc:
            note(exc.message)
            return exc.code
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130

    return wrapper


class _Ambiguous(argparse.Action):
    """An option name that meant two things: refused with the names to use instead."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(f"{option_string} is ambiguous here: {self.help}")


def _identity_options(*, audience_alias: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("service and caller identity")
    g.add_argument("--url", default=os.environ.get(URL_ENV), help=f"the service URL (default ${URL_ENV})")
    g.add_argument(
        "--caller-audience",
        metavar="AUD",
        dest="caller_audience",
        default=os.environ.get(AUDIENCE_ENV) or None,
        help=f"audience of the caller's own OIDC token: the policy issuer's `audience` (default ${AUDIENCE_ENV}, "
        "else the service URL)",
    )
    if audience_alias:  # the old name, kept for scripts
        g.add_argument("--audience", dest="caller_audience", help=argparse.SUPPRESS)
    g.add_argument("--id-token-file", metavar="FILE", help="read the caller's OIDC token from FILE")
    g.add_argument(
        "--id-token-command",
        metavar="CMD",
        help=f"run CMD to print the caller's OIDC token (default ${ID_TOKEN_COMMAND_ENV})",
    )
    g.add_argument(
        "--gitlab-var",
        metavar="NAME",
        default=GITLAB_DEFAULT_VAR,
        help="GitLab id_tokens variable holding the token (default %(default)s)",
    )
    return p


def _vend_options(formats: tuple[str, ...]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--service-account", required=True, metavar="EMAIL", help="the target service account")
    p.add_argument("--delegate", action="append", metavar="SA", help="delegation chain (repeat)")
    p.add_argument(
        "--access-request",
        metavar="ACCESS_REQUEST_ID",
        dest="access_request",
        help="vend against this ACTIVE access request (the id `vending request` printed)",
    )
    p.add_argument("--request-id", dest="access_request", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--reason", metavar="TEXT", help="why: recorded on the issuance")
    p.add_argument(
        "--format",
        choices=formats,
        default="json",
        help="json (stdout), env (export lines), github ($GITHUB_OUTPUT, masked)"
        + (", gcloud (0600 file for CLOUDSDK_AUTH_ACCESS_TOKEN_FILE)" if "gcloud" in formats else ""),
    )
    p.add_argument(
        "--output",
        metavar="FILE",
        help="write json/env output to FILE (mode 0600) instead of stdout"
        + (f"; for gcloud the token file (default {DEFAULT_TOKEN_FILE_HELP})" if "gcloud" in formats else ""),
    )
    p.add_argument("--export", action="store_true", help="github: also write the variables to $GITHUB_ENV")
    return p


def register(subparsers: Any) -> None:
    ident = _identity_options()
    fmt = argparse.RawDescriptionHelpFormatter

    def add(
        name: str,
        help_: str,
        func: Callable[[argparse.Namespace], int],
        *parents: argparse.ArgumentParser,
        description: str = "",
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = subparsers.add_parser(
            name,
            help=help_,
            description=description or help_,
            epilog=EPILOG,
            formatter_class=fmt,
            parents=list(parents),
        )
        p.set_defaults(func=_run(func))
        return p

    p = add(
        "token",
        "get a short-lived OAuth 2.0 access token of a service account",
        commands.cmd_token,
        ident,
        _vend_options(("json", "env", "github", "gcloud")),
        description=(
            "Get a short-lived access token. Output formats:\n"
            "  json    the service's response on stdout\n"
            "  env     export GOOGLE_OAUTH_ACCESS_TOKEN, CLOUDSDK_AUTH_ACCESS_TOKEN, VENDING_EXPIRE_TIME,\n"
            '          VENDING_ISSUANCE_ID (eval "$(vending token ... --format env)")\n'
            "  github  ::add-mask:: first, then outputs access_token, expire_time, issuance_id in\n"
            "          $GITHUB_OUTPUT (--export: the env variables in $GITHUB_ENV too)\n"
            "  gcloud  the token in a 0600 file (--output, default " + DEFAULT_TOKEN_FILE_HELP + ");\n"
            "          prints export CLOUDSDK_AUTH_ACCESS_TOKEN_FILE=FILE\n"
            "The expiry is always printed on stderr; the token never is."
        ),
    )
    p.add_argument("--scope", action="append", metavar="SCOPE", help="OAuth scope (repeat; default: the entitlement's)")
    p.add_argument("--lifetime", metavar="DURATION", help="600, 600s, 10m or 1h (default: the entitlement's maximum)")

    p = add(
        "id-token",
        "get an OIDC ID token of a service account",
        commands.cmd_id_token,
        _identity_options(audience_alias=False),
        _vend_options(("json", "env", "github")),
    )
    p.add_argument(
        "--target-audience",
        metavar="AUD",
        dest="target_audience",
        help="required: the audience the minted ID token is for (e.g. a Cloud Run URL)",
    )
    p.add_argument("--audience-of-token", dest="target_audience", help=argparse.SUPPRESS)  # the old name
    p.add_argument(
        "--audience",
        action=_Ambiguous,
        nargs=1,
        help=("use --target-audience for the minted ID token's audience, --caller-audience for your own token's"),
    )
    p.add_argument("--include-email", action="store_true", help="include the email and email_verified claims")

    p = add(
        "sign-jwt",
        "have a service account sign a JWT (signJwt)",
        commands.cmd_sign_jwt,
        ident,
        _vend_options(("json", "env", "github")),
    )
    p.add_argument("--claims", metavar="JSON", help="the claims as a JSON object")
    p.add_argument(
        "--claim",
        action="append",
        metavar="NAME=VALUE",
        help="one claim (repeat); VALUE is JSON if it parses, else a string",
    )

    p = add(
        "sign-blob",
        "have a service account sign bytes (signBlob)",
        commands.cmd_sign_blob,
        ident,
        _vend_options(("json", "env", "github")),
    )
    p.add_argument("--payload-file", metavar="FILE", help="the bytes to sign (default: stdin)")

    p = add(
        "request",
        "file an access request for an entitlement that needs approval; prints the access request id",
        commands.cmd_request,
        ident,
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--entitlement", metavar="NAME", help="the entitlement asked for (its name in the policy)")
    target.add_argument(
        "--service-account", metavar="EMAIL", help="instead of --entitlement: the entitlement for this service account"
    )
    target.add_argument(
        "--kill-switch", metavar="EMAIL", help="ask the kill switch approvers to release EMAIL's kill switch early"
    )
    p.add_argument("--justification", metavar="TEXT", help="e.g. an incident or ticket id")
    p.add_argument("--duration", metavar="DURATION", help="approval window: 600, 600s, 30m or 1h")
    p.add_argument(
        "--scope",
        action="append",
        metavar="SCOPE",
        help="narrow the approval to this OAuth scope (repeat; default: the entitlement's)",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (the access request id, default) or json (the access request)",
    )

    p = add(
        "status",
        "show an access request's state; --wait until approved, denied or timed out",
        commands.cmd_status,
        ident,
    )
    p.add_argument(
        "access_request", metavar="ACCESS_REQUEST_ID", help="the access request (printed by `vending request`)"
    )
    p.add_argument("--wait", action="store_true", help="poll until the access request leaves APPROVAL_AWAITED")
    p.add_argument(
        "--timeout", type=float, default=600, metavar="SECONDS", help="seconds to wait (default %(default)s)"
    )
    p.add_argument(
        "--interval", type=float, default=2, metavar="SECONDS", help="seconds between polls (default %(default)s)"
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (the state, default) or json (the access request)",
    )

    p = add("issuances", "list issued credentials (auditors: all; others: their own)", commands.cmd_issuances, ident)
    p.add_argument("--active", action="store_true", help="only live credentials (state active)")
    p.add_argument(
        "--state",
        choices=("issuing", "active", "failed", "expired", "unconfirmed", "signed", "withheld", "revoked"),
        help="only issuances in this state",
    )
    p.add_argument("--service-account", metavar="EMAIL", help="only credentials of this service account")
    p.add_argument("--principal", metavar="ISSUER/IDENTITY", help="only credentials vended to this caller (auditors)")
    p.add_argument("--since", metavar="RFC3339", help="only issuances from this time on, e.g. 2026-01-31T00:00:00Z")
    p.add_argument(
        "--page-size",
        type=int,
        default=100,
        metavar="N",
        help="issuances fetched per call; all pages are listed (default %(default)s)",
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or json")

    p = add(
        "requests",
        "list access requests: your own, those awaiting your decision (--pending), or all (auditors)",
        commands.cmd_requests,
        ident,
        description=(
            "List access requests, newest first.\n"
            "  --role requester  your own requests (the default)\n"
            "  --role approver   the requests of the entitlements you approve, those awaiting a decision first\n"
            "  --role auditor    every request (auditors only)\n"
            "--pending shows only those awaiting approval (as an approver unless --role says otherwise).\n"
            "A break-glass request is marked with !; a denial's or revocation's comment follows its line."
        ),
    )
    p.add_argument("--pending", action="store_true", help="only requests awaiting approval (default role: approver)")
    p.add_argument(
        "--role",
        choices=("requester", "approver", "auditor"),
        help="whose requests: requester (default), approver or auditor",
    )
    p.add_argument(
        "--state",
        choices=("APPROVAL_AWAITED", "ACTIVE", "DENIED", "REVOKED", "WITHDRAWN", "EXPIRED", "ENDED"),
        help="only requests in this (effective) state",
    )
    p.add_argument("--entitlement", metavar="NAME", help="only requests for this entitlement")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N requests (default %(default)s)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or json")

    for action, help_ in (
        ("approve", "approve an access request (approvers; never your own)"),
        ("deny", "deny an access request awaiting approval (approvers); the comment tells why"),
        ("withdraw", "withdraw your own access request (awaiting approval or ACTIVE)"),
        ("revoke", "revoke an access request awaiting approval or ACTIVE (approvers, auditors)"),
    ):
        p = add(
            action,
            help_,
            commands.cmd_decide,
            ident,
            description=(f"{help_[0].upper()}{help_[1:]}. Prints the request's state on stdout, a summary on stderr."),
        )
        p.set_defaults(action=action)
        p.add_argument(
            "access_request", metavar="ACCESS_REQUEST_ID", help="the access request (printed by `vending request`)"
        )
        p.add_argument("--comment", metavar="TEXT", help="recorded on the request's timeline (shown to the requester)")
        p.add_argument(
            "--format", choices=("text", "json"), default="text", help="text (the state, default) or json (the request)"
        )

    p = add(
        "whoami",
        "show your identity as the service sees it (ISSUER/IDENTITY) and your roles",
        commands.cmd_whoami,
        ident,
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or json")

    p = add(
        "kill-switch",
        "engage, read or release a service account's kill switch (operators, auditors)",
        commands.cmd_kill_switch,
        ident,
        description=(
            "engage   disable the service account in IAM (its access tokens are rejected at once), refuse\n"
            "         every vend for it and mark every live credential of it revoked in the ledger\n"
            "status   the switch: who engaged it, when and why, when it is safe to release, IAM's flag\n"
            "release  enable it again: refused (exit 26) while a credential issued before the kill has not\n"
            "         expired, unless --access-request names a release request approved by the kill switch\n"
            "         approvers (file one with: vending request --kill-switch EMAIL --justification ...)\n"
            "Prints one line (or --format json)."
        ),
    )
    p.add_argument(
        "ks_action", metavar="ACTION", choices=("engage", "status", "release"), help="engage, status or release"
    )
    p.add_argument("service_account_email", metavar="SA", help="the service account's email")
    p.add_argument("--justification", metavar="TEXT", help="why (engage and release: required)")
    p.add_argument(
        "--access-request",
        metavar="ACCESS_REQUEST_ID",
        dest="access_request",
        help="release: an approved release access request (needed before it is safe)",
    )
    p.add_argument("--request-id", dest="access_request", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (one line, default) or json")

    p = add(
        "publish-approval",
        "as a chat-ops bot: sign an approval message (signJwt) and publish it",
        bot.cmd_publish_approval,
        description=(
            "Build the claims {iss, sub: the bot, aud, iat, exp, jti, action, request_id (the access\n"
            "request), actor, comment},\n"
            "have the bot's service account sign them with the IAM Credentials API signJwt, and publish\n"
            "the JWT to Pub/Sub (honours PUBSUB_EMULATOR_HOST) or, with --deliver-to, POST it as a\n"
            "CloudEvent to a local handle_pubsub function. Prints the message id."
        ),
    )
    where = p.add_argument_group("where to publish (one of)")
    where.add_argument("--topic", help="projects/P/topics/T, or T with --project")
    where.add_argument("--project", help="the Pub/Sub project of a bare --topic (default $GOOGLE_CLOUD_PROJECT)")
    where.add_argument("--deliver-to", metavar="URL", help="POST a CloudEvent to a handle_pubsub function")
    p.add_argument(
        "--action",
        required=True,
        choices=("approve", "deny", "revoke", "request", "disable"),
        help="what the person decided or asked: approve, deny, revoke, request or disable",
    )
    p.add_argument(
        "--access-request",
        metavar="ACCESS_REQUEST_ID",
        dest="access_request",
        help="the access request (approve, deny, revoke)",
    )
    p.add_argument("--request-id", dest="access_request", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--actor", required=True, metavar="EMAIL", help="the human who clicked")
    p.add_argument("--comment", metavar="TEXT", help="recorded on the access request's timeline")
    p.add_argument("--entitlement", metavar="NAME", help="--action request: the entitlement asked for")
    p.add_argument("--justification", metavar="TEXT", help="--action request and disable")
    p.add_argument("--service-account", metavar="EMAIL", help="--action disable: whose kill switch to engage")
    p.add_argument("--duration", metavar="DURATION", help="--action request: approval window (600s, 30m, 1h)")
    p.add_argument(
        "--bot-service-account",
        metavar="EMAIL",
        help="the bot's service account (default: the first bot of the policy file)",
    )
    p.add_argument(
        "--bot-audience",
        metavar="AUD",
        dest="bot_audience",
        help="the audience of the message: the service's bot_audience (default: from the policy file)",
    )
    p.add_argument("--audience", dest="bot_audience", help=argparse.SUPPRESS)  # the old name
    p.add_argument(
        "--config",
        metavar="FILE",
        help="policy file for those defaults (default $VENDING_CONFIG or config/example.yaml)",
    )
    p.add_argument(
        "--ttl",
        type=duration_arg,
        default=300,
        metavar="DURATION",
        help="message lifetime: 300, 300s, 5m (default %(default)ss)",
    )
    p.add_argument(
        "--iam-endpoint", metavar="URL", help=f"IAM Credentials API (default ${IAM_ENDPOINT_ENV} or {IAM_ENDPOINT})"
    )
    p.add_argument(
        "--iam-token",
        metavar="TOKEN",
        help=f"static bearer for a local IAM stand-in (default ${IAM_TOKEN_ENV}; else Google ADC)",
    )
