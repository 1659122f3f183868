"""Concurrency on the Firestore emulator, and at-least-once Pub/Sub delivery (issue 9, part 4).

- 50 concurrent vends on a single-use approval: exactly one token, 49 clean
  409 ``approval-consumed``, no 5xx; repeated 3 times in the default run and
  20 times under ``-m long``.
- 30 concurrent vends on an approval good for 3 uses: exactly 3 tokens.
- Chat-ops messages (a bot-filed request, approvals, a revoke, duplicates)
  each delivered three times in a shuffled order, sequentially and
  concurrently, where a delivery that raises is redelivered later (as
  Pub/Sub does) and one that returns is acknowledged: the request ends in
  the same state as after one ordered delivery, for several seeds.

After each race the ledger is checked against the IAM stand-in's own list of
what it minted (``tests.support.audit.check_ledger``), and the race is shown
to have been settled by the store: the conditional writes that lost
(``StoreConflict`` from the backend) are counted, and a race with none would
mean the requests ran one after another (or behind an in-process lock, which
is no protection across instances) and fails.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import main
from tests.support.app import CLOUD, PROD_SA, ServiceHarness
from tests.support.audit import check_ledger, dump_store, vended
from tests.support.bots import Bot, cloud_event

REQUESTER = "dave@example.com"
JUSTIFICATION = "TICKET-42: rotate the database password"


def approved_request(h: ServiceHarness, subject: str = REQUESTER) -> str:
    resp = h.post("/v1/requests", {"entitlement": "prod-admin", "justification": JUSTIFICATION}, subject=subject)
    assert resp.status_code == 200, resp.get_json()
    request_id = str(resp.get_json()["id"])
    assert h.post(f"/v1/requests/{request_id}:approve", subject="alice@example.com").status_code == 200
    active = h.post(f"/v1/requests/{request_id}:approve", subject="bob@example.com").get_json()
    assert active["state"] == "ACTIVE", active
    return request_id


class ConflictCounter:
    """The store as the service sees it, counting the conditional writes the backend refused."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.conflicts, self.writes = inner, 0, 0
        self._lock = threading.Lock()

    def write(self, writes: Any) -> None:
        from vending.store.base import StoreConflict

        with self._lock:
            self.writes += 1
        try:
            self.inner.write(writes)  # no lock around the backend: the store alone settles the race
        except StoreConflict:
            with self._lock:
                self.conflicts += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def race(h: ServiceHarness, request_id: str, n: int) -> list[tuple[int, str | None, float]]:
    """``n`` vends against one approval, released together; (status, reason, seconds) each."""
    counter = ConflictCounter(h.store)
    h.rebuild(store=counter)
    try:
        results = _race(h, request_id, n)
    finally:
        h.rebuild()
    # the store settled it: at least one conditional write lost (serialised requests would lose none)
    assert counter.conflicts >= 1, f"no store conflict in {counter.writes} writes: the vends did not race"
    return results


def _race(h: ServiceHarness, request_id: str, n: int) -> list[tuple[int, str | None, float]]:
    tokens = [h.token(REQUESTER) for _ in range(n)]
    barrier = threading.Barrier(n)

    def one(token: str) -> tuple[int, str | None, float]:
        barrier.wait()
        started = time.monotonic()
        resp = h.post(
            "/v1/access-tokens", {"service_account": PROD_SA, "scopes": [CLOUD], "request_id": request_id}, token=token
        )
        body = resp.get_json()
        return resp.status_code, (body.get("error") or {}).get("reason"), time.monotonic() - started

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, tokens))


def check_race(h: ServiceHarness, request_id: str, results: list[tuple[int, str | None, float]], winners: int) -> None:
    statuses = Counter((s, r) for s, r, _ in results)
    assert not [s for s, _, _ in results if s >= 500], statuses
    assert statuses == Counter({(200, None): winners, (409, "approval-consumed"): len(results) - winners}), statuses
    dump = dump_store(h.store)
    mine = [
        m
        for m in vended(h.standin.minted)
        if dump["issuances"].get(m.request_reason.rsplit(" ", 1)[-1], {}).get("request_id") == request_id
    ]
    assert len(mine) == winners
    assert dump["requests"][request_id]["state"] == "ENDED"
    assert dump["requests"][request_id]["uses"] == winners
    check_ledger(dump["issuances"], h.standin.minted)


