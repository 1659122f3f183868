"""ID tokens, signed JWTs and signed blobs end to end (issue 5).

Each kind goes through the HTTP function on SQLite and on the Firestore
emulator (``any_harness``), to the IAM stand-in over real HTTP, and every
credential returned is verified with standard libraries against the keys the
stand-in publishes (google-auth, PyJWT, cryptography). Each limit is a clear
4xx with an exact reason, after which nothing was minted and nothing recorded.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.auth.transport.requests
import jwt as pyjwt
import pytest
import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from freezegun import freeze_time
from google.auth import jwt as google_jwt
from google.oauth2 import id_token as google_id_token

from tests.support.app import (
    CHAIN_SUBJECT,
    CI_SUBJECT,
    DEMO_SA,
    GCS_SUBJECT,
    HOP_SA,
    PROD_SA,
    ServiceHarness,
    policy_dict,
)
from tests.support.gcs_v4 import V4, v4_request
from vending import clock, policy
from vending.config import load_policy
from vending.errors import BadRequestError, PermissionDeniedError
from vending.identity import Principal

RUN_APP = "https://hello-7x2kq3abcd-uc.a.run.app"
EXAMPLE_AUD = "https://example.com/"
PUBSUB_AUD = "https://pubsub.googleapis.com/"
DEPLOY_MAX_TTL = 7200  # tests/support/app.py: deploy.signed_jwt.max_ttl
GOOGLE_API_MAX_TTL = 3600
GCS_MAX_PAYLOAD = 4096  # gcs-signer.signed_blob.max_payload_bytes
DEPLOY_MAX_PAYLOAD = 65536  # deploy.signed_blob.max_payload_bytes (64 KiB)
ID_TOKENS, SIGNED_JWTS, SIGNED_BLOBS = "/v1/id-tokens", "/v1/signed-jwts", "/v1/signed-blobs"


# -- helpers -----------------------------------------------------------------------------------


def error_of(resp: Any) -> dict[str, Any]:
    body = resp.get_json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "status", "reason", "message", "request_id"}, err
    assert err["code"] == resp.status_code
    return err


def assert_refused(h: ServiceHarness, resp: Any, status: int, reason: str) -> dict[str, Any]:
    """The exact status and reason, and no state change: nothing recorded, nothing minted."""
    err = error_of(resp)
    assert (resp.status_code, err["reason"]) == (status, reason), err
    assert h.issuance_count() == 0
    assert h.standin.minted == []
    assert "Traceback" not in resp.get_data(as_text=True)
    return err


def record_of(h: ServiceHarness, issuance_id: str, credential: str) -> dict[str, Any]:
    """The stored ledger document; it holds the credential's SHA-256 and never the credential."""
    doc = h.service.ledger.get(issuance_id)
    assert doc is not None
    data = dict(doc.data)
    stored = json.dumps(data, default=str)
    assert credential not in stored
    for part in credential.split("."):  # no JWT segment either (header, payload or signature)
        if len(part) > 16:
            assert part not in stored
    assert data["token_sha256"] == hashlib.sha256(credential.encode()).hexdigest()
    assert h.issuance_count() == 1
    return data


def x509_certs(h: ServiceHarness, email: str = DEMO_SA) -> dict[str, str]:
    resp = requests.get(h.standin.x509_url(email), timeout=5)
    assert resp.status_code == 200
    certs: dict[str, str] = resp.json()
    return certs


