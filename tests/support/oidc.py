"""A reusable test OIDC issuer and fake service-account key endpoint.

``TestIssuer`` holds RSA keys and one EC P-256 key, serves their JWKS from a
tiny HTTP server on 127.0.0.1 (stdlib ``ThreadingHTTPServer``, daemon thread,
port 0) that counts fetches and can be told to fail, slow down or rotate
keys, and mints tokens with sane defaults and many ways to tamper with them::

    with TestIssuer() as idp:
        verifier = Verifier([idp.issuer_config()])
        verifier.verify(idp.mint(sub="alice"))
        idp.mint(alg="none")                 # unsigned
        idp.mint(alg="HS256")                # HMAC with the public key PEM as secret
        idp.mint(key=idp.attacker)           # valid signature, unpublished key
        idp.mint(drop=["exp"], duplicate={"sub": "root"})
        idp.mint(raw_payload=b"[1, 2]")

In a test module, ``idp = oidc_issuer_fixture()`` declares a pytest fixture.

``FakeServiceAccountKeys`` serves ``/service_accounts/v1/metadata/jwk/{email}``
like ``www.googleapis.com`` and signs JWTs like the IAM Credentials API
``signJwt`` (header ``{"alg":"RS256","kid":...,"typ":"JWT"}``), for chat-ops
bot messages.

Keys are generated once per process and reused (RSA generation is slow).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms

from vending import clock
from vending.config import Issuer

DROP: Any = object()  # a claim override that removes the claim
_DEFAULT: Any = object()  # "use the key's kid"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


# ---------------------------------------------------------------------------
# Encoding helpers


def b64url(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def json_pairs(pairs: Iterable[tuple[str, Any]]) -> bytes:
    """A JSON object from key/value pairs, keeping duplicates (for attacks)."""
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode("utf-8")


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(header, payload, signature segment) of a compact JWS, unverified."""
    h, p, s = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p)), s


def tamper_header(token: str, **changes: Any) -> str:
    """Rewrite header fields after signing (``DROP`` removes one); the signature is kept."""
    h, p, s = token.split(".")
    header = json.loads(b64url_decode(h))
    _apply(header, changes)
    return ".".join((b64url(json.dumps(header)), p, s))


def tamper_payload(token: str, **changes: Any) -> str:
    """Rewrite claims after signing (``DROP`` removes one); the signature is kept."""
    h, p, s = token.split(".")
    payload = json.loads(b64url_decode(p))
    _apply(payload, changes)
    return ".".join((h, b64url(json.dumps(payload)), s))


def _apply(obj: dict[str, Any], changes: Mapping[str, Any]) -> None:
    for name, value in changes.items():
        if value is DROP:
            obj.pop(name, None)
        else:
            obj[name] = value


# ---------------------------------------------------------------------------
# Keys


@functools.cache
def rsa_key(index: int = 0) -> rsa.RSAPrivateKey:
    """The ``index``-th process-wide test RSA-2048 key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(index: int = 0) -> ec.EllipticCurvePrivateKey:
    """The ``index``-th process-wide test EC P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey

    def public_jwk(self) -> dict[str, Any]:
        algorithm = get_default_algorithms()[self.alg]
        jwk = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, signing_input: bytes, alg: str | None = None, *, hs_secret: bytes | None = None) -> bytes:
        """Sign with ``alg`` (default the key's). ``HS*`` uses ``hs_secret``, by default the public key PEM."""
        alg = alg or self.alg
        if alg.lower() == "none":
            return b""
        if alg.startswith("HS"):
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
            return hmac.new(hs_secret if hs_secret is not None else self.public_pem(), signing_input, digest).digest()
        return get_default_algorithms()[alg].sign(signing_input, self.private)


def rsa_signing_key(kid: str, index: int, alg: str = "RS256") -> SigningKey:
    return SigningKey(kid, alg, rsa_key(index))


# ---------------------------------------------------------------------------
# JWKS HTTP server


