"""vending.iam.IamCredentials against hostile answers from a plain local HTTP server.

The server here is ``http.server.ThreadingHTTPServer`` on 127.0.0.1 (port 0)
in a thread, independent of the IAM stand-in in ``vending/local/``: each test
scripts the answers (status, headers, body, no answer, a reset, raw bytes)
and the server records every request it saw.

The contract under test (``vending/iam.py``): only what can succeed on retry
is labelled retryable; 400/401/403/404 and other 4xx are answered once and
never retried; 5xx is retried a bounded number of times; anything unreadable
is ``iam-bad-response``; nothing but a ``VendingError`` ever leaves the
client, whatever the body.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from vending.errors import (
    BadRequestError,
    InternalError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    UnavailableError,
    UpstreamError,
    VendingError,
)
from vending.iam import AccessToken, IamCredentials, Signature, StaticToken

SA = "demo-deployer@local-project.iam.gserviceaccount.com"
BEARER = "test-service-bearer-0123456789"
REASON = "token-vending issuance 0f6d1c1e2b6a4d4f9a3e5c7b8d9e0a1b"
RETRIES = 2
DEADLINE_S = 0.5
HANG_S = 30.0  # "never answers": far past any deadline; released at teardown

# -- the scripted server ----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One scripted answer: a status with headers and body, or a misbehaviour."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    hang_s: float = 0.0  # wait this long (or until teardown) before doing anything
    reset: bool = False  # close with a TCP RST, no answer
    raw: bytes | None = None  # write these bytes as the whole answer, then close


def json_answer(status: int, payload: Any, *headers: tuple[str, str]) -> Answer:
    return Answer(status, json.dumps(payload).encode(), (("Content-Type", "application/json"), *headers))


def google_error(status: int, message: str, state: str = "FAILED_PRECONDITION") -> Answer:
    return json_answer(status, {"error": {"code": status, "message": message, "status": state}})


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedIam:
    """Answers from ``script`` in order, then ``default`` for ever; records what it saw."""

    default: Answer = field(default_factory=lambda: Answer(500))
    script: list[Answer] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def reset(self) -> None:
        """Forget the script and what was seen; release any request still held."""
        with self.lock:
            self.release.set()
            self.release = threading.Event()
            self.default, self.script, self.seen = Answer(500), [], []

    def answer(self, *answers: Answer, then: Answer | None = None) -> None:
        with self.lock:
            self.script = list(answers)
            if then is not None:
                self.default = then

    def next_answer(self, seen: Seen) -> tuple[Answer, threading.Event]:
        with self.lock:
            self.seen.append(seen)
            return (self.script.pop(0) if self.script else self.default), self.release


def _handler(iam: ScriptedIam) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_POST(self) -> None:  # http.server names it
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            ans, release = iam.next_answer(Seen("POST", self.path, dict(self.headers.items()), body))
            if ans.hang_s:
                release.wait(ans.hang_s)
            if ans.reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return
            if ans.raw is not None:
                self.wfile.write(ans.raw)
                self.wfile.flush()
                self.close_connection = True
                return
            self.send_response(ans.status)
            for name, value in ans.headers:
                self.send_header(name, value)
            if ans.status >= 200 and ans.status not in (204, 304):
                self.send_header("Content-Length", str(len(ans.body)))
            self.end_headers()
            if ans.status >= 200 and ans.status not in (204, 304):
                self.wfile.write(ans.body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # a reset socket is expected here
        pass


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[ScriptedIam]:
    scripted = ScriptedIam()
    server = QuietServer(("127.0.0.1", 0), _handler(scripted))
    scripted.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield scripted
    scripted.reset()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def iam(scripted_server: ScriptedIam) -> Iterator[ScriptedIam]:
    """The module's server, with an empty script and nothing seen (any request still held is released)."""
    scripted_server.reset()
    yield scripted_server
    scripted_server.reset()


def client(url: str, *, timeout_s: float = 5.0, retries: int = RETRIES) -> IamCredentials:
    return IamCredentials(url, StaticToken(BEARER), timeout_s=timeout_s, retries=retries, backoff_s=0.001)


# -- the four methods, each with a valid answer -----------------------------------------------