def verify_blob(h: ServiceHarness, key_id: str, signature_b64: str, payload: bytes) -> None:
    """RSASSA-PKCS1-v1_5 / SHA-256 with the certificate published for ``key_id``."""
    cert = x509.load_pem_x509_certificate(x509_certs(h)[key_id].encode())
    signature = base64.b64decode(signature_b64, validate=True)
    cert.public_key().verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    with pytest.raises(InvalidSignature):
        cert.public_key().verify(signature, payload + b"x", padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def id_token_body(**kw: Any) -> dict[str, Any]:
    return {"service_account": DEMO_SA, "audience": RUN_APP, **kw}


def jwt_body(claims: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"service_account": DEMO_SA, "claims": claims, **kw}


def blob_body(payload: bytes, **kw: Any) -> dict[str, Any]:
    return {"service_account": DEMO_SA, "payload": b64(payload), **kw}


def v4_body(v4: V4, **kw: Any) -> dict[str, Any]:
    return {"service_account": DEMO_SA, "payload": b64(v4.payload), "canonical_request": v4.canonical_request, **kw}


def v4_now(**kw: Any) -> V4:
    return v4_request(signer=DEMO_SA, at=clock.now(), **kw)


@pytest.fixture
def small_blob_harness(sqlite_store: Any, oidc: Any, standin: Any, tmp_path: Path) -> Iterator[ServiceHarness]:
    """The test policy with deploy's signed blobs limited to 1024 bytes."""
    issuer_cfg = oidc.issuer_config().model_dump()
    issuer_cfg["algorithms"] = list(issuer_cfg["algorithms"])
    entitlements = policy_dict(issuer_cfg)["entitlements"]
    for ent in entitlements:
        if ent["name"] == "deploy":
            ent["signed_blob"] = {"max_payload_bytes": 1024, "acknowledge_raw_signing": True}
    h = ServiceHarness(sqlite_store, oidc, standin, tmp_path, policy_overrides={"entitlements": entitlements})
    yield h
    h.close()


# == ID tokens ==================================================================================


@pytest.mark.parametrize("include_email", [True, False])
def test_id_token_verifies_against_the_oauth_certs_and_is_recorded_by_hash(
    any_harness: ServiceHarness, include_email: bool
) -> None:
    h = any_harness
    # GIVEN a CI caller entitled to ID tokens of demo-deployer for https://*.run.app audiences
    # WHEN it asks for one for a Cloud Run service
    resp = h.post(ID_TOKENS, id_token_body(include_email=include_email))
    # THEN it gets the token, its expiry and the issuance id
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert set(body) == {"id_token", "expire_time", "issuance_id", "service_account"}
    assert body["service_account"] == DEMO_SA
    assert resp.headers["Cache-Control"] == "no-store"
    token = body["id_token"]
    # AND the token verifies with google-auth against the stand-in's Google OAuth certificates (x509 map)
    claims = google_id_token.verify_token(
        token, google.auth.transport.requests.Request(), audience=RUN_APP, certs_url=h.standin.oauth_certs_url
    )
    assert claims["iss"] == "https://accounts.google.com" and claims["aud"] == RUN_APP
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - clock.epoch()) <= 5
    if include_email:
        assert (claims["email"], claims["email_verified"]) == (DEMO_SA, True)
    else:
        assert "email" not in claims
    # AND against the JWKS form (/oauth2/v3/certs, verified by PyJWT inside google-auth)
    again = google_id_token.verify_token(
        token, google.auth.transport.requests.Request(), audience=RUN_APP, certs_url=f"{h.standin.url}/oauth2/v3/certs"
    )
    assert again["sub"] == claims["sub"]
    # AND not for another audience
    with pytest.raises(ValueError):
        google_id_token.verify_token(
            token,
            google.auth.transport.requests.Request(),
            audience="https://other.run.app",
            certs_url=h.standin.oauth_certs_url,
        )
    # AND expire_time is the token's exp
    assert body["expire_time"] == clock.rfc3339(clock.from_epoch(claims["exp"]))
    # AND the stand-in minted exactly that token
    [minted] = h.standin.minted
    assert (minted.method, minted.credential) == ("generateIdToken", token)
    # AND the ledger records kind, state and exp, with the token's SHA-256 only
    record = record_of(h, body["issuance_id"], token)
    assert (record["kind"], record["state"], record["service_account"]) == ("id_token", "active", DEMO_SA)
    assert record["expire_time"] == clock.from_epoch(claims["exp"])
    assert record["audience"] == RUN_APP and record["entitlement"] == "deploy"
    assert record["key_id"] is None


@pytest.mark.parametrize(
    "audience",
    [
        "https://x.run.app.evil.com",  # suffix near miss
        "http://x.run.app",  # not https
        "HTTPS://X.RUN.APP",  # uppercase
        "https://X.run.app",
        "https://x.run.app\n",  # trailing newline ($ in a careless regex)
        "https://x.run.app/",  # trailing slash: not the same audience
        "https://x.run.app/path",
        "https://evil.com/?x=.run.app",
        "https://.run.app",
        "https://x.run.app:443",
        " https://x.run.app",
        "https://example.com/",  # allowed for signed JWTs, not ID tokens
    ],
)
def test_id_token_audience_not_allowed(harness: ServiceHarness, audience: str) -> None:
    # GIVEN an audience that is not an anchored full match of https://*.run.app
    resp = harness.post(ID_TOKENS, id_token_body(audience=audience))
    # THEN 403 audience-not-allowed, nothing minted or recorded
    err = assert_refused(harness, resp, 403, "audience-not-allowed")
    assert "Audience" in err["message"]


@pytest.mark.parametrize(
    "body,status,reason",
    [
        ({"service_account": DEMO_SA}, 400, "missing-field"),
        (id_token_body(audience=""), 400, "invalid-audience"),
        (id_token_body(audience=["https://x.run.app"]), 400, "invalid-audience"),
        (id_token_body(audience="https://" + "a" * 1000 + ".run.app"), 400, "invalid-audience"),
        (id_token_body(include_email="true"), 400, "invalid-include-email"),
        (id_token_body(scopes=["openid"]), 400, "unknown-field"),
        (id_token_body(service_account="not-an-email"), 400, "invalid-service-account"),
        (id_token_body(service_account=PROD_SA), 403, "service-account-not-allowed"),
    ],
)
def test_id_token_bad_input(harness: ServiceHarness, body: dict[str, Any], status: int, reason: str) -> None:
    assert_refused(harness, harness.post(ID_TOKENS, body), status, reason)


