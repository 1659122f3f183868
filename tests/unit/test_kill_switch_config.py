"""The kill switch's configuration: the policy's ``kill_switch`` section and ``VENDING_IAM_ADMIN_ENDPOINT``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vending.config import Bot, Policy, load_settings
from vending.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "example.yaml"


def example() -> dict[str, Any]:
    return dict(yaml.safe_load(EXAMPLE.read_text()))


def second_issuer(data: dict[str, Any]) -> dict[str, Any]:
    data["issuers"].append(
        {
            "name": "gitlab",
            "issuer": "https://gitlab.example",
            "audience": "x",
            "jwks_uri": "https://gitlab.example/jwks",
        }
    )
    data["groups"] = {k: [f"local-dev/{m}" for m in v] for k, v in data["groups"].items()}
    data["auditors"] = [a if a.startswith("group:") else f"local-dev/{a}" for a in data["auditors"]]
    data["bots"][0]["actor_issuer"] = "local-dev"
    return data


def test_the_example_policy_names_operators_and_a_quorum() -> None:
    # GIVEN config/example.yaml  WHEN loaded  THEN on-call operates the switch, auditors too, 2 of 3 approve
    policy = Policy.model_validate(example())
    assert policy.kill_switch is not None and policy.kill_switch.quorum == 2
    assert policy.is_kill_switch_operator("local-dev/oncall@example.com")
    assert policy.is_kill_switch_operator("local-dev/auditor@example.com")
    assert not policy.is_kill_switch_operator("local-dev/alice@example.com")
    assert policy.target_service_accounts == {
        "demo-deployer@local-project.iam.gserviceaccount.com",
        "prod-admin@local-project.iam.gserviceaccount.com",
    }


def test_without_a_section_only_auditors_operate() -> None:
    data = example()
    del data["kill_switch"]
    policy = Policy.model_validate(data)
    assert policy.is_kill_switch_operator("local-dev/auditor@example.com")
    assert not policy.is_kill_switch_operator("local-dev/alice@example.com")
    assert policy.kill_switch_operator_set == frozenset()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ks: ks.update(operators=["group:nobody"]), "unknown group 'group:nobody'"),
        (lambda ks: ks.update(approvers=["bob@example.com"], quorum=2), "needs at least 2 distinct approvers"),
        (lambda ks: ks.update(quorum=0), "greater than or equal to 1"),
        (lambda ks: ks.update(release_window="13h"), "less than or equal to 43200"),
        (lambda ks: ks.update(surprise=True), "Extra inputs are not permitted"),
    ],
)
def test_a_bad_section_is_refused(change: Any, message: str) -> None:
    data = example()
    change(data["kill_switch"])
    with pytest.raises(ValueError) as info:
        Policy.model_validate(data)
    assert message in str(info.value)


def test_operators_are_issuer_qualified_when_two_issuers_could_say_them() -> None:
    # GIVEN two issuers  WHEN an operator is bare  THEN refused, naming the fix; qualified, accepted
    data = second_issuer(example())
    data["kill_switch"]["operators"] = ["dana@example.com"]
    with pytest.raises(ValueError) as info:
        Policy.model_validate(data)
    assert "kill_switch.operators" in str(info.value) and "ISSUER/IDENTITY" in str(info.value)
    data["kill_switch"]["operators"] = ["gitlab/dana@example.com"]
    policy = Policy.model_validate(data)
    assert policy.is_kill_switch_operator("gitlab/dana@example.com")
    assert not policy.is_kill_switch_operator("local-dev/dana@example.com")


def test_disable_is_never_a_default_bot_action() -> None:
    assert "disable" not in Bot(service_account="b@p.iam.gserviceaccount.com").actions


@pytest.mark.parametrize(
    "value",
    [
        "http://evil.example",
        "http://127.0.0.1.evil.example",
        "ftp://127.0.0.1",
        "https://user:pw@iam.example",
        "https://iam.example/?x=1",
        "not a url",
    ],
)
def test_the_admin_endpoint_is_https_or_loopback(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("VENDING_CONFIG", str(EXAMPLE))
    monkeypatch.setenv("VENDING_IAM_ADMIN_ENDPOINT", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "VENDING_IAM_ADMIN_ENDPOINT" in info.value.message


def test_the_admin_endpoint_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENDING_CONFIG", str(EXAMPLE))
    for name in ("VENDING_IAM_ADMIN_ENDPOINT", "VENDING_IAM_TOKEN", "VENDING_IAM_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().iam_admin_endpoint == "https://iam.googleapis.com"
    # the local stand-in (a static token) answers both APIs: the admin endpoint follows the IAM endpoint
    monkeypatch.setenv("VENDING_IAM_TOKEN", "local")
    monkeypatch.setenv("VENDING_IAM_ENDPOINT", "http://127.0.0.1:8081")
    assert load_settings().iam_admin_endpoint == "http://127.0.0.1:8081"
    monkeypatch.setenv("VENDING_IAM_ADMIN_ENDPOINT", "http://[::1]:9/")
    assert load_settings().iam_admin_endpoint == "http://[::1]:9"
    # a static token is never sent to the real IAM API
    monkeypatch.setenv("VENDING_IAM_ADMIN_ENDPOINT", "https://iam.googleapis.com")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "VENDING_IAM_TOKEN" in info.value.message
