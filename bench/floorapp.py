"""The floor of a vend: a minimal HTTP function making the same remote calls, on the same server.

    python -m functions_framework --target floor_vend --source bench/floorapp.py --port P

What every vend has to do and nothing more, written the shortest way with
the same client libraries, so that the measured vend and its floor both pay
the HTTP hop (functions-framework, gunicorn, Flask) and the same remote work:

1. read the caller's bearer token and the JSON body;
2. check the token's RS256 signature with the issuer's key through the same
   library call as ``vending.identity`` (PyJWT's ``PyJWS.decode_complete`` with
   a ``PyJWK``, on ``cryptography``), the key fetched once from the issuer's
   JWKS with ``requests`` (the first request of a process pays the fetch, as a
   cold vend does); no claim checks;
3. read the target's kill switch document (one get);
4. one atomic write creating two documents: the caller token's ``jti`` and
   the issuance record (same shape as ``vending.ledger`` writes);
5. one IAM ``generateAccessToken`` over HTTP (``requests.Session``, keep-alive);
6. one write updating the record with the token's SHA-256 and expiry;
7. read the kill switch again; answer the token as JSON.

No policy, no claim checks, no audit line, no error mapping: everything the
service adds on top is what the ratio measures. The store is chosen like the
service's: ``VENDING_STORE=firestore`` (``google.cloud.firestore.Client``,
``WriteBatch``) or ``sqlite:PATH`` (``sqlite3``, WAL, ``BEGIN IMMEDIATE``,
JSON documents in the tables and indexes the service's schema declares; the
harness creates that schema before the server starts, as a deployment would).
Clients are built on the first request (fresh clients in a cold process),
then reused. Settings: ``VENDING_IAM_ENDPOINT``, ``VENDING_IAM_TOKEN``,
``VENDING_PROJECT``, ``FLOOR_JWKS_URL``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
import uuid
from typing import Any

import functions_framework
import jwt
import requests

STORE = os.environ.get("VENDING_STORE", "firestore")
IAM = os.environ.get("VENDING_IAM_ENDPOINT", "")
IAM_TOKEN = os.environ.get("VENDING_IAM_TOKEN", "")
PROJECT = os.environ.get("VENDING_PROJECT", "")
JWKS_URL = os.environ.get("FLOOR_JWKS_URL", "")
RETENTION = dt.timedelta(days=90)

_lock = threading.Lock()
_state: dict[str, Any] = {}
_local = threading.local()
_JWS = jwt.PyJWS()


def _setup() -> dict[str, Any]:
    """Fresh clients on the first request: JWKS fetch, IAM session, store client."""
    with _lock:
        if _state:
            return _state
        session = requests.Session()
        session.trust_env = False  # as vending.iam: proxy settings resolved once, not per request
        jwk = session.get(JWKS_URL, timeout=5).json()["keys"][0]
        key = jwt.PyJWK(jwk, "RS256")
        state: dict[str, Any] = {"session": session, "key": key}
        if STORE == "firestore":
            from google.cloud import firestore

            state["db"] = firestore.Client(project=PROJECT)
        else:
            state["db_path"] = STORE.removeprefix("sqlite:")
            state["write_lock"] = threading.Lock()
        _state.update(state)
        return _state


def _verify(token: str, key: Any) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(_JWS.decode_complete(token, key=key, algorithms=["RS256"])["payload"])
    return claims


def _record(issuance_id: str, claims: dict[str, Any], body: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """An issuance record of the same shape and size as ``vending.ledger`` writes."""
    until = now + dt.timedelta(seconds=900)
    return {
        "id": issuance_id,
        "kind": "access_token",
        "state": "issuing",
        "principal": f"bench-ci:{claims['sub']}",
        "issuer": "bench-ci",
        "subject": claims["sub"],
        "entitlement": "bench-deploy",
        "service_account": body["service_account"],
        "delegates": [],
        "reason": None,
        "request_id": None,
        "break_glass": False,
        "bounds": {"not_after": until, "scopes": body["scopes"]},
        "created_at": now,
        "reserved_until": until,
        "expire_time": None,
        "issued_at": None,
        "token_sha256": None,
        "key_id": None,
        "failure": None,
        "purge_at": until + RETENTION,
        "scopes": body["scopes"],
        "lifetime_s": int(body["lifetime"].rstrip("s")),
    }


# -- the store: Firestore ------------------------------------------------------------------------


def _firestore_calls(state: dict[str, Any], claims: dict[str, Any], body: dict[str, Any]) -> tuple[str, Any]:
    db = state["db"]
    now = dt.datetime.now(dt.UTC)
    switch = db.collection("floor_kill_switches").document(body["service_account"])
    switch.get()
    issuance_id = uuid.uuid4().hex
    record = db.collection("floor_issuances").document(issuance_id)
    batch = db.batch()
    expires = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)
    batch.create(
        db.collection("floor_replay").document(f"bench-ci:{claims['jti']}"),
        {"expires_at": expires, "used_at": now, "purge_at": expires + dt.timedelta(days=1)},
    )
    batch.create(record, _record(issuance_id, claims, body, now))
    batch.commit()
    return issuance_id, (db, record, switch)


def _firestore_confirm(handle: Any, changes: dict[str, Any]) -> None:
    db, record, switch = handle
    batch = db.batch()
    batch.update(record, changes)
    batch.commit()
    switch.get()


# -- the store: SQLite ---------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _conn(state: dict[str, Any]) -> Any:
    conn = getattr(_local, "conn", None)
    if conn is None:
        import sqlite3

        conn = sqlite3.connect(state["db_path"], timeout=5, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        _local.conn = conn
    return conn


def _sqlite_write(state: dict[str, Any], statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    conn = _conn(state)
    with state["write_lock"]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("UPDATE _meta SET value = value + 1 WHERE name = 'version' RETURNING value")
            v = version.fetchall()[0][0]
            for sql, params in statements:
                if sql.startswith("UPDATE"):  # a document store's update: read, merge, write back
                    data = json.loads(
                        conn.execute("SELECT data FROM issuances WHERE id = ?", (params[1],)).fetchone()[0]
                    )
                    data.update(params[0])
                    params = (json.dumps(data, separators=(",", ":")), params[1])
                conn.execute(sql.replace("VERSION", str(v)), params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _sqlite_calls(state: dict[str, Any], claims: dict[str, Any], body: dict[str, Any]) -> tuple[str, Any]:
    conn = _conn(state)
    sa = body["service_account"]
    conn.execute("SELECT data, version FROM kill_switches WHERE id = ?", (sa,)).fetchone()
    now = dt.datetime.now(dt.UTC)
    issuance_id = uuid.uuid4().hex
    expires = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)
    replay = {"expires_at": expires, "used_at": now, "purge_at": expires + dt.timedelta(days=1)}
    record = _record(issuance_id, claims, body, now)
    insert = "INSERT INTO {} (id, data, version) VALUES (?, ?, VERSION)"
    _sqlite_write(
        state,
        [
            (insert.format("replay"), (f"bench-ci:{claims['jti']}", json.dumps(_encode(replay)))),
            (insert.format("issuances"), (issuance_id, json.dumps(_encode(record), separators=(",", ":")))),
        ],
    )
    return issuance_id, (state, issuance_id, sa)


def _sqlite_confirm(handle: Any, changes: dict[str, Any]) -> None:
    state, issuance_id, sa = handle
    _sqlite_write(
        state, [("UPDATE issuances SET data = ?, version = VERSION WHERE id = ?", (_encode(changes), issuance_id))]
    )
    _conn(state).execute("SELECT data, version FROM kill_switches WHERE id = ?", (sa,)).fetchone()


# -- the handler ---------------------------------------------------------------------------------


@functions_framework.http
def floor_vend(request: Any) -> Any:
    state = _state or _setup()
    token = request.headers.get("Authorization", "")[7:]
    body = json.loads(request.get_data())
    claims = _verify(token, state["key"])
    firestore = STORE == "firestore"
    issuance_id, handle = (_firestore_calls if firestore else _sqlite_calls)(state, claims, body)
    resp = state["session"].post(
        f"{IAM}/v1/projects/-/serviceAccounts/{body['service_account']}:generateAccessToken",
        data=json.dumps({"scope": body["scopes"], "lifetime": body["lifetime"]}),
        headers={
            "Authorization": f"Bearer {IAM_TOKEN}",
            "Content-Type": "application/json",
            "X-Goog-Request-Reason": f"token-vending issuance {issuance_id}",
        },
        timeout=30,
    )
    minted = resp.json()
    now = dt.datetime.now(dt.UTC)
    expire_time = dt.datetime.fromisoformat(minted["expireTime"].replace("Z", "+00:00"))
    changes = {
        "state": "active",
        "token_sha256": hashlib.sha256(minted["accessToken"].encode()).hexdigest(),
        "issued_at": now,
        "expire_time": expire_time,
        "key_id": None,
        "purge_at": expire_time + RETENTION,
    }
    (_firestore_confirm if firestore else _sqlite_confirm)(handle, changes)
    return {
        "access_token": minted["accessToken"],
        "token_type": "Bearer",
        "expire_time": minted["expireTime"],
        "expires_in": int((expire_time - now).total_seconds()),
        "issuance_id": issuance_id,
        "service_account": body["service_account"],
    }
