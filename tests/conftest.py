"""Shared fixtures: emulators (once per run) and one store per backend.

- ``firestore_emulator`` / ``pubsub_emulator`` (session): a running emulator
  (``tests.emulators.Emulator``; ``.host``, ``.stop()``, ``.start()``), started
  on first use or reused from ``FIRESTORE_EMULATOR_HOST`` /
  ``PUBSUB_EMULATOR_HOST``. They export the variables the Google clients read.
- ``sqlite_store`` / ``firestore_store`` (function): an empty store.
- ``store``: parametrized over both backends; Firestore items carry the
  ``emulator`` marker (``-m "not emulator"`` runs SQLite only).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import emulators

TEST_PROJECT = "vending-test"


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too so the suite does not depend on pyproject's [tool.pytest].
    config.addinivalue_line("markers", "long: long-running variants (deselected by default)")
    config.addinivalue_line("markers", "emulator: needs the Firestore / Pub/Sub emulators")


# -- emulators (session scope: each takes several seconds to start) ---------------

def _start(factory: Any, env_var: str) -> Iterator[emulators.Emulator]:
    try:
        emulator = factory(TEST_PROJECT)
    except emulators.EmulatorError as exc:
        if "not on PATH" in str(exc) and not os.environ.get("CI"):
            pytest.skip(str(exc))  # a laptop without gcloud; in CI the emulator tests must run
        raise
    with pytest.MonkeyPatch.context() as mp:  # session-wide env, undone at the end
        mp.setenv(env_var, emulator.host)
        mp.setenv("GOOGLE_CLOUD_PROJECT", TEST_PROJECT)
        yield emulator
    emulator.stop()  # no-op for an emulator reused from the environment


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[emulators.Emulator]:
    yield from _start(emulators.firestore_emulator, "FIRESTORE_EMULATOR_HOST")


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[emulators.Emulator]:
    yield from _start(emulators.pubsub_emulator, "PUBSUB_EMULATOR_HOST")


# -- stores -------------------------------------------------------------------------

@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Any]:
    from vending.store.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "store.db"))
    yield store
    store.close()


@pytest.fixture
def firestore_store(firestore_emulator: emulators.Emulator) -> Iterator[Any]:
    from vending.store.firestore import FirestoreStore

    if not firestore_emulator.running and firestore_emulator.owned:
        firestore_emulator.start()  # a fault test left it stopped
    emulators.reset_firestore(firestore_emulator.host, TEST_PROJECT)
    store = FirestoreStore(TEST_PROJECT)
    yield store
    store.close()


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def store(request: pytest.FixtureRequest) -> Any:
    """Each backend in turn (the contract suite runs once per backend)."""
    return request.getfixturevalue(f"{request.param}_store")


# -- one clock, frozen only for our code ------------------------------------------------
# freezegun freezes time for vending's clock; the Google client libraries must keep
# real time or their retry deadlines never pass (a frozen monotonic clock makes
# api_core retry forever).
import freezegun

freezegun.configure(extend_ignore_list=["google.api_core", "google.cloud", "google.auth", "grpc", "urllib3",
                                        "requests"])
