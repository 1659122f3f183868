"""Attacks on caller token verification: every one must fail with its reason.

Each case GIVEN a pinned test issuer (and an attacker's own issuer with a live
JWKS endpoint), WHEN the forged or tampered token is verified, THEN
``AuthenticationError`` is raised with the expected stable ``reason``, the
caller-facing message stays generic, and nothing was fetched from the
attacker. Time is frozen for every case.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.oidc import (
    DROP,
    SigningKey,
    TestIssuer,
    b64url,
    b64url_decode,
    ec_key,
    rsa_signing_key,
    tamper_header,
    tamper_payload,
)
from vending import clock
from vending.errors import AuthenticationError
from vending.identity import MAX_TOKEN_CHARS, JwksCache, Verifier

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
NOW = int(T0.timestamp())
LEEWAY = 30  # Issuer.leeway_seconds default
MAX_TTL = 86400  # Issuer.max_token_ttl_seconds default


@pytest.fixture
def frozen() -> Iterator[Any]:
    with freeze_time(T0) as frozen_time:
        yield frozen_time


@pytest.fixture
def idp(frozen: Any) -> Iterator[TestIssuer]:
    with TestIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def evil() -> Iterator[TestIssuer]:
    """The attacker's own issuer: other keys, same kids, a live JWKS endpoint (never to be fetched)."""
    with TestIssuer(issuer="https://evil.example", name="evil", key_set=7) as issuer:
        yield issuer


# ---------------------------------------------------------------------------
# Token helpers


def _sig(token: str) -> bytes:
    return b64url_decode(token.rsplit(".", 1)[1])


def _with_sig(token: str, signature: bytes | str) -> str:
    seg = signature if isinstance(signature, str) else b64url(signature)
    return token.rsplit(".", 1)[0] + "." + seg


