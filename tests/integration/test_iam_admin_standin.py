"""The IAM API part of the local stand-in (the kill switch), and ``vending.iam_admin`` against it, over HTTP.

``projects.serviceAccounts`` disable / enable / get with the reference's shapes
(POST body ``{}`` -> ``{}``; GET -> the ServiceAccount resource, ``disabled``
only when true), 404 for an unknown account, 403 without the permission
(``service_account_admins``), and what disabling does to the credential methods
(400 FAILED_PRECONDITION, also as a delegate) and to the access tokens the stand-in
minted for the account (refused as bearers until it is enabled again).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from vending.errors import NotFoundError, PermissionDeniedError, VendingError
from vending.iam import StaticToken
from vending.iam_admin import IamAdmin
from vending.local.iam_policy import StandInPolicy
from vending.local.iamcredentials import IamStandIn

PROJECT = "local-project"
RUNTIME = f"vending-runtime@{PROJECT}.iam.gserviceaccount.com"
DEMO = f"demo-deployer@{PROJECT}.iam.gserviceaccount.com"
PROD = f"prod-admin@{PROJECT}.iam.gserviceaccount.com"
HOP = f"delegate-hop@{PROJECT}.iam.gserviceaccount.com"
GHOST = f"ghost@{PROJECT}.iam.gserviceaccount.com"
TOKEN, NOBODY = "runtime-token", "nobody-token"
CLOUD = "https://www.googleapis.com/auth/cloud-platform"

POLICY: dict[str, Any] = {
    "project": PROJECT,
    "callers": {TOKEN: RUNTIME, NOBODY: f"nobody@{PROJECT}.iam.gserviceaccount.com"},
    "service_accounts": [{"email": e} for e in (DEMO, PROD, HOP)],
    "token_creators": {RUNTIME: [DEMO, PROD, HOP], HOP: [PROD]},
    "service_account_admins": {RUNTIME: [DEMO, HOP]},
}


@pytest.fixture(scope="module")
def server() -> Iterator[IamStandIn]:
    with IamStandIn(StandInPolicy.from_dict(POLICY)) as s:
        yield s


@pytest.fixture
def iam(server: IamStandIn) -> IamStandIn:
    server.reset()
    return server


def call(
    iam: IamStandIn, verb: str, email: str, method: str | None = None, *, token: str | None = TOKEN, body: Any = None
) -> requests.Response:
    url = f"{iam.url}/v1/projects/-/serviceAccounts/{email}" + (f":{method}" if method else "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(verb, url, headers=headers, json=body, timeout=5)


def mint(iam: IamStandIn, email: str, delegates: list[str] | None = None) -> requests.Response:
    body: dict[str, Any] = {"scope": [CLOUD], "lifetime": "600s"}
    if delegates:
        body["delegates"] = [f"projects/-/serviceAccounts/{d}" for d in delegates]
    return requests.post(
        iam.endpoint(email, "generateAccessToken"), json=body, timeout=5, headers={"Authorization": f"Bearer {TOKEN}"}
    )


def admin(iam: IamStandIn, **kw: Any) -> IamAdmin:
    return IamAdmin(
        iam.url,
        StaticToken(kw.pop("token", TOKEN)),
        timeout_s=kw.pop("timeout_s", 3.0),
        retries=kw.pop("retries", 2),
        backoff_s=0.001,
    )


def test_get_is_the_service_account_resource(iam: IamStandIn) -> None:
    # GIVEN an enabled account  WHEN read  THEN the resource, with no `disabled` field (proto3 leaves false out)
    resp = call(iam, "GET", DEMO)
    body = resp.json()
    assert resp.status_code == 200
    assert body["name"] == f"projects/{PROJECT}/serviceAccounts/{DEMO}" and body["email"] == DEMO
    assert body["projectId"] == PROJECT and body["uniqueId"].isdigit() and body["oauth2ClientId"] == body["uniqueId"]
    assert "disabled" not in body


def test_disable_then_enable_round_trip(iam: IamStandIn) -> None:
    # GIVEN a token minted for the account
    token = mint(iam, DEMO).json()["accessToken"]
    # WHEN the account is disabled
    disabled = call(iam, "POST", DEMO, "disable", body={})
    # THEN `{}`, the flag is set, minting fails, and its token is refused as a bearer
    assert (disabled.status_code, disabled.json()) == (200, {})
    assert call(iam, "GET", DEMO).json()["disabled"] is True
    refused = mint(iam, DEMO)
    assert refused.status_code == 400 and refused.json()["error"]["status"] == "FAILED_PRECONDITION"
    assert DEMO in refused.json()["error"]["message"]
    as_bearer = requests.post(
        iam.endpoint(PROD, "generateAccessToken"),
        json={"scope": [CLOUD]},
        timeout=5,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert as_bearer.status_code == 401
    assert as_bearer.json()["error"]["details"][0]["reason"] == "ACCOUNT_STATE_INVALID"
    # WHEN enabled again  THEN the old token authenticates again (403: it holds no role, but it is accepted)
    assert call(iam, "POST", DEMO, "enable").json() == {}
    assert "disabled" not in call(iam, "GET", DEMO).json()
    again = requests.post(
        iam.endpoint(PROD, "generateAccessToken"),
        json={"scope": [CLOUD]},
        timeout=5,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert again.status_code == 403
    assert mint(iam, DEMO).status_code == 200


def test_a_disabled_delegate_breaks_the_chain(iam: IamStandIn) -> None:
    # GIVEN the hop disabled  WHEN minting through it  THEN 400 naming the hop
    assert call(iam, "POST", HOP, "disable").status_code == 200
    resp = mint(iam, PROD, delegates=[HOP])
    assert resp.status_code == 400 and HOP in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("verb", "email", "method", "token", "status", "needle"),
    [
        ("POST", GHOST, "disable", TOKEN, 404, "not found"),
        ("GET", GHOST, None, TOKEN, 404, "not found"),
        ("POST", PROD, "disable", TOKEN, 403, "iam.serviceAccounts.disable"),
        ("POST", PROD, "enable", TOKEN, 403, "iam.serviceAccounts.enable"),
        ("GET", PROD, None, TOKEN, 403, "iam.serviceAccounts.get"),
        ("POST", DEMO, "disable", NOBODY, 403, "iam.serviceAccounts.disable"),
        ("POST", DEMO, "disable", None, 401, "missing required authentication"),
        ("GET", DEMO, "disable", TOKEN, 405, "POST"),
        ("POST", DEMO, None, TOKEN, 405, "GET"),
    ],
)
def test_errors_have_the_google_envelope(
    iam: IamStandIn, verb: str, email: str, method: str | None, token: str | None, status: int, needle: str
) -> None:
    resp = call(iam, verb, email, method, token=token)
    error = resp.json()["error"]
    assert (resp.status_code, error["code"]) == (status, status)
    assert needle.lower() in error["message"].lower()
    assert iam.disabled == frozenset()


def test_an_unknown_body_field_is_refused(iam: IamStandIn) -> None:
    resp = call(iam, "POST", DEMO, "disable", body={"etag": "x"})
    assert resp.status_code == 400 and 'Unknown name "etag"' in resp.json()["error"]["message"]
    assert iam.disabled == frozenset()


def test_reset_enables_every_account(iam: IamStandIn) -> None:
    call(iam, "POST", DEMO, "disable")
    iam.reset()
    assert iam.disabled == frozenset() and mint(iam, DEMO).status_code == 200


# -- vending.iam_admin against the stand-in ------------------------------------------------------------


def test_the_client_disables_reads_and_enables(iam: IamStandIn) -> None:
    client = admin(iam)
    client.disable(DEMO, reason="test")
    state = client.get(DEMO)
    client.enable(DEMO, reason="test")
    assert (state.email, state.disabled) == (DEMO, True)
    assert client.get(DEMO).disabled is False
    assert dict(client.calls) == {"disable": 1, "get": 2, "enable": 1}


def test_the_client_maps_refusals(iam: IamStandIn) -> None:
    with pytest.raises(NotFoundError) as missing:
        admin(iam).disable(GHOST, reason="test")
    with pytest.raises(PermissionDeniedError) as denied:
        admin(iam).disable(PROD, reason="test")
    assert (missing.value.reason, missing.value.retryable) == ("iam-target-not-found", False)
    assert denied.value.reason == "iam-permission-denied" and "iam.serviceAccounts.disable" in denied.value.message


def test_the_client_retries_5xx_and_reports_them_retryable(iam: IamStandIn) -> None:
    client = admin(iam)
    iam.set_fault(503, count=1, methods={"disable"})
    client.disable(DEMO, reason="test")  # retried once: idempotent
    iam.set_fault(500, count=10, methods={"enable"})
    with pytest.raises(VendingError) as failed:
        client.enable(DEMO, reason="test")
    assert client.calls["disable"] == 2 and client.calls["enable"] == 3
    assert (failed.value.reason, failed.value.http_status, failed.value.retryable) == ("iam-error", 502, True)
    assert iam.disabled == {DEMO}


def test_a_silent_iam_is_unavailable_and_retryable(iam: IamStandIn) -> None:
    iam.set_hang(5, count=5, methods={"disable"})
    with pytest.raises(VendingError) as failed:
        admin(iam, timeout_s=0.5).disable(DEMO, reason="test")
    assert (failed.value.reason, failed.value.http_status, failed.value.retryable) == ("iam-unavailable", 503, True)


def test_credential_faults_without_methods_leave_the_iam_api_alone(iam: IamStandIn) -> None:
    iam.set_fault(503, count=5)
    admin(iam, retries=0).disable(DEMO, reason="test")
    assert iam.disabled == {DEMO}
