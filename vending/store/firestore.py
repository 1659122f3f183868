"""The production store: Cloud Firestore (native mode), one collection per kind.

Implements the ``Store`` Protocol on ``google.cloud.firestore.Client``, which
talks to the emulator when ``FIRESTORE_EMULATOR_HOST`` is set. Importing this
module costs ~350 ms (google.cloud + grpc), so ``vending.store`` only imports
it from ``open_store`` when Firestore is configured.

- ``write`` is ONE ``WriteBatch.commit()``: ``create`` (fails if the id
  exists), ``update`` (fails if missing) and ``delete`` with an
  ``exists=True`` precondition; an ``expect_version`` becomes a
  ``last_update_time`` precondition. No transactions: they take locks that
  time out under contention on hot documents (GUIDE §3).
- A document's version is its ``update_time`` as ``"SECONDS.NANOS"``
  (``"1795905857.717779000"``), turned back into the exact Timestamp for the
  precondition.
- Datetimes are stored as native Firestore timestamps (a TTL policy on
  ``purge_at`` needs that) and read back as plain aware UTC ``datetime``.
- Every RPC gets a short per-attempt ``timeout`` and a ``Retry`` with a small
  overall deadline, so an unreachable backend raises ``StoreUnavailable`` in
  seconds instead of the client's default 60 s retry.
- Errors are wrapped here: precondition failures of a write become
  ``StoreConflict``, everything else ``StoreUnavailable`` (``InvalidArgument``
  is a programming error and becomes ``ValueError``).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import google.auth.exceptions
import grpc
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath
from google.protobuf import timestamp_pb2

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

_UTC = _dt.UTC
_VERSION_RE = re.compile(r"([0-9]{1,12})\.([0-9]{9})")
_CONFLICTS = (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted, gexc.Conflict)
_TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.TooManyRequests,
    gexc.ResourceExhausted,
)
_PING_COLLECTION = "_ping"

T = TypeVar("T")


def encode_version(ts: Any) -> str:
    """An ``update_time`` (DatetimeWithNanoseconds or Timestamp) -> ``"SECONDS.NANOS"``."""
    pb = ts if isinstance(ts, timestamp_pb2.Timestamp) else ts.timestamp_pb()
    return f"{pb.seconds}.{pb.nanos:09d}"


def decode_version(version: str) -> timestamp_pb2.Timestamp | None:
    m = _VERSION_RE.fullmatch(version) if isinstance(version, str) else None
    return timestamp_pb2.Timestamp(seconds=int(m.group(1)), nanos=int(m.group(2))) if m else None


def _from_firestore(value: Any) -> Any:
    """Firestore values -> plain document values (DatetimeWithNanoseconds -> datetime)."""
    if isinstance(value, _dt.datetime):
        v = value.astimezone(_UTC)
        return _dt.datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, tzinfo=_UTC)
    if isinstance(value, dict):
        return {k: _from_firestore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_firestore(v) for v in value]
    return value


class FirestoreStore:
    """``Store`` on Firestore; ``collection_prefix`` isolates tests or tenants."""

    def __init__(
        self,
        project: str,
        database: str = "(default)",
        client: firestore.Client | None = None,
        *,
        collection_prefix: str = "",
        timeout_s: float = 5.0,
        retry_deadline_s: float = 2.0,
    ) -> None:
        try:
            self._client = client or firestore.Client(project=project, database=database)
        except (google.auth.exceptions.GoogleAuthError, OSError) as exc:
            raise StoreUnavailable("Firestore client could not be created", detail=str(exc)) from exc
        self.project = project
        self.database = database
        self._prefix = collection_prefix
        self._timeout = timeout_s
        # Transient failures are retried briefly. Retrying a commit is safe for our
        # preconditions: a replayed create/update/delete fails its precondition and
        # reports a conflict, so it can never produce two winners.
        self._retry = gretry.Retry(
            predicate=gretry.if_exception_type(*_TRANSIENT),
            initial=0.05,
            maximum=0.5,
            multiplier=2.0,
            timeout=retry_deadline_s,
        )

    # -- helpers -----------------------------------------------------------

    def _collection(self, kind: str) -> Any:
        return self._client.collection(self._prefix + kind)

    def _call(self, what: str, fn: Callable[[], T], *, write: bool = False) -> T:
        """Run one RPC; map google exceptions to the store's."""
        try:
            return fn()
        except gexc.InvalidArgument as exc:
            raise ValueError(f"Firestore rejected the {what}: {exc.message}") from exc
        except _CONFLICTS as exc:
            if write:
                raise StoreConflict(f"the {what} conflicts with the stored documents", detail=str(exc)) from exc
            # On reads, FailedPrecondition means e.g. a missing composite index.
            raise StoreUnavailable(f"Firestore refused the {what}", detail=str(exc)) from exc
        except (gexc.GoogleAPIError, grpc.RpcError, google.auth.exceptions.GoogleAuthError, OSError) as exc:
            raise StoreUnavailable(f"Firestore is unavailable ({what})", detail=f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _doc(snapshot: Any) -> Doc:
        return Doc(snapshot.id, _from_firestore(snapshot.to_dict() or {}), encode_version(snapshot.update_time))

    # -- Store -------------------------------------------------------------

    def get(self, kind: str, id: str) -> Doc | None:
        ref = self._collection(check_kind(kind)).document(check_id(id))
        snap = self._call("get", lambda: ref.get(retry=self._retry, timeout=self._timeout))
        return self._doc(snap) if snap.exists else None

    def write(self, writes: Sequence[Write]) -> None:
        batch_writes = prepare_writes(writes)
        if not batch_writes:
            return
        client = self._client
        batch = client.batch()
        for w in batch_writes:
            ref = self._collection(w.kind).document(w.id)
            if isinstance(w, Create):
                batch.create(ref, w.data)
                continue
            if w.expect_version is not None:
                ts = decode_version(w.expect_version)
                if ts is None:  # not a version this backend ever issued: cannot match
                    raise StoreConflict(
                        f"{w.kind}/{w.id} changed since it was read", detail=f"foreign version {w.expect_version!r}"
                    )
                option: Any = client.write_option(last_update_time=ts)
            else:
                option = client.write_option(exists=True) if isinstance(w, Delete) else None
            if isinstance(w, Update):
                # Keys are top-level field names, never dotted paths: quote them.
                changes = {FieldPath(k).to_api_repr(): v for k, v in w.changes.items()}
                batch.update(ref, changes, option=option)
            else:
                batch.delete(ref, option=option)
        self._call("write", lambda: batch.commit(retry=self._retry, timeout=self._timeout), write=True)

    def query(self, query: Query) -> list[Doc]:
        plan = plan_query(query)
        direction = firestore.Query.DESCENDING if plan.descending else firestore.Query.ASCENDING
        q: Any = self._collection(plan.kind)
        for f in plan.equality + plan.ranges:
            q = q.where(filter=FieldFilter(f.field, f.op, f.value))
        if plan.order is not None:
            q = q.order_by(plan.order, direction=direction)
        q = q.order_by("__name__", direction=direction)
        if plan.start_after is not None:
            value, last_id = plan.start_after
            q = q.start_after([value, last_id] if plan.order is not None else [last_id])
        q = q.limit(plan.limit)
        snaps = self._call("query", lambda: q.get(retry=self._retry, timeout=self._timeout))
        return [self._doc(s) for s in snaps]

    def ping(self) -> None:
        ref = self._client.collection(_PING_COLLECTION).document("ping")
        self._call("ping", lambda: ref.get(retry=self._retry, timeout=self._timeout))

    def close(self) -> None:
        self._client.close()
