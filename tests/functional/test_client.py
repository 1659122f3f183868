"""The ``vending`` client against the real running service (embedded default).

One module-scoped stack: functions-framework serving ``vend_http`` and
``handle_pubsub`` as subprocesses (SQLite store in a temp dir), the IAM
Credentials stand-in in-process, and the development issuer's JWKS, all on
free ports, with ``config/example.yaml`` copied and its ports substituted.
Every client command runs as ``python -m vending ...`` in a subprocess from
the stack's home directory, where ``python -m vending dev-token`` finds the
development issuer's key. Nothing secret may appear outside the chosen sink.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests

from tests.emulators import free_port
from vending.client import common
from vending.local.iamcredentials import IamStandIn, StandInPolicy
from vending.local.issuer import DevIssuer
from vending.local.launcher import LOCAL_IAM_TOKEN, local_env, serve_jwks

REPO = Path(__file__).resolve().parents[2]
CI = "repo:example/app:ref:refs/heads/main"
DEMO_SA = "demo-deployer@local-project.iam.gserviceaccount.com"
PROD_SA = "prod-admin@local-project.iam.gserviceaccount.com"
BOT_SA = "chatops-bot@local-project.iam.gserviceaccount.com"
REQUESTER = "dave@example.com"
AUDITOR = "auditor@example.com"
COMMANDS = (
    "token",
    "id-token",
    "sign-jwt",
    "sign-blob",
    "request",
    "status",
    "issuances",
    "publish-approval",
    "kill-switch",
)
# Variables that would make the client find an identity (or a sink) we did not give it.
CLEAN = (
    "VENDING_URL",
    "VENDING_ID_TOKEN_COMMAND",
    "VENDING_ID_TOKEN",
    "CI_JOB_JWT_V2",
    "GCE_METADATA_HOST",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "GITHUB_OUTPUT",
    "GITHUB_ENV",
    "VENDING_IAM_TOKEN",
    "VENDING_IAM_ENDPOINT",
    "VENDING_NOTIFICATIONS_TOPIC",
    "VENDING_ALERTS_TOPIC",
)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child started with start_new_session=True, with everything it started."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


def _run(
    argv: list[str], cwd: Path, env: dict[str, str], input: bytes | None, timeout: float, umask: int = -1
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in its own process group; the whole group is stopped afterwards, whatever happens."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        umask=umask,
    )
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    finally:
        _stop(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())


@dataclass
class Stack:
    home: Path
    url: str
    pubsub_url: str
    iam: IamStandIn
    issuer: DevIssuer
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in CLEAN}
        env.update(
            PYTHONPATH=str(REPO),
            VENDING_CONFIG=str(self.home / "policy.yaml"),
            VENDING_STORE=f"sqlite:{self.home}/.vending-local/vending.db",
            PATH=f"{self.home / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            XDG_RUNTIME_DIR=str(self.home / "run"),
        )  # where --format gcloud writes by default
        env.update(extra)
        return env

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
        timeout: float = 90,
        umask: int = -1,
    ) -> subprocess.CompletedProcess[str]:
        """``python -m vending ARGS`` from the home directory."""
        return _run([sys.executable, "-m", "vending", *args], self.home, env or self.env(), input, timeout, umask)

    def bash(self, script: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return _run(["bash", "-euo", "pipefail", "-c", script], self.home, env, None, timeout)

    def as_(self, subject: str) -> list[str]:
        """Service URL and identity options for a caller with this ``sub``."""
        return ["--url", self.url, "--id-token-command", f"{sys.executable} -m vending dev-token --subject {subject}"]

    def mint(self, subject: str, audience: str | None = None) -> str:
        return self.issuer.mint(subject, audience or self.url)

    def bot(self) -> list[str]:
        return [
            "--iam-endpoint",
            self.iam.url,
            "--iam-token",
            LOCAL_IAM_TOKEN,
            "--bot-service-account",
            BOT_SA,
            "--bot-audience",
            self.url,
        ]

    def minted(self, credential: str) -> bool:
        digest = hashlib.sha256(credential.encode()).hexdigest()
        return any(m.sha256 == digest for m in self.iam.minted)


def _spawn(home: Path, env: dict[str, str], target: str, port: int, kind: str) -> subprocess.Popen[bytes]:
    log = open(home / f"{target}.log", "wb")  # noqa: SIM115 - closed with the process
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "functions_framework",
                "--target",
                target,
                "--source",
                str(REPO / "main.py"),
                "--signature-type",
                kind,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{log.read_text()[-3000:]}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not start:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("client")
    state = home / ".vending-local"
    state.mkdir(mode=0o700)
    (home / "run").mkdir(mode=0o700)
    (home / ".venv").symlink_to(REPO / ".venv")  # the docs run `.venv/bin/python -m vending dev-token`
    (home / "bin").mkdir()
    shim = home / "bin" / "vending"  # what `pip install` puts on PATH
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m vending "$@"\n')
    shim.chmod(0o755)

    port, pubsub_port, issuer_port = free_port(), free_port(), free_port()
    url, issuer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{issuer_port}"
    policy = (REPO / "config/example.yaml").read_text()
    (home / "policy.yaml").write_text(
        policy.replace("http://127.0.0.1:8082", issuer_url).replace("http://127.0.0.1:8080", url)
    )
    iam = IamStandIn(StandInPolicy.load(str(REPO / "config/local-iam.yaml")), port=0).start()
    issuer = DevIssuer(state, issuer_url)
    jwks = serve_jwks(issuer.jwks(), issuer_port)
    s = Stack(home, url, f"http://127.0.0.1:{pubsub_port}", iam, issuer)
    try:
        env = {**s.env(), **local_env(port, iam.port, state), "VENDING_CONFIG": str(home / "policy.yaml")}
        for target, fport, kind in (("vend_http", port, "http"), ("handle_pubsub", pubsub_port, "cloudevent")):
            s.children.append(_spawn(home, env, target, fport, kind))
        _wait_up(f"{url}/healthz", s.children[0], home / "vend_http.log")
        _wait_up(s.pubsub_url, s.children[1], home / "handle_pubsub.log")
        yield s
    finally:
        for child in s.children:
            _stop(child)
        iam.stop()
        jwks.shutdown()
        jwks.server_close()


@pytest.fixture(autouse=True)
def _no_faults(stack: Stack) -> Iterator[None]:
    yield
    stack.iam.clear_faults()


class FakeEndpoint:
    """A local HTTP endpoint answering GETs with ``reply(path, query, headers) -> (status, body)``."""

    def __init__(self, reply: Any) -> None:
        self.seen: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        self.issued: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query, headers = parse_qs(parts.query), dict(self.headers.items())
                outer.seen.append((parts.path, query, headers))
                status, body = reply(parts.path, query, headers)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def github(stack: Stack, tmp_path: Path) -> Iterator[tuple[FakeEndpoint, dict[str, str]]]:
    """A fake GitHub Actions OIDC endpoint and the job's environment."""

    def reply(path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, str]:
        if headers.get("Authorization") != "bearer gh-request-token" or path != "/oidc":
            return 401, "{}"
        caller_token = stack.mint(CI, query["audience"][0])
        fake.issued.append(caller_token)
        return 200, json.dumps({"value": caller_token})

    fake = FakeEndpoint(reply)
    out, env_file = tmp_path / "github_output", tmp_path / "github_env"
    out.touch()
    env_file.touch()
    env = stack.env(
        ACTIONS_ID_TOKEN_REQUEST_URL=f"{fake.url}/oidc?api-version=2.0",
        ACTIONS_ID_TOKEN_REQUEST_TOKEN="gh-request-token",
        GITHUB_OUTPUT=str(out),
        GITHUB_ENV=str(env_file),
        VENDING_URL=stack.url,
    )
    yield fake, env
    fake.close()


