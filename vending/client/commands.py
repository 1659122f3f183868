"""Commands that call the service: token, id-token, sign-jwt, sign-blob, request, status, requests, approve,
deny, withdraw, revoke, whoami, issuances, kill-switch."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vending.client.common import (
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_NETWORK,
    EXIT_NOT_SAFE,
    EXIT_RATE_LIMITED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    GITHUB_ENV_ENV,
    GITHUB_OUTPUT_ENV,
    STATE_EXIT,
    URL_ENV,
    ClientError,
    as_seconds,
    http_error,
    note,
    send,
)
from vending.client.identity import Caller
from vending.client.output import emit, human_time


class Api:
    def __init__(self, args: argparse.Namespace) -> None:
        if not args.url:
            raise ClientError(f"--url is required (or set ${URL_ENV}).", EXIT_USAGE)
        self.url = args.url.rstrip("/")
        self.caller = Caller(args, self.url)

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.caller.token()}"}
        resp = send(method, f"{self.url}{path}", json=body, params=params, headers=headers)
        if not 200 <= resp.status_code < 300:
            raise http_error(resp)
        try:
            data = resp.json()
        except ValueError:
            raise ClientError(f"{resp.status_code} from {self.url}{path} is not JSON.", EXIT_UNAVAILABLE) from None
        if not isinstance(data, dict):
            raise ClientError(f"unexpected response from {self.url}{path}.", EXIT_UNAVAILABLE)
        return data


# -- commands ------------------------------------------------------------------------------
def _vend_body(args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    body = {
        "service_account": args.service_account,
        "delegates": args.delegate or None,
        "reason": args.reason,
        "request_id": args.access_request,
        **fields,
    }
    return {k: v for k, v in body.items() if v is not None}


def _check_sink(args: argparse.Namespace) -> None:
    """Refuse a sink that cannot work before a credential is minted."""
    if args.format == "github" and not os.environ.get(GITHUB_OUTPUT_ENV):
        raise ClientError(f"--format github needs ${GITHUB_OUTPUT_ENV} (it is set in GitHub Actions).", EXIT_USAGE)
    if args.format == "github" and args.export and not os.environ.get(GITHUB_ENV_ENV):
        raise ClientError(f"--export needs ${GITHUB_ENV_ENV} (it is set in GitHub Actions).", EXIT_USAGE)
    if args.format == "github" and args.output:
        raise ClientError("--output does not apply to --format github.", EXIT_USAGE)


def cmd_token(args: argparse.Namespace) -> int:
    _check_sink(args)
    body = _vend_body(args, scopes=args.scope or None, lifetime=as_seconds(args.lifetime))
    emit("token", Api(args).call("POST", "/v1/access-tokens", body), args)
    return 0


def cmd_id_token(args: argparse.Namespace) -> int:
    if not args.target_audience:
        raise ClientError("id-token needs --target-audience: the audience of the ID token to mint.", EXIT_USAGE)
    _check_sink(args)
    body = _vend_body(args, audience=args.target_audience, include_email=args.include_email or None)
    emit("id-token", Api(args).call("POST", "/v1/id-tokens", body), args)
    return 0


def _claim_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_sign_jwt(args: argparse.Namespace) -> int:
    _check_sink(args)
    try:
        claims = json.loads(args.claims) if args.claims else {}
    except ValueError:
        raise ClientError("--claims is not valid JSON.", EXIT_USAGE) from None
    if not isinstance(claims, dict):
        raise ClientError("--claims must be a JSON object.", EXIT_USAGE)
    for item in args.claim or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--claim {item!r} is not NAME=VALUE.", EXIT_USAGE)
        claims[key] = _claim_value(value)
    emit("sign-jwt", Api(args).call("POST", "/v1/signed-jwts", _vend_body(args, claims=claims)), args)
    return 0


def cmd_sign_blob(args: argparse.Namespace) -> int:
    _check_sink(args)
    try:
        payload = Path(args.payload_file).read_bytes() if args.payload_file else sys.stdin.buffer.read()
    except OSError as exc:
        raise ClientError(f"cannot read {args.payload_file}: {exc.strerror}") from None
    body = _vend_body(args, payload=base64.b64encode(payload).decode("ascii"))
    emit("sign-blob", Api(args).call("POST", "/v1/signed-blobs", body), args)
    return 0


def _describe(req: dict[str, Any]) -> str:
    approvals = f"{len(req.get('approvals') or [])}/{req.get('quorum')} approvals"
    text = f"access request {req.get('id')} ({req.get('entitlement')}) is {req.get('state')}: {approvals}"
    if req.get("window_end"):
        text += f", window ends {human_time(req['window_end'])}"
    return text


def cmd_request(args: argparse.Namespace) -> int:
    body = {
        "entitlement": args.entitlement,
        "service_account": args.service_account,
        "kill_switch": args.kill_switch,
        "justification": args.justification,
        "duration": as_seconds(args.duration),
        "scopes": args.scope or None,
    }
    req = Api(args).call("POST", "/v1/requests", {k: v for k, v in body.items() if v is not None})
    if args.format == "json":
        print(json.dumps(req, indent=2))
    else:
        print(req.get("id"))
        note(
            _describe(req)
            + (
                f"; follow it with: vending status {req.get('id')} --wait"
                if req.get("state") == "APPROVAL_AWAITED"
                else ""
            )
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    api = Api(args)
    path = f"/v1/requests/{quote(args.access_request, safe='')}"
    if not args.wait:
        once = api.call("GET", path)
        print(json.dumps(once, indent=2) if args.format == "json" else once.get("state"))
        note(_describe(once))
        return 0
    tty = sys.stderr.isatty()
    start = time.monotonic()
    last_shown: Any = None
    refreshed = warned = False
    req: dict[str, Any] = {}
    while True:
        try:
            req = api.call("GET", path)
            refreshed = False
        except ClientError as exc:
            if exc.code == EXIT_AUTH and not refreshed:  # the identity token expired while waiting
                api.caller.refresh()
                refreshed = True
                continue
            if exc.code not in (EXIT_NETWORK, EXIT_UNAVAILABLE, EXIT_RATE_LIMITED):
                raise
            if not warned:
                note(f"{exc.message} (still waiting)")
                warned = True
        elapsed = time.monotonic() - start
        if req and req.get("state") != "APPROVAL_AWAITED":
            break
        count = len(req.get("approvals") or [])
        line = (
            f"waiting for approval: {count}/{req.get('quorum', '?')} approvals, "
            f"{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d} elapsed"
        )
        if tty:
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
        elif last_shown != count:
            print(line, file=sys.stderr, flush=True)
            last_shown = count
        if elapsed >= args.timeout:
            if tty:
                sys.stderr.write("\n")
            note(f"timed out after {args.timeout:g}s; access request {args.access_request} is still APPROVAL_AWAITED")
            return EXIT_WAIT_TIMEOUT
        time.sleep(max(0.05, min(args.interval, args.timeout - elapsed)))
    if tty:
        sys.stderr.write("\n")
    state = str(req.get("state"))
    print(json.dumps(req, indent=2) if args.format == "json" else state)
    note(_describe(req))
    return STATE_EXIT.get(state, EXIT_ERROR)


def _live_until(issuance: dict[str, Any]) -> str | None:
    """When the credential stops being valid (for an unconfirmed one: at the latest)."""
    if issuance.get("state") in ("issuing", "unconfirmed"):
        return issuance.get("reserved_until")
    return issuance.get("expire_time")


def cmd_issuances(args: argparse.Namespace) -> int:
    api = Api(args)
    params = {
        "state": "active" if args.active else args.state,
        "service_account": args.service_account,
        "principal": args.principal,
        "since": args.since,
        "page_size": str(args.page_size),
    }
    params = {k: v for k, v in params.items() if v}
    rows: list[dict[str, Any]] = []
    while True:
        page = api.call("GET", "/v1/issuances", params=params)
        rows.extend(page.get("issuances") or [])
        if not page.get("next_page_token"):
            break
        params["page_token"] = str(page["next_page_token"])
    if args.format == "json":
        print(json.dumps({"issuances": rows}, indent=2))
        return 0
    header = ("ID", "KIND", "STATE", "SERVICE ACCOUNT", "PRINCIPAL", "EXPIRES")
    table = [header] + [
        (
            str(r.get("id")),
            str(r.get("kind")),
            str(r.get("state")) + ("!" if r.get("break_glass") else ""),
            str(r.get("service_account")),
            str(r.get("principal")),
            human_time(_live_until(r)),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    note(f"{len(rows)} issuance(s)" + (" (! = break-glass)" if any(r.get("break_glass") for r in rows) else ""))
    return 0


# -- access requests: the inbox, decisions, who am I ---------------------------------------
def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _last_comment(req: dict[str, Any]) -> str:
    said = [t for t in req.get("timeline") or [] if t.get("comment") and t.get("event") in ("deny", "revoke")]
    return f"{said[-1]['event']} by {said[-1]['actor']}: {said[-1]['comment']}" if said else ""


def cmd_requests(args: argparse.Namespace) -> int:
    role = args.role or ("approver" if args.pending else "requester")
    params = {
        "role": role,
        "state": "APPROVAL_AWAITED" if args.pending else args.state,
        "entitlement": args.entitlement,
        "page_size": str(min(args.limit, 500)),
    }
    params = {k: v for k, v in params.items() if v}
    api = Api(args)
    rows: list[dict[str, Any]] = []
    while len(rows) < args.limit:
        page = api.call("GET", "/v1/requests", params=params)
        rows.extend(page.get("requests") or [])
        if not page.get("next_page_token"):
            break
        params["page_token"] = str(page["next_page_token"])
    rows = rows[: args.limit]
    if args.format == "json":
        print(json.dumps({"requests": rows}, indent=2))
        return 0
    _table(
        ("ID", "STATE", "ENTITLEMENT", "REQUESTER", "APPROVALS", "FILED", "JUSTIFICATION"),
        [
            (
                str(r.get("id")),
                str(r.get("state")) + ("!" if r.get("break_glass") else ""),
                str(r.get("entitlement")),
                str(r.get("requester")),
                f"{len(r.get('approvals') or [])}/{r.get('quorum')}",
                human_time(r.get("created_at")),
                " ".join(str(r.get("justification") or "-").split())[:60]
                + (f"  [{_last_comment(r)}]" if _last_comment(r) else ""),
            )
            for r in rows
        ],
    )
    note(
        f"{len(rows)} request(s) as {role}" + (" (! = break-glass)" if any(r.get("break_glass") for r in rows) else "")
    )
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    """approve, deny, withdraw, revoke: one POST /v1/requests/ID:ACTION with an optional comment."""
    body = {"comment": args.comment} if args.comment else None
    req = Api(args).call("POST", f"/v1/requests/{quote(args.access_request, safe='')}:{args.action}", body)
    print(json.dumps(req, indent=2) if args.format == "json" else req.get("state"))
    note(_describe(req))
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    me = Api(args).call("GET", "/v1/whoami")
    if args.format == "json":
        print(json.dumps(me, indent=2))
        return 0
    print(me.get("identity"))
    roles = (
        (["auditor"] if me.get("auditor") else [])
        + [f"approver of {', '.join(me['approver_of'])}"] * bool(me.get("approver_of"))
        + (["kill switch operator"] if me.get("kill_switch_operator") else [])
        + (["kill switch approver"] if me.get("kill_switch_approver") else [])
    )
    print(f"roles: {'; '.join(roles) or 'none'}")
    if me.get("may_request"):
        print(f"may request: {', '.join(me['may_request'])}")
    for bg in me.get("break_glass_active") or []:
        print(
            f"BREAK-GLASS ACTIVE: {bg.get('requester')} holds {bg.get('entitlement')} until "
            f"{human_time(bg.get('window_end'))}"
        )
    return 0


# -- the kill switch -----------------------------------------------------------------------
def describe_kill_switch(ks: dict[str, Any]) -> str:
    """One line: the state, who engaged it and why, what was revoked, when it is safe to release."""
    sa, state = ks.get("service_account"), str(ks.get("state"))
    if state == "NOT_ENGAGED":
        text = f"{sa}: kill switch NOT_ENGAGED (vends allowed)"
    else:
        text = (
            f"{sa}: kill switch {state} by {ks.get('engaged_by')} at {human_time(ks.get('requested_at'))} "
            f"({ks.get('justification')!r})"
        )
        if state == "RELEASED":
            text += f"; released by {ks.get('released_by')} at {human_time(ks.get('released_at'))}"
            if ks.get("released_early"):
                text += " EARLY: credentials issued before the kill that had not expired are valid again"
        elif ks.get("revoked_at"):
            text += f"; {ks.get('revoked')} credential(s) revoked; safe to release " + (
                "now" if ks.get("safe_now") else f"at {human_time(ks.get('safe_at'))}"
            )
        if ks.get("failure"):
            text += f"; last IAM failure: {ks.get('failure')}"
    if ks.get("iam_disabled") is not None:
        text += f"; IAM: {'disabled' if ks['iam_disabled'] else 'enabled'}"
    elif ks.get("iam_error"):
        text += f"; IAM: unknown ({ks['iam_error']})"
    return text


def cmd_kill_switch(args: argparse.Namespace) -> int:
    api = Api(args)
    path = f"/v1/service-accounts/{quote(args.service_account_email, safe='@')}"
    if args.ks_action != "status" and not args.justification:
        raise ClientError(f"kill-switch {args.ks_action} needs --justification.", EXIT_USAGE)
    try:
        if args.ks_action == "status":
            ks = api.call("GET", path)
        elif args.ks_action == "engage":
            ks = api.call("POST", f"{path}:disable", {"justification": args.justification})
        else:
            body = {"justification": args.justification, "request_id": args.access_request}
            ks = api.call("POST", f"{path}:enable", {k: v for k, v in body.items() if v is not None})
    except ClientError as exc:
        if exc.message.startswith("409 release-not-safe"):
            exc.code = EXIT_NOT_SAFE
        raise
    print(json.dumps(ks, indent=2) if args.format == "json" else describe_kill_switch(ks))
    return 0
