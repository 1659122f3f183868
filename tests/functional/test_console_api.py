"""The console's API and sessions through the HTTP function (issue 15).

- ``GET /v1/requests``: a requester's own, an approver's inbox (pending first), an auditor's all;
  filters and paging across the merged queries.
- ``GET /v1/entitlements`` and ``GET /v1/whoami``: what a caller may ask for, its roles, the
  break-glass access ACTIVE now.
- Console sessions: sign-in with an ID token (verified and spent like a caller token), the cookie's
  attributes, CSRF on every state-changing call, no session on vends or the kill switch, forged,
  expired and ended sessions refused, cross-site sign-in refused, development sign-in only where a
  development issuer is configured.
- The console's files: security headers, no inline script or style, no browser storage.
- A refused bot approval publishes ``approval.rejected``.

Entitlement ``prod-admin`` (tests/support/app.py): principals ``*@example.com``, approvers
alice/bob/carol (quorum 2); ``prod-break-glass``: oncall@example.com, self-approved.
"""

from __future__ import annotations

import datetime as dt
import re
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

import main
from tests.support.app import DEMO_SA, PROD_SA, ServiceHarness
from tests.support.bots import Bot, cloud_event
from vending import clock
from vending.console import STATIC_DIR, STRICT_CSP
from vending.sessions import COOKIE, CSRF_HEADER

REQUESTER = "dave@example.com"
OTHER = "erin@example.com"
ALICE, BOB = "alice@example.com", "bob@example.com"
AUDITOR = "auditor@example.com"
WHY = "TICKET-42: rotate the database password"


def create(
    h: ServiceHarness, subject: str = REQUESTER, entitlement: str = "prod-admin", justification: str = WHY
) -> str:
    resp = h.post("/v1/requests", {"entitlement": entitlement, "justification": justification}, subject=subject)
    assert resp.status_code == 200, resp.get_json()
    return str(resp.get_json()["id"])


def ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.get_json()
    return [r["id"] for r in resp.get_json()["requests"]]


def reason(resp: Any) -> str:
    return str(resp.get_json()["error"]["reason"])


# -- GET /v1/requests ---------------------------------------------------------------------------------------


def test_a_requester_lists_their_own_requests_newest_first(harness: ServiceHarness) -> None:
    # GIVEN two requests of dave and one of erin
    first, second = create(harness), create(harness)
    create(harness, OTHER)
    # WHEN dave lists (role defaults to requester)
    listed = ids(harness.get("/v1/requests", subject=REQUESTER))
    # THEN only his, newest first, with the API's request shape
    assert listed == [second, first]
    one = harness.get("/v1/requests", subject=REQUESTER).get_json()["requests"][0]
    assert one["requester"] == f"ci/{REQUESTER}" and one["state"] == "APPROVAL_AWAITED"


def test_an_approver_sees_pending_requests_first_and_never_other_entitlements(harness: ServiceHarness) -> None:
    # GIVEN an ACTIVE request (older) and a pending one (newer) of prod-admin, and a break-glass one
    active = create(harness)
    for who in (ALICE, BOB):
        assert harness.post(f"/v1/requests/{active}:approve", subject=who).status_code == 200
    denied = create(harness, OTHER)
    assert harness.post(f"/v1/requests/{denied}:deny", {"comment": "no ticket"}, subject=BOB).status_code == 200
    pending = create(harness)
    create(harness, "oncall@example.com", "prod-break-glass", "INC-7: database on fire")
    # WHEN alice lists her inbox
    listed = ids(harness.get("/v1/requests", subject=ALICE, query={"role": "approver"}))
    # THEN the pending one comes first, then the rest newest first; no break-glass request (she decides none)
    assert listed == [pending, denied, active]
    # AND state filters narrow it
    assert ids(harness.get("/v1/requests", subject=ALICE, query={"role": "approver", "state": "APPROVAL_AWAITED"})) == [
        pending
    ]
    assert ids(harness.get("/v1/requests", subject=ALICE, query={"role": "approver", "state": "DENIED"})) == [denied]


