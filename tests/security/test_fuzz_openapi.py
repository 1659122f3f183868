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

Every operation gets its own run with a minimum number of cases: 30 per
operation by default, 300 in the ``long`` variants (``make test-long``). What
was actually sent is counted per operation and each minimum is asserted, so
no operation can be starved by the generator (the vend endpoint once got 2 of
200). The hostile values get 100 cases by default, 1,000 in the long run.

Seeds: the default run uses the fixed seed ``DEFAULT_SEED``; the long run a
fresh random one. Either is replaced by ``VENDING_FUZZ_SEED``. The seed is
printed when a run starts and added to any failure, so a failure replays with
``VENDING_FUZZ_SEED=<seed> make test-long`` (or the same variable on the one
test): generation then depends on the seed alone (``replayable``), and each
run prints a digest of the cases it generated to show a replay is the same. The inputs that found past failures (issue 9: 500s on deep JSON,
extreme timestamps and forged page tokens, HTML 404s on ``/robots.txt`` and
on paths with a newline) are kept as explicit cases in
``test_past_fuzz_findings``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
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
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CHECKS = [*CONFORMANCE, negative_data_rejection]

REQUESTER = "dave@example.com"
# Who the injected caller token names: mostly the CI principal, also a requester, approvers, an auditor,
# the break-glass on-call and a principal no entitlement names. None: keep the generated Authorization.
CALLERS = [
    CI_SUBJECT,
    CI_SUBJECT,
    CI_SUBJECT,
    REQUESTER,
    "alice@example.com",
    "bob@example.com",
    "auditor@example.com",
    "oncall@example.com",
    "nobody@example.com",
    None,
]
TARGETS = [DEMO_SA, DEMO_SA, PROD_SA]
JUSTIFICATION = "TICKET-7: fuzzing"
SETTINGS = {
    "deadline": None,
    "database": None,
    "suppress_health_check": list(HealthCheck),
    "print_blob": True,
    "derandomize": False,
}

# Cases per operation (each operation has its own run) and hostile values, default and long.
PER_OPERATION, PER_OPERATION_LONG = 30, 300
HOSTILE, HOSTILE_LONG = 100, 1000
DEFAULT_SEED = 19
SEED_VAR = "VENDING_FUZZ_SEED"


def fuzz_seed(long: bool) -> int:
    """``VENDING_FUZZ_SEED`` if set; else the fixed default seed, or a fresh random one for the long run."""
    raw = os.environ.get(SEED_VAR, "").strip()
    if raw:
        return int(raw, 0)
    return random.SystemRandom().randrange(2**32) if long else DEFAULT_SEED


def _replay(seed_value: int, label: str) -> str:
    return (
        f"fuzz seed {seed_value} ({label}); replay with {SEED_VAR}={seed_value} "
        f"{'make test-long' if 'long' in label else 'pytest tests/security/test_fuzz_openapi.py'}"
    )


@contextlib.contextmanager
def replayable() -> Iterator[None]:
    """Generation that depends on the seed alone.

    Hypothesis mixes into generation (about one draw in 20) constants it collects from the local
    modules loaded so far: which modules a run has loaded (one file or the whole suite), and the
    order of their string sets (hash randomisation), would change the cases a seed produces. That
    pool is off during a fuzz run (an internal of Hypothesis: left alone if it is not there)."""
    try:
        from hypothesis.internal.conjecture.providers import HypothesisProvider
    except ImportError:  # pragma: no cover - another Hypothesis layout
        yield
        return
    original = HypothesisProvider.__dict__.get("_maybe_draw_constant")
    if original is None:  # pragma: no cover
        yield
        return
    HypothesisProvider._maybe_draw_constant = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        HypothesisProvider._maybe_draw_constant = original  # type: ignore[method-assign]


def describe(case: Any, *extra: Any) -> str:
    """A generated case as stable text (before it is aimed at real records or given a token)."""

    def plain(value: Any) -> Any:
        if type(value).__name__ == "NotSet":
            return None
        return value.hex() if isinstance(value, bytes) else value

    return json.dumps(
        [case.operation.label, plain(case.path_parameters), plain(case.query), plain(case.body), *extra],
        sort_keys=True,
        default=repr,
    )