# == signed JWTs ================================================================================


def test_signed_jwt_verifies_with_google_auth_and_pyjwt_and_is_recorded_by_hash(any_harness: ServiceHarness) -> None:
    h = any_harness
    # GIVEN a CI caller entitled to signed JWTs for https://example.com/ with scope and target claims
    # WHEN it asks for one without exp
    before = int(clock.epoch())
    resp = h.post(SIGNED_JWTS, jwt_body({"aud": EXAMPLE_AUD, "scope": "deploy", "target": {"env": "prod"}}))
    after = int(clock.epoch())
    # THEN it gets the JWT, the key id and the expiry
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert set(body) == {"signed_jwt", "key_id", "expire_time", "issuance_id", "service_account"}
    token, key_id = body["signed_jwt"], body["key_id"]
    assert google_jwt.decode_header(token) == {"alg": "RS256", "kid": key_id, "typ": "JWT"}
    # AND it verifies with google-auth against the x509 certificates published for the service account
    claims = google_jwt.decode(token, certs=x509_certs(h), audience=EXAMPLE_AUD)
    # AND the service set iss, sub and iat; exp defaulted to now + max_ttl
    assert claims["iss"] == claims["sub"] == DEMO_SA
    assert before <= claims["iat"] <= after
    assert claims["exp"] == claims["iat"] + DEPLOY_MAX_TTL
    assert (claims["scope"], claims["target"]) == ("deploy", {"env": "prod"})
    assert set(claims) == {"iss", "sub", "aud", "iat", "exp", "scope", "target"}
    # AND it verifies with PyJWT against the JWK set, the key chosen by the returned key id
    jwks = pyjwt.PyJWKClient(h.standin.jwk_url(DEMO_SA))
    assert jwks.get_signing_key_from_jwt(token).key_id == key_id
    assert pyjwt.decode(token, jwks.get_signing_key(key_id).key, algorithms=["RS256"], audience=EXAMPLE_AUD) == claims
    with pytest.raises(pyjwt.InvalidAudienceError):
        pyjwt.decode(token, jwks.get_signing_key(key_id).key, algorithms=["RS256"], audience="https://other/")
    assert body["expire_time"] == clock.rfc3339(clock.from_epoch(claims["exp"]))
    # AND the stand-in minted exactly that JWT
    [minted] = h.standin.minted
    assert (minted.method, minted.credential, minted.key_id) == ("signJwt", token, key_id)
    # AND the ledger records kind, state, exp and key id, with the JWT's SHA-256 only
    record = record_of(h, body["issuance_id"], token)
    assert (record["kind"], record["state"], record["key_id"]) == ("signed_jwt", "active", key_id)
    assert record["expire_time"] == clock.from_epoch(claims["exp"])
    assert record["audience"] == EXAMPLE_AUD


def test_signed_jwt_exp_at_the_limit_is_granted_and_one_second_more_is_refused(harness: ServiceHarness) -> None:
    with freeze_time("2026-11-28T12:00:00Z"):
        now = int(clock.epoch())
        # GIVEN exp exactly max_ttl (7200 s) away -> granted, and signed as asked
        ok = harness.post(SIGNED_JWTS, jwt_body({"aud": EXAMPLE_AUD, "exp": now + DEPLOY_MAX_TTL}))
        assert ok.status_code == 200, ok.get_json()
        claims = google_jwt.decode(ok.get_json()["signed_jwt"], certs=x509_certs(harness), audience=EXAMPLE_AUD)
        assert (claims["iat"], claims["exp"]) == (now, now + DEPLOY_MAX_TTL)
        assert ok.get_json()["expire_time"] == "2026-11-28T14:00:00Z"
        harness.standin.reset()
        # WHEN exp is one second further
        resp = harness.post(SIGNED_JWTS, jwt_body({"aud": EXAMPLE_AUD, "exp": now + DEPLOY_MAX_TTL + 1}))
    # THEN 400 exp-too-far naming the maximum, and nothing more minted or recorded
    err = error_of(resp)
    assert (resp.status_code, err["reason"]) == (400, "exp-too-far")
    assert "7200s" in err["message"]
    assert harness.issuance_count() == 1 and harness.standin.minted == []


@pytest.mark.parametrize("exp_offset", [DEPLOY_MAX_TTL + 1, 43200, 43201, 10**9])
def test_signed_jwt_exp_too_far(harness: ServiceHarness, exp_offset: int) -> None:
    with freeze_time("2026-11-28T12:00:00Z"):
        resp = harness.post(SIGNED_JWTS, jwt_body({"aud": EXAMPLE_AUD, "exp": int(clock.epoch()) + exp_offset}))
    assert_refused(harness, resp, 400, "exp-too-far")


