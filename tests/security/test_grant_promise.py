"""Every credential bounded by its grant (issue 12): one test per reviewed leak, over HTTP.

Each numbered case of the review is reproduced against the real HTTP function,
the IAM stand-in and a real store (SQLite, and the Firestore emulator where
the store matters), and must now be refused or bounded:

1. signBlob as signJwt in disguise; raw signing only when acknowledged; V4
   URLs bounded by method and expiry.
2. identities keep their issuer (auditors, approvers, requesters); vending on
   an approval re-checks the entitlement's principal rule.
3. an approval window bounds every kind (ID tokens, signed JWTs, V4 URLs).
4. replay: an ES256 token re-encoded with the other valid signature.
5. races: a revoke between the approval check and the reservation; a commit
   that landed but whose answer was lost.
6. outcomes: IAM 400/401 are not retryable; an ``unconfirmed`` record covers
   the whole IAM deadline; one log line per failure.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.app import CI_SUBJECT, CLOUD, DEMO_SA, IAM_TOKEN, PROD_SA, ServiceHarness
from tests.support.audit import dump_store, vended
from tests.support.gcs_v4 import v4_request
from tests.support.oidc import DROP, TestIssuer, b64url
from vending import clock
from vending.config import Policy
from vending.iam import IamCredentials, StaticToken
from vending.store.base import Create, StoreConflict
from vending.store.indexes import ISSUANCES

RUN_APP = "https://hello-abc123-uc.a.run.app"
INC = "INC-7: database down"


def error(resp: Any) -> tuple[int, str]:
    body = resp.get_json()
    return resp.status_code, body["error"]["reason"] if "error" in body else "ok"


def nothing_changed(h: ServiceHarness, call: Any) -> Any:
    """Run ``call``; assert the whole store and the stand-in's minted list are as before."""
    before, minted = dump_store(h.store), len(h.standin.minted)
    resp = call()
    assert dump_store(h.store) == before
    assert len(h.standin.minted) == minted
    return resp


