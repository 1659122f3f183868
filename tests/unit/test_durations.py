"""One duration grammar: the policy file, the HTTP API and the client accept and refuse the same strings."""

from __future__ import annotations

from typing import Any

import pytest

from vending import inputs
from vending.client.common import ClientError, as_seconds
from vending.config import Entitlement
from vending.durations import parse_duration
from vending.errors import BadRequestError

ACCEPTED = {600: 600, "600": 600, "600s": 600, "10m": 600, "1h": 3600, "1s": 1, "45m": 2700}
REFUSED = ["1h30m", "10 m", " 600", "600 ", "600S", "1.5h", "-1", "", "1d", "ten", "0x10", "1_000", "6e2"]


def _policy(value: Any) -> int:
    """max_lifetime of an entitlement written with ``value`` (the policy file's grammar)."""
    entitlement = Entitlement.model_validate(
        {
            "name": "e",
            "principals": [{"issuer": "i", "claims": {"sub": "s"}}],
            "service_account": "sa@p.iam.gserviceaccount.com",
            "scopes": ["openid"],
            "max_lifetime": value,
        }
    )
    return entitlement.max_lifetime


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED.items())
def test_every_place_accepts_the_same_durations(text: Any, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert _policy(text) == seconds
    assert inputs.lifetime(text) == seconds
    if isinstance(text, str):
        assert as_seconds(text) == f"{seconds}s"  # what the client sends: the same value, in the same grammar


@pytest.mark.parametrize("text", REFUSED)
def test_every_place_refuses_the_same_strings(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        _policy(text)
    with pytest.raises(BadRequestError) as http:
        inputs.lifetime(text)
    with pytest.raises(ClientError) as client:
        as_seconds(text)
    assert http.value.reason == "invalid-lifetime" and client.value.code == 2


def test_booleans_are_not_durations() -> None:
    with pytest.raises(ValueError):
        parse_duration(True)
    with pytest.raises(BadRequestError):
        inputs.lifetime(True)