def test_google_api_audience_is_capped_at_one_hour(harness: ServiceHarness) -> None:
    # GIVEN an entitlement whose max_ttl is 2 h and allows aud https://pubsub.googleapis.com/
    with freeze_time("2026-11-28T12:00:00Z"):
        now = int(clock.epoch())
        # WHEN exp is omitted -> it defaults to 1 h, not 2 h
        default = harness.post(SIGNED_JWTS, jwt_body({"aud": PUBSUB_AUD}))
        assert default.status_code == 200, default.get_json()
        claims = google_jwt.decode(default.get_json()["signed_jwt"], certs=x509_certs(harness), audience=PUBSUB_AUD)
        assert claims["exp"] == now + GOOGLE_API_MAX_TTL
        # AND exp exactly 1 h away is granted
        at_limit = harness.post(SIGNED_JWTS, jwt_body({"aud": PUBSUB_AUD, "exp": now + GOOGLE_API_MAX_TTL}))
        assert at_limit.status_code == 200, at_limit.get_json()
        minted_before = len(harness.standin.minted)
        # AND one second more is refused, although the entitlement's max_ttl would allow it
        over = harness.post(SIGNED_JWTS, jwt_body({"aud": PUBSUB_AUD, "exp": now + GOOGLE_API_MAX_TTL + 1}))
    err = error_of(over)
    assert (over.status_code, err["reason"]) == (400, "exp-too-far")
    assert "3600s for a Google API audience" in err["message"]
    assert harness.issuance_count() == 2 and len(harness.standin.minted) == minted_before == 2


@pytest.mark.parametrize("exp", ["past", "now", "string", "float", "true", "list"])
def test_signed_jwt_exp_in_the_past_or_not_an_integer(harness: ServiceHarness, exp: str) -> None:
    with freeze_time("2026-11-28T12:00:00Z"):
        now = int(clock.epoch())
        value = {
            "past": now - 1,
            "now": now,
            "string": str(now + 60),
            "float": now + 60.0,
            "true": True,
            "list": [now + 60],
        }[exp]
        resp = harness.post(SIGNED_JWTS, jwt_body({"aud": EXAMPLE_AUD, "exp": value}))
    assert_refused(harness, resp, 400, "invalid-exp")


@pytest.mark.parametrize("claim", ["iss", "sub", "iat", "nbf", "jti", "email", "azp", "Scope", "scope "])
def test_signed_jwt_claim_not_allowed(harness: ServiceHarness, claim: str) -> None:
    # GIVEN a claim the entitlement does not list (iss, sub and iat are always the service's)
    resp = harness.post(SIGNED_JWTS, jwt_body({"aud": EXAMPLE_AUD, claim: DEMO_SA if claim != "iat" else 1}))
    # THEN 403 claim-not-allowed naming it
    err = assert_refused(harness, resp, 403, "claim-not-allowed")
    assert repr(claim) in err["message"]


@pytest.mark.parametrize(
    "claims",
    [
        {},  # aud is required
        {"aud": None},
        {"aud": [EXAMPLE_AUD]},  # a list, even of an allowed value
        {"aud": "https://example.com"},  # no trailing slash
        {"aud": "https://example.com/\n"},
        {"aud": "HTTPS://EXAMPLE.COM/"},
        {"aud": "http://example.com/"},
        {"aud": "https://example.com/.evil.com"},
        {"aud": "https://storage.googleapis.com/"},  # a Google API the entitlement does not list
        {"aud": RUN_APP},
    ],
)
def test_signed_jwt_audience_not_allowed(harness: ServiceHarness, claims: dict[str, Any]) -> None:
    assert_refused(harness, harness.post(SIGNED_JWTS, jwt_body(claims)), 403, "audience-not-allowed")


@pytest.mark.parametrize(
    "body,status,reason",
    [
        ({"service_account": DEMO_SA}, 400, "missing-field"),
        (jwt_body([EXAMPLE_AUD]), 400, "invalid-claims"),  # type: ignore[arg-type]
        (jwt_body("aud=x"), 400, "invalid-claims"),  # type: ignore[arg-type]
        (jwt_body({"aud": EXAMPLE_AUD}, payload="x"), 400, "unknown-field"),
        (jwt_body({"aud": EXAMPLE_AUD}, service_account=PROD_SA), 403, "service-account-not-allowed"),
    ],
)
def test_signed_jwt_bad_input(harness: ServiceHarness, body: dict[str, Any], status: int, reason: str) -> None:
    assert_refused(harness, harness.post(SIGNED_JWTS, body), status, reason)


def test_signed_jwt_duplicate_claim_is_refused(harness: ServiceHarness) -> None:
    # GIVEN a body whose claims repeat aud (parsers disagree on which one wins)
    raw = (
        f'{{"service_account": "{DEMO_SA}", "claims": {{"aud": "{EXAMPLE_AUD}", "aud": "https://evil.example/"}}}}'
    ).encode()
    assert_refused(harness, harness.post(SIGNED_JWTS, raw=raw), 400, "duplicate-field")


