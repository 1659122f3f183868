"""Fixtures shared by the functional, security and fault suites.

- ``standin``: one IAM Credentials stand-in per session (faults and minted
  list reset before each test).
- ``oidc``: a test OIDC issuer with a live JWKS endpoint (per test).
- ``harness``: the HTTP function on a SQLite store; ``fs_harness`` on the
  Firestore emulator; ``any_harness`` parametrized over both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import ServiceHarness, make_standin
from tests.support.oidc import TestIssuer


@pytest.fixture(scope="session")
def standin_session() -> Iterator[Any]:
    server = make_standin()
    yield server
    server.stop()


@pytest.fixture
def standin(standin_session: Any) -> Any:
    standin_session.reset()
    return standin_session


@pytest.fixture
def oidc() -> Iterator[TestIssuer]:
    with TestIssuer(name="ci", issuer="https://token.actions.example", audience="https://vending.test") as issuer:
        yield issuer


@pytest.fixture
def harness(sqlite_store: Any, oidc: TestIssuer, standin: Any, tmp_path: Path) -> Iterator[ServiceHarness]:
    h = ServiceHarness(sqlite_store, oidc, standin, tmp_path)
    yield h
    h.close()


@pytest.fixture
def fs_harness(firestore_store: Any, oidc: TestIssuer, standin: Any, tmp_path: Path) -> Iterator[ServiceHarness]:
    h = ServiceHarness(firestore_store, oidc, standin, tmp_path)
    yield h
    h.close()


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def any_harness(
    request: pytest.FixtureRequest, oidc: TestIssuer, standin: Any, tmp_path: Path
) -> Iterator[ServiceHarness]:
    store = request.getfixturevalue("sqlite_store" if request.param == "sqlite" else "firestore_store")
    h = ServiceHarness(store, oidc, standin, tmp_path)
    yield h
    h.close()


# -- run-wide audits (issue 9) ------------------------------------------------------------------------
# Every test that uses a harness is audited: each credential the IAM stand-in minted during the test
# (and each caller token sent) is searched for in the vending log lines and stdlib log records, the
# store's documents, error bodies, response headers and published events. The run's figures are
# printed at the end, with those the security and fault suites add to ``suite_figures``.
# VENDING_TEST_LEAK_AUDIT=0 skips the end-of-test search (to measure its cost; test_no_secrets_leak still searches).

from tests.support.audit import CredentialArchive, LeakAudit  # noqa: E402 - with the audit it serves

HARNESS_FIXTURES = ("harness", "fs_harness", "any_harness", "make_harness", "make_fs_harness")


class HarnessFactory:
    """Build the one harness of a test with a changed policy: ``make_harness(edit=fn, **top_level)``.

    ``edit`` receives the test policy (``tests.support.app.policy_dict``) as a dict to change in
    place; keyword arguments replace top-level keys. The entry points are process-global, so a
    test builds one harness.
    """

    def __init__(self, store: Any, oidc: TestIssuer, standin: Any, tmp_path: Path) -> None:
        self.store, self.oidc, self.standin, self.tmp_path = store, oidc, standin, tmp_path
        self.audit: LeakAudit | None = None
        self.built: list[ServiceHarness] = []

    def __call__(self, edit: Any = None, **overrides: Any) -> ServiceHarness:
        from tests.support.app import policy_dict

        if self.built:
            raise RuntimeError("one harness per test: the entry points are process-global")
        if edit is not None:
            cfg = self.oidc.issuer_config().model_dump()
            cfg["algorithms"] = list(cfg["algorithms"])
            raw = policy_dict(cfg)
            raw.update(overrides)
            edit(raw)
            overrides = raw
        h = ServiceHarness(self.store, self.oidc, self.standin, self.tmp_path, policy_overrides=overrides)
        self.built.append(h)
        if self.audit is not None:
            self.audit.watch(h)
        return h

    def close(self) -> None:
        for h in self.built:
            h.close()


@pytest.fixture
def make_harness(sqlite_store: Any, oidc: TestIssuer, standin: Any, tmp_path: Path) -> Iterator[HarnessFactory]:
    factory = HarnessFactory(sqlite_store, oidc, standin, tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def make_fs_harness(firestore_store: Any, oidc: TestIssuer, standin: Any, tmp_path: Path) -> Iterator[HarnessFactory]:
    factory = HarnessFactory(firestore_store, oidc, standin, tmp_path)
    yield factory
    factory.close()


class SuiteFigures:
    """Lines printed in the terminal summary: cases, examples, repetitions, faults injected."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)
        print(line)


# One set of figures for the whole run, however many conftest files import these fixtures; printed once,
# in the terminal summary.
_FIGURES = SuiteFigures()
_ARCHIVE = CredentialArchive()


class _SummaryPlugin:
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if _FIGURES.lines:
            terminalreporter.section("security and fault suite figures", sep="-")
            for line in _FIGURES.lines:
                terminalreporter.write_line(line)
        if _ARCHIVE.tests:
            terminalreporter.section("secrets audit", sep="-")
            terminalreporter.write_line(_ARCHIVE.summary())


def _register_summary(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("vending-suite-summary"):
        config.pluginmanager.register(_SummaryPlugin(), "vending-suite-summary")


@pytest.fixture(scope="session")
def suite_figures(request: pytest.FixtureRequest) -> SuiteFigures:
    _register_summary(request.config)
    return _FIGURES


@pytest.fixture(scope="session")
def credential_archive(request: pytest.FixtureRequest) -> CredentialArchive:
    _register_summary(request.config)
    return _ARCHIVE


@pytest.fixture(autouse=True)
def leak_audit(request: pytest.FixtureRequest, credential_archive: CredentialArchive) -> Iterator[LeakAudit | None]:
    """Audit a harness test for credential leaks (torn down before the harness it watches)."""
    names = [n for n in HARNESS_FIXTURES if n in request.fixturenames]
    if not names:
        yield None
        return
    audit = LeakAudit()
    audit.install()
    try:
        value = request.getfixturevalue(names[0])
        if isinstance(value, HarnessFactory):
            value.audit = audit
        else:
            audit.watch(value)
        yield audit
    finally:
        audit.uninstall()
    if os.environ.get("VENDING_TEST_LEAK_AUDIT") != "0":
        figures = audit.check()
        credential_archive.add(request.node.nodeid, audit, figures)
