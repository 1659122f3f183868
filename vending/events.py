"""Lifecycle events for chat bots and alerting: small JSON, never a credential.

``Events.publish(channel, event)`` sends to the notifications or alerts topic
with google-cloud-pubsub (imported lazily: it costs ~0.5 s), or appends to a
local JSONL file on the embedded default. Publishing never undoes what
happened: a failed publish is retried by the client library, then logged.
``flush()`` waits (bounded) for outstanding publishes; transports call it
before returning so nothing is lost when the instance's CPU is throttled.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal, Protocol

from vending import clock, log

Channel = Literal["notifications", "alerts"]


class Events(Protocol):
    def publish(self, channel: Channel, event: dict[str, Any]) -> None: ...
    def flush(self, timeout_s: float = 5.0) -> None: ...


def make_event(type_: str, **fields: Any) -> dict[str, Any]:
    event = {"type": type_, "time": clock.rfc3339(clock.now())}
    event.update({k: (clock.rfc3339(v) if hasattr(v, "tzinfo") else v) for k, v in fields.items()})
    return event


# One shape per record kind: every event about an issuance carries these fields, every
# event about an access request those; identities are issuer-qualified (ISSUER/IDENTITY).
ISSUANCE_FIELDS = ("kind", "entitlement", "service_account", "principal", "request_id", "expire_time", "break_glass")
REQUEST_FIELDS = ("entitlement", "service_account", "requester", "state", "window_end", "break_glass")


def issuance_event(type_: str, record: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``credential.*`` events (and ``break_glass.used``) from an issuance record."""
    return make_event(type_, issuance_id=record["id"], **{k: record.get(k) for k in ISSUANCE_FIELDS}, **extra)


def request_event(type_: str, record: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``request.*`` events (and ``break_glass.activated``) from an access-request record."""
    fields = {k: record.get(k) for k in REQUEST_FIELDS}
    fields["break_glass"] = bool(fields["break_glass"])
    return make_event(type_, request_id=record["id"], **fields, **extra)


REJECTION_FIELDS = ("action", "request_id", "actor", "bot", "message_id", "reason", "message")


def rejection_event(**fields: Any) -> dict[str, Any]:
    """``approval.rejected``: a verified chat-ops message the service refused (not an approver, their own
    request, an illegal transition...), so the bot can tell the person why. Always every field of
    ``REJECTION_FIELDS`` (None when unknown); ``actor`` is issuer-qualified; ``message`` is the refusal's
    public sentence, never its logged detail."""
    unknown = set(fields) - set(REJECTION_FIELDS)
    if unknown:
        raise TypeError(f"not fields of approval.rejected: {sorted(unknown)}")
    return make_event("approval.rejected", **{k: fields.get(k) for k in REJECTION_FIELDS})


KILL_SWITCH_FIELDS = (
    "service_account",
    "state",
    "engagement_id",
    "engaged_by",
    "justification",
    "via",
    "requested_at",
    "engaged_at",
    "safe_at",
    "revoked",
    "failure",
)


def kill_switch_event(type_: str, record: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``kill_switch.*`` events from a kill switch record (``vending.killswitch``)."""
    return make_event(type_, **{k: record.get(k) for k in KILL_SWITCH_FIELDS}, **extra)


class PubSubEvents:
    """Publishes to Pub/Sub topics given as full names ``projects/P/topics/T``."""

    def __init__(self, topics: dict[str, str | None], project: str) -> None:
        self._topics = {k: self._full(v, project) for k, v in topics.items() if v}
        self._client: Any = None
        self._lock = threading.Lock()
        self._pending: list[tuple[Future[Any], str]] = []

    @staticmethod
    def _full(topic: str, project: str) -> str:
        return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"

    def _publisher(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.cloud import pubsub_v1  # type: ignore[attr-defined]

                self._client = pubsub_v1.PublisherClient()
            return self._client

    def publish(self, channel: Channel, event: dict[str, Any]) -> None:
        topic = self._topics.get(channel)
        log.info("event", event=event, channel=channel)
        if topic is None:
            return
        data = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        try:
            future = self._publisher().publish(topic, data, type=str(event.get("type", "")))
        except Exception as exc:  # noqa: BLE001 - publishing must never undo the transition
            log.error("event publish failed", channel=channel, event_type=event.get("type"), error=repr(exc))
            return
        with self._lock:
            self._pending.append((future, str(event.get("type"))))

    def flush(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for future, type_ in pending:
            try:
                future.result(timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001 - a lost event is logged, never raised
                log.error("event publish failed", event_type=type_, error=repr(exc))


class FileEvents:
    """Embedded default: one JSON line per event in a local file (and the log)."""

    def __init__(self, path: str | None) -> None:
        self._path = Path(path) if path else None
        self._lock = threading.Lock()
        if self._path:
            self._path.parent.mkdir(parents=True, exist_ok=True)

    def publish(self, channel: Channel, event: dict[str, Any]) -> None:
        log.emit("ALERT" if channel == "alerts" else "INFO", "event", event=event, channel=channel)
        if self._path is None:
            return
        line = json.dumps({"channel": channel, **event}, separators=(",", ":"), sort_keys=True)
        with self._lock, self._path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def flush(self, timeout_s: float = 5.0) -> None:
        return None


class MemoryEvents:
    """Fake for unit tests: keeps what was published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, channel: Channel, event: dict[str, Any]) -> None:
        self.published.append((channel, event))

    def flush(self, timeout_s: float = 5.0) -> None:
        return None
