"""The local IAM Credentials stand-in, driven over real HTTP.

Every case checks what a client sees on the wire (status, Google error
envelope, verbatim texts from reference/iamcredentials-api.md) and every
credential returned is verified with standard libraries (google-auth, PyJWT,
cryptography) against the stand-in's public key endpoints.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.iam
import google.auth.jwt
import google.auth.transport.requests
import google.oauth2.credentials
import jwt as pyjwt
import pytest
import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from freezegun import freeze_time
from google.auth import impersonated_credentials
from google.oauth2 import id_token

from vending.local.iam_policy import PolicyError, StandInPolicy, derive_unique_id
from vending.local.iamcredentials import IamStandIn, MintedCredential

REPO = Path(__file__).resolve().parents[2]
PROJECT = "local-project"


def sa(name: str) -> str:
    return f"{name}@{PROJECT}.iam.gserviceaccount.com"


RUNTIME = sa("vending-runtime")
DEPLOYER = sa("demo-deployer")
BOT = sa("chatops-bot")
PROD = sa("prod-admin")
HOP = sa("delegate-hop")
HOP2 = sa("second-hop")
LONG = sa("long-lived")
CI = sa("ci-runner")

SERVICE_TOKEN = "local-vending-service-token"
CI_TOKEN = "ci-token"
BOT_TOKEN = "bot-token"
NOBODY_TOKEN = "nobody-token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
DEPLOYER_ID = "112233445566778899001"

POLICY: dict[str, Any] = {
    "project": PROJECT,
    "callers": {
        SERVICE_TOKEN: RUNTIME,
        CI_TOKEN: CI,
        BOT_TOKEN: BOT,
        NOBODY_TOKEN: "nobody@example.com",
    },
    "service_accounts": [
        {"email": DEPLOYER, "unique_id": DEPLOYER_ID},
        {"email": BOT},
        {"email": PROD},
        {"email": HOP},
        {"email": HOP2},
        {"email": LONG},
        {"email": CI},
    ],
    "token_creators": {
        RUNTIME: [DEPLOYER, BOT, PROD, HOP, LONG],
        HOP: [PROD, HOP2],
        HOP2: [DEPLOYER],
        BOT: [BOT],
        CI: [HOP],
    },
    "lifetime_extension": [LONG],
}

PERMISSIONS = {
    "generateAccessToken": "iam.serviceAccounts.getAccessToken",
    "generateIdToken": "iam.serviceAccounts.getOpenIdToken",
    "signBlob": "iam.serviceAccounts.signBlob",
    "signJwt": "iam.serviceAccounts.signJwt",
}
MISSING_CREDENTIALS = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
INVALID_CREDENTIALS = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
TOO_LONG = (
    "Access tokens for service account {} can not have lifetimes of more than 1 hour. Use the Org Policy "
    "Constraint constraints/iam.allowServiceAccountCredentialLifetimeExtension to allow up to 12 hours."
)
INVALID_ARGUMENT = "Request contains an invalid argument."
JSON_CT = "application/json; charset=UTF-8"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def policy() -> StandInPolicy:
    return StandInPolicy.from_dict(POLICY)


@pytest.fixture(scope="module")
def running(policy: StandInPolicy) -> Iterator[IamStandIn]:
    server = IamStandIn(policy, host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def server(running: IamStandIn, policy: StandInPolicy) -> Iterator[IamStandIn]:
    """The module's stand-in, clean for each test (policy, faults, records, counters)."""
    running.policy = policy
    running.reset()
    yield running
    running.policy = policy
    running.reset()


@pytest.fixture()
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def call(
    http: requests.Session,
    server: IamStandIn,
    method: str,
    target: str,
    body: Any,
    *,
    token: str | None = SERVICE_TOKEN,
    timeout: float = 10,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return http.post(
        server.endpoint(target, method),
        data=data,
        headers={**auth, "Content-Type": "application/json", **(headers or {})},
        timeout=timeout,
    )


def error_of(response: requests.Response) -> dict[str, Any]:
    assert response.headers["Content-Type"] == JSON_CT
    return response.json()["error"]


def assert_error(response: requests.Response, code: int, status: str, message: str) -> dict[str, Any]:
    error = error_of(response)
    assert (response.status_code, error["code"], error["status"], error["message"]) == (code, code, status, message)
    return error


def error_info(error: dict[str, Any]) -> dict[str, Any]:
    infos = [d for d in error.get("details", []) if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"]
    assert len(infos) == 1
    return infos[0]


def rsa_key_from_cert(pem: str) -> rsa.RSAPublicKey:
    key = x509.load_pem_x509_certificate(pem.encode()).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


# --------------------------------------------------------------------------- policy files


def test_local_policy_file_loads_with_the_documented_grants() -> None:
    # GIVEN the embedded default's policy file
    path = REPO / "config" / "local-iam.yaml"

    # WHEN it is loaded
    loaded = StandInPolicy.load(path)

    # THEN the service accounts exist with 21-digit ids and the grants match the brief
    assert loaded.project == PROJECT
    assert {a.email for a in loaded.service_accounts} == {DEPLOYER, BOT, PROD, HOP}
    assert all(re.fullmatch(r"[0-9]{21}", a.unique_id) for a in loaded.service_accounts)
    assert loaded.caller_for(SERVICE_TOKEN) == RUNTIME
    for target in (DEPLOYER, BOT, PROD, HOP):
        assert loaded.has_permission(RUNTIME, "iam.serviceAccounts.getAccessToken", loaded.find(target))  # type: ignore[arg-type]
    assert loaded.has_permission(HOP, "iam.serviceAccounts.implicitDelegation", loaded.find(PROD))  # type: ignore[arg-type]
    assert loaded.has_permission(BOT, "iam.serviceAccounts.signJwt", loaded.find(BOT))  # type: ignore[arg-type]
    assert loaded.lifetime_extension == frozenset()


def test_unique_id_is_derived_stably_from_the_email() -> None:
    # GIVEN a policy without unique ids / WHEN loaded twice
    first = StandInPolicy.from_dict(POLICY).find(PROD)
    second = StandInPolicy.from_dict(POLICY).find(PROD)

    # THEN the derived id is a stable 21-digit numeric string, and a given one is kept
    assert first is not None and second is not None
    assert first.unique_id == second.unique_id == derive_unique_id(PROD)
    assert re.fullmatch(r"[1-9][0-9]{20}", first.unique_id)
    assert StandInPolicy.from_dict(POLICY).find(DEPLOYER_ID).email == DEPLOYER  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(extra=1), "unknown key(s) ['extra']"),
        (lambda d: d.update(project=""), "project: must be a non-empty string"),
        (lambda d: d.update(service_accounts=[{"email": "not-an-email"}]), "service_accounts[0].email"),
        (
            lambda d: d.update(service_accounts=[{"email": DEPLOYER, "unique_id": "12"}]),
            "service_accounts[0].unique_id",
        ),
        (lambda d: d.update(service_accounts=[{"email": DEPLOYER}, {"email": DEPLOYER}]), "duplicate service account"),
        (lambda d: d.update(token_creators={RUNTIME: [sa("ghost")]}), "is not listed under service_accounts"),
        (lambda d: d.update(token_creators={RUNTIME: DEPLOYER}), "must be a list"),
        (lambda d: d.update(callers={SERVICE_TOKEN: 5}), "principal must be an email"),
        (lambda d: d.update(lifetime_extension=[sa("ghost")]), "lifetime_extension[0]"),
    ],
)
def test_malformed_policy_raises_value_error_naming_the_field(mutate: Any, fragment: str) -> None:
    # GIVEN a policy dict with one defect
    data = json.loads(json.dumps(POLICY))
    mutate(data)

    # WHEN it is validated
    with pytest.raises(ValueError) as caught:
        StandInPolicy.from_dict(data, source="bad.yaml")

    # THEN the message names the source and the field
    assert isinstance(caught.value, PolicyError)
    assert str(caught.value).startswith("bad.yaml: ")
    assert fragment in str(caught.value)


