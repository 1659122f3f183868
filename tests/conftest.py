"""Shared fixtures: emulators (once per run) and one store per backend.

- ``firestore_emulator`` / ``pubsub_emulator`` (session): a running emulator
  (``tests.emulators.Emulator``; ``.host``, ``.stop()``, ``.start()``), started
  on first use or reused from ``FIRESTORE_EMULATOR_HOST`` /
  ``PUBSUB_EMULATOR_HOST``. They export the variables the Google clients read.
- ``sqlite_store`` / ``firestore_store`` (function): an empty store.
- ``store``: parametrized over both backends; Firestore items carry the
  ``emulator`` marker (``-m "not emulator"`` runs SQLite only).

The emulator gate (issue 19): a test that needs an emulator FAILS when the
emulator cannot start (gcloud missing, Java missing, a port taken): ``make
test`` never passes by skipping them. The one opt-out is explicit:
``VENDING_SKIP_EMULATORS=1`` deselects every emulator test (the ``emulator``
marker, or a Firestore / Pub/Sub emulator fixture) and the end of the run says
how many were NOT run and from which modules.

Output capture and the leak audit: pytest puts its own ``sys.stdout`` /
``sys.stderr`` back at every test phase; ``pytest_runtest_setup`` / ``call`` /
``teardown`` below tee them again into any installed ``LeakAudit``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import emulators

TEST_PROJECT = "vending-test"


SKIP_EMULATORS_VAR = "VENDING_SKIP_EMULATORS"
EMULATOR_FIXTURES = ("firestore_emulator", "pubsub_emulator")


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too so the suite does not depend on pyproject's [tool.pytest].
    config.addinivalue_line("markers", "long: long-running variants (deselected by default)")
    config.addinivalue_line("markers", "emulator: needs the Firestore / Pub/Sub emulators")
    _warm_x509_datetime()


def _warm_x509_datetime() -> None:
    """Build one X.509 certificate before any test can freeze time.

    cryptography's Rust x509 code looks ``datetime.datetime`` up once and keeps it. If its first
    certificate is built under freezegun (which swaps that name for ``FakeDatetime``), every later
    certificate built with a real datetime fails ("'datetime' object is not an instance of
    'FakeDatetime'"): the IAM stand-in's /oauth2/v1/certs then breaks, depending on test order.
    """
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warm-up")])
    now = dt.datetime.now(dt.UTC)
    (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


# -- the emulator gate: fail, never skip; deselect only when asked, and say so -------------------------


def skip_emulators_requested() -> bool:
    return os.environ.get(SKIP_EMULATORS_VAR, "") == "1"


def _needs_emulator(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return item.get_closest_marker("emulator") is not None or any(n in names for n in EMULATOR_FIXTURES)


_NOT_RUN: Counter[str] = Counter()  # module -> emulator tests deselected by the opt-out
_GATE_FAILURES: dict[str, str] = {}  # emulator name -> why it could not start


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_emulator(item) and item.get_closest_marker("emulator") is None:
            item.add_marker(pytest.mark.emulator)  # so -m "not emulator" means the same thing
    if not skip_emulators_requested():
        return
    keep, dropped = [], []
    for item in items:
        (dropped if _needs_emulator(item) else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
        _NOT_RUN.update(item.nodeid.split("::", 1)[0] for item in dropped)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _NOT_RUN:
        total = sum(_NOT_RUN.values())
        terminalreporter.section("emulator tests NOT run", sep="-", yellow=True)
        terminalreporter.write_line(
            f"{SKIP_EMULATORS_VAR}=1: {total} emulator tests deselected, NOT run, in {len(_NOT_RUN)} modules:",
            yellow=True,
        )
        for module, count in sorted(_NOT_RUN.items()):
            terminalreporter.write_line(f"  {module}: {count}")
    elif skip_emulators_requested():
        terminalreporter.write_line(f"{SKIP_EMULATORS_VAR}=1: no emulator test was selected", yellow=True)
    for name, why in sorted(_GATE_FAILURES.items()):
        terminalreporter.section(f"{name} emulator missing", sep="-", red=True)
        terminalreporter.write_line(why, red=True)


def _gate_message(name: str, exc: BaseException) -> str:
    return (
        f"the {name} emulator is needed by the tests that errored here and could not start: {exc}\n"
        f"Install gcloud (with its emulator components) and Java 17+, or point "
        f"{'FIRESTORE' if name == 'firestore' else 'PUBSUB'}_EMULATOR_HOST at a running emulator. "
        f"To run the suite without the emulator tests, opt out explicitly: {SKIP_EMULATORS_VAR}=1 "
        f"(they are then deselected and listed at the end of the run)."
    )


# -- output capture for the leak audit ---------------------------------------------------------------


def _tee_streams() -> Any:
    import contextlib
    import sys

    audit = sys.modules.get("tests.support.audit")
    return audit.tee_streams() if audit is not None else contextlib.nullcontext()


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _tee_streams():
        yield


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _tee_streams():
        yield


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    with _tee_streams():
        yield


# -- emulators (session scope: each takes several seconds to start) ---------------


def _start(factory: Any, env_var: str) -> Iterator[emulators.Emulator]:
    name = "firestore" if "FIRESTORE" in env_var else "pubsub"
    failure: str | None = None
    try:
        emulator = factory(TEST_PROJECT)
    except emulators.EmulatorError as exc:
        failure = _GATE_FAILURES[name] = _gate_message(name, exc)
    if failure is not None:  # never a skip: make test must not pass without them (raised outside the except:
        pytest.fail(failure, pytrace=False)  # no "during handling of the above exception" noise)
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
import freezegun  # noqa: E402 - configured here, next to the reason

freezegun.configure(
    extend_ignore_list=["google.api_core", "google.cloud", "google.auth", "grpc", "urllib3", "requests"]
)