def _op_seed(seed_value: int, label: str) -> int:
    """A distinct, reproducible seed per operation (crc32: str hash() changes between processes)."""
    return (seed_value ^ zlib.crc32(label.encode())) & 0xFFFFFFFF


def _has_inputs(op: Any) -> bool:
    raw = op.definition.raw
    return bool(raw.get("parameters") or raw.get("requestBody"))


def cases_of(op: Any) -> Any:
    """Schema-valid and (where the operation takes any input) schema-violating cases of one operation."""
    positive = op.as_strategy(GenerationMode.POSITIVE)
    return st.one_of(positive, op.as_strategy(GenerationMode.NEGATIVE)) if _has_inputs(op) else positive


def _seed(h: ServiceHarness) -> dict[str, list[str]]:
    """Real records for generated requests to find: issuances, and access requests in several states."""
    issuances = [h.vend().get_json()["issuance_id"] for _ in range(2)]
    requests = []
    for _ in range(3):
        resp = h.post("/v1/requests", {"entitlement": "prod-admin", "justification": JUSTIFICATION}, subject=REQUESTER)
        requests.append(resp.get_json()["id"])
    for approver in ("alice@example.com", "bob@example.com"):  # the second one ACTIVE
        h.post(f"/v1/requests/{requests[1]}:approve", subject=approver)
    resp = h.post(
        "/v1/requests",
        {"entitlement": "prod-break-glass", "justification": "INC-1: fuzzing"},
        subject="oncall@example.com",
    )
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
        self.sent: Counter[str] = Counter()  # cases actually sent, per operation
        self.digest = hashlib.sha256()  # of the cases generated: equal digests, same cases
        self.started = time.monotonic()

    def generated(self, text: str) -> None:
        self.digest.update(text.encode() + b"\n")

    def send(self, case: Any, caller: str | None, checks: list[Any], kind: str) -> None:
        if caller is not None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {self.h.token(caller)}"}
        response = case.call(app=self.app)
        self.stats["executed"] += 1
        self.stats[kind] += 1
        self.sent[case.operation.label] += 1
        self.stats[f"status {response.status_code}"] += 1
        self.stats[f"{case.operation.label} -> {response.status_code}"] += 1
        case.validate_response(response, checks=checks)

    def report(self, capsys: pytest.CaptureFixture[str], detail: str) -> None:
        elapsed = time.monotonic() - self.started
        with capsys.disabled():
            print(
                f"\n[fuzz {self.label}] executed {self.stats['executed']} generated requests in {elapsed:.1f}s "
                f"({detail.format_map(self.stats)}); cases digest {self.digest.hexdigest()[:16]}"
            )
            for label, count in sorted(self.sent.items()):
                print(f"[fuzz {self.label}]   sent to {label}: {count}")
            for key in sorted(k for k in self.stats if k.startswith("status ")):
                print(f"[fuzz {self.label}]   {key}: {self.stats[key]}")
            for key in sorted(k for k in self.stats if " -> " in k):
                print(f"[fuzz {self.label}]   {key}: {self.stats[key]}")

    def assert_sound(self, minimum: int) -> None:
        assert self.stats["executed"] >= minimum, self.stats
        assert not [k for k in self.stats if k.startswith("status 5")], self.stats

    def assert_per_operation(self, minimum: int) -> None:
        """Every operation of the document was sent at least ``minimum`` cases (counted, not assumed)."""
        short = {op.label: self.sent[op.label] for op in OPERATIONS if self.sent[op.label] < minimum}
        assert not short, f"operations below {minimum} cases: {short}"


# -- 1. schema-driven fuzzing ------------------------------------------------------------------


def announce(capsys: pytest.CaptureFixture[str], label: str, seed_value: int) -> None:
    with capsys.disabled():
        print(f"\n[fuzz {label}] {_replay(seed_value, label)}")