def test_unreadable_or_invalid_yaml_file_raises_value_error(tmp_path: Path) -> None:
    # GIVEN a missing file and a file that is not YAML
    broken = tmp_path / "broken.yaml"
    broken.write_text("project: [unclosed\n")

    # WHEN each is loaded
    with pytest.raises(ValueError) as missing:
        StandInPolicy.load(tmp_path / "absent.yaml")
    with pytest.raises(ValueError) as invalid:
        StandInPolicy.load(broken)

    # THEN both say which file
    assert "absent.yaml" in str(missing.value)
    assert "broken.yaml: not valid YAML" in str(invalid.value)


# --------------------------------------------------------------------------- lifecycle and transport


def test_start_picks_a_free_port_and_stop_shuts_down_cleanly(policy: StandInPolicy) -> None:
    # GIVEN a stand-in started on port 0
    server = IamStandIn(policy, port=0)
    with server:
        port = server.port
        ok = requests.get(f"{server.url}/_standin/health", timeout=5)
        session = requests.Session()
        session.get(f"{server.url}/_standin/health", timeout=5)  # a kept-alive connection

    # WHEN it has been stopped
    # THEN it had answered, and nothing answers any more, not even on the kept-alive connection
    assert port > 0 and ok.json() == {"status": "ok"}
    with pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{port}/_standin/health", timeout=2)
    session.close()