def _single_use_races(h: ServiceHarness, repetitions: int, suite_figures: Any, label: str) -> None:
    slowest = 0.0
    for _ in range(repetitions):
        # GIVEN a fresh single-use approval
        request_id = approved_request(h)
        # WHEN 50 vends race for it
        results = race(h, request_id, 50)
        # THEN exactly one token, 49 clean 409s, no 5xx, and the ledger agrees with the stand-in
        check_race(h, request_id, results, winners=1)
        slowest = max(slowest, max(t for _, _, t in results))
    suite_figures.add(
        f"concurrency ({label}): {repetitions} x 50 vends on a single-use approval -> 1 token each, "
        f"{repetitions * 49} x 409, 0 x 5xx; slowest answer {slowest:.2f}s"
    )


@pytest.mark.emulator
def test_fifty_concurrent_vends_on_a_single_use_approval_three_times(
    fs_harness: ServiceHarness, suite_figures: Any
) -> None:
    _single_use_races(fs_harness, 3, suite_figures, "default")


@pytest.mark.long
@pytest.mark.emulator
def test_fifty_concurrent_vends_on_a_single_use_approval_twenty_times(
    fs_harness: ServiceHarness, suite_figures: Any
) -> None:
    _single_use_races(fs_harness, 20, suite_figures, "long")


def _three_uses(raw: dict[str, Any]) -> None:
    for ent in raw["entitlements"]:
        if ent["name"] == "prod-admin":
            ent["approval"]["max_uses"] = 3


@pytest.mark.emulator
@pytest.mark.parametrize("repetitions", [pytest.param(2, id="x2"), pytest.param(10, id="x10", marks=pytest.mark.long)])
def test_thirty_concurrent_vends_on_a_three_use_approval(
    make_fs_harness: Any, suite_figures: Any, repetitions: int
) -> None:
    h = make_fs_harness(edit=_three_uses)
    for _ in range(repetitions):
        # GIVEN an approval good for three tokens / WHEN 30 vends race for it
        request_id = approved_request(h)
        results = race(h, request_id, 30)
        # THEN exactly three tokens, 27 clean 409s
        check_race(h, request_id, results, winners=3)
    suite_figures.add(f"concurrency: {repetitions} x 30 vends on a 3-use approval -> 3 tokens each, 0 x 5xx")


# ---------------------------------------------------------------------------
# At-least-once Pub/Sub: three deliveries of each message, shuffled


def _request_message(bot: Bot) -> tuple[str, str]:
    claims = bot.claims("request", REQUESTER, entitlement="prod-admin", justification=JUSTIFICATION)
    request_id = hashlib.sha256(f"bot-request:{claims['jti']}".encode()).hexdigest()[:32]
    return bot.sign(claims), request_id


Scenario = Callable[[Bot, str], list[str]]

SCENARIOS: dict[str, Scenario] = {
    "two-approvals": lambda bot, rid: [
        bot.message("approve", "alice@example.com", request_id=rid),
        bot.message("approve", "bob@example.com", request_id=rid),
    ],
    "same-approver-twice-then-another": lambda bot, rid: [
        bot.message("approve", "alice@example.com", request_id=rid),
        bot.message("approve", "alice@example.com", request_id=rid, comment="again"),
        bot.message("approve", "bob@example.com", request_id=rid),
    ],
    "approvals-and-a-revoke": lambda bot, rid: [
        bot.message("approve", "alice@example.com", request_id=rid),
        bot.message("approve", "bob@example.com", request_id=rid),
        bot.message("revoke", "carol@example.com", request_id=rid),
    ],
    "one-approval-and-a-self-approval": lambda bot, rid: [
        bot.message("approve", "alice@example.com", request_id=rid),
        bot.message("approve", REQUESTER, request_id=rid),
    ],
}


def _projection(h: ServiceHarness, request_id: str) -> tuple[str, tuple[str, ...] | None]:
    doc = h.store.get("requests", request_id)
    assert doc is not None, "the request was never created"
    state = doc.data["state"]
    approvers = tuple(sorted(a["approver"] for a in doc.data["approvals"]))
    # After a revoke, which approvals landed first depends on the order: only the state is defined.
    return state, (approvers if state in ("APPROVAL_AWAITED", "ACTIVE") else None)


def _deliver(jwt: str, message_id: str) -> None:
    main.handle_pubsub(cloud_event(jwt, message_id))


def _ordered(h: ServiceHarness, bot: Bot, scenario: Scenario) -> tuple[str, tuple[str, ...] | None]:
    request, request_id = _request_message(bot)
    for i, jwt in enumerate([request, *scenario(bot, request_id)]):
        _deliver(jwt, f"ordered-{request_id}-{i}")
    return _projection(h, request_id)


