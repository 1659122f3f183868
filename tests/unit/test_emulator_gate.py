"""The emulator gate (issue 19, part 2): a missing emulator fails the run; only an explicit opt-out
deselects the emulator tests, and the run then says what it did not run.

Each test runs pytest in a subprocess on a four-test module, with ``tests/conftest.py`` loaded as a
plugin, a PATH without gcloud, and no emulator host in the environment: quick (no emulator starts).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = """
import pytest

def test_plain():
    pass

def test_needs_firestore(firestore_emulator):
    pass

def test_needs_pubsub(pubsub_emulator):
    pass

@pytest.mark.emulator
def test_marked():
    pass
"""


def run_pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_gate_sample.py").write_text(MODULE)
    (tmp_path / "bin").mkdir(exist_ok=True)  # an empty PATH: no gcloud, no java
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "VENDING_SKIP_EMULATORS", "CI", "PYTEST_ADDOPTS")
    }
    # Only tests/conftest.py as a plugin: a second or so per run instead of loading every installed plugin.
    clean.update(PATH=str(tmp_path / "bin"), PYTHONPATH=str(ROOT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **env)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_gate_sample.py"),
        ],
        check=False,
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(120)
def test_missing_gcloud_fails_the_run_with_a_clear_message(tmp_path: Path) -> None:
    # GIVEN no gcloud on PATH, no emulator host, no opt-out (and no CI variable)
    # WHEN the tests run
    r = run_pytest(tmp_path)
    out = r.stdout + r.stderr
    # THEN the run fails (never a skip): each emulator test errors, naming what is missing and the opt-out
    assert r.returncode == 1, out
    assert "skipped" not in out.splitlines()[-1], out
    assert "2 passed" in out and "2 error" in out, out
    assert "gcloud is not on PATH" in out and "VENDING_SKIP_EMULATORS=1" in out, out
    assert "firestore emulator missing" in out and "pubsub emulator missing" in out, out


@pytest.mark.timeout(120)
def test_opt_out_deselects_and_says_what_was_not_run(tmp_path: Path) -> None:
    # GIVEN the explicit opt-out
    # WHEN the tests run
    r = run_pytest(tmp_path, VENDING_SKIP_EMULATORS="1")
    out = r.stdout + r.stderr
    # THEN only the plain test runs, the run passes, and the summary lists what was NOT run
    assert r.returncode == 0, out
    assert "1 passed, 3 deselected" in out, out
    assert "emulator tests NOT run" in out, out
    assert "VENDING_SKIP_EMULATORS=1: 3 emulator tests deselected, NOT run, in 1 modules:" in out, out
    assert "test_gate_sample.py: 3" in out, out


@pytest.mark.timeout(120)
def test_only_the_value_1_opts_out(tmp_path: Path) -> None:
    # GIVEN an opt-out variable that is not exactly "1"
    r = run_pytest(tmp_path, VENDING_SKIP_EMULATORS="yes")
    # THEN the gate still fails the run
    assert r.returncode == 1, r.stdout + r.stderr
