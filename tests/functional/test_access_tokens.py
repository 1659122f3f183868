"""POST /v1/access-tokens end to end: the HTTP function, a real store, the IAM stand-in.

Every bad input of the core issue has a test asserting its exact status and
reason, and that nothing changed (no issuance record, nothing minted).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from freezegun import freeze_time

from tests.support.app import (
    CHAIN_SUBJECT,
    CI_SUBJECT,
    CLOUD,
    DEMO_SA,
    HOP_SA,
    MISSING_SA,
    PROD_SA,
    READ_ONLY,
    UNGRANTED_SA,
    ServiceHarness,
)
from vending import clock


def error_of(resp: Any) -> dict[str, Any]:
    body = resp.get_json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "status", "reason", "message", "request_id"}, err
    assert err["code"] == resp.status_code
    assert resp.headers["X-Request-Id"] == err["request_id"]
    return err


def assert_refused(h: ServiceHarness, resp: Any, status: int, reason: str) -> dict[str, Any]:
    err = error_of(resp)
    assert (resp.status_code, err["reason"]) == (status, reason), err
    assert h.issuance_count() == 0
    assert h.standin.minted == []
    assert "Traceback" not in resp.get_data(as_text=True)
    return err


# -- success ------------------------------------------------------------------------------


def test_vend_returns_token_with_matching_expiry_and_records_only_its_hash(any_harness: ServiceHarness) -> None:
    h = any_harness
    # GIVEN a CI caller entitled to demo-deployer for at most 900 s
    # WHEN it asks for a 600 s token
    resp = h.vend(lifetime="600s", reason="deploy #42")
    # THEN it gets the token once, expiring 600 s from now
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert set(body) == {"access_token", "token_type", "expire_time", "expires_in", "issuance_id", "service_account"}
    assert body["token_type"] == "Bearer" and body["service_account"] == DEMO_SA
    expire = clock.parse_rfc3339(body["expire_time"])
    assert abs((expire - clock.now()).total_seconds() - 600) <= 2
    assert 598 <= body["expires_in"] <= 600
    assert resp.headers["Cache-Control"] == "no-store"
    # AND the stand-in minted exactly that token
    [minted] = h.standin.minted
    assert minted.credential == body["access_token"]
    # AND the ledger holds its SHA-256, never the token
    doc = h.service.ledger.get(body["issuance_id"])
    assert doc is not None and doc.data["state"] == "active"
    assert doc.data["token_sha256"] == hashlib.sha256(body["access_token"].encode()).hexdigest()
    assert body["access_token"] not in json.dumps(doc.data, default=str)
    assert doc.data["expire_time"] == expire


def test_integer_lifetime_and_default_scopes(harness: ServiceHarness) -> None:
    # GIVEN a body with an integer lifetime and no scopes
    resp = harness.post("/v1/access-tokens", {"service_account": DEMO_SA, "lifetime": 300})
    # THEN the entitlement's scopes are used and the lifetime honoured
    assert resp.status_code == 200, resp.get_json()
    [minted] = harness.standin.minted
    assert set(minted.scopes) == {CLOUD, READ_ONLY}
    assert 298 <= resp.get_json()["expires_in"] <= 300


def test_lifetime_at_the_maximum_is_granted(harness: ServiceHarness) -> None:
    resp = harness.vend(lifetime=900)
    assert resp.status_code == 200
    assert 898 <= resp.get_json()["expires_in"] <= 900


def test_delegation_chain_is_sent_normalized(harness: ServiceHarness) -> None:
    # GIVEN an entitlement with the chain [delegate-hop] and a caller naming it by bare email
    resp = harness.vend(service_account=PROD_SA, delegates=[HOP_SA], subject=CHAIN_SUBJECT)
    # THEN the IAM call carries the canonical form
    assert resp.status_code == 200, resp.get_json()
    [minted] = harness.standin.minted
    assert list(minted.delegates) == [f"projects/-/serviceAccounts/{HOP_SA}"]


def test_omitted_delegates_use_the_entitlement_chain(harness: ServiceHarness) -> None:
    resp = harness.vend(service_account=PROD_SA, subject=CHAIN_SUBJECT)
    assert resp.status_code == 200, resp.get_json()
    assert list(harness.standin.minted[0].delegates) == [f"projects/-/serviceAccounts/{HOP_SA}"]


def test_healthz(harness: ServiceHarness) -> None:
    resp = harness.client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}


# -- authentication failures: 401 ------------------------------------------------------------


@pytest.mark.parametrize(
    "header,reason",
    [
        (None, "missing-token"),
        ("", "missing-token"),
        ("Basic dXNlcjpwYXNz", "malformed-authorization"),
        ("Bearer", "malformed-authorization"),
        ("Bearer a b", "malformed-authorization"),
        ("Bearer not-a-jwt", "malformed-token"),
    ],
)
def test_missing_or_malformed_authorization(harness: ServiceHarness, header: str | None, reason: str) -> None:
    resp = harness.client.post(
        "/v1/access-tokens",
        json={"service_account": DEMO_SA},
        headers={} if header is None else {"Authorization": header},
    )
    err = assert_refused(harness, resp, 401, reason)
    assert err["message"] == "The request does not carry a valid identity token for this service."
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def _token_cases(h: ServiceHarness) -> dict[str, tuple[str, str]]:
    now = int(clock.epoch())
    other = h.issuer
    return {
        "expired": (h.token(iat=now - 1000, exp=now - 100), "token-expired"),
        "not-yet-valid": (h.token(nbf=now + 600), "token-not-yet-valid"),
        "wrong-audience": (h.token(aud="https://someone-else.example"), "wrong-audience"),
        "wrong-issuer": (h.token(iss="https://evil.example"), "untrusted-issuer"),
        "unsigned": (other.mint(alg="none", sub=CI_SUBJECT), "disallowed-algorithm"),
        "hmac": (other.mint(alg="HS256"), "disallowed-algorithm"),
        "unknown-kid": (other.mint(kid="no-such-key"), "unknown-key"),
    }


@pytest.mark.parametrize(
    "case", ["expired", "not-yet-valid", "wrong-audience", "wrong-issuer", "unsigned", "hmac", "unknown-kid"]
)
def test_invalid_caller_tokens(harness: ServiceHarness, case: str) -> None:
    token, reason = _token_cases(harness)[case]
    resp = harness.post("/v1/access-tokens", {"service_account": DEMO_SA, "lifetime": 600}, token=token)
    assert_refused(harness, resp, 401, reason)


def test_replayed_token_is_refused_and_changes_nothing(any_harness: ServiceHarness) -> None:
    h = any_harness
    # GIVEN a token already used once
    token = h.token()
    first = h.post("/v1/access-tokens", {"service_account": DEMO_SA, "lifetime": 600}, token=token)
    assert first.status_code == 200
    # WHEN it is presented again
    again = h.post("/v1/access-tokens", {"service_account": DEMO_SA, "lifetime": 600}, token=token)
    # THEN 401 token-replayed, and still exactly one record and one minted token
    err = error_of(again)
    assert (again.status_code, err["reason"]) == (401, "token-replayed")
    assert h.issuance_count() == 1 and len(h.standin.minted) == 1


def test_denied_request_does_not_consume_the_token(harness: ServiceHarness) -> None:
    # GIVEN a token first used for a request the policy refuses
    token = harness.token()
    denied = harness.post("/v1/access-tokens", {"service_account": DEMO_SA, "lifetime": 901}, token=token)
    assert denied.status_code == 400
    # THEN the same token can still be used for a valid request
    ok = harness.post("/v1/access-tokens", {"service_account": DEMO_SA, "lifetime": 600}, token=token)
    assert ok.status_code == 200


# -- malformed input: 400 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"{not json", "invalid-json"),
        (b"\xff\xfe", "invalid-json"),
        (b"", "invalid-body"),
        (b"[1, 2]", "invalid-body"),
        (b'"a string"', "invalid-body"),
        (b'{"service_account": "a@b.iam.gserviceaccount.com", "service_account": "x"}', "duplicate-field"),
    ],
)
def test_non_json_or_non_object_body(harness: ServiceHarness, raw: bytes, reason: str) -> None:
    assert_refused(harness, harness.post("/v1/access-tokens", raw=raw), 400, reason)


def test_body_over_64_kib(harness: ServiceHarness) -> None:
    raw = json.dumps({"service_account": DEMO_SA, "reason": "x" * (64 * 1024)}).encode()
    err = assert_refused(harness, harness.post("/v1/access-tokens", raw=raw), 400, "body-too-large")
    assert "65536" in err["message"]


def test_unknown_field(harness: ServiceHarness) -> None:
    resp = harness.post("/v1/access-tokens", {"service_account": DEMO_SA, "scope": [CLOUD]})
    err = assert_refused(harness, resp, 400, "unknown-field")
    assert "scope" in err["message"]


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "a@example.com",
        "",
        42,
        None,
        "Demo@local-project.iam.gserviceaccount.com",
        "demo@local-project.iam.gserviceaccount.com\n",
    ],
)
def test_malformed_service_account(harness: ServiceHarness, email: Any) -> None:
    resp = harness.post("/v1/access-tokens", {"service_account": email})
    reason = "missing-field" if email is None else "invalid-service-account"
    assert_refused(harness, resp, 400, reason)


@pytest.mark.parametrize(
    "lifetime",
    [
        0,
        "0s",
        -1,
        "-5s",
        "abc",
        " 600",
        "600 ",
        "10 m",
        "1d",
        "10M",
        1.5,
        "1.5s",
        True,
        [600],
        {},
        10**12,
        "9999999999s",
    ],
)
def test_bad_lifetime(harness: ServiceHarness, lifetime: Any) -> None:
    assert_refused(harness, harness.vend(lifetime=lifetime), 400, "invalid-lifetime")


@pytest.mark.parametrize("lifetime", [600, "600", "600s", "10m"])
def test_one_duration_grammar_and_expires_in_agrees(harness: ServiceHarness, lifetime: Any) -> None:
    """GIVEN the grammar of the policy file and the client / WHEN a 600 s lifetime is asked in each spelling /
    THEN each is 600 s, and expires_in says 600 (IAM states expiry in whole seconds)."""
    resp = harness.vend(lifetime=lifetime)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["expires_in"] == 600


@pytest.mark.parametrize("lifetime", [901, "901s", 3601, 43201])
def test_lifetime_above_the_maximum_states_it(harness: ServiceHarness, lifetime: Any) -> None:
    err = assert_refused(harness, harness.vend(lifetime=lifetime), 400, "lifetime-too-long")
    assert "900s" in err["message"]


@pytest.mark.parametrize("scopes", [[], "cloud-platform", ["not a scope"], [1]])
def test_malformed_scopes(harness: ServiceHarness, scopes: Any) -> None:
    assert_refused(harness, harness.vend(scopes=scopes), 400, "invalid-scopes")


@pytest.mark.parametrize("delegates", ["x", ["not-an-email"], [1]])
def test_malformed_delegates(harness: ServiceHarness, delegates: Any) -> None:
    assert_refused(harness, harness.vend(delegates=delegates), 400, "invalid-delegates")


# -- not granted by the policy: 403 ---------------------------------------------------------------


def test_service_account_outside_entitlements(harness: ServiceHarness) -> None:
    resp = harness.vend(service_account="other@local-project.iam.gserviceaccount.com")
    assert_refused(harness, resp, 403, "service-account-not-allowed")


def test_caller_not_named_by_any_entitlement(harness: ServiceHarness) -> None:
    resp = harness.vend(subject="repo:example/app:ref:refs/heads/feature")
    assert_refused(harness, resp, 403, "service-account-not-allowed")


def test_scope_outside_entitlement(harness: ServiceHarness) -> None:
    resp = harness.vend(scopes=[CLOUD, "https://www.googleapis.com/auth/compute"])
    assert_refused(harness, resp, 403, "scope-not-allowed")


@pytest.mark.parametrize(
    "delegates",
    [
        [HOP_SA, HOP_SA],
        [DEMO_SA],
        [],
    ],
)
def test_delegates_that_differ_from_the_entitlement(harness: ServiceHarness, delegates: list[str]) -> None:
    resp = harness.vend(service_account=PROD_SA, delegates=delegates, subject=CHAIN_SUBJECT)
    assert_refused(harness, resp, 403, "delegates-not-allowed")


def test_delegates_on_an_entitlement_without_chain(harness: ServiceHarness) -> None:
    assert_refused(harness, harness.vend(delegates=[HOP_SA]), 403, "delegates-not-allowed")


def test_approval_required_entitlement_without_request(harness: ServiceHarness) -> None:
    resp = harness.vend(service_account=PROD_SA, subject="alice@example.com")
    assert_refused(harness, resp, 403, "approval-required")


# -- routing ---------------------------------------------------------------------------------------


def test_unknown_path(harness: ServiceHarness) -> None:
    resp = harness.post("/v1/nothing-here", {})
    assert_refused(harness, resp, 404, "unknown-path")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method(harness: ServiceHarness, method: str) -> None:
    resp = harness.call(method, "/v1/access-tokens")
    err = assert_refused(harness, resp, 405, "method-not-allowed")
    assert resp.headers["Allow"] == "POST" and err["status"] == "INVALID_ARGUMENT"


# -- IAM failures ------------------------------------------------------------------------------------


def test_iam_permission_denied_becomes_403(harness: ServiceHarness) -> None:
    resp = harness.vend(service_account=UNGRANTED_SA)
    err = error_of(resp)
    assert (resp.status_code, err["reason"], err["status"]) == (403, "iam-permission-denied", "PERMISSION_DENIED")
    assert "roles/iam.serviceAccountTokenCreator" in err["message"]
    [doc] = list(_issuances(harness))
    assert doc["state"] == "failed" and doc["failure"] == "iam-permission-denied"


def test_iam_unknown_target_becomes_404(harness: ServiceHarness) -> None:
    resp = harness.vend(service_account=MISSING_SA)
    err = error_of(resp)
    assert (resp.status_code, err["reason"], err["status"]) == (404, "iam-target-not-found", "NOT_FOUND")


def test_iam_429_becomes_429_with_retry_after(harness: ServiceHarness) -> None:
    harness.standin.set_fault(429, count=1, retry_after_s=7)
    resp = harness.vend()
    err = error_of(resp)
    assert (resp.status_code, err["reason"], err["status"]) == (429, "iam-rate-limited", "RESOURCE_EXHAUSTED")
    assert resp.headers["Retry-After"] == "7"
    assert harness.standin.calls["generateAccessToken"] == 1  # 429 is never retried


def test_iam_503_is_retried_then_succeeds(harness: ServiceHarness) -> None:
    harness.standin.set_fault(503, count=2)
    resp = harness.vend()
    assert resp.status_code == 200
    assert harness.standin.calls["generateAccessToken"] == 3


def test_iam_500_retries_are_bounded(harness: ServiceHarness) -> None:
    harness.standin.set_fault(500, count=10)
    resp = harness.vend()
    err = error_of(resp)
    assert (resp.status_code, err["reason"], err["status"]) == (502, "iam-error", "UNAVAILABLE")
    assert harness.standin.calls["generateAccessToken"] == 3  # 1 + 2 retries


def test_request_reason_header_names_the_issuance(harness: ServiceHarness) -> None:
    resp = harness.vend()
    assert resp.status_code == 200
    [minted] = harness.standin.minted
    assert minted.request_reason == f"token-vending issuance {resp.get_json()['issuance_id']}"


# -- time boundaries ------------------------------------------------------------------------------------


def test_token_expiry_boundary_with_leeway(harness: ServiceHarness) -> None:
    leeway = harness.policy.issuers[0].leeway_seconds
    with freeze_time("2026-11-28T12:00:00Z") as frozen:
        now = int(clock.epoch())
        token_a, token_b = harness.token(exp=now + 10), harness.token(exp=now + 10)
        frozen.tick(10 + leeway - 1)  # just before exp + leeway
        assert harness.post("/v1/access-tokens", {"service_account": DEMO_SA}, token=token_a).status_code == 200
        frozen.tick(1)  # at exp + leeway
        resp = harness.post("/v1/access-tokens", {"service_account": DEMO_SA}, token=token_b)
        assert error_of(resp)["reason"] == "token-expired"


def _issuances(h: ServiceHarness) -> list[dict[str, Any]]:
    from vending.store.base import Query
    from vending.store.indexes import ISSUANCES

    return [d.data for d in h.store.query(Query(ISSUANCES, order_by="created_at", limit=100))]


def test_a_refused_iam_call_gives_the_caller_token_back(any_harness: ServiceHarness) -> None:
    h = any_harness
    # GIVEN IAM's quota is exhausted once
    h.standin.set_fault(429, count=1)
    token = h.token()
    first = h.post("/v1/access-tokens", {"service_account": DEMO_SA}, token=token)
    assert first.status_code == 429
    # WHEN the caller retries after Retry-After with the same token
    retry = h.post("/v1/access-tokens", {"service_account": DEMO_SA}, token=token)
    # THEN it succeeds: nothing was minted the first time, so the token was not spent
    assert retry.status_code == 200, retry.get_json()
    assert h.post("/v1/access-tokens", {"service_account": DEMO_SA}, token=token).status_code == 401