def blob(h: ServiceHarness, payload: bytes, subject: str = CI_SUBJECT, **body: Any) -> Any:
    return h.post(
        "/v1/signed-blobs",
        {"service_account": DEMO_SA, "payload": base64.b64encode(payload).decode(), **body},
        subject=subject,
    )


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def factory(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("make_harness" if request.param == "sqlite" else "make_fs_harness")


# == 1. blobs ==========================================================================================

JWT_INPUTS = [
    b64url(json.dumps({"alg": "RS256", "typ": "JWT"})) + "." + b64url(json.dumps({"aud": "x", "exp": 2_000_000_000})),
    b64url(json.dumps({"alg": "RS256"})) + "==." + b64url(json.dumps({"iss": "me"})),  # padded segments
    b64url(json.dumps({"alg": "none"})) + "." + b64url("{}") + ".",  # a third, empty segment
    " " + b64url(json.dumps({"kid": "k"})) + "." + b64url(json.dumps({"a": 1})) + "\n",  # surrounding blanks
]


@pytest.mark.parametrize("payload", JWT_INPUTS)
def test_a_jwt_signing_input_is_never_signed_as_a_blob(harness: ServiceHarness, payload: str) -> None:
    """GIVEN an entitlement with acknowledged raw signing / WHEN the payload is header.claims of a JWT /
    THEN 403 payload-is-jwt, nothing minted, nothing written."""
    resp = nothing_changed(harness, lambda: blob(harness, payload.encode()))
    assert error(resp) == (403, "payload-is-jwt")


@pytest.mark.parametrize(
    "payload",
    [
        b"GOOG4-RSA-SHA256\n20261128T100000Z\n20261128/auto/storage/goog4_request\n" + b"0" * 64,
        b"GET\n\n\n1900000000\n/bucket/object",
        b"DELETE\n\ntext/plain\n1900000000\n/bucket/object",
    ],
)
def test_a_signed_url_string_is_never_signed_as_a_raw_blob(harness: ServiceHarness, payload: bytes) -> None:
    """GIVEN raw signing acknowledged / WHEN the payload is a V4 or V2 signed-URL string-to-sign /
    THEN 403 payload-is-signed-url: URLs only go through the V4 rules, which bound method and expiry."""
    resp = nothing_changed(harness, lambda: blob(harness, payload))
    assert error(resp) == (403, "payload-is-signed-url")


def test_raw_blob_signing_must_be_acknowledged(harness: ServiceHarness) -> None:
    """GIVEN a policy whose signed_blob rules neither restrict to V4 URLs nor acknowledge raw signing /
    WHEN it is loaded / THEN it is refused, naming the choice."""
    raw = harness.policy.model_dump(mode="python")
    raw["entitlements"][0]["signed_blob"] = {"max_payload_bytes": 1024}
    with pytest.raises(ValueError) as refused:
        Policy.model_validate(raw)
    assert "acknowledge_raw_signing" in str(refused.value)


def test_acknowledged_raw_signing_is_logged_as_the_whole_signing_power() -> None:
    """GIVEN the example policy (raw signing acknowledged for demo-deploy) / THEN its warning names it."""
    from vending.config import load_policy, warnings

    [(message, fields)] = warnings(load_policy("config/example.yaml"))
    assert "whole signing power" in message and fields["entitlement"] == "demo-deploy"


def _gcs(method: str, expires_s: int, bucket: str = "allowed-bucket") -> dict[str, Any]:
    v4 = v4_request(bucket, signer=DEMO_SA, at=clock.now(), expires_s=expires_s, method=method)
    return {"payload": base64.b64encode(v4.payload).decode(), "canonical_request": v4.canonical_request}


def _url_buckets(raw: dict[str, Any]) -> None:
    for ent in raw["entitlements"]:
        if ent["name"] == "gcs-signer":
            ent["signed_blob"].update(
                max_ttl=1800, buckets=["allowed-bucket", {"bucket": "upload-bucket", "methods": ["PUT"]}]
            )


@pytest.mark.parametrize(
    "method,bucket,expected",
    [
        ("GET", "allowed-bucket", (200, "ok")),
        ("HEAD", "allowed-bucket", (403, "method-not-allowed")),
        ("DELETE", "allowed-bucket", (403, "method-not-allowed")),
        ("PUT", "allowed-bucket", (403, "method-not-allowed")),
        ("PUT", "upload-bucket", (200, "ok")),
        ("GET", "upload-bucket", (403, "method-not-allowed")),
        ("GET", "other-bucket", (403, "bucket-not-allowed")),
    ],
)
def test_v4_urls_sign_only_the_listed_methods(
    make_harness: Any, method: str, bucket: str, expected: tuple[int, str]
) -> None:
    """GIVEN a bucket rule (GET by default, PUT listed for one bucket) / WHEN a URL for METHOD is asked /
    THEN only the listed methods are signed."""
    h = make_harness(edit=_url_buckets)
    resp = h.post(
        "/v1/signed-blobs",
        {"service_account": DEMO_SA, **_gcs(method, 600, bucket)},
        subject="repo:example/app:ref:refs/heads/gcs",
    )
    assert error(resp) == expected


@pytest.mark.parametrize(
    "expires_s,expected", [(1800, (200, "ok")), (1801, (400, "expires-too-far")), (604800, (400, "expires-too-far"))]
)
def test_v4_url_expiry_is_bounded_like_every_credential(
    make_harness: Any, expires_s: int, expected: tuple[int, str]
) -> None:
    """GIVEN max_ttl 30 min for URLs / WHEN X-Goog-Expires asks for more / THEN 400 expires-too-far."""
    h = make_harness(edit=_url_buckets)
    resp = h.post(
        "/v1/signed-blobs",
        {"service_account": DEMO_SA, **_gcs("GET", expires_s)},
        subject="repo:example/app:ref:refs/heads/gcs",
    )
    assert error(resp) == expected
    if expected[0] == 200:
        record = h.service.ledger.get(resp.get_json()["issuance_id"]).data
        assert record["expire_time"] <= record["bounds"]["not_after"]


# == 2. identities keep their issuer ==================================================================

OTHER = "https://other-idp.example"


@pytest.fixture
def other_idp() -> Iterator[TestIssuer]:
    with TestIssuer(name="other", issuer=OTHER, audience="https://vending.test", key_set=1) as idp:
        yield idp


def _two_issuers(other: TestIssuer) -> Any:
    def edit(raw: dict[str, Any]) -> None:
        cfg = other.issuer_config().model_dump()
        cfg["algorithms"] = list(cfg["algorithms"])
        raw["issuers"].append(cfg)
        raw["groups"] = {"approvers": ["ci/alice@example.com", "ci/bob@example.com", "ci/carol@example.com"]}
        raw["auditors"] = ["ci/auditor@example.com"]
        raw["bots"][0]["actor_issuer"] = "ci"

    return edit


def test_an_unqualified_identity_is_refused_when_two_issuers_could_produce_it(
    harness: ServiceHarness, other_idp: TestIssuer
) -> None:
    """GIVEN two issuers / WHEN the policy names a bare auditor / THEN it does not load, naming the fix."""
    raw = harness.policy.model_dump(mode="python")
    cfg = other_idp.issuer_config().model_dump(mode="python")
    raw["issuers"] = [*raw["issuers"], cfg]
    raw["bots"][0]["actor_issuer"] = "ci"
    with pytest.raises(ValueError) as refused:
        Policy.model_validate(raw)
    assert "ISSUER/IDENTITY" in str(refused.value)


def test_an_auditor_subject_from_another_issuer_reads_nothing(factory: Any, other_idp: TestIssuer) -> None:
    """GIVEN ci/auditor@example.com is the auditor / WHEN other/auditor@example.com reads the ledger /
    THEN it sees only its own (nothing) and is refused everyone else's records."""
    h = factory(edit=_two_issuers(other_idp))
    issuance_id = h.vend().get_json()["issuance_id"]

    def impostor() -> str:
        return other_idp.mint(sub="auditor@example.com")

    assert h.get("/v1/issuances", token=impostor()).get_json() == {"issuances": []}
    assert error(h.get("/v1/issuances", token=impostor(), query={"principal": f"ci/{CI_SUBJECT}"})) == (
        403,
        "not-an-auditor",
    )
    assert error(h.get(f"/v1/issuances/{issuance_id}", token=impostor())) == (403, "not-a-reader")
    # the real auditor reads it
    assert h.get(f"/v1/issuances/{issuance_id}", subject="auditor@example.com").status_code == 200


def _requested(h: ServiceHarness, subject: str = "dave@example.com", **claims: Any) -> str:
    resp = h.post(
        "/v1/requests",
        {"entitlement": "prod-admin", "justification": "TICKET-1: rotate keys"},
        token=h.token(subject, **claims),
    )
    assert resp.status_code == 200, resp.get_json()
    return str(resp.get_json()["id"])


def test_approvers_and_requesters_of_another_issuer_count_for_nothing(factory: Any, other_idp: TestIssuer) -> None:
    """GIVEN dave's request / WHEN other/alice and other/bob approve, and other/dave vends /
    THEN no approval counts and no credential is minted."""
    h = factory(edit=_two_issuers(other_idp))
    request_id = _requested(h)
    for name in ("alice", "bob"):
        resp = h.post(f"/v1/requests/{request_id}:approve", token=other_idp.mint(sub=f"{name}@example.com"))
        assert error(resp) == (403, "not-an-approver")
    assert h.get(f"/v1/requests/{request_id}", subject="dave@example.com").get_json()["approvals"] == []
    for name in ("alice", "bob"):
        assert h.post(f"/v1/requests/{request_id}:approve", subject=f"{name}@example.com").status_code == 200
    resp = h.post(
        "/v1/access-tokens",
        {"service_account": PROD_SA, "request_id": request_id},
        token=other_idp.mint(sub="dave@example.com"),
    )
    assert error(resp) == (403, "not-requester") and vended(h.standin.minted) == []
    assert (
        h.post(
            "/v1/access-tokens", {"service_account": PROD_SA, "request_id": request_id}, subject="dave@example.com"
        ).status_code
        == 200
    )


def _main_only(raw: dict[str, Any]) -> None:
    for ent in raw["entitlements"]:
        if ent["name"] == "prod-admin":
            ent["principals"][0]["claims"]["ref"] = "refs/heads/main"


def test_vending_on_an_approval_rechecks_the_principal_rule(factory: Any) -> None:
    """GIVEN an approval requested from main / WHEN the same subject vends with a feature-branch token /
    THEN 403 entitlement-not-allowed, nothing minted; from main it vends."""
    h = factory(edit=_main_only)
    request_id = _requested(h, ref="refs/heads/main")
    for name in ("alice", "bob"):
        h.post(f"/v1/requests/{request_id}:approve", subject=f"{name}@example.com")
    body = {"service_account": PROD_SA, "request_id": request_id}
    resp = h.post("/v1/access-tokens", body, token=h.token("dave@example.com", ref="refs/heads/feature"))
    assert error(resp) == (403, "entitlement-not-allowed") and vended(h.standin.minted) == []
    assert (
        h.post("/v1/access-tokens", body, token=h.token("dave@example.com", ref="refs/heads/main")).status_code == 200
    )


# == 3. an approval window bounds every kind ===========================================================


def _break_glass_all_kinds(raw: dict[str, Any]) -> None:
    for ent in raw["entitlements"]:
        if ent["name"] == "prod-break-glass":
            ent["credentials"] = ["access_token", "id_token", "signed_jwt"]
            ent["id_token"] = {"audiences": [RUN_APP]}
            ent["signed_jwt"] = {"audiences": ["https://example.com/"], "max_ttl": 7200}
    raw["entitlements"].append(
        {
            "name": "bg-urls",
            "principals": [{"issuer": "ci", "claims": {"sub": "oncall@example.com"}}],
            "service_account": DEMO_SA,
            "credentials": ["signed_blob"],
            "max_lifetime": 1800,
            "signed_blob": {"gcs_v4_only": True, "buckets": ["allowed-bucket"], "max_ttl": 604800},
            "approval": {
                "break_glass": True,
                "max_window": 1800,
                "max_uses": 5,
                "justification_pattern": {"pattern": "INC-[0-9]+: .{3,200}"},
            },
        }
    )


def _break_glass(h: ServiceHarness, entitlement: str = "prod-break-glass") -> dict[str, Any]:
    resp = h.post("/v1/requests", {"entitlement": entitlement, "justification": INC}, subject="oncall@example.com")
    assert resp.status_code == 200 and resp.get_json()["state"] == "ACTIVE", resp.get_json()
    return dict(resp.get_json())


def test_a_thirty_minute_window_bounds_every_kind(factory: Any) -> None:
    """GIVEN a 30-minute break-glass window / WHEN each kind is asked for its longest /
    THEN none outlives the window: ID tokens (fixed 1 h by IAM) are refused, the rest end by its end."""
    h = factory(edit=_break_glass_all_kinds)
    req = _break_glass(h)
    window_end = clock.parse_rfc3339(req["window_end"])
    oncall = {"subject": "oncall@example.com"}
    # ID token: IAM fixes one hour, longer than the window
    resp = h.post("/v1/id-tokens", {"service_account": PROD_SA, "audience": RUN_APP, "request_id": req["id"]}, **oncall)
    assert error(resp) == (403, "window-too-short")
    # signed JWT: exp defaults to the window's end, and may not pass it
    jwt_body = {"service_account": PROD_SA, "claims": {"aud": "https://example.com/"}, "request_id": req["id"]}
    signed = h.post("/v1/signed-jwts", jwt_body, **oncall).get_json()
    assert clock.parse_rfc3339(signed["expire_time"]) < window_end
    too_far = dict(jwt_body, claims={"aud": "https://example.com/", "exp": int(window_end.timestamp()) + 60})
    assert error(h.post("/v1/signed-jwts", too_far, **oncall)) == (400, "exp-too-far")
    # access token: its lifetime is cut to the window
    token = h.post("/v1/access-tokens", {"service_account": PROD_SA, "request_id": req["id"]}, **oncall).get_json()
    assert clock.parse_rfc3339(token["expire_time"]) < window_end
    # a V4 URL: the entitlement allows 7 days, the window does not
    urls = _break_glass(h, "bg-urls")
    week = {"service_account": DEMO_SA, "request_id": urls["id"], **_gcs("GET", 604800)}
    assert error(h.post("/v1/signed-blobs", week, **oncall)) == (400, "expires-too-far")
    short = {"service_account": DEMO_SA, "request_id": urls["id"], **_gcs("GET", 600)}
    assert h.post("/v1/signed-blobs", short, **oncall).status_code == 200
    # every credential minted for the window ends by its end
    for m in vended(h.standin.minted):
        assert m.expire_time is None or m.expire_time <= window_end


# == 4. replay: what a token asserts, not its encoding =================================================


def test_an_es256_token_with_the_other_valid_signature_is_a_replay(factory: Any) -> None:
    """GIVEN an ES256 caller token without jti, used once / WHEN the same token is re-encoded with s -> n - s /
    THEN 401 token-replayed, one credential."""
    h = factory()
    token = h.issuer.mint(key="ec", sub=CI_SUBJECT, jti=DROP)
    head, payload, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # the order of P-256
    twin = f"{head}.{payload}." + b64url(raw[:32] + (n - int.from_bytes(raw[32:], "big")).to_bytes(32, "big"))
    body = {"service_account": DEMO_SA, "scopes": [CLOUD]}
    assert h.post("/v1/access-tokens", body, token=token).status_code == 200
    assert error(h.post("/v1/access-tokens", body, token=twin)) == (401, "token-replayed")
    assert len(vended(h.standin.minted)) == 1


# == 5. races ==========================================================================================


class Interleave:
    """A store that runs ``before`` once, just before the first batch that reserves an issuance."""

    def __init__(self, inner: Any, before: Any) -> None:
        self.inner, self.before, self.fired = inner, before, False

    def write(self, writes: Any) -> None:
        if not self.fired and any(isinstance(w, Create) and w.kind == ISSUANCES for w in writes):
            self.fired = True
            self.before()
        self.inner.write(writes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _approved(h: ServiceHarness) -> str:
    request_id = _requested(h)
    for name in ("alice", "bob"):
        assert h.post(f"/v1/requests/{request_id}:approve", subject=f"{name}@example.com").status_code == 200
    return request_id


def test_a_revoke_between_the_check_and_the_reservation_wins(factory: Any) -> None:
    """GIVEN an ACTIVE approval / WHEN it is revoked after the vend checked it and before the reservation
    commits / THEN the reservation does not commit, the vend is refused approval-revoked, nothing minted."""
    h = factory()
    request_id = _approved(h)

    def revoke() -> object:
        return h.service.approvals.act("ci/alice@example.com", request_id, "revoke", via="http")

    h.rebuild(store=Interleave(h.store, revoke))
    h.check_refusals = False  # the interleaved revoke changes the store during the call, on purpose
    resp = h.post(
        "/v1/access-tokens", {"service_account": PROD_SA, "request_id": request_id}, subject="dave@example.com"
    )
    assert error(resp) == (403, "approval-revoked")
    assert vended(h.standin.minted) == [] and h.issuance_count() == 0
    assert h.store.get("requests", request_id).data["state"] == "REVOKED"


class LostAnswer:
    """A store whose first reserving commit lands but whose answer is lost: the client retries the same
    commit, which now conflicts with itself (exactly what the Firestore client's retry meets)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.retried = inner, 0

    def write(self, writes: Any) -> None:
        if not self.retried and any(isinstance(w, Create) and w.kind == ISSUANCES for w in writes):
            self.retried = 1
            self.inner.write(writes)  # the commit lands ...
            try:
                self.inner.write(writes)  # ... the answer is lost and the retry meets its own write
            except StoreConflict:
                self.retried = 2
                raise
            return
        self.inner.write(writes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_retried_commit_recognises_its_own_earlier_write(factory: Any) -> None:
    """GIVEN a single-use approval / WHEN the reserving commit lands and its retry conflicts with it /
    THEN the vend carries on: 200, one active record, the use spent once, the caller token spent."""
    h = factory()
    request_id = _approved(h)
    lost = LostAnswer(h.store)
    h.rebuild(store=lost)
    token = h.token("dave@example.com")
    resp = h.post("/v1/access-tokens", {"service_account": PROD_SA, "request_id": request_id}, token=token)
    assert resp.status_code == 200, resp.get_json()
    assert lost.retried == 2
    [record] = dump_store(h.store)[ISSUANCES].values()
    assert record["state"] == "active" and len(vended(h.standin.minted)) == 1
    request = h.store.get("requests", request_id).data
    assert (request["uses"], request["state"]) == (1, "ENDED")
    again = h.post("/v1/requests", {"entitlement": "prod-admin", "justification": "TICKET-2: again"}, token=token)
    assert error(again) == (401, "token-replayed")


# == 6. outcomes =========================================================================================


def _extended(raw: dict[str, Any]) -> None:
    for ent in raw["entitlements"]:
        if ent["name"] == "deploy":
            ent.update(lifetime_extension=True, max_lifetime=7200)


def test_an_iam_400_is_not_retryable_and_gives_the_token_back(make_harness: Any) -> None:
    """GIVEN IAM refuses the lifetime (no org-policy extension on the stand-in) / WHEN vending /
    THEN 400 FAILED_PRECONDITION iam-rejected, the record failed, and the same caller token may retry."""
    h = make_harness(edit=_extended)
    token = h.token()
    body = {"service_account": DEMO_SA, "lifetime": 7200}
    first = h.post("/v1/access-tokens", body, token=token)
    assert error(first) == (400, "iam-rejected") and first.get_json()["error"]["status"] == "FAILED_PRECONDITION"
    [record] = dump_store(h.store)[ISSUANCES].values()
    assert record["state"] == "failed"
    assert error(h.post("/v1/access-tokens", body, token=token)) == (400, "iam-rejected")


def test_an_iam_401_is_an_internal_error_not_an_outage(harness: ServiceHarness) -> None:
    """GIVEN the service's own IAM credentials are refused / WHEN vending / THEN 500 INTERNAL iam-unauthenticated."""
    harness.rebuild(iam=IamCredentials(harness.standin.url, StaticToken("not-" + IAM_TOKEN), timeout_s=3.0))
    resp = harness.vend()
    assert error(resp) == (500, "iam-unauthenticated") and resp.get_json()["error"]["status"] == "INTERNAL"


def test_an_unconfirmed_record_covers_the_whole_iam_deadline(harness: ServiceHarness) -> None:
    """GIVEN IAM does not answer within the deadline / WHEN vending 600 s / THEN 503 iam-unavailable, and the
    record is unconfirmed until at least reservation + deadline + lifetime (IAM could answer at the deadline)."""
    h = harness
    h.settings = h.settings.__class__(**{**h.settings.__dict__, "iam_timeout_s": 0.3})
    h.rebuild(iam=IamCredentials(h.standin.url, StaticToken(IAM_TOKEN), timeout_s=0.3, retries=0))
    h.standin.set_hang(1.0, count=1)
    resp = h.vend(lifetime=600)
    assert error(resp) == (503, "iam-unavailable")
    [record] = dump_store(h.service.store)[ISSUANCES].values()
    created = clock.parse_rfc3339(record["created_at"])
    assert record["state"] == "unconfirmed"
    assert clock.parse_rfc3339(record["expire_time"]) >= created + _dt.timedelta(seconds=600 + 0.3 - 1)


def test_a_failure_is_logged_once(harness: ServiceHarness, capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN IAM failing with 5xx after retries / WHEN vending / THEN exactly one ERROR line for it."""
    harness.standin.set_fault(500, count=10)
    capsys.readouterr()
    resp = harness.vend()
    assert error(resp) == (502, "iam-error")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    errors = [entry for entry in lines if entry.get("severity") == "ERROR"]
    assert len(errors) == 1 and errors[0]["reason"] == "iam-error", errors
