"""The ``vending`` command (also ``python -m vending``).

Operator and local commands live here (``serve``, ``dev-token``, ``sweep``);
the client commands for CI jobs, operators and bots are registered by
``vending.client``. Heavy modules are imported inside each command.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _serve(args: argparse.Namespace) -> int:
    from vending.local.launcher import serve

    return serve(args.port, args.iam_port, args.issuer_port, args.pubsub_port)


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

    p = sub.add_parser("serve", help="run the service on the embedded default (what `make run` does)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--iam-port", type=int, default=8081)
    p.add_argument("--issuer-port", type=int, default=8082)
    p.add_argument("--pubsub-port", type=int, default=8083)
    p.set_defaults(func=_serve)

    p = sub.add_parser("dev-token", help="print a caller token from the local development issuer")
    p.add_argument("--subject", required=True, help="the token's sub claim")
    p.add_argument("--audience", help="default: the development issuer's configured audience")
    p.add_argument("--ttl", type=int, default=600, help="seconds (default 600)")
    p.set_defaults(func=_dev_token)

    p = sub.add_parser("sweep", help="run the expiry sweep once against the configured store")
    p.set_defaults(func=_sweep)

    try:
        from vending import client
    except ImportError:  # pragma: no cover - the client module is part of the package
        client = None  # type: ignore[assignment]
    if client is not None:
        client.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
