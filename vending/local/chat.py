"""Local fakes of the chat platforms, for the embedded default (``make run-chat``) and tests.

They sign like the real platforms, so the apps verify them with the production code paths:
- ``LocalChatIssuer``: Google Chat's token issuer: one RSA-2048 key kept in the state directory,
  published as a JWKS at the path Google uses, RS256 tokens from ``chat@system.gserviceaccount.com``
  for the app's audience (a project number).
- ``slack_signing_secret``: a random Slack signing secret (and a bot token), created once, 0600, in
  the state directory; ``sign_slack`` signs a request with it exactly as Slack does (v0 HMAC).
- ``FakeWorkspace``: one loopback HTTP server standing in for both platforms' Web APIs (the
  Slack Web API methods the apps call, under ``/slack/api/``, checked against the bot token; the
  Chat REST API ``spaces:findDirectMessage``, ``messages.create`` and ``messages.patch`` under
  ``/v1/``), the Chat issuer's JWKS, and ``GET /_local/messages``: every card as it stands now.
- ``EventForwarder``: what Pub/Sub does in production: each line the service appends to its local
  events file is delivered to the notifier function as a Pub/Sub CloudEvent (retried on failure).

``python -m vending.local.chat serve`` is ``vending serve`` with the chat apps; ``click`` is a
person clicking a button on their card (signed like the platform); ``cards`` prints the cards.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import itertools
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import requests

from vending import clock
from vending.local.issuer import _load_or_create, rsa_thumbprint

CHAT_ISSUER = "chat@system.gserviceaccount.com"
JWKS_PATH = f"/service_accounts/v1/jwk/{CHAT_ISSUER}"
LOCAL_PROJECT_NUMBER = "123456789012"  # the local Chat app's "project number" (its token audience)
LOCAL_CHAT_APPS_TOKEN = "local-chat-apps-token"  # the chat apps' own caller of the IAM stand-in
CHAT_PORTS = {"--slack-port": 8084, "--google-chat-port": 8085, "--notifier-port": 8086, "--workspace-port": 8087}
PUBSUB_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"


# -- secrets of the local workspace -----------------------------------------------------------------
def _secret_file(state_dir: Path, name: str, make: Any) -> str:
    """A random secret created once (0600, atomically) in ``state_dir``."""
    path = Path(state_dir) / name
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(make())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def slack_signing_secret(state_dir: Path) -> str:
    return _secret_file(state_dir, "slack-signing-secret", lambda: secrets.token_hex(16))


def slack_bot_token(state_dir: Path) -> str:
    return _secret_file(state_dir, "slack-bot-token", lambda: "xoxb-local-" + secrets.token_hex(12))


def sign_slack(secret: str, body: str, timestamp: int) -> str:
    """Slack's v0 signature of a request body."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class LocalChatIssuer:
    """Google Chat's bearer tokens, signed by a local key (the same claims: iss, aud, iat, exp)."""

    KEY_FILE = "chat-issuer-key.pem"

    def __init__(self, state_dir: Path) -> None:
        from vending.local.issuer import _b64url_uint

        self._key = _load_or_create(Path(state_dir) / self.KEY_FILE)
        numbers = self._key.public_key().public_numbers()
        public = {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
        self.kid = rsa_thumbprint(public)
        self._jwk = {**public, "kid": self.kid, "alg": "RS256", "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self._jwk)]}

    def mint(self, audience: str, *, ttl_s: int = 3600, issuer: str = CHAT_ISSUER, **extra: Any) -> str:
        now = int(clock.epoch())
        claims = {"iss": issuer, "aud": audience, "iat": now, "exp": now + ttl_s, **extra}
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})


def slack_user_id(email: str) -> str:
    return "U" + hashlib.sha256(email.lower().encode()).hexdigest()[:10].upper()


def chat_user_name(email: str) -> str:
    return "users/" + str(int(hashlib.sha256(email.lower().encode()).hexdigest()[:12], 16))


