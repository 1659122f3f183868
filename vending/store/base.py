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
- Invalid input (a naive datetime, an unsupported type, an undeclared query
  shape, a bad kind or id) is a programming error: ``ValueError`` /
  ``TypeError``. The checks live at the end of this module (``prepare_writes``,
  ``plan_query``) so every backend refuses exactly the same things.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from vending.errors import ConflictError, UnavailableError
from vending.store.indexes import is_declared

Op = Literal["==", "<", "<=", ">", ">="]


class StoreConflict(ConflictError):
    """A create hit an existing id, or an update's precondition failed."""

    reason = "conflict"


class StoreUnavailable(UnavailableError):
    """The backend could not be reached or did not answer in time."""

    reason = "store-unavailable"


@dataclass(frozen=True)
class Doc:
    """A stored document: its id, data and version."""

    id: str
    data: dict[str, Any]
    version: str


@dataclass(frozen=True)
class Create:
    """Write a new document; fails if the id exists."""

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
    """Delete a document, optionally only at an expected version."""

    kind: str
    id: str
    expect_version: str | None = None


Write = Create | Update | Delete


@dataclass(frozen=True)
class Filter:
    """One query condition: ``field op value``."""

    field: str
    op: Op
    value: Any


@dataclass(frozen=True)
class Query:
    """A query of one kind, in one of the declared shapes (``vending.store.indexes``)."""

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


# ---------------------------------------------------------------------------
# Shared checks used by every backend, so they refuse exactly the same inputs.

MAX_WRITES = 500  # Firestore's limit for one commit; SQLite enforces it too.
RANGE_OPS = frozenset({"<", "<=", ">", ">="})
_KIND_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_kind(kind: str) -> str:
    """A kind is a plain identifier (a SQLite table name, a Firestore collection id)."""
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise ValueError(f"invalid kind {kind!r}: want [A-Za-z][A-Za-z0-9_]{{0,62}}")
    return kind


def check_id(doc_id: str) -> str:
    """Firestore's document id rules, applied by every backend."""
    if (
        not isinstance(doc_id, str)
        or not doc_id
        or "/" in doc_id
        or doc_id in (".", "..")
        or (doc_id.startswith("__") and doc_id.endswith("__"))
        or len(doc_id.encode("utf-8")) > 1500
    ):
        raise ValueError(f"invalid document id {doc_id!r}")
    return doc_id


def prepare_writes(writes: Sequence[Write]) -> list[Write]:
    """Validate a batch; return it with every document normalized (``normalize_data``)."""
    if len(writes) > MAX_WRITES:
        raise ValueError(f"at most {MAX_WRITES} writes per batch, got {len(writes)}")
    out: list[Write] = []
    for w in writes:
        if isinstance(w, Create):
            out.append(Create(check_kind(w.kind), check_id(w.id), normalize_data(w.data)))
        elif isinstance(w, Update):
            if not w.changes:
                raise ValueError(f"Update of {w.kind}/{w.id} has no changes")
            out.append(Update(check_kind(w.kind), check_id(w.id), normalize_data(w.changes), w.expect_version))
        elif isinstance(w, Delete):
            out.append(Delete(check_kind(w.kind), check_id(w.id), w.expect_version))
        else:
            raise TypeError(f"not a store write: {w!r}")
    return out


@dataclass(frozen=True)
class QueryPlan:
    """A validated query: equality filters, range filters on ``order`` only, one order."""

    kind: str
    equality: tuple[Filter, ...]
    ranges: tuple[Filter, ...]
    order: str | None  # the order_by field, or the range field when order_by is None
    descending: bool
    limit: int
    start_after: tuple[Any, str] | None


def plan_query(query: Query) -> QueryPlan:
    """Validate ``query`` against the declared shapes; ValueError is a programming error."""
    check_kind(query.kind)
    equality: list[Filter] = []
    ranges: list[Filter] = []
    for f in query.filters:
        if not isinstance(f.field, str) or not _FIELD_RE.fullmatch(f.field):
            raise ValueError(f"invalid field path {f.field!r}")
        if isinstance(f.value, (dict, list, tuple)):
            raise TypeError(f"filter on {f.field!r}: only scalar values are supported")
        f = Filter(f.field, f.op, _normalize(f.value, f.field))
        if f.op == "==":
            equality.append(f)
        elif f.op in RANGE_OPS:
            if f.value is None:
                raise ValueError(f"range filter on {f.field!r} with None")
            ranges.append(f)
        else:
            raise ValueError(f"unsupported operator {f.op!r}")
    order = query.order_by
    if order is not None and not _FIELD_RE.fullmatch(order):
        raise ValueError(f"invalid order_by {order!r}")
    range_fields = {f.field for f in ranges}
    if len(range_fields) > 1 or (order is not None and range_fields - {order}):
        raise ValueError(f"range filters are only allowed on the order field ({order!r}), got {sorted(range_fields)}")
    if order is None and range_fields:
        order = next(iter(range_fields))
    eq_fields = [f.field for f in equality]
    if len(set(eq_fields)) != len(eq_fields):
        raise ValueError(f"repeated equality field in {eq_fields}")
    if not is_declared(query.kind, eq_fields, order):
        raise ValueError(
            f"undeclared query shape ({query.kind!r}, equality={sorted(eq_fields)}, order={order!r}): "
            "add it to vending.store.indexes.INDEXES (and the Terraform indexes)"
        )
    if not isinstance(query.limit, int) or isinstance(query.limit, bool) or query.limit < 1:
        raise ValueError(f"limit must be a positive integer, got {query.limit!r}")
    start_after = query.start_after
    if start_after is not None:
        if len(start_after) != 2 or isinstance(start_after[0], (dict, list, tuple)):
            raise TypeError("start_after must be (order value, id)")
        start_after = (_normalize(start_after[0], "start_after"), check_id(start_after[1]))
    return QueryPlan(
        query.kind, tuple(equality), tuple(ranges), order, bool(query.descending), query.limit, start_after
    )


_PLAIN = frozenset({str, bool})  # exact types that _normalize returns as they are (not subclasses)


def normalize_data(data: dict[str, Any]) -> dict[str, Any]:
    """Check a document (or an Update's changes) holds only the supported value types.

    Returns a copy with tuples as lists and datetimes as aware UTC; raises
    ValueError for naive datetimes, NaN / infinity, non-string keys and other types,
    so both backends accept and refuse exactly the same documents.
    """
    if not isinstance(data, dict):
        raise TypeError(f"document data must be a dict, got {type(data).__name__}")
    normalized: dict[str, Any] = _normalize(data, "")
    return normalized


def _normalize(value: Any, path: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{path or 'value'}: integer out of 64-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path or 'value'}: NaN and infinity are not stored")
        return value
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{path or 'value'}: naive datetime; use aware UTC (vending.clock)")
        return value.astimezone(_dt.UTC)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k or (k.startswith("__") and k.endswith("__")):
                raise ValueError(f"{path or 'document'}: keys must be non-empty strings, not __x__, got {k!r}")
            # Plain values (most fields) need no path: it is only built for a value that may fail.
            out[k] = v if v is None or type(v) in _PLAIN else _normalize(v, f"{path}.{k}" if path else k)
        return out
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (list, tuple)) for v in value):
            raise ValueError(f"{path or 'value'}: a list cannot hold a list directly (Firestore rule)")
        return [v if type(v) in _PLAIN else _normalize(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{path or 'value'}: unsupported type {type(value).__name__}")
