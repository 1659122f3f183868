"""The IAM policy of the local IAM Credentials stand-in.

It answers the only questions the stand-in asks: which principal a bearer
token stands for (in place of Google OAuth), which service accounts exist
(email and numeric unique id), who holds ``roles/iam.serviceAccountTokenCreator``
on which service account, who holds the kill switch role (``service_account_admins``:
``iam.serviceAccounts.disable``, ``.enable`` and ``.get``) on which service
account, and which service accounts the organization policy
``constraints/iam.allowServiceAccountCredentialLifetimeExtension`` lets mint
access tokens of up to 12 hours.

A policy is immutable; ``with_caller`` returns a changed copy so a running
stand-in can swap it atomically. Files are YAML (``StandInPolicy.load``);
tests may build one from a dict (``StandInPolicy.from_dict``). A malformed
policy raises ``PolicyError`` (a ``ValueError``) naming the file and the field.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

# Permissions bundled in roles/iam.serviceAccountTokenCreator (reference §3).
GET_ACCESS_TOKEN = "iam.serviceAccounts.getAccessToken"
GET_OPENID_TOKEN = "iam.serviceAccounts.getOpenIdToken"
SIGN_BLOB = "iam.serviceAccounts.signBlob"
SIGN_JWT = "iam.serviceAccounts.signJwt"
IMPLICIT_DELEGATION = "iam.serviceAccounts.implicitDelegation"
TOKEN_CREATOR_PERMISSIONS = frozenset({GET_ACCESS_TOKEN, GET_OPENID_TOKEN, SIGN_BLOB, SIGN_JWT, IMPLICIT_DELEGATION})
# The kill switch's custom role (terraform: the runtime account, bound per target account).
DISABLE = "iam.serviceAccounts.disable"
ENABLE = "iam.serviceAccounts.enable"
GET = "iam.serviceAccounts.get"
ADMIN_PERMISSIONS = frozenset({DISABLE, ENABLE, GET})

DEFAULT_MAX_LIFETIME_S = 3600  # access tokens without the org-policy extension
EXTENDED_MAX_LIFETIME_S = 43200  # with constraints/iam.allowServiceAccountCredentialLifetimeExtension

_SA_EMAIL_RE = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?@[a-z0-9](?:[a-z0-9.-]{0,200}[a-z0-9])?\.gserviceaccount\.com"
)
_UNIQUE_ID_RE = re.compile(r"[1-9][0-9]{20}")
_TOP_LEVEL_KEYS = frozenset(
    {"project", "callers", "service_accounts", "token_creators", "service_account_admins", "lifetime_extension"}
)


class PolicyError(ValueError):
    """A stand-in policy file or dict is malformed; the message names the field."""


def derive_unique_id(email: str) -> str:
    """A stable 21-digit numeric id for ``email`` (real ids look like ``1058...``)."""
    digest = int.from_bytes(hashlib.sha256(email.encode("utf-8")).digest(), "big")
    return "1" + str(digest % 10**20).zfill(20)


@dataclass(frozen=True)
class ServiceAccount:
    """One service account that exists in the stand-in's world."""

    email: str
    unique_id: str


@dataclass(frozen=True)
class StandInPolicy:
    """Callers, service accounts and Token Creator grants of the stand-in."""

    project: str
    callers: Mapping[str, str]
    service_accounts: tuple[ServiceAccount, ...]
    token_creators: Mapping[str, frozenset[str]]
    lifetime_extension: frozenset[str] = frozenset()
    service_account_admins: Mapping[str, frozenset[str]] = field(default_factory=dict)
    _by_email: Mapping[str, ServiceAccount] = field(default_factory=dict, repr=False, compare=False)
    _by_id: Mapping[str, ServiceAccount] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_email", {sa.email: sa for sa in self.service_accounts})
        object.__setattr__(self, "_by_id", {sa.unique_id: sa for sa in self.service_accounts})

    # ---- construction -------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> StandInPolicy:
        """Read and validate a YAML policy file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read IAM stand-in policy: {exc.strerror or exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "policy") -> StandInPolicy:
        """Validate a policy given as plain data (the YAML document's shape)."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"{source}: must be a mapping with keys {sorted(_TOP_LEVEL_KEYS)}")
        unknown = sorted(str(k) for k in data if k not in _TOP_LEVEL_KEYS)
        if unknown:
            raise PolicyError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(_TOP_LEVEL_KEYS)}")

        project = data.get("project")
        if not isinstance(project, str) or not project.strip():
            raise PolicyError(f"{source}: project: must be a non-empty string")

        accounts = _parse_service_accounts(data.get("service_accounts"), source)
        known = {sa.email for sa in accounts}
        callers = _parse_callers(data.get("callers"), source)
        creators = _parse_token_creators(data.get("token_creators"), known, source)
        admins = _parse_token_creators(data.get("service_account_admins"), known, source, "service_account_admins")
        extension = _parse_email_list(data.get("lifetime_extension"), known, f"{source}: lifetime_extension")
        return cls(
            project=project.strip(),
            callers=callers,
            service_accounts=accounts,
            token_creators=creators,
            lifetime_extension=frozenset(extension),
            service_account_admins=admins,
        )

    def with_caller(self, token: str, principal: str) -> StandInPolicy:
        """A copy in which bearer ``token`` authenticates as ``principal``."""
        if not token or not principal:
            raise PolicyError("caller token and principal must be non-empty strings")
        return replace(self, callers={**self.callers, token: principal})

    def with_token_creator(self, member: str, target: str) -> StandInPolicy:
        """A copy in which ``member`` holds Token Creator on service account ``target``."""
        if target not in self._by_email:
            raise PolicyError(f"token creator target {target!r} is not a service account of this policy")
        grants = dict(self.token_creators)
        grants[member] = frozenset(grants.get(member, frozenset()) | {target})
        return replace(self, token_creators=grants)

    # ---- questions ----------------------------------------------------

    def caller_for(self, token: str) -> str | None:
        """The principal a bearer token stands for, or ``None``."""
        return self.callers.get(token)

    def find(self, email_or_unique_id: str) -> ServiceAccount | None:
        """The service account named by email (case-insensitive) or numeric id."""
        if email_or_unique_id.isdigit():
            return self._by_id.get(email_or_unique_id)
        return self._by_email.get(email_or_unique_id.lower())

    def has_permission(self, member: str, permission: str, target: ServiceAccount) -> bool:
        """Whether ``member`` holds ``permission`` on ``target`` (via Token Creator or the kill switch role)."""
        if permission in ADMIN_PERMISSIONS:
            return target.email in self.service_account_admins.get(member, frozenset())
        if permission not in TOKEN_CREATOR_PERMISSIONS:
            return False
        return target.email in self.token_creators.get(member, frozenset())

    def max_lifetime_s(self, target: ServiceAccount) -> int:
        """Longest access-token lifetime allowed for ``target``, in seconds."""
        return EXTENDED_MAX_LIFETIME_S if target.email in self.lifetime_extension else DEFAULT_MAX_LIFETIME_S

    @property
    def project_number(self) -> str:
        """A stable 12-digit project number derived from the project id."""
        digest = int.from_bytes(hashlib.sha256(self.project.encode("utf-8")).digest(), "big")
        return str(100000000000 + digest % 900000000000)