def test_approver_paging_walks_both_phases_once(harness: ServiceHarness) -> None:
    # GIVEN three pending and two denied requests
    made = [create(harness) for _ in range(5)]
    for rid in made[:2]:
        assert harness.post(f"/v1/requests/{rid}:deny", subject=ALICE).status_code == 200
    # WHEN alice pages through her inbox two at a time
    seen: list[str] = []
    token = None
    for _ in range(5):
        query = {"role": "approver", "page_size": "2", **({"page_token": token} if token else {})}
        page = harness.get("/v1/requests", subject=ALICE, query=query).get_json()
        seen += [r["id"] for r in page["requests"]]
        token = page.get("next_page_token")
        if not token:
            break
    # THEN every request once, the pending ones (newest first) before the decided ones
    assert seen == [made[4], made[3], made[2], made[1], made[0]]


def test_auditors_list_everything_and_others_may_not(harness: ServiceHarness) -> None:
    a, b = create(harness), create(harness, OTHER)
    assert ids(harness.get("/v1/requests", subject=AUDITOR, query={"role": "auditor"})) == [b, a]
    assert ids(
        harness.get("/v1/requests", subject=AUDITOR, query={"role": "auditor", "entitlement": "prod-admin"})
    ) == [b, a]
    refused = harness.get("/v1/requests", subject=REQUESTER, query={"role": "auditor"})
    assert (refused.status_code, reason(refused)) == (403, "not-an-auditor")


def test_an_expired_request_lists_as_expired_before_the_sweep(harness: ServiceHarness) -> None:
    rid = create(harness)
    with freeze_time(clock.now() + dt.timedelta(days=2)):
        assert ids(harness.get("/v1/requests", subject=REQUESTER, query={"state": "EXPIRED"})) == [rid]
        assert ids(harness.get("/v1/requests", subject=REQUESTER, query={"state": "APPROVAL_AWAITED"})) == []
        assert ids(harness.get("/v1/requests", subject=ALICE, query={"role": "approver"})) == [rid]


@pytest.mark.parametrize(
    "query,status,why",
    [
        ({"role": "boss"}, 400, "invalid-role"),
        ({"state": "PENDING"}, 400, "invalid-state"),
        ({"page_size": "0"}, 400, "invalid-page-size"),
        ({"page_token": "garbage"}, 400, "invalid-page-token"),
        ({"colour": "red"}, 400, "unknown-field"),
        ({"role": "approver", "entitlement": "prod-break-glass"}, 403, "not-an-approver"),
    ],
)
def test_bad_listings_are_refused(harness: ServiceHarness, query: dict[str, str], status: int, why: str) -> None:
    resp = harness.get("/v1/requests", subject=ALICE, query=query)
    assert (resp.status_code, reason(resp)) == (status, why)


# -- GET /v1/entitlements, GET /v1/whoami -----------------------------------------------------------------


def test_entitlements_are_those_the_caller_matches_with_their_bounds(harness: ServiceHarness) -> None:
    ents = {e["name"]: e for e in harness.get("/v1/entitlements", subject=REQUESTER).get_json()["entitlements"]}
    assert set(ents) == {"prod-admin"}
    admin = ents["prod-admin"]
    assert admin["service_account"] == PROD_SA and admin["requires_approval"] is True
    assert admin["approval"]["quorum"] == 2 and admin["approval"]["break_glass"] is False
    assert admin["approval"]["max_window_s"] == 3600
    ci = {e["name"] for e in harness.get("/v1/entitlements").get_json()["entitlements"]}
    assert {"deploy", "ungranted", "missing"} <= ci and "prod-admin" not in ci
    deploy = next(e for e in harness.get("/v1/entitlements").get_json()["entitlements"] if e["name"] == "deploy")
    assert deploy["service_account"] == DEMO_SA and deploy["max_lifetime_s"] == 900 and deploy["approval"] is None
    assert deploy["signed_jwt_audiences"] == ["https://example.com/", "https://pubsub.googleapis.com/"]