class JwksServer:
    """Serves JWKS documents by path on 127.0.0.1 and counts every GET.

    ``fail`` makes every request fail: ``"500"`` (HTTP 500), ``"404"``,
    ``"bad-json"`` (200 with a broken body), ``"not-jwks"`` (200, ``{}``),
    ``"redirect"`` (302 to the same path) or ``"reset"`` (connection closed
    without a response). ``delay_s`` slows every response down (for
    single-flight tests).
    """

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[], Any]] = {}
        self.counts: Counter[str] = Counter()
        self.fail: str | None = None
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> Self:
        if self._httpd is None:
            self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
            self._httpd.daemon_threads = True
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, name="test-jwks-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = None
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("JwksServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def fetches(self, path: str | None = None) -> int:
        with self._lock:
            return sum(self.counts.values()) if path is None else self.counts[path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.counts[path] += 1
                    fail, delay = server.fail, server.delay_s
                    route = server.routes.get(path)
                if delay:
                    time.sleep(delay)
                if fail == "reset":
                    self.close_connection = True
                    return
                if fail in ("500", "404"):
                    self._send(int(fail), b'{"error": "injected failure"}')
                elif fail == "bad-json":
                    self._send(200, b'{"keys": [')
                elif fail == "not-jwks":
                    self._send(200, b"{}")
                elif fail == "redirect":
                    self.send_response(302)
                    self.send_header("Location", path + "?redirected=1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif route is None:
                    self._send(404, b'{"error": "not found"}')
                else:
                    self._send(200, json.dumps(route()).encode("utf-8"))

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


# ---------------------------------------------------------------------------
# OIDC issuer


class TestIssuer:
    """A test OIDC issuer with a live JWKS endpoint. See the module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        issuer: str = "https://issuer.test.example",
        audience: str = "https://vending.test.example",
        *,
        name: str = "test",
        subject: str = "user-1",
        ttl_s: int = 600,
        path: str = "/jwks",
        key_set: int = 0,
        server: JwksServer | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.name = name
        self.subject = subject
        self.ttl_s = ttl_s
        self.path = path
        # key_set picks distinct key material for a second issuer (same kids, other keys).
        self._key_set = key_set
        self.rsa = rsa_signing_key("rsa-1", key_set)
        self.ec = SigningKey("ec-1", "ES256", ec_key(key_set))
        self.attacker = rsa_signing_key("attacker-1", 1000 + key_set)  # never published
        self.published: list[SigningKey] = [self.rsa, self.ec]
        self._rotations = 0
        self._own_server = server is None
        self.server = server or JwksServer()
        self.server.routes[path] = self.jwks

    # lifecycle
    def start(self) -> Self:
        self.server.start()
        return self

    def stop(self) -> None:
        if self._own_server:
            self.server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # JWKS endpoint
    @property
    def jwks_uri(self) -> str:
        return self.server.base_url + self.path

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.published]}

    @property
    def fetches(self) -> int:
        return self.server.fetches(self.path)

    @property
    def fail(self) -> str | None:
        return self.server.fail

    @fail.setter
    def fail(self, mode: str | None) -> None:
        self.server.fail = mode

    @property
    def delay_s(self) -> float:
        return self.server.delay_s

    @delay_s.setter
    def delay_s(self, seconds: float) -> None:
        self.server.delay_s = seconds

    def publish(self, *keys: SigningKey) -> None:
        self.published.extend(keys)

    def unpublish(self, kid: str) -> None:
        self.published = [k for k in self.published if k.kid != kid]

    def rotate(self, *, drop_old: bool = False) -> SigningKey:
        """Publish a fresh RSA key (kid ``rsa-rot-N``) and make it the default signer."""
        self._rotations += 1
        new = rsa_signing_key(f"rsa-rot-{self._rotations}", 2000 + 100 * self._key_set + self._rotations)
        if drop_old:
            self.unpublish(self.rsa.kid)
        self.publish(new)
        self.rsa = new
        return new

    # configuration
    def issuer_config(self, **overrides: Any) -> Issuer:
        fields: dict[str, Any] = {
            "name": self.name,
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "audience": self.audience,
            "algorithms": ("RS256", "ES256"),
        }
        fields.update(overrides)
        return Issuer(**fields)

    # tokens
    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(clock.epoch())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": self.subject,
            "iat": now,
            "exp": now + self.ttl_s,
            "jti": secrets.token_hex(16),
        }
        _apply(claims, overrides)
        return claims

    def mint(
        self,
        *,
        key: SigningKey | str | None = None,
        alg: str | None = None,
        kid: Any = _DEFAULT,
        header: Mapping[str, Any] | None = None,
        drop: Iterable[str] = (),
        duplicate: Mapping[str, Any] | None = None,
        header_duplicate: Mapping[str, Any] | None = None,
        raw_header: bytes | str | None = None,
        raw_payload: bytes | str | None = None,
        signature: bytes | None = None,
        hs_secret: bytes | None = None,
        **claim_overrides: Any,
    ) -> str:
        """A compact JWS. Claims default to a valid token; keyword arguments override them.

        key: a SigningKey or "rsa" / "ec" / "attacker" (default: current RSA key).
        alg: the header alg, and the algorithm signed with (``none`` -> empty
            signature; ``HS*`` -> HMAC keyed with ``hs_secret`` or the public key PEM).
        kid: header kid (default the key's; None omits it).
        header: extra header fields (``DROP`` removes one, e.g. ``typ``).
        drop: claim names to remove; duplicate / header_duplicate: keys appended
            a second time to the JSON object.
        raw_header / raw_payload: the exact bytes to base64url-encode instead.
        signature: the exact signature bytes to use.
        """
        signer = self._key(key)
        alg = alg or signer.alg
        head: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        head["kid"] = signer.kid if kid is _DEFAULT else kid
        if head["kid"] is None:
            del head["kid"]
        _apply(head, header or {})
        claims = self.claims(**claim_overrides)
        for name in drop:
            claims.pop(name, None)
        return encode(
            head,
            claims,
            signer,
            alg=alg,
            header_duplicate=header_duplicate,
            duplicate=duplicate,
            raw_header=raw_header,
            raw_payload=raw_payload,
            signature=signature,
            hs_secret=hs_secret,
        )

    def _key(self, key: SigningKey | str | None) -> SigningKey:
        if key is None:
            return self.rsa
        if isinstance(key, SigningKey):
            return key
        return {"rsa": self.rsa, "ec": self.ec, "attacker": self.attacker}[key]


def encode(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    key: SigningKey,
    *,
    alg: str | None = None,
    header_duplicate: Mapping[str, Any] | None = None,
    duplicate: Mapping[str, Any] | None = None,
    raw_header: bytes | str | None = None,
    raw_payload: bytes | str | None = None,
    signature: bytes | None = None,
    hs_secret: bytes | None = None,
) -> str:
    """Sign ``header``.``claims`` with ``key`` (see ``TestIssuer.mint`` for the options)."""
    head_bytes = (
        raw_header if raw_header is not None else json_pairs([*header.items(), *(header_duplicate or {}).items()])
    )
    body_bytes = raw_payload if raw_payload is not None else json_pairs([*claims.items(), *(duplicate or {}).items()])
    signing_input = f"{b64url(head_bytes)}.{b64url(body_bytes)}".encode("ascii")
    if signature is None:
        signature = key.sign(signing_input, alg or str(header.get("alg") or key.alg), hs_secret=hs_secret)
    return f"{signing_input.decode('ascii')}.{b64url(signature)}"


def oidc_issuer_fixture(
    *, scope: Literal["session", "package", "module", "class", "function"] = "function", **kwargs: Any
) -> Any:
    """Declare a pytest fixture yielding a started ``TestIssuer``: ``idp = oidc_issuer_fixture()``."""

    @pytest.fixture(scope=scope)
    def _issuer() -> Iterator[TestIssuer]:
        with TestIssuer(**kwargs) as issuer:
            yield issuer

    return _issuer


# ---------------------------------------------------------------------------
# Service account public keys and signJwt (chat-ops bots)


class FakeServiceAccountKeys:
    """``/service_accounts/v1/metadata/jwk/{email}`` for fake service accounts, and ``signJwt``."""

    __test__ = False

    def __init__(self, server: JwksServer | None = None) -> None:
        self._own_server = server is None
        self.server = server or JwksServer()
        self.keys: dict[str, list[SigningKey]] = {}
        self._next_index = 3000

    def start(self) -> Self:
        self.server.start()
        return self

    def stop(self) -> None:
        if self._own_server:
            self.server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def keys_base_url(self) -> str:
        return self.server.base_url

    @staticmethod
    def path(email: str) -> str:
        return f"/service_accounts/v1/metadata/jwk/{email}"

    def fetches(self, email: str) -> int:
        return self.server.fetches(self.path(email))

    def add(self, email: str) -> SigningKey:
        """Give ``email`` a new system-managed key (kid: 40 hex digits, like Google's)."""
        key = rsa_signing_key(secrets.token_hex(20), self._next_index)
        self._next_index += 1
        self.keys.setdefault(email, []).append(key)
        self.server.routes[self.path(email)] = lambda: {"keys": [k.public_jwk() for k in self.keys[email]]}
        return key

    def sign_jwt(
        self,
        email: str,
        payload: Mapping[str, Any],
        *,
        key: SigningKey | None = None,
        kid: Any = _DEFAULT,
        alg: str = "RS256",
        **options: Any,
    ) -> str:
        """What ``signJwt`` returns for ``payload``: header alg, kid, typ; the claims unchanged."""
        signer = key or self.keys[email][-1]
        head: dict[str, Any] = {"alg": alg, "kid": signer.kid if kid is _DEFAULT else kid, "typ": "JWT"}
        if head["kid"] is None:
            del head["kid"]
        return encode(head, payload, signer, alg=alg, **options)

    def message(
        self,
        email: str,
        audience: str,
        *,
        ttl_s: int = 300,
        key: SigningKey | None = None,
        kid: Any = _DEFAULT,
        alg: str = "RS256",
        drop: Iterable[str] = (),
        encode_options: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        """A valid bot message token by default; keyword arguments override claims (``DROP`` removes)."""
        now = int(clock.epoch())
        claims: dict[str, Any] = {
            "iss": email,
            "sub": email,
            "aud": audience,
            "iat": now,
            "exp": now + ttl_s,
            "jti": secrets.token_hex(16),
            "action": "approve",
        }
        _apply(claims, overrides)
        for name in drop:
            claims.pop(name, None)
        return self.sign_jwt(email, claims, key=key, kid=kid, alg=alg, **(encode_options or {}))
