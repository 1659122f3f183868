"""The leak audit catches what it promises to catch (issue 19, part 1).

Each test plants leaks on purpose and shows ``LeakAudit`` (tests/support/audit.py) finds every one
of them, where it was planted and nowhere else:

- secrets: each minted credential kind (a ``ya29.`` access token, an ID token, a signed JWT, a
  signBlob signature), vended for real through the harness from the IAM stand-in, and caller tokens
  the harness sent;
- variants: the full copy, the token minus one character at each end, a middle slice of 40
  characters, standard base64, base64url padded and unpadded, percent-encoded (``quote`` with
  ``safe=''`` and ``quote_plus``);
- places: a stdlib log record, the vending JSON log, stdout, stderr, a stored document (a Create into
  a new ``leak`` kind), a published event, an error response body, a response header.

One test per (secret kind, place): it obtains one secret per variant, leaks variant *i* of secret
*i* in that place, and asserts the audit reports exactly those secrets, in that place only. A clean
scenario (every kind vended, issuances read back) reports zero hits although issuance ids, SHA-256
digests and key ids are everywhere. The search itself (``SecretIndex``) is checked against the naive
definition (every 32-character window of every form of ``fingerprints``) with Hypothesis.

These tests build their own harness (not the ``harness`` fixture), so the run-wide autouse audit
does not fail them for the leaks they plant on purpose.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.app import CLOUD, DEMO_SA, ServiceHarness
from tests.support.audit import (
    _FOLD,
    FINGERPRINT,
    LeakAudit,
    SecretIndex,
    caller_token_of,
    find_secrets,
    fingerprints,
    search_forms,
    sensitive_part,
    use_store,
)
from tests.support.oidc import TestIssuer
from vending import log as vlog
from vending.store.base import Create

# -- what is leaked, and how ------------------------------------------------------------------------

VARIANTS: dict[str, Callable[[str], str]] = {
    "full": lambda s: s,
    "minus-one-each-end": lambda s: s[1:-1],
    "middle-40": lambda s: s[len(s) // 2 - 20 : len(s) // 2 + 20],
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "base64url": lambda s: base64.urlsafe_b64encode(s.encode()).decode(),
    "base64url-unpadded": lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
    "percent": lambda s: urllib.parse.quote(s, safe=""),
    "percent-plus": lambda s: urllib.parse.quote_plus(s),
}
MINTED_KINDS = ("access_token", "id_token", "signed_jwt", "signed_blob")
SECRET_KINDS = (*MINTED_KINDS, "caller_token")
STANDIN_METHOD = {
    "access_token": "generateAccessToken",
    "id_token": "generateIdToken",
    "signed_jwt": "signJwt",
    "signed_blob": "signBlob",
}


@pytest.fixture
def audited(
    sqlite_store: Any, oidc: TestIssuer, standin: Any, tmp_path: Path
) -> Iterator[tuple[ServiceHarness, LeakAudit]]:
    """A harness watched by a LeakAudit of this test's own (uninstalled at the end, never checked)."""
    audit = LeakAudit()
    audit.install()
    h = ServiceHarness(sqlite_store, oidc, standin, tmp_path)
    audit.watch(h)
    try:
        yield h, audit
    finally:
        audit.uninstall()
        h.close()


def obtain(h: ServiceHarness, kind: str, i: int) -> str:
    """One fresh secret of ``kind``: vended for real (taken from the stand-in's own list), or a caller
    token sent with a request. ``i`` makes each one distinct (RS256 signatures are deterministic)."""
    if kind == "caller_token":
        token = h.token()
        assert h.get("/v1/issuances", token=token).status_code == 200
        return token
    before = len(h.standin.minted)
    if kind == "access_token":
        resp = h.vend()
    elif kind == "id_token":
        resp = h.post(
            "/v1/id-tokens", {"service_account": DEMO_SA, "audience": f"https://hello-{i}x2kq3abcd-uc.a.run.app"}
        )
    elif kind == "signed_jwt":
        resp = h.post(
            "/v1/signed-jwts",
            {"service_account": DEMO_SA, "claims": {"aud": "https://example.com/", "scope": f"planted-{i}"}},
        )
    else:
        resp = h.post(
            "/v1/signed-blobs",
            {"service_account": DEMO_SA, "payload": base64.b64encode(f"planted blob {i}".encode()).decode()},
        )
    assert resp.status_code == 200, resp.get_json()
    minted = [m for m in h.standin.minted[before:] if m.method == STANDIN_METHOD[kind]]
    assert len(minted) == 1, minted
    return str(minted[0].credential)


