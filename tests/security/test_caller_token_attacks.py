"""Caller-token attacks through the real HTTP function (issue 9, part 1).

GIVEN the HTTP function (functions-framework test client on ``main.vend_http``)
wired to a pinned test issuer with a live JWKS endpoint, the IAM stand-in and
a SQLite store, and an attacker's own issuer with its own live JWKS endpoint,
WHEN a forged, tampered, replayed or malformed caller token is presented,
THEN the answer is 401 UNAUTHENTICATED with the expected stable reason and
the generic message, and NOTHING changed: the store holds exactly the
documents it held before (no issuance record, no replay record), the IAM
stand-in was not called and minted nothing, and the attacker's JWKS was
never fetched.

Near-misses of the entitlement's ``sub`` (a prefix, a suffix, another case,
Unicode look-alikes, invisible characters, near-misses of a pattern) are
different: the token is genuine and valid, so authentication succeeds and
the *policy* refuses, 403 PERMISSION_DENIED ``service-account-not-allowed``,
again with no state change. A newline or other control character injected
into ``sub`` never reaches the policy: the verifier refuses such a subject
(401 ``invalid-claim``). Both outcomes are asserted exactly below.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from freezegun import freeze_time

from tests.support.app import CI_SUBJECT, CLOUD, DEMO_SA, PROD_SA, ServiceHarness
from tests.support.audit import dump_store
from tests.support.oidc import (
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

BODY = {"service_account": DEMO_SA, "scopes": [CLOUD], "lifetime": 600}
GENERIC = AuthenticationError.GENERIC


@pytest.fixture(scope="module")
def evil() -> Iterator[TestIssuer]:
    """The attacker's issuer: other keys, the same kids, a live JWKS endpoint that must never be fetched."""
    with TestIssuer(issuer="https://evil.example", audience="https://vending.test", name="evil", key_set=7) as issuer:
        yield issuer


@pytest.fixture(autouse=True)
def _evil_fetches_reset(evil: TestIssuer) -> Iterator[None]:
    evil.server.counts.clear()
    yield


# ---------------------------------------------------------------------------
# Helpers


def _sig(token: str) -> bytes:
    return b64url_decode(token.rsplit(".", 1)[1])


def _with_sig(token: str, signature: bytes | str) -> str:
    seg = signature if isinstance(signature, str) else b64url(signature)
    return token.rsplit(".", 1)[0] + "." + seg


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _now() -> int:
    return int(clock.epoch())


def snapshot(h: ServiceHarness) -> dict[str, Any]:
    return dump_store(h.store)


def send(h: ServiceHarness, authorization: str | None, path: str = "/v1/access-tokens", body: Any = BODY) -> Any:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return h.client.post(path, data=json.dumps(body), headers={**headers, "Content-Type": "application/json"})


def error_of(resp: Any) -> dict[str, Any]:
    body = resp.get_json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "status", "reason", "message", "request_id"}, err
    assert err["code"] == resp.status_code
    return err


def assert_unchanged(h: ServiceHarness, before: dict[str, Any], evil: TestIssuer | None = None) -> None:
    assert snapshot(h) == before, "the store changed"
    assert h.standin.minted == [] and sum(h.standin.calls.values()) == 0, "IAM was called"
    if evil is not None:
        assert evil.fetches == 0, "the attacker's JWKS was fetched"


def assert_unauthenticated(
    h: ServiceHarness,
    resp: Any,
    reason: str,
    before: dict[str, Any],
    evil: TestIssuer | None = None,
    token: str | None = None,
) -> None:
    err = error_of(resp)
    assert (resp.status_code, err["status"], err["reason"]) == (401, "UNAUTHENTICATED", reason), err
    assert err["message"] == GENERIC
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    text = resp.get_data(as_text=True)
    assert "Traceback" not in text
    if token and len(token) > 40:
        assert token[-40:] not in text, "the token is echoed back"
    assert_unchanged(h, before, evil)


# ---------------------------------------------------------------------------
# The catalogue: (id, build(harness, trusted issuer, evil) -> Authorization header, reason)

Build = Callable[[ServiceHarness, TestIssuer, TestIssuer], str | None]