def _pairs(path: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in Path(path).read_text().splitlines())


def _exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        word, assignment = shlex.split(line)
        assert word == "export"
        key, value = assignment.split("=", 1)
        out[key] = value
    return out


def _one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("vending: ")
    return lines[0]


def _new_request(stack: Stack, justification: str = "TICKET-7: rotate the keys") -> str:
    r = stack.run("request", *stack.as_(REQUESTER), "--entitlement", "prod-admin", "--justification", justification)
    assert r.returncode == 0, r.stderr
    request_id = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", request_id) and "APPROVAL_AWAITED" in r.stderr
    return request_id


def _publish(stack: Stack, request_id: str, action: str, actor: str) -> subprocess.CompletedProcess[str]:
    return stack.run(
        "publish-approval",
        "--deliver-to",
        stack.pubsub_url,
        *stack.bot(),
        "--access-request",
        request_id,
        "--action",
        action,
        "--actor",
        actor,
    )


# -- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command_documents_exit_codes(stack: Stack, command: str) -> None:
    r = stack.run(command, "--help")
    assert r.returncode == 0, r.stderr
    assert f"usage: vending {command}" in r.stdout and "exit codes:" in r.stdout and "25  status --wait" in r.stdout


def test_top_level_help_lists_the_client_commands(stack: Stack) -> None:
    r = stack.run("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in COMMANDS)


# -- token: formats and sinks ---------------------------------------------------------------


def test_token_json(stack: Stack) -> None:
    r = stack.run("token", *stack.as_(CI), "--service-account", DEMO_SA, "--lifetime", "5m", "--reason", "json test")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    token = body["access_token"]
    assert stack.minted(token) and body["service_account"] == DEMO_SA and 290 <= body["expires_in"] <= 300
    assert token not in r.stderr
    assert re.search(
        r"access token for demo-deployer@\S+ expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in 4m5\ds\)", r.stderr
    ), r.stderr


def test_token_env_format_and_private_output_file(stack: Stack, tmp_path: Path) -> None:
    r = stack.run("token", *stack.as_(CI), "--service-account", DEMO_SA, "--format", "env")
    assert r.returncode == 0, r.stderr
    env = _exports(r.stdout)
    assert set(env) == {
        "GOOGLE_OAUTH_ACCESS_TOKEN",
        "CLOUDSDK_AUTH_ACCESS_TOKEN",
        "VENDING_EXPIRE_TIME",
        "VENDING_ISSUANCE_ID",
    }
    assert env["GOOGLE_OAUTH_ACCESS_TOKEN"] == env["CLOUDSDK_AUTH_ACCESS_TOKEN"]
    assert stack.minted(env["GOOGLE_OAUTH_ACCESS_TOKEN"]) and env["GOOGLE_OAUTH_ACCESS_TOKEN"] not in r.stderr
    # the same lines into a 0600 file instead of stdout, whatever the umask
    target = tmp_path / "out" / "vend.env"
    r = stack.run(
        "token", *stack.as_(CI), "--service-account", DEMO_SA, "--format", "env", "--output", str(target), umask=0
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and stat.S_IMODE(target.stat().st_mode) == 0o600
    token = _exports(target.read_text())["GOOGLE_OAUTH_ACCESS_TOKEN"]
    assert stack.minted(token) and token not in r.stderr


def test_token_github_masks_first_and_writes_only_to_github_files(
    stack: Stack, github: tuple[FakeEndpoint, dict[str, str]]
) -> None:
    fake, env = github
    r = stack.run(
        "token", "--service-account", DEMO_SA, "--lifetime", "600s", "--format", "github", "--export", env=env
    )
    assert r.returncode == 0, r.stderr
    outputs = _pairs(env["GITHUB_OUTPUT"])
    token = outputs["access_token"]
    assert stack.minted(token) and set(outputs) == {"access_token", "expire_time", "issuance_id"}
    # the only place the token shows in the log is the mask command, and it comes first
    assert r.stdout.splitlines() == [f"::add-mask::{token}"]
    assert token not in r.stderr and "expires" in r.stderr
    exported = _pairs(env["GITHUB_ENV"])
    assert exported["GOOGLE_OAUTH_ACCESS_TOKEN"] == exported["CLOUDSDK_AUTH_ACCESS_TOKEN"] == token
    assert exported["VENDING_EXPIRE_TIME"] == outputs["expire_time"]
    # discovery: GitHub's OIDC endpoint was asked for the service's audience; that token is never printed
    ((_, query, _),) = fake.seen
    assert query["audience"] == [stack.url] and query["api-version"] == ["2.0"]
    (caller_token,) = fake.issued
    assert caller_token not in r.stdout + r.stderr + Path(env["GITHUB_OUTPUT"]).read_text()


def test_token_github_without_github_output_mints_nothing(
    stack: Stack, github: tuple[FakeEndpoint, dict[str, str]]
) -> None:
    _, env = github
    del env["GITHUB_OUTPUT"]
    before = len(stack.iam.minted)
    r = stack.run("token", "--service-account", DEMO_SA, "--format", "github", env=env)
    assert r.returncode == 2 and "GITHUB_OUTPUT" in _one_error_line(r)
    assert len(stack.iam.minted) == before


def test_token_gcloud_file_is_0600_and_replaced_atomically(stack: Stack) -> None:
    default = stack.home / "run" / "vending" / "access-token"
    default.parent.mkdir(exist_ok=True)
    default.parent.chmod(0o755)
    default.write_text("stale")
    default.chmod(0o644)
    for _ in range(2):
        r = stack.run("token", *stack.as_(CI), "--service-account", DEMO_SA, "--format", "gcloud", umask=0)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"export CLOUDSDK_AUTH_ACCESS_TOKEN_FILE={default}\n"
        token = default.read_text()
        assert stat.S_IMODE(default.stat().st_mode) == 0o600 and stack.minted(token)
        assert token not in r.stdout + r.stderr and "expires" in r.stderr
    assert not [p for p in default.parent.iterdir() if p.name.endswith(".tmp")]
    assert stat.S_IMODE(default.parent.stat().st_mode) == 0o700


def test_token_gcloud_default_file_is_outside_the_working_tree(stack: Stack, tmp_path: Path) -> None:
    # GIVEN no $XDG_RUNTIME_DIR: the default is ~/.config/vending/access-token, in a directory made 0700
    env = {k: v for k, v in stack.env(HOME=str(tmp_path)).items() if k != "XDG_RUNTIME_DIR"}
    r = stack.run("token", *stack.as_(CI), "--service-account", DEMO_SA, "--format", "gcloud", env=env)
    assert r.returncode == 0, r.stderr
    token_file = tmp_path / ".config" / "vending" / "access-token"
    assert r.stdout == f"export CLOUDSDK_AUTH_ACCESS_TOKEN_FILE={token_file}\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and stack.minted(token_file.read_text())
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    # AND nothing was written in the working directory
    assert not (stack.home / ".vending").exists()


# -- caller identity discovery ----------------------------------------------------------------


def test_gitlab_id_tokens_variable(stack: Stack) -> None:
    for extra, var in (
        ([], "VENDING_ID_TOKEN"),
        (["--gitlab-var", "MY_AUD_TOKEN"], "MY_AUD_TOKEN"),
        ([], "CI_JOB_JWT_V2"),
    ):
        r = stack.run(
            "token", "--url", stack.url, "--service-account", DEMO_SA, *extra, env=stack.env(**{var: stack.mint(CI)})
        )
        assert r.returncode == 0, (var, r.stderr)
        assert stack.minted(json.loads(r.stdout)["access_token"])


def test_metadata_server(stack: Stack) -> None:
    def reply(path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, str]:
        if headers.get("Metadata-Flavor") != "Google" or path != common.METADATA_IDENTITY_PATH:
            return 403, ""
        return 200, stack.mint(CI, query["audience"][0])

    fake = FakeEndpoint(reply)
    try:
        r = stack.run(
            "token",
            "--url",
            stack.url,
            "--service-account",
            DEMO_SA,
            env=stack.env(**{common.METADATA_HOST_ENV: fake.url.removeprefix("http://")}),
        )
    finally:
        fake.close()
    assert r.returncode == 0, r.stderr
    assert fake.seen[0][1] == {"audience": [stack.url], "format": ["full"]}


def test_id_token_file_and_audience_option(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "caller.jwt"
    path.write_text(stack.mint(CI, "https://other.example") + "\n")
    r = stack.run("token", "--url", stack.url, "--id-token-file", str(path), "--service-account", DEMO_SA)
    assert r.returncode == 3 and _one_error_line(r).startswith("vending: 401 ")  # wrong audience
    path.write_text(stack.mint(CI, stack.url))
    r = stack.run(
        "token",
        "--url",
        stack.url,
        "--id-token-file",
        str(path),
        "--service-account",
        DEMO_SA,
        "--caller-audience",
        stack.url,
    )
    assert r.returncode == 0, r.stderr
    path.write_text(stack.mint(CI, stack.url))
    r = stack.run(
        "token", "--url", stack.url, "--id-token-file", str(path), "--service-account", DEMO_SA, "--audience", stack.url
    )  # the old name of --caller-audience still works
    assert r.returncode == 0, r.stderr


def test_id_token_audience_is_ambiguous_and_refused(stack: Stack) -> None:
    r = stack.run("id-token", *stack.as_(CI), "--service-account", DEMO_SA, "--audience", "https://x.a.run.app")
    assert r.returncode == 2 and "--audience is ambiguous here" in r.stderr and "--target-audience" in r.stderr


def test_no_identity_anywhere(stack: Stack) -> None:
    env = stack.env(PATH=str(Path(sys.executable).parent))  # no gcloud either
    r = stack.run("token", "--url", stack.url, "--service-account", DEMO_SA, env=env, timeout=30)
    assert r.returncode == 11 and "no caller identity token found" in _one_error_line(r)


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "prefix"),
    [
        (["--scope", "https://www.googleapis.com/auth/devstorage.read_only"], 4, "vending: 403 scope-not-allowed: "),
        (["--lifetime", "3600s"], 5, "vending: 400 lifetime-too-long: "),
        (["--lifetime", "ten"], 2, "vending: 'ten' is not a duration"),
    ],
)
def test_service_errors_are_one_line_with_their_exit_code(
    stack: Stack, args: list[str], code: int, prefix: str
) -> None:
    r = stack.run("token", *stack.as_(CI), "--service-account", DEMO_SA, *args)
    assert r.returncode == code and _one_error_line(r).startswith(prefix), r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("fault", "code", "prefix"), [(429, 8, "vending: 429 iam-rate-limited: "), (500, 9, "vending: 502 iam-error: ")]
)
def test_upstream_faults(stack: Stack, fault: int, code: int, prefix: str) -> None:
    stack.iam.set_fault(fault)
    r = stack.run("token", *stack.as_(CI), "--service-account", DEMO_SA)
    assert r.returncode == code and _one_error_line(r).startswith(prefix), r.stderr
    if fault == 429:
        assert "(retry after " in r.stderr