EXPIRE = "2026-12-01T18:35:33Z"
VALID: dict[str, dict[str, Any]] = {
    "generateAccessToken": {"accessToken": "ya29.c.unit-test-access-token", "expireTime": EXPIRE},
    "generateIdToken": {"token": "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2ln"},
    "signJwt": {"keyId": "0123abcd", "signedJwt": "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2ln"},
    "signBlob": {"keyId": "0123abcd", "signedBlob": base64.b64encode(b"\x01" * 256).decode()},
}
CALLS: dict[str, Callable[[IamCredentials], Any]] = {
    "generateAccessToken": lambda c: c.generate_access_token(
        SA, ["https://www.googleapis.com/auth/cloud-platform"], 600, [], reason=REASON
    ),
    "generateIdToken": lambda c: c.generate_id_token(SA, "https://example.com/", True, [], reason=REASON),
    "signJwt": lambda c: c.sign_jwt(SA, {"aud": "https://example.com/", "exp": 1_800_000_000}, [], reason=REASON),
    "signBlob": lambda c: c.sign_blob(SA, b"unit test blob", [], reason=REASON),
}
METHODS = list(CALLS)


def fail(method: str, c: IamCredentials) -> VendingError:
    """Call ``method``; return the VendingError it raised (anything else fails the test)."""
    with pytest.raises(VendingError) as info:
        CALLS[method](c)
    return info.value


def outcome(exc: VendingError) -> tuple[str, int, str, bool]:
    return exc.reason, exc.http_status, exc.status, exc.retryable


REJECTED = ("iam-rejected", 400, "FAILED_PRECONDITION", False)
IAM_ERROR = ("iam-error", 502, "UNAVAILABLE", True)
BAD_RESPONSE = ("iam-bad-response", 502, "UNAVAILABLE", True)
UNAVAILABLE = ("iam-unavailable", 503, "UNAVAILABLE", True)
RATE_LIMITED = ("iam-rate-limited", 429, "RESOURCE_EXHAUSTED", True)

# IAM's status -> (the outcome, the error class): the 4xx that are never retried, and 429.
REFUSALS: dict[int, tuple[tuple[str, int, str, bool], type[VendingError]]] = {
    400: (REJECTED, BadRequestError),
    401: (("iam-unauthenticated", 500, "INTERNAL", False), InternalError),
    403: (("iam-permission-denied", 403, "PERMISSION_DENIED", False), PermissionDeniedError),
    404: (("iam-target-not-found", 404, "NOT_FOUND", False), NotFoundError),
    405: (REJECTED, BadRequestError),
    409: (REJECTED, BadRequestError),
    412: (REJECTED, BadRequestError),
    413: (REJECTED, BadRequestError),
    418: (REJECTED, BadRequestError),
    422: (REJECTED, BadRequestError),
    429: (RATE_LIMITED, RateLimitedError),
}

# Error bodies that are not Google's ``{"error": {"message": ...}}``: each must map by status alone.
HOSTILE_ERROR_BODIES: dict[str, bytes] = {
    "html": b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    "empty": b"",
    "truncated-json": b'{"error": {"code": 403, "message": "Permission',
    "json-list": b'[{"error": {"message": "in a list"}}]',
    "json-string": b'"error"',
    "json-null": b"null",
    "error-is-a-string": b'{"error": "denied"}',
    "message-not-a-string": b'{"error": {"code": 400, "message": {"nested": true}}}',
    "not-utf8": b"\xff\xfe\x00garbage\x80",
    "nested-past-the-parser": b"[" * 200_000,
}


# -- success: what the server saw --------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_valid_answer_is_returned_and_the_request_is_well_formed(iam: ScriptedIam, method: str) -> None:
    """GIVEN IAM answering a valid 200 for the method
    WHEN the client calls it
    THEN it returns the parsed credential, after exactly one POST to
    /v1/projects/-/serviceAccounts/EMAIL:METHOD carrying the service's bearer,
    X-Goog-Request-Reason and a JSON body."""
    iam.answer(then=json_answer(200, VALID[method]))

    result = CALLS[method](client(iam.url + "/"))  # a trailing slash on the endpoint is harmless

    if method == "generateAccessToken":
        assert result == AccessToken(
            "ya29.c.unit-test-access-token", _dt.datetime(2026, 12, 1, 18, 35, 33, tzinfo=_dt.UTC)
        )
    elif method == "generateIdToken":
        assert result == VALID[method]["token"]
    else:
        field_name = "signedJwt" if method == "signJwt" else "signedBlob"
        assert result == Signature(VALID[method]["keyId"], VALID[method][field_name])
    [seen] = iam.seen
    assert seen.method == "POST"
    assert seen.path == f"/v1/projects/-/serviceAccounts/{SA}:{method}"
    assert seen.headers["Authorization"] == f"Bearer {BEARER}"
    assert seen.headers["X-Goog-Request-Reason"] == REASON
    assert seen.headers["Content-Type"] == "application/json"
    body = json.loads(seen.body)
    assert isinstance(body, dict) and "delegates" not in body


