"""Per-function settings (issue 17): VENDING_ENTRY_POINT and VENDING_TRACING.

Each function runs as its own account; the event functions are not given the
console session key, so with ``VENDING_ENTRY_POINT`` naming one of them the
key is not required. Everywhere else production still refuses to start
without it (fail closed). ``VENDING_TRACING`` is ``off`` unless set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vending.config import load_settings
from vending.errors import ConfigError

POLICY = """\
issuers:
  - name: ci
    issuer: https://token.actions.githubusercontent.com
    jwks_uri: https://token.actions.githubusercontent.com/.well-known/jwks
    audience: token-vending.test
"""


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    for name in ("VENDING_SESSION_KEY", "VENDING_ENTRY_POINT", "VENDING_TRACING", "VENDING_IAM_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("VENDING_IAM_ENDPOINT", "VENDING_IAM_ADMIN_ENDPOINT", "VENDING_KEYS_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VENDING_CONFIG", str(path))
    monkeypatch.setenv("VENDING_STORE", "firestore")
    return monkeypatch


@pytest.mark.parametrize("entry", ["handle_pubsub", "sweep_expired"])
def test_an_event_function_starts_without_the_session_key(production: pytest.MonkeyPatch, entry: str) -> None:
    production.setenv("VENDING_ENTRY_POINT", entry)
    settings = load_settings()
    assert settings.entry_point == entry
    assert settings.session_key is None


@pytest.mark.parametrize("entry", [None, "vend_http", "chat_http"])
def test_every_other_production_function_needs_the_session_key(
    production: pytest.MonkeyPatch, entry: str | None
) -> None:
    if entry:
        production.setenv("VENDING_ENTRY_POINT", entry)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith("VENDING_SESSION_KEY: required")


def test_a_malformed_entry_point_is_refused(production: pytest.MonkeyPatch) -> None:
    production.setenv("VENDING_ENTRY_POINT", "handle_pubsub; rm")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith("VENDING_ENTRY_POINT:")


@pytest.mark.parametrize(("value", "expected"), [(None, "off"), ("off", "off"), ("cloud-trace", "cloud-trace")])
def test_tracing_is_off_unless_set(production: pytest.MonkeyPatch, value: str | None, expected: str) -> None:
    production.setenv("VENDING_ENTRY_POINT", "sweep_expired")
    if value:
        production.setenv("VENDING_TRACING", value)
    assert load_settings().tracing == expected


def test_an_unknown_tracing_mode_is_refused(production: pytest.MonkeyPatch) -> None:
    production.setenv("VENDING_ENTRY_POINT", "sweep_expired")
    production.setenv("VENDING_TRACING", "jaeger")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith("VENDING_TRACING:")
