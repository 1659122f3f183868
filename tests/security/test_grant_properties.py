"""The promise as a property (issue 12): no credential carries more than the grant that allowed it.

Hypothesis draws a policy (scopes, lifetimes, audiences, claim rules, raw or
V4-only blob signing with buckets, methods and URL lifetimes, with or without
an approval window), then a sequence of requests on every vend endpoint, in
and out of bounds, some against the approval. Everything goes over HTTP to
the real function, the IAM stand-in and a SQLite store.

The oracle is independent of the code under test: for every credential the
stand-in says it minted, the test finds its ledger record, then checks the
credential itself (decoded JWTs, a signature verified against the account's
published key over the payload it signs) against the *policy* (the
entitlement as written) and, for an approved request, the request's window
as stored. It never reads the grant the service computed.

``make test`` runs 100 examples (derandomized); ``make test-long`` 1,000 with a random seed.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import json
from typing import Any

import jwt as pyjwt
import pytest
import requests
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.app import DEMO_SA, ServiceHarness
from tests.support.audit import vended
from tests.support.gcs_v4 import v4_request
from tests.support.oidc import b64url
from vending import clock, gcs
from vending.config import Policy, matches
from vending.kinds.signed_blob import is_jwt_signing_input, is_signed_url_input
from vending.kinds.signed_jwt import GOOGLE_API_AUDIENCE
from vending.store.indexes import ISSUANCES, REQUESTS

SUBJECT = "oncall@example.com"
SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/devstorage.read_only",
    "https://www.googleapis.com/auth/compute",
)
AUDIENCES = ("https://a.run.app", "https://b.run.app", "https://example.com/", "https://pubsub.googleapis.com/")
BUCKETS = ("alpha-bucket", "beta-bucket", "gamma-bucket")
METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")
SLACK_S = 2  # IAM counts a lifetime from when it mints; the harness's IAM call takes well under this

short = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
long = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


# -- policies ------------------------------------------------------------------------------------------


@st.composite
def entitlements(draw: Any) -> dict[str, Any]:
    raw_blobs = draw(st.booleans())
    blob: dict[str, Any]
    if raw_blobs:
        blob = {"acknowledge_raw_signing": True, "max_payload_bytes": draw(st.sampled_from([64, 4096]))}
    else:
        rules = [
            {"bucket": b, "methods": draw(st.lists(st.sampled_from(METHODS), min_size=1, max_size=3, unique=True))}
            for b in draw(st.lists(st.sampled_from(BUCKETS), min_size=1, max_size=2, unique=True))
        ]
        blob = {"gcs_v4_only": True, "buckets": rules, "max_ttl": draw(st.sampled_from([300, 3600, 604800]))}
    ent: dict[str, Any] = {
        "name": "prop",
        "principals": [{"issuer": "ci", "claims": {"sub": SUBJECT}}],
        "service_account": DEMO_SA,
        "scopes": draw(st.lists(st.sampled_from(SCOPES[:2]), min_size=1, max_size=2, unique=True)),
        "max_lifetime": draw(st.sampled_from([60, 900, 3600])),
        "credentials": ["access_token", "id_token", "signed_jwt", "signed_blob"],
        "id_token": {"audiences": draw(st.lists(st.sampled_from(AUDIENCES), min_size=1, max_size=2, unique=True))},
        "signed_jwt": {
            "audiences": draw(st.lists(st.sampled_from(AUDIENCES), min_size=1, max_size=3, unique=True)),
            "max_ttl": draw(st.sampled_from([600, 3600, 43200])),
            "allowed_claims": draw(st.lists(st.sampled_from(["scope", "target"]), max_size=2, unique=True)),
        },
        "signed_blob": blob,
    }
    if draw(st.booleans()):  # an approval: break-glass (self-approved) with a window shorter than an hour
        window = draw(st.sampled_from([120, 1800, 3600]))
        ent["max_lifetime"] = min(ent["max_lifetime"], window)
        ent["approval"] = {
            "break_glass": True,
            "max_window": window,
            "max_uses": 50,
            "justification_pattern": {"pattern": "INC-[0-9]+: .{3,200}"},
        }
    return ent


# -- requests ------------------------------------------------------------------------------------------


def jwt_input() -> bytes:
    return (
        b64url(json.dumps({"alg": "RS256", "typ": "JWT"}))
        + "."
        + b64url(json.dumps({"aud": "https://example.com/", "exp": 4_000_000_000}))
    ).encode()


@st.composite
def asks(draw: Any) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(["access_token", "id_token", "signed_jwt", "signed_blob"]))
    if kind == "access_token":
        body: dict[str, Any] = {}
        if draw(st.booleans()):
            body["scopes"] = draw(st.lists(st.sampled_from(SCOPES), min_size=1, max_size=3, unique=True))
        if draw(st.booleans()):
            body["lifetime"] = draw(st.sampled_from([1, 59, 60, 600, 900, 3600, 3601, 43200]))
        return "/v1/access-tokens", body
    if kind == "id_token":
        return "/v1/id-tokens", {"audience": draw(st.sampled_from(AUDIENCES + ("https://evil.example/",)))}
    if kind == "signed_jwt":
        claims: dict[str, Any] = {"aud": draw(st.sampled_from(AUDIENCES + ("https://evil.example/",)))}
        if draw(st.booleans()):
            claims["exp"] = int(clock.epoch()) + draw(st.sampled_from([60, 600, 3600, 3601, 7200, 43200, 10**8]))
        for name in draw(st.lists(st.sampled_from(["scope", "target", "admin", "iss", "sub"]), max_size=2)):
            claims[name] = "x"
        return "/v1/signed-jwts", {"claims": claims}
    shape = draw(st.sampled_from(["bytes", "jwt", "v4", "v4", "v4", "v2"]))
    if shape == "bytes":
        payload = draw(st.binary(min_size=1, max_size=200))
        return "/v1/signed-blobs", {"payload": base64.b64encode(payload).decode()}
    if shape == "jwt":
        return "/v1/signed-blobs", {"payload": base64.b64encode(jwt_input()).decode()}
    if shape == "v2":
        payload = f"{draw(st.sampled_from(METHODS))}\n\n\n{int(clock.epoch()) + 10**6}\n/alpha-bucket/o".encode()
        return "/v1/signed-blobs", {"payload": base64.b64encode(payload).decode()}
    v4 = v4_request(
        draw(st.sampled_from(BUCKETS)),
        signer=DEMO_SA,
        at=clock.now(),
        expires_s=draw(st.sampled_from([60, 600, 3600, 86400, 604800])),
        method=draw(st.sampled_from(METHODS)),
    )
    return "/v1/signed-blobs", {
        "payload": base64.b64encode(v4.payload).decode(),
        "canonical_request": v4.canonical_request,
    }


# -- the oracle ----------------------------------------------------------------------------------------


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _verify_blob(h: ServiceHarness, key_id: str, signature: str, payload: bytes) -> bool:
    keys = requests.get(h.standin.jwk_url(DEMO_SA), timeout=5).json()["keys"]
    [jwk] = [k for k in keys if k["kid"] == key_id]
    key = pyjwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
    return bool(
        pyjwt.algorithms.RSAAlgorithm(pyjwt.algorithms.RSAAlgorithm.SHA256).verify(
            payload, key, base64.b64decode(signature)
        )
    )


def check_minted(h: ServiceHarness, ent: dict[str, Any], payloads: dict[str, bytes]) -> int:
    """Every credential the stand-in minted is within the entitlement and its approval window."""
    policy_ent = h.policy.entitlement("prop")
    assert policy_ent is not None
    checked = 0
    for m in vended(h.standin.minted):
        issuance_id = m.request_reason.rsplit(" ", 1)[-1]
        doc = h.store.get(ISSUANCES, issuance_id)
        assert doc is not None, f"minted without a ledger record: {m.method}"
        record = doc.data
        assert record["token_sha256"] in (m.sha256, None) and record["entitlement"] == "prop"
        latest = m.issued_at + _dt.timedelta(days=3650)
        if record.get("request_id"):
            request = h.store.get(REQUESTS, record["request_id"]).data
            assert request["state"] in ("ACTIVE", "ENDED", "EXPIRED") and request["window_end"] is not None
            latest = request["window_end"]
        slack = _dt.timedelta(seconds=SLACK_S)
        if m.method == "generateAccessToken":
            assert set(m.scopes) <= set(ent["scopes"])
            assert m.expire_time <= min(m.issued_at + _dt.timedelta(seconds=ent["max_lifetime"]), latest) + slack
        elif m.method == "generateIdToken":
            claims = _claims(m.credential)
            assert any(matches(a, claims["aud"]) for a in policy_ent.id_token.audiences)  # type: ignore[union-attr]
            assert clock.from_epoch(claims["exp"]) <= latest + slack
        elif m.method == "signJwt":
            claims = _claims(m.credential)
            rules = ent["signed_jwt"]
            assert claims["aud"] in rules["audiences"]
            assert set(claims) <= {"iss", "sub", "iat", "aud", "exp", *rules.get("allowed_claims", ())}
            assert claims["iss"] == claims["sub"] == DEMO_SA
            ttl = rules["max_ttl"]
            if GOOGLE_API_AUDIENCE.fullmatch(claims["aud"]):
                ttl = min(ttl, 3600)
            assert claims["exp"] <= claims["iat"] + ttl
            assert clock.from_epoch(claims["exp"]) <= latest
        else:
            assert m.method == "signBlob"
            payload = payloads[record["payload_sha256"]]
            assert _verify_blob(h, m.key_id or "", m.credential, payload), "the signature is over another payload"
            assert not is_jwt_signing_input(payload)
            blob = ent["signed_blob"]
            if blob.get("gcs_v4_only"):
                canonical = payloads[hashlib.sha256(payload).hexdigest() + ":canonical"].decode()
                url = gcs.parse(payload, canonical, m.issued_at)
                [rule] = [r for r in blob["buckets"] if r["bucket"] == url.bucket]
                assert url.method in rule["methods"]
                assert url.expires_at <= min(m.issued_at + _dt.timedelta(seconds=blob["max_ttl"]), latest) + slack
            else:
                assert blob["acknowledge_raw_signing"] and not is_signed_url_input(payload)
                assert len(payload) <= blob.get("max_payload_bytes", 65536)
        checked += 1
    return checked


FIGURES: dict[str, int] = {"examples": 0, "requests": 0, "minted": 0, "with-approval": 0}


def run(
    h: ServiceHarness,
    ent: dict[str, Any],
    calls: list[tuple[str, dict[str, Any]]],
    use_approval: bool,
    elapsed_s: int = 0,
) -> None:
    with freeze_time(clock.now()) as frozen:
        _run(h, ent, calls, use_approval, lambda: frozen.tick(elapsed_s))


def _run(
    h: ServiceHarness, ent: dict[str, Any], calls: list[tuple[str, dict[str, Any]]], use_approval: bool, later: Any
) -> None:
    raw = h.policy.model_dump(mode="python")
    raw["entitlements"] = [ent]
    policy = Policy.model_validate(raw)
    h.policy = policy
    h.settings = dataclasses.replace(h.settings, policy=policy)
    h.rebuild()
    h.standin.reset()
    request_id = None
    if "approval" in ent:
        resp = h.post("/v1/requests", {"entitlement": "prop", "justification": "INC-1: property"}, subject=SUBJECT)
        assert resp.status_code == 200, resp.get_json()
        request_id = resp.get_json()["id"]
    later()  # time passes: the window (if any) runs down, and must still bound what is minted
    payloads: dict[str, bytes] = {}
    for path, body in calls:
        body = {"service_account": DEMO_SA, **body}
        if request_id and use_approval:  # without it, an approval entitlement must refuse (approval-required)
            body["request_id"] = request_id
        if "payload" in body:
            data = base64.b64decode(body["payload"])
            payloads[hashlib.sha256(data).hexdigest()] = data
            if "canonical_request" in body:
                payloads[hashlib.sha256(data).hexdigest() + ":canonical"] = body["canonical_request"].encode()
        resp = h.post(path, body, subject=SUBJECT)
        assert resp.status_code in (200, 400, 403, 409), resp.get_json()
    FIGURES["examples"] += 1
    FIGURES["requests"] += len(calls)
    FIGURES["with-approval"] += request_id is not None
    FIGURES["minted"] += check_minted(h, ent, payloads)


CALLS = st.lists(asks(), min_size=1, max_size=8)
ELAPSED = st.sampled_from([0, 0, 100, 1700, 3500])


@short
@given(ent=entitlements(), calls=CALLS, use_approval=st.booleans(), elapsed_s=ELAPSED)
def test_every_minted_credential_is_within_its_grant(
    harness: ServiceHarness,
    suite_figures: Any,
    ent: dict[str, Any],
    calls: list[tuple[str, dict[str, Any]]],
    use_approval: bool,
    elapsed_s: int,
) -> None:
    run(harness, ent, calls, use_approval, elapsed_s)


@pytest.mark.long
@pytest.mark.timeout(3000)
@long
@given(ent=entitlements(), calls=CALLS, use_approval=st.booleans(), elapsed_s=ELAPSED)
def test_every_minted_credential_is_within_its_grant_long(
    harness: ServiceHarness,
    ent: dict[str, Any],
    calls: list[tuple[str, dict[str, Any]]],
    use_approval: bool,
    elapsed_s: int,
) -> None:
    harness.check_refusals = (
        False  # the whole-store comparison per refusal grows with the run; the default run keeps it
    )
    run(harness, ent, calls, use_approval, elapsed_s)


def test_the_property_saw_every_kind_minted(harness: ServiceHarness, suite_figures: Any) -> None:
    """The property must not pass vacuously: one fixed example mints each kind and the oracle checks it."""
    ent = {
        "name": "prop",
        "principals": [{"issuer": "ci", "claims": {"sub": SUBJECT}}],
        "service_account": DEMO_SA,
        "scopes": [SCOPES[0]],
        "max_lifetime": 900,
        "credentials": ["access_token", "id_token", "signed_jwt", "signed_blob"],
        "id_token": {"audiences": [AUDIENCES[0]]},
        "signed_jwt": {"audiences": [AUDIENCES[2]], "max_ttl": 600},
        "signed_blob": {"acknowledge_raw_signing": True},
    }
    calls = [
        ("/v1/access-tokens", {}),
        ("/v1/id-tokens", {"audience": AUDIENCES[0]}),
        ("/v1/signed-jwts", {"claims": {"aud": AUDIENCES[2]}}),
        ("/v1/signed-blobs", {"payload": base64.b64encode(b"plain bytes").decode()}),
    ]
    before = FIGURES["minted"]
    run(harness, ent, calls, False)
    assert FIGURES["minted"] - before == 4
    suite_figures.add(
        f"grant property: {FIGURES['examples']} policies, {FIGURES['requests']} requests "
        f"({FIGURES['with-approval']} with an approval window), {FIGURES['minted']} minted credentials "
        "each within its entitlement and window"
    )