@dataclass(frozen=True)
class Attack:
    id: str
    build: Build
    reason: str
    setup: Callable[[TestIssuer], None] | None = None


def bearer(make: Callable[[TestIssuer, TestIssuer], str]) -> Build:
    return lambda h, i, e: "Bearer " + make(i, e)


def _publish_second_rsa(idp: TestIssuer) -> None:
    idp.publish(rsa_signing_key("rsa-2", 1))


def _truncate(token: str, keep: float) -> str:
    return token[: int(len(token) * keep)]


ATTACKS: list[Attack] = [
    # alg none and HMAC key confusion
    Attack("alg-none", bearer(lambda i, e: i.mint(alg="none", sub=CI_SUBJECT)), "disallowed-algorithm"),
    Attack("alg-None-capitalized", bearer(lambda i, e: i.mint(alg="None", sub=CI_SUBJECT)), "disallowed-algorithm"),
    Attack(
        "alg-none-keeping-a-real-signature",
        bearer(lambda i, e: _with_sig(tamper_header(i.mint(sub=CI_SUBJECT), alg="none"), _sig(i.mint(sub=CI_SUBJECT)))),
        "disallowed-algorithm",
    ),
    Attack(
        "hs256-signed-with-issuer-public-key-pem",
        bearer(lambda i, e: i.mint(alg="HS256", sub=CI_SUBJECT)),
        "disallowed-algorithm",
    ),
    Attack(
        "hs512-signed-with-issuer-public-key-pem",
        bearer(lambda i, e: i.mint(alg="HS512", sub=CI_SUBJECT)),
        "disallowed-algorithm",
    ),
    Attack(
        "hs256-signed-with-issuer-public-jwk-json",
        bearer(lambda i, e: i.mint(alg="HS256", sub=CI_SUBJECT, hs_secret=json.dumps(i.rsa.public_jwk()).encode())),
        "disallowed-algorithm",
    ),
    Attack(
        "hs256-signed-with-ec-public-key",
        bearer(lambda i, e: i.mint(key="ec", alg="HS256", sub=CI_SUBJECT)),
        "disallowed-algorithm",
    ),
    Attack(
        "rs512-not-listed-for-issuer", bearer(lambda i, e: i.mint(alg="RS512", sub=CI_SUBJECT)), "disallowed-algorithm"
    ),
    # valid signatures from keys the issuer never published
    Attack(
        "untrusted-issuer-copies-trusted-iss-and-kid",
        bearer(lambda i, e: e.mint(iss=i.issuer, aud=i.audience, sub=CI_SUBJECT)),
        "invalid-signature",
    ),
    Attack(
        "untrusted-issuer-copies-trusted-iss-own-kid",
        bearer(lambda i, e: e.mint(key="attacker", iss=i.issuer, aud=i.audience, sub=CI_SUBJECT)),
        "unknown-key",
    ),
    Attack(
        "untrusted-ec-key-with-trusted-kid",
        bearer(lambda i, e: i.mint(key=SigningKey("ec-1", "ES256", ec_key(5)), sub=CI_SUBJECT)),
        "invalid-signature",
    ),
    Attack("attacker-issuer-self-signed", bearer(lambda i, e: e.mint(sub=CI_SUBJECT)), "untrusted-issuer"),
    Attack(
        "jku-header-points-at-attacker-jwks",
        bearer(
            lambda i, e: e.mint(
                key="attacker", iss=i.issuer, aud=i.audience, sub=CI_SUBJECT, header={"jku": e.jwks_uri}
            )
        ),
        "unknown-key",
    ),
    Attack(
        "x5u-header-points-at-attacker-jwks",
        bearer(lambda i, e: e.mint(iss=i.issuer, aud=i.audience, sub=CI_SUBJECT, header={"x5u": e.jwks_uri})),
        "invalid-signature",
    ),
    Attack(
        "embedded-jwk-of-attacker-key",
        bearer(
            lambda i, e: i.mint(key="attacker", kid="rsa-1", sub=CI_SUBJECT, header={"jwk": i.attacker.public_jwk()})
        ),
        "invalid-signature",
    ),
    Attack("unknown-kid", bearer(lambda i, e: i.mint(kid="no-such-key", sub=CI_SUBJECT)), "unknown-key"),
    Attack("kid-not-a-string", bearer(lambda i, e: i.mint(kid=12, sub=CI_SUBJECT)), "malformed-token"),
    # time
    Attack(
        "expired", bearer(lambda i, e: i.mint(iat=_now() - 3600, exp=_now() - 600, sub=CI_SUBJECT)), "token-expired"
    ),
    Attack(
        "expired-just-past-leeway",
        bearer(lambda i, e: i.mint(iat=_now() - 600, exp=_now() - 31, sub=CI_SUBJECT)),
        "token-expired",
    ),
    Attack("nbf-in-the-future", bearer(lambda i, e: i.mint(nbf=_now() + 600, sub=CI_SUBJECT)), "token-not-yet-valid"),
    Attack(
        "iat-in-the-future",
        bearer(lambda i, e: i.mint(iat=_now() + 600, exp=_now() + 1200, sub=CI_SUBJECT)),
        "issued-in-future",
    ),
    Attack("missing-exp", bearer(lambda i, e: i.mint(drop=["exp"], sub=CI_SUBJECT)), "missing-claim"),
    Attack("missing-iat", bearer(lambda i, e: i.mint(drop=["iat"], sub=CI_SUBJECT)), "missing-claim"),
    Attack("exp-as-string", bearer(lambda i, e: i.mint(exp=str(_now() + 600), sub=CI_SUBJECT)), "invalid-claim"),
    Attack(
        "lifetime-above-issuer-maximum",
        bearer(lambda i, e: i.mint(iat=_now(), exp=_now() + 86401, sub=CI_SUBJECT)),
        "token-lifetime-too-long",
    ),
    # audience
    Attack(
        "wrong-audience",
        bearer(lambda i, e: i.mint(aud="https://other-service.example", sub=CI_SUBJECT)),
        "wrong-audience",
    ),
    Attack("missing-audience", bearer(lambda i, e: i.mint(drop=["aud"], sub=CI_SUBJECT)), "missing-claim"),
    Attack(
        "extra-audience",
        bearer(lambda i, e: i.mint(aud=[i.audience, "https://other.example"], sub=CI_SUBJECT)),
        "wrong-audience",
    ),
    Attack(
        "extra-audience-first",
        bearer(lambda i, e: i.mint(aud=["https://other.example", i.audience], sub=CI_SUBJECT)),
        "wrong-audience",
    ),
    Attack(
        "audience-trailing-slash", bearer(lambda i, e: i.mint(aud=i.audience + "/", sub=CI_SUBJECT)), "wrong-audience"
    ),
    Attack(
        "audience-cyrillic-look-alike",
        bearer(lambda i, e: i.mint(aud=i.audience.replace("e", "\u0435"), sub=CI_SUBJECT)),
        "wrong-audience",
    ),
    # issuer
    Attack("issuer-missing", bearer(lambda i, e: i.mint(drop=["iss"], sub=CI_SUBJECT)), "missing-claim"),
    Attack(
        "issuer-trailing-slash", bearer(lambda i, e: i.mint(iss=i.issuer + "/", sub=CI_SUBJECT)), "untrusted-issuer"
    ),
    Attack(
        "issuer-case-changed", bearer(lambda i, e: i.mint(iss=i.issuer.upper(), sub=CI_SUBJECT)), "untrusted-issuer"
    ),
    Attack(
        "issuer-cyrillic-look-alike",
        bearer(lambda i, e: i.mint(iss=i.issuer.replace("a", "\u0430"), sub=CI_SUBJECT)),
        "untrusted-issuer",
    ),
    # header tampering after signing
    Attack(
        "header-kid-swapped-to-other-rsa-key",
        bearer(lambda i, e: tamper_header(i.mint(sub=CI_SUBJECT), kid="rsa-2")),
        "invalid-signature",
        setup=_publish_second_rsa,
    ),
    Attack(
        "header-kid-swapped-to-ec-key",
        bearer(lambda i, e: tamper_header(i.mint(sub=CI_SUBJECT), kid="ec-1")),
        "disallowed-algorithm",
    ),
    Attack(
        "header-alg-swapped-to-hs256",
        bearer(lambda i, e: tamper_header(i.mint(sub=CI_SUBJECT), alg="HS256")),
        "disallowed-algorithm",
    ),
    Attack(
        "header-typ-changed",
        bearer(lambda i, e: tamper_header(i.mint(sub=CI_SUBJECT), typ="at+jwt")),
        "invalid-signature",
    ),
    Attack(
        "header-crit-extension",
        bearer(lambda i, e: i.mint(header={"crit": ["x"], "x": 1}, sub=CI_SUBJECT)),
        "unsupported-header",
    ),
    # payload tampering after signing
    Attack(
        "payload-sub-rewritten",
        bearer(lambda i, e: tamper_payload(i.mint(sub="repo:evil/app"), sub=CI_SUBJECT)),
        "invalid-signature",
    ),
    Attack(
        "payload-exp-extended",
        bearer(
            lambda i, e: tamper_payload(i.mint(iat=_now() - 3600, exp=_now() - 600, sub=CI_SUBJECT), exp=_now() + 3600)
        ),
        "invalid-signature",
    ),
    Attack(
        "payload-aud-rewritten",
        bearer(lambda i, e: tamper_payload(i.mint(aud="https://other.example", sub=CI_SUBJECT), aud=i.audience)),
        "invalid-signature",
    ),
    Attack("signature-stripped", bearer(lambda i, e: _with_sig(i.mint(sub=CI_SUBJECT), "")), "invalid-signature"),
    Attack(
        "signature-bit-flipped",
        bearer(lambda i, e: _with_sig(t := i.mint(sub=CI_SUBJECT), _flip(_sig(t), 17))),
        "invalid-signature",
    ),
    Attack(
        "signature-of-another-token",
        bearer(lambda i, e: _with_sig(i.mint(sub=CI_SUBJECT), _sig(i.mint(sub="repo:evil/app")))),
        "invalid-signature",
    ),
    # structure
    Attack("truncated-mid-payload", bearer(lambda i, e: _truncate(i.mint(sub=CI_SUBJECT), 0.4)), "malformed-token"),
    Attack(
        "truncated-signature",
        bearer(lambda i, e: _with_sig(t := i.mint(sub=CI_SUBJECT), _sig(t)[:-4])),
        "invalid-signature",
    ),
    Attack("two-segments", bearer(lambda i, e: ".".join(i.mint(sub=CI_SUBJECT).split(".")[:2])), "malformed-token"),
    Attack("empty-authorization-header", lambda h, i, e: "", "missing-token"),
    Attack("no-authorization-header", lambda h, i, e: None, "missing-token"),
    Attack("bearer-with-empty-token", lambda h, i, e: "Bearer ", "malformed-authorization"),
    Attack("basic-scheme", lambda h, i, e: "Basic " + b64url("user:pass"), "malformed-authorization"),
    Attack(
        "two-tokens",
        lambda h, i, e: f"Bearer {i.mint(sub=CI_SUBJECT)} {i.mint(sub=CI_SUBJECT)}",
        "malformed-authorization",
    ),
    Attack("oversized-1-mib-token", lambda h, i, e: "Bearer " + "a" * (1024 * 1024), "token-too-large"),
    Attack(
        "oversized-1-mib-valid-signature",
        bearer(lambda i, e: i.mint(pad="x" * (1024 * 1024), sub=CI_SUBJECT)),
        "token-too-large",
    ),
    Attack(
        "non-utf8-payload-bytes",
        bearer(lambda i, e: i.mint(raw_payload=json.dumps(i.claims(sub=CI_SUBJECT)).encode()[:-1] + b',"x":"\xff"}')),
        "malformed-token",
    ),
    Attack(
        "non-utf8-header-bytes",
        bearer(lambda i, e: i.mint(raw_header=b'{"alg":"RS256","kid":"rsa-1","x":"\xc3\x28"}', sub=CI_SUBJECT)),
        "malformed-token",
    ),
    Attack(
        "non-ascii-latin1-in-authorization",
        lambda h, i, e: "Bearer " + i.mint(sub=CI_SUBJECT)[:-3] + "\xe9\xff\xfe",
        "malformed-token",
    ),
    Attack(
        "payload-json-array",
        bearer(lambda i, e: i.mint(raw_payload=json.dumps([i.claims(sub=CI_SUBJECT)]))),
        "malformed-token",
    ),
    Attack(
        "duplicate-sub-claim",
        bearer(lambda i, e: i.mint(sub="repo:evil/app", duplicate={"sub": CI_SUBJECT})),
        "duplicate-claim",
    ),
    Attack(
        "duplicate-iss-claim",
        bearer(lambda i, e: i.mint(sub=CI_SUBJECT, duplicate={"iss": "https://evil.example"})),
        "duplicate-claim",
    ),
    Attack(
        "duplicate-alg-in-header",
        bearer(lambda i, e: i.mint(sub=CI_SUBJECT, header_duplicate={"alg": "none"})),
        "duplicate-header",
    ),
    # identity claims
    Attack("missing-sub", bearer(lambda i, e: i.mint(drop=["sub"])), "missing-claim"),
    Attack("sub-not-a-string", bearer(lambda i, e: i.mint(sub=[CI_SUBJECT])), "invalid-claim"),
    Attack("jti-not-a-string", bearer(lambda i, e: i.mint(sub=CI_SUBJECT, jti=12345)), "invalid-claim"),
]

