"""Settings from ``VENDING_*`` environment variables and the YAML policy file.

This is the only module that reads ``os.environ``. Everything is validated
once at cold start; a bad value raises ``ConfigError`` naming the variable, or
the file and the field (``config/example.yaml: entitlements[0].max_lifetime:
...``), and the process does not start.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vending.durations import parse_duration as parse_duration  # the one grammar (policy, HTTP, client)
from vending.errors import ConfigError

# Hard limits of the IAM Credentials API (reference §2.2, §8).
DEFAULT_MAX_LIFETIME_S = 3600  # without the org-policy extension
EXTENDED_MAX_LIFETIME_S = 43200  # with constraints/iam.allowServiceAccountCredentialLifetimeExtension
SIGNED_JWT_MAX_TTL_S = 43200  # signJwt: exp at most 12 h away
SIGNED_JWT_GOOGLE_API_MAX_TTL_S = 3600  # self-signed JWTs for Google APIs: 1 h
BREAK_GLASS_MAX_WINDOW_S = 3600  # break-glass windows stay short

ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"})
CREDENTIAL_KINDS = ("access_token", "id_token", "signed_jwt", "signed_blob")
CredentialKind = Literal["access_token", "id_token", "signed_jwt", "signed_blob"]

SA_EMAIL_RE = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?@[a-z0-9](?:[a-z0-9.-]{0,200}[a-z0-9])?\.gserviceaccount\.com"
)


def normalize_delegate(value: str) -> str:
    """``EMAIL`` or ``projects/-/serviceAccounts/EMAIL`` -> the canonical form."""
    email = value
    prefix = "projects/-/serviceAccounts/"
    if value.startswith(prefix):
        email = value[len(prefix) :]
    if not SA_EMAIL_RE.fullmatch(email):
        raise ValueError(f"{value!r} is not a service account email or projects/-/serviceAccounts/EMAIL")
    return prefix + email


Seconds = Annotated[int, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _durations(cls, value: Any, info: Any) -> Any:
        name = info.field_name or ""
        if name.endswith(("lifetime", "window", "timeout", "ttl", "_seconds")) and value is not None:
            return parse_duration(value)
        return value


class Pattern(_Model):
    """An anchored full-match regular expression."""

    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
        return value

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


Matcher = str | Pattern


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def secure_url(value: str) -> bool:
    """An https URL with a host (no credentials in it), or plain http on a loopback host (local stand-ins)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    if not host or parts.username or parts.password:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK_HOSTS)


# Unicode categories Cc (C0 and C1 controls, DEL; NEL among them), Zl and Zp: each is exactly this set.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(value: str) -> bool:
    """A control character (C0, DEL, C1) or a Unicode line / paragraph separator: one regex search."""
    return _CONTROL_RE.search(value) is not None


def matches(matcher: Matcher, value: Any) -> bool:
    """Exact string equality, or an anchored full match; never a substring.

    A value holding a control character or a line separator never matches (not even ``(?s).*``).
    """
    if not isinstance(value, str) or has_control(value):
        return False
    if isinstance(matcher, str):
        return value == matcher
    return matcher.regex.fullmatch(value) is not None


class Issuer(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    issuer: str
    jwks_uri: str
    audience: str
    algorithms: tuple[str, ...] = ("RS256",)
    identity_claim: str = "sub"
    replay_protection: bool = True
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwks_ttl_seconds: int = Field(default=3600, gt=0)
    jwks_cooldown_seconds: int = Field(default=30, ge=0)
    max_token_ttl_seconds: int = Field(default=86400, gt=0)
    development: bool = False

    @model_validator(mode="after")
    def _keys_over_https(self) -> Issuer:
        """Keys travel over https: plain http is accepted only on a loopback host or for a development issuer."""
        if not self.development and not secure_url(self.jwks_uri):
            raise ValueError(
                f"jwks_uri must be https://HOST/... (plain http only on a loopback host, or for a "
                f"development issuer), got {self.jwks_uri!r}"
            )
        return self

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in value if a not in ALLOWED_ALGORITHMS]
        if bad or not value:
            raise ValueError(
                f"only asymmetric algorithms {sorted(ALLOWED_ALGORITHMS)} are allowed, got {bad or 'none'}"
            )
        return value


