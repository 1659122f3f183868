"""chat.tf gives each chat function only what it needs (offline, python-hcl2 like tests/terraform)."""

from __future__ import annotations

import json

import pytest

from tests.terraform.test_wiring import TERRAFORM_DIR, Terraform, _first, load_terraform


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return load_terraform(TERRAFORM_DIR)


def _text(tf: Terraform, block: object, value: object) -> str:
    return tf.expand(block, value)  # type: ignore[arg-type]


def test_only_the_two_apps_may_sign_as_the_bot_and_only_with_signjwt(tf: Terraform) -> None:
    sign = tf.get("google_service_account_iam_member", "chat_apps_sign_as_bot")
    assert sign is not None
    role = tf.expand(sign, sign.body["role"])
    assert "bot_signer" in role and "TokenCreator" not in role
    assert "local.chat_apps" in json.dumps(sign.body["for_each"])
    apps = tf.expand(sign, "local.chat_apps").replace('\\"', '"')
    assert '"google"' in apps and '"slack"' in apps and "notify" not in apps
    # AND no chat account holds Token Creator on anything
    for b in tf.of_type("google_service_account_iam_member"):
        if b.body.get("role") == "roles/iam.serviceAccountTokenCreator":
            assert "chat" not in _text(tf, b, b.body.get("member")), b.address


def test_slack_secrets_are_read_only_by_who_needs_them(tf: Terraform) -> None:
    signing = tf.get("google_secret_manager_secret_iam_member", "chat_slack_reads_signing_secret")
    token = tf.get("google_secret_manager_secret_iam_member", "chat_reads_slack_bot_token")
    assert signing is not None and token is not None
    assert 'local.chat_members["slack"]' in json.dumps(signing.body["member"]).replace('\\"', '"')
    assert '["slack", "notify"]' in json.dumps(token.body["for_each"]).replace('\\"', '"')
    # AND nobody in chat.tf reads the console's session key
    for b in tf.of_type("google_secret_manager_secret_iam_member"):
        if "session_key." in json.dumps(b.body.get("secret_id")):
            assert "chat" not in _text(tf, b, b.body.get("member")), b.address
    # AND no secret value is set through Terraform but the placeholder's (random, signs nothing)
    versions = [v.name for v in tf.of_type("google_secret_manager_secret_version") if "chat" in v.name]
    assert versions == ["chat_session_placeholder"]


def test_the_google_chat_app_gets_no_slack_secret_and_reads_requests_read_only(tf: Terraform) -> None:
    fn = tf.get("google_cloudfunctions2_function", "chat_google_http")
    assert fn is not None
    service = _first(fn.body["service_config"])
    assert "dynamic" not in service and "SLACK" not in json.dumps(service)
    reads = tf.get("google_project_iam_member", "chat_reads_requests")
    assert reads is not None and reads.body["role"] == "roles/datastore.viewer"
    assert '["google", "notify"]' in json.dumps(reads.body["for_each"]).replace('\\"', '"')
    writes = tf.get("google_project_iam_member", "chat_writes_own_records")
    assert writes is not None and "chat_database" in json.dumps(writes.body["condition"])