def test_request_bodies_carry_the_method_fields_and_delegates(iam: ScriptedIam) -> None:
    """GIVEN IAM answering each method with a valid 200
    WHEN each method is called with one delegate
    THEN each body holds that method's fields and the delegate, as IAM expects them."""
    delegate = "projects/-/serviceAccounts/hop@local-project.iam.gserviceaccount.com"
    c = client(iam.url)

    for method in METHODS:
        iam.answer(json_answer(200, VALID[method]))
        if method == "generateAccessToken":
            c.generate_access_token(SA, ["s1", "s2"], 300, [delegate], reason=REASON)
        elif method == "generateIdToken":
            c.generate_id_token(SA, "https://aud.example/", False, [delegate], reason=REASON)
        elif method == "signJwt":
            c.sign_jwt(SA, {"aud": "a", "exp": 5}, [delegate], reason=REASON)
        else:
            c.sign_blob(SA, b"\x00\x01", [delegate], reason=REASON)

    bodies = {s.path.rsplit(":", 1)[1]: json.loads(s.body) for s in iam.seen}
    assert bodies == {
        "generateAccessToken": {"scope": ["s1", "s2"], "lifetime": "300s", "delegates": [delegate]},
        "generateIdToken": {"audience": "https://aud.example/", "includeEmail": False, "delegates": [delegate]},
        "signJwt": {"payload": '{"aud":"a","exp":5}', "delegates": [delegate]},
        "signBlob": {"payload": base64.b64encode(b"\x00\x01").decode(), "delegates": [delegate]},
    }


# -- 4xx: their own outcome, never retried -----------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("status", sorted(REFUSALS))
def test_iam_refusal_maps_to_its_own_outcome_and_is_never_retried(iam: ScriptedIam, method: str, status: int) -> None:
    """GIVEN IAM answering every call with this 4xx, in Google's error shape
    WHEN the client calls the method (retries allowed)
    THEN it raises the status's own error class, reason, HTTP status, status
    string and retryable flag, after exactly one request."""
    iam.answer(then=google_error(status, "Request contains an invalid argument."))

    exc = fail(method, client(iam.url))

    expected, cls = REFUSALS[status]
    assert outcome(exc) == expected
    assert type(exc) is cls
    assert len(iam.seen) == 1
    assert exc.detail is not None and exc.detail.startswith(f"{method} {status}: ")


@pytest.mark.parametrize("method", METHODS)
def test_iam_400_quotes_iams_message_truncated_on_one_line(iam: ScriptedIam, method: str) -> None:
    """GIVEN IAM answering 400 with a long, multi-line message
    WHEN the client calls the method
    THEN the caller's message quotes IAM's text, on one line, at most 300 of its characters."""
    long_message = "Lifetime is\ninvalid:\t" + "x" * 5000
    iam.answer(then=google_error(400, long_message, "INVALID_ARGUMENT"))

    exc = fail(method, client(iam.url))

    assert outcome(exc) == REJECTED
    assert "Lifetime is invalid: xxx" in exc.message
    assert "\n" not in exc.message and "\t" not in exc.message
    assert exc.message.count("x") <= 300


@pytest.mark.parametrize("method", METHODS)
def test_iam_403_names_the_missing_role(iam: ScriptedIam, method: str) -> None:
    """GIVEN IAM answering 403
    WHEN the client calls the method
    THEN the message names the Token Creator role and the target; not retryable."""
    iam.answer(then=google_error(403, "Permission 'iam.serviceAccounts.getAccessToken' denied", "PERMISSION_DENIED"))

    exc = fail(method, client(iam.url))

    assert "roles/iam.serviceAccountTokenCreator" in exc.message and SA in exc.message
    assert exc.retryable is False