def test_responses_keep_the_connection_alive_and_log_nothing(
    server: IamStandIn, http: requests.Session, capfd: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a session making several requests, including an error
    responses = [call(http, server, "signBlob", DEPLOYER, {"payload": "aGk="}) for _ in range(3)]
    responses.append(http.get(f"{server.url}/nothing-here", timeout=5))

    # THEN they are HTTP/1.1 with Content-Length, no Connection: close, and stderr stays quiet
    for response in responses:
        assert response.raw.version == 11
        assert response.headers["Content-Length"] == str(len(response.content))
        assert response.headers.get("Connection", "").lower() != "close"
    captured = capfd.readouterr()
    assert captured.err == ""


def test_command_line_entry_point_serves_the_policy_file() -> None:
    # GIVEN the module started as a process on a free port
    proc = subprocess.Popen(
        [sys.executable, "-m", "vending.local.iamcredentials", "--policy", "config/local-iam.yaml", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = re.search(r"http://\S+", line).group(0)  # type: ignore[union-attr]

        # WHEN it is asked for a token over HTTP, then sent SIGTERM
        response = requests.post(
            f"{url}/v1/projects/-/serviceAccounts/{DEPLOYER}:generateAccessToken",
            json={"scope": [CLOUD_PLATFORM]},
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
            timeout=10,
        )
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # THEN it answered and exited cleanly
    assert response.status_code == 200, response.text
    assert response.json()["accessToken"].startswith("ya29.")
    assert code == 0


def test_command_line_rejects_a_bad_policy_file(tmp_path: Path) -> None:
    # GIVEN a policy file with an unknown key
    bad = tmp_path / "iam.yaml"
    bad.write_text("project: p\nbogus: 1\n")

    # WHEN the module is started with it
    result = subprocess.run(
        [sys.executable, "-m", "vending.local.iamcredentials", "--policy", str(bad), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    # THEN it exits 2 naming the file and the key
    assert result.returncode == 2
    assert "iam.yaml: unknown key(s) ['bogus']" in result.stderr


# --------------------------------------------------------------------------- authentication and routing


def test_missing_bearer_is_401_credentials_missing(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN no Authorization header / WHEN generateAccessToken is called
    response = call(http, server, "generateAccessToken", DEPLOYER, {"scope": [CLOUD_PLATFORM]}, token=None)

    # THEN 401 UNAUTHENTICATED with Google's text and ErrorInfo
    error = assert_error(response, 401, "UNAUTHENTICATED", MISSING_CREDENTIALS)
    info = error_info(error)
    assert (info["reason"], info["domain"]) == ("CREDENTIALS_MISSING", "googleapis.com")
    assert info["metadata"]["method"] == "google.iam.credentials.v1.IAMCredentials.GenerateAccessToken"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_bearer_is_401_invalid_credentials(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN a bearer token the stand-in does not know / WHEN signBlob is called
    response = call(http, server, "signBlob", DEPLOYER, {"payload": "aGk="}, token="ya29.who-knows")

    # THEN 401 with the invalid-credentials text
    assert_error(response, 401, "UNAUTHENTICATED", INVALID_CREDENTIALS)


def test_project_other_than_dash_is_400(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN a name with a real project id instead of "-"
    url = f"{server.url}/v1/projects/{PROJECT}/serviceAccounts/{DEPLOYER}:generateAccessToken"

    # WHEN it is called
    response = http.post(url, json={"scope": [CLOUD_PLATFORM]}, headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})

    # THEN 400 INVALID_ARGUMENT
    assert_error(response, 400, "INVALID_ARGUMENT", INVALID_ARGUMENT)


@pytest.mark.parametrize("method", sorted(PERMISSIONS))
def test_unknown_target_is_404_gaia_id_not_found(server: IamStandIn, http: requests.Session, method: str) -> None:
    # GIVEN a service account that does not exist
    ghost = sa("ghost")

    # WHEN any method targets it
    response = call(
        http,
        server,
        method,
        ghost,
        {"scope": [CLOUD_PLATFORM]}
        if method == "generateAccessToken"
        else {"audience": "a"}
        if method == "generateIdToken"
        else {"payload": "e30="},
    )

    # THEN 404 with the verbatim Gaia text
    assert_error(response, 404, "NOT_FOUND", f"Not found; Gaia id not found for email {ghost}")


def test_percent_encoded_email_numeric_id_and_query_params_are_accepted(
    server: IamStandIn, http: requests.Session
) -> None:
    # GIVEN the target named three ways, with the query params GAPIC REST adds
    headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    urls = [
        f"{server.url}/v1/projects/-/serviceAccounts/{DEPLOYER.replace('@', '%40')}:generateAccessToken",
        f"{server.url}/v1/projects/-/serviceAccounts/{DEPLOYER_ID}:generateAccessToken",
        f"{server.url}/v1/projects/-/serviceAccounts/{DEPLOYER}:generateAccessToken?%24alt=json%3Benum-encoding%3Dint",
    ]

    # WHEN each is called
    responses = [http.post(u, json={"scope": [CLOUD_PLATFORM]}, headers=headers) for u in urls]

    # THEN each mints a token for the same service account
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [m.target for m in server.minted] == [DEPLOYER] * 3


def test_unknown_path_is_404_json_and_wrong_verb_is_405_json(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN an unknown path, an unknown method name and a GET on a POST-only method
    unknown = http.get(f"{server.url}/v2/whatever")
    bad_method = http.post(server.endpoint(DEPLOYER, "mintEverything"), json={})
    wrong_verb = http.get(server.endpoint(DEPLOYER, "generateAccessToken"))

    # THEN 404, 404 and 405, all in the JSON envelope
    assert_error(unknown, 404, "NOT_FOUND", "The requested URL /v2/whatever was not found on this server.")
    assert error_of(bad_method)["code"] == 404
    assert error_of(wrong_verb)["code"] == 405
    assert wrong_verb.headers["Allow"] == "POST"


def test_head_and_options_get_405_without_a_body(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN HEAD and OPTIONS on a POST-only method
    head = http.head(server.endpoint(DEPLOYER, "signBlob"))
    options = http.options(server.endpoint(DEPLOYER, "signBlob"))

    # THEN both are 405; HEAD carries no body, and the connection stays usable
    assert (head.status_code, head.content) == (405, b"")
    assert error_of(options)["code"] == 405
    assert call(http, server, "signBlob", DEPLOYER, {"payload": "aGk="}).status_code == 200


def test_chunked_request_body_is_read(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN a body sent with Transfer-Encoding: chunked
    def chunks() -> Iterator[bytes]:
        yield b'{"scope": ["https://www.googleapis.com/'
        yield b'auth/cloud-platform"], "lifetime": "60s"}'

    # WHEN it is posted, then a second request reuses the session
    response = http.post(
        server.endpoint(DEPLOYER, "generateAccessToken"),
        data=chunks(),
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}", "Content-Type": "application/json"},
    )
    again = call(http, server, "signBlob", DEPLOYER, {"payload": "aGk="})

    # THEN both succeed
    assert response.status_code == 200, response.text
    assert again.status_code == 200


# --------------------------------------------------------------------------- request bodies


@pytest.mark.parametrize("method", sorted(PERMISSIONS))
def test_unknown_json_field_is_400_with_google_text(server: IamStandIn, http: requests.Session, method: str) -> None:
    # GIVEN a body with a field the method does not have
    # WHEN it is sent
    response = call(http, server, method, DEPLOYER, {"foo": 1})

    # THEN 400 with the verbatim text and a BadRequest detail
    error = assert_error(
        response, 400, "INVALID_ARGUMENT", 'Invalid JSON payload received. Unknown name "foo": Cannot find field.'
    )
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"


def test_use_email_azp_is_accepted_only_by_generate_id_token(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN useEmailAzp (undocumented, real) on generateIdToken and on generateAccessToken
    id_response = call(http, server, "generateIdToken", DEPLOYER, {"audience": "a", "useEmailAzp": "true"})
    at_response = call(http, server, "generateAccessToken", DEPLOYER, {"scope": [CLOUD_PLATFORM], "useEmailAzp": True})

    # THEN only generateIdToken knows the field
    assert id_response.status_code == 200
    assert_error(
        at_response,
        400,
        "INVALID_ARGUMENT",
        'Invalid JSON payload received. Unknown name "useEmailAzp": Cannot find field.',
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "Invalid JSON payload received. Unexpected token."),
        ("[1, 2]", "Invalid JSON payload received. Expected an object."),
        ({"scope": CLOUD_PLATFORM}, f"Invalid value at 'scope' (TYPE_STRING), \"{CLOUD_PLATFORM}\""),
        (
            {"scope": [CLOUD_PLATFORM], "lifetime": 300},
            "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), 300",
        ),
        (
            {"scope": [CLOUD_PLATFORM], "lifetime": "1h"},
            "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), \"1h\"",
        ),
        (
            {"scope": [CLOUD_PLATFORM], "lifetime": "1.0000000001s"},
            "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), \"1.0000000001s\"",
        ),
        ({"scope": [CLOUD_PLATFORM], "delegates": "x"}, "Invalid value at 'delegates' (TYPE_STRING), \"x\""),
    ],
)
def test_malformed_bodies_are_400(server: IamStandIn, http: requests.Session, body: Any, message: str) -> None:
    # GIVEN a malformed generateAccessToken body / WHEN it is sent
    response = call(http, server, "generateAccessToken", DEPLOYER, body)

    # THEN 400 INVALID_ARGUMENT with a Google-style text
    assert_error(response, 400, "INVALID_ARGUMENT", message)


@pytest.mark.parametrize("delegates", [None, [], "absent"])
def test_delegates_may_be_null_empty_or_absent(server: IamStandIn, http: requests.Session, delegates: Any) -> None:
    # GIVEN a direct request written three ways
    body: dict[str, Any] = {"scope": [CLOUD_PLATFORM]}
    if delegates != "absent":
        body["delegates"] = delegates

    # WHEN it is sent
    response = call(http, server, "generateAccessToken", DEPLOYER, body)

    # THEN it succeeds with no delegates recorded
    assert response.status_code == 200
    assert server.minted[-1].delegates == ()


def test_string_booleans_are_accepted_and_bad_booleans_rejected(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN includeEmail as "true", "false" and "yes"
    yes = call(http, server, "generateIdToken", DEPLOYER, {"audience": "a", "includeEmail": "true"})
    no = call(http, server, "generateIdToken", DEPLOYER, {"audience": "a", "includeEmail": "false"})
    bad = call(http, server, "generateIdToken", DEPLOYER, {"audience": "a", "includeEmail": "yes"})

    # THEN the strings act as booleans and anything else is 400
    assert jwt_parts(yes.json()["token"])[1]["email"] == DEPLOYER
    assert "email" not in jwt_parts(no.json()["token"])[1]
    assert_error(bad, 400, "INVALID_ARGUMENT", "Invalid value at 'include_email' (TYPE_BOOL), \"yes\"")


# --------------------------------------------------------------------------- permissions and delegation


@pytest.mark.parametrize("method", sorted(PERMISSIONS))
def test_caller_without_token_creator_is_403_with_verbatim_text(
    server: IamStandIn, http: requests.Session, method: str
) -> None:
    # GIVEN a known caller with no grant on the target
    body = (
        {"scope": [CLOUD_PLATFORM]}
        if method == "generateAccessToken"
        else {"audience": "a"}
        if method == "generateIdToken"
        else {"payload": "e30="}
    )

    # WHEN it calls the method
    response = call(http, server, method, DEPLOYER, body, token=NOBODY_TOKEN)

    # THEN 403 with the method's permission in the text and the ErrorInfo
    permission = PERMISSIONS[method]
    error = assert_error(
        response, 403, "PERMISSION_DENIED", f"Permission '{permission}' denied on resource (or it may not exist)."
    )
    info = error_info(error)
    assert (info["reason"], info["domain"], info["metadata"]) == (
        "IAM_PERMISSION_DENIED",
        "iam.googleapis.com",
        {"permission": permission},
    )
    assert server.minted == []


@pytest.mark.parametrize(
    ("delegates", "target"),
    [
        ([HOP], PROD),  # bare email
        ([f"projects/-/serviceAccounts/{HOP}"], PROD),  # resource name
        ([HOP, f"projects/-/serviceAccounts/{HOP2}"], DEPLOYER),  # two hops
    ],
)
def test_delegation_chain_with_every_hop_granted_succeeds(
    server: IamStandIn, http: requests.Session, delegates: list[str], target: str
) -> None:
    # GIVEN ci-runner -> delegates -> target, each hop holding Token Creator on the next
    # WHEN ci-runner asks for an access token of the target through the chain
    response = call(
        http, server, "generateAccessToken", target, {"scope": [CLOUD_PLATFORM], "delegates": delegates}, token=CI_TOKEN
    )

    # THEN it is minted and recorded with the canonical delegate names
    assert response.status_code == 200, response.text
    record = server.minted[-1]
    assert (record.caller, record.target) == (CI, target)
    assert record.delegates == tuple(f"projects/-/serviceAccounts/{d.rsplit('/', 1)[-1]}" for d in delegates)


@pytest.mark.parametrize(
    ("delegates", "target", "why"),
    [
        ([], PROD, "ci-runner has no grant on prod-admin itself"),
        ([DEPLOYER], PROD, "ci-runner cannot delegate through demo-deployer"),
        ([HOP], DEPLOYER, "delegate-hop has no grant on demo-deployer"),
        ([HOP, HOP2], PROD, "second-hop has no grant on prod-admin"),
    ],
)
@pytest.mark.parametrize("method", sorted(PERMISSIONS))
def test_delegation_chain_with_a_missing_hop_is_403(
    server: IamStandIn, http: requests.Session, delegates: list[str], target: str, why: str, method: str
) -> None:
    # GIVEN a chain with one hop lacking Token Creator (see ``why``)
    body: dict[str, Any] = {"delegates": delegates}
    body.update(
        {"scope": [CLOUD_PLATFORM]}
        if method == "generateAccessToken"
        else {"audience": "a"}
        if method == "generateIdToken"
        else {"payload": "e30="}
    )

    # WHEN ci-runner calls through it
    response = call(http, server, method, target, body, token=CI_TOKEN)

    # THEN 403 naming the method's permission, and nothing is minted
    assert_error(
        response,
        403,
        "PERMISSION_DENIED",
        f"Permission '{PERMISSIONS[method]}' denied on resource (or it may not exist).",
    )
    assert server.minted == []


def test_unknown_or_malformed_delegate_is_rejected(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN a delegate that does not exist and one with a project id instead of "-"
    ghost = call(http, server, "generateAccessToken", PROD, {"scope": [CLOUD_PLATFORM], "delegates": [sa("ghost")]})
    project = call(
        http,
        server,
        "generateAccessToken",
        PROD,
        {"scope": [CLOUD_PLATFORM], "delegates": [f"projects/{PROJECT}/serviceAccounts/{HOP}"]},
    )

    # THEN 404 (like an unknown target) and 400
    assert_error(ghost, 404, "NOT_FOUND", f"Not found; Gaia id not found for email {sa('ghost')}")
    assert_error(project, 400, "INVALID_ARGUMENT", INVALID_ARGUMENT)


def test_bot_signs_jwt_as_itself_only(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN the chat-ops bot calling with its own token
    payload = json.dumps({"iss": BOT, "sub": "approve", "iat": int(time.time()), "exp": int(time.time()) + 300})

    # WHEN it signs as itself and as another service account
    own = call(http, server, "signJwt", BOT, {"payload": payload}, token=BOT_TOKEN)
    other = call(http, server, "signJwt", DEPLOYER, {"payload": payload}, token=BOT_TOKEN)

    # THEN only the self-signature is allowed
    assert own.status_code == 200
    assert other.status_code == 403


def test_caller_added_at_runtime_is_recognised(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN a new bearer token mapped to the bot, through the Python API and over HTTP
    server.add_caller("fresh-bot-token", BOT)
    admin = http.post(f"{server.url}/_standin/callers", json={"token": "http-bot-token", "principal": BOT})

    # WHEN each signs a JWT as the bot
    first = call(http, server, "signJwt", BOT, {"payload": "{}"}, token="fresh-bot-token")
    second = call(http, server, "signJwt", BOT, {"payload": "{}"}, token="http-bot-token")

    # THEN both authenticate as the bot
    assert admin.status_code == 200
    assert (first.status_code, second.status_code) == (200, 200)
    assert [m.caller for m in server.minted] == [BOT, BOT]


def test_minted_access_token_authenticates_as_its_service_account(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN an access token of delegate-hop (which holds Token Creator on prod-admin), and one without cloud-platform
    hop_token = call(http, server, "generateAccessToken", HOP, {"scope": [CLOUD_PLATFORM]}).json()["accessToken"]
    narrow = call(
        http, server, "generateAccessToken", HOP, {"scope": ["https://www.googleapis.com/auth/devstorage.read_only"]}
    )

    # WHEN each is used as the bearer to mint for prod-admin
    allowed = call(http, server, "generateAccessToken", PROD, {"scope": [CLOUD_PLATFORM]}, token=hop_token)
    scoped_out = call(
        http, server, "generateAccessToken", PROD, {"scope": [CLOUD_PLATFORM]}, token=narrow.json()["accessToken"]
    )

    # THEN the first acts as delegate-hop, the second lacks the scope
    assert allowed.status_code == 200
    assert server.minted[-1].caller == HOP
    assert_error(scoped_out, 403, "PERMISSION_DENIED", "Request had insufficient authentication scopes.")


# --------------------------------------------------------------------------- generateAccessToken


@pytest.mark.parametrize("scope", ["absent", None, []])
def test_missing_or_empty_scope_is_400(server: IamStandIn, http: requests.Session, scope: Any) -> None:
    # GIVEN a body without a usable scope
    body: dict[str, Any] = {"lifetime": "300s"}
    if scope != "absent":
        body["scope"] = scope

    # WHEN it is sent
    response = call(http, server, "generateAccessToken", DEPLOYER, body)

    # THEN 400 with Google's generic text
    assert_error(response, 400, "INVALID_ARGUMENT", INVALID_ARGUMENT)


def test_empty_string_scope_is_accepted_and_bogus_scope_rejected(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN scope [""] (real API: treated as cloud-platform) and a bogus scope string
    empty = call(http, server, "generateAccessToken", DEPLOYER, {"scope": [""]})
    bogus = call(http, server, "generateAccessToken", DEPLOYER, {"scope": ["not a scope"]})

    # THEN 200 and 400
    assert empty.status_code == 200
    assert_error(bogus, 400, "INVALID_ARGUMENT", INVALID_ARGUMENT)


FROZEN = "2026-03-01T10:00:00Z"


@pytest.mark.parametrize(
    ("target", "lifetime", "expire"),
    [
        (DEPLOYER, "1s", "2026-03-01T10:00:01Z"),
        (DEPLOYER, "300s", "2026-03-01T10:05:00Z"),
        (DEPLOYER, "3.5s", "2026-03-01T10:00:03Z"),
        (DEPLOYER, "3600s", "2026-03-01T11:00:00Z"),
        (DEPLOYER, None, "2026-03-01T11:00:00Z"),
        (LONG, "3601s", "2026-03-01T11:00:01Z"),
        (LONG, "43200s", "2026-03-01T22:00:00Z"),
    ],
)
def test_lifetime_within_limits_sets_expire_time(
    server: IamStandIn, http: requests.Session, target: str, lifetime: str | None, expire: str
) -> None:
    # GIVEN a frozen clock and a lifetime within the target's limit
    body: dict[str, Any] = {"scope": [CLOUD_PLATFORM]}
    if lifetime is not None:
        body["lifetime"] = lifetime

    # WHEN an access token is minted
    with freeze_time(FROZEN, tick=False):
        response = call(http, server, "generateAccessToken", target, body)

    # THEN expireTime is now + lifetime in whole seconds, and a ya29 token is returned
    assert response.status_code == 200, response.text
    assert response.json()["expireTime"] == expire
    assert re.fullmatch(r"ya29\.[A-Za-z0-9._-]+", response.json()["accessToken"])
    assert set(response.json()) == {"accessToken", "expireTime"}


@pytest.mark.parametrize(
    ("target", "lifetime", "message"),
    [
        (DEPLOYER, "0s", "Lifetime of access token must be larger then zero."),
        (DEPLOYER, "0.000000000s", "Lifetime of access token must be larger then zero."),
        (DEPLOYER, "3600.000000001s", TOO_LONG.format(DEPLOYER)),
        (DEPLOYER, "3601s", TOO_LONG.format(DEPLOYER)),
        (DEPLOYER, "43200s", TOO_LONG.format(DEPLOYER)),
        (LONG, "43201s", TOO_LONG.format(LONG)),
    ],
)
def test_lifetime_out_of_limits_is_400(
    server: IamStandIn, http: requests.Session, target: str, lifetime: str, message: str
) -> None:
    # GIVEN a lifetime of zero or above the target's maximum (3600 s, or 43200 s with the extension)
    # WHEN an access token is requested
    response = call(http, server, "generateAccessToken", target, {"scope": [CLOUD_PLATFORM], "lifetime": lifetime})

    # THEN 400 with the verbatim text
    assert_error(response, 400, "INVALID_ARGUMENT", message)


def test_google_auth_impersonated_credentials_refresh(server: IamStandIn) -> None:
    # GIVEN google-auth impersonated credentials pointed at the stand-in
    source = google.oauth2.credentials.Credentials(token=SERVICE_TOKEN)
    creds = impersonated_credentials.Credentials(
        source_credentials=source,
        target_principal=DEPLOYER,
        target_scopes=[CLOUD_PLATFORM],
        lifetime=500,
        iam_endpoint_override=server.endpoint(DEPLOYER, "generateAccessToken"),
    )

    # WHEN they refresh
    creds.refresh(google.auth.transport.requests.Request())

    # THEN the token and expiry are the ones the stand-in minted
    record = server.minted[-1]
    assert creds.token == record.credential
    assert creds.expiry == record.expire_time.replace(tzinfo=None)  # type: ignore[union-attr]
    assert 495 <= (record.expire_time - record.issued_at).total_seconds() <= 500  # type: ignore[operator]


def test_google_auth_impersonated_credentials_surface_403_as_refresh_error(server: IamStandIn) -> None:
    # GIVEN impersonated credentials for a caller without a grant
    creds = impersonated_credentials.Credentials(
        source_credentials=google.oauth2.credentials.Credentials(token=NOBODY_TOKEN),
        target_principal=DEPLOYER,
        target_scopes=[CLOUD_PLATFORM],
        lifetime=500,
        iam_endpoint_override=server.endpoint(DEPLOYER, "generateAccessToken"),
    )

    # WHEN they refresh
    with pytest.raises(google.auth.exceptions.RefreshError) as caught:
        creds.refresh(google.auth.transport.requests.Request())

    # THEN the raw JSON error body is carried, as with the real API
    assert caught.value.args[0] == "Unable to acquire impersonated credentials"
    assert json.loads(caught.value.args[1])["error"]["status"] == "PERMISSION_DENIED"


def test_google_auth_sign_bytes_and_id_token_credentials_work(
    server: IamStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN google-auth's signBlob and generateIdToken endpoint templates pointed at the stand-in
    monkeypatch.setattr(
        google.auth.iam, "_IAM_SIGN_ENDPOINT", f"{server.url}/v1/projects/-/serviceAccounts/{{}}:signBlob"
    )
    monkeypatch.setattr(
        google.auth.iam, "_IAM_IDTOKEN_ENDPOINT", f"{server.url}/v1/projects/-/serviceAccounts/{{}}:generateIdToken"
    )
    target = impersonated_credentials.Credentials(
        source_credentials=google.oauth2.credentials.Credentials(token=SERVICE_TOKEN),
        target_principal=BOT,
        target_scopes=[CLOUD_PLATFORM],
        lifetime=500,
        iam_endpoint_override=server.endpoint(BOT, "generateAccessToken"),
    )
    id_creds = impersonated_credentials.IDTokenCredentials(
        target, target_audience="https://svc.example", include_email=True
    )

    # WHEN google-auth signs bytes and fetches an ID token
    signature = target.sign_bytes(b"message")
    id_creds.refresh(google.auth.transport.requests.Request())

    # THEN the signature verifies with the published key and the ID token carries the email
    pem = next(iter(requests.get(server.x509_url(BOT), timeout=5).json().values()))
    rsa_key_from_cert(pem).verify(signature, b"message", padding.PKCS1v15(), hashes.SHA256())
    assert jwt_parts(str(id_creds.token))[1]["email"] == BOT
    assert id_creds.expiry is not None
    assert [m.method for m in server.minted] == ["signBlob", "generateIdToken"]


# --------------------------------------------------------------------------- generateIdToken


def test_id_token_verifies_against_the_oauth_certs(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN an ID token for demo-deployer without the email
    response = call(http, server, "generateIdToken", DEPLOYER, {"audience": "https://svc.example"})
    token = response.json()["token"]

    # WHEN it is verified with google-auth against /oauth2/v1/certs
    claims = id_token.verify_token(
        token,
        google.auth.transport.requests.Request(),
        audience="https://svc.example",
        certs_url=server.oauth_certs_url,
    )

    # THEN the claims are Google's: numeric sub/azp, 1 h, no email
    assert set(response.json()) == {"token"}
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["aud"] == "https://svc.example"
    assert claims["sub"] == claims["azp"] == DEPLOYER_ID
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 60
    assert "email" not in claims and "email_verified" not in claims
    header = jwt_parts(token)[0]
    assert header["alg"] == "RS256" and header["kid"] in http.get(server.oauth_certs_url).json()


def test_id_token_with_email_and_email_azp_verifies_with_pyjwt_jwks(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN an ID token with includeEmail and useEmailAzp
    token = call(
        http, server, "generateIdToken", PROD, {"audience": "aud-1", "includeEmail": True, "useEmailAzp": True}
    ).json()["token"]

    # WHEN it is verified with PyJWT against /oauth2/v3/certs (JWKS)
    key = pyjwt.PyJWKClient(f"{server.url}/oauth2/v3/certs").get_signing_key_from_jwt(token)
    claims = pyjwt.decode(token, key.key, algorithms=["RS256"], audience="aud-1", issuer="https://accounts.google.com")

    # THEN email, email_verified and the email azp are present, sub stays numeric
    assert claims["email"] == PROD and claims["email_verified"] is True
    assert claims["azp"] == PROD
    assert claims["sub"] == derive_unique_id(PROD)


def test_id_token_times_follow_the_frozen_clock(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN a frozen clock
    with freeze_time(FROZEN, tick=False):
        # WHEN an ID token is minted
        token = call(http, server, "generateIdToken", DEPLOYER, {"audience": "a"}).json()["token"]

    # THEN iat is the frozen now and exp one hour later
    claims = jwt_parts(token)[1]
    assert claims["iat"] == 1772359200
    assert claims["exp"] == 1772359200 + 3600


@pytest.mark.parametrize("body", [{}, {"audience": ""}, {"includeEmail": True}])
def test_id_token_without_audience_is_400(server: IamStandIn, http: requests.Session, body: dict[str, Any]) -> None:
    # GIVEN no audience / WHEN an ID token is requested
    response = call(http, server, "generateIdToken", DEPLOYER, body)

    # THEN 400 INVALID_ARGUMENT
    assert_error(response, 400, "INVALID_ARGUMENT", INVALID_ARGUMENT)


# --------------------------------------------------------------------------- signJwt


def test_signed_jwt_verifies_with_google_auth_x509_and_pyjwt_jwk(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN a claim set with iat and exp
    now = int(time.time())
    payload = json.dumps(
        {"iss": DEPLOYER, "aud": "https://example.test", "iat": now, "exp": now + 600, "x": [1, "two"]}
    )

    # WHEN signJwt signs it
    response = call(http, server, "signJwt", DEPLOYER, {"payload": payload})
    body = response.json()
    signed = body["signedJwt"]

    # THEN google-auth verifies it with the x509 map, PyJWT with the JWK set, and the payload is unchanged
    certs = http.get(server.x509_url(DEPLOYER)).json()
    claims = google.auth.jwt.decode(signed, certs=certs, audience="https://example.test")
    assert claims == json.loads(payload)
    jwk_key = pyjwt.PyJWKClient(server.jwk_url(DEPLOYER)).get_signing_key_from_jwt(signed)
    assert pyjwt.decode(signed, jwk_key.key, algorithms=["RS256"], audience="https://example.test") == json.loads(
        payload
    )
    header, _ = jwt_parts(signed)
    assert header == {"alg": "RS256", "kid": body["keyId"], "typ": "JWT"}
    assert re.fullmatch(r"[0-9a-f]{40}", body["keyId"])
    assert set(body) == {"keyId", "signedJwt"}


@pytest.mark.parametrize(
    ("offset", "ok"),
    [(-1, False), (0, True), (43200, True), (43201, False)],
)
def test_signed_jwt_exp_boundaries(server: IamStandIn, http: requests.Session, offset: int, ok: bool) -> None:
    # GIVEN a frozen clock and exp at now + offset
    now = 1772359200
    payload = json.dumps({"sub": "x", "exp": now + offset})

    # WHEN signJwt is called
    with freeze_time(FROZEN, tick=False):
        response = call(http, server, "signJwt", DEPLOYER, {"payload": payload})

    # THEN exp must be neither in the past nor more than 12 h away
    if ok:
        assert response.status_code == 200
        assert server.minted[-1].expire_time.timestamp() == now + offset  # type: ignore[union-attr]
    else:
        error = assert_error(response, 400, "INVALID_ARGUMENT", error_of(response)["message"])
        assert "'exp'" in error["message"]


@pytest.mark.parametrize(
    "payload",
    ["not json", "[1, 2]", '"a string"', '{"exp": "1772359200"}', '{"exp": 1772359200.5}', '{"exp": true}'],
)
def test_signed_jwt_rejects_non_object_payloads_and_non_integer_exp(
    server: IamStandIn, http: requests.Session, payload: str
) -> None:
    # GIVEN a payload that is not a JSON object, or whose exp is not an integer
    # WHEN signJwt is called
    with freeze_time(FROZEN, tick=False):
        response = call(http, server, "signJwt", DEPLOYER, {"payload": payload})

    # THEN 400 INVALID_ARGUMENT with an explanatory message
    error = error_of(response)
    assert (response.status_code, error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"].startswith("Invalid JWT payload: ")


def test_signed_jwt_without_exp_is_signed_unchanged(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN a claim set without exp, written with unusual spacing
    payload = '{ "sub" : "no-exp" }'

    # WHEN signJwt signs it
    signed = call(http, server, "signJwt", DEPLOYER, {"payload": payload}).json()["signedJwt"]

    # THEN the payload segment is exactly the caller's bytes
    assert b64url_decode(signed.split(".")[1]).decode() == payload
    assert server.minted[-1].expire_time is None


# --------------------------------------------------------------------------- signBlob


def test_signed_blob_verifies_with_the_x509_public_key(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN some bytes
    blob = b"\x00\x01 arbitrary bytes \xff"

    # WHEN signBlob signs them
    body = call(http, server, "signBlob", DEPLOYER, {"payload": base64.b64encode(blob).decode()}).json()

    # THEN the signature verifies (PKCS#1 v1.5, SHA-256) with the certificate the x509 endpoint publishes
    pem = http.get(server.x509_url(DEPLOYER)).json()[body["keyId"]]
    public_key = rsa_key_from_cert(pem)
    signature = base64.b64decode(body["signedBlob"])
    public_key.verify(signature, blob, padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(InvalidSignature):
        public_key.verify(signature, blob + b"!", padding.PKCS1v15(), hashes.SHA256())
    assert set(body) == {"keyId", "signedBlob"}


def test_signed_blob_accepts_url_safe_base64_and_rejects_garbage(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN a payload in URL-safe base64 without padding, one that is not base64, and an empty one
    url_safe = base64.urlsafe_b64encode(b"\xfb\xff\xfe").decode().rstrip("=")
    good = call(http, server, "signBlob", DEPLOYER, {"payload": url_safe})
    garbage = call(http, server, "signBlob", DEPLOYER, {"payload": "***"})
    empty = call(http, server, "signBlob", DEPLOYER, {"payload": ""})

    # THEN only the first is signed
    assert good.status_code == 200
    assert_error(garbage, 400, "INVALID_ARGUMENT", "Invalid value at 'payload' (TYPE_BYTES), \"***\"")
    assert_error(empty, 400, "INVALID_ARGUMENT", INVALID_ARGUMENT)


# --------------------------------------------------------------------------- public keys


def test_public_key_endpoints_agree_and_are_cacheable(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN the four per-account key endpoints
    x509_map = http.get(server.x509_url(BOT))
    robot = http.get(f"{server.url}/robot/v1/metadata/x509/{BOT}")
    jwks = http.get(server.jwk_url(BOT))
    raw = http.get(f"{server.url}/service_accounts/v1/metadata/raw/{BOT}")

    # THEN they publish the same key, with public Cache-Control
    kid = next(iter(x509_map.json()))
    assert robot.json() == x509_map.json()
    assert [k["kid"] for k in jwks.json()["keys"]] == [kid]
    assert {"kty", "alg", "use", "kid", "n", "e"} == set(jwks.json()["keys"][0])
    raw_key = raw.json()["keyvalues"][0]
    modulus = rsa_key_from_cert(x509_map.json()[kid]).public_numbers().n
    assert int.from_bytes(base64.b64decode(raw_key["modulus"]), "big") == modulus
    assert (raw_key["algorithm"], raw_key["exponent"], raw_key["keyid"]) == ("RSA", "AQAB", kid)
    for response in (x509_map, robot, jwks, raw):
        assert response.status_code == 200
        assert re.fullmatch(r"public, max-age=\d+.*", response.headers["Cache-Control"])


def test_public_keys_of_unknown_account_are_404(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN an account that does not exist / WHEN its keys are fetched
    response = http.get(server.x509_url(sa("ghost")))

    # THEN 404 JSON
    assert error_of(response)["code"] == 404


def test_keys_persist_in_key_dir_across_restarts(policy: StandInPolicy, tmp_path: Path) -> None:
    # GIVEN a stand-in with a key directory that has signed once
    with IamStandIn(policy, key_dir=tmp_path) as first:
        first_kid = requests.get(first.x509_url(DEPLOYER), timeout=5).json()

    # WHEN another stand-in starts on the same directory
    with IamStandIn(policy, key_dir=tmp_path) as second:
        second_kid = requests.get(second.x509_url(DEPLOYER), timeout=5).json()

    # THEN it publishes the same key, kept as a private PEM file
    assert list(first_kid) == list(second_kid)
    pem = tmp_path / f"{DEPLOYER}.pem"
    assert pem.read_bytes().startswith(b"-----BEGIN " + b"PRIVATE KEY-----")  # PKCS#8 PEM
    assert pem.stat().st_mode & 0o077 == 0


def test_rotated_key_signs_new_requests_while_the_old_stays_published(
    server: IamStandIn, http: requests.Session
) -> None:
    # GIVEN a key id used before a rotation (the runtime granted Token Creator on second-hop for this test)
    server.grant_token_creator(RUNTIME, HOP2)
    before = call(http, server, "signBlob", HOP2, {"payload": "aGk="}).json()["keyId"]

    # WHEN the key is rotated and another blob signed
    new_kid = server.rotate_key(HOP2)
    after = call(http, server, "signBlob", HOP2, {"payload": "aGk="}).json()["keyId"]

    # THEN the new key signs and both are published
    assert after == new_kid != before
    assert set(http.get(server.x509_url(HOP2)).json()) == {before, after}


def test_allowed_locations_is_unrestricted(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN the trust-boundary lookup / WHEN called for an existing account
    response = http.get(
        f"{server.url}/v1/projects/-/serviceAccounts/{DEPLOYER}/allowedLocations",
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    )

    # THEN no restriction
    assert response.json() == {"locations": [], "encodedLocations": "0x0"}


# --------------------------------------------------------------------------- faults


def test_quota_fault_is_429_with_retry_after_then_recovers(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN one 429 armed
    server.set_fault(status=429, count=1, retry_after_s=7)

    # WHEN two requests are made
    first = call(http, server, "generateAccessToken", DEPLOYER, {"scope": [CLOUD_PLATFORM]})
    second = call(http, server, "generateAccessToken", DEPLOYER, {"scope": [CLOUD_PLATFORM]})

    # THEN the first is RESOURCE_EXHAUSTED with Retry-After and the quota text, the second succeeds
    error = error_of(first)
    assert (first.status_code, error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert first.headers["Retry-After"] == "7"
    assert re.fullmatch(
        r"Quota exceeded for quota metric '.+' and limit '.+' of service "
        r"'iamcredentials\.googleapis\.com' for consumer 'project_number:\d+'\.",
        error["message"],
    )
    info = error_info(error)
    assert (info["reason"], info["domain"]) == ("RATE_LIMIT_EXCEEDED", "googleapis.com")
    assert info["metadata"]["service"] == "iamcredentials.googleapis.com"
    assert second.status_code == 200
    assert server.calls["generateAccessToken"] == 2
    assert len(server.minted) == 1


@pytest.mark.parametrize(
    ("status", "name", "message"),
    [
        (500, "INTERNAL", "Internal error encountered."),
        (503, "UNAVAILABLE", "The service is currently unavailable."),
    ],
)
def test_server_fault_for_count_then_recovery(
    server: IamStandIn, http: requests.Session, status: int, name: str, message: str
) -> None:
    # GIVEN two failures armed
    server.set_fault(status=status, count=2)

    # WHEN three signBlob requests are made
    responses = [call(http, server, "signBlob", DEPLOYER, {"payload": "aGk="}) for _ in range(3)]

    # THEN two fail with Google's text, the third succeeds, and every call is counted
    for response in responses[:2]:
        assert_error(response, status, name, message)
    assert responses[2].status_code == 200
    assert server.calls["signBlob"] == 3


def test_fault_until_cleared_and_limited_to_some_methods(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN a 503 on signBlob only, with no count
    server.set_fault(status=503, methods={"signBlob"})

    # WHEN signBlob is called twice, generateAccessToken once, then the fault is cleared
    blobs = [call(http, server, "signBlob", DEPLOYER, {"payload": "aGk="}).status_code for _ in range(2)]
    token = call(http, server, "generateAccessToken", DEPLOYER, {"scope": [CLOUD_PLATFORM]}).status_code
    server.clear_faults()
    after = call(http, server, "signBlob", DEPLOYER, {"payload": "aGk="}).status_code

    # THEN only signBlob failed, until cleared
    assert (blobs, token, after) == ([503, 503], 200, 200)


def test_latency_is_added_to_every_response(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN 150 ms of added latency
    server.set_latency(150)

    # WHEN a request is made, then latency is removed and another made
    started = time.perf_counter()
    slow = call(http, server, "signBlob", DEPLOYER, {"payload": "aGk="})
    slow_s = time.perf_counter() - started
    server.set_latency(0)
    started = time.perf_counter()
    call(http, server, "signBlob", DEPLOYER, {"payload": "aGk="})
    fast_s = time.perf_counter() - started

    # THEN the first took at least the latency (a lower bound holds on a loaded machine), and the
    # stand-in no longer adds any (its own word, not a wall-clock bound)
    assert slow.status_code == 200
    assert slow_s >= 0.15
    assert server.faults["latencyMs"] in (0, None) and fast_s >= 0


def test_hang_times_out_the_client_then_service_resumes(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN one request set to hang for 5 s
    server.set_hang(5, count=1)

    # WHEN a client with a 0.3 s timeout calls, then calls again
    started = time.perf_counter()
    with pytest.raises(requests.exceptions.ReadTimeout):
        call(http, server, "generateAccessToken", DEPLOYER, {"scope": [CLOUD_PLATFORM]}, timeout=0.3)
    waited = time.perf_counter() - started
    retry = call(http, server, "generateAccessToken", DEPLOYER, {"scope": [CLOUD_PLATFORM]})

    # THEN the first timed out promptly and the second succeeded
    assert waited < 2
    assert retry.status_code == 200
    assert server.calls["generateAccessToken"] == 2


def test_hang_closes_without_answering_and_does_not_block_stop(policy: StandInPolicy) -> None:
    # GIVEN a stand-in whose requests hang for 30 s, and a client waiting on it
    server = IamStandIn(policy).start()
    server.set_hang(30)
    outcome: list[BaseException | requests.Response] = []

    def client() -> None:
        try:
            outcome.append(
                requests.post(
                    server.endpoint(DEPLOYER, "signBlob"),
                    json={"payload": "aGk="},
                    headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
                    timeout=20,
                )
            )
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 5
    while server.calls["signBlob"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)

    # WHEN the stand-in is stopped
    started = time.perf_counter()
    server.stop()
    stop_s = time.perf_counter() - started
    thread.join(timeout=10)

    # THEN stop is quick and the client saw the connection closed, never an answer
    assert stop_s < 2
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)


def test_faults_calls_minted_and_reset_over_http(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN a 503 armed over HTTP
    armed = http.post(f"{server.url}/_standin/faults", json={"status": 503, "count": 1, "latency_ms": 1})

    # WHEN two calls are made, then the records are read and reset over HTTP
    failed = call(http, server, "signJwt", BOT, {"payload": "{}"}, token=BOT_TOKEN)
    ok = call(http, server, "signJwt", BOT, {"payload": "{}"}, token=BOT_TOKEN)
    calls = http.get(f"{server.url}/_standin/calls").json()
    minted = http.get(f"{server.url}/_standin/minted").json()["minted"]
    with_secret = http.get(f"{server.url}/_standin/minted?include_credentials=true").json()["minted"]
    reset = http.post(f"{server.url}/_standin/reset")
    after = http.get(f"{server.url}/_standin/minted").json()["minted"]
    faults = http.get(f"{server.url}/_standin/faults").json()
    invalid = http.post(f"{server.url}/_standin/faults", json={"status": 418})

    # THEN the fault fired once, the records match, the credential is shown only on request, reset empties all
    assert armed.json()["fault"]["status"] == 503
    assert (failed.status_code, ok.status_code) == (503, 200)
    assert calls == {"calls": {"signJwt": 2}}
    assert len(minted) == 1 and "credential" not in minted[0]
    assert minted[0]["method"] == "signJwt" and minted[0]["target"] == BOT and minted[0]["caller"] == BOT
    assert with_secret[0]["credential"] == ok.json()["signedJwt"]
    assert with_secret[0]["sha256"] == hashlib.sha256(ok.json()["signedJwt"].encode()).hexdigest()
    assert reset.status_code == 200 and after == []
    assert faults == {"fault": None, "latencyMs": 0.0}
    assert invalid.status_code == 400
    assert server.calls == {}


# --------------------------------------------------------------------------- minted records


def test_minted_records_every_credential_with_its_hash(server: IamStandIn, http: requests.Session) -> None:
    # GIVEN one credential of each kind, one through a delegate
    with freeze_time(FROZEN, tick=False):
        at = call(
            http,
            server,
            "generateAccessToken",
            PROD,
            {"scope": [CLOUD_PLATFORM], "lifetime": "600s", "delegates": [HOP]},
            token=CI_TOKEN,
            headers={"X-Goog-Request-Reason": "issuance 42"},
        ).json()
        idt = call(http, server, "generateIdToken", DEPLOYER, {"audience": "a"}).json()
        blob = call(http, server, "signBlob", DEPLOYER, {"payload": "aGk="}).json()
        sjwt = call(http, server, "signJwt", DEPLOYER, {"payload": '{"exp": 1772359500}'}).json()

    # WHEN the records are read
    minted = server.minted

    # THEN each record names method, target, delegates, caller and times, hashes the raw credential and hides it from repr
    frozen = "2026-03-01T10:00:00+00:00"
    assert [(m.method, m.target, m.delegates, m.caller) for m in minted] == [
        ("generateAccessToken", PROD, (f"projects/-/serviceAccounts/{HOP}",), CI),
        ("generateIdToken", DEPLOYER, (), RUNTIME),
        ("signBlob", DEPLOYER, (), RUNTIME),
        ("signJwt", DEPLOYER, (), RUNTIME),
    ]
    assert [m.credential for m in minted] == [at["accessToken"], idt["token"], blob["signedBlob"], sjwt["signedJwt"]]
    assert all(m.sha256 == hashlib.sha256(m.credential.encode()).hexdigest() for m in minted)
    assert all(m.issued_at.isoformat() == frozen for m in minted)
    assert [m.expire_time.isoformat() if m.expire_time else None for m in minted] == [
        "2026-03-01T10:10:00+00:00",
        "2026-03-01T11:00:00+00:00",
        None,
        "2026-03-01T10:05:00+00:00",
    ]
    assert [m.key_id for m in minted][2:] == [blob["keyId"], sjwt["keyId"]]
    assert [(m.scopes, m.audience, m.request_reason) for m in minted] == [
        ((CLOUD_PLATFORM,), None, "issuance 42"),
        ((), "a", None),
        ((), None, None),
        ((), None, None),
    ]
    assert all(m.credential not in repr(m) for m in minted)
    assert isinstance(minted[0], MintedCredential)
