"""``vending policy check | explain | schema | reference`` (issue 17, item 5).

The JSON Schema (``docs/policy.schema.json``) and the field reference in
``docs/policy.md`` are generated from the pydantic model; these tests keep the
committed files equal to it. Run this module as a script to regenerate them:
``.venv/bin/python -m tests.unit.test_policy_tooling``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vending.cli import main
from vending.client import policy as tool
from vending.config import Policy

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "docs" / "policy.schema.json"
REFERENCE_FILE = REPO / "docs" / "policy.md"
EXAMPLES = [
    REPO / "config" / "example.yaml",
    REPO / "terraform" / "examples" / "basic" / "config.yaml",
]

SA = "app-deployer@my-project.iam.gserviceaccount.com"
HOP = "hop@my-project.iam.gserviceaccount.com"
BOT = "chat-bot@my-project.iam.gserviceaccount.com"
ISSUER = {
    "name": "github",
    "issuer": "https://token.actions.githubusercontent.com",
    "jwks_uri": "https://token.actions.githubusercontent.com/.well-known/jwks",
    "audience": "token-vending.my-project",
}
CLOUD = "https://www.googleapis.com/auth/cloud-platform"


def entitlement(name: str, claims: dict[str, Any], sa: str = SA, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "principals": [{"issuer": "github", "claims": claims}],
        "service_account": sa,
        "scopes": [CLOUD],
        **extra,
    }


def write_policy(tmp_path: Path, *entitlements: dict[str, Any], **top: Any) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"issuers": [ISSUER], "entitlements": list(entitlements), **top}), "utf-8")
    return path


def rules(path: Path) -> list[tuple[str, str]]:
    policy = yaml.safe_load(path.read_text("utf-8"))
    return [(f.severity, f.rule) for f in tool.lint(Policy.model_validate(policy))]


def generated_reference_section(text: str) -> str:
    start = text.index(tool.REFERENCE_BEGIN) + len(tool.REFERENCE_BEGIN)
    return text[start : text.index(tool.REFERENCE_END)].strip("\n")


# -- schema and reference ---------------------------------------------------------------------------


def test_every_model_field_has_a_meaning_and_no_stale_one() -> None:
    # GIVEN every field of every policy model
    fields = {f"{m.__name__}.{name}" for m in tool.MODELS for name in m.model_fields}
    # THEN FIELD_DOCS describes each, and nothing else
    assert fields == set(tool.FIELD_DOCS)


def test_the_models_list_covers_every_model_the_policy_nests() -> None:
    # GIVEN the schema pydantic generates  THEN each of its definitions is documented
    defs = set(Policy.model_json_schema()["$defs"])
    assert defs <= {m.__name__ for m in tool.MODELS}


def test_the_committed_schema_is_the_models() -> None:
    # GIVEN docs/policy.schema.json  WHEN compared with the schema generated now  THEN they are equal
    assert json.loads(SCHEMA_FILE.read_text("utf-8")) == tool.json_schema(), (
        "regenerate: .venv/bin/vending policy schema > docs/policy.schema.json"
    )


def test_the_docs_field_reference_is_the_models() -> None:
    # GIVEN docs/policy.md's generated section  THEN it is the reference generated from the model now
    assert generated_reference_section(REFERENCE_FILE.read_text("utf-8")) == tool.field_reference().strip("\n"), (
        "regenerate: .venv/bin/python -m tests.unit.test_policy_tooling"
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_example_policies_match_the_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    # GIVEN an example policy the service loads  WHEN validated against the schema  THEN it passes
    jsonschema.validate(yaml.safe_load(path.read_text("utf-8")), tool.json_schema())


def test_the_schema_refuses_an_unknown_key_and_accepts_durations() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = tool.json_schema()
    good = {"issuers": [ISSUER], "entitlements": [entitlement("a", {"sub": "x"}, max_lifetime="15m")]}
    jsonschema.validate(good, schema)
    bad = {"issuers": [ISSUER], "entitlements": [entitlement("a", {"sub": "x"}, max_lifetme="15m")]}
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.validate(bad, schema)
    assert "max_lifetme" in str(info.value.message)


# -- check ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_example_policies_have_no_lint_errors(path: Path) -> None:
    # GIVEN a shipped example  WHEN checked  THEN it has no error (raw signing on the local demo is a warning)
    assert tool.check(str(path)) == tool.EXIT_OK


def test_a_clean_policy_exits_0_even_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_policy(tmp_path, entitlement("deploy", {"sub": "repo:o/a:ref:refs/heads/main"}))
    assert main(["policy", "check", str(path), "--strict"]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().err


def test_a_policy_that_does_not_load_exits_2_with_the_cold_start_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_policy(tmp_path, entitlement("deploy", {"sub": "x"}, max_lifetme="15m"))
    assert main(["policy", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"policy\.yaml:\d+:\d+: entitlement 'deploy': unknown key 'max_lifetme'", err), err


def test_a_target_that_is_a_delegate_hop_of_another_entitlement_is_an_error(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        entitlement("chain", {"sub": "a"}, delegates=[HOP]),
        entitlement("hop-direct", {"sub": "b"}, sa=HOP),
    )
    assert ("error", "target-is-delegate") in rules(path)
    assert tool.check(str(path)) == tool.EXIT_FINDINGS


def test_a_target_that_is_a_bot_account_is_an_error(tmp_path: Path) -> None:
    path = write_policy(tmp_path, entitlement("bot", {"sub": "a"}, sa=BOT), bots=[{"service_account": BOT}])
    assert rules(path) == [("error", "target-is-bot")]


def test_raw_blob_signing_is_a_warning_and_fails_only_strict(tmp_path: Path) -> None:
    raw = {"acknowledge_raw_signing": True}
    path = write_policy(
        tmp_path, entitlement("blobs", {"sub": "a"}, credentials=["access_token", "signed_blob"], signed_blob=raw)
    )
    assert rules(path) == [("warning", "raw-blob-signing")]
    assert tool.check(str(path)) == tool.EXIT_OK
    assert tool.check(str(path), strict=True) == tool.EXIT_FINDINGS


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"repo:o/(a+)+", [("error", "pattern-not-linear")]),
        (r"(x.*)*", [("error", "pattern-not-linear")]),
        (r"(a)\1", [("error", "pattern-not-linear")]),
        (r"(?!evil)repo:.*", [("error", "pattern-not-linear")]),
        (r"repo:o/[a-z]+:ref:refs/heads/\d+", [("warning", "pattern-non-ascii")]),
        (r"repo:o/\w+", [("warning", "pattern-non-ascii")]),
        (r"(?a)repo:o/\w+", []),
        (r"repo:o/[a-z0-9-]+(\.[a-z0-9-]+)*", []),
        (r"repo:o/[A-Za-z0-9_.-]+:ref:refs/heads/main", []),
    ],
)
def test_patterns_are_linear_time_and_ascii(tmp_path: Path, pattern: str, expected: list[tuple[str, str]]) -> None:
    path = write_policy(tmp_path, entitlement("p", {"sub": {"pattern": pattern}}))
    assert rules(path) == expected


def test_patterns_are_checked_wherever_they_are(tmp_path: Path) -> None:
    # GIVEN a slow pattern in an approval's justification_pattern  THEN it is found there too
    approval = {"approvers": ["alice"], "justification_pattern": {"pattern": "(T+)+-1"}}
    path = write_policy(tmp_path, entitlement("p", {"sub": "a"}, approval=approval))
    found = tool.lint(Policy.model_validate(yaml.safe_load(path.read_text("utf-8"))))
    assert [(f.rule, f.loc) for f in found] == [
        ("pattern-not-linear", ("entitlements", 0, "approval", "justification_pattern", "pattern"))
    ]


def test_a_direct_entitlement_that_bypasses_an_approval_is_an_error(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        entitlement("admin", {"sub": "repo:o/a:ref:refs/heads/main"}, approval={"approvers": ["alice"]}),
        entitlement("ci", {"sub": {"pattern": "repo:o/a:.*"}}),
    )
    assert rules(path) == [("error", "approval-bypass")]


def test_a_shadowed_entitlement_is_a_warning_naming_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_policy(
        tmp_path,
        entitlement("broad", {"repository_owner_id": "42"}, max_lifetime=3600),
        entitlement("narrow", {"repository_owner_id": "42", "ref": "refs/heads/main"}, max_lifetime=300),
    )
    assert rules(path) == [("warning", "shadowed-entitlement")]
    tool.check(str(path))
    out = capsys.readouterr().out
    assert re.search(r"policy\.yaml:\d+:\d+: warning \[shadowed-entitlement\] entitlement 'narrow'.*'broad'", out)


def test_disjoint_entitlements_do_not_shadow(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        entitlement("main", {"sub": "repo:o/a:ref:refs/heads/main"}),
        entitlement("dev", {"sub": "repo:o/a:ref:refs/heads/dev"}),
        entitlement("other-sa", {"sub": "repo:o/a:ref:refs/heads/main"}, sa=HOP),
    )
    assert rules(path) == []


def test_check_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_policy(tmp_path, entitlement("p", {"sub": {"pattern": r"\d+"}}))
    assert main(["policy", "check", "--format", "json", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is True
    [finding] = doc["findings"]
    assert finding["rule"] == "pattern-non-ascii"
    assert finding["path"] == "entitlements.0.principals.0.claims.sub.pattern"
    assert finding["line"] > 1


# -- explain -------------------------------------------------------------------------------------------

CLAIMS = {
    "iss": ISSUER["issuer"],
    "aud": ISSUER["audience"],
    "sub": "repo:o/a:ref:refs/heads/main",
    "ref": "refs/heads/main",
}


def run_explain(tmp_path: Path, policy: Path, claims: dict[str, Any], *extra: str) -> int:
    claims_file = tmp_path / "claims.json"
    claims_file.write_text(json.dumps(claims), "utf-8")
    argv = ["policy", "explain", "--config", str(policy), "--token-claims", str(claims_file)]
    return main([*argv, "--service-account", SA, *extra])


def test_explain_names_the_entitlement_that_allows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path, entitlement("deploy", {"sub": "repo:o/a:ref:refs/heads/main"}, max_lifetime=900))
    assert run_explain(tmp_path, policy, CLAIMS) == 0
    out = capsys.readouterr().out
    assert "caller: github/repo:o/a:ref:refs/heads/main" in out
    assert "ALLOWED by entitlement 'deploy' (access_token" in out
    assert "max_lifetime 900s" in out


def test_explain_names_the_claim_that_does_not_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a typo in the policy's sub (the 403 nobody could explain)
    policy = write_policy(tmp_path, entitlement("deploy", {"sub": "repo:o/a:ref:refs/heads/mian"}))
    # WHEN explained  THEN exit 4, the service's reason, and the claim and value that differ
    assert run_explain(tmp_path, policy, CLAIMS) == 4
    out = capsys.readouterr().out
    assert "sub 'repo:o/a:ref:refs/heads/main' does not match 'repo:o/a:ref:refs/heads/mian'" in out
    assert "REFUSED 403 service-account-not-allowed" in out


def test_explain_an_entitlement_that_needs_approval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(
        tmp_path, entitlement("admin", {"sub": "repo:o/a:ref:refs/heads/main"}, approval={"approvers": ["alice"]})
    )
    assert run_explain(tmp_path, policy, CLAIMS) == 4
    out = capsys.readouterr().out
    assert "needs an approved access request" in out
    assert "REFUSED 403 approval-required" in out


def test_explain_a_kind_the_entitlement_does_not_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path, entitlement("deploy", {"sub": "repo:o/a:ref:refs/heads/main"}))
    assert run_explain(tmp_path, policy, CLAIMS, "--kind", "id_token") == 4
    assert "REFUSED 403 credential-kind-not-allowed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("claims", "text"),
    [
        ({**CLAIMS, "aud": "https://token-vending-abc.a.run.app"}, "is not exactly this service's audience"),
        ({**CLAIMS, "aud": [ISSUER["audience"], "other"]}, "is not exactly this service's audience"),
        ({**CLAIMS, "iss": "https://gitlab.com"}, "is not a pinned issuer"),
        ({k: v for k, v in CLAIMS.items() if k != "sub"}, "no 'sub' claim"),
    ],
)
def test_explain_a_token_the_service_would_not_accept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], claims: dict[str, Any], text: str
) -> None:
    policy = write_policy(tmp_path, entitlement("deploy", {"sub": "repo:o/a:ref:refs/heads/main"}))
    assert run_explain(tmp_path, policy, claims) == 3
    out = capsys.readouterr().out
    assert "REFUSED 401 invalid-token" in out
    assert text in out


def test_explain_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path, entitlement("deploy", {"sub": "x"}))
    missing = tmp_path / "nope.json"
    argv = ["policy", "explain", "--config", str(policy), "--token-claims", str(missing), "--service-account", SA]
    assert main(argv) == 2
    assert "cannot read the claims" in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[1]", "utf-8")
    argv[5] = str(tmp_path / "list.json")
    assert main(argv) == 2


def _regenerate() -> None:  # pragma: no cover - a maintenance command
    SCHEMA_FILE.write_text(json.dumps(tool.json_schema(), indent=2, sort_keys=True) + "\n", "utf-8")
    text = REFERENCE_FILE.read_text("utf-8")
    start = text.index(tool.REFERENCE_BEGIN) + len(tool.REFERENCE_BEGIN)
    end = text.index(tool.REFERENCE_END)
    REFERENCE_FILE.write_text(text[:start] + "\n" + tool.field_reference().strip("\n") + "\n" + text[end:], "utf-8")


if __name__ == "__main__":  # pragma: no cover
    _regenerate()


# -- the audience story: VENDING_AUDIENCE ----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "flag", "expected"),
    [
        ({"VENDING_AUDIENCE": "token-vending.my-project"}, [], "token-vending.my-project"),
        ({"VENDING_AUDIENCE": "token-vending.my-project"}, ["--caller-audience", "x"], "x"),
        ({}, [], "https://vending.example"),  # no setting: the service URL, as before
    ],
)
def test_the_client_asks_for_the_audience_the_policy_pins(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], flag: list[str], expected: str
) -> None:
    # GIVEN VENDING_AUDIENCE (the policy issuer's audience) in a CI job's environment
    from vending.cli import build_parser
    from vending.client.identity import Caller

    monkeypatch.delenv("VENDING_AUDIENCE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(["token", "--service-account", SA, "--url", "https://vending.example", *flag])
    # WHEN the client looks for the caller's token  THEN it asks for that audience
    assert Caller(args, args.url)._audience == expected


def test_the_docs_explain_example_prints_what_it_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN docs/policy.md's explain example: its claims, its command and the output it shows
    text = REFERENCE_FILE.read_text("utf-8")
    block = next(b for b in re.findall(r"```console\n(.*?)```", text, re.S) if "policy explain" in b)
    claims = re.search(r"<<'JSON'\n(.*?)\nJSON\n", block, re.S)
    assert claims is not None
    shown = block[block.index("--service-account") :].splitlines()[1:]
    command = re.search(r"--config (\S+).*--service-account (\S+)", block.replace("\\\n", " "), re.S)
    assert command is not None
    claims_file = tmp_path / "claims.json"
    claims_file.write_text(claims.group(1), "utf-8")
    # WHEN run  THEN it prints exactly that and allows
    argv = ["policy", "explain", "--config", str(REPO / command.group(1)), "--token-claims", str(claims_file)]
    assert main([*argv, "--service-account", command.group(2)]) == 0
    assert capsys.readouterr().out.splitlines() == shown


def test_the_docs_policy_snippets_load_and_lint_clean(tmp_path: Path) -> None:
    # GIVEN every YAML block of docs/policy.md that is a policy (has issuers)
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", REFERENCE_FILE.read_text("utf-8"), re.S) if "issuers:" in b]
    assert blocks
    for i, block in enumerate(blocks):
        path = tmp_path / f"snippet{i}.yaml"
        path.write_text(block, "utf-8")
        # THEN it loads as the service loads it, with no lint error or warning
        assert tool.check(str(path), strict=True) == tool.EXIT_OK, block