# -- the fake workspace -----------------------------------------------------------------------------
class FakeWorkspace:
    """Slack's and Google Chat's Web APIs (what the apps call), in memory, on loopback."""

    def __init__(self, port: int, *, bot_token: str, jwks: dict[str, Any], host: str = "127.0.0.1") -> None:
        self.port, self.host = port, host
        self._bot_token, self._jwks = bot_token, jwks
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self.messages: dict[str, dict[str, Any]] = {}  # key -> {platform, person, channel/space, ts/name, text, ...}
        self._people: dict[str, str] = {}  # Slack user id / Chat space / Slack DM channel -> email
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        workspace = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                workspace._dispatch(self, "GET")

            def do_POST(self) -> None:
                workspace._dispatch(self, "POST")

            def do_PATCH(self) -> None:
                workspace._dispatch(self, "PATCH")

            def do_PUT(self) -> None:  # the Chat client's messages.update
                workspace._dispatch(self, "PATCH")

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- plumbing
    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            if parts.path == JWKS_PATH and method == "GET":
                status, body = 200, self._jwks
            elif parts.path == "/_local/messages" and method == "GET":
                with self._lock:
                    status, body = 200, {"messages": list(self.messages.values())}
            elif parts.path.startswith("/slack/api/"):
                status, body = self._slack(h, parts.path.removeprefix("/slack/api/"), parts.query, raw)
            elif parts.path.startswith("/v1/"):
                status, body = self._chat(method, parts.path.removeprefix("/v1/"), parts.query, raw)
            else:
                status, body = 404, {"error": "not found"}
        except (ValueError, KeyError, TypeError) as exc:
            status, body = 400, {"error": {"code": 400, "message": f"bad request: {type(exc).__name__}"}}
        payload = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    # -- Slack Web API
    def _slack(self, h: BaseHTTPRequestHandler, method: str, query: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if h.headers.get("Authorization") != f"Bearer {self._bot_token}":
            return 200, {"ok": False, "error": "invalid_auth"}
        args: dict[str, Any] = {k: v[0] for k, v in parse_qs(query).items()}
        if raw:
            if (h.headers.get("Content-Type") or "").startswith("application/json"):
                args.update(json.loads(raw))
            else:
                args.update({k: v[0] for k, v in parse_qs(raw.decode()).items()})
        with self._lock:
            if method == "users.lookupByEmail":
                email = str(args["email"]).lower()
                self._people[slack_user_id(email)] = email
                return 200, {"ok": True, "user": {"id": slack_user_id(email)}}
            if method == "users.info":
                known = self._people.get(str(args["user"]))
                if known is None:
                    return 200, {"ok": False, "error": "user_not_found"}
                user = {"id": args["user"], "is_bot": False, "deleted": False, "is_email_confirmed": True}
                return 200, {"ok": True, "user": {**user, "profile": {"email": known}}}
            if method == "conversations.open":
                user_id = str(args["users"]).split(",")[0]
                channel = "D" + user_id[1:]
                self._people[channel] = self._people.get(user_id, "")
                return 200, {"ok": True, "channel": {"id": channel}}
            if method == "chat.postMessage":
                channel, ts = str(args["channel"]), f"{int(clock.epoch())}.{next(self._seq):06d}"
                self.messages[f"slack:{channel}:{ts}"] = {
                    "platform": "slack",
                    "person": self._people.get(channel),
                    "channel": channel,
                    "ts": ts,
                    "text": args.get("text"),
                    "blocks": args.get("blocks"),
                }
                return 200, {"ok": True, "channel": channel, "ts": ts}
            if method == "chat.update":
                key = f"slack:{args['channel']}:{args['ts']}"
                if key not in self.messages:
                    return 200, {"ok": False, "error": "message_not_found"}
                self.messages[key].update(text=args.get("text"), blocks=args.get("blocks"))
                return 200, {"ok": True, "channel": args["channel"], "ts": args["ts"]}
        return 200, {"ok": False, "error": "unknown_method"}

    # -- Google Chat REST API
    def _chat(self, method: str, path: str, query: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if method == "GET" and path == "spaces:findDirectMessage":
                user = parse_qs(query)["name"][0]
                email = user.removeprefix("users/").lower()
                space = "spaces/dm-" + hashlib.sha256(email.encode()).hexdigest()[:12]
                self._people[space] = email
                return 200, {"name": space, "spaceType": "DIRECT_MESSAGE"}
            if method == "POST" and path.startswith("spaces/") and path.endswith("/messages"):
                space = path.removesuffix("/messages")
                body = json.loads(raw or b"{}")
                name = f"{space}/messages/{next(self._seq)}"
                self.messages[f"google-chat:{name}"] = {
                    "platform": "google-chat",
                    "person": self._people.get(space),
                    "space": space,
                    "name": name,
                    "text": body.get("text"),
                    "cardsV2": body.get("cardsV2"),
                }
                return 200, {**body, "name": name}
            if method == "PATCH" and path.startswith("spaces/"):
                key = f"google-chat:{path}"
                if key not in self.messages:
                    return 404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}
                body = json.loads(raw or b"{}")
                self.messages[key].update(text=body.get("text"), cardsV2=body.get("cardsV2"))
                return 200, {**body, "name": path}
        return 404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}