# -- non-JSON and odd error bodies: mapped by status alone ------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("body", list(HOSTILE_ERROR_BODIES))
@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 502])
def test_hostile_error_body_maps_by_status(iam: ScriptedIam, method: str, body: str, status: int) -> None:
    """GIVEN IAM answering this status with a body that is not Google's error JSON
    (HTML, empty, truncated, a list, nested past the parser's limit...)
    WHEN the client calls the method
    THEN the outcome is the status's own, and only a VendingError left the client."""
    iam.answer(then=Answer(status, HOSTILE_ERROR_BODIES[body], (("Content-Type", "text/html"),)))

    exc = fail(method, client(iam.url))

    expected = IAM_ERROR if status == 502 else REFUSALS[status][0]
    assert outcome(exc) == expected
    assert len(iam.seen) == (1 + RETRIES if status == 502 else 1)
    assert exc.detail == f"{method} {status}: "  # nothing readable from such a body


# -- 429 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("header", "retry_after"),
    [
        ("7", 7),
        (None, 5),
        ("soon", 5),
        ("Wed, 21 Oct 2026 07:28:00 GMT", 5),
        ("-3", 5),
        ("1.5", 5),
        ("", 5),
        ("0", 1),
        ("99999999", 3600),
    ],
    ids=["seconds", "missing", "text", "http-date", "negative", "fraction", "empty", "zero", "huge"],
)
def test_iam_429_is_rate_limited_with_retry_after(
    iam: ScriptedIam, method: str, header: str | None, retry_after: int
) -> None:
    """GIVEN IAM answering 429, with this Retry-After header (or none)
    WHEN the client calls the method
    THEN it raises iam-rate-limited 429 RESOURCE_EXHAUSTED, retryable, Retry-After
    from the header when it is delta-seconds (capped at 3600, at least 1), else 5;
    after exactly one request (429 is never retried by the client)."""
    headers = (("Retry-After", header),) if header is not None else ()
    iam.answer(
        then=json_answer(
            429, {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}, *headers
        )
    )

    exc = fail(method, client(iam.url))

    assert outcome(exc) == RATE_LIMITED
    assert isinstance(exc, RateLimitedError) and exc.retry_after == retry_after
    assert len(iam.seen) == 1


# -- 5xx: bounded retries ----------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_iam_5xx_is_retried_the_configured_number_of_times_then_iam_error(
    iam: ScriptedIam, method: str, status: int
) -> None:
    """GIVEN IAM answering every call with this 5xx
    WHEN the client (2 retries) calls the method
    THEN the server saw 3 requests, all alike, and the client raised iam-error
    502 UNAVAILABLE, retryable."""
    iam.answer(then=google_error(status, "The service is currently unavailable.", "UNAVAILABLE"))

    exc = fail(method, client(iam.url, retries=RETRIES))

    assert outcome(exc) == IAM_ERROR
    assert type(exc) is UpstreamError
    assert len(iam.seen) == 1 + RETRIES
    assert len({(s.path, s.headers["X-Goog-Request-Reason"], s.body) for s in iam.seen}) == 1


@pytest.mark.parametrize("retries", [0, 1, 4])
def test_the_number_of_5xx_retries_is_the_configured_one(iam: ScriptedIam, retries: int) -> None:
    """GIVEN IAM answering every call with 503
    WHEN a client configured with this many retries calls generateAccessToken
    THEN the server saw exactly 1 + retries requests."""
    iam.answer(then=Answer(503))

    exc = fail("generateAccessToken", client(iam.url, retries=retries))

    assert outcome(exc) == IAM_ERROR
    assert len(iam.seen) == 1 + retries


@pytest.mark.parametrize("method", METHODS)
def test_5xx_then_a_valid_answer_succeeds(iam: ScriptedIam, method: str) -> None:
    """GIVEN IAM answering 502 then 504, then a valid 200
    WHEN the client (2 retries) calls the method
    THEN it returns the credential after 3 requests."""
    iam.answer(Answer(502), Answer(504), then=json_answer(200, VALID[method]))

    result = CALLS[method](client(iam.url))

    assert result is not None
    assert len(iam.seen) == 3