def _shuffled(h: ServiceHarness, bot: Bot, scenario: Scenario, seed: int, concurrent: bool) -> tuple[Any, int, int]:
    """Each message three times in a shuffled order; a delivery that raises is redelivered later."""
    rng = random.Random(seed)
    request, request_id = _request_message(bot)
    messages = [(jwt, f"m-{request_id}-{i}") for i, jwt in enumerate([request, *scenario(bot, request_id)])]
    queue = messages * 3
    rng.shuffle(queue)
    redeliveries = 0
    lock = threading.Lock()
    failures: Counter[str] = Counter()

    def attempt(item: tuple[str, str]) -> tuple[str, str] | None:
        try:
            _deliver(*item)
            return None
        except Exception:  # noqa: BLE001 - any raise means "not acknowledged": Pub/Sub redelivers
            with lock:
                failures[item[1]] += 1
                assert failures[item[1]] <= 25, "a message is redelivered forever"
            return item

    while queue:
        if concurrent:
            with ThreadPoolExecutor(max_workers=len(queue)) as pool:
                again = [r for r in pool.map(attempt, queue) if r is not None]
        else:
            again = []
            for item in queue:
                result = attempt(item)
                if result is not None:
                    again.append(result)
        redeliveries += len(again)
        rng.shuffle(again)
        queue = again
    return _projection(h, request_id), len(messages) * 3, redeliveries


SEEDS = [0, 1, 2, 3, 4, 5]


@pytest.mark.emulator
@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
def test_each_message_three_times_shuffled_ends_like_one_ordered_delivery(
    fs_harness: ServiceHarness, suite_figures: Any, concurrent: bool
) -> None:
    h = fs_harness
    bot = Bot(h.standin.url, h.policy.bot_audience or "")
    deliveries = redelivered = runs = 0
    for name, scenario in SCENARIOS.items():
        # GIVEN the final state after one ordered delivery of the scenario's messages
        expected = _ordered(h, bot, scenario)
        for seed in SEEDS:
            # WHEN fresh messages of the same scenario are each delivered three times, shuffled
            got, count, again = _shuffled(h, bot, scenario, seed, concurrent)
            # THEN the request ends in the same state
            assert got == expected, f"{name} seed {seed}: {got} != {expected}"
            deliveries += count
            redelivered += again
            runs += 1
    assert vended(h.standin.minted) == []
    mode = "concurrently" if concurrent else "sequentially"
    suite_figures.add(
        f"pubsub redelivery ({mode}): {len(SCENARIOS)} scenarios x {len(SEEDS)} seeds = {runs} runs, "
        f"{deliveries} deliveries (+{redelivered} redeliveries after a raise), all equal to the ordered "
        "delivery"
    )


def test_a_busy_request_makes_pubsub_redeliver(harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    from vending import approvals

    h = harness
    bot = Bot(h.standin.url, h.policy.bot_audience or "")
    request_id = str(
        h.post(
            "/v1/requests", {"entitlement": "prod-admin", "justification": JUSTIFICATION}, subject=REQUESTER
        ).get_json()["id"]
    )
    message = bot.message("approve", "alice@example.com", request_id=request_id)
    # GIVEN the request keeps changing under the approval (its optimistic retries all lose)
    monkeypatch.setattr(approvals, "MAX_RETRIES", 0)
    # WHEN the message arrives THEN it is not acknowledged (the handler raises): Pub/Sub redelivers it
    with pytest.raises(Exception) as caught:
        _deliver(message, "busy-1")
    assert getattr(caught.value, "reason", None) == "request-busy"
    # AND the redelivery applies it
    monkeypatch.setattr(approvals, "MAX_RETRIES", 8)
    _deliver(message, "busy-1")
    assert [a["approver"] for a in h.store.get("requests", request_id).data["approvals"]] == ["ci/alice@example.com"]


def test_a_message_for_a_request_that_never_appears_is_redelivered_only_until_its_exp(harness: ServiceHarness) -> None:
    from freezegun import freeze_time

    from tests.support.oidc import split
    from vending import clock

    h = harness
    bot = Bot(h.standin.url, h.policy.bot_audience or "")
    with freeze_time("2026-11-28T10:00:00Z") as frozen:
        message = bot.message("approve", "alice@example.com", request_id="f" * 32)
        # WHEN it names a request that does not exist (its "request" message may still be on its way)
        with pytest.raises(Exception) as caught:
            _deliver(message, "early-1")
        # THEN it is redelivered (retryable) ...
        assert getattr(caught.value, "reason", None) == "request-not-yet-known"
        assert getattr(caught.value, "retryable", False)
        # ... but only until its exp: then it is acknowledged as expired, never retried forever
        frozen.move_to(clock.from_epoch(split(message)[1]["exp"]))
        _deliver(message, "early-1")
    assert h.store.get("requests", "f" * 32) is None
