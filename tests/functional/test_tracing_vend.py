"""With tracing on, a vend through the HTTP function is one span with its outcome and no secret."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.app import CLOUD, DEMO_SA, ServiceHarness
from vending import tracing


@pytest.fixture
def exporter() -> Iterator[object]:
    sdk = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    memory = sdk.InMemorySpanExporter()
    assert tracing.configure("cloud-trace", "vending-test", exporter=memory)
    yield memory
    tracing.configure("off", "vending-test")


def test_a_vend_and_a_refusal_are_spans_without_secrets(harness: ServiceHarness, exporter: object) -> None:
    # GIVEN tracing on  WHEN one vend succeeds and one is refused
    ok = harness.vend(service_account=DEMO_SA, scopes=[CLOUD], lifetime="600s")
    assert ok.status_code == 200
    refused = harness.vend(service_account="other@local-project.iam.gserviceaccount.com", scopes=[CLOUD])
    assert refused.status_code == 403
    # THEN two spans, each with the kind, the status and (refused) the reason, and nothing else
    spans = exporter.get_finished_spans()  # type: ignore[attr-defined]
    assert [s.name for s in spans] == ["vend access_token", "vend access_token"]
    assert dict(spans[0].attributes) == {"vending.kind": "access_token", "http.status_code": 200}
    assert dict(spans[1].attributes) == {
        "vending.kind": "access_token",
        "http.status_code": 403,
        "vending.reason": refused.get_json()["error"]["reason"],
    }
    token = ok.get_json()["access_token"]
    assert all(token not in str(dict(s.attributes)) for s in spans)
