"""Fuzzing: schemathesis against openapi.yaml, through the real HTTP function in-process.

Requests are generated from the document (schema-valid and schema-violating
ones, every operation) and sent to the functions-framework WSGI app of
``main.vend_http`` wired to a test OIDC issuer, the IAM Credentials stand-in
and a SQLite store (``harness``). Most cases carry a fresh valid caller token
(each token has a unique ``jti``) of one of the policy's principals, and
schema-valid cases often name real access requests, issuances and entitled
service accounts, so generated input reaches the policy, the approval state
machine, the ledger and IAM rather than stopping at authentication. Every
response must:

- not be a server error (``not_a_server_error``: no 5xx at all; the
  stand-in injects no faults and the entitlements fuzzing can reach all
  exist in IAM);
- have a documented status code, content type and headers, and a body that
  matches the documented schema for that status;
- for a schema-violating request, be a 4xx (``negative_data_rejection``:
  the document is never stricter than the code).

A second test mixes in hostile values the schema-driven generator rarely
produces: timestamps at the edges of the representable range with extreme
offsets (``since``, and inside forged ``page_token`` cursors), cursors of
every shape, and JSON bodies nested deeper than the parser's recursion limit.

Short runs (200 + 100 cases, derandomized) run with the suite; the ``long``
variants (``make test-long``) run 2,000 + 1,000 cases with a fresh random
seed. Each prints how many cases it executed, per operation and per status.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.app import CI_SUBJECT, DEMO_SA, PROD_SA, ServiceHarness

DOC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
SCHEMA = schemathesis.openapi.from_path(DOC_PATH)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CASES = st.one_of(SCHEMA.as_strategy(GenerationMode.POSITIVE), SCHEMA.as_strategy(GenerationMode.NEGATIVE))
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance]
CHECKS = [*CONFORMANCE, negative_data_rejection]

REQUESTER = "dave@example.com"
# Who the injected caller token names: mostly the CI principal, also a requester, approvers, an auditor,
# the break-glass on-call and a principal no entitlement names. None: keep the generated Authorization.
CALLERS = [CI_SUBJECT, CI_SUBJECT, CI_SUBJECT, REQUESTER, "alice@example.com", "bob@example.com",
           "auditor@example.com", "oncall@example.com", "nobody@example.com", None]
TARGETS = [DEMO_SA, DEMO_SA, PROD_SA]
JUSTIFICATION = "TICKET-7: fuzzing"
SETTINGS = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck), "print_blob": True}


def _seed(h: ServiceHarness) -> dict[str, list[str]]:
    """Real records for generated requests to find: issuances, and access requests in several states."""
    issuances = [h.vend().get_json()["issuance_id"] for _ in range(2)]
    requests = []
    for _ in range(3):
        resp = h.post("/v1/requests", {"entitlement": "prod-admin", "justification": JUSTIFICATION},
                      subject=REQUESTER)
        requests.append(resp.get_json()["id"])
    for approver in ("alice@example.com", "bob@example.com"):  # the second one ACTIVE
        h.post(f"/v1/requests/{requests[1]}:approve", subject=approver)
    resp = h.post("/v1/requests", {"entitlement": "prod-break-glass", "justification": "INC-1: fuzzing"},
                  subject="oncall@example.com")
    requests.append(resp.get_json()["id"])
    assert all(isinstance(i, str) and len(i) == 32 for i in issuances + requests)
    return {"issuances": issuances, "requests": requests}


def _aim(case: Any, known: dict[str, list[str]], pick: int) -> None:
    """Point a schema-valid case at real records and entitled service accounts (pick: 0..99)."""
    if pick >= 60:
        return
    if "id" in case.path_parameters:
        pool = known["issuances"] if case.path.startswith("/v1/issuances") else known["requests"]
        case.path_parameters["id"] = pool[pick % len(pool)]
    if isinstance(case.body, dict):
        if "service_account" in case.body:
            case.body["service_account"] = TARGETS[pick % len(TARGETS)]
        if "request_id" in case.body and pick % 2:
            case.body["request_id"] = known["requests"][pick % len(known["requests"])]
        if "entitlement" in case.body and pick % 3 == 0:
            case.body["entitlement"] = "prod-admin"


class Run:
    """Sends cases with a fresh caller token, validates responses, and counts what happened."""

    def __init__(self, h: ServiceHarness, label: str) -> None:
        self.h, self.label, self.app = h, label, h.client.application
        self.stats: Counter[str] = Counter()
        self.started = time.monotonic()

    def send(self, case: Any, caller: str | None, checks: list[Any], kind: str) -> None:
        if caller is not None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {self.h.token(caller)}"}
        response = case.call(app=self.app)
        self.stats["executed"] += 1
        self.stats[kind] += 1
        self.stats[f"status {response.status_code}"] += 1
        self.stats[f"{case.operation.label} -> {response.status_code}"] += 1
        case.validate_response(response, checks=checks)

    def report(self, capsys: pytest.CaptureFixture[str], detail: str) -> None:
        elapsed = time.monotonic() - self.started
        with capsys.disabled():
            print(f"\n[fuzz {self.label}] executed {self.stats['executed']} generated requests in {elapsed:.1f}s "
                  f"({detail.format(**self.stats)})")
            for key in sorted(k for k in self.stats if k.startswith("status ")):
                print(f"[fuzz {self.label}]   {key}: {self.stats[key]}")
            for key in sorted(k for k in self.stats if " -> " in k):
                print(f"[fuzz {self.label}]   {key}: {self.stats[key]}")

    def assert_sound(self, minimum: int) -> None:
        assert self.stats["executed"] >= minimum, self.stats
        assert not [k for k in self.stats if k.startswith("status 5")], self.stats


# -- 1. schema-driven fuzzing ------------------------------------------------------------------

def fuzz(h: ServiceHarness, *, max_examples: int, derandomize: bool, capsys: pytest.CaptureFixture[str],
         label: str) -> Run:
    known = _seed(h)
    run = Run(h, label)

    @settings(max_examples=max_examples, derandomize=derandomize, **SETTINGS)
    @given(case=CASES, caller=st.sampled_from(CALLERS), pick=st.integers(0, 99))
    def one(case: Any, caller: str | None, pick: int) -> None:
        positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
        if positive:
            _aim(case, known, pick)
        run.send(case, caller, CHECKS, "positive" if positive else "negative")

    try:
        one()
    finally:
        run.report(capsys, "{positive} schema-valid, {negative} schema-violating")
    return run


def test_fuzz_openapi(harness: ServiceHarness, capsys: pytest.CaptureFixture[str]) -> None:
    run = fuzz(harness, max_examples=200, derandomize=True, capsys=capsys, label="short")
    run.assert_sound(200)
    assert run.stats["status 200"] > 0  # generated requests reach success, not only refusals
    assert len({k.split(" -> ")[0] for k in run.stats if " -> " in k}) == len(OPERATIONS)


@pytest.mark.long
def test_fuzz_openapi_long(harness: ServiceHarness, capsys: pytest.CaptureFixture[str]) -> None:
    run = fuzz(harness, max_examples=2000, derandomize=False, capsys=capsys, label="long")
    run.assert_sound(2000)
    assert run.stats["status 200"] > 0


# -- 2. hostile values ---------------------------------------------------------------------------

_EDGE_TIMES = st.one_of(
    st.sampled_from([dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999), dt.datetime(1970, 1, 1)]),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)),
).flatmap(lambda d: st.sampled_from([None, 0, 1, -1, 14 * 60, -(23 * 60 + 59), 23 * 60 + 59]).map(
    lambda minutes: d.isoformat() if minutes is None else d.replace(
        tzinfo=dt.timezone(dt.timedelta(minutes=minutes))).isoformat()))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                 max_size=3), max_leaves=10)
_CURSORS = st.one_of(
    st.tuples(_EDGE_TIMES, st.sampled_from(["a" * 32, "", "x"])).map(lambda t: _b64(json.dumps(list(t)).encode())),
    st.integers(1, 20000).map(lambda n: _b64(b"[" * n + b"]" * n)),
    _JSON.map(lambda v: _b64(json.dumps(v).encode())),
    st.binary(max_size=64).map(_b64),
    st.text(max_size=40),
)
_NESTED = st.integers(1, 30000).flatmap(
    lambda n: st.sampled_from([b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n]))
_LIST = SCHEMA["/v1/issuances"]["GET"]
_BODY_OPS = [op for op in OPERATIONS if op.method.upper() == "POST"]
HOSTILE = st.one_of(
    st.tuples(_LIST.as_strategy(), st.just("since"), _EDGE_TIMES),
    st.tuples(_LIST.as_strategy(), st.just("page_token"), _CURSORS),
    st.tuples(st.one_of(*[op.as_strategy() for op in _BODY_OPS]), st.just("body"), _NESTED),
)


def fuzz_hostile(h: ServiceHarness, *, max_examples: int, derandomize: bool, capsys: pytest.CaptureFixture[str],
                 label: str) -> Run:
    known = _seed(h)
    run = Run(h, label)

    @settings(max_examples=max_examples, derandomize=derandomize, **SETTINGS)
    @given(hostile=HOSTILE, caller=st.sampled_from(CALLERS[:-1]), pick=st.integers(0, 99))
    def one(hostile: tuple[Any, str, Any], caller: str, pick: int) -> None:
        case, where, value = hostile
        _aim(case, known, pick)
        if where == "body":
            case.body = value  # raw bytes, sent as-is with Content-Type application/json
        else:
            case.query = {**(case.query or {}), where: value}
        run.send(case, caller, CONFORMANCE, where)

    try:
        one()
    finally:
        run.report(capsys, "hostile since: {since}, page_token: {page_token}, nested body: {body}")
    return run


def test_fuzz_hostile_values(harness: ServiceHarness, capsys: pytest.CaptureFixture[str]) -> None:
    run = fuzz_hostile(harness, max_examples=100, derandomize=True, capsys=capsys, label="hostile-short")
    run.assert_sound(100)


@pytest.mark.long
def test_fuzz_hostile_values_long(harness: ServiceHarness, capsys: pytest.CaptureFixture[str]) -> None:
    run = fuzz_hostile(harness, max_examples=1000, derandomize=False, capsys=capsys, label="hostile-long")
    run.assert_sound(1000)
