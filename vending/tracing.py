"""Optional OpenTelemetry traces of a vend, exported to Cloud Trace. Off by default.

``VENDING_TRACING=off`` (the default): ``span()`` is a no-op and nothing of
OpenTelemetry is imported, so cold start and the hot path pay nothing.
``VENDING_TRACING=cloud-trace``: ``configure`` imports the OpenTelemetry SDK
and the Cloud Trace exporter (``opentelemetry-sdk``,
``opentelemetry-exporter-gcp-trace``: add them to ``requirements.txt`` when
you turn it on; see ``docs/observability.md``) on first use, and every vend
becomes one span named ``vend <kind>`` with the credential kind, the HTTP
status and the refusal reason as attributes. Never a token, a claim value or
a service account key: attributes are whitelisted here.

If the packages are missing, one warning is logged and tracing stays off:
traces are diagnostics, a vend never fails because of them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from vending import log

_lock = threading.Lock()
_tracer: Any = None
_mode = "off"

# The only attributes a span may carry (no identities, no tokens, no claims).
ALLOWED_ATTRIBUTES = frozenset({"vending.kind", "http.status_code", "vending.reason", "vending.outcome"})


def configure(mode: str, project: str, *, exporter: Any = None) -> bool:
    """Turn tracing on for ``cloud-trace`` (``exporter``: tests pass an in-memory one). True when on."""
    global _tracer, _mode
    with _lock:
        _mode = mode
        if mode == "off":
            _tracer = None
            return False
        try:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

            if exporter is None:
                from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter

                processor: Any = BatchSpanProcessor(CloudTraceSpanExporter(project_id=project))
            else:
                processor = SimpleSpanProcessor(exporter)
        except ImportError as exc:
            log.warning(
                "VENDING_TRACING=cloud-trace but the OpenTelemetry packages are not installed: tracing stays off",
                missing=exc.name or "opentelemetry",
            )
            _tracer = None
            return False
        provider = TracerProvider()
        provider.add_span_processor(processor)
        _tracer = provider.get_tracer("vending")
        return True


def enabled() -> bool:
    return _tracer is not None


class _Span:
    """What a caller may record on a span: whitelisted attributes only."""

    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, key: str, value: Any) -> None:
        if self._span is not None and key in ALLOWED_ATTRIBUTES and isinstance(value, (str, int)):
            self._span.set_attribute(key, value)


_NOOP = _Span(None)


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[_Span]:
    """A span when tracing is on; a no-op (no import, no allocation beyond this generator) when off."""
    tracer = _tracer
    if tracer is None:
        yield _NOOP
        return
    with tracer.start_as_current_span(name) as raw:
        wrapped = _Span(raw)
        for key, value in attributes.items():
            wrapped.set(key, value)
        yield wrapped
