"""The embedded default: everything needed to try the service offline.

``python -m vending serve`` (what ``make run`` calls) starts, on loopback:
- the local IAM Credentials stand-in on :8081 (keys kept in ``.vending-local``), which also
  answers the IAM API's service account disable / enable / get (the kill switch),
- the local development identity issuer's JWKS on :8082,
- ``functions-framework --target vend_http`` on :8080 (SQLite store),
- ``functions-framework --target handle_pubsub`` on :8083, where a chat-ops
  bot delivers signed messages as CloudEvents (there is no Pub/Sub locally),
then prints a command that vends a token. Ctrl-C stops everything it started.

With ``chat_ports`` (``python -m vending.local.chat serve``, what ``make run-chat`` calls) it also
starts the chat-ops apps against local fakes that sign like the platforms (``vending.local.chat``):
``chat_slack_http`` (:8084), ``chat_google_http`` (:8085), ``chat_notify`` (:8086, fed the events
file as Pub/Sub would), and the fake Slack / Google Chat workspace with Chat's token keys (:8087).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
        "VENDING_IAM_ADMIN_ENDPOINT": f"http://127.0.0.1:{iam_port}",  # the kill switch: the same stand-in
        "VENDING_IAM_TOKEN": LOCAL_IAM_TOKEN,
        "VENDING_KEYS_BASE_URL": f"http://127.0.0.1:{iam_port}",
        "VENDING_EVENTS_FILE": f"{state_dir}/events.jsonl",
        "VENDING_SESSION_KEY": session_key(state_dir),  # signs console sessions; kept across restarts
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


PORT_FLAGS = ("--port", "--iam-port", "--issuer-port", "--pubsub-port")
START_TIMEOUT_S = 90.0


class LaunchError(Exception):
    """A reason not to start (or to stop): one message for the terminal, and the exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (as gunicorn binds: with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _suggest(port: int, taken: set[int]) -> int:
    for candidate in (port + 1000, port + 2000, port + 10000):
        if candidate <= 65535 and candidate not in taken and port_free(candidate):
            return candidate
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def busy_port_message(flag: str, port: int, taken: set[int]) -> str:
    alt = _suggest(port, taken)
    return (
        f"vending serve: port {port} ({flag}) is already in use on 127.0.0.1, by another `make run` or "
        f'another program.\nStop it, or choose another port: make run ARGS="{flag} {alt}" '
        f"(python -m vending serve {flag} {alt})"
    )


def check_ports(ports: dict[str, int]) -> None:
    """Every port is a valid, distinct and free loopback port, checked before anything starts."""
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise LaunchError(f"vending serve: {flag} {port} is not a port number (1-65535)")
        if port in seen:
            raise LaunchError(f"vending serve: {seen[port]} and {flag} are both {port}; give each its own port")
        seen[port] = flag
    for flag, port in ports.items():
        if not port_free(port):
            raise LaunchError(busy_port_message(flag, port, set(seen)))


def _check_issuer_port(config_path: str, jwks_uri: str, issuer_port: int) -> None:
    """The development issuer's keys are served where the policy says they are."""
    parts = urlsplit(jwks_uri)
    if parts.hostname in ("127.0.0.1", "localhost") and parts.port != issuer_port:
        raise LaunchError(
            f"vending serve: {config_path}: the development issuer's jwks_uri {jwks_uri} is not on "
            f"--issuer-port {issuer_port}; use the same port in both (and in its issuer)"
        )


def cli_command() -> str:
    """How to call the client from this directory: ``.venv/bin/vending`` after ``make run``."""
    local = Path(".venv/bin/vending")
    if local.exists():
        return str(local)
    beside = Path(sys.executable).parent / "vending"
    if beside.exists():
        return shlex.quote(str(beside))
    return f"{shlex.quote(sys.executable)} -m vending"


def vend_command(port: int = 8080) -> str:
    body = json.dumps(
        {"service_account": DEMO_SA, "scopes": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "600s"}
    )
    return (
        f"curl -s -X POST http://127.0.0.1:{port}/v1/access-tokens "
        f'-H "Authorization: Bearer $({cli_command()} dev-token --subject {DEMO_SUBJECT})" '
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True


class _Stop(BaseException):
    """Raised by the signal handler: SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal closed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Launch:
    """What ``serve`` started, stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stoppers: list[Any] = []

    def spawn(self, target: str, port: int, kind: str, env: dict[str, str]) -> None:
        # Own process group (stopped as a whole), and tied to this process: see vending.local.child.
        self.children.append(
            (
                target,
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "vending.local.child",
                        str(os.getpid()),
                        "--target",
                        target,
                        "--source",
                        "main.py",
                        "--signature-type",
                        kind,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    env=env,
                    start_new_session=True,
                ),
            )
        )

    def exited(self) -> tuple[str, int] | None:
        for target, child in self.children:
            code = child.poll()
            if code is not None:
                return target, code
        return None

    def stop(self) -> None:
        for sig in STOP_SIGNALS:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        for _, child in self.children:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for _, child in self.children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.wait(timeout=5)
        for stopper in reversed(self.stoppers):
            stopper()


def serve(
    port: int = 8080,
    iam_port: int = 8081,
    issuer_port: int = 8082,
    pubsub_port: int = 8083,
    *,
    chat_ports: dict[str, int] | None = None,
) -> int:
    """Start the embedded default; return the exit code (0 after Ctrl-C, SIGTERM or SIGHUP; 2 when it cannot
    start: a bad setting or policy, a busy port; 1 when a function process fails). ``chat_ports`` (flag ->
    port, ``vending.local.chat.CHAT_PORTS``) adds the chat-ops apps and their local fakes."""
    try:
        return _serve(port, iam_port, issuer_port, pubsub_port, chat_ports)
    except LaunchError as exc:
        print(exc.message, file=sys.stderr, flush=True)
        return exc.code


def _serve(port: int, iam_port: int, issuer_port: int, pubsub_port: int, chat_ports: dict[str, int] | None) -> int:
    from vending.config import load_settings
    from vending.errors import ConfigError

    if os.environ.get("VENDING_STORE") == "firestore":
        raise LaunchError("vending serve: the development issuer only runs with the embedded SQLite store")
    check_ports(
        {
            "--port": port,
            "--iam-port": iam_port,
            "--issuer-port": issuer_port,
            "--pubsub-port": pubsub_port,
            **(chat_ports or {}),
        }
    )
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    # The function processes get exactly these settings: validate them here, once, before starting any.
    os.environ.update(local_env(port, iam_port))
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise LaunchError(exc.message) from None
    config_path = settings.config_path
    dev = next((i for i in settings.policy.issuers if i.development), None)
    if dev is None:
        raise LaunchError(f"vending serve: {config_path} has no development issuer (development: true)")
    _check_issuer_port(config_path, dev.jwks_uri, issuer_port)

    launch = Launch()

    def interrupt(signum: int, _frame: Any) -> None:
        raise _Stop(signum)

    # Ctrl-C, SIGTERM and SIGHUP (the terminal closed) stop everything, even when started from a shell
    # that ignores SIGINT; set before anything starts, so nothing is left behind at any point.
    for sig in STOP_SIGNALS:
        signal.signal(sig, interrupt)
    try:
        env = dict(os.environ)
        # The function processes take longest (their imports): start them first.
        launch.spawn("vend_http", port, "http", env)
        launch.spawn("handle_pubsub", pubsub_port, "cloudevent", env)
        waits = {
            f"http://127.0.0.1:{port}/healthz": "--port",
            f"http://127.0.0.1:{pubsub_port}/": "--pubsub-port",
        }
        if chat_ports:
            waits.update(_spawn_chat(launch, env, chat_ports, pubsub_port))
        _start_local_parts(launch, dev.issuer, iam_port, issuer_port)
        if chat_ports:
            _start_chat_parts(launch, chat_ports)
        _wait_until_up(launch, waits)
        print(f"\nToken vending service (embedded default) on http://127.0.0.1:{port}")
        print(f"  IAM Credentials stand-in  http://127.0.0.1:{iam_port}  (and the IAM API, for the kill switch)")
        print(f"  development issuer        {dev.issuer}")
        print(f"  chat-ops bot endpoint     http://127.0.0.1:{pubsub_port}  (CloudEvents for handle_pubsub)")
        if chat_ports:
            print(f"  Slack app (interactivity) http://127.0.0.1:{chat_ports['--slack-port']}  (chat_slack_http)")
            print(
                f"  Google Chat app           http://127.0.0.1:{chat_ports['--google-chat-port']}  (chat_google_http)"
            )
            print(f"  chat notifier             http://127.0.0.1:{chat_ports['--notifier-port']}  (chat_notify)")
            print(
                f"  local chat workspace      http://127.0.0.1:{chat_ports['--workspace-port']}  (fake Slack and Chat)"
            )
        print(f"  store                     {settings.store}")
        print(f"  web console               http://127.0.0.1:{port}/console/  (development sign-in)\n")
        print("Vend a token (run from this directory):\n")
        print(f"  {vend_command(port)}\n")
        print("Press Ctrl-C to stop.", flush=True)
        while (gone := launch.exited()) is None:
            time.sleep(0.5)
        raise LaunchError(
            f"vending serve: the {gone[0]} function process exited (code {gone[1]}); stopping everything", 1
        )
    except _Stop as stop:
        if stop.signum == signal.SIGINT:
            print("\nStopping...", flush=True)
        return 0
    finally:
        launch.stop()


def _start_local_parts(launch: Launch, issuer_url: str, iam_port: int, issuer_port: int) -> None:
    from vending.local.iamcredentials import IamStandIn, StandInPolicy
    from vending.local.issuer import DevIssuer

    iam = IamStandIn(
        StandInPolicy.load("config/local-iam.yaml"), host="127.0.0.1", port=iam_port, key_dir=STATE_DIR / "iam-keys"
    )
    try:
        iam.start()
    except OSError:
        raise LaunchError(busy_port_message("--iam-port", iam_port, {iam_port})) from None
    launch.stoppers.append(iam.stop)
    issuer = DevIssuer(STATE_DIR, issuer_url)
    try:
        jwks_server = serve_jwks(issuer.jwks(), issuer_port)
    except OSError:
        raise LaunchError(busy_port_message("--issuer-port", issuer_port, {issuer_port})) from None

    def stop_jwks() -> None:
        jwks_server.shutdown()
        jwks_server.server_close()

    launch.stoppers.append(stop_jwks)


CHAT_TARGETS = {
    "chat_slack_http": ("--slack-port", "http"),
    "chat_google_http": ("--google-chat-port", "http"),
    "chat_notify": ("--notifier-port", "cloudevent"),
}


def _spawn_chat(launch: Launch, env: dict[str, str], chat_ports: dict[str, int], pubsub_port: int) -> dict[str, str]:
    """The chat function processes, with their own settings; the URLs to wait for, with their flags."""
    from vending.local.chat import local_chat_env

    chat_env = {**env, **local_chat_env(chat_ports, pubsub_port, STATE_DIR)}
    waits = {}
    for target, (flag, kind) in CHAT_TARGETS.items():
        launch.spawn(target, chat_ports[flag], kind, chat_env)
        waits[f"http://127.0.0.1:{chat_ports[flag]}/"] = flag
    return waits


def _start_chat_parts(launch: Launch, chat_ports: dict[str, int]) -> None:
    """The fake chat workspace (with Chat's token keys) and the events file -> notifier delivery."""
    from vending.local.chat import EventForwarder, FakeWorkspace, LocalChatIssuer, slack_bot_token, write_ports

    workspace = FakeWorkspace(
        chat_ports["--workspace-port"], bot_token=slack_bot_token(STATE_DIR), jwks=LocalChatIssuer(STATE_DIR).jwks()
    )
    try:
        workspace.start()
    except OSError:
        port = chat_ports["--workspace-port"]
        raise LaunchError(busy_port_message("--workspace-port", port, {port})) from None
    launch.stoppers.append(workspace.stop)
    write_ports(STATE_DIR, chat_ports)
    forwarder = EventForwarder(STATE_DIR / "events.jsonl", f"http://127.0.0.1:{chat_ports['--notifier-port']}/")
    forwarder.start()
    launch.stoppers.append(forwarder.stop)


def _wait_until_up(launch: Launch, waits: dict[str, str]) -> None:
    """Until every function process answers (``waits``: URL -> its port flag); at once when one exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = set(waits)
    flags = {"vend_http": "--port", "handle_pubsub": "--pubsub-port"} | {t: f for t, (f, _) in CHAT_TARGETS.items()}
    while pending:
        gone = launch.exited()
        if gone is not None:
            target, code = gone
            flag = flags.get(target, "--port")
            raise LaunchError(
                f"vending serve: the {target} function process exited (code {code}) before it "
                f"answered; its output is above (a port taken since the check? see {flag})",
                1,
            )
        if time.monotonic() > deadline:
            raise LaunchError(f"vending serve: the function processes did not answer within {START_TIMEOUT_S:g}s", 1)
        pending = {url for url in pending if not _answers(url)}
        if pending:
            time.sleep(0.1)


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
