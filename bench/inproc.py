"""In-process figures, each run in a fresh child process by the harness.

    python -m bench.inproc roundtrips --n N --iam URL --jwks URL --out FILE
    python -m bench.inproc sweep --sizes 1000,10000 --due 100 --reps 5 --out FILE
    python -m bench.inproc verify --state DIR --n N --out FILE

The ``VENDING_*`` environment (Firestore emulator, IAM stand-in, bench
policy) is set by the harness.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from bench.common import VEND_PATH, median, mint_tokens, summary, vend_body

# -- round trips per vend -----------------------------------------------------------------


class CountingStore:
    """Wraps the real store; counts every call that reaches the backend (one RPC each on Firestore)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ops: Counter[str] = Counter()
        self.documents_written = 0

    def get(self, kind: str, id: str) -> Any:
        self.ops["get"] += 1
        return self.inner.get(kind, id)

    def write(self, writes: Sequence[Any]) -> None:
        self.ops["write"] += 1
        self.documents_written += len(writes)
        self.inner.write(writes)

    def query(self, query: Any) -> Any:
        self.ops["query"] += 1
        return self.inner.query(query)

    def ping(self) -> None:
        self.ops["ping"] += 1
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()


def roundtrips(args: argparse.Namespace) -> dict[str, Any]:
    from functions_framework import create_app

    from vending import wiring
    from vending.store import open_store

    settings = wiring.settings()
    store = CountingStore(open_store(settings))
    wiring.install(wiring.build_service(settings, store=store))
    client = create_app("vend_http", "main.py").test_client()
    tokens = mint_tokens(args.state, args.n + 1)
    body = vend_body()

    def vend(token: str) -> None:
        resp = client.post(
            VEND_PATH, data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        if resp.status_code != 200:
            raise RuntimeError(f"vend answered {resp.status_code}: {resp.get_data(as_text=True)[:300]}")

    def iam_calls() -> int:
        return int(sum(requests.get(f"{args.iam}/_standin/calls", timeout=5).json()["calls"].values()))

    def jwks_fetches() -> int:
        return int(requests.get(f"{args.jwks}/_fetches", timeout=5).json()["fetches"])

    jwks_before_cold, iam_before_cold = jwks_fetches(), iam_calls()
    vend(tokens[0])  # cold: fetches the JWKS once
    cold = {
        "jwks_fetches": jwks_fetches() - jwks_before_cold,
        "iam_calls": iam_calls() - iam_before_cold,
        "store_ops": sum(store.ops.values()),
    }
    store.ops.clear()
    store.documents_written = 0
    jwks0, iam0 = jwks_fetches(), iam_calls()
    for token in tokens[1:]:
        vend(token)
    n = args.n
    return {
        "n": n,
        "iam_calls_per_vend": (iam_calls() - iam0) / n,
        "store_ops_per_vend": sum(store.ops.values()) / n,
        "store_ops_by_kind_per_vend": {k: v / n for k, v in sorted(store.ops.items())},
        "documents_written_per_vend": store.documents_written / n,
        "jwks_fetches_per_vend": (jwks_fetches() - jwks0) / n,
        "first_vend": cold,
    }


# -- sweep ----------------------------------------------------------------------------------


def sweep_bench(args: argparse.Namespace) -> dict[str, Any]:
    from vending import clock, ledger, wiring
    from vending.events import MemoryEvents
    from vending.store.base import Create, Filter, Query, Update
    from vending.store.indexes import ISSUANCES

    settings = wiring.settings()
    tag = secrets.token_hex(3)
    now = clock.now()
    sizes = [int(s) for s in args.sizes.split(",")]
    out: dict[str, Any] = {"due": args.due, "backend": args.backend, "sizes": {}}

    def open_store(size: int) -> Any:
        if args.backend == "sqlite":
            from vending.store.sqlite import SqliteStore

            return SqliteStore(str(args.tmp / f"sweep-{size}-{tag}.db"))
        from vending.store.firestore import FirestoreStore

        return FirestoreStore(settings.project, collection_prefix=f"sweep{size}_{tag}_")

    def record(i: int, state: str, expire: dt.datetime) -> dict[str, Any]:
        created = expire - dt.timedelta(seconds=600)
        return {
            "id": f"{i:032x}",
            "kind": "access_token",
            "state": state,
            "principal": "repo:bench/app",
            "issuer": "bench-ci",
            "subject": "repo:bench/app",
            "entitlement": "bench-deploy",
            "service_account": "demo-deployer@local-project.iam.gserviceaccount.com",
            "delegates": [],
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            "lifetime_s": 600,
            "reason": None,
            "request_id": None,
            "break_glass": False,
            "created_at": created,
            "reserved_until": created + dt.timedelta(seconds=900),
            "expire_time": expire,
            "issued_at": created,
            "token_sha256": "0" * 64,
            "key_id": None,
            "failure": None,
            "purge_at": expire + dt.timedelta(days=90),
        }

    ledgers: dict[int, tuple[Any, Any, list[str]]] = {}
    for size in sizes:
        # One collection set per size: history (expired, every tenth failed) of the last days, then the due.
        store = CountingStore(open_store(size))
        service = wiring.build_service(settings, store=store, events=MemoryEvents())
        history = size - args.due
        docs: list[Any] = []
        for i in range(history):
            expire = now - dt.timedelta(minutes=10 + (history - i))
            state = ledger.FAILED if i % 10 == 0 else ledger.EXPIRED
            docs.append(Create(ISSUANCES, f"{i:032x}", record(i, state, expire)))
        due_ids = [f"{history + j:032x}" for j in range(args.due)]
        for j, doc_id in enumerate(due_ids):
            docs.append(
                Create(ISSUANCES, doc_id, record(history + j, ledger.ACTIVE, now - dt.timedelta(seconds=5 + j)))
            )
        t0 = time.perf_counter()
        for k in range(0, len(docs), 500):
            store.write(docs[k : k + 500])
        out["sizes"][str(size)] = {"records": size, "populate_s": time.perf_counter() - t0, "times_s": []}
        ledgers[size] = (store, service, due_ids)

    for rep in range(args.reps + 1):  # sizes interleaved; rep 0 warms the client and the emulator up
        for size in sizes:
            store, service, due_ids = ledgers[size]
            if rep:  # make the same records due again
                store.write([Update(ISSUANCES, d, {"state": ledger.ACTIVE, "expired_at": None}) for d in due_ids])
            store.ops.clear()
            t0 = time.perf_counter()
            result = service.sweep()
            elapsed = time.perf_counter() - t0
            out["sizes"][str(size)]["ops_per_sweep"] = dict(store.ops)
            swept = result["counts"].get("issuances_expired_from_active", 0)
            if swept != args.due:
                raise RuntimeError(f"sweep of {size} records expired {swept}, expected {args.due}")
            if rep:
                out["sizes"][str(size)]["times_s"].append(elapsed)
    # What one query that matches nothing costs on each ledger: constant on an indexed backend,
    # proportional to the collection on one that scans (the emulator).
    empty = Query(
        ISSUANCES,
        (Filter("state", "==", ledger.UNCONFIRMED), Filter("expire_time", "<=", now)),
        order_by="expire_time",
        limit=200,
    )
    for size in sizes:
        store = ledgers[size][0]
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            store.query(empty)
            times.append(time.perf_counter() - t0)
        entry = out["sizes"][str(size)]
        entry["empty_query_s"] = median(times)
        entry["median_s"] = median(entry["times_s"])
        store.close()
    return out


# -- caller token verification ----------------------------------------------------------------


def verify_bench(args: argparse.Namespace) -> dict[str, Any]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from jwt.algorithms import RSAAlgorithm

    from vending import wiring
    from vending.identity import Verifier

    settings = wiring.settings()
    verifier = Verifier(settings.policy.issuers)
    tokens = mint_tokens(args.state, 200)
    verifier.verify(tokens[0])  # fetch and build the key: every later call uses the cache
    jwks = requests.get(settings.policy.issuers[0].jwks_uri, timeout=5).json()
    public_key: Any = RSAAlgorithm.from_jwk(jwks["keys"][0])
    pad, sha = padding.PKCS1v15(), hashes.SHA256()

    def bare(token: str) -> None:
        signing_input, _, sig = token.rpartition(".")
        public_key.verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), signing_input.encode(), pad, sha)

    def timed(fn: Any) -> list[float]:
        per_call: list[float] = []
        rounds = max(1, args.n // len(tokens))
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            for token in tokens:
                fn(token)
            per_call.append((time.perf_counter_ns() - t0) / len(tokens) / 1000.0)
        return per_call

    for token in tokens:  # warm both paths
        verifier.verify(token)
        bare(token)
    ours, floor = [], []
    for _ in range(3):  # interleaved blocks
        ours += timed(verifier.verify)
        floor += timed(bare)
    return {
        "ours_us": median(ours),
        "floor_us": median(floor),
        "ours": summary(ours),
        "floor": summary(floor),
        "calls": args.n * 3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("roundtrips")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--iam", required=True)
    p.add_argument("--jwks", required=True)
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("sweep")
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--due", type=int, default=100)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--backend", choices=("firestore", "sqlite"), default="firestore")
    p.add_argument("--tmp", type=Path, default=Path("."), help="directory for the SQLite ledgers")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("verify")
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    fn = {"roundtrips": roundtrips, "sweep": sweep_bench, "verify": verify_bench}[args.cmd]
    args.out.write_text(json.dumps(fn(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
