"""Load generator: a separate process sending vends (or plain POSTs) over keep-alive HTTP.

    python -m bench.loadgen --url URL --out FILE [--state DIR] [--n N] [--warmup W] [--concurrency C]

Every request carries a fresh caller token (unique jti), all minted before
the clock starts. ``--concurrency 1`` measures latency (requests one after
the other); more threads, each with its own ``requests.Session``, measure
throughput. Writes ``{"latencies_ms": [...], "wall_s", "n", "errors", ...}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import mint_tokens, vend_body


def _mint_chunk(args: tuple[str, int]) -> list[str]:
    return mint_tokens(Path(args[0]), args[1])


def mint_many(state: Path, n: int) -> list[str]:
    """Pre-mint ``n`` tokens, on every core when there are many (RSA signing, ~0.6 ms each)."""
    if n < 400:
        return mint_tokens(state, n)
    workers = max(1, multiprocessing.cpu_count())
    chunks = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_mint_chunk, [(str(state), c) for c in chunks])
    return [t for part in parts for t in part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--state", type=Path, help="bench issuer state dir; without it a constant token is sent")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--expect-token", action="store_true", help="a 200 must carry access_token")
    args = parser.parse_args(argv)

    total = args.n + args.warmup
    tokens = mint_many(args.state, total) if args.state else ["not-a-token"] * total
    body = vend_body()
    results: list[tuple[int, float, int]] = []  # (index, latency ms, status)
    errors: list[str] = []
    lock = threading.Lock()

    def worker(counter: Any, limit: int, record: bool) -> None:
        session = requests.Session()
        local: list[tuple[int, float, int]] = []
        bad: list[str] = []
        while True:
            i = next(counter)
            if i >= limit:
                break
            headers = {"Authorization": f"Bearer {tokens[i]}", "Content-Type": "application/json"}
            t0 = time.perf_counter_ns()
            try:
                resp = session.post(args.url, data=body, headers=headers, timeout=30)
            except requests.RequestException as exc:
                bad.append(f"{type(exc).__name__}: {exc}")
                continue
            ms = (time.perf_counter_ns() - t0) / 1e6
            ok = resp.status_code == 200 and (not args.expect_token or "access_token" in resp.text)
            if not ok:
                bad.append(f"{resp.status_code}: {resp.text[:300]}")
            if record:
                local.append((i, ms, resp.status_code))
        session.close()
        with lock:
            results.extend(local)
            errors.extend(bad)

    def run(start: int, limit: int, record: bool) -> float:
        counter = itertools.count(start)
        threads = [threading.Thread(target=worker, args=(counter, limit, record)) for _ in range(args.concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    # Warm-up: same concurrency, connections then closed (each worker has its own session).
    if args.warmup:
        run(0, args.warmup, False)
    warm_errors = list(errors)
    errors.clear()
    cpu0 = time.process_time()
    wall = run(args.warmup, total, True)
    cpu_s = time.process_time() - cpu0
    results.sort()
    out: dict[str, Any] = {
        "n": len(results),
        "concurrency": args.concurrency,
        "wall_s": wall,
        "cpu_s": cpu_s,
        "throughput_rps": len(results) / wall if wall > 0 else 0.0,
        "latencies_ms": [round(ms, 4) for _, ms, _ in results],
        "errors": len(errors),
        "error_samples": errors[:5],
        "warmup_errors": len(warm_errors),
        "warmup_error_samples": warm_errors[:5],
    }
    args.out.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