class PrincipalRule(_Model):
    issuer: str
    claims: dict[str, Matcher] = Field(min_length=1)


class IdTokenRules(_Model):
    audiences: tuple[Matcher, ...] = Field(min_length=1)


class SignedJwtRules(_Model):
    """``aud`` must be one of ``audiences``; ``exp`` at most ``max_ttl`` away (1 h for Google APIs)."""

    audiences: tuple[Matcher, ...] = Field(min_length=1)
    max_ttl: int = Field(default=3600, gt=0, le=SIGNED_JWT_MAX_TTL_S)
    allowed_claims: tuple[str, ...] = ()

    @field_validator("allowed_claims")
    @classmethod
    def _not_reserved(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        reserved = sorted({"iss", "sub", "iat", "aud", "exp"} & set(value))
        if reserved:
            raise ValueError(
                f"{reserved} cannot be listed: the service sets iss, sub and iat; "
                "aud and exp are governed by audiences and max_ttl"
            )
        if any(not c for c in value):
            raise ValueError("claim names must not be empty")
        return value


HttpMethod = Literal["GET", "HEAD", "PUT", "POST", "DELETE"]
GCS_URL_MAX_TTL_S = 604800  # Cloud Storage's own limit for a V4 signed URL: 7 days


class BucketRule(_Model):
    """A bucket a V4 signed URL may name, and the HTTP methods it may sign (GET only by default)."""

    bucket: Matcher
    methods: tuple[HttpMethod, ...] = Field(default=("GET",), min_length=1)


class SignedBlobRules(_Model):
    """``gcs_v4_only``: only Cloud Storage V4 strings-to-sign (signed URLs), for ``buckets``.

    Anything else is raw blob signing: the account's whole signing power (a signature over
    arbitrary bytes is a JWT, a V2 URL, anything the key is trusted for), which an entitlement
    must acknowledge with ``acknowledge_raw_signing: true``.
    """

    max_payload_bytes: int = Field(default=65536, gt=0, le=65536)  # bodies are capped at 128 KiB
    gcs_v4_only: bool = False
    buckets: tuple[BucketRule, ...] = ()
    max_ttl: int = Field(default=3600, gt=0, le=GCS_URL_MAX_TTL_S)  # a V4 URL's expiry from now
    acknowledge_raw_signing: bool = False

    @field_validator("buckets", mode="before")
    @classmethod
    def _bucket_shorthand(cls, value: Any) -> Any:
        """A bare matcher (``"name"`` or ``{pattern: ...}``) means that bucket, GET only."""
        if isinstance(value, (list, tuple)):
            return [v if isinstance(v, dict) and "bucket" in v else {"bucket": v} for v in value]
        return value

    @model_validator(mode="after")
    def _coherent(self) -> SignedBlobRules:
        if self.gcs_v4_only:
            if not self.buckets:
                raise ValueError("gcs_v4_only needs buckets: the buckets (and methods) URLs may be signed for")
            if self.acknowledge_raw_signing:
                raise ValueError("acknowledge_raw_signing contradicts gcs_v4_only; choose one")
        else:
            if self.buckets:
                raise ValueError("buckets restricts Cloud Storage V4 string-to-sign payloads; set gcs_v4_only: true")
            if not self.acknowledge_raw_signing:
                raise ValueError(
                    "raw blob signing is the service account's whole signing power (a signature "
                    "over any bytes: JWTs, signed URLs...); set gcs_v4_only: true with buckets, "
                    "or acknowledge it with acknowledge_raw_signing: true"
                )
        return self


class ApprovalRules(_Model):
    approvers: tuple[str, ...] = ()
    quorum: int = Field(default=1, ge=1, le=10)
    max_window: int = Field(default=3600, gt=0, le=EXTENDED_MAX_LIFETIME_S)
    max_uses: int = Field(default=1, ge=1, le=1000)
    pending_timeout: int = Field(default=86400, gt=0)
    justification_pattern: Pattern | None = None
    break_glass: bool = False

    @model_validator(mode="after")
    def _coherent(self) -> ApprovalRules:
        if self.break_glass:
            if self.justification_pattern is None:
                raise ValueError("break_glass entitlements need a justification_pattern")
            if self.max_window > BREAK_GLASS_MAX_WINDOW_S:
                raise ValueError(f"break_glass max_window must be at most {BREAK_GLASS_MAX_WINDOW_S}s")
        elif not self.approvers:
            raise ValueError("approvers must list at least one identity or group")
        return self


class Entitlement(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    principals: tuple[PrincipalRule, ...] = Field(min_length=1)
    service_account: str
    scopes: tuple[str, ...] = ()
    max_lifetime: int = Field(default=DEFAULT_MAX_LIFETIME_S, gt=0)
    lifetime_extension: bool = False
    delegates: tuple[str, ...] = ()
    credentials: tuple[CredentialKind, ...] = ("access_token",)
    id_token: IdTokenRules | None = None
    signed_jwt: SignedJwtRules | None = None
    signed_blob: SignedBlobRules | None = None
    approval: ApprovalRules | None = None

    @field_validator("service_account")
    @classmethod
    def _email(cls, value: str) -> str:
        if not SA_EMAIL_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a service account email")
        return value

    @field_validator("delegates")
    @classmethod
    def _delegates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_delegate(v) for v in value)

    @model_validator(mode="after")
    def _limits(self) -> Entitlement:
        cap = EXTENDED_MAX_LIFETIME_S if self.lifetime_extension else DEFAULT_MAX_LIFETIME_S
        if self.max_lifetime > cap:
            hint = (
                ""
                if self.lifetime_extension
                else " (declare lifetime_extension: true if the organization policy allows up to 43200s)"
            )
            raise ValueError(f"max_lifetime {self.max_lifetime}s is above {cap}s{hint}")
        if "access_token" in self.credentials and not self.scopes:
            raise ValueError("scopes must list at least one OAuth scope for access tokens")
        for kind in ("id_token", "signed_jwt", "signed_blob"):
            if kind in self.credentials and getattr(self, kind) is None:
                raise ValueError(f"credentials lists {kind} but the {kind} section is missing")
        if self.approval and self.approval.break_glass and self.max_lifetime > self.approval.max_window:
            raise ValueError("break-glass max_lifetime must not exceed approval.max_window")
        return self

    @property
    def requires_approval(self) -> bool:
        return self.approval is not None


class Bot(_Model):
    """A chat-ops bot: its service account signs messages (IAM ``signJwt``) naming an acting person.

    ``actor_issuer``: the issuer whose identities the bot asserts (the person's identity is
    ``ISSUER/ACTOR``); optional when the policy has one issuer. ``disable`` (engage the kill
    switch of a service account) is never a default: a bot may send it only when listed.
    """

    service_account: str
    actions: tuple[Literal["request", "approve", "deny", "revoke", "disable"], ...] = (
        "request",
        "approve",
        "deny",
        "revoke",
    )
    actor_issuer: str | None = None


class KillSwitchRules(_Model):
    """Who may engage a service account's kill switch (``vending.killswitch``), and who releases it early.

    ``operators`` (and every auditor) may engage, read and release the switch. Before every
    credential issued before the kill has expired (``safe_at``), a release needs an ACTIVE
    release request approved by ``quorum`` distinct ``approvers``, never its own requester.
    With no approvers, a switch is only released once it is safe.
    """

    operators: tuple[str, ...] = ()
    approvers: tuple[str, ...] = ()
    quorum: int = Field(default=1, ge=1, le=10)
    release_window: int = Field(default=3600, gt=0, le=EXTENDED_MAX_LIFETIME_S)  # an approved release stays usable
    pending_timeout: int = Field(default=86400, gt=0, le=604800)  # a release request awaits approval


class Policy(_Model):
    issuers: tuple[Issuer, ...] = Field(min_length=1)
    entitlements: tuple[Entitlement, ...] = ()
    groups: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    auditors: tuple[str, ...] = ()
    bots: tuple[Bot, ...] = ()
    bot_audience: str | None = None
    bot_message_max_ttl_seconds: int = Field(default=600, gt=0, le=3600)
    kill_switch: KillSwitchRules | None = None

    @model_validator(mode="after")
    def _references(self) -> Policy:
        names = [i.name for i in self.issuers]
        if len(set(names)) != len(names):
            raise ValueError("issuer names must be unique")
        ent_names = [e.name for e in self.entitlements]
        if len(set(ent_names)) != len(ent_names):
            raise ValueError("entitlement names must be unique")
        for e in self.entitlements:
            for p in e.principals:
                if p.issuer not in names:
                    raise ValueError(f"entitlement {e.name!r} names unknown issuer {p.issuer!r}")
            refs = list(e.approval.approvers) if e.approval else []
            for ref in refs + list(self.auditors):
                if ref.startswith("group:") and ref[6:] not in self.groups:
                    raise ValueError(f"unknown group {ref!r}")
        ks = self.kill_switch
        for ref in (ks.operators + ks.approvers) if ks else ():
            if ref.startswith("group:") and ref[6:] not in self.groups:
                raise ValueError(f"kill_switch: unknown group {ref!r}")
        for bot in self.bots:
            if bot.actor_issuer is not None and bot.actor_issuer not in names:
                raise ValueError(f"bot {bot.service_account!r} names unknown actor_issuer {bot.actor_issuer!r}")
            if bot.actor_issuer is None and len(names) > 1:
                raise ValueError(
                    f"bot {bot.service_account!r}: set actor_issuer, the issuer whose identities "
                    f"it asserts (one of {names})"
                )
        # Every identity named in the policy is qualified by its issuer (ISSUER/IDENTITY).
        for where, members in self._identity_refs():
            for member in members:
                qualify(member, tuple(names), where)
        if ks and ks.approvers and len(self.expand(ks.approvers)) < ks.quorum:
            raise ValueError(f"kill_switch: quorum {ks.quorum} needs at least {ks.quorum} distinct approvers")
        return self

    def _identity_refs(self) -> list[tuple[str, tuple[str, ...]]]:
        out = [(f"groups.{g}", members) for g, members in self.groups.items()]
        out.append(("auditors", tuple(r for r in self.auditors if not r.startswith("group:"))))
        for e in self.entitlements:
            if e.approval:
                out.append(
                    (
                        f"entitlements.{e.name}.approval.approvers",
                        tuple(r for r in e.approval.approvers if not r.startswith("group:")),
                    )
                )
        if self.kill_switch:
            for name in ("operators", "approvers"):
                out.append(
                    (
                        f"kill_switch.{name}",
                        tuple(r for r in getattr(self.kill_switch, name) if not r.startswith("group:")),
                    )
                )
        return out

    def issuer(self, name: str) -> Issuer | None:
        return next((i for i in self.issuers if i.name == name), None)

    def entitlement(self, name: str) -> Entitlement | None:
        return next((e for e in self.entitlements if e.name == name), None)

    @cached_property
    def issuer_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.issuers)

    def expand(self, refs: tuple[str, ...]) -> frozenset[str]:
        """Qualified identities (``ISSUER/IDENTITY``) named directly or through ``group:NAME``."""
        out: set[str] = set()
        for ref in refs:
            members = self.groups.get(ref[6:], ()) if ref.startswith("group:") else (ref,)
            out.update(qualify(m, self.issuer_names, "") for m in members)
        return frozenset(out)

    @cached_property
    def auditor_set(self) -> frozenset[str]:
        return self.expand(self.auditors)

    def is_auditor(self, qualified_identity: str) -> bool:
        return qualified_identity in self.auditor_set

    @cached_property
    def kill_switch_operator_set(self) -> frozenset[str]:
        return self.expand(self.kill_switch.operators) if self.kill_switch else frozenset()

    def is_kill_switch_operator(self, qualified_identity: str) -> bool:
        """Auditors and the kill_switch section's operators may engage, read and release a kill switch."""
        return qualified_identity in self.kill_switch_operator_set or self.is_auditor(qualified_identity)

    @cached_property
    def target_service_accounts(self) -> frozenset[str]:
        """The service accounts credentials are vended for: the only ones a kill switch applies to."""
        return frozenset(e.service_account for e in self.entitlements)

    def bot_actor(self, bot: Bot, actor: str) -> str:
        """The qualified identity of a person a bot's message names."""
        issuer = bot.actor_issuer or self.issuer_names[0]
        return actor if split_qualified(actor, self.issuer_names) else f"{issuer}/{actor}"


