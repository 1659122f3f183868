"""``vending requests``, ``approve``, ``deny``, ``withdraw``, ``revoke`` and ``whoami`` against the
running service (issue 15), on the stack of ``tests/functional/test_client.py`` (functions-framework
subprocesses, the example policy, the development issuer). Every command runs as ``python -m vending``.
"""

from __future__ import annotations

import argparse
import json

import pytest

from tests.functional import test_client
from tests.functional.test_client import Stack
from vending.cli import build_parser

stack = test_client.stack  # the module-scoped stack fixture (a stack of its own for this module)

NEW_COMMANDS = ("requests", "approve", "deny", "withdraw", "revoke", "whoami")
REQUESTER, ERIN = "dave@example.com", "erin@example.com"
ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
AUDITOR = "auditor@example.com"
WHY = "TICKET-42: rotate the signing keys"


def file_request(stack: Stack, subject: str = REQUESTER) -> str:
    r = stack.run("request", *stack.as_(subject), "--entitlement", "prod-admin", "--justification", WHY)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.parametrize("command", NEW_COMMANDS)
def test_every_option_of_the_new_commands_has_help(stack: Stack, command: str) -> None:
    # GIVEN the parser  THEN every option and argument of the command says what it is for
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS and any(
            a.dest == action.dest and a.help not in (None, argparse.SUPPRESS) for a in parser._actions
        ):
            continue  # the hidden old name of a documented option (--audience for --caller-audience)
        assert action.help and action.help != argparse.SUPPRESS, (command, action.dest)
    r = stack.run(command, "--help")
    assert r.returncode == 0 and f"usage: vending {command}" in r.stdout and "exit codes:" in r.stdout


def test_an_approver_works_the_inbox_from_the_command_line(stack: Stack) -> None:
    # GIVEN dave files a request
    rid = file_request(stack)
    # WHEN alice lists what awaits her
    inbox = stack.run("requests", "--pending", *stack.as_(ALICE))
    assert inbox.returncode == 0, inbox.stderr
    assert rid in inbox.stdout and "APPROVAL_AWAITED" in inbox.stdout and "local-dev/dave@example.com" in inbox.stdout
    # AND dave cannot approve his own (exit 4, the reason on stderr)
    own = stack.run("approve", rid, *stack.as_(REQUESTER))
    assert own.returncode == 4 and "403 self-approval" in own.stderr
    # WHEN alice and bob approve
    first = stack.run("approve", rid, "--comment", "ok", *stack.as_(ALICE))
    assert (first.returncode, first.stdout.strip()) == (0, "APPROVAL_AWAITED"), first.stderr
    assert "1/2 approvals" in first.stderr
    second = stack.run("approve", rid, *stack.as_(BOB))
    # THEN the request is ACTIVE, and dave's list says so
    assert (second.returncode, second.stdout.strip()) == (0, "ACTIVE"), second.stderr
    mine = stack.run("requests", "--format", "json", *stack.as_(REQUESTER))
    assert {r["id"]: r["state"] for r in json.loads(mine.stdout)["requests"]}[rid] == "ACTIVE"
    # AND an auditor revokes it
    revoked = stack.run("revoke", rid, "--comment", "INC-9 over", *stack.as_(AUDITOR))
    assert (revoked.returncode, revoked.stdout.strip()) == (0, "REVOKED"), revoked.stderr


def test_a_denial_with_a_comment_shows_to_the_requester_and_withdraw_is_theirs(stack: Stack) -> None:
    rid = file_request(stack, ERIN)
    denied = stack.run("deny", rid, "--comment", "no ticket number", *stack.as_(CAROL))
    assert (denied.returncode, denied.stdout.strip()) == (0, "DENIED"), denied.stderr
    listed = stack.run("requests", "--state", "DENIED", *stack.as_(ERIN))
    assert rid in listed.stdout and "deny by local-dev/carol@example.com: no ticket number" in listed.stdout
    other = file_request(stack, ERIN)
    assert stack.run("withdraw", other, *stack.as_(ALICE)).returncode == 4
    assert stack.run("withdraw", other, *stack.as_(ERIN)).stdout.strip() == "WITHDRAWN"
    again = stack.run("deny", other, *stack.as_(CAROL))
    assert again.returncode == 7 and "409 illegal-transition" in again.stderr


def test_whoami_and_the_auditor_listing(stack: Stack) -> None:
    me = stack.run("whoami", *stack.as_(ALICE))
    assert me.returncode == 0, me.stderr
    assert me.stdout.splitlines()[0] == "local-dev/alice@example.com"
    assert "approver of prod-admin" in me.stdout and "kill switch approver" in me.stdout
    data = json.loads(stack.run("whoami", "--format", "json", *stack.as_(AUDITOR)).stdout)
    assert data["auditor"] is True and data["identity"] == "local-dev/auditor@example.com"
    refused = stack.run("requests", "--role", "auditor", *stack.as_(REQUESTER))
    assert refused.returncode == 4 and "not-an-auditor" in refused.stderr
    assert stack.run("requests", "--role", "auditor", *stack.as_(AUDITOR)).returncode == 0
