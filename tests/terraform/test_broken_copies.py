"""Each offline check fails on a deliberately broken copy of terraform/.

The copies live in tmp dirs; the real tree is never touched. Three breakages,
as the issue asks: a missing entry point, a project-wide Token Creator grant,
and an HCL syntax error (which must fail both the hcl2 parse and the checkov
runner, since checkov itself exits 0 on a syntax error).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.terraform.test_wiring import (
    MAIN_PY,
    REPO,
    TERRAFORM_DIR,
    HclParseError,
    check_entry_points,
    check_iam,
    entry_points,
    load_terraform,
)

CHECKOV = REPO / "scripts" / "checkov.sh"
MODULE = Path("modules") / "token-vending"

PROJECT_WIDE_TOKEN_CREATOR = """
resource "google_project_iam_member" "runtime_token_creator_everywhere" {
  project = var.project
  role    = "roles/iam.serviceAccountTokenCreator"
  member  = "serviceAccount:${google_service_account.runtime.email}"
}
"""

UNCLOSED_BLOCK = """
resource "google_pubsub_topic" "unclosed" {
  name = "oops"
"""


def copy_terraform(tmp_path: Path) -> Path:
    target = tmp_path / "terraform"
    shutil.copytree(TERRAFORM_DIR, target, ignore=shutil.ignore_patterns(".terraform", "build"))
    return target


def remove_block(path: Path, header: str) -> None:
    """Delete the block that starts with `header` (through its matching brace)."""
    text = path.read_text(encoding="utf-8")
    start = text.index(header)
    depth = 0
    for i in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            path.write_text(text[:start] + text[i + 1 :], encoding="utf-8")
            return
    raise AssertionError(f"unbalanced block {header!r} in {path}")


def run_checkov(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CHECKOV), str(directory)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def eps() -> dict[str, str]:
    return entry_points(MAIN_PY)


def test_a_missing_entry_point_fails_the_wiring_check(tmp_path: Path, eps: dict[str, str]) -> None:
    # GIVEN a copy that passes, minus the function deploying one CloudEvent entry point
    copy = copy_terraform(tmp_path)
    assert check_entry_points(load_terraform(copy), eps) == []
    victim = max(name for name, kind in eps.items() if kind == "cloud_event")
    fn = next(
        r
        for r in load_terraform(copy).of_type("google_cloudfunctions2_function")
        if r.body["build_config"][0]["entry_point"] == victim
    )
    remove_block(fn.path, f'resource "google_cloudfunctions2_function" "{fn.name}" {{')

    # WHEN the wiring is checked
    problems = check_entry_points(load_terraform(copy), eps)

    # THEN exactly that entry point is reported missing
    assert problems == [f"entry point {victim} (cloud_event) is deployed by 0 google_cloudfunctions2_function, want 1"]


def test_a_project_wide_token_creator_fails_the_iam_check_and_checkov(tmp_path: Path) -> None:
    # GIVEN a copy that passes, plus a project-level Token Creator for the runtime account
    copy = copy_terraform(tmp_path)
    assert check_iam(load_terraform(copy)) == []
    with (copy / MODULE / "iam.tf").open("a", encoding="utf-8") as fh:
        fh.write(PROJECT_WIDE_TOKEN_CREATOR)

    # WHEN the IAM check and the checkov runner look at it
    problems = check_iam(load_terraform(copy))
    result = run_checkov(copy)

    # THEN both fail, naming the grant
    grant = "google_project_iam_member.runtime_token_creator_everywhere"
    assert (
        f"{grant}: roles/iam.serviceAccountTokenCreator granted project-wide (google_project_iam_member): "
        "grant it per service account" in problems
    )
    assert f"{grant}: runtime account holds project-level roles/iam.serviceAccountTokenCreator" in problems
    assert result.returncode != 0, result.stdout + result.stderr
    assert re.search(rf"FAILED CKV_GCP_(41|49) \S*{re.escape(grant)}", result.stdout), result.stdout


def test_a_syntax_error_fails_the_parse_and_checkov(tmp_path: Path) -> None:
    # GIVEN a copy with an unclosed block in one file
    copy = copy_terraform(tmp_path)
    broken = copy / MODULE / "pubsub.tf"
    with broken.open("a", encoding="utf-8") as fh:
        fh.write(UNCLOSED_BLOCK)

    # WHEN hcl2 parses it
    with pytest.raises(HclParseError) as caught:
        load_terraform(copy)
    # AND the checkov runner scans it
    result = run_checkov(copy)

    # THEN the parse error names the file, and the runner fails on checkov's parsing error
    assert str(broken) in str(caught.value)
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"PARSING ERROR {broken}" in result.stdout, result.stdout


def test_the_checkov_runner_passes_on_an_intact_copy(tmp_path: Path) -> None:
    # GIVEN an unmodified copy (so the failures above come from the breakage, not the copy)
    copy = copy_terraform(tmp_path)
    # WHEN the runner scans it  THEN it passes
    result = run_checkov(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checkov: OK" in result.stdout
