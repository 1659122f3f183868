"""No credential in any log, stored document, error body, header or event (issue 9, part 6).

Run-wide: every test that uses a harness is audited by the autouse
``leak_audit`` fixture (tests/support/fixtures.py): every credential the IAM
stand-in minted during the test (the service's, and the test bot's signed
messages) and every caller token sent is searched for in the vending log
lines (at DEBUG) and stdlib log records, what reached stdout / stderr, every
document of every kind in every store the service holds, every response body
(error bodies included; a vend's own credential field blanked), every
response header and every published event, by every 32-character window,
plain and base64 / base64url / percent-encoded (tests/support/audit.py,
issue 19). The run's totals are printed at the end ("secrets audit");
tests/security/test_leak_audit_catches.py shows the audit catches each kind
of leak in each place.

Here one scenario, on SQLite and on the Firestore emulator, exercises every
endpoint, every credential kind, the approval flow over HTTP and Pub/Sub,
break-glass, the sweep, errors of every class, and errors *after* IAM minted
(a late IAM answer, a store failure after IAM success), then searches
everything explicitly, including whatever reached stdout / stderr at the
file-descriptor level.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cloudevents.http import CloudEvent

import main
from tests.support.app import (
    CHAIN_SUBJECT,
    CLOUD,
    DEMO_SA,
    GCS_SUBJECT,
    HOP_SA,
    IAM_TOKEN,
    PROD_SA,
    UNGRANTED_SA,
    ServiceHarness,
)
from tests.support.audit import (
    FailingStore,
    LeakAudit,
    dump_store,
    find_secrets,
    kinds_count,
    use_iam,
    use_store,
    vended,
)
from tests.support.bots import Bot, cloud_event
from tests.support.gcs_v4 import v4_request
from vending import clock
from vending.iam import IamCredentials, StaticToken
from vending.store.base import Update
from vending.store.indexes import ISSUANCES

REQUESTER = "dave@example.com"
JUSTIFICATION = "TICKET-9: audit the secrets"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scenario(h: ServiceHarness) -> dict[str, int]:
    """Every endpoint, kind and error class; returns the status counts seen."""
    statuses: dict[str, int] = {}

    def seen(name: str, resp: Any, expected: int) -> Any:
        assert resp.status_code == expected, (name, resp.get_json())
        statuses[name] = resp.status_code
        return resp.get_json()

    bot = Bot(h.standin.url, h.policy.bot_audience or "")
    seen("healthz", h.client.get("/healthz"), 200)
    # every credential kind
    access = seen("access-token", h.vend(reason="deploy"), 200)
    seen("access-token-chain", h.vend(service_account=PROD_SA, delegates=[HOP_SA], subject=CHAIN_SUBJECT), 200)
    seen(
        "id-token",
        h.post("/v1/id-tokens", {"service_account": DEMO_SA, "audience": "https://hello-7x2kq3abcd-uc.a.run.app"}),
        200,
    )
    seen(
        "signed-jwt",
        h.post(
            "/v1/signed-jwts", {"service_account": DEMO_SA, "claims": {"aud": "https://example.com/", "scope": "x"}}
        ),
        200,
    )
    seen("signed-blob", h.post("/v1/signed-blobs", {"service_account": DEMO_SA, "payload": b64(b"blob")}), 200)
    v4 = v4_request(signer=DEMO_SA, at=clock.now(), bucket="allowed-bucket", obj="a/b.txt", expires_s=600)
    seen(
        "signed-url",
        h.post(
            "/v1/signed-blobs",
            {"service_account": DEMO_SA, "payload": b64(v4.payload), "canonical_request": v4.canonical_request},
            subject=GCS_SUBJECT,
        ),
        200,
    )
    # errors before minting, one of each class
    seen("401", h.post("/v1/access-tokens", {"service_account": DEMO_SA}, token="not-a-jwt"), 401)
    replayed = h.token()
    seen("replay-first", h.post("/v1/access-tokens", {"service_account": DEMO_SA}, token=replayed), 200)
    seen("401-replay", h.post("/v1/access-tokens", {"service_account": DEMO_SA}, token=replayed), 401)
    seen("400", h.vend(lifetime=901), 400)
    seen("403", h.vend(scopes=["https://www.googleapis.com/auth/compute"]), 403)
    seen("404", h.post("/v1/nothing", {}), 404)
    seen("405", h.call("DELETE", "/v1/access-tokens"), 405)
    # IAM errors
    seen("403-iam-403", h.vend(service_account=UNGRANTED_SA), 403)
    h.standin.set_fault(429, count=1)
    seen("429", h.vend(), 429)
    h.standin.set_fault(503)
    seen("502-iam-503", h.vend(), 502)
    h.standin.clear_faults()
    # errors after IAM minted: a late answer, then a store failure when finalizing
    real_iam = h.service.iam
    use_iam(h, IamCredentials(h.standin.url, StaticToken(IAM_TOKEN), timeout_s=0.4, retries=0))
    h.standin.set_latency(700)
    seen("503-iam-late", h.vend(), 503)
    seen("503-iam-late-blob", h.post("/v1/signed-blobs", {"service_account": DEMO_SA, "payload": b64(b"x")}), 503)
    h.standin.clear_faults()
    use_iam(h, real_iam)
    real_store = h.service.store
    use_store(h, FailingStore(real_store, lambda w: isinstance(w, Update) and "token_sha256" in w.changes))
    seen("503-store-after-mint", h.vend(), 503)
    seen(
        "503-store-after-mint-jwt",
        h.post("/v1/signed-jwts", {"service_account": DEMO_SA, "claims": {"aud": "https://example.com/"}}),
        503,
    )
    use_store(h, real_store)
    # the approval flow: HTTP and Pub/Sub, quorum, a token, a second vend refused
    req = seen(
        "create-request",
        h.post("/v1/requests", {"entitlement": "prod-admin", "justification": JUSTIFICATION}, subject=REQUESTER),
        200,
    )
    main.handle_pubsub(cloud_event(bot.message("approve", "alice@example.com", request_id=req["id"])))
    seen("approve-http", h.post(f"/v1/requests/{req['id']}:approve", {"comment": "ok"}, subject="bob@example.com"), 200)
    seen("get-request", h.get(f"/v1/requests/{req['id']}", subject=REQUESTER), 200)
    seen(
        "vend-approved",
        h.post(
            "/v1/access-tokens",
            {"service_account": PROD_SA, "scopes": [CLOUD], "request_id": req["id"]},
            subject=REQUESTER,
        ),
        200,
    )
    seen(
        "409-consumed",
        h.post("/v1/access-tokens", {"service_account": PROD_SA, "request_id": req["id"]}, subject=REQUESTER),
        409,
    )
    # deny / withdraw / revoke, and a bot-filed request
    for action, actor in (("deny", "carol@example.com"), ("withdraw", REQUESTER), ("revoke", "auditor@example.com")):
        other = seen(
            f"create-{action}",
            h.post("/v1/requests", {"entitlement": "prod-admin", "justification": JUSTIFICATION}, subject=REQUESTER),
            200,
        )
        seen(action, h.post(f"/v1/requests/{other['id']}:{action}", subject=actor), 200)
    main.handle_pubsub(
        cloud_event(bot.message("request", REQUESTER, entitlement="prod-admin", justification=JUSTIFICATION))
    )
    main.handle_pubsub(cloud_event(bot.message("approve", REQUESTER, request_id=req["id"])))  # refused, logged
    # break-glass: self-approved, flagged, alerted
    bg = seen(
        "break-glass",
        h.post(
            "/v1/requests",
            {"entitlement": "prod-break-glass", "justification": "INC-1: outage"},
            subject="oncall@example.com",
        ),
        200,
    )
    seen(
        "vend-break-glass",
        h.post("/v1/access-tokens", {"service_account": PROD_SA, "request_id": bg["id"]}, subject="oncall@example.com"),
        200,
    )
    # the ledger read side
    seen("list-issuances", h.get("/v1/issuances", subject="auditor@example.com", query={"page_size": "5"}), 200)
    seen("list-issuances-mine", h.get("/v1/issuances"), 200)
    seen("get-issuance", h.get(f"/v1/issuances/{access['issuance_id']}"), 200)
    seen("404-issuance", h.get("/v1/issuances/" + "0" * 32), 404)
    # the sweep
    main.sweep_expired(
        CloudEvent(
            {
                "type": "google.cloud.pubsub.topic.v1.messagePublished",
                "source": "//pubsub.googleapis.com/projects/vending-test/topics/sweep",
            },
            {"message": {"data": b64(b"{}"), "messageId": "sweep-1"}},
        )
    )
    return statuses


def test_no_credential_leaks_anywhere(
    any_harness: ServiceHarness, leak_audit: LeakAudit, capfd: pytest.CaptureFixture[str], suite_figures: Any
) -> None:
    h = any_harness
    audit = leak_audit
    backend = "firestore" if "Firestore" in type(h.store).__name__ else "sqlite"
    # GIVEN the whole scenario has run
    statuses = _scenario(h)
    minted = h.standin.minted
    ours = vended(minted)
    secrets = [m.credential for m in minted]
    # every kind was minted, and some credentials were minted but never handed out
    assert {m.method for m in ours} == {"generateAccessToken", "generateIdToken", "signJwt", "signBlob"}
    handed_out = {r.body for r in audit.responses if r.status == 200}
    unreturned = [m for m in ours if not any(m.credential in body for body in handed_out)]
    assert len(unreturned) >= 4, "the scenario must mint credentials that are never returned"
    assert set(statuses.values()) >= {200, 400, 401, 403, 404, 405, 409, 429, 502, 503}

    # WHEN everything the service wrote is searched
    figures = audit.check()  # logs, output, store, bodies, headers, events
    captured = capfd.readouterr()
    everything = secrets + audit.caller_tokens()
    fd_hits = find_secrets(captured.out + captured.err, everything)
    store = dump_store(h.store)
    store_hits = find_secrets(json.dumps(store, default=str), everything)

    # THEN zero hits, and the store does hold each issued credential's SHA-256 instead
    assert fd_hits == [] and store_hits == []
    shas = {r.get("token_sha256") for r in store[ISSUANCES].values()}
    assert {m.sha256 for m in ours if m not in unreturned} <= shas
    suite_figures.add(
        f"secrets ({backend}): scenario of {len(statuses)} steps, {len(ours)} service credentials "
        f"({len(unreturned)} never returned) + {len(minted) - len(ours)} bot messages and "
        f"{figures['caller_tokens']} caller tokens searched in {figures['responses']} responses, "
        f"{sum(figures['bytes'].values()):,} B of logs/store/bodies/headers/events and "
        f"{len(captured.out) + len(captured.err):,} B of stdout/stderr; store {kinds_count(store)}; hits 0"
    )