def respond(h: ServiceHarness, *, status: int | None = None, body: str | None = None, header: str | None = None) -> Any:
    """A request through the real app whose response is altered on its way out (an after-request
    function appended directly: Flask refuses new setup functions once a request was handled)."""
    app = h.client.application

    def plant(response: Any) -> Any:
        if status is not None:
            response.status_code = status
        if body is not None:
            response.set_data(body)
        if header is not None:
            response.headers["X-Debug-Note"] = header
        return response

    funcs = app.after_request_funcs.setdefault(None, [])
    funcs.append(plant)
    try:
        return h.client.get("/healthz")
    finally:
        funcs.remove(plant)


def leak(h: ServiceHarness, place: str, text: str, n: int) -> str:
    """Put ``text`` in ``place``; returns the audit's name of the place."""
    if place == "stdlib-log":
        logging.getLogger("vending.planted").debug("upstream answered %s", text)
        return "logs"
    if place == "vending-log":
        vlog.info("planted", note=text)
        return "logs"
    if place == "stdout":
        print(f"debug: {text}")
        return "stdout-stderr"
    if place == "stderr":
        print(f"debug: {text}", file=sys.stderr)
        return "stdout-stderr"
    if place == "store":
        h.store.write([Create("leak", f"planted_{n}", {"note": text, "n": n})])
        return "store"
    if place == "event":
        h.events.publish("notifications", {"type": "planted", "note": text})
        return "events"
    if place == "error-body":
        resp = respond(h, status=500, body=json.dumps({"error": {"code": 500, "message": f"IAM said {text}"}}))
        assert resp.status_code == 500
        return "error-bodies"
    if place == "header":
        assert respond(h, header=text).status_code == 200
        return "response-headers"
    raise AssertionError(place)


PLACES = ("stdlib-log", "vending-log", "stdout", "stderr", "store", "event", "error-body", "header")


# -- every kind of leak, in every place -------------------------------------------------------------


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("kind", SECRET_KINDS)
def test_audit_catches_every_variant(audited: tuple[ServiceHarness, LeakAudit], kind: str, place: str) -> None:
    h, audit = audited
    # GIVEN one real secret per variant, and no leak yet
    secrets = {name: obtain(h, kind, i) for i, name in enumerate(VARIANTS)}
    assert len(set(secrets.values())) == len(VARIANTS)
    clean, _ = audit.hits()
    assert clean == []
    # WHEN variant i of secret i is leaked in the place
    where = ""
    expected: dict[str, str] = {}
    for n, (name, secret) in enumerate(secrets.items()):
        text = VARIANTS[name](secret)
        where = leak(h, place, text, n)
        if place == "vending-log" and vlog.redact(text) != text:
            continue  # the log's own redaction masked it: nothing leaked (checked below)
        expected[name] = secret
    found, figures = audit.hits()
    # THEN each one is reported, in that place and nowhere else
    by_secret = {hit.secret: (w, hit) for w, hit in found}
    missed = [name for name, s in expected.items() if s not in by_secret]
    assert missed == [], f"audit missed {missed} in {where}"
    assert {w for w, _ in found} == {where}, found
    assert set(by_secret) == set(expected.values()), found
    label = "caller token" if kind == "caller_token" else "minted credential"
    assert {hit.label for _, hit in found} == {label}
    assert figures["hits"] == len(expected)
    if place == "vending-log":  # only the log's own redaction may hide a full copy, and it said so
        masked = set(secrets.values()) - set(expected.values())
        assert all(sensitive_part(s) not in audit.haystacks()["logs"] for s in masked)
        assert (not masked) or "[REDACTED]" in audit.haystacks()["logs"]
    with pytest.raises(AssertionError) as info:
        audit.check()
    assert "credential material found" in str(info.value)


def test_leak_in_store_after_a_real_vend_end_to_end(audited: tuple[ServiceHarness, LeakAudit]) -> None:
    h, audit = audited
    # GIVEN a real vend (the caller token and the access token both exist) and a clean audit
    caller = h.token()
    resp = h.post(
        "/v1/access-tokens", {"service_account": DEMO_SA, "scopes": [CLOUD], "lifetime": "600s"}, token=caller
    )
    assert resp.status_code == 200
    token = resp.get_json()["access_token"]
    assert token in audit.minted_secrets() and caller in audit.caller_tokens()
    assert audit.check()["hits"] == 0
    # WHEN a stored document (another kind than the service's) holds a slice of the token and the
    # caller's token in base64
    middle = token[20:60]
    h.store.write(
        [Create("leak", "debug", {"upstream": {"note": middle}, "auth": base64.b64encode(caller.encode()).decode()})]
    )
    # THEN the audit fails, naming both, in the store
    found, _ = audit.hits()
    assert sorted((w, hit.label, hit.secret) for w, hit in found) == sorted(
        [("store", "minted credential", token), ("store", "caller token", caller)]
    )
    with pytest.raises(AssertionError) as info:
        audit.check()
    assert "in store: minted credential" in str(info.value) and "in store: caller token" in str(info.value)


