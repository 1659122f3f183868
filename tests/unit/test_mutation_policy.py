"""Unit tests for ``vending.policy`` that kill the mutants the HTTP suites let live (issue 19, item 9).

``policy`` is pure: a ``Policy``, a ``Principal`` (built here, no token), a
kind module and its decoded ask go in; a ``Grant`` or a refusal naming its rule
comes out. Each test pins one rule at its edge: the issuer half of a principal
rule, every claim of it (``all``, not ``any``), the exact delegation chain,
the order candidates are tried in and which refusal wins, every field of the
grant, and each of the approval checks. See tests/MUTATION.md.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any

import pytest

from vending import policy
from vending.config import Policy
from vending.errors import BadRequestError, PermissionDeniedError, VendingError
from vending.grant import ApprovalUse, Bounds, Grant
from vending.identity import Principal
from vending.inputs import AccessTokenBody
from vending.kinds import access_token, id_token

NOW = _dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=_dt.UTC)
SA = "deployer@proj.iam.gserviceaccount.com"
OTHER_SA = "other@proj.iam.gserviceaccount.com"
HOP = "projects/-/serviceAccounts/hop@proj.iam.gserviceaccount.com"
CLOUD = "https://www.googleapis.com/auth/cloud-platform"
READ = "https://www.googleapis.com/auth/devstorage.read_only"


def _issuer(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "issuer": f"https://{name}.example",
        "jwks_uri": f"https://{name}.example/jwks",
        "audience": "https://vending.example",
    }


def _ent(name: str, **over: Any) -> dict[str, Any]:
    ent: dict[str, Any] = {
        "name": name,
        "principals": [{"issuer": "ci", "claims": {"sub": "alice"}}],
        "service_account": SA,
        "scopes": [CLOUD, READ],
        "max_lifetime": 900,
    }
    ent.update(over)
    return ent


def _policy(*entitlements: dict[str, Any], auditors: tuple[str, ...] = ()) -> Policy:
    return Policy.model_validate(
        {"issuers": [_issuer("ci"), _issuer("gh")], "entitlements": list(entitlements), "auditors": list(auditors)}
    )


def _who(identity: str = "alice", issuer: str = "ci", **claims: Any) -> Principal:
    return Principal(issuer=issuer, identity=identity, claims={"sub": identity, **claims})


def _ask(
    *,
    service_account: str = SA,
    scopes: tuple[str, ...] | None = None,
    lifetime_s: int | None = None,
    delegates: tuple[str, ...] | None = None,
) -> AccessTokenBody:
    return AccessTokenBody(
        service_account=service_account,
        scopes=scopes,
        lifetime_s=lifetime_s,
        delegates=delegates,
        reason=None,
        request_id=None,
    )


def _approval(**over: Any) -> ApprovalUse:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "entitlement": "prod",
        "requester": "ci/alice",
        "not_after": NOW + _dt.timedelta(seconds=300),
        "scopes": (CLOUD,),
        "uses": 0,
        "max_uses": 2,
        "break_glass": False,
        "version": "v1",
    }
    fields.update(over)
    return ApprovalUse(**fields)


def _refusal(call: Callable[[], Any]) -> VendingError:
    with pytest.raises((PermissionDeniedError, BadRequestError)) as caught:
        call()
    return caught.value


def _decide(
    pol: Policy, who: Principal, ask: Any = None, *, kind: Any = access_token, approval: ApprovalUse | None = None
) -> Grant:
    return policy.decide(pol, who, kind, ask or _ask(), NOW, approval)


# ---------------------------------------------------------------------------
# principal rules


def test_a_rule_needs_the_issuer_and_every_claim() -> None:
    """GIVEN a rule of issuer ci on two claims
    WHEN principals differing in the issuer or in one claim are checked
    THEN only the one with the issuer and both claims matches."""
    rule = (
        _policy(_ent("e", principals=[{"issuer": "ci", "claims": {"sub": "alice", "ref": "main"}}]))
        .entitlements[0]
        .principals[0]
    )

    both = policy.rule_matches(rule, _who(ref="main"))
    other_issuer = policy.rule_matches(rule, _who(issuer="gh", ref="main"))
    one_claim_wrong = policy.rule_matches(rule, _who(ref="dev"))
    claim_missing = policy.rule_matches(rule, _who())

    assert both is True
    assert other_issuer is False
    assert one_claim_wrong is False
    assert claim_missing is False


def test_a_rule_reads_each_claim_by_its_own_name() -> None:
    """GIVEN a rule on the claim ``ref`` only (not ``sub``)
    WHEN the principal's ``sub`` differs from the rule's value but ``ref`` equals it
    THEN it matches: the rule looks the value up under the claim it names."""
    rule = _policy(_ent("e", principals=[{"issuer": "ci", "claims": {"ref": "main"}}])).entitlements[0].principals[0]

    matched = policy.rule_matches(rule, _who("zed", ref="main"))
    unmatched = policy.rule_matches(rule, _who("main", ref="zed"))

    assert matched is True
    assert unmatched is False


def test_an_entitlement_with_several_rules_admits_anyone_matching_one() -> None:
    """GIVEN an entitlement with a rule for alice and a rule for bob
    WHEN each of them, and carol, is checked
    THEN alice and bob are principals of it, carol is not."""
    ent = _policy(
        _ent("e", principals=[{"issuer": "ci", "claims": {"sub": "alice"}}, {"issuer": "ci", "claims": {"sub": "bob"}}])
    ).entitlements[0]

    results = [policy.is_principal_of(ent, _who(name)) for name in ("alice", "bob", "carol")]

    assert results == [True, True, False]


def test_entitlements_for_needs_both_the_account_and_the_principal() -> None:
    """GIVEN entitlements for (alice, SA), (bob, SA) and (alice, OTHER_SA)
    WHEN alice's entitlements for SA are listed
    THEN only the first is."""
    pol = _policy(
        _ent("a"),
        _ent("b", principals=[{"issuer": "ci", "claims": {"sub": "bob"}}]),
        _ent("c", service_account=OTHER_SA),
    )

    found = policy.entitlements_for(pol, _who(), SA)

    assert [e.name for e in found] == ["a"]


# ---------------------------------------------------------------------------
# delegation chains


def test_no_delegates_asked_means_the_entitlements_chain() -> None:
    """GIVEN an entitlement with a one-hop chain
    WHEN the ask names no delegates
    THEN the grant carries the entitlement's chain."""
    pol = _policy(_ent("e", delegates=[HOP]))

    grant = _decide(pol, _who())

    assert grant.delegates == (HOP,)