def test_not_found_network_and_usage_errors(stack: Stack) -> None:
    r = stack.run("status", "f" * 32, *stack.as_(REQUESTER))
    assert r.returncode == 6 and _one_error_line(r).startswith("vending: 404 request-not-found: ")
    closed = f"http://127.0.0.1:{free_port()}"
    r = stack.run("token", *stack.as_(CI), "--url", closed, "--service-account", DEMO_SA)
    assert (
        r.returncode == 10
        and _one_error_line(r) == f"vending: network error: cannot reach {closed}/v1/access-tokens (ConnectionError)"
    )
    r = stack.run("token", *stack.as_(CI))
    assert r.returncode == 2 and "--service-account" in r.stderr
    r = stack.run("token", "--service-account", DEMO_SA)
    assert r.returncode == 2 and "--url is required" in _one_error_line(r)


# -- the other credentials ------------------------------------------------------------------------


def test_id_token_formats(stack: Stack, github: tuple[FakeEndpoint, dict[str, str]]) -> None:
    audience = "https://app-123.a.run.app"
    certs = jwt.PyJWKClient(f"{stack.iam.url}/oauth2/v3/certs")
    r = stack.run(
        "id-token", *stack.as_(CI), "--service-account", DEMO_SA, "--target-audience", audience, "--include-email"
    )
    assert r.returncode == 0, r.stderr
    token = json.loads(r.stdout)["id_token"]
    claims = jwt.decode(token, certs.get_signing_key_from_jwt(token).key, ["RS256"], audience=audience)
    assert claims["email"] == DEMO_SA and token not in r.stderr
    r = stack.run(
        "id-token", *stack.as_(CI), "--service-account", DEMO_SA, "--audience-of-token", audience, "--format", "env"
    )
    assert r.returncode == 0 and set(_exports(r.stdout)) >= {"GOOGLE_ID_TOKEN", "VENDING_EXPIRE_TIME"}
    _, env = github
    r = stack.run(
        "id-token", "--service-account", DEMO_SA, "--audience-of-token", audience, "--format", "github", env=env
    )
    assert r.returncode == 0, r.stderr
    token = _pairs(env["GITHUB_OUTPUT"])["id_token"]
    assert r.stdout.splitlines() == [f"::add-mask::{token}"] and token not in r.stderr
    r = stack.run(
        "id-token", *stack.as_(CI), "--service-account", DEMO_SA, "--audience-of-token", "https://evil.example"
    )
    assert r.returncode == 4 and "audience-not-allowed" in _one_error_line(r)


