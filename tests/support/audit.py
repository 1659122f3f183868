"""Invariants and leak audits shared by the security and fault suites (issue 9).

- ``dump_store(store)``: every document of every kind, on either backend
  (SQLite read straight from its file, Firestore from every root collection),
  as ``{kind: {id: data}}``.
- ``use_store`` / ``use_iam``: point a harness's service (whatever its shape)
  at another store or IAM client.
- ``ShadowStore``: a ``Store`` wrapper that keeps, in memory, what a durable
  backend holds after every committed batch. The Firestore emulator loses its
  data when it is stopped, real Firestore does not: the fault suite checks
  the ledger against the shadow.
- ``check_ledger(issuances, minted)``: the ledger's promises against the IAM
  stand-in's own list of what it minted (see ``check_ledger``).
- ``find_secrets(haystack, secrets)`` / ``SecretIndex``: where any credential
  occurs in a text: every 32-character window of its secret part, plain, in
  base64 and base64url (at each byte offset) and percent-encoded (see
  ``sensitive_part``, ``search_forms`` and ``fingerprints``: the single
  definition).
- ``LeakAudit``: for one test, tee every vending log line, stdlib log record
  and what reaches stdout / stderr, every HTTP response of the harness; at the
  end search them, the whole store and every published event for every
  credential the stand-in minted and every caller token sent (issue 19).
  ``CredentialArchive`` keeps the figures of the whole run.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Sequence
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
    return str(minted.request_reason)[len(REASON_PREFIX) :]


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
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != '_meta'"
        )
    ]
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
    """Point the harness, its service and whichever of the service's parts hold a store at ``store``.

    Tolerant of the service's shape: sets ``store`` / ``_store`` wherever they exist on the service,
    its ledger and its approvals (a read-only property, one that reads another's store, is left alone).
    """
    h.store = store
    service = h.service
    for owner in (service, getattr(service, "ledger", None), getattr(service, "approvals", None)):
        if owner is None:
            continue
        for attr in ("store", "_store"):
            if hasattr(owner, attr):
                with contextlib.suppress(AttributeError):
                    setattr(owner, attr, store)


def use_iam(h: Any, iam: Any) -> None:
    """Point the harness's service, and whichever of its parts call IAM (the vend pipeline), at ``iam``."""
    h.iam = iam
    service = h.service
    for owner in (service, getattr(service, "vend", None)):
        if owner is not None and hasattr(owner, "iam"):
            with contextlib.suppress(AttributeError):
                owner.iam = iam


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
                f"record {iid} is {rec['state']!r} although a credential was minted for it: {rec}"
            )
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
#
# The single definition of what counts as a leak of a credential:
# - ``sensitive_part``: the part that must never be seen. A JWT's header is public (and shared by every
#   token of a key), so for JWTs it is the payload and the signature; a ``ya29.`` access token without
#   its prefix; a signature (signBlob) or anything else, whole.
# - ``search_forms``: that part as is; in standard base64 and base64url at the three byte offsets a
#   substring can have inside a longer encoded text (the last, partial quad dropped: it depends on what
#   follows), and whole, padded and unpadded; percent-encoded (``quote(safe='')``, ``quote_plus``).
# - ``fingerprints``: every 32-character window of every form (sliding, step 1); a form shorter than
#   32 characters (16 at least) counts whole. The base64url and standard alphabets are folded together
#   ('-' read as '+', '_' as '/') on both sides.
# ``find_secrets`` / ``SecretIndex.find`` report a secret when one of its fingerprints occurs in a text,
# unless every fingerprint found is also one of another searched secret's: two JWTs of one issuer share
# the encoding of their common claims (``{"iss":"https://...","aud":...``), which identifies neither.

FINGERPRINT = 32
MIN_SHORT = 16
_FOLD = str.maketrans("-_", "+/")
_RUN_RE = re.compile(rf"[A-Za-z0-9_\-+/=.~%]{{{MIN_SHORT},}}")
# SecretIndex keys: 10-character pieces of each form taken every 11 characters, probed at every
# 2nd position of a text. Any 32-character match [p, p+32) of form position i holds a k <= 21 with
# (i + k) % 11 == 0 and (p + k) % 2 == 0 (11 and 2 are coprime, 11 * 2 <= 32 - 10 + 1), so the
# piece at form position i + k is probed at text position p + k; the match is then confirmed by
# extending it both ways. The index is ~1/11 of the forms' length: thousands of caller tokens stay cheap.
_KEY, _FORM_STEP, _TEXT_STEP = 10, 11, 2


