"""The embedded default as a new user meets it: ``vending serve`` (what ``make run`` runs),
then the command it prints, then Ctrl-C stops everything it started."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.net import read_until
from vending import clock

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A checkout-like directory (links to the code) with the example policy on free ports."""
    for name in ("main.py", "vending", ".venv"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "local-iam.yaml").symlink_to(REPO / "config" / "local-iam.yaml")
    return tmp_path


def test_serve_prints_a_command_that_vends_and_ctrl_c_stops_everything(workdir: Path) -> None:
    ports = {"8080": free_port(), "8081": free_port(), "8082": free_port(), "8083": free_port()}
    policy = (REPO / "config" / "example.yaml").read_text()
    policy = re.sub(r"127\.0\.0\.1:(808[0-3])", lambda m: f"127.0.0.1:{ports[m.group(1)]}", policy)
    (workdir / "config" / "example.yaml").write_text(policy)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VENDING_", "FIRESTORE_", "PUBSUB_"))}
    env["PYTHONPATH"] = str(REPO)
    # GIVEN `vending serve` started as `make run` does
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vending",
            "serve",
            "--port",
            str(ports["8080"]),
            "--iam-port",
            str(ports["8081"]),
            "--issuer-port",
            str(ports["8082"]),
            "--pubsub-port",
            str(ports["8083"]),
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = read_until(proc, "Press Ctrl-C to stop.", 60)
        assert "Press Ctrl-C to stop." in output, output
        # WHEN the printed command is run as-is
        command = next(line.strip() for line in output.splitlines() if line.strip().startswith("curl "))
        result = subprocess.run(
            ["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        # THEN it returns a token whose expire_time matches the requested lifetime (600 s)
        body = json.loads(result.stdout)
        assert body["token_type"] == "Bearer" and body["access_token"].startswith("ya29.")
        assert abs((clock.parse_rfc3339(body["expire_time"]) - clock.now()).total_seconds() - 600) <= 5
        assert (workdir / ".vending-local" / "vending.db").exists()
    finally:
        # AND Ctrl-C stops everything it started
        os.killpg(proc.pid, signal.SIGINT) if proc.poll() is None else None
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    for port in ports.values():
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