def test_delegates_equal_to_the_chain_are_granted() -> None:
    """GIVEN an entitlement with a one-hop chain
    WHEN the ask names exactly that chain (as a list)
    THEN the grant carries it, as a tuple."""
    pol = _policy(_ent("e", delegates=[HOP]))

    grant = _decide(pol, _who(), _ask(delegates=(HOP,)))

    assert grant.delegates == (HOP,)
    assert isinstance(grant.delegates, tuple)


@pytest.mark.parametrize(
    "asked",
    [(), (HOP, HOP), ("projects/-/serviceAccounts/x@proj.iam.gserviceaccount.com",)],
    ids=["dropped", "doubled", "other"],
)
def test_delegates_other_than_the_chain_are_refused(asked: tuple[str, ...]) -> None:
    """GIVEN an entitlement with a one-hop chain
    WHEN the ask names another chain
    THEN it is refused as delegates-not-allowed, naming the chain."""
    pol = _policy(_ent("e", delegates=[HOP]))

    exc = _refusal(lambda: _decide(pol, _who(), _ask(delegates=asked)))

    assert isinstance(exc, PermissionDeniedError)
    assert exc.reason == "delegates-not-allowed"
    assert exc.message == f"The delegation chain must equal the entitlement's chain (['{HOP}']), in order."


def test_delegates_on_an_entitlement_without_a_chain_say_none() -> None:
    """GIVEN an entitlement without a chain
    WHEN the ask names a delegate
    THEN it is refused, and the message says the chain is none."""
    pol = _policy(_ent("e"))

    exc = _refusal(lambda: _decide(pol, _who(), _ask(delegates=(HOP,))))

    assert exc.reason == "delegates-not-allowed"
    assert exc.message == "The delegation chain must equal the entitlement's chain (none), in order."


# ---------------------------------------------------------------------------
# candidates without an approval


def test_no_matching_entitlement_is_service_account_not_allowed() -> None:
    """GIVEN alice's entitlement is for OTHER_SA only
    WHEN alice asks for SA
    THEN she is refused, and the message names SA."""
    pol = _policy(_ent("e", service_account=OTHER_SA))

    exc = _refusal(lambda: policy.candidates(pol, _who(), "access_token", SA, None))

    assert exc.reason == "service-account-not-allowed"
    assert exc.message == f"No entitlement lets this caller obtain credentials for {SA}."