def fuzz(
    h: ServiceHarness, *, per_operation: int, seed_value: int, capsys: pytest.CaptureFixture[str], label: str
) -> Run:
    """One Hypothesis run per operation, ``per_operation`` cases each, seeded from ``seed_value``."""
    announce(capsys, label, seed_value)
    known = _seed(h)
    run = Run(h, label)
    try:
        for op in OPERATIONS:

            @seed(_op_seed(seed_value, op.label))
            @settings(max_examples=per_operation, **SETTINGS)
            @given(case=cases_of(op), caller=st.sampled_from(CALLERS), pick=st.integers(0, 99))
            def one(case: Any, caller: str | None, pick: int) -> None:
                positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
                run.generated(describe(case, positive, caller, pick))
                if positive:
                    _aim(case, known, pick)
                run.send(case, caller, CHECKS, "positive" if positive else "negative")

            with replayable():
                one()
    except BaseException as exc:  # schemathesis raises a FailureGroup (a BaseExceptionGroup)
        exc.add_note(_replay(seed_value, label))
        raise
    finally:
        run.report(capsys, "{positive} schema-valid, {negative} schema-violating")
    return run


def test_fuzz_openapi(harness: ServiceHarness, capsys: pytest.CaptureFixture[str]) -> None:
    seed_value = fuzz_seed(long=False)
    run = fuzz(harness, per_operation=PER_OPERATION, seed_value=seed_value, capsys=capsys, label="short")
    run.assert_per_operation(PER_OPERATION)
    run.assert_sound(PER_OPERATION * len(OPERATIONS))
    assert run.stats["status 200"] > 0, _replay(seed_value, "short")  # success is reached, not only refusals


@pytest.mark.long
def test_fuzz_openapi_long(harness: ServiceHarness, capsys: pytest.CaptureFixture[str]) -> None:
    seed_value = fuzz_seed(long=True)
    run = fuzz(harness, per_operation=PER_OPERATION_LONG, seed_value=seed_value, capsys=capsys, label="long")
    run.assert_per_operation(PER_OPERATION_LONG)
    run.assert_sound(PER_OPERATION_LONG * len(OPERATIONS))
    assert run.stats["status 200"] > 0, _replay(seed_value, "long")


def test_a_fuzz_failure_names_its_seed(harness: ServiceHarness, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a service whose /healthz answers 500 (an after-request function of the app, added directly)
    from flask import request

    def broken(response: Any) -> Any:
        if request.path == "/healthz":
            response.status_code = 500
        return response

    harness.client.application.after_request_funcs.setdefault(None, []).append(broken)
    # WHEN a fuzz run finds it
    with pytest.raises(BaseException) as info:
        fuzz(harness, per_operation=2, seed_value=424242, capsys=capsys, label="planted 500, failure expected")
    # THEN the failure says which seed found it and how to replay it
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "fuzz seed 424242" in notes and f"{SEED_VAR}=424242" in notes, (info.value, notes)


def test_seed_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN no seed in the environment: the default run is fixed, the long run random
    monkeypatch.delenv(SEED_VAR, raising=False)
    assert fuzz_seed(long=False) == DEFAULT_SEED
    assert len({fuzz_seed(long=True) for _ in range(5)}) > 1
    # WHEN a seed is given, both runs use it
    monkeypatch.setenv(SEED_VAR, "3141592653")
    assert fuzz_seed(long=False) == fuzz_seed(long=True) == 3141592653
    # AND each operation gets its own reproducible seed
    assert _op_seed(7, "GET /healthz") == _op_seed(7, "GET /healthz") != _op_seed(7, "GET /v1/issuances")


# -- 2. hostile values ---------------------------------------------------------------------------

_EDGE_TIMES = st.one_of(
    st.sampled_from([dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999), dt.datetime(1970, 1, 1)]),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)),
).flatmap(
    lambda d: st.sampled_from([None, 0, 1, -1, 14 * 60, -(23 * 60 + 59), 23 * 60 + 59]).map(
        lambda minutes: (
            d.isoformat()
            if minutes is None
            else d.replace(tzinfo=dt.timezone(dt.timedelta(minutes=minutes))).isoformat()
        )
    )
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)
_CURSORS = st.one_of(
    st.tuples(_EDGE_TIMES, st.sampled_from(["a" * 32, "", "x"])).map(lambda t: _b64(json.dumps(list(t)).encode())),
    st.integers(1, 20000).map(lambda n: _b64(b"[" * n + b"]" * n)),
    _JSON.map(lambda v: _b64(json.dumps(v).encode())),
    st.binary(max_size=64).map(_b64),
    st.text(max_size=40),
)
_NESTED = st.integers(1, 30000).flatmap(
    lambda n: st.sampled_from([b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n])
)
_LIST = SCHEMA["/v1/issuances"]["GET"]
_BODY_OPS = [op for op in OPERATIONS if op.method.upper() == "POST"]
HOSTILE_VALUES = st.one_of(
    st.tuples(_LIST.as_strategy(), st.just("since"), _EDGE_TIMES),
    st.tuples(_LIST.as_strategy(), st.just("page_token"), _CURSORS),
    st.tuples(st.one_of(*[op.as_strategy() for op in _BODY_OPS]), st.just("body"), _NESTED),
)


