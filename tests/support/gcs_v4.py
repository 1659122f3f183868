"""Build Cloud Storage V4 signed-URL requests the way Cloud Storage documents them.

Follows https://cloud.google.com/storage/docs/access-control/signing-urls-manually
(the documented Python sample): canonical query parameters percent-encoded and
sorted, canonical headers ``name:value\\n`` sorted by name, then::

    canonical_request = "\\n".join([METHOD, PATH, QUERY, CANONICAL_HEADERS, SIGNED_HEADERS, "UNSIGNED-PAYLOAD"])
    string_to_sign    = "\\n".join(["GOOG4-RSA-SHA256", TIMESTAMP, SCOPE, sha256hex(canonical_request)])

and the signed URL is ``https://HOST PATH ? QUERY & X-Goog-Signature=hex(signature)``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass
from urllib.parse import quote

ALGORITHM = "GOOG4-RSA-SHA256"


def _enc(value: str) -> str:
    return quote(value, safe="-_.~")


@dataclass(frozen=True)
class V4:
    host: str
    path: str
    canonical_query: str
    canonical_request: str
    string_to_sign: str
    timestamp: _dt.datetime
    expires_s: int

    @property
    def payload(self) -> bytes:
        return self.string_to_sign.encode("ascii")

    def url(self, signature: bytes) -> str:
        return f"https://{self.host}{self.path}?{self.canonical_query}&X-Goog-Signature={signature.hex()}"


def v4_request(
    bucket: str = "allowed-bucket",
    obj: str = "reports/2026/q4 summary.csv",
    *,
    signer: str,
    at: _dt.datetime,
    expires_s: int | str = 900,
    method: str = "GET",
    virtual_host: bool = False,
    location: str = "auto",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> V4:
    """A V4 signed-URL request for ``bucket``/``obj`` signed by ``signer`` at ``at``.

    ``query`` adds or overrides query parameters (after the X-Goog-* ones), ``drop`` removes some.
    """
    stamp = at.astimezone(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{stamp[:8]}/{location}/storage/goog4_request"
    host = f"{bucket}.storage.googleapis.com" if virtual_host else "storage.googleapis.com"
    path = ("/" if virtual_host else f"/{bucket}/") + quote(obj, safe="/~")
    hdrs = {"host": host, **(headers or {})}
    signed_headers = ";".join(sorted(hdrs))
    params = {
        "X-Goog-Algorithm": ALGORITHM,
        "X-Goog-Credential": f"{signer}/{scope}",
        "X-Goog-Date": stamp,
        "X-Goog-Expires": str(expires_s),
        "X-Goog-SignedHeaders": signed_headers,
        **(query or {}),
    }
    for name in drop:
        params.pop(name, None)
    canonical_query = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in sorted(params.items()))
    canonical_headers = "".join(f"{k}:{hdrs[k]}\n" for k in sorted(hdrs))
    # canonical_headers ends with "\n": with the joining "\n" that makes the documented blank line.
    canonical_request = f"{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\nUNSIGNED-PAYLOAD"
    string_to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    return V4(
        host,
        path,
        canonical_query,
        canonical_request,
        string_to_sign,
        _dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.UTC),
        int(expires_s) if str(expires_s).isdigit() else 0,
    )


def restamp(canonical_request: str, at: _dt.datetime, location: str = "auto") -> bytes:
    """A string-to-sign for an arbitrary (possibly hand-edited) canonical request."""
    stamp = at.astimezone(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{stamp[:8]}/{location}/storage/goog4_request"
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    return f"{ALGORITHM}\n{stamp}\n{scope}\n{digest}".encode("ascii")