def test_sign_jwt(stack: Stack) -> None:
    keys = jwt.PyJWKClient(stack.iam.jwk_url(DEMO_SA))
    for args in (
        ["--claim", "aud=https://example.com/", "--claim", "target=prod"],
        ["--claims", '{"aud": "https://example.com/", "target": "prod"}'],
    ):
        r = stack.run("sign-jwt", *stack.as_(CI), "--service-account", DEMO_SA, *args)
        assert r.returncode == 0, r.stderr
        signed = json.loads(r.stdout)["signed_jwt"]
        claims = jwt.decode(
            signed, keys.get_signing_key_from_jwt(signed).key, ["RS256"], audience="https://example.com/"
        )
        assert claims["iss"] == DEMO_SA and claims["target"] == "prod" and signed not in r.stderr
    r = stack.run(
        "sign-jwt",
        *stack.as_(CI),
        "--service-account",
        DEMO_SA,
        "--claim",
        "aud=https://example.com/",
        "--claim",
        "admin=true",
    )
    assert r.returncode == 4 and "claim-not-allowed" in _one_error_line(r)
    r = stack.run("sign-jwt", *stack.as_(CI), "--service-account", DEMO_SA, "--claims", "[1]")
    assert r.returncode == 2


def test_sign_blob_from_file_and_stdin(stack: Stack, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    small = os.urandom(1000) + b"\x00\xff"
    path = tmp_path / "blob.bin"
    path.write_bytes(small)
    jwks = requests.get(stack.iam.jwk_url(DEMO_SA), timeout=5).json()["keys"]
    largest = os.urandom(64 * 1024)  # the example entitlement's maximum
    for args, stdin, payload in ((["--payload-file", str(path)], None, small), ([], largest, largest)):
        r = stack.run("sign-blob", *stack.as_(CI), "--service-account", DEMO_SA, *args, input=stdin)
        assert r.returncode == 0, r.stderr
        body = json.loads(r.stdout)
        key = jwt.PyJWK(next(k for k in jwks if k["kid"] == body["key_id"]), "RS256").key
        key.verify(base64.b64decode(body["signed_blob"]), payload, padding.PKCS1v15(), hashes.SHA256())
        assert f"signature by key {body['key_id']}" in r.stderr
    r = stack.run("sign-blob", *stack.as_(CI), "--service-account", DEMO_SA, input=largest + b"x")
    assert r.returncode == 5 and _one_error_line(r).startswith("vending: 400 payload-too-large: ")


# -- access requests and approvals -----------------------------------------------------------------


def test_request_wait_for_two_approvals_then_vend_once(stack: Stack) -> None:
    request_id = _new_request(stack)
    r = stack.run("status", request_id, *stack.as_(REQUESTER))
    assert r.returncode == 0 and r.stdout == "APPROVAL_AWAITED\n" and "0/2 approvals" in r.stderr
    results: list[subprocess.CompletedProcess[str]] = []

    def approvers() -> None:
        for actor in ("alice@example.com", "bob@example.com"):
            time.sleep(2)
            results.append(_publish(stack, request_id, "approve", actor))

    thread = threading.Thread(target=approvers)
    thread.start()
    try:
        r = stack.run("status", request_id, *stack.as_(REQUESTER), "--wait", "--interval", "0.3", "--timeout", "60")
    finally:
        thread.join()
    assert [p.returncode for p in results] == [0, 0], [p.stderr for p in results]
    assert all(re.fullmatch(r"\d+\n", p.stdout) for p in results)
    assert r.returncode == 0 and r.stdout == "ACTIVE\n", r.stderr
    assert "waiting for approval: 0/2 approvals, 00:0" in r.stderr and "waiting for approval: 1/2" in r.stderr
    r = stack.run("token", *stack.as_(REQUESTER), "--service-account", PROD_SA, "--access-request", request_id)
    assert r.returncode == 0, r.stderr
    assert stack.minted(json.loads(r.stdout)["access_token"])
    r = stack.run("token", *stack.as_(REQUESTER), "--service-account", PROD_SA, "--request-id", request_id)
    assert r.returncode == 7 and _one_error_line(r).startswith("vending: 409 approval-consumed: ")
    r = stack.run("status", request_id, *stack.as_(REQUESTER), "--format", "json")
    assert json.loads(r.stdout)["state"] == "ENDED"


@pytest.mark.parametrize(("action", "state", "code"), [("deny", "DENIED", 20), ("revoke", "REVOKED", 21)])
def test_wait_ends_with_the_exit_code_of_the_decision(
    stack: Stack, action: str, state: str, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision comes from the example chat-ops bot's handler, in-process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_bot", REPO / "examples/chatops-bot/bot.py")
    assert spec is not None and spec.loader is not None
    bot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bot)
    for name, value in (
        ("VENDING_BOT_SERVICE_ACCOUNT", BOT_SA),
        ("VENDING_BOT_AUDIENCE", stack.url),
        ("VENDING_DELIVER_TO", stack.pubsub_url),
        ("VENDING_IAM_ENDPOINT", stack.iam.url),
        ("VENDING_IAM_TOKEN", LOCAL_IAM_TOKEN),
    ):
        monkeypatch.setenv(name, value)
    request_id = _new_request(stack)
    replies: list[str] = []
    thread = threading.Timer(
        1.5, lambda: replies.append(bot.on_button_click("carol@example.com", request_id, action, "not now"))
    )
    thread.start()
    try:
        r = stack.run("status", request_id, *stack.as_(REQUESTER), "--wait", "--interval", "0.3", "--timeout", "60")
    finally:
        thread.join()
    assert replies and replies[0].startswith(f"Your {action} of request {request_id} was sent"), replies
    assert r.returncode == code and r.stdout == f"{state}\n", r.stderr


def test_wait_times_out(stack: Stack) -> None:
    request_id = _new_request(stack)
    start = time.monotonic()
    r = stack.run("status", request_id, *stack.as_(REQUESTER), "--wait", "--interval", "0.3", "--timeout", "1.5")
    assert r.returncode == 25 and "timed out after 1.5s" in r.stderr and r.stdout == ""
    assert time.monotonic() - start < 20


def test_publish_approval_errors(stack: Stack) -> None:
    r = stack.run(
        "publish-approval",
        "--deliver-to",
        stack.pubsub_url,
        *stack.bot(),
        "--action",
        "approve",
        "--actor",
        "alice@example.com",
    )
    assert r.returncode == 2 and "needs --access-request" in _one_error_line(r)
    args = [
        "--deliver-to",
        stack.pubsub_url,
        "--bot-service-account",
        BOT_SA,
        "--audience",
        stack.url,
        "--iam-endpoint",
        stack.iam.url,
        "--request-id",
        "a" * 32,
        "--action",
        "approve",
        "--actor",
        "a@b.c",
    ]
    r = stack.run("publish-approval", *args, "--iam-token", "not-a-known-token")
    assert r.returncode == 3 and _one_error_line(r).startswith("vending: signJwt 401")
    stack.iam.add_caller("nobody-token", "nobody@local-project.iam.gserviceaccount.com")
    r = stack.run("publish-approval", *args, "--iam-token", "nobody-token")
    assert r.returncode == 4 and "lacks roles/iam.serviceAccountTokenCreator" in _one_error_line(r)


def test_chat_initiated_request(stack: Stack) -> None:
    events = stack.home / ".vending-local" / "events.jsonl"
    before = events.read_text() if events.exists() else ""
    r = stack.run(
        "publish-approval",
        "--deliver-to",
        stack.pubsub_url,
        *stack.bot(),
        "--action",
        "request",
        "--actor",
        "erin@example.com",
        "--entitlement",
        "prod-admin",
        "--justification",
        "INC-9: from chat",
        "--duration",
        "30m",
    )
    assert r.returncode == 0, r.stderr
    created = [json.loads(line) for line in events.read_text()[len(before) :].splitlines()]
    (event,) = [e for e in created if e["type"] == "request.created" and e["requester"] == "local-dev/erin@example.com"]
    r = stack.run("status", event["request_id"], *stack.as_("erin@example.com"), "--format", "json")
    assert r.returncode == 0, r.stderr
    req = json.loads(r.stdout)
    assert (
        req["state"] == "APPROVAL_AWAITED" and req["duration_s"] == 1800 and req["justification"] == "INC-9: from chat"
    )


@pytest.mark.emulator
def test_publish_approval_to_pubsub_emulator(stack: Stack, pubsub_emulator: Any) -> None:
    from google.cloud import pubsub_v1

    from vending.config import Bot
    from vending.identity import BotVerifier

    project = "vending-test"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, f"approvals-{os.getpid()}")
    subscription = subscriber.subscription_path(project, f"vending-{os.getpid()}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    request_id = _new_request(stack)
    env = stack.env(PUBSUB_EMULATOR_HOST=pubsub_emulator.host)
    r = stack.run(
        "publish-approval",
        "--topic",
        topic.rsplit("/", 1)[1],
        "--project",
        project,
        *stack.bot(),
        "--request-id",
        request_id,
        "--action",
        "approve",
        "--actor",
        "alice@example.com",
        "--comment",
        "lgtm",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    pulled = subscriber.pull(subscription=subscription, max_messages=5, timeout=30)
    (received,) = pulled.received_messages
    subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])
    assert received.message.message_id == r.stdout.strip()
    signed = received.message.data.decode()
    verifier = BotVerifier(
        [Bot(service_account=BOT_SA)], audience=stack.url, keys_base_url=stack.iam.url, max_ttl_s=600
    )
    bot, claims = verifier.verify(signed)
    assert bot.service_account == BOT_SA and claims["exp"] - claims["iat"] == 300 and len(claims["jti"]) == 32
    assert {k: claims[k] for k in ("iss", "sub", "action", "request_id", "actor", "comment")} == {
        "iss": BOT_SA,
        "sub": BOT_SA,
        "action": "approve",
        "request_id": request_id,
        "actor": "alice@example.com",
        "comment": "lgtm",
    }
    # deliver the pulled message to the function the way a push subscription would
    message = {"data": base64.b64encode(received.message.data).decode(), "messageId": received.message.message_id}
    resp = requests.post(
        stack.pubsub_url,
        json={"message": message, "subscription": subscription},
        timeout=30,
        headers={
            "ce-id": received.message.message_id,
            "ce-specversion": "1.0",
            "ce-type": common.PUBSUB_TYPE,
            "ce-source": f"//pubsub.googleapis.com/{topic}",
        },
    )
    assert resp.status_code == 200
    r = stack.run("status", request_id, *stack.as_(REQUESTER))
    assert r.stdout == "APPROVAL_AWAITED\n" and "1/2 approvals" in r.stderr
    # the exact form: the bot and its audience come from the policy file ($VENDING_CONFIG)
    env = stack.env(
        PUBSUB_EMULATOR_HOST=pubsub_emulator.host, VENDING_IAM_ENDPOINT=stack.iam.url, VENDING_IAM_TOKEN=LOCAL_IAM_TOKEN
    )
    r = stack.run(
        "publish-approval",
        "--topic",
        topic,
        "--request-id",
        request_id,
        "--action",
        "approve",
        "--actor",
        "bob@example.com",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    (received,) = subscriber.pull(subscription=subscription, max_messages=5, timeout=30).received_messages
    subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])
    bot, claims = verifier.verify(received.message.data.decode())
    assert (bot.service_account, claims["actor"], claims["aud"]) == (BOT_SA, "bob@example.com", stack.url)


