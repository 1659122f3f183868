"""The local development identity issuer of the embedded default.

``DevIssuer`` keeps one RSA-2048 signing key in ``state_dir`` (created 0600 on
first use, reused afterwards), publishes it as a JWKS whose ``kid`` is the
RFC 7638 thumbprint, and mints RS256 tokens for a subject and audience. It is
for local development only: the policy marks such issuers ``development`` and
the settings refuse them with the Firestore store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vending import clock

KEY_FILE = "dev-issuer-key.pem"
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "nbf", "exp", "jti"})


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def rsa_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an RSA public JWK."""
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


def _load_or_create(path: Path) -> rsa.RSAPrivateKey:
    """Load the PEM key at ``path``, or create it atomically with mode 0600."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic; another process may have won the race
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey) or loaded.key_size < 2048:
        raise ValueError(f"{path}: not an RSA private key of at least 2048 bits")
    return loaded


class DevIssuer:
    """A local OIDC-style issuer: one persistent RSA key, a JWKS, RS256 tokens."""

    def __init__(self, state_dir: Path, issuer_url: str) -> None:
        self.issuer_url = issuer_url
        self.key_path = Path(state_dir) / KEY_FILE
        self._key = _load_or_create(self.key_path)
        numbers = self._key.public_key().public_numbers()
        public = {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
        self.kid = rsa_thumbprint(public)
        self._jwk = {**public, "kid": self.kid, "alg": "RS256", "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self._jwk)]}

    def mint(self, subject: str, audience: str, *, ttl_s: int = 600, extra_claims: dict[str, Any] | None = None) -> str:
        """An RS256 token for ``subject`` valid ``ttl_s`` seconds from now."""
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        extra = dict(extra_claims or {})
        clash = RESERVED_CLAIMS.intersection(extra)
        if clash:
            raise ValueError(f"extra_claims may not set {sorted(clash)}")
        now = int(clock.epoch())
        claims = {
            **extra,
            "iss": self.issuer_url,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
