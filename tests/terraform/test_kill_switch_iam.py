"""The kill switch's IAM in Terraform: three permissions, on the target accounts only.

Offline, like ``test_wiring`` (python-hcl2, no ``terraform init``): the runtime
account may disable, enable and read exactly the service accounts the policy vends
for, through a custom role that holds those three permissions and nothing else,
bound per account (``google_service_account_iam_member`` with ``for_each``), never
on a project, folder or organization. ``check_kill_switch_iam`` returns the
problems; the broken copies below show each one caught.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.terraform.test_wiring import (
    RESOURCE_LEVEL_IAM,
    TERRAFORM_DIR,
    Terraform,
    _runtime_accounts,
    load_terraform,
)
from vending.iam_admin import KILL_SWITCH_PERMISSIONS

IAM_TF = Path("modules") / "token-vending" / "iam.tf"


def check_kill_switch_iam(tf: Terraform) -> list[str]:
    problems: list[str] = []
    roles = tf.of_type("google_project_iam_custom_role", "google_organization_iam_custom_role")
    kill_roles = [r for r in roles if "iam.serviceAccounts.disable" in json.dumps(r.body.get("permissions"))]
    if len(kill_roles) != 1:
        problems.append(f"want one custom role holding iam.serviceAccounts.disable, found {len(kill_roles)}")
    for role in kill_roles:
        perms = sorted(role.body.get("permissions") or [])
        if perms != sorted(KILL_SWITCH_PERMISSIONS):
            problems.append(f"{role.address}: permissions {perms}, want exactly {sorted(KILL_SWITCH_PERMISSIONS)}")
    runtime = _runtime_accounts(tf)

    def uses_kill_role(block_text: str) -> bool:
        return any(f"{r.type}.{r.name}" in block_text for r in kill_roles) or "var.kill_switch_role" in block_text

    bindings = [b for b in tf.of_type("google_service_account_iam_member") if uses_kill_role(json.dumps(b.body))]
    # The vend function's account always; handle_pubsub's only for bots that may send `disable`
    # (issue 17: one runtime account per function).
    if not any("google_service_account.runtime." in tf.expand(b, b.body.get("member")) for b in bindings):
        problems.append("the kill switch role is not bound to the vend function's (runtime) account")
    if len(bindings) > 2:
        problems.append(f"want at most two kill switch bindings (vend, events), found {len(bindings)}")
    for b in bindings:
        member = tf.expand(b, b.body.get("member"))
        if not any(f"google_service_account.{name}." in member for name in runtime):
            problems.append(f"{b.address}: the kill switch role must go to a function's account, got {member}")
        for_each = str(b.body.get("for_each"))
        if for_each not in (
            "${local.kill_switch_targets}",
            "${local.bots_may_disable ? local.kill_switch_targets : toset([])}",
        ):
            problems.append(f"{b.address}: must be one binding per target (for_each = local.kill_switch_targets)")
        else:
            targets = str(tf.local(b, "kill_switch_targets"))
            if "e.service_account" not in targets or "delegates" in targets:
                problems.append(
                    f"{b.address}: kill_switch_targets must be the entitlements' service accounts "
                    f"(the policy's targets), got {targets}"
                )
    for block in tf.resources:
        if RESOURCE_LEVEL_IAM.match(block.type) and uses_kill_role(json.dumps(block.body)):
            problems.append(f"{block.address}: the kill switch role granted on a {block.type.split('_')[1]}")
    return problems


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return load_terraform(TERRAFORM_DIR)


def test_kill_switch_role_is_three_permissions_bound_per_target(tf: Terraform) -> None:
    # GIVEN the module  WHEN its kill switch IAM is read  THEN nothing is wrong
    assert check_kill_switch_iam(tf) == []


def test_kill_switch_role_ids_are_the_ones_the_client_needs() -> None:
    # GIVEN the IAM client's declared permissions  THEN they are exactly disable, enable, get
    assert sorted(KILL_SWITCH_PERMISSIONS) == [
        "iam.serviceAccounts.disable",
        "iam.serviceAccounts.enable",
        "iam.serviceAccounts.get",
    ]


BROKEN = {
    "extra-permission": ('"iam.serviceAccounts.get",', '"iam.serviceAccounts.get",\n    "iam.serviceAccounts.delete",'),
    "project-wide-binding": (
        'resource "google_service_account_iam_member" "delegation_hop" {',
        (
            'resource "google_project_iam_member" "kill_switch_everywhere" {\n'
            "  project = var.project\n"
            "  role    = google_project_iam_custom_role.kill_switch[0].name\n"
            "  member  = local.runtime_member\n}\n\n"
            'resource "google_service_account_iam_member" "delegation_hop" {'
        ),
    ),
    "delegates-too": (
        "kill_switch_targets = toset([for e in local.entitlements : e.service_account])",
        (
            "kill_switch_targets = toset(flatten([for e in local.entitlements : "
            "concat([e.service_account], e.delegates)]))"
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_copy_is_caught(tmp_path: Path, case: str) -> None:
    # GIVEN a copy of terraform/ with one deliberate breakage
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM_DIR, copy, ignore=shutil.ignore_patterns(".terraform", "build"))
    path = copy / IAM_TF
    old, new = BROKEN[case]
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")
    # WHEN checked  THEN the breakage is named
    problems = check_kill_switch_iam(load_terraform(copy))
    assert problems, case