def test_an_approval_only_match_asks_for_an_approval_and_names_it() -> None:
    """GIVEN alice's only entitlement for SA needs approval
    WHEN she asks without one
    THEN she is told an approval is required for that entitlement."""
    pol = _policy(_ent("needs-ok", approval={"approvers": ["ci/bob"]}))

    exc = _refusal(lambda: policy.candidates(pol, _who(), "access_token", SA, None))

    assert exc.reason == "approval-required"
    assert exc.message == (
        f"Credentials for {SA} require an approved access request (entitlement 'needs-ok'); "
        "create one with POST /v1/requests."
    )


def test_direct_entitlements_are_preferred_over_approval_ones() -> None:
    """GIVEN an approval entitlement listed before a direct one, both for alice and SA
    WHEN candidates are listed without an approval
    THEN only the direct one is a candidate."""
    pol = _policy(_ent("needs-ok", approval={"approvers": ["ci/bob"]}), _ent("direct"))

    found = policy.candidates(pol, _who(), "access_token", SA, None)

    assert [e.name for e in found] == ["direct"]


def test_a_kind_no_entitlement_lists_is_refused_by_name() -> None:
    """GIVEN alice's entitlement lists access tokens only
    WHEN she asks for an ID token
    THEN it is refused as credential-kind-not-allowed, spelled for people."""
    pol = _policy(_ent("e"))

    exc = _refusal(lambda: policy.candidates(pol, _who(), "id_token", SA, None))

    assert exc.reason == "credential-kind-not-allowed"
    assert exc.message == f"This caller may not obtain id tokens for {SA}."


def test_candidates_keep_the_policy_order_and_drop_other_kinds() -> None:
    """GIVEN three entitlements for alice and SA, the middle one without access tokens
    WHEN access-token candidates are listed
    THEN the other two are, in policy order."""
    pol = _policy(
        _ent("first"),
        _ent("ids", credentials=["id_token"], scopes=[], id_token={"audiences": ["https://a.example"]}),
        _ent("last"),
    )

    found = policy.candidates(pol, _who(), "access_token", SA, None)

    assert [e.name for e in found] == ["first", "last"]


# ---------------------------------------------------------------------------
# candidates with an approval


def _approval_policy(**ent: Any) -> Policy:
    return _policy(_ent("prod", approval={"approvers": ["ci/bob"], "max_uses": 2}, **ent), _ent("direct"))


def test_an_approval_considers_only_its_own_entitlement() -> None:
    """GIVEN a direct entitlement and an approval one, both for alice and SA
    WHEN candidates are listed with an approval of the latter
    THEN only the approval's entitlement is a candidate."""
    found = policy.candidates(_approval_policy(), _who(), "access_token", SA, _approval())

    assert [e.name for e in found] == ["prod"]


@pytest.mark.parametrize(
    ("approval", "who", "sa", "reason", "message"),
    [
        (
            _approval(entitlement="gone"),
            _who(),
            SA,
            "entitlement-removed",
            "The request's entitlement no longer exists.",
        ),
        (
            _approval(),
            _who(),
            OTHER_SA,
            "service-account-not-allowed",
            "The access request is for another service account.",
        ),
        (
            _approval(requester="ci/bob"),
            _who(),
            SA,
            "not-requester",
            "This access request belongs to another requester.",
        ),
        (
            _approval(requester="gh/alice"),
            _who(),
            SA,
            "not-requester",
            "This access request belongs to another requester.",
        ),
        (
            _approval(requester="gh/alice"),
            _who(issuer="gh"),
            SA,
            "entitlement-not-allowed",
            "This caller no longer matches entitlement 'prod''s principal rule.",
        ),
    ],
    ids=[
        "entitlement-removed",
        "other-account",
        "other-requester",
        "same-name-other-issuer",
        "principal-rule-no-longer-matches",
    ],
)
def test_an_unusable_approval_is_refused_with_its_reason(
    approval: ApprovalUse, who: Principal, sa: str, reason: str, message: str
) -> None:
    """GIVEN an approval for entitlement prod (alice on ci, SA)
    WHEN it is used in a way that breaks one of its checks
    THEN the refusal names that check, and tells the caller why in words."""
    pol = _approval_policy()

    exc = _refusal(lambda: policy.candidates(pol, who, "access_token", sa, approval))

    assert isinstance(exc, PermissionDeniedError)
    assert exc.reason == reason
    assert exc.message == message