def sensitive_part(secret: str) -> str:
    """The part of a credential whose exposure is a leak (its public parts left out)."""
    parts = secret.split(".")
    if len(parts) == 3 and secret.startswith("eyJ"):
        return f"{parts[1]}.{parts[2]}"
    if secret.startswith("ya29."):
        return secret[len("ya29.") :]
    return secret


def search_forms(secret: str) -> dict[str, str]:
    """Every form in which the sensitive part of ``secret`` is searched for, by name."""
    core = sensitive_part(secret)
    raw = core.encode("utf-8")
    forms: dict[str, str] = {"plain": core}
    for offset in range(3):
        part = raw[offset:]
        whole_quads = len(part) // 3 * 4
        forms[f"base64@{offset}"] = base64.b64encode(part).decode()[:whole_quads]
        forms[f"base64url@{offset}"] = base64.urlsafe_b64encode(part).decode()[:whole_quads]
    forms["base64"] = base64.b64encode(raw).decode()
    forms["base64url"] = base64.urlsafe_b64encode(raw).decode()
    forms["base64url-unpadded"] = forms["base64url"].rstrip("=")
    forms["percent"] = urllib.parse.quote(core, safe="")
    forms["percent-plus"] = urllib.parse.quote_plus(core)
    return forms


def _folded_forms(secret: str) -> dict[str, str]:
    """``search_forms`` folded to one base64 alphabet; too-short forms dropped, and so is a form of 32
    characters or more inside another one (its windows are among the other's: base64@0 inside the
    padded base64, the unpadded inside the padded, percent-encoding that changed nothing)."""
    folded = {}
    for name, form in search_forms(secret).items():
        f = form.translate(_FOLD)
        if len(f) >= MIN_SHORT and f not in folded.values():
            folded[name] = f
    return {
        name: f
        for name, f in folded.items()
        if len(f) < FINGERPRINT or not any(f != g and f in g for g in folded.values())
    }


def fingerprints(secret: str) -> list[str]:
    """Every 32-character window of every searched form (folded), or a short form whole."""
    out: dict[str, None] = {}
    for form in _folded_forms(secret).values():
        if len(form) < FINGERPRINT:
            out[form] = None
        else:
            for i in range(len(form) - FINGERPRINT + 1):
                out[form[i : i + FINGERPRINT]] = None
    return list(out)


@dataclass(frozen=True)
class Hit:
    """One secret found in one text: which secret, in which form, with a little context."""

    label: str
    secret: str
    form: str
    context: str

    def __str__(self) -> str:
        return f"{self.label} {self.secret[:12]}... as {self.form} near {self.context!r}"