def test_clean_scenario_has_no_hits(audited: tuple[ServiceHarness, LeakAudit]) -> None:
    h, audit = audited
    # GIVEN every kind vended, the issuances read back, an access request filed and events published
    for i, kind in enumerate(SECRET_KINDS):
        obtain(h, kind, i)
    listing = h.get("/v1/issuances").get_json()
    ids = [item["id"] if "id" in item else item["issuance_id"] for item in listing["issuances"]]
    for issuance_id in ids:
        assert h.get(f"/v1/issuances/{issuance_id}").status_code == 200
    assert (
        h.post(
            "/v1/requests",
            {"entitlement": "prod-admin", "justification": "TICKET-1: audit"},
            subject="dave@example.com",
        ).status_code
        == 200
    )
    assert h.get("/v1/issuances/" + "0" * 32).status_code == 404
    # WHEN everything is searched
    found, figures = audit.hits()
    # THEN nothing is found, although ids, SHA-256 digests and key ids are all over the haystacks
    assert found == [], found
    stacks = audit.haystacks()
    minted = [m for m in h.standin.minted if m.method in STANDIN_METHOD.values()]
    assert len(minted) == len(MINTED_KINDS) and len(ids) == len(MINTED_KINDS)
    assert all(m.sha256 in stacks["store"] for m in minted), stacks["store"]
    key_ids = {m.key_id for m in minted if m.method in ("signJwt", "signBlob")}
    assert key_ids and all(k in stacks["response-bodies"] and k in stacks["store"] for k in key_ids)
    assert all(i in stacks["logs"] and i in stacks["store"] for i in ids)
    assert figures["credentials"] == len(MINTED_KINDS) and figures["caller_tokens"] >= len(ids) + 3
    assert stacks["events"] and stacks["response-headers"] and stacks["error-bodies"]


def test_a_vend_body_hands_out_its_own_credential_but_nothing_else(audited: tuple[ServiceHarness, LeakAudit]) -> None:
    h, audit = audited
    # GIVEN a vend whose 200 body carries its access token (by design)
    caller = h.token()
    resp = h.post("/v1/access-tokens", {"service_account": DEMO_SA, "scopes": [CLOUD]}, token=caller)
    assert resp.status_code == 200 and audit.hits()[0] == []
    # WHEN that body also carried the caller's token
    audit.responses[-1].body = json.dumps({**resp.get_json(), "debug": caller})
    # THEN that is a leak in the response bodies
    found, _ = audit.hits()
    assert [(w, hit.secret) for w, hit in found] == [("response-bodies", caller)]


def test_use_store_reaches_every_store_the_service_holds(audited: tuple[ServiceHarness, LeakAudit]) -> None:
    h, _ = audited

    # GIVEN a wrapper around the harness's store
    class Wrapper:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

    wrapper = Wrapper(h.store)
    # WHEN the harness is pointed at it
    use_store(h, wrapper)
    # THEN every existing store attribute of the service and its parts points at it
    owners = [h.service, getattr(h.service, "ledger", None), getattr(h.service, "approvals", None)]
    held = [getattr(o, a) for o in owners if o is not None for a in ("store", "_store") if hasattr(o, a)]
    assert held and all(s is wrapper for s in held) and h.store is wrapper
    use_store(h, wrapper.inner)


# -- the search itself --------------------------------------------------------------------------------

JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0."
    + base64.urlsafe_b64encode(json.dumps({"sub": "repo:example/app", "jti": "0123456789abcdef"}).encode())
    .decode()
    .rstrip("=")
    + "."
    + base64.urlsafe_b64encode(bytes(range(256))).decode().rstrip("=")
)
ACCESS = "ya29.c." + base64.urlsafe_b64encode(bytes(range(100, 172))).decode()
BLOB = base64.b64encode(bytes(range(255, -1, -1))).decode()
SECRETS = [JWT, ACCESS, BLOB]


