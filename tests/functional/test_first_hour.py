"""The first hour of a new user, replayed from a fresh copy of the repository (issue 14).

A module-scoped ``git clone`` of this repository in a temporary directory is what a new user
gets: its README blocks run as written (only the ports are rewritten to free ones), from its
root, against ``vending serve`` (what ``make run`` starts) running the copy's code. To stay fast
the copy reuses this checkout's ``.venv`` (a symlink) and runs its own code through
``PYTHONPATH``; ``test_make_run_from_a_fresh_clone`` (marked long) installs for real.

Then the mistakes a new user makes, each with its message: a typo in the policy file, a bad
setting, a busy port, ``vending issuances --format json | head``; and the ways a terminal ends
the launcher (SIGHUP when it is closed, SIGTERM), or a function process that dies.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.support.net import free_ports

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PORTS = ("8080", "8081", "8082", "8083")
FLAGS = {"8080": "--port", "8081": "--iam-port", "8082": "--issuer-port", "8083": "--pubsub-port"}
CI_SUBJECT = "repo:example/app:ref:refs/heads/main"


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Copy:
    """A fresh clone of the repository, its ports, and how to run things in it."""

    root: Path
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)

    def rewrite(self, text: str, ports: dict[str, int] | None = None) -> str:
        """The default ports (8080-8083) of a README block or policy replaced by this copy's."""
        use = ports or self.ports
        return re.sub(r"127\.0\.0\.1:(808[0-3])\b", lambda m: f"127.0.0.1:{use[m.group(1)]}", text)

    def bash(self, script: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.root,
            env={**self.env, **extra},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def serve_argv(self, ports: dict[str, int]) -> list[str]:
        """``vending serve`` as ``make run`` runs it (``.venv/bin/python -m vending serve ARGS``)."""
        return [
            sys.executable,
            "-m",
            "vending",
            "serve",
            *(x for k in DEFAULT_PORTS for x in (FLAGS[k], str(ports[k]))),
        ]

    def policy_for(self, ports: dict[str, int], name: str) -> str:
        """A copy of the example policy for another launcher on ``ports``; its path relative to the root."""
        original = subprocess.run(
            ["git", "show", "HEAD:config/example.yaml"], cwd=self.root, capture_output=True, text=True, check=True
        ).stdout
        (self.root / "config" / name).write_text(self.rewrite(original, ports))
        return f"config/{name}"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Copy:
    base = tmp_path_factory.mktemp("first-hour")
    root = base / "token-vending"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(root)], check=True, timeout=120)
    (root / ".venv").symlink_to(REPO / ".venv")  # the copy's code, this checkout's installed packages
    (base / "run").mkdir(mode=0o700)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VENDING_", "FIRESTORE_", "PUBSUB_", "GITHUB_", "ACTIONS_"))
    }
    env.update(PYTHONPATH=str(root), XDG_RUNTIME_DIR=str(base / "run"))
    copy = Copy(root, env, dict(zip(DEFAULT_PORTS, free_ports(4), strict=True)))
    policy = root / "config" / "example.yaml"
    policy.write_text(copy.rewrite(policy.read_text()))
    return copy