# -- the ledger ---------------------------------------------------------------------------------------


def test_issuances_table_json_and_pages(stack: Stack) -> None:
    ids = []
    for _ in range(2):
        r = stack.run("token", *stack.as_(CI), "--service-account", DEMO_SA, "--lifetime", "120s")
        ids.append(json.loads(r.stdout)["issuance_id"])
    r = stack.run("issuances", *stack.as_(AUDITOR), "--active")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"ID +KIND +STATE +SERVICE ACCOUNT +PRINCIPAL +EXPIRES", lines[0])
    for issuance_id in ids:
        (row,) = [line for line in lines if line.startswith(issuance_id)]
        assert re.search(
            rf"access_token +active +{re.escape(DEMO_SA)} +local-dev/{re.escape(CI)} +\d{{4}}-.* UTC \(in [01]m", row
        ), row
    everything = json.loads(stack.run("issuances", *stack.as_(AUDITOR), "--format", "json").stdout)["issuances"]
    paged = json.loads(stack.run("issuances", *stack.as_(AUDITOR), "--format", "json", "--page-size", "1").stdout)
    assert len(everything) >= 2 and [i["id"] for i in paged["issuances"]] == [i["id"] for i in everything]
    assert not any("access_token" in i or "token" in i for i in everything)
    # a caller who is not an auditor sees only their own
    r = stack.run("issuances", *stack.as_(CI), "--format", "json")
    assert {i["principal"] for i in json.loads(r.stdout)["issuances"]} == {f"local-dev/{CI}"}
    r = stack.run("issuances", *stack.as_(CI), "--principal", REQUESTER)
    assert r.returncode == 4 and "not-an-auditor" in _one_error_line(r)


