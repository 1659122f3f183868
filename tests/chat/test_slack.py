"""The Slack app: v0 request signatures, the 5-minute window, replayed clicks, who clicked, and
what the service then decides (the app decides nothing: it signs and publishes)."""

from __future__ import annotations

import datetime as _dt

import pytest
from freezegun import freeze_time

from tests.chat.rig import SIGNING_SECRET, ChatRig, reason
from vending import clock

T0 = "2026-11-28T10:00:00Z"


def test_a_signed_click_from_an_approver_is_published_and_applied(rig: ChatRig) -> None:
    # GIVEN dave's request awaiting two approvals
    request_id = rig.request()
    # WHEN alice clicks Approve in Slack
    resp, _, _ = rig.slack_click("alice@example.com", request_id)
    # THEN the app answers 200, and the service recorded alice's approval from the bot's message
    assert resp.status_code == 200, resp.get_json()
    state = rig.state(request_id)
    assert [a["approver"] for a in state["approvals"]] == ["ci/alice@example.com"]
    assert state["approvals"][0]["via"].startswith("pubsub:chatops-bot@")
    assert len(rig.published) == 1


@pytest.mark.parametrize(
    "tamper",
    ["wrong-secret", "body-changed", "no-signature", "no-timestamp", "not-v0", "timestamp-changed"],
)
def test_a_click_whose_signature_does_not_verify_is_refused_and_publishes_nothing(rig: ChatRig, tamper: str) -> None:
    request_id = rig.request()
    _, body, headers = rig.slack_click("alice@example.com", request_id, secret="x" * 32, register=True)
    ok_resp, ok_body, ok_headers = None, body, dict(headers)
    if tamper != "wrong-secret":  # start from a good signature, then spoil one part
        from vending.local.chat import sign_slack

        ts = int(clock.epoch())
        ok_headers["X-Slack-Request-Timestamp"] = str(ts)
        ok_headers["X-Slack-Signature"] = sign_slack(SIGNING_SECRET, ok_body, ts)
    if tamper == "body-changed":
        ok_body = ok_body.replace("approve", "deny")
    elif tamper == "no-signature":
        del ok_headers["X-Slack-Signature"]
    elif tamper == "no-timestamp":
        del ok_headers["X-Slack-Request-Timestamp"]
    elif tamper == "not-v0":
        ok_headers["X-Slack-Signature"] = "v1=" + ok_headers["X-Slack-Signature"][3:]
    elif tamper == "timestamp-changed":
        ok_headers["X-Slack-Request-Timestamp"] = str(int(ok_headers["X-Slack-Request-Timestamp"]) - 1)
    # WHEN it reaches the app
    resp = rig.slack.post("/", data=ok_body, headers=ok_headers)
    # THEN 401 with the generic message, nothing published, the request untouched
    assert resp.status_code == 401, resp.get_json()
    assert reason(resp) in ("invalid-signature", "missing-signature")
    assert resp.get_json()["error"]["message"].startswith("The request does not carry a valid identity token")
    assert rig.published == [] and rig.state(request_id)["approvals"] == []
    assert ok_resp is None


@pytest.mark.parametrize("age,accepted", [(-300, True), (-301, False), (299, True), (300, True), (301, False)])
def test_the_timestamp_window_is_five_minutes_either_way(rig: ChatRig, age: int, accepted: bool) -> None:
    with freeze_time(T0):
        request_id = rig.request()
        # GIVEN a click signed correctly with a timestamp `age` seconds old (negative: in the future)
        resp, _, _ = rig.slack_click("alice@example.com", request_id, timestamp=int(clock.epoch()) - age)
    # THEN it is accepted up to and at 300 s, refused after
    if accepted:
        assert resp.status_code == 200, resp.get_json()
    else:
        assert (resp.status_code, reason(resp)) == (401, "stale-request")
        assert rig.published == []


def test_a_replayed_click_is_refused(rig: ChatRig) -> None:
    request_id = rig.request()
    # GIVEN bob's click, accepted
    first, body, headers = rig.slack_click("bob@example.com", request_id, action="deny")
    assert first.status_code == 200
    # WHEN the same signed request arrives again within the window
    replay = rig.slack.post("/", data=body, headers=headers)
    # THEN it is refused and nothing more is published
    assert (replay.status_code, reason(replay)) == (409, "replayed-click")
    assert len(rig.published) == 1


