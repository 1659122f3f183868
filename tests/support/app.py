"""The service as a user meets it, for functional tests.

``ServiceHarness`` wires the real HTTP function (functions-framework's test
client on ``main.vend_http``) to a test OIDC issuer, a real IAM Credentials
stand-in over HTTP and a real store (SQLite file or the Firestore
emulator). Only the policy is built here, in the same YAML shape as
``config/example.yaml``.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.support.audit import dump_store
from vending import wiring
from vending.config import Policy, Settings
from vending.events import MemoryEvents
from vending.iam import IamCredentials, StaticToken
from vending.iam_admin import IamAdmin
from vending.local.iam_policy import StandInPolicy
from vending.local.iamcredentials import IamStandIn

DEMO_SA = "demo-deployer@local-project.iam.gserviceaccount.com"
PROD_SA = "prod-admin@local-project.iam.gserviceaccount.com"
HOP_SA = "delegate-hop@local-project.iam.gserviceaccount.com"
BOT_SA = "chatops-bot@local-project.iam.gserviceaccount.com"
UNGRANTED_SA = "no-grant@local-project.iam.gserviceaccount.com"
MISSING_SA = "ghost@local-project.iam.gserviceaccount.com"
CLOUD = "https://www.googleapis.com/auth/cloud-platform"
READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"
CI_SUBJECT = "repo:example/app:ref:refs/heads/main"
CHAIN_SUBJECT = "repo:example/app:ref:refs/heads/chain"
GCS_SUBJECT = "repo:example/app:ref:refs/heads/gcs"
IAM_TOKEN = "local-vending-service-token"

STANDIN_POLICY: dict[str, Any] = {
    "project": "local-project",
    "callers": {IAM_TOKEN: "vending-runtime@local-project.iam.gserviceaccount.com", "bot-token": BOT_SA},
    "service_accounts": [{"email": e} for e in (DEMO_SA, PROD_SA, HOP_SA, BOT_SA, UNGRANTED_SA)],
    "token_creators": {
        "vending-runtime@local-project.iam.gserviceaccount.com": [DEMO_SA, PROD_SA, HOP_SA, BOT_SA],
        HOP_SA: [PROD_SA],
        BOT_SA: [BOT_SA],
    },
    # the kill switch role (disable, enable, get): the runtime account on the policy's targets
    "service_account_admins": {
        "vending-runtime@local-project.iam.gserviceaccount.com": [DEMO_SA, PROD_SA, UNGRANTED_SA],
    },
    "lifetime_extension": [],
}
KILL_SWITCH_OPERATOR = "sre-lead@example.com"


# Refusals that rightly leave a trace: IAM refused after the reservation (the record says failed),
# a credential outside its grant (withheld), a vend met by the kill switch (its record revoked), and
# an action on a request found past its time (its expiry is recorded).
WRITES_ON_REFUSAL = frozenset(
    {
        "iam-rejected",
        "iam-permission-denied",
        "iam-target-not-found",
        "iam-rate-limited",
        "credential-out-of-bounds",
        "target-disabled",
        "illegal-transition",
    }
)


def policy_dict(issuer: dict[str, Any]) -> dict[str, Any]:
    """The test policy: one CI entitlement per feature, approvals and break-glass."""
    return {
        "issuers": [issuer],
        "groups": {"approvers": ["alice@example.com", "bob@example.com", "carol@example.com"]},
        "auditors": ["auditor@example.com"],
        "bots": [{"service_account": BOT_SA}],
        "bot_audience": issuer["audience"],
        # issuer-qualified, so the policy stays valid when a test adds a second issuer
        "kill_switch": {
            "operators": [f"{issuer['name']}/{KILL_SWITCH_OPERATOR}"],
            "approvers": ["group:approvers"],
            "quorum": 2,
        },
        "entitlements": [
            {
                "name": "deploy",
                "principals": [{"issuer": issuer["name"], "claims": {"sub": CI_SUBJECT}}],
                "service_account": DEMO_SA,
                "scopes": [CLOUD, READ_ONLY],
                "max_lifetime": 900,
                "credentials": ["access_token", "id_token", "signed_jwt", "signed_blob"],
                "id_token": {"audiences": [{"pattern": r"https://[a-z0-9-]+(\.[a-z0-9-]+)*\.run\.app"}]},
                "signed_jwt": {
                    "audiences": ["https://example.com/", "https://pubsub.googleapis.com/"],
                    "max_ttl": 7200,
                    "allowed_claims": ["scope", "target"],
                },
                "signed_blob": {"max_payload_bytes": 65536, "acknowledge_raw_signing": True},
            },
            {
                "name": "ungranted",
                "principals": [{"issuer": issuer["name"], "claims": {"sub": CI_SUBJECT}}],
                "service_account": UNGRANTED_SA,
                "scopes": [CLOUD],
                "max_lifetime": 600,
            },
            {
                "name": "missing",
                "principals": [{"issuer": issuer["name"], "claims": {"sub": CI_SUBJECT}}],
                "service_account": MISSING_SA,
                "scopes": [CLOUD],
                "max_lifetime": 600,
            },
            {
                "name": "chain",
                "principals": [{"issuer": issuer["name"], "claims": {"sub": CHAIN_SUBJECT}}],
                "service_account": PROD_SA,
                "scopes": [CLOUD],
                "max_lifetime": 600,
                "delegates": [HOP_SA],
            },
            {
                "name": "gcs-signer",
                "principals": [{"issuer": issuer["name"], "claims": {"sub": GCS_SUBJECT}}],
                "service_account": DEMO_SA,
                "credentials": ["signed_blob"],
                "signed_blob": {"max_payload_bytes": 4096, "gcs_v4_only": True, "buckets": ["allowed-bucket"]},
            },
            {
                "name": "prod-admin",
                "principals": [{"issuer": issuer["name"], "claims": {"sub": {"pattern": r"[a-z]+@example\.com"}}}],
                "service_account": PROD_SA,
                "scopes": [CLOUD],
                "max_lifetime": 3600,
                "approval": {
                    "approvers": ["group:approvers"],
                    "quorum": 2,
                    "max_window": 3600,
                    "max_uses": 1,
                    "justification_pattern": {"pattern": r"(TICKET|INC)-[0-9]+: .{3,200}"},
                },
            },
            {
                "name": "prod-break-glass",
                "principals": [{"issuer": issuer["name"], "claims": {"sub": "oncall@example.com"}}],
                "service_account": PROD_SA,
                "scopes": [CLOUD],
                "max_lifetime": 1800,
                "approval": {
                    "break_glass": True,
                    "max_window": 1800,
                    "max_uses": 3,
                    "justification_pattern": {"pattern": r"INC-[0-9]+: .{3,200}"},
                },
            },
        ],
    }


def settings_for(policy: Policy, tmp_path: Path, standin_url: str, *, store: str | None = None) -> Settings:
    return Settings(
        config_path="tests/policy.yaml",
        store=store or f"sqlite:{tmp_path}/vending.db",
        project="vending-test",
        firestore_database="(default)",
        iam_endpoint=standin_url,
        iam_token=IAM_TOKEN,
        iam_timeout_s=3.0,
        iam_retries=2,
        keys_base_url=standin_url,
        notifications_topic=None,
        alerts_topic=None,
        events_file=None,
        retention_days=90,
        reservation_timeout_s=300,
        log_level="DEBUG",
        policy=policy,
        iam_admin_endpoint=standin_url,
    )


class ServiceHarness:
    """The HTTP function on a real store, a test issuer and the IAM stand-in."""

    def __init__(
        self,
        store: Any,
        issuer: Any,
        standin: IamStandIn,
        tmp_path: Path,
        policy_overrides: dict[str, Any] | None = None,
    ) -> None:
        from functions_framework import create_app

        issuer_cfg = issuer.issuer_config().model_dump()
        issuer_cfg["algorithms"] = list(issuer_cfg["algorithms"])
        raw = policy_dict(issuer_cfg)
        raw.update(copy.deepcopy(policy_overrides or {}))
        self.policy = Policy.model_validate(raw)
        self.settings = settings_for(self.policy, tmp_path, standin.url)
        self.store, self.issuer, self.standin = store, issuer, standin
        self.events = MemoryEvents()
        self.iam = IamCredentials(standin.url, StaticToken(IAM_TOKEN), timeout_s=3.0, retries=2, backoff_s=0.01)
        self.iam_admin = IamAdmin(standin.url, StaticToken(IAM_TOKEN), timeout_s=3.0, retries=2, backoff_s=0.01)
        self.service = wiring.build_service(
            self.settings, store=store, iam=self.iam, iam_admin=self.iam_admin, events=self.events
        )
        wiring.install(self.service)
        self.client = create_app("vend_http", "main.py").test_client()
        self.check_refusals = True  # every 4xx is checked to have changed nothing (see ``call``)
        self._calls_lock = threading.Lock()
        self._in_flight = self._started = 0

    def with_settings(self, **changes: Any) -> None:
        self.settings = replace(self.settings, **changes)
        self.rebuild()

    def rebuild(self, **parts: Any) -> None:
        """Rebuild the service with other parts (``store``, ``iam``, ``events``): every use case
        holds its own collaborators, so a part is swapped by building anew."""
        chosen = {"store": self.store, "iam": self.iam, "iam_admin": self.iam_admin, "events": self.events, **parts}
        self.service = wiring.build_service(self.settings, **chosen)
        wiring.install(self.service)

    def token(self, subject: str = CI_SUBJECT, **claims: Any) -> str:
        return str(self.issuer.mint(sub=subject, **claims))

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        subject: str = CI_SUBJECT,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        hdrs = {"Authorization": f"Bearer {token or self.token(subject)}"}
        hdrs.update(headers or {})
        hdrs = {k: v for k, v in hdrs.items() if v is not None}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        # The check needs the call alone: concurrent calls (the race tests) change the store meanwhile.
        with self._calls_lock:
            self._in_flight += 1
            self._started += 1
            mine, alone = self._started, self._in_flight == 1
        try:
            before = dump_store(self.store) if alone and self.check_refusals else None
            minted = len(self.standin.minted)
            resp = self.client.open(path, method=method, data=data, headers=hdrs, query_string=query)
        finally:
            with self._calls_lock:
                self._in_flight -= 1
                alone = alone and self._started == mine
        if before is not None and alone and 400 <= resp.status_code < 500:
            self._check_refusal_changed_nothing(resp, before, minted)
        return resp

    def _check_refusal_changed_nothing(self, resp: Any, before: Any, minted: int) -> None:
        """Every refusal leaves the whole store, and what IAM minted, as they were (issue 19)."""
        error = (resp.get_json(silent=True) or {}).get("error") or {}
        reason = error.get("reason")
        assert reason, f"a {resp.status_code} refusal without a reason: {resp.get_data(as_text=True)[:300]}"
        if reason in WRITES_ON_REFUSAL:
            return
        assert dump_store(self.store) == before, f"the refusal {resp.status_code} {reason} changed the store"
        assert len(self.standin.minted) == minted, f"the refusal {resp.status_code} {reason} minted a credential"

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.call("POST", path, body, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def vend(self, **body: Any) -> Any:
        body.setdefault("service_account", DEMO_SA)
        body.setdefault("scopes", [CLOUD])
        body.setdefault("lifetime", "600s")
        subject = body.pop("subject", CI_SUBJECT)
        return self.post("/v1/access-tokens", body, subject=subject)

    def issuance_count(self) -> int:
        from vending.store.base import Query
        from vending.store.indexes import ISSUANCES

        return len(self.store.query(Query(ISSUANCES, order_by="created_at", limit=10000)))

    def close(self) -> None:
        wiring.reset()


def make_standin(policy: dict[str, Any] | None = None) -> IamStandIn:
    return IamStandIn(StandInPolicy.from_dict(copy.deepcopy(policy or STANDIN_POLICY)), port=0).start()
