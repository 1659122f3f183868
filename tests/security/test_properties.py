"""Hypothesis properties: the policy matcher and the approval state machine (issue 9, part 3).

(a) ``vending.config.matches`` / ``vending.policy.rule_matches``: an exact
string matches only itself (no prefix, suffix, case change or Unicode
look-alike); a pattern is an anchored full match (a matching core with any
prefix or suffix, or a newline before or after it, never matches); a value
holding a control character (Unicode Cc, or a line / paragraph separator)
never matches anything, not even ``(?s).*``; a principal rule needs the same
issuer and every claim, as a string.

(b) ``vending.approvals.Approvals`` on a SQLite store: random sequences of
approvals (by approvers, the requester, outsiders, auditors; over HTTP and
as bot messages), denials, withdrawals, revocations, clock moves (pending
time and window running out), expiry sweeps and vends never produce a state
change that ``TRANSITIONS`` does not list, terminal states stay terminal,
ACTIVE needs a quorum of distinct approvers other than the requester, and
uses never exceed ``max_uses``.

The default run tries 200 examples per property (derandomized, so CI is
repeatable); ``-m long`` runs 2,000 with a random seed.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.app import PROD_SA, policy_dict
from tests.support.grants import access_grant
from vending import approvals as ap
from vending.config import Pattern, Policy, PrincipalRule, matches
from vending.errors import VendingError
from vending.events import MemoryEvents
from vending.identity import Principal
from vending.ledger import Ledger, new_id
from vending.policy import rule_matches
from vending.store.base import Create, StoreConflict, Update
from vending.store.indexes import REQUESTS
from vending.store.sqlite import SqliteStore
from vending.sweep import sweep

SHORT = 200
LONG = 2000
EXAMPLES: Counter[str] = Counter()
STATES_REACHED: Counter[str] = Counter()  # state-machine examples that reached each state
VENDS: Counter[int] = Counter()  # state-machine examples by number of tokens vended

short = settings(
    max_examples=SHORT,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
long = settings(
    max_examples=LONG,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module", autouse=True)
def _report(suite_figures: Any) -> Iterator[None]:
    yield
    if EXAMPLES:
        suite_figures.add("property examples: " + ", ".join(f"{k} {v}" for k, v in sorted(EXAMPLES.items())))
        suite_figures.add(
            "state-machine coverage: states reached "
            + ", ".join(f"{k} {v}" for k, v in sorted(STATES_REACHED.items()))
            + "; tokens vended per sequence "
            + ", ".join(f"{k}: {v}" for k, v in sorted(VENDS.items()))
        )


def _control(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Zl", "Zp")


# Strings without control characters (surrogates excluded: claims come from JSON as valid UTF-8).
CLEAN = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=40)
ANY = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
CONTROL = st.characters(categories=("Cc", "Zl", "Zp"))
SUBJECTISH = st.from_regex(r"[a-z0-9][a-z0-9:/._@-]{0,40}", fullmatch=True)

# Look-alikes: a character and characters that render (almost) the same.
CONFUSABLES: dict[str, str] = {
    "a": "\u0430\u00e0\uff41\u0251",
    "e": "\u0435\u00e9\uff45",
    "o": "\u043e\u03bf\u00f6\uff4f\u0030",
    "p": "\u0440\uff50",
    "c": "\u0441\uff43",
    "i": "\u0456\u0131\u00ed\uff49\u0031\u006c",
    "m": "\uff4d\u217f",
    "n": "\u0578\uff4e",
    "r": "\u0433\uff52",
    "s": "\u0455\uff53",
    ":": "\uff1a\u02d0\u0589",
    "/": "\u2215\u2044\uff0f",
    ".": "\u2024\uff0e",
    "-": "\u2010\u2212\uff0d",
    "@": "\uff20",
    "l": "\u0031\u0049\u04cf\uff4c",
}


# ---------------------------------------------------------------------------
# (a) the matcher


@short
@given(matcher=CLEAN, value=ANY)
def test_exact_string_matches_only_itself(matcher: str, value: str) -> None:
    EXAMPLES["matcher"] += 1
    assert matches(matcher, value) == (value == matcher)
    assert matches(matcher, matcher)


@short
@given(matcher=CLEAN, junk=st.text(min_size=1, max_size=10))
def test_exact_string_never_matches_with_a_prefix_or_suffix(matcher: str, junk: str) -> None:
    EXAMPLES["matcher"] += 1
    assert not matches(matcher, junk + matcher)
    assert not matches(matcher, matcher + junk)
    assert not matches(matcher, junk + matcher + junk)
    assert not matches(matcher, matcher[:-1]) or len(matcher) == 0


@short
@given(matcher=CLEAN)
def test_exact_string_never_matches_another_case(matcher: str) -> None:
    EXAMPLES["matcher"] += 1
    for variant in {matcher.upper(), matcher.lower(), matcher.swapcase(), matcher.casefold(), matcher.title()}:
        assert matches(matcher, variant) == (variant == matcher)


@short
@given(matcher=SUBJECTISH, data=st.data())
def test_exact_string_never_matches_a_look_alike(matcher: str, data: Any) -> None:
    EXAMPLES["matcher"] += 1
    positions = [i for i, c in enumerate(matcher) if c in CONFUSABLES]
    assume(positions)
    i = data.draw(st.sampled_from(positions))
    lookalike = data.draw(st.sampled_from(CONFUSABLES[matcher[i]]))
    value = matcher[:i] + lookalike + matcher[i + 1 :]
    assert not matches(matcher, value)
    # nor its NFKC / NFC normalized forms when they differ (no normalization happens)
    for form in ("NFKD", "NFD"):
        other = unicodedata.normalize(form, value)
        assert matches(matcher, other) == (other == matcher)


@short
@given(core=CLEAN, control=CONTROL, where=st.integers(min_value=0, max_value=40))
def test_a_value_with_a_control_character_never_matches(core: str, control: str, where: int) -> None:
    EXAMPLES["matcher"] += 1
    where %= len(core) + 1
    value = core[:where] + control + core[where:]
    assert not matches(value, value)  # not even itself, exactly
    assert not matches(Pattern(pattern=r"(?s).*"), value)  # nor a pattern that takes anything
    assert not matches(Pattern(pattern=re.escape(value)), value)


# Patterns: literal pieces from a small alphabet, joined with classes; junk from outside that alphabet.
PIECE = st.text("abcdefghijklmnopqrstuvwxyz0123456789:/._@-", min_size=1, max_size=12)
WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
JUNK = st.text("ABCXYZ!#%&*~ \n\r\t\u00a0\u200b\u0430", min_size=1, max_size=6)


@short
@given(core=PIECE, junk=JUNK)
def test_a_literal_pattern_is_a_full_match(core: str, junk: str) -> None:
    EXAMPLES["matcher"] += 1
    p = Pattern(pattern=re.escape(core))
    assert matches(p, core)
    assert not matches(p, junk + core)
    assert not matches(p, core + junk)
    assert not matches(p, core + "\n")
    assert not matches(p, "\n" + core)


@short
@given(left=PIECE, word=WORD, right=PIECE, junk=JUNK)
def test_a_pattern_with_a_class_is_anchored(left: str, word: str, right: str, junk: str) -> None:
    EXAMPLES["matcher"] += 1
    p = Pattern(pattern=re.escape(left) + "[a-z0-9]+" + re.escape(right))
    value = left + word + right
    assert matches(p, value)
    assert not matches(p, junk + value)
    assert not matches(p, value + junk)
    assert not matches(p, value + "\n")
    # an author's own ^...$ anchors do not let a trailing newline through either
    assert not matches(Pattern(pattern="^" + p.pattern + "$"), value + "\n")


@short
@given(a=PIECE, b=PIECE, junk=JUNK)
def test_an_alternation_is_anchored_as_a_whole(a: str, b: str, junk: str) -> None:
    EXAMPLES["matcher"] += 1
    # "a|b" must mean (?:a|b) fully: re.match("^a|b$") would accept a + anything
    p = Pattern(pattern=re.escape(a) + "|" + re.escape(b))
    assert matches(p, a) and matches(p, b)
    assert not matches(p, a + junk)
    assert not matches(p, junk + b)
    assert not matches(p, a + junk + b)


@short
@given(
    pattern=st.sampled_from(
        [
            r"[a-z]+@example\.com",
            r"repo:example/[a-z-]+:ref:refs/heads/(main|release-[0-9]+)",
            r"(TICKET|INC)-[0-9]+: .{3,200}",
            r"https://[a-z0-9-]+(\.[a-z0-9-]+)*\.run\.app",
        ]
    ),
    value=st.text(max_size=60),
)
def test_matches_agrees_with_an_explicitly_anchored_oracle(pattern: str, value: str) -> None:
    EXAMPLES["matcher"] += 1
    oracle = re.compile(r"\A(?:" + pattern + r")\Z")
    expected = oracle.match(value) is not None and not any(_control(c) for c in value)
    assert matches(Pattern(pattern=pattern), value) == expected


@short
@given(
    sub=CLEAN,
    other_issuer=st.sampled_from(["other", "ci2", "CI"]),
    wrapped=st.sampled_from(["list", "int", "none", "dict", "bytes-like"]),
)
def test_rule_needs_the_issuer_and_a_string_claim(sub: str, other_issuer: str, wrapped: str) -> None:
    EXAMPLES["matcher"] += 1
    rule = PrincipalRule(issuer="ci", claims={"sub": sub})
    assert rule_matches(rule, Principal("ci", sub, {"sub": sub}))
    assert not rule_matches(rule, Principal(other_issuer, sub, {"sub": sub}))
    value: Any = {"list": [sub], "int": 1, "none": None, "dict": {"sub": sub}, "bytes-like": sub.encode()}[wrapped]
    assert not rule_matches(rule, Principal("ci", sub, {"sub": value}))
    assert not rule_matches(rule, Principal("ci", sub, {}))


@short
@given(sub=SUBJECTISH, repo=SUBJECTISH, wrong=SUBJECTISH)
def test_rule_needs_every_claim(sub: str, repo: str, wrong: str) -> None:
    EXAMPLES["matcher"] += 1
    assume(wrong != repo)
    rule = PrincipalRule(issuer="ci", claims={"sub": sub, "repository": Pattern(pattern=re.escape(repo))})
    assert rule_matches(rule, Principal("ci", sub, {"sub": sub, "repository": repo}))
    assert not rule_matches(rule, Principal("ci", sub, {"sub": sub}))
    assert not rule_matches(rule, Principal("ci", sub, {"sub": sub, "repository": wrong}))
    assert not rule_matches(rule, Principal("ci", sub, {"sub": sub, "repository": repo + "\n"}))


# ---------------------------------------------------------------------------
# (b) the approval state machine

ALLOWED = {(src, dst) for (src, _event), dst in ap.TRANSITIONS.items()}
APPROVERS = ("alice@example.com", "bob@example.com", "carol@example.com")
ACTORS = ("dave@example.com", *APPROVERS, "eve@example.com", "auditor@example.com", "oncall@example.com")
T0 = _dt.datetime(2026, 11, 28, 10, 0, tzinfo=_dt.UTC)


class RecordingStore:
    """SQLite store that records every state change of an access request it commits."""

    def __init__(self) -> None:
        self.inner = SqliteStore(":memory:")
        self.changes: list[tuple[str | None, str]] = []

    def get(self, kind: str, id: str) -> Any:
        return self.inner.get(kind, id)

    def query(self, query: Any) -> Any:
        return self.inner.query(query)

    def write(self, writes: Any) -> None:
        seen = []
        for w in writes:
            if w.kind != REQUESTS:
                continue
            if isinstance(w, Create):
                seen.append((None, w.data["state"]))
            elif isinstance(w, Update) and "state" in w.changes:
                current = self.inner.get(REQUESTS, w.id)
                seen.append((current.data["state"] if current else None, w.changes["state"]))
        self.inner.write(writes)
        self.changes.extend(seen)

    def close(self) -> None:
        self.inner.close()


@dataclass
class World:
    approvals: ap.Approvals
    store: RecordingStore
    ledger: Ledger
    request_id: str
    requester: str
    quorum: int
    max_uses: int
    break_glass: bool
    events: MemoryEvents
    vends: int = 0


def _world(entitlement: str, requester: str, quorum: int, max_uses: int, duration: int) -> World | None:
    issuer = {
        "name": "ci",
        "issuer": "https://token.actions.example",
        "jwks_uri": "http://127.0.0.1:9/jwks",
        "audience": "https://vending.test",
    }
    raw = policy_dict(issuer)
    for ent in raw["entitlements"]:
        if ent["name"] == "prod-admin":
            ent["approval"].update(quorum=quorum, max_uses=max_uses)
    policy = Policy.model_validate(raw)
    store = RecordingStore()
    events = MemoryEvents()
    ledger = Ledger(store, events)  # type: ignore[arg-type]
    approvals = ap.Approvals(policy, store, events, retention=_dt.timedelta(days=90))  # type: ignore[arg-type]
    body = {
        "entitlement": entitlement,
        "duration": duration,
        "justification": "INC-7: db down" if entitlement == "prod-break-glass" else "TICKET-1: rotate keys",
    }
    try:
        created = approvals.create(Principal("ci", requester, {"sub": requester}), body)
    except VendingError:
        store.close()
        return None
    rules = policy.entitlement(entitlement).approval  # type: ignore[union-attr]
    assert rules is not None
    return World(
        approvals,
        store,
        ledger,
        created["id"],
        requester,
        rules.quorum,
        rules.max_uses,
        rules.break_glass,
        events=events,
    )


def _vend(w: World, who: str) -> str:
    """The vend path's consumption (vending.vend): check the request, reserve with one use conditional on
    the request's version (atomically), then settle the use."""
    now = _dt.datetime.now(_dt.UTC)
    principal = Principal("ci", who, {"sub": who})
    for _ in range(3):
        use = w.approvals.check_use(principal, w.request_id, now)
        grant = access_grant(
            caller=principal.qualified,
            subject=who,
            entitlement=use.entitlement,
            service_account=PROD_SA,
            request_id=w.request_id,
        )
        issuance_id = new_id()
        try:
            w.ledger.reserve(
                issuance_id,
                grant,
                reserved_until=now + _dt.timedelta(hours=1),
                reason=None,
                details={},
                replay_key=None,
                replay_until=None,
                extra=[w.approvals.use_write(use, now)],
            )
        except StoreConflict:
            continue
        w.approvals.settle_use(w.request_id, issuance_id)
        return "vended"
    return "consumed"