def test_an_approval_for_a_kind_its_entitlement_lacks_is_refused() -> None:
    """GIVEN an approval of an entitlement listing access tokens only
    WHEN it is used for a signed JWT
    THEN it is refused as credential-kind-not-allowed, the kind spelled for people."""
    exc = _refusal(lambda: policy.candidates(_approval_policy(), _who(), "signed_jwt", SA, _approval()))

    assert exc.reason == "credential-kind-not-allowed"
    assert exc.message == f"This caller may not obtain signed jwts for {SA}."


# ---------------------------------------------------------------------------
# decide: the grant


def test_the_grant_carries_every_field_of_the_decision() -> None:
    """GIVEN alice (issuer ci) entitled to SA with two scopes, 900 s
    WHEN she asks for one scope for 300 s
    THEN the grant names her qualified, the entitlement, kind, account, bounds, terms and time."""
    pol = _policy(_ent("e"))

    grant = _decide(pol, _who(), _ask(scopes=(READ,), lifetime_s=300))

    assert grant.caller == "ci/alice"
    assert grant.issuer == "ci"
    assert grant.subject == "alice"
    assert grant.entitlement == "e"
    assert grant.kind == "access_token"
    assert grant.service_account == SA
    assert grant.delegates == ()
    assert grant.bounds == Bounds(not_after=NOW + _dt.timedelta(seconds=900), scopes=(CLOUD, READ))
    assert grant.terms == access_token.Terms((READ,), 300)
    assert grant.decided_at == NOW
    assert grant.request_id is None
    assert grant.break_glass is False


def test_the_subject_is_the_sub_claim_not_the_identity() -> None:
    """GIVEN a principal whose identity claim is email, with a different sub
    WHEN a grant is decided
    THEN the caller is ISSUER/IDENTITY and the subject is the sub claim."""
    pol = _policy(_ent("e", principals=[{"issuer": "ci", "claims": {"email": "a@example.com"}}]))
    who = Principal(issuer="ci", identity="a@example.com", claims={"sub": "12345", "email": "a@example.com"})

    grant = _decide(pol, who)

    assert grant.caller == "ci/a@example.com"
    assert grant.subject == "12345"


def test_a_principal_without_sub_gets_an_empty_subject() -> None:
    """GIVEN a principal whose claims have no sub
    WHEN a grant is decided
    THEN its subject is the empty string."""
    pol = _policy(_ent("e", principals=[{"issuer": "ci", "claims": {"email": "a@example.com"}}]))
    who = Principal(issuer="ci", identity="a@example.com", claims={"email": "a@example.com"})

    grant = _decide(pol, who)

    assert grant.subject == ""


def test_an_approval_narrows_the_bounds_and_marks_the_grant() -> None:
    """GIVEN an approval with 300 s left, one scope, 1 of 2 uses spent, break-glass
    WHEN alice vends on it
    THEN the bounds end with the window, keep that scope, have one use left, and the grant names the request."""
    approval = _approval(uses=1, break_glass=True)

    grant = _decide(_approval_policy(), _who(), approval=approval)

    assert grant.entitlement == "prod"
    assert grant.bounds.not_after == NOW + _dt.timedelta(seconds=300)
    assert grant.bounds.scopes == (CLOUD,)
    assert grant.bounds.uses_left == 1
    assert grant.request_id == "req-1"
    assert grant.break_glass is True
    assert grant.terms == access_token.Terms((CLOUD,), 300)


def test_an_ordinary_approval_is_not_break_glass() -> None:
    """GIVEN an approval that is not break-glass
    WHEN alice vends on it
    THEN the grant is not break-glass."""
    grant = _decide(_approval_policy(), _who(), approval=_approval())

    assert grant.break_glass is False
    assert grant.request_id == "req-1"


def test_a_scope_outside_the_approval_is_refused_even_if_the_entitlement_has_it() -> None:
    """GIVEN an approval for CLOUD only, of an entitlement allowing CLOUD and READ
    WHEN alice asks for READ on it
    THEN it is refused: the approval narrowed the bounds before the terms were set."""
    exc = _refusal(lambda: _decide(_approval_policy(), _who(), _ask(scopes=(READ,)), approval=_approval()))

    assert exc.reason == "scope-not-allowed"


def test_the_first_entitlement_that_grants_wins() -> None:
    """GIVEN two direct entitlements for alice and SA, the first with a chain, the second without
    WHEN she asks with no delegates
    THEN the first grants (with its chain)."""
    pol = _policy(_ent("chained", delegates=[HOP]), _ent("plain"))

    grant = _decide(pol, _who())

    assert grant.entitlement == "chained"


