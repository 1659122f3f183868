"""The ``Store`` contract: one suite, run against SQLite and the Firestore emulator.

Every test takes the ``store`` fixture (tests/conftest.py), parametrized over
both backends, so a behaviour that differs between them fails here.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests import emulators
from tests.conftest import TEST_PROJECT
from vending.store import (
    Create,
    Delete,
    Filter,
    Query,
    Store,
    StoreConflict,
    StoreUnavailable,
    Update,
)
from vending.store.indexes import ISSUANCES, REPLAY

UTC = dt.UTC
KIND = "things"
T0 = dt.datetime(2026, 11, 28, 22, 40, 7, 123456, tzinfo=UTC)


def outcome(fn: Callable[[], Any]) -> str:
    """'ok', 'conflict', or the name of any other exception (which fails the test)."""
    try:
        fn()
    except StoreConflict:
        return "conflict"
    except Exception as exc:  # noqa: BLE001 - reported as a distinct outcome
        return f"{type(exc).__name__}: {exc}"
    return "ok"


# -- get / create -------------------------------------------------------------------


def test_get_missing_returns_none(store: Store) -> None:
    # GIVEN an empty store / WHEN a missing id is read / THEN None
    assert store.get(KIND, "nope") is None


def test_create_then_get_round_trips_every_value_type(store: Store) -> None:
    # GIVEN a document with every supported value type
    paris = dt.timezone(dt.timedelta(hours=1))
    data = {
        "s": "text ✓ with unicode",
        "empty": "",
        "looks_like_time": "2026-11-28T22:40:07Z",  # not the stored shape: stays a string
        "i": 42,
        "neg": -7,
        "big": 2**62,
        "zero": 0,
        "f": 1.5,
        "whole_float": 2.0,
        "t": True,
        "false": False,
        "none": None,
        "when": T0,
        "when_paris": dt.datetime(2026, 11, 28, 23, 40, 7, 1, tzinfo=paris),
        "list": [1, "two", None, True, {"k": T0}],
        "nested": {"a": {"b": [1, 2], "c": {"d": None}}, "at": T0 + dt.timedelta(microseconds=1)},
        "empty_list": [],
        "empty_map": {},
    }
    # WHEN it is created and read back
    store.write([Create(KIND, "all-types", data)])
    doc = store.get(KIND, "all-types")
    # THEN every value comes back equal, datetimes as aware UTC to the microsecond
    assert doc is not None
    assert doc.id == "all-types"
    assert isinstance(doc.version, str) and doc.version
    expected = dict(data, when_paris=dt.datetime(2026, 11, 28, 22, 40, 7, 1, tzinfo=UTC))
    assert doc.data == expected
    assert type(doc.data["t"]) is bool and type(doc.data["i"]) is int and type(doc.data["whole_float"]) is float
    for value in (doc.data["when"], doc.data["when_paris"], doc.data["list"][4]["k"], doc.data["nested"]["at"]):
        assert type(value) is dt.datetime
        assert value.utcoffset() == dt.timedelta(0)
    assert doc.data["nested"]["at"].microsecond == 123457


def test_naive_datetime_is_refused(store: Store) -> None:
    # GIVEN a naive datetime / WHEN written / THEN ValueError (a programming error), nothing stored
    with pytest.raises(ValueError, match="naive"):
        store.write([Create(KIND, "naive", {"at": dt.datetime(2026, 1, 1)})])
    assert store.get(KIND, "naive") is None


def test_create_existing_conflicts_and_writes_nothing(store: Store) -> None:
    # GIVEN b exists
    store.write([Create(KIND, "b", {"v": 1})])
    before = store.get(KIND, "b")
    # WHEN a batch creates a (new) and b (existing)
    with pytest.raises(StoreConflict):
        store.write([Create(KIND, "a", {"v": 2}), Create(KIND, "b", {"v": 3})])
    # THEN nothing of the batch was written
    assert store.get(KIND, "a") is None
    assert store.get(KIND, "b") == before


def test_create_duplicate_alone_conflicts(store: Store) -> None:
    store.write([Create(KIND, "dup", {"v": 1})])
    with pytest.raises(StoreConflict):
        store.write([Create(KIND, "dup", {"v": 2})])
    doc = store.get(KIND, "dup")
    assert doc is not None and doc.data == {"v": 1}


def test_batch_spanning_kinds_is_atomic(store: Store) -> None:
    # GIVEN a replay record exists / WHEN a batch creates an issuance and the same record
    store.write([Create(REPLAY, "jti-1", {"expires_at": T0})])
    with pytest.raises(StoreConflict):
        store.write([Create(ISSUANCES, "iss-1", {"state": "issuing"}), Create(REPLAY, "jti-1", {"expires_at": T0})])
    # THEN the issuance was not written either
    assert store.get(ISSUANCES, "iss-1") is None


# -- update -------------------------------------------------------------------------


def test_update_missing_conflicts_and_writes_nothing(store: Store) -> None:
    # GIVEN nothing / WHEN a batch creates c and updates a missing document
    with pytest.raises(StoreConflict):
        store.write([Create(KIND, "c", {"v": 1}), Update(KIND, "missing", {"v": 2})])
    # THEN neither exists
    assert store.get(KIND, "c") is None
    assert store.get(KIND, "missing") is None


def test_update_with_expect_version(store: Store) -> None:
    # GIVEN a document read at version v1, then changed to v2
    store.write([Create(KIND, "doc", {"n": 0, "keep": "me"})])
    v1 = store.get(KIND, "doc")
    assert v1 is not None
    store.write([Update(KIND, "doc", {"n": 1}, expect_version=v1.version)])
    v2 = store.get(KIND, "doc")
    assert v2 is not None
    # WHEN an update still expects v1
    with pytest.raises(StoreConflict):
        store.write([Update(KIND, "doc", {"n": 99}, expect_version=v1.version)])
    # THEN it was refused; the current version still works and changes the version
    assert store.get(KIND, "doc") == v2
    assert v2.version != v1.version and v2.data == {"n": 1, "keep": "me"}
    store.write([Update(KIND, "doc", {"n": 2}, expect_version=v2.version)])
    v3 = store.get(KIND, "doc")
    assert v3 is not None and v3.data == {"n": 2, "keep": "me"} and v3.version not in (v1.version, v2.version)


def test_update_foreign_version_conflicts(store: Store) -> None:
    # GIVEN a document / WHEN an update expects a version this backend never issued / THEN conflict
    store.write([Create(KIND, "doc", {"n": 0})])
    with pytest.raises(StoreConflict):
        store.write([Update(KIND, "doc", {"n": 1}, expect_version="not-a-version")])
    doc = store.get(KIND, "doc")
    assert doc is not None and doc.data == {"n": 0}


def test_update_sets_top_level_fields_only(store: Store) -> None:
    # GIVEN a document with a nested map
    store.write([Create(KIND, "doc", {"m": {"a": 1, "b": 2}, "x": 1})])
    # WHEN an update sets the map and fields whose names look like paths
    store.write([Update(KIND, "doc", {"m": {"c": 3}, "a.b": "dotted", "with-dash": T0, "none": None})])
    # THEN the map is replaced whole, the dotted name is a top-level field, others are kept
    doc = store.get(KIND, "doc")
    assert doc is not None
    assert doc.data == {"m": {"c": 3}, "a.b": "dotted", "with-dash": T0, "none": None, "x": 1}


# -- delete -------------------------------------------------------------------------


def test_delete(store: Store) -> None:
    store.write([Create(KIND, "gone", {"v": 1})])
    store.write([Delete(KIND, "gone")])
    assert store.get(KIND, "gone") is None


def test_delete_missing_conflicts(store: Store) -> None:
    with pytest.raises(StoreConflict):
        store.write([Delete(KIND, "never-was")])
    assert store.get(KIND, "never-was") is None


def test_delete_with_expect_version(store: Store) -> None:
    # GIVEN a document read at v1 and then updated
    store.write([Create(KIND, "doc", {"n": 0})])
    v1 = store.get(KIND, "doc")
    assert v1 is not None
    store.write([Update(KIND, "doc", {"n": 1})])
    # WHEN a delete expects v1 / THEN conflict and the document stays
    with pytest.raises(StoreConflict):
        store.write([Delete(KIND, "doc", expect_version=v1.version)])
    current = store.get(KIND, "doc")
    assert current is not None
    # AND a delete with the current version works
    store.write([Delete(KIND, "doc", expect_version=current.version)])
    assert store.get(KIND, "doc") is None


def test_recreated_document_does_not_match_old_version(store: Store) -> None:
    # GIVEN a document read, deleted and created again under the same id
    store.write([Create(KIND, "doc", {"n": 0})])
    old = store.get(KIND, "doc")
    assert old is not None
    store.write([Delete(KIND, "doc")])
    time.sleep(0.002)
    store.write([Create(KIND, "doc", {"n": 10})])
    # WHEN an update expects the old version / THEN conflict (no ABA)
    with pytest.raises(StoreConflict):
        store.write([Update(KIND, "doc", {"n": 1}, expect_version=old.version)])
    doc = store.get(KIND, "doc")
    assert doc is not None and doc.data == {"n": 10}


def test_empty_batch_is_a_no_op(store: Store) -> None:
    store.write([])
    assert store.get(KIND, "x") is None


# -- query --------------------------------------------------------------------------


def _seed_issuances(store: Store, count: int = 250) -> list[dict[str, Any]]:
    """``count`` issuances; pairs share created_at so the id tiebreak matters."""
    docs = []
    for i in range(count):
        docs.append(
            {
                "id": f"iss-{i:04d}",
                "state": "expired" if i % 3 == 0 else "active",
                "principal": f"p{i % 4}",
                "service_account": "sa@p.iam.gserviceaccount.com",
                "created_at": T0 + dt.timedelta(seconds=i // 2),
                "expire_time": T0 + dt.timedelta(hours=1, seconds=(count - i) // 2),
            }
        )
    store.write([Create(ISSUANCES, d["id"], {k: v for k, v in d.items() if k != "id"}) for d in docs])
    return docs


def _pages(store: Store, query: Query, order: str) -> Iterator[list[Any]]:
    cursor = None
    while True:
        page = store.query(Query(query.kind, query.filters, query.order_by, query.descending, query.limit, cursor))
        yield page
        if len(page) < query.limit:
            return
        cursor = (page[-1].data[order], page[-1].id)


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
def test_query_equality_range_order_limit_and_pagination(store: Store, descending: bool) -> None:
    # GIVEN 250 issuances
    docs = _seed_issuances(store)
    lower = T0 + dt.timedelta(seconds=10)
    query = Query(
        ISSUANCES,
        (Filter("state", "==", "active"), Filter("created_at", ">=", lower)),
        order_by="created_at",
        descending=descending,
        limit=17,
    )
    # WHEN every page is fetched with start_after cursors
    pages = list(_pages(store, query, "created_at"))
    got = [d.id for page in pages for d in page]
    # THEN all matches come back once, ordered by created_at then id, in limit-sized pages
    want = sorted(
        ((d["created_at"], d["id"]) for d in docs if d["state"] == "active" and d["created_at"] >= lower),
        reverse=descending,
    )
    assert got == [i for _, i in want]
    assert all(len(p) == 17 for p in pages[:-1]) and len(pages[-1]) < 17
    first = pages[0][0]
    assert first.data["state"] == "active" and type(first.data["created_at"]) is dt.datetime


def test_query_composite_equality_and_exclusive_bounds(store: Store) -> None:
    # GIVEN 250 issuances
    docs = _seed_issuances(store)
    low, high = T0 + dt.timedelta(seconds=20), T0 + dt.timedelta(seconds=40)
    # WHEN filtering on two equality fields and an exclusive range on both sides
    got = store.query(
        Query(
            ISSUANCES,
            (
                Filter("principal", "==", "p1"),
                Filter("state", "==", "active"),
                Filter("created_at", ">", low),
                Filter("created_at", "<", high),
            ),
            order_by="created_at",
            limit=100,
        )
    )
    # THEN exactly the documents strictly inside the bounds, to the microsecond
    want = sorted(
        (d["created_at"], d["id"])
        for d in docs
        if d["principal"] == "p1" and d["state"] == "active" and low < d["created_at"] < high
    )
    assert [d.id for d in got] == [i for _, i in want]
    assert want  # the fixture data does exercise this shape


def test_query_range_without_order_by_orders_by_range_field(store: Store) -> None:
    # GIVEN replay records / WHEN querying expires_at < t without order_by
    store.write([Create(REPLAY, f"r{i}", {"expires_at": T0 + dt.timedelta(microseconds=9 - i)}) for i in range(10)])
    got = store.query(Query(REPLAY, (Filter("expires_at", "<", T0 + dt.timedelta(microseconds=5)),)))
    # THEN ascending expires_at, the bound is exact to the microsecond
    assert [d.id for d in got] == ["r9", "r8", "r7", "r6", "r5"]


def test_query_skips_documents_without_the_order_field(store: Store) -> None:
    store.write([Create(REPLAY, "with", {"expires_at": T0}), Create(REPLAY, "without", {"other": 1})])
    got = store.query(Query(REPLAY, order_by="expires_at"))
    assert [d.id for d in got] == ["with"]


def test_query_equality_matches_type_and_null_exactly(store: Store) -> None:
    # GIVEN states of several types, null, and a missing state
    values: dict[str, Any] = {"s-true": True, "s-one": 1, "s-text": "1", "s-null": None, "s-false": False}
    store.write(
        [Create(ISSUANCES, i, {"state": v, "created_at": T0}) for i, v in values.items()]
        + [Create(ISSUANCES, "s-missing", {"created_at": T0})]
    )

    def ids(value: Any) -> list[str]:
        return [d.id for d in store.query(Query(ISSUANCES, (Filter("state", "==", value),), order_by="created_at"))]

    # WHEN filtering on each / THEN only the same type and value matches; None matches null, not missing
    assert ids(True) == ["s-true"]
    assert ids(1) == ["s-one"]
    assert ids("1") == ["s-text"]
    assert ids(None) == ["s-null"]
    assert ids(False) == ["s-false"]


def test_query_range_matches_only_the_bound_type(store: Store) -> None:
    # GIVEN expires_at holding a datetime, a number and a string
    store.write(
        [
            Create(REPLAY, "dt", {"expires_at": T0}),
            Create(REPLAY, "num", {"expires_at": 5}),
            Create(REPLAY, "str", {"expires_at": "zzz"}),
        ]
    )
    # WHEN ranging over datetimes / numbers / THEN only values of that type come back
    assert [d.id for d in store.query(Query(REPLAY, (Filter("expires_at", ">", T0 - dt.timedelta(days=1)),)))] == ["dt"]
    assert [d.id for d in store.query(Query(REPLAY, (Filter("expires_at", ">=", 0),)))] == ["num"]


@pytest.mark.parametrize(
    "query",
    [
        Query(ISSUANCES, order_by="expire_time"),  # order not declared alone
        Query(ISSUANCES, (Filter("principal", "==", "p"),), order_by="expire_time"),
        Query(
            ISSUANCES, (Filter("state", "==", "active"), Filter("expire_time", "<", T0)), order_by="created_at"
        ),  # range off the order field
        Query(ISSUANCES, (Filter("state", "==", "active"),)),  # no order at all
        Query(KIND, (Filter("x", "==", 1),)),  # undeclared kind
    ],
    ids=["order-only", "eq+order", "range-not-on-order", "eq-without-order", "unknown-kind"],
)
def test_undeclared_query_shape_is_a_value_error(store: Store, query: Query) -> None:
    with pytest.raises(ValueError, match=r"undeclared|range filters"):
        store.query(query)


# -- concurrency: exactly one winner ---------------------------------------------


def test_exactly_one_of_50_concurrent_creates_wins(store: Store) -> None:
    # GIVEN 50 threads released together
    threads = 50
    barrier = threading.Barrier(threads)

    def create(n: int) -> str:
        barrier.wait(timeout=30)
        return outcome(lambda: store.write([Create(KIND, "the-one", {"by": n})]))

    # WHEN each creates the same id
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(create, range(threads)))
    # THEN exactly one success and 49 clean conflicts, nothing else
    assert Counter(results) == {"ok": 1, "conflict": threads - 1}
    doc = store.get(KIND, "the-one")
    assert doc is not None and results[doc.data["by"]] == "ok"


def test_one_optimistic_update_wins_per_version_round(store: Store) -> None:
    # GIVEN a counter and 20 threads
    threads, rounds = 20, 5
    store.write([Create(KIND, "counter", {"n": 0})])
    per_round = []

    def bump(barrier: threading.Barrier) -> str:
        doc = store.get(KIND, "counter")
        barrier.wait(timeout=30)  # everybody has read the same version
        assert doc is not None
        return outcome(
            lambda: store.write([Update(KIND, "counter", {"n": doc.data["n"] + 1}, expect_version=doc.version)])
        )

    for _ in range(rounds):
        # WHEN all of them read, then update expecting the version they read
        barrier = threading.Barrier(threads)
        with ThreadPoolExecutor(threads) as pool:
            per_round.append(Counter(pool.map(bump, [barrier] * threads)))
    # THEN each round has exactly one winner and no update was lost
    assert per_round == [{"ok": 1, "conflict": threads - 1}] * rounds
    doc = store.get(KIND, "counter")
    assert doc is not None and doc.data["n"] == rounds


# -- unavailability -------------------------------------------------------------


@pytest.fixture(params=["sqlite-unwritable", "firestore-closed-port"])
def unreachable_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    if request.param == "sqlite-unwritable":
        from vending.store.sqlite import SqliteStore

        (tmp_path / "a-file").write_text("not a directory")
        store: Store = SqliteStore(str(tmp_path / "a-file" / "store.db"))
    else:
        from vending.store.firestore import FirestoreStore

        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{emulators.free_port()}")
        store = FirestoreStore(TEST_PROJECT, retry_deadline_s=0.5)  # the default (2 s) is checked below
    yield store
    store.close()


@pytest.mark.parametrize("operation", ["get", "write", "query", "ping"])
def test_unreachable_backend_raises_store_unavailable_fast(unreachable_store: Store, operation: str) -> None:
    calls: dict[str, Callable[[], Any]] = {
        "get": lambda: unreachable_store.get(KIND, "x"),
        "write": lambda: unreachable_store.write([Create(KIND, "x", {"v": 1})]),
        "query": lambda: unreachable_store.query(Query(REPLAY, order_by="expires_at")),
        "ping": unreachable_store.ping,
    }
    # GIVEN a backend that cannot be reached / WHEN any operation runs
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        calls[operation]()
    elapsed = time.monotonic() - started
    # THEN StoreUnavailable (with the cause chained) within seconds: a bound with room for a loaded machine
    assert elapsed < 30.0
    assert info.value.retryable and info.value.http_status == 503
    assert info.value.__cause__ is not None


def test_firestore_default_settings_give_up_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from vending.store.firestore import FirestoreStore

    # GIVEN a store with default timeouts pointed at a closed port
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{emulators.free_port()}")
    store = FirestoreStore(TEST_PROJECT)
    # WHEN it is pinged / THEN StoreUnavailable after the short retry deadline, not the client's 60 s
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.ping()
    elapsed = time.monotonic() - started
    store.close()
    assert elapsed < 30.0  # the client's own default would retry for 60 s


def test_sqlite_locked_database_is_unavailable(tmp_path: Path) -> None:
    import sqlite3

    from vending.store.sqlite import SqliteStore

    # GIVEN another process-like connection holding the write lock
    path = tmp_path / "locked.db"
    store = SqliteStore(str(path), busy_timeout_s=0.3)
    store.write([Create(KIND, "a", {"v": 1})])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        # WHEN the store writes / THEN StoreUnavailable after the busy timeout
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.write([Create(KIND, "b", {"v": 2})])
        elapsed = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert elapsed < 20.0  # the busy timeout (0.3 s), not forever
    # AND once the lock is gone the store works again, reads never stopped
    store.write([Create(KIND, "b", {"v": 2})])
    assert store.get(KIND, "b") is not None
    store.close()


@pytest.mark.parametrize("where", [":memory:", "nested/dir/vending.db"])
def test_sqlite_memory_and_new_directories_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    from vending.store.sqlite import SqliteStore

    # GIVEN an in-memory database, or a file whose parent directories do not exist yet
    monkeypatch.chdir(tmp_path)
    store = SqliteStore(where)
    # WHEN used from several threads / THEN it behaves like any other store
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: outcome(lambda: store.write([Create(KIND, "x", {"v": 1})])), range(16)))
    assert Counter(results) == {"ok": 1, "conflict": 15}
    store.ping()
    assert store.get(KIND, "x") is not None
    store.close()
    assert (where == ":memory:") or (tmp_path / where).exists()
