"""The offline chat-ops loop of docs/chatops.md, run as written: ``python -m vending.local.chat serve``
(what ``make run-chat`` runs) on free ports in a checkout-like directory, then the document's
blocks (only the ports are rewritten): request -> cards -> two clicks (Slack, Google Chat) ->
ACTIVE -> token -> every card updated. Then Ctrl-C stops everything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.net import free_ports, read_until

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "chatops.md"
FLAGS = {
    "8080": "--port",
    "8081": "--iam-port",
    "8082": "--issuer-port",
    "8083": "--pubsub-port",
    "8084": "--slack-port",
    "8085": "--google-chat-port",
    "8086": "--notifier-port",
    "8087": "--workspace-port",
}


def doc_blocks(name: str) -> list[str]:
    text = DOC.read_text()
    return re.findall(rf"<!-- chatops-doc-test: {name} -->\n```console\n(.*?)```", text, re.DOTALL)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("main.py", "vending", ".venv"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "local-iam.yaml").symlink_to(REPO / "config" / "local-iam.yaml")
    return tmp_path


def test_the_offline_loop_runs_as_written(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    ports = dict(zip(FLAGS, free_ports(len(FLAGS)), strict=True))

    def rewrite(text: str) -> str:
        return re.sub(r"127\.0\.0\.1:(808[0-7])", lambda m: f"127.0.0.1:{ports[m.group(1)]}", text)

    (workdir / "config" / "example.yaml").write_text(rewrite((REPO / "config" / "example.yaml").read_text()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VENDING_", "FIRESTORE_", "PUBSUB_"))}
    env["PYTHONPATH"] = str(REPO)
    env["XDG_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("xdg"))
    # GIVEN `make run-chat` (python -m vending.local.chat serve) on free ports
    argv = [sys.executable, "-m", "vending.local.chat", "serve"]
    for default, flag in FLAGS.items():
        argv += [flag, str(ports[default])]
    proc = subprocess.Popen(
        argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output = read_until(proc, "Press Ctrl-C to stop.", 90)
        assert "Press Ctrl-C to stop." in output, output
        assert f"Slack app (interactivity) http://127.0.0.1:{ports['8084']}" in output
        # WHEN the document's blocks run as written, in one shell (they share $ACCESS_REQUEST)
        blocks = doc_blocks("offline-loop")
        assert len(blocks) == 2
        script = "\n".join(line.removeprefix("$ ") for block in blocks for line in block.splitlines())
        result = subprocess.run(
            ["bash", "-e", "-c", rewrite(script)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        # THEN every step succeeded
        assert result.returncode == 0, (result.stdout, result.stderr, output)
        out = result.stdout
        # AND the cards arrived (3 approvers x 2 platforms), two clicks went out, the request became ACTIVE
        first_cards = out.split("slack: alice@example.com clicked approve")[0]
        assert first_cards.count("state: APPROVAL_AWAITED") == 6, out
        assert "slack: alice@example.com clicked approve" in out
        assert "google-chat: bob@example.com clicked approve" in out
        assert "\nACTIVE\n" in f"\n{out}"
        # AND the last cards show both approvals and the spent use, on every platform
        last = out.rsplit("google-chat: bob@example.com clicked approve", 1)[1]
        assert last.count("uses: 1/1") == 6, out
        assert last.count("approvals: 2/2 (alice@example.com, bob@example.com)") == 6, out
        # AND the token went to a 0600 file outside the tree, not to the terminal
        assert "ya29." not in out + result.stderr
        token_file = Path(env["XDG_RUNTIME_DIR"]) / "vending" / "access-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
    finally:
        # AND Ctrl-C stops everything it started
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    for port in ports.values():
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