def test_a_later_entitlement_grants_what_an_earlier_refuses() -> None:
    """GIVEN a first entitlement with a chain and a second without, both for alice and SA
    WHEN she asks with an empty chain
    THEN the second grants."""
    pol = _policy(_ent("chained", delegates=[HOP]), _ent("plain"))

    grant = _decide(pol, _who(), _ask(delegates=()))

    assert grant.entitlement == "plain"
    assert grant.delegates == ()


def test_when_every_candidate_refuses_the_first_refusal_is_raised() -> None:
    """GIVEN two entitlements for alice and SA: one with a chain, then one with a 300 s maximum
    WHEN she asks for 600 s with an empty chain (the first refuses the chain, the second the lifetime)
    THEN the refusal raised is the first entitlement's (delegates), not the last's."""
    pol = _policy(_ent("chained", delegates=[HOP]), _ent("short", max_lifetime=300))

    exc = _refusal(lambda: _decide(pol, _who(), _ask(delegates=(), lifetime_s=600)))

    assert exc.reason == "delegates-not-allowed"


def test_a_bad_request_from_the_kind_is_also_collected() -> None:
    """GIVEN one entitlement with a 300 s maximum
    WHEN alice asks for 600 s
    THEN the kind's BadRequestError (lifetime-too-long) is raised as is."""
    pol = _policy(_ent("short", max_lifetime=300))

    exc = _refusal(lambda: _decide(pol, _who(), _ask(lifetime_s=600)))

    assert isinstance(exc, BadRequestError)
    assert exc.reason == "lifetime-too-long"


def test_a_kind_refusal_of_the_first_candidate_lets_the_second_grant() -> None:
    """GIVEN a 300 s entitlement then a 900 s one, both for alice and SA
    WHEN she asks for 600 s
    THEN the second grants."""
    pol = _policy(_ent("short", max_lifetime=300), _ent("long"))

    grant = _decide(pol, _who(), _ask(lifetime_s=600))

    assert grant.entitlement == "long"
    assert grant.terms.lifetime_s == 600


def test_decide_uses_the_kind_module_it_is_given() -> None:
    """GIVEN an entitlement for ID tokens with one audience
    WHEN alice asks for an ID token for it
    THEN the grant is of kind id_token with that kind's bounds."""
    pol = _policy(_ent("ids", credentials=["id_token"], scopes=[], id_token={"audiences": ["https://a.example"]}))
    ask = id_token.Ask(
        service_account=SA,
        audience="https://a.example",
        include_email=False,
        delegates=None,
        reason=None,
        request_id=None,
    )

    grant = _decide(pol, _who(), ask, kind=id_token)

    assert grant.kind == "id_token"
    assert grant.bounds.audiences == ("https://a.example",)


# ---------------------------------------------------------------------------
# reading records


@pytest.mark.parametrize(
    ("who", "owner", "extra", "auditors", "allowed"),
    [
        (_who(), "ci/alice", frozenset(), (), True),
        (_who(), "ci/bob", frozenset(), (), False),
        (_who(issuer="gh"), "ci/alice", frozenset(), (), False),
        (_who("eve"), "ci/bob", frozenset(), ("ci/eve",), True),
        (_who("eve", issuer="gh"), "ci/bob", frozenset(), ("ci/eve",), False),
        (_who("carol"), "ci/bob", frozenset({"ci/carol"}), (), True),
        (_who("carol"), "ci/bob", frozenset({"ci/dave"}), (), False),
    ],
    ids=[
        "owner",
        "other",
        "owner-name-other-issuer",
        "auditor",
        "auditor-name-other-issuer",
        "listed-reader",
        "unlisted-reader",
    ],
)
def test_can_read(who: Principal, owner: str, extra: frozenset[str], auditors: tuple[str, ...], allowed: bool) -> None:
    """GIVEN an owner, the auditors and extra readers (all qualified)
    WHEN ``who`` asks to read
    THEN only the owner, an auditor or a listed reader may, each by qualified identity."""
    pol = _policy(_ent("e"), auditors=auditors)

    result = policy.can_read(pol, who, owner, extra)

    assert result is allowed


def test_can_read_defaults_to_no_extra_readers() -> None:
    """GIVEN no extra readers passed
    WHEN a stranger asks to read
    THEN it is refused and the owner is allowed."""
    pol = _policy(_ent("e"))

    stranger, owner = policy.can_read(pol, _who("eve"), "ci/alice"), policy.can_read(pol, _who(), "ci/alice")

    assert (stranger, owner) == (False, True)