class SecretIndex:
    """Every fingerprint of a set of secrets, searchable in one pass over a text (see ``_KEY``)."""

    def __init__(self, secrets: Sequence[str] = (), label: str = "secret") -> None:
        self._forms: list[tuple[int, str, str]] = []  # (secret number, form name, folded form)
        self._secrets: list[tuple[str, str]] = []  # (secret, label)
        self._pieces: dict[str, list[tuple[int, int]]] = {}
        self._short: list[int] = []
        self._known: set[str] = set()
        self._owners: dict[str, tuple[int, ...]] = {}  # window -> up to two secrets holding it
        self.add(secrets, label)

    def __len__(self) -> int:
        return len(self._secrets)

    def add(self, secrets: Sequence[str], label: str = "secret") -> None:
        for secret in secrets:
            if secret in self._known:
                continue
            self._known.add(secret)
            self._owners.clear()
            number = len(self._secrets)
            self._secrets.append((secret, label))
            for name, form in _folded_forms(secret).items():
                form_id = len(self._forms)
                self._forms.append((number, name, form))
                if len(form) < FINGERPRINT:
                    self._short.append(form_id)
                    continue
                for j in range(0, len(form) - _KEY + 1, _FORM_STEP):
                    self._pieces.setdefault(form[j : j + _KEY], []).append((form_id, j))

    def find(self, haystack: str) -> list[Hit]:
        """One ``Hit`` per secret found in ``haystack`` (first occurrence), in order of the secrets."""
        if not haystack or not self._secrets:
            return []
        found: dict[int, Hit] = {}
        pieces = self._pieces
        for match in _RUN_RE.finditer(haystack):
            run = match.group().translate(_FOLD)
            if len(run) < FINGERPRINT:
                continue
            tried: set[tuple[int, int]] = set()  # (form, diagonal q - j): one match region each
            for q in range(0, len(run) - _KEY + 1, _TEXT_STEP):
                candidates = pieces.get(run[q : q + _KEY])
                if candidates is None:
                    continue
                for form_id, j in candidates:
                    number, name, form = self._forms[form_id]
                    if number in found or (form_id, q - j) in tried:
                        continue
                    tried.add((form_id, q - j))
                    at = self._own_window(run, q, form, j, number)
                    if at is not None:
                        found[number] = self._hit(number, name, haystack, match.start() + at)
        if self._short:
            folded = haystack.translate(_FOLD)
            for form_id in self._short:
                number, name, form = self._forms[form_id]
                if number not in found:
                    at = folded.find(form)
                    if at >= 0:
                        found[number] = self._hit(number, name, haystack, at)
        return [found[n] for n in sorted(found)]

    def _own_window(self, run: str, q: int, form: str, j: int, number: int) -> int | None:
        """Where in ``run`` a 32-character window of ``form`` (matched at run[q] == form[j]) starts that
        is this secret's own: no other secret's form holds it (a window shared by two secrets, such as
        the claims two JWTs of one issuer have in common, identifies neither). None if there is none."""
        left = 0
        while left < q and left < j and run[q - left - 1] == form[j - left - 1]:
            left += 1
        right, end_q, end_j = 0, q + _KEY, j + _KEY
        while end_q + right < len(run) and end_j + right < len(form) and run[end_q + right] == form[end_j + right]:
            right += 1
        start, end = q - left, end_q + right
        # From the end: a JWT's shared claims come first, its own claims and signature after.
        for p in range(end - FINGERPRINT, start - 1, -1):
            if not self._shared(run[p : p + FINGERPRINT], number):
                return p
        return None

    def _shared(self, window: str, number: int) -> bool:
        """Whether a form of another secret than ``number`` holds ``window``."""
        owners = self._owners.get(window)
        if owners is None:
            owners = self._owners[window] = self._find_owners(window)
        return any(o != number for o in owners)

    def _find_owners(self, window: str) -> tuple[int, ...]:
        """Up to two secrets whose forms hold ``window`` (see ``_KEY`` for why looking its pieces up at
        offsets 0..22 finds every such form)."""
        owners: list[int] = []
        for k in range(FINGERPRINT - _KEY + 1):
            for form_id, j in self._pieces.get(window[k : k + _KEY], ()):
                owner, _, form = self._forms[form_id]
                if owner not in owners and j >= k and form[j - k : j - k + FINGERPRINT] == window:
                    owners.append(owner)
                    if len(owners) == 2:
                        return tuple(owners)
        return tuple(owners)

    def _hit(self, number: int, form: str, haystack: str, at: int) -> Hit:
        secret, label = self._secrets[number]
        return Hit(label, secret, form, haystack[max(0, at - 24) : at + 8])


def find_secrets(haystack: str, secrets: Sequence[str]) -> list[str]:
    """The secrets (any fingerprint of any form, see above) found in ``haystack``."""
    return [hit.secret for hit in SecretIndex(secrets).find(haystack)]


# ---------------------------------------------------------------------------
# Per-test audit and run-wide archive