def fuzz_hostile(
    h: ServiceHarness, *, max_examples: int, seed_value: int, capsys: pytest.CaptureFixture[str], label: str
) -> Run:
    announce(capsys, label, seed_value)
    known = _seed(h)
    run = Run(h, label)

    @seed(_op_seed(seed_value, "hostile"))
    @settings(max_examples=max_examples, **SETTINGS)
    @given(hostile=HOSTILE_VALUES, caller=st.sampled_from(CALLERS[:-1]), pick=st.integers(0, 99))
    def one(hostile: tuple[Any, str, Any], caller: str, pick: int) -> None:
        case, where, value = hostile
        run.generated(describe(case, where, value, caller, pick))
        _aim(case, known, pick)
        if where == "body":
            case.body = value  # raw bytes, sent as-is with Content-Type application/json
        else:
            case.query = {**(case.query or {}), where: value}
        run.send(case, caller, CONFORMANCE, where)

    try:
        with replayable():
            one()
    except BaseException as exc:  # schemathesis raises a FailureGroup (a BaseExceptionGroup)
        exc.add_note(_replay(seed_value, label))
        raise
    finally:
        run.report(capsys, "hostile since: {since}, page_token: {page_token}, nested body: {body}")
    return run


def test_fuzz_hostile_values(harness: ServiceHarness, capsys: pytest.CaptureFixture[str]) -> None:
    seed_value = fuzz_seed(long=False)
    run = fuzz_hostile(harness, max_examples=HOSTILE, seed_value=seed_value, capsys=capsys, label="hostile-short")
    run.assert_sound(HOSTILE)


@pytest.mark.long
def test_fuzz_hostile_values_long(harness: ServiceHarness, capsys: pytest.CaptureFixture[str]) -> None:
    seed_value = fuzz_seed(long=True)
    run = fuzz_hostile(harness, max_examples=HOSTILE_LONG, seed_value=seed_value, capsys=capsys, label="hostile-long")
    run.assert_sound(HOSTILE_LONG)


# -- 3. what the fuzzers found before, kept as explicit cases (issue 9, defect 7) ----------------------
# Each was a 500 (or an HTML 404) before its fix. In-document operations go through the same
# conformance checks as the fuzzers; paths outside the document must get the documented JSON 404.


def _deep(n: int, kind: str) -> bytes:
    return b"[" * n + b"]" * n if kind == "array" else b'{"a":' * n + b"1" + b"}" * n


def _cursor(value: Any) -> str:
    return _b64(json.dumps(value).encode())


