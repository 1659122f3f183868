"""``vending policy``: check, explain and describe a policy file before it is deployed.

- ``check FILE``: the service's own validation (the same one line as at cold
  start) plus lint rules for policies that load but are risky or wrong:

  ========================  ========  ====================================================
  rule                      severity  what
  ========================  ========  ====================================================
  target-is-delegate        error     an entitlement vends an account that is a delegation
                                      hop of another entitlement (its token mints the next
                                      hop's, so the chain's target is reachable without
                                      that entitlement's rules)
  target-is-bot             error     an entitlement vends a chat-ops bot's account (its
                                      credentials sign approvals)
  approval-bypass           error     an entitlement without approval admits callers of one
                                      that needs approval, for the same account and kind
  raw-blob-signing          warning   ``acknowledge_raw_signing``: the account's whole
                                      signing power
  pattern-not-linear        error     a pattern with a backreference, a lookaround, a
                                      conditional or a repeat inside a repeat (backtracking
                                      can take exponential time on a caller's claim)
  pattern-non-ascii         warning   ``\\w``, ``\\d``, ``\\s`` (or their negations) without
                                      ``(?a)``: they match non-ASCII letters and digits
                                      (an Arabic-Indic digit is a ``\\d``)
  shadowed-entitlement      warning   an earlier entitlement admits every caller of a later
                                      one for the same account and kind: the earlier one
                                      decides while it allows
  ========================  ========  ====================================================

  Exit codes: 0 valid (warnings allowed unless ``--strict``), 1 lint errors (or
  warnings with ``--strict``), 2 the file does not load (or usage).

- ``explain --token-claims FILE --service-account SA``: which entitlement would
  allow a caller with those claims, or which rule refused it, without calling
  IAM or checking a signature. Exit 0 allowed, 3 the token would be refused
  (issuer or audience), 4 the policy refuses it (as the client's 403).

- ``schema``: the JSON Schema of the policy file, generated from the pydantic
  model (committed as ``docs/policy.schema.json``); ``reference``: the field
  reference in ``docs/policy.md`` (between its generated markers).

Tooling only: this module is not part of the deployed function archive.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from vending import config as cfg
from vending import diagnostics
from vending.config import Entitlement, Matcher, Pattern, Policy, PrincipalRule
from vending.errors import ConfigError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_INVALID = 2
EXIT_UNAUTHENTICATED = 3
EXIT_DENIED = 4


# -- lint ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One policy check result: its severity, rule, location and message."""

    severity: str  # "error" | "warning"
    rule: str
    loc: tuple[int | str, ...]
    message: str

    def line(self, path: str, root: yaml.Node | None) -> str:
        mark = diagnostics._mark(self.loc, root, key=False)
        position = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        return f"{position}: {self.severity} [{self.rule}] {self.message}"

    def to_json(self, path: str, root: yaml.Node | None) -> dict[str, Any]:
        mark = diagnostics._mark(self.loc, root, key=False)
        return {
            "severity": self.severity,
            "rule": self.rule,
            "message": self.message,
            "file": path,
            "line": mark.line + 1 if mark else None,
            "column": mark.column + 1 if mark else None,
            "path": ".".join(str(p) for p in self.loc),
        }