# "REQ" stands for the requester; weights keep sequences reaching ACTIVE, ENDED and the window's end.
WHO = st.sampled_from(["REQ", "REQ", *APPROVERS, *APPROVERS, *APPROVERS, "eve@example.com", "auditor@example.com"])
ACT = st.tuples(
    st.sampled_from(["approve"] * 6 + ["deny", "withdraw", "revoke"]), WHO, st.sampled_from(["http", "bot"])
)
TICK = st.tuples(st.just("tick"), st.sampled_from([1, 59, 300, 599, 600, 601, 1799, 1800, 3599, 3600, 86399, 86400]))
VEND = st.tuples(st.just("vend"), st.sampled_from(["REQ", "REQ", "REQ", "alice@example.com", "eve@example.com"]))
WITHDRAW = st.tuples(st.just("withdraw"), st.just("REQ"), st.just("http"))  # only the requester may, over HTTP
ACTION = st.one_of(ACT, ACT, ACT, VEND, VEND, TICK, WITHDRAW, st.tuples(st.just("sweep")))
# Often a run of approvals first, so that many sequences go on from ACTIVE (uses, ENDED, the window's end).
OPENING = st.lists(
    st.tuples(st.just("approve"), st.sampled_from(APPROVERS), st.sampled_from(["http", "bot"])), max_size=4
)
SEQUENCE = st.builds(lambda a, b: a + b, OPENING, st.lists(ACTION, min_size=1, max_size=20))