class _Tee(io.TextIOBase):
    """The vending log stream: keeps a copy, passes every line on (to stdout, past ``_StreamTee``)."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.buffer_ = io.StringIO()
        self.lock = threading.Lock()

    def _target(self) -> Any:
        target = self.previous or sys.stdout
        return target.previous if isinstance(target, _StreamTee) else target  # one copy is enough

    def write(self, text: str) -> int:
        with self.lock:
            self.buffer_.write(text)
        self._target().write(text)
        return len(text)

    def flush(self) -> None:
        self._target().flush()

    def getvalue(self) -> str:
        with self.lock:
            return self.buffer_.getvalue()


class _StreamTee:
    """``sys.stdout`` / ``sys.stderr`` during a test: copies what is written into ``sink``, passes it on."""

    def __init__(self, previous: Any, sink: io.StringIO, lock: threading.Lock) -> None:
        self.previous, self.sink, self._lock = previous, sink, lock

    def write(self, text: str) -> int:
        with self._lock:
            self.sink.write(text)
        self.previous.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.previous.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, buffer...
        return getattr(self.previous, name)


# Audits installed now. pytest's output capture puts its own sys.stdout / sys.stderr back at the start
# of each test phase (setup, call, teardown), so tests/conftest.py calls ``tee_streams`` around each
# phase to tee them again.
_ACTIVE: list[LeakAudit] = []


@contextlib.contextmanager
def tee_streams() -> Iterator[None]:
    """Tee the current sys.stdout / sys.stderr into every installed audit for the duration."""
    for audit in _ACTIVE:
        audit._wrap_streams()
    try:
        yield
    finally:
        for audit in reversed(list(_ACTIVE)):
            audit._unwrap_streams()


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


_B64TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750's b64token: what a bearer token is made of


def caller_token_of(authorization: str) -> str | None:
    """The credential of an Authorization header (``Bearer X`` or any ``SCHEME X``; the value if bare),
    or None when it cannot be one: not a b64token, a sensitive part shorter than a window, or fewer than
    12 distinct characters in it (fuzzers send ``Bearer 0000...`` and ``generateAccessToken``)."""
    value = authorization.strip()
    if not value:
        return None
    scheme, _, rest = value.partition(" ")
    token = rest.strip() or scheme
    core = sensitive_part(token)
    if not _B64TOKEN_RE.fullmatch(token) or len(core) < FINGERPRINT or len(set(core)) < 12:
        return None
    return token


def _stores_of(h: Any) -> list[Any]:
    """Every store object the harness and its service hold (wrappers included), once each."""
    candidates = [getattr(h, "store", None)]
    service = getattr(h, "service", None)
    for owner in (service, getattr(service, "ledger", None), getattr(service, "approvals", None)):
        for attr in ("store", "_store"):
            candidates.append(getattr(owner, attr, None) if owner is not None else None)
    out: dict[int, Any] = {}
    for store in candidates:
        if store is None:
            continue
        inner = store
        while hasattr(inner, "inner"):
            inner = inner.inner
        out.setdefault(id(inner), inner)
    return list(out.values())


def _events_text(h: Any) -> list[str]:
    """Every event the harness's publishers kept: MemoryEvents' list and any local events file."""
    publishers: dict[int, Any] = {}
    for ev in (getattr(h, "events", None), getattr(getattr(h, "service", None), "events", None)):
        if ev is not None:
            publishers.setdefault(id(ev), ev)
    texts: list[str] = []
    paths: set[str] = set()
    for ev in publishers.values():
        published = getattr(ev, "published", None)
        if published is not None:
            texts.append(json.dumps(list(published), default=str))
        path = getattr(ev, "_path", None) or getattr(ev, "path", None)
        if path:
            paths.add(str(path))
    for settings in (getattr(h, "settings", None), getattr(getattr(h, "service", None), "settings", None)):
        path = getattr(settings, "events_file", None)
        if path:
            paths.add(str(path))
    for path in sorted(paths):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as fh:
                texts.append(fh.read())
    return texts


class LeakAudit:
    """Collects everything a test's service emitted; ``check()`` searches it for credentials.

    Secrets: every credential the IAM stand-in minted (``standin.minted``: the service's and the test
    bot's), ``extra_secrets``, and every caller token sent to a watched harness. Places: the vending
    JSON log and stdlib log records (DEBUG and up), what reached ``sys.stdout`` / ``sys.stderr``, the
    whole store of every watched harness (every kind, every store its service holds), every event
    published (``MemoryEvents`` and a local events file), every response body (a vend's own credential
    field blanked: it is handed out by design) and every response header, and ``extra_haystacks``.
    """

    VEND_PATHS = ("/v1/access-tokens", "/v1/id-tokens", "/v1/signed-jwts", "/v1/signed-blobs")
    CREDENTIAL_FIELDS = ("access_token", "id_token", "signed_jwt", "signed_blob")

    def __init__(self) -> None:
        self.harnesses: list[Any] = []
        self.responses: list[Response] = []
        self.extra_secrets: list[str] = []
        self.extra_caller_tokens: list[str] = []
        self.extra_haystacks: dict[str, str] = {}
        self._tee: _Tee | None = None
        self._output = io.StringIO()  # what reached sys.stdout and sys.stderr
        self._output_lock = threading.Lock()
        self._wraps: list[tuple[str, _StreamTee]] = []
        self._records = _Records()
        self._saved: tuple[Any, int] | None = None
        self._root_level: int | None = None
        self._apps: list[Any] = []
        self._lock = threading.Lock()

    # -- wiring ---------------------------------------------------------------
    def install(self) -> None:
        self._saved = (vlog._stream, vlog._level)
        _ACTIVE.append(self)
        self._wrap_streams()
        self._tee = _Tee(vlog._stream)
        vlog._stream = self._tee
        vlog._level = 10  # DEBUG lines are searched too
        root = logging.getLogger()
        self._root_level = root.level
        root.setLevel(logging.DEBUG)  # stdlib DEBUG records reach the handler too
        root.addHandler(self._records)

    def uninstall(self) -> None:
        import flask

        if self._saved is not None:
            vlog._stream, vlog._level = self._saved
            self._saved = None
        self._unwrap_streams()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        root = logging.getLogger()
        root.removeHandler(self._records)
        if self._root_level is not None:
            root.setLevel(self._root_level)
            self._root_level = None
        for app in self._apps:
            flask.request_finished.disconnect(self._on_response, app)
        self._apps = []

    def _wrap_streams(self) -> None:
        for name in ("stdout", "stderr"):
            current = getattr(sys, name)
            if not (isinstance(current, _StreamTee) and current.sink is self._output):
                tee = _StreamTee(current, self._output, self._output_lock)
                setattr(sys, name, tee)
                self._wraps.append((name, tee))

    def _unwrap_streams(self) -> None:
        for name, tee in reversed(self._wraps):
            if getattr(sys, name) is tee:
                setattr(sys, name, tee.previous)
        self._wraps.clear()

    def output(self) -> str:
        """What reached sys.stdout / sys.stderr while installed (the vending log lines excepted)."""
        with self._output_lock:
            return self._output.getvalue()

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
            self.responses.append(
                Response(
                    req.method,
                    req.path,
                    response.status_code,
                    "\n".join(f"{k}: {v}" for k, v in response.headers.items()),
                    body,
                    req.headers.get("Authorization", ""),
                )
            )

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
    def _public_body(self, r: Response) -> str:
        """The body of a response, a vend's own credential field blanked (handed out by design)."""
        if r.status >= 300 or r.path not in self.VEND_PATHS:
            return r.body
        try:
            data = json.loads(r.body)
        except ValueError:
            return r.body
        if isinstance(data, dict):
            for name in self.CREDENTIAL_FIELDS:
                if isinstance(data.get(name), str):
                    data[name] = "[handed out]"
        return json.dumps(data)

    def haystacks(self) -> dict[str, str]:
        out: dict[str, str] = {
            "logs": (self._tee.getvalue() if self._tee else "") + "\n" + "\n".join(self._records.lines),
            "stdout-stderr": self.output(),
        }
        errors, bodies, headers = [], [], []
        with self._lock:
            responses = list(self.responses)
        for r in responses:
            headers.append(r.headers)
            (errors if r.status >= 400 else bodies).append(self._public_body(r))
        out["error-bodies"] = "\n".join(errors)
        out["response-bodies"] = "\n".join(bodies)
        out["response-headers"] = "\n".join(headers)
        stores: dict[int, str] = {}
        events: list[str] = []
        for h in self.harnesses:
            for store in _stores_of(h):
                if id(store) not in stores:
                    stores[id(store)] = json.dumps(dump_store(store), default=str, sort_keys=True)
            events.extend(_events_text(h))
        out["store"] = "\n".join(stores.values())
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
        """Every caller credential sent to a watched harness (whatever its shape), and the extra ones."""
        out: dict[str, None] = {}
        with self._lock:
            headers = [r.authorization for r in self.responses]
        for auth in headers:
            token = caller_token_of(auth)
            if token is not None:
                out[token] = None
        for token in self.extra_caller_tokens:
            out[token] = None
        return list(out)

    def hits(self) -> tuple[list[tuple[str, Hit]], dict[str, Any]]:
        """Every (place, hit) and the figures of the search."""
        secrets, tokens = self.minted_secrets(), self.caller_tokens()
        index = SecretIndex(secrets, "minted credential")
        index.add(tokens, "caller token")
        stacks = self.haystacks()
        found = [(where, hit) for where, text in stacks.items() for hit in index.find(text)]
        figures = {
            "credentials": len(secrets),
            "caller_tokens": len(tokens),
            "responses": len(self.responses),
            "bytes": {k: len(v) for k, v in stacks.items()},
            "hits": len(found),
        }
        return found, figures

    def check(self) -> dict[str, Any]:
        """Search every haystack for every secret; returns figures, raises AssertionError on any hit."""
        found, figures = self.hits()
        assert not found, "credential material found:\n" + "\n".join(f"  in {w}: {h}" for w, h in found)
        return figures


class CredentialArchive:
    """Run-wide figures: every credential minted in an audited test, and the hits (always zero)."""

    def __init__(self) -> None:
        self.tests = 0
        self.credentials: dict[str, str] = {}  # sha256 -> test node id
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
        return (
            f"secrets audit: {self.tests} tests, {len(self.credentials)} minted credentials and "
            f"{self.caller_tokens} caller tokens searched (every 32-char window; plain, base64, base64url, "
            f"percent-encoded) in {self.responses} responses; {searched}; hits 0"
        )