# A newline or other control character injected into the subject: refused by the verifier (401), see docstring.
NEWLINE_INJECTIONS: list[tuple[str, str]] = [
    ("trailing-newline", CI_SUBJECT + "\n"),
    ("leading-newline", "\n" + CI_SUBJECT),
    ("crlf-header-injection", CI_SUBJECT + "\r\nX-Admin: true"),
    ("newline-then-other-subject", CI_SUBJECT + "\nrepo:evil/app:ref:refs/heads/main"),
    ("nul-byte", CI_SUBJECT + "\x00"),
    ("tab", CI_SUBJECT + "\t"),
    ("unicode-line-separator", CI_SUBJECT + "\u2028"),
    ("unicode-next-line-c1", CI_SUBJECT + "\x85"),
]


def test_the_catalogue_has_at_least_forty_distinct_attacks(suite_figures: Any) -> None:
    # GIVEN the catalogue / WHEN counted / THEN ids are distinct and the minimum is met
    ids = [a.id for a in ATTACKS] + [f"sub-{n}" for n, _ in NEWLINE_INJECTIONS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40
    suite_figures.add(
        f"caller-token attacks: {len(ATTACKS)} forged/malformed + {len(NEWLINE_INJECTIONS)} "
        f"newline injections (401), {len(NEAR_MISSES) + len(PATTERN_NEAR_MISSES)} near-misses (403), "
        f"{len(REPLAYS)} replays, 2 JWKS floods (1,000 and 200 unknown kids)"
    )


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack_is_refused_with_401_and_changes_nothing(
    attack: Attack, harness: ServiceHarness, evil: TestIssuer
) -> None:
    h = harness
    # GIVEN the service with an empty ledger and a forged caller token
    if attack.setup is not None:
        attack.setup(h.issuer)
    before = snapshot(h)
    header = attack.build(h, h.issuer, evil)

    # WHEN it asks for an access token
    resp = send(h, header)

    # THEN 401 with the expected reason, the generic message, and no state change at all
    assert_unauthenticated(h, resp, attack.reason, before, evil, token=header)


@pytest.mark.parametrize(("name", "subject"), NEWLINE_INJECTIONS, ids=[n for n, _ in NEWLINE_INJECTIONS])
def test_newline_injected_subject_is_refused_by_the_verifier(name: str, subject: str, harness: ServiceHarness) -> None:
    h = harness
    # GIVEN a genuine, validly signed token whose sub is the entitlement's with a control character injected
    before = snapshot(h)
    token = h.issuer.mint(sub=subject)

    # WHEN it is presented
    resp = send(h, f"Bearer {token}")

    # THEN the verifier refuses it (control characters never reach the policy): 401 invalid-claim, nothing changed
    assert_unauthenticated(h, resp, "invalid-claim", before, token=token)


# ---------------------------------------------------------------------------
# Near-misses of the entitlement: genuine tokens, refused by the policy (403)

NEAR_MISSES: list[tuple[str, str]] = [
    ("prefix-added", "x" + CI_SUBJECT),
    ("prefix-path-added", "evil/" + CI_SUBJECT),
    ("suffix-added", CI_SUBJECT + "-evil"),
    ("suffix-path-added", CI_SUBJECT + "/x"),
    ("truncated-by-one", CI_SUBJECT[:-1]),
    ("only-a-prefix-of-it", CI_SUBJECT.split(":ref:")[0]),
    ("upper-case", CI_SUBJECT.upper()),
    ("first-letter-capitalized", CI_SUBJECT[0].upper() + CI_SUBJECT[1:]),
    ("cyrillic-a-in-example", CI_SUBJECT.replace("example", "ex\u0430mple")),
    ("greek-omicron-in-repo", CI_SUBJECT.replace("repo", "rep\u03bf")),
    ("dotless-i-in-main", CI_SUBJECT.replace("main", "ma\u0131n")),
    ("fullwidth-r", "\uff52" + CI_SUBJECT[1:]),
    ("fullwidth-colon", CI_SUBJECT.replace(":", "\uff1a", 1)),
    ("division-slash", CI_SUBJECT.replace("/", "\u2215", 1)),
    ("zero-width-space-inside", CI_SUBJECT.replace("app", "a\u200bpp")),
    ("zero-width-joiner-suffix", CI_SUBJECT + "\u200d"),
    ("soft-hyphen-inside", CI_SUBJECT.replace("heads", "hea\u00adds")),
    ("combining-acute-accent", CI_SUBJECT + "\u0301"),
    ("right-to-left-override", "\u202e" + CI_SUBJECT),
    ("no-break-space-suffix", CI_SUBJECT + "\u00a0"),
    ("trailing-space", CI_SUBJECT + " "),
    ("leading-space", " " + CI_SUBJECT),
    ("other-branch", CI_SUBJECT.replace("main", "main2")),
    ("regex-metachar-dot-for-colon", CI_SUBJECT.replace(":", ".", 1)),
]

# prod-admin's principals are the anchored pattern [a-z]+@example\.com (tests/support/app.py)
PATTERN_NEAR_MISSES: list[tuple[str, str]] = [
    ("pattern-suffix-domain", "alice@example.com.evil.com"),
    ("pattern-suffix-char", "alice@example.comx"),
    ("pattern-prefix-digit", "1alice@example.com"),
    ("pattern-prefix-other-mail", "mallory@evil.com alice@example.com"),
    ("pattern-upper-case", "ALICE@example.com"),
    ("pattern-escaped-dot-as-any-char", "alice@examplexcom"),
    ("pattern-cyrillic-local-part", "\u0430lice@example.com"),
    ("pattern-fullwidth-at", "alice\uff20example.com"),
    ("pattern-empty-local-part", "@example.com"),
    ("pattern-second-address-after-comma", "alice@example.com,mallory@evil.com"),
]


@pytest.mark.parametrize(("name", "subject"), NEAR_MISSES, ids=[n for n, _ in NEAR_MISSES])
def test_near_miss_of_the_exact_subject_is_refused_by_policy(name: str, subject: str, harness: ServiceHarness) -> None:
    h = harness
    # GIVEN a genuine token whose sub almost equals the entitlement's exact subject
    before = snapshot(h)
    token = h.issuer.mint(sub=subject)

    # WHEN it asks for the entitlement's service account
    resp = send(h, f"Bearer {token}")

    # THEN authentication succeeds but the policy matches nothing: 403 service-account-not-allowed, no change
    err = error_of(resp)
    assert (resp.status_code, err["status"], err["reason"]) == (
        403,
        "PERMISSION_DENIED",
        "service-account-not-allowed",
    ), err
    assert_unchanged(h, before)


@pytest.mark.parametrize(("name", "subject"), PATTERN_NEAR_MISSES, ids=[n for n, _ in PATTERN_NEAR_MISSES])
def test_near_miss_of_a_pattern_is_refused_by_policy(name: str, subject: str, harness: ServiceHarness) -> None:
    h = harness
    # GIVEN a genuine token whose sub almost matches prod-admin's anchored pattern
    before = snapshot(h)
    token = h.issuer.mint(sub=subject)

    # WHEN it asks for prod-admin's service account
    resp = send(h, f"Bearer {token}", body={"service_account": PROD_SA, "scopes": [CLOUD]})

    # THEN no entitlement names it at all (not even the one that needs approval)
    err = error_of(resp)
    assert (resp.status_code, err["reason"]) == (403, "service-account-not-allowed"), err
    assert_unchanged(h, before)


def test_pattern_control_a_full_match_reaches_the_approval_rule(harness: ServiceHarness) -> None:
    # GIVEN a sub that fully matches prod-admin's pattern (the control for the near-misses above)
    before = snapshot(harness)
    resp = send(
        harness,
        f"Bearer {harness.issuer.mint(sub='alice@example.com')}",
        body={"service_account": PROD_SA, "scopes": [CLOUD]},
    )
    # THEN the entitlement is found and its approval rule answers (a different reason)
    assert (resp.status_code, error_of(resp)["reason"]) == (403, "approval-required")
    assert_unchanged(harness, before)


# ---------------------------------------------------------------------------
# Replayed jti


def _replay_same_token(h: ServiceHarness) -> tuple[str, str]:
    token = h.issuer.mint(sub=CI_SUBJECT)
    return token, token


def _replay_resigned_same_jti(h: ServiceHarness) -> tuple[str, str]:
    jti = "jti-reused-" + b64url(b"x" * 12)
    return h.issuer.mint(sub=CI_SUBJECT, jti=jti), h.issuer.mint(sub=CI_SUBJECT, jti=jti, exp=_now() + 500)


def _replay_other_endpoint(h: ServiceHarness) -> tuple[str, str]:
    token = h.issuer.mint(sub=CI_SUBJECT)
    return token, token


REPLAYS: dict[str, tuple[Callable[[ServiceHarness], tuple[str, str]], str]] = {
    "same-token-again": (_replay_same_token, "/v1/access-tokens"),
    "re-signed-token-same-jti": (_replay_resigned_same_jti, "/v1/access-tokens"),
    "same-token-on-another-credential-endpoint": (_replay_other_endpoint, "/v1/signed-blobs"),
}


@pytest.mark.parametrize("case", list(REPLAYS))
def test_replayed_jti_is_refused_and_changes_nothing_more(case: str, harness: ServiceHarness) -> None:
    h = harness
    make, second_path = REPLAYS[case]
    first_token, second_token = make(h)
    # GIVEN a token already used for one credential
    first = send(h, f"Bearer {first_token}")
    assert first.status_code == 200, first.get_json()
    before = snapshot(h)
    minted = list(h.standin.minted)
    calls = h.standin.calls

    # WHEN the same jti is presented again
    body = (
        BODY
        if second_path == "/v1/access-tokens"
        else {"service_account": DEMO_SA, "payload": base64.b64encode(b"hello").decode()}
    )
    resp = send(h, f"Bearer {second_token}", path=second_path, body=body)

    # THEN 401 token-replayed and nothing more was recorded or minted
    err = error_of(resp)
    assert (resp.status_code, err["reason"], err["message"]) == (401, "token-replayed", GENERIC), err
    assert snapshot(h) == before
    assert h.standin.minted == minted and h.standin.calls == calls


def test_concurrent_replays_of_one_token_mint_once(harness: ServiceHarness) -> None:
    h = harness
    # GIVEN one token presented by 12 callers at once
    token = h.issuer.mint(sub=CI_SUBJECT)
    barrier = threading.Barrier(12)
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        resp = send(h, f"Bearer {token}")
        with lock:
            results.append((resp.status_code, (resp.get_json().get("error") or {}).get("reason")))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    # THEN exactly one credential; every other answer is 401 token-replayed
    assert sorted(results) == [(200, None)] + [(401, "token-replayed")] * 11, results
    assert len(h.standin.minted) == 1
    assert len(snapshot(h)["issuances"]) == 1


# ---------------------------------------------------------------------------
# Unknown-kid floods: bounded JWKS fetches


def test_flood_of_1000_unknown_kids_is_bounded_to_one_fetch_per_cooldown(
    harness: ServiceHarness, suite_figures: Any
) -> None:
    h = harness
    cooldown = h.policy.issuers[0].jwks_cooldown_seconds
    with freeze_time("2026-11-28T12:00:00Z") as frozen:
        # GIVEN 1,000 validly shaped tokens, each with a different unknown kid
        base = h.issuer.mint(sub=CI_SUBJECT)
        flood = [tamper_header(base, kid=f"flood-{n:04d}") for n in range(1000)]
        before = snapshot(h)
        reasons: list[str] = []

        # WHEN they arrive over three cooldown windows
        for n, token in enumerate(flood):
            if n in (400, 800):
                frozen.tick(cooldown)
            resp = send(h, f"Bearer {token}")
            reasons.append(f"{resp.status_code} {error_of(resp)['reason']}")

    # THEN every one is 401 unknown-key, and the JWKS was fetched at most once per window
    assert set(reasons) == {"401 unknown-key"} and len(reasons) == 1000
    assert 1 <= h.issuer.fetches <= 3, h.issuer.fetches
    assert_unchanged(h, before)
    suite_figures.add(f"unknown-kid flood: 1000 requests over 3 cooldown windows -> {h.issuer.fetches} JWKS fetches")


def test_concurrent_flood_of_unknown_kids_shares_one_fetch(harness: ServiceHarness) -> None:
    h = harness
    # GIVEN a warm key cache past its cooldown and a slow JWKS endpoint
    with freeze_time("2026-11-28T12:00:00Z") as frozen:
        assert send(h, f"Bearer {h.issuer.mint(sub=CI_SUBJECT)}").status_code == 200
        frozen.tick(h.policy.issuers[0].jwks_cooldown_seconds + 1)
        fetched = h.issuer.fetches
        h.issuer.delay_s = 0.2
        base = h.issuer.mint(sub=CI_SUBJECT)
        tokens = [tamper_header(base, kid=f"burst-{n}") for n in range(200)]
        barrier = threading.Barrier(len(tokens))
        reasons: list[str] = []
        lock = threading.Lock()

        def one(token: str) -> None:
            barrier.wait()
            resp = send(h, f"Bearer {token}")
            with lock:
                reasons.append(f"{resp.status_code} {error_of(resp)['reason']}")

        # WHEN 200 requests with unknown kids arrive at once
        threads = [threading.Thread(target=one, args=(t,)) for t in tokens]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

    # THEN all are 401 unknown-key and they shared a single extra fetch
    assert reasons.count("401 unknown-key") == 200, set(reasons)
    assert h.issuer.fetches == fetched + 1
    assert len(h.standin.minted) == 1


# ---------------------------------------------------------------------------
# Every authenticated endpoint refuses the same way

ENDPOINTS = [
    ("POST", "/v1/access-tokens"),
    ("POST", "/v1/id-tokens"),
    ("POST", "/v1/signed-jwts"),
    ("POST", "/v1/signed-blobs"),
    ("POST", "/v1/requests"),
    ("GET", "/v1/requests/" + "a" * 32),
    ("POST", "/v1/requests/" + "a" * 32 + ":approve"),
    ("POST", "/v1/requests/" + "a" * 32 + ":withdraw"),
    ("GET", "/v1/issuances"),
    ("GET", "/v1/issuances/" + "a" * 32),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=[f"{m} {p[:24]}" for m, p in ENDPOINTS])
def test_unsigned_token_is_refused_on_every_endpoint(
    method: str, path: str, harness: ServiceHarness, evil: TestIssuer
) -> None:
    h = harness
    before = snapshot(h)
    token = h.issuer.mint(alg="none", sub="alice@example.com")
    resp = h.client.open(
        path,
        method=method,
        data=json.dumps({}) if method == "POST" else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert_unauthenticated(h, resp, "disallowed-algorithm", before, evil, token=token)
