"""Access requests over HTTP and Pub/Sub: quorum, self-approval, break-glass, races.

Entitlement ``prod-admin`` (tests/support/app.py): principals ``*@example.com``,
approvers alice/bob/carol, quorum 2, one use, window <= 1 h, justification
``(TICKET|INC)-N: ...``. ``prod-break-glass``: oncall@example.com, self-approved,
30 min, 3 uses.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from freezegun import freeze_time

import main
from tests.support.app import CLOUD, PROD_SA, ServiceHarness
from tests.support.bots import Bot, cloud_event
from vending import clock
from vending.store.base import StoreUnavailable

REQUESTER = "dave@example.com"
JUSTIFICATION = "TICKET-42: rotate the database password"


def create(h: ServiceHarness, subject: str = REQUESTER, **body: Any) -> Any:
    body.setdefault("entitlement", "prod-admin")
    body.setdefault("justification", JUSTIFICATION)
    return h.post("/v1/requests", body, subject=subject)


def act(h: ServiceHarness, request_id: str, action: str, subject: str, **body: Any) -> Any:
    return h.post(f"/v1/requests/{request_id}:{action}", body or None, subject=subject)


def vend(h: ServiceHarness, request_id: str, subject: str = REQUESTER, **body: Any) -> Any:
    body.setdefault("service_account", PROD_SA)
    body.setdefault("scopes", [CLOUD])
    return h.post("/v1/access-tokens", {**body, "request_id": request_id}, subject=subject)


def reason(resp: Any) -> str:
    return str(resp.get_json()["error"]["reason"])


def approved_request(h: ServiceHarness) -> str:
    request_id = create(h).get_json()["id"]
    assert act(h, request_id, "approve", "alice@example.com").status_code == 200
    assert act(h, request_id, "approve", "bob@example.com").get_json()["state"] == "ACTIVE"
    return str(request_id)


def events_of(h: ServiceHarness, channel: str | None = None) -> list[str]:
    return [e["type"] for c, e in h.events.published if channel in (None, c)]


# -- HTTP flow -------------------------------------------------------------------------------------


def test_request_two_approvals_token_then_second_vend_refused(any_harness: ServiceHarness) -> None:
    h = any_harness
    # GIVEN a request awaiting approval
    resp = create(h, duration="1800s")
    assert resp.status_code == 200, resp.get_json()
    req = resp.get_json()
    assert req["state"] == "APPROVAL_AWAITED" and req["requester"] == f"ci/{REQUESTER}" and req["quorum"] == 2
    # WHEN one approver approves, it still waits; a token is refused meanwhile
    assert act(h, req["id"], "approve", "alice@example.com").get_json()["state"] == "APPROVAL_AWAITED"
    assert reason(vend(h, req["id"])) == "approval-pending"
    # AND a second, distinct approver approves
    active = act(h, req["id"], "approve", "bob@example.com", comment="ok").get_json()
    assert active["state"] == "ACTIVE" and [a["approver"] for a in active["approvals"]] == [
        "ci/alice@example.com",
        "ci/bob@example.com",
    ]
    # THEN the requester gets one token, flagged with the request
    first = vend(h, req["id"])
    assert first.status_code == 200, first.get_json()
    record = h.service.ledger.get(first.get_json()["issuance_id"])
    assert record is not None and record.data["request_id"] == req["id"]
    # AND a second vend is refused: the single use is consumed
    second = vend(h, req["id"])
    assert (second.status_code, reason(second)) == (409, "approval-consumed")
    assert h.get(f"/v1/requests/{req['id']}", subject=REQUESTER).get_json()["state"] == "ENDED"
    assert "request.activated" in events_of(h) and "credential.issued" in events_of(h)


def test_same_approver_twice_counts_once(harness: ServiceHarness) -> None:
    request_id = create(harness).get_json()["id"]
    act(harness, request_id, "approve", "alice@example.com")
    again = act(harness, request_id, "approve", "alice@example.com")
    assert again.status_code == 200
    body = again.get_json()
    assert body["state"] == "APPROVAL_AWAITED" and len(body["approvals"]) == 1


def test_nobody_approves_their_own_request(harness: ServiceHarness) -> None:
    # GIVEN alice, an approver, asks for access herself
    request_id = create(harness, subject="alice@example.com").get_json()["id"]
    # WHEN she approves her own request
    resp = act(harness, request_id, "approve", "alice@example.com")
    # THEN it is refused and nothing changed
    assert (resp.status_code, reason(resp)) == (403, "self-approval")
    assert harness.get(f"/v1/requests/{request_id}", subject="alice@example.com").get_json()["approvals"] == []


def test_approver_of_another_entitlement_is_refused(harness: ServiceHarness) -> None:
    request_id = create(harness).get_json()["id"]
    resp = act(harness, request_id, "approve", "eve@example.com")
    assert (resp.status_code, reason(resp)) == (403, "not-an-approver")


def test_deny_then_vend_refused(harness: ServiceHarness) -> None:
    request_id = create(harness).get_json()["id"]
    assert act(harness, request_id, "deny", "carol@example.com").get_json()["state"] == "DENIED"
    resp = vend(harness, request_id)
    assert (resp.status_code, reason(resp)) == (403, "approval-denied")
    late = act(harness, request_id, "approve", "alice@example.com")
    assert (late.status_code, reason(late)) == (409, "illegal-transition")


def test_withdraw_only_by_requester(harness: ServiceHarness) -> None:
    request_id = create(harness).get_json()["id"]
    other = act(harness, request_id, "withdraw", "alice@example.com")
    assert (other.status_code, reason(other)) == (403, "not-requester")
    assert act(harness, request_id, "withdraw", REQUESTER).get_json()["state"] == "WITHDRAWN"


def test_revoked_approval_cannot_be_used(harness: ServiceHarness) -> None:
    request_id = approved_request(harness)
    assert act(harness, request_id, "revoke", "carol@example.com").get_json()["state"] == "REVOKED"
    resp = vend(harness, request_id)
    assert (resp.status_code, reason(resp)) == (403, "approval-revoked")


def test_another_requesters_approval_is_refused(harness: ServiceHarness) -> None:
    request_id = approved_request(harness)
    resp = vend(harness, request_id, subject="mallory@example.com")
    assert (resp.status_code, reason(resp)) == (403, "not-requester")
    assert harness.standin.minted == []


def test_request_readers(harness: ServiceHarness) -> None:
    request_id = create(harness).get_json()["id"]
    for who in (REQUESTER, "alice@example.com", "auditor@example.com"):
        assert harness.get(f"/v1/requests/{request_id}", subject=who).status_code == 200
    resp = harness.get(f"/v1/requests/{request_id}", subject="mallory@example.com")
    assert (resp.status_code, reason(resp)) == (403, "not-a-reader")
    missing = harness.get("/v1/requests/" + "0" * 32, subject=REQUESTER)
    assert (missing.status_code, reason(missing)) == (404, "request-not-found")


@pytest.mark.parametrize(
    "body,status,why",
    [
        ({"justification": "no ticket"}, 400, "invalid-justification"),
        ({"duration": 3601}, 400, "duration-too-long"),
        ({"entitlement": "deploy"}, 403, "entitlement-not-allowed"),
        ({"entitlement": "nope"}, 403, "entitlement-not-allowed"),
        ({"colour": "blue"}, 400, "unknown-field"),
    ],
)
def test_bad_requests(harness: ServiceHarness, body: dict[str, Any], status: int, why: str) -> None:
    resp = create(harness, **body)
    assert (resp.status_code, reason(resp)) == (status, why)


def test_lifetime_is_clamped_to_the_window(harness: ServiceHarness) -> None:
    # GIVEN an approval whose 10-minute window has 2 minutes left
    with freeze_time("2026-11-28T10:00:00Z") as frozen:
        request_id = create(harness, duration=600).get_json()["id"]
        act(harness, request_id, "approve", "alice@example.com")
        window_end = clock.parse_rfc3339(
            act(harness, request_id, "approve", "bob@example.com").get_json()["window_end"]
        )
        frozen.tick(480)
        # WHEN the requester asks for an hour
        resp = vend(harness, request_id, lifetime=3600)
    # THEN the token never outlives the window
    assert resp.status_code == 200, resp.get_json()
    assert clock.parse_rfc3339(resp.get_json()["expire_time"]) <= window_end


@pytest.mark.parametrize("offset,ok", [(-2, True), (-1, False), (0, False), (1, False)])
def test_window_end_boundary(harness: ServiceHarness, offset: int, ok: bool) -> None:
    with freeze_time("2026-11-28T10:00:00Z") as frozen:
        request_id = create(harness, duration=600).get_json()["id"]
        act(harness, request_id, "approve", "alice@example.com")
        act(harness, request_id, "approve", "bob@example.com")
        frozen.tick(600 + offset)
        resp = vend(harness, request_id)
    if ok:
        assert resp.status_code == 200, resp.get_json()
    else:
        assert (resp.status_code, reason(resp)) == (403, "approval-expired")


@pytest.mark.parametrize("offset,state", [(-1, "APPROVAL_AWAITED"), (0, "EXPIRED"), (1, "EXPIRED")])
def test_pending_time_boundary(harness: ServiceHarness, offset: int, state: str) -> None:
    with freeze_time("2026-11-28T10:00:00Z") as frozen:
        request_id = create(harness).get_json()["id"]
        frozen.tick(86400 + offset)
        assert harness.get(f"/v1/requests/{request_id}", subject=REQUESTER).get_json()["state"] == state
        resp = act(harness, request_id, "approve", "alice@example.com")
    if state == "EXPIRED":
        assert (resp.status_code, reason(resp)) == (409, "illegal-transition")
    else:
        assert resp.status_code == 200


# -- break-glass --------------------------------------------------------------------------------


def test_break_glass_is_self_served_flagged_and_loud(any_harness: ServiceHarness) -> None:
    h = any_harness
    # GIVEN on-call breaks glass with an incident id
    resp = create(
        h, subject="oncall@example.com", entitlement="prod-break-glass", justification="INC-7: primary database down"
    )
    assert resp.status_code == 200, resp.get_json()
    req = resp.get_json()
    assert req["state"] == "ACTIVE" and req["break_glass"] is True
    assert "break_glass.activated" in events_of(h, "alerts")
    # WHEN a token is vended against it
    token = vend(h, req["id"], subject="oncall@example.com")
    assert token.status_code == 200, token.get_json()
    # THEN the issuance is flagged and announced at once on the alerts topic
    record = h.service.ledger.get(token.get_json()["issuance_id"])
    assert record is not None and record.data["break_glass"] is True
    assert events_of(h, "alerts").count("break_glass.used") == 1
    assert 1790 <= (clock.parse_rfc3339(token.get_json()["expire_time"]) - clock.now()).total_seconds() <= 1800


def test_break_glass_needs_matching_justification(harness: ServiceHarness) -> None:
    resp = create(harness, subject="oncall@example.com", entitlement="prod-break-glass", justification="urgent!!")
    assert (resp.status_code, reason(resp)) == (400, "invalid-justification")
    assert events_of(harness, "alerts") == []


# -- exactly one winner -----------------------------------------------------------------------------


def race(h: ServiceHarness, request_id: str, n: int = 50) -> list[int]:
    tokens = [h.token(REQUESTER) for _ in range(n)]
    barrier = threading.Barrier(n)

    def one(token: str) -> int:
        barrier.wait()
        return int(
            h.post("/v1/access-tokens", {"service_account": PROD_SA, "request_id": request_id}, token=token).status_code
        )

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, tokens))


@pytest.mark.emulator
def test_fifty_concurrent_vends_on_a_single_use_approval(fs_harness: ServiceHarness) -> None:
    # GIVEN a single-use approval on the Firestore emulator
    request_id = approved_request(fs_harness)
    # WHEN 50 vends race for it
    statuses = race(fs_harness, request_id)
    # THEN exactly one token, 49 clean 409s, no 5xx
    assert statuses.count(200) == 1 and statuses.count(409) == 49, statuses
    assert len(fs_harness.standin.minted) == 1


def test_concurrent_vends_on_sqlite(harness: ServiceHarness) -> None:
    request_id = approved_request(harness)
    statuses = race(harness, request_id, n=20)
    assert statuses.count(200) == 1 and statuses.count(409) == 19, statuses


# -- Pub/Sub: signed bot messages ---------------------------------------------------------------------


@pytest.fixture
def bot(harness: ServiceHarness) -> Bot:
    return Bot(harness.standin.url, harness.policy.bot_audience or "")


def deliver(jwt: str, message_id: str | None = None) -> None:
    main.handle_pubsub(cloud_event(jwt, message_id))


def state_of(h: ServiceHarness, request_id: str) -> str:
    return str(h.get(f"/v1/requests/{request_id}", subject=REQUESTER).get_json()["state"])


def test_bot_request_and_two_approvals(harness: ServiceHarness, bot: Bot) -> None:
    # GIVEN dave asks in chat; the bot files the request
    deliver(bot.message("request", REQUESTER, entitlement="prod-admin", justification=JUSTIFICATION))
    [req] = [d.data for d in _requests(harness)]
    assert req["state"] == "APPROVAL_AWAITED" and req["requester"] == f"ci/{REQUESTER}"
    # WHEN alice and bob click approve
    deliver(bot.message("approve", "alice@example.com", request_id=req["id"]))
    deliver(bot.message("approve", "bob@example.com", request_id=req["id"], comment="lgtm"))
    # THEN the request is active and dave gets one token
    assert state_of(harness, req["id"]) == "ACTIVE"
    assert vend(harness, req["id"]).status_code == 200
    assert vend(harness, req["id"]).status_code == 409


def test_redelivery_three_times_shuffled_matches_one_ordered_delivery(harness: ServiceHarness, bot: Bot) -> None:
    request_id = create(harness).get_json()["id"]
    messages = [
        bot.message("approve", "alice@example.com", request_id=request_id),
        bot.message("approve", "bob@example.com", request_id=request_id),
    ]
    deliveries = [(m, f"msg-{i}") for i, m in enumerate(messages)] * 3
    random.Random(7).shuffle(deliveries)
    for jwt, message_id in deliveries:
        deliver(jwt, message_id)
    doc = harness.get(f"/v1/requests/{request_id}", subject=REQUESTER).get_json()
    assert doc["state"] == "ACTIVE"
    assert sorted(a["approver"] for a in doc["approvals"]) == ["ci/alice@example.com", "ci/bob@example.com"]


def test_revoke_before_approve_leaves_it_revoked(harness: ServiceHarness, bot: Bot) -> None:
    request_id = create(harness).get_json()["id"]
    deliver(bot.message("revoke", "carol@example.com", request_id=request_id))
    deliver(bot.message("approve", "alice@example.com", request_id=request_id))
    deliver(bot.message("approve", "bob@example.com", request_id=request_id))
    assert state_of(harness, request_id) == "REVOKED"


@pytest.mark.parametrize(
    "case",
    ["untrusted-sa", "expired", "wrong-audience", "garbage", "self-approval", "other-approver", "unknown-action"],
)
def test_bad_messages_are_acknowledged_and_change_nothing(harness: ServiceHarness, bot: Bot, case: str) -> None:
    request_id = create(harness).get_json()["id"]
    now = int(clock.epoch())
    jwt = {
        "untrusted-sa": lambda: Bot(
            harness.standin.url, bot.audience, email=PROD_SA, token="local-vending-service-token"
        ).message("approve", "alice@example.com", request_id=request_id),
        "expired": lambda: bot.message("approve", "alice@example.com", request_id=request_id),
        "wrong-audience": lambda: bot.sign(
            {**bot.claims("approve", "alice@example.com", request_id=request_id), "aud": "https://elsewhere.example"}
        ),
        "garbage": lambda: "not-a-jwt",
        "self-approval": lambda: bot.message("approve", REQUESTER, request_id=request_id),
        "other-approver": lambda: bot.message("approve", "eve@example.com", request_id=request_id),
        "unknown-action": lambda: bot.message("promote", "alice@example.com", request_id=request_id),
    }[case]()
    if case == "expired":  # replayed after its exp (signed while valid: IAM refuses a past exp)
        with freeze_time(clock.from_epoch(now + 301)):
            deliver(jwt)
    else:
        deliver(jwt)  # returns normally: acknowledged, never retried forever
    doc = harness.get(f"/v1/requests/{request_id}", subject=REQUESTER).get_json()
    assert doc["state"] == "APPROVAL_AWAITED" and doc["approvals"] == []


def test_storage_outage_makes_pubsub_redeliver(harness: ServiceHarness, bot: Bot) -> None:
    request_id = create(harness).get_json()["id"]
    jwt = bot.message("approve", "alice@example.com", request_id=request_id)

    class Down:
        def get(self, *a: Any) -> Any:
            raise StoreUnavailable("down")

    harness.rebuild(store=Down())
    try:
        with pytest.raises(StoreUnavailable):
            deliver(jwt)
    finally:
        harness.rebuild()
    deliver(jwt)  # the redelivery applies it
    assert len(harness.get(f"/v1/requests/{request_id}", subject=REQUESTER).get_json()["approvals"]) == 1


def _requests(h: ServiceHarness) -> list[Any]:
    from vending.store.base import Filter, Query
    from vending.store.indexes import REQUESTS

    return h.store.query(Query(REQUESTS, (Filter("state", "==", "APPROVAL_AWAITED"),), order_by="expires_at"))


def test_request_endpoints_refuse_a_replayed_caller_token(harness: ServiceHarness) -> None:
    # GIVEN a token already used to file a request
    token = harness.token(REQUESTER)
    body = {"entitlement": "prod-admin", "justification": JUSTIFICATION}
    assert harness.post("/v1/requests", body, token=token).status_code == 200
    # WHEN it is replayed to file another, or to act
    again = harness.post("/v1/requests", body, token=token)
    # THEN 401 token-replayed
    assert (again.status_code, reason(again)) == (401, "token-replayed")
    approver = harness.token("alice@example.com")
    request_id = create(harness).get_json()["id"]
    assert harness.post(f"/v1/requests/{request_id}:approve", token=approver).status_code == 200
    replay = harness.post(f"/v1/requests/{request_id}:deny", token=approver)
    assert (replay.status_code, reason(replay)) == (401, "token-replayed")


def test_a_refused_iam_call_does_not_spend_the_approval(harness: ServiceHarness) -> None:
    request_id = approved_request(harness)
    harness.standin.set_fault(500, count=3)  # 1 attempt + 2 retries, all refused: nothing minted
    failed = vend(harness, request_id)
    assert (failed.status_code, reason(failed)) == (502, "iam-error")
    assert vend(harness, request_id).status_code == 200
    assert (vend(harness, request_id).status_code) == 409