# -- the README section ---------------------------------------------------------------------------------


def _doc_blocks() -> list[tuple[str, str]]:
    """(environment, bash script) for each console block of README.md, in order."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"<!-- client-doc-test: ([a-z-]+) -->\n```console\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == text.count("```console"), "every console block is tested"
    return [
        (where, "\n".join(line[2:] for line in body.splitlines() if line.startswith("$ "))) for where, body in blocks
    ]


def test_docs_commands_run(stack: Stack, github: tuple[FakeEndpoint, dict[str, str]]) -> None:
    blocks = [b for b in _doc_blocks() if b[0] != "kill-switch"]  # the kill switch's: test_kill_switch_docs_run
    assert [w for w, _ in blocks] == ["github-actions", "local", "local", "local", "local"]
    ports = {"8080": stack.url, "8081": stack.iam.url, "8083": stack.pubsub_url}
    _, gh_env = github
    r = stack.bash(blocks[0][1], gh_env)
    assert r.returncode == 0, r.stderr
    token = _pairs(gh_env["GITHUB_OUTPUT"])["access_token"]
    assert r.stdout.splitlines() == [f"::add-mask::{token}"] and token not in r.stderr
    script = "\n".join(body for _, body in blocks[1:])
    script = re.sub(r"http://127\.0\.0\.1:(8080|8081|8083)", lambda m: ports[m.group(1)], script)
    script += (
        '\ntest "$(cat "$CLOUDSDK_AUTH_ACCESS_TOKEN_FILE")" != ""\necho "TOKEN_FILE=$CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"\n'
    )
    r = stack.bash(script, stack.env())
    assert r.returncode == 0, r.stderr
    token_file = Path(re.search(r"TOKEN_FILE=(.*)", r.stdout).group(1))  # type: ignore[union-attr]
    token = token_file.read_text()
    assert stack.minted(token) and token not in r.stdout + r.stderr
    assert re.search(r"access_token +active +prod-admin@\S+ +local-dev/dave@example\.com", r.stdout), r.stdout
    assert "refused with exit code 7" in r.stdout and "approval-consumed" in r.stderr
    assert '"type":"break_glass.used"' in r.stdout and '"type":"break_glass.activated"' in r.stdout


# -- the kill switch ------------------------------------------------------------------------------------------


def _local_script(body: str, stack: Stack) -> str:
    ports = {"8080": stack.url, "8081": stack.iam.url, "8083": stack.pubsub_url}
    return re.sub(r"http://127\.0\.0\.1:(8080|8081|8083)", lambda m: ports[m.group(1)], body)


def _unkill(stack: Stack, sa: str) -> None:
    """Leave the module's stack as the other tests expect it: the switch record gone, the account enabled."""
    from vending.store.base import Delete
    from vending.store.indexes import KILL_SWITCHES
    from vending.store.sqlite import SqliteStore

    store = SqliteStore(str(stack.home / ".vending-local" / "vending.db"))
    try:
        if store.get(KILL_SWITCHES, sa) is not None:
            store.write([Delete(KILL_SWITCHES, sa)])
    finally:
        store.close()
    requests.post(
        f"{stack.iam.url}/v1/projects/-/serviceAccounts/{sa}:enable",
        json={},
        timeout=5,
        headers={"Authorization": f"Bearer {LOCAL_IAM_TOKEN}"},
    )


