"""Settings and policy validation: fail fast at cold start, naming the file and the field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vending import config
from vending.config import load_policy, load_settings
from vending.errors import ConfigError

EXAMPLE = Path("config/example.yaml")


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_configuration_is_valid() -> None:
    policy = load_policy(EXAMPLE)
    demo = policy.entitlement("demo-deploy")
    assert demo is not None and demo.max_lifetime == 900
    assert demo.service_account == "demo-deployer@local-project.iam.gserviceaccount.com"


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d["entitlements"][0].update(max_lifetime="3601s"), "entitlements[0]"),
    (lambda d: d["entitlements"][0].update(max_lifetime=43201, lifetime_extension=True), "entitlements[0]"),
    (lambda d: d["entitlements"][0].update(service_account="not-an-email"), "entitlements[0].service_account"),
    (lambda d: d["entitlements"][0].update(colour="blue"), "entitlements[0].colour"),
    (lambda d: d["issuers"][0].update(algorithms=["HS256"]), "issuers[0].algorithms"),
    (lambda d: d["issuers"][0].update(algorithms=["none"]), "issuers[0].algorithms"),
    (lambda d: d["entitlements"][0]["principals"][0].update(issuer="nope"), "(top level)"),
    (lambda d: d["entitlements"][0].update(delegates=["bogus"]), "entitlements[0].delegates"),
    (lambda d: d["entitlements"][1]["approval"].update(approvers=["group:missing"]), "(top level)"),
    (lambda d: d["entitlements"][2]["approval"].pop("justification_pattern"), "entitlements[2].approval"),
    (lambda d: d["entitlements"][0].update(max_lifetime="ten minutes"), "entitlements[0].max_lifetime"),
])
def test_bad_policy_names_file_and_field(tmp_path: Path, mutate, field: str) -> None:
    # GIVEN the example policy with one bad field
    data = example()
    mutate(data)
    path = write(tmp_path, data)
    # WHEN it is loaded
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    # THEN the message names the file and the field
    assert str(path) in info.value.message and field in info.value.message, info.value.message


def test_lifetime_extension_allows_up_to_twelve_hours(tmp_path: Path) -> None:
    data = example()
    data["entitlements"][0].update(max_lifetime="12h", lifetime_extension=True)
    assert load_policy(write(tmp_path, data)).entitlements[0].max_lifetime == 43200


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_policy(tmp_path / "nope.yaml")
    assert "nope.yaml" in missing.value.message
    with pytest.raises(ConfigError) as broken:
        load_policy(write(tmp_path, "issuers: [unclosed"))
    assert "policy.yaml" in broken.value.message
    with pytest.raises(ConfigError):
        load_policy(write(tmp_path, "- a list"))


def test_delegates_are_normalized() -> None:
    email = "hop@p.iam.gserviceaccount.com"
    assert config.normalize_delegate(email) == f"projects/-/serviceAccounts/{email}"
    assert config.normalize_delegate(f"projects/-/serviceAccounts/{email}") == f"projects/-/serviceAccounts/{email}"


@pytest.mark.parametrize("env,name", [
    ({"VENDING_STORE": "postgres"}, "VENDING_STORE"),
    ({"VENDING_IAM_TIMEOUT": "soon"}, "VENDING_IAM_TIMEOUT"),
    ({"VENDING_IAM_RETRIES": "99"}, "VENDING_IAM_RETRIES"),
    ({"VENDING_IAM_ENDPOINT": "http://evil.example"}, "VENDING_IAM_ENDPOINT"),
    ({"VENDING_IAM_TOKEN": "x", "VENDING_IAM_ENDPOINT": "https://iamcredentials.googleapis.com"},
     "VENDING_IAM_TOKEN"),
    ({"VENDING_STORE": "firestore"}, "development issuer"),
])
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VENDING_CONFIG", str(EXAMPLE))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert name in info.value.message


def test_process_refuses_to_start_with_a_bad_policy(tmp_path: Path) -> None:
    # GIVEN a policy file with a lifetime above the API's maximum
    data = example()
    data["entitlements"][0]["max_lifetime"] = 7200
    path = write(tmp_path, data)
    # WHEN the function module is imported (cold start)
    env = {**os.environ, "VENDING_CONFIG": str(path)}
    proc = subprocess.run([sys.executable, "-c", "import main"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    # THEN the process stops with a message naming the file and the field, no traceback
    assert proc.returncode == 2
    assert str(path) in proc.stderr and "entitlements[0]" in proc.stderr and "max_lifetime" in proc.stderr
    assert "Traceback" not in proc.stderr
