"""Least privilege in Terraform (issue 17, item 1): one runtime account per function.

Offline, like ``test_wiring`` (python-hcl2). Only the vend function's account
holds Token Creator on targets and reads the console session key; each function
runs as its own account; the functions are built by the module's build
account into the module's repository; bots publish on the approvals topic and
sign with ``iam.serviceAccounts.signJwt`` on their own account only. Each
``check_*`` returns problems; the broken copies show each one caught.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.terraform.test_wiring import TERRAFORM_DIR, Block, Terraform, _first, _ref, load_terraform

IAM_TF = Path("modules") / "token-vending" / "iam.tf"
MAIN_TF = Path("modules") / "token-vending" / "main.tf"
CORE_FUNCTIONS = {"vend_http": "runtime", "handle_pubsub": "events", "sweep_expired": "sweep"}
TOKEN_CREATOR = "roles/iam.serviceAccountTokenCreator"


def _functions(tf: Terraform) -> dict[str, Block]:
    out = {}
    for fn in tf.of_type("google_cloudfunctions2_function"):
        entry = _first(fn.body.get("build_config")).get("entry_point")
        if entry in CORE_FUNCTIONS:
            out[str(entry)] = fn
    return out


def check_function_accounts(tf: Terraform) -> list[str]:
    """Each core function runs as its own account; each is built by the build account."""
    problems: list[str] = []
    fns = _functions(tf)
    seen: dict[str, str] = {}
    for entry, want in CORE_FUNCTIONS.items():
        fn = fns.get(entry)
        if fn is None:
            problems.append(f"no function for {entry}")
            continue
        sa = _ref(_first(fn.body.get("service_config")).get("service_account_email"), "google_service_account")
        if sa != want:
            problems.append(f"{fn.address}: runs as google_service_account.{sa}, want {want}")
        if sa in seen:
            problems.append(f"{fn.address}: shares its account with {seen[sa]}")
        seen[str(sa)] = entry
        build = _first(fn.body.get("build_config"))
        if _ref(build.get("service_account"), "google_service_account") != "build":
            problems.append(f"{fn.address}: build_config.service_account must be google_service_account.build")
        if "google_artifact_registry_repository." not in str(build.get("docker_repository")):
            problems.append(f"{fn.address}: build_config.docker_repository must be the module's repository")
    return problems


def check_token_creator_holders(tf: Terraform) -> list[str]:
    """Token Creator: the vend account on targets, delegation hops, the Pub/Sub agent on the trigger; nobody else."""
    problems: list[str] = []
    for b in tf.of_type("google_service_account_iam_member", "google_service_account_iam_binding"):
        if b.body.get("role") != TOKEN_CREATOR:
            continue
        member = tf.expand(b, b.body.get("member", b.body.get("members")))
        if b.name in ("delegation_hop", "pubsub_agent_mints_trigger_tokens"):
            continue
        raw = str(b.body.get("member", b.body.get("members")))
        other = any(f"function_members.{k}" in raw for k in ("events", "sweep"))
        if other or "google_service_account.runtime." not in member:
            problems.append(f"{b.address}: Token Creator for {raw}; only the vend function's account holds it")
    return problems


def check_secret_readers(tf: Terraform) -> list[str]:
    """Who reads the console session key: the vend function's account alone (the chat apps' Slack
    secrets and their placeholder key are checked in tests/chat/test_chat_terraform.py)."""
    problems: list[str] = []
    for b in tf.of_type("google_secret_manager_secret_iam_member", "google_secret_manager_secret_iam_binding"):
        if "google_secret_manager_secret.session_key." not in json.dumps(b.body.get("secret_id")):
            continue
        member = tf.expand(b, b.body.get("member", b.body.get("members")))
        if "google_service_account.runtime." not in member:
            problems.append(f"{b.address}: the session key is read by {member}; only the vend function reads it")
    return problems


def check_bots(tf: Terraform) -> list[str]:
    problems: list[str] = []
    publish = tf.get("google_pubsub_topic_iam_member", "bot_publishes_approvals")
    if publish is None or "google_pubsub_topic.approvals" not in json.dumps(publish.body):
        problems.append("bots need roles/pubsub.publisher on the approvals topic (bot_publishes_approvals)")
    elif publish.body.get("role") != "roles/pubsub.publisher":
        problems.append(f"{publish.address}: role {publish.body.get('role')}, want roles/pubsub.publisher")
    roles = [
        r
        for r in tf.of_type("google_project_iam_custom_role")
        if "iam.serviceAccounts.signJwt" in json.dumps(r.body.get("permissions"))
    ]
    if [r.body.get("permissions") for r in roles] != [["iam.serviceAccounts.signJwt"]]:
        problems.append(f"want one bot signer role with exactly iam.serviceAccounts.signJwt, got {roles}")
    sign = tf.get("google_service_account_iam_member", "bot_signs_itself")
    if sign is None:
        problems.append("bots need signJwt on their own account (bot_signs_itself)")
    else:
        if "each.value" not in str(sign.body.get("member")) or "each.value" not in str(
            sign.body.get("service_account_id")
        ):
            problems.append(f"{sign.address}: each bot signs as itself, on itself only")
        if sign.body.get("role") == TOKEN_CREATOR:
            problems.append(f"{sign.address}: Token Creator is more than signJwt")
    return problems


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return load_terraform(TERRAFORM_DIR)


def test_each_function_runs_as_its_own_account_built_by_the_build_account(tf: Terraform) -> None:
    assert check_function_accounts(tf) == []


def test_only_the_vend_function_holds_token_creator(tf: Terraform) -> None:
    assert check_token_creator_holders(tf) == []


def test_only_the_vend_function_reads_the_session_key(tf: Terraform) -> None:
    assert check_secret_readers(tf) == []


def test_bots_publish_approvals_and_sign_as_themselves_only(tf: Terraform) -> None:
    assert check_bots(tf) == []


BROKEN = {
    "sweep-as-runtime": (
        MAIN_TF,
        "service_account_email          = google_service_account.sweep.email",
        "service_account_email          = google_service_account.runtime.email",
        check_function_accounts,
    ),
    "default-build-account": (
        MAIN_TF,
        "    entry_point = \"handle_pubsub\"\n    # Built by the module's build account into the module's repository (iam.tf).\n"
        "    service_account   = google_service_account.build.id\n",
        '    entry_point = "handle_pubsub"\n',
        check_function_accounts,
    ),
    "events-token-creator": (
        IAM_TF,
        'resource "google_service_account_iam_member" "delegation_hop" {',
        'resource "google_service_account_iam_member" "events_tc" {\n'
        "  for_each           = local.token_creator_targets\n"
        '  service_account_id = "projects/p/serviceAccounts/${each.value}"\n'
        '  role               = "roles/iam.serviceAccountTokenCreator"\n'
        "  member             = local.function_members.events\n}\n\n"
        'resource "google_service_account_iam_member" "delegation_hop" {',
        check_token_creator_holders,
    ),
    "bot-token-creator": (
        IAM_TF,
        "  role               = coalesce(var.bot_signer_role, try(google_project_iam_custom_role.bot_signer[0].name, null))",
        '  role               = "roles/iam.serviceAccountTokenCreator"',
        check_bots,
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_copy_is_caught(tmp_path: Path, case: str) -> None:
    # GIVEN a copy of terraform/ with one deliberate breakage
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM_DIR, copy, ignore=shutil.ignore_patterns(".terraform", "build"))
    rel, old, new, check = BROKEN[case]
    path = copy / rel
    text = path.read_text(encoding="utf-8")
    assert old in text, case
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    # WHEN checked  THEN the breakage is named
    assert check(load_terraform(copy)), case