def _check(w: World, history: list[str], vended_by: list[str]) -> None:
    req = w.store.get(REQUESTS, w.request_id).data
    state = req["state"]
    # every committed change is a transition of the table (or no change at all)
    for src, dst in w.store.changes:
        if src is None:
            assert dst in ((ap.ACTIVE,) if w.break_glass else (ap.AWAITED,)), dst
        elif src != dst:
            assert (src, dst) in ALLOWED, f"{src} -> {dst} is not in TRANSITIONS"
    # terminal states stay terminal
    terminal = [s for s in history if s in ap.TERMINAL]
    if terminal:
        assert state == terminal[0], f"left terminal state {terminal[0]} for {state}"
    history.append(state)
    # approvals: distinct approvers, never the requester, only listed approvers
    approvers = [a["approver"] for a in req["approvals"]]
    assert len(approvers) == len(set(approvers))
    assert f"ci/{w.requester}" not in approvers
    assert set(approvers) <= {f"ci/{a}" for a in APPROVERS}
    if state == ap.ACTIVE or req.get("window_start") is not None:
        assert w.break_glass or len(set(approvers)) >= w.quorum, req
    if w.break_glass:
        assert approvers == []
    # uses never exceed max_uses; every use was the requester's
    assert int(req["uses"]) <= w.max_uses
    assert len(vended_by) <= w.max_uses
    assert set(vended_by) <= {w.requester}
    assert int(req["uses"]) == len(vended_by)
    if state == ap.ENDED:
        assert int(req["uses"]) == w.max_uses