def test_whoami_names_the_roles_and_the_active_break_glass(harness: ServiceHarness) -> None:
    alice = harness.get("/v1/whoami", subject=ALICE).get_json()
    assert alice["identity"] == f"ci/{ALICE}" and alice["approver_of"] == ["prod-admin"]
    assert alice["kill_switch_approver"] is True and alice["auditor"] is False
    assert alice["break_glass_active"] == []
    auditor = harness.get("/v1/whoami", subject=AUDITOR).get_json()
    assert auditor["auditor"] is True and auditor["kill_switch_operator"] is True
    # WHEN on-call breaks the glass
    rid = create(harness, "oncall@example.com", "prod-break-glass", "INC-7: database on fire")
    # THEN everyone's whoami names who holds it and until when
    [active] = harness.get("/v1/whoami", subject=REQUESTER).get_json()["break_glass_active"]
    assert active["request_id"] == rid and active["requester"] == "ci/oncall@example.com"
    assert active["window_end"]
    with freeze_time(clock.now() + dt.timedelta(hours=1)):
        assert harness.get("/v1/whoami", subject=REQUESTER).get_json()["break_glass_active"] == []


# -- sessions ---------------------------------------------------------------------------------------------


def browser(h: ServiceHarness) -> Any:
    """A test client without a cookie jar: each call sends exactly the cookie the test gives it."""
    return h.client.application.test_client(use_cookies=False)


def sign_in(h: ServiceHarness, subject: str, **headers: str) -> Any:
    return browser(h).post("/console/session", json={"id_token": h.token(subject)}, headers=headers)


def cookie_of(resp: Any) -> tuple[str, dict[str, Any]]:
    [header] = [v for k, v in resp.headers.items() if k == "Set-Cookie"]
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    morsel = jar[COOKIE]
    return morsel.value, {k: morsel[k] for k in ("path", "secure", "httponly", "samesite", "max-age")} | {"raw": header}


def with_session(
    h: ServiceHarness, method: str, path: str, cookie: str, csrf: str | None = None, body: Any = None
) -> Any:
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    if csrf is not None:
        headers[CSRF_HEADER] = csrf
    return browser(h).open(path, method=method, json=body, headers=headers)


def test_sign_in_sets_a_strict_cookie_and_the_session_works_the_console_endpoints(harness: ServiceHarness) -> None:
    # GIVEN alice signs in once with an ID token
    resp = sign_in(harness, ALICE)
    assert resp.status_code == 200, resp.get_json()
    session = resp.get_json()
    cookie, attrs = cookie_of(resp)
    # THEN the cookie is HttpOnly, Secure, SameSite=Strict, Path=/, living as long as the token (<= 1 h)
    assert attrs["path"] == "/" and attrs["secure"] and attrs["httponly"] and attrs["samesite"] == "Strict"
    assert 500 <= int(attrs["max-age"]) <= 600
    assert session["identity"] == f"ci/{ALICE}" and session["csrf_token"]
    assert cookie not in str(session) and session["csrf_token"] not in cookie
    # AND the session reads whoami and the inbox without any bearer token
    assert with_session(harness, "GET", "/v1/whoami", cookie).get_json()["identity"] == f"ci/{ALICE}"
    rid = create(harness)
    assert with_session(harness, "GET", "/v1/requests?role=approver", cookie).get_json()["requests"][0]["id"] == rid
    # AND GET /console/session gives the page the same CSRF token back
    again = with_session(harness, "GET", "/console/session", cookie).get_json()
    assert again["signed_in"] and again["csrf_token"] == session["csrf_token"]


def test_state_changing_calls_need_the_sessions_csrf_token(harness: ServiceHarness) -> None:
    cookie, _ = cookie_of(sign_in(harness, ALICE))
    csrf = sign_in_csrf = with_session(harness, "GET", "/console/session", cookie).get_json()["csrf_token"]
    rid = create(harness)
    # WHEN alice approves without the header, or with another session's token
    other_csrf = sign_in(harness, BOB).get_json()["csrf_token"]
    for presented in (None, "", other_csrf, csrf + "x"):
        resp = with_session(harness, "POST", f"/v1/requests/{rid}:approve", cookie, presented)
        assert (resp.status_code, reason(resp)) == (403, "csrf-token-invalid"), presented
    # THEN nothing changed; with the token the approval counts, audited with her qualified identity
    assert with_session(harness, "GET", f"/v1/requests/{rid}", cookie).get_json()["approvals"] == []
    resp = with_session(harness, "POST", f"/v1/requests/{rid}:approve", cookie, sign_in_csrf, {"comment": "ok"})
    assert resp.status_code == 200, resp.get_json()
    assert [a["approver"] for a in resp.get_json()["approvals"]] == [f"ci/{ALICE}"]
    # AND the same session may act again (a session is not a single-use bearer token)
    resp = with_session(harness, "POST", f"/v1/requests/{rid}:revoke", cookie, sign_in_csrf)
    assert resp.get_json()["state"] == "REVOKED"