def test_kill_switch_docs_run(stack: Stack) -> None:
    """The README's worked example, as written, against the embedded default."""
    blocks = [body for where, body in _doc_blocks() if where == "kill-switch"]
    assert len(blocks) == 2
    try:
        first = stack.bash(_local_script(blocks[0], stack), stack.env())
        second = stack.bash(
            _local_script(
                blocks[0].split("\n")[0]
                + "\nexport SA="
                + DEMO_SA
                + "\n"
                + 'export VENDING_ID_TOKEN_COMMAND=".venv/bin/vending dev-token '
                '--subject oncall@example.com"\n' + blocks[1],
                stack,
            ),
            stack.env(),
        )
    finally:
        _unkill(stack, DEMO_SA)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert re.search(
        rf"{re.escape(DEMO_SA)}: kill switch ENGAGED by local-dev/oncall@example\.com at .*"
        r"[1-9]\d* credential\(s\) revoked; safe to release at \d{4}-.* UTC \(in \d+m\d\ds\); IAM: disabled",
        out,
    ), out  # the leaked token, and any other test's still live
    assert "the leaked token as a bearer: HTTP 401" in out
    assert "vend refused with exit code 4" in out and "target-disabled" in first.stderr
    assert "release refused with exit code 26" in out and "409 release-not-safe: Not safe to release" in first.stderr
    assert second.returncode == 0, second.stderr
    assert re.search(
        rf"{re.escape(DEMO_SA)}: kill switch RELEASED by .* EARLY: credentials issued before", second.stdout
    )
    assert '"old_tokens_valid_again":true' in second.stdout and re.search(r'"valid_again":[1-9]', second.stdout)