def run_sequence(
    entitlement: str, requester: str, quorum: int, max_uses: int, duration: int, actions: list[tuple[Any, ...]]
) -> None:
    EXAMPLES["state-machine"] += 1
    if entitlement == "prod-break-glass":
        requester = "oncall@example.com"
    with freeze_time(T0) as frozen:
        w = _world(entitlement, requester, quorum, max_uses, duration)
        assume(w is not None)
        assert w is not None
        history: list[str] = []
        vended_by: list[str] = []
        try:
            _check(w, history, vended_by)
            for action in actions:
                kind = action[0]
                if len(action) > 1 and action[1] == "REQ":
                    action = (action[0], w.requester, *action[2:])
                before = ap.effective_state(w.store.get(REQUESTS, w.request_id).data, _dt.datetime.now(_dt.UTC))
                try:
                    if kind == "tick":
                        frozen.tick(action[1])
                    elif kind == "sweep":
                        sweep(w.ledger, w.approvals, w.events, reservation_timeout_s=300)
                    elif kind == "vend":
                        if _vend(w, action[1]) == "vended":
                            assert before == ap.ACTIVE, f"vended while {before}"
                            vended_by.append(action[1])
                    elif action[2] == "bot":
                        claims = {
                            "action": action[0],
                            "actor": action[1],
                            "request_id": w.request_id,
                            "jti": uuid.uuid4().hex,
                        }
                        w.approvals.apply_bot_message(w.approvals.policy.bots[0], claims, uuid.uuid4().hex)
                    else:
                        w.approvals.act(f"ci/{action[1]}", w.request_id, action[0], via="http")
                except VendingError as exc:
                    assert exc.http_status < 500, f"{action}: {exc!r}"
                _check(w, history, vended_by)
            STATES_REACHED.update(set(history))
            VENDS[len(vended_by)] += 1
        finally:
            w.store.close()


