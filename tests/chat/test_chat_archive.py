"""The chat functions run from the deployed archive alone (which ships neither ``vending/client``
nor ``vending/local``): a fresh interpreter with only the archive loads each chat entry point the
way Cloud Functions does, and a Slack request reaches its verification."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.archive import REPO, build_archive

CHILD = r"""
import json, os, sys
archive, repo = sys.argv[1], os.path.realpath(sys.argv[2])
sys.path[:] = [archive] + [p for p in sys.path if p and os.path.realpath(p) != repo]
os.chdir(archive)
import functions_framework
apps = {t: functions_framework.create_app(t, os.path.join(archive, "main.py")) for t in
        ("chat_google_http", "chat_slack_http", "chat_notify")}
slack = apps["chat_slack_http"].test_client().post(
    "/", data="payload=%7B%7D", headers={"X-Slack-Request-Timestamp": "1", "X-Slack-Signature": "v0=00"})
google = apps["chat_google_http"].test_client().post("/", json={}, headers={"Authorization": "Bearer a.b.c"})
import vending.chat.core, vending.chat.google_chat, vending.chat.slack, vending.chat.notifier, vending.chat.wiring
loaded = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items()) if n == "main" or n.startswith("vending")}
outside = sorted(n for n, f in loaded.items() if f and not os.path.realpath(f).startswith(os.path.realpath(archive)))
print(json.dumps({"slack": [slack.status_code, slack.get_json()["error"]["reason"]],
                  "google": [google.status_code, google.get_json()["error"]["reason"]],
                  "outside": outside,
                  "local": sorted(n for n in loaded if n.startswith(("vending.local", "vending.client")))}))
"""

POLICY = """
issuers:
  - name: google
    issuer: https://accounts.google.com
    jwks_uri: https://www.googleapis.com/oauth2/v3/certs
    audience: https://vending.example
bots:
  - service_account: chatops-bot@p.iam.gserviceaccount.com
entitlements: []
"""


def test_the_chat_entry_points_load_from_the_archive_alone(tmp_path: Path) -> None:
    zip_path = build_archive(tmp_path / "source.zip", POLICY)
    extracted = tmp_path / "srv"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(extracted)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VENDING_", "CHATOPS_", "PYTHON"))}
    env.update(
        VENDING_CONFIG="config/deployed.yaml",
        VENDING_STORE=f"sqlite:{tmp_path}/vending.db",
        VENDING_PROJECT="p",
        CHATOPS_APPROVALS_TOPIC="projects/p/topics/approvals",
        CHATOPS_GOOGLE_AUDIENCE="123456789012",
        CHATOPS_GOOGLE_JWKS_URI="http://127.0.0.1:9/jwks",
        CHATOPS_SLACK_SIGNING_SECRET="test-signing-secret-0123456789",
        CHATOPS_SLACK_BOT_TOKEN="xoxb-test",
        CHATOPS_STORE=f"sqlite:{tmp_path}/chat.db",
    )
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(extracted), str(REPO)],
        capture_output=True,
        text=True,
        env=env,
        cwd=extracted,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["slack"] == [401, "stale-request"]
    assert out["google"] == [401, "malformed-token"]
    assert out["outside"] == [] and out["local"] == []


def test_no_chat_module_imports_what_the_archive_leaves_out() -> None:
    import ast

    for path in sorted((REPO / "vending" / "chat").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad = [n for n in names if n.startswith(("vending.client", "vending.local", "vending.cli"))]
            assert not bad, f"{path.name} imports {bad}: not in the functions' archive"
            if isinstance(node, ast.ImportFrom) and node.module == "vending":
                assert not {a.name for a in node.names} & {"client", "local", "cli"}, path.name
