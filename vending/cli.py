"""The ``vending`` command (also ``python -m vending``).

Operator and local commands live here (``serve``, ``dev-token``, ``sweep``);
the client commands for CI jobs, operators and bots are registered by
``vending.client``. Heavy modules are imported inside each command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell tool reports when its reader went away (`| head`)


def _serve(args: argparse.Namespace) -> int:
    from vending.local.launcher import serve

    chat_ports = None
    if args.chat:  # the chat-ops apps on local fakes (docs/chatops.md); `make run-chat` is the same
        from vending.local.chat import CHAT_PORTS

        chat_ports = dict(CHAT_PORTS)
    return serve(args.port, args.iam_port, args.issuer_port, args.pubsub_port, chat_ports=chat_ports)


def _dev_token(args: argparse.Namespace) -> int:
    from vending.local.launcher import dev_token

    print(dev_token(args.subject, args.audience, args.ttl))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from vending import log, wiring

    log.configure(stream=sys.stderr)  # stdout carries the summary only
    service = wiring.service()
    summary = service.sweep()
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vending", description="Token vending service for Google Cloud.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from vending.client.common import duration_arg

    p = sub.add_parser(
        "serve",
        help="run the service on the embedded default (what `make run` does)",
        description="Run the service on the embedded default, on loopback; Ctrl-C (or closing the "
        "terminal) stops everything it started. Every port is checked before anything starts.",
    )
    p.add_argument("--port", type=int, default=8080, help="the HTTP API (vend_http) (default %(default)s)")
    p.add_argument(
        "--iam-port", type=int, default=8081, help="the IAM Credentials (and IAM API) stand-in (default %(default)s)"
    )
    p.add_argument(
        "--issuer-port",
        type=int,
        default=8082,
        help="the development issuer's keys; must match its jwks_uri in the policy (default %(default)s)",
    )
    p.add_argument(
        "--pubsub-port",
        type=int,
        default=8083,
        help="handle_pubsub, where chat-ops messages are delivered (default %(default)s)",
    )
    p.add_argument(
        "--chat",
        action="store_true",
        help="also serve the Slack and Google Chat apps, the notifier and their local fakes on 8084-8087 "
        "(docs/chatops.md; `make run ARGS=--chat` or `make run-chat`)",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("dev-token", help="print a caller token from the local development issuer")
    p.add_argument("--subject", required=True, help="the token's sub claim")
    p.add_argument("--audience", help="the token's aud (default: the development issuer's configured audience)")
    p.add_argument(
        "--ttl",
        type=duration_arg,
        default=600,
        metavar="DURATION",
        help="its lifetime: 600, 600s, 10m or 1h (default 600s)",
    )
    p.set_defaults(func=_dev_token)

    p = sub.add_parser("sweep", help="run the expiry sweep once against the configured store")
    p.set_defaults(func=_sweep)

    try:
        from vending import client
    except ImportError:  # pragma: no cover - the client module is part of the package
        client = None  # type: ignore[assignment]
    if client is not None:
        client.register(sub)
        from vending.client import policy as policy_tool

        policy_tool.register(sub)  # vending policy check | explain | schema | reference
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from vending.errors import ConfigError

    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
    except ConfigError as exc:  # a bad setting or policy file: its one or two lines, no traceback
        print(exc.message, file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of stdout went away (`vending issuances --format json | head`): stop quietly, as
        # `cat` does; stdout goes to /dev/null so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