# -- Pub/Sub's part -------------------------------------------------------------------------------
class EventForwarder:
    """Delivers each new line of the service's events file to the notifier, in order, as Pub/Sub would."""

    def __init__(self, events_file: Path, notifier_url: str, *, poll_s: float = 0.2, attempts: int = 20) -> None:
        self._path, self._url, self._poll_s, self._attempts = Path(events_file), notifier_url, poll_s, attempts
        self._stop = threading.Event()
        self._offset = self._path.stat().st_size if self._path.exists() else 0  # earlier runs' events stay
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        pending = b""
        while not self._stop.is_set():
            if self._path.exists():
                with self._path.open("rb") as fh:
                    fh.seek(self._offset)
                    chunk = fh.read()
                self._offset += len(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._deliver(line)
            self._stop.wait(self._poll_s)

    def _deliver(self, line: bytes) -> None:
        record = json.loads(line)
        channel = record.pop("channel", "notifications")
        data = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
        message_id = hashlib.sha256(line).hexdigest()[:20]
        topic = f"projects/local-project/topics/{channel}"
        headers = {
            "ce-id": message_id,
            "ce-source": f"//pubsub.googleapis.com/{topic}",
            "ce-specversion": "1.0",
            "ce-type": PUBSUB_TYPE,
            "Content-Type": "application/json",
        }
        body = {
            "message": {"data": base64.b64encode(data).decode(), "messageId": message_id},
            "subscription": f"projects/local-project/subscriptions/chat-{channel}",
        }
        delay = 0.1
        for _ in range(self._attempts):  # Pub/Sub redelivers until acknowledged
            try:
                if requests.post(self._url, json=body, headers=headers, timeout=30).ok:
                    return
            except requests.RequestException:
                pass
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, 2.0)


# -- settings of the local chat apps --------------------------------------------------------------
def local_chat_env(ports: dict[str, int], pubsub_port: int, state_dir: Path) -> dict[str, str]:
    """The CHATOPS_* settings (and the chat apps' own IAM caller) of the embedded default."""
    workspace = f"http://127.0.0.1:{ports['--workspace-port']}"
    return {
        "VENDING_IAM_TOKEN": LOCAL_CHAT_APPS_TOKEN,  # signJwt as the bot, nothing else (config/local-iam.yaml)
        "CHATOPS_DELIVER_TO": f"http://127.0.0.1:{pubsub_port}",
        "CHATOPS_GOOGLE_AUDIENCE": LOCAL_PROJECT_NUMBER,
        "CHATOPS_GOOGLE_JWKS_URI": workspace + JWKS_PATH,
        "CHATOPS_GOOGLE_API_ENDPOINT": workspace,
        "CHATOPS_GOOGLE_ANONYMOUS": "1",
        "CHATOPS_GOOGLE_ALERTS_SPACE": "spaces/alerts",
        "CHATOPS_SLACK_SIGNING_SECRET": slack_signing_secret(state_dir),
        "CHATOPS_SLACK_BOT_TOKEN": slack_bot_token(state_dir),
        "CHATOPS_SLACK_API_URL": workspace + "/slack/api/",
        "CHATOPS_SLACK_ALERTS_CHANNEL": "C0ALERTS",
    }


