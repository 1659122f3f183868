"""Fixtures shared by the functional, security and fault suites.

- ``standin``: one IAM Credentials stand-in per session (faults and minted
  list reset before each test).
- ``oidc``: a test OIDC issuer with a live JWKS endpoint (per test).
- ``harness``: the HTTP function on a SQLite store; ``fs_harness`` on the
  Firestore emulator; ``any_harness`` parametrized over both.
"""

from __future__ import annotations

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
def any_harness(request: pytest.FixtureRequest, oidc: TestIssuer, standin: Any,
                tmp_path: Path) -> Iterator[ServiceHarness]:
    store = request.getfixturevalue("sqlite_store" if request.param == "sqlite" else "firestore_store")
    h = ServiceHarness(store, oidc, standin, tmp_path)
    yield h
    h.close()
