"""Use cases: vend credentials, read the ledger. No transport code here.

A vend reads top to bottom:
``identity.verify`` -> ``inputs`` -> ``policy.decide`` -> (``approvals`` check)
-> ``ledger.reserve`` (jti + record [+ approval use], one atomic write)
-> ``iam.<method>`` -> ``ledger.mark_issued`` -> one audit line -> response.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vending import clock, gcs, inputs, ledger, log, policy
from vending.config import Settings, matches
from vending.errors import BadRequestError, ConflictError, NotFoundError, PermissionDeniedError, VendingError
from vending.events import Events, make_event
from vending.iam import IamCredentials
from vending.identity import Principal, VerifiedToken, Verifier
from vending.ledger import Ledger, Reservation
from vending.store.base import Delete, Store, StoreConflict, Write
from vending.store.indexes import REPLAY


@dataclass
class Minted:
    credential: str
    expire_time: _dt.datetime | None
    key_id: str | None = None
    state: str = ledger.ACTIVE


@dataclass
class Audit:
    """Fields of the one audit line written per vend attempt."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    def set(self, **kw: Any) -> None:
        self.fields.update({k: v for k, v in kw.items() if v is not None})


@dataclass
class Approved:
    """An ACTIVE access request the caller may vend against (from ``approvals``)."""

    request_id: str
    entitlement: Any
    window_end: _dt.datetime
    writes: list[Write]
    break_glass: bool
    numbers: list[int] = field(default_factory=list)       # use numbers to try, in order
    writes_for: Callable[[int], list[Write]] | None = None  # the writes that consume use n


class Queries:
    """Read side and request actions, mixed into Service (kept apart for clarity)."""

    settings: Settings
    policy: Any
    store: Store
    ledger: Ledger
    approvals: Any
    authenticate: Callable[[str | None], VerifiedToken]

    # -- access requests ---------------------------------------------------
    def create_request(self, authorization: str | None, raw_body: bytes) -> dict[str, Any]:
        caller = self.authenticate(authorization)
        body = inputs.parse_json(raw_body)  # malformed bodies are refused before the token is consumed
        self.ledger.consume(caller.replay_key, caller.expires_at)
        result: dict[str, Any] = self.approvals.create(caller.principal, body)
        log.notice("access request created", audit=True, principal=caller.principal.identity,
                   request_id=result["id"], entitlement=result["entitlement"], state=result["state"],
                   break_glass=result["break_glass"])
        return result

    def get_request(self, authorization: str | None, request_id: str) -> dict[str, Any]:
        caller = self.authenticate(authorization)
        result: dict[str, Any] = self.approvals.get(caller.principal, _valid_id(request_id, "request"))
        return result

    def act_on_request(self, authorization: str | None, request_id: str, action: str,
                       raw_body: bytes) -> dict[str, Any]:
        caller = self.authenticate(authorization)
        request_id = _valid_id(request_id, "request")
        comment = None
        if raw_body.strip():
            body = inputs.parse_json(raw_body)
            inputs.check_fields(body, (), ("comment",))
            comment = inputs.text(body.get("comment"), "comment")
        self.ledger.consume(caller.replay_key, caller.expires_at)
        result: dict[str, Any] = self.approvals.act(caller.principal.identity, request_id, action,
                                                    via="http", comment=comment)
        log.notice("access request action", audit=True, principal=caller.principal.identity,
                   request_id=request_id, action=action, state=result["state"])
        return result

    # -- the ledger ------------------------------------------------------------
    def get_issuance(self, authorization: str | None, issuance_id: str) -> dict[str, Any]:
        caller = self.authenticate(authorization)
        doc = self.ledger.get(_valid_id(issuance_id, "issuance"))
        if doc is None:
            raise NotFoundError(f"No issuance {issuance_id}.", reason="issuance-not-found")
        if not policy.can_read(self.policy, caller.principal, doc.data.get("principal", "")):
            raise PermissionDeniedError("Only auditors and the caller it was issued to may read an issuance.",
                                        reason="not-a-reader")
        return ledger.view(doc.data, clock.now())

    def list_issuances(self, authorization: str | None, args: dict[str, str]) -> dict[str, Any]:
        caller = self.authenticate(authorization)
        allowed = {"state", "service_account", "principal", "since", "page_size", "page_token"}
        unknown = sorted(set(args) - allowed)
        if unknown:
            raise BadRequestError(f"Unknown query parameter(s): {', '.join(unknown)}.", reason="unknown-field")
        state = args.get("state")
        if state is not None and state not in ledger.STATES:
            raise BadRequestError(f"state must be one of {', '.join(ledger.STATES)}.", reason="invalid-state")
        sa = inputs.service_account(args["service_account"]) if "service_account" in args else None
        principal = args.get("principal")
        if principal is not None:
            inputs.text(principal, "principal", required=True)
        if not self.policy.is_auditor(caller.principal.identity):
            if principal not in (None, caller.principal.identity):
                raise PermissionDeniedError("Only auditors may list other callers' issuances.",
                                            reason="not-an-auditor")
            principal = caller.principal.identity
        since = None
        if "since" in args:
            try:
                since = clock.parse_rfc3339(args["since"])
            except ValueError as exc:
                raise BadRequestError("since must be an RFC 3339 timestamp.", reason="invalid-since") from exc
        try:
            page_size = int(args.get("page_size", "50"))
        except ValueError:
            page_size = 0
        if not 1 <= page_size <= 500:
            raise BadRequestError("page_size must be between 1 and 500.", reason="invalid-page-size")
        records, token = self.ledger.list(state=state, service_account=sa, principal=principal, since=since,
                                          page_size=page_size, page_token=args.get("page_token"))
        now = clock.now()
        out: dict[str, Any] = {"issuances": [ledger.view(r, now) for r in records]}
        if token:
            out["next_page_token"] = token
        return out