ENTITLEMENT = st.sampled_from(["prod-admin", "prod-admin", "prod-admin", "prod-break-glass"])
REQUESTER = st.sampled_from(["dave@example.com", "dave@example.com", "alice@example.com"])
QUORUM = st.integers(min_value=1, max_value=3)
USES_ = st.integers(min_value=1, max_value=3)
DURATION = st.sampled_from([600, 1800])


@short
@given(entitlement=ENTITLEMENT, requester=REQUESTER, quorum=QUORUM, max_uses=USES_, duration=DURATION, actions=SEQUENCE)
def test_no_sequence_leaves_the_transition_table(
    entitlement: str, requester: str, quorum: int, max_uses: int, duration: int, actions: list[tuple[Any, ...]]
) -> None:
    run_sequence(entitlement, requester, quorum, max_uses, duration, actions)


# One hand-written sequence per state, so that a generator that stopped reaching one is noticed.
EVERY_STATE: dict[str, tuple[str, int, list[tuple[Any, ...]]]] = {
    ap.AWAITED: ("prod-admin", 2, [("approve", "alice@example.com", "http")]),
    ap.ACTIVE: ("prod-admin", 2, [("approve", "alice@example.com", "http"), ("approve", "bob@example.com", "bot")]),
    ap.DENIED: ("prod-admin", 2, [("deny", "carol@example.com", "bot")]),
    ap.REVOKED: (
        "prod-admin",
        1,
        [("approve", "alice@example.com", "http"), ("revoke", "auditor@example.com", "http")],
    ),
    ap.WITHDRAWN: ("prod-admin", 2, [("approve", "alice@example.com", "http"), ("withdraw", "REQ", "http")]),
    ap.EXPIRED: ("prod-admin", 1, [("tick", 86400), ("sweep",)]),
    ap.ENDED: ("prod-admin", 1, [("approve", "bob@example.com", "http"), ("vend", "REQ")]),
}


