"""Invariants and leak audits shared by the security and fault suites (issue 9).

- ``dump_store(store)``: every document of every kind, on either backend
  (SQLite read straight from its file, Firestore from every root collection),
  as ``{kind: {id: data}}``.
- ``ShadowStore``: a ``Store`` wrapper that keeps, in memory, what a durable
  backend holds after every committed batch. The Firestore emulator loses its
  data when it is stopped, real Firestore does not: the fault suite checks
  the ledger against the shadow.
- ``check_ledger(issuances, minted)``: the ledger's promises against the IAM
  stand-in's own list of what it minted (see ``check_ledger``).
- ``find_secrets(haystack, secrets)``: where any credential (or a 32-char
  fingerprint of its secret part) occurs in a text.
- ``LeakAudit``: for one test, tee every vending log line and stdlib log
  record, every HTTP response of the harness and every published event; at
  the end search them and the store dump for every credential the stand-in
  minted (and every caller token sent). ``CredentialArchive`` keeps the
  figures of the whole run.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vending import log as vlog
from vending.store.base import Create, Delete, Doc, Query, Update, Write

REASON_PREFIX = "token-vending issuance "
FINGERPRINT = 32
_RUN_RE = re.compile(rf"[A-Za-z0-9_\-+/=.~]{{{FINGERPRINT},}}")


# ---------------------------------------------------------------------------
# What the stand-in minted for the service


def vended(minted: Sequence[Any]) -> list[Any]:
    """Credentials the stand-in minted for the vending service (not the test bot's own JWTs)."""
    return [m for m in minted if (m.request_reason or "").startswith(REASON_PREFIX)]


def issuance_id_of(minted: Any) -> str:
    return str(minted.request_reason)[len(REASON_PREFIX):]


# ---------------------------------------------------------------------------
# Store dumps


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        from vending import clock

        return clock.rfc3339(value) if getattr(value, "tzinfo", None) else value.isoformat()
    return value


def dump_store(store: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """``{kind: {id: data}}`` of every document the backend holds (datetimes as RFC 3339 text)."""
    inner = store
    while hasattr(inner, "inner"):  # ShadowStore, FailingStore and other wrappers
        inner = inner.inner
    name = type(inner).__name__
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if name == "SqliteStore":
        from vending.store.sqlite import _from_json

        if inner._memory:
            with inner._connection() as conn:
                rows = _sqlite_rows(conn)
        elif not os.path.exists(inner.path):  # nothing was ever written
            rows = []
        else:
            conn = sqlite3.connect(f"file:{inner.path}?mode=ro", uri=True, timeout=10)
            try:
                rows = _sqlite_rows(conn)
            finally:
                conn.close()
        for kind, doc_id, data in rows:
            out.setdefault(kind, {})[doc_id] = _plain(_from_json(json.loads(data)))
        return out
    if name == "FirestoreStore":
        from vending.store.firestore import _from_firestore

        client = inner._client
        for coll in client.collections(timeout=10):
            for snap in coll.stream(timeout=10):
                out.setdefault(coll.id, {})[snap.id] = _plain(_from_firestore(snap.to_dict() or {}))
        return out
    raise TypeError(f"cannot dump a {name}")


def _sqlite_rows(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != '_meta'")]
    rows: list[tuple[str, str, str]] = []
    for table in tables:
        rows.extend((table, r[0], r[1]) for r in conn.execute(f'SELECT id, data FROM "{table}"'))
    return rows


def kinds_count(dump: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {k: len(v) for k, v in sorted(dump.items()) if v}


class ShadowStore:
    """Pass-through ``Store`` that mirrors every committed batch into ``self.docs``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.docs: dict[str, dict[str, dict[str, Any]]] = {}
        self.failed_writes = 0
        self._lock = threading.Lock()

    def get(self, kind: str, id: str) -> Doc | None:
        return self.inner.get(kind, id)  # type: ignore[no-any-return]

    def query(self, query: Query) -> list[Doc]:
        return self.inner.query(query)  # type: ignore[no-any-return]

    def write(self, writes: Sequence[Write]) -> None:
        try:
            self.inner.write(writes)
        except Exception:
            with self._lock:
                self.failed_writes += 1
            raise
        with self._lock:
            for w in writes:
                kind = self.docs.setdefault(w.kind, {})
                if isinstance(w, Create):
                    kind[w.id] = dict(w.data)
                elif isinstance(w, Update):
                    kind.setdefault(w.id, {}).update(w.changes)
                elif isinstance(w, Delete):
                    kind.pop(w.id, None)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()


class FailingStore:
    """Pass-through ``Store`` that fails the batches ``when(write)`` selects with ``StoreUnavailable``
    (``times`` of them; ``None``: every one)."""

    def __init__(self, inner: Any, when: Any, times: int | None = None) -> None:
        self.inner, self.when, self.times = inner, when, times
        self.failed = 0

    def get(self, kind: str, id: str) -> Doc | None:
        return self.inner.get(kind, id)  # type: ignore[no-any-return]

    def query(self, query: Query) -> list[Doc]:
        return self.inner.query(query)  # type: ignore[no-any-return]

    def write(self, writes: Sequence[Write]) -> None:
        from vending.store.base import StoreUnavailable

        if any(self.when(w) for w in writes) and (self.times is None or self.failed < self.times):
            self.failed += 1
            raise StoreUnavailable("injected store failure", detail="test")
        self.inner.write(writes)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()


def use_store(h: Any, store: Any) -> None:
    """Point the harness's service (and its ledger) at ``store``."""
    h.store = store
    h.service.store = store
    h.service.ledger.store = store


# ---------------------------------------------------------------------------
# Ledger invariants


@dataclass
class LedgerFigures:
    minted: int = 0
    records: int = 0
    states: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        return f"minted={self.minted} records={self.records} states={dict(sorted(self.states.items()))}"


def check_ledger(issuances: dict[str, dict[str, Any]], minted: Sequence[Any]) -> LedgerFigures:
    """The promises of the ledger, against what the stand-in actually minted.

    - every credential minted for the service has a record: the one named by
      its X-Goog-Request-Reason; one credential per record at most;
    - a record that holds a SHA-256 (active, signed, or expired from those)
      holds exactly that credential's SHA-256; a record without one is left
      ``issuing`` (finalize failed) or ``unconfirmed`` (IAM did not answer:
      a credential may exist), never ``failed``;
    - no record claims a credential (a SHA-256, or state active / signed)
      that the stand-in never minted;
    - a ``failed`` record has no credential behind it.
    """
    ours = vended(minted)
    by_id: dict[str, Any] = {}
    for m in ours:
        iid = issuance_id_of(m)
        assert iid not in by_id, f"two credentials minted for issuance {iid}"
        by_id[iid] = m
    for iid, m in by_id.items():
        rec = issuances.get(iid)
        assert rec is not None, f"credential minted for issuance {iid} has no ledger record"
        if rec.get("token_sha256") is not None:
            assert rec["token_sha256"] == m.sha256, f"record {iid} holds another SHA-256"
            assert rec["state"] in ("active", "signed", "expired"), rec
        else:
            assert rec["state"] in ("issuing", "unconfirmed"), (
                f"record {iid} is {rec['state']!r} although a credential was minted for it: {rec}")
    shas = {m.sha256 for m in ours}
    for iid, rec in issuances.items():
        if rec.get("state") in ("active", "signed") or rec.get("token_sha256") is not None:
            assert rec.get("token_sha256") in shas, f"record {iid} claims a credential never minted: {rec}"
        if rec.get("state") == "failed":
            assert iid not in by_id, f"record {iid} says failed but a credential exists"
    figures = LedgerFigures(minted=len(ours), records=len(issuances))
    figures.states.update(str(r.get("state")) for r in issuances.values())
    return figures


# ---------------------------------------------------------------------------
# Searching for credentials


def fingerprints(secret: str) -> list[str]:
    """Fixed-size pieces of the secret part of a credential.

    JWTs share their header prefix, so for them only the signature counts;
    other credentials (ya29 tokens, base64 signatures) are random throughout.
    """
    parts = secret.split(".")
    core = parts[-1] if len(parts) == 3 and secret.startswith("eyJ") else secret
    if len(core) < FINGERPRINT:
        return [core] if len(core) >= 16 else []
    return list(dict.fromkeys([core[:FINGERPRINT], core[-FINGERPRINT:]]))


def find_secrets(haystack: str, secrets: Sequence[str]) -> list[str]:
    """The secrets (whole, or one of their fingerprints) found in ``haystack``."""
    if not secrets or not haystack:
        return []
    table: dict[str, str] = {}
    short: list[str] = []
    for s in secrets:
        for fp in fingerprints(s):
            if len(fp) == FINGERPRINT:
                table[fp] = s
            else:
                short.append(fp)
    hits: dict[str, None] = {}
    for s in secrets:  # whole occurrences first (cheap for a few secrets)
        if len(secrets) <= 64 and s in haystack:
            hits[s] = None
    for run in _RUN_RE.findall(haystack):
        for i in range(len(run) - FINGERPRINT + 1):
            found = table.get(run[i:i + FINGERPRINT])
            if found is not None:
                hits[found] = None
    for fp in short:
        if fp in haystack:
            hits[fp] = None
    return list(hits)


# ---------------------------------------------------------------------------
# Per-test audit and run-wide archive


class _Tee(io.TextIOBase):
    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.buffer_ = io.StringIO()
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.buffer_.write(text)
        (self.previous or sys.stdout).write(text)
        return len(text)

    def flush(self) -> None:
        (self.previous or sys.stdout).flush()

    def getvalue(self) -> str:
        with self.lock:
            return self.buffer_.getvalue()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except (TypeError, ValueError) as exc:  # a bad format string in someone's log call
            self.lines.append(f"{record.levelname} {record.name} {record.msg!r} (unformattable: {exc})")


@dataclass
class Response:
    method: str
    path: str
    status: int
    headers: str
    body: str
    authorization: str


class LeakAudit:
    """Collects everything a test's service emitted; ``check()`` searches it for credentials."""

    VEND_PATHS = ("/v1/access-tokens", "/v1/id-tokens", "/v1/signed-jwts", "/v1/signed-blobs")

    def __init__(self) -> None:
        self.harnesses: list[Any] = []
        self.responses: list[Response] = []
        self.extra_secrets: list[str] = []
        self.extra_haystacks: dict[str, str] = {}
        self._tee: _Tee | None = None
        self._records = _Records()
        self._saved: tuple[Any, int] | None = None
        self._apps: list[Any] = []
        self._lock = threading.Lock()

    # -- wiring ---------------------------------------------------------------
    def install(self) -> None:
        self._saved = (vlog._stream, vlog._level)
        self._tee = _Tee(vlog._stream)
        vlog._stream = self._tee
        vlog._level = 10  # DEBUG lines are searched too
        logging.getLogger().addHandler(self._records)

    def uninstall(self) -> None:
        import flask

        if self._saved is not None:
            vlog._stream, vlog._level = self._saved
            self._saved = None
        logging.getLogger().removeHandler(self._records)
        for app in self._apps:
            flask.request_finished.disconnect(self._on_response, app)
        self._apps = []

    def watch(self, harness: Any) -> None:
        """Audit this harness's HTTP responses, events and store too."""
        import flask

        self.harnesses.append(harness)
        app = harness.client.application
        flask.request_finished.connect(self._on_response, app)
        self._apps.append(app)

    def _on_response(self, sender: Any, response: Any, **extra: Any) -> None:
        import flask

        try:
            body = response.get_data(as_text=True)
        except (RuntimeError, ValueError):  # a streamed or closed body: nothing to read
            body = ""
        req = flask.request
        with self._lock:
            self.responses.append(Response(req.method, req.path, response.status_code,
                                           "\n".join(f"{k}: {v}" for k, v in response.headers.items()),
                                           body, req.headers.get("Authorization", "")))

    def log_entries(self) -> list[dict[str, Any]]:
        """The vending log lines captured so far, parsed."""
        out = []
        for line in (self._tee.getvalue() if self._tee else "").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    # -- searching --------------------------------------------------------------
    def haystacks(self) -> dict[str, str]:
        out: dict[str, str] = {"logs": (self._tee.getvalue() if self._tee else "") + "\n".join(self._records.lines)}
        errors, headers, others = [], [], []
        for r in self.responses:
            headers.append(r.headers)
            if r.status >= 400:
                errors.append(r.body)
            elif r.path not in self.VEND_PATHS:  # a vend's own 200 body carries its credential, by design
                others.append(r.body)
        out["error-bodies"] = "\n".join(errors)
        out["response-headers"] = "\n".join(headers)
        out["other-response-bodies"] = "\n".join(others)
        stores, events = [], []
        for h in self.harnesses:
            stores.append(json.dumps(dump_store(h.store), default=str, sort_keys=True))
            events.append(json.dumps(getattr(h.events, "published", []), default=str))
        out["store"] = "\n".join(stores)
        out["events"] = "\n".join(events)
        out.update(self.extra_haystacks)
        return out

    def minted_secrets(self) -> list[str]:
        seen: dict[str, None] = {}
        for h in self.harnesses:
            for m in h.standin.minted:
                seen[m.credential] = None
        for s in self.extra_secrets:
            seen[s] = None
        return list(seen)

    def caller_tokens(self) -> list[str]:
        out: dict[str, None] = {}
        for r in self.responses:
            parts = r.authorization.split(" ")
            if len(parts) == 2 and parts[1].count(".") == 2 and len(parts[1].rsplit(".", 1)[1]) >= FINGERPRINT:
                out[parts[1]] = None
        return list(out)

    def check(self) -> dict[str, Any]:
        """Search every haystack; returns figures, raises AssertionError on any hit."""
        secrets = self.minted_secrets()
        tokens = self.caller_tokens()
        stacks = self.haystacks()
        hits: list[tuple[str, str, str]] = []
        for where, text in stacks.items():
            for s in find_secrets(text, secrets):
                hits.append(("minted credential", where, s[:12] + "..."))
        for where in ("logs", "response-headers"):
            for s in find_secrets(stacks[where], tokens):
                hits.append(("caller token", where, s[:12] + "..."))
        figures = {"credentials": len(secrets), "caller_tokens": len(tokens), "responses": len(self.responses),
                   "bytes": {k: len(v) for k, v in stacks.items()}, "hits": len(hits)}
        assert not hits, f"credential material found: {hits}"
        return figures


class CredentialArchive:
    """Run-wide figures: every credential minted in an audited test, and the hits (always zero)."""

    def __init__(self) -> None:
        self.tests = 0
        self.credentials: dict[str, str] = {}   # sha256 -> test node id
        self.caller_tokens = 0
        self.responses = 0
        self.bytes: Counter[str] = Counter()

    def add(self, nodeid: str, audit: LeakAudit, figures: dict[str, Any]) -> None:
        import hashlib

        self.tests += 1
        for s in audit.minted_secrets():
            self.credentials.setdefault(hashlib.sha256(s.encode()).hexdigest(), nodeid)
        self.caller_tokens += figures["caller_tokens"]
        self.responses += figures["responses"]
        self.bytes.update(figures["bytes"])

    def summary(self) -> str:
        searched = ", ".join(f"{k} {v:,} B" for k, v in sorted(self.bytes.items()))
        return (f"secrets audit: {self.tests} tests, {len(self.credentials)} minted credentials and "
                f"{self.caller_tokens} caller tokens searched in {self.responses} responses; {searched}; hits 0")