def test_a_replay_after_the_window_is_refused_as_stale(rig: ChatRig) -> None:
    with freeze_time(T0) as frozen:
        request_id = rig.request()
        first, body, headers = rig.slack_click("bob@example.com", request_id)
        assert first.status_code == 200
        frozen.tick(_dt.timedelta(seconds=301))
        replay = rig.slack.post("/", data=body, headers=headers)
    assert (replay.status_code, reason(replay)) == (401, "stale-request")


def test_a_click_from_someone_who_is_not_an_approver_changes_nothing_and_they_are_told(rig: ChatRig) -> None:
    request_id = rig.request()
    rig.notify()
    # WHEN eve (a verified Slack user, no approver) clicks Approve
    resp, _, _ = rig.slack_click("eve@example.com", request_id)
    # THEN the app published (it decides nothing), the service refused: no approval recorded
    assert resp.status_code == 200
    assert rig.state(request_id)["approvals"] == []
    rejected = [e for e in rig.events() if e["type"] == "approval.rejected"]
    assert [(e["reason"], e["actor"]) for e in rejected] == [("not-an-approver", "ci/eve@example.com")]
    # AND the notifier tells eve why, on each platform
    rig.notify()
    told = [m for m in rig.workspace.messages.values() if m.get("person") == "eve@example.com"]
    assert {m["platform"] for m in told} == {"slack", "google-chat"}
    assert all("refused (not-an-approver)" in m["text"] for m in told)


def test_the_requester_cannot_approve_their_own_request_from_slack(rig: ChatRig) -> None:
    request_id = rig.request(subject="alice@example.com")
    resp, _, _ = rig.slack_click("alice@example.com", request_id)
    assert resp.status_code == 200
    assert rig.state(request_id)["approvals"] == []
    assert [e["reason"] for e in rig.events() if e["type"] == "approval.rejected"] == ["self-approval"]


def test_a_user_without_a_verified_email_or_mapping_is_refused(rig: ChatRig) -> None:
    request_id = rig.request()
    resp, _, _ = rig.slack_click("ghost@example.com", request_id, register=False)
    assert (resp.status_code, reason(resp)) == (403, "unknown-user")
    assert rig.published == []


def test_the_configured_table_maps_a_slack_user(harness: object, tmp_path: object) -> None:
    from tests.chat.rig import ChatRig as Rig

    r = Rig(harness, tmp_path, slack_users={"U0BOB": "bob@example.com"})  # type: ignore[arg-type]
    try:
        request_id = r.request()
        resp, _, _ = r.slack_click("nobody@example.com", request_id, user_id="U0BOB", register=False)
        assert resp.status_code == 200
        assert [a["approver"] for a in r.state(request_id)["approvals"]] == ["ci/bob@example.com"]
    finally:
        r.close()


def test_a_click_on_an_expired_request_is_refused_by_the_service(rig: ChatRig) -> None:
    with freeze_time(T0) as frozen:
        request_id = rig.request()
        # GIVEN the request's pending time (24 h) is over
        frozen.tick(_dt.timedelta(hours=24, seconds=1))
        # WHEN alice clicks Approve on her old card
        resp, _, _ = rig.slack_click("alice@example.com", request_id)
    # THEN the click is published but the service refuses it: EXPIRED, no approval
    assert resp.status_code == 200
    state = rig.state(request_id)
    assert state["state"] == "EXPIRED" and state["approvals"] == []
    assert [e["reason"] for e in rig.events() if e["type"] == "approval.rejected"] == ["illegal-transition"]


def test_only_post_and_only_button_clicks(rig: ChatRig) -> None:
    assert (rig.slack.get("/").status_code, reason(rig.slack.get("/"))) == (405, "method-not-allowed")
    from urllib.parse import urlencode

    from vending.local.chat import sign_slack

    body = urlencode({"payload": '{"type": "view_submission"}'})
    ts = int(clock.epoch())
    headers = {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sign_slack(SIGNING_SECRET, body, ts)}
    resp = rig.slack.post("/", data=body, headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert (resp.status_code, reason(resp)) == (400, "invalid-payload")