@pytest.mark.parametrize("state", list(EVERY_STATE))
def test_the_state_machine_reaches_each_state(state: str) -> None:
    """GIVEN a sequence written to end in STATE / WHEN it runs through the same harness as the property /
    THEN it ends there (and the property's checks hold on the way)."""
    entitlement, quorum, actions = EVERY_STATE[state]
    before = STATES_REACHED[state]
    run_sequence(entitlement, "dave@example.com", quorum, 1, 600, actions)
    assert STATES_REACHED[state] == before + 1


@pytest.mark.long
@long
@given(entitlement=ENTITLEMENT, requester=REQUESTER, quorum=QUORUM, max_uses=USES_, duration=DURATION, actions=SEQUENCE)
def test_no_sequence_leaves_the_transition_table_long(
    entitlement: str, requester: str, quorum: int, max_uses: int, duration: int, actions: list[tuple[Any, ...]]
) -> None:
    run_sequence(entitlement, requester, quorum, max_uses, duration, actions)


@pytest.mark.long
@long
@given(matcher=CLEAN, value=ANY, junk=st.text(min_size=1, max_size=10), control=CONTROL)
def test_matcher_properties_long(matcher: str, value: str, junk: str, control: str) -> None:
    EXAMPLES["matcher-long"] += 1
    assert matches(matcher, value) == (value == matcher)
    assert not matches(matcher, junk + matcher) and not matches(matcher, matcher + junk)
    assert not matches(Pattern(pattern=r"(?s).*"), matcher + control)
    p = Pattern(pattern=re.escape(matcher))
    assert matches(p, matcher) and not matches(p, matcher + junk) and not matches(p, junk + matcher)