def split_qualified(ref: str, issuer_names: tuple[str, ...]) -> tuple[str, str] | None:
    """``"ISSUER/IDENTITY"`` -> (issuer, identity) when ISSUER is a configured issuer name, else None."""
    head, sep, rest = ref.partition("/")
    return (head, rest) if sep and rest and head in issuer_names else None


def qualify(ref: str, issuer_names: tuple[str, ...], where: str) -> str:
    """An identity named in the policy, as ``ISSUER/IDENTITY``.

    An identity is (issuer, subject): two trusted issuers can both say "alice". A bare
    identity is accepted only when one issuer could produce it (the policy has one issuer).
    """
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"{where}: identities must be non-empty strings")
    if split_qualified(ref, issuer_names):
        return ref
    if len(issuer_names) == 1:
        return f"{issuer_names[0]}/{ref}"
    raise ValueError(
        f"{where}: {ref!r} does not name its issuer and {len(issuer_names)} issuers could produce "
        f"it; write it as ISSUER/IDENTITY (issuers: {', '.join(issuer_names)})"
    )


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy file; a ConfigError says ``FILE:LINE:COL: entitlement 'NAME', FIELD: ...``
    (see ``vending.diagnostics``: one line, a second one counting further problems)."""
    from vending import diagnostics

    path = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: policy file not found (set VENDING_CONFIG)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read policy file: {exc}") from exc
    try:
        root, raw = diagnostics.parse(text)
    except yaml.YAMLError as exc:
        raise ConfigError(diagnostics.yaml_error(path, exc)) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1:1: the policy must be a mapping (issuers:, entitlements:, ...)")
    duplicate = diagnostics.duplicate_keys(path, root)
    if duplicate:
        raise ConfigError(duplicate)
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(diagnostics.describe(path, exc, root, Policy)) from exc


def warnings(policy: Policy) -> list[tuple[str, dict[str, str]]]:
    """What the service logs at cold start about a valid but risky policy."""
    return [
        (
            "raw blob signing acknowledged: this entitlement grants the service account's whole signing power",
            {"entitlement": e.name, "service_account": e.service_account},
        )
        for e in policy.entitlements
        if e.signed_blob is not None and e.signed_blob.acknowledge_raw_signing
    ]


@dataclass(frozen=True)
class Settings:
    """Process settings; every field maps to one ``VENDING_*`` variable."""

    config_path: str  # VENDING_CONFIG
    store: str  # VENDING_STORE: "firestore" or "sqlite:PATH"
    project: str  # VENDING_PROJECT (falls back to GOOGLE_CLOUD_PROJECT)
    firestore_database: str  # VENDING_FIRESTORE_DATABASE
    iam_endpoint: str  # VENDING_IAM_ENDPOINT
    iam_token: str | None  # VENDING_IAM_TOKEN: static bearer, local stand-in only
    iam_timeout_s: float  # VENDING_IAM_TIMEOUT, seconds per attempt
    iam_retries: int  # VENDING_IAM_RETRIES, extra attempts on 500/503
    keys_base_url: str  # VENDING_KEYS_BASE_URL, service account public keys
    notifications_topic: str | None  # VENDING_NOTIFICATIONS_TOPIC
    alerts_topic: str | None  # VENDING_ALERTS_TOPIC
    events_file: str | None  # VENDING_EVENTS_FILE, local JSONL sink for events
    retention_days: int  # VENDING_RETENTION_DAYS, purge_at = expiry + this
    reservation_timeout_s: int  # VENDING_RESERVATION_TIMEOUT, issuing -> unconfirmed
    log_level: str  # VENDING_LOG_LEVEL
    policy: Policy
    # VENDING_IAM_ADMIN_ENDPOINT: the IAM API (service account disable / enable / get, for the kill
    # switch). With a static VENDING_IAM_TOKEN (the local stand-in) it defaults to VENDING_IAM_ENDPOINT.
    iam_admin_endpoint: str = "https://iam.googleapis.com"
    # VENDING_SESSION_KEY: the secret that signs console sessions (HMAC-SHA256), at least 32 characters.
    # Required in production (VENDING_STORE=firestore); on the embedded default `make run` keeps a random
    # one in .vending-local; unset elsewhere, each instance draws its own (sessions then end with it).
    session_key: str | None = field(default=None, repr=False)
    # VENDING_ENTRY_POINT: the one entry point this deployment serves (Terraform sets it per function);
    # unset: all of them (the embedded default). The event functions need no console session key.
    entry_point: str | None = None
    # VENDING_TRACING: "off" (default) or "cloud-trace": OpenTelemetry spans of each vend exported to
    # Cloud Trace (vending/tracing.py; the packages are imported only when it is on).
    tracing: str = "off"

    @property
    def store_kind(self) -> str:
        return "firestore" if self.store == "firestore" else "sqlite"

    @property
    def sqlite_path(self) -> str:
        return self.store.split(":", 1)[1]


ENV_VARS = (
    "VENDING_CONFIG",
    "VENDING_STORE",
    "VENDING_PROJECT",
    "VENDING_FIRESTORE_DATABASE",
    "VENDING_IAM_ENDPOINT",
    "VENDING_IAM_TOKEN",
    "VENDING_IAM_TIMEOUT",
    "VENDING_IAM_RETRIES",
    "VENDING_KEYS_BASE_URL",
    "VENDING_NOTIFICATIONS_TOPIC",
    "VENDING_ALERTS_TOPIC",
    "VENDING_EVENTS_FILE",
    "VENDING_RETENTION_DAYS",
    "VENDING_RESERVATION_TIMEOUT",
    "VENDING_LOG_LEVEL",
    "VENDING_IAM_ADMIN_ENDPOINT",
    "VENDING_SESSION_KEY",
    "VENDING_ENTRY_POINT",
    "VENDING_TRACING",
)
# Entry points that never serve the console: no session key is needed (nor given, in Terraform).
EVENT_ENTRY_POINTS = frozenset({"handle_pubsub", "sweep_expired"})
TRACING_MODES = ("off", "cloud-trace")
SESSION_KEY_MIN_CHARS = 32
IAM_ADMIN_ENDPOINT = "https://iam.googleapis.com"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _number(name: str, default: str, kind: type, minimum: float, maximum: float) -> Any:
    raw = _env(name, default)
    try:
        value = kind(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {raw!r} is not a number") from exc
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}: {value} is outside [{minimum}, {maximum}]")
    return value


def _endpoint(name: str, value: str) -> str:
    """An API base URL: https, or plain http on a loopback host only (the local stand-in)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{name}: {value!r} is not a URL") from exc
    if not secure_url(value) or parts.query or parts.fragment:
        raise ConfigError(f"{name}: must be https://HOST (plain http only on loopback), got {value!r}")
    return value.rstrip("/")


