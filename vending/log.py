"""Cloud Logging JSON lines with per-request context and redaction.

One line per event on stdout: ``severity``, ``message``, ``time``, the trace
(``logging.googleapis.com/trace``) and any fields given. Context (request id,
trace) is carried in a ContextVar set by the transport layer. Field names
that could hold a secret are dropped, and anything that looks like a bearer
token or JWT inside a string is masked, as a last line of defence: callers
never pass credentials here in the first place.
"""

from __future__ import annotations

import contextvars
import json
import re
import sys
import threading
from typing import Any, TextIO

from vending import clock

_EMPTY: dict[str, Any] = {}  # never mutated: bind() always sets a new dict
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("vending_log_context", default=_EMPTY)
_lock = threading.Lock()
_LEVELS = {"DEBUG": 10, "INFO": 20, "NOTICE": 25, "WARNING": 30, "ERROR": 40, "CRITICAL": 50, "ALERT": 60}
_level = 20
_stream: TextIO | None = None

SECRET_KEYS = frozenset(
    {
        "access_token",
        "id_token",
        "signed_jwt",
        "signed_blob",
        "token",
        "authorization",
        "password",
        "secret",
        "private_key",
        "assertion",
        "credential",
    }
)
# JWTs (three base64url segments starting with a JSON header) and Google OAuth access tokens.
_SECRET_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*|ya29\.[A-Za-z0-9_.-]+")
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))  # stateless between calls: shared by threads


def configure(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Set the level; ``stream`` (default: stdout, as Cloud Logging reads it) is kept once given."""
    global _level, _stream
    _level = _LEVELS.get(level.upper(), 20)
    if stream is not None:
        _stream = stream


def bind(**fields: Any) -> contextvars.Token[dict[str, Any]]:
    """Add fields to the context of the current request; returns a reset token."""
    return _context.set({**_context.get(), **fields})


def reset(token: contextvars.Token[dict[str, Any]]) -> None:
    _context.reset(token)


def context() -> dict[str, Any]:
    return _context.get()


def redact(value: Any) -> Any:
    if isinstance(value, str):
        # Every match of _SECRET_RE starts with one of these literals: a substring test (no regex
        # engine, no copy) answers for the strings of a normal line, which hold neither.
        if "eyJ" not in value and "ya29." not in value:
            return value
        return _SECRET_RE.sub("[REDACTED]", value)
    if isinstance(value, dict):
        return {k: ("[REDACTED]" if k.lower() in SECRET_KEYS else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def emit(severity: str, message: str, **fields: Any) -> None:
    if _LEVELS.get(severity, 20) < _level:
        return
    ctx = _context.get()
    entry: dict[str, Any] = {"severity": severity, "message": message, "time": clock.now().isoformat()}
    trace = ctx.get("trace")
    if trace:
        entry["logging.googleapis.com/trace"] = trace
    for key, value in ctx.items():
        if key != "trace":
            entry.setdefault(key, value)
    entry.update(fields)
    line = _ENCODER.encode(redact(entry))
    stream = _stream or sys.stdout
    with _lock:
        stream.write(line + "\n")
        stream.flush()


def debug(message: str, **fields: Any) -> None:
    emit("DEBUG", message, **fields)


def info(message: str, **fields: Any) -> None:
    emit("INFO", message, **fields)


def notice(message: str, **fields: Any) -> None:
    emit("NOTICE", message, **fields)


def warning(message: str, **fields: Any) -> None:
    emit("WARNING", message, **fields)


def error(message: str, **fields: Any) -> None:
    emit("ERROR", message, **fields)


def alert(message: str, **fields: Any) -> None:
    emit("ALERT", message, **fields)