def test_kill_switch_errors_and_json(stack: Stack) -> None:
    sa = DEMO_SA
    try:
        # a CI caller is no operator: exit 4; a missing justification: usage, exit 2
        r = stack.run("kill-switch", "engage", sa, *stack.as_(CI), "--justification", "INC-1: x")
        assert r.returncode == 4 and "403 not-a-kill-switch-operator" in _one_error_line(r)
        r = stack.run("kill-switch", "engage", sa, *stack.as_("oncall@example.com"))
        assert r.returncode == 2 and "needs --justification" in _one_error_line(r)
        # an unmanaged account: exit 6; releasing what is not engaged: exit 7
        r = stack.run("kill-switch", "status", "other@local-project.iam.gserviceaccount.com", *stack.as_(AUDITOR))
        assert r.returncode == 6 and "service-account-not-managed" in _one_error_line(r)
        r = stack.run("kill-switch", "release", sa, *stack.as_(AUDITOR), "--justification", "INC-1: x")
        assert r.returncode == 7 and "kill-switch-not-engaged" in _one_error_line(r)
        # status as JSON, before and after an engage with nothing live (safe at once: released without approval)
        r = stack.run("kill-switch", "status", sa, *stack.as_(AUDITOR), "--format", "json")
        assert r.returncode == 0 and json.loads(r.stdout)["state"] == "NOT_ENGAGED"
        assert (
            stack.run("kill-switch", "engage", sa, *stack.as_(AUDITOR), "--justification", "INC-1: x").returncode == 0
        )
        r = stack.run("kill-switch", "release", sa, *stack.as_(AUDITOR), "--justification", "INC-1: x")
        assert r.returncode in (0, 26), r.stderr  # 26 if another test left a token of this account live
    finally:
        _unkill(stack, sa)
