"""Settings and policy validation: fail fast at cold start, naming the file and the field."""

from __future__ import annotations

import os
import re
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


@pytest.mark.parametrize(
    "mutate,where",
    [
        (lambda d: d["entitlements"][0].update(max_lifetime="3601s"), "entitlement 'demo-deploy': max_lifetime 3601s"),
        (
            lambda d: d["entitlements"][0].update(max_lifetime=43201, lifetime_extension=True),
            "entitlement 'demo-deploy': max_lifetime 43201s",
        ),
        (
            lambda d: d["entitlements"][0].update(service_account="not-an-email"),
            "entitlement 'demo-deploy', service_account: ",
        ),
        (lambda d: d["entitlements"][0].update(colour="blue"), "entitlement 'demo-deploy': unknown key 'colour'"),
        (lambda d: d["issuers"][0].update(algorithms=["HS256"]), "issuer 'local-dev', algorithms: "),
        (lambda d: d["issuers"][0].update(algorithms=["none"]), "issuer 'local-dev', algorithms: "),
        (lambda d: d["entitlements"][0]["principals"][0].update(issuer="nope"), "names unknown issuer 'nope'"),
        (lambda d: d["entitlements"][0].update(delegates=["bogus"]), "entitlement 'demo-deploy', delegates"),
        (
            lambda d: d["entitlements"][1]["approval"].update(approvers=["group:missing"]),
            "unknown group 'group:missing'",
        ),
        (
            lambda d: d["entitlements"][2]["approval"].pop("justification_pattern"),
            "entitlement 'prod-break-glass', approval: break_glass entitlements need a justification_pattern",
        ),
        (
            lambda d: d["entitlements"][0].update(max_lifetime="ten minutes"),
            "entitlement 'demo-deploy', max_lifetime: must be a duration",
        ),
    ],
)
def test_bad_policy_names_file_and_field(tmp_path: Path, mutate, where: str) -> None:
    # GIVEN the example policy with one bad field
    data = example()
    mutate(data)
    path = write(tmp_path, data)
    # WHEN it is loaded
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    # THEN one line names the file (with a line and column where the field is known), the entitlement or
    # issuer by its name, the field and the problem
    message = info.value.message
    assert message.startswith(str(path)) and where in message, message
    assert len(message.splitlines()) <= 2, message
    assert "entitlements[" not in message and "issuers[" not in message, message


def _policy_with(text_from: str, text_to: str, tmp_path: Path) -> Path:
    source = EXAMPLE.read_text()
    assert text_from in source
    path = tmp_path / "policy.yaml"
    path.write_text(source.replace(text_from, text_to, 1))
    return path


def _line_col(path: Path, needle: str) -> str:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return f"{number}:{line.index(needle) + 1}"
    raise AssertionError(needle)


def test_a_misspelt_key_names_line_column_entitlement_and_the_key_it_resembles(tmp_path: Path) -> None:
    # GIVEN the example policy with max_lifetime misspelt in demo-deploy
    path = _policy_with("    max_lifetime: 900s", "    max_lifetme: 900s", tmp_path)
    # WHEN it is loaded
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    # THEN one line: FILE:LINE:COL of the key, the entitlement by name, and "did you mean"
    assert info.value.message == (
        f"{path}:{_line_col(path, 'max_lifetme')}: entitlement 'demo-deploy': "
        "unknown key 'max_lifetme' (did you mean 'max_lifetime'?)"
    )


