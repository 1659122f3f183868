"""The Google Chat app: Chat's bearer token (issuer, audience, key, time), replayed and stale
clicks, who clicked, and the updated card it answers with."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import jwt
import pytest
from freezegun import freeze_time

from tests.chat.rig import AUDIENCE, ChatRig, reason
from vending import clock
from vending.local.chat import LocalChatIssuer

T0 = "2026-11-28T10:00:00Z"


def test_a_verified_click_is_applied_and_answered_with_the_updated_card(rig: ChatRig) -> None:
    request_id = rig.request()
    # WHEN bob clicks Approve in Google Chat
    resp = rig.chat_click("bob@example.com", request_id)
    # THEN the approval is recorded, and the answer replaces the card with its new state
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["actionResponse"] == {"type": "UPDATE_MESSAGE"}
    assert "approvals: 1/2 (bob@example.com)" in body["text"]
    buttons = body["cardsV2"][0]["card"]["sections"][0]["widgets"][-1]["buttonList"]["buttons"]
    assert [b["onClick"]["action"]["function"] for b in buttons] == ["approve", "deny"]
    assert [a["approver"] for a in rig.state(request_id)["approvals"]] == ["ci/bob@example.com"]


def _token(rig: ChatRig, tmp_path: Path, case: str) -> str:
    now = int(clock.epoch())
    if case == "wrong-audience":
        return rig.issuer.mint("999999999999")
    if case == "audience-list-with-another":
        return jwt.encode(
            {"iss": "chat@system.gserviceaccount.com", "aud": [AUDIENCE, "other"], "iat": now, "exp": now + 3600},
            rig.issuer._key,
            algorithm="RS256",
            headers={"kid": rig.issuer.kid},
        )
    if case == "wrong-issuer":
        return rig.issuer.mint(AUDIENCE, issuer="attacker@example.iam.gserviceaccount.com")
    if case == "unpublished-key":
        other = LocalChatIssuer(tmp_path / "attacker")
        return jwt.encode(
            {"iss": "chat@system.gserviceaccount.com", "aud": AUDIENCE, "iat": now, "exp": now + 3600},
            other._key,
            algorithm="RS256",
            headers={"kid": rig.issuer.kid},  # claims our key's id
        )
    if case == "hs256":
        return jwt.encode(
            {"iss": "chat@system.gserviceaccount.com", "aud": AUDIENCE, "iat": now, "exp": now + 3600},
            "secret-key-of-at-least-32-bytes-long!!",
            algorithm="HS256",
            headers={"kid": rig.issuer.kid},
        )
    if case == "expired":
        return jwt.encode(
            {"iss": "chat@system.gserviceaccount.com", "aud": AUDIENCE, "iat": now - 7200, "exp": now - 3600},
            rig.issuer._key,
            algorithm="RS256",
            headers={"kid": rig.issuer.kid},
        )
    if case == "garbage":
        return "not.a.jwt"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case,why",
    [
        ("wrong-audience", "wrong-audience"),
        ("audience-list-with-another", "wrong-audience"),
        ("wrong-issuer", "untrusted-issuer"),
        ("unpublished-key", "invalid-signature"),
        ("hs256", "disallowed-algorithm"),
        ("expired", "token-expired"),
        ("garbage", "malformed-token"),
    ],
)
def test_a_bad_bearer_token_is_refused_and_publishes_nothing(rig: ChatRig, tmp_path: Path, case: str, why: str) -> None:
    request_id = rig.request()
    resp = rig.chat_click("alice@example.com", request_id, token=_token(rig, tmp_path, case))
    assert (resp.status_code, reason(resp)) == (401, why), resp.get_json()
    assert resp.get_json()["error"]["message"].startswith("The request does not carry a valid identity token")
    assert rig.published == [] and rig.state(request_id)["approvals"] == []


def test_no_authorization_header_is_refused(rig: ChatRig) -> None:
    request_id = rig.request()
    resp = rig.google.post("/", json=rig.chat_event("alice@example.com", request_id))
    assert (resp.status_code, reason(resp)) == (401, "missing-token")
    assert rig.published == []


def test_a_replayed_click_is_refused(rig: ChatRig) -> None:
    request_id = rig.request()
    event = rig.chat_event("alice@example.com", request_id)
    first = rig.google.post("/", json=event, headers={"Authorization": f"Bearer {rig.issuer.mint(AUDIENCE)}"})
    assert first.status_code == 200
    # WHEN the same click arrives again (even with a fresh, valid token)
    again = rig.google.post("/", json=event, headers={"Authorization": f"Bearer {rig.issuer.mint(AUDIENCE)}"})
    assert (again.status_code, reason(again)) == (409, "replayed-click")
    assert len(rig.published) == 1


@pytest.mark.parametrize("age,accepted", [(300, True), (301, False), (-300, True), (-301, False)])
def test_a_click_event_time_must_be_within_five_minutes(rig: ChatRig, age: int, accepted: bool) -> None:
    with freeze_time(T0):
        request_id = rig.request()
        at = clock.now() - _dt.timedelta(seconds=age)
        resp = rig.chat_click("alice@example.com", request_id, eventTime=at.isoformat().replace("+00:00", "Z"))
    if accepted:
        assert resp.status_code == 200, resp.get_json()
    else:
        assert (resp.status_code, reason(resp)) == (401, "stale-event")
        assert rig.published == []


def test_a_bot_or_a_user_without_email_is_refused(rig: ChatRig) -> None:
    request_id = rig.request()
    bot = rig.chat_click("alice@example.com", request_id, user={"name": "users/9", "type": "BOT"})
    nobody = rig.chat_click("alice@example.com", request_id, user={"name": "users/10", "type": "HUMAN"})
    assert (bot.status_code, reason(bot)) == (403, "unknown-user")
    assert (nobody.status_code, reason(nobody)) == (403, "unknown-user")
    assert rig.published == []


def test_a_click_from_someone_who_is_not_an_approver_is_refused_by_the_service(rig: ChatRig) -> None:
    request_id = rig.request()
    resp = rig.chat_click("eve@example.com", request_id, action="deny")
    assert resp.status_code == 200
    state = rig.state(request_id)
    assert state["state"] == "APPROVAL_AWAITED"
    assert [e["reason"] for e in rig.events() if e["type"] == "approval.rejected"] == ["not-an-approver"]


def test_a_click_on_an_expired_request_is_refused_by_the_service(rig: ChatRig) -> None:
    with freeze_time(T0) as frozen:
        request_id = rig.request()
        frozen.tick(_dt.timedelta(hours=24, seconds=1))
        resp = rig.chat_click("alice@example.com", request_id)
    assert resp.status_code == 200
    body = resp.get_json()
    assert "state: EXPIRED" in body["text"]
    assert "buttonList" not in str(body["cardsV2"])  # an expired card has no buttons
    assert [e["reason"] for e in rig.events() if e["type"] == "approval.rejected"] == ["illegal-transition"]


def test_unknown_actions_and_events_are_refused(rig: ChatRig) -> None:
    request_id = rig.request()
    wrong = rig.chat_click("alice@example.com", request_id, action="activate")
    assert (wrong.status_code, reason(wrong)) == (400, "invalid-action")
    odd = rig.chat_click("alice@example.com", request_id, type="WIDGET_UPDATED")
    assert (odd.status_code, reason(odd)) == (400, "invalid-event")
    assert rig.published == []