def test_a_session_never_vends_nor_works_the_kill_switch(harness: ServiceHarness) -> None:
    cookie, _ = cookie_of(sign_in(harness, "repo:example/app:ref:refs/heads/main"))
    csrf = with_session(harness, "GET", "/console/session", cookie).get_json()["csrf_token"]
    vend = with_session(harness, "POST", "/v1/access-tokens", cookie, csrf, {"service_account": DEMO_SA})
    assert (vend.status_code, reason(vend)) == (401, "missing-token")
    auditor, _ = cookie_of(sign_in(harness, AUDITOR))
    acsrf = with_session(harness, "GET", "/console/session", auditor).get_json()["csrf_token"]
    kill = with_session(
        harness, "POST", f"/v1/service-accounts/{DEMO_SA}:disable", auditor, acsrf, {"justification": "INC-1: test"}
    )
    assert (kill.status_code, reason(kill)) == (401, "missing-token")
    assert harness.standin.minted == []


def test_an_id_token_starts_one_session_only(harness: ServiceHarness) -> None:
    token = harness.token(ALICE)
    assert browser(harness).post("/console/session", json={"id_token": token}).status_code == 200
    again = browser(harness).post("/console/session", json={"id_token": token})
    assert (again.status_code, reason(again)) == (401, "token-replayed")


@pytest.mark.parametrize("tamper", ["signature", "payload", "garbage", "empty-mac"])
def test_a_forged_session_is_refused(harness: ServiceHarness, tamper: str) -> None:
    cookie, _ = cookie_of(sign_in(harness, ALICE))
    body, mac = cookie.split(".")
    forged = {
        "signature": f"{body}.{mac[:-2]}AA",
        "garbage": "not-a-session",
        "empty-mac": f"{body}.",
        "payload": f"{body.replace(body[10], 'A' if body[10] != 'A' else 'B', 1)}.{mac}",
    }[tamper]
    resp = with_session(harness, "GET", "/v1/whoami", forged)
    assert (resp.status_code, reason(resp)) == (401, "invalid-session")
    assert with_session(harness, "GET", "/console/session", forged).get_json()["signed_in"] is False


def test_a_session_ends_with_its_token_and_at_sign_out(harness: ServiceHarness) -> None:
    cookie, _ = cookie_of(sign_in(harness, ALICE))
    view = with_session(harness, "GET", "/console/session", cookie).get_json()
    csrf = view["csrf_token"]
    # The session ends when its ID token does (600 s, minted in whole seconds a moment ago): the
    # boundary is read from the session, so a second passing before this line changes nothing.
    expires = clock.parse_rfc3339(view["expires_at"])
    assert dt.timedelta(seconds=590) <= expires - clock.now() <= dt.timedelta(seconds=600)
    with freeze_time(expires - dt.timedelta(seconds=1)):
        assert with_session(harness, "GET", "/v1/whoami", cookie).status_code == 200
    with freeze_time(expires + dt.timedelta(seconds=1)):
        late = with_session(harness, "GET", "/v1/whoami", cookie)
        assert (late.status_code, reason(late)) == (401, "session-expired")
    # WHEN she signs out (with the CSRF token)
    refused = with_session(harness, "DELETE", "/console/session", cookie)
    assert (refused.status_code, reason(refused)) == (403, "csrf-token-invalid")
    out = with_session(harness, "DELETE", "/console/session", cookie, csrf)
    assert out.status_code == 200 and out.get_json()["signed_in"] is False
    assert "Max-Age=0" in out.headers["Set-Cookie"]
    # THEN the cookie, replayed, no longer works
    ended = with_session(harness, "GET", "/v1/whoami", cookie)
    assert (ended.status_code, reason(ended)) == (401, "session-ended")