# -- the commands ---------------------------------------------------------------------------------
STATE_DIR = Path(".vending-local")


def _messages(workspace: str, request_id: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{workspace}/_local/messages", timeout=10)
    resp.raise_for_status()
    return [m for m in resp.json()["messages"] if f"request: {request_id}" in (m.get("text") or "")]


def click(platform: str, email: str, request_id: str, action: str, *, ports: dict[str, int], state_dir: Path) -> int:
    """``email`` clicks ``action`` on their card of ``request_id``; signed as the platform signs."""
    workspace = f"http://127.0.0.1:{ports['--workspace-port']}"
    mine = [m for m in _messages(workspace, request_id) if m["platform"] == platform and m.get("person") == email]
    if platform == "slack":
        secret = slack_signing_secret(state_dir)
        requests.post(
            f"{workspace}/slack/api/users.lookupByEmail",
            data={"email": email},
            headers={"Authorization": f"Bearer {slack_bot_token(state_dir)}"},
            timeout=10,
        )
        payload = {
            "type": "block_actions",
            "user": {"id": slack_user_id(email), "username": email.split("@")[0], "team_id": "T0LOCAL"},
            "team": {"id": "T0LOCAL"},
            "trigger_id": secrets.token_hex(12),
            "container": {"type": "message", "channel_id": mine[0]["channel"] if mine else None},
            "actions": [{"type": "button", "action_id": action, "value": request_id, "action_ts": str(clock.epoch())}],
        }
        body = urlencode({"payload": json.dumps(payload)})
        timestamp = int(clock.epoch())
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": str(timestamp),
            "X-Slack-Signature": sign_slack(secret, body, timestamp),
        }
        resp = requests.post(f"http://127.0.0.1:{ports['--slack-port']}/", data=body, headers=headers, timeout=60)
    elif platform == "google-chat":
        event = {
            "type": "CARD_CLICKED",
            "eventTime": clock.now().isoformat().replace("+00:00", "Z"),
            "user": {"name": chat_user_name(email), "email": email, "type": "HUMAN", "displayName": email},
            "space": {"name": mine[0]["space"] if mine else "spaces/unknown", "type": "DM"},
            "message": {"name": mine[0]["name"] if mine else "spaces/unknown/messages/0"},
            "common": {"invokedFunction": action, "parameters": {"request_id": request_id}},
        }
        token = LocalChatIssuer(state_dir).mint(LOCAL_PROJECT_NUMBER)
        resp = requests.post(
            f"http://127.0.0.1:{ports['--google-chat-port']}/",
            json=event,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
    else:
        print(f"vending.local.chat: unknown platform {platform!r} (slack, google-chat)", file=sys.stderr)
        return 2
    body_json = resp.json() if resp.headers.get("Content-Type", "").startswith("application/json") else {}
    if not resp.ok:
        error = body_json.get("error") or {}
        print(f"{platform}: {resp.status_code} {error.get('reason')}: {error.get('message')}", file=sys.stderr)
        return 1
    note = body_json.get("text", "").splitlines()[-1] if body_json.get("text") else "sent"
    print(f"{platform}: {email} clicked {action}: {note}")
    return 0


def _posted(request_id: str) -> int | None:
    """The number of cards the notifier posted for a request (its record in the local store), or None."""
    from vending.chat.core import CARDS
    from vending.store.sqlite import SqliteStore

    path = STATE_DIR / "vending.db"
    if not path.exists():
        return None
    store = SqliteStore(str(path))
    try:
        doc = store.get(CARDS, request_id)
    except ValueError:
        return None
    finally:
        store.close()
    if doc is None or doc.data.get("status") != "posted":
        return None
    return len(doc.data.get("messages") or [])


def cards(request_id: str, *, ports: dict[str, int], until: str | None, timeout_s: float) -> int:
    """Print every card of ``request_id`` (waiting until each shows ``until``, when given)."""
    workspace = f"http://127.0.0.1:{ports['--workspace-port']}"
    deadline = time.monotonic() + timeout_s
    while True:
        found = _messages(workspace, request_id)
        posted = _posted(request_id)  # how many cards the notifier posted, once it has posted them all
        done = posted is not None and len(found) >= posted and bool(found)
        done = done and (until is None or all(until in (m.get("text") or "") for m in found))
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for m in sorted(found, key=lambda m: (m["platform"], str(m.get("person")))):
        print(f"--- {m['platform']} card to {m.get('person')}")
        print(m.get("text"))
    if not done:
        print(f"vending.local.chat: no card of {request_id} shows {until!r} yet", file=sys.stderr)
        return 1
    return 0


PORTS_FILE = "chat-ports.json"  # written by `serve`: where `click` and `cards` find the running apps


def write_ports(state_dir: Path, ports: dict[str, int]) -> None:
    (Path(state_dir) / PORTS_FILE).write_text(json.dumps(ports))


def _ports(args: argparse.Namespace) -> dict[str, int]:
    """The flags given, else the ports the running `serve` wrote, else the defaults."""
    try:
        running = json.loads((STATE_DIR / PORTS_FILE).read_text())
    except (OSError, ValueError):
        running = {}
    out = {}
    for flag, default in CHAT_PORTS.items():
        given = getattr(args, flag.lstrip("-").replace("-", "_"))
        out[flag] = int(given if given is not None else running.get(flag, default))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vending.local.chat", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def port_flags(p: argparse.ArgumentParser, serving: bool = False) -> None:
        for flag, default in CHAT_PORTS.items():
            if serving:
                p.add_argument(flag, type=int, default=default, help=f"(default {default})")
            else:
                p.add_argument(flag, type=int, help=f"(default: the running serve's, else {default})")

    serve_p = sub.add_parser("serve", help="vending serve with both chat apps, the notifier and the fakes")
    for flag, default in (("--port", 8080), ("--iam-port", 8081), ("--issuer-port", 8082), ("--pubsub-port", 8083)):
        serve_p.add_argument(flag, type=int, default=default, help=f"(default {default})")
    port_flags(serve_p, serving=True)
    click_p = sub.add_parser("click", help="a person clicks a button on their card")
    click_p.add_argument("platform", choices=("slack", "google-chat"))
    click_p.add_argument("email")
    click_p.add_argument("request_id")
    click_p.add_argument("action", choices=("approve", "deny", "revoke"))
    port_flags(click_p)
    cards_p = sub.add_parser("cards", help="print the cards of an access request")
    cards_p.add_argument("request_id")
    cards_p.add_argument("--until", help="wait until every card shows this text")
    cards_p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    port_flags(cards_p)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            from vending.local.launcher import serve

            return serve(args.port, args.iam_port, args.issuer_port, args.pubsub_port, chat_ports=_ports(args))
        if args.command == "click":
            return click(
                args.platform, args.email.lower(), args.request_id, args.action, ports=_ports(args), state_dir=STATE_DIR
            )
        return cards(args.request_id, ports=_ports(args), until=args.until, timeout_s=args.timeout)
    except requests.RequestException as exc:
        print(
            f"vending.local.chat: the local chat workspace does not answer ({type(exc).__name__}); "
            "is `make run-chat` running?",
            file=sys.stderr,
        )
        return 10


if __name__ == "__main__":
    raise SystemExit(main())
