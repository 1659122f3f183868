"""Smoke run of the benchmark harness (``python -m bench --quick``): it runs end to end and
reports every figure of issues 8 and 18. The real benchmarks (``make bench``) never run in ``make test``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FIGURES = {
    "vend_latency_p50_firestore",
    "vend_latency_p99_firestore",
    "vend_latency_p50_sqlite",
    "vend_latency_p99_sqlite",
    "http_hop_p50",
    "cold_start",
    "cold_start_sqlite",
    *(f"cpu_per_vend_{backend}_c{c}" for backend in ("firestore", "sqlite") for c in (1, 8, 32)),
    "peak_rss",
    "peak_rss_firestore",
    "rss_growth_last_half",
    "iam_calls_per_vend",
    "store_ops_per_vend",
    "jwks_fetches_per_vend",
    "sweep",
    "sweep_sqlite",
    "verify",
    "naive_p50",
    "naive_p99",
}


@pytest.mark.emulator
@pytest.mark.timeout(330)
def test_quick_bench_reports_every_figure(tmp_path: Path, firestore_emulator: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VENDING_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=320,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    figures = {f["id"]: f for f in data["figures"]}
    assert set(figures) == FIGURES
    for fid, fig in figures.items():
        assert fig["status"] in ("PASS", "MISS", "REPORT"), fid
        assert isinstance(fig["value"], (int, float)), fid
    # Counts that hold at any size: exactly one IAM call and four store operations per warm vend
    # (two writes, and the two reads of the target's kill switch).
    assert figures["iam_calls_per_vend"]["value"] == 1
    assert figures["store_ops_per_vend"]["value"] == 4
    assert figures["jwks_fetches_per_vend"]["value"] == 0
    assert (tmp_path / "latency.png").stat().st_size > 10_000
    for fig in figures.values():
        assert fig["name"] in proc.stdout, fig["id"]  # a row of the printed table
    # A missed cold start or sweep names, with this run's figures, what stands in its way.
    for fid in ("cold_start", "cold_start_sqlite", "sweep"):
        if figures[fid]["status"] == "MISS":
            assert figures[fid]["in_the_way"], fid
            assert f"  {fid}: {figures[fid]['in_the_way']}" in proc.stdout, fid