def test_a_session_lives_at_most_an_hour(make_harness: Any) -> None:
    h = make_harness()
    token = h.issuer.mint(sub=ALICE, exp=int(clock.epoch()) + 5 * 3600)
    resp = browser(h).post("/console/session", json={"id_token": token})
    assert resp.status_code == 200, resp.get_json()
    assert int(cookie_of(resp)[1]["max-age"]) == 3600


@pytest.mark.parametrize(
    "headers,body,status,why",
    [
        ({"Origin": "https://evil.example"}, None, 403, "cross-origin-sign-in"),
        ({"Sec-Fetch-Site": "cross-site"}, None, 403, "cross-origin-sign-in"),
        ({}, b"id_token=x", 400, "invalid-content-type"),
        ({}, {"id_token": "a", "dev_subject": "b"}, 400, "invalid-sign-in"),
        ({}, {"dev_subject": "alice@example.com"}, 403, "development-sign-in-disabled"),
        ({}, {"id_token": "not-a-jwt"}, 401, "malformed-token"),
    ],
)
def test_sign_in_is_refused(harness: ServiceHarness, headers: dict[str, str], body: Any, status: int, why: str) -> None:
    if isinstance(body, bytes):
        resp = browser(harness).post(
            "/console/session", data=body, headers=headers, content_type="application/x-www-form-urlencoded"
        )
    else:
        resp = browser(harness).post(
            "/console/session", json=body or {"id_token": harness.token(ALICE)}, headers=headers
        )
    assert (resp.status_code, reason(resp)) == (status, why)
    assert "Set-Cookie" not in resp.headers


def test_development_sign_in_mints_for_the_subject_where_a_development_issuer_exists(harness: ServiceHarness) -> None:
    # GIVEN the service built with a development minter (the embedded default's DevIssuer; here the test issuer)
    from dataclasses import replace

    from vending import wiring

    dev_policy = harness.policy.model_copy(
        update={"issuers": (harness.policy.issuers[0].model_copy(update={"development": True}),)}
    )
    harness.settings = replace(harness.settings, policy=dev_policy)
    harness.rebuild(dev_minter=lambda subject: harness.token(subject))
    assert wiring.service().console.dev_issuer == "ci"
    info = harness.client.get("/console/session").get_json()
    assert info["signed_in"] is False and ALICE in info["sign_in"]["development"]["subjects"]
    # WHEN carol picks herself
    resp = browser(harness).post("/console/session", json={"dev_subject": "carol@example.com"})
    # THEN she has a session of the development issuer
    assert resp.status_code == 200 and resp.get_json()["identity"] == "ci/carol@example.com"


# -- the console's files ----------------------------------------------------------------------------------

CONSOLE_HEADERS = {
    "Content-Security-Policy": STRICT_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@pytest.mark.parametrize(
    "path,ctype",
    [
        ("/console/", "text/html"),
        ("/console", "text/html"),
        ("/console/static/console.js", "text/javascript"),
        ("/console/static/console.css", "text/css"),
        ("/console/session", "application/json"),
    ],
)
def test_console_responses_carry_the_security_headers(harness: ServiceHarness, path: str, ctype: str) -> None:
    resp = harness.client.get(path)
    assert resp.status_code == 200 and resp.mimetype == ctype
    for name, value in CONSOLE_HEADERS.items():
        assert resp.headers[name] == value, name
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("GET", "/console/static/../../main.py", 404),
        ("GET", "/console/static/nope.js", 404),
        ("GET", "/console/static/index.html", 404),
        ("GET", "/console/admin", 404),
        ("PUT", "/console/session", 405),
    ],
)
def test_console_refusals_are_json_with_the_headers(
    harness: ServiceHarness, method: str, path: str, status: int
) -> None:
    resp = harness.client.open(path, method=method)
    assert resp.status_code == status and resp.mimetype == "application/json"
    assert resp.headers["Content-Security-Policy"] == STRICT_CSP and resp.headers["X-Request-Id"]


