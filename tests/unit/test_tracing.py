"""Optional OpenTelemetry traces (issue 17, item 6): off by default, no import, whitelisted attributes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vending import tracing

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _off_after() -> Iterator[None]:
    yield
    tracing.configure("off", "p")


def test_off_by_default_imports_nothing_of_opentelemetry(tmp_path: Path) -> None:
    # GIVEN a fresh interpreter with the default settings  WHEN main is imported and a vend path is traced
    code = (
        "import sys, main\n"
        "from vending import tracing, wiring\n"
        "wiring.handlers()\n"
        "with tracing.span('vend access_token', **{'vending.kind': 'access_token'}) as s:\n"
        "    s.set('http.status_code', 200)\n"
        "print('RESULT', sorted(m for m in sys.modules if m.startswith('opentelemetry')), tracing.enabled())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "VENDING_STORE": f"sqlite:{tmp_path}/v.db", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    # THEN no OpenTelemetry module was loaded and tracing is off
    assert out.returncode == 0, out.stderr[-2000:]
    assert [line for line in out.stdout.splitlines() if line.startswith("RESULT")] == ["RESULT [] False"]


def test_a_span_carries_only_whitelisted_attributes() -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    exporter = sdk.InMemorySpanExporter()
    # GIVEN tracing on with an in-memory exporter
    assert tracing.configure("cloud-trace", "p", exporter=exporter)
    # WHEN a vend span records its outcome and something it must not
    with tracing.span("vend access_token", **{"vending.kind": "access_token", "caller": "alice"}) as span:
        span.set("http.status_code", 403)
        span.set("vending.reason", "scope-not-allowed")
        span.set("access_token", "ya29.secret")
    # THEN one span, with the kind, status and reason only
    [finished] = exporter.get_finished_spans()
    assert finished.name == "vend access_token"
    assert dict(finished.attributes) == {
        "vending.kind": "access_token",
        "http.status_code": 403,
        "vending.reason": "scope-not-allowed",
    }


def test_missing_packages_leave_tracing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the Cloud Trace exporter is not installed
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.cloud_trace", None)
    # WHEN tracing is asked for  THEN it stays off and spans are no-ops
    assert tracing.configure("cloud-trace", "p") is False
    assert not tracing.enabled()
    with tracing.span("vend access_token") as span:
        span.set("http.status_code", 200)