@pytest.mark.parametrize(
    "text_from,text_to,needle,expected",
    [
        # a typo in a nested model (the Pattern of a matcher) is found through the union
        (
            'sub: {pattern: "[a-z]+@example',
            'sub: {patern: "[a-z]+@example',
            "patern",
            "entitlement 'prod-admin', principals[0].claims.sub: unknown key 'patern' (did you mean 'pattern'?)",
        ),
        # a top-level key
        ("auditors:", "auditorz:", "auditorz", "unknown key 'auditorz' (did you mean 'auditors'?)"),
        # a rule across fields points at the field it names
        (
            "    max_lifetime: 900s",
            "    max_lifetime: 2h",
            "max_lifetime",
            "entitlement 'demo-deploy': max_lifetime 7200s is above 3600s",
        ),
        # a key given twice (YAML would keep the last silently)
        (
            "    max_lifetime: 900s",
            "    max_lifetime: 900s\n    max_lifetime: 600s",
            "max_lifetime: 600s",
            "key 'max_lifetime' is given twice",
        ),
        # a value out of range
        ("  quorum: 2", "  quorum: 20", "20", "kill_switch.quorum: Input should be less than or equal to 10"),
    ],
)
def test_errors_point_at_the_line_and_column(
    tmp_path: Path, text_from: str, text_to: str, needle: str, expected: str
) -> None:
    path = _policy_with(text_from, text_to, tmp_path)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.message.startswith(f"{path}:{_line_col(path, needle)}: {expected}"), info.value.message


def test_an_unknown_key_with_no_close_name_lists_the_allowed_ones(tmp_path: Path) -> None:
    path = _policy_with("    max_lifetime: 900s", "    max_lifetime: 900s\n    zzz: 1", tmp_path)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert "unknown key 'zzz' (expected one of: name, principals, service_account, scopes" in info.value.message


def test_a_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("issuers:\n  - name: a\n    issuer: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: ", info.value.message), info.value.message
    assert len(info.value.message.splitlines()) == 1


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


@pytest.mark.parametrize(
    "env,name",
    [
        ({"VENDING_STORE": "postgres"}, "VENDING_STORE"),
        ({"VENDING_IAM_TIMEOUT": "soon"}, "VENDING_IAM_TIMEOUT"),
        ({"VENDING_IAM_RETRIES": "99"}, "VENDING_IAM_RETRIES"),
        ({"VENDING_IAM_ENDPOINT": "http://evil.example"}, "VENDING_IAM_ENDPOINT"),
        (
            {"VENDING_IAM_TOKEN": "x", "VENDING_IAM_ENDPOINT": "https://iamcredentials.googleapis.com"},
            "VENDING_IAM_TOKEN",
        ),
        ({"VENDING_STORE": "firestore"}, "development issuer"),
    ],
)
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
    proc = subprocess.run(
        [sys.executable, "-c", "import main"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    # THEN the process stops with a message naming the file and the field, no traceback
    assert proc.returncode == 2
    assert str(path) in proc.stderr and "entitlement 'demo-deploy'" in proc.stderr and "max_lifetime" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_one_parse_gives_the_safe_load_data_and_the_marked_node_tree() -> None:
    """The policy file is parsed once (libyaml when present): the same data as ``yaml.safe_load``
    and the node tree whose marks the error messages cite."""
    from vending import diagnostics

    text = Path("config/example.yaml").read_text()
    node, data = diagnostics.parse(text)
    assert data == yaml.safe_load(text)
    assert isinstance(node, yaml.MappingNode)
    assert [k.value for k, _ in node.value] == list(data)
    first_key = node.value[0][0]
    assert (first_key.start_mark.line, first_key.start_mark.column) == next(
        (i, line.index(first_key.value)) for i, line in enumerate(text.splitlines()) if line.startswith(first_key.value)
    )
    assert diagnostics.parse("") == (None, None)
    with pytest.raises(yaml.MarkedYAMLError) as err:
        diagnostics.parse("issuers: [\n")
    assert err.value.problem_mark is not None


def test_has_control_is_exactly_the_unicode_control_and_separator_categories() -> None:
    """The one regex every identity and claim check uses finds exactly Cc, Zl and Zp, over every code point."""
    import unicodedata

    for cp in range(0x110000):
        c = chr(cp)
        expected = unicodedata.category(c) in ("Cc", "Zl", "Zp")
        if config.has_control(f"a{c}b") is not expected:
            raise AssertionError(f"U+{cp:04X}: has_control says {not expected}, category {unicodedata.category(c)}")
    assert not config.has_control("repo:org/app:ref:refs/heads/main")
