"""Unit tests for ``vending.identity`` (and the local ``DevIssuer``).

Happy paths, the JWKS cache (TTL, cooldown, single flight, failures), replay
keys, bot message verification. Time is frozen with freezegun and moved
just before, at and just after each boundary.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from freezegun import freeze_time

from tests.support.oidc import (
    DROP,
    FakeServiceAccountKeys,
    JwksServer,
    TestIssuer,
    tamper_payload,
)
from vending.config import Bot
from vending.errors import AuthenticationError
from vending.identity import (
    BotVerifier,
    JwksCache,
    Principal,
    VerifiedToken,
    Verifier,
    bot_jwks_url,
    sha256hex,
)
from vending.local.issuer import DevIssuer, rsa_thumbprint

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
NOW = int(T0.timestamp())


@pytest.fixture
def frozen() -> Iterator[Any]:
    with freeze_time(T0) as frozen_time:
        yield frozen_time


@pytest.fixture
def idp(frozen: Any) -> Iterator[TestIssuer]:
    with TestIssuer() as issuer:
        yield issuer


@pytest.fixture
def jwks() -> JwksCache:
    return JwksCache(timeout_s=2)


def _verifier(idp: TestIssuer, jwks: JwksCache, **config: Any) -> Verifier:
    return Verifier([idp.issuer_config(**config)], jwks=jwks)


def _reason(call: Callable[[], Any]) -> str:
    with pytest.raises(AuthenticationError) as caught:
        call()
    return caught.value.reason


def _run_concurrently(n: int, target: Callable[[], Any]) -> tuple[list[Any], list[AuthenticationError]]:
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[AuthenticationError] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        try:
            value = target()
        except AuthenticationError as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results, errors


# ---------------------------------------------------------------------------
# Happy paths


def test_rs256_token_yields_principal_replay_key_and_expiry(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN a pinned issuer and a genuine RS256 token
    token = idp.mint(sub="alice", jti="jti-1", groups=["eng"])

    # WHEN verified
    result = _verifier(idp, jwks).verify(token)

    # THEN
    assert isinstance(result, VerifiedToken)
    assert result.principal == Principal(issuer="test", identity="alice", claims=result.principal.claims)
    assert result.principal.claims["groups"] == ["eng"]
    assert result.principal.claims["iss"] == idp.issuer
    assert result.replay_key == f"test:{hashlib.sha256(b'jti-1').hexdigest()}"
    assert result.expires_at == T0 + timedelta(seconds=600)
    assert result.expires_at.tzinfo is not None
    assert idp.fetches == 1


def test_es256_token_is_accepted(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN a genuine ES256 token
    token = idp.mint(key="ec", sub="bob")

    # WHEN
    result = _verifier(idp, jwks).verify(token)

    # THEN
    assert result.principal.identity == "bob"


def test_ps256_token_is_accepted_when_listed(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN an issuer listing PS256 and a key published for PS256
    from tests.support.oidc import rsa_signing_key

    idp.publish(rsa_signing_key("pss-1", 4, alg="PS256"))
    token = idp.mint(key=idp.published[-1])

    # WHEN
    result = _verifier(idp, jwks, algorithms=("RS256", "PS256")).verify(token)

    # THEN
    assert result.principal.identity == idp.subject


def test_identity_comes_from_the_configured_claim(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN an issuer whose identity claim is email
    token = idp.mint(email="carol@example.com")

    # WHEN
    result = _verifier(idp, jwks, identity_claim="email").verify(token)

    # THEN
    assert result.principal.identity == "carol@example.com"
    assert result.principal.claims["sub"] == idp.subject


def test_verify_authorization_accepts_bearer(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN an Authorization header
    header = f"Bearer {idp.mint()}"

    # WHEN
    result = _verifier(idp, jwks).verify_authorization(header)

    # THEN
    assert result.principal.issuer == "test"


def test_no_kid_uses_the_only_key_of_a_one_key_set(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN a JWKS with exactly one key and a token without kid
    idp.unpublish("ec-1")
    token = idp.mint(kid=None)

    # WHEN
    result = _verifier(idp, jwks).verify(token)

    # THEN
    assert result.principal.identity == idp.subject


def test_no_kid_is_rejected_when_the_set_has_several_keys(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN two published keys and a token without kid
    token = idp.mint(kid=None)

    # WHEN / THEN
    assert _reason(lambda: _verifier(idp, jwks).verify(token)) == "unknown-key"


def test_two_pinned_issuers_use_their_own_keys(frozen: Any, jwks: JwksCache) -> None:
    # GIVEN two issuers with the same kids but different keys
    with TestIssuer() as a, TestIssuer(issuer="https://other-issuer.example", name="other", key_set=1) as b:
        verifier = Verifier([a.issuer_config(), b.issuer_config()], jwks=jwks)

        # WHEN each issuer's token is verified, and a token of a signed with b's key
        ra = verifier.verify(a.mint())
        rb = verifier.verify(b.mint(aud=a.audience))
        forged = a.mint(key=b.rsa)

        # THEN principals name their issuer; the cross-signed token fails
        assert (ra.principal.issuer, rb.principal.issuer) == ("test", "other")
        assert _reason(lambda: verifier.verify(forged)) == "invalid-signature"
        assert (a.fetches, b.fetches) == (1, 1)


def test_same_issuer_twice_is_told_apart_by_audience(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN one issuer URL configured for two audiences
    first = idp.issuer_config(name="ci-deploy", audience="https://vending.example/deploy")
    second = idp.issuer_config(name="ci-read", audience="https://vending.example/read")
    verifier = Verifier([first, second], jwks=jwks)

    # WHEN tokens for each audience are verified
    deploy = verifier.verify(idp.mint(aud="https://vending.example/deploy"))
    read = verifier.verify(idp.mint(aud="https://vending.example/read"))

    # THEN each maps to its own configured issuer, and a third audience fails
    assert (deploy.principal.issuer, read.principal.issuer) == ("ci-deploy", "ci-read")
    assert _reason(lambda: verifier.verify(idp.mint(aud="https://vending.example/x"))) == "wrong-audience"


# ---------------------------------------------------------------------------
# Replay keys


def test_replay_key_hashes_jti(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN two different tokens with the same jti
    verifier = _verifier(idp, jwks)

    # WHEN both are verified
    a = verifier.verify(idp.mint(jti="same", sub="x"))
    b = verifier.verify(idp.mint(jti="same", sub="y"))

    # THEN they share a replay key derived from the jti, never the jti itself
    assert a.replay_key == b.replay_key == "test:" + sha256hex("same")
    assert "same" not in (a.replay_key or "").split(":", 1)[1]


def test_replay_key_without_jti_is_what_the_token_asserts(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN a token without jti
    token = idp.mint(jti=DROP)

    # WHEN
    result = _verifier(idp, jwks).verify(token)

    # THEN the key is the issuer's and a digest of what the token asserts, not of its encoding
    assert result.replay_key is not None and result.replay_key.startswith("test:claims:")
    assert hashlib.sha256(token.encode()).hexdigest() not in result.replay_key
    # AND the replay record must live as long as the token is accepted: exp + leeway
    assert result.replay_until == result.expires_at + timedelta(seconds=30)


def test_es256_token_reencoded_with_the_other_valid_signature_has_the_same_replay_key(
    idp: TestIssuer, jwks: JwksCache
) -> None:

    # GIVEN an ES256 token without jti, and the same token with s replaced by n - s (also valid)
    verifier = _verifier(idp, jwks, algorithms=("RS256", "ES256"))
    token = idp.mint(key="ec", jti=DROP)
    head, payload, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # the order of P-256
    twin_sig = base64.urlsafe_b64encode(r.to_bytes(32, "big") + (n - s).to_bytes(32, "big")).rstrip(b"=").decode()
    twin = f"{head}.{payload}.{twin_sig}"
    assert twin != token

    # WHEN both verify
    first, second = verifier.verify(token), verifier.verify(twin)

    # THEN they are one token to the replay guard
    assert first.replay_key == second.replay_key


def test_replay_key_is_none_when_protection_is_off(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN replay protection off
    verifier = _verifier(idp, jwks, replay_protection=False)

    # WHEN
    result = verifier.verify(idp.mint())

    # THEN
    assert result.replay_key is None


# ---------------------------------------------------------------------------
# JWKS cache: TTL and cooldown


def test_jwks_is_fetched_once_for_many_tokens(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN a verifier
    verifier = _verifier(idp, jwks)

    # WHEN 50 tokens (RSA and EC) are verified
    for n in range(50):
        verifier.verify(idp.mint(key="ec" if n % 2 else "rsa"))

    # THEN the JWKS was fetched once
    assert idp.fetches == 1
    assert jwks.fetches[idp.jwks_uri] == 1


@pytest.mark.parametrize(
    ("offset", "fetches"), [(599, 1), (600, 2), (601, 2)], ids=["just-before-ttl", "at-ttl", "just-after-ttl"]
)
def test_jwks_ttl_expiry(idp: TestIssuer, jwks: JwksCache, frozen: Any, offset: int, fetches: int) -> None:
    # GIVEN a cache warmed at T0 with a 600 s TTL
    verifier = _verifier(idp, jwks, jwks_ttl_seconds=600)
    verifier.verify(idp.mint())

    # WHEN a token is verified offset seconds later
    frozen.move_to(T0 + timedelta(seconds=offset))
    verifier.verify(idp.mint())

    # THEN the set was refetched only once the TTL had elapsed
    assert idp.fetches == fetches


def test_ttl_refetch_picks_up_removed_keys(idp: TestIssuer, jwks: JwksCache, frozen: Any) -> None:
    # GIVEN a warm cache, then the issuer stops publishing its EC key
    verifier = _verifier(idp, jwks, jwks_ttl_seconds=600)
    verifier.verify(idp.mint(key="ec"))
    idp.unpublish("ec-1")

    # WHEN the TTL passes
    frozen.move_to(T0 + timedelta(seconds=600))

    # THEN the EC key is no longer trusted
    assert _reason(lambda: verifier.verify(idp.mint(key="ec"))) == "unknown-key"


@pytest.mark.parametrize(
    ("offset", "fetches", "outcome"),
    [(29, 1, "unknown-key"), (30, 2, "ok"), (31, 2, "ok")],
    ids=["just-before-cooldown", "at-cooldown", "just-after-cooldown"],
)
def test_rotated_key_is_fetched_once_the_cooldown_allows(
    idp: TestIssuer, jwks: JwksCache, frozen: Any, offset: int, fetches: int, outcome: str
) -> None:
    # GIVEN a cache warmed at T0 (cooldown 30 s), then a key rotation
    verifier = _verifier(idp, jwks, jwks_cooldown_seconds=30)
    verifier.verify(idp.mint())
    idp.rotate()

    # WHEN a token signed with the new key arrives offset seconds later
    frozen.move_to(T0 + timedelta(seconds=offset))
    token = idp.mint()
    if outcome == "ok":
        result = verifier.verify(token)
        assert result.principal.identity == idp.subject
    else:
        assert _reason(lambda: verifier.verify(token)) == outcome

    # THEN the refetch happened only at or after the cooldown
    assert idp.fetches == fetches


@pytest.mark.parametrize(
    ("offset", "fetches"),
    [(29, 1), (30, 2), (31, 2)],
    ids=["just-before-cooldown", "at-cooldown", "just-after-cooldown"],
)
def test_unknown_kid_refetch_boundary(idp: TestIssuer, jwks: JwksCache, frozen: Any, offset: int, fetches: int) -> None:
    # GIVEN a cache warmed at T0 (cooldown 30 s)
    verifier = _verifier(idp, jwks, jwks_cooldown_seconds=30)
    verifier.verify(idp.mint())

    # WHEN an unknown kid arrives offset seconds later, twice
    frozen.move_to(T0 + timedelta(seconds=offset))
    for _ in range(2):
        assert _reason(lambda: verifier.verify(idp.mint(kid="nope"))) == "unknown-key"

    # THEN at most one refetch, and only from the cooldown on
    assert idp.fetches == fetches


def test_zero_cooldown_refetches_on_every_unknown_kid(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN cooldown 0
    verifier = _verifier(idp, jwks, jwks_cooldown_seconds=0)
    verifier.verify(idp.mint())

    # WHEN three unknown kids arrive sequentially
    for _ in range(3):
        _reason(lambda: verifier.verify(idp.mint(kid="nope")))

    # THEN each refetched
    assert idp.fetches == 4


def test_known_kid_never_refetches_within_ttl(idp: TestIssuer, jwks: JwksCache, frozen: Any) -> None:
    # GIVEN a warm cache
    verifier = _verifier(idp, jwks, jwks_ttl_seconds=3600, jwks_cooldown_seconds=0)
    verifier.verify(idp.mint())

    # WHEN the clock moves within the TTL
    for minutes in (1, 10, 59):
        frozen.move_to(T0 + timedelta(minutes=minutes))
        verifier.verify(idp.mint())

    # THEN no refetch
    assert idp.fetches == 1


# ---------------------------------------------------------------------------
# JWKS cache: single flight


def test_concurrent_cold_start_shares_one_fetch(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN an empty cache and a slow JWKS endpoint
    verifier = _verifier(idp, jwks)
    idp.delay_s = 0.2
    token = idp.mint()

    # WHEN 20 threads verify at once
    results, errors = _run_concurrently(20, lambda: verifier.verify(token))

    # THEN all succeed with one fetch
    assert errors == [] and len(results) == 20
    assert idp.fetches == 1


def test_concurrent_unknown_kid_shares_one_fetch(idp: TestIssuer, jwks: JwksCache, frozen: Any) -> None:
    # GIVEN a warm cache past its cooldown and a slow endpoint
    verifier = _verifier(idp, jwks)
    verifier.verify(idp.mint())
    frozen.tick(31)
    idp.delay_s = 0.2
    token = idp.mint(kid="unknown-kid")

    # WHEN 20 threads present the unknown kid at once
    results, errors = _run_concurrently(20, lambda: verifier.verify(token))

    # THEN all fail as unknown-key and exactly one extra fetch happened
    assert results == []
    assert [e.reason for e in errors] == ["unknown-key"] * 20
    assert idp.fetches == 2


def test_concurrent_rotated_kid_shares_one_fetch_and_succeeds(idp: TestIssuer, jwks: JwksCache, frozen: Any) -> None:
    # GIVEN a warm cache past its cooldown, a rotated key, a slow endpoint
    verifier = _verifier(idp, jwks)
    verifier.verify(idp.mint())
    frozen.tick(31)
    idp.rotate()
    idp.delay_s = 0.2
    token = idp.mint()

    # WHEN 20 threads present the new kid at once
    results, errors = _run_concurrently(20, lambda: verifier.verify(token))

    # THEN all succeed after one shared fetch
    assert errors == [] and len(results) == 20
    assert idp.fetches == 2


# ---------------------------------------------------------------------------
# JWKS cache: failures


@pytest.mark.parametrize("mode", ["500", "404", "bad-json", "not-jwks", "redirect", "reset"])
def test_fetch_failure_without_cache_fails_closed(idp: TestIssuer, jwks: JwksCache, mode: str) -> None:
    # GIVEN a JWKS endpoint that fails
    idp.fail = mode

    # WHEN a genuine token is verified
    with pytest.raises(AuthenticationError) as caught:
        _verifier(idp, jwks).verify(idp.mint())

    # THEN authentication fails closed after one attempt, as a retryable 503 (not the caller's fault)
    assert caught.value.reason == "jwks-unavailable"
    assert (caught.value.http_status, caught.value.retryable) == (503, True)
    assert idp.fetches == 1


def test_fetch_failure_when_nothing_listens(frozen: Any, jwks: JwksCache) -> None:
    # GIVEN a JWKS URI on a port nothing listens on
    with TestIssuer() as idp:
        config = idp.issuer_config()
        token = idp.mint()
    verifier = Verifier([config], jwks=jwks)

    # WHEN / THEN
    assert _reason(lambda: verifier.verify(token)) == "jwks-unavailable"


def test_fetch_timeout_fails_closed(idp: TestIssuer) -> None:
    # GIVEN a JWKS endpoint slower than the cache's timeout
    idp.delay_s = 0.5
    verifier = _verifier(idp, JwksCache(timeout_s=0.1))

    # WHEN / THEN
    assert _reason(lambda: verifier.verify(idp.mint())) == "jwks-unavailable"


def test_oversized_jwks_is_refused(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN a JWKS response above the size limit
    idp.server.routes[idp.path] = lambda: {**idp.jwks(), "padding": "x" * (600 * 1024)}

    # WHEN / THEN
    assert _reason(lambda: _verifier(idp, jwks).verify(idp.mint())) == "jwks-unavailable"


def test_failed_fetch_is_retried_only_after_the_cooldown(idp: TestIssuer, jwks: JwksCache, frozen: Any) -> None:
    # GIVEN a failed first fetch at T0 (cooldown 30 s)
    verifier = _verifier(idp, jwks, jwks_cooldown_seconds=30)
    idp.fail = "500"
    assert _reason(lambda: verifier.verify(idp.mint())) == "jwks-unavailable"
    idp.fail = None

    # WHEN retried 29 s later, then 30 s later
    frozen.move_to(T0 + timedelta(seconds=29))
    early = _reason(lambda: verifier.verify(idp.mint()))
    fetches_early = idp.fetches
    frozen.move_to(T0 + timedelta(seconds=30))
    result = verifier.verify(idp.mint())

    # THEN the early retry fails without fetching; at the cooldown it recovers
    assert (early, fetches_early) == ("jwks-unavailable", 1)
    assert result.principal.identity == idp.subject
    assert idp.fetches == 2


def test_cached_set_keeps_serving_while_the_endpoint_is_down(idp: TestIssuer, jwks: JwksCache, frozen: Any) -> None:
    # GIVEN a cache warmed at T0 (TTL 3600 s, cooldown 30 s), then the endpoint breaks
    verifier = _verifier(idp, jwks, jwks_ttl_seconds=3600, jwks_cooldown_seconds=30)
    verifier.verify(idp.mint())
    idp.fail = "500"

    # WHEN known and unknown kids arrive within the TTL
    frozen.move_to(T0 + timedelta(seconds=60))
    known = verifier.verify(idp.mint(key="ec"))
    unknown = _reason(lambda: verifier.verify(idp.mint(kid="new-kid")))
    known_again = verifier.verify(idp.mint())

    # THEN known kids still verify, the unknown one fails closed after one attempt
    assert known.principal.identity == known_again.principal.identity == idp.subject
    assert unknown == "jwks-unavailable"
    assert idp.fetches == 2

    # WHEN the TTL runs out while the endpoint is still down
    frozen.move_to(T0 + timedelta(seconds=3600))
    expired = _reason(lambda: verifier.verify(idp.mint()))

    # THEN the stale set is not used
    assert expired == "jwks-unavailable"
    assert idp.fetches == 3

    # WHEN the endpoint recovers and the cooldown passes
    idp.fail = None
    frozen.move_to(T0 + timedelta(seconds=3630))

    # THEN verification works again
    assert verifier.verify(idp.mint()).principal.identity == idp.subject
    assert idp.fetches == 4


# ---------------------------------------------------------------------------
# JWKS cache: key selection and algorithm binding


def _jwks_server(doc: dict[str, Any]) -> JwksServer:
    server = JwksServer().start()
    server.routes["/jwks"] = lambda: doc
    return server


def test_cache_refuses_an_algorithm_that_does_not_fit_the_key(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN the issuer's RSA and EC keys
    def key(kid: str, alg: str) -> str:
        return _reason(lambda: jwks.key(idp.jwks_uri, kid, ttl_s=60, cooldown_s=30, algorithm=alg))

    # WHEN asked to build them for foreign algorithms
    # THEN every mismatch is refused, HMAC above all
    assert key("rsa-1", "HS256") == "disallowed-algorithm"
    assert key("rsa-1", "ES256") == "disallowed-algorithm"
    assert key("rsa-1", "PS256") == "disallowed-algorithm"  # published with alg RS256
    assert key("ec-1", "RS256") == "disallowed-algorithm"
    assert key("ec-1", "ES384") == "disallowed-algorithm"
    assert jwks.key(idp.jwks_uri, "rsa-1", ttl_s=60, cooldown_s=30, algorithm="RS256").algorithm_name == "RS256"


def test_cache_ignores_symmetric_private_and_encryption_keys(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN a JWKS with an oct key, a private RSA key and an encryption key next to a good one
    good = idp.rsa.public_jwk()
    doc = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {**good, "kid": "private", "d": "AQAB"},
            {**good, "kid": "enc", "use": "enc"},
            "not-a-key",
            good,
        ]
    }
    server = _jwks_server(doc)
    try:
        url = server.base_url + "/jwks"

        # WHEN each is looked up
        def lookup(kid: str) -> str:
            return _reason(lambda: jwks.key(url, kid, ttl_s=60, cooldown_s=30))

        reasons = [lookup(kid) for kid in ("hmac", "private", "enc")]

        # THEN only the good key exists
        assert reasons == ["unknown-key"] * 3
        assert jwks.key(url, "rsa-1", ttl_s=60, cooldown_s=30).key_id == "rsa-1"
    finally:
        server.stop()


def test_jwks_without_alg_members_binds_the_token_algorithm(idp: TestIssuer, jwks: JwksCache) -> None:
    # GIVEN a JWKS whose keys carry no alg (common) and an issuer allowing RS256 and PS256
    from tests.support.oidc import SigningKey

    bare = {k: v for k, v in idp.rsa.public_jwk().items() if k != "alg"}
    idp.server.routes[idp.path] = lambda: {"keys": [bare]}
    verifier = _verifier(idp, jwks, algorithms=("RS256", "PS256"))

    # WHEN tokens are signed with each algorithm by the same key
    rs = verifier.verify(idp.mint())
    ps = verifier.verify(idp.mint(key=SigningKey("rsa-1", "PS256", idp.rsa.private)))

    # THEN both verify, each with the algorithm the allow-list admitted
    assert rs.principal.identity == ps.principal.identity == idp.subject


# ---------------------------------------------------------------------------
# Bot messages (signJwt)

BOT = "chatops-bot@proj.iam.gserviceaccount.com"
OTHER = "other-bot@proj.iam.gserviceaccount.com"
STRANGER = "stranger@proj.iam.gserviceaccount.com"
BOT_AUD = "https://vending.example/chatops"


@pytest.fixture
def sa(frozen: Any) -> Iterator[FakeServiceAccountKeys]:
    with FakeServiceAccountKeys() as keys:
        for email in (BOT, OTHER, STRANGER):
            keys.add(email)
        yield keys


def _bots(sa: FakeServiceAccountKeys, jwks: JwksCache | None = None) -> BotVerifier:
    return BotVerifier(
        [Bot(service_account=BOT), Bot(service_account=OTHER, actions=("approve",))],
        audience=BOT_AUD,
        keys_base_url=sa.keys_base_url,
        max_ttl_s=600,
        jwks=jwks,
    )


def test_bot_message_happy_path(sa: FakeServiceAccountKeys) -> None:
    # GIVEN a signJwt-style message from a configured bot
    token = sa.message(BOT, BOT_AUD, action="approve", request_id="r-1")

    # WHEN verified twice
    bots = _bots(sa)
    bot, claims = bots.verify(token)
    bots.verify(sa.message(BOT, BOT_AUD))

    # THEN the bot and its claims come back; its keys were fetched once from the metadata URL
    assert bot == Bot(service_account=BOT)
    assert claims["request_id"] == "r-1" and claims["iss"] == claims["sub"] == BOT
    assert sa.fetches(BOT) == 1


def test_each_bot_maps_to_its_own_config(sa: FakeServiceAccountKeys) -> None:
    # GIVEN a message from the second bot / WHEN verified / THEN its own Bot entry
    bot, _ = _bots(sa).verify(sa.message(OTHER, BOT_AUD))
    assert bot.actions == ("approve",)


def test_bot_and_caller_verification_share_one_jwks_cache(
    sa: FakeServiceAccountKeys, idp: TestIssuer, jwks: JwksCache
) -> None:
    # GIVEN one cache for both verifiers
    bots = _bots(sa, jwks)
    callers = _verifier(idp, jwks)

    # WHEN each verifies
    bots.verify(sa.message(BOT, BOT_AUD))
    callers.verify(idp.mint())

    # THEN the cache counted both URLs
    assert jwks.fetches[bot_jwks_url(sa.keys_base_url, BOT)] == 1
    assert jwks.fetches[idp.jwks_uri] == 1


def test_bot_jwks_url_is_the_service_account_metadata_endpoint() -> None:
    assert bot_jwks_url("https://www.googleapis.com", BOT) == (
        "https://www.googleapis.com/service_accounts/v1/metadata/jwk/" + BOT
    )


BOT_FAILURES: list[tuple[str, Callable[[FakeServiceAccountKeys], str], str]] = [
    ("unconfigured-bot", lambda s: s.message(STRANGER, BOT_AUD), "unknown-bot"),
    ("missing-iss", lambda s: s.message(BOT, BOT_AUD, iss=DROP), "missing-claim"),
    ("iss-not-a-string", lambda s: s.message(BOT, BOT_AUD, iss=[BOT]), "unknown-bot"),
    ("iss-case-changed", lambda s: s.message(BOT, BOT_AUD, iss=BOT.upper()), "unknown-bot"),
    ("signed-by-stranger-key-own-kid", lambda s: s.message(BOT, BOT_AUD, key=s.keys[STRANGER][0]), "unknown-key"),
    (
        "signed-by-other-bot-key-with-bot-kid",
        lambda s: s.message(BOT, BOT_AUD, key=s.keys[OTHER][0], kid=s.keys[BOT][0].kid),
        "invalid-signature",
    ),
    ("sub-is-another-account", lambda s: s.message(BOT, BOT_AUD, sub=OTHER), "subject-mismatch"),
    ("missing-sub", lambda s: s.message(BOT, BOT_AUD, sub=DROP), "missing-claim"),
    ("wrong-audience", lambda s: s.message(BOT, "https://other.example"), "wrong-audience"),
    ("audience-as-list", lambda s: s.message(BOT, [BOT_AUD]), "wrong-audience"),  # type: ignore[arg-type]
    ("missing-audience", lambda s: s.message(BOT, BOT_AUD, aud=DROP), "missing-claim"),
    ("expired-exactly-now", lambda s: s.message(BOT, BOT_AUD, iat=NOW - 300, exp=NOW), "token-expired"),
    ("expired-one-second-ago", lambda s: s.message(BOT, BOT_AUD, iat=NOW - 300, exp=NOW - 1), "token-expired"),
    ("missing-exp", lambda s: s.message(BOT, BOT_AUD, exp=DROP), "missing-claim"),
    ("exp-not-numeric", lambda s: s.message(BOT, BOT_AUD, exp="soon"), "invalid-claim"),
    ("missing-iat", lambda s: s.message(BOT, BOT_AUD, iat=DROP), "missing-claim"),
    ("iat-in-the-future", lambda s: s.message(BOT, BOT_AUD, iat=NOW + 31, exp=NOW + 300), "issued-in-future"),
    (
        "lifetime-one-second-too-long",
        lambda s: s.message(BOT, BOT_AUD, iat=NOW, exp=NOW + 601),
        "token-lifetime-too-long",
    ),
    ("missing-jti", lambda s: s.message(BOT, BOT_AUD, jti=DROP), "missing-claim"),
    ("empty-jti", lambda s: s.message(BOT, BOT_AUD, jti=""), "invalid-claim"),
    ("jti-not-a-string", lambda s: s.message(BOT, BOT_AUD, jti=12), "invalid-claim"),
    ("alg-rs384", lambda s: s.message(BOT, BOT_AUD, alg="RS384"), "disallowed-algorithm"),
    ("alg-ps256", lambda s: s.message(BOT, BOT_AUD, alg="PS256"), "disallowed-algorithm"),
    ("alg-none", lambda s: s.message(BOT, BOT_AUD, alg="none"), "disallowed-algorithm"),
    ("alg-hs256-public-key", lambda s: s.message(BOT, BOT_AUD, alg="HS256"), "disallowed-algorithm"),
    ("no-kid", lambda s: s.message(BOT, BOT_AUD, kid=None), "unknown-key"),
    ("unknown-kid", lambda s: s.message(BOT, BOT_AUD, kid="0" * 40), "unknown-key"),
    (
        "duplicate-action-claim",
        lambda s: s.message(BOT, BOT_AUD, action="deny", encode_options={"duplicate": {"action": "approve"}}),
        "duplicate-claim",
    ),
    (
        "action-flipped-after-signing",
        lambda s: tamper_payload(s.message(BOT, BOT_AUD, action="deny"), action="approve"),
        "invalid-signature",
    ),
    ("not-a-jwt", lambda s: "hello", "malformed-token"),
    ("empty", lambda s: "", "missing-token"),
]


@pytest.mark.parametrize(("name", "build", "reason"), BOT_FAILURES, ids=[c[0] for c in BOT_FAILURES])
def test_bot_message_is_rejected(
    sa: FakeServiceAccountKeys, name: str, build: Callable[[FakeServiceAccountKeys], str], reason: str
) -> None:
    # GIVEN a bad bot message
    token = build(sa)

    # WHEN verified
    with pytest.raises(AuthenticationError) as caught:
        _bots(sa).verify(token)

    # THEN the precise reason; the stranger's keys were never fetched
    assert caught.value.reason == reason, caught.value.detail
    assert sa.fetches(STRANGER) == 0


@pytest.mark.parametrize(
    "claims",
    [{"iat": NOW - 300, "exp": NOW + 1}, {"iat": NOW, "exp": NOW + 600}, {"iat": NOW + 30, "exp": NOW + 300}],
    ids=["exp-one-second-ahead", "lifetime-exactly-max", "iat-at-skew-limit"],
)
def test_bot_message_boundary_controls_are_accepted(sa: FakeServiceAccountKeys, claims: dict[str, Any]) -> None:
    # GIVEN a message right at an edge / WHEN verified / THEN accepted
    bot, _ = _bots(sa).verify(sa.message(BOT, BOT_AUD, **claims))
    assert bot.service_account == BOT


def test_bot_keys_endpoint_down_fails_closed(sa: FakeServiceAccountKeys) -> None:
    # GIVEN the key endpoint failing
    sa.server.fail = "500"

    # WHEN / THEN
    assert _reason(lambda: _bots(sa).verify(sa.message(BOT, BOT_AUD))) == "jwks-unavailable"


def test_bot_message_signed_with_a_rotated_key(sa: FakeServiceAccountKeys, frozen: Any) -> None:
    # GIVEN a warm cache, then the bot's account gets a second key
    bots = _bots(sa)
    bots.verify(sa.message(BOT, BOT_AUD))
    new = sa.add(BOT)

    # WHEN a message signed with the new key arrives after the cooldown
    frozen.tick(30)
    bot, _ = bots.verify(sa.message(BOT, BOT_AUD, key=new))

    # THEN it verifies after one refetch
    assert bot.service_account == BOT
    assert sa.fetches(BOT) == 2


# ---------------------------------------------------------------------------
# DevIssuer


def test_rfc7638_thumbprint_example() -> None:
    # GIVEN the RFC 7638 section 3.1 example key / WHEN / THEN its published thumbprint
    jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
            "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zg"
            "dAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
            "Cur-kEgU8awapJzKnqDKgw"
        ),
    }
    assert rsa_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_dev_issuer_creates_a_private_key_once(tmp_path: Path) -> None:
    # GIVEN an empty state dir
    state = tmp_path / "state"

    # WHEN two issuers load it
    first = DevIssuer(state, "http://127.0.0.1:8080/dev")
    second = DevIssuer(state, "http://127.0.0.1:8080/dev")

    # THEN one 0600 key file, the same kid, a thumbprint kid
    assert stat.S_IMODE(os.stat(first.key_path).st_mode) == 0o600
    assert first.kid == second.kid
    (jwk,) = first.jwks()["keys"]
    assert jwk["kid"] == rsa_thumbprint(jwk) and jwk["alg"] == "RS256" and "d" not in jwk
    assert [p.name for p in state.iterdir()] == [first.key_path.name]


def test_dev_issuer_tightens_loose_key_permissions(tmp_path: Path) -> None:
    # GIVEN a key file someone made world-readable
    DevIssuer(tmp_path, "http://127.0.0.1/dev")
    key_path = tmp_path / "dev-issuer-key.pem"
    os.chmod(key_path, 0o644)

    # WHEN loaded again / THEN back to 0600
    DevIssuer(tmp_path, "http://127.0.0.1/dev")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600


def test_dev_issuer_tokens_verify(tmp_path: Path, frozen: Any, jwks: JwksCache) -> None:
    # GIVEN a dev issuer whose JWKS is served over HTTP, pinned as a development issuer
    with JwksServer() as server:
        dev = DevIssuer(tmp_path, "http://127.0.0.1/dev")
        server.routes["/dev/jwks"] = dev.jwks
        from vending.config import Issuer

        config = Issuer(
            name="dev",
            issuer=dev.issuer_url,
            jwks_uri=server.base_url + "/dev/jwks",
            audience="vending-local",
            development=True,
        )

        # WHEN a minted token is verified
        token = dev.mint("dev-user", "vending-local", ttl_s=300, extra_claims={"email": "dev@example.com"})
        result = Verifier([config], jwks=jwks).verify(token)

    # THEN every standard claim is there
    claims = result.principal.claims
    assert result.principal.identity == "dev-user"
    assert (claims["iss"], claims["aud"], claims["email"]) == (dev.issuer_url, "vending-local", "dev@example.com")
    assert claims["iat"] == claims["nbf"] == NOW and claims["exp"] == NOW + 300
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16


def test_dev_issuer_refuses_reserved_extra_claims(tmp_path: Path) -> None:
    dev = DevIssuer(tmp_path, "http://127.0.0.1/dev")
    with pytest.raises(ValueError, match="iss"):
        dev.mint("u", "a", extra_claims={"iss": "https://accounts.google.com"})


def test_jwks_cache_accepts_an_injected_session(idp: TestIssuer) -> None:
    # GIVEN a caller-provided requests session
    session = requests.Session()
    cache = JwksCache(session=session, timeout_s=2)

    # WHEN / THEN it is used for fetches
    assert _verifier(idp, cache).verify(idp.mint()).principal.issuer == "test"
    assert cache.fetches[idp.jwks_uri] == 1


def test_claims_are_refused_when_the_verified_bytes_are_not_the_parsed_ones(
    idp: TestIssuer, jwks: JwksCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claims come from the strict parse before the signature check: if the library ever verified other
    bytes than those, the token is refused rather than the unverified claims used."""
    import vending.identity as identity

    token = idp.mint(sub="alice", jti="jti-other-bytes")
    real = identity._JWS.decode_complete

    def other_bytes(*args: Any, **kwargs: Any) -> dict[str, Any]:
        decoded: dict[str, Any] = real(*args, **kwargs)
        return {**decoded, "payload": decoded["payload"] + b" "}

    monkeypatch.setattr(identity._JWS, "decode_complete", other_bytes)
    assert _reason(lambda: _verifier(idp, jwks).verify(token)) == "malformed-token"
