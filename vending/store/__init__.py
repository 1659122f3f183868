"""Storage: the ``Store`` Protocol and ``open_store`` to build the configured backend.

Backends are imported lazily: ``vending.store.firestore`` pulls in
google.cloud and grpc (~350 ms), which the SQLite default never needs, so
importing ``vending.store`` stays cheap. ``SqliteStore`` and ``FirestoreStore``
are still reachable as attributes of this package (imported on first access).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vending.store.base import (
    Create,
    Delete,
    Doc,
    Filter,
    Op,
    Query,
    Store,
    StoreConflict,
    StoreUnavailable,
    Update,
    Write,
)

if TYPE_CHECKING:
    from vending.config import Settings
    from vending.store.firestore import FirestoreStore
    from vending.store.sqlite import SqliteStore

__all__ = [
    "Create",
    "Delete",
    "Doc",
    "Filter",
    "FirestoreStore",
    "Op",
    "Query",
    "SqliteStore",
    "Store",
    "StoreConflict",
    "StoreUnavailable",
    "Update",
    "Write",
    "open_store",
]


def open_store(settings: Settings) -> Store:
    """The backend named by ``settings.store``: ``firestore`` or ``sqlite:PATH``.

    Nothing is contacted here (both backends connect on first use); call
    ``ping()`` to check reachability at start-up.
    """
    if settings.store_kind == "firestore":
        from vending.store.firestore import FirestoreStore

        return FirestoreStore(settings.project, settings.firestore_database)
    from vending.store.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path)


def __getattr__(name: str) -> Any:
    if name == "SqliteStore":
        from vending.store.sqlite import SqliteStore

        return SqliteStore
    if name == "FirestoreStore":
        from vending.store.firestore import FirestoreStore

        return FirestoreStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
