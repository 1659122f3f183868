"""The floor of a vend: the same remote calls, made directly by a minimal script.

    python -m bench.floor --mode firestore|iam --iam URL --n N --warmup W --out FILE

``firestore``: what the design needs per credential, in the vend's order,
with warm clients (one ``requests.Session``, one ``firestore.Client``):
one batch commit creating two documents (the caller token's ``jti`` and the
issuance record, same shape as the ledger's), one IAM ``generateAccessToken``
over HTTP, one update of the record. ``iam``: the IAM call alone (the floor
of the embedded SQLite store). Writes ``{"latencies_ms": [...]}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from bench.common import IAM_TOKEN, LIFETIME_S, PROJECT, SCOPE, SERVICE_ACCOUNT, SUBJECT


def _record(issuance_id: str, now: dt.datetime) -> dict[str, Any]:
    """An issuance record of the same shape and size as ``vending.ledger`` writes."""
    until = now + dt.timedelta(seconds=900)
    return {
        "id": issuance_id,
        "kind": "access_token",
        "state": "issuing",
        "principal": SUBJECT,
        "issuer": "bench-ci",
        "subject": SUBJECT,
        "entitlement": "bench-deploy",
        "service_account": SERVICE_ACCOUNT,
        "delegates": [],
        "scopes": [SCOPE],
        "lifetime_s": LIFETIME_S,
        "reason": None,
        "request_id": None,
        "break_glass": False,
        "created_at": now,
        "reserved_until": until,
        "expire_time": None,
        "issued_at": None,
        "token_sha256": None,
        "key_id": None,
        "failure": None,
        "purge_at": until + dt.timedelta(days=90),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--mode", choices=("firestore", "iam"), required=True)
    parser.add_argument("--iam", required=True, help="IAM stand-in base URL")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    session = requests.Session()
    session.trust_env = False  # the fastest way to make the call: no proxy/netrc lookups in os.environ per request
    url = f"{args.iam}/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}:generateAccessToken"
    payload = json.dumps({"scope": [SCOPE], "lifetime": f"{LIFETIME_S}s"})
    db: Any = None
    if args.mode == "firestore":
        from google.cloud import firestore

        db = firestore.Client(project=PROJECT)
        issuances, replay = db.collection("floor_issuances"), db.collection("floor_replay")

    def one() -> None:
        issuance_id = uuid.uuid4().hex
        now = dt.datetime.now(dt.UTC)
        if db is not None:
            batch = db.batch()
            batch.create(replay.document(uuid.uuid4().hex), {"expires_at": now, "used_at": now, "purge_at": now})
            batch.create(issuances.document(issuance_id), _record(issuance_id, now))
            batch.commit()
        resp = session.post(
            url,
            data=payload,
            headers={
                "Authorization": f"Bearer {IAM_TOKEN}",
                "Content-Type": "application/json",
                "X-Goog-Request-Reason": f"token-vending issuance {issuance_id}",
            },
            timeout=30,
        )
        if resp.status_code != 200:
            raise RuntimeError(f"IAM answered {resp.status_code}: {resp.text[:300]}")
        data = resp.json()
        if db is not None:
            batch = db.batch()
            batch.update(
                issuances.document(issuance_id),
                {
                    "state": "active",
                    "token_sha256": hashlib.sha256(data["accessToken"].encode()).hexdigest(),
                    "issued_at": now,
                    "expire_time": now,
                    "key_id": None,
                    "purge_at": now,
                },
            )
            batch.commit()

    for _ in range(args.warmup):
        one()
    latencies: list[float] = []
    for _ in range(args.n):
        t0 = time.perf_counter_ns()
        one()
        latencies.append((time.perf_counter_ns() - t0) / 1e6)
    args.out.write_text(json.dumps({"n": len(latencies), "latencies_ms": [round(x, 4) for x in latencies]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