@pytest.mark.parametrize("status", [501, 505, 599])
def test_other_5xx_are_iam_error_without_retry(iam: ScriptedIam, status: int) -> None:
    """GIVEN IAM answering a 5xx that no retry can change (501, 505, 599)
    WHEN the client calls signJwt
    THEN iam-error 502 UNAVAILABLE, retryable, after exactly one request."""
    iam.answer(then=Answer(status))

    exc = fail("signJwt", client(iam.url))

    assert outcome(exc) == IAM_ERROR
    assert len(iam.seen) == 1


# -- 200 that cannot be read -------------------------------------------------------------------

GENERIC_BAD_200: dict[str, bytes] = {
    "not-json": b"<html>ok</html>",
    "empty": b"",
    "truncated-json": b'{"accessToken": "ya29.',
    "json-list": b"[]",
    "json-string": b'"ok"',
    "json-number": b"42",
    "json-null": b"null",
    "empty-object": b"{}",
    "not-utf8": b"\xff\xfe\xfd",
    "nested-past-the-parser": b'{"a":' * 200_000,
}


def _broken_fields(method: str) -> list[tuple[str, dict[str, Any]]]:
    """Each required field of the method's answer missing, then of each wrong type."""
    out: list[tuple[str, dict[str, Any]]] = []
    valid = VALID[method]
    for name in valid:
        out.append((f"{name}-missing", {k: v for k, v in valid.items() if k != name}))
        for label, wrong in [
            ("null", None),
            ("int", 7),
            ("list", ["x"]),
            ("object", {"x": 1}),
            ("bool", True),
            ("empty", ""),
        ]:
            out.append((f"{name}-{label}", {**valid, name: wrong}))
    if method == "generateAccessToken":
        for label, wrong in [
            ("date-only", "2026-12-01"),
            ("no-offset", "2026-12-01T18:35:33"),
            ("epoch-text", "1796150133"),
            ("words", "tomorrow"),
            ("month-13", "2026-13-01T00:00:00Z"),
            ("offset-25h", "2026-12-01T18:35:33+25:00"),
            ("before-year-1", "0001-01-01T00:00:00+01:00"),
            ("with-space", "2026-12-01 18:35:33Z"),
            ("no-seconds", "2026-12-01T18:35Z"),
            ("unicode-digits", "٢٠٢٦-12-01T18:35:33Z"),
        ]:
            out.append((f"expireTime-{label}", {**valid, "expireTime": wrong}))
    return out


BAD_200_CASES = [(m, label, json.dumps(body).encode()) for m in METHODS for label, body in _broken_fields(m)]
BAD_200_CASES += [(m, label, body) for m in METHODS for label, body in GENERIC_BAD_200.items()]


@pytest.mark.parametrize(
    ("method", "label", "body"), BAD_200_CASES, ids=[f"{m}-{label}" for m, label, _ in BAD_200_CASES]
)
def test_unreadable_200_is_bad_response_retryable_and_not_retried(
    iam: ScriptedIam, method: str, label: str, body: bytes
) -> None:
    """GIVEN IAM answering 200 with a body that is not JSON, not an object, or
    lacks a field or has it of the wrong type (expireTime not RFC 3339)
    WHEN the client calls the method
    THEN iam-bad-response 502 UNAVAILABLE, retryable for the caller (IAM may
    have minted: the caller records that), after exactly one request."""
    iam.answer(then=Answer(200, body))

    exc = fail(method, client(iam.url))

    assert outcome(exc) == BAD_RESPONSE
    assert len(iam.seen) == 1


@pytest.mark.parametrize("method", METHODS)
def test_a_bad_200_never_puts_the_body_in_the_error(iam: ScriptedIam, method: str) -> None:
    """GIVEN IAM answering 200 with a credential in an otherwise malformed body
    WHEN the client calls the method
    THEN neither the message nor the detail (logged) holds any of the body."""
    secret = "ya29." + "fake-never-logged-" + "q" * 40  # the prefix log redaction looks for; not a real token
    broken = {k: (secret if isinstance(v, str) else v) for k, v in VALID[method].items()}
    broken[next(iter(broken))] = 12345  # the first field of the wrong type; the others hold the secret
    broken["extra"] = secret
    iam.answer(then=json_answer(200, broken))

    exc = fail(method, client(iam.url))

    assert outcome(exc) == BAD_RESPONSE
    assert "SECRET" not in exc.message and "SECRET" not in (exc.detail or "") and "SECRET" not in str(exc)


