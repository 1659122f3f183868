"""The kill switch (issue 13), over HTTP, on SQLite and on the Firestore emulator.

The real HTTP function, the IAM stand-in (which disables accounts, refuses their
bearer tokens and refuses to mint for them) and a real store:

- engaged while 20 callers keep vending: once the engage call has answered, no vend
  succeeds, and every credential the stand-in minted is marked ``revoked`` in the ledger;
- idempotent under concurrent calls: one engagement, one alert;
- release refused while credentials issued before the kill live (the message gives the
  time), allowed at ``safe_at`` (frozen clock: just before, at); early only with a
  release request approved by the kill switch quorum (never its own requester);
- IAM failing mid-engage: the record says ENGAGE_FAILED, nothing claims success, vends
  stay refused, a retry resumes the same engagement;
- Pub/Sub: the same bot message delivered three times engages once and alerts once;
- authorization: non-operators, and an operator's subject from another issuer, get 403.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from freezegun import freeze_time

import main
from tests.support.app import CI_SUBJECT, DEMO_SA, KILL_SWITCH_OPERATOR, MISSING_SA, ServiceHarness
from tests.support.audit import dump_store, issuance_id_of, vended
from tests.support.bots import Bot, cloud_event
from tests.support.oidc import TestIssuer
from vending import clock

KS = "/v1/service-accounts"
AUDITOR = "auditor@example.com"
APPROVERS = ("alice@example.com", "bob@example.com")
WHY = {"justification": "INC-13: deploy key leaked in a build log"}


def engage(h: ServiceHarness, sa: str = DEMO_SA, subject: str = KILL_SWITCH_OPERATOR, **kw: Any) -> Any:
    return h.post(f"{KS}/{sa}:disable", WHY, subject=subject, **kw)


def release(h: ServiceHarness, sa: str = DEMO_SA, subject: str = KILL_SWITCH_OPERATOR, **body: Any) -> Any:
    return h.post(f"{KS}/{sa}:enable", {**WHY, **body}, subject=subject)


def status(h: ServiceHarness, sa: str = DEMO_SA) -> dict[str, Any]:
    resp = h.get(f"{KS}/{sa}", subject=AUDITOR)
    assert resp.status_code == 200, resp.get_json()
    return dict(resp.get_json())


def error(resp: Any) -> tuple[int, str]:
    body = resp.get_json()
    return resp.status_code, body["error"]["reason"] if "error" in body else "ok"


def alerts(h: ServiceHarness, type_: str) -> list[dict[str, Any]]:
    return [e for channel, e in h.events.published if channel == "alerts" and e["type"] == type_]


def issuances(h: ServiceHarness) -> dict[str, dict[str, Any]]:
    return dict(dump_store(h.store).get("issuances", {}))


def bearer_works(h: ServiceHarness, access_token: str) -> bool:
    """Whether the stand-in accepts a minted access token as a bearer (it checks bearers on every API call)."""
    resp = requests.post(
        h.standin.endpoint(DEMO_SA, "generateAccessToken"),
        timeout=5,
        headers={"Authorization": f"Bearer {access_token}"},
        json={"scope": ["x"]},
    )
    return resp.status_code != 401


def release_request(h: ServiceHarness, subject: str = KILL_SWITCH_OPERATOR) -> str:
    resp = h.post("/v1/requests", {"kill_switch": DEMO_SA, **WHY}, subject=subject)
    assert resp.status_code == 200, resp.get_json()
    return str(resp.get_json()["id"])


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def factory(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("make_harness" if request.param == "sqlite" else "make_fs_harness")


# -- engaged under load ----------------------------------------------------------------------------------------


def test_engage_during_20_concurrent_vends_leaves_no_credential_out(any_harness: ServiceHarness) -> None:
    """GIVEN 20 callers vending without pause (IAM answers in ~15 ms) / WHEN an operator engages the switch /
    THEN every vend that started after the engage answered is refused 403 target-disabled, every credential
    the stand-in minted has a ledger record marked revoked, and each one handed out is refused as a bearer."""
    h = any_harness
    h.standin.set_latency(15)
    answered, enough = threading.Event(), threading.Event()
    results: list[tuple[bool, int, str, dict[str, Any]]] = []  # (started after the answer, status, reason, body)
    lock = threading.Lock()

    def caller() -> None:
        while True:
            after = answered.is_set()
            resp = h.vend()
            with lock:
                results.append((after, resp.status_code, error(resp)[1], resp.get_json()))
                if len(results) >= 20:
                    enough.set()
            if after:
                return
            if resp.status_code != 200:  # refused before the engage answered (its revocation pass may be slow):
                assert answered.wait(120)  # wait for the answer, then make the one vend that must be refused

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(caller) for _ in range(20)]
        assert enough.wait(60)
        engaged = engage(h)
        answered.set()
        for f in futures:
            f.result()
    # THEN the switch is engaged, and after its answer nothing was handed out
    assert engaged.status_code == 200, engaged.get_json()
    assert engaged.get_json()["state"] == "ENGAGED" and engaged.get_json()["iam_disabled"] is True
    outcomes = Counter((after, status, reason) for after, status, reason, _ in results)
    assert {(s, r) for _, s, r in outcomes} <= {(200, "ok"), (403, "target-disabled")}, outcomes
    late = [(s, r) for after, s, r, _ in results if after]
    assert len(late) == 20 and set(late) == {(403, "target-disabled")}, outcomes
    handed_out = [body for _, s, _, body in results if s == 200]
    assert handed_out, outcomes
    # every credential minted for the service is marked revoked, with who and why
    records = issuances(h)
    minted = vended(h.standin.minted)
    assert minted
    for m in minted:
        record = records[issuance_id_of(m)]
        assert record["state"] == "revoked", record
        assert record["revoked_by"] == f"ci/{KILL_SWITCH_OPERATOR}" and "INC-13" in record["revoked_reason"]
        assert record["token_sha256"] in (None, m.sha256)
    assert {body["issuance_id"] for body in handed_out} <= {issuance_id_of(m) for m in minted}
    # the handed-out tokens no longer authenticate anywhere the stand-in checks bearers
    assert not any(bearer_works(h, body["access_token"]) for body in handed_out[:5])
    # safe_at covers the latest of them; one engagement, one alert
    ks = status(h)
    assert ks["revoked"] >= len(handed_out)
    assert ks["safe_at"] >= max(body["expire_time"] for body in handed_out)
    assert len(alerts(h, "kill_switch.engaged")) == 1
    assert h.standin.disabled == {DEMO_SA}


def test_concurrent_engages_make_one_engagement_and_one_alert(any_harness: ServiceHarness) -> None:
    """GIVEN a live token / WHEN 8 operators and auditors engage at once, then once more /
    THEN one engagement id, one kill_switch.engaged alert, the token revoked once, nothing changed by the last."""
    h = any_harness
    token = h.vend().get_json()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: engage(h, subject=(KILL_SWITCH_OPERATOR, AUDITOR)[i % 2]), range(8)))
    before = dump_store(h.store)["kill_switches"]
    again = engage(h, subject=AUDITOR)
    assert [a.status_code for a in answers] == [200] * 8, [a.get_json() for a in answers]
    assert len({a.get_json()["engagement_id"] for a in answers} | {again.get_json()["engagement_id"]}) == 1
    assert len(alerts(h, "kill_switch.engaged")) == 1
    assert dump_store(h.store)["kill_switches"] == before  # engaging an engaged switch changes nothing
    assert issuances(h)[token["issuance_id"]]["state"] == "revoked"
    assert h.vend().get_json()["error"]["reason"] == "target-disabled"


# -- releasing ---------------------------------------------------------------------------------------------------


def test_release_is_refused_while_tokens_live_and_allowed_at_safe_at(any_harness: ServiceHarness) -> None:
    """GIVEN a 600 s token and the switch engaged / WHEN released before, just before and at safe_at /
    THEN 409 release-not-safe naming the time twice, then RELEASED, not early, and vends work again."""
    h = any_harness
    with freeze_time(clock.now().replace(microsecond=0)) as frozen:
        token = h.vend(lifetime="600s").get_json()
        assert engage(h).status_code == 200
        ks = status(h)
        assert ks["safe_at"] == token["expire_time"] and not ks["safe_now"]
        refused = release(h)
        frozen.tick(599)
        just_before = release(h)
        frozen.tick(1)
        released = release(h)
    assert error(refused) == (409, "release-not-safe") and ks["safe_at"] in refused.get_json()["error"]["message"]
    assert error(just_before) == (409, "release-not-safe")
    assert released.status_code == 200, released.get_json()
    body = released.get_json()
    assert (body["state"], body["released_early"], body["iam_disabled"]) == ("RELEASED", False, False)
    [alert] = alerts(h, "kill_switch.released")
    assert alert["old_tokens_valid_again"] is False and alert["valid_again"] == 0
    assert h.standin.disabled == frozenset()
    assert h.vend().status_code == 200


def test_release_early_needs_the_quorum_and_says_old_tokens_are_valid_again(any_harness: ServiceHarness) -> None:
    """GIVEN a live token, the switch engaged and a release request by an operator / WHEN it has one approval,
    then two / THEN release is refused, then allowed early; the alert says old tokens are valid again,
    the token authenticates again, and the request is spent."""
    h = any_harness
    token = h.vend().get_json()
    stale = release_request(h)  # filed before this engagement: it cannot release it
    for approver in APPROVERS:
        assert h.post(f"/v1/requests/{stale}:approve", subject=approver).status_code == 200
    assert engage(h).status_code == 200
    assert not bearer_works(h, token["access_token"])
    rid = release_request(h)
    own = h.post(f"/v1/requests/{rid}:approve", subject=KILL_SWITCH_OPERATOR)
    one = h.post(f"/v1/requests/{rid}:approve", subject=APPROVERS[0])
    pending = release(h, request_id=rid)
    two = h.post(f"/v1/requests/{rid}:approve", subject=APPROVERS[1])
    by_stale = release(h, request_id=stale)
    by_other = release(h, subject=AUDITOR, request_id=rid)
    released = release(h, request_id=rid)
    assert error(own) == (403, "self-approval") and one.get_json()["state"] == "APPROVAL_AWAITED"
    assert error(pending) == (403, "approval-pending")
    assert two.get_json()["state"] == "ACTIVE"
    assert error(by_stale) == (403, "release-request-stale") and error(by_other) == (403, "not-requester")
    assert released.status_code == 200, released.get_json()
    assert (released.get_json()["released_early"], released.get_json()["release_request_id"]) == (True, rid)
    [alert] = alerts(h, "kill_switch.released")
    assert alert["old_tokens_valid_again"] is True and alert["valid_again"] == 1
    assert alert["valid_until"] == token["expire_time"] and "valid again" in alert["note"]
    assert bearer_works(h, token["access_token"])
    assert h.get(f"/v1/requests/{rid}", subject=AUDITOR).get_json()["state"] == "ENDED"
    # the request vends nothing, and a release request needs a kill switch operator
    assert error(
        h.post("/v1/access-tokens", {"service_account": DEMO_SA, "request_id": rid}, subject=KILL_SWITCH_OPERATOR)
    ) == (403, "not-a-vend-request")
    assert error(h.post("/v1/requests", {"kill_switch": DEMO_SA, **WHY}, subject=APPROVERS[0])) == (
        403,
        "not-a-kill-switch-operator",
    )


def test_the_asker_of_a_release_never_approves_it(make_harness: Any) -> None:
    """GIVEN alice is an approver and an operator / WHEN she asks for a release and approves it /
    THEN 403 self-approval."""
    h = make_harness(edit=lambda raw: raw["kill_switch"]["operators"].append("group:approvers"))
    h.vend()
    assert engage(h).status_code == 200
    rid = release_request(h, subject=APPROVERS[0])
    assert error(h.post(f"/v1/requests/{rid}:approve", subject=APPROVERS[0])) == (403, "self-approval")


# -- IAM failing ---------------------------------------------------------------------------------------------


def test_iam_failing_mid_engage_is_recorded_and_a_retry_resumes(any_harness: ServiceHarness) -> None:
    """GIVEN a live token and IAM answering 503 to disable / WHEN engaged / THEN an error answer, the record
    says ENGAGE_FAILED with the reason, nothing is marked revoked or alerted as engaged, vends are refused;
    WHEN IAM recovers and an auditor engages again / THEN the same engagement completes."""
    h = any_harness
    token = h.vend().get_json()
    h.standin.set_fault(503, count=20, methods={"disable"})
    failed = engage(h)
    ks_failed = status(h)
    vend_meanwhile = h.vend()
    record_meanwhile = issuances(h)[token["issuance_id"]]
    h.standin.clear_faults()
    resumed = engage(h, subject=AUDITOR)
    # THEN the failure is said, and said only
    assert error(failed) == (502, "iam-error") and "ENGAGE_FAILED" in failed.get_json()["error"]["message"]
    assert (ks_failed["state"], ks_failed["failure"], ks_failed["engaged_at"], ks_failed["revoked_at"]) == (
        "ENGAGE_FAILED",
        "iam-error",
        None,
        None,
    )
    assert ks_failed["iam_disabled"] is False and ks_failed["vends_refused"] is True
    assert error(vend_meanwhile) == (403, "target-disabled")
    assert record_meanwhile["state"] == "active"
    assert len(alerts(h, "kill_switch.engage_failed")) == 1
    # AND the retry resumed the same engagement
    assert resumed.status_code == 200, resumed.get_json()
    assert resumed.get_json()["engagement_id"] == ks_failed["engagement_id"]
    assert resumed.get_json()["engaged_by"] == f"ci/{KILL_SWITCH_OPERATOR}"  # who asked first
    assert "engage retried" in [e["event"] for e in resumed.get_json()["timeline"]]
    assert issuances(h)[token["issuance_id"]]["state"] == "revoked"
    assert len(alerts(h, "kill_switch.engaged")) == 1


def test_iam_refusing_the_disable_is_final_until_fixed(any_harness: ServiceHarness) -> None:
    """GIVEN an entitlement whose account IAM does not know / WHEN engaged / THEN 404 iam-target-not-found
    and ENGAGE_FAILED; the caller token was given back, so the same token may retry."""
    h = any_harness
    token = h.token(KILL_SWITCH_OPERATOR)
    first = h.post(f"{KS}/{MISSING_SA}:disable", WHY, token=token)
    second = h.post(f"{KS}/{MISSING_SA}:disable", WHY, token=token)
    assert error(first) == (404, "iam-target-not-found") and error(second) == (404, "iam-target-not-found")
    assert status(h, MISSING_SA)["state"] == "ENGAGE_FAILED"
    # nothing was ever disabled, so it is released at once (no safe_at to wait for)
    released = release(h, sa=MISSING_SA, subject=AUDITOR)
    assert (released.status_code, released.get_json()["state"]) == (200, "RELEASED")


def test_a_failed_engage_whose_disable_landed_after_all_is_not_released(any_harness: ServiceHarness) -> None:
    """GIVEN IAM timed out on disable (the record says ENGAGE_FAILED) but the account is disabled after all /
    WHEN released / THEN 409: engage again first, so its live credentials get marked before any release."""
    h = any_harness
    h.standin.set_fault(503, count=20, methods={"disable"})
    assert engage(h).status_code == 502
    h.standin.clear_faults()
    requests.post(
        h.standin.endpoint(DEMO_SA, "disable"),
        json={},
        timeout=5,
        headers={"Authorization": "Bearer local-vending-service-token"},
    )
    refused = release(h, subject=AUDITOR)
    assert error(refused) == (409, "kill-switch-busy") and "engage again" in refused.get_json()["error"]["message"]
    assert status(h)["state"] == "ENGAGE_FAILED"


# -- Pub/Sub ---------------------------------------------------------------------------------------------------


def _bot_may_disable(raw: dict[str, Any]) -> None:
    raw["bots"][0]["actions"] = ["request", "approve", "deny", "revoke", "disable"]


def test_a_bot_message_delivered_three_times_engages_once(factory: Any) -> None:
    """GIVEN a bot allowed to send disable / WHEN its message for an operator is delivered 3 times /
    THEN one engagement, one alert, via pubsub; after a release the same message engages nothing."""
    h = factory(edit=_bot_may_disable)
    h.vend()
    bot = Bot(h.standin.url, h.policy.bot_audience or "")
    message = bot.message("disable", KILL_SWITCH_OPERATOR, service_account=DEMO_SA, justification="INC-13: from chat")
    for _ in range(3):
        main.handle_pubsub(cloud_event(message, message_id="m-1"))
    ks = status(h)
    assert (ks["state"], ks["via"]) == ("ENGAGED", f"pubsub:{bot.email}:m-1")
    assert ks["engaged_by"] == f"ci/{KILL_SWITCH_OPERATOR}"
    assert len(alerts(h, "kill_switch.engaged")) == 1
    assert sum(e["event"] == "engage requested" for e in ks["timeline"]) == 1
    # released early by the quorum, the same message redelivered later re-engages nothing
    rid = release_request(h)
    for approver in APPROVERS:
        h.post(f"/v1/requests/{rid}:approve", subject=approver)
    assert release(h, request_id=rid).status_code == 200
    main.handle_pubsub(cloud_event(message, message_id="m-1"))
    assert status(h)["state"] == "RELEASED" and len(alerts(h, "kill_switch.engaged")) == 1


def test_a_bot_whose_actions_do_not_list_disable_engages_nothing(harness: ServiceHarness) -> None:
    """GIVEN the default bot (disable is never a default) / WHEN it sends disable for an operator /
    THEN nothing is engaged."""
    h = harness
    bot = Bot(h.standin.url, h.policy.bot_audience or "")
    main.handle_pubsub(
        cloud_event(bot.message("disable", KILL_SWITCH_OPERATOR, service_account=DEMO_SA, justification="INC-13"))
    )
    assert status(h)["state"] == "NOT_ENGAGED" and h.standin.disabled == frozenset()


def test_a_bot_actor_who_is_no_operator_engages_nothing(make_harness: Any) -> None:
    """GIVEN a bot allowed to send disable / WHEN the acting human is no operator / THEN nothing is engaged."""
    h = make_harness(edit=_bot_may_disable)
    bot = Bot(h.standin.url, h.policy.bot_audience or "")
    main.handle_pubsub(
        cloud_event(bot.message("disable", "mallory@example.com", service_account=DEMO_SA, justification="INC-13"))
    )
    assert status(h)["state"] == "NOT_ENGAGED" and h.standin.disabled == frozenset()


# -- authorization -------------------------------------------------------------------------------------------

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


def test_only_operators_and_auditors_use_the_switch(any_harness: ServiceHarness) -> None:
    """GIVEN a CI caller and an approver / WHEN they engage, read, release / THEN 403 each, nothing changes."""
    h = any_harness
    for subject in (CI_SUBJECT, APPROVERS[0]):
        assert error(engage(h, subject=subject)) == (403, "not-a-kill-switch-operator")
        assert error(h.get(f"{KS}/{DEMO_SA}", subject=subject)) == (403, "not-a-kill-switch-operator")
        assert error(release(h, subject=subject)) == (403, "not-a-kill-switch-operator")
    assert error(engage(h, sa="other@local-project.iam.gserviceaccount.com", subject=AUDITOR)) == (
        404,
        "service-account-not-managed",
    )
    assert "kill_switches" not in dump_store(h.store) and h.standin.disabled == frozenset()


def test_an_operator_subject_from_another_issuer_is_refused(factory: Any, other_idp: TestIssuer) -> None:
    """GIVEN ci/sre-lead is the operator / WHEN other/sre-lead engages / THEN 403; ci/sre-lead engages."""
    h = factory(edit=_two_issuers(other_idp))
    impostor = other_idp.mint(sub=KILL_SWITCH_OPERATOR)
    assert error(h.post(f"{KS}/{DEMO_SA}:disable", WHY, token=impostor)) == (403, "not-a-kill-switch-operator")
    assert error(h.get(f"{KS}/{DEMO_SA}", token=other_idp.mint(sub=AUDITOR))) == (403, "not-a-kill-switch-operator")
    assert h.standin.disabled == frozenset()
    assert engage(h).status_code == 200


def test_state_changing_calls_consume_the_caller_token(any_harness: ServiceHarness) -> None:
    """GIVEN an operator token used once to engage / WHEN replayed / THEN 401 token-replayed."""
    h = any_harness
    token = h.token(KILL_SWITCH_OPERATOR)
    assert h.post(f"{KS}/{DEMO_SA}:disable", WHY, token=token).status_code == 200
    assert error(h.post(f"{KS}/{DEMO_SA}:disable", WHY, token=token)) == (401, "token-replayed")


# -- what the switch costs a vend --------------------------------------------------------------------------------


class CountingStore:
    """The store as the service sees it, counting reads per kind and timing them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gets: Counter[str] = Counter()
        self.seconds: dict[str, list[float]] = {}

    def get(self, kind: str, id: str) -> Any:
        import time

        started = time.perf_counter()
        try:
            return self.inner.get(kind, id)
        finally:
            self.gets[kind] += 1
            self.seconds.setdefault(kind, []).append(time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def test_a_vend_reads_the_switch_twice_and_a_refused_one_once(
    request: pytest.FixtureRequest, backend: str, suite_figures: Any
) -> None:
    """GIVEN the service reading through a counting store / WHEN 20 vends succeed, then the switch is engaged and
    20 are refused / THEN exactly 2 kill switch reads per vend that succeeds, 1 per vend refused, and no other
    extra read; the cost of one read is printed (p50, p90), never asserted."""
    import time

    h = request.getfixturevalue("harness" if backend == "sqlite" else "fs_harness")
    counting = CountingStore(h.store)
    h.rebuild(store=counting)
    timed: dict[str, list[float]] = {"with the reads": [], "without": []}
    for i in range(40):  # interleaved, so load on the machine hits both alike
        with_reads = i % 2 == 0
        if not with_reads:  # the same vend with the switch reads taken out (measurement only)
            request.getfixturevalue("monkeypatch").setattr(h.service.kill_switch, "blocking", lambda sa: None)
        started = time.perf_counter()
        assert h.vend().status_code == 200
        timed["with the reads" if with_reads else "without"].append(time.perf_counter() - started)
        request.getfixturevalue("monkeypatch").undo()
    allowed = Counter(counting.gets)
    engage(h)
    counting.gets.clear()
    for _ in range(20):
        assert error(h.vend()) == (403, "target-disabled")
    refused = Counter(counting.gets)
    assert allowed == Counter({"kill_switches": 40})
    assert refused == Counter({"kill_switches": 20})
    reads = sorted(counting.seconds["kill_switches"])
    p50, p90 = reads[len(reads) // 2] * 1000, reads[int(len(reads) * 0.9)] * 1000
    vend_p50 = {k: sorted(v)[len(v) // 2] * 1000 for k, v in timed.items()}
    suite_figures.add(
        f"kill switch reads per vend ({backend}): 2 when it succeeds, 1 when refused; "
        f"one read p50 {p50:.2f} ms, p90 {p90:.2f} ms over {len(reads)} reads; vend p50 "
        f"{vend_p50['with the reads']:.1f} ms with them, {vend_p50['without']:.1f} ms without"
    )
