"""The embedded store: SQLite, one table per kind, JSON documents.

This is the local default (``VENDING_STORE=sqlite:PATH``). It implements the
``Store`` Protocol with the same semantics as ``FirestoreStore`` and passes the
same contract suite.

Layout
- One table per kind, created on first use:
  ``(id TEXT PRIMARY KEY, data TEXT /* JSON */, version INTEGER)``, plus one
  expression index per declared query shape of that kind
  (``vending.store.indexes.INDEXES``).
- Datetimes are stored inside the JSON as fixed-width UTC strings
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` so they sort as text; any string of exactly
  that shape is read back as an aware UTC datetime.
- ``version`` is a database-wide counter (table ``_meta``) bumped once per
  committed batch, so a deleted and re-created document never gets back an
  old version (no ABA on ``expect_version``).
- Queries follow Firestore's semantics: ordering by a field skips documents
  without it, a filter only matches values of its own type (``1`` never
  matches ``true``, a string bound never matches a datetime), ``== None``
  matches null but not missing, and ties are broken by id in the same
  direction as the order.

Concurrency
- WAL mode: readers never block the writer. Each batch is one
  ``BEGIN IMMEDIATE`` transaction; within this process writers also queue on
  a lock (cheaper and fairer than every thread spinning in SQLite's busy
  handler), across processes ``busy_timeout`` applies.
- Connections come from a small pool (``check_same_thread=False``, one user
  at a time). ``:memory:`` uses one shared connection behind a lock, since
  every ``:memory:`` connection is a separate database.
- Any ``sqlite3`` or file system failure (locked, disk full, unwritable path)
  raises ``StoreUnavailable``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vending.store.base import (
    Create,
    Delete,
    Doc,
    Query,
    StoreConflict,
    StoreUnavailable,
    Update,
    Write,
    check_id,
    check_kind,
    plan_query,
    prepare_writes,
)
from vending.store.indexes import INDEXES

_UTC = _dt.UTC
_DATETIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_SQL_OPS = {"==": "=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


# -- value codec -------------------------------------------------------------


def encode_datetime(value: _dt.datetime) -> str:
    """Fixed-width, sortable UTC text: ``2026-11-28T22:40:07.123456Z``."""
    v = value.astimezone(_UTC)
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}Z"


def _datetime_text(value: Any) -> str:
    """The JSON encoder's hook: a normalized document holds no other non-JSON value than datetimes."""
    if isinstance(value, _dt.datetime):
        return encode_datetime(value)
    raise TypeError(f"{type(value).__name__} is not a document value")