def test_with_google_sign_in_the_policy_names_google_identity_services_and_nothing_else(make_harness: Any) -> None:
    def google(raw: dict[str, Any]) -> None:  # the policy's issuer is Google's; its audience the OAuth client id
        raw["issuers"][0].update(issuer="https://accounts.google.com", audience="1234-abc.apps.googleusercontent.com")

    h = make_harness(edit=google)
    info = h.client.get("/console/session")
    assert info.get_json()["sign_in"] == {
        "google": {"client_id": "1234-abc.apps.googleusercontent.com", "issuer": "ci"},
        "development": None,
    }
    csp = info.headers["Content-Security-Policy"]
    assert "script-src 'self' https://accounts.google.com/gsi/client;" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp


def test_the_pages_have_no_inline_script_or_style_and_use_no_browser_storage() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html
    assert not re.search(r"\son[a-z]+=", html) and "style=" not in html
    js = "\n".join(
        line for line in (STATIC_DIR / "console.js").read_text().splitlines() if not line.lstrip().startswith("//")
    )
    for banned in (
        "localStorage",
        "sessionStorage",
        "innerHTML",
        "outerHTML",
        "document.write",
        "eval(",
        "indexedDB",
        "document.cookie",
    ):
        assert banned not in js, banned
    assert not list(Path(STATIC_DIR).glob("*.map"))


# -- approval.rejected -------------------------------------------------------------------------------------


def test_a_refused_bot_approval_tells_the_bot_why(harness: ServiceHarness) -> None:
    bot = Bot(harness.standin.url, harness.policy.bot_audience or "")
    rid = create(harness)
    # WHEN dave clicks approve on his own request in chat, and erin (no approver) too
    main.handle_pubsub(cloud_event(bot.message("approve", REQUESTER, request_id=rid), "m-1"))
    main.handle_pubsub(cloud_event(bot.message("approve", OTHER, request_id=rid), "m-2"))
    # THEN each refusal is an approval.rejected event with the reason, the request and the actor
    rejected = [e for c, e in harness.events.published if e["type"] == "approval.rejected"]
    assert [(e["reason"], e["actor"], e["request_id"], e["action"], e["message_id"]) for e in rejected] == [
        ("self-approval", f"ci/{REQUESTER}", rid, "approve", "m-1"),
        ("not-an-approver", f"ci/{OTHER}", rid, "approve", "m-2"),
    ]
    assert all(c == "notifications" for c, e in harness.events.published if e["type"] == "approval.rejected")
    assert rejected[0]["message"] == "Nobody approves or denies their own request."
    # AND a forged message names nobody: no event
    main.handle_pubsub(cloud_event("x.y.z", "m-3"))
    assert len([e for _, e in harness.events.published if e["type"] == "approval.rejected"]) == 2


# -- the session key setting -------------------------------------------------------------------------------

PRODUCTION_POLICY = Path(__file__).resolve().parents[2] / "terraform/examples/basic/config.yaml"


@pytest.mark.parametrize(
    "env,ok",
    [
        ({"VENDING_STORE": "firestore"}, False),  # production without the key
        ({"VENDING_STORE": "firestore", "VENDING_SESSION_KEY": "k" * 31}, False),  # too short
        ({"VENDING_STORE": "firestore", "VENDING_SESSION_KEY": "k" * 32}, True),
        ({"VENDING_STORE": "sqlite:/tmp/x.db"}, True),  # elsewhere: one per instance
    ],
)
def test_the_session_key_is_required_in_production(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], ok: bool
) -> None:
    from vending.config import load_settings
    from vending.errors import ConfigError

    monkeypatch.delenv("VENDING_SESSION_KEY", raising=False)
    monkeypatch.setenv("VENDING_CONFIG", str(PRODUCTION_POLICY))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if ok:
        assert load_settings().session_key == env.get("VENDING_SESSION_KEY")
        return
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "VENDING_SESSION_KEY" in info.value.message
