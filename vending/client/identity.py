"""The caller's OIDC ID token, discovered from the environment the client runs in.

Order: ``--id-token-file``; ``--id-token-command`` (or ``$VENDING_ID_TOKEN_COMMAND``);
GitHub Actions (``$ACTIONS_ID_TOKEN_REQUEST_URL`` + ``$ACTIONS_ID_TOKEN_REQUEST_TOKEN``,
``&audience=AUD``); GitLab (the ``id_tokens`` variable named by ``--gitlab-var``, then
``$CI_JOB_JWT_V2``); the Google metadata server (only when ``$GCE_METADATA_HOST`` is
set or ``metadata.google.internal`` resolves within a second); ``gcloud auth
print-identity-token --audiences=AUD`` (only if gcloud is on PATH and succeeds).
The token is never printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import requests

from vending.client.common import (
    EXIT_NO_IDENTITY,
    GITHUB_REQUEST_TOKEN_ENV,
    GITHUB_REQUEST_URL_ENV,
    GITLAB_DEFAULT_VAR,
    GITLAB_LEGACY_VAR,
    ID_TOKEN_COMMAND_ENV,
    JWT_RE,
    METADATA_HOST,
    METADATA_HOST_ENV,
    METADATA_IDENTITY_PATH,
    USER_AGENT,
    ClientError,
    one_line,
)


# -- caller identity -------------------------------------------------------------------
def _jwt_or_none(text: str | None) -> str | None:
    text = (text or "").strip()
    return text if JWT_RE.fullmatch(text) else None


def _from_github(audience: str) -> str | None:
    url, bearer = os.environ.get(GITHUB_REQUEST_URL_ENV), os.environ.get(GITHUB_REQUEST_TOKEN_ENV)
    if not url or not bearer:
        return None
    sep = "&" if "?" in url else "?"
    try:
        resp = requests.get(
            f"{url}{sep}audience={quote(audience, safe='')}",
            timeout=(5, 15),
            headers={"Authorization": f"bearer {bearer}", "User-Agent": USER_AGENT},
        )
        resp.raise_for_status()
        token = _jwt_or_none(resp.json().get("value"))
    except (requests.RequestException, ValueError, AttributeError) as exc:
        raise ClientError(
            f"GitHub Actions OIDC token request failed ({type(exc).__name__}); "
            "does the job have `permissions: id-token: write`?",
            EXIT_NO_IDENTITY,
        ) from None
    if token is None:
        raise ClientError("GitHub Actions OIDC endpoint returned no token.", EXIT_NO_IDENTITY)
    return token


def _from_gitlab(var: str) -> str | None:
    for name in (var, GITLAB_LEGACY_VAR):
        token = _jwt_or_none(os.environ.get(name))
        if token:
            return token
    return None


def _resolves(host: str, timeout_s: float = 1.0) -> bool:
    """Whether ``host`` resolves, never waiting longer than ``timeout_s``."""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 80)
            result.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return bool(result)


def _from_metadata(audience: str) -> str | None:
    host = os.environ.get(METADATA_HOST_ENV)
    if not host:
        if not _resolves(METADATA_HOST):
            return None
        host = METADATA_HOST
    try:
        resp = requests.get(
            f"http://{host}{METADATA_IDENTITY_PATH}",
            params={"audience": audience, "format": "full"},
            headers={"Metadata-Flavor": "Google"},
            timeout=(1, 5),
        )
    except requests.RequestException:
        return None
    return _jwt_or_none(resp.text) if resp.status_code == 200 else None


def _from_gcloud(audience: str) -> str | None:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    try:
        done = subprocess.run(
            [gcloud, "auth", "print-identity-token", f"--audiences={audience}"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _jwt_or_none(done.stdout) if done.returncode == 0 else None


def _from_command(command: str) -> str:
    try:
        done = subprocess.run(
            shlex.split(command), check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise ClientError(
            f"--id-token-command failed: {type(exc).__name__}: {one_line(exc, 200)}", EXIT_NO_IDENTITY
        ) from None
    token = _jwt_or_none(done.stdout)
    if done.returncode != 0 or token is None:
        last = (done.stderr.strip().splitlines() or ["it printed no JWT"])[-1]
        raise ClientError(
            f"--id-token-command failed (exit {done.returncode}): {one_line(last, 200)}", EXIT_NO_IDENTITY
        )
    return token


def discover_id_token(
    audience: str, *, token_file: str | None = None, command: str | None = None, gitlab_var: str = GITLAB_DEFAULT_VAR
) -> tuple[str, str]:
    """The caller's OIDC token for ``audience`` and where it came from."""
    if token_file:
        try:
            token = _jwt_or_none(Path(token_file).read_text())
        except OSError as exc:
            raise ClientError(f"cannot read --id-token-file: {exc.strerror}", EXIT_NO_IDENTITY) from None
        if token is None:
            raise ClientError(f"{token_file} does not hold a JWT.", EXIT_NO_IDENTITY)
        return token, "file"
    command = command or os.environ.get(ID_TOKEN_COMMAND_ENV)
    if command:
        return _from_command(command), "command"
    sources: list[tuple[str, Callable[[], str | None]]] = [
        ("github-actions", lambda: _from_github(audience)),
        ("gitlab", lambda: _from_gitlab(gitlab_var)),
        ("metadata-server", lambda: _from_metadata(audience)),
        ("gcloud", lambda: _from_gcloud(audience)),
    ]
    for name, source in sources:
        token = source()
        if token:
            return token, name
    raise ClientError(
        "no caller identity token found (tried GitHub Actions, GitLab $"
        + gitlab_var
        + ", the metadata server, gcloud); use --id-token-file or --id-token-command.",
        EXIT_NO_IDENTITY,
    )


class Caller:
    """The caller's identity token, discovered on first use and on ``refresh()``."""

    def __init__(self, args: argparse.Namespace, service_url: str) -> None:
        self._args = args
        self._audience = args.caller_audience or service_url
        self._token: str | None = None

    def token(self) -> str:
        if self._token is None:
            a = self._args
            self._token, _ = discover_id_token(
                self._audience, token_file=a.id_token_file, command=a.id_token_command, gitlab_var=a.gitlab_var
            )
        return self._token

    def refresh(self) -> None:
        self._token = None