def load_settings() -> Settings:
    """Read and validate every setting; raise ConfigError naming the culprit."""
    store = _env("VENDING_STORE", "sqlite:.vending-local/vending.db") or ""
    if store != "firestore" and not (store.startswith("sqlite:") and len(store) > 7):
        raise ConfigError(f"VENDING_STORE: {store!r} must be 'firestore' or 'sqlite:PATH'")
    config_path = _env("VENDING_CONFIG", "config/example.yaml") or ""
    policy = load_policy(config_path)
    project = _env("VENDING_PROJECT") or _env("GOOGLE_CLOUD_PROJECT") or "local-project"
    # A host check, not a prefix check: http://127.0.0.1.example.com is not loopback.
    iam_endpoint = _endpoint(
        "VENDING_IAM_ENDPOINT", _env("VENDING_IAM_ENDPOINT", "https://iamcredentials.googleapis.com") or ""
    )
    settings = Settings(
        config_path=config_path,
        store=store,
        project=project,
        firestore_database=_env("VENDING_FIRESTORE_DATABASE", "(default)") or "(default)",
        iam_endpoint=iam_endpoint,
        iam_token=_env("VENDING_IAM_TOKEN"),
        iam_timeout_s=_number("VENDING_IAM_TIMEOUT", "10", float, 0.1, 60),
        iam_retries=_number("VENDING_IAM_RETRIES", "2", int, 0, 5),
        # Bots' public keys: https (plain http only on loopback), like every other key source.
        keys_base_url=_endpoint(
            "VENDING_KEYS_BASE_URL", _env("VENDING_KEYS_BASE_URL", "https://www.googleapis.com") or ""
        ),
        notifications_topic=_env("VENDING_NOTIFICATIONS_TOPIC"),
        alerts_topic=_env("VENDING_ALERTS_TOPIC"),
        events_file=_env("VENDING_EVENTS_FILE"),
        retention_days=_number("VENDING_RETENTION_DAYS", "90", int, 1, 3650),
        reservation_timeout_s=_number("VENDING_RESERVATION_TIMEOUT", "300", int, 30, 3600),
        log_level=(_env("VENDING_LOG_LEVEL", "INFO") or "INFO").upper(),
        policy=policy,
        iam_admin_endpoint=_endpoint(
            "VENDING_IAM_ADMIN_ENDPOINT",
            _env("VENDING_IAM_ADMIN_ENDPOINT", iam_endpoint if _env("VENDING_IAM_TOKEN") else IAM_ADMIN_ENDPOINT) or "",
        ),
        session_key=_env("VENDING_SESSION_KEY"),
        entry_point=_env("VENDING_ENTRY_POINT"),
        tracing=(_env("VENDING_TRACING", "off") or "off").lower(),
    )
    if settings.tracing not in TRACING_MODES:
        raise ConfigError(f"VENDING_TRACING: {settings.tracing!r} must be one of {', '.join(TRACING_MODES)}")
    if settings.entry_point is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", settings.entry_point):
        raise ConfigError(f"VENDING_ENTRY_POINT: {settings.entry_point!r} is not an entry point name of main.py")
    if settings.session_key is not None and len(settings.session_key) < SESSION_KEY_MIN_CHARS:
        raise ConfigError(
            f"VENDING_SESSION_KEY: must be at least {SESSION_KEY_MIN_CHARS} characters "
            "(e.g. the output of `openssl rand -base64 48`)"
        )
    if settings.iam_token and settings.iam_admin_endpoint.startswith(IAM_ADMIN_ENDPOINT):
        raise ConfigError(
            "VENDING_IAM_TOKEN: a static token is only for the local IAM stand-in "
            "(set VENDING_IAM_ADMIN_ENDPOINT to it too)"
        )
    if settings.iam_token and iam_endpoint.startswith("https://iamcredentials.googleapis.com"):
        raise ConfigError("VENDING_IAM_TOKEN: a static token is only for the local IAM stand-in")
    if settings.store_kind == "firestore":
        dev = [i.name for i in policy.issuers if i.development]
        if dev:
            raise ConfigError(
                f"{config_path}: issuers: development issuer(s) {dev} only run with the embedded "
                "SQLite store, never with VENDING_STORE=firestore"
            )
        if settings.session_key is None and settings.entry_point not in EVENT_ENTRY_POINTS:
            raise ConfigError(
                "VENDING_SESSION_KEY: required with VENDING_STORE=firestore (production): the "
                "secret that signs console sessions, shared by every instance (the Terraform "
                "module keeps it in Secret Manager)"
            )
    return settings