def _from_json(value: Any) -> Any:
    """JSON value -> document value (datetime-shaped strings become datetimes)."""
    if isinstance(value, str):
        if len(value) == 27 and _DATETIME_RE.fullmatch(value):
            try:
                return _dt.datetime.fromisoformat(value[:-1]).replace(tzinfo=_UTC)
            except ValueError:
                return value
        return value
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    """A normalized document as stored: JSON with datetimes as text (``encode_datetime``)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_datetime_text)


def _param(value: Any) -> Any:
    """A query value as an SQL parameter comparable with ``json_extract``."""
    return encode_datetime(value) if isinstance(value, _dt.datetime) else value


_DATETIME_GLOB = "'" + "[0-9]" * 4 + "-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]." + "[0-9]" * 6 + "Z'"


def _type_guard(field: str, value: Any) -> str:
    """SQL restricting ``field`` to the type of ``value``: Firestore never compares across types."""
    json_type = f"json_type(data, '$.{field}')"
    if isinstance(value, bool):  # json_extract gives 1/0 for true/false
        return f"{json_type} IN ('true', 'false')"
    if isinstance(value, (int, float)):
        return f"{json_type} IN ('integer', 'real')"
    glob = f"{_path(field)} GLOB {_DATETIME_GLOB}"
    if isinstance(value, _dt.datetime):
        return f"{json_type} = 'text' AND {glob}"
    return f"{json_type} = 'text' AND NOT {glob}"


def _path(field: str) -> str:
    # Field paths are validated by plan_query ([A-Za-z_][A-Za-z0-9_]* joined by dots)
    # and inlined so the expression matches the index expression exactly.
    return f"json_extract(data, '$.{field}')"


def _table(kind: str) -> str:
    return f'"{kind}"'  # kinds are validated identifiers (check_kind)


# -- the store ---------------------------------------------------------------


class SqliteStore:
    """``Store`` on one SQLite file (or ``:memory:``)."""

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0, pool_size: int = 8) -> None:
        self.path = str(path)
        self._memory = self.path == ":memory:" or self.path.startswith("file::memory:")
        self._busy_timeout_s = busy_timeout_s
        self._pool_size = pool_size
        self._pool: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._write_lock = threading.RLock()  # one writer at a time in this process
        self._shared_lock = threading.RLock()  # :memory: only: guards the one connection
        self._shared: sqlite3.Connection | None = None
        self._initialized = False
        self._init_lock = threading.Lock()
        self._known_kinds: set[str] = set()
        self._closed = False

    # -- connections -------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if not self._memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            with self._init_lock:
                if not self._initialized:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("CREATE TABLE IF NOT EXISTS _meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
                    conn.execute("INSERT OR IGNORE INTO _meta (name, value) VALUES ('version', 0)")
                    self._initialized = True
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for the caller's exclusive use; any failure -> StoreUnavailable."""
        if self._closed:
            raise StoreUnavailable("the SQLite store is closed")
        try:
            if self._memory:
                with self._shared_lock:
                    if self._shared is None:
                        self._shared = self._open()
                    yield self._shared
                return
            with self._pool_lock:
                conn = self._pool.pop() if self._pool else None
            if conn is None:
                conn = self._open()
            try:
                yield conn
            finally:
                if conn.in_transaction:  # a failure mid-transaction: never pool it dirty
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                with self._pool_lock:
                    keep = not self._closed and len(self._pool) < self._pool_size
                    if keep:
                        self._pool.append(conn)
                if not keep:
                    conn.close()
        except sqlite3.IntegrityError as exc:
            raise StoreConflict("the write conflicts with an existing document", detail=str(exc)) from exc
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable("the SQLite store is unavailable", detail=f"{self.path}: {exc}") from exc

    def _lock_writes(self) -> None:
        # Lock order everywhere: _write_lock, then a connection (and _shared_lock).
        if not self._write_lock.acquire(timeout=self._busy_timeout_s):
            raise StoreUnavailable("the SQLite store is busy", detail=f"{self.path}: write lock timeout")

    def _ensure_kinds(self, kinds: set[str]) -> None:
        """Create each kind's table and declared indexes, once per store instance."""
        missing = kinds - self._known_kinds
        if not missing:
            return
        self._lock_writes()
        try:
            with self._connection() as conn:
                for kind in sorted(missing - self._known_kinds):
                    table = _table(kind)
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {table} "
                        "(id TEXT PRIMARY KEY, data TEXT NOT NULL, version INTEGER NOT NULL)"
                    )
                    for shape in INDEXES:
                        if shape.kind != kind:
                            continue
                        fields = list(shape.equality) + ([shape.order] if shape.order else [])
                        name = "ix_" + kind + "__" + "_".join(f.replace(".", "_") for f in fields)
                        columns = ", ".join([_path(f) for f in fields] + ["id"])
                        conn.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON {table} ({columns})')
                    self._known_kinds.add(kind)
        finally:
            self._write_lock.release()

    # -- Store -------------------------------------------------------------

    def get(self, kind: str, id: str) -> Doc | None:
        check_kind(kind)
        check_id(id)
        self._ensure_kinds({kind})
        with self._connection() as conn:
            row = conn.execute(f"SELECT data, version FROM {_table(kind)} WHERE id = ?", (id,)).fetchone()
        if row is None:
            return None
        return Doc(id, _from_json(json.loads(row[0])), str(row[1]))

    def write(self, writes: Sequence[Write]) -> None:
        batch = prepare_writes(writes)
        if not batch:
            return
        # Checked (prepare_writes) before taking any lock: a bad value is a ValueError, not a stuck writer.
        # Creates are encoded here; an update's changes once merged into the stored document (_apply).
        encoded: list[tuple[Write, Any]] = []
        for w in batch:
            if isinstance(w, Create):
                encoded.append((w, _dumps(w.data)))
            elif isinstance(w, Update):
                encoded.append((w, w.changes))
            else:
                encoded.append((w, None))
        self._ensure_kinds({w.kind for w in batch})
        self._lock_writes()
        try:
            with self._connection() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._apply(conn, encoded)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
        finally:
            self._write_lock.release()

    @staticmethod
    def _apply(conn: sqlite3.Connection, encoded: list[tuple[Write, Any]]) -> None:
        version = conn.execute("UPDATE _meta SET value = value + 1 WHERE name = 'version' RETURNING value").fetchall()[
            0
        ][0]
        for w, payload in encoded:
            table = _table(w.kind)
            if isinstance(w, Create):
                cur = conn.execute(
                    f"INSERT OR IGNORE INTO {table} (id, data, version) VALUES (?, ?, ?)", (w.id, payload, version)
                )
                if cur.rowcount != 1:
                    raise StoreConflict(f"{w.kind}/{w.id} already exists")
                continue
            row = conn.execute(f"SELECT data, version FROM {table} WHERE id = ?", (w.id,)).fetchone()
            if row is None:
                raise StoreConflict(f"{w.kind}/{w.id} does not exist")
            if w.expect_version is not None and str(row[1]) != w.expect_version:
                raise StoreConflict(f"{w.kind}/{w.id} changed since it was read")
            if isinstance(w, Update):
                data = json.loads(row[0])
                data.update(payload)
                conn.execute(f"UPDATE {table} SET data = ?, version = ? WHERE id = ?", (_dumps(data), version, w.id))
            else:
                assert isinstance(w, Delete)
                conn.execute(f"DELETE FROM {table} WHERE id = ?", (w.id,))

    def query(self, query: Query) -> list[Doc]:
        plan = plan_query(query)
        where: list[str] = []
        params: list[Any] = []
        for f in plan.equality:
            if f.value is None:
                where.append(f"json_type(data, '$.{f.field}') = 'null'")
                continue
            where.append(f"{_path(f.field)} = ? AND {_type_guard(f.field, f.value)}")
            params.append(_param(f.value))
        direction = "DESC" if plan.descending else "ASC"
        if plan.order is not None:
            order = _path(plan.order)
            # Like Firestore, ordering by a field excludes documents without it.
            where.append(f"json_type(data, '$.{plan.order}') IS NOT NULL")
            for f in plan.ranges:
                # Like Firestore, a range only matches values of the bound's type.
                where.append(f"{order} {_SQL_OPS[f.op]} ? AND {_type_guard(plan.order, f.value)}")
                params.append(_param(f.value))
            if plan.start_after is not None:
                where.append(f"({order}, id) {'<' if plan.descending else '>'} (?, ?)")
                params.extend([_param(plan.start_after[0]), plan.start_after[1]])
            order_sql = f"{order} {direction}, id {direction}"
        else:
            if plan.start_after is not None:
                where.append(f"id {'<' if plan.descending else '>'} ?")
                params.append(plan.start_after[1])
            order_sql = f"id {direction}"
        sql = (
            f"SELECT id, data, version FROM {_table(plan.kind)}"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY {order_sql} LIMIT ?"
        )
        params.append(plan.limit)
        self._ensure_kinds({plan.kind})
        with self._connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [Doc(r[0], _from_json(json.loads(r[1])), str(r[2])) for r in rows]

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT value FROM _meta WHERE name = 'version'").fetchone()

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for conn in pool:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        with self._shared_lock:
            if self._shared is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._shared.close()
                self._shared = None