def _flip_bit(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _segments(token: str) -> list[str]:
    return token.split(".")


def _join(*parts: str) -> str:
    return ".".join(parts)


# ---------------------------------------------------------------------------
# Cases


Build = Callable[[TestIssuer, TestIssuer], str]


@dataclass(frozen=True)
class Attack:
    id: str
    build: Build
    reason: str
    config: dict[str, Any] = field(default_factory=dict)
    setup: Callable[[TestIssuer], None] | None = None


def _publish_second_rsa(idp: TestIssuer) -> None:
    idp.publish(rsa_signing_key("rsa-2", 1))


def _only_rsa(idp: TestIssuer) -> None:
    idp.unpublish("ec-1")


ATTACKS: list[Attack] = [
    # --- alg none and HMAC confusion -------------------------------------------------
    Attack("alg-none-lowercase", lambda i, e: i.mint(alg="none"), "disallowed-algorithm"),
    Attack("alg-none-capitalized", lambda i, e: i.mint(alg="None"), "disallowed-algorithm"),
    Attack("alg-none-uppercase", lambda i, e: i.mint(alg="NONE"), "disallowed-algorithm"),
    Attack("alg-none-mixed-case", lambda i, e: i.mint(alg="nOnE"), "disallowed-algorithm"),
    Attack(
        "alg-none-with-real-signature",
        lambda i, e: _with_sig(tamper_header(i.mint(), alg="none"), _sig(i.mint())),
        "disallowed-algorithm",
    ),
    Attack(
        "alg-none-only-allowed-rs256",
        lambda i, e: i.mint(alg="none"),
        "disallowed-algorithm",
        config={"algorithms": ("RS256",)},
    ),
    Attack("alg-empty-string", lambda i, e: i.mint(header={"alg": ""}), "malformed-token"),
    Attack("alg-missing", lambda i, e: i.mint(header={"alg": DROP}), "malformed-token"),
    Attack("alg-not-a-string", lambda i, e: i.mint(header={"alg": ["RS256"]}, alg="RS256"), "malformed-token"),
    Attack("hs256-public-key-pem-as-secret", lambda i, e: i.mint(alg="HS256"), "disallowed-algorithm"),
    Attack("hs384-public-key-pem-as-secret", lambda i, e: i.mint(alg="HS384"), "disallowed-algorithm"),
    Attack("hs512-public-key-pem-as-secret", lambda i, e: i.mint(alg="HS512"), "disallowed-algorithm"),
    Attack(
        "hs256-public-jwk-json-as-secret",
        lambda i, e: i.mint(alg="HS256", hs_secret=json.dumps(i.rsa.public_jwk()).encode()),
        "disallowed-algorithm",
    ),
    Attack("hs256-ec-public-key-as-secret", lambda i, e: i.mint(key="ec", alg="HS256"), "disallowed-algorithm"),
    Attack(
        "es256-not-listed-for-issuer",
        lambda i, e: i.mint(key="ec"),
        "disallowed-algorithm",
        config={"algorithms": ("RS256",)},
    ),
    Attack("rs512-not-listed-for-issuer", lambda i, e: i.mint(alg="RS512"), "disallowed-algorithm"),
    Attack(
        "ps256-with-key-published-for-rs256",
        lambda i, e: i.mint(alg="PS256"),
        "disallowed-algorithm",
        config={"algorithms": ("RS256", "PS256")},
    ),
    # --- keys the issuer never published ------------------------------------------------
    Attack("untrusted-key-copies-iss-own-kid", lambda i, e: i.mint(key="attacker"), "unknown-key"),
    Attack(
        "untrusted-key-copies-iss-and-trusted-kid",
        lambda i, e: i.mint(key="attacker", kid="rsa-1"),
        "invalid-signature",
    ),
    Attack(
        "untrusted-issuer-token-iss-rewritten-before-signing",
        lambda i, e: e.mint(iss=i.issuer, aud=i.audience),
        "invalid-signature",
    ),
    Attack(
        "untrusted-ec-key-with-trusted-kid",
        lambda i, e: i.mint(key=SigningKey("ec-1", "ES256", ec_key(3))),
        "invalid-signature",
    ),
    Attack("unknown-kid", lambda i, e: i.mint(kid="no-such-key"), "unknown-key"),
    Attack("kid-not-a-string", lambda i, e: i.mint(kid=123), "malformed-token"),
    Attack("kid-empty-string", lambda i, e: i.mint(kid=""), "malformed-token"),
    Attack("kid-missing-with-several-keys", lambda i, e: i.mint(kid=None), "unknown-key"),
    Attack(
        "kid-missing-wrong-key-single-key-jwks",
        lambda i, e: i.mint(key="attacker", kid=None),
        "invalid-signature",
        setup=_only_rsa,
    ),
    # --- time ------------------------------------------------------------------------------
    Attack("expired-an-hour-ago", lambda i, e: i.mint(iat=NOW - 7200, exp=NOW - 3600), "token-expired"),
    Attack("exp-exactly-at-leeway-boundary", lambda i, e: i.mint(iat=NOW - 600, exp=NOW - LEEWAY), "token-expired"),
    Attack("exp-just-past-leeway-boundary", lambda i, e: i.mint(iat=NOW - 600, exp=NOW - LEEWAY - 1), "token-expired"),
    Attack(
        "exp-past-zero-leeway",
        lambda i, e: i.mint(iat=NOW - 600, exp=NOW),
        "token-expired",
        config={"leeway_seconds": 0},
    ),
    Attack("nbf-in-the-future", lambda i, e: i.mint(nbf=NOW + LEEWAY + 1), "token-not-yet-valid"),
    Attack("iat-in-the-future", lambda i, e: i.mint(iat=NOW + LEEWAY + 1, exp=NOW + 600), "issued-in-future"),
    Attack("missing-exp", lambda i, e: i.mint(drop=["exp"]), "missing-claim"),
    Attack("missing-iat", lambda i, e: i.mint(drop=["iat"]), "missing-claim"),
    Attack("exp-numeric-string", lambda i, e: i.mint(exp=str(NOW + 600)), "invalid-claim"),
    Attack("exp-boolean-true", lambda i, e: i.mint(exp=True), "invalid-claim"),
    Attack("exp-null", lambda i, e: i.mint(exp=None), "invalid-claim"),
    Attack("exp-far-beyond-year-9999", lambda i, e: i.mint(exp=10**20), "invalid-claim"),
    Attack(
        "exp-nan-literal",
        lambda i, e: i.mint(raw_payload=json.dumps(i.claims()).replace(f'"exp": {NOW + 600}', '"exp": NaN')),
        "malformed-token",
    ),
    Attack("nbf-not-numeric", lambda i, e: i.mint(nbf="now"), "invalid-claim"),
    Attack(
        "lifetime-above-issuer-maximum", lambda i, e: i.mint(iat=NOW, exp=NOW + MAX_TTL + 1), "token-lifetime-too-long"
    ),
    Attack(
        "lifetime-above-tight-maximum",
        lambda i, e: i.mint(iat=NOW, exp=NOW + 301),
        "token-lifetime-too-long",
        config={"max_token_ttl_seconds": 300},
    ),
    Attack("exp-before-iat", lambda i, e: i.mint(iat=NOW, exp=NOW - 1), "invalid-claim"),
    # --- audience --------------------------------------------------------------------------
    Attack("wrong-audience", lambda i, e: i.mint(aud="https://other-service.example"), "wrong-audience"),
    Attack("missing-audience", lambda i, e: i.mint(drop=["aud"]), "missing-claim"),
    Attack(
        "audience-list-with-extra", lambda i, e: i.mint(aud=[i.audience, "https://other.example"]), "wrong-audience"
    ),
    Attack(
        "audience-list-extra-first", lambda i, e: i.mint(aud=["https://other.example", i.audience]), "wrong-audience"
    ),
    Attack("audience-empty-list", lambda i, e: i.mint(aud=[]), "wrong-audience"),
    Attack("audience-listed-twice", lambda i, e: i.mint(aud=[i.audience, i.audience]), "wrong-audience"),
    Attack("audience-prefix-extended", lambda i, e: i.mint(aud=i.audience + "/extra"), "wrong-audience"),
    Attack("audience-case-changed", lambda i, e: i.mint(aud=i.audience.upper()), "wrong-audience"),
    Attack("audience-not-a-string", lambda i, e: i.mint(aud=42), "wrong-audience"),
    Attack("audience-nested-list", lambda i, e: i.mint(aud=[[i.audience]]), "wrong-audience"),
    # --- issuer ------------------------------------------------------------------------------
    Attack("wrong-issuer", lambda i, e: i.mint(iss="https://accounts.google.com"), "untrusted-issuer"),
    Attack("issuer-trailing-slash", lambda i, e: i.mint(iss=i.issuer + "/"), "untrusted-issuer"),
    Attack("issuer-trailing-space", lambda i, e: i.mint(iss=i.issuer + " "), "untrusted-issuer"),
    Attack("issuer-leading-space", lambda i, e: i.mint(iss=" " + i.issuer), "untrusted-issuer"),
    Attack("issuer-case-changed", lambda i, e: i.mint(iss=i.issuer.upper()), "untrusted-issuer"),
    Attack("issuer-http-scheme", lambda i, e: i.mint(iss=i.issuer.replace("https://", "http://")), "untrusted-issuer"),
    Attack("issuer-missing", lambda i, e: i.mint(drop=["iss"]), "missing-claim"),
    Attack("issuer-as-list", lambda i, e: i.mint(iss=[i.issuer]), "untrusted-issuer"),
    Attack("attacker-issuer-self-signed", lambda i, e: e.mint(), "untrusted-issuer"),
    # --- header tampering after signing --------------------------------------------------
    Attack(
        "header-kid-swapped-to-other-rsa-key",
        lambda i, e: tamper_header(i.mint(), kid="rsa-2"),
        "invalid-signature",
        setup=_publish_second_rsa,
    ),
    Attack("header-kid-swapped-to-ec-key", lambda i, e: tamper_header(i.mint(), kid="ec-1"), "disallowed-algorithm"),
    Attack(
        "header-alg-swapped-rs256-to-es256", lambda i, e: tamper_header(i.mint(), alg="ES256"), "disallowed-algorithm"
    ),
    Attack(
        "header-alg-swapped-es256-to-rs256",
        lambda i, e: tamper_header(i.mint(key="ec"), alg="RS256"),
        "disallowed-algorithm",
    ),
    Attack(
        "header-alg-swapped-rs256-to-hs256", lambda i, e: tamper_header(i.mint(), alg="HS256"), "disallowed-algorithm"
    ),
    Attack("header-typ-changed-after-signing", lambda i, e: tamper_header(i.mint(), typ="at+jwt"), "invalid-signature"),
    Attack(
        "header-crit-unknown-extension",
        lambda i, e: i.mint(header={"crit": ["exp-ext"], "exp-ext": 1}),
        "unsupported-header",
    ),
    Attack(
        "header-b64-false-detached", lambda i, e: i.mint(header={"b64": False, "crit": ["b64"]}), "unsupported-header"
    ),
    # --- payload tampering and signature games ---------------------------------------------
    Attack(
        "payload-sub-flipped-after-signing", lambda i, e: tamper_payload(i.mint(), sub="admin"), "invalid-signature"
    ),
    Attack(
        "payload-exp-extended-after-signing", lambda i, e: tamper_payload(i.mint(), exp=NOW + 3000), "invalid-signature"
    ),
    Attack(
        "payload-aud-rewritten-after-signing",
        lambda i, e: tamper_payload(i.mint(aud="https://other.example"), aud=i.audience),
        "invalid-signature",
    ),
    Attack("signature-stripped", lambda i, e: _with_sig(i.mint(), ""), "invalid-signature"),
    Attack(
        "signature-from-another-token", lambda i, e: _with_sig(i.mint(sub="admin"), _sig(i.mint())), "invalid-signature"
    ),
    Attack(
        "signature-bit-flipped", lambda i, e: _with_sig(i.mint(), _flip_bit(_sig(i.mint()), 100)), "invalid-signature"
    ),
    Attack("signature-truncated", lambda i, e: _with_sig(i.mint(), _sig(i.mint())[:-3]), "invalid-signature"),
    Attack(
        "es256-signature-der-encoded-garbage",
        lambda i, e: _with_sig(i.mint(key="ec"), b"\x30\x06" + b"\x00" * 6),
        "invalid-signature",
    ),
    # --- structure -------------------------------------------------------------------------
    Attack("empty-token", lambda i, e: "", "missing-token"),
    Attack("whitespace-token", lambda i, e: " ", "malformed-token"),
    Attack("token-truncated-mid-payload", lambda i, e: (t := i.mint())[: len(t) // 3], "malformed-token"),
    Attack("two-segments", lambda i, e: ".".join(_segments(i.mint())[:2]), "malformed-token"),
    Attack("four-segments", lambda i, e: i.mint() + ".AAAA", "malformed-token"),
    Attack("five-segments-jwe-shape", lambda i, e: i.mint() + ".AAAA.AAAA", "malformed-token"),
    Attack("one-mib-token", lambda i, e: "a" * (1024 * 1024), "token-too-large"),
    Attack("one-mib-padded-valid-token", lambda i, e: i.mint(pad="x" * (1024 * 1024)), "token-too-large"),
    Attack("just-over-size-limit", lambda i, e: "a" * (MAX_TOKEN_CHARS + 1), "token-too-large"),
    Attack("bytes-instead-of-str-non-utf8", lambda i, e: cast(str, b"\xff\xfe" + i.mint().encode()), "malformed-token"),
    Attack(
        "header-bytes-not-utf8",
        lambda i, e: i.mint(raw_header=b'{"alg":"RS256","kid":"rsa-1","x":"\xff"}'),
        "malformed-token",
    ),
    Attack("payload-bytes-not-utf8", lambda i, e: i.mint(raw_payload=b'{"sub":"\xc3\x28"}'), "malformed-token"),
    Attack(
        "payload-utf16-encoded-json",
        lambda i, e: i.mint(raw_payload=json.dumps(i.claims()).encode("utf-16")),
        "malformed-token",
    ),
    Attack("non-ascii-in-segment", lambda i, e: (t := i.mint())[:10] + "é" + t[11:], "malformed-token"),
    Attack("fullwidth-dot-separator", lambda i, e: i.mint().replace(".", "\uff0e", 1), "malformed-token"),
    Attack("invalid-base64-characters", lambda i, e: "!!!!" + i.mint()[4:], "malformed-token"),
    Attack(
        "standard-base64-alphabet",
        lambda i, e: _with_sig(i.mint(), "+/+/" + i.mint().rsplit(".", 1)[1][4:]),
        "malformed-token",
    ),
    Attack("base64-padding-appended", lambda i, e: i.mint() + "==", "malformed-token"),
    Attack(
        "base64-impossible-length",
        lambda i, e: _join(*(s := _segments(i.mint()))[:2], s[2] + "A" * ((1 - len(s[2])) % 4)),
        "malformed-token",
    ),
    Attack("header-not-json", lambda i, e: i.mint(raw_header=b"not json"), "malformed-token"),
    Attack("header-json-array", lambda i, e: i.mint(raw_header=b'["RS256", "rsa-1"]'), "malformed-token"),
    Attack("header-json-string", lambda i, e: i.mint(raw_header=b'"RS256"'), "malformed-token"),
    Attack("payload-not-json", lambda i, e: i.mint(raw_payload=b"{sub: admin}"), "malformed-token"),
    Attack("payload-json-array", lambda i, e: i.mint(raw_payload=json.dumps([i.claims()])), "malformed-token"),
    Attack("payload-json-null", lambda i, e: i.mint(raw_payload=b"null"), "malformed-token"),
    Attack(
        "payload-deeply-nested",
        lambda i, e: i.mint(raw_payload=b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}"),
        "malformed-token",
    ),
    Attack("payload-huge-integer", lambda i, e: i.mint(raw_payload=b'{"exp":' + b"9" * 5000 + b"}"), "malformed-token"),
    # --- duplicate keys ----------------------------------------------------------------------
    Attack("duplicate-sub-claim", lambda i, e: i.mint(duplicate={"sub": "admin"}), "duplicate-claim"),
    Attack("duplicate-iss-claim", lambda i, e: i.mint(duplicate={"iss": "https://evil.example"}), "duplicate-claim"),
    Attack("duplicate-exp-claim", lambda i, e: i.mint(duplicate={"exp": NOW + 10**6}), "duplicate-claim"),
    Attack("duplicate-aud-claim", lambda i, e: i.mint(duplicate={"aud": "https://other.example"}), "duplicate-claim"),
    Attack(
        "duplicate-key-nested-claim",
        lambda i, e: i.mint(raw_payload=json.dumps(i.claims())[:-1].encode() + b', "ctx": {"a": 1, "a": 2}}'),
        "duplicate-claim",
    ),
    Attack("duplicate-alg-in-header", lambda i, e: i.mint(header_duplicate={"alg": "none"}), "duplicate-header"),
    Attack("duplicate-kid-in-header", lambda i, e: i.mint(header_duplicate={"kid": "ec-1"}), "duplicate-header"),
    # --- keys named by the token -------------------------------------------------------------
    Attack(
        "jku-to-attacker-jwks-trusted-kid",
        lambda i, e: e.mint(iss=i.issuer, aud=i.audience, header={"jku": e.jwks_uri}),
        "invalid-signature",
    ),
    Attack(
        "jku-to-attacker-jwks-new-kid",
        lambda i, e: e.mint(key="attacker", iss=i.issuer, aud=i.audience, header={"jku": e.jwks_uri}),
        "unknown-key",
    ),
    Attack(
        "x5u-to-attacker",
        lambda i, e: e.mint(iss=i.issuer, aud=i.audience, header={"x5u": e.jwks_uri}),
        "invalid-signature",
    ),
    Attack(
        "embedded-jwk-attacker-key-trusted-kid",
        lambda i, e: i.mint(key="attacker", kid="rsa-1", header={"jwk": i.attacker.public_jwk()}),
        "invalid-signature",
    ),
    Attack(
        "embedded-jwk-attacker-key-own-kid",
        lambda i, e: i.mint(key="attacker", header={"jwk": i.attacker.public_jwk()}),
        "unknown-key",
    ),
    Attack(
        "embedded-jwk-no-kid-single-key-jwks",
        lambda i, e: i.mint(key="attacker", kid=None, header={"jwk": i.attacker.public_jwk()}),
        "invalid-signature",
        setup=_only_rsa,
    ),
    # --- identity claims -----------------------------------------------------------------------
    Attack("missing-sub", lambda i, e: i.mint(drop=["sub"]), "missing-claim"),
    Attack("sub-newline-injection", lambda i, e: i.mint(sub="alice\nadmin=true"), "invalid-claim"),
    Attack("sub-crlf-injection", lambda i, e: i.mint(sub="alice\r\nX-Admin: 1"), "invalid-claim"),
    Attack("sub-nul-byte", lambda i, e: i.mint(sub="alice\x00admin"), "invalid-claim"),
    Attack("sub-delete-char", lambda i, e: i.mint(sub="alice\x7f"), "invalid-claim"),
    Attack("sub-c1-control", lambda i, e: i.mint(sub="alice\x85"), "invalid-claim"),
    Attack("sub-unicode-line-separator", lambda i, e: i.mint(sub="alice\u2028admin"), "invalid-claim"),
    Attack("sub-empty", lambda i, e: i.mint(sub=""), "invalid-claim"),
    Attack("sub-not-a-string", lambda i, e: i.mint(sub=12345), "invalid-claim"),
    Attack("identity-claim-missing", lambda i, e: i.mint(), "missing-claim", config={"identity_claim": "email"}),
    Attack(
        "identity-claim-newline",
        lambda i, e: i.mint(email="a@example.com\nb@example.com"),
        "invalid-claim",
        config={"identity_claim": "email"},
    ),
    Attack(
        "identity-claim-not-a-string",
        lambda i, e: i.mint(email=["a@example.com"]),
        "invalid-claim",
        config={"identity_claim": "email"},
    ),
    Attack("jti-empty", lambda i, e: i.mint(jti=""), "invalid-claim"),
    Attack("jti-not-a-string", lambda i, e: i.mint(jti=7), "invalid-claim"),
]


def test_attack_ids_are_unique_and_plenty() -> None:
    # GIVEN the catalogue / WHEN counted / THEN ids are distinct and there are at least 40
    ids = [a.id for a in ATTACKS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack_is_rejected(attack: Attack, idp: TestIssuer, evil: TestIssuer) -> None:
    # GIVEN a verifier pinned to idp and a forged token
    if attack.setup is not None:
        attack.setup(idp)
    verifier = Verifier([idp.issuer_config(**attack.config)], jwks=JwksCache(timeout_s=2))
    token = attack.build(idp, evil)

    # WHEN it is verified
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(token)

    # THEN it fails with the expected reason, a generic message, no attacker fetch
    assert caught.value.reason == attack.reason, caught.value.detail
    assert caught.value.message == AuthenticationError.GENERIC
    assert caught.value.detail
    assert evil.fetches == 0


# ---------------------------------------------------------------------------
# Controls: the boundaries above are real boundaries


CONTROLS: list[tuple[str, dict[str, Any]]] = [
    ("exp-one-second-inside-leeway", {"iat": NOW - 600, "exp": NOW - LEEWAY + 1}),
    ("nbf-exactly-at-leeway", {"nbf": NOW + LEEWAY}),
    ("iat-exactly-at-leeway", {"iat": NOW + LEEWAY, "exp": NOW + 600}),
    ("lifetime-exactly-maximum", {"iat": NOW, "exp": NOW + MAX_TTL}),
    ("audience-single-element-list", {"aud": ["https://vending.test.example"]}),
    ("float-times", {"iat": NOW + 0.5, "exp": NOW + 600.25}),
    ("jku-header-ignored-on-genuine-token", {"__header": {"jku": "http://127.0.0.1:9/evil"}}),
]


@pytest.mark.parametrize(("name", "overrides"), CONTROLS, ids=[c[0] for c in CONTROLS])
def test_boundary_control_is_accepted(name: str, overrides: dict[str, Any], idp: TestIssuer) -> None:
    # GIVEN a genuine token right at an edge
    overrides = dict(overrides)
    header = overrides.pop("__header", None)
    token = idp.mint(header=header, **overrides)
    verifier = Verifier([idp.issuer_config()], jwks=JwksCache(timeout_s=2))

    # WHEN verified
    result = verifier.verify(token)

    # THEN it is accepted
    assert result.principal.identity == idp.subject
    assert idp.fetches == 1


# ---------------------------------------------------------------------------
# Authorization header variants


AUTH_CASES: list[tuple[str, Callable[[str], str | None], str]] = [
    ("header-missing", lambda t: None, "missing-token"),
    ("header-empty", lambda t: "", "missing-token"),
    ("header-only-spaces", lambda t: "   ", "missing-token"),
    ("basic-scheme", lambda t: "Basic dXNlcjpwYXNz", "malformed-authorization"),
    ("token-scheme", lambda t: f"Token {t}", "malformed-authorization"),
    ("bearer-without-token", lambda t: "Bearer", "malformed-authorization"),
    ("bearer-and-space-only", lambda t: "Bearer ", "malformed-authorization"),
    ("two-tokens", lambda t: f"Bearer {t} {t}", "malformed-authorization"),
    ("double-space", lambda t: f"Bearer  {t}", "malformed-authorization"),
    ("tab-separator", lambda t: f"Bearer\t{t}", "malformed-authorization"),
    ("comma-separator", lambda t: f"Bearer,{t}", "malformed-authorization"),
    ("token-without-scheme", lambda t: t, "malformed-authorization"),
    ("bearer-with-garbage", lambda t: "Bearer not-a-jwt", "malformed-token"),
    ("bearer-one-mib", lambda t: "Bearer " + "a" * (1024 * 1024), "token-too-large"),
]


@pytest.mark.parametrize(("name", "make", "reason"), AUTH_CASES, ids=[c[0] for c in AUTH_CASES])
def test_authorization_header_is_rejected(
    name: str, make: Callable[[str], str | None], reason: str, idp: TestIssuer
) -> None:
    # GIVEN a valid token inside a malformed Authorization header
    verifier = Verifier([idp.issuer_config()], jwks=JwksCache(timeout_s=2))
    header = make(idp.mint())

    # WHEN verified
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify_authorization(header)

    # THEN
    assert caught.value.reason == reason


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme: str, idp: TestIssuer) -> None:
    # GIVEN a valid token with the scheme in any case
    verifier = Verifier([idp.issuer_config()], jwks=JwksCache(timeout_s=2))

    # WHEN
    result = verifier.verify_authorization(f"{scheme} {idp.mint()}")

    # THEN
    assert result.principal.identity == idp.subject


# ---------------------------------------------------------------------------
# Floods and cost


def test_flood_of_unknown_kids_costs_at_most_one_fetch_per_cooldown(idp: TestIssuer, frozen: Any) -> None:
    # GIVEN a warm cache (1 fetch) and 1,000 tokens with distinct unknown kids
    jwks = JwksCache(timeout_s=2)
    verifier = Verifier([idp.issuer_config(jwks_cooldown_seconds=30)], jwks=jwks)
    verifier.verify(idp.mint())
    base = idp.mint()
    flood = [tamper_header(base, kid=f"flood-{n}") for n in range(1000)]
    reasons: list[str] = []

    # WHEN the flood arrives over three cooldown windows (0-29 s, 30-59 s, 60-89 s)
    for n, token in enumerate(flood):
        if n in (400, 800):
            frozen.tick(30)
        try:
            verifier.verify(token)
        except AuthenticationError as exc:
            reasons.append(exc.reason)

    # THEN every token fails as unknown-key and the JWKS was fetched once per window at most
    assert reasons == ["unknown-key"] * 1000
    assert idp.fetches <= 1 + 2
    assert jwks.fetches[idp.jwks_uri] == idp.fetches


def test_concurrent_flood_of_unknown_kids_shares_one_fetch(idp: TestIssuer, frozen: Any) -> None:
    # GIVEN a warm cache past its cooldown and a slow JWKS endpoint
    jwks = JwksCache(timeout_s=5)
    verifier = Verifier([idp.issuer_config()], jwks=jwks)
    verifier.verify(idp.mint())
    frozen.tick(31)
    idp.delay_s = 0.2
    base = idp.mint()
    tokens = [tamper_header(base, kid=f"flood-{n}") for n in range(200)]
    barrier = threading.Barrier(len(tokens))
    reasons: list[str] = []
    lock = threading.Lock()

    def attack(token: str) -> None:
        barrier.wait()
        try:
            verifier.verify(token)
        except AuthenticationError as exc:
            with lock:
                reasons.append(exc.reason)

    # WHEN 200 threads send unknown kids at once
    threads = [threading.Thread(target=attack, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    # THEN all fail and only one extra fetch happened
    assert sorted(set(reasons)) == ["unknown-key"] and len(reasons) == 200
    assert idp.fetches == 2


def test_one_mib_token_is_rejected_cheaply(idp: TestIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    from vending import identity

    # GIVEN a verifier and a 1 MiB token made of a valid token plus padding; any decoding is recorded
    verifier = Verifier([idp.issuer_config()], jwks=JwksCache(timeout_s=2))
    huge = idp.mint(pad="x" * (1024 * 1024))
    decoded: list[str] = []
    real = identity._b64url_segment
    monkeypatch.setattr(identity, "_b64url_segment", lambda seg, part: decoded.append(part) or real(seg, part))

    # WHEN it is verified 500 times
    reasons = set()
    for _ in range(500):
        try:
            verifier.verify(huge)
        except AuthenticationError as exc:
            reasons.add(exc.reason)

    # THEN each rejection is a size check: no fetch, no decoding, no parsing (the cost is the benchmark's)
    assert reasons == {"token-too-large"}
    assert idp.fetches == 0
    assert decoded == []


# ---------------------------------------------------------------------------
# Properties


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), replacement=st.sampled_from("AQgw_-z09.=+/ é\x00"))
def test_any_single_character_change_is_rejected(idp: TestIssuer, position: int, replacement: str) -> None:
    # GIVEN a genuine token with one character replaced
    token = idp.mint()
    position %= len(token)
    if token[position] == replacement:
        return
    mutated = token[:position] + replacement + token[position + 1 :]
    verifier = Verifier([idp.issuer_config()], jwks=JwksCache(timeout_s=2))

    # WHEN / THEN it never verifies, and only AuthenticationError comes out
    with pytest.raises(AuthenticationError):
        verifier.verify(mutated)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b64url(b) + "." + b64url(b))))
def test_garbage_only_raises_authentication_error(idp: TestIssuer, garbage: str) -> None:
    # GIVEN arbitrary text
    verifier = Verifier([idp.issuer_config()], jwks=JwksCache(timeout_s=2))

    # WHEN / THEN
    with pytest.raises(AuthenticationError):
        verifier.verify(garbage)
    assert idp.fetches == 0


def test_clock_is_frozen_for_attacks(frozen: Any) -> None:
    # GIVEN freezegun / WHEN reading the service clock / THEN it is T0
    assert clock.now() == T0