def _patterns(value: Any, loc: tuple[int | str, ...]) -> Iterator[tuple[tuple[int | str, ...], Pattern]]:
    """Every ``Pattern`` in the policy with its location (as the YAML nests it)."""
    if isinstance(value, Pattern):
        yield (*loc, "pattern"), value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _patterns(getattr(value, name), (*loc, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _patterns(item, (*loc, key))
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _patterns(item, (*loc, i))


_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
_UNICODE_CATEGORIES = {
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
}


def pattern_problems(pattern: str) -> tuple[list[str], list[str]]:
    """(not-linear reasons, non-ASCII classes) of a regular expression, from Python's own parser."""
    import re._parser as sre_parse  # the parser re.compile uses (Python 3.11+)

    parsed = sre_parse.parse(pattern)
    ascii_only = bool(parsed.state.flags & re.ASCII)
    slow: list[str] = []
    wide: list[str] = []

    def char_matches(item: Any, ch: int) -> bool | None:
        """Whether a one-character item matches ``ch`` (None: not a one-character item)."""
        op, av = item
        name = str(op)
        if name == "LITERAL":
            return bool(av == ch)
        if name == "NOT_LITERAL":
            return bool(av != ch)
        if name == "ANY":
            return ch != ord("\n")
        if name == "IN":
            hit, negate = False, False
            for sub_op, sub_av in av:
                sub = str(sub_op)
                if sub == "NEGATE":
                    negate = True
                elif sub == "LITERAL":
                    hit = hit or sub_av == ch
                elif sub == "RANGE":
                    hit = hit or sub_av[0] <= ch <= sub_av[1]
                elif sub == "CATEGORY":
                    probe = {"CATEGORY_WORD": r"\w", "CATEGORY_DIGIT": r"\d", "CATEGORY_SPACE": r"\s"}
                    text = probe.get(str(sub_av).replace("NOT_", ""))
                    if text is None:
                        return None
                    found = re.fullmatch(text, chr(ch)) is not None
                    hit = hit or (found != ("NOT_" in str(sub_av)))
            return hit != negate
        return None

    def first_literal(items: Any) -> int | None:
        """The character a sequence must start with, when it is one fixed character."""
        for op, av in items:
            name = str(op)
            if name == "LITERAL":
                return int(av)
            if name == "SUBPATTERN":
                return first_literal(av[-1])
            return None
        return None

    def walk(items: Any, guard: int | None, inside_repeat: bool) -> None:
        for op, av in items:
            name = str(op)
            if name in ("GROUPREF", "GROUPREF_EXISTS"):
                slow.append("a backreference or conditional group")
                if name == "GROUPREF_EXISTS":
                    walk(av[1], guard, inside_repeat)
                    if av[2] is not None:
                        walk(av[2], guard, inside_repeat)
            elif name in ("ASSERT", "ASSERT_NOT"):
                slow.append("a lookaround")
                walk(av[1], guard, inside_repeat)
            elif name in _REPEATS:
                _low, high, sub = av
                unbounded = high == sre_parse.MAXREPEAT
                if unbounded and inside_repeat:
                    # (a+)+ backtracks exponentially; (\.[a-z]+)* does not: each round starts with a
                    # character the inner repeat cannot take, so every split of the input is forced.
                    single = char_matches(sub[0], guard) if guard is not None and len(sub) == 1 else None
                    if single is None or single:
                        slow.append("a repeat inside a repeat")
                if unbounded or high > 1:
                    walk(sub, first_literal(sub), True)
                else:
                    walk(sub, guard, inside_repeat)
            elif name == "SUBPATTERN":
                walk(av[-1], guard, inside_repeat)
            elif name == "ATOMIC_GROUP":
                walk(av, guard, inside_repeat)
            elif name == "BRANCH":
                for branch in av[1]:
                    walk(branch, guard, inside_repeat)
            elif name == "IN":
                for sub_op, sub_av in av:
                    if str(sub_op) == "CATEGORY" and str(sub_av) in _UNICODE_CATEGORIES and not ascii_only:
                        wide.append(_UNICODE_CATEGORIES[str(sub_av)])
            elif name == "CATEGORY" and str(av) in _UNICODE_CATEGORIES and not ascii_only:
                wide.append(_UNICODE_CATEGORIES[str(av)])

    walk(parsed, None, False)
    return sorted(set(slow)), sorted(set(wide))


def _matcher_covers(a: Matcher, b: Matcher) -> bool:
    """Every value ``b`` matches, ``a`` matches too (decided only where it can be: else False)."""
    if isinstance(a, str):
        return isinstance(b, str) and a == b
    if isinstance(b, str):
        return cfg.matches(a, b)
    return a.pattern == b.pattern


def rule_covers(a: PrincipalRule, b: PrincipalRule) -> bool:
    """Rule ``a`` admits every caller rule ``b`` admits (same issuer; each claim ``a`` checks, ``b``
    checks at least as narrowly)."""
    if a.issuer != b.issuer:
        return False
    return all(claim in b.claims and _matcher_covers(m, b.claims[claim]) for claim, m in a.claims.items())


def _covered_rule(a: Entitlement, b: Entitlement) -> int | None:
    """The index of a principal rule of ``b`` that some rule of ``a`` covers, else None."""
    for j, rule_b in enumerate(b.principals):
        if any(rule_covers(rule_a, rule_b) for rule_a in a.principals):
            return j
    return None


def lint(policy: Policy) -> list[Finding]:
    """Risky or wrong things in a valid policy (see the module docstring for the rules)."""
    out: list[Finding] = []
    ents = policy.entitlements
    hops: dict[str, str] = {}
    for e in ents:
        for d in e.delegates:
            hops.setdefault(d.removeprefix("projects/-/serviceAccounts/"), e.name)
    bots = {b.service_account for b in policy.bots}
    for i, e in enumerate(ents):
        loc: tuple[int | str, ...] = ("entitlements", i, "service_account")
        if e.service_account in hops and hops[e.service_account] != e.name:
            out.append(
                Finding(
                    "error",
                    "target-is-delegate",
                    loc,
                    f"entitlement {e.name!r} vends {e.service_account}, a delegation hop of entitlement "
                    f"{hops[e.service_account]!r}: a credential of a hop mints the next hop's, so that "
                    "chain's target is reachable without its entitlement",
                )
            )
        if e.service_account in bots:
            out.append(
                Finding(
                    "error",
                    "target-is-bot",
                    loc,
                    f"entitlement {e.name!r} vends {e.service_account}, a chat-ops bot's account: its "
                    "credentials sign approvals (anyone holding one approves as any actor)",
                )
            )
        if e.signed_blob is not None and e.signed_blob.acknowledge_raw_signing:
            out.append(
                Finding(
                    "warning",
                    "raw-blob-signing",
                    ("entitlements", i, "signed_blob", "acknowledge_raw_signing"),
                    f"entitlement {e.name!r} signs raw blobs: the whole signing power of "
                    f"{e.service_account} (prefer gcs_v4_only with buckets)",
                )
            )
    for i, b in enumerate(ents):
        for k, a in enumerate(ents):
            if a is b or a.service_account != b.service_account:
                continue
            kinds = sorted(set(a.credentials) & set(b.credentials))
            j = _covered_rule(a, b)
            if not kinds or j is None:
                continue
            where = ("entitlements", i, "principals", j)
            if not a.requires_approval and b.requires_approval:
                out.append(
                    Finding(
                        "error",
                        "approval-bypass",
                        where,
                        f"entitlement {b.name!r} needs an approval, but {a.name!r} grants the same callers "
                        f"{', '.join(kinds)} for {b.service_account} without one",
                    )
                )
            elif not a.requires_approval and not b.requires_approval and k < i:
                out.append(
                    Finding(
                        "warning",
                        "shadowed-entitlement",
                        where,
                        f"entitlement {b.name!r} is shadowed by the earlier {a.name!r} for {', '.join(kinds)} "
                        f"of {b.service_account}: every caller of its principals[{j}] matches {a.name!r} "
                        "too, which decides while it allows",
                    )
                )
    for loc, pattern in _patterns(policy, ()):
        slow, wide = pattern_problems(pattern.pattern)
        if slow:
            out.append(
                Finding(
                    "error",
                    "pattern-not-linear",
                    loc,
                    f"pattern {pattern.pattern!r} has {', '.join(slow)}: matching can take exponential "
                    "time on a crafted claim; rewrite it without them",
                )
            )
        if wide:
            out.append(
                Finding(
                    "warning",
                    "pattern-non-ascii",
                    loc,
                    f"pattern {pattern.pattern!r} uses {' '.join(wide)}, which match non-ASCII characters "
                    "too; spell the class out ([0-9], [A-Za-z0-9_]) or start the pattern with (?a)",
                )
            )
    return out


def check(path: str, *, strict: bool = False, fmt: str = "text") -> int:
    """``vending policy check FILE``: print findings, return the exit code."""
    try:
        policy = cfg.load_policy(path)
    except ConfigError as exc:
        if fmt == "json":
            print(json.dumps({"file": path, "valid": False, "error": exc.message, "findings": []}, indent=2))
        else:
            print(exc.message, file=sys.stderr)
        return EXIT_INVALID
    with open(path, encoding="utf-8") as fh:
        root = diagnostics.compose(fh.read())
    findings = lint(policy)
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    if fmt == "json":
        doc = {"file": path, "valid": True, "findings": [f.to_json(path, root) for f in findings]}
        print(json.dumps(doc, indent=2))
    else:
        for f in findings:
            print(f.line(path, root))
        print(
            f"{path}: {len(policy.entitlements)} entitlement(s), {errors} error(s), {warnings} warning(s)",
            file=sys.stderr,
        )
    if errors or (strict and warnings):
        return EXIT_FINDINGS
    return EXIT_OK


# -- explain ------------------------------------------------------------------------------------------


def _describe_matcher(m: Matcher) -> str:
    return repr(m) if isinstance(m, str) else f"pattern {m.pattern!r}"


def explain(
    policy: Policy, claims: dict[str, Any], service_account: str, kind: str, issuer_name: str | None
) -> tuple[int, list[str]]:
    """(exit code, lines): the verdict the service would give, and why, for each entitlement."""
    from vending import policy as decisions
    from vending.errors import PermissionDeniedError
    from vending.identity import Principal

    lines: list[str] = []
    if issuer_name is not None:
        issuer = policy.issuer(issuer_name)
        if issuer is None:
            return EXIT_INVALID, [f"no issuer named {issuer_name!r} (issuers: {', '.join(policy.issuer_names)})"]
    else:
        issuer = next((i for i in policy.issuers if i.issuer == claims.get("iss")), None)
        if issuer is None:
            known = ", ".join(i.issuer for i in policy.issuers)
            return EXIT_UNAUTHENTICATED, [
                f"REFUSED 401 invalid-token: iss {claims.get('iss')!r} is not a pinned issuer (pinned: {known})"
            ]
    lines.append(f"issuer: {issuer.name} ({issuer.issuer})")
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if issuer.audience not in auds or len(auds) != 1:
        return EXIT_UNAUTHENTICATED, [
            *lines,
            f"REFUSED 401 invalid-token: aud {aud!r} is not exactly this service's audience {issuer.audience!r} "
            "for that issuer (the caller must ask its identity provider for a token with that audience)",
        ]
    identity = claims.get(issuer.identity_claim)
    if not isinstance(identity, str) or not identity:
        return EXIT_UNAUTHENTICATED, [
            *lines,
            f"REFUSED 401 invalid-token: no {issuer.identity_claim!r} claim (the issuer's identity_claim)",
        ]
    principal = Principal(issuer=issuer.name, identity=identity, claims=claims)
    lines.append(f"caller: {principal.qualified}")
    for e in policy.entitlements:
        notes: list[str] = []
        if e.service_account != service_account:
            lines.append(f"  entitlement {e.name!r}: not for {service_account} (it vends {e.service_account})")
            continue
        for n, rule in enumerate(e.principals):
            if rule.issuer != issuer.name:
                notes.append(f"principals[{n}]: issuer {rule.issuer!r}, not {issuer.name!r}")
                continue
            failed = [
                f"{claim} {claims.get(claim)!r} does not match {_describe_matcher(m)}"
                for claim, m in rule.claims.items()
                if not cfg.matches(m, claims.get(claim))
            ]
            notes.append(f"principals[{n}]: " + ("; ".join(failed) if failed else "matches"))
        kind_note = "" if kind in e.credentials else f"; does not list {kind} (lists {', '.join(e.credentials)})"
        approval = "; needs an approved access request" if e.requires_approval else ""
        lines.append(f"  entitlement {e.name!r}: " + " | ".join(notes) + kind_note + approval)
    try:
        found = decisions.candidates(policy, principal, kind, service_account, None)
    except PermissionDeniedError as exc:
        lines.append(f"REFUSED 403 {exc.reason}: {exc.message}")
        return EXIT_DENIED, lines
    e = found[0]
    bounds = [f"max_lifetime {e.max_lifetime}s"]
    if kind == "access_token":
        bounds.append(f"scopes {list(e.scopes)}")
    if e.delegates:
        bounds.append(f"delegates {list(e.delegates)}")
    lines.append(f"ALLOWED by entitlement {e.name!r} ({kind} of {service_account}; {', '.join(bounds)})")
    return EXIT_OK, lines


# -- schema and field reference -----------------------------------------------------------------------

MODELS: tuple[type[BaseModel], ...] = (
    cfg.Policy,
    cfg.Issuer,
    cfg.Entitlement,
    cfg.PrincipalRule,
    cfg.Pattern,
    cfg.IdTokenRules,
    cfg.SignedJwtRules,
    cfg.SignedBlobRules,
    cfg.BucketRule,
    cfg.ApprovalRules,
    cfg.Bot,
    cfg.KillSwitchRules,
)

DURATION_SUFFIXES = ("lifetime", "window", "timeout", "ttl", "_seconds")  # config._Model._durations

# What every field means (the JSON Schema's descriptions and the reference's last column).
# tests/unit/test_policy_tooling.py requires an entry for every field of every model.
FIELD_DOCS: dict[str, str] = {
    "Policy.issuers": "The trusted OIDC issuers (pinned: keys are fetched only from their `jwks_uri`).",
    "Policy.entitlements": "Who may obtain which credential of which service account. Deny by default.",
    "Policy.groups": "Named lists of identities, referred to as `group:NAME`.",
    "Policy.auditors": "Identities or groups that read every issuance and request, and may use the kill switch.",
    "Policy.bots": "Chat-ops bots whose signed messages (IAM `signJwt`) request, approve, deny, revoke or disable.",
    "Policy.bot_audience": "The `aud` bots' messages must carry (default: the first issuer's `audience`).",
    "Policy.bot_message_max_ttl_seconds": "Longest lifetime (`exp - iat`) of a bot message.",
    "Policy.kill_switch": "Who may engage a service account's kill switch and who approves an early release.",
    "Issuer.name": "Short name used by principal rules and in `ISSUER/IDENTITY`.",
    "Issuer.issuer": "The exact `iss` of its tokens.",
    "Issuer.jwks_uri": "Where its public keys are fetched: https (plain http only on loopback or for a development issuer).",
    "Issuer.audience": "The exact `aud` its tokens must carry for this service: one value unique to this deployment.",
    "Issuer.algorithms": "Asymmetric algorithms accepted (never `none` or HMAC).",
    "Issuer.identity_claim": "The claim that names the caller (`ISSUER/<value>`).",
    "Issuer.replay_protection": "Accept each token once (by `jti`, or a digest of its claims).",
    "Issuer.leeway_seconds": "Clock skew allowed on `exp`, `nbf` and `iat`.",
    "Issuer.jwks_ttl_seconds": "How long fetched keys are cached.",
    "Issuer.jwks_cooldown_seconds": "Minimum time between two refetches on an unknown `kid`.",
    "Issuer.max_token_ttl_seconds": "Longest `exp - iat` accepted.",
    "Issuer.development": "A local development issuer: refused with `VENDING_STORE=firestore`.",
    "Entitlement.name": "Unique name (access requests and logs name it).",
    "Entitlement.principals": "Who: any one rule that matches admits the caller.",
    "Entitlement.service_account": "The target service account whose credentials are vended.",
    "Entitlement.scopes": "OAuth scopes an access token may carry (required for `access_token`).",
    "Entitlement.max_lifetime": "Longest access token lifetime (at most 1 h; 12 h with `lifetime_extension`).",
    "Entitlement.lifetime_extension": "Allow `max_lifetime` up to 12 h (needs the organization policy constraint).",
    "Entitlement.delegates": "Delegation chain, in order (`EMAIL` or `projects/-/serviceAccounts/EMAIL`).",
    "Entitlement.credentials": "Credential kinds this entitlement grants.",
    "Entitlement.id_token": "Rules for ID tokens (required when `credentials` lists `id_token`).",
    "Entitlement.signed_jwt": "Rules for signed JWTs (required when `credentials` lists `signed_jwt`).",
    "Entitlement.signed_blob": "Rules for signed blobs (required when `credentials` lists `signed_blob`).",
    "Entitlement.approval": "An access request approved by others (or break-glass) is needed before vending.",
    "PrincipalRule.issuer": "Name of the issuer whose tokens this rule admits.",
    "PrincipalRule.claims": "Claim -> exact string or `{pattern: REGEX}` (anchored full match); all must match.",
    "Pattern.pattern": "A Python regular expression matched against the whole value (never a substring).",
    "IdTokenRules.audiences": "Audiences an ID token may be minted for.",
    "SignedJwtRules.audiences": "Values the JWT's `aud` may take.",
    "SignedJwtRules.max_ttl": "Furthest `exp` from now (1 h for Google APIs, at most 12 h).",
    "SignedJwtRules.allowed_claims": "Claims a caller may set besides `aud` and `exp`.",
    "SignedBlobRules.max_payload_bytes": "Largest payload to sign.",
    "SignedBlobRules.gcs_v4_only": "Sign only Cloud Storage V4 strings-to-sign for `buckets`.",
    "SignedBlobRules.buckets": "Buckets (and HTTP methods, GET by default) a V4 URL may name.",
    "SignedBlobRules.max_ttl": "Furthest expiry of a V4 signed URL (at most 7 days).",
    "SignedBlobRules.acknowledge_raw_signing": "Allow raw signing: the account's whole signing power.",
    "BucketRule.bucket": "Bucket name, exact or `{pattern: REGEX}`.",
    "BucketRule.methods": "HTTP methods a URL may sign.",
    "ApprovalRules.approvers": "Identities or groups who may approve (required unless break-glass).",
    "ApprovalRules.quorum": "Distinct approvers needed.",
    "ApprovalRules.max_window": "Longest window an approved request stays usable.",
    "ApprovalRules.max_uses": "Vends one approval allows.",
    "ApprovalRules.pending_timeout": "How long a request awaits approval before it expires.",
    "ApprovalRules.justification_pattern": "The justification must match this (required for break-glass).",
    "ApprovalRules.break_glass": "Self-approved, short (at most 1 h), every use alerted.",
    "Bot.service_account": "The bot's service account (its messages are signed with it).",
    "Bot.actions": "Actions its messages may carry (`disable` only when listed).",
    "Bot.actor_issuer": "Issuer of the people the bot names (optional with one issuer).",
    "KillSwitchRules.operators": "Identities or groups who may engage, read and release the kill switch.",
    "KillSwitchRules.approvers": "Who approves a release before it is safe.",
    "KillSwitchRules.quorum": "Distinct approvers a release request needs.",
    "KillSwitchRules.release_window": "How long an approved release request stays usable.",
    "KillSwitchRules.pending_timeout": "How long a release request awaits approval.",
}

DURATION_SCHEMA = {"type": "string", "pattern": "^[0-9]+[smh]?$", "description": "a duration: 600, 600s, 10m, 1h"}


def _is_duration(field_name: str) -> bool:
    return field_name.endswith(DURATION_SUFFIXES)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the policy file, from ``vending.config.Policy`` (what the service accepts)."""
    schema = Policy.model_json_schema(mode="validation")
    defs = schema.get("$defs", {})
    for model in MODELS:
        node = schema if model is Policy else defs.get(model.__name__)
        if node is None:
            continue
        for name, prop in node.get("properties", {}).items():
            prop.pop("title", None)
            prop["description"] = FIELD_DOCS[f"{model.__name__}.{name}"]
            if _is_duration(name):  # durations: seconds as a number, or "600s", "10m", "1h"
                number = {k: prop.pop(k) for k in list(prop) if k not in ("description", "default")}
                prop["anyOf"] = (
                    [number, DURATION_SCHEMA] if "anyOf" not in number else [*number["anyOf"], DURATION_SCHEMA]
                )
        if model is cfg.SignedBlobRules:  # a bare matcher means that bucket, GET only
            items = node["properties"]["buckets"]["items"]
            node["properties"]["buckets"]["items"] = {"anyOf": [items, {"type": "string"}, {"$ref": "#/$defs/Pattern"}]}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Token vending policy"
    schema["description"] = "The policy file (VENDING_CONFIG). Generated by `vending policy schema`; do not edit."
    return schema


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, __import__("types").UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        text = " or ".join(names)
        return text + (" (optional)" if type(None) in args else "")
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in args)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(info: Any) -> str:
    parts = []
    for meta in info.metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "min length ")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{symbol}{value}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            parts.append(f"`{pattern}`")
    return ", ".join(parts)


def _default(info: Any) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return "`" + json.dumps(info.default_factory()) + "`"
    value = info.default
    if value is None:
        return "unset"
    return "`" + json.dumps(list(value) if isinstance(value, tuple) else value) + "`"


def field_reference() -> str:
    """The Markdown field reference of every policy model (``docs/policy.md``, generated part)."""
    out: list[str] = []
    for model in MODELS:
        out.append(f"### {model.__name__}\n")
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        if doc and not doc.startswith("!!!"):
            out.append(doc + "\n")
        out.append("| field | type | default | constraints | meaning |")
        out.append("| --- | --- | --- | --- | --- |")
        for name, info in model.model_fields.items():
            type_text = _type_name(info.annotation)
            if _is_duration(name):
                type_text += " (duration)"
            out.append(
                f"| `{name}` | {type_text} | {_default(info)} | {_constraints(info)} | "
                f"{FIELD_DOCS[f'{model.__name__}.{name}']} |"
            )
        out.append("")
    return "\n".join(out)


REFERENCE_BEGIN = "<!-- BEGIN GENERATED: vending policy reference -->"
REFERENCE_END = "<!-- END GENERATED: vending policy reference -->"


# -- command line -------------------------------------------------------------------------------------


def _cmd_check(args: argparse.Namespace) -> int:
    return check(args.file, strict=args.strict, fmt=args.format)


def _cmd_explain(args: argparse.Namespace) -> int:
    path = args.config or os.environ.get("VENDING_CONFIG") or "config/example.yaml"
    try:
        policy = cfg.load_policy(path)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_INVALID
    try:
        claims = json.loads(Path(args.token_claims).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"vending: {args.token_claims}: cannot read the claims (a JSON object): {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not isinstance(claims, dict):
        print(f"vending: {args.token_claims}: the claims must be a JSON object", file=sys.stderr)
        return EXIT_INVALID
    code, lines = explain(policy, claims, args.service_account, args.kind, args.issuer)
    for line in lines:
        print(line)
    return code


def _cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    print(field_reference())
    return 0


EPILOG = (
    "exit codes: check: 0 valid (warnings allowed unless --strict), 1 lint errors (or warnings with "
    "--strict), 2 the file does not load; explain: 0 allowed, 3 the token would be refused (issuer, "
    "audience), 4 the policy refuses it, 2 usage or an unreadable file"
)


def register(sub: Any) -> None:
    """Add ``vending policy check|explain|schema|reference``."""
    p = sub.add_parser(
        "policy",
        help="check or explain a policy file before deploying it",
        description="Check or explain a policy file offline (no IAM call, no signature check).",
        epilog=EPILOG,
    )
    psub = p.add_subparsers(
        dest="policy_command", required=True, metavar="COMMAND", help="check, explain, schema or reference"
    )
    c = psub.add_parser(
        "check",
        help="validate the file and lint it (exit 0 ok, 1 findings, 2 invalid)",
        description="Validate a policy file as the service does at cold start, then lint it.",
        epilog=EPILOG,
    )
    c.add_argument("file", metavar="FILE", help="the policy YAML")
    c.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    c.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    c.set_defaults(func=_cmd_check)
    e = psub.add_parser(
        "explain",
        help="which entitlement would allow these token claims, or which rule refuses them",
        description="Decide a request offline for a caller's token claims: the entitlement that would "
        "allow it, or the rule that refuses it. No IAM call, no signature or expiry check.",
        epilog=EPILOG,
    )
    e.add_argument("--token-claims", required=True, metavar="FILE", help="the caller token's claims, a JSON object")
    e.add_argument("--service-account", required=True, metavar="SA", help="the target service account")
    e.add_argument(
        "--config", metavar="FILE", help="the policy file (default $VENDING_CONFIG, else config/example.yaml)"
    )
    e.add_argument(
        "--kind",
        choices=cfg.CREDENTIAL_KINDS,
        default="access_token",
        help="the credential kind (default access_token)",
    )
    e.add_argument("--issuer", metavar="NAME", help="the issuer by name (default: the one whose issuer is iss)")
    e.set_defaults(func=_cmd_explain)
    s = psub.add_parser("schema", help="print the policy file's JSON Schema (docs/policy.schema.json)")
    s.set_defaults(func=_cmd_schema)
    r = psub.add_parser("reference", help="print the policy field reference (docs/policy.md)")
    r.set_defaults(func=_cmd_reference)
