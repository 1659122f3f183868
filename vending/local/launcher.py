"""The embedded default: everything needed to try the service offline.

``python -m vending serve`` (what ``make run`` calls) starts, on loopback:
- the local IAM Credentials stand-in on :8081 (keys kept in ``.vending-local``), which also
  answers the IAM API's service account disable / enable / get (the kill switch),
- the local development identity issuer's JWKS on :8082,
- ``functions-framework --target vend_http`` on :8080 (SQLite store),
- ``functions-framework --target handle_pubsub`` on :8083, where a chat-ops
  bot delivers signed messages as CloudEvents (there is no Pub/Sub locally),
then prints a command that vends a token. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

STATE_DIR = Path(".vending-local")
DEMO_SUBJECT = "repo:example/app:ref:refs/heads/main"
DEMO_SA = "demo-deployer@local-project.iam.gserviceaccount.com"
LOCAL_IAM_TOKEN = "local-vending-service-token"


def local_env(port: int = 8080, iam_port: int = 8081, state_dir: Path = STATE_DIR) -> dict[str, str]:
    """The VENDING_* settings of the embedded default."""
    return {
        "VENDING_CONFIG": os.environ.get("VENDING_CONFIG", "config/example.yaml"),
        "VENDING_STORE": f"sqlite:{state_dir}/vending.db",
        "VENDING_PROJECT": "local-project",
        "VENDING_IAM_ENDPOINT": f"http://127.0.0.1:{iam_port}",
        "VENDING_IAM_ADMIN_ENDPOINT": f"http://127.0.0.1:{iam_port}",   # the kill switch: the same stand-in
        "VENDING_IAM_TOKEN": LOCAL_IAM_TOKEN,
        "VENDING_KEYS_BASE_URL": f"http://127.0.0.1:{iam_port}",
        "VENDING_EVENTS_FILE": f"{state_dir}/events.jsonl",
        "VENDING_SESSION_KEY": session_key(state_dir),   # signs console sessions; kept across restarts
    }


def session_key(state_dir: Path = STATE_DIR) -> str:
    """The embedded default's console session key: random, created once (mode 0600) in ``state_dir``."""
    import secrets

    path = Path(state_dir) / "session-key"
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".session-key.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
            try:
                os.link(tmp, path)  # atomic: readers never see a half-written key
            except FileExistsError:
                pass  # another process created it first
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def serve_jwks(jwks: dict[str, Any], port: int) -> ThreadingHTTPServer:
    body = json.dumps(jwks).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path in ("/.well-known/jwks.json", "/jwks")
            payload = body if ok else b'{"error":"not found"}'
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _wait_http(url: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return True
        except requests.RequestException:
            time.sleep(0.2)
    return False


def vend_command(port: int = 8080) -> str:
    body = json.dumps({"service_account": DEMO_SA, "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                       "lifetime": "600s"})
    return (f"curl -s -X POST http://127.0.0.1:{port}/v1/access-tokens "
            f"-H \"Authorization: Bearer $(.venv/bin/python -m vending dev-token --subject {DEMO_SUBJECT})\" "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)}")


def serve(port: int = 8080, iam_port: int = 8081, issuer_port: int = 8082, pubsub_port: int = 8083) -> int:
    from vending.config import load_policy
    from vending.local.iamcredentials import IamStandIn, StandInPolicy
    from vending.local.issuer import DevIssuer

    if os.environ.get("VENDING_STORE") == "firestore":
        print("vending serve: the development issuer only runs with the embedded SQLite store", file=sys.stderr)
        return 2
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, **local_env(port, iam_port)}
    policy = load_policy(env["VENDING_CONFIG"])
    dev = next((i for i in policy.issuers if i.development), None)
    if dev is None:
        print(f"vending serve: {env['VENDING_CONFIG']} has no development issuer", file=sys.stderr)
        return 2

    iam = IamStandIn(StandInPolicy.load("config/local-iam.yaml"), host="127.0.0.1", port=iam_port,
                     key_dir=STATE_DIR / "iam-keys")
    iam.start()
    issuer = DevIssuer(STATE_DIR, dev.issuer)
    jwks_server = serve_jwks(issuer.jwks(), issuer_port)
    children: list[subprocess.Popen[bytes]] = []
    for target, fport, kind in (("vend_http", port, "http"), ("handle_pubsub", pubsub_port, "cloudevent")):
        children.append(subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", target, "--source", "main.py",
             "--signature-type", kind, "--host", "127.0.0.1", "--port", str(fport)],
            env=env, start_new_session=True))

    def stop(*_: Any) -> None:
        for child in children:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
        iam.stop()
        jwks_server.shutdown()

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM both stop everything, even when started from a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        if not _wait_http(f"http://127.0.0.1:{port}/healthz"):
            print("vending serve: the service did not start", file=sys.stderr)
            return 1
        print(f"\nToken vending service (embedded default) on http://127.0.0.1:{port}")
        print(f"  IAM Credentials stand-in  http://127.0.0.1:{iam_port}  (and the IAM API, for the kill switch)")
        print(f"  development issuer        {dev.issuer}")
        print(f"  chat-ops bot endpoint     http://127.0.0.1:{pubsub_port}  (CloudEvents for handle_pubsub)")
        print(f"  store                     {env['VENDING_STORE']}")
        print(f"  web console               http://127.0.0.1:{port}/console/  (development sign-in)\n")
        print("Vend a token (run from this directory):\n")
        print(f"  {vend_command(port)}\n")
        print("Press Ctrl-C to stop.", flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("vending serve: a function process exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping...", flush=True)
        return 0
    finally:
        stop()


def dev_token(subject: str, audience: str | None = None, ttl_s: int = 600) -> str:
    from vending.config import load_policy
    from vending.local.issuer import DevIssuer

    if os.environ.get("VENDING_STORE") == "firestore":
        raise SystemExit("vending dev-token: the development issuer only exists with the embedded SQLite store")
    policy = load_policy(os.environ.get("VENDING_CONFIG", "config/example.yaml"))
    dev = next((i for i in policy.issuers if i.development), None)
    if dev is None:
        raise SystemExit("vending dev-token: the policy file has no development issuer")
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    return DevIssuer(STATE_DIR, dev.issuer).mint(subject, audience or dev.audience, ttl_s=ttl_s)
