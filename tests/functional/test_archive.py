"""The deployed archive holds only what runs in the cloud, and that is enough to serve a vend.

The archive is built as Terraform builds it (``tests/support/archive.py``
reads ``source_include`` / ``source_exclude`` from the module's
``variables.tf``). A subprocess whose ``sys.path`` has the extracted archive
and the installed dependencies, but not this repository, loads ``main.py``
the way Cloud Functions does (functions-framework ``create_app``) and serves
``POST /v1/access-tokens`` against the IAM Credentials stand-in.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

from tests.support.app import CLOUD, DEMO_SA, IAM_TOKEN
from tests.support.archive import REPO, archive_files, build_archive, source_lists
from tests.support.oidc import TestIssuer

# Never in the cloud: the local stand-ins (an IAM stand-in with unauthenticated admin routes,
# the development issuer, the launcher), the client and its dispatcher, tests and benchmarks.
NEVER_SHIPPED = ("vending/local/", "vending/client/", "vending/cli.py", "vending/__main__.py", "tests/", "bench/")

CHILD = r"""
import hashlib, json, os, sys
archive, repo = sys.argv[1], os.path.realpath(sys.argv[2])
sys.path[:] = [archive] + [p for p in sys.path if p and os.path.realpath(p) != repo]
os.chdir(archive)
import functions_framework
app = functions_framework.create_app("vend_http", os.path.join(archive, "main.py"))
token = sys.stdin.read().strip()
client = app.test_client()
resp = client.post(
    "/v1/access-tokens",
    json={"service_account": os.environ["T_SA"], "scopes": [os.environ["T_SCOPE"]], "lifetime": "600s"},
    headers={"Authorization": "Bearer " + token},
)
body = resp.get_json()
minted = body.pop("access_token", None)
health = client.get("/healthz").status_code
import vending.pubsub, vending.sweep  # what handle_pubsub and sweep_expired load
missing = []
for name in ("vending.local", "vending.client", "vending.cli"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        missing.append(name)
loaded = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items()) if n == "main" or n.startswith("vending")}
outside = sorted(n for n, f in loaded.items() if f and not os.path.realpath(f).startswith(os.path.realpath(archive)))
print(json.dumps({
    "status": resp.status_code,
    "body": body,
    "token_sha256": hashlib.sha256(minted.encode()).hexdigest() if minted else None,
    "healthz": health,
    "missing": missing,
    "outside": outside,
}))
"""


def _policy(issuer: TestIssuer) -> str:
    cfg = issuer.issuer_config().model_dump(mode="json")
    policy: dict[str, Any] = {
        "issuers": [cfg],
        "entitlements": [
            {
                "name": "deploy",
                "principals": [{"issuer": cfg["name"], "claims": {"sub": "repo:example/app:ref:refs/heads/main"}}],
                "service_account": DEMO_SA,
                "scopes": [CLOUD],
                "max_lifetime": "15m",
            }
        ],
    }
    return yaml.safe_dump(policy, sort_keys=False)


def test_the_archive_ships_the_runtime_and_nothing_local() -> None:
    # GIVEN the module's include / exclude lists, read from variables.tf
    include, exclude = source_lists()
    assert "vending/**/*.py" in include
    # WHEN the archive's file list is computed as Terraform's fileset() does
    files = archive_files()
    # THEN main.py, the runtime package and the console ship; no stand-in, client, test or bench
    assert {"main.py", "requirements.txt", "vending/vend.py", "vending/wiring.py", "vending/api.py"} <= set(files)
    assert "vending/console/static/index.html" in files
    assert not [f for f in files if f.startswith(NEVER_SHIPPED)], exclude


def test_main_imports_from_the_archive_alone_and_serves_a_vend(standin: Any, tmp_path: Path) -> None:
    with TestIssuer(name="ci", issuer="https://token.actions.example", audience="https://vending.test") as idp:
        # GIVEN the archive Terraform would build, with a policy as config/deployed.yaml, extracted
        zip_path = build_archive(tmp_path / "source.zip", _policy(idp))
        extracted = tmp_path / "srv"
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(extracted)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VENDING_", "PYTHON", "FIRESTORE_", "PUBSUB_"))}
        env.update(
            VENDING_CONFIG="config/deployed.yaml",
            VENDING_STORE=f"sqlite:{tmp_path}/vending.db",
            VENDING_PROJECT="local-project",
            VENDING_IAM_ENDPOINT=standin.url,
            VENDING_IAM_ADMIN_ENDPOINT=standin.url,
            VENDING_IAM_TOKEN=IAM_TOKEN,
            VENDING_KEYS_BASE_URL=standin.url,
            T_SA=DEMO_SA,
            T_SCOPE=CLOUD,
        )
        token = idp.mint(sub="repo:example/app:ref:refs/heads/main")
        # WHEN a fresh interpreter without this repository on sys.path loads main.py from it and vends
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(extracted), str(REPO)],
            input=token,
            capture_output=True,
            text=True,
            env=env,
            cwd=extracted,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # THEN the vend succeeds, every module came from the archive, and the local parts are absent
    assert out["status"] == 200, out
    assert out["body"]["service_account"] == DEMO_SA
    assert out["body"]["expires_in"] == 600
    assert out["token_sha256"] is not None
    assert out["healthz"] == 200
    assert out["outside"] == []
    assert out["missing"] == ["vending.local", "vending.client", "vending.cli"]
    # AND the stand-in minted exactly that token for the vending account
    minted = [hashlib.sha256(m.credential.encode()).hexdigest() for m in standin.minted if m.credential]
    assert out["token_sha256"] in minted
