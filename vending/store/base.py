"""The one storage Protocol: a small document store with atomic batches.

Both backends (``FirestoreStore`` for production, ``SqliteStore`` for the
embedded default) implement exactly this and pass the same contract suite
(``tests/contract/test_store_contract.py``).

Model
- Documents live in *kinds* (Firestore collections, SQLite tables), are
  addressed by string ``id`` and hold a JSON-like ``dict``: str, int, float,
  bool, None, list, dict and aware UTC ``datetime`` values.
- Every document has an opaque ``version`` string that changes on each write
  (Firestore ``update_time``; an integer counter in SQLite).
- ``write`` applies a list of ``Create`` / ``Update`` / ``Delete`` atomically
  in ONE round trip: all or nothing. ``Create`` fails if the id exists;
  ``Update`` fails if the document is missing or, when ``expect_version`` is
  set, if the document changed since it was read. Any such failure raises
  ``StoreConflict`` and nothing is written. This is how "exactly one winner"
  is built without transactions (see GUIDE: transactions lock hot documents
  on the emulator and time out under contention).
- ``query`` supports equality and range filters combined with one order, and
  must only be used with a shape declared in ``vending.store.indexes`` (both
  backends check it, so the Terraform index list stays complete).
- Backend failures (network, emulator down, locked database) raise
  ``StoreUnavailable``; callers fail closed.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

from vending.errors import ConflictError, UnavailableError

Op = Literal["==", "<", "<=", ">", ">="]


class StoreConflict(ConflictError):
    """A create hit an existing id, or an update's precondition failed."""

    reason = "conflict"


class StoreUnavailable(UnavailableError):
    """The backend could not be reached or did not answer in time."""

    reason = "store-unavailable"


@dataclass(frozen=True)
class Doc:
    id: str
    data: dict[str, Any]
    version: str


@dataclass(frozen=True)
class Create:
    kind: str
    id: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Update:
    """Set the given top-level fields (others are kept)."""

    kind: str
    id: str
    changes: dict[str, Any]
    expect_version: str | None = None


@dataclass(frozen=True)
class Delete:
    kind: str
    id: str
    expect_version: str | None = None


Write = Create | Update | Delete


@dataclass(frozen=True)
class Filter:
    field: str
    op: Op
    value: Any


@dataclass(frozen=True)
class Query:
    kind: str
    filters: tuple[Filter, ...] = ()
    order_by: str | None = None
    descending: bool = False
    limit: int = 100
    # Cursor: the value of ``order_by`` and the id of the last document seen.
    start_after: tuple[Any, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Store(Protocol):
    """Storage role used by the ledger, approvals and replay guard."""

    def get(self, kind: str, id: str) -> Doc | None:
        """One document, or None."""

    def write(self, writes: Sequence[Write]) -> None:
        """Apply all writes atomically in one round trip, or raise StoreConflict."""

    def query(self, query: Query) -> list[Doc]:
        """Documents matching every filter, ordered by ``order_by`` then id."""

    def ping(self) -> None:
        """Raise StoreUnavailable if the backend cannot be reached."""

    def close(self) -> None:
        """Release connections."""


def is_datetime(value: Any) -> bool:
    return isinstance(value, _dt.datetime)
