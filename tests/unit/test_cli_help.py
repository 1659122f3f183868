"""Every option of every ``vending`` command says what it is for; old names stay hidden aliases."""

from __future__ import annotations

import argparse

import pytest

from vending.cli import build_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _documented(parser: argparse.ArgumentParser, action: argparse.Action) -> bool:
    if action.help and action.help != argparse.SUPPRESS:
        return True
    # a hidden old name is fine when the same destination has a documented option
    return action.help == argparse.SUPPRESS and any(
        a.dest == action.dest and a.help not in (None, argparse.SUPPRESS) for a in parser._actions
    )


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_option_of_every_command_has_a_description(command: str) -> None:
    # GIVEN the command's parser  THEN each of its options and arguments is described
    parser = _subparsers()[command]
    undocumented = [a.option_strings or [a.dest] for a in parser._actions if not _documented(parser, a)]
    assert not undocumented, (command, undocumented)


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["token", "--service-account", "a@b.iam.gserviceaccount.com", "--request-id", "x"], "access_request", "x"),
        (["token", "--service-account", "a@b.iam.gserviceaccount.com", "--access-request", "x"], "access_request", "x"),
        (["token", "--service-account", "a@b.iam.gserviceaccount.com", "--audience", "A"], "caller_audience", "A"),
        (
            ["id-token", "--service-account", "a@b.iam.gserviceaccount.com", "--audience-of-token", "T"],
            "target_audience",
            "T",
        ),
        (["kill-switch", "release", "a@b.iam.gserviceaccount.com", "--request-id", "x"], "access_request", "x"),
        (["publish-approval", "--action", "approve", "--actor", "a", "--audience", "A"], "bot_audience", "A"),
        (["publish-approval", "--action", "approve", "--actor", "a", "--ttl", "5m"], "ttl", 300),
        (["dev-token", "--subject", "s", "--ttl", "10m"], "ttl", 600),
    ],
)
def test_old_names_are_aliases_and_durations_have_one_grammar(argv: list[str], dest: str, value: object) -> None:
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value


def test_help_names_access_requests_never_a_bare_request_id() -> None:
    # GIVEN every command's help text  THEN an access request is called one, and --request-id is not offered
    for command, parser in _subparsers().items():
        text = parser.format_help()
        assert "--request-id" not in text, command
        assert "--audience-of-token" not in text, command
