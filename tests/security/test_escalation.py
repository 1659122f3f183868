"""Escalation attempts, each refused with its exact status and reason (issue 9, part 2).

GIVEN the HTTP function and the Pub/Sub entry point (``main.vend_http`` /
``main.handle_pubsub``) on a real store, the IAM stand-in and the test policy
(tests/support/app.py: ``deploy`` for the CI subject, ``chain`` with one
delegate, ``prod-admin`` needing two distinct approvers out of
alice/bob/carol with one use, ``prod-break-glass`` for on-call),
WHEN a caller or a chat-ops message tries to get more than the policy or the
approval grants,
THEN it is refused with the exact status and reason (HTTP) or acknowledged
with the reason logged (Pub/Sub), and nothing was minted for it: the IAM
stand-in's list of credentials minted for the service is unchanged, and for
approval messages the access request is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from freezegun import freeze_time

import main
from tests.support.app import (
    BOT_SA,
    CHAIN_SUBJECT,
    CI_SUBJECT,
    CLOUD,
    DEMO_SA,
    HOP_SA,
    IAM_TOKEN,
    PROD_SA,
    READ_ONLY,
    ServiceHarness,
)
from tests.support.audit import LeakAudit, vended
from tests.support.bots import Bot, cloud_event
from tests.support.oidc import encode, rsa_signing_key, split
from vending import clock

REQUESTER = "dave@example.com"
JUSTIFICATION = "TICKET-42: rotate the database password"
COMPUTE = "https://www.googleapis.com/auth/compute"
CHAIN2_SUBJECT = "repo:example/app:ref:refs/heads/chain2"
T0 = "2026-11-28T10:00:00Z"


# ---------------------------------------------------------------------------
# Helpers


def error_of(resp: Any) -> dict[str, Any]:
    body = resp.get_json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "status", "reason", "message", "request_id"}, err
    assert err["code"] == resp.status_code
    return err


def assert_refused(h: ServiceHarness, resp: Any, status: int, reason: str, *, minted_before: int = 0) -> dict[str, Any]:
    err = error_of(resp)
    assert (resp.status_code, err["reason"]) == (status, reason), err
    assert len(vended(h.standin.minted)) == minted_before, "a credential was minted"
    assert "Traceback" not in resp.get_data(as_text=True)
    return err


def create(h: ServiceHarness, subject: str = REQUESTER, **body: Any) -> Any:
    body.setdefault("entitlement", "prod-admin")
    body.setdefault("justification", JUSTIFICATION)
    return h.post("/v1/requests", body, subject=subject)


def act(h: ServiceHarness, request_id: str, action: str, subject: str) -> Any:
    return h.post(f"/v1/requests/{request_id}:{action}", None, subject=subject)


def vend(h: ServiceHarness, request_id: str | None, subject: str = REQUESTER, **body: Any) -> Any:
    body.setdefault("service_account", PROD_SA)
    body.setdefault("scopes", [CLOUD])
    if request_id is not None:
        body["request_id"] = request_id
    return h.post("/v1/access-tokens", body, subject=subject)


def request_of(h: ServiceHarness, request_id: str) -> dict[str, Any]:
    doc = h.store.get("requests", request_id)
    assert doc is not None
    return doc.data


def pending(h: ServiceHarness, **body: Any) -> str:
    resp = create(h, **body)
    assert resp.status_code == 200, resp.get_json()
    return str(resp.get_json()["id"])


def approved(h: ServiceHarness, **body: Any) -> str:
    request_id = pending(h, **body)
    assert act(h, request_id, "approve", "alice@example.com").status_code == 200
    resp = act(h, request_id, "approve", "bob@example.com")
    assert resp.get_json()["state"] == "ACTIVE", resp.get_json()
    return request_id


def deliver(jwt: str, message_id: str | None = None) -> None:
    main.handle_pubsub(cloud_event(jwt, message_id))


def rejections(audit: LeakAudit) -> list[str]:
    return [e["reason"] for e in audit.log_entries() if e.get("message") == "approval message rejected"]


# ---------------------------------------------------------------------------
# Policy attempts without approval


def test_other_service_account_is_refused(harness: ServiceHarness) -> None:
    # GIVEN a CI caller entitled to demo-deployer only / WHEN it asks for prod-admin's account
    resp = harness.vend(service_account=PROD_SA)
    # THEN 403 service-account-not-allowed, nothing minted
    assert_refused(harness, resp, 403, "service-account-not-allowed")


def test_the_bots_own_service_account_is_refused(harness: ServiceHarness) -> None:
    resp = harness.vend(service_account=BOT_SA)
    assert_refused(harness, resp, 403, "service-account-not-allowed")


@pytest.mark.parametrize("scopes", [[CLOUD, COMPUTE], [COMPUTE], [READ_ONLY, "https://www.googleapis.com/auth/iam"]])
def test_extra_scope_is_refused(harness: ServiceHarness, scopes: list[str]) -> None:
    resp = harness.vend(scopes=scopes)
    assert_refused(harness, resp, 403, "scope-not-allowed")


@pytest.mark.parametrize(("lifetime", "maximum"), [(901, 900), ("901s", 900)])
def test_lifetime_one_second_above_the_maximum_is_refused(harness: ServiceHarness, lifetime: Any, maximum: int) -> None:
    err = assert_refused(harness, harness.vend(lifetime=lifetime), 400, "lifetime-too-long")
    assert f"{maximum}s" in err["message"]


def test_lifetime_at_the_maximum_is_the_control(harness: ServiceHarness) -> None:
    assert harness.vend(lifetime=900).status_code == 200


def test_delegates_injected_on_an_entitlement_without_chain(harness: ServiceHarness) -> None:
    resp = harness.vend(delegates=[HOP_SA])
    assert_refused(harness, resp, 403, "delegates-not-allowed")


@pytest.mark.parametrize(
    "delegates",
    [[HOP_SA, HOP_SA], [DEMO_SA], [DEMO_SA, HOP_SA], [HOP_SA, DEMO_SA]],
    ids=["hop-twice", "other-hop", "injected-before", "injected-after"],
)
def test_delegates_injected_into_a_chain(harness: ServiceHarness, delegates: list[str]) -> None:
    resp = harness.vend(service_account=PROD_SA, delegates=delegates, subject=CHAIN_SUBJECT)
    assert_refused(harness, resp, 403, "delegates-not-allowed")


def _two_hop_chain(raw: dict[str, Any]) -> None:
    raw["entitlements"].append(
        {
            "name": "chain2",
            "principals": [{"issuer": raw["issuers"][0]["name"], "claims": {"sub": CHAIN2_SUBJECT}}],
            "service_account": PROD_SA,
            "scopes": [CLOUD],
            "max_lifetime": 600,
            "delegates": [HOP_SA, BOT_SA],
        }
    )


@pytest.mark.parametrize(
    "delegates",
    [
        [BOT_SA, HOP_SA],
        [HOP_SA],
        [BOT_SA],
        [HOP_SA, BOT_SA, DEMO_SA],
        [DEMO_SA, HOP_SA, BOT_SA],
        [f"projects/-/serviceAccounts/{BOT_SA}", f"projects/-/serviceAccounts/{HOP_SA}"],
    ],
    ids=[
        "reordered",
        "first-hop-only",
        "last-hop-only",
        "extra-hop-appended",
        "extra-hop-prepended",
        "reordered-canonical-form",
    ],
)
def test_reordered_or_partial_delegation_chain_is_refused(make_harness: Any, delegates: list[str]) -> None:
    # GIVEN an entitlement whose chain is [delegate-hop, chatops-bot]
    h = make_harness(edit=_two_hop_chain)
    # WHEN the caller names the chain in another order, or only part of it, or with an extra hop
    resp = h.vend(service_account=PROD_SA, delegates=delegates, subject=CHAIN2_SUBJECT)
    # THEN 403 delegates-not-allowed, nothing minted
    err = assert_refused(h, resp, 403, "delegates-not-allowed")
    assert "in order" in err["message"]


@pytest.mark.parametrize(
    "delegates",
    [
        ["projects/other-project/serviceAccounts/" + HOP_SA],
        ["serviceAccounts/" + HOP_SA],
        [HOP_SA.upper()],
        [HOP_SA + "\n"],
    ],
    ids=["other-project", "partial-resource-name", "upper-case", "newline"],
)
def test_malformed_delegate_names_are_refused(harness: ServiceHarness, delegates: list[str]) -> None:
    resp = harness.vend(service_account=PROD_SA, delegates=delegates, subject=CHAIN_SUBJECT)
    assert_refused(harness, resp, 400, "invalid-delegates")


def test_approval_required_entitlement_cannot_be_vended_directly(harness: ServiceHarness) -> None:
    resp = vend(harness, None, subject=REQUESTER)
    assert_refused(harness, resp, 403, "approval-required")


# ---------------------------------------------------------------------------
# Approved requests used beyond what was approved


def test_another_requesters_approval_is_refused(harness: ServiceHarness) -> None:
    # GIVEN dave's approved request / WHEN mallory (also a prod-admin principal) vends against it
    request_id = approved(harness)
    resp = vend(harness, request_id, subject="mallory@example.com")
    # THEN 403 not-requester; the approval's single use is still there for dave
    assert_refused(harness, resp, 403, "not-requester")
    assert vend(harness, request_id).status_code == 200


def test_another_requesters_approval_from_a_ci_identity_is_refused(harness: ServiceHarness) -> None:
    request_id = approved(harness)
    resp = vend(harness, request_id, subject=CI_SUBJECT)
    assert_refused(harness, resp, 403, "not-requester")


def test_approval_used_for_another_service_account_is_refused(harness: ServiceHarness) -> None:
    request_id = approved(harness)
    resp = vend(harness, request_id, service_account=DEMO_SA)
    assert_refused(harness, resp, 403, "service-account-not-allowed")


def test_approval_used_with_an_extra_scope_is_refused(harness: ServiceHarness) -> None:
    request_id = approved(harness)
    resp = vend(harness, request_id, scopes=[CLOUD, READ_ONLY])
    assert_refused(harness, resp, 403, "scope-not-allowed")


def _prod_two_scopes(raw: dict[str, Any]) -> None:
    for ent in raw["entitlements"]:
        if ent["name"] == "prod-admin":
            ent["scopes"] = [CLOUD, READ_ONLY]


def test_approval_for_a_narrower_scope_cannot_vend_a_wider_one(make_harness: Any) -> None:
    # GIVEN prod-admin grants two scopes, and dave's request approved for the read-only one only
    h = make_harness(edit=_prod_two_scopes)
    request_id = approved(h, scopes=[READ_ONLY])
    assert request_of(h, request_id)["scopes"] == [READ_ONLY]
    # WHEN dave vends cloud-platform against it
    resp = vend(h, request_id, scopes=[CLOUD])
    # THEN 403 scope-not-allowed: approvers approved read-only
    assert_refused(h, resp, 403, "scope-not-allowed")
    # AND without scopes he gets exactly what was approved
    ok = vend(h, request_id, scopes=None)
    assert ok.status_code == 200, ok.get_json()
    [minted] = vended(h.standin.minted)
    assert minted.scopes == (READ_ONLY,)


def test_approval_used_with_injected_delegates_is_refused(harness: ServiceHarness) -> None:
    request_id = approved(harness)
    resp = vend(harness, request_id, delegates=[HOP_SA])
    assert_refused(harness, resp, 403, "delegates-not-allowed")


def test_approval_lifetime_one_second_above_the_entitlement_maximum(harness: ServiceHarness) -> None:
    request_id = approved(harness)
    err = assert_refused(harness, vend(harness, request_id, lifetime=3601), 400, "lifetime-too-long")
    assert "3600s" in err["message"]


def test_break_glass_lifetime_one_second_above_its_maximum(harness: ServiceHarness) -> None:
    request_id = pending(
        harness, subject="oncall@example.com", entitlement="prod-break-glass", justification="INC-7: primary down"
    )
    resp = vend(harness, request_id, subject="oncall@example.com", lifetime=1801)
    err = assert_refused(harness, resp, 400, "lifetime-too-long")
    assert "1800s" in err["message"]


def test_break_glass_by_a_non_principal_is_refused(harness: ServiceHarness) -> None:
    resp = create(
        harness, subject="mallory@example.com", entitlement="prod-break-glass", justification="INC-7: primary down"
    )
    assert_refused(harness, resp, 403, "entitlement-not-allowed")


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("pending", 403, "approval-pending"),
        ("denied", 403, "approval-denied"),
        ("revoked", 403, "approval-revoked"),
        ("withdrawn", 403, "approval-withdrawn"),
        ("consumed", 409, "approval-consumed"),
        ("window-over", 403, "approval-expired"),
        ("pending-time-over", 403, "approval-expired"),
    ],
)
def test_unusable_approval_is_refused(harness: ServiceHarness, case: str, status: int, reason: str) -> None:
    h = harness
    with freeze_time(T0) as frozen:
        # GIVEN a request brought into the state under test
        if case == "pending":
            request_id = pending(h)
            act(h, request_id, "approve", "alice@example.com")
        elif case == "denied":
            request_id = pending(h)
            assert act(h, request_id, "deny", "carol@example.com").get_json()["state"] == "DENIED"
        elif case == "pending-time-over":
            request_id = pending(h)
            frozen.tick(86400)
        else:
            request_id = approved(h, duration=600)
            if case == "revoked":
                assert act(h, request_id, "revoke", "carol@example.com").get_json()["state"] == "REVOKED"
            elif case == "withdrawn":
                assert act(h, request_id, "withdraw", REQUESTER).get_json()["state"] == "WITHDRAWN"
            elif case == "consumed":
                assert vend(h, request_id).status_code == 200
            elif case == "window-over":
                frozen.tick(600)
        before = len(vended(h.standin.minted))
        # WHEN the requester vends against it
        resp = vend(h, request_id)
    # THEN the exact refusal, and nothing (more) minted
    assert_refused(h, resp, status, reason, minted_before=before)


def test_break_glass_fourth_use_is_refused(harness: ServiceHarness) -> None:
    request_id = pending(
        harness, subject="oncall@example.com", entitlement="prod-break-glass", justification="INC-7: primary down"
    )
    for _ in range(3):
        assert vend(harness, request_id, subject="oncall@example.com").status_code == 200
    resp = vend(harness, request_id, subject="oncall@example.com")
    assert_refused(harness, resp, 409, "approval-consumed", minted_before=3)


# ---------------------------------------------------------------------------
# Approving: self-approval, quorum by one approver twice, outsiders (HTTP)


@pytest.mark.parametrize("action", ["approve", "deny"])
def test_self_approval_is_refused(harness: ServiceHarness, action: str) -> None:
    # GIVEN alice, an approver, requests access herself
    request_id = pending(harness, subject="alice@example.com")
    # WHEN she decides her own request
    resp = act(harness, request_id, action, "alice@example.com")
    # THEN 403 self-approval and the request is unchanged
    assert_refused(harness, resp, 403, "self-approval")
    req = request_of(harness, request_id)
    assert req["state"] == "APPROVAL_AWAITED" and req["approvals"] == []


def test_quorum_is_not_met_by_one_approver_twice(harness: ServiceHarness) -> None:
    request_id = pending(harness)
    for _ in range(3):
        assert act(harness, request_id, "approve", "alice@example.com").status_code == 200
    req = request_of(harness, request_id)
    assert req["state"] == "APPROVAL_AWAITED" and len(req["approvals"]) == 1
    assert_refused(harness, vend(harness, request_id), 403, "approval-pending")


def test_quorum_is_not_met_by_the_requester_plus_one(harness: ServiceHarness) -> None:
    # GIVEN bob (an approver) requests; his own approval is refused, so alice alone cannot activate it
    request_id = pending(harness, subject="bob@example.com")
    assert act(harness, request_id, "approve", "bob@example.com").status_code == 403
    assert act(harness, request_id, "approve", "alice@example.com").get_json()["state"] == "APPROVAL_AWAITED"
    assert_refused(harness, vend(harness, request_id, subject="bob@example.com"), 403, "approval-pending")


def test_outsider_cannot_approve(harness: ServiceHarness) -> None:
    request_id = pending(harness)
    resp = act(harness, request_id, "approve", "eve@example.com")
    assert_refused(harness, resp, 403, "not-an-approver")
    assert request_of(harness, request_id)["approvals"] == []


def test_auditor_cannot_approve(harness: ServiceHarness) -> None:
    request_id = pending(harness)
    resp = act(harness, request_id, "approve", "auditor@example.com")
    assert_refused(harness, resp, 403, "not-an-approver")


# ---------------------------------------------------------------------------
# Approval messages over Pub/Sub


@pytest.fixture
def bot(harness: ServiceHarness) -> Bot:
    return Bot(harness.standin.url, harness.policy.bot_audience or "")


def _unchanged(h: ServiceHarness, request_id: str, before: dict[str, Any]) -> None:
    after = request_of(h, request_id)
    assert after == before, "the request changed"
    assert vended(h.standin.minted) == []


def test_self_approval_by_message_is_refused(harness: ServiceHarness, bot: Bot, leak_audit: LeakAudit) -> None:
    request_id = pending(harness, subject="alice@example.com")
    before = request_of(harness, request_id)
    deliver(bot.message("approve", "alice@example.com", request_id=request_id))
    _unchanged(harness, request_id, before)
    assert rejections(leak_audit) == ["self-approval"]


def test_quorum_by_one_approver_twice_by_message(harness: ServiceHarness, bot: Bot) -> None:
    # GIVEN two distinct messages from alice, and alice once more over HTTP
    request_id = pending(harness)
    deliver(bot.message("approve", "alice@example.com", request_id=request_id))
    deliver(bot.message("approve", "alice@example.com", request_id=request_id))
    act(harness, request_id, "approve", "alice@example.com")
    # THEN one approval counts, the request still waits, and no token can be had
    req = request_of(harness, request_id)
    assert req["state"] == "APPROVAL_AWAITED" and [a["approver"] for a in req["approvals"]] == ["ci/alice@example.com"]
    assert_refused(harness, vend(harness, request_id), 403, "approval-pending")


def test_approver_of_another_entitlement_by_message(harness: ServiceHarness, bot: Bot, leak_audit: LeakAudit) -> None:
    request_id = pending(harness)
    before = request_of(harness, request_id)
    deliver(bot.message("approve", "oncall@example.com", request_id=request_id))
    _unchanged(harness, request_id, before)
    assert rejections(leak_audit) == ["not-an-approver"]


def test_bot_cannot_file_a_request_for_someone_else(harness: ServiceHarness, bot: Bot, leak_audit: LeakAudit) -> None:
    deliver(
        bot.message(
            "request", "alice@example.com", requester=REQUESTER, entitlement="prod-admin", justification=JUSTIFICATION
        )
    )
    assert rejections(leak_audit) == ["not-requester"]
    assert [e for _, e in harness.events.published if e["type"] == "request.created"] == []


def _signed_by_untrusted_sa(h: ServiceHarness, bot: Bot, request_id: str) -> str:
    # A genuine IAM signJwt signature, by a service account the policy does not trust as a bot
    other = Bot(h.standin.url, bot.audience, email=PROD_SA, token=IAM_TOKEN)
    return other.message("approve", "alice@example.com", request_id=request_id)


def _claims_trusted_bot_signed_by_other_sa(h: ServiceHarness, bot: Bot, request_id: str) -> str:
    # iss/sub say chatops-bot, but prod-admin's service account signed it (its kid is not the bot's)
    other = Bot(h.standin.url, bot.audience, email=PROD_SA, token=IAM_TOKEN)
    return other.sign(bot.claims("approve", "alice@example.com", request_id=request_id))


def _attacker_key_with_the_bots_kid(h: ServiceHarness, bot: Bot, request_id: str) -> str:
    genuine = bot.message("approve", "carol@example.com", request_id="0" * 32)
    kid = split(genuine)[0]["kid"]
    claims = bot.claims("approve", "alice@example.com", request_id=request_id)
    return encode({"alg": "RS256", "kid": kid, "typ": "JWT"}, claims, rsa_signing_key("evil-bot", 4242))


def _unsigned(h: ServiceHarness, bot: Bot, request_id: str) -> str:
    genuine = bot.message("approve", "carol@example.com", request_id="0" * 32)
    kid = split(genuine)[0]["kid"]
    claims = bot.claims("approve", "alice@example.com", request_id=request_id)
    return encode({"alg": "none", "kid": kid, "typ": "JWT"}, claims, rsa_signing_key("evil-bot", 4242))


def _wrong_audience(h: ServiceHarness, bot: Bot, request_id: str) -> str:
    return bot.sign(
        {**bot.claims("approve", "alice@example.com", request_id=request_id), "aud": "https://elsewhere.example"}
    )


def _sub_not_the_signer(h: ServiceHarness, bot: Bot, request_id: str) -> str:
    return bot.sign({**bot.claims("approve", "alice@example.com", request_id=request_id), "sub": PROD_SA})


FORGED: dict[str, tuple[Callable[[ServiceHarness, Bot, str], str], str]] = {
    "signed-by-untrusted-service-account": (_signed_by_untrusted_sa, "unknown-bot"),
    "claims-trusted-bot-signed-by-other-account": (_claims_trusted_bot_signed_by_other_sa, "unknown-key"),
    "attacker-key-with-the-bots-kid": (_attacker_key_with_the_bots_kid, "invalid-signature"),
    "unsigned-alg-none": (_unsigned, "disallowed-algorithm"),
    "audience-of-another-service": (_wrong_audience, "wrong-audience"),
    "sub-is-not-the-signer": (_sub_not_the_signer, "subject-mismatch"),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_or_untrusted_approval_message_changes_nothing(
    harness: ServiceHarness, bot: Bot, leak_audit: LeakAudit, case: str
) -> None:
    make, reason = FORGED[case]
    # GIVEN alice has approved, so one more approval would activate the request
    request_id = pending(harness)
    act(harness, request_id, "approve", "bob@example.com")
    before = request_of(harness, request_id)
    # WHEN a forged "alice approves" message arrives
    deliver(make(harness, bot, request_id))
    # THEN it is acknowledged with its reason and the request is unchanged
    _unchanged(harness, request_id, before)
    assert rejections(leak_audit) == [reason]


def test_message_replayed_after_its_exp_changes_nothing(
    harness: ServiceHarness, bot: Bot, leak_audit: LeakAudit
) -> None:
    with freeze_time(T0) as frozen:
        request_id = pending(harness)
        act(harness, request_id, "approve", "bob@example.com")
        before = request_of(harness, request_id)
        # GIVEN alice's approval, signed while valid (exp = iat + 300 s)
        message = bot.message("approve", "alice@example.com", request_id=request_id)
        exp = split(message)[1]["exp"]
        # WHEN it is delivered at its exp, and again later
        frozen.move_to(clock.from_epoch(exp))
        deliver(message)
        frozen.tick(3600)
        deliver(message)
    # THEN both deliveries are refused as expired and the request still waits
    _unchanged(harness, request_id, before)
    assert rejections(leak_audit) == ["token-expired", "token-expired"]


def test_message_one_second_before_its_exp_is_the_control(harness: ServiceHarness, bot: Bot) -> None:
    with freeze_time(T0) as frozen:
        request_id = pending(harness)
        act(harness, request_id, "approve", "bob@example.com")
        message = bot.message("approve", "alice@example.com", request_id=request_id)
        frozen.move_to(clock.from_epoch(split(message)[1]["exp"] - 1))
        deliver(message)
        assert request_of(harness, request_id)["state"] == "ACTIVE"


def _bot_may_only_request(raw: dict[str, Any]) -> None:
    raw["bots"] = [{"service_account": BOT_SA, "actions": ["request"]}]


def test_bot_action_not_allowed_by_the_policy(make_harness: Any, leak_audit: LeakAudit) -> None:
    h = make_harness(edit=_bot_may_only_request)
    bot = Bot(h.standin.url, h.policy.bot_audience or "")
    request_id = pending(h)
    before = request_of(h, request_id)
    deliver(bot.message("approve", "alice@example.com", request_id=request_id))
    _unchanged(h, request_id, before)
    assert rejections(leak_audit) == ["action-not-allowed"]