def _parse_service_accounts(raw: Any, source: str) -> tuple[ServiceAccount, ...]:
    where = f"{source}: service_accounts"
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PolicyError(f"{where}: must be a list of {{email, unique_id?}} mappings")
    accounts: list[ServiceAccount] = []
    seen_emails: set[str] = set()
    seen_ids: set[str] = set()
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"email": item}
        if not isinstance(item, Mapping):
            raise PolicyError(f"{here}: must be a mapping with 'email' (and optionally 'unique_id')")
        extra = sorted(str(k) for k in item if k not in ("email", "unique_id"))
        if extra:
            raise PolicyError(f"{here}: unknown key(s) {extra}; allowed: ['email', 'unique_id']")
        email = _sa_email(item.get("email"), f"{here}.email")
        unique_id = item.get("unique_id")
        if unique_id is None:
            unique_id = derive_unique_id(email)
        else:
            unique_id = str(unique_id)
            if not _UNIQUE_ID_RE.fullmatch(unique_id):
                raise PolicyError(f"{here}.unique_id: must be a 21-digit numeric string, got {unique_id!r}")
        if email in seen_emails:
            raise PolicyError(f"{here}.email: duplicate service account {email}")
        if unique_id in seen_ids:
            raise PolicyError(f"{here}.unique_id: duplicate unique id {unique_id}")
        seen_emails.add(email)
        seen_ids.add(unique_id)
        accounts.append(ServiceAccount(email=email, unique_id=unique_id))
    return tuple(accounts)


def _parse_callers(raw: Any, source: str) -> dict[str, str]:
    where = f"{source}: callers"
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: must map bearer token -> principal email")
    callers: dict[str, str] = {}
    for token, principal in raw.items():
        if not isinstance(token, str) or not token:
            raise PolicyError(f"{where}: bearer tokens must be non-empty strings, got {token!r}")
        if not isinstance(principal, str) or "@" not in principal:
            raise PolicyError(f"{where}.{token}: principal must be an email, got {principal!r}")
        callers[token] = principal.strip().lower()
    return callers


def _parse_token_creators(
    raw: Any, known: set[str], source: str, key: str = "token_creators"
) -> dict[str, frozenset[str]]:
    where = f"{source}: {key}"
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: must map member email -> list of target service accounts")
    grants: dict[str, frozenset[str]] = {}
    for member, targets in raw.items():
        if not isinstance(member, str) or "@" not in member:
            raise PolicyError(f"{where}: member must be an email, got {member!r}")
        grants[member.strip().lower()] = frozenset(_parse_email_list(targets, known, f"{where}.{member}"))
    return grants


def _parse_email_list(raw: Any, known: set[str], where: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise PolicyError(f"{where}: must be a list of service account emails")
    emails = [_sa_email(item, f"{where}[{i}]") for i, item in enumerate(raw)]
    for i, email in enumerate(emails):
        if email not in known:
            raise PolicyError(f"{where}[{i}]: {email} is not listed under service_accounts")
    return emails


def _sa_email(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not _SA_EMAIL_RE.fullmatch(raw.strip().lower()):
        raise PolicyError(
            f"{where}: must be a service account email (NAME@PROJECT.iam.gserviceaccount.com), got {raw!r}"
        )
    return raw.strip().lower()