PAST_FINDINGS: dict[str, tuple[str, str, dict[str, Any] | None, Any]] = {
    # deep JSON bodies: beyond the parser's recursion limit
    "deep-json-array-vend": ("POST", "/v1/access-tokens", None, _deep(30000, "array")),
    "deep-json-object-vend": ("POST", "/v1/access-tokens", None, _deep(30000, "object")),
    "deep-json-object-request": ("POST", "/v1/requests", None, _deep(5000, "object")),
    "deep-json-array-signed-jwt": ("POST", "/v1/signed-jwts", None, _deep(1100, "array")),
    "deep-json-in-claims": (
        "POST",
        "/v1/signed-jwts",
        None,
        b'{"service_account": "' + DEMO_SA.encode() + b'", "claims": {"aud": "https://example.com/",'
        b' "scope": ' + _deep(3000, "array") + b"}}",
    ),
    "deep-json-approve": ("POST", "/v1/requests/{id}:approve", None, _deep(30000, "array")),
    # extreme timestamps: the range's ends with offsets that push them out of it
    "since-year-1-plus-14h": ("GET", "/v1/issuances", {"since": "0001-01-01T00:00:00+14:00"}, None),
    "since-year-9999-minus-23h59": ("GET", "/v1/issuances", {"since": "9999-12-31T23:59:59.999999-23:59"}, None),
    "since-year-1-naive": ("GET", "/v1/issuances", {"since": "0001-01-01T00:00:00"}, None),
    "since-year-9999-utc": ("GET", "/v1/issuances", {"since": "9999-12-31T23:59:59Z"}, None),
    # forged page tokens
    "page-token-year-1-plus-14h": (
        "GET",
        "/v1/issuances",
        {"page_token": _cursor(["0001-01-01T00:00:00+14:00", "a" * 32])},
        None,
    ),
    "page-token-year-9999-minus-23h59": (
        "GET",
        "/v1/issuances",
        {"page_token": _cursor(["9999-12-31T23:59:59.999999-23:59", ""])},
        None,
    ),
    "page-token-deep-nesting": ("GET", "/v1/issuances", {"page_token": _b64(_deep(20000, "array"))}, None),
    "page-token-object": ("GET", "/v1/issuances", {"page_token": _cursor({"a": 1})}, None),
    "page-token-three-items": ("GET", "/v1/issuances", {"page_token": _cursor([1, 2, 3])}, None),
    "page-token-null": ("GET", "/v1/issuances", {"page_token": _cursor(None)}, None),
    "page-token-wrong-types": ("GET", "/v1/issuances", {"page_token": _cursor([12, ["x"]])}, None),
    "page-token-not-json": ("GET", "/v1/issuances", {"page_token": _b64(b"\xff\xfe\x00")}, None),
    "page-token-not-base64": ("GET", "/v1/issuances", {"page_token": "%%!!"}, None),
    "page-token-huge-year": ("GET", "/v1/issuances", {"page_token": _cursor(["99999-01-01T00:00:00Z", "a"])}, None),
}
# Outside the document: each was an HTML 404 from the framework's router.
UNKNOWN_PATHS = [
    ("GET", "/robots.txt"),
    ("GET", "/favicon.ico"),
    ("POST", "/v1/requests/a%0Ab:withdraw"),
    ("GET", "/v1/issuances/a%0A"),
    ("GET", "/v1/requests/%0A"),
    ("POST", "/v1/access-tokens%0A"),
]


@pytest.mark.parametrize("name", sorted(PAST_FINDINGS))
def test_past_fuzz_findings(harness: ServiceHarness, name: str) -> None:
    method, path, query, body = PAST_FINDINGS[name]
    # GIVEN the input that once broke the service, on real records
    known = _seed(harness)
    op = SCHEMA[path][method]
    case = op.Case(query=query) if body is None else op.Case(body=body, media_type="application/json")
    if "id" in case.path_parameters or "{id}" in path:
        case.path_parameters = {"id": known["requests"][1]}
    run = Run(harness, f"regression {name}")
    # WHEN it is sent
    run.send(case, CI_SUBJECT, CONFORMANCE, "regression")
    # THEN a documented 4xx (or 200), never a 5xx
    statuses = [k for k in run.stats if k.startswith("status ")]
    assert statuses and not [k for k in statuses if k.startswith("status 5")], run.stats


@pytest.mark.parametrize("method,path", UNKNOWN_PATHS)
def test_past_fuzz_findings_outside_the_document(harness: ServiceHarness, method: str, path: str) -> None:
    # WHEN a path the document does not name is requested
    resp = harness.call(method, path)
    # THEN the documented JSON 404, not the framework's HTML page
    assert resp.status_code == 404 and resp.mimetype == "application/json", resp.get_data(as_text=True)[:200]
    assert resp.get_json()["error"]["reason"] == "unknown-path"
