"""Unit tests for ``vending.identity`` that kill the mutants the other suites let live (issue 19, item 9).

``tests/unit/test_identity.py`` and ``tests/unit/test_token_attacks.py`` pin
every refusal's ``reason``. These pin what they left open:

- the log ``detail`` of each refusal starts with what went wrong (the caller
  sees a generic message; the detail is the only precise record an operator
  gets of an attack);
- the replay key of a token without ``jti``, to the byte: it is stored, so a
  change of its form would let a token used before a deploy be used again
  after it;
- the bot key URL, the bot message's ``nbf`` and ``exp == iat`` edges, the
  paragraph separator among control characters, an ``Authorization`` header
  just under the size limit.

Time is frozen at T0 (freezegun) and the JWKS endpoints are live local servers
(``tests/support/oidc.py``). See tests/MUTATION.md.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from freezegun import freeze_time

from tests.support.oidc import (
    DROP,
    FakeServiceAccountKeys,
    JwksServer,
    SigningKey,
    TestIssuer,
    b64url,
    rsa_signing_key,
)
from vending.config import Bot
from vending.errors import AuthenticationError, JwksUnavailableError
from vending.identity import (
    MAX_EPOCH_S,
    MAX_JWKS_BYTES,
    MAX_TOKEN_CHARS,
    BotVerifier,
    JwksCache,
    Verifier,
    bot_jwks_url,
    replay_key_of_claims,
)

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
NOW = int(T0.timestamp())
BOT = "chatops-bot@proj.iam.gserviceaccount.com"
STRANGER = "stranger@proj.iam.gserviceaccount.com"
BOT_AUD = "https://vending.example/chatops"


@pytest.fixture
def frozen() -> Iterator[Any]:
    with freeze_time(T0) as frozen_time:
        yield frozen_time


@pytest.fixture
def idp(frozen: Any) -> Iterator[TestIssuer]:
    with TestIssuer() as issuer:
        yield issuer


@pytest.fixture
def sa(frozen: Any) -> Iterator[FakeServiceAccountKeys]:
    with FakeServiceAccountKeys() as keys:
        keys.add(BOT)
        keys.add(STRANGER)
        yield keys


def _verifier(idp: TestIssuer, **config: Any) -> Verifier:
    return Verifier([idp.issuer_config(**config)], jwks=JwksCache(timeout_s=2))


def _bots(sa: FakeServiceAccountKeys, **options: Any) -> BotVerifier:
    return BotVerifier(
        [Bot(service_account=BOT)],
        audience=BOT_AUD,
        keys_base_url=sa.keys_base_url,
        max_ttl_s=600,
        jwks=JwksCache(timeout_s=2),
        **options,
    )


def _refusal(call: Callable[[], Any]) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        call()
    return caught.value


def _segments(token: str) -> list[str]:
    return token.split(".")


# ---------------------------------------------------------------------------
# the log detail of each caller-token refusal

CALLER_DETAILS: list[tuple[str, Callable[[TestIssuer], Any], str, str]] = [
    ("empty", lambda i: "", "missing-token", "no token"),
    ("bytes", lambda i: i.mint().encode(), "malformed-token", "token is a bytes, not a string"),
    (
        "too-large",
        lambda i: "a" * (MAX_TOKEN_CHARS + 1),
        "token-too-large",
        f"token is {MAX_TOKEN_CHARS + 1} characters, above the {MAX_TOKEN_CHARS} limit",
    ),
    ("non-ascii", lambda i: "é" + i.mint()[1:], "malformed-token", "token contains non-ASCII characters"),
    (
        "two-segments",
        lambda i: ".".join(_segments(i.mint())[:2]),
        "malformed-token",
        "token has 2 segments, a JWS has 3",
    ),
    (
        "empty-header",
        lambda i: "." + ".".join(_segments(i.mint())[1:]),
        "malformed-token",
        "token has an empty header or payload segment",
    ),
    (
        "empty-payload",
        lambda i: (s := _segments(i.mint()))[0] + ".." + s[2],
        "malformed-token",
        "token has an empty header or payload segment",
    ),
    (
        "header-not-base64url",
        lambda i: "e+" + i.mint()[2:],
        "malformed-token",
        "header segment is not unpadded base64url",
    ),
    (
        "payload-impossible-length",
        lambda i: (s := _segments(i.mint()))[0] + "." + s[1] + "A" * ((1 - len(s[1])) % 4) + "." + s[2],
        "malformed-token",
        "payload segment has an impossible base64url length",
    ),
    (
        "signature-not-canonical",
        lambda i: (s := _segments(i.mint()))[0] + "." + s[1] + "." + s[2][:-1] + "_",
        "malformed-token",
        "signature segment is not canonical base64url",
    ),
    (
        "header-not-utf8",
        lambda i: i.mint(raw_header=b'{"alg":"RS256","x":"\xff"}'),
        "malformed-token",
        "header is not valid UTF-8: ",
    ),
    (
        "header-duplicate",
        lambda i: i.mint(header_duplicate={"alg": "none"}),
        "duplicate-header",
        "header has a duplicate key 'alg'",
    ),
    (
        "payload-duplicate",
        lambda i: i.mint(duplicate={"sub": "root"}),
        "duplicate-claim",
        "payload has a duplicate key 'sub'",
    ),
    ("payload-not-json", lambda i: i.mint(raw_payload=b"{sub: 1}"), "malformed-token", "payload is not JSON: "),
    (
        "payload-nan",
        lambda i: i.mint(raw_payload=b'{"exp": NaN}'),
        "malformed-token",
        "payload is not JSON: non-finite number NaN is not JSON",
    ),
    ("payload-array", lambda i: i.mint(raw_payload=b"[1]"), "malformed-token", "payload is a JSON list, not an object"),
    (
        "crit-header",
        lambda i: i.mint(header={"crit": ["exp"]}),
        "unsupported-header",
        "header parameter 'crit' is not supported",
    ),
    ("kid-empty", lambda i: i.mint(kid=""), "malformed-token", "header kid must be a non-empty string"),
    ("kid-too-long", lambda i: i.mint(kid="k" * 1025), "malformed-token", "header kid must be a non-empty string"),
    ("no-alg", lambda i: i.mint(header={"alg": DROP}), "malformed-token", "header has no alg"),
    (
        "alg-not-allowed",
        lambda i: i.mint(alg="HS256"),
        "disallowed-algorithm",
        "alg 'HS256' is not allowed for issuer 'test' (allowed: RS256, ES256)",
    ),
    (
        "signature-empty",
        lambda i: i.mint()[: i.mint().rindex(".") + 1],
        "invalid-signature",
        "token has an empty signature",
    ),
    (
        "signature-wrong",
        lambda i: i.mint(key="attacker", kid="rsa-1"),
        "invalid-signature",
        "signature does not verify with key 'rsa-1': ",
    ),
    ("unknown-kid", lambda i: i.mint(kid="nope"), "unknown-key", "kid 'nope' is not in the JWKS of "),
    ("no-iss", lambda i: i.mint(drop=["iss"]), "missing-claim", "claim 'iss' is required"),
    ("iss-not-a-string", lambda i: i.mint(iss=["x"]), "untrusted-issuer", "claim 'iss' is a list"),
    (
        "iss-not-pinned",
        lambda i: i.mint(iss="https://evil.example\n"),
        "untrusted-issuer",
        "issuer 'https://evil.example\\\\n' is not pinned",
    ),
    ("no-exp", lambda i: i.mint(drop=["exp"]), "missing-claim", "claim 'exp' is required"),
    ("exp-a-string", lambda i: i.mint(exp="soon"), "invalid-claim", "claim 'exp' must be a number, got str"),
    ("exp-out-of-range", lambda i: i.mint(exp=-1), "invalid-claim", "claim 'exp' = -1 is out of range"),
    (
        "expired",
        lambda i: i.mint(iat=NOW - 600, exp=NOW - 30),
        "token-expired",
        f"token expired at {NOW - 30} (now {NOW}, leeway 30s)",
    ),
    (
        "iat-future",
        lambda i: i.mint(iat=NOW + 31, exp=NOW + 600),
        "issued-in-future",
        f"token issued in the future: iat {NOW + 31} (now {NOW}, leeway 30s)",
    ),
    (
        "nbf-future",
        lambda i: i.mint(nbf=NOW + 31),
        "token-not-yet-valid",
        f"token not valid before {NOW + 31} (now {NOW}, leeway 30s)",
    ),
    (
        "exp-not-after-iat",
        lambda i: i.mint(iat=NOW, exp=NOW),
        "invalid-claim",
        f"token exp {NOW} is not after iat {NOW}",
    ),
    (
        "lifetime",
        lambda i: i.mint(iat=NOW, exp=NOW + 86401),
        "token-lifetime-too-long",
        "token lifetime 86401s exceeds 86400s",
    ),
    ("no-aud", lambda i: i.mint(drop=["aud"]), "missing-claim", "claim 'aud' is required"),
    (
        "wrong-aud",
        lambda i: i.mint(aud="https://other.example"),
        "wrong-audience",
        "aud 'https://other.example' is not exactly 'https://vending.test.example'",
    ),
    ("no-sub", lambda i: i.mint(drop=["sub"]), "missing-claim", "claim 'sub' is required"),
    ("sub-empty", lambda i: i.mint(sub=""), "invalid-claim", "claim 'sub' must be a non-empty string"),
    ("sub-control", lambda i: i.mint(sub="a\nb"), "invalid-claim", "claim 'sub' contains control characters"),
    ("jti-empty", lambda i: i.mint(jti=""), "invalid-claim", "claim 'jti' must be a non-empty string"),
]


@pytest.mark.parametrize(("name", "build", "reason", "detail"), CALLER_DETAILS, ids=[c[0] for c in CALLER_DETAILS])
def test_a_refused_caller_token_says_why_in_the_log_detail(
    idp: TestIssuer, name: str, build: Callable[[TestIssuer], Any], reason: str, detail: str
) -> None:
    """GIVEN a caller token broken in one way
    WHEN verified
    THEN the refusal has its reason, the generic message, and a log detail starting with what went wrong."""
    token = build(idp)

    exc = _refusal(lambda: _verifier(idp).verify(token))

    assert exc.reason == reason
    assert exc.message == AuthenticationError.GENERIC
    assert exc.detail is not None and exc.detail.startswith(detail), exc.detail


def test_a_long_audience_is_cut_in_the_detail(idp: TestIssuer) -> None:
    """GIVEN a token whose audience is 300 characters
    WHEN refused
    THEN the detail quotes only its first 200."""
    exc = _refusal(lambda: _verifier(idp).verify(idp.mint(aud="a" * 300)))

    assert exc.detail is not None and exc.detail.startswith(f"aud {'a' * 200!r} is not")


def test_a_long_untrusted_issuer_is_cut_in_the_detail(idp: TestIssuer) -> None:
    """GIVEN a token from an unpinned issuer whose name is 300 characters
    WHEN refused
    THEN the detail quotes only its first 200."""
    exc = _refusal(lambda: _verifier(idp).verify(idp.mint(iss="i" * 300)))

    assert exc.detail == f"issuer {'i' * 200!r} is not pinned"


# ---------------------------------------------------------------------------
# the Authorization header


@pytest.mark.parametrize(
    ("header", "reason", "detail"),
    [
        (None, "missing-token", "no Authorization header"),
        (" \t ", "missing-token", "no Authorization header"),
        (
            "Basic dXNlcg==",
            "malformed-authorization",
            "Authorization must be 'Bearer <token>' (scheme 'Basic', 2 parts)",
        ),
        ("Bearer a b", "malformed-authorization", "Authorization must be 'Bearer <token>' (scheme 'Bearer', 3 parts)"),
        (
            "Bearerrrrrrrrrrrrrrrrrrrr x",
            "malformed-authorization",
            "Authorization must be 'Bearer <token>' (scheme 'Bearerrrrrrrrrrr', 2 parts)",
        ),
        ("Bé x", "malformed-authorization", "Authorization must be 'Bearer <token>' (scheme '?', 2 parts)"),
        ("B\x01 x", "malformed-authorization", "Authorization must be 'Bearer <token>' (scheme '?', 2 parts)"),
        (
            "Bearer " + "a" * (MAX_TOKEN_CHARS + 60),
            "token-too-large",
            f"Authorization header is {MAX_TOKEN_CHARS + 67} characters",
        ),
    ],
    ids=["none", "blank", "basic", "three-parts", "long-scheme", "non-ascii-scheme", "unprintable-scheme", "huge"],
)
def test_a_refused_authorization_header_says_why(idp: TestIssuer, header: str | None, reason: str, detail: str) -> None:
    """GIVEN a malformed Authorization header
    WHEN verified
    THEN the refusal has its reason and the detail says what was wrong (the scheme shown cut and printable)."""
    exc = _refusal(lambda: _verifier(idp).verify_authorization(header))

    assert exc.reason == reason
    assert exc.detail == detail


@pytest.mark.parametrize("trailer", ["\n", "\r", "\v", "\x0c"], ids=["newline", "return", "vtab", "formfeed"])
def test_only_spaces_and_tabs_are_trimmed_from_the_header(idp: TestIssuer, trailer: str) -> None:
    """GIVEN a Bearer header ending with a line break or another whitespace that is not a space or tab
    WHEN verified
    THEN it is refused (the token is not silently trimmed)."""
    header = f"Bearer {idp.mint()}{trailer}"

    exc = _refusal(lambda: _verifier(idp).verify_authorization(header))

    assert exc.reason == "malformed-token"


def test_spaces_and_tabs_around_the_header_are_trimmed(idp: TestIssuer) -> None:
    """GIVEN a Bearer header padded with spaces and tabs
    WHEN verified
    THEN the token inside verifies."""
    result = _verifier(idp).verify_authorization(f" \t Bearer {idp.mint(sub='alice')} \t")

    assert result.principal.identity == "alice"


def test_trimming_the_header_never_eats_into_the_token(idp: TestIssuer) -> None:
    """GIVEN a genuine ES384 token whose signature happens to end with 'X' (96 bytes: any last character)
    WHEN it comes in an Authorization header
    THEN it verifies: only spaces and tabs are trimmed, never a character of the token."""
    key = SigningKey("ec-384", "ES384", ec.generate_private_key(ec.SECP384R1()))
    idp.publish(key)
    token = next(t for t in (idp.mint(key=key) for _ in range(5000)) if t.endswith("X"))

    result = _verifier(idp, algorithms=("ES384",)).verify_authorization(f"Bearer {token}")

    assert result.principal.identity == idp.subject


def test_a_token_at_the_size_limit_is_verified_through_the_header(idp: TestIssuer) -> None:
    """GIVEN a genuine token of exactly the maximum size
    WHEN it comes in an Authorization header
    THEN it verifies (the header's own limit leaves room for the scheme)."""
    low, high = 0, MAX_TOKEN_CHARS
    while low < high:  # the longest padding that keeps the token within the limit
        mid = (low + high + 1) // 2
        low, high = (mid, high) if len(idp.mint(jti="j", pad="x" * mid)) <= MAX_TOKEN_CHARS else (low, mid - 1)
    token = idp.mint(jti="j", pad="x" * low)
    assert MAX_TOKEN_CHARS - 3 <= len(token) <= MAX_TOKEN_CHARS

    result = _verifier(idp).verify_authorization(f"Bearer {token}")

    assert result.principal.identity == idp.subject


# ---------------------------------------------------------------------------
# claims


@pytest.mark.parametrize(
    "separator",
    ["\u2028", "\u2029", "\x85", "\x1b"],
    ids=["line-separator", "paragraph-separator", "next-line", "escape"],
)
def test_a_subject_with_a_line_or_paragraph_separator_is_refused(idp: TestIssuer, separator: str) -> None:
    """GIVEN a subject holding a Unicode line or paragraph separator or a control character
    WHEN verified
    THEN it is refused: log lines and records never get a forged line."""
    exc = _refusal(lambda: _verifier(idp).verify(idp.mint(sub=f"alice{separator}admin")))

    assert exc.reason == "invalid-claim"


def test_expires_at_and_replay_until_come_from_exp_and_the_leeway(idp: TestIssuer) -> None:
    """GIVEN an issuer with a 45 s leeway and a token expiring at T0+600
    WHEN verified
    THEN it expires at T0+600 and its replay record must live until T0+645."""
    result = _verifier(idp, leeway_seconds=45).verify(idp.mint())

    assert result.expires_at.timestamp() == NOW + 600
    assert result.replay_until.timestamp() == NOW + 645


# ---------------------------------------------------------------------------
# replay keys


def _claims(**over: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "https://issuer.test.example",
        "sub": "alice",
        "aud": "https://vending.example",
        "iat": NOW,
        "exp": NOW + 600,
        "groups": ["é", "b"],
    }
    claims.update(over)
    return claims


def test_the_replay_key_of_a_token_without_jti_is_stable_to_the_byte() -> None:
    """GIVEN the claims of a token without jti (one of them non-ASCII)
    WHEN its replay key is computed
    THEN it is the documented digest: issuer name, then the SHA-256 of [iss, sub, iat, canonical JSON]."""
    claims = _claims()
    canonical = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    asserted = json.dumps([claims["iss"], claims["sub"], claims["iat"], canonical])

    key = replay_key_of_claims("ci", claims)

    assert key == "ci:claims:" + hashlib.sha256(asserted.encode("utf-8")).hexdigest()
    assert (
        key
        == "ci:claims:"
        + hashlib.sha256(
            (
                '["https://issuer.test.example", "alice", ' + str(NOW) + ', "{\\"aud\\":\\"https://vending.example\\",'
                '\\"exp\\":'
                + str(NOW + 600)
                + ',\\"groups\\":[\\"\\\\u00e9\\",\\"b\\"],\\"iat\\":'
                + str(NOW)
                + ',\\"iss\\":\\"https://issuer.test.example\\",\\"sub\\":\\"alice\\"}"]'
            ).encode()
        ).hexdigest()
    )


def test_replay_keys_tell_tokens_apart_by_everything_they_assert() -> None:
    """GIVEN claims differing only in one claim each (sub, iat, iss, exp, a custom claim), and the same in another order
    WHEN their replay keys are computed
    THEN every difference gives another key, the order of the claims does not, nor does the issuer... name differ."""
    base = replay_key_of_claims("ci", _claims())

    others = [
        replay_key_of_claims("ci", _claims(**change))
        for change in (
            {"sub": "bob"},
            {"iat": NOW + 1},
            {"iss": "https://other.example"},
            {"exp": NOW + 601},
            {"groups": ["b"]},
        )
    ]
    reordered = replay_key_of_claims("ci", dict(reversed(list(_claims().items()))))
    other_issuer = replay_key_of_claims("gh", _claims())

    assert len({base, *others}) == 6
    assert reordered == base
    assert other_issuer == "gh" + base[2:]


def test_a_token_with_jti_is_keyed_by_its_jti_only(idp: TestIssuer) -> None:
    """GIVEN two tokens with the same jti but other claims
    WHEN verified
    THEN both have the same replay key, the issuer name and the jti's SHA-256."""
    verifier = _verifier(idp)

    first = verifier.verify(idp.mint(jti="j-1", sub="alice"))
    second = verifier.verify(idp.mint(jti="j-1", sub="bob"))

    assert first.replay_key == second.replay_key == "test:" + hashlib.sha256(b"j-1").hexdigest()


# ---------------------------------------------------------------------------
# the JWKS cache


def test_an_unavailable_jwks_says_what_failed(idp: TestIssuer) -> None:
    """GIVEN the issuer's JWKS endpoint answering 500
    WHEN a token is verified
    THEN the refusal is jwks-unavailable and its detail names the URL and the status."""
    idp.fail = "500"

    exc = _refusal(lambda: _verifier(idp).verify(idp.mint()))

    assert isinstance(exc, JwksUnavailableError)
    assert exc.detail is not None and exc.detail.startswith(
        f"JWKS {idp.jwks_uri} unavailable: GET {idp.jwks_uri}: HTTP 500"
    )


def test_a_key_published_for_another_algorithm_is_refused(frozen: Any) -> None:
    """GIVEN a JWKS whose only key is published for RS384, and a token signed RS256 with it naming it
    WHEN verified by an issuer allowing RS256 only
    THEN it is refused as disallowed-algorithm: the published alg binds the key."""
    with TestIssuer() as idp:
        key = rsa_signing_key("rsa-384", 7, alg="RS384")
        idp.published = [key]
        token = idp.mint(key=key, alg="RS256")

        exc = _refusal(lambda: _verifier(idp, algorithms=("RS256",)).verify(token))

    assert exc.reason == "disallowed-algorithm"
    assert exc.detail is not None and "published for 'RS384'" in exc.detail


def _bare(key: SigningKey, kid: str) -> dict[str, Any]:
    """A published key without its ``alg`` member (common), under ``kid``."""
    return {**{k: v for k, v in key.public_jwk().items() if k != "alg"}, "kid": kid}


@pytest.fixture
def keys_doc(frozen: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """A JWKS endpoint serving the document the test fills in: (url, document)."""
    doc: dict[str, Any] = {"keys": []}
    server = JwksServer().start()
    server.routes["/jwks"] = lambda: doc
    try:
        yield server.base_url + "/jwks", doc
    finally:
        server.stop()


def _key_refusal(url: str, kid: str | None, algorithm: str | None) -> AuthenticationError:
    return _refusal(lambda: JwksCache(timeout_s=2).key(url, kid, ttl_s=60, cooldown_s=30, algorithm=algorithm))


@pytest.mark.parametrize(
    ("kid", "algorithm", "shape"),
    [
        ("ec-bare", "RS256", "kty='EC' crv='P-256', unusable for RS256"),
        ("ec-bare", "ES384", "kty='EC' crv='P-256', unusable for ES384"),
        ("rsa-bare", "ES256", "kty='RSA' crv=None, unusable for ES256"),
    ],
    ids=["ec-key-for-rs256", "p256-key-for-es384", "rsa-key-for-es256"],
)
def test_a_key_without_alg_is_bound_by_its_type_and_curve(
    idp: TestIssuer, keys_doc: tuple[str, dict[str, Any]], kid: str, algorithm: str, shape: str
) -> None:
    """GIVEN published keys without an alg member: an RSA key and an EC P-256 key
    WHEN one is asked for an algorithm its type or curve does not fit
    THEN it is refused as disallowed-algorithm, the detail naming the key, its URL, type and curve."""
    url, doc = keys_doc
    doc["keys"] = [_bare(idp.rsa, "rsa-bare"), _bare(idp.ec, "ec-bare")]

    exc = _key_refusal(url, kid, algorithm)

    assert exc.reason == "disallowed-algorithm"
    assert exc.detail == f"key {kid!r} of {url} is {shape}"


def test_a_symmetric_algorithm_is_never_built(idp: TestIssuer, keys_doc: tuple[str, dict[str, Any]]) -> None:
    """GIVEN a published RSA key without an alg member
    WHEN it is asked for HS256
    THEN it is refused as disallowed-algorithm: HS256 is not an asymmetric JWS algorithm."""
    url, doc = keys_doc
    doc["keys"] = [_bare(idp.rsa, "rsa-bare")]

    exc = _key_refusal(url, "rsa-bare", "HS256")

    assert exc.reason == "disallowed-algorithm"
    assert exc.detail == "algorithm 'HS256' is not an asymmetric JWS algorithm"


def test_without_a_token_algorithm_the_keys_own_decides(idp: TestIssuer, keys_doc: tuple[str, dict[str, Any]]) -> None:
    """GIVEN a published RSA key without alg, one published for PS256, and an EC P-521 key published for ES512
    WHEN each is asked for without a token algorithm
    THEN the first is built for RS256, the second for PS256, the third refused: ES512 is not allowed."""
    url, doc = keys_doc
    p521 = SigningKey("p521", "ES512", ec.generate_private_key(ec.SECP521R1()))
    doc["keys"] = [
        _bare(idp.rsa, "rsa-bare"),
        {**idp.rsa.public_jwk(), "kid": "pss", "alg": "PS256"},
        p521.public_jwk(),
    ]
    cache = JwksCache(timeout_s=2)

    bare = cache.key(url, "rsa-bare", ttl_s=60, cooldown_s=30)
    pss = cache.key(url, "pss", ttl_s=60, cooldown_s=30)
    exc = _key_refusal(url, "p521", None)

    assert (bare.algorithm_name, pss.algorithm_name) == ("RS256", "PS256")
    assert exc.reason == "disallowed-algorithm"
    assert exc.detail == f"key 'p521' of {url} resolves to 'ES512', not an allowed algorithm"


def test_a_published_key_that_cannot_be_loaded_is_refused(keys_doc: tuple[str, dict[str, Any]]) -> None:
    """GIVEN a published RSA key without its modulus
    WHEN it is asked for RS256
    THEN it is refused as invalid-key, naming the key and URL."""
    url, doc = keys_doc
    doc["keys"] = [{"kty": "RSA", "kid": "broken", "e": "AQAB"}]

    exc = _key_refusal(url, "broken", "RS256")

    assert exc.reason == "invalid-key"
    assert exc.detail is not None and exc.detail.startswith(f"key 'broken' of {url} cannot be loaded: ")


def test_a_weak_rsa_key_never_verifies(idp: TestIssuer) -> None:
    """GIVEN the issuer publishing a 1024-bit RSA key, and a token signed with it
    WHEN verified
    THEN it is refused as invalid-key: keys below 2048 bits are not trusted."""
    weak = SigningKey("weak", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    idp.publish(weak)

    exc = _refusal(lambda: _verifier(idp).verify(idp.mint(key=weak)))

    assert exc.reason == "invalid-key"
    assert exc.detail is not None and exc.detail.startswith("key 'weak' is unusable: ")


def test_each_key_of_one_issuer_verifies_its_own_tokens_from_a_warm_cache(idp: TestIssuer) -> None:
    """GIVEN an issuer publishing two RS256 keys
    WHEN tokens signed with each are verified in turn, twice, by one verifier
    THEN every one verifies with its own key (the built-key cache is keyed by kid), after one fetch."""
    second = rsa_signing_key("rsa-2", 5)
    idp.publish(second)
    verifier = _verifier(idp)

    subjects = [
        verifier.verify(idp.mint(key=k, sub=f"s{n}")).principal.identity
        for n, k in enumerate((idp.rsa, second, idp.rsa, second))
    ]

    assert subjects == ["s0", "s1", "s2", "s3"]
    assert idp.fetches == 1


def test_a_warm_cache_names_the_key_and_url_in_its_refusals(idp: TestIssuer) -> None:
    """GIVEN a warm cache for an issuer with two keys (RSA published for RS256, EC for ES256)
    WHEN a token names the RSA key but says ES256, and another token has no kid
    THEN the refusals' details name the key and the JWKS URL."""
    verifier = _verifier(idp)
    verifier.verify(idp.mint())

    mismatch = _refusal(lambda: verifier.verify(idp.mint(key="ec", kid="rsa-1")))
    no_kid = _refusal(lambda: verifier.verify(idp.mint(kid=None)))

    assert mismatch.detail == f"key 'rsa-1' of {idp.jwks_uri} is published for 'RS256', token says 'ES256'"
    assert no_kid.detail == f"token has no kid and the JWKS of {idp.jwks_uri} holds 2 keys"


def test_an_unknown_kid_within_the_cooldown_says_so(idp: TestIssuer, frozen: Any) -> None:
    """GIVEN a cache warmed 30 s ago (the cooldown)
    WHEN two tokens with an unknown kid arrive, the second within the cooldown of the first's refetch
    THEN the first refusal says the kid is not in the JWKS, the second that the refetch is cooling down."""
    verifier = _verifier(idp)
    verifier.verify(idp.mint())
    frozen.tick(30)
    first = _refusal(lambda: verifier.verify(idp.mint(kid="nope")))

    second = _refusal(lambda: verifier.verify(idp.mint(kid="nope")))

    assert first.detail == f"kid 'nope' is not in the JWKS of {idp.jwks_uri}"
    assert second.detail == f"kid 'nope' is not in the JWKS of {idp.jwks_uri} (refetch cooling down)"


@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [
        ("nbf", 0, None),
        ("nbf", MAX_EPOCH_S, "token-not-yet-valid"),
        ("nbf", MAX_EPOCH_S + 1, "invalid-claim"),
        ("nbf", -1, "invalid-claim"),
        ("nbf", 0.0, None),
        ("nbf", float("inf"), "malformed-token"),
    ],
    ids=["zero", "year-9999", "past-year-9999", "negative", "zero-float", "infinite"],
)
def test_time_claims_are_bounded_by_the_epoch_and_year_9999(
    idp: TestIssuer, claim: str, value: float, reason: str | None
) -> None:
    """GIVEN a token whose nbf is 0, the last second of 9999, one past it, negative, or not finite
    WHEN verified
    THEN 0 and the last second of 9999 are numbers the checks accept (and then judge), the others are refused."""
    token = idp.mint(**{claim: value})

    if reason is None:
        assert _verifier(idp).verify(token).principal.identity == idp.subject
    else:
        assert _refusal(lambda: _verifier(idp).verify(token)).reason == reason


# ---------------------------------------------------------------------------
# bot messages


@pytest.mark.parametrize(
    ("base", "email", "expected"),
    [
        ("https://www.googleapis.com/", BOT, f"https://www.googleapis.com/service_accounts/v1/metadata/jwk/{BOT}"),
        (
            "https://keys.example//",
            "a+b@p.iam.gserviceaccount.com",
            "https://keys.example/service_accounts/v1/metadata/jwk/a%2Bb@p.iam.gserviceaccount.com",
        ),
        ("http://127.0.0.1:9", "x/../y@p", "http://127.0.0.1:9/service_accounts/v1/metadata/jwk/x%2F..%2Fy@p"),
        ("http://127.0.0.1:9/keysX/", BOT, f"http://127.0.0.1:9/keysX/service_accounts/v1/metadata/jwk/{BOT}"),
    ],
    ids=["trailing-slash", "plus-and-double-slash", "path-in-email", "base-ending-in-a-letter"],
)
def test_the_bot_key_url_keeps_the_at_sign_and_quotes_the_rest(base: str, email: str, expected: str) -> None:
    """GIVEN a keys base URL (with trailing slashes) and a service account email
    WHEN the bot's JWKS URL is built
    THEN the base loses its trailing slashes and the email keeps '@' but has every other reserved character quoted."""
    url = bot_jwks_url(base, email)

    assert url == expected


BOT_DETAILS: list[tuple[str, Callable[[FakeServiceAccountKeys], str], str, str]] = [
    ("no-iss", lambda s: s.message(BOT, BOT_AUD, iss=DROP), "missing-claim", "claim 'iss' is required"),
    ("unknown-bot", lambda s: s.message(STRANGER, BOT_AUD), "unknown-bot", f"iss {STRANGER!r} is not a configured bot"),
    (
        "unknown-bot-long",
        lambda s: s.message(BOT, BOT_AUD, iss="i" * 300),
        "unknown-bot",
        f"iss {'i' * 200!r} is not a configured bot",
    ),
    (
        "unknown-bot-not-a-string",
        lambda s: s.message(BOT, BOT_AUD, iss=["x\n"]),
        "unknown-bot",
        "iss \"['x\\\\\\\\n']\" is not a configured bot",
    ),
    (
        "alg",
        lambda s: s.message(BOT, BOT_AUD, alg="RS384"),
        "disallowed-algorithm",
        f"alg 'RS384' is not allowed for bot {BOT} (allowed: RS256)",
    ),
    (
        "no-kid",
        lambda s: s.message(BOT, BOT_AUD, kid=None),
        "unknown-key",
        "signJwt tokens carry a kid; this one has none",
    ),
    ("no-sub", lambda s: s.message(BOT, BOT_AUD, sub=DROP), "missing-claim", "claim 'sub' is required"),
    (
        "other-sub",
        lambda s: s.message(BOT, BOT_AUD, sub="s" * 300),
        "subject-mismatch",
        f"sub {'s' * 200!r} is not the signing account {BOT!r}",
    ),
    ("no-aud", lambda s: s.message(BOT, BOT_AUD, aud=DROP), "missing-claim", "claim 'aud' is required"),
    (
        "wrong-aud",
        lambda s: s.message(BOT, "a" * 300),
        "wrong-audience",
        f"aud {'a' * 200!r} is not exactly {BOT_AUD!r}",
    ),
    (
        "expired",
        lambda s: s.message(BOT, BOT_AUD, iat=NOW - 300, exp=NOW),
        "token-expired",
        f"message expired at {NOW} (now {NOW})",
    ),
    (
        "iat-future",
        lambda s: s.message(BOT, BOT_AUD, iat=NOW + 31, exp=NOW + 300),
        "issued-in-future",
        f"message issued in the future: iat {NOW + 31} (now {NOW})",
    ),
    (
        "nbf-future",
        lambda s: s.message(BOT, BOT_AUD, nbf=NOW + 31),
        "token-not-yet-valid",
        f"message not valid before {NOW + 31} (now {NOW})",
    ),
    (
        "exp-equals-iat",
        lambda s: s.message(BOT, BOT_AUD, iat=NOW + 10, exp=NOW + 10),
        "invalid-claim",
        f"message exp {NOW + 10} is not after iat {NOW + 10}",
    ),
    (
        "lifetime",
        lambda s: s.message(BOT, BOT_AUD, iat=NOW - 10, exp=NOW + 600),
        "token-lifetime-too-long",
        "message lifetime 610s exceeds 600s",
    ),
    ("no-jti", lambda s: s.message(BOT, BOT_AUD, jti=DROP), "missing-claim", "claim 'jti' is required"),
    ("empty-jti", lambda s: s.message(BOT, BOT_AUD, jti=""), "invalid-claim", "claim 'jti' must be a non-empty string"),
]


@pytest.mark.parametrize(("name", "build", "reason", "detail"), BOT_DETAILS, ids=[c[0] for c in BOT_DETAILS])
def test_a_refused_bot_message_says_why_in_the_log_detail(
    sa: FakeServiceAccountKeys, name: str, build: Callable[[FakeServiceAccountKeys], str], reason: str, detail: str
) -> None:
    """GIVEN a bot message broken in one way
    WHEN verified
    THEN the refusal has its reason and its log detail is exactly what went wrong."""
    token = build(sa)

    exc = _refusal(lambda: _bots(sa).verify(token))

    assert exc.reason == reason
    assert exc.detail == detail


@pytest.mark.parametrize(
    ("nbf", "accepted"),
    [(NOW + 29, True), (NOW + 30, True), (NOW + 31, False)],
    ids=["inside-skew", "at-skew", "past-skew"],
)
def test_a_bot_message_nbf_is_allowed_up_to_the_clock_skew(
    sa: FakeServiceAccountKeys, nbf: int, accepted: bool
) -> None:
    """GIVEN a 30 s clock skew and a bot message with ``nbf`` just before, at and just after now + 30 s
    WHEN verified
    THEN it is accepted up to the skew, refused as token-not-yet-valid after it."""
    token = sa.message(BOT, BOT_AUD, nbf=nbf)
    bots = _bots(sa)

    if accepted:
        bot, claims = bots.verify(token)
        assert (bot.service_account, claims["nbf"]) == (BOT, nbf)
    else:
        assert _refusal(lambda: bots.verify(token)).reason == "token-not-yet-valid"


def test_a_bot_clock_skew_of_zero_refuses_any_future_nbf(sa: FakeServiceAccountKeys) -> None:
    """GIVEN a bot verifier with no clock skew allowed
    WHEN a message with ``nbf`` one second ahead is verified
    THEN it is refused as token-not-yet-valid."""
    exc = _refusal(lambda: _bots(sa, clock_skew_s=0).verify(sa.message(BOT, BOT_AUD, nbf=NOW + 1)))

    assert exc.reason == "token-not-yet-valid"


def test_a_bot_key_published_for_another_algorithm_is_refused(sa: FakeServiceAccountKeys) -> None:
    """GIVEN the bot account's only key published for RS384, and a message signed RS256 with it
    WHEN verified
    THEN it is refused as disallowed-algorithm: the token's algorithm must fit the published key."""
    key = rsa_signing_key("0" * 40, 3100, alg="RS384")
    sa.keys[BOT] = [key]
    token = sa.message(BOT, BOT_AUD, key=key, alg="RS256")

    exc = _refusal(lambda: _bots(sa).verify(token))

    assert exc.reason == "disallowed-algorithm"
    assert exc.detail is not None and exc.detail.startswith(f"key {'0' * 40!r} of ")
    assert "is published for 'RS384', token says 'RS256'" in exc.detail


def test_bot_messages_are_verified_with_the_configured_key_cache_timings(
    sa: FakeServiceAccountKeys, frozen: Any
) -> None:
    """GIVEN a bot verifier whose keys live 60 s with a 5 s refetch cooldown
    WHEN a message is verified, then again after 59 s, then after 61 s
    THEN the keys were fetched once within the TTL and again after it."""
    bots = _bots(sa, jwks_ttl_s=60, jwks_cooldown_s=5)

    bots.verify(sa.message(BOT, BOT_AUD))
    frozen.tick(59)
    bots.verify(sa.message(BOT, BOT_AUD))
    within = sa.fetches(BOT)
    frozen.tick(2)
    bots.verify(sa.message(BOT, BOT_AUD))

    assert (within, sa.fetches(BOT)) == (1, 2)


def test_an_unsigned_payload_segment_is_never_trusted(idp: TestIssuer) -> None:
    """GIVEN a genuine token whose payload segment is replaced by a re-encoded copy naming another subject
    WHEN verified
    THEN the signature check refuses it."""
    header, _payload, signature = _segments(idp.mint(sub="alice"))
    forged = b64url(json.dumps(idp.claims(sub="admin")))

    exc = _refusal(lambda: _verifier(idp).verify(f"{header}.{forged}.{signature}"))

    assert exc.reason == "invalid-signature"


def test_jwks_server_fixture_is_local(idp: TestIssuer) -> None:
    """GIVEN the test issuer
    WHEN its JWKS URL is read
    THEN it is a 127.0.0.1 URL (no test talks to the internet)."""
    assert idp.jwks_uri.startswith("http://127.0.0.1:")
    assert isinstance(idp.server, JwksServer)
    assert cast(Any, idp).fetches == 0


# ---------------------------------------------------------------------------
# the JWKS fetch: a body read in several chunks, and what a refused fetch says


def test_a_jwks_spanning_several_read_chunks_is_read_whole(
    idp: TestIssuer, keys_doc: tuple[str, dict[str, Any]]
) -> None:
    """GIVEN a JWKS of about 200 KiB (many keys, the wanted one last), under the 512 KiB cap
    WHEN its last key is asked for
    THEN it is found: the body is the concatenation of every 64 KiB chunk, not the last one."""
    url, doc = keys_doc
    doc["keys"] = [{**_bare(idp.rsa, f"filler-{i:04d}"), "alg": "RS256"} for i in range(450)]
    doc["keys"].append({**idp.rsa.public_jwk(), "kid": "wanted"})

    key = JwksCache(timeout_s=2).key(url, "wanted", ttl_s=60, cooldown_s=30, algorithm="RS256")

    assert key.key_id == "wanted"


def test_a_jwks_above_the_cap_is_refused_and_says_so(keys_doc: tuple[str, dict[str, Any]]) -> None:
    """GIVEN a JWKS body above MAX_JWKS_BYTES
    WHEN a key is asked for
    THEN it is refused as jwks-unavailable, and the detail names the cap."""
    url, doc = keys_doc
    doc["keys"] = [{"kty": "oct", "k": "x" * (MAX_JWKS_BYTES + 1)}]

    exc = _key_refusal(url, "any", "RS256")

    assert isinstance(exc, JwksUnavailableError)
    assert exc.detail == f"JWKS {url} unavailable: GET {url}: response above {MAX_JWKS_BYTES} bytes"


def test_a_jwks_without_keys_says_so(keys_doc: tuple[str, dict[str, Any]]) -> None:
    """GIVEN a JWKS endpoint answering a JSON object without a keys member
    WHEN a key is asked for
    THEN it is refused as jwks-unavailable, and the detail says it is not a JWKS."""
    url, doc = keys_doc
    del doc["keys"]

    exc = _key_refusal(url, "any", "RS256")

    assert isinstance(exc, JwksUnavailableError)
    assert exc.detail == f"JWKS {url} unavailable: GET {url}: not a JWKS (no 'keys' list)"


def test_an_unreachable_jwks_names_the_connection_error() -> None:
    """GIVEN a JWKS URL where nothing listens
    WHEN a key is asked for
    THEN it is refused as jwks-unavailable, naming the URL and the requests exception type."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/jwks"

    exc = _key_refusal(url, "any", "RS256")

    assert isinstance(exc, JwksUnavailableError)
    assert exc.detail is not None and exc.detail.startswith(f"JWKS {url} unavailable: GET {url}: ConnectionError: ")


def test_a_published_key_without_kid_serves_a_token_without_kid(
    idp: TestIssuer, keys_doc: tuple[str, dict[str, Any]]
) -> None:
    """GIVEN a JWKS whose one key has no kid member
    WHEN a token without kid asks for it
    THEN that key is used: a key without kid is usable (only a kid that is not a string is not)."""
    url, doc = keys_doc
    doc["keys"] = [{k: v for k, v in idp.rsa.public_jwk().items() if k != "kid"}]

    key = JwksCache(timeout_s=2).key(url, None, ttl_s=60, cooldown_s=30, algorithm="RS256")

    assert key.algorithm_name == "RS256"


def test_a_published_key_whose_kid_is_not_a_string_is_dropped(
    idp: TestIssuer, keys_doc: tuple[str, dict[str, Any]]
) -> None:
    """GIVEN a JWKS whose one key has kid 123 (a number)
    WHEN a token without kid asks for the only key
    THEN it is refused as unknown-key: that key was dropped, so the set holds none."""
    url, doc = keys_doc
    doc["keys"] = [{**idp.rsa.public_jwk(), "kid": 123}]

    exc = _key_refusal(url, None, "RS256")

    assert exc.reason == "unknown-key"