class Launcher:
    """``vending serve`` in a process of its own, its output collected line by line."""

    def __init__(self, copy: Copy, ports: dict[str, int], **env: str) -> None:
        self.ports = ports
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            copy.serve_argv(ports),
            cwd=copy.root,
            env={**copy.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("Press Ctrl-C to stop."):
                self.ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            assert self.proc.poll() is None, self.output
            assert time.monotonic() < deadline, self.output

    def processes(self) -> list[psutil.Process]:
        """The launcher and every process it started (function processes and their workers)."""
        me = psutil.Process(self.proc.pid)
        groups = [psutil.Process(c.pid) for c in me.children()]
        return [me, *groups, *(p for g in groups for p in g.children(recursive=True))]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                raise


@pytest.fixture(scope="module")
def served(fresh: Copy) -> Iterator[Launcher]:
    launcher = Launcher(fresh, fresh.ports)
    try:
        launcher.wait_ready()
        yield launcher
    finally:
        launcher.stop()


def _readme_blocks(copy: Copy, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (copy.root / "README.md").read_text(), re.DOTALL)


def _gone(processes: list[psutil.Process]) -> bool:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return not alive


# -- the README as written ---------------------------------------------------------------------


def test_the_readme_calls_the_client_one_way_and_saves_no_credential(fresh: Copy) -> None:
    text = (fresh.root / "README.md").read_text()
    blocks = re.findall(r"(<!-- client-doc-test: ([a-z-]+) -->\n)?```(?:console|bash|sh)\n(.*?)```", text, re.DOTALL)
    assert blocks
    for _, where, body in blocks:
        # THEN no block writes a credential into the working tree
        assert "| tee" not in body and "--output" not in body and "> " not in body.replace("2> ", ""), body
        # AND every block but the GitHub Actions step (where pip put `vending` on PATH) calls .venv/bin/vending
        assert "python -m vending" not in body, body
        if where != "github-actions":
            bare = [line for line in body.splitlines() if re.search(r"(^|\$ |\$\(|\" )vending ", line)]
            assert not bare, bare
        # AND an id captured from the client stops the block loudly when it is empty
        for name in re.findall(r"(?m)^\$? ?([A-Z_]+)=\$\(\.venv/bin/vending request", body):
            assert f'"${{{name}:?' in body, (name, body)


def test_quick_start_and_credential_blocks_run_as_written(fresh: Copy, served: Launcher) -> None:
    # GIVEN the service the launcher started  WHEN the command it printed runs as-is
    printed = next(line.strip() for line in served.output.splitlines() if line.strip().startswith("curl "))
    assert "$(.venv/bin/vending dev-token" in printed
    r = fresh.bash(printed)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["access_token"].startswith("ya29.") and first["expires_in"] == 600
    # AND the README's quick-start block and its three credential blocks run as written
    quick = next(b for b in _readme_blocks(fresh, "bash") if "/v1/access-tokens" in b and "sleep" not in b)
    kinds = [b for b in _readme_blocks(fresh, "sh") if "curl -s -X POST" in b]
    assert len(kinds) == 3
    secrets = [first["access_token"]]
    for block, field_name in (
        (quick, "access_token"),
        (kinds[0], "id_token"),
        (kinds[1], "signed_jwt"),
        (kinds[2], "signed_blob"),
    ):
        r = fresh.bash(fresh.rewrite(block))
        assert r.returncode == 0, (block, r.stderr)
        body = json.loads(r.stdout)
        assert body.get(field_name), body
        secrets.append(body[field_name])
        if field_name == "access_token":
            assert body["expires_in"] == 600  # "lifetime": "600s"
    # THEN nothing new is in the working tree but ignored local state, and no file there holds a credential
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=fresh.root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    ours = (" M config/", "?? config/", "?? .venv")  # the rewritten ports, the other policies, the .venv link
    assert all(line.startswith(ours) for line in status), status
    for path in fresh.root.rglob("*"):
        if ".git" in path.parts or not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        assert not any(s.encode() in data for s in secrets), path


# -- the mistakes ---------------------------------------------------------------------------------


def test_a_policy_typo_is_one_line_with_file_line_column_name_and_did_you_mean(fresh: Copy) -> None:
    # GIVEN the policy with max_lifetime misspelt in demo-deploy
    ports = dict(zip(DEFAULT_PORTS, free_ports(4), strict=True))
    path = fresh.policy_for(ports, "typo.yaml")
    text = (fresh.root / path).read_text()
    assert "    max_lifetime: 900s\n" in text
    (fresh.root / path).write_text(text.replace("    max_lifetime: 900s\n", "    max_lifetme: 900s\n", 1))
    line = next(n for n, t in enumerate((fresh.root / path).read_text().splitlines(), 1) if "max_lifetme" in t)
    expected = f"{path}:{line}:5: entitlement 'demo-deploy': unknown key 'max_lifetme' (did you mean 'max_lifetime'?)\n"
    # WHEN the service is started, and when a caller token is asked for
    start = time.monotonic()
    serve = subprocess.run(
        fresh.serve_argv(ports),
        cwd=fresh.root,
        env={**fresh.env, "VENDING_CONFIG": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - start
    token = fresh.bash(f".venv/bin/vending dev-token --subject {CI_SUBJECT}", VENDING_CONFIG=path)
    # THEN each says it in one line, printed once, exit 2, at once, and nothing was started
    for r in (serve, token):
        assert (r.returncode, r.stderr, r.stdout) == (2, expected, ""), r
    assert elapsed < 20
    assert not any(listening(p) for p in ports.values())


def test_a_bad_setting_is_one_line_printed_once_and_nothing_starts(fresh: Copy) -> None:
    ports = dict(zip(DEFAULT_PORTS, free_ports(4), strict=True))
    path = fresh.policy_for(ports, "setting.yaml")
    start = time.monotonic()
    r = subprocess.run(
        fresh.serve_argv(ports),
        cwd=fresh.root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**fresh.env, "VENDING_CONFIG": path, "VENDING_IAM_TIMEOUT": "soon"},
        check=False,
    )
    assert (r.returncode, r.stderr, r.stdout) == (2, "VENDING_IAM_TIMEOUT: 'soon' is not a number\n", "")
    assert time.monotonic() - start < 20  # no wait for a service that will never answer
    assert not any(listening(p) for p in ports.values())


@pytest.mark.parametrize("default", DEFAULT_PORTS)
def test_a_busy_port_is_named_with_the_flag_that_moves_it(fresh: Copy, default: str) -> None:
    # GIVEN another program listening on one of the four ports (a second `make run`, say)
    ports = dict(zip(DEFAULT_PORTS, free_ports(4), strict=True))
    path = fresh.policy_for(ports, f"busy-{default}.yaml")
    with socket.socket() as other:
        other.bind(("127.0.0.1", ports[default]))
        other.listen()
        # WHEN the service is started
        r = subprocess.run(
            fresh.serve_argv(ports),
            cwd=fresh.root,
            env={**fresh.env, "VENDING_CONFIG": path},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    # THEN it says which port, which flag moves it, and how; nothing else was started
    flag = FLAGS[default]
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"vending serve: port {ports[default]} ({flag}) is already in use"), r.stderr
    assert re.search(rf'make run ARGS="{flag} \d+"', r.stderr) and len(r.stderr.splitlines()) == 2, r.stderr
    assert not any(listening(p) for k, p in ports.items() if k != default)


def test_issuances_json_into_head_ends_without_a_traceback(fresh: Copy, served: Launcher) -> None:
    # GIVEN a few issuances on the service
    url = f"http://127.0.0.1:{fresh.ports['8080']}"
    env = {"VENDING_URL": url}
    for _ in range(3):
        r = fresh.bash(
            ".venv/bin/vending token --service-account demo-deployer@local-project.iam.gserviceaccount.com "
            f"--id-token-command '.venv/bin/vending dev-token --subject {CI_SUBJECT}'",
            **env,
        )
        assert r.returncode == 0, r.stderr
    auditor = "--id-token-command '.venv/bin/vending dev-token --subject auditor@example.com'"

    # WHEN the listing goes into `head`, and into a reader that closes at once
    def shell(script: str) -> subprocess.CompletedProcess[str]:  # as typed at a prompt: no pipefail
        return subprocess.run(
            ["bash", "-c", script],
            cwd=fresh.root,
            env={**fresh.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    head = shell(f".venv/bin/vending issuances --format json {auditor} | head -n 2")
    closed = shell(f'.venv/bin/vending issuances --format json {auditor} | :; echo "exit ${{PIPESTATUS[0]}}"')
    # THEN no traceback, no "Exception ignored"; a closed pipe ends the client like SIGPIPE would (141)
    assert head.returncode == 0 and head.stdout.startswith('{\n  "issuances": ['), head.stderr
    for r in (head, closed):
        assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr and "Exception" not in r.stderr, r.stderr
    assert closed.stdout.strip() == "exit 141", closed


# -- how it ends ------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_closing_the_terminal_or_a_kill_stops_every_process(fresh: Copy, signum: int) -> None:
    # GIVEN a launcher that is up (its own ports and policy)
    ports = dict(zip(DEFAULT_PORTS, free_ports(4), strict=True))
    launcher = Launcher(fresh, ports, VENDING_CONFIG=fresh.policy_for(ports, f"signal-{signum}.yaml"))
    try:
        launcher.wait_ready()
        processes = launcher.processes()
        assert len(processes) >= 3 and all(listening(p) for p in ports.values())
        # WHEN the terminal is closed (SIGHUP to the launcher), or it is killed (SIGTERM)
        os.kill(launcher.proc.pid, signum)
        code = launcher.proc.wait(timeout=30)
    finally:
        launcher.stop()
    # THEN every process it started has stopped and nothing listens on its ports
    assert code == 0, launcher.output
    deadline = time.monotonic() + 10
    while not _gone(processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(processes)
    assert not any(listening(p) for p in ports.values())


def test_a_function_process_that_dies_stops_the_launcher_at_once(fresh: Copy) -> None:
    ports = dict(zip(DEFAULT_PORTS, free_ports(4), strict=True))
    launcher = Launcher(fresh, ports, VENDING_CONFIG=fresh.policy_for(ports, "child-dies.yaml"))
    try:
        launcher.wait_ready()
        processes = launcher.processes()
        vend_http = next(
            p
            for p in psutil.Process(launcher.proc.pid).children()
            if any(c.laddr.port == ports["8080"] for c in p.net_connections(kind="tcp"))
        )
        # WHEN the vend_http function process dies
        os.killpg(vend_http.pid, signal.SIGKILL)
        start = time.monotonic()
        code = launcher.proc.wait(timeout=30)
        stopped_in = time.monotonic() - start
    finally:
        launcher.stop()
    # THEN the launcher says so, stops everything else and exits 1, within seconds
    assert code == 1 and "the vend_http function process exited" in launcher.output, launcher.output
    assert stopped_in < 15
    deadline = time.monotonic() + 10
    while not _gone(processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(processes) and not any(listening(p) for p in ports.values())


# -- make run, for real -------------------------------------------------------------------------------


@pytest.mark.long
def test_make_run_from_a_fresh_clone(tmp_path: Path) -> None:
    """Clone to first token with `make run` installing for real: the runtime only, in seconds."""
    root = tmp_path / "token-vending"
    ports = dict(zip(DEFAULT_PORTS, free_ports(4), strict=True))
    copy = Copy(
        root,
        {k: v for k, v in os.environ.items() if not k.startswith(("VENDING_", "PYTHONPATH", "VIRTUAL_ENV"))},
        ports,
    )
    start = time.monotonic()
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(root)], check=True, timeout=120)
    policy = root / "config" / "example.yaml"
    policy.write_text(copy.rewrite(policy.read_text()))
    args = " ".join(x for k in DEFAULT_PORTS for x in (FLAGS[k], str(ports[k])))
    proc = subprocess.Popen(
        ["make", "run", f"ARGS={args}"],
        cwd=root,
        env=copy.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output += line
            if line.startswith("Press Ctrl-C to stop."):
                break
        ready = time.monotonic() - start
        printed = next(line.strip() for line in output.splitlines() if line.strip().startswith("curl "))
        r = copy.bash(printed)
        first_token = time.monotonic() - start
        assert r.returncode == 0 and json.loads(r.stdout)["access_token"], (output, r.stderr)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    print(f"\nclone to first token: {first_token:.1f} s (service ready after {ready:.1f} s)")
    bin_dir = root / ".venv" / "bin"
    # THEN the runtime and the client are installed, the dev toolchain is not
    assert (bin_dir / "vending").exists() and (bin_dir / "functions-framework").exists()
    assert not [t for t in ("pytest", "ruff", "mypy", "schemathesis") if (bin_dir / t).exists()]
    assert first_token < 120, f"clone to first token took {first_token:.0f} s"