def naive_find(haystack: str, secrets: list[str]) -> list[str]:
    """The definition, spelled out: a fingerprint (32-char window or short form) of a secret that no
    other secret has."""
    folded = haystack.translate(_FOLD)
    prints = {s: set(fingerprints(s)) for s in secrets}
    return [
        s
        for s in secrets
        if any(fp in folded and not any(fp in prints[o] for o in secrets if o != s) for fp in prints[s])
    ]


def test_public_parts_are_not_searched() -> None:
    # GIVEN credentials with public parts
    header, payload, signature = JWT.split(".")
    # THEN a JWT's header, and the ya29. prefix, are left out; a signature counts whole
    assert sensitive_part(JWT) == f"{payload}.{signature}"
    assert sensitive_part(ACCESS) == ACCESS[len("ya29.") :]
    assert sensitive_part(BLOB) == BLOB
    assert find_secrets(f"kid header {header} and ya29.c. prefix", SECRETS) == []
    assert set(search_forms(JWT)) >= {
        "plain",
        "base64@0",
        "base64@1",
        "base64@2",
        "base64url@0",
        "base64",
        "base64url",
        "base64url-unpadded",
        "percent",
        "percent-plus",
    }
    assert caller_token_of(f"Bearer {JWT}") == JWT and caller_token_of(ACCESS) == ACCESS
    assert caller_token_of(f"Basic {BLOB}") == BLOB
    for not_a_credential in (
        "",
        "Bearer",
        "Bearer generateAccessToken",
        "Bearer " + "0" * 64,
        "Bearer abc.def.ghi",
        "Bearer " + JWT.replace(".", "!", 1),
        "Bearer " + JWT + " trailing",
    ):
        assert caller_token_of(not_a_credential) is None


@pytest.mark.parametrize("secret", SECRETS, ids=["jwt", "access-token", "signed-blob"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("prefix", ["", "x", "xy", "Bearer ", "%22"])
def test_every_variant_at_every_alignment(secret: str, variant: str, prefix: str) -> None:
    # GIVEN the variant inside a longer text, behind 0, 1 or 2 bytes when base64-encoded together
    text = VARIANTS[variant](secret)
    if variant.startswith("base64"):
        encoder = base64.b64encode if variant == "base64" else base64.urlsafe_b64encode
        text = encoder((prefix + secret).encode()).decode()
    haystack = f'{{"message": "debug {prefix}{text} end", "sha256": "{"ab" * 32}"}}'
    # WHEN it is searched
    found = find_secrets(haystack, SECRETS)
    # THEN exactly that secret is found, as the naive definition says
    assert found == [secret]
    assert naive_find(haystack, SECRETS) == found


def test_31_characters_are_not_a_fingerprint() -> None:
    # GIVEN a slice one character short of a window
    middle = sensitive_part(ACCESS)[10 : 10 + FINGERPRINT - 1]
    # THEN it is not reported; one more character is
    assert find_secrets(f"note {middle} end", SECRETS) == []
    assert find_secrets(f"note {sensitive_part(ACCESS)[10 : 10 + FINGERPRINT]} end", SECRETS) == [ACCESS]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    which=st.integers(0, len(SECRETS) - 1),
    variant=st.sampled_from(sorted(VARIANTS)),
    start=st.integers(0, 400),
    length=st.integers(20, 80),
    noise=st.text("abcxyz+/=-_.%0123456789 ", max_size=40),
    noise2=st.text("abcxyz+/=-_.%0123456789 ", max_size=40),
)
def test_index_agrees_with_the_definition(
    which: int, variant: str, start: int, length: int, noise: str, noise2: str
) -> None:
    # GIVEN a random piece of a variant of a secret between random noise
    text = VARIANTS[variant](SECRETS[which])
    haystack = noise + text[start : start + length] + noise2
    # THEN the index finds exactly what the naive window search finds
    assert [h.secret for h in SecretIndex(SECRETS).find(haystack)] == naive_find(haystack, SECRETS)


def test_search_is_fast_enough_for_every_test() -> None:
    import time

    # GIVEN 500 caller-token-like secrets and 1 MB of JSON-like text
    tokens = [JWT[:-8] + f"{i:08d}" for i in range(500)]
    text = json.dumps([{"id": f"{i:032x}", "sha256": f"{i:064x}", "note": "x" * 40} for i in range(6000)])
    started = time.process_time()
    index = SecretIndex(tokens + SECRETS)
    found = index.find(text)
    elapsed = time.process_time() - started
    # THEN nothing is found, in a bounded time (generous: a loaded 2-core machine)
    assert found == []
    assert elapsed < 20, elapsed
