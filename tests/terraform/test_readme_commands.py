"""terraform/README.md's commands, run offline where they can be (issue 17, "Done when").

The policy commands run as written against the example policy; the audience
the README, the example policy and the CI examples use is one value; and the
variables the README and the example root name exist in the module.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import textwrap
from pathlib import Path

import yaml

from tests.terraform.test_wiring import REPO, TERRAFORM_DIR, load_terraform

README = TERRAFORM_DIR / "README.md"
POLICY = TERRAFORM_DIR / "examples" / "basic" / "config.yaml"
GITHUB = REPO / "examples" / "github-actions" / "deploy.yml"
GITLAB = REPO / "examples" / "gitlab" / ".gitlab-ci.yml"


def _bash_blocks() -> list[str]:
    """Each bash block as a reader copies it from the rendered page (a list item's indent removed)."""
    blocks = re.findall(r"```bash\n(.*?)^\s*```", README.read_text(encoding="utf-8"), re.S | re.M)
    return [textwrap.dedent(b) for b in blocks]


def _run(block: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = block.replace("/tmp/claims.json", str(tmp_path / "claims.json"))
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_policy_check_command_passes_on_the_example(tmp_path: Path) -> None:
    # GIVEN the README's block that checks the policy (after `make venv`, which the suite has done)
    [block] = [b for b in _bash_blocks() if "vending policy check" in b]
    command = next(line for line in block.splitlines() if "vending policy check" in line).split("#")[0]
    # WHEN it runs as written  THEN exit 0
    result = _run(command, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_policy_explain_command_allows_the_readme_workflow(tmp_path: Path) -> None:
    # GIVEN the README's claims of a workflow on main and its explain command
    [block] = [b for b in _bash_blocks() if "vending policy explain" in b]
    # WHEN it runs as written  THEN the example policy allows it by its CI entitlement
    result = _run(block, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALLOWED by entitlement 'deploy-app'" in result.stdout


def test_one_audience_across_policy_readme_and_ci_examples() -> None:
    # GIVEN the example policy's GitHub issuer audience
    policy = yaml.safe_load(POLICY.read_text(encoding="utf-8"))
    [github] = [i for i in policy["issuers"] if i["name"] == "github"]
    audience = github["audience"]
    assert not audience.startswith("https://"), "the audience is a value of its own, not the service URL"
    # THEN the README asks GitHub for it, and both CI examples use it
    readme = README.read_text(encoding="utf-8")
    assert f"audience={audience}" in readme
    assert f"VENDING_AUDIENCE: {audience}" in readme
    gh = yaml.safe_load(GITHUB.read_text(encoding="utf-8"))
    assert gh["env"]["VENDING_AUDIENCE"] == audience
    gl = yaml.safe_load(GITLAB.read_text(encoding="utf-8"))
    assert gl["variables"]["VENDING_AUDIENCE"] == audience
    assert gl["deploy"]["id_tokens"]["VENDING_ID_TOKEN"]["aud"] == audience
    assert policy["bot_audience"] == audience


def test_the_variables_the_readme_names_exist() -> None:
    # GIVEN the module's variables
    module = load_terraform(TERRAFORM_DIR / "modules" / "token-vending")
    names: set[str] = set()
    for variables in module.variables.values():
        names |= set(variables)
    # THEN every `name = ...` assignment in the README's hcl blocks and example tfvars is one of them
    readme = README.read_text(encoding="utf-8")
    hcl = "\n".join(re.findall(r"```hcl\n(.*?)```", readme, re.S))
    tfvars = (TERRAFORM_DIR / "examples" / "basic" / "terraform.tfvars.example").read_text(encoding="utf-8")
    assigned = set(re.findall(r"(?m)^#?\s*([a-z_]+)\s*=", hcl + "\n" + tfvars))
    assert assigned, hcl
    assert assigned <= names | {"project", "region"}, assigned - names
    # AND the README's table of inputs names real variables
    for name in (
        "bot_service_accounts",
        "bot_publish",
        "bot_self_signing",
        "bot_signer_role",
        "manage_delegation_grants",
    ):
        assert f"`{name}`" in readme and name in names, name


def test_the_readme_shell_blocks_parse() -> None:
    # GIVEN every bash block of the README  THEN bash can parse it (no stray quote or continuation)
    for block in _bash_blocks():
        result = subprocess.run(["bash", "-n", "-c", block], capture_output=True, text=True, check=False)
        assert result.returncode == 0, (block, result.stderr)
        shlex.split(block.replace("\\\n", " "), comments=True)
