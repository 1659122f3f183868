"""Every key source outside development issuers is reached over https (issue 17, item 3).

Caller keys (an issuer's ``jwks_uri``), bots' public keys
(``VENDING_KEYS_BASE_URL``) and the IAM endpoints: ``https://HOST``, or plain
http on a loopback host only (the local stand-ins and tests). A development
issuer (refused with Firestore) may use plain http.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vending.config import Issuer, load_settings, secure_url
from vending.errors import ConfigError

BASE = {"name": "ci", "issuer": "https://token.actions.githubusercontent.com", "audience": "vending.test"}


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://token.actions.githubusercontent.com/.well-known/jwks", True),
        ("https://gitlab.com/oauth/discovery/keys", True),
        ("http://127.0.0.1:8082/.well-known/jwks.json", True),
        ("http://localhost:9/jwks", True),
        ("http://[::1]:9/jwks", True),
        ("http://token.actions.githubusercontent.com/.well-known/jwks", False),
        ("http://127.0.0.1.nip.io/jwks", False),  # a host check, not a prefix check
        ("http://localhost.example.com/jwks", False),
        ("ftp://example.com/jwks", False),
        ("https:///jwks", False),
        ("https://user:pw@example.com/jwks", False),
        ("//example.com/jwks", False),
        ("jwks.json", False),
        ("https://example.com:99999/jwks", False),
    ],
)
def test_secure_url(url: str, ok: bool) -> None:
    # GIVEN a key source URL  WHEN checked  THEN only https, or http on loopback, passes
    assert secure_url(url) is ok


def test_a_production_issuer_over_plain_http_is_refused() -> None:
    # GIVEN a non-development issuer whose keys are served over plain http
    with pytest.raises(ValidationError) as info:
        Issuer(**BASE, jwks_uri="http://keys.example.com/jwks")
    # THEN the policy does not load, naming the field
    assert "jwks_uri must be https://" in str(info.value)


def test_a_development_issuer_may_use_plain_http() -> None:
    # GIVEN a development issuer (only ever run with the embedded SQLite store)
    issuer = Issuer(**BASE, jwks_uri="http://dev-box.internal:8082/jwks", development=True)
    # THEN it loads
    assert issuer.jwks_uri.startswith("http://")


POLICY = """\
issuers:
  - name: ci
    issuer: https://token.actions.githubusercontent.com
    jwks_uri: https://token.actions.githubusercontent.com/.well-known/jwks
    audience: vending.test
"""


@pytest.mark.parametrize(
    ("var", "value", "ok"),
    [
        ("VENDING_KEYS_BASE_URL", "https://www.googleapis.com", True),
        ("VENDING_KEYS_BASE_URL", "http://127.0.0.1:8081", True),
        ("VENDING_KEYS_BASE_URL", "http://www.googleapis.com", False),
        ("VENDING_KEYS_BASE_URL", "http://127.0.0.1.evil.example", False),
        ("VENDING_IAM_ENDPOINT", "https://iamcredentials.googleapis.com", True),
        ("VENDING_IAM_ENDPOINT", "http://127.0.0.1.evil.example", False),
        ("VENDING_IAM_ENDPOINT", "http://localhost.evil.example", False),
        ("VENDING_IAM_ENDPOINT", "http://iamcredentials.googleapis.com", False),
    ],
)
def test_key_and_iam_endpoints_are_https(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, var: str, value: str, ok: bool
) -> None:
    # GIVEN a valid policy and one endpoint setting
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    for name in ("VENDING_IAM_TOKEN", "VENDING_IAM_ADMIN_ENDPOINT", "VENDING_KEYS_BASE_URL", "VENDING_IAM_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VENDING_CONFIG", str(path))
    monkeypatch.setenv("VENDING_STORE", f"sqlite:{tmp_path}/v.db")
    monkeypatch.setenv(var, value)
    # WHEN the settings load  THEN a plain-http network host is refused, naming the variable
    if ok:
        load_settings()
        return
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith(f"{var}: must be https://HOST")