# == signed blobs ===============================================================================


def test_signed_blob_verifies_with_the_published_certificate_and_records_the_key_id(
    any_harness: ServiceHarness,
) -> None:
    h = any_harness
    # GIVEN a CI caller entitled to signed blobs of demo-deployer up to 64 KiB
    payload = secrets.token_bytes(1000) + b"\x00\xff"
    # WHEN it asks for a signature
    resp = h.post(SIGNED_BLOBS, blob_body(payload, reason="release manifest"))
    # THEN it gets the signature and the key id
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert set(body) == {"signed_blob", "key_id", "issuance_id", "service_account"}
    # AND the signature verifies (RSASSA-PKCS1-v1_5, SHA-256) with the certificate for that key id
    verify_blob(h, body["key_id"], body["signed_blob"], payload)
    # AND the stand-in minted exactly that signature
    [minted] = h.standin.minted
    assert (minted.method, minted.credential, minted.key_id) == ("signBlob", body["signed_blob"], body["key_id"])
    # AND the ledger says 'signed' with the key id (valid while the key lives), no expiry, no signature
    record = record_of(h, body["issuance_id"], body["signed_blob"])
    assert (record["kind"], record["state"], record["key_id"]) == ("signed_blob", "signed", body["key_id"])
    assert record["expire_time"] is None
    assert record["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert record["reason"] == "release manifest"


def test_signed_blob_at_the_limit_is_signed_and_one_byte_more_is_refused(small_blob_harness: ServiceHarness) -> None:
    h = small_blob_harness
    # GIVEN deploy's signed blobs limited to 1024 bytes
    # WHEN the payload is exactly 1024 bytes -> signed
    payload = secrets.token_bytes(1024)
    ok = h.post(SIGNED_BLOBS, blob_body(payload))
    assert ok.status_code == 200, ok.get_json()
    verify_blob(h, ok.get_json()["key_id"], ok.get_json()["signed_blob"], payload)
    h.standin.reset()
    # WHEN it is 1025 bytes
    resp = h.post(SIGNED_BLOBS, blob_body(secrets.token_bytes(1025)))
    # THEN 400 payload-too-large naming the maximum, and nothing more minted or recorded
    err = error_of(resp)
    assert (resp.status_code, err["reason"]) == (400, "payload-too-large")
    assert "1025 bytes" in err["message"] and "1024" in err["message"]
    assert h.issuance_count() == 1 and h.standin.minted == []


def test_deploy_signs_64_kib_blobs_but_not_one_byte_more(harness: ServiceHarness) -> None:
    payload = secrets.token_bytes(DEPLOY_MAX_PAYLOAD)
    ok = harness.post(SIGNED_BLOBS, blob_body(payload))
    assert ok.status_code == 200, ok.get_json()
    verify_blob(harness, ok.get_json()["key_id"], ok.get_json()["signed_blob"], payload)
    harness.standin.reset()
    resp = harness.post(SIGNED_BLOBS, blob_body(secrets.token_bytes(DEPLOY_MAX_PAYLOAD + 1)))
    assert (resp.status_code, error_of(resp)["reason"]) == (400, "payload-too-large")
    assert harness.issuance_count() == 1 and harness.standin.minted == []


@pytest.mark.parametrize(
    "payload",
    [
        "not base64!",
        "YWJj ZGVm",  # whitespace
        "YWJjZA",  # missing padding
        "-_-_",  # URL-safe alphabet
        "YWJjZA==\n",
        "",  # empty
        12345,
        None,
    ],
)
def test_signed_blob_payload_not_base64(harness: ServiceHarness, payload: Any) -> None:
    resp = harness.post(SIGNED_BLOBS, {"service_account": DEMO_SA, "payload": payload})
    assert_refused(harness, resp, 400, "missing-field" if payload is None else "invalid-payload")


# -- Cloud Storage V4 signed URLs (gcs-signer: gcs_v4_only, buckets [allowed-bucket], 4096 bytes) --


@pytest.mark.parametrize("virtual_host", [False, True])
def test_v4_signed_url_for_allowed_bucket(any_harness: ServiceHarness, virtual_host: bool) -> None:
    h = any_harness
    # GIVEN a job entitled to sign Cloud Storage V4 URLs for allowed-bucket only
    # AND a real V4 canonical request and string-to-sign for a GET of an object, valid 15 min
    v4 = v4_now(bucket="allowed-bucket", obj="releases/v1.2.3/app.tar.gz", expires_s=900, virtual_host=virtual_host)
    # WHEN it asks the service to sign the string-to-sign
    resp = h.post(SIGNED_BLOBS, v4_body(v4), subject=GCS_SUBJECT)
    # THEN the signature verifies against the published certificate
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    verify_blob(h, body["key_id"], body["signed_blob"], v4.payload)
    url = v4.url(base64.b64decode(body["signed_blob"]))
    host = "allowed-bucket.storage.googleapis.com/" if virtual_host else "storage.googleapis.com/allowed-bucket/"
    assert url.startswith(f"https://{host}releases/v1.2.3/app.tar.gz?X-Goog-Algorithm=GOOG4-RSA-SHA256&")
    assert "X-Goog-Credential=demo-deployer%40local-project.iam.gserviceaccount.com%2F" in url
    # AND the ledger records an active signed URL expiring at X-Goog-Date + X-Goog-Expires, with the key id
    record = record_of(h, body["issuance_id"], body["signed_blob"])
    assert (record["kind"], record["state"], record["key_id"]) == ("signed_blob", "active", body["key_id"])
    assert record["expire_time"] == v4.timestamp + _dt.timedelta(seconds=900)
    assert (record["bucket"], record["object"]) == ("allowed-bucket", "releases/v1.2.3/app.tar.gz")
    assert record["entitlement"] == "gcs-signer"


@pytest.mark.parametrize(
    "bucket,virtual_host",
    [
        ("other-bucket", False),
        ("other-bucket", True),
        ("allowed-bucket-2", False),
        ("allowed-bucket.evil", True),
        ("xallowed-bucket", False),
    ],
)
def test_v4_bucket_not_allowed(any_harness: ServiceHarness, bucket: str, virtual_host: bool) -> None:
    v4 = v4_now(bucket=bucket, obj="a.txt", virtual_host=virtual_host)
    resp = any_harness.post(SIGNED_BLOBS, v4_body(v4), subject=GCS_SUBJECT)
    err = assert_refused(any_harness, resp, 403, "bucket-not-allowed")
    assert repr(bucket) in err["message"]


def test_v4_hash_mismatch(harness: ServiceHarness) -> None:
    # GIVEN a string-to-sign for allowed-bucket, sent with a canonical request for another bucket
    v4 = v4_now(bucket="allowed-bucket")
    other = v4_now(bucket="other-bucket")
    body = v4_body(v4, canonical_request=other.canonical_request)
    err = assert_refused(harness, harness.post(SIGNED_BLOBS, body, subject=GCS_SUBJECT), 400, "invalid-string-to-sign")
    assert "does not match the hash" in err["message"]


@pytest.mark.parametrize("skew_s", [-901, -3600, 901])
def test_v4_stale_or_future_timestamp(harness: ServiceHarness, skew_s: int) -> None:
    v4 = v4_request(signer=DEMO_SA, at=clock.now() + _dt.timedelta(seconds=skew_s), expires_s=7200)
    err = assert_refused(
        harness, harness.post(SIGNED_BLOBS, v4_body(v4), subject=GCS_SUBJECT), 400, "invalid-string-to-sign"
    )
    assert "900 seconds" in err["message"]


def test_v4_requires_the_canonical_request(harness: ServiceHarness) -> None:
    v4 = v4_now()
    resp = harness.post(SIGNED_BLOBS, blob_body(v4.payload), subject=GCS_SUBJECT)
    assert_refused(harness, resp, 400, "invalid-string-to-sign")


def test_v4_only_entitlement_refuses_an_arbitrary_blob(harness: ServiceHarness) -> None:
    resp = harness.post(SIGNED_BLOBS, blob_body(b"any bytes at all"), subject=GCS_SUBJECT)
    assert_refused(harness, resp, 400, "invalid-string-to-sign")


def test_v4_only_entitlement_payload_too_large(harness: ServiceHarness) -> None:
    resp = harness.post(SIGNED_BLOBS, blob_body(b"G" * (GCS_MAX_PAYLOAD + 1)), subject=GCS_SUBJECT)
    err = assert_refused(harness, resp, 400, "payload-too-large")
    assert str(GCS_MAX_PAYLOAD) in err["message"]


def test_v4_expires_beyond_seven_days(harness: ServiceHarness) -> None:
    v4 = v4_now(expires_s=604801)
    assert_refused(harness, harness.post(SIGNED_BLOBS, v4_body(v4), subject=GCS_SUBJECT), 400, "invalid-string-to-sign")


@pytest.mark.parametrize("canonical_request", [123, "", "GET\r\n/allowed-bucket/o", "a" * 16385])
def test_v4_malformed_canonical_request_field(harness: ServiceHarness, canonical_request: Any) -> None:
    body = v4_body(v4_now(), canonical_request=canonical_request)
    assert_refused(harness, harness.post(SIGNED_BLOBS, body, subject=GCS_SUBJECT), 400, "invalid-canonical-request")


# == the policy: kinds and delegation =============================================================


@pytest.mark.parametrize(
    "path,body",
    [
        (ID_TOKENS, id_token_body()),
        (SIGNED_JWTS, jwt_body({"aud": EXAMPLE_AUD})),
        ("/v1/access-tokens", {"service_account": DEMO_SA, "lifetime": 600}),
    ],
)
def test_kind_not_in_the_entitlement(harness: ServiceHarness, path: str, body: dict[str, Any]) -> None:
    # GIVEN gcs-signer, whose entitlement on demo-deployer lists only signed_blob
    resp = harness.post(path, body, subject=GCS_SUBJECT)
    # THEN any other kind is 403 credential-kind-not-allowed
    assert_refused(harness, resp, 403, "credential-kind-not-allowed")


@pytest.mark.parametrize(
    "path,body",
    [
        (ID_TOKENS, {"service_account": PROD_SA, "audience": RUN_APP}),
        (SIGNED_JWTS, {"service_account": PROD_SA, "claims": {"aud": EXAMPLE_AUD}}),
        (SIGNED_BLOBS, {"service_account": PROD_SA, "payload": b64(b"x")}),
    ],
)
def test_access_token_only_entitlement_refuses_other_kinds(
    harness: ServiceHarness, path: str, body: dict[str, Any]
) -> None:
    # GIVEN the chain entitlement on prod-admin, which lists no kinds (access tokens by default)
    assert_refused(harness, harness.post(path, body, subject=CHAIN_SUBJECT), 403, "credential-kind-not-allowed")


@pytest.mark.parametrize(
    "path,body",
    [
        (ID_TOKENS, id_token_body()),
        (SIGNED_JWTS, jwt_body({"aud": EXAMPLE_AUD})),
        (SIGNED_BLOBS, blob_body(b"payload")),
    ],
)
@pytest.mark.parametrize("delegates", [[HOP_SA], [f"projects/-/serviceAccounts/{HOP_SA}"], [DEMO_SA]])
def test_delegates_differing_from_the_entitlement(
    harness: ServiceHarness, path: str, body: dict[str, Any], delegates: list[str]
) -> None:
    # GIVEN deploy, whose chain is empty, and a caller naming a delegate
    resp = harness.post(path, {**body, "delegates": delegates})
    assert_refused(harness, resp, 403, "delegates-not-allowed")


@pytest.mark.parametrize(
    "path,body",
    [
        (ID_TOKENS, id_token_body()),
        (SIGNED_JWTS, jwt_body({"aud": EXAMPLE_AUD})),
        (SIGNED_BLOBS, blob_body(b"payload")),
    ],
)
def test_empty_delegates_equal_the_empty_chain(harness: ServiceHarness, path: str, body: dict[str, Any]) -> None:
    resp = harness.post(path, {**body, "delegates": []})
    assert resp.status_code == 200, resp.get_json()
    [minted] = harness.standin.minted
    assert minted.delegates == ()


def test_replayed_caller_token_is_refused_for_every_kind(harness: ServiceHarness) -> None:
    # GIVEN one caller token already used for an ID token
    token = harness.token()
    assert harness.post(ID_TOKENS, id_token_body(), token=token).status_code == 200
    # WHEN it is presented again for another kind
    again = harness.post(SIGNED_BLOBS, blob_body(b"x"), token=token)
    # THEN 401 token-replayed, still one record and one minted credential
    assert (again.status_code, error_of(again)["reason"]) == (401, "token-replayed")
    assert harness.issuance_count() == 1 and len(harness.standin.minted) == 1


# == the example configuration (issue 5, "Done when") =============================================

DEMO_SUBJECT = "repo:example/app:ref:refs/heads/main"


def _demo_principal(subject: str = DEMO_SUBJECT) -> Principal:
    return Principal(issuer="local-dev", identity=subject, claims={"sub": subject})


def _decide(pol: Any, principal: Principal, kind: str, body: dict[str, Any], now: _dt.datetime) -> Any:
    from vending.kinds import registry

    module = registry()[kind]
    return policy.decide(pol, principal, module, module.decode({"service_account": DEMO_SA, **body}), now)


def test_example_configuration_grants_the_demo_subject_all_three_kinds() -> None:
    pol = load_policy("config/example.yaml")
    demo = _demo_principal()
    now = _dt.datetime(2026, 11, 28, 12, 0, tzinfo=_dt.UTC)
    now_s = int(now.timestamp())

    # ID tokens for https://*.run.app audiences, and nothing else
    grant = _decide(pol, demo, "id_token", {"audience": "https://hello-abc-uc.a.run.app"}, now)
    assert (grant.entitlement, grant.service_account, grant.delegates) == ("demo-deploy", DEMO_SA, ())
    assert grant.caller == f"local-dev/{DEMO_SUBJECT}"
    for aud in ("https://x.run.app.evil.com", "http://x.run.app", "https://example.com/"):
        with pytest.raises(PermissionDeniedError):
            _decide(pol, demo, "id_token", {"audience": aud}, now)

    # signed JWTs with aud https://example.com/ and exp at most 1 h away
    def jwt_exp(claims: dict[str, Any]) -> int:
        return int(_decide(pol, demo, "signed_jwt", {"claims": claims}, now).terms.claims["exp"])

    assert jwt_exp({"aud": EXAMPLE_AUD}) == now_s + 3600
    assert jwt_exp({"aud": EXAMPLE_AUD, "exp": now_s + 3600}) == now_s + 3600
    with pytest.raises(BadRequestError) as too_far:
        jwt_exp({"aud": EXAMPLE_AUD, "exp": now_s + 3601})
    assert too_far.value.reason == "exp-too-far"
    with pytest.raises(PermissionDeniedError):
        jwt_exp({"aud": "https://other.example/"})

    # raw signed blobs up to 64 KiB, acknowledged as the account's whole signing power
    [ent] = policy.candidates(pol, demo, "signed_blob", DEMO_SA, None)
    assert ent.signed_blob is not None
    assert (ent.signed_blob.max_payload_bytes, ent.signed_blob.gcs_v4_only) == (65536, False)
    assert ent.signed_blob.acknowledge_raw_signing
    payload = base64.b64encode(b"hello").decode()
    assert _decide(pol, demo, "signed_blob", {"payload": payload}, now).entitlement == "demo-deploy"

    # and another subject gets none of them
    for kind in ("id_token", "signed_jwt", "signed_blob"):
        with pytest.raises(PermissionDeniedError) as denied:
            policy.candidates(pol, _demo_principal("repo:example/app:ref:refs/heads/feature"), kind, DEMO_SA, None)
        assert denied.value.reason == "service-account-not-allowed"


def test_example_configuration_still_vends_the_core_access_token() -> None:
    pol = load_policy("config/example.yaml")
    now = _dt.datetime(2026, 11, 28, 12, 0, tzinfo=_dt.UTC)
    grant = _decide(pol, _demo_principal(), "access_token", {"lifetime": 900}, now)
    assert (grant.entitlement, grant.terms.lifetime_s) == ("demo-deploy", 900)
    assert CI_SUBJECT == DEMO_SUBJECT


# == signed JWT rules, directly =====================================================================


def _jwt_entitlement(max_ttl: int = 7200) -> Any:
    from vending.config import Entitlement

    return Entitlement.model_validate(
        {
            "name": "any-aud",
            "principals": [{"issuer": "local-dev", "claims": {"sub": DEMO_SUBJECT}}],
            "service_account": DEMO_SA,
            "credentials": ["signed_jwt"],
            "signed_jwt": {"audiences": [{"pattern": "https?://.*"}], "max_ttl": max_ttl, "allowed_claims": ["scope"]},
        }
    )


@pytest.mark.parametrize(
    "aud,ttl",
    [
        ("https://pubsub.googleapis.com/", 3600),
        ("https://PubSub.GoogleAPIs.com/", 3600),  # host case does not escape the cap
        ("https://pubsub.googleapis.com", 3600),
        ("https://pubsub.googleapis.com/google.pubsub.v1.Publisher", 3600),  # the older API_NAME form
        ("https://storage.googleapis.com:443/", 3600),
        ("https://us-central1-aiplatform.googleapis.com/", 3600),
        ("https://googleapis.com/", 3600),
        ("https://googleapis.com.evil.example/", 7200),  # not Google
        ("https://evil.example/pubsub.googleapis.com/", 7200),
        ("https://example.com/", 7200),
    ],
)
def test_google_api_audiences_are_recognised(aud: str, ttl: int) -> None:
    from vending.kinds import signed_jwt

    now = _dt.datetime(2026, 11, 28, 12, 0, tzinfo=_dt.UTC)
    ent = _jwt_entitlement()
    ask = signed_jwt.decode({"service_account": DEMO_SA, "claims": {"aud": aud}})
    terms = signed_jwt.terms(ent, signed_jwt.bounds(ent, now), ask, now)
    assert terms.claims["exp"] == int(now.timestamp()) + ttl


@pytest.mark.parametrize("claim", ["iss", "sub", "iat", "aud", "exp"])
def test_configuration_refuses_reserved_claims_in_allowed_claims(claim: str) -> None:
    from pydantic import ValidationError

    from vending.config import SignedJwtRules

    with pytest.raises(ValidationError, match="cannot be listed"):
        SignedJwtRules.model_validate({"audiences": [EXAMPLE_AUD], "allowed_claims": ["scope", claim]})


def test_configuration_refuses_max_ttl_above_12_hours() -> None:
    from pydantic import ValidationError

    from vending.config import SignedJwtRules

    assert SignedJwtRules.model_validate({"audiences": [EXAMPLE_AUD], "max_ttl": "12h"}).max_ttl == 43200
    with pytest.raises(ValidationError):
        SignedJwtRules.model_validate({"audiences": [EXAMPLE_AUD], "max_ttl": 43201})