@pytest.mark.parametrize("status", [201, 204, 302, 304, 307])
def test_other_non_error_statuses_are_bad_response_and_redirects_are_not_followed(
    iam: ScriptedIam, status: int
) -> None:
    """GIVEN IAM answering a 2xx other than 200, or a redirect to a path on the same server
    WHEN the client calls generateAccessToken
    THEN iam-bad-response, retryable, after exactly one request (no redirect followed)."""
    iam.answer(
        then=Answer(
            status,
            json.dumps(VALID["generateAccessToken"]).encode(),
            (("Location", iam.url + "/elsewhere"), ("Content-Type", "application/json")),
        )
    )

    exc = fail("generateAccessToken", client(iam.url))

    assert outcome(exc) == BAD_RESPONSE
    assert [s.path for s in iam.seen] == [f"/v1/projects/-/serviceAccounts/{SA}:generateAccessToken"]


# -- no answer ---------------------------------------------------------------------------------


def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("method", METHODS)
def test_connection_refused_is_iam_unavailable(method: str) -> None:
    """GIVEN nothing listening on the endpoint's port
    WHEN the client calls the method
    THEN iam-unavailable 503 UNAVAILABLE, retryable."""
    c = client(closed_port_url())

    exc = fail(method, c)

    assert outcome(exc) == UNAVAILABLE
    assert type(exc) is UnavailableError
    assert c.calls[method] == 1  # a connection error is not retried either


@pytest.mark.parametrize("method", METHODS)
def test_a_server_that_never_answers_is_iam_unavailable_within_the_deadline(iam: ScriptedIam, method: str) -> None:
    """GIVEN IAM that accepts the request and never answers
    WHEN the client with a 0.5 s deadline calls the method
    THEN iam-unavailable 503, retryable, well within 10x the deadline, after one
    request (a timeout is never retried: the first attempt may have minted)."""
    iam.answer(then=Answer(hang_s=HANG_S))
    started = time.monotonic()

    exc = fail(method, client(iam.url, timeout_s=DEADLINE_S))

    elapsed = time.monotonic() - started
    assert outcome(exc) == UNAVAILABLE
    assert elapsed < 10 * DEADLINE_S, elapsed
    assert len(iam.seen) == 1


def test_5xx_retries_stop_at_the_deadline(iam: ScriptedIam) -> None:
    """GIVEN IAM answering 503 after 0.2 s, then hanging
    WHEN a client with many retries and a 0.5 s deadline calls signBlob
    THEN it gives up within 10x the deadline with a retryable outcome, never
    having made all of its retries."""
    iam.answer(Answer(503, hang_s=0.2), Answer(503, hang_s=0.2), then=Answer(hang_s=HANG_S))
    started = time.monotonic()

    exc = fail("signBlob", client(iam.url, timeout_s=DEADLINE_S, retries=5))

    elapsed = time.monotonic() - started
    assert exc.reason in ("iam-unavailable", "iam-error") and exc.retryable
    assert elapsed < 10 * DEADLINE_S, elapsed
    assert len(iam.seen) < 1 + 5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("label", "answer"),
    [
        ("reset", Answer(reset=True)),
        ("closed-silently", Answer(raw=b"")),
        ("garbage-status-line", Answer(raw=b"HELLO THERE\r\n\r\n")),
        (
            "truncated-body",
            Answer(
                raw=b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                b'Content-Length: 500\r\n\r\n{"accessToken": "ya29.'
            ),
        ),
        ("reset-after-5xx", Answer(raw=b"HTTP/1.0 503 Unavailable\r\nContent-Length: 100\r\n\r\n{")),
    ],
)
def test_broken_connections_are_iam_unavailable(iam: ScriptedIam, method: str, label: str, answer: Answer) -> None:
    """GIVEN IAM that resets the connection, closes it without a word, answers
    garbage, or cuts the body short
    WHEN the client calls the method
    THEN iam-unavailable 503 UNAVAILABLE, retryable, after one request, and only
    a VendingError left the client."""
    iam.answer(then=answer)

    exc = fail(method, client(iam.url))

    assert outcome(exc) == UNAVAILABLE
    assert len(iam.seen) == 1