class Service(Queries):
    def __init__(self, settings: Settings, store: Store, iam: IamCredentials, verifier: Verifier,
                 events: Events, approvals: Any = None) -> None:
        self.settings = settings
        self.policy = settings.policy
        self.store = store
        self.iam = iam
        self.verifier = verifier
        self.events = events
        self.ledger = Ledger(store, retention_days=settings.retention_days)
        self.approvals = approvals
        self._bot_verifier: Any = None

    def bot_verifier(self) -> Any:
        """Verifier of signed chat-ops messages, built on first use."""
        if self._bot_verifier is None:
            from vending.identity import BotVerifier

            self._bot_verifier = BotVerifier(
                self.policy.bots, audience=self.policy.bot_audience or self.policy.issuers[0].audience,
                keys_base_url=self.settings.keys_base_url, max_ttl_s=self.policy.bot_message_max_ttl_seconds)
        return self._bot_verifier

    # -- authentication ---------------------------------------------------
    def authenticate(self, authorization: str | None) -> VerifiedToken:
        return self.verifier.verify_authorization(authorization)

    # -- vending --------------------------------------------------------------
    def vend_access_token(self, authorization: str | None, raw_body: bytes) -> dict[str, Any]:
        audit = Audit("access_token")

        def run() -> dict[str, Any]:
            caller = self.authenticate(authorization)
            audit.set(principal=caller.principal.identity, issuer=caller.principal.issuer)
            body = inputs.access_token_body(inputs.parse_json(raw_body))
            audit.set(service_account=body.service_account, scopes=body.scopes, lifetime_s=body.lifetime_s,
                      access_request_id=body.request_id)
            now = clock.now()
            approved = self._approved(caller.principal, body.request_id, now)
            window_left = None
            if approved is not None:
                window_left = int((approved.window_end - now).total_seconds())
            grant = policy.decide_access_token(
                self.policy, caller.principal, body.service_account, body.scopes, body.lifetime_s,
                body.delegates, via_request=approved.entitlement if approved else None,
                max_lifetime_s=window_left)
            audit.set(entitlement=grant.entitlement.name, scopes=grant.scopes, lifetime_s=grant.lifetime_s)

            def mint(issuance_id: str) -> Minted:
                tok = self.iam.generate_access_token(grant.service_account, grant.scopes, grant.lifetime_s,
                                                     grant.delegates, reason=_reason(issuance_id))
                return Minted(tok.token, tok.expire_time)

            issuance_id, minted = self._issue(
                caller, grant, audit, mint, approved=approved, reason=body.reason,
                scopes=grant.scopes, lifetime_s=grant.lifetime_s,
                reserved_until=now + _dt.timedelta(seconds=grant.entitlement.max_lifetime))
            assert minted.expire_time is not None
            return {
                "access_token": minted.credential,
                "token_type": "Bearer",
                "expire_time": clock.rfc3339(minted.expire_time),
                "expires_in": max(0, int((minted.expire_time - clock.now()).total_seconds())),
                "issuance_id": issuance_id,
                "service_account": grant.service_account,
            }

        return self._audited(audit, run)

    def vend_id_token(self, authorization: str | None, raw_body: bytes) -> dict[str, Any]:
        audit = Audit("id_token")

        def run() -> dict[str, Any]:
            caller = self.authenticate(authorization)
            audit.set(principal=caller.principal.identity, issuer=caller.principal.issuer)
            body = inputs.id_token_body(inputs.parse_json(raw_body))
            audit.set(service_account=body.service_account, audience=body.audience, access_request_id=body.request_id)
            now = clock.now()
            approved = self._approved(caller.principal, body.request_id, now)

            def check(ent: Any) -> None:
                if not any(matches(m, body.audience) for m in ent.id_token.audiences):
                    raise PermissionDeniedError(f"Audience {body.audience[:200]!r} is not allowed for ID tokens "
                                                "of this service account.", reason="audience-not-allowed")

            grant = policy.decide_kind(self.policy, caller.principal, "id_token", body.service_account,
                                       body.delegates, check, via_request=approved.entitlement if approved else None)
            audit.set(entitlement=grant.entitlement.name)

            def mint(issuance_id: str) -> Minted:
                token = self.iam.generate_id_token(grant.service_account, body.audience, body.include_email,
                                                   grant.delegates, reason=_reason(issuance_id))
                return Minted(token, _jwt_exp(token) or clock.now() + _dt.timedelta(hours=1))

            issuance_id, minted = self._issue(
                caller, grant, audit, mint, approved=approved, reason=body.reason,
                reserved_until=now + _dt.timedelta(hours=1), details={"audience": body.audience})
            if approved is not None and minted.expire_time and minted.expire_time > approved.window_end:
                log.warning("ID token outlives its approval window (IAM fixes ID tokens at 1 h)",
                            issuance_id=issuance_id)
            return {"id_token": minted.credential, "expire_time": _fmt(minted.expire_time),
                    "issuance_id": issuance_id, "service_account": grant.service_account}

        return self._audited(audit, run)

    def vend_signed_jwt(self, authorization: str | None, raw_body: bytes) -> dict[str, Any]:
        audit = Audit("signed_jwt")

        def run() -> dict[str, Any]:
            caller = self.authenticate(authorization)
            audit.set(principal=caller.principal.identity, issuer=caller.principal.issuer)
            body = inputs.signed_jwt_body(inputs.parse_json(raw_body))
            aud = body.claims.get("aud")
            audit.set(service_account=body.service_account, audience=aud[:1000] if isinstance(aud, str) else None,
                      access_request_id=body.request_id)
            now = clock.now()
            approved = self._approved(caller.principal, body.request_id, now)
            claims: dict[str, Any] = {}

            def check(ent: Any) -> None:
                claims.clear()
                claims.update(_jwt_claims(ent, body.claims, now, approved))

            grant = policy.decide_kind(self.policy, caller.principal, "signed_jwt", body.service_account,
                                       body.delegates, check, via_request=approved.entitlement if approved else None)
            claims.update(iss=grant.service_account, sub=grant.service_account, iat=int(now.timestamp()))
            audit.set(entitlement=grant.entitlement.name)
            expire_time = clock.from_epoch(claims["exp"])

            def mint(issuance_id: str) -> Minted:
                sig = self.iam.sign_jwt(grant.service_account, claims, grant.delegates, reason=_reason(issuance_id))
                return Minted(sig.value, expire_time, key_id=sig.key_id)

            issuance_id, minted = self._issue(
                caller, grant, audit, mint, approved=approved, reason=body.reason, reserved_until=expire_time,
                details={"audience": claims.get("aud")})
            return {"signed_jwt": minted.credential, "key_id": minted.key_id, "expire_time": _fmt(expire_time),
                    "issuance_id": issuance_id, "service_account": grant.service_account}

        return self._audited(audit, run)

    def vend_signed_blob(self, authorization: str | None, raw_body: bytes) -> dict[str, Any]:
        audit = Audit("signed_blob")

        def run() -> dict[str, Any]:
            caller = self.authenticate(authorization)
            audit.set(principal=caller.principal.identity, issuer=caller.principal.issuer)
            body = inputs.signed_blob_body(inputs.parse_json(raw_body, inputs.MAX_BLOB_BODY_BYTES))
            audit.set(service_account=body.service_account, payload_bytes=len(body.payload),
                      payload_sha256=ledger.sha256(body.payload), access_request_id=body.request_id)
            now = clock.now()
            approved = self._approved(caller.principal, body.request_id, now)
            url: list[Any] = []

            def check(ent: Any) -> None:
                rules = ent.signed_blob
                if len(body.payload) > rules.max_payload_bytes:
                    raise BadRequestError(f"payload is {len(body.payload)} bytes; the maximum is "
                                          f"{rules.max_payload_bytes}.", reason="payload-too-large")
                url.clear()
                if rules.gcs_v4_only:
                    v4 = gcs.parse(body.payload, body.canonical_request, now)
                    if rules.buckets and not any(matches(m, v4.bucket) for m in rules.buckets):
                        raise PermissionDeniedError(f"Signing URLs for bucket {v4.bucket!r} is not allowed.",
                                                    reason="bucket-not-allowed")
                    url.append(v4)

            grant = policy.decide_kind(self.policy, caller.principal, "signed_blob", body.service_account,
                                       body.delegates, check, via_request=approved.entitlement if approved else None)
            audit.set(entitlement=grant.entitlement.name)
            v4 = url[0] if url else None
            details = {"payload_sha256": ledger.sha256(body.payload)}
            if v4 is not None:
                details.update(bucket=v4.bucket, object=v4.object_path[:1024])

            def mint(issuance_id: str) -> Minted:
                sig = self.iam.sign_blob(grant.service_account, body.payload, grant.delegates,
                                         reason=_reason(issuance_id))
                if v4 is not None:  # a signed URL: live until the URL expires
                    return Minted(sig.value, v4.expires_at, key_id=sig.key_id)
                return Minted(sig.value, None, key_id=sig.key_id, state=ledger.SIGNED)

            issuance_id, minted = self._issue(
                caller, grant, audit, mint, approved=approved, reason=body.reason,
                reserved_until=(v4.expires_at if v4 else now + _dt.timedelta(hours=12)), details=details)
            return {"signed_blob": minted.credential, "key_id": minted.key_id, "issuance_id": issuance_id,
                    "service_account": grant.service_account}

        return self._audited(audit, run)

    def _approved(self, principal: Principal, request_id: str | None, now: _dt.datetime) -> Approved | None:
        if request_id is None:
            return None
        if self.approvals is None:
            raise VendingError("Access requests are not enabled.")
        approved: Approved = self.approvals.prepare_use(principal, request_id, now)
        return approved

    def _issue(self, caller: VerifiedToken, grant: policy.Grant, audit: Audit, mint: Callable[[str], Minted], *,
               approved: Approved | None, reason: str | None, reserved_until: _dt.datetime,
               scopes: tuple[str, ...] = (), lifetime_s: int | None = None,
               details: dict[str, Any] | None = None) -> tuple[str, Minted]:
        issuance_id = ledger.new_id()
        audit.set(issuance_id=issuance_id)
        principal = caller.principal
        break_glass = bool(approved and approved.break_glass)
        res = Reservation(
            id=issuance_id, kind=grant.kind, principal=principal.identity, issuer=principal.issuer,
            subject=str(principal.claims.get("sub", "")), entitlement=grant.entitlement.name,
            service_account=grant.service_account, delegates=grant.delegates, reserved_until=reserved_until,
            scopes=scopes, lifetime_s=lifetime_s, reason=reason,
            request_id=approved.request_id if approved else None, break_glass=break_glass,
            details=details or {})
        used = self._reserve(res, caller, approved)
        try:
            minted = mint(issuance_id)
        except VendingError as exc:
            try:
                if exc.reason in AMBIGUOUS_IAM_FAILURES:  # IAM may have minted: never claim "failed"
                    self.ledger.mark_unconfirmed(issuance_id, exc.reason, until=reserved_until)
                    log.warning("IAM gave no usable answer: a credential may exist until reserved_until",
                                issuance_id=issuance_id, reason=exc.reason)
                else:  # IAM refused: nothing minted, so the caller may retry with the same token
                    release: list[Write] = [Delete(REPLAY, caller.replay_key)] if caller.replay_key else []
                    if approved is not None and used is not None and approved.writes_for is not None:
                        release += [Delete(w.kind, w.id) for w in approved.writes_for(used)]
                    self.ledger.mark_failed(issuance_id, exc.reason, release=release)
            except VendingError as store_exc:  # the sweep reconciles a record left 'issuing'
                log.error("could not mark issuance failed", issuance_id=issuance_id, error=store_exc.reason)
            raise
        digest = self.ledger.mark_issued(issuance_id, minted.credential, expire_time=minted.expire_time,
                                         key_id=minted.key_id, state=minted.state)
        audit.set(token_sha256=digest, expire_time=minted.expire_time, break_glass=break_glass or None)
        if approved is not None and used is not None:
            try:  # bookkeeping only: the use was consumed atomically with the reservation
                self.approvals.record_use(approved.request_id, used)
            except VendingError as exc:  # the credential is minted and recorded: hand it out
                log.error("could not count the approval use", request_id=approved.request_id, use=used,
                          issuance_id=issuance_id, error=exc.reason)
        event = make_event("credential.issued", issuance_id=issuance_id, kind=grant.kind,
                           entitlement=grant.entitlement.name, service_account=grant.service_account,
                           principal=principal.identity, request_id=res.request_id,
                           expire_time=minted.expire_time, break_glass=break_glass)
        self.events.publish("notifications", event)
        if break_glass:
            self.events.publish("alerts", {**event, "type": "break_glass.used"})
        return issuance_id, minted

    def _reserve(self, res: Reservation, caller: VerifiedToken, approved: Approved | None) -> int | None:
        """Reserve the record; with an approval, consume the first free use (exactly one winner each)."""
        if approved is None or approved.writes_for is None:
            self.ledger.reserve(res, replay_key=caller.replay_key, replay_expires_at=caller.expires_at)
            return None
        for n in approved.numbers:
            try:
                self.ledger.reserve(res, replay_key=caller.replay_key, replay_expires_at=caller.expires_at,
                                    extra=approved.writes_for(n))
                return n
            except StoreConflict:
                continue
        raise ConflictError("Every use of this approval has been consumed.", reason="approval-consumed")

    def _audited(self, audit: Audit, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            result = run()
        except VendingError as exc:
            log.emit("WARNING" if exc.http_status < 500 else "ERROR", "vend denied" if exc.http_status < 500
                     else "vend failed", audit=True, kind=audit.kind, decision="deny", reason=exc.reason,
                     status=exc.http_status, detail=exc.detail or exc.message, **audit.fields)
            raise
        log.notice("vend allowed", audit=True, kind=audit.kind, decision="allow", reason="granted", **audit.fields)
        return result


# IAM failures after which a credential may nevertheless exist: no answer in time, a dropped
# connection, or a 200 whose body could not be read. The record becomes ``unconfirmed``.
AMBIGUOUS_IAM_FAILURES = frozenset({"iam-unavailable", "iam-bad-response"})


def _reason(issuance_id: str) -> str:
    return f"token-vending issuance {issuance_id}"


def _valid_id(value: str, what: str) -> str:
    if not re.fullmatch(r"[a-f0-9]{32}", value or ""):
        raise NotFoundError(f"No {what} {value[:64]!r}.", reason=f"{what}-not-found")
    return value


# A Google API audience: any https URL on googleapis.com or a subdomain (``https://SERVICE.googleapis.com/``,
# also the older ``https://SERVICE.googleapis.com/API_NAME`` form); host compared case-insensitively.
GOOGLE_API_AUDIENCE = re.compile(r"https://(?:[a-z0-9-]+\.)*googleapis\.com(?::443)?(?:/[^?#]*)?", re.IGNORECASE)
RESERVED_CLAIMS = frozenset({"iss", "sub", "iat"})


def _jwt_claims(ent: Any, requested: dict[str, Any], now: _dt.datetime, approved: Approved | None) -> dict[str, Any]:
    """Check caller claims against the entitlement; return them with ``exp`` set.

    ``iss``/``sub``/``iat`` are the service's (refused here, set after the decision); ``aud`` must be
    one of the entitlement's audiences; ``exp`` defaults to the latest allowed: now + ``max_ttl``
    (at most 12 h, 1 h for a Google API audience), never past an approval window.
    """
    from vending.config import SIGNED_JWT_GOOGLE_API_MAX_TTL_S, SIGNED_JWT_MAX_TTL_S

    rules = ent.signed_jwt
    refused = sorted(k for k in requested if k in RESERVED_CLAIMS or (k not in ("aud", "exp")
                                                                       and k not in rules.allowed_claims))
    if refused:
        shown = ", ".join(repr(k[:100]) for k in refused[:10])
        raise PermissionDeniedError(f"Claim(s) {shown} may not be set: iss, sub and iat are set by the service; "
                                    f"aud, exp and {list(rules.allowed_claims) or 'no other claims'} may be set.",
                                    reason="claim-not-allowed")
    aud = requested.get("aud")
    if not isinstance(aud, str) or not any(matches(m, aud) for m in rules.audiences):
        what = f"Audience {aud[:200]!r} is" if isinstance(aud, str) else "claims.aud must be a string and"
        raise PermissionDeniedError(f"{what} not allowed for signed JWTs of this service account.",
                                    reason="audience-not-allowed")
    now_s = int(now.timestamp())
    google_api = GOOGLE_API_AUDIENCE.fullmatch(aud) is not None
    max_ttl = min(rules.max_ttl, SIGNED_JWT_MAX_TTL_S)
    if google_api:
        max_ttl = min(max_ttl, SIGNED_JWT_GOOGLE_API_MAX_TTL_S)
    latest = now_s + max_ttl
    if approved is not None:
        latest = min(latest, int(approved.window_end.timestamp()))
    exp = requested.get("exp")
    if exp is None:  # absent (or null): the latest allowed
        exp = latest
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise BadRequestError("claims.exp must be an integer timestamp (seconds since the epoch).",
                              reason="invalid-exp")
    if exp <= now_s:
        raise BadRequestError("claims.exp must be in the future.", reason="invalid-exp")
    if exp > latest:
        why = " for a Google API audience" if google_api else ""
        if approved is not None and latest < now_s + max_ttl:
            why = ", the end of the approval window"
        raise BadRequestError(f"claims.exp is {exp - now_s}s away; the maximum is {latest - now_s}s{why}.",
                              reason="exp-too-far")
    return {**requested, "exp": exp}


def _jwt_exp(token: str) -> _dt.datetime | None:
    """The ``exp`` of a JWT returned by IAM (trusted: it came over TLS from IAM)."""
    import base64
    import json

    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return clock.from_epoch(int(claims["exp"]))
    except (IndexError, KeyError, ValueError, TypeError):
        return None


def _fmt(value: _dt.datetime | None) -> str | None:
    return clock.rfc3339(value) if value is not None else None
