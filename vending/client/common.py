"""Exit codes, environment names, errors and HTTP helpers shared by the client commands."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import requests

from vending.durations import GRAMMAR, parse_duration

# -- exit codes ---------------------------------------------------------------------
EXIT_ERROR, EXIT_USAGE, EXIT_AUTH, EXIT_DENIED, EXIT_BAD_REQUEST = 1, 2, 3, 4, 5
EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_RATE_LIMITED, EXIT_UNAVAILABLE, EXIT_NETWORK = 6, 7, 8, 9, 10
EXIT_NO_IDENTITY = 11
STATE_EXIT = {"ACTIVE": 0, "DENIED": 20, "REVOKED": 21, "WITHDRAWN": 22, "EXPIRED": 23, "ENDED": 24}
EXIT_WAIT_TIMEOUT = 25
EXIT_NOT_SAFE = 26  # kill-switch release refused: credentials issued before the kill still live
HTTP_EXIT = {
    400: EXIT_BAD_REQUEST,
    401: EXIT_AUTH,
    403: EXIT_DENIED,
    404: EXIT_NOT_FOUND,
    405: EXIT_BAD_REQUEST,
    409: EXIT_CONFLICT,
    413: EXIT_BAD_REQUEST,
    429: EXIT_RATE_LIMITED,
}

EPILOG = """\
exit codes:
   0  success                       7  conflict (409, e.g. approval already used)
   1  local error (file, output)    8  rate limited (429)
   2  usage                         9  service or upstream unavailable (5xx)
   3  not authenticated (401)      10  network error (service unreachable)
   4  permission denied (403)      11  no caller identity token found
   5  bad request (400)            20-24  status --wait ended DENIED, REVOKED,
   6  not found (404)                     WITHDRAWN, EXPIRED, ENDED
                                   25  status --wait timed out
                                   26  kill-switch release: not safe yet (409
                                       release-not-safe; the message says when)
errors print one line on stderr: "vending: STATUS REASON: MESSAGE"."""

# -- environment: constants so tests can point them at local fakes -----------------
URL_ENV = "VENDING_URL"
AUDIENCE_ENV = "VENDING_AUDIENCE"  # the caller token's audience: the policy issuer's `audience` (docs/policy.md)
ID_TOKEN_COMMAND_ENV = "VENDING_ID_TOKEN_COMMAND"
GITHUB_REQUEST_URL_ENV = "ACTIONS_ID_TOKEN_REQUEST_URL"
GITHUB_REQUEST_TOKEN_ENV = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
GITHUB_OUTPUT_ENV = "GITHUB_OUTPUT"
GITHUB_ENV_ENV = "GITHUB_ENV"
GITLAB_DEFAULT_VAR = "VENDING_ID_TOKEN"
GITLAB_LEGACY_VAR = "CI_JOB_JWT_V2"
METADATA_HOST_ENV = "GCE_METADATA_HOST"
METADATA_HOST = "metadata.google.internal"
METADATA_IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
IAM_ENDPOINT_ENV = "VENDING_IAM_ENDPOINT"
IAM_TOKEN_ENV = "VENDING_IAM_TOKEN"
IAM_ENDPOINT = "https://iamcredentials.googleapis.com"
PUBSUB_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
# --format gcloud writes here by default: never inside the working tree (a repository).
DEFAULT_TOKEN_FILE_HELP = "$XDG_RUNTIME_DIR/vending/access-token, else ~/.config/vending/access-token"
USER_AGENT = "vending-client/0.1"
JWT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class ClientError(Exception):
    """A failure shown as one line on stderr, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def one_line(text: Any, limit: int = 400) -> str:
    return re.sub(r"\s+", " ", "".join(c if c.isprintable() else " " for c in str(text))).strip()[:limit]


def note(text: str) -> None:
    print(f"vending: {text}", file=sys.stderr, flush=True)


# -- HTTP ------------------------------------------------------------------------------
def http_error(resp: requests.Response) -> ClientError:
    try:
        err = resp.json()["error"]
        reason, message, request_id = err.get("reason"), err.get("message"), err.get("request_id")
    except (ValueError, KeyError, TypeError, AttributeError):
        reason, message, request_id = "http-error", resp.reason or "unexpected response", None
    line = f"{resp.status_code} {one_line(reason, 80)}: {one_line(message)}"
    if resp.status_code == 429 and resp.headers.get("Retry-After"):
        line += f" (retry after {one_line(resp.headers['Retry-After'], 10)}s)"
    if request_id:  # the HTTP request's id in the service's log (not an access request)
        line += f" [log request_id {one_line(request_id, 40)}]"
    code = HTTP_EXIT.get(resp.status_code, EXIT_UNAVAILABLE if resp.status_code >= 500 else EXIT_BAD_REQUEST)
    return ClientError(line, code)


def send(method: str, url: str, **kw: Any) -> requests.Response:
    kw.setdefault("timeout", (10, 60))
    kw.setdefault("headers", {})["User-Agent"] = USER_AGENT
    try:
        return requests.request(method, url, **kw)
    except requests.RequestException as exc:
        raise ClientError(
            f"network error: cannot reach {url.split('?')[0]} ({type(exc).__name__})", EXIT_NETWORK
        ) from None


def as_seconds(value: str | None) -> str | None:
    """A duration option (the service's one grammar: 600, 600s, 10m, 1h) as the service's "600s"."""
    if value is None:
        return None
    try:
        return f"{parse_duration(value)}s"
    except ValueError:
        raise ClientError(f"{value!r} is not a duration such as {GRAMMAR}.", EXIT_USAGE) from None


def duration_arg(value: str) -> int:
    """argparse type: seconds from the duration grammar."""
    try:
        return parse_duration(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration such as {GRAMMAR}") from None


def default_token_file() -> Path:
    """Where --format gcloud puts the token: a private directory of the user, never the working tree.

    ``$XDG_RUNTIME_DIR/vending/`` (a tmpfs that only the user can read, emptied at logout) when set,
    else ``~/.config/vending/``; the directory is created 0700."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and Path(runtime).is_dir() else Path.home() / ".config"
    return base / "vending" / "access-token"
