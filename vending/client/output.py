"""Where a credential goes: stdout (json, env), GitHub Actions files (github), a 0600 file (gcloud).

The credential is written only to the chosen sink; the expiry goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import secrets
import shlex
import sys
from pathlib import Path
from typing import Any

from vending.client.common import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    GITHUB_ENV_ENV,
    GITHUB_OUTPUT_ENV,
    ClientError,
    default_token_file,
    note,
)


# -- output ------------------------------------------------------------------------------
def write_private(path: Path, text: str, *, private_dir: bool = False) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 from creation on (with ``private_dir``, its directory
    is made 0700 too)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if private_dir:
            path.parent.chmod(0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ClientError(f"cannot write {path}: {exc.strerror}") from None


def _append(env_name: str, pairs: dict[str, str]) -> str:
    path = os.environ.get(env_name)
    if not path:
        raise ClientError(f"--format github needs ${env_name} (it is set in GitHub Actions).", EXIT_USAGE)
    if any("\n" in k or "\n" in v for k, v in pairs.items()):
        raise ClientError("refusing to write a multi-line value to $" + env_name)
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.writelines(f"{k}={v}\n" for k, v in pairs.items())
    except OSError as exc:
        raise ClientError(f"cannot append to ${env_name}: {exc.strerror}") from None
    return path


def _span(seconds: float) -> str:
    s = int(abs(seconds))
    text = f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def human_time(value: str | None) -> str:
    if not value:
        return "-"
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    left = (when - _dt.datetime.now(_dt.UTC)).total_seconds()
    return f"{when.astimezone(_dt.UTC):%Y-%m-%d %H:%M:%S} UTC ({_span(left)})"


# What each credential command returns: (response field, label, variables for env/github --export).
KINDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "token": ("access_token", "access token", ("GOOGLE_OAUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN")),
    "id-token": ("id_token", "ID token", ("GOOGLE_ID_TOKEN",)),
    "sign-jwt": ("signed_jwt", "signed JWT", ("VENDING_SIGNED_JWT",)),
    "sign-blob": ("signed_blob", "signature", ("VENDING_SIGNED_BLOB",)),
}


def emit(kind: str, result: dict[str, Any], args: argparse.Namespace) -> None:
    field, label, env_names = KINDS[kind]
    secret = str(result.get(field, ""))
    if not secret:
        raise ClientError(f"the service returned no {field}.", EXIT_UNAVAILABLE)
    raw_meta = {
        "VENDING_EXPIRE_TIME": result.get("expire_time"),
        "VENDING_ISSUANCE_ID": result.get("issuance_id"),
        "VENDING_KEY_ID": result.get("key_id"),
    }
    meta = {k: str(v) for k, v in raw_meta.items() if v}
    _write_sink(args, field, secret, env_names, meta, label, result)
    if result.get("expire_time"):  # after the sink: with --format github the mask comes first
        note(
            f"{label} for {result.get('service_account', args.service_account)} expires "
            f"{human_time(result['expire_time'])}"
        )
    else:
        note(f"{label} by key {result.get('key_id')} (valid while that key lives)")


def _write_sink(
    args: argparse.Namespace,
    field: str,
    secret: str,
    env_names: tuple[str, ...],
    meta: dict[str, str],
    label: str,
    result: dict[str, Any],
) -> None:
    if args.format == "github":
        print(f"::add-mask::{secret}", flush=True)  # before the value is written anywhere
        outputs = {field: secret, **{k.removeprefix("VENDING_").lower(): v for k, v in meta.items()}}
        path = _append(GITHUB_OUTPUT_ENV, outputs)
        if args.export:
            _append(GITHUB_ENV_ENV, {**dict.fromkeys(env_names, secret), **meta})
        note(
            f"{label} is in the step outputs ({', '.join(outputs)}) of {path}"
            + (" and in $GITHUB_ENV" if args.export else "")
        )
    elif args.format == "gcloud":
        token_file = Path(args.output).absolute() if args.output else default_token_file()
        write_private(token_file, secret, private_dir=not args.output)
        print(f"export CLOUDSDK_AUTH_ACCESS_TOKEN_FILE={shlex.quote(str(token_file))}")
    else:
        if args.format == "env":
            text = "".join(
                f"export {k}={shlex.quote(v)}\n" for k, v in [*((name, secret) for name in env_names), *meta.items()]
            )
        else:
            text = json.dumps(result, indent=2) + "\n"
        if args.output:
            write_private(Path(args.output), text)
            note(f"wrote {args.output} (mode 0600)")
        else:
            sys.stdout.write(text)
